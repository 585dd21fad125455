"""Compositional de-attention (CoDA): quasi-attention weights in (-1, 1) that add, subtract or nullify values.

Tay et al. 2019, "Compositional De-Attention Networks", NeurIPS 2019, arXiv:1910.01086, §2 (the equations
below are restated from the paper's definitions; their printed numbers were not available here to cite):

    E_ts = alpha * F_E(a_t) . F_E(b_s)                 pairwise similarity
    N_ts = -beta * || F_N(a_t) - F_N(b_s) ||_1         pairwise dissimilarity, the negative L1 distance
    M    = tanh(E) * sigmoid(N)                        the quasi-attention matrix, in (-1, 1), no softmax
    a'_t = sum_s M_ts b_s                              (A' = M B; for a pair of sequences also B' = M^T A)

tanh(E) chooses between adding (+) and subtracting (-) a value; sigmoid(N) gates it towards zero for distant
pairs. Since N <= 0, sigmoid(N) <= 1/2: the paper centres N (and E, so that tanh takes both signs) to zero
mean before the nonlinearities, and names 2 sigmoid(N) as an alternative that works as well. `gate` picks:

    "centred"  E - mean(E) and N - mean(N), the means over each (example, head)'s valid (t, s) pairs (which
               axes the paper averages over is not stated in what could be checked; a mean over the valid
               pairs keeps padding out of it);
    "doubled"  tanh(E) * 2 sigmoid(N), uncentred;
    "plain"    tanh(E) * sigmoid(N), exactly the headline formula.

alpha and beta are hand-set in the paper; both default here to 1 / sqrt(H), the Transformer's scaling.

Memory: N written naively is a [B, T, S, N, H] difference. `coda_weights` computes it one chunk of
`key_chunk_size` keys at a time under `jax.lax.map`, each chunk rematerialised in the backward pass
(`jax.checkpoint`), so the largest live array is [B, T, C, N, H] for a chunk of C keys.

Masked (query, key) pairs get M = 0 exactly, so a query with no valid key outputs zeros, with zero
gradients; keys and values at positions no valid pair uses are zeroed first, so NaN stored there reaches
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core.masks import check_lengths
from attention_jax.layers.multihead import dense_projection

__all__ = ["CODA_GATES", "CoDAAttention", "coda_attention", "coda_weights"]

CODA_GATES = ("centred", "doubled", "plain")

_F32 = jnp.float32


def _pairwise_l1(query: jax.Array, key: jax.Array, chunk: int) -> jax.Array:
    """sum_h |q_tnh - k_snh| -> [B, N, T, S] float32, one chunk of keys at a time."""
    batch, num_keys, heads, dim = key.shape
    num_queries = query.shape[1]
    if num_keys == 0 or num_queries == 0:
        return jnp.zeros((batch, heads, num_queries, num_keys), _F32)
    chunk = min(chunk, num_keys)
    pieces = -(-num_keys // chunk)
    padded = jnp.pad(key, ((0, 0), (0, pieces * chunk - num_keys), (0, 0), (0, 0)))
    blocks = jnp.moveaxis(padded.reshape(batch, pieces, chunk, heads, dim), 1, 0)  # [P, B, C, N, H]

    @jax.checkpoint
    def one(block):
        return jnp.sum(jnp.abs(query[:, :, None] - block[:, None]), axis=-1)  # [B, T, C, N]

    dist = jax.lax.map(one, blocks)  # [P, B, T, C, N]
    dist = jnp.moveaxis(dist, 0, 2).reshape(batch, num_queries, pieces * chunk, heads)[:, :, :num_keys]
    return jnp.transpose(dist, (0, 3, 1, 2))  # [B, N, T, S]


def _centre(x: jax.Array, valid: jax.Array) -> jax.Array:
    """x minus its mean over each [T, S] slice's valid pairs (0 where there are none)."""
    count = jnp.sum(valid, axis=(-2, -1), keepdims=True)
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=(-2, -1), keepdims=True) / jnp.maximum(count, 1)
    return x - mean


