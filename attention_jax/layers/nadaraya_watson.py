"""Nadaraya-Watson kernel regression as attention pooling.

Nadaraya 1964 and Watson 1964: f(x) = sum_i K(x - x_i) y_i / sum_j K(x - x_j). Written as attention (Zhang
et al., "Dive into Deep Learning", §11.2 in the 2023 edition, "Attention Pooling by Similarity"), the query is
x, the keys are the training inputs x_i, the values are the targets y_i, and the weights are
alpha(x, x_i) = K(x - x_i) / sum_j K(x - x_j). With the Gaussian kernel this is the softmax of
-||x - x_i||^2 / (2 sigma^2).

Kernels, with u = ||x - x_i|| / h for the bandwidth h:
  "gaussian"      K = exp(-u^2 / 2)
  "boxcar"        K = 1 for u <= 1, else 0
  "epanechnikov"  K = 3/4 (1 - u^2) for u <= 1, else 0

The weights are computed as a softmax of logits log K (with the keys where K = 0 masked), never as K / sum K,
so a narrow Gaussian does not underflow to 0/0: the nearest key always keeps its weight. A query with no key
inside a compact kernel's support gets zero weights and a zero prediction.

The parametric form (d2l's) learns the bandwidth: logits -(||x - x_i|| w)^2 / 2 with a learned scalar w. Trained
on its own training set, it must not let a point attend to itself (it would learn w -> infinity and copy y_i);
`leave_one_out_mask` gives the mask that drops the diagonal.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment, axes, masks

__all__ = ["KERNELS", "NadarayaWatson", "leave_one_out_mask", "nadaraya_watson"]

KERNELS = ("gaussian", "boxcar", "epanechnikov")
_F32 = jnp.float32


def _check(queries, keys, values, mask) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    for name, x in (("queries", queries), ("keys", keys), ("values", values)):
        _checks.rank(name, x, 3)
        _checks.floating(name, x)
    if queries.shape[0] != keys.shape[0] or keys.shape[:2] != values.shape[:2] or queries.shape[2] != keys.shape[2]:
        raise ValueError(f"queries [B, T, F], keys [B, S, F] and values [B, S, Dv] do not fit: {queries.shape=} "
                         f"{keys.shape=} {values.shape=}")
    if mask is not None:
        _checks.rank("mask", mask, (2, 3))
    valid = masks.broadcast_key_mask(mask, queries.shape[0], queries.shape[1], keys.shape[1])
    return jnp.asarray(queries), jnp.asarray(keys), jnp.asarray(values), valid


def nadaraya_watson(
    queries: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    mask: jax.Array | None = None,
    *,
    bandwidth: float | jax.Array = 1.0,
    kernel: str = "gaussian",
) -> tuple[jax.Array, jax.Array]:
    """Nadaraya-Watson regression: f(x) = sum_i alpha(x, x_i) y_i with alpha from a kernel (d2l §11.2).

    Masked keys (even NaN) reach neither the prediction nor any gradient.

    Args:
      queries: [B, T, F] floating, the points x to predict at.
      keys: [B, S, F] floating, the training inputs x_i.
      values: [B, S, Dv] floating, the training targets y_i.
      mask: None, [B, S] or [B, T, S] bool, True = query t may use key s (e.g. `leave_one_out_mask`).
      bandwidth: h > 0, a Python float or a traced scalar (the Gaussian's sigma).
      kernel: a name in `KERNELS`.

    Returns:
      prediction: [B, T, Dv] float32.
      weights: [B, T, S] float32; a row sums to 1, or is all zero when no valid key has K > 0.

    Raises:
      ValueError: for shapes that do not fit, an unknown kernel or a non-positive Python bandwidth.
      TypeError: for non-floating inputs or a non-boolean mask.
    """
    _checks.choice("kernel", kernel, KERNELS)
    if isinstance(bandwidth, (int, float)):
        _checks.positive_real("bandwidth", bandwidth)
    queries, keys, values, valid = _check(queries, keys, values, mask)
    if valid is not None:
        used = jnp.any(valid, axis=1)[:, :, None]  # [B, S, 1]: keys some query may use
        keys = jnp.where(used, keys, jnp.zeros((), keys.dtype))
        values = jnp.where(used, values, jnp.zeros((), values.dtype))
    diff = queries.astype(_F32)[:, :, None, :] - keys.astype(_F32)[:, None, :, :]  # [B, T, S, F]
    sq = jnp.sum(diff * diff, axis=-1) / jnp.square(jnp.asarray(bandwidth, _F32))  # u^2, [B, T, S]
    support = None  # the Gaussian's is everywhere
    if kernel == "gaussian":
        logits = -0.5 * sq
    elif kernel == "boxcar":
        support, logits = sq <= 1.0, jnp.zeros_like(sq)
    else:  # Epanechnikov: K = 3/4 (1 - u^2) is 0 at u = 1 already; log K up to the constant 3/4
        support = sq < 1.0
        logits = jnp.log(jnp.where(support, 1.0 - sq, 1.0))
    allowed = valid if support is None else (support if valid is None else valid & support)
    weights = alignment.masked_softmax(logits, allowed)
    prediction = jnp.einsum("BTS,BSD->BTD", weights, values.astype(_F32))
    return prediction, weights


def leave_one_out_mask(batch: int, num_points: int) -> jax.Array:
    """[B, n, n] bool, False on the diagonal: each training point attends to every other one, not itself.

    Raises:
      ValueError: if batch or num_points is negative.
    """
    batch = _checks.positive_int("batch", batch, allow_zero=True)
    num_points = _checks.positive_int("num_points", num_points, allow_zero=True)
    return jnp.broadcast_to(~jnp.eye(num_points, dtype=bool), (batch, num_points, num_points))


class NadarayaWatson(nn.Module):
    """Parametric Nadaraya-Watson regression (d2l §11.2.4): logits -(||x - x_i|| w)^2 / 2, w learned.

    The parameter "w" [] is the inverse bandwidth (w = 1 / sigma). `kernel` "boxcar" and "epanechnikov" use
    bandwidth 1 / |w| as well.

    Attributes:
      kernel: a name in `KERNELS`.
      init_bandwidth: sigma at initialisation (> 0).
      param_dtype: the parameter dtype, float32 by default.
    """

    kernel: str = "gaussian"
    init_bandwidth: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, queries: jax.Array, keys: jax.Array, values: jax.Array,
                 mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Predicts at the queries from the (keys, values) pairs.

        Args:
          queries: [B, T, F] floating; keys: [B, S, F] floating; values: [B, S, Dv] floating.
          mask: None, [B, S] or [B, T, S] bool (`leave_one_out_mask` when queries are the keys).

        Returns:
          prediction: [B, T, Dv] float32; weights: [B, T, S] float32.

        Raises:
          ValueError: for shapes that do not fit, an unknown kernel or a non-positive init_bandwidth.
          TypeError: for non-floating inputs or a non-boolean mask.
        """
        _checks.choice("kernel", self.kernel, KERNELS)
        init = 1.0 / _checks.positive_real("init_bandwidth", self.init_bandwidth)
        w = self.param("w", axes.partitioned(nn.initializers.constant(init), ()), (), self.param_dtype)
        bandwidth = 1.0 / jnp.maximum(jnp.abs(w.astype(_F32)), 1e-6)
        return nadaraya_watson(queries, keys, values, mask, bandwidth=bandwidth, kernel=self.kernel)
