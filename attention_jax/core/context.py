"""Context vectors and `attend`, the score -> alignment -> context pipeline every attention here follows."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment
from attention_jax.core import masks
from attention_jax.core import scores

_F32 = jnp.float32
MODES = ("global", "local_m", "local_p")


def weighted_context(weights: jax.Array, value: jax.Array) -> jax.Array:
    """The soft context, c_t = sum_s a_t(s) h_s.

    Bahdanau et al. 2014, arXiv:1409.0473, eq. (5). Accumulates in float32.

    Args:
      weights: [B, T, S] floating, the alignment weights.
      value: [B, S, Dv] floating.

    Returns:
      context: [B, T, Dv] in value's dtype.

    Raises:
      ValueError: if ranks are not 3, or B or S differ.
      TypeError: if an input is not floating point.
    """
    _checks.rank("weights", weights, 3)
    _checks.rank("value", value, 3)
    _checks.floating("weights", weights)
    _checks.floating("value", value)
    if weights.shape[0] != value.shape[0] or weights.shape[2] != value.shape[1]:
        raise ValueError(f"weights [B, T, S] and value [B, S, Dv] do not fit: {weights.shape=} {value.shape=}")
    context = jnp.einsum("BTS,BSV->BTV", weights.astype(_F32), value.astype(_F32))
    return context.astype(value.dtype)


def check_attend_inputs(
    query: jax.Array, key: jax.Array, value: jax.Array | None = None, mask: jax.Array | None = None
) -> jax.Array:
    """Checks the inputs of `attend` (and of the layers built on it); returns value (key if None).

    Args:
      query: [B, T, Dq] floating, Dq >= 1.
      key: [B, S, Dk] floating, Dk >= 1.
      value: None or [B, S, Dv] floating, Dv >= 1.
      mask: None, [B, S] or [B, T, S] bool.

    Returns:
      value, or key when value is None.

    Raises:
      ValueError: wrong ranks, batch sizes or key/value lengths that differ, a zero feature size, or a mask shape
        other than [B, S] and [B, T, S].
      TypeError: an input that is not an array, not floating, or a mask that is not boolean.
    """
    value = key if value is None else value
    for name, x in (("query", query), ("key", key), ("value", value)):
        _checks.rank(name, x, 3)
        _checks.floating(name, x)
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(f"batch sizes differ: {query.shape=} {key.shape=} {value.shape=}")
    if key.shape[1] != value.shape[1]:
        raise ValueError(f"key and value lengths differ: {key.shape=} {value.shape=}")
    if 0 in (query.shape[-1], key.shape[-1], value.shape[-1]):
        raise ValueError(f"query, key and value need at least one feature: {query.shape=} {key.shape=} {value.shape=}")
    masks.broadcast_key_mask(mask, query.shape[0], query.shape[1], key.shape[1])  # checks dtype and shape
    return value


def valid_keys(
    mask: jax.Array | None, key_lengths: jax.Array | None, batch: int, num_queries: int, num_keys: int
) -> jax.Array | None:
    """The keys each query may attend: `mask` AND s < key_lengths[b], as one [B, T, S] bool (None: all of them).

    Args:
      mask: None, [B, S] or [B, T, S] bool (True = attend).
      key_lengths: None or [B] integer; keys s >= key_lengths[b] are masked (negative lengths mask all keys).
      batch: B.
      num_queries: T.
      num_keys: S.

    Returns:
      None when both are None, else [B, T, S] bool.

    Raises:
      ValueError: a mask shape other than [B, S] and [B, T, S], or key_lengths not [B].
      TypeError: a non-boolean mask or non-integer key_lengths (or a non-array).
    """
    valid = masks.broadcast_key_mask(mask, batch, num_queries, num_keys)
    if key_lengths is None:
        return valid
    _checks.integer("key_lengths", key_lengths)
    _checks.shape("key_lengths", key_lengths, (batch,))
    in_length = jnp.arange(num_keys)[None, None, :] < jnp.asarray(key_lengths)[:, None, None]  # [B, 1, S]
    in_length = jnp.broadcast_to(in_length, (batch, num_queries, num_keys))
    return in_length if valid is None else valid & in_length


def zero_unattended(valid: jax.Array | None, query: jax.Array, *key_rows: jax.Array) -> tuple[jax.Array, ...]:
    """Replaces with zeros the query rows that attend no key and the key/value rows that no query attends.

    Masked weights are exactly zero, but 0 * NaN is NaN: a NaN (or inf) left in a masked row would reach the
    gradients of the live rows through the score's backward pass (d query = sum_s d logits_s k_s) even when
    the forward pass is clean. Replacing those rows with `where` before any score is computed keeps every
    output and every gradient of the live rows what it is on clean inputs, and gives the dead rows zero
    gradients. Call it on the raw inputs of a score (and on the values) before computing it.

    Args:
      valid: None (nothing is masked) or [B, T, S] bool, True = query t may attend key s.
      query: [B, T, ...] the queries.
      *key_rows: arrays [B, S, ...]: keys, values, projected keys.

    Returns:
      (query, *key_rows), each in its own dtype, with the dead rows zeroed.
    """
    if valid is None:
        return (query, *key_rows)
    return (_keep_live(query, jnp.any(valid, axis=2)), *zero_unattended_keys(valid, *key_rows))


def zero_unattended_keys(valid: jax.Array | None, *key_rows: jax.Array) -> tuple[jax.Array, ...]:
    """The key side of `zero_unattended`: zeros in the key/value rows that no query attends.

    For a layer that projects its keys once, before any query exists (e.g. Bahdanau's U_a h_j).

    Args:
      valid: None (nothing is masked) or [B, T, S] bool, True = query t may attend key s.
      *key_rows: arrays [B, S, ...].

    Returns:
      key_rows, each in its own dtype, with the rows s that no t may attend zeroed.
    """
    if valid is None:
        return key_rows
    live_key = jnp.any(valid, axis=1)  # [B, S]
    return tuple(_keep_live(x, live_key) for x in key_rows)


def _keep_live(x: jax.Array, live: jax.Array) -> jax.Array:
    """x [B, L, ...] with the rows where live [B, L] is False replaced by zeros."""
    live = live.reshape(live.shape + (1,) * (jnp.ndim(x) - 2))
    return jnp.where(live, x, jnp.zeros((), x.dtype))


def attend_from_logits(
    logits: jax.Array, value: jax.Array, mask: jax.Array | None = None, *, normalizer: str = "softmax"
) -> tuple[jax.Array, jax.Array]:
    """Global attention from precomputed logits: a masked softmax (or another normaliser), then the context.

    For callers that compute scores their own way, e.g. a decoder that projects the keys once per sentence
    (Bahdanau et al. 2014, arXiv:1409.0473, eq. 5-6 and A.1.2). Same mask semantics as `attend`: masked
    logits (even NaN) and the value rows no query attends (even NaN) reach neither the output nor the
    gradients of `logits` and `value`. The caller's own graph upstream of `logits` is the caller's to keep
    clean: compute the logits from inputs passed through `zero_unattended`, as `attend` does.

    Args:
      logits: [B, T, S] floating.
      value: [B, S, Dv] floating.
      mask: None, [B, S] or [B, T, S] bool; True = attend.
      normalizer: a name in `alignment.NORMALIZERS` ("softmax", "sparsemax", "entmax15").

    Returns:
      context: [B, T, Dv] in value's dtype (zeros for a row with no valid key, and when S = 0).
      weights: [B, T, S] float32.

    Raises:
      ValueError: if shapes do not fit, or for an unknown normalizer.
      TypeError: for non-array or non-floating inputs or a non-boolean mask.
    """
    _checks.rank("logits", logits, 3)
    _checks.floating("logits", logits)
    _checks.rank("value", value, 3)
    _checks.floating("value", value)
    batch, num_queries, num_keys = logits.shape
    if value.shape[:2] != (batch, num_keys):
        raise ValueError(f"logits [B, T, S] and value [B, S, Dv] do not fit: {logits.shape=} {value.shape=}")
    _checks.choice("normalizer", normalizer, alignment.NORMALIZERS)
    valid = masks.broadcast_key_mask(mask, batch, num_queries, num_keys)
    weights = alignment.normalize(logits, valid, normalizer)
    _, value = zero_unattended(valid, logits, value)
    return weighted_context(weights, value), weights


def window_centres(
    query: jax.Array,
    valid: jax.Array | None,
    num_keys: int,
    *,
    mode: str,
    params: Mapping[str, jax.Array] | None = None,
    query_positions: jax.Array | None = None,
) -> jax.Array | None:
    """The centres p_t of the local windows of `attend`: t for 'local_m', the predicted eq.-9 position for 'local_p'.

    Luong et al. 2015, arXiv:1508.04025, §3.2: local-m sets p_t = t; local-p predicts
    p_t = first + extent * sigmoid(v_p^T tanh(W_p h_t)) inside the span of each query's valid keys (eq. 9;
    `alignment.local_p_position`, `alignment.valid_span`). `attend` calls this; a module that wants to record
    where its windows sit (e.g. `LuongAttention`, for the learning dynamics of local-p) calls it with the same
    arguments and gets the same centres.

    Args:
      query: [B, T, Dq] floating, the queries h_t.
      valid: None or [B, T, S] bool, the keys each query may attend (`valid_keys`).
      num_keys: S.
      mode: 'global', 'local_m' or 'local_p'.
      params: for 'local_p', a mapping holding 'w_p' [Dq, A] and 'v_p' [A].
      query_positions: None or [B, T] integer positions t (for 'local_m'; default 0..T-1).

    Returns:
      None for 'global', else position [B, T] float32.

    Raises:
      ValueError: for an unknown mode or local-p weights that do not fit.
      KeyError: for 'local_p' without 'w_p' or 'v_p' in params.
    """
    _checks.choice("mode", mode, MODES)
    batch, num_queries = query.shape[0], query.shape[1]
    if mode == "local_m":
        if query_positions is None:
            return alignment.local_m_position(batch, num_queries)
        return query_positions.astype(_F32)
    if mode == "local_p":
        # p_t depends on the query: compute it from queries whose dead rows are already zeroed.
        (clean_query,) = zero_unattended(valid, query)
        if valid is None:
            starts, extents = None, jnp.full((batch,), num_keys, jnp.int32)
        else:
            starts, extents = alignment.valid_span(valid)  # [B, T] each
        return alignment.local_p_position(clean_query, params["w_p"], params["v_p"], extents, starts)
    return None


def attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    score: str = "dot",
    params: Mapping[str, jax.Array] | None = None,
    mode: str = "global",
    window: int | None = None,
    query_positions: jax.Array | None = None,
    key_lengths: jax.Array | None = None,
    normalizer: str = "softmax",
) -> tuple[jax.Array, jax.Array]:
    """Attention in three steps: score -> alignment -> context.

    score: `scores.compute_score(score, ...)`; alignment: a masked softmax ('global', Luong et al. 2015,
    arXiv:1508.04025 eq. 7), or a local window centred on p_t = t ('local_m', §3.2) or on a predicted p_t with
    a Gaussian ('local_p', eq. 9-10); context: the weighted sum of values (Bahdanau et al. 2014,
    arXiv:1409.0473 eq. 5). `normalizer` swaps the softmax for a sparse normaliser (sparsemax, Martins &
    Astudillo 2016, arXiv:1602.02068; 1.5-entmax, Peters et al. 2019, arXiv:1905.05702) in every mode; in
    local-p the Gaussian of eq. 10 then multiplies the sparse weights.

    Masking. The keys query t may attend are `mask` AND s < key_lengths[b] (AND, in the local modes, the
    window). A query with no such key gets zero weights and a zero context, with zero gradients. Keys, values
    and queries that no valid pair uses are replaced with zeros before the score is computed, so NaN or inf
    stored there reaches neither the output nor any gradient (of query, key, value or params), in every mode
    and for every score.

    Local-p (eq. 9) centres each query's window inside the span of its valid keys (`alignment.valid_span`):
    p_t = first + extent * sigmoid(v_p^T tanh(W_p h_t)), where first is the first valid key and extent runs to
    the last. With right padding that is S_b * sigmoid(...), the paper's eq. 9; with left padding, or a
    [B, T, S] mask, the window still never points into padding.

    Empty sequences. S = 0 gives a zero context [B, T, Dv] and empty weights [B, T, 0]; T = 0 gives an empty
    context [B, 0, Dv] and weights [B, 0, S]; no error, in every mode (as `dot_product_attention`).

    Args:
      query: [B, T, Dq] floating, Dq >= 1.
      key: [B, S, Dk] floating, Dk >= 1.
      value: [B, S, Dv] floating (Dv >= 1), or None to use `key`.
      mask: None, [B, S] bool (padding) or [B, T, S] bool; True = attend.
      score: a name in `scores.SCORES`.
      params: the score's weights by name, plus 'w_p' [Dq, A] and 'v_p' [A] for mode 'local_p'.
      mode: 'global', 'local_m' or 'local_p'.
      window: D, the half width of the local window; required for the local modes, ignored for 'global'.
      query_positions: [B, T] integer positions t of the queries, for 'local_m'; defaults to 0..T-1. A decoder
        that attends one step at a time passes its step index.
      key_lengths: None or [B] integer source lengths S_b: keys s >= S_b are masked, in every mode (combined
        with `mask`).
      normalizer: a name in `alignment.NORMALIZERS` ("softmax", "sparsemax", "entmax15").

    Returns:
      context: [B, T, Dv] in value's dtype.
      weights: [B, T, S] float32.

    Raises:
      ValueError: for an unknown score, mode or normalizer, a missing parameter or window, a zero feature
        size, or shapes that do not fit.
      TypeError: for inputs that are not arrays or not floating, a non-boolean mask or non-integer
        positions/lengths, or params that are not a mapping.
    """
    score_spec = scores.get_score(score)
    _checks.choice("mode", mode, MODES)
    _checks.choice("normalizer", normalizer, alignment.NORMALIZERS)
    value = check_attend_inputs(query, key, value, mask)
    batch, num_queries, _ = query.shape
    num_keys = key.shape[1]
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of name -> array, got {type(params).__name__}")
    params = dict(params or {})
    missing = [p for p in score_spec.params if p not in params]
    if missing:
        raise ValueError(f"score {score!r} needs params {list(score_spec.params)}; missing {missing}")
    if mode != "global":
        if window is None:
            raise ValueError(f"mode {mode!r} needs a window D >= 0, got None")
        window = _checks.positive_int("window", window, allow_zero=True)
        if mode == "local_p" and window < 1:
            raise ValueError(f"local-p needs window >= 1 (sigma = window / 2 > 0), got window={window}")
    if mode == "local_p":
        missing = [p for p in ("w_p", "v_p") if p not in params]
        if missing:
            raise ValueError(f"mode 'local_p' needs params ['w_p', 'v_p']; missing {missing}")
    if query_positions is not None:
        _checks.integer("query_positions", query_positions)
        _checks.shape("query_positions", query_positions, (batch, num_queries))
    valid = valid_keys(mask, key_lengths, batch, num_queries, num_keys)  # None or [B, T, S]

    position = window_centres(query, valid, num_keys, mode=mode, params=params, query_positions=query_positions)
    if position is not None:
        in_window = alignment.window_mask(position, num_keys, window)  # [B, T, S]
        valid = in_window if valid is None else valid & in_window

    # In the local modes the window, hence the zeroed keys and values, differs for every query: a decoder that
    # scans attend over its steps would keep one [B, S, D] zeroed copy per step for the backward pass. Under
    # jax.checkpoint the backward recomputes the zeroing instead: a `Seq2Seq` training step (B 64, S = T = 64,
    # D 128, CPU) went from 525 to 402 ms for local-m and from 562 to 420 ms for local-p (global dot: 338 ms).
    def tail(query, key, value, params, valid, position):
        query, key, value = zero_unattended(valid, query, key, value)
        logits = scores.compute_score(score, query, key, params)  # [B, T, S]
        weights = alignment.normalize(logits, valid, normalizer)
        if mode == "local_p":
            weights = weights * alignment.gaussian_window(position, num_keys, window / 2.0)
        return weighted_context(weights, value), weights
    if position is not None:
        tail = jax.checkpoint(tail, prevent_cse=False)
    return tail(query, key, value, params, valid, position)
