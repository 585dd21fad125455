"""Alignment scores: how well each query matches each key.

Every function maps a query [B, T, Dq] and keys [B, S, Dk] to logits [B, T, S] in float32, whatever the input
dtype. They are the first of the three steps score -> alignment -> context (see `attention_jax.core.context.attend`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from attention_jax import _checks

_F32 = jnp.float32


def _check_query_key(query: jax.Array, key: jax.Array, same_features: bool) -> None:
    _checks.rank("query", query, 3)
    _checks.rank("key", key, 3)
    _checks.floating("query", query)
    _checks.floating("key", key)
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"query and key batch sizes differ: {query.shape=} {key.shape=}")
    if same_features and query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key feature sizes differ: {query.shape=} {key.shape=}")


def _check_matrix(name: str, w: jax.Array, rows: int, cols: int | None = None) -> None:
    _checks.rank(name, w, 2)
    _checks.floating(name, w)
    if w.shape[0] != rows or (cols is not None and w.shape[1] != cols):
        want = (rows, "*" if cols is None else cols)
        raise ValueError(f"{name} must have shape {want}, got {w.shape}")


def _check_vector(name: str, v: jax.Array, size: int) -> None:
    _checks.rank(name, v, 1)
    _checks.floating(name, v)
    if v.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {v.shape}")


def dot_score(query: jax.Array, key: jax.Array) -> jax.Array:
    """Dot-product score, score(h_t, h_s) = h_t^T h_s.

    Luong et al. 2015, "Effective Approaches to Attention-based NMT", arXiv:1508.04025, eq. (8), 'dot'.

    Args:
      query: [B, T, D] floating, the target hidden states h_t.
      key: [B, S, D] floating, the source hidden states h_s.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if ranks are not 3, or batch or feature sizes differ.
      TypeError: if an input is not floating point.
    """
    _check_query_key(query, key, same_features=True)
    return jnp.einsum("BTD,BSD->BTS", query, key, preferred_element_type=_F32).astype(_F32)


def scaled_dot_score(query: jax.Array, key: jax.Array, scale: float | None = None) -> jax.Array:
    """Scaled dot-product score, q^T k / sqrt(D).

    Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762, eq. (1).

    Args:
      query: [B, T, D] floating.
      key: [B, S, D] floating.
      scale: the multiplier; defaults to 1 / sqrt(D).

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if ranks are not 3, or batch or feature sizes differ.
      TypeError: if an input is not floating point.
    """
    _check_query_key(query, key, same_features=True)
    if scale is None:
        scale = query.shape[-1] ** -0.5
    return dot_score(query, key) * jnp.asarray(scale, _F32)


def general_score(query: jax.Array, key: jax.Array, w_a: jax.Array) -> jax.Array:
    """Bilinear ('general') score, h_t^T W_a h_s.

    Luong et al. 2015, arXiv:1508.04025, eq. (8), 'general'.

    Args:
      query: [B, T, Dq] floating.
      key: [B, S, Dk] floating.
      w_a: [Dq, Dk] floating.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if ranks are not 3, batch sizes differ, or w_a is not [Dq, Dk].
      TypeError: if an input is not floating point.
    """
    _check_query_key(query, key, same_features=False)
    _check_matrix("w_a", w_a, query.shape[-1], key.shape[-1])
    # [B, T, Dk]: the query mapped into key space, then one dot product per key.
    projected = jnp.einsum("BTQ,QK->BTK", query.astype(_F32), w_a.astype(_F32))
    return jnp.einsum("BTK,BSK->BTS", projected, key.astype(_F32))


def additive_score_projected(projected_query: jax.Array, projected_key: jax.Array, v: jax.Array) -> jax.Array:
    """Additive score from projections already made, v^T tanh(W q + U k).

    Splitting the projections out lets a decoder project the keys once per sentence (Bahdanau et al. 2014,
    arXiv:1409.0473, appendix A.1.2: "U_a h_j ... can be pre-computed").

    Args:
      projected_query: [B, T, A] floating, W q.
      projected_key: [B, S, A] floating, U k.
      v: [A] floating.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if ranks are wrong, batch sizes differ, or the A sizes differ.
      TypeError: if an input is not floating point.
    """
    _check_query_key(projected_query, projected_key, same_features=True)
    _check_vector("v", v, projected_query.shape[-1])
    # [B, T, S, A]: every query-key pair, the memory cost of additive attention.
    hidden = jnp.tanh(projected_query.astype(_F32)[:, :, None, :] + projected_key.astype(_F32)[:, None, :, :])
    return jnp.einsum("BTSA,A->BTS", hidden, v.astype(_F32))


def additive_score(
    query: jax.Array, key: jax.Array, w_q: jax.Array, w_k: jax.Array, v: jax.Array
) -> jax.Array:
    """Bahdanau's additive score, e = v^T tanh(W_a s_{i-1} + U_a h_j).

    Bahdanau, Cho and Bengio 2014, arXiv:1409.0473, appendix A.1.2 (the alignment model of eq. 6).

    Args:
      query: [B, T, Dq] floating, the decoder states s_{i-1}.
      key: [B, S, Dk] floating, the annotations h_j.
      w_q: [Dq, A] floating, W_a.
      w_k: [Dk, A] floating, U_a.
      v: [A] floating, v_a.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if ranks are not 3, batch sizes differ, or a weight has the wrong shape.
      TypeError: if an input is not floating point.
    """
    _check_query_key(query, key, same_features=False)
    _check_matrix("w_q", w_q, query.shape[-1])
    _check_matrix("w_k", w_k, key.shape[-1], w_q.shape[1])
    projected_query = jnp.einsum("BTQ,QA->BTA", query.astype(_F32), w_q.astype(_F32))
    projected_key = jnp.einsum("BSK,KA->BSA", key.astype(_F32), w_k.astype(_F32))
    return additive_score_projected(projected_query, projected_key, v)


def concat_score(query: jax.Array, key: jax.Array, w_a: jax.Array, v_a: jax.Array) -> jax.Array:
    """Luong's 'concat' score, v_a^T tanh(W_a [h_t; h_s]).

    Luong et al. 2015, arXiv:1508.04025, eq. (8), 'concat'. W_a [h_t; h_s] is computed as the sum of its query
    and key halves, so the [B, T, S, Dq + Dk] concatenation is never built.

    Args:
      query: [B, T, Dq] floating.
      key: [B, S, Dk] floating.
      w_a: [Dq + Dk, A] floating; rows [:Dq] act on h_t, rows [Dq:] on h_s.
      v_a: [A] floating.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if ranks are not 3, batch sizes differ, or a weight has the wrong shape.
      TypeError: if an input is not floating point.
    """
    _check_query_key(query, key, same_features=False)
    dq = query.shape[-1]
    _check_matrix("w_a", w_a, dq + key.shape[-1])
    projected_query = jnp.einsum("BTQ,QA->BTA", query.astype(_F32), w_a[:dq].astype(_F32))
    projected_key = jnp.einsum("BSK,KA->BSA", key.astype(_F32), w_a[dq:].astype(_F32))
    return additive_score_projected(projected_query, projected_key, v_a)


def location_score(query: jax.Array, w_a: jax.Array, num_keys: int) -> jax.Array:
    """Location-based score, a_t = softmax(W_a h_t): the logits depend on the target state only.

    Luong et al. 2015, arXiv:1508.04025, eq. (8), 'location'. W_a has one row per source position up to a
    maximum length S_max; the first S columns are used.

    Args:
      query: [B, T, Dq] floating.
      w_a: [Dq, S_max] floating.
      num_keys: S, the padded source length; must be <= S_max.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: if query is not rank 3, w_a is not [Dq, S_max], or num_keys > S_max.
      TypeError: if an input is not floating point.
    """
    _checks.rank("query", query, 3)
    _checks.floating("query", query)
    _check_matrix("w_a", w_a, query.shape[-1])
    num_keys = _checks.positive_int("num_keys", num_keys, allow_zero=True)
    if num_keys > w_a.shape[1]:
        raise ValueError(
            f"location score has weights for at most S_max={w_a.shape[1]} source positions, got num_keys={num_keys}"
        )
    return jnp.einsum("BTQ,QS->BTS", query.astype(_F32), w_a[:, :num_keys].astype(_F32))


def cosine_score(query: jax.Array, key: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine-similarity score, q^T k / (|q| |k|).

    Graves, Wayne and Danihelka 2014, "Neural Turing Machines", arXiv:1410.5401, eq. (6). Norms are floored
    at `eps`, so a zero vector scores 0 instead of NaN.

    Args:
      query: [B, T, D] floating.
      key: [B, S, D] floating.
      eps: floor on each norm.

    Returns:
      logits: [B, T, S] float32 in [-1, 1].

    Raises:
      ValueError: if ranks are not 3, or batch or feature sizes differ.
      TypeError: if an input is not floating point.
    """
    _check_query_key(query, key, same_features=True)

    def unit(x):
        x = x.astype(_F32)
        # Square-root of a floored squared norm: finite gradients at x = 0.
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))

    return jnp.einsum("BTD,BSD->BTS", unit(query), unit(key))


