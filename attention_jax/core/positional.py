"""Position information for attention: absolute, relative, rotary, linear-bias and complex-order encodings.

  - `sinusoidal_positions`, `sinusoidal_at`: Vaswani et al. 2017, arXiv:1706.03762, §3.5.
  - `LearnedPositions`: a learned absolute position table (Gehring et al. 2017, arXiv:1705.03122, §3.1).
  - `relative_position_ids`, `shaw_logits`, `shaw_values`: Shaw et al. 2018, arXiv:1803.02155, eq. 3-6.
  - `complex_word_order_embedding`, `ComplexOrderEmbedding`: Wang et al. 2020, arXiv:1912.12333, §3.
  - `apply_rope`: Su et al. 2021, arXiv:2104.09864, eq. 34.
  - `alibi_slopes`, `alibi_bias`: Press et al. 2021, arXiv:2108.12409, §3.

Every function computes in float32; outputs that continue a caller's tensor (`apply_rope`) keep its dtype.
Pairwise terms come out as [B|1, N, T, S] float32 so they can be passed as `bias` to
`attention_jax.dot_product_attention`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks
from attention_jax.core import axes

_F32 = jnp.float32

__all__ = [
    "ComplexOrderEmbedding",
    "LearnedPositions",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "complex_word_order_embedding",
    "relative_position_ids",
    "shaw_logits",
    "shaw_values",
    "sinusoidal_at",
    "sinusoidal_positions",
]


def _positions_bt(name: str, positions: Any) -> None:
    _checks.rank(name, positions, 2)
    if not (jnp.issubdtype(jnp.result_type(positions), jnp.integer)
            or jnp.issubdtype(jnp.result_type(positions), jnp.floating)):
        raise TypeError(f"{name} must be integer or floating, got dtype {jnp.result_type(positions)}")


def _concrete(x: Any) -> np.ndarray | None:
    """`x` as a numpy array when its values are known now, None when it is traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------------------
# Sinusoidal (Vaswani et al. 2017).


def sinusoidal_at(
    positions: jax.Array, dim: int, *, max_timescale: float = 10000.0, dtype: Any = jnp.float32
) -> jax.Array:
    """Sinusoidal encodings at explicit positions, interleaved as in arXiv:1706.03762, §3.5.

    PE(pos, 2i) = sin(pos / max_timescale^(2i / D)) and PE(pos, 2i + 1) = cos(pos / max_timescale^(2i / D)):
    even feature indices hold sines and odd ones cosines of the same frequency (not the [sin..., cos...]
    half-split layout of tensor2tensor). For odd D the last feature is the sine of frequency i = (D - 1) / 2.
    Explicit positions serve decoding with an offset: `sinusoidal_at(t0 + arange(T)[None], D)` equals rows
    t0 .. t0 + T - 1 of `sinusoidal_positions`.

    Args:
      positions: [B, T] integer or floating positions.
      dim: D, a Python int >= 1.
      max_timescale: the base 10000 of the paper.
      dtype: the output dtype; the angles are computed in float32.

    Returns:
      [B, T, D] in `dtype`.

    Raises:
      ValueError: if positions is not rank 2 or dim is not a positive int.
      TypeError: if positions is neither integer nor floating.
    """
    _positions_bt("positions", positions)
    dim = _checks.positive_int("dim", dim)
    pair = np.arange(dim) // 2  # [D], i for features 2i and 2i + 1
    inv_freq = jnp.asarray(float(max_timescale) ** (-2.0 * pair / dim), _F32)  # [D]
    angle = jnp.asarray(positions, _F32)[..., None] * inv_freq  # [B, T, D]
    even = jnp.asarray(np.arange(dim) % 2 == 0)  # [D]
    return jnp.where(even, jnp.sin(angle), jnp.cos(angle)).astype(dtype)


def sinusoidal_positions(
    length: int, dim: int, *, max_timescale: float = 10000.0, dtype: Any = jnp.float32
) -> jax.Array:
    """The sinusoidal table for positions 0 .. T - 1 (arXiv:1706.03762, §3.5); see `sinusoidal_at`.

    Args:
      length: T, a Python int >= 1.
      dim: D, a Python int >= 1.
      max_timescale: the base 10000 of the paper.
      dtype: the output dtype; the angles are computed in float32.

    Returns:
      [T, D] in `dtype`.

    Raises:
      ValueError: if length or dim is not a positive int.
    """
    length = _checks.positive_int("length", length)
    return sinusoidal_at(jnp.arange(length)[None], dim, max_timescale=max_timescale, dtype=dtype)[0]


