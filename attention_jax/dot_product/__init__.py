"""One operation, many backends: scaled dot-product attention in the jax.nn layout.

  api.py        `dot_product_attention`, `supports`, the backend table, `auto_order`, `register_backend`, and
                the "xla" backend.
  blockwise.py  `blockwise_attention`: online softmax over key chunks, O(S) memory on any device.
  backends.py   the "blockwise", "flash" (adapter to `attention_jax.kernels`) and "cudnn" backends.
"""

from attention_jax.dot_product import backends as _backends  # noqa: F401  (registers the built-in backends)
from attention_jax.dot_product.api import (
    EMPTY_ROW_LSE,
    DotProductAttentionOutput,
    auto_order,
    dot_product_attention,
    register_backend,
    registered_backends,
    supports,
)
from attention_jax.dot_product.backends import interpret_mode
from attention_jax.dot_product.blockwise import blockwise_attention

__all__ = [
    "EMPTY_ROW_LSE",
    "DotProductAttentionOutput",
    "auto_order",
    "blockwise_attention",
    "dot_product_attention",
    "interpret_mode",
    "register_backend",
    "registered_backends",
    "supports",
]
