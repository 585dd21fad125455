"""Float64 numpy transcriptions of the attention equations, used as test oracles.

Every function takes numpy (or array-like) inputs, computes in float64 and returns numpy float64 (or bool)
arrays. They are written from the papers, independently of ``attention_jax``, and favour plainness over
speed, so keep the shapes small. Shape letters follow the package legend: B batch, T query length,
S key length, D model dim, A attention hidden size.

Sources:
  * Luong et al. 2015, "Effective Approaches to Attention-based Neural Machine Translation",
    arXiv:1508.04025: eq. 7 (alignment), eq. 8 (dot, general, concat, location scores),
    eq. 9 (local-p position), eq. 10 (Gaussian-weighted local alignment), section 3.2 (local-m).
  * Bahdanau et al. 2014, "Neural Machine Translation by Jointly Learning to Align and Translate",
    arXiv:1409.0473: eq. 5 (context vector), eq. 6 (softmax alignment), appendix A.1.2 (additive score).
  * Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762: eq. 1 (scaled dot product).
  * Graves et al. 2014, "Neural Turing Machines", arXiv:1410.5401: eq. 6 (cosine similarity).
  * Martins & Astudillo 2016, "From Softmax to Sparsemax", arXiv:1602.02068: eq. 2 (sparsemax as the
    projection onto the simplex).
  * Peters, Niculae & Martins 2019, "Sparse Sequence-to-Sequence Models", arXiv:1905.05702: eq. 10
    (alpha-entmax as a thresholded power).
  * Raffel & Ellis 2015, arXiv:1512.08756, eqs. 1-2 (feed-forward attention pooling); Yang et al. 2016,
    NAACL N16-1174, eqs. 5-7 (attention with a context vector).
  * Lin et al. 2017, arXiv:1703.03130: eq. 6 (r-hop weights), M = A H, eq. 8 (the Frobenius penalty).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = [
    "SCORE_PARAMS",
    "TOLERANCE",
    "additive_score",
    "attention_pool",
    "assert_close",
    "attend",
    "compute_score",
    "concat_score",
    "cosine_score",
    "dot_score",
    "entmax",
    "frobenius_penalty",
    "gaussian_window",
    "general_score",
    "local_alignment",
    "local_m_position",
    "local_p_position",
    "location_score",
    "masked_softmax",
    "padding_mask",
    "random_params",
    "scaled_dot_score",
    "sparsemax",
    "structured_self_attention",
    "sigmoid",
    "valid_span",
    "weighted_context",
    "window_mask",
]


def _f64(x) -> np.ndarray:
    # np.asarray on a jax bfloat16 array gives an ml_dtypes array, which casts exactly to float64.
    return np.asarray(x).astype(np.float64)


def sigmoid(x) -> np.ndarray:
    """Logistic sigmoid 1 / (1 + exp(-x)) in float64."""
    x = _f64(x)
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------------------------------
# Masks.


def padding_mask(lengths, max_len: int) -> np.ndarray:
    """[B] lengths -> [B, S=max_len] bool, True where the position s < length."""
    lengths = np.asarray(lengths)
    positions = np.arange(max_len)
    return positions[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------------------------------------
# Scores: all return logits [B, T, S] float64.


def dot_score(query, key) -> np.ndarray:
    """Luong eq. 8 'dot': score(h_t, h_s) = h_t^T h_s. query [B,T,D], key [B,S,D]."""
    q, k = _f64(query), _f64(key)
    # [B,T,1,D] * [B,1,S,D] summed over D.
    return (q[:, :, None, :] * k[:, None, :, :]).sum(-1)


def scaled_dot_score(query, key, scale=None) -> np.ndarray:
    """Vaswani eq. 1: q.k / sqrt(d_k) (or times `scale` when given). query [B,T,D], key [B,S,D]."""
    q = _f64(query)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    return dot_score(query, key) * float(scale)


def general_score(query, key, w_a) -> np.ndarray:
    """Luong eq. 8 'general': h_t^T W_a h_s. query [B,T,Dq], key [B,S,Dk], w_a [Dq,Dk]."""
    q, k, w = _f64(query), _f64(key), _f64(w_a)
    projected_key = k @ w.T  # [B,S,Dq]: (W_a h_s) for every s.
    return dot_score(q, projected_key)


def concat_score(query, key, w_a, v_a) -> np.ndarray:
    """Luong eq. 8 'concat': v_a^T tanh(W_a [h_t; h_s]).

    query [B,T,Dq], key [B,S,Dk], w_a [Dq+Dk, A] (rows act on the concatenation, query first), v_a [A].
    """
    q, k, w, v = _f64(query), _f64(key), _f64(w_a), _f64(v_a)
    b, t, dq = q.shape
    s = k.shape[1]
    out = np.zeros((b, t, s))
    for bi in range(b):
        for ti in range(t):
            for si in range(s):
                h = np.concatenate([q[bi, ti], k[bi, si]])  # [Dq+Dk]
                out[bi, ti, si] = v @ np.tanh(h @ w)
    return out


def additive_score(query, key, w_q, w_k, v) -> np.ndarray:
    """Bahdanau appendix A.1.2: a(s_{i-1}, h_j) = v_a^T tanh(W_a s_{i-1} + U_a h_j).

    query [B,T,Dq] (s_{i-1}), key [B,S,Dk] (h_j), w_q [Dq,A] (W_a), w_k [Dk,A] (U_a), v [A] (v_a).
    """
    q, k, wq, wk, va = _f64(query), _f64(key), _f64(w_q), _f64(w_k), _f64(v)
    hidden = np.tanh((q @ wq)[:, :, None, :] + (k @ wk)[:, None, :, :])  # [B,T,S,A]
    return hidden @ va


def location_score(query, w_a, num_keys: int) -> np.ndarray:
    """Luong eq. 8 'location': a_t = softmax(W_a h_t); the logits are (W_a h_t)[:S], broadcast over keys.

    query [B,T,Dq], w_a [Dq, S_max] -> [B,T,S=num_keys].
    """
    q, w = _f64(query), _f64(w_a)
    return (q @ w)[:, :, :num_keys]


def cosine_score(query, key, eps: float = 1e-8) -> np.ndarray:
    """Graves et al. 2014 eq. 6: K[u, v] = u.v / (||u|| ||v||); 0 when a vector is (near) zero."""
    q, k = _f64(query), _f64(key)
    norms = np.linalg.norm(q, axis=-1)[:, :, None] * np.linalg.norm(k, axis=-1)[:, None, :]
    return dot_score(q, k) / np.maximum(norms, eps)


SCORE_PARAMS = {
    "dot": (),
    "scaled_dot": (),
    "general": ("w_a",),
    "concat": ("w_a", "v_a"),
    "additive": ("w_q", "w_k", "v"),
    "location": ("w_a",),
    "cosine": (),
}


def compute_score(name: str, query, key, params: Mapping | None = None) -> np.ndarray:
    """Dispatch to the score `name` with its parameters taken from `params` by SCORE_PARAMS names."""
    params = dict(params or {})
    if name == "dot":
        return dot_score(query, key)
    if name == "scaled_dot":
        return scaled_dot_score(query, key)
    if name == "general":
        return general_score(query, key, params["w_a"])
    if name == "concat":
        return concat_score(query, key, params["w_a"], params["v_a"])
    if name == "additive":
        return additive_score(query, key, params["w_q"], params["w_k"], params["v"])
    if name == "location":
        return location_score(query, params["w_a"], np.shape(key)[1])
    if name == "cosine":
        return cosine_score(query, key)
    raise ValueError(f"unknown score {name!r}")


# ----------------------------------------------------------------------------------------------------------
# Alignment.


def masked_softmax(logits, mask=None) -> np.ndarray:
    """Luong eq. 7 / Bahdanau eq. 6 over the last axis, restricted to mask==True.

    Masked entries get exactly 0; rows with no valid entry are all 0.
    """
    x = _f64(logits)
    if mask is None:
        mask = np.ones(x.shape, dtype=bool)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), x.shape)
    row_max = np.max(np.where(mask, x, -np.inf), axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.exp(np.where(mask, x - row_max, -np.inf))  # exp(-inf) = 0 exactly at masked entries.
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def sparsemax(logits, mask=None) -> np.ndarray:
    """Martins & Astudillo eq. 2 over the last axis: argmin_p ||p - z||^2 on the simplex of the valid entries.

    The projection onto the simplex written as in Duchi et al. 2008 (a sort and a scan, one row at a time).
    Masked entries get exactly 0; rows with no valid entry are all 0.
    """
    x = _f64(logits)
    mask = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    out = np.zeros_like(x)
    for index in np.ndindex(x.shape[:-1]):
        z = x[index][mask[index]]
        if z.size == 0:
            continue
        u = np.sort(z)[::-1]
        tau = 0.0
        for k in range(1, z.size + 1):  # the last k with u_k > (sum of the top k - 1) / k
            candidate = (u[:k].sum() - 1.0) / k
            if u[k - 1] > candidate:
                tau = candidate
        row = np.zeros(x.shape[-1])
        row[mask[index]] = np.maximum(z - tau, 0.0)
        out[index] = row
    return out


def entmax(logits, mask=None, alpha: float = 1.5, iterations: int = 200) -> np.ndarray:
    """Peters et al. eq. 10: p_i = [(alpha - 1) z_i - tau]_+^(1 / (alpha - 1)) with sum p = 1, alpha > 1.

    tau by float64 bisection run to exhaustion (200 halvings), one row at a time. Masked entries get 0; rows
    with no valid entry are all 0.
    """
    x = _f64(logits)
    mask = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    out = np.zeros_like(x)
    for index in np.ndindex(x.shape[:-1]):
        z = (alpha - 1.0) * x[index][mask[index]]
        if z.size == 0:
            continue
        weights = lambda tau: np.maximum(z - tau, 0.0) ** (1.0 / (alpha - 1.0))
        low, high = z.max() - 1.0, z.max()  # sum >= 1 at low, 0 at high
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if weights(mid).sum() >= 1.0 else (low, mid)
        row = np.zeros(x.shape[-1])
        row[mask[index]] = weights(low) / weights(low).sum()
        out[index] = row
    return out


def attention_pool(inputs, logits, mask=None, normalizer=None):
    """Raffel & Ellis eqs. 1-2: alpha = normalizer(e) over the valid positions, c = sum_t alpha_t h_t.

    inputs [B, T, D], logits [B, T], mask [B, T]; `normalizer` is a float64 function (default: softmax).
    Returns (context [B, D], weights [B, T]) in float64; masked inputs are never read.
    """
    normalizer = masked_softmax if normalizer is None else normalizer
    x = _f64(inputs)
    mask = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    weights = normalizer(_f64(logits), mask)
    context = np.zeros((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        for t in np.flatnonzero(mask[b]):
            context[b] += weights[b, t] * x[b, t]
    return context, weights


def structured_self_attention(inputs, w_s1, w_s2, mask=None):
    """Lin et al. eq. 6, A = softmax(W_s2 tanh(W_s1 H^T)) over the valid tokens, and M = A H, one sentence at a
    time. inputs [B, T, D], w_s1 [D, A] (= W_s1^T), w_s2 [A, R] (= W_s2^T). Returns (M [B, R, D], A [B, R, T]).
    """
    x = _f64(inputs)
    mask = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    embeddings, weights = [], []
    for b in range(x.shape[0]):
        h = x[b][mask[b]]  # [n, D], the valid tokens only
        a = np.zeros((np.shape(w_s2)[1], x.shape[1]))
        if len(h):
            scores = (np.tanh(h @ _f64(w_s1)) @ _f64(w_s2)).T  # [R, n]
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            a[:, mask[b]] = e / e.sum(axis=1, keepdims=True)
        weights.append(a)
        embeddings.append(a[:, mask[b]] @ h if len(h) else np.zeros((a.shape[0], x.shape[2])))
    return np.stack(embeddings), np.stack(weights)


def frobenius_penalty(weights) -> np.ndarray:
    """Lin et al. eq. 8, ||A A^T - I||_F^2 for each [R, T] matrix of `weights` [B, R, T]; 0 for an all-zero A."""
    out = []
    for a in _f64(weights):
        out.append(0.0 if not a.any() else float(np.sum((a @ a.T - np.eye(a.shape[0])) ** 2)))
    return np.array(out)


def local_m_position(batch: int, num_queries: int, offset=0) -> np.ndarray:
    """Luong section 3.2, local-m: p_t = t (+ offset). Returns [B, T] float64."""
    return np.broadcast_to(np.arange(num_queries, dtype=np.float64) + offset, (batch, num_queries)).copy()


def local_p_position(query, w_p, v_p, key_lengths, key_starts=0) -> np.ndarray:
    """Luong eq. 9 on a span: p_t = start + S_b * sigmoid(v_p^T tanh(W_p h_t)).

    query [B,T,Dq], w_p [Dq,A], v_p [A]; key_lengths (S_b) and key_starts [B] or [B,T] (or scalars).
    """
    q, w, v = _f64(query), _f64(w_p), _f64(v_p)
    b, t, _ = q.shape
    as_bt = lambda x: np.broadcast_to(_f64(x).reshape(np.shape(x) + (1,) * (2 - np.ndim(x))), (b, t))
    return as_bt(key_starts) + as_bt(key_lengths) * sigmoid(np.tanh(q @ w) @ v)


def valid_span(mask):
    """[..., S] bool -> (first valid index, last - first + 1), both [...] int; (0, 0) for a row with none."""
    mask = np.asarray(mask, dtype=bool)
    first = np.zeros(mask.shape[:-1], np.int64)
    extent = np.zeros(mask.shape[:-1], np.int64)
    for index in np.ndindex(*mask.shape[:-1]):
        where = np.flatnonzero(mask[index])
        if where.size:
            first[index], extent[index] = where[0], where[-1] - where[0] + 1
    return first, extent


def window_mask(position, num_keys: int, window: int) -> np.ndarray:
    """[B,T] positions -> [B,T,S] bool, True for integer s in [floor(p_t) - D, floor(p_t) + D] and [0, S)."""
    centre = np.floor(_f64(position))[:, :, None]  # [B,T,1]
    s = np.arange(num_keys)[None, None, :]
    return (s >= centre - window) & (s <= centre + window)


def gaussian_window(position, num_keys: int, sigma: float) -> np.ndarray:
    """Luong eq. 10 factor: exp(-(s - p_t)^2 / (2 sigma^2)) for s = 0..S-1. Returns [B,T,S] float64."""
    p = _f64(position)[:, :, None]
    s = np.arange(num_keys, dtype=np.float64)[None, None, :]
    return np.exp(-((s - p) ** 2) / (2.0 * float(sigma) ** 2))


def _expand_mask(mask, shape) -> np.ndarray:
    """[B,S] or [B,T,S] bool (or None) -> [B,T,S] bool."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        mask = mask[:, None, :]
    return np.broadcast_to(mask, shape)