# ----------------------------------------------------------------------------------------------------------
# Learned absolute positions.


class LearnedPositions(nn.Module):
    """A learned absolute position table, looked up at explicit positions (arXiv:1705.03122, §3.1).

    Attributes:
      max_length: the number of rows, positions 0 .. max_length - 1.
      features: D.
      embedding_init: the table initializer.
      param_dtype: the table dtype.

    Positions out of [0, max_length) raise ValueError when their values are known at call time (eager calls,
    `init`). Under jit they cannot be checked; the lookup then clips them to [0, max_length - 1] (so position
    max_length + 3 reads row max_length - 1), never NaN and never an out-of-bounds read.
    """

    max_length: int
    features: int
    embedding_init: Any = nn.initializers.normal(stddev=0.02)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        """Looks up the table.

        Args:
          positions: [B, T] integer.

        Returns:
          [B, T, D] in param_dtype.

        Raises:
          ValueError: if positions is not rank 2, or (when concrete) a position is outside [0, max_length).
          TypeError: if positions is not integer.
        """
        _checks.rank("positions", positions, 2)
        _checks.integer("positions", positions)
        max_length = _checks.positive_int("max_length", self.max_length)
        features = _checks.positive_int("features", self.features)
        known = _concrete(positions)
        if known is not None and known.size and (known.min() < 0 or known.max() >= max_length):
            raise ValueError(
                f"positions must lie in [0, max_length={max_length}), got min {known.min()} max {known.max()} "
                f"in positions.shape={known.shape}"
            )
        table = self.param("table", axes.partitioned(self.embedding_init, (None, axes.EMBED)), (max_length, features),
                           self.param_dtype)  # [L, D]; the rows are never sharded
        return jnp.take(table, positions, axis=0, mode="clip")  # [B, T, D]


# ----------------------------------------------------------------------------------------------------------
# Relative positions (Shaw et al. 2018).


def relative_position_ids(
    num_queries: int, num_keys: int, max_distance: int, query_offset: int = 0
) -> jax.Array:
    """Clipped relative distances as table rows, clip(s - t, -k, k) + k (arXiv:1803.02155, eq. 4-6).

    Query t sits at absolute position t + query_offset (decoding with a cache), key s at position s.

    Args:
      num_queries: T, a Python int >= 1.
      num_keys: S, a Python int >= 1.
      max_distance: k, a Python int >= 0; the tables have 2k + 1 rows.
      query_offset: a Python int >= 0 added to the query positions.

    Returns:
      ids: [T, S] int32 in [0, 2k].

    Raises:
      ValueError: if any argument is not an int in range.
    """
    num_queries = _checks.positive_int("num_queries", num_queries)
    num_keys = _checks.positive_int("num_keys", num_keys)
    k = _checks.positive_int("max_distance", max_distance, allow_zero=True)
    query_offset = _checks.positive_int("query_offset", query_offset, allow_zero=True)
    distance = jnp.arange(num_keys)[None, :] - (jnp.arange(num_queries)[:, None] + query_offset)  # [T, S]
    return (jnp.clip(distance, -k, k) + k).astype(jnp.int32)


def _check_ids(ids: Any, rows: int, num_queries: int | None) -> None:
    _checks.rank("ids", ids, 2)
    _checks.integer("ids", ids)
    if num_queries is not None and jnp.shape(ids)[0] != num_queries:
        raise ValueError(f"ids must have T={num_queries} rows, got ids.shape={jnp.shape(ids)}")
    known = _concrete(ids)
    if known is not None and known.size and (known.min() < 0 or known.max() >= rows):
        raise ValueError(f"ids must lie in [0, {rows}) for a table of {rows} rows, got {known.min()}..{known.max()}")


