"""Alignment scores: how well each query matches each key.

Every function maps a query [B, T, Dq] and keys [B, S, Dk] to logits [B, T, S] in float32, whatever the input
dtype. They are the first of the three steps score -> alignment -> context (see `attention_jax.core.context.attend`).
"""

from __future__ import annotations

import dataclasses
import types
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
    if query.shape[-1] == 0 or key.shape[-1] == 0:
        raise ValueError(f"query and key need at least one feature: {query.shape=} {key.shape=}")


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
    return additive_score_projected(concat_query_half(query, w_a), concat_key_half(key, w_a, dq), v_a)


def concat_query_half(query: jax.Array, w_a: jax.Array) -> jax.Array:
    """The query half of the 'concat' score's W_a [h_t; h_s]: rows [:Dq] of W_a applied to h_t.

    Args:
      query: [B, T, Dq] floating.
      w_a: [Dq + Dk, A] floating (`concat_score`'s weight; shapes are checked there).

    Returns:
      [B, T, A] float32.
    """
    return jnp.einsum("BTQ,QA->BTA", query.astype(_F32), w_a[: query.shape[-1]].astype(_F32))


def concat_key_half(key: jax.Array, w_a: jax.Array, query_features: int) -> jax.Array:
    """The key half of the 'concat' score's W_a [h_t; h_s]: rows [Dq:] of W_a applied to h_s.

    It does not depend on t, so a decoder can compute it once per sentence (`LuongAttention.project_keys`).

    Args:
      key: [B, S, Dk] floating.
      w_a: [Dq + Dk, A] floating.
      query_features: Dq, where W_a's key rows start.

    Returns:
      [B, S, A] float32.
    """
    return jnp.einsum("BSK,KA->BSA", key.astype(_F32), w_a[query_features:].astype(_F32))


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


def _location(query: jax.Array, key: jax.Array, w_a: jax.Array) -> jax.Array:
    """`location_score` in the registry's (query, key, *params) form; only key's length S is used."""
    return location_score(query, w_a, key.shape[1])


ShapeFn = Callable[[int, int, int, int], tuple[tuple[int, ...], ...]]


@dataclasses.dataclass(frozen=True)
class Score:
    """One registered score: its function, its parameters and their shapes, and where it comes from.

    Attributes:
      fn: (query [B, T, Dq], key [B, S, Dk], *params) -> logits [B, T, S] float32.
      params: the parameter names, in call order after (query, key); `compute_score` reads them from a mapping.
      shapes: (Dq, Dk, A, S_max) -> one shape per parameter, in `params` order. A is the attention hidden size
        and S_max the longest source the weights can serve.
      same_features: True when the score needs Dq == Dk.
      source: the paper, arXiv id and equation.
      needs: which of "hidden_dim" (A) and "max_keys" (S_max) the shapes depend on.
    """

    fn: Callable[..., jax.Array]
    params: tuple[str, ...]
    shapes: ShapeFn
    same_features: bool
    source: str
    needs: tuple[str, ...] = ()


_LUONG = "Luong et al. 2015, arXiv:1508.04025, eq. (8)"

SCORES: Mapping[str, Score] = types.MappingProxyType({
    "dot": Score(dot_score, (), lambda dq, dk, a, s: (), True, f"{_LUONG}, 'dot'"),
    "scaled_dot": Score(scaled_dot_score, (), lambda dq, dk, a, s: (), True,
                        "Vaswani et al. 2017, arXiv:1706.03762, eq. (1)"),
    "general": Score(general_score, ("w_a",), lambda dq, dk, a, s: ((dq, dk),), False, f"{_LUONG}, 'general'"),
    "concat": Score(concat_score, ("w_a", "v_a"), lambda dq, dk, a, s: ((dq + dk, a), (a,)), False,
                    f"{_LUONG}, 'concat'", ("hidden_dim",)),
    "additive": Score(additive_score, ("w_q", "w_k", "v"), lambda dq, dk, a, s: ((dq, a), (dk, a), (a,)), False,
                      "Bahdanau et al. 2014, arXiv:1409.0473, appendix A.1.2", ("hidden_dim",)),
    "location": Score(_location, ("w_a",), lambda dq, dk, a, s: ((dq, s),), False, f"{_LUONG}, 'location'",
                     ("max_keys",)),
    "cosine": Score(cosine_score, (), lambda dq, dk, a, s: (), True, "Graves et al. 2014, arXiv:1410.5401, eq. (6)"),
})
"""The one registry of scores: name -> `Score` (function, parameter names and shapes, source)."""