def local_alignment(logits, position, window: int, mask=None, gaussian: bool = False) -> np.ndarray:
    """Local attention weights (Luong section 3.2, eq. 10).

    Softmax over the keys that are both valid (mask) and inside the window [floor(p_t) - D, floor(p_t) + D];
    with `gaussian`, the result is multiplied by exp(-(s - p_t)^2 / (2 (D/2)^2)) and NOT renormalised.
    logits [B,T,S], position [B,T], mask [B,S] or [B,T,S] or None.
    """
    x = _f64(logits)
    b, t, s = x.shape
    allowed = _expand_mask(mask, x.shape) & window_mask(position, s, window)
    weights = masked_softmax(x, allowed)
    if gaussian:
        weights = weights * gaussian_window(position, s, window / 2.0)
    return weights


# ----------------------------------------------------------------------------------------------------------
# Context.


def weighted_context(weights, value) -> np.ndarray:
    """Bahdanau eq. 5: c_i = sum_j alpha_ij h_j. weights [B,T,S], value [B,S,Dv] -> [B,T,Dv] float64."""
    w, v = _f64(weights), _f64(value)
    return (w[:, :, :, None] * v[:, None, :, :]).sum(axis=2)


def attend(query, key, value=None, mask=None, *, score: str = "dot", params: Mapping | None = None,
           mode: str = "global", window: int | None = None, query_positions=None, key_lengths=None):
    """Score -> alignment -> context, as in Luong section 3 (global, local-m, local-p).

    Returns (context [B,T,Dv], weights [B,T,S]) in float64.
    """
    params = dict(params or {})
    value = key if value is None else value
    q = _f64(query)
    b, t, _ = q.shape
    s = np.shape(key)[1]
    logits = compute_score(score, query, key, params)
    allowed = _expand_mask(mask, logits.shape)
    if key_lengths is not None:  # A real mask in every mode: keys s >= S_b are never attended.
        allowed = allowed & padding_mask(key_lengths, s)[:, None, :]
    if mode == "global":
        weights = masked_softmax(logits, allowed)
    elif mode == "local_m":
        if query_positions is None:
            position = local_m_position(b, t)
        else:
            position = _f64(query_positions)
        weights = local_alignment(logits, position, window, allowed, gaussian=False)
    elif mode == "local_p":
        # Eq. 9 on each query's span of valid keys (right padding: start 0, S_b valid keys).
        first, extent = valid_span(allowed)
        position = local_p_position(query, params["w_p"], params["v_p"], extent, first)
        weights = local_alignment(logits, position, window, allowed, gaussian=True)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return weighted_context(weights, value), weights


