"""Pieces shared by the attention layers: shape-inferred kernels, and the rows a layer must zero before projecting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.core import axes as axes_lib

Array = jax.Array


def vector_init(stddev_from: int) -> Callable[..., Array]:
    return nn.initializers.normal(stddev=1.0 / max(stddev_from, 1) ** 0.5)


class Kernel(nn.Module):
    """A [Din, features] weight matrix whose input size is read at the first call.

    Lets a setup-style module expose several methods (here `BahdanauAttention.project_keys` and
    `__call__`) that share shape-inferred weights.

    Attributes:
      features: the output size.
      param_dtype: the parameter dtype.
      axes: the logical axis names of [Din, features] (`attention_jax.core.axes`).
    """

    features: int
    param_dtype: Any = jnp.float32
    axes: tuple[str | None, str | None] = (axes_lib.EMBED, axes_lib.MLP)

    @nn.compact
    def __call__(self, in_features: int) -> Array:
        return self.param(
            "kernel", axes_lib.partitioned(nn.initializers.lecun_normal(), self.axes), (in_features, self.features),
            self.param_dtype,
        )


def _members(values: Array, pool: Array) -> Array:
    """[B, X] bool: whether values[b, x] occurs in pool[b, :] (sort + binary search, no [X, Y] array)."""
    if pool.shape[1] == 0:
        return jnp.zeros(values.shape, bool)
    pool = jnp.sort(pool, axis=-1)  # [B, Y]
    index = jax.vmap(jnp.searchsorted)(pool, values)  # [B, X]
    index = jnp.minimum(index, pool.shape[1] - 1)
    return jnp.take_along_axis(pool, index, axis=-1) == values


def live_rows(
    batch: int,
    num_queries: int,
    num_keys: int,
    *,
    mask: Array | None = None,
    key_lengths: Array | None = None,
    segment_ids: tuple[Array, Array] | None = None,
    is_causal: bool = False,
) -> tuple[Array | None, Array | None]:
    """Which query rows attend some key and which key rows some query attends, per mask source.

    A layer zeroes its raw inputs outside these rows before projecting them: the attention backend already
    keeps masked keys out of the output, but a NaN left in a masked input row would still reach the gradient of
    the projection (d W = x^T d y = NaN * 0). Each source (dense mask, key lengths, segment ids, top-left
    causality) is reduced on its own and the results are ANDed: a row that one source kills is dead; a row that
    only the combination of sources kills is kept (it stays correct, merely not sanitised). No [T, S] array is
    built beyond the dense mask the caller already holds.

    Args:
      batch: B.
      num_queries: T.
      num_keys: S.
      mask: None or [B|1, N|1, T, S] bool (True = attend).
      key_lengths: None or [B] integer.
      segment_ids: None or (q_segment_ids [B, T], kv_segment_ids [B, S]) integer.
      is_causal: top-left causality (key s is seen by queries t >= s only).

    Returns:
      (live_queries [B, T] bool or None, live_keys [B, S] bool or None); None means every row is live.
    """
    live_q, live_k = None, None

    def both(a, b):
        if b is None:
            return a
        b = jnp.broadcast_to(b, (batch, b.shape[-1]))
        return b if a is None else a & b

    if mask is not None:
        live_q = both(live_q, jnp.any(mask, axis=(1, 3)))  # [B|1, T]
        live_k = both(live_k, jnp.any(mask, axis=(1, 2)))  # [B|1, S]
    if key_lengths is not None:
        live_k = both(live_k, jnp.arange(num_keys)[None, :] < jnp.asarray(key_lengths)[:, None])
        live_q = both(live_q, jnp.broadcast_to((jnp.asarray(key_lengths) > 0)[:, None], (batch, num_queries)))
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids
        live_q = both(live_q, _members(q_seg, kv_seg))
        live_k = both(live_k, _members(kv_seg, q_seg))
    if is_causal:
        live_k = both(live_k, (jnp.arange(num_keys) < num_queries)[None, :])
    return live_q, live_k


def zero_dead(x: Array, live: Array | None) -> Array:
    """x [B, L, ...] with the rows where live [B, L] is False replaced by zeros (x unchanged when live is None)."""
    if live is None:
        return x
    return jnp.where(live.reshape(live.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))
