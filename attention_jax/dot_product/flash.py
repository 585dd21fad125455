"""The "flash" backend: the adapter from a checked `AttentionCall` to the Pallas kernels.

`attention_jax.kernels.flash.flash_attention` (Dao et al. 2022, arXiv:2205.14135; Dao 2023,
arXiv:2307.08691) runs compiled on GPUs (Triton) and TPUs (Mosaic TPU). `FlashBackend(interpret=True)` runs
the same kernels in the Pallas interpreter on any device, for debugging and for the CPU tests; the option is
part of the backend object, so it is fixed when a function is traced and a jitted function keeps it. No bias,
dense mask or dropout; weights, when asked for, are recomputed from the lse.

The kernels load on first use: this module imports no Pallas.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from attention_jax.dot_product.base import AttentionCall, Backend, BackendOutput, weights_from_lse
from attention_jax.kernels import KERNELS
from attention_jax.kernels import platform as device_platform
from attention_jax.kernels.block_sizes import BlockSizes

__all__ = ["FlashBackend"]

_FLASH_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class FlashBackend(Backend):
    """The "flash" backend: the Pallas flash-attention kernels of `attention_jax.kernels`.

    `implementation="flash"` is `FlashBackend()`: compiled kernels, GPU or TPU only. Pass an object for the
    options, e.g. `implementation=FlashBackend(interpret=True, block_sizes=BlockSizes(16, 16, 16, 16, 16, 16))`
    to run small tiles in the interpreter on a CPU.

    Attributes:
      interpret: False (compile for the device), True (the Pallas interpreter: the Triton kernels, or the TPU
        interpreter for kernel="mosaic_tpu"), or a `jax.experimental.pallas.tpu.InterpretParams` (kernel
        "mosaic_tpu" only).
      block_sizes: None (`BlockSizes.default(H)`) or the tiles.
      kernel: None (the device's family: `kernels.flash.default_kernel()`), "triton", "mosaic_gpu" or
        "mosaic_tpu".

    Raises:
      ValueError: at construction, for an unknown kernel, block sizes that are not a `BlockSizes`, or an
        interpret value that is neither a bool nor (for "mosaic_tpu") an InterpretParams.
    """

    interpret: Any = False
    block_sizes: BlockSizes | None = None
    kernel: str | None = None
    name = "flash"
    softmax_only_reason = (
        "is a Pallas kernel that merges key blocks through a running max and sum (the online softmax); "
        "sparsemax and entmax need each row's threshold tau over all of its logits at once")

    def __post_init__(self):
        if self.kernel is not None and self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose one of {KERNELS} or None")
        if self.block_sizes is not None and not isinstance(self.block_sizes, BlockSizes):
            raise ValueError(f"block_sizes must be a BlockSizes or None, got {self.block_sizes!r}")
        if not isinstance(self.interpret, bool) and self.kernel != "mosaic_tpu":
            raise ValueError(f"interpret must be a bool (an InterpretParams only with kernel='mosaic_tpu'), "
                             f"got {self.interpret!r}")

    def __call__(self, call: AttentionCall) -> BackendOutput:
        from attention_jax.kernels import flash  # the Pallas kernels load on first use
        output, lse = flash.flash_attention(
            call.query, call.key, call.value, call.mask, scale=call.scale, block_sizes=self.block_sizes,
            kernel=self.kernel, interpret=self.interpret, return_lse=True)
        weights = weights_from_lse(call, lse) if call.return_weights else None
        return output, weights, lse

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        reason = self.normalizer_reason(call)
        if reason:
            return False, reason
        if self.interpret is False:
            platform = device_platform()
            if platform not in ("gpu", "tpu"):
                return False, (f"Pallas kernels need a GPU or TPU, this is {platform!r} "
                               f"(FlashBackend(interpret=True) runs them anywhere)")
            if platform == "gpu" and self.kernel != "mosaic_tpu":
                from attention_jax.kernels import forward  # the Pallas kernels load on first use
                if forward.triton_compiler_params(1, 1) is None:
                    return False, "this jax has no Pallas Triton lowering"
        if call.bias is not None:
            return False, "flash takes no bias"
        if call.mask.dense is not None:
            return False, "flash takes no dense mask (use is_causal, local_window_size, lengths or segment_ids)"
        if call.dropout_rate > 0.0:
            return False, "flash has no attention dropout"
        dtypes = {jnp.dtype(x.dtype) for x in (call.query, call.key, call.value)}
        if len(dtypes) != 1 or dtypes.pop() not in _FLASH_DTYPES:
            return False, (f"flash needs one dtype among float32/bfloat16/float16, got "
                           f"{call.query.dtype}/{call.key.dtype}/{call.value.dtype}")
        if call.query.shape[-1] > 256:
            return False, f"flash supports head dims up to 256, got H={call.query.shape[-1]}"
        return True, ""
