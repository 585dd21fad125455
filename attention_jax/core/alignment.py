"""Alignment: turning logits into attention weights.

Global (softmax over every valid key) and the local windows of Luong et al. 2015 (arXiv:1508.04025, §3.2):
local-m, centred on p_t = t, and local-p, centred on a predicted p_t with a Gaussian that favours keys near it.
`normalize` picks the normaliser by name: the softmax or one of the sparse normalisers of `core.sparse`
(sparsemax, 1.5-entmax). Weights are float32 and rows whose keys are all masked are all zero, with zero
gradients.

Hard alignment picks one key instead of averaging: `sample_hard` draws it from the weights (the multinoulli of
Xu et al. 2015's hard attention, arXiv:1502.03044, eq. 8), and `gumbel_softmax` draws it from logits with the
Gumbel-softmax relaxation and its straight-through estimator (Jang et al. 2016, arXiv:1611.01144; Maddison et
al. 2016, arXiv:1611.00712).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import sparse

_F32 = jnp.float32


EMPTY_ROW_LSE = float(jnp.finfo(_F32).min)
"""The log-sum-exp given to a row with no valid key: finite, and exp(EMPTY_ROW_LSE - x) == 0 when rows merge."""


def masked_softmax_with_lse(logits: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Softmax over the last axis restricted to the keys where `mask` is True, and its log-sum-exp.

    Bahdanau et al. 2014, arXiv:1409.0473, eq. (6); Luong et al. 2015, arXiv:1508.04025, eq. (7);
    Vaswani et al. 2017, arXiv:1706.03762, eq. (1). A row with no valid key gets all-zero weights (so a zero
    context) and zero gradients, never NaN, and lse = EMPTY_ROW_LSE; so does every row when S = 0 (the weights
    are then empty). Runs in float32 whatever the dtype.

    Args:
      logits: [..., S] floating.
      mask: None or bool of exactly the shape of `logits` (True = attend); it is never broadcast.

    Returns:
      weights: [..., S] float32; each row sums to 1, or to 0 if fully masked.
      lse: [...] float32, log sum_s exp(logits[..., s]) over the valid keys.

    Raises:
      ValueError: if the mask shape differs from the logits shape.
      TypeError: if logits are not floating or the mask is not boolean.
    """
    _checks.floating("logits", logits)
    logits = logits.astype(_F32)
    if mask is not None:
        _checks.boolean("mask", mask)
        if jnp.shape(mask) != jnp.shape(logits):
            raise ValueError(f"mask and logits shapes differ: {jnp.shape(mask)=} {logits.shape=}")
        # A finite floor, not -inf: a fully-masked row must not produce (-inf) - (-inf).
        logits = jnp.where(mask, logits, jnp.finfo(_F32).min)
    if logits.shape[-1] == 0:  # S = 0: no key at all, the fully-masked row of every query.
        return jnp.zeros(logits.shape, _F32), jnp.full(logits.shape[:-1], EMPTY_ROW_LSE, _F32)
    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    unnormalised = jnp.exp(logits - row_max)
    if mask is not None:
        unnormalised = jnp.where(mask, unnormalised, 0.0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    has_key = total > 0
    safe_total = jnp.where(has_key, total, 1.0)
    lse = jnp.where(has_key, jnp.log(safe_total) + row_max, EMPTY_ROW_LSE)[..., 0]
    return unnormalised / safe_total, lse


def masked_softmax(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax over the last axis, restricted to the keys where `mask` is True.

    Bahdanau et al. 2014, arXiv:1409.0473, eq. (6); Luong et al. 2015, arXiv:1508.04025, eq. (7).
    A row with no valid key gets all-zero weights (so a zero context) and zero gradients, never NaN.
    The computation runs in float32 whatever the dtype of `logits`.

    Args:
      logits: [..., S] floating.
      mask: None or bool of exactly the shape of `logits` (True = attend); it is never broadcast.

    Returns:
      weights: [..., S] float32; each row sums to 1, or to 0 if fully masked (or S = 0).

    Raises:
      ValueError: if the mask shape differs from the logits shape.
      TypeError: if logits are not floating or the mask is not boolean.
    """
    return masked_softmax_with_lse(logits, mask)[0]


NORMALIZERS = ("softmax", "sparsemax", "entmax15")
"""The normaliser names `normalize`, `attend` and the xla backend of `dot_product_attention` take."""


def normalize(logits: jax.Array, mask: jax.Array | None = None, normalizer: str = "softmax") -> jax.Array:
    """Attention weights from logits by the named normaliser, over the last axis.

    "softmax": `masked_softmax` (Bahdanau et al. 2014, arXiv:1409.0473, eq. 6). "sparsemax":
    `sparse.sparsemax` (Martins & Astudillo 2016, arXiv:1602.02068, eq. 2). "entmax15": `sparse.entmax15`
    (Peters et al. 2019, arXiv:1905.05702, eq. 10, alpha = 1.5). For any other alpha call `sparse.entmax`.

    Args:
      logits: [..., S] floating.
      mask: None or bool of exactly the shape of `logits` (True = attend); never broadcast.
      normalizer: a name in `NORMALIZERS`.

    Returns:
      weights: [..., S] float32; each row sums to 1 over its valid keys, or is all zero (with zero gradient)
      if it has none, or when S = 0.

    Raises:
      ValueError: for an unknown normalizer or a mask shape that differs from the logits shape.
      TypeError: if logits are not floating or the mask is not boolean.
    """
    _checks.choice("normalizer", normalizer, NORMALIZERS)
    if normalizer == "sparsemax":
        return sparse.sparsemax(logits, mask)
    if normalizer == "entmax15":
        return sparse.entmax15(logits, mask)
    return masked_softmax(logits, mask)


def local_m_position(batch: int, num_queries: int, offset: int | jax.Array = 0) -> jax.Array:
    """Monotonic alignment centre of local-m attention, p_t = t.

    Luong et al. 2015, arXiv:1508.04025, §3.2 ("Monotonic alignment (local-m)").

    Args:
      batch: B.
      num_queries: T.
      offset: added to every t; a decoder that runs one step at a time passes its step index here.
        A Python int or a scalar integer array (may be traced).

    Returns:
      position: [B, T] float32, position[b, t] = t + offset.

    Raises:
      ValueError: if batch or num_queries is negative.
    """
    batch = _checks.positive_int("batch", batch, allow_zero=True)
    num_queries = _checks.positive_int("num_queries", num_queries, allow_zero=True)
    position = jnp.arange(num_queries, dtype=_F32) + jnp.asarray(offset, _F32)
    return jnp.broadcast_to(position[None, :], (batch, num_queries))


def local_p_position(
    query: jax.Array,
    w_p: jax.Array,
    v_p: jax.Array,
    key_lengths: jax.Array,
    key_starts: jax.Array | None = None,
) -> jax.Array:
    """Predicted alignment centre of local-p attention, p_t = start + S * sigmoid(v_p^T tanh(W_p h_t)).

    Luong et al. 2015, arXiv:1508.04025, eq. (9), where S is the source sentence length, so p_t lies in
    [0, S]. Here the sentence is a span of the padded keys: `key_starts` is its first position and
    `key_lengths` its length, so p_t lies in [start, start + S] and never points into padding, on either side.
    With right padding (start 0, S = S_b) this is eq. (9) exactly. Both may be given per sentence [B] or per
    query [B, T] (a [B, T, S] mask gives every query its own span; see `valid_span`).

    Args:
      query: [B, T, Dq] floating, the target hidden states h_t.
      w_p: [Dq, A] floating.
      v_p: [A] floating.
      key_lengths: [B] or [B, T] integer, the span lengths S_b (>= 0).
      key_starts: None (0) or integer of key_lengths' shape, the first position of each span.

    Returns:
      position: [B, T] float32.

    Raises:
      ValueError: if shapes disagree.
      TypeError: if dtypes are wrong (or an input is not an array).
    """
    _checks.rank("query", query, 3)
    _checks.floating("query", query)
    _checks.rank("w_p", w_p, 2)
    _checks.floating("w_p", w_p)
    _checks.rank("v_p", v_p, 1)
    _checks.floating("v_p", v_p)
    _checks.rank("key_lengths", key_lengths, (1, 2))
    _checks.integer("key_lengths", key_lengths)
    if w_p.shape[0] != query.shape[-1] or v_p.shape[0] != w_p.shape[1]:
        raise ValueError(f"local-p weights do not fit: {query.shape=} {w_p.shape=} {v_p.shape=}")
    span_shape = query.shape[:jnp.ndim(key_lengths)]  # (B,) or (B, T)
    if jnp.shape(key_lengths) != span_shape:
        raise ValueError(f"key_lengths must be [B]={query.shape[:1]} or [B, T]={query.shape[:2]}: "
                         f"{jnp.shape(key_lengths)=} {query.shape=}")
    if key_starts is not None:
        _checks.integer("key_starts", key_starts)
        _checks.shape("key_starts", key_starts, span_shape)
    hidden = jnp.tanh(jnp.einsum("BTQ,QA->BTA", query.astype(_F32), w_p.astype(_F32)))  # [B, T, A]
    fraction = jax.nn.sigmoid(jnp.einsum("BTA,A->BT", hidden, v_p.astype(_F32)))  # [B, T]
    as_bt = lambda x: jnp.asarray(x, _F32).reshape(x.shape + (1,) * (2 - jnp.ndim(x)))  # [B, 1] or [B, T]
    position = as_bt(key_lengths) * fraction
    return position if key_starts is None else as_bt(key_starts) + position


def valid_span(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The span of each row's valid keys: its first valid position and its extent (last - first + 1).

    Local-p (`local_p_position`) centres its window inside this span, so neither left nor right padding, nor
    a per-query [B, T, S] mask, can draw p_t into keys the query may not see. For a contiguous row (any padding
    mask) the extent is the number of valid keys; for a row with holes it spans from the first valid key to the
    last. A row with no valid key gets (0, 0).

    Args:
      mask: [..., S] bool, True = valid key.

    Returns:
      start: [...] int32, the first valid position (0 for an empty row).
      extent: [...] int32, last - first + 1 (0 for an empty row).

    Raises:
      TypeError: if the mask is not boolean (or not an array).
      ValueError: if the mask is a scalar.
    """
    _checks.boolean("mask", mask)
    if jnp.ndim(mask) < 1:
        raise ValueError(f"mask must have shape [..., S], got {jnp.shape(mask)}")
    num_keys = jnp.shape(mask)[-1]
    if num_keys == 0:
        zeros = jnp.zeros(jnp.shape(mask)[:-1], jnp.int32)
        return zeros, zeros
    has_key = jnp.any(mask, axis=-1)
    first = jnp.argmax(mask, axis=-1).astype(jnp.int32)  # argmax returns the first True
    last = (num_keys - 1 - jnp.argmax(mask[..., ::-1], axis=-1)).astype(jnp.int32)
    return jnp.where(has_key, first, 0), jnp.where(has_key, last - first + 1, 0)


def _check_position(position: jax.Array) -> None:
    _checks.rank("position", position, 2)
    _checks.floating("position", position)


def window_mask(position: jax.Array, num_keys: int, window: int) -> jax.Array:
    """Marks the keys inside the window [p_t - D, p_t + D], with p_t rounded down.

    Luong et al. 2015, arXiv:1508.04025, §3.2. The window is 2D + 1 keys wide before it is clipped to [0, S).

    Args:
      position: [B, T] float32, the centres p_t.
      num_keys: S.
      window: D >= 0, the half width.

    Returns:
      mask: [B, T, S] bool.

    Raises:
      ValueError: if position is not rank 2 or window/num_keys are not non-negative integers.
    """
    _check_position(position)
    num_keys = _checks.positive_int("num_keys", num_keys, allow_zero=True)
    window = _checks.positive_int("window", window, allow_zero=True)
    centre = jnp.floor(position)[:, :, None]  # [B, T, 1]
    keys = jnp.arange(num_keys, dtype=_F32)[None, None, :]  # [1, 1, S]
    return jnp.abs(keys - centre) <= window


def gaussian_window(position: jax.Array, num_keys: int, sigma: float) -> jax.Array:
    """The local-p Gaussian, exp(-(s - p_t)^2 / (2 sigma^2)).

    Luong et al. 2015, arXiv:1508.04025, eq. (10), where sigma = D / 2. Gradients flow to p_t through it.

    Args:
      position: [B, T] float32, the centres p_t.
      num_keys: S.
      sigma: > 0.

    Returns:
      factor: [B, T, S] float32 in (0, 1].

    Raises:
      ValueError: if position is not rank 2 or sigma <= 0.
    """
    _check_position(position)
    num_keys = _checks.positive_int("num_keys", num_keys, allow_zero=True)
    sigma = _checks.positive_real("sigma", sigma)
    keys = jnp.arange(num_keys, dtype=_F32)[None, None, :]  # [1, 1, S]
    return jnp.exp(-jnp.square(keys - position.astype(_F32)[:, :, None]) / (2.0 * sigma * sigma))


def local_alignment(
    logits: jax.Array,
    position: jax.Array,
    window: int,
    mask: jax.Array | None = None,
    gaussian: bool = False,
) -> jax.Array:
    """Local attention weights: a softmax inside the window, times a Gaussian for local-p.

    Luong et al. 2015, arXiv:1508.04025, §3.2 and eq. (10): a_t(s) = align(h_t, h_s) exp(-(s - p_t)^2 / (2 sigma^2))
    with sigma = D / 2. The softmax runs over the keys inside the window (and the mask) only; the Gaussian
    product is not renormalised, as in the paper. A window with no valid key (a source shorter than p_t - D,
    or all padding) gives zero weights.

    Args:
      logits: [B, T, S] floating.
      position: [B, T] float32, the centres p_t.
      window: D, the half width; >= 0, and >= 1 when gaussian (sigma = D / 2 must be positive).
      mask: None, [B, S] or [B, T, S] bool, True for valid keys.
      gaussian: multiply by the Gaussian (local-p) or not (local-m).

    Returns:
      weights: [B, T, S] float32.

    Raises:
      ValueError: if shapes disagree or the window is invalid.
      TypeError: if dtypes are wrong.
    """
    from attention_jax.core import masks  # local import: masks is tiny and this keeps the module graph flat

    _checks.rank("logits", logits, 3)
    _checks.floating("logits", logits)
    batch, num_queries, num_keys = logits.shape
    _check_position(position)
    if position.shape != (batch, num_queries):
        raise ValueError(f"position must be [B, T]={(batch, num_queries)}, got {position.shape}")
    window = _checks.positive_int("window", window, allow_zero=True)
    gaussian = _checks.flag("gaussian", gaussian)
    if gaussian and window < 1:
        raise ValueError(f"local-p needs window >= 1 (sigma = window / 2 > 0), got window={window}")
    valid = window_mask(position, num_keys, window)
    key_mask = masks.broadcast_key_mask(mask, batch, num_queries, num_keys)
    if key_mask is not None:
        valid = valid & key_mask
    weights = masked_softmax(logits, valid)
    if gaussian:
        weights = weights * gaussian_window(position, num_keys, window / 2.0)
    return weights


def _check_rng(rng: jax.Array) -> None:
    """Raises TypeError unless `rng` is a PRNG key: a typed key (jax.random.key) or a raw uint32 key."""
    _checks.array("rng", rng)
    dtype = jnp.result_type(rng) if not hasattr(rng, "dtype") else rng.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.ndim(rng) != 0:
            raise ValueError(f"rng must be a single key, got a key array of shape {jnp.shape(rng)}")
        return
    if dtype != jnp.uint32 or jnp.ndim(rng) != 1:
        raise TypeError(f"rng must be a PRNG key (jax.random.key or jax.random.PRNGKey), got dtype {dtype} and "
                        f"shape {jnp.shape(rng)}")


def _check_last_axis_mask(name: str, x: jax.Array, mask: jax.Array | None) -> None:
    _checks.floating(name, x)
    if jnp.ndim(x) < 1:
        raise ValueError(f"{name} must have shape [..., S], got {jnp.shape(x)}")
    if mask is not None:
        _checks.boolean("mask", mask)
        if jnp.shape(mask) != jnp.shape(x):
            raise ValueError(f"mask and {name} shapes differ: {jnp.shape(mask)=} {name}.shape={jnp.shape(x)}")


def sample_hard(rng: jax.Array, weights: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One location per row drawn from the multinoulli given by `weights`, as a one-hot and an index.

    Xu et al. 2015, arXiv:1502.03044, eq. 8: s_t ~ Multinoulli_L({alpha_i}), the hard attention's choice of
    one location. Location i is drawn with probability weights_i / sum_j weights_j over the valid locations
    (the weights need not be normalised). Locations where `mask` is False, or whose weight is zero or negative,
    are never drawn, whatever they hold (NaN included: they are selected away before the log). A row with no
    such location (fully masked, all-zero, or S = 0) gets an all-zero one-hot and index -1. The draw is
    discrete, so the one-hot carries no gradient (a score-function estimator, such as the REINFORCE surrogate
    of `attention_jax.layers.show_attend_tell`, supplies one).

    Args:
      rng: a PRNG key (jax.random.key or jax.random.PRNGKey); every row gets independent noise.
      weights: [..., S] floating, non-negative, e.g. attention weights alpha.
      mask: None or bool of exactly the shape of `weights` (True = may be drawn); never broadcast.

    Returns:
      one_hot: [..., S] float32, 1 at the drawn location and 0 elsewhere (all 0 for a row with none).
      index: [...] int32, the drawn location, or -1 for a row with none.

    Raises:
      ValueError: if weights is a scalar, the mask shape differs from the weights', or rng is a key array.
      TypeError: if weights are not floating, the mask is not boolean, or rng is not a PRNG key.
    """
    _check_rng(rng)
    _check_last_axis_mask("weights", weights, mask)
    weights = jnp.asarray(weights).astype(_F32)
    num = weights.shape[-1]
    if num == 0:
        return jnp.zeros(weights.shape, _F32), jnp.full(weights.shape[:-1], -1, jnp.int32)
    valid = weights > 0  # False at NaN too
    if mask is not None:
        valid = valid & jnp.asarray(mask)
    log_weights = jnp.where(valid, jnp.log(jnp.where(valid, weights, 1.0)), -jnp.inf)  # [..., S]
    index = jax.random.categorical(rng, jax.lax.stop_gradient(log_weights), axis=-1)  # [...]
    index = jnp.where(jnp.any(valid, axis=-1), index, -1).astype(jnp.int32)
    return jax.nn.one_hot(index, num, dtype=_F32), index


def gumbel_softmax(
    rng: jax.Array,
    logits: jax.Array,
    mask: jax.Array | None = None,
    temperature: float = 1.0,
    hard: bool = True,
) -> jax.Array:
    """A Gumbel-softmax sample over the last axis; with hard=True, a one-hot with the straight-through gradient.

    Jang et al. 2016, arXiv:1611.01144, eq. 1 (Maddison et al. 2016, arXiv:1611.00712, the Concrete
    distribution): y_i = exp((l_i + g_i) / tau) / sum_j exp((l_j + g_j) / tau) with g_i ~ Gumbel(0, 1), the
    softmax running over the valid locations only. With hard=True (Jang et al. §2, "Straight-Through
    Gumbel-Softmax Estimator") the forward value is exactly the one-hot of argmax_i (l_i + g_i), a draw from
    softmax(l) (the Gumbel-max trick), and the gradient is exactly that of the relaxed y: the result is
    one_hot + (y - stop_gradient(y)), whose second term is exactly 0 forward.

    Masked logits are replaced before any arithmetic, so a masked location is never chosen and NaN or inf
    stored there reaches neither the output nor the gradient (which is 0 there). A row with no valid location
    (or S = 0) gives all zeros with zero gradient.

    Args:
      rng: a PRNG key (jax.random.key or jax.random.PRNGKey) for the Gumbel noise.
      logits: [..., S] floating, unnormalised log-probabilities.
      mask: None or bool of exactly the shape of `logits` (True = may be chosen); never broadcast.
      temperature: tau > 0; the relaxation tends to the one-hot as tau -> 0.
      hard: True for the straight-through one-hot, False for the relaxed sample y.

    Returns:
      sample: [..., S] float32; one-hot rows (hard) or rows of the simplex (relaxed); zero rows where no
        location is valid.

    Raises:
      ValueError: if logits is a scalar, the mask shape differs, temperature <= 0, or rng is a key array.
      TypeError: if logits are not floating, the mask is not boolean, hard is not a bool, or rng is not a key.
    """
    _check_rng(rng)
    _check_last_axis_mask("logits", logits, mask)
    temperature = _checks.positive_real("temperature", temperature)
    hard = _checks.flag("hard", hard)
    logits = jnp.asarray(logits).astype(_F32)
    if mask is not None:
        logits = jnp.where(mask, logits, 0.0)  # select, not multiply: NaN at masked logits never reaches noise
    perturbed = logits + jax.random.gumbel(rng, logits.shape, _F32)  # [..., S]
    relaxed = masked_softmax(perturbed / temperature, mask)  # [..., S]
    if not hard or logits.shape[-1] == 0:
        return relaxed
    if mask is None:
        index = jnp.argmax(perturbed, axis=-1)
    else:
        index = jnp.argmax(jnp.where(mask, perturbed, -jnp.inf), axis=-1)
        index = jnp.where(jnp.any(mask, axis=-1), index, -1)
    one_hot = jax.lax.stop_gradient(jax.nn.one_hot(index, logits.shape[-1], dtype=_F32))
    return one_hot + (relaxed - jax.lax.stop_gradient(relaxed))
