"""Pieces shared by the recurrent-decoder attention layers (Bahdanau, Luong)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def vector_init(stddev_from: int) -> Callable[..., Array]:
    return nn.initializers.normal(stddev=1.0 / max(stddev_from, 1) ** 0.5)


class Kernel(nn.Module):
    """A [Din, features] weight matrix whose input size is read at the first call.

    Lets a setup-style module expose several methods (here `BahdanauAttention.project_keys` and
    `__call__`) that share shape-inferred weights.
    """

    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, in_features: int) -> Array:
        return self.param(
            "kernel", nn.initializers.lecun_normal(), (in_features, self.features), self.param_dtype
        )