def shaw_logits(
    query: jax.Array, table_k: jax.Array, ids: jax.Array, *, scale: float = 1.0
) -> jax.Array:
    """The relative-key logit term scale * q_t . a^K_{ts} of Shaw et al. 2018 (arXiv:1803.02155, eq. 5).

    Eq. 5 is e_ts = q_t (k_s + a^K_ts)^T / sqrt(H): this function returns the second summand. To use it with
    `dot_product_attention` (which adds `bias` after scaling q.k), pass `scale=1 / sqrt(H)` and the result as
    `bias`. The table is shared by all heads, as in the paper. Computed as q . table first ([B, N, T, 2k+1]) and
    then gathered, so no [T, S, H] tensor is built.

    Args:
      query: [B, T, N, H] floating.
      table_k: [2k + 1, H] floating, row r for the clipped distance r - k.
      ids: [T, S] integer in [0, 2k], from `relative_position_ids`.
      scale: multiplies the result.

    Returns:
      [B, N, T, S] float32.

    Raises:
      ValueError: for wrong ranks, H differing between query and table_k, ids rows != T, or (when concrete) ids
        outside the table.
      TypeError: for non-floating query or table_k, or non-integer ids.
    """
    _checks.rank("query", query, 4)
    _checks.floating("query", query)
    _checks.rank("table_k", table_k, 2)
    _checks.floating("table_k", table_k)
    if jnp.shape(table_k)[1] != jnp.shape(query)[3]:
        raise ValueError(f"query and table_k head dims differ: {jnp.shape(query)=} {jnp.shape(table_k)=}")
    _check_ids(ids, jnp.shape(table_k)[0], jnp.shape(query)[1])
    batch, num_queries, heads, _ = jnp.shape(query)
    num_keys = jnp.shape(ids)[1]
    per_row = jnp.einsum("BTNH,RH->BNTR", query.astype(_F32), table_k.astype(_F32))  # [B, N, T, R]
    index = jnp.broadcast_to(jnp.asarray(ids)[None, None], (batch, heads, num_queries, num_keys))  # [B, N, T, S]
    return jnp.take_along_axis(per_row, index, axis=-1) * jnp.asarray(scale, _F32)  # [B, N, T, S]


def shaw_values(weights: jax.Array, table_v: jax.Array, ids: jax.Array) -> jax.Array:
    """The relative-value term sum_s w_ts a^V_ts of Shaw et al. 2018 (arXiv:1803.02155, eq. 3).

    Eq. 3 is z_t = sum_s w_ts (v_s + a^V_ts): add this to the attention output (computed with the same weights,
    e.g. `dot_product_attention(..., return_weights=True)`) to get z. Weights are first summed per table row
    ([B, N, T, 2k+1]), so no [T, S, H] tensor is built.

    Args:
      weights: [B, N, T, S] floating attention weights.
      table_v: [2k + 1, H] floating, row r for the clipped distance r - k (separate from the key table).
      ids: [T, S] integer in [0, 2k], from `relative_position_ids`.

    Returns:
      [B, T, N, H] in table_v's dtype (summed in float32).

    Raises:
      ValueError: for wrong ranks, ids.shape != weights.shape[2:], or (when concrete) ids outside the table.
      TypeError: for non-floating weights or table_v, or non-integer ids.
    """
    _checks.rank("weights", weights, 4)
    _checks.floating("weights", weights)
    _checks.rank("table_v", table_v, 2)
    _checks.floating("table_v", table_v)
    rows = jnp.shape(table_v)[0]
    _check_ids(ids, rows, None)
    if jnp.shape(ids) != jnp.shape(weights)[2:]:
        raise ValueError(f"ids must have shape [T, S] = {jnp.shape(weights)[2:]}: {jnp.shape(weights)=} {jnp.shape(ids)=}")
    one_hot = jax.nn.one_hot(ids, rows, dtype=_F32)  # [T, S, R]
    per_row = jnp.einsum("BNTS,TSR->BNTR", weights.astype(_F32), one_hot)  # [B, N, T, R]
    out = jnp.einsum("BNTR,RH->BTNH", per_row, table_v.astype(_F32))  # [B, T, N, H]
    return out.astype(table_v.dtype)


# ----------------------------------------------------------------------------------------------------------
# Complex word-order embeddings (Wang et al. 2020).


