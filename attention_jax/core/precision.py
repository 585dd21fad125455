"""The precision attention math is computed in.

Logits, softmaxes, pooled statistics and sigmoid gates are computed in float32 whatever the inputs' dtype
(bfloat16 and float16 lose too much in an exponent or a sum of many terms), and in float64 for float64 inputs,
so float64 gradient checks stay exact. Outputs go back to the inputs' dtype at the end.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def compute_dtype(*xs: Any) -> Any:
    """float32 for inputs of at most 32 bits, float64 when any input is float64.

    Args:
      *xs: arrays, dtypes or Python scalars (as `jnp.result_type` takes them).

    Returns:
      A numpy dtype: ``promote_types(result_type(*xs), float32)``.
    """
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)
