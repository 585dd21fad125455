"""Sparse normalisers: alignment functions that can give keys exactly zero weight.

  sparsemax   the Euclidean projection of the logits onto the simplex (Martins & Astudillo 2016,
              arXiv:1602.02068, eq. 2 and Algorithm 1); its Jacobian is eq. 12.
  entmax15    1.5-entmax, exact by sorting (Peters, Niculae & Martins 2019, arXiv:1905.05702, eq. 10 with
              alpha = 1.5 and Algorithm 2).
  entmax      alpha-entmax for any alpha >= 1 by bisection on the threshold tau (Peters et al. 2019, eq. 10
              and Algorithm 1); alpha = 1 is the softmax, alpha = 2 is sparsemax.

Every function takes logits [..., S] and an optional boolean mask of the same shape, like
`alignment.masked_softmax`, and returns float32 weights over the last axis: each row sums to 1 over its valid
keys, and a row with no valid key (or S = 0) is all zeros, with zero gradients. Masked logits are replaced
before any arithmetic, so NaN or inf there reaches neither the weights nor the gradients.

All three share one custom JVP (Peters et al. 2019, Proposition 2): with g = p^(2 - alpha) on the support
and 0 elsewhere, J = diag(g) - g g^T / sum(g). Sparsemax is the case g = 1 on the support (eq. 12 of Martins
& Astudillo). Differentiating through the sort instead would give the same values at a higher cost.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

from attention_jax import _checks

__all__ = ["entmax", "entmax15", "sparsemax"]

_F32 = jnp.float32


def _prepare(name: str, logits, mask) -> tuple[jax.Array, jax.Array]:
    """Checks the inputs; returns (float32 logits with masked entries set to 0, the valid-key mask)."""
    _checks.floating(name, logits)
    logits = jnp.asarray(logits).astype(_F32)
    if jnp.ndim(logits) == 0:
        raise ValueError(f"{name} must have at least one axis (the keys), got a scalar")
    if mask is None:
        return logits, jnp.ones(logits.shape, bool)
    _checks.boolean("mask", mask)
    if jnp.shape(mask) != logits.shape:
        raise ValueError(f"mask and {name} shapes differ: {jnp.shape(mask)=} {logits.shape=}")
    mask = jnp.asarray(mask)
    return jnp.where(mask, logits, 0.0), mask


def _support_jvp(weights: jax.Array, gain: jax.Array, tangent: jax.Array) -> jax.Array:
    """J t for J = diag(g) - g g^T / sum(g): the entmax Jacobian-vector product (Peters et al. 2019, Prop. 2)."""
    total = jnp.sum(gain, axis=-1, keepdims=True)
    safe = jnp.where(total > 0, total, 1.0)
    gt = gain * tangent
    return gt - gain * jnp.sum(gt, axis=-1, keepdims=True) / safe


def _centred(x: jax.Array, valid: jax.Array) -> jax.Array:
    """x minus its largest valid entry (which moves only tau), with invalid entries set to 0."""
    top = jnp.max(jnp.where(valid, x, jnp.finfo(_F32).min), axis=-1, keepdims=True)
    return jnp.where(valid, x - top, 0.0)


def _sorted_valid(z: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Valid logits sorted in descending order (invalid ones last, as 0), the valid flags and ranks 1..S."""
    floor = jnp.finfo(_F32).min
    z_sorted = -jnp.sort(-jnp.where(valid, z, floor), axis=-1)  # [..., S], invalid entries at the end
    count = jnp.sum(valid, axis=-1, keepdims=True)  # [..., 1]
    rank = jnp.arange(1, z.shape[-1] + 1, dtype=_F32)  # [S]
    in_range = rank <= count  # [..., S]
    return jnp.where(in_range, z_sorted, 0.0), in_range, rank


