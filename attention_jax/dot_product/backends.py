"""The "blockwise", "flash" and "cudnn" backends of `attention_jax.dot_product_attention`.

Each backend is a function of an `AttentionCall` plus a `supports` function that says, cheaply and without
raising, whether it can run the call and why not. `dot_product_attention(implementation=None)` tries them in
`dot_product.auto_order()` and logs its choice; naming a backend that cannot run a call raises a ValueError
that carries the reason.

  * "blockwise": `attention_jax.dot_product.blockwise.blockwise_attention`, pure JAX, O(S) memory, any device; everything
    but dropout. Weights, when asked for, are recomputed from its lse.
  * "flash": `kernels.flash.flash_attention`, the Pallas kernel, on GPU and TPU, or on any device inside
    `interpret_mode()`. No bias, dense mask or dropout; weights are recomputed from its lse.
  * "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, NVIDIA GPUs only: bfloat16/float16,
    H <= 128 and a multiple of 8; no segment ids, lse, weights or dropout.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp

from attention_jax.dot_product import api as dot_product
from attention_jax.dot_product.blockwise import blockwise_attention
from attention_jax.dot_product.api import AttentionCall
from attention_jax.kernels.block_sizes import BlockSizes

__all__ = ["interpret_mode", "interpreting"]

_FLASH_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

# A stack of (kernel family, block sizes or None) forced by the open interpret_mode contexts, innermost last.
_INTERPRET: list[tuple[str, BlockSizes | None]] = []


@contextlib.contextmanager
def interpret_mode(kernel: str = "triton", block_sizes: BlockSizes | None = None) -> Iterator[None]:
    """Runs the "flash" backend in the Pallas interpreter, on any device, while the context is open.

    For debugging the kernels on a CPU and for the CPU conformance tests. The setting is read when a function
    is traced, so a function jitted inside the context stays interpreted.

    Args:
      kernel: "triton" (the Pallas interpreter) or "mosaic_tpu" (the TPU interpreter,
        `jax.experimental.pallas.tpu.InterpretParams`).
      block_sizes: None (the defaults) or the tiles to use, e.g. small ones so a short test sequence spans
        several tiles and exercises tile skipping.

    Raises:
      ValueError: for another kernel name, or block_sizes that is not a BlockSizes.
    """
    if kernel not in ("triton", "mosaic_tpu"):
        raise ValueError(f"interpret_mode kernel must be 'triton' or 'mosaic_tpu', got {kernel!r}")
    if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"block_sizes must be a BlockSizes or None, got {block_sizes!r}")
    _INTERPRET.append((kernel, block_sizes))
    try:
        yield
    finally:
        _INTERPRET.pop()


def interpreting() -> str | None:
    """The kernel family forced by the innermost open `interpret_mode`, or None."""
    return _INTERPRET[-1][0] if _INTERPRET else None


def _with_weights(call: AttentionCall, output, lse):
    weights = dot_product.weights_from_lse(call, lse) if call.return_weights else None
    return output, weights, lse


# ------------------------------------------------------------------------------------------------------------
# blockwise


def _blockwise(call: AttentionCall):
    output, lse = blockwise_attention(
        call.query, call.key, call.value, scale=call.scale, is_causal=call.is_causal,
        query_lengths=call.query_lengths, key_lengths=call.key_lengths, segment_ids=call.segments,
        local_window=call.window, bias=call.bias, mask=call.mask, return_lse=True)
    return _with_weights(call, output, lse)


def _blockwise_supports(call: AttentionCall) -> tuple[bool, str]:
    if call.dropout_rate > 0.0:
        return False, "blockwise has no attention dropout"
    return True, ""


# ------------------------------------------------------------------------------------------------------------
# flash


def _flash(call: AttentionCall):
    forced, blocks = _INTERPRET[-1] if _INTERPRET else (None, None)
    from attention_jax.kernels import flash  # the Pallas kernels load on first use
    output, lse = flash.flash_attention(
        call.query, call.key, call.value, scale=call.scale, is_causal=call.is_causal,
        query_lengths=call.query_lengths, key_lengths=call.key_lengths, segment_ids=call.segments,
        local_window=call.window, block_sizes=blocks, kernel=forced, interpret=forced is not None,
        return_lse=True)
    return _with_weights(call, output, lse)


def _flash_supports(call: AttentionCall) -> tuple[bool, str]:
    if interpreting() is None:
        platform = dot_product._platform()
        if platform not in ("gpu", "tpu"):
            return False, f"Pallas kernels need a GPU or TPU, this is {platform!r} (interpret_mode() runs them anywhere)"
        from attention_jax.kernels import forward  # the Pallas kernels load on first use
        if platform == "gpu" and forward.triton_compiler_params(1, 1) is None:  # GPUs run the Triton kernels
            return False, "this jax has no Pallas Triton lowering"
    if call.bias is not None:
        return False, "flash takes no bias"
    if call.mask is not None:
        return False, "flash takes no dense mask (use is_causal, local_window, lengths or segment_ids)"
    if call.dropout_rate > 0.0:
        return False, "flash has no attention dropout"
    dtypes = {jnp.dtype(x.dtype) for x in (call.query, call.key, call.value)}
    if len(dtypes) != 1 or dtypes.pop() not in _FLASH_DTYPES:
        return False, f"flash needs one dtype among float32/bfloat16/float16, got {call.query.dtype}/{call.key.dtype}"
    if call.query.shape[-1] > 256:
        return False, f"flash supports head dims up to 256, got H={call.query.shape[-1]}"
    return True, ""


# ------------------------------------------------------------------------------------------------------------
# cudnn


def _cudnn(call: AttentionCall):
    window = None
    if call.window is not None:
        far = call.query.shape[1] + call.key.shape[1]  # "unbounded" for jax.nn, which wants two ints
        window = tuple(far if side is None else side for side in call.window)
    output = jax.nn.dot_product_attention(
        call.query, call.key, call.value, bias=call.bias, mask=call.mask, scale=call.scale,
        is_causal=call.is_causal, query_seq_lengths=call.query_lengths, key_value_seq_lengths=call.key_lengths,
        local_window_size=window, implementation="cudnn")
    if call.mask is not None or call.window is not None or call.query_lengths is not None or call.key_lengths is not None:
        # Rows with no valid key are zero by this library's contract, whatever cuDNN leaves there.
        mask = call.combined_mask()  # [B|1, N|1, T, S]
        live = jnp.any(mask, axis=3)  # [B|1, N|1, T]
        live = jnp.broadcast_to(jnp.transpose(live, (0, 2, 1)), output.shape[:3])[..., None]  # [B, T, N, 1]
        output = jnp.where(live, output, jnp.zeros((), output.dtype))
    return output, None, None


def _cudnn_supports(call: AttentionCall) -> tuple[bool, str]:
    platform = jax.default_backend()
    if platform not in ("gpu", "cuda"):
        return False, f"cuDNN needs an NVIDIA GPU, this is {platform!r}"
    if jnp.dtype(call.query.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return False, f"cuDNN attention takes bfloat16 or float16, got {call.query.dtype}"
    head_dim = call.query.shape[-1]
    if head_dim > 128 or head_dim % 8:
        return False, f"cuDNN attention needs H <= 128 and a multiple of 8, got H={head_dim}"
    if call.segments is not None:
        return False, "jax.nn's cuDNN path takes no segment ids"
    if call.return_lse or call.return_weights:
        return False, "jax.nn's cuDNN path returns neither lse nor weights"
    if call.dropout_rate > 0.0:
        return False, "jax.nn's cuDNN path has no attention dropout"
    return True, ""


dot_product.register_backend("blockwise", _blockwise, _blockwise_supports)
dot_product.register_backend("flash", _flash, _flash_supports)
dot_product.register_backend("cudnn", _cudnn, _cudnn_supports)
