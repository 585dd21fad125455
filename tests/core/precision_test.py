"""Tests of attention_jax.core.precision: the dtype the attention math runs in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.core import precision


@pytest.mark.parametrize("dtypes, expected", [
    ((jnp.bfloat16,), jnp.float32),
    ((jnp.float16,), jnp.float32),
    ((jnp.float32,), jnp.float32),
    ((jnp.bfloat16, jnp.float16), jnp.float32),
    ((jnp.int8,), jnp.float32),
])
def test_at_least_float32(dtypes, expected):
    xs = [jnp.zeros((2,), d) for d in dtypes]
    assert precision.compute_dtype(*xs) == expected


def test_float64_stays_float64():
    with jax.enable_x64(True):
        assert precision.compute_dtype(np.zeros((2,), np.float64)) == jnp.float64
        assert precision.compute_dtype(jnp.zeros((2,), jnp.float32), np.zeros((2,), np.float64)) == jnp.float64