@jax.custom_jvp
def _sparsemax(z: jax.Array, valid: jax.Array) -> jax.Array:
    z = _centred(z, valid)
    z_sorted, in_range, rank = _sorted_valid(z, valid)
    cumulative = jnp.cumsum(z_sorted, axis=-1)  # [..., S]
    # Algorithm 1: k(z) = max{k : 1 + k z_(k) > sum_{j <= k} z_(j)}, over the valid keys only.
    support = in_range & (1.0 + rank * z_sorted > cumulative)
    size = jnp.sum(support, axis=-1, keepdims=True)  # [..., 1], >= 1 on rows with a valid key
    safe_size = jnp.maximum(size, 1)
    tau = (jnp.take_along_axis(cumulative, safe_size - 1, axis=-1) - 1.0) / safe_size
    return jnp.where(valid & (size > 0), jnp.maximum(z - tau, 0.0), 0.0)


@_sparsemax.defjvp
def _sparsemax_jvp(primals, tangents):
    z, valid = primals
    weights = _sparsemax(z, valid)
    gain = (weights > 0).astype(_F32)
    return weights, _support_jvp(weights, gain, jnp.where(valid, tangents[0], 0.0))


@jax.custom_jvp
def _entmax15(z: jax.Array, valid: jax.Array) -> jax.Array:
    x = _centred(0.5 * z, valid)  # (alpha - 1) z with alpha = 1.5
    x_sorted, in_range, rank = _sorted_valid(x, valid)
    # Algorithm 2: with the top rho entries, tau(rho) = mean - sqrt((1 - rho * variance) / rho); the support
    # is the largest rho whose tau(rho) <= x_(rho).
    mean = jnp.cumsum(x_sorted, axis=-1) / rank
    mean_sq = jnp.cumsum(x_sorted * x_sorted, axis=-1) / rank
    spread = rank * (mean_sq - mean * mean)
    tau = mean - jnp.sqrt(jnp.maximum((1.0 - spread) / rank, 0.0))
    support = in_range & (tau <= x_sorted)
    size = jnp.sum(support, axis=-1, keepdims=True)
    tau_star = jnp.take_along_axis(tau, jnp.maximum(size, 1) - 1, axis=-1)
    p = jnp.square(jnp.maximum(x - tau_star, 0.0))
    return jnp.where(valid & (size > 0), p, 0.0)


