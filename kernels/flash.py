"""`flash_attention`: the Pallas flash-attention kernels behind one differentiable function.

This file is the VJP wiring and the glue around the kernels:
  * checks the call once: `AttentionMask.bind` (the same checks and errors as `dot_product_attention`, and
    none at all for a mask the "flash" backend already bound to these inputs), then the kernels' own limits;
  * pads T and S to tile multiples and H to 64/128/256, and folds lengths and padding into segment ids
    (`masking.encode_segments`), so users never see a divisibility error;
  * zeroes dead query, key and value rows (`masking.zero_dead_rows`: a query with no valid key, a key no
    valid query attends, the padding) before any kernel runs: a NaN there cannot leak, because 0 * NaN never
    happens inside a kernel;
  * a `jax.custom_vjp` whose forward keeps (q, k, v, out, lse) and whose backward runs the `delta`, dK/dV and
    dQ kernels;
  * picks the kernel family for the device: Triton (GPU), Mosaic GPU (Hopper forward, see `mosaic_gpu.py`)
    or Mosaic TPU (see `tpu.py`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attention_jax import _checks
from attention_jax.core import alignment, masks
from attention_jax.core.masks import AttentionMask
from attention_jax.kernels import KERNELS, masking
from attention_jax.kernels import platform as device_platform
from attention_jax.kernels.backward import flash_backward, flash_delta
from attention_jax.kernels.block_sizes import BlockSizes, pad_axis, padded_head_dim, round_up
from attention_jax.kernels.forward import LOG2E, flash_forward

__all__ = ["EMPTY_ROW_LSE", "KERNELS", "SUPPORTED_DTYPES", "default_kernel", "flash_attention"]

EMPTY_ROW_LSE = alignment.EMPTY_ROW_LSE
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class _Static(NamedTuple):
    """The hashable part of a call (a custom_vjp nondiff argument)."""

    spec: masking.MaskSpec
    scale: float
    blocks: BlockSizes
    kernel: str
    interpret: Any  # False, True, or a pltpu.InterpretParams for the Mosaic TPU interpreter


def default_kernel(platform: str | None = None) -> str:
    """The kernel family for a platform ("cpu", "gpu", "tpu"; None = `attention_jax.kernels.platform()`).

    TPUs get "mosaic_tpu"; every other platform gets "triton" (GPUs compile it; elsewhere it runs only in
    interpret mode). The Hopper forward "mosaic_gpu" is opt-in (`kernel="mosaic_gpu"`) until it has been
    compiled and checked on a Hopper GPU; see kernels/mosaic_gpu.py.
    """
    platform = device_platform() if platform is None else platform
    return "mosaic_tpu" if platform == "tpu" else "triton"


def _run_forward(static: _Static, q, k, v, segments):
    if static.kernel == "mosaic_tpu":
        from attention_jax.kernels import tpu
        return tpu.tpu_forward(q, k, v, segments, spec=static.spec, scale=static.scale, blocks=static.blocks,
                               interpret=static.interpret, empty_row_lse=EMPTY_ROW_LSE)
    if static.kernel == "mosaic_gpu":
        from attention_jax.kernels import mosaic_gpu
        ok, reason = mosaic_gpu.supports_call(q, k, v, static.spec)
        if ok and (static.interpret or not mosaic_gpu.available()):
            ok, reason = False, "it needs a Hopper GPU and compiled (not interpreted) kernels"
        if ok:
            return mosaic_gpu.mosaic_gpu_forward(q, k, v, spec=static.spec, scale=static.scale,
                                                 empty_row_lse=EMPTY_ROW_LSE)
        logging.log_first_n(logging.INFO, "flash_attention: Mosaic GPU forward cannot run this call (%s); "
                            "using the Triton forward", 4, reason)
    return flash_forward(q, k, v, segments, spec=static.spec, scale=static.scale, blocks=static.blocks,
                         interpret=bool(static.interpret), empty_row_lse=EMPTY_ROW_LSE)


def _run_backward(static: _Static, q, k, v, d_out, lse2, delta, segments):
    if static.kernel == "mosaic_tpu":
        from attention_jax.kernels import tpu
        return tpu.tpu_backward(q, k, v, d_out, lse2, delta, segments, spec=static.spec, scale=static.scale,
                                blocks=static.blocks, interpret=static.interpret)
    return flash_backward(q, k, v, d_out, lse2, delta, segments, spec=static.spec, scale=static.scale,
                          blocks=static.blocks, interpret=bool(static.interpret))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static: _Static, q, k, v, segments):
    return _run_forward(static, q, k, v, segments)


def _flash_fwd(static, q, k, v, segments):
    out, lse = _run_forward(static, q, k, v, segments)
    return (out, lse), (q, k, v, segments, out, lse)


def _flash_bwd(static, residuals, cotangents):
    q, k, v, segments, out, lse = residuals
    d_out, d_lse = cotangents
    if static.kernel == "mosaic_tpu":
        delta = jnp.einsum("BTNH,BTNH->BNT", out.astype(jnp.float32), d_out.astype(jnp.float32))
    else:
        delta = flash_delta(out, d_out, block_q=static.blocks.block_q_dq, interpret=bool(static.interpret))
    live = lse != EMPTY_ROW_LSE
    # d lse / d logits = P, so a cotangent on lse enters as -d_lse next to delta: dS = P (dP - delta + d_lse).
    delta = delta - jnp.where(live, d_lse.astype(jnp.float32), 0.0)
    lse2 = jnp.where(live, lse * LOG2E, jnp.inf)
    dq, dk, dv = _run_backward(static, q, k, v, d_out, lse2, delta, segments)
    d_segments = None if segments is None else tuple(np.zeros(s.shape, jax.dtypes.float0) for s in segments)
    return dq, dk, dv, d_segments


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask | None = None,
    *,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    kernel: str | None = None,
    interpret: Any = False,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Flash attention softmax(Q K^T * scale) V with Pallas kernels for the forward and the backward.

    Dao et al. 2022, "FlashAttention", arXiv:2205.14135, Algorithm 1 (forward) and Appendix B (backward), in
    the loop order of FlashAttention-2 (Dao 2023, arXiv:2307.08691, Algorithms 1 and 2); the scaled
    dot-product attention of Vaswani et al. 2017, arXiv:1706.03762, eq. 1. Logits, softmax and accumulators
    are float32 whatever the input dtype; the softmax uses exp2 on logits scaled by `scale * log2(e)`.
    Neither pass stores a [T, S] array: the forward saves the lse [B, N, T] and the backward recomputes P
    from it (delta = rowsum(dO * O), then dK/dV and dQ kernels).

    The mask is an `attention_jax.core.masks.AttentionMask` (causality, a local window, query/key lengths,
    segment ids; no dense mask), with the same layout, masks and empty-row semantics as
    `attention_jax.dot_product_attention`: query t and key s count from 0 (top-left alignment), so with
    `is_causal` query t sees keys s <= t for any T and S, even T != S (this is not the KV-cache alignment
    where the last query sees the last key). Tiles that the causal mask, the window, the lengths or the
    segment ids leave fully masked are skipped. A query row with no valid key gets a zero output, zero
    (finite) gradients and lse = `EMPTY_ROW_LSE`; a call with T, S, B or N = 0 returns that for every row and
    launches no kernel. Grouped-query attention (K < N) reads key/value head n // G from query head n, never
    materialising repeated heads.

    Any T and S work (they are padded to tile multiples and the padding is masked); head dims 64, 128 and 256
    run as they are and any other H <= 256 is zero-padded to the next of those.

    Args:
      query: [B, T, N, H] float32, bfloat16 or float16.
      key: [B, S, K, H], same dtype as query; K divides N.
      value: [B, S, K, H], same dtype as query.
      mask: None (nothing masked) or an `AttentionMask` without a dense mask, e.g.
        `AttentionMask(is_causal=True, key_value_seq_lengths=lengths)`. One already bound to these inputs (as
        the "flash" backend passes it) is not checked again.
      scale: a Python float, the logit scale (sm_scale); default 1 / sqrt(H).
      block_sizes: the tiles; default `BlockSizes.default(H)`, always shrunk to the lengths (`fit`).
      kernel: "triton", "mosaic_gpu", "mosaic_tpu" or None (`default_kernel()` for the default device).
      interpret: run the kernels in the Pallas interpreter. True for "triton"; for "mosaic_tpu", True or a
        `jax.experimental.pallas.tpu.InterpretParams` (the TPU interpreter, which runs on CPU).
      return_lse: a bool; also return the lse.

    Returns:
      output [B, T, N, H] in the query dtype; with `return_lse`, (output, lse [B, N, T] float32), where
      lse = log sum_s exp(logits) over the valid keys and `EMPTY_ROW_LSE` for an empty row.

    Raises:
      ValueError: for the shape, length, segment and window errors of `dot_product_attention`; a dense mask; a
        head dim above 256; an unknown kernel.
      TypeError: for a dtype other than float32/bfloat16/float16, dtypes that differ between query, key and
        value, arguments that are not arrays, non-integer lengths or ids, a mask that is neither None nor an
        `AttentionMask`, or a return_lse that is not a bool.
    """
    if mask is not None and not isinstance(mask, AttentionMask):
        raise TypeError(f"flash_attention takes mask=None or an AttentionMask (it takes no dense mask), "
                        f"got {type(mask).__name__}")
    mask = (AttentionMask() if mask is None else mask).bind(query, key, value)
    if mask.dense is not None:
        raise ValueError("flash_attention takes no dense mask; use is_causal, local_window_size, lengths or "
                         "segment ids, or dot_product_attention's xla/blockwise backends")
    return_lse = _checks.flag("return_lse", return_lse)
    dtypes = {jnp.dtype(x.dtype) for x in (query, key, value)}
    if len(dtypes) != 1:
        raise TypeError(f"flash_attention needs one dtype for query, key and value, got "
                        f"{query.dtype=} {key.dtype=} {value.dtype=}")
    if dtypes.pop() not in SUPPORTED_DTYPES:
        raise TypeError(f"flash_attention supports float32, bfloat16 and float16, got {query.dtype=}")
    head_dim = query.shape[-1]
    padded_dim = padded_head_dim(head_dim)
    kernel = default_kernel() if kernel is None else kernel
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS} or None")
    scale = masks.attention_scale(scale, head_dim)
    if mask.is_empty:  # no (query, key) pair: nothing to launch
        out, lse = masks.empty_attention(query, value)
        return (out, lse) if return_lse else out
    num_queries, num_keys = mask.num_queries, mask.num_keys
    blocks = (BlockSizes.default(head_dim) if block_sizes is None else block_sizes).fit(num_queries, num_keys)
    if kernel == "mosaic_tpu":
        from attention_jax.kernels import tpu
        blocks = tpu.tpu_blocks(blocks, num_queries, num_keys)

    batch = query.shape[0]
    tile_q = max(blocks.block_q, blocks.block_q_dkv, blocks.block_q_dq)
    tile_k = max(blocks.block_k, blocks.block_k_dkv, blocks.block_k_dq)
    padded_q, padded_k = round_up(num_queries, tile_q), round_up(num_keys, tile_k)
    segments = (mask.q_segment_ids, mask.kv_segment_ids) if mask.has_segments else None
    seg = masking.encode_segments(segments, mask.query_seq_lengths, mask.key_value_seq_lengths, batch,
                                  num_queries, num_keys, padded_q, padded_k)
    spec = masking.MaskSpec.from_mask(mask, padded_k, has_segments=seg is not None)

    q = pad_axis(pad_axis(query, 1, padded_q), 3, padded_dim)
    k = pad_axis(pad_axis(key, 1, padded_k), 3, padded_dim)
    v = pad_axis(pad_axis(value, 1, padded_k), 3, padded_dim)
    # Queries with no valid key and keys/values no query attends are zeroed (the xla backend's contract).
    q, k, v = masking.zero_dead_rows(spec, seg, q, k, v, has_ids=segments is not None)
    static = _Static(spec, scale, blocks, kernel, interpret)
    out, lse = _flash(static, q, k, v, seg)
    out = out[:, :num_queries, :, :head_dim]
    if not return_lse:
        return out
    return out, lse[:, :, :num_queries]
