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


def attend_from_logits(
    logits: jax.Array, value: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Global attention from precomputed logits: a masked softmax, then the context.

    For callers that compute scores their own way, e.g. a decoder that projects the keys once per sentence
    (Bahdanau et al. 2014, arXiv:1409.0473, eq. 5-6 and A.1.2). Same mask semantics as `attend`.

    Args:
      logits: [B, T, S] floating.
      value: [B, S, Dv] floating.
      mask: None, [B, S] or [B, T, S] bool; True = attend.

    Returns:
      context: [B, T, Dv] in value's dtype.
      weights: [B, T, S] float32.

    Raises:
      ValueError: if shapes do not fit.
      TypeError: for non-floating inputs or a non-boolean mask.
    """
    _checks.rank("logits", logits, 3)
    _checks.rank("value", value, 3)
    batch, num_queries, num_keys = logits.shape
    if value.shape[:2] != (batch, num_keys):
        raise ValueError(f"logits [B, T, S] and value [B, S, Dv] do not fit: {logits.shape=} {value.shape=}")
    full_mask = masks.broadcast_key_mask(mask, batch, num_queries, num_keys)
    weights = alignment.masked_softmax(logits, full_mask)
    return _masked_context(weights, value, full_mask), weights


def _masked_context(weights: jax.Array, value: jax.Array, full_mask: jax.Array | None) -> jax.Array:
    if full_mask is not None:
        # Zero the value rows no query may attend to: their weight is 0, but 0 * NaN would still leak.
        value = jnp.where(jnp.any(full_mask, axis=1)[:, :, None], value, jnp.zeros((), value.dtype))
    return weighted_context(weights, value)


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
) -> tuple[jax.Array, jax.Array]:
    """Attention in three steps: score -> alignment -> context.

    score: `scores.compute_score(score, ...)`; alignment: a masked softmax ('global', Luong et al. 2015,
    arXiv:1508.04025 eq. 7), or a local window centred on p_t = t ('local_m', §3.2) or on a predicted p_t with
    a Gaussian ('local_p', eq. 9-10); context: the weighted sum of values (Bahdanau et al. 2014,
    arXiv:1409.0473 eq. 5).

    Args:
      query: [B, T, Dq] floating.
      key: [B, S, Dk] floating.
      value: [B, S, Dv] floating, or None to use `key`.
      mask: None, [B, S] bool (padding) or [B, T, S] bool; True = attend. A query whose keys are all masked
        gets zero weights and a zero context, with zero gradients. Masked keys and values never reach the
        output, even when they hold NaN or inf.
      score: a name in `scores.SCORE_PARAMS`.
      params: the score's weights by name, plus 'w_p' [Dq, A] and 'v_p' [A] for mode 'local_p'.
      mode: 'global', 'local_m' or 'local_p'.
      window: D, the half width of the local window; required for the local modes, ignored for 'global'.
      query_positions: [B, T] integer positions t of the queries, for 'local_m'; defaults to 0..T-1. A decoder
        that attends one step at a time passes its step index.
      key_lengths: [B] integer source lengths S_b for 'local_p'; defaults to mask.sum(-1) for a [B, S] mask,
        else S.

    Returns:
      context: [B, T, Dv] in value's dtype.
      weights: [B, T, S] float32.

    Raises:
      ValueError: for an unknown score or mode, a missing parameter or window, or shapes that do not fit.
      TypeError: for non-floating inputs, a non-boolean mask or non-integer positions/lengths.
    """
    scores.check_score_name(score)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
    _checks.rank("query", query, 3)
    _checks.rank("key", key, 3)
    value = key if value is None else value
    _checks.rank("value", value, 3)
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(f"batch sizes differ: {query.shape=} {key.shape=} {value.shape=}")
    if key.shape[1] != value.shape[1]:
        raise ValueError(f"key and value lengths differ: {key.shape=} {value.shape=}")
    batch, num_queries, _ = query.shape
    num_keys = key.shape[1]
    if mode != "global":
        if window is None:
            raise ValueError(f"mode {mode!r} needs a window D >= 0, got None")
        window = _checks.positive_int("window", window, allow_zero=True)
    full_mask = masks.broadcast_key_mask(mask, batch, num_queries, num_keys)
    params = params or {}
    if mode == "local_p":
        missing = [p for p in ("w_p", "v_p") if p not in params]
        if missing:
            raise ValueError(f"mode 'local_p' needs params ['w_p', 'v_p']; missing {missing}")
        if key_lengths is None:
            if mask is not None and jnp.ndim(mask) == 2:
                key_lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
            else:
                key_lengths = jnp.full((batch,), num_keys, jnp.int32)
        _checks.shape("key_lengths", key_lengths, (batch,))
    if query_positions is not None:
        _checks.integer("query_positions", query_positions)
        _checks.shape("query_positions", query_positions, (batch, num_queries))

    logits = scores.compute_score(score, query, key, params)  # [B, T, S]
    if mode == "global":
        weights = alignment.masked_softmax(logits, full_mask)
    elif mode == "local_m":
        if query_positions is None:
            position = alignment.local_m_position(batch, num_queries)
        else:
            position = query_positions.astype(_F32)
        weights = alignment.local_alignment(logits, position, window, full_mask, gaussian=False)
    else:
        position = alignment.local_p_position(query, params["w_p"], params["v_p"], key_lengths)
        weights = alignment.local_alignment(logits, position, window, full_mask, gaussian=True)
    return _masked_context(weights, value, full_mask), weights
