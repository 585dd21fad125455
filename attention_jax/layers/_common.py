"""Pieces shared by the recurrent-decoder attention layers (Bahdanau, Luong)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def check_qkv(query: Array, key: Array, value: Array | None, mask: Array | None) -> None:
    if query.ndim != 3 or key.ndim != 3:
        raise ValueError(f"query and key must be [B, T, D] and [B, S, D]: {query.shape=} {key.shape=}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"query and key batch differ: {query.shape=} {key.shape=}")
    if value is not None and (value.ndim != 3 or value.shape[:2] != key.shape[:2]):
        raise ValueError(f"value must be [B, S, Dv] like key: {key.shape=} {value.shape=}")
    mask_shapes = ((key.shape[0], key.shape[1]), (key.shape[0], query.shape[1], key.shape[1]))
    if mask is not None and mask.shape not in mask_shapes:
        raise ValueError(f"mask must be [B, S] or [B, T, S]: {query.shape=} {key.shape=} {mask.shape=}")


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
