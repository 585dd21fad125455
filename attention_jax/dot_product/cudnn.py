"""The "cudnn" backend: `jax.nn.dot_product_attention(implementation="cudnn")`, NVIDIA GPUs only.

bfloat16/float16, H <= 128 and a multiple of 8; no segment ids, lse, weights or dropout. Rows with no valid
key are zeroed afterwards, so they follow this package's contract whatever cuDNN leaves there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from attention_jax.dot_product.base import AttentionCall, Backend, BackendOutput
from attention_jax.kernels import platform as device_platform

__all__ = ["CudnnBackend"]


@dataclasses.dataclass(frozen=True)
class CudnnBackend(Backend):
    """The "cudnn" backend: jax.nn's cuDNN flash attention (NVIDIA GPUs, bfloat16/float16)."""

    name = "cudnn"
    softmax_only_reason = "runs cuDNN's fused kernel, whose normaliser is the softmax"

    def __call__(self, call: AttentionCall) -> BackendOutput:
        mask = call.mask
        window = None
        if mask.local_window_size is not None:
            far = call.query.shape[1] + call.key.shape[1]  # "unbounded" for jax.nn, which wants two ints
            window = tuple(far if side is None else side for side in mask.local_window_size)
        output = jax.nn.dot_product_attention(
            call.query, call.key, call.value, bias=call.bias, mask=mask.dense, scale=call.scale,
            is_causal=mask.is_causal, query_seq_lengths=mask.query_seq_lengths,
            key_value_seq_lengths=mask.key_value_seq_lengths, local_window_size=window, implementation="cudnn")
        if not (mask.dense is None and window is None and mask.query_seq_lengths is None
                and mask.key_value_seq_lengths is None):
            # Rows with no valid key are zero by this library's contract, whatever cuDNN leaves there.
            live = jnp.any(mask.dense_mask(), axis=3)  # [B|1, N|1, T]
            live = jnp.broadcast_to(jnp.transpose(live, (0, 2, 1)), output.shape[:3])[..., None]  # [B, T, N, 1]
            output = jnp.where(live, output, jnp.zeros((), output.dtype))
        return output, None, None

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        reason = self.normalizer_reason(call)
        if reason:
            return False, reason
        platform = device_platform()
        if platform != "gpu":
            return False, f"cuDNN needs an NVIDIA GPU, this is {platform!r}"
        if jnp.dtype(call.query.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            return False, f"cuDNN attention takes bfloat16 or float16, got {call.query.dtype}"
        head_dim = call.query.shape[-1]
        if head_dim > 128 or head_dim % 8:
            return False, f"cuDNN attention needs H <= 128 and a multiple of 8, got H={head_dim}"
        if call.mask.has_segments:
            return False, "jax.nn's cuDNN path takes no segment ids"
        if call.return_lse or call.return_weights:
            return False, "jax.nn's cuDNN path returns neither lse nor weights"
        if call.dropout_rate > 0.0:
            return False, "jax.nn's cuDNN path has no attention dropout"
        return True, ""