@_entmax15.defjvp
def _entmax15_jvp(primals, tangents):
    z, valid = primals
    weights = _entmax15(z, valid)
    return weights, _support_jvp(weights, jnp.sqrt(weights), jnp.where(valid, tangents[0], 0.0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _entmax_bisect(z: jax.Array, valid: jax.Array, alpha: float, n_iter: int) -> jax.Array:
    x = _centred((alpha - 1.0) * z, valid)
    count = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(_F32)
    power = 1.0 / (alpha - 1.0)

    def weights_at(tau):
        return jnp.where(valid, jnp.maximum(x - tau, 0.0) ** power, 0.0)

    # sum_i p_i(tau) decreases in tau; it is >= 1 at tau = max x - 1 and <= 1 at max x - count^(1 - alpha).
    low = jnp.full(count.shape, -1.0, _F32)
    high = -(count ** (1.0 - alpha))

    def halve(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        above = jnp.sum(weights_at(mid), axis=-1, keepdims=True) >= 1.0
        return jnp.where(above, mid, low), jnp.where(above, high, mid)

    low, high = jax.lax.fori_loop(0, n_iter, halve, (low, high))
    p = weights_at(low)
    total = jnp.sum(p, axis=-1, keepdims=True)
    has_key = jnp.any(valid, axis=-1, keepdims=True)
    return jnp.where(has_key, p / jnp.where(total > 0, total, 1.0), 0.0)


@_entmax_bisect.defjvp
def _entmax_bisect_jvp(alpha, n_iter, primals, tangents):
    z, valid = primals
    weights = _entmax_bisect(z, valid, alpha, n_iter)
    gain = jnp.where(weights > 0, weights ** (2.0 - alpha), 0.0)
    return weights, _support_jvp(weights, gain, jnp.where(valid, tangents[0], 0.0))


def _empty(logits: jax.Array) -> jax.Array | None:
    return jnp.zeros(logits.shape, _F32) if logits.shape[-1] == 0 else None


def sparsemax(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sparsemax over the last axis: the Euclidean projection of the logits onto the probability simplex.

    Martins & Astudillo 2016, arXiv:1602.02068, eq. (2), computed exactly by sorting (Algorithm 1); the
    gradient is eq. (12). Weights are exactly zero below the threshold tau, e.g. logits [-2, 0, 0.5] give
    [0, 0.25, 0.75] (softmax: [0.0486, 0.3592, 0.5922]).

    Args:
      logits: [..., S] floating, any dtype (computed in float32).
      mask: None or bool of exactly the shape of `logits` (True = attend); never broadcast.

    Returns:
      weights: [..., S] float32; each row sums to 1 over its valid keys, or is all zero if it has none
      (or S = 0), with zero gradient.

    Raises:
      TypeError: if logits are not floating or the mask is not boolean.
      ValueError: if logits are a scalar or the mask shape differs from the logits shape.
    """
    z, valid = _prepare("logits", logits, mask)
    empty = _empty(z)
    return empty if empty is not None else _sparsemax(z, valid)


def entmax15(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """1.5-entmax over the last axis, computed exactly by sorting.

    Peters, Niculae & Martins 2019, arXiv:1905.05702, eq. (10) with alpha = 1.5, p_i = [z_i / 2 - tau]_+^2,
    with tau found exactly by Algorithm 2; the gradient is Proposition 2 (g = sqrt(p)). Between softmax and
    sparsemax: logits [-2, 0, 0.5] give [0, 0.3260, 0.6740].

    Args:
      logits: [..., S] floating, any dtype (computed in float32).
      mask: None or bool of exactly the shape of `logits` (True = attend); never broadcast.

    Returns:
      weights: [..., S] float32; each row sums to 1 over its valid keys, or is all zero if it has none
      (or S = 0), with zero gradient.

    Raises:
      TypeError: if logits are not floating or the mask is not boolean.
      ValueError: if logits are a scalar or the mask shape differs from the logits shape.
    """
    z, valid = _prepare("logits", logits, mask)
    empty = _empty(z)
    return empty if empty is not None else _entmax15(z, valid)


def entmax(logits: jax.Array, mask: jax.Array | None = None, *, alpha: float = 1.5, n_iter: int = 50) -> jax.Array:
    """alpha-entmax over the last axis, by bisection on the threshold tau.

    Peters, Niculae & Martins 2019, arXiv:1905.05702, eq. (10), p_i = [(alpha - 1) z_i - tau]_+^(1/(alpha-1)),
    with tau found by bisection (Algorithm 1) and the weights renormalised to sum to 1; the gradient is
    Proposition 2. alpha = 1 is the softmax (returned by `alignment.masked_softmax`), alpha = 1.5 matches
    `entmax15` and alpha = 2 matches `sparsemax` to float32 precision; larger alpha is sparser.

    Args:
      logits: [..., S] floating, any dtype (computed in float32).
      mask: None or bool of exactly the shape of `logits` (True = attend); never broadcast.
      alpha: a Python number >= 1 (static: a traced alpha is not supported).
      n_iter: bisection steps, a positive int; each halves the bracket of width < 1 around tau, so 30 already
        reach float32 resolution.

    Returns:
      weights: [..., S] float32; each row sums to 1 over its valid keys, or is all zero if it has none
      (or S = 0), with zero gradient.

    Raises:
      TypeError: if logits are not floating, the mask is not boolean, or alpha is not a real Python number.
      ValueError: if alpha < 1, n_iter < 1, logits are a scalar or the mask shape differs from the logits.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a Python number >= 1, got {type(alpha).__name__}: {alpha!r:.80}")
    if not alpha >= 1.0:
        raise ValueError(f"alpha must be >= 1 (1 = softmax, 2 = sparsemax), got {alpha}")
    n_iter = _checks.int_at_least("n_iter", n_iter, 1)
    z, valid = _prepare("logits", logits, mask)
    empty = _empty(z)
    if empty is not None:
        return empty
    if alpha == 1.0:
        from attention_jax.core import alignment  # alignment imports this module at its top

        return alignment.masked_softmax(z, valid)
    return _entmax_bisect(z, valid, float(alpha), n_iter)