SCORE_PARAMS: Mapping[str, tuple[str, ...]] = types.MappingProxyType({n: s.params for n, s in SCORES.items()})
"""The parameters each score takes, by name, in call order after (query, key); derived from `SCORES`."""

LUONG_SCORES: tuple[str, ...] = tuple(n for n, s in SCORES.items() if s.source.startswith(_LUONG))
"""The four scores of Luong et al. 2015, eq. (8): dot, general, concat, location."""


def get_score(name: str) -> Score:
    """Returns the registered `Score` called `name`.

    Raises:
      ValueError: if `name` is not a key of `SCORES` (the message lists them).
    """
    _checks.choice("score", name, tuple(SCORES))
    return SCORES[name]


def check_score_name(name: str) -> None:
    """Raises ValueError unless `name` is a key of `SCORES`."""
    get_score(name)


def param_shapes(
    name: str, query_dim: int, key_dim: int, *, hidden_dim: int | None = None, max_keys: int | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of score `name`, for a module that creates them.

    Args:
      name: a key of `SCORES`.
      query_dim: Dq >= 1.
      key_dim: Dk >= 1.
      hidden_dim: A >= 1, the attention hidden size; needed by concat and additive.
      max_keys: S_max >= 1, the longest source the weights serve; needed by location.

    Returns:
      {parameter name: shape}, in the order of `SCORES[name].params`.

    Raises:
      ValueError: for an unknown name, sizes that are not ints >= 1, Dq != Dk for a score that needs them
        equal, or a missing hidden_dim / max_keys that the score needs.
    """
    spec = get_score(name)
    query_dim = _checks.int_at_least("query_dim", query_dim, 1)
    key_dim = _checks.int_at_least("key_dim", key_dim, 1)
    if spec.same_features and query_dim != key_dim:
        raise ValueError(f"score {name!r} needs equal query and key sizes, got {query_dim=} {key_dim=}")
    if "hidden_dim" in spec.needs:
        if hidden_dim is None:
            raise ValueError(f"score {name!r} needs hidden_dim (A), got None")
        hidden_dim = _checks.int_at_least("hidden_dim", hidden_dim, 1)
    if "max_keys" in spec.needs:
        if max_keys is None:
            raise ValueError(f"score {name!r} needs max_keys (S_max), got None")
        max_keys = _checks.int_at_least("max_keys", max_keys, 1)
    shapes = spec.shapes(query_dim, key_dim, hidden_dim or 1, max_keys or 1)
    return dict(zip(spec.params, shapes))


def compute_score(
    name: str, query: jax.Array, key: jax.Array, params: Mapping[str, jax.Array] | None = None
) -> jax.Array:
    """Computes the named score, taking its weights from `params` by the names in `SCORES[name].params`.

    Args:
      name: a key of `SCORES`: dot, scaled_dot, general, concat, additive, location, cosine.
      query: [B, T, Dq] floating, Dq >= 1.
      key: [B, S, Dk] floating, Dk >= 1.
      params: a mapping holding at least `SCORES[name].params`; extra entries are ignored.

    Returns:
      logits: [B, T, S] float32.

    Raises:
      ValueError: for an unknown name, a missing parameter, or shapes the score rejects.
      TypeError: for non-array or non-floating inputs or parameters.
    """
    spec = get_score(name)
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of name -> array, got {type(params).__name__}")
    params = params or {}
    missing = [p for p in spec.params if p not in params]
    if missing:
        raise ValueError(f"score {name!r} needs params {list(spec.params)}; missing {missing}")
    _check_query_key(query, key, same_features=spec.same_features)
    for p in spec.params:
        _checks.floating(p, params[p])
    return spec.fn(query, key, *(params[p] for p in spec.params))
