"""attention_jax.kernels: the Pallas flash-attention kernel and the backends of `dot_product_attention`.

Installed as `attention_jax.kernels` (setup.cfg maps this top-level folder there). The layout is the
kernel's architecture:

  block_sizes.py  `BlockSizes`: the tiles of the forward, dK/dV and dQ kernels; the head-dim padding rule.
  masking.py      `MaskSpec` and the tile masks shared by every kernel: loop bounds that skip dead tiles
                  (causal, window, true lengths), segment-range tile skipping, the element mask, and the
                  folding of lengths and padding into segment ids.
  forward.py      the forward kernel (Pallas, Triton lowering): online softmax in exp2, float32
                  accumulators, writes the lse.
  backward.py     the backward kernels: delta = rowsum(dO * O), then dK/dV and dQ.
  flash.py        `flash_attention`: input checks, padding to tiles, sanitising dead rows, the custom_vjp
                  wiring, and the choice of kernel family per device.
  mosaic_gpu.py   the Hopper forward in Pallas Mosaic GPU (warpgroup MMA, TMA).
  tpu.py          the forward and backward in Pallas Mosaic TPU block specs.
  weights.py      `attention_weights`: exact weights of chosen (batch, head, row) triples from a saved lse.
  reference.py    the float64 numpy reference (forward, lse and closed-form VJP).
  dispatch.py     the "blockwise", "flash" and "cudnn" backends of `dot_product_attention`, and
                  `interpret_mode()`.
  benchmark.py    `python -m attention_jax.kernels.benchmark`: TFLOP/s on GPU, memory and time on CPU.
"""

from attention_jax.kernels import dispatch
from attention_jax.kernels.block_sizes import BlockSizes
from attention_jax.kernels.dispatch import interpret_mode
from attention_jax.kernels.flash import flash_attention
from attention_jax.kernels.weights import attention_weights

__all__ = ["BlockSizes", "attention_weights", "dispatch", "flash_attention", "interpret_mode"]