def _check_qk(name_q: str, query: Any, name_k: str, key: Any) -> None:
    _checks.rank(name_q, query, 4)
    _checks.rank(name_k, key, 4)
    _checks.floating(name_q, query)
    _checks.floating(name_k, key)
    q, k = jnp.shape(query), jnp.shape(key)
    if q[0] != k[0] or q[2:] != k[2:]:
        raise ValueError(f"{name_q} [B, T, N, H] and {name_k} [B, S, N, H] must agree on B, N and H, got "
                         f"{name_q}.shape={q} {name_k}.shape={k}")


def _check_mask(mask: Any, batch: int, heads: int, num_queries: int, num_keys: int) -> jax.Array:
    """None or [B|1, N|1, T, S] bool -> bool [B|1, N|1, T, S] (all True for None)."""
    if mask is None:
        return jnp.ones((1, 1, num_queries, num_keys), bool)
    _checks.boolean("mask", mask)
    got = tuple(jnp.shape(mask))
    if len(got) != 4 or got[0] not in (1, batch) or got[1] not in (1, heads) or got[2:] != (num_queries, num_keys):
        raise ValueError(f"mask must be [B or 1, N or 1, T, S] with B={batch} N={heads} T={num_queries} "
                         f"S={num_keys}, got mask.shape={got}")
    return jnp.asarray(mask)


def coda_weights(
    query: jax.Array,
    key: jax.Array,
    mask: jax.Array | None = None,
    *,
    dissimilarity_query: jax.Array | None = None,
    dissimilarity_key: jax.Array | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    gate: str = "centred",
    key_chunk_size: int = 128,
) -> jax.Array:
    """The quasi-attention matrix M = tanh(E) * sigmoid(N) of Tay et al. 2019 (arXiv:1910.01086, §2).

    Args:
      query: [B, T, N, H] floating, F_E(a_t) per head.
      key: [B, S, N, H] floating, F_E(b_s) per head.
      mask: None or [B or 1, N or 1, T, S] bool, True = the pair is valid.
      dissimilarity_query: None (use `query`) or [B, T, N, H'] floating, F_N(a_t).
      dissimilarity_key: None (use `key`) or [B, S, N, H'] floating, F_N(b_s); given with dissimilarity_query.
      alpha: the scale of E; None means 1 / sqrt(H).
      beta: the scale of N; None means 1 / sqrt(H') (H' = H when the dissimilarity inputs are None).
      gate: "centred", "doubled" or "plain" (see the module docstring).
      key_chunk_size: keys per chunk of the L1 distance, >= 1.

    Returns:
      [B, N, T, S] float32 in (-1, 1) ((-1, 1) x (0, 2) for "doubled"), exactly 0 at masked pairs.

    Raises:
      ValueError: for shapes that do not fit (named in the message), an unknown gate, key_chunk_size < 1,
        non-positive alpha or beta, or only one of the two dissimilarity inputs.
      TypeError: for non-floating inputs or a non-boolean mask.
    """
    _check_qk("query", query, "key", key)
    if (dissimilarity_query is None) != (dissimilarity_key is None):
        raise ValueError("pass both dissimilarity_query and dissimilarity_key, or neither")
    n_query = query if dissimilarity_query is None else dissimilarity_query
    n_key = key if dissimilarity_key is None else dissimilarity_key
    _check_qk("dissimilarity_query", n_query, "dissimilarity_key", n_key)
    batch, num_queries, heads, dim = jnp.shape(query)
    num_keys = jnp.shape(key)[1]
    if jnp.shape(n_query)[:3] != (batch, num_queries, heads) or jnp.shape(n_key)[:3] != (batch, num_keys, heads):
        raise ValueError(f"the dissimilarity inputs must be [B, T, N, H'] and [B, S, N, H'] for query.shape="
                         f"{jnp.shape(query)} key.shape={jnp.shape(key)}, got {jnp.shape(n_query)} and "
                         f"{jnp.shape(n_key)}")
    _checks.choice("gate", gate, CODA_GATES)
    chunk = _checks.int_at_least("key_chunk_size", key_chunk_size, 1)
    alpha = (1.0 / max(dim, 1) ** 0.5) if alpha is None else _checks.positive_real("alpha", alpha)
    beta = (1.0 / max(jnp.shape(n_query)[-1], 1) ** 0.5) if beta is None else _checks.positive_real("beta", beta)
    mask = _check_mask(mask, batch, heads, num_queries, num_keys)

    # Keys (and queries) that no valid pair uses are zeroed, so that NaN stored there meets no arithmetic.
    key_live = jnp.transpose(jnp.any(mask, axis=2), (0, 2, 1))[..., None]  # [B|1, S, N|1, 1]
    query_live = jnp.transpose(jnp.any(mask, axis=3), (0, 2, 1))[..., None]  # [B|1, T, N|1, 1]
    clean = lambda x, live: jnp.where(live, x.astype(_F32), 0.0)
    similarity = alpha * jnp.einsum("BTNH,BSNH->BNTS", clean(query, query_live), clean(key, key_live))
    distance = _pairwise_l1(clean(n_query, query_live), clean(n_key, key_live), chunk)
    dissimilarity = -beta * distance  # [B, N, T, S]
    valid = jnp.broadcast_to(mask, similarity.shape)
    if gate == "centred":
        similarity, dissimilarity = _centre(similarity, valid), _centre(dissimilarity, valid)
    weights = jnp.tanh(similarity) * jax.nn.sigmoid(dissimilarity)
    if gate == "doubled":
        weights = 2.0 * weights
    return jnp.where(valid, weights, 0.0)


