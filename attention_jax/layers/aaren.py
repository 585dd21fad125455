"""Aaren: attention of one query over every prefix of a stream, as an RNN and as a parallel prefix scan.

Feng et al. 2024, "Attention as an RNN", arXiv:2405.13956. Softmax attention of a single query q over keys and
values x_1..x_k is a many-to-one RNN whose state is (m_k, u_k, w_k): the running max of the logits
s_i = q . k_i, u_k = sum_i exp(s_i - m_k) and w_k = sum_i exp(s_i - m_k) v_i, with output o_k = w_k / u_k (§3.1).
All prefix outputs o_1..o_S come from one parallel prefix scan with the associative operator of §3.2,

    (m_A, u_A, w_A) (+) (m_B, u_B, w_B) = (m, u_A e^{m_A - m} + u_B e^{m_B - m}, w_A e^{m_A - m} + w_B e^{m_B - m}),
    m = max(m_A, m_B),

and Aaren (§3.3) is that scan with a learned query token, so a layer trains in parallel and runs in O(1) memory
per step at inference. Masked positions enter the scan as the identity-like element (EMPTY_ROW_LSE, 0, 0): a
finite floor instead of -inf, so no -inf - -inf is ever formed, and a prefix with no valid key outputs zeros.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core.alignment import EMPTY_ROW_LSE
from attention_jax.layers.multihead import dense_projection

_F32 = jnp.float32


class AarenState(NamedTuple):
    """The O(1) recurrent state of Aaren (arXiv:2405.13956, §3.1), float32.

    Attributes:
      m: [B, N] float32, the running max of the valid logits (EMPTY_ROW_LSE before any valid key).
      u: [B, N] float32, sum_i exp(s_i - m) over the valid keys so far.
      w: [B, N, H] float32, sum_i exp(s_i - m) v_i over the valid keys so far.
    """

    m: jax.Array
    u: jax.Array
    w: jax.Array


def _combine(a: AarenState, b: AarenState) -> AarenState:
    """The associative operator of arXiv:2405.13956 §3.2; works on any leading shape (the scan's or a step's)."""
    m = jnp.maximum(a.m, b.m)
    # Both exponents are <= 0 and finite (m >= EMPTY_ROW_LSE), so they never overflow and never make NaN.
    scale_a = jnp.exp(a.m - m)
    scale_b = jnp.exp(b.m - m)
    return AarenState(
        m=m,
        u=a.u * scale_a + b.u * scale_b,
        w=a.w * scale_a[..., None] + b.w * scale_b[..., None],
    )


def _output(state: AarenState) -> jax.Array:
    """o = w / u, and 0 where no valid key has been seen (u == 0), with zero gradients there."""
    has_key = state.u > 0
    safe_u = jnp.where(has_key, state.u, 1.0)
    return jnp.where(has_key[..., None], state.w / safe_u[..., None], 0.0)


def _scale(scale: float | None, head_dim: int) -> float:
    if head_dim == 0:
        raise ValueError("the head dim H must be >= 1, got H=0")
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _leaves(query, key, value, valid, scale) -> AarenState:
    """The per-position scan elements (s, 1, v), or (EMPTY_ROW_LSE, 0, 0) where `valid` is False.

    query [B, N, H]; key, value [B, ..., N, H]; valid bool broadcastable to key.shape[:-1] or None.
    """
    if valid is not None:
        # Sanitised before the einsum so that NaN keys or values at masked positions reach neither the
        # output nor any gradient (0 * NaN would otherwise leak into d query).
        key = jnp.where(valid[..., None], key, 0)
        value = jnp.where(valid[..., None], value, 0)
    query = query.astype(_F32)
    if key.ndim == 4:
        logits = jnp.einsum("BNH,BSNH->BSN", query, key.astype(_F32)) * scale  # [B, S, N]
    else:
        logits = jnp.einsum("BNH,BNH->BN", query, key.astype(_F32)) * scale  # [B, N]
    value = value.astype(_F32)
    if valid is None:
        return AarenState(m=logits, u=jnp.ones_like(logits), w=value)
    return AarenState(
        m=jnp.where(valid, logits, EMPTY_ROW_LSE),
        u=valid.astype(_F32) * jnp.ones_like(logits),
        w=value,
    )


def aaren_scan(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    scale: float | None = None,
) -> jax.Array:
    """Softmax attention of one query per head over every prefix of the keys, by a parallel prefix scan.

    Feng et al. 2024, arXiv:2405.13956, §3.2: outputs[:, k] = sum_{i <= k} softmax_i(scale * q . k_i) v_i over
    the valid positions i <= k, computed for all k at once with `jax.lax.associative_scan` and the operator
    (m, u, w) of §3.2 (see the module docstring). Logits and the scan run in float32. A prefix with no valid
    key outputs zeros with zero gradients, never NaN; keys and values at masked positions (even NaN) reach
    neither the output nor the gradients.

    Args:
      query: [B, N, H] floating, one query per head.
      key: [B, S, N, H] floating.
      value: [B, S, N, H] floating.
      mask: None or [B, S] bool, True = the position is a valid key.
      scale: the logit scale; default 1 / sqrt(H).

    Returns:
      outputs: [B, S, N, H] in the value dtype; outputs[:, k] attends over positions 0..k (empty when S = 0).

    Raises:
      ValueError: if ranks or shapes disagree (query [B, N, H], key and value [B, S, N, H], mask [B, S]).
      TypeError: if query, key or value is not floating or the mask is not boolean.
    """
    _checks.rank("query", query, 3)
    _checks.rank("key", key, 4)
    _checks.rank("value", value, 4)
    for name, x in (("query", query), ("key", key), ("value", value)):
        _checks.floating(name, x)
    if jnp.shape(key) != jnp.shape(value):
        raise ValueError(f"key and value shapes differ: {jnp.shape(key)=} {jnp.shape(value)=}")
    batch, _, heads, head_dim = jnp.shape(key)
    if jnp.shape(query) != (batch, heads, head_dim):
        raise ValueError(
            f"query [B, N, H] does not fit key [B, S, N, H]: {jnp.shape(query)=} {jnp.shape(key)=}"
        )
    if mask is not None:
        _checks.boolean("mask", mask)
        if jnp.shape(mask) != jnp.shape(key)[:2]:
            raise ValueError(f"mask must be [B, S]={jnp.shape(key)[:2]}: {jnp.shape(mask)=} {jnp.shape(key)=}")
        mask = mask[:, :, None]  # [B, S, 1]
    leaves = _leaves(query, key, value, mask, _scale(scale, head_dim))  # m, u [B, S, N]; w [B, S, N, H]
    prefixes = jax.lax.associative_scan(_combine, leaves, axis=1)
    return _output(prefixes).astype(jnp.result_type(value))


def aaren_init(batch: int, heads: int, head_dim: int) -> AarenState:
    """The state before any key: (m, u, w) = (EMPTY_ROW_LSE, 0, 0), the identity of the §3.2 operator.

    Args:
      batch: B.
      heads: N.
      head_dim: H.

    Returns:
      AarenState with m, u [B, N] and w [B, N, H], all float32.

    Raises:
      ValueError: if any size is not a non-negative integer.
    """
    batch = _checks.positive_int("batch", batch, allow_zero=True)
    heads = _checks.positive_int("heads", heads, allow_zero=True)
    head_dim = _checks.positive_int("head_dim", head_dim, allow_zero=True)
    return AarenState(
        m=jnp.full((batch, heads), EMPTY_ROW_LSE, _F32),
        u=jnp.zeros((batch, heads), _F32),
        w=jnp.zeros((batch, heads, head_dim), _F32),
    )


def _check_state_and_valid(state, valid_t, batch: int, heads: int, head_dim: int) -> None:
    """Raises unless state is (m [B, N], u [B, N], w [B, N, H]) and valid_t is None or [B] bool."""
    if not isinstance(state, tuple) or len(state) != 3:
        raise ValueError(f"state must be an AarenState (m, u, w), got {type(state).__name__}")
    m, u, w = state
    if jnp.shape(m) != (batch, heads) or jnp.shape(u) != (batch, heads) or jnp.shape(w) != (batch, heads, head_dim):
        raise ValueError(
            f"state (m [B, N], u [B, N], w [B, N, H]) does not fit [B, N, H]={(batch, heads, head_dim)}: "
            f"{jnp.shape(m)=} {jnp.shape(u)=} {jnp.shape(w)=}"
        )
    if valid_t is not None:
        _checks.boolean("valid_t", valid_t)
        if jnp.shape(valid_t) != (batch,):
            raise ValueError(f"valid_t must be [B]=({batch},): {jnp.shape(valid_t)=}")


def aaren_step(
    state: AarenState,
    query: jax.Array,
    key_t: jax.Array,
    value_t: jax.Array,
    valid_t: jax.Array | None = None,
    *,
    scale: float | None = None,
) -> tuple[AarenState, jax.Array]:
    """One O(1) step of the many-to-one attention RNN, (m_k, u_k, w_k) from (m_{k-1}, u_{k-1}, w_{k-1}).

    Feng et al. 2024, arXiv:2405.13956, §3.1: m_k = max(m_{k-1}, s_k), u_k = u_{k-1} e^{m_{k-1} - m_k} +
    e^{s_k - m_k}, w_k = w_{k-1} e^{m_{k-1} - m_k} + v_k e^{s_k - m_k}, o_k = w_k / u_k. An invalid step leaves the
    state unchanged (its key and value, even NaN, are ignored). Folding it over a sequence from `aaren_init`
    gives the outputs of `aaren_scan`.

    Args:
      state: AarenState with m, u [B, N] float32 and w [B, N, H] float32.
      query: [B, N, H] floating, the same query at every step.
      key_t: [B, N, H] floating.
      value_t: [B, N, H] floating.
      valid_t: None or [B] bool, True = this step's key counts.
      scale: the logit scale; default 1 / sqrt(H).

    Returns:
      state: the new AarenState (float32).
      output: [B, N, H] in the value dtype; zeros while no valid key has been seen.

    Raises:
      ValueError: if the shapes of the state, query, key_t, value_t or valid_t disagree.
      TypeError: if query, key_t or value_t is not floating or valid_t is not boolean.
    """
    _checks.rank("query", query, 3)
    for name, x in (("query", query), ("key_t", key_t), ("value_t", value_t)):
        _checks.floating(name, x)
    if not jnp.shape(query) == jnp.shape(key_t) == jnp.shape(value_t):
        raise ValueError(
            f"query, key_t and value_t must all be [B, N, H]: {jnp.shape(query)=} {jnp.shape(key_t)=} "
            f"{jnp.shape(value_t)=}"
        )
    batch, heads, head_dim = jnp.shape(query)
    _check_state_and_valid(state, valid_t, batch, heads, head_dim)
    if valid_t is not None:
        valid_t = valid_t[:, None]  # [B, 1]
    state = AarenState(*(jnp.asarray(x, _F32) for x in state))
    leaf = _leaves(query, key_t, value_t, valid_t, _scale(scale, head_dim))  # m, u [B, N]; w [B, N, H]
    state = _combine(state, leaf)
    return state, _output(state).astype(jnp.result_type(value_t))


class Aaren(nn.Module):
    """Aaren layer: a learned query token per head attending over every prefix of its input (arXiv:2405.13956, §3.3).

    Keys and values are projections of the inputs, x [B, S, D] -> [B, S, N, H] ("key", "value"); the query is a
    learned parameter q [N, H] ("query"), the same for every position, as in the paper; the prefix outputs
    [B, S, N, H] are projected to [B, S, D_out] ("out"). `__call__` computes all prefixes with the parallel scan
    (training); `step` runs the O(1) recurrence one token at a time (inference) and gives the same outputs:
    start it from `aaren_init(B, num_heads, head_dim)`. The output projection is this library's addition
    (to return to the model dim); the paper stacks Aarens with the usual residuals and feed-forwards outside.

    Attributes:
      num_heads: N.
      head_dim: H.
      out_features: D_out; None means D.
      use_bias: whether the key, value and out projections have biases.
      dtype: the compute dtype of the projections; None infers it from inputs and params.
      param_dtype: the parameter dtype, float32 by default.
      kernel_init: initialiser of the projection kernels.
      bias_init: initialiser of the projection biases.
      query_init: initialiser of the learned query token [N, H].
      scale: the logit scale; None means 1 / sqrt(H).

    Raises:
      ValueError: at construction, if num_heads, head_dim or out_features (when set) is not an int >= 1.
      TypeError: at construction, if use_bias is not a bool.
    """

    num_heads: int
    head_dim: int
    out_features: int | None = None
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    query_init: Callable[..., Any] = nn.initializers.normal(stddev=1.0)
    scale: float | None = None

    def __post_init__(self):
        for name in ("num_heads", "head_dim"):
            _checks.int_at_least(name, getattr(self, name), 1)
        if self.out_features is not None:
            _checks.int_at_least("out_features", self.out_features, 1)
        _checks.flag("use_bias", self.use_bias)
        super().__post_init__()

    _dense = dense_projection

    @nn.compact
    def _apply(self, x: jax.Array, core: Callable[..., Any]) -> tuple[Any, jax.Array]:
        """Projects x [B, ..., D], runs `core(query [B, N, H], key, value [B, ..., N, H]) -> (aux, outputs)`,
        and returns (aux, out-projected outputs [B, ..., D_out]); one place owns every parameter."""
        query = self.param("query", axes.partitioned(self.query_init, (axes.HEADS, axes.HEAD_DIM)),
                           (self.num_heads, self.head_dim), self.param_dtype)
        heads = (self.num_heads, self.head_dim)
        names = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        key = self._dense(heads, -1, "key", names)(x)  # [B, ..., N, H]
        value = self._dense(heads, -1, "value", names)(x)  # [B, ..., N, H]
        if jnp.ndim(x) == 3:  # the scan over [B, S, D]; a step's [B, D] has no length axis
            key = axes.constrain(key, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM))
            value = axes.constrain(value, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM))
        query = jnp.broadcast_to(query, (jnp.shape(x)[0],) + query.shape)  # [B, N, H]
        aux, outputs = core(query, key, value)  # outputs [B, ..., N, H]
        features = self.out_features or jnp.shape(x)[-1]
        out = self._dense(features, (-2, -1), "out", (axes.HEADS, axes.HEAD_DIM, axes.EMBED))
        return aux, out(outputs)  # [B, ..., D_out]

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """All prefix outputs of Aaren over `x`, by the parallel prefix scan (arXiv:2405.13956, §3.2-3.3).

        Args:
          x: [B, S, D] floating.
          mask: None or [B, S] bool, True = the token is a valid key.

        Returns:
          y: [B, S, D_out]; y[:, k] depends on the valid tokens 0..k only (zeros before the first, up to bias);
            empty when S = 0.

        Raises:
          ValueError: if x is not rank 3, D = 0, or the mask is not [B, S].
          TypeError: if x is not floating or the mask is not boolean.
        """
        _checks.rank("x", x, 3)
        _checks.floating("x", x)
        if jnp.shape(x)[-1] == 0:
            raise ValueError(f"x needs at least one feature: {jnp.shape(x)=}")
        if mask is not None:
            _checks.boolean("mask", mask)
            if jnp.shape(mask) != jnp.shape(x)[:2]:
                raise ValueError(f"mask must be [B, S]={jnp.shape(x)[:2]}: {jnp.shape(mask)=} {jnp.shape(x)=}")
        if mask is not None:  # masked tokens (even NaN) never reach the key/value projections or their gradients
            x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))
        _, y = self._apply(x, lambda q, k, v: (None, aaren_scan(q, k, v, mask, scale=self.scale)))
        return y  # [B, S, D_out]

    def step(
        self, state: AarenState, x_t: jax.Array, valid_t: jax.Array | None = None
    ) -> tuple[AarenState, jax.Array]:
        """One streaming step of Aaren (arXiv:2405.13956, §3.1); folding it over x[:, k] equals `__call__`.

        Args:
          state: AarenState (m, u [B, N], w [B, N, H] float32), from `aaren_init(B, num_heads, head_dim)`.
          x_t: [B, D] floating, the token at this step.
          valid_t: None or [B] bool, True = the token is a valid key.

        Returns:
          state: the new AarenState.
          y_t: [B, D_out], equal to `__call__(x)[:, t]`.

        Raises:
          ValueError: if x_t is not rank 2, D = 0, or the state or valid_t does not fit it.
          TypeError: if x_t is not floating or valid_t is not boolean.
        """
        _checks.rank("x_t", x_t, 2)
        _checks.floating("x_t", x_t)
        if jnp.shape(x_t)[-1] == 0:
            raise ValueError(f"x_t needs at least one feature: {jnp.shape(x_t)=}")
        _check_state_and_valid(state, valid_t, jnp.shape(x_t)[0], self.num_heads, self.head_dim)
        if valid_t is not None:  # an invalid token (even NaN) never reaches the projections or their gradients
            x_t = jnp.where(valid_t[:, None], x_t, jnp.zeros((), x_t.dtype))
        return self._apply(x_t, lambda q, k, v: aaren_step(state, q, k, v, valid_t, scale=self.scale))
