"""One operation, many backends: scaled dot-product attention in the jax.nn layout.

  api.py        `dot_product_attention` (a drop-in for `jax.nn.dot_product_attention`), `supports`, the table
                of backends (built-ins fixed here, `register_backend` adds names), `auto_order`.
  base.py       `AttentionCall` (one checked call, as a backend receives it), the `Backend` interface, the
                bias check and `weights_from_lse`.
  xla.py        the "xla" backend: dense logits, supports everything.
  blockwise.py  `blockwise_attention` and the "blockwise" backend: online softmax over key chunks, O(S) memory
                on any device.
  flash.py      the "flash" backend: the adapter to the Pallas kernels of `attention_jax.kernels`
                (`FlashBackend(interpret=True)` runs them in the interpreter on any device).
  cudnn.py      the "cudnn" backend: jax.nn's cuDNN attention.
  ring.py       the "ring" backend: ring attention over a sequence mesh axis (ppermute K/V, zig-zag causal
                load balancing, a custom_vjp over the whole ring).
  ulysses.py    the "ulysses" backend: DeepSpeed-Ulysses, all_to_all from sequence to head sharding and back.
  _sequence.py  what those two share: mesh layout, padding, the lse merge.

The mask spec every backend takes, `AttentionMask`, lives in `attention_jax.core.masks` (the kernels, below
this package, take it too) and is re-exported here.
"""

from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.api import (
    BUILTIN_BACKENDS,
    EMPTY_ROW_LSE,
    AttentionCall,
    Backend,
    DotProductAttentionOutput,
    auto_order,
    dot_product_attention,
    register_backend,
    registered_backends,
    supports,
)
from attention_jax.dot_product.blockwise import BlockwiseBackend, blockwise_attention
from attention_jax.dot_product.cudnn import CudnnBackend
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.dot_product.ring import RingBackend
from attention_jax.dot_product.ulysses import UlyssesBackend
from attention_jax.dot_product.xla import XlaBackend

__all__ = [
    "BUILTIN_BACKENDS",
    "EMPTY_ROW_LSE",
    "AttentionCall",
    "AttentionMask",
    "Backend",
    "BlockwiseBackend",
    "CudnnBackend",
    "DotProductAttentionOutput",
    "FlashBackend",
    "RingBackend",
    "UlyssesBackend",
    "XlaBackend",
    "auto_order",
    "blockwise_attention",
    "dot_product_attention",
    "register_backend",
    "registered_backends",
    "supports",
]