def coda_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    **kwargs: Any,
) -> tuple[jax.Array, jax.Array]:
    """A' = M B: values pooled by the quasi-attention weights, per head (Tay et al. 2019, §2).

    Args:
      query: [B, T, N, H] floating.
      key: [B, S, N, H] floating.
      value: [B, S, N, Hv] floating.
      mask: None or [B or 1, N or 1, T, S] bool, True = the pair is valid.
      **kwargs: the keyword arguments of `coda_weights` (dissimilarity inputs, alpha, beta, gate,
        key_chunk_size).

    Returns:
      context: [B, T, N, Hv] in the value's dtype; zeros for a query with no valid key.
      weights: [B, N, T, S] float32, M.

    Raises:
      ValueError: for shapes that do not fit (named in the message) or bad keyword arguments.
      TypeError: for non-floating inputs or a non-boolean mask.
    """
    _checks.rank("value", value, 4)
    _checks.floating("value", value)
    if jnp.shape(value)[:3] != jnp.shape(key)[:3]:
        raise ValueError(f"value must be [B, S, N, Hv] like key [B, S, N, H], got value.shape={jnp.shape(value)} "
                         f"key.shape={jnp.shape(key)}")
    weights = coda_weights(query, key, mask, **kwargs)
    batch, num_keys, heads = jnp.shape(key)[:3]
    pairs = _check_mask(mask, batch, heads, jnp.shape(query)[1], num_keys)
    used = jnp.transpose(jnp.any(pairs, axis=2), (0, 2, 1))[..., None]  # [B|1, S, N|1, 1]
    value_clean = jnp.where(used, value.astype(_F32), 0.0)
    context = jnp.einsum("BNTS,BSNH->BTNH", weights, value_clean)
    return context.astype(value.dtype), weights