# The parameters each score takes, by name, in call order after (query, key).
SCORE_PARAMS: dict[str, tuple[str, ...]] = {
    "dot": (),
    "scaled_dot": (),
    "general": ("w_a",),
    "concat": ("w_a", "v_a"),
    "additive": ("w_q", "w_k", "v"),
    "location": ("w_a",),
    "cosine": (),
}

_SCORE_FNS: dict[str, Callable[..., jax.Array]] = {
    "dot": dot_score,
    "scaled_dot": scaled_dot_score,
    "general": general_score,
    "concat": concat_score,
    "additive": additive_score,
    "location": lambda query, key, w_a: location_score(query, w_a, key.shape[1]),
    "cosine": cosine_score,
}


def check_score_name(name: str) -> None:
    """Raises ValueError unless `name` is a key of SCORE_PARAMS."""
    if name not in SCORE_PARAMS:
        raise ValueError(f"unknown score {name!r}; choose one of {sorted(SCORE_PARAMS)}")


def compute_score(
    name: str, query: jax.Array, key: jax.Array, params: Mapping[str, jax.Array] | None = None
) -> jax.Array:
    """Computes the named score, taking its weights from `params` by the names in SCORE_PARAMS.

    Args:
      name: one of SCORE_PARAMS: dot, scaled_dot, general, concat, additive, location, cosine.
      query: [B, T, Dq] floating.
      key: [B, S, Dk] floating.
      params: a mapping holding at least SCORE_PARAMS[name]; extra entries are ignored.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: for an unknown name, a missing parameter, or shapes the score rejects.
    """
    check_score_name(name)
    params = params or {}
    missing = [p for p in SCORE_PARAMS[name] if p not in params]
    if missing:
        raise ValueError(f"score {name!r} needs params {list(SCORE_PARAMS[name])}; missing {missing}")
    _check_query_key(query, key, same_features=False)
    return _SCORE_FNS[name](query, key, *(params[p] for p in SCORE_PARAMS[name]))
