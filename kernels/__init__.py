"""attention_jax.kernels: the Pallas flash-attention kernels below `attention_jax.dot_product`.

Installed as `attention_jax.kernels` (setup.cfg maps this top-level folder there). Importing this package
loads no Pallas: `flash_attention` and `attention_weights` load their modules on first use, so
`import attention_jax` stays light. The layout is the kernel's architecture:

  block_sizes.py  `BlockSizes`: the tiles of the forward, dK/dV and dQ kernels; the head-dim padding rule.
  masking.py      the tile masks shared by every kernel: loop bounds that skip dead tiles (causal, window,
                  true lengths), segment-range tile skipping, the element mask, and the folding of lengths
                  and padding into segment ids.
  forward.py      the forward kernel (Pallas, Triton lowering): online softmax in exp2, float32
                  accumulators, writes the lse.
  backward.py     the backward kernels: delta = rowsum(dO * O), then dK/dV and dQ.
  flash.py        `flash_attention`: padding to tiles, sanitising dead rows, the custom_vjp wiring, and the
                  choice of kernel family per device.
  mosaic_gpu.py   the Hopper forward in Pallas Mosaic GPU (warpgroup MMA, TMA).
  tpu.py          the forward and backward in Pallas Mosaic TPU block specs.
  weights.py      `attention_weights`: exact weights of chosen (batch, head, row) triples from a saved lse.
  reference.py    the float64 numpy reference (forward, lse and closed-form VJP).

The kernels depend on jax, numpy and the mask spec of `attention_jax.core` only
(`attention_jax.core.masks.AttentionMask`, which `flash_attention` and `attention_weights` take); the "flash"
backend of `attention_jax.dot_product` (`attention_jax.dot_product.flash.FlashBackend`) is their adapter.
"""

from __future__ import annotations

import importlib
from typing import Any

import jax

from attention_jax.kernels.block_sizes import BlockSizes

__all__ = ["KERNELS", "BlockSizes", "attention_weights", "flash_attention", "platform"]

# The kernel families: "triton" (Pallas with the Triton lowering: GPUs; any device interpreted),
# "mosaic_gpu" (the Hopper forward, opt-in; its backward is the Triton one), "mosaic_tpu" (Pallas Mosaic TPU).
KERNELS = ("triton", "mosaic_gpu", "mosaic_tpu")


def platform() -> str:
    """The platform jax computes on by default: "cpu", "gpu" (CUDA or ROCm) or "tpu" (else jax's own name).

    The one place that decides it: the kernel family (`flash.default_kernel`), the backends' `supports` and
    `attention_jax.dot_product.auto_order` all ask here.
    """
    name = jax.default_backend()
    return "gpu" if name in ("cuda", "rocm") else name


_LAZY = {"flash_attention": "flash", "attention_weights": "weights"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