class CoDAAttention(nn.Module):
    """Multi-head compositional de-attention with separate projections F_E and F_N (arXiv:1910.01086, §2).

    Parameters: "query", "key" [D, N, H] (F_E), "dissimilarity_query", "dissimilarity_key" [D, N, H] (F_N),
    "value" [D, N, H] and "out" [N, H, D_out], each with a bias when use_bias.

    Attributes:
      num_heads: N >= 1.
      head_dim: H; None means D / N (D must divide).
      out_features: D_out; None means the query input's D.
      gate: "centred", "doubled" or "plain".
      alpha, beta: the scales of E and N; None means 1 / sqrt(H).
      key_chunk_size: keys per chunk of the L1 distance.
      use_bias, dtype, param_dtype, kernel_init, bias_init: as in `MultiHeadAttention`.
    """

    num_heads: int
    head_dim: int | None = None
    out_features: int | None = None
    gate: str = "centred"
    alpha: float | None = None
    beta: float | None = None
    key_chunk_size: int = 128
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()

    def __post_init__(self):
        _checks.int_at_least("num_heads", self.num_heads, 1)
        for name in ("head_dim", "out_features"):
            if getattr(self, name) is not None:
                _checks.int_at_least(name, getattr(self, name), 1)
        _checks.choice("gate", self.gate, CODA_GATES)
        _checks.int_at_least("key_chunk_size", self.key_chunk_size, 1)
        super().__post_init__()

    def _dense(self, features, axis, name, kernel_axes):
        return dense_projection(self, features, axis, name, kernel_axes)

    @nn.compact
    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *,
                 key_lengths: jax.Array | None = None, query_lengths: jax.Array | None = None,
                 mask: jax.Array | None = None,
                 ) -> tuple[jax.Array, jax.Array]:
        """Attends from inputs_q to inputs_kv (self-attention when None).

        Args:
          inputs_q: [B, T, D] floating.
          inputs_kv: None or [B, S, Dkv] floating.
          key_lengths: None or [B] integer: keys s >= key_lengths[b] are padding.
          query_lengths: None or [B] integer: queries t >= query_lengths[b] are padding, see no key and output
            the out-projection's bias. With the centred gate this also keeps them out of the means, so padding
            changes nothing for the real queries (pass both lengths for padded self-attention).
          mask: None or [B or 1, N or 1, T, S] bool, True = attend (combined with key_lengths).

        Returns:
          output: [B, T, D_out] in the compute dtype.
          weights: [B, N, T, S] float32, M.

        Raises:
          ValueError: for inputs of the wrong rank or batch, a head size that does not divide D, or a mask or
            key_lengths that does not fit (named in the message).
          TypeError: for non-floating inputs, a non-boolean mask or non-integer key_lengths.
        """
        _checks.rank("inputs_q", inputs_q, 3)
        _checks.floating("inputs_q", inputs_q)
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        _checks.rank("inputs_kv", inputs_kv, 3)
        _checks.floating("inputs_kv", inputs_kv)
        batch, num_queries, features = inputs_q.shape
        if inputs_kv.shape[0] != batch:
            raise ValueError(f"inputs_q and inputs_kv need the same batch, got {inputs_q.shape=} {inputs_kv.shape=}")
        num_keys = inputs_kv.shape[1]
        heads = self.num_heads
        if self.head_dim is None and features % heads:
            raise ValueError(f"head_dim=None needs num_heads={heads} to divide D={features}; set head_dim")
        head_dim = self.head_dim or features // heads
        pair_mask = _check_mask(mask, batch, heads, num_queries, num_keys)
        if key_lengths is not None:
            check_lengths("key_lengths", key_lengths, batch)
            live = jnp.arange(num_keys)[None, :] < jnp.asarray(key_lengths)[:, None]  # [B, S]
            pair_mask = jnp.logical_and(pair_mask, live[:, None, None, :])
        if query_lengths is not None:
            check_lengths("query_lengths", query_lengths, batch)
            live = jnp.arange(num_queries)[None, :] < jnp.asarray(query_lengths)[:, None]  # [B, T]
            pair_mask = jnp.logical_and(pair_mask, live[:, None, :, None])
        # Input rows that no valid pair uses are zeroed before the projections, so that NaN stored there cannot
        # reach the kernels' gradients (dW = x^T dy is NaN wherever x is, even where dy is 0).
        key_used = jnp.any(pair_mask, axis=(1, 2))  # [B|1, S]
        query_used = jnp.any(pair_mask, axis=(1, 3))  # [B|1, T]
        inputs_kv = jnp.where(key_used[..., None], inputs_kv, jnp.zeros((), inputs_kv.dtype))
        inputs_q = jnp.where(query_used[..., None], inputs_q, jnp.zeros((), inputs_q.dtype))
        kernel_axes = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        project = lambda name, x: self._dense((heads, head_dim), -1, name, kernel_axes)(x)
        query, key = project("query", inputs_q), project("key", inputs_kv)
        n_query, n_key = project("dissimilarity_query", inputs_q), project("dissimilarity_key", inputs_kv)
        value = project("value", inputs_kv)
        names = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM)
        query, key, value = (axes.constrain(x, names) for x in (query, key, value))
        context, weights = coda_attention(query, key, value, pair_mask, dissimilarity_query=n_query,
                                          dissimilarity_key=n_key, alpha=self.alpha, beta=self.beta,
                                          gate=self.gate, key_chunk_size=self.key_chunk_size)
        out = self._dense(self.out_features or features, (-2, -1), "out", (axes.HEADS, axes.HEAD_DIM, axes.EMBED))
        output = axes.constrain(out(context), (axes.BATCH, axes.LENGTH, axes.EMBED))
        return output, weights
