"""The flash-attention forward kernel (Pallas, Triton lowering; also runs in interpret mode on any device).

Dao et al. 2022, "FlashAttention", arXiv:2205.14135, Algorithm 1, with the FlashAttention-2 loop order
(Dao 2023, arXiv:2307.08691, Algorithm 1): one program owns a [block_q, H] query tile of one head and walks
the key tiles, keeping a running row max m, row sum l and an unnormalised [block_q, H] accumulator in
float32. Logits are scaled by `scale * log2(e)` so the softmax uses exp2, and the kernel writes the natural
log-sum-exp lse = (m + log2 l) * ln 2 that the backward and `attention_weights` reuse.

Grid: (T / block_q, B, N). Query head n reads key/value head n // G, so grouped-query attention never
repeats keys or values. Inputs are already padded (T, S to tile multiples, H to 64/128/256) and sanitised
by `kernels/flash.py` (`masking.zero_dead_rows`: every query with no valid key and every key/value no valid
query attends is zero).

NaN safety: a masked logit is replaced with `where` (never added to or multiplied by a mask), so a NaN or inf
logit of a masked pair becomes -inf and P = 0 there. P V still multiplies that 0 by the value row, which is
why dead value rows must be zero rather than merely masked; live rows holding NaN propagate it, as in xla.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attention_jax.kernels import masking
from attention_jax.kernels.block_sizes import BlockSizes

__all__ = ["LN2", "LOG2E", "flash_forward", "tile_dot", "triton_compiler_params"]

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
_F32 = jnp.float32


def tile_dot(a, b):
    """a @ b with float32 accumulation; full float32 (IEEE) products for float32 tiles.

    Without HIGHEST, Triton (and Mosaic TPU) multiply float32 tiles in TF32 / bf16 passes, about 1e-3 relative
    error; float32 inputs are asked for when that matters. bf16/f16 tiles use the tensor cores as they are.
    """
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jnp.dot(a, b, precision=precision, preferred_element_type=_F32)


def triton_compiler_params(num_warps: int, num_stages: int):
    """Triton compiler parameters, or None when this jax has no Triton lowering (e.g. a TPU-only build)."""
    try:
        from jax.experimental.pallas import triton as pl_triton
    except ImportError:  # pragma: no cover - depends on the jax build
        return None
    return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _forward_kernel(q_ref, k_ref, v_ref, *refs, spec: masking.MaskSpec, scale: float, block_q: int,
                    block_k: int, empty_row_lse: float):
    if spec.has_segments:
        q_seg_ref, kv_seg_ref, o_ref, lse_ref = refs
    else:
        o_ref, lse_ref = refs
    q_tile = pl.program_id(0)
    q = q_ref[...]  # [bq, H]
    q_pos = q_tile * block_q + jnp.arange(block_q, dtype=jnp.int32)  # [bq]
    q_seg = q_seg_ref[...] if spec.has_segments else None  # [bq]
    head_dim = q.shape[-1]

    def step(k_tile, carry):
        acc, m, l = carry  # [bq, H] f32, [bq] f32, [bq] f32
        keys = pl.ds(k_tile * block_k, block_k)
        kv_seg = kv_seg_ref[keys] if spec.has_segments else None  # [bk]

        def update():
            k = k_ref[keys, :]  # [bk, H]
            s = tile_dot(q, k.T) * (scale * LOG2E)  # [bq, bk] base-2 logits
            k_pos = k_tile * block_k + jnp.arange(block_k, dtype=jnp.int32)
            mask = masking.element_mask(spec, q_pos, k_pos, q_seg, kv_seg)
            if mask is not None:
                s = jnp.where(mask, s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))  # [bq]
            # -inf until a row meets its first valid key; 0 stands in so no (-inf) - (-inf) appears.
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp2(s - m_safe[:, None])  # [bq, bk]; exactly 0 where masked
            alpha = jnp.exp2(m - m_safe)  # [bq]; 0 while m = -inf
            v = v_ref[keys, :]  # [bk, H]
            pv = tile_dot(p.astype(v.dtype), v)  # [bq, H]
            return alpha[:, None] * acc + pv, m_new, alpha * l + jnp.sum(p, axis=1)

        if spec.has_segments:
            return lax.cond(masking.segments_overlap(q_seg, kv_seg), update, lambda: carry)
        return update()

    lo, hi = masking.kv_tile_range(spec, q_tile, block_q, block_k)
    init = (jnp.zeros((block_q, head_dim), _F32), jnp.full((block_q,), -jnp.inf, _F32), jnp.zeros((block_q,), _F32))
    acc, m, l = lax.fori_loop(lo, hi, step, init)
    live = l > 0.0  # rows with at least one valid key
    l_safe = jnp.where(live, l, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)  # acc is 0 on empty rows
    lse_ref[...] = jnp.where(live, (m + jnp.log2(l_safe)) * LN2, empty_row_lse)


def flash_forward(query, key, value, segments, *, spec: masking.MaskSpec, scale: float, blocks: BlockSizes,
                  interpret: bool, empty_row_lse: float):
    """Runs the forward kernel on padded, sanitised inputs.

    Args:
      query: [B, Tp, N, Hp]; key, value: [B, Sp, K, Hp] (Tp, Sp multiples of the tiles, Hp in 64/128/256).
      segments: None or (q_seg [B, Tp] int32, kv_seg [B, Sp] int32) from `masking.encode_segments`.
      spec: the static mask. scale: the logit scale. blocks: the tiles (`fit` already applied).
      interpret: run the kernel in the Pallas interpreter (any device).
      empty_row_lse: the lse written for a row with no valid key.

    Returns:
      (out [B, Tp, N, Hp] query dtype, lse [B, N, Tp] float32).
    """
    batch, padded_q, heads, head_dim = query.shape
    padded_k, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    block_q, block_k = blocks.block_q, blocks.block_k
    kernel = functools.partial(_forward_kernel, spec=spec, scale=scale, block_q=block_q, block_k=block_k,
                               empty_row_lse=empty_row_lse)
    in_specs = [
        pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, n: (b, i, n, 0)),
        pl.BlockSpec((None, padded_k, None, head_dim), lambda i, b, n: (b, 0, n // groups, 0)),
        pl.BlockSpec((None, padded_k, None, head_dim), lambda i, b, n: (b, 0, n // groups, 0)),
    ]
    args = [query, key, value]
    if spec.has_segments:
        in_specs += [pl.BlockSpec((None, block_q), lambda i, b, n: (b, i)),
                     pl.BlockSpec((None, padded_k), lambda i, b, n: (b, 0))]
        args += list(segments)
    return pl.pallas_call(
        kernel,
        grid=(padded_q // block_q, batch, heads),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, n: (b, i, n, 0)),
                   pl.BlockSpec((None, None, block_q), lambda i, b, n: (b, n, i))],
        out_shape=[jax.ShapeDtypeStruct(query.shape, query.dtype),
                   jax.ShapeDtypeStruct((batch, heads, padded_q), _F32)],
        compiler_params=None if interpret else triton_compiler_params(blocks.warps(head_dim), blocks.num_stages),
        interpret=interpret,
        name="attention_jax_flash_forward",
    )(*args)