def complex_word_order_embedding(
    amplitude: jax.Array, frequency: jax.Array, phase: jax.Array, positions: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """f(j, pos) = r_j exp(i (w_j pos + theta_j)), as (real, imaginary) parts (Wang et al. 2020, arXiv:1912.12333).

    Our reading of §3 of the paper: a word j's embedding is a function of its position whose d-th dimension
    is r_{j,d} exp(i (w_{j,d} pos + theta_{j,d})), with learned amplitude r, frequency w and initial phase theta
    per word and dimension; the position-free offset property holds because
    f(j, pos + k) = exp(i w_j k) * f(j, pos), a rotation that does not depend on pos. (We cite the section,
    not an equation number, which we could not verify.)

    Args:
      amplitude: [T, D] or [B, T, D] floating, r per word and dimension.
      frequency: the same shape as amplitude, w.
      phase: the same shape as amplitude, theta.
      positions: [B, T] integer or floating.

    Returns:
      (real, imag): each [B, T, D] float32, r cos(w pos + theta) and r sin(w pos + theta).

    Raises:
      ValueError: for wrong ranks, shapes that differ between amplitude, frequency and phase, or T (or B)
        differing from positions.
      TypeError: for non-floating amplitude, frequency or phase, or positions neither integer nor floating.
    """
    for name, x in (("amplitude", amplitude), ("frequency", frequency), ("phase", phase)):
        _checks.rank(name, x, (2, 3))
        _checks.floating(name, x)
    if not jnp.shape(amplitude) == jnp.shape(frequency) == jnp.shape(phase):
        raise ValueError(
            f"amplitude, frequency and phase shapes differ: {jnp.shape(amplitude)=} {jnp.shape(frequency)=} "
            f"{jnp.shape(phase)=}"
        )
    _positions_bt("positions", positions)
    lead = jnp.shape(amplitude)[:-1]  # (T,) or (B, T)
    if lead != jnp.shape(positions)[-len(lead):]:
        raise ValueError(f"amplitude and positions disagree on [B,] T: {jnp.shape(amplitude)=} {jnp.shape(positions)=}")
    angle = frequency.astype(_F32) * jnp.asarray(positions, _F32)[..., None] + phase.astype(_F32)  # [B, T, D]
    r = amplitude.astype(_F32)
    return r * jnp.cos(angle), r * jnp.sin(angle)


class ComplexOrderEmbedding(nn.Module):
    """Complex word-order embeddings with per-word amplitude, frequency and phase tables (arXiv:1912.12333).

    Attributes:
      vocab_size: V.
      features: D.
      amplitude_init: initializer of the [V, D] amplitude table r.
      frequency_init: initializer of the [V, D] frequency table w.
      phase_init: initializer of the [V, D] phase table theta (uniform in [0, 2 pi) by default).
      param_dtype: the table dtype.
    """

    vocab_size: int
    features: int
    amplitude_init: Any = nn.initializers.normal(stddev=1.0)
    frequency_init: Any = nn.initializers.normal(stddev=1.0)
    phase_init: Any = nn.initializers.uniform(scale=2.0 * math.pi)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Embeds tokens at positions.

        Args:
          tokens: [B, T] integer in [0, V).
          positions: [B, T] integer or floating.

        Returns:
          (real, imag): each [B, T, D] float32; see `complex_word_order_embedding`.

        Raises:
          ValueError: if tokens is not rank 2 or its shape differs from positions'.
          TypeError: if tokens is not integer.
        """
        _checks.rank("tokens", tokens, 2)
        _checks.integer("tokens", tokens)
        if jnp.shape(tokens) != jnp.shape(positions):
            raise ValueError(f"tokens and positions shapes differ: {jnp.shape(tokens)=} {jnp.shape(positions)=}")
        vocab = _checks.positive_int("vocab_size", self.vocab_size)
        features = _checks.positive_int("features", self.features)
        tables = [
            self.param(name, axes.partitioned(init, (axes.VOCAB, axes.EMBED)), (vocab, features), self.param_dtype)
            for name, init in (("amplitude", self.amplitude_init), ("frequency", self.frequency_init),
                               ("phase", self.phase_init))
        ]
        amplitude, frequency, phase = (jnp.take(t, tokens, axis=0) for t in tables)  # [B, T, D] each
        return complex_word_order_embedding(amplitude, frequency, phase, positions)


# ----------------------------------------------------------------------------------------------------------
# Rotary position embeddings (Su et al. 2021).


def apply_rope(x: jax.Array, positions: jax.Array, *, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding, R^d_{Theta,m} x (Su et al. 2021, arXiv:2104.09864, eq. 34).

    Interleaved pairs, the paper's convention: features (x_{2i}, x_{2i+1}) rotate by the angle
    m * base^(-2i / H), i = 0 .. H/2 - 1, at position m:
        y_{2i}   = x_{2i} cos - x_{2i+1} sin,
        y_{2i+1} = x_{2i} sin + x_{2i+1} cos.
    This is NOT the half-split layout (pairs (x_i, x_{i + H/2})) of GPT-NeoX / LLaMA code; weights from those
    need their features permuted. Apply to queries and keys; then q_m . k_n depends only on m - n.

    Args:
      x: [B, T, N, H] floating, H even.
      positions: [B, T] integer (or floating) position of each token.
      base: the 10000 of the paper.

    Returns:
      [B, T, N, H] in x's dtype (rotated in float32).

    Raises:
      ValueError: for wrong ranks, odd H, or positions.shape != (B, T).
      TypeError: for non-floating x, or positions neither integer nor floating.
    """
    _checks.rank("x", x, 4)
    _checks.floating("x", x)
    _positions_bt("positions", positions)
    batch, length, heads, head_dim = jnp.shape(x)
    if head_dim % 2:
        raise ValueError(f"apply_rope needs an even head dim H, got x.shape={jnp.shape(x)}")
    if jnp.shape(positions) != (batch, length):
        raise ValueError(f"positions must have shape [B, T] = {(batch, length)}: {jnp.shape(x)=} {jnp.shape(positions)=}")
    inv_freq = jnp.asarray(float(base) ** (-2.0 * np.arange(head_dim // 2) / head_dim), _F32)  # [H/2]
    angle = jnp.asarray(positions, _F32)[:, :, None, None] * inv_freq  # [B, T, 1, H/2]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    pairs = x.astype(_F32).reshape(batch, length, heads, head_dim // 2, 2)  # [B, T, N, H/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]  # [B, T, N, H/2]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)  # [B, T, N, H/2, 2]
    return rotated.reshape(batch, length, heads, head_dim).astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# ALiBi (Press et al. 2021).


def _alibi_slopes_list(num_heads: int) -> list[float]:
    if num_heads & (num_heads - 1) == 0:  # a power of two
        return [2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)]
    lower = 2 ** int(math.floor(math.log2(num_heads)))
    return _alibi_slopes_list(lower) + _alibi_slopes_list(2 * lower)[0::2][: num_heads - lower]


def alibi_slopes(num_heads: int) -> jax.Array:
    """Per-head ALiBi slopes m_h (Press et al. 2021, arXiv:2108.12409, §3).

    For N a power of two, the geometric sequence m_h = 2^(-8 h / N), h = 1 .. N (N = 8: 1/2, 1/4, ..., 1/256).
    Otherwise, the authors' rule (their released code, referenced in §3): the slopes of the closest smaller
    power of two P, followed by every other slope (the 1st, 3rd, ...) of the 2P set, first N - P of them.
    N = 6: [1/4, 1/16, 1/64, 1/256] + [1/2, 1/8].

    Args:
      num_heads: N, a Python int >= 1.

    Returns:
      [N] float32.

    Raises:
      ValueError: if num_heads is not a positive int.
    """
    num_heads = _checks.positive_int("num_heads", num_heads)
    return jnp.asarray(_alibi_slopes_list(num_heads), _F32)


def alibi_bias(num_heads: int, num_queries: int, num_keys: int, query_offset: int = 0) -> jax.Array:
    """The ALiBi linear distance penalty, -m_h (t + query_offset - s) (Press et al. 2021, arXiv:2108.12409, §3).

    Query t sits at absolute position t + query_offset, key s at s. The same linear formula is used for keys
    after the query (s > t + query_offset), where it is a positive bonus: ALiBi is meant for causal attention,
    where those keys are masked anyway. Pass the result as `bias` to `dot_product_attention`.

    Args:
      num_heads: N, a Python int >= 1.
      num_queries: T, a Python int >= 1.
      num_keys: S, a Python int >= 1.
      query_offset: a Python int >= 0.

    Returns:
      [1, N, T, S] float32.

    Raises:
      ValueError: if any argument is not an int in range.
    """
    slopes = alibi_slopes(num_heads)  # [N]
    num_queries = _checks.positive_int("num_queries", num_queries)
    num_keys = _checks.positive_int("num_keys", num_keys)
    query_offset = _checks.positive_int("query_offset", query_offset, allow_zero=True)
    distance = (jnp.arange(num_queries)[:, None] + query_offset - jnp.arange(num_keys)[None, :]).astype(_F32)  # [T, S]
    return (-slopes[:, None, None] * distance)[None]  # [1, N, T, S]
