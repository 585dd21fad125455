"""Transformer-XL relative positional attention over a segment plus a cached memory, as a function and a layer.

Dai et al. 2019, "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context", arXiv:1901.02860.

  - `rel_shift`: the efficient relative shift of appendix B.
  - `relative_attention`: attention with the relative score A^rel_{i,j} of §3.3,
        A^rel_{i,j} = (a) q_i . k_j  +  (b) q_i . W_R R_{i-j}  +  (c) u . k_j  +  (d) v . W_R R_{i-j}.
  - `causal_memory_mask`: the Transformer-XL causal mask over [memory; segment].
  - `relative_encodings`: the sinusoidal R of distances L - 1 .. 0.
  - `RelativeMultiHeadAttention`: a Linen layer that owns W_q, W_k, W_v, W_R, u, v and the output projection.

Letters (beyond the package legend): M = memory length, L = M + T = key length (the package's S). Keys are
ordered memory first, so key j sits at absolute position j and query i at absolute position M + i; the
distance between them is (M + i) - j.

Relative-position ordering, the paper's: a relative table has L rows and row r holds distance L - 1 - r,
i.e. rows go from distance L - 1 down to distance 0. Logits are float32 whatever the input dtype.
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
from attention_jax.core.alignment import masked_softmax_with_lse
from attention_jax.core.positional import sinusoidal_at

_F32 = jnp.float32

__all__ = ["RelativeMultiHeadAttention", "causal_memory_mask", "rel_shift", "relative_attention", "relative_encodings"]


def _valid_distances(num_queries: int, num_keys: int) -> np.ndarray:
    """[T, L] bool, True where key j is not after query i, i.e. j <= (L - T) + i (distance >= 0)."""
    memory = num_keys - num_queries
    return np.arange(num_keys)[None, :] <= memory + np.arange(num_queries)[:, None]


def rel_shift(x: jax.Array) -> jax.Array:
    """Realigns scores from distance-ordered columns to key-ordered columns (arXiv:1901.02860, appendix B).

    Convention. With T = x.shape[-2], L = x.shape[-1] and M = L - T, column r of the input holds the score
    against distance L - 1 - r (r = 0 is the largest distance L - 1, r = L - 1 is distance 0). Query i sits at
    absolute position M + i and key j at j, so the output is

        y[..., i, j] = x[..., i, (T - 1 - i) + j]   if j <= M + i  (distance (M + i) - j >= 0),
        y[..., i, j] = 0                              otherwise (a key after the query: no distance row).

    Computed as in appendix B: pad one zero column on the left, view the [T, L + 1] rows as [L + 1, T], drop
    the first row and view the rest as [T, L]. This lands every valid entry in place; the entries with
    j > M + i that the trick fills with values of the next row are set to zero here, so the result is fully
    defined.

    Args:
      x: [B, N, T, L] floating, T <= L.

    Returns:
      [B, N, T, L], x's dtype.

    Raises:
      ValueError: if x is not rank 4 or T > L (a query would have no memory-consistent position).
      TypeError: if x is not floating.
    """
    _checks.rank("x", x, 4)
    _checks.floating("x", x)
    batch, heads, num_queries, num_keys = jnp.shape(x)
    if num_queries > num_keys:
        raise ValueError(f"rel_shift needs T <= L (x is [B, N, T, L]), got x.shape={jnp.shape(x)}")
    padded = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (1, 0)))  # [B, N, T, L + 1]
    padded = padded.reshape(batch, heads, num_keys + 1, num_queries)  # [B, N, L + 1, T]
    shifted = padded[:, :, 1:].reshape(batch, heads, num_queries, num_keys)  # [B, N, T, L]
    valid = jnp.asarray(_valid_distances(num_queries, num_keys))  # [T, L]
    return jnp.where(valid, shifted, jnp.zeros((), x.dtype))


def causal_memory_mask(num_queries: int, memory_length: int) -> jax.Array:
    """The Transformer-XL causal mask over [memory; segment]: query i sees key j iff j <= M + i (§3.2).

    Args:
      num_queries: T, a Python int >= 0.
      memory_length: M, a Python int >= 0.

    Returns:
      mask: [1, 1, T, M + T] bool, True = attend (empty when T = 0).

    Raises:
      ValueError: if num_queries or memory_length is negative (or not an int).
    """
    num_queries = _checks.positive_int("num_queries", num_queries, allow_zero=True)
    memory_length = _checks.positive_int("memory_length", memory_length, allow_zero=True)
    return jnp.asarray(_valid_distances(num_queries, memory_length + num_queries))[None, None]


def _check_mask(mask: Any, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
    _checks.rank("mask", mask, 4)
    _checks.boolean("mask", mask)
    mb, mn, mt, ml = jnp.shape(mask)
    if mb not in (1, batch) or mn not in (1, heads) or (mt, ml) != (num_queries, num_keys):
        raise ValueError(
            f"mask must be [B|1, N|1, T, L] = [{batch}|1, {heads}|1, {num_queries}, {num_keys}], "
            f"got mask.shape={jnp.shape(mask)}"
        )


def relative_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    rel_key: jax.Array,
    u: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Attention with the Transformer-XL relative score (Dai et al. 2019, arXiv:1901.02860, §3.3).

    With keys = [memory; segment] (L = M + T, memory first) query i is at absolute position M + i and

        A^rel_{i,j} = (a) q_i . k_j + (b) q_i . W_R R_{M+i-j} + (c) u . k_j + (d) v . W_R R_{M+i-j},

    per head, logits = scale * A^rel, weights = softmax over the keys allowed by `mask`, output = weights . V.
    As in the paper, (a)+(c) = (q_i + u) . k_j and (b)+(d) = (q_i + v) . W_R R, the latter computed against
    every distance row and realigned with `rel_shift` (appendix B). For a key after its query (j > M + i)
    there is no distance row: (b) and (d) are 0 there and only the content terms remain, so such keys should be
    masked, usually with `causal_memory_mask(T, M)`. Rows with no valid key give a zero output. Keys and values
    that no query of their head attends, and queries with no valid key, are replaced with zeros before the
    logits, so NaN or inf stored there reaches neither the output nor any gradient. T = 0 gives an empty
    output.

    Args:
      query: [B, T, N, H] floating, the projected current segment.
      key: [B, L, N, H] floating, L = M + T, memory first.
      value: [B, L, N, H] floating.
      rel_key: [L, N, H] floating, W_R R for distances L - 1, ..., 0 (row r holds distance L - 1 - r).
      u: [N, H] floating, the global content bias.
      v: [N, H] floating, the global position bias.
      mask: None or [B|1, N|1, T, L] bool, True = attend.
      scale: multiplies A^rel; None means 1 / sqrt(H).

    Returns:
      output: [B, T, N, H] in query's dtype (logits and softmax in float32).

    Raises:
      ValueError: for wrong ranks, key/value shapes that differ, B, N or H that disagree, L < T, or a mask
        of the wrong shape.
      TypeError: for non-floating inputs or a non-boolean mask.
    """
    for name, x, r in (("query", query, 4), ("key", key, 4), ("value", value, 4), ("rel_key", rel_key, 3),
                       ("u", u, 2), ("v", v, 2)):
        _checks.rank(name, x, r)
        _checks.floating(name, x)
    batch, num_queries, heads, head_dim = jnp.shape(query)
    if jnp.shape(key) != jnp.shape(value):
        raise ValueError(f"key and value shapes differ: {jnp.shape(key)=} {jnp.shape(value)=}")
    num_keys = jnp.shape(key)[1]
    if jnp.shape(key) != (batch, num_keys, heads, head_dim):
        raise ValueError(f"key must be [B, L, N, H] with query's B, N, H: {jnp.shape(query)=} {jnp.shape(key)=}")
    if num_keys < num_queries:
        raise ValueError(f"keys must hold memory plus segment, L = M + T >= T: {jnp.shape(query)=} {jnp.shape(key)=}")
    if jnp.shape(rel_key) != (num_keys, heads, head_dim):
        raise ValueError(f"rel_key must be [L, N, H] = {(num_keys, heads, head_dim)}: {jnp.shape(rel_key)=}")
    for name, x in (("u", u), ("v", v)):
        if jnp.shape(x) != (heads, head_dim):
            raise ValueError(f"{name} must be [N, H] = {(heads, head_dim)}: {name}.shape={jnp.shape(x)}")
    if mask is not None:
        _check_mask(mask, batch, heads, num_queries, num_keys)
    if head_dim == 0:
        raise ValueError(f"the head dim H must be >= 1: {jnp.shape(query)=}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    if mask is not None:
        # Zero the rows no valid pair uses before any product: 0 * NaN would reach the live gradients.
        heads_last = lambda live: jnp.swapaxes(live, 1, 2)[..., None]  # [B|1, N|1, X] -> [B|1, X, N|1, 1]
        query = jnp.where(heads_last(jnp.any(mask, axis=3)), query, jnp.zeros((), query.dtype))
        live_key = heads_last(jnp.any(mask, axis=2))
        key = jnp.where(live_key, key, jnp.zeros((), key.dtype))
        value = jnp.where(live_key, value, jnp.zeros((), value.dtype))
    q = query.astype(_F32)
    content = jnp.einsum("BTNH,BLNH->BNTL", q + u.astype(_F32), key.astype(_F32))  # [B, N, T, L], (a) + (c)
    by_distance = jnp.einsum("BTNH,RNH->BNTR", q + v.astype(_F32), rel_key.astype(_F32))  # [B, N, T, L], (b) + (d)
    logits = (content + rel_shift(by_distance)) * jnp.asarray(scale, _F32)  # [B, N, T, L]
    if mask is not None:
        mask = jnp.broadcast_to(mask, logits.shape)  # [B, N, T, L]
    weights, _ = masked_softmax_with_lse(logits, mask)  # [B, N, T, L] float32
    out = jnp.einsum("BNTL,BLNH->BTNH", weights, value.astype(_F32))  # [B, T, N, H]
    return out.astype(query.dtype)


def relative_encodings(num_keys: int, dim: int, dtype: Any = jnp.float32) -> jax.Array:
    """Sinusoidal encodings R of distances L - 1, ..., 0, row r for distance L - 1 - r (arXiv:1901.02860, §3.3).

    Uses `positional.sinusoidal_at` (interleaved sin/cos, arXiv:1706.03762, §3.5), not the paper's released
    [sin..., cos...] layout; the two differ by a fixed feature permutation, which W_R absorbs.

    Args:
      num_keys: L, a Python int >= 0.
      dim: D, a Python int >= 1.
      dtype: the output dtype.

    Returns:
      [L, D] in `dtype`.

    Raises:
      ValueError: if num_keys is negative or dim is not a positive int (or either is not an int).
    """
    num_keys = _checks.positive_int("num_keys", num_keys, allow_zero=True)
    distances = jnp.arange(num_keys - 1, -1, -1)[None]  # [1, L]
    return sinusoidal_at(distances, dim, dtype=dtype)[0]


class RelativeMultiHeadAttention(nn.Module):
    """Transformer-XL multi-head attention over [memory; segment] (Dai et al. 2019, arXiv:1901.02860, §3.2-3.3).

    q from the segment h; k and v from [SG(memory); h]; W_R R from sinusoidal encodings of distances
    L - 1 .. 0 (`relative_encodings`); learned u and v shared across positions; an output projection back to D.
    The parameters do not depend on M or T, so a layer trained with one memory length runs with another.

    Attributes:
      num_heads: N, an int >= 1.
      head_dim: H, an int >= 1.
      causal: a bool; AND the causal mask `causal_memory_mask(T, M)` into any given mask (the language-model
        setting).
      kernel_init: initializer of the projections.
      bias_init: initializer of u and v.
      param_dtype: the parameter dtype.

    Raises:
      ValueError: at construction, if num_heads or head_dim is not an int >= 1.
      TypeError: at construction, if causal is not a bool.
    """

    num_heads: int
    head_dim: int
    causal: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.normal(stddev=0.02)
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.int_at_least("num_heads", self.num_heads, 1)
        _checks.int_at_least("head_dim", self.head_dim, 1)
        _checks.flag("causal", self.causal)
        super().__post_init__()

    @nn.compact
    def __call__(self, h: jax.Array, memory: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        """Attends from the segment to [memory; segment].

        Args:
          h: [B, T, D] floating, the segment's hidden states.
          memory: None or [B, M, D] floating, the cached states of earlier segments; no gradient flows into it.
          mask: None or [B|1, N|1, T, M + T] bool, True = attend.

        Returns:
          [B, T, D] in h's dtype (empty when T = 0).

        Raises:
          ValueError: for wrong ranks, D = 0, memory and h that disagree on B or D, or a mask of the wrong shape.
          TypeError: for inputs that are not floating arrays or a non-boolean mask.
        """
        _checks.rank("h", h, 3)
        _checks.floating("h", h)
        heads, head_dim = self.num_heads, self.head_dim
        batch, num_queries, features = jnp.shape(h)
        if features == 0:
            raise ValueError(f"h needs at least one feature: {jnp.shape(h)=}")
        if memory is None:
            context = h  # [B, T, D]
        else:
            _checks.rank("memory", memory, 3)
            _checks.floating("memory", memory)
            if jnp.shape(memory)[0] != batch or jnp.shape(memory)[2] != features:
                raise ValueError(f"memory and h disagree on B or D: {jnp.shape(memory)=} {jnp.shape(h)=}")
            context = jnp.concatenate([jax.lax.stop_gradient(memory).astype(h.dtype), h], axis=1)  # [B, L, D]
        num_keys = jnp.shape(context)[1]
        if mask is not None:
            _check_mask(mask, batch, heads, num_queries, num_keys)
        if self.causal:
            causal = causal_memory_mask(num_queries, num_keys - num_queries)  # [1, 1, T, L]
            mask = causal if mask is None else mask & causal

        def project(name: str) -> nn.DenseGeneral:
            kernel_init = axes.partitioned(self.kernel_init, (axes.EMBED, axes.HEADS, axes.HEAD_DIM))
            return nn.DenseGeneral((heads, head_dim), use_bias=False, kernel_init=kernel_init,
                                   param_dtype=self.param_dtype, name=name)

        qkv_names = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM)

        if mask is not None:
            # Rows no valid pair uses (padded memory slots, say) are zeroed before the projections: NaN there
            # would reach d W as NaN * 0 even though the attention masks them.
            h_query = jnp.where(jnp.any(mask, axis=(1, 3))[..., None], h, jnp.zeros((), h.dtype))  # [B, T, D]
            context = jnp.where(jnp.any(mask, axis=(1, 2))[..., None], context, jnp.zeros((), context.dtype))
        else:
            h_query = h
        query = axes.constrain(project("query")(h_query), qkv_names)  # [B, T, N, H]
        key = axes.constrain(project("key")(context), qkv_names)  # [B, L, N, H]
        value = axes.constrain(project("value")(context), qkv_names)  # [B, L, N, H]
        encodings = relative_encodings(num_keys, features, dtype=h.dtype)  # [L, D]
        rel_key = project("rel_key")(encodings)  # [L, N, H], W_R R
        bias_init = axes.partitioned(self.bias_init, (axes.HEADS, axes.HEAD_DIM))
        u = self.param("u", bias_init, (heads, head_dim), self.param_dtype)  # [N, H]
        v = self.param("v", bias_init, (heads, head_dim), self.param_dtype)  # [N, H]
        out = relative_attention(query, key, value, rel_key, u, v, mask=mask)  # [B, T, N, H]
        out_init = axes.partitioned(self.kernel_init, (axes.HEADS, axes.HEAD_DIM, axes.EMBED))
        out = nn.DenseGeneral(features, axis=(-2, -1), use_bias=False, kernel_init=out_init,
                              param_dtype=self.param_dtype, name="out")(out)  # [B, T, D]
        return axes.constrain(out.astype(h.dtype), (axes.BATCH, axes.LENGTH, axes.EMBED))