# ----------------------------------------------------------------------------------------------------------
# Test helpers (numpy only).

# Relative tolerance per input dtype name, as in the house style.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2}


def assert_close(actual, expected, dtype="float32", err_msg: str = "") -> None:
    """Asserts |actual - expected| <= tol * (|expected| + max(1, max|expected|)) elementwise.

    `dtype` names the precision of the computation under test (the input dtype) and picks the tolerance.
    """
    actual = _f64(actual)
    expected = _f64(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {actual.shape=} {expected.shape=} {err_msg}")
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    tol = TOLERANCE[name]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=err_msg)


def random_params(rng: np.random.Generator, score: str, query_dim: int, key_dim: int, *, hidden_dim: int = 5,
                  max_keys: int = 8, local_p: bool = False, dtype=np.float32) -> dict:
    """Random weights for `score` under the SCORE_PARAMS names (plus w_p, v_p when `local_p`).

    Shapes: general w_a [Dq,Dk]; concat w_a [Dq+Dk,A], v_a [A]; additive w_q [Dq,A], w_k [Dk,A], v [A];
    location w_a [Dq, S_max=max_keys]; local-p w_p [Dq,A], v_p [A].
    """
    def normal(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype)

    if score in ("dot", "scaled_dot", "cosine"):
        params = {}
    elif score == "general":
        params = {"w_a": normal(query_dim, key_dim)}
    elif score == "concat":
        params = {"w_a": normal(query_dim + key_dim, hidden_dim), "v_a": normal(hidden_dim)}
    elif score == "additive":
        params = {"w_q": normal(query_dim, hidden_dim), "w_k": normal(key_dim, hidden_dim),
                  "v": normal(hidden_dim)}
    elif score == "location":
        params = {"w_a": normal(query_dim, max_keys)}
    else:
        raise ValueError(f"unknown score {score!r}")
    if local_p:
        params["w_p"] = normal(query_dim, hidden_dim)
        params["v_p"] = (2.0 * rng.standard_normal(hidden_dim)).astype(dtype)
    return params
