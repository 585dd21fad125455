"""Multi-head attention as a Flax Linen module, with grouped-query heads and a key/value cache.

MultiHead(Q, K, V) = Concat(head_1, ..., head_N) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762, §3.2.2. With K < N key/value heads each
key/value head serves G = N // K query heads: grouped-query attention, Ainslie et al. 2023, arXiv:2305.13245
(K = 1 is multi-query attention, Shazeer 2019, arXiv:1911.02150).

The module only owns the four projections (and the cache); the attention itself is `attention_fn`, by
default `attention_jax.dot_product_attention`, so any backend it dispatches to (or any function with its
signature) runs under the same parameters.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from attention_jax import _checks
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.api import _check_lengths, dot_product_attention, supports
from attention_jax.dot_product.base import check_bias
from attention_jax.core.positional import alibi_slopes, apply_rope, shaw_logits, shaw_values

__all__ = ["MultiHeadAttention", "RELATIVE_POSITIONS"]

# Position schemes MultiHeadAttention applies inside self-attention (absolute ones are added to the inputs).
RELATIVE_POSITIONS = ("rope", "alibi", "shaw")


def _check_heads(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def dense_projection(module: nn.Module, features: Any, axis: Any, name: str) -> nn.DenseGeneral:
    """A DenseGeneral configured from `module`'s use_bias, dtype, param_dtype, kernel_init and bias_init.

    Shared as the `_dense` method of the attention modules that project into and out of heads.
    """
    return nn.DenseGeneral(
        features=features, axis=axis, use_bias=module.use_bias, dtype=module.dtype, param_dtype=module.param_dtype,
        kernel_init=module.kernel_init, bias_init=module.bias_init, name=name,
    )


class MultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention, Concat(head_1..head_N) W^O (arXiv:1706.03762 §3.2.2).

    Projections: query [B, T, Dq] -> [B, T, N, H] ("query"), key and value [B, S, Dkv] -> [B, S, K, H]
    ("key", "value"), output [B, T, N, H] -> [B, T, D_out] ("out"); each is an `nn.DenseGeneral`.

    Key/value cache (`decode=True`, self-attention only). Initialise the module with a dummy input
    [B, S_max, D]: S_max, the cache length, is that call's T. `init` creates, in the "cache" collection,
    `cached_key` and `cached_value` [B, S_max, K, H] (zeros, in the key dtype) and `cache_index` [] int32 (0);
    the init call itself leaves them empty. Each later `apply(..., mutable=["cache"])` writes its T new
    key/value rows at `cache_index` (T > 1 is a prefill, then T = 1 steps), advances `cache_index` by T and
    attends causally in absolute positions: query t (position cache_index + t) sees cached keys
    s <= cache_index + t, never an unwritten slot. For a prefill (T > 1) that rule is an explicit bool mask
    [1, 1, T, S_max], since `dot_product_attention`'s `is_causal` is top-left aligned, which is wrong against a
    cache; a one-token step passes it as key lengths cache_index + 1 instead, so steps also run on the
    "flash" and "cudnn" backends, which take no dense mask (a prefill, and the init call, run on
    implementation=None when the named backend cannot take the mask; this is logged once). In decode mode attention is always causal and
    `is_causal` adds nothing. Overflow: T > S_max raises ValueError; a traced
    `cache_index + T > S_max` cannot be detected, and then `lax.dynamic_update_slice` clamps the write to the
    last T slots, silently overwriting them. Keep the total number of tokens <= S_max.

    Attributes:
      num_heads: N, the query heads.
      num_kv_heads: K, the key/value heads; None means N. N % K must be 0.
      head_dim: H; None means Dq // N (Dq must then be a multiple of N).
      out_features: D_out; None means Dq.
      dropout_rate: dropout on the attention weights, used when `deterministic=False` (rng "dropout").
      use_bias: whether the four projections have biases.
      dtype: the compute dtype of the projections; None infers it from inputs and params.
      param_dtype: the parameter dtype, float32 by default.
      kernel_init: initialiser of the projection kernels.
      bias_init: initialiser of the projection biases.
      attention_fn: (query [B,T,N,H], key [B,S,K,H], value [B,S,K,H], bias, mask, *, dropout_rate,
        dropout_rng, return_weights, implementation) -> output [B,T,N,H], or (output, weights [B,N,T,S]) when
        return_weights; `dot_product_attention` by default. `mask` is an `AttentionMask` (causality, lengths,
        segment ids and the dense mask together) already bound to (query, key, value), so
        `dot_product_attention` and its backend check nothing again.
      implementation: forwarded to `attention_fn` (a `dot_product_attention` backend name, or None).
      decode: key/value cache mode (see above).
      positions: None, or a relative position scheme applied inside self-attention, with query t at absolute
        position t (cache_index + t when decoding) and key s at s:
        "rope": queries and keys rotated by `apply_rope` before the logits (and before caching), Su et al.
          2021, arXiv:2104.09864, eq. 34;
        "alibi": the bias -m_h |t - s| added to the logits, Press et al. 2021, arXiv:2108.12409, §3 (the
          paper's causal form on the visible keys; symmetric in |t - s| for bidirectional attention);
        "shaw": learned tables "shaw_key" and "shaw_value" [2k + 1, H] (k = shaw_max_distance, shared by the
          heads) for the clipped distance clip(s - t, -k, k): e_ts = q_t (k_s + a^K_ts)^T / sqrt(H) and
          z_t = sum_s w_ts (v_s + a^V_ts), Shaw et al. 2018, arXiv:1803.02155, eqs. 3-6. Needs an
          `attention_fn` that returns weights.
      rope_base: the 10000 of RoPE.
      shaw_max_distance: k, the clipping distance of the Shaw tables.

    Raises:
      ValueError: at construction, if N or K is not a positive int, N % K != 0, the dropout rate is not in
        [0, 1), positions is not None or one of `RELATIVE_POSITIONS`, or shaw_max_distance < 0.
    """

    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    attention_fn: Callable[..., Any] = dot_product_attention
    implementation: str | None = None
    decode: bool = False
    positions: str | None = None
    rope_base: float = 10000.0
    shaw_max_distance: int = 16

    def __post_init__(self):
        _check_heads("num_heads", self.num_heads)
        if self.num_kv_heads is not None:
            _check_heads("num_kv_heads", self.num_kv_heads)
            if self.num_heads % self.num_kv_heads != 0:
                raise ValueError(
                    f"num_heads N={self.num_heads} must be a multiple of num_kv_heads K={self.num_kv_heads}"
                )
        if self.head_dim is not None:
            _check_heads("head_dim", self.head_dim)
        if not isinstance(self.dropout_rate, numbers.Real) or not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be a float in [0, 1), got {self.dropout_rate!r}")
        if self.positions is not None and self.positions not in RELATIVE_POSITIONS:
            raise ValueError(f"positions must be None or one of {RELATIVE_POSITIONS}, got {self.positions!r}")
        if isinstance(self.shaw_max_distance, bool) or not isinstance(self.shaw_max_distance, numbers.Integral) \
                or self.shaw_max_distance < 0:
            raise ValueError(f"shaw_max_distance must be an int >= 0, got {self.shaw_max_distance!r}")
        super().__post_init__()

    _dense = dense_projection

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        is_causal: bool = False,
        key_lengths: jax.Array | None = None,
        segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
        deterministic: bool = True,
        return_weights: bool = False,
        head_gates: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Attends from `inputs_q` to `inputs_kv` (or to itself), MultiHead(Q, K, V) of arXiv:1706.03762 §3.2.2.

        Args:
          inputs_q: [B, T, Dq] floating.
          inputs_kv: [B, S, Dkv] floating, or None for self-attention (S = T). Must be None when decoding.
          mask: None or [B or 1, N or 1, T, S] bool, True = attend. When decoding, S = S_max (cache slots).
          bias: None or [B or 1, N or 1, T, S] floating, added to the scaled logits (S = S_max when decoding).
          is_causal: key s is masked for query t when s > t (top-left, as in `dot_product_attention`).
            Ignored when decoding, which is always causal in absolute positions.
          key_lengths: None or [B] integer; keys s >= key_lengths[b] are masked (cache slots when decoding).
          segment_ids: None, a pair (q_segment_ids [B, T], kv_segment_ids [B, S]) integer, or one [B, T] integer
            array for self-attention: query t sees key s only within the same segment (packed sequences;
            forwarded to `attention_fn`). Not available when decoding.
          deterministic: if False and dropout_rate > 0, drop attention weights with the "dropout" rng.
          return_weights: also return the attention weights.
          head_gates: None or [N] floating; head i's context is multiplied by head_gates[i] before the output
            projection, Concat(g_1 head_1, ..., g_N head_N) W^O (Voita et al. 2019, arXiv:1905.09418, §4).
            A zero gate removes the head (see `attention_jax.layers.head_gates`).

        Returns:
          output: [B, T, D_out], in the compute dtype; with `return_weights`, (output, weights [B, N, T, S]
          float32 after dropout; rows with no valid key are 0).

        Raises:
          ValueError: for inputs that are not rank 3, batch sizes that differ, Dq not a multiple of N without
            head_dim, inputs_kv while decoding, T > S_max or a batch that differs from the cache's, mask,
            bias or key_lengths shapes that do not fit, `positions` with cross-attention (inputs_kv given),
            "rope" with an odd head dim, segment_ids while decoding, and segment id shapes that do not fit
            (raised by `dot_product_attention`).
          TypeError: for non-floating inputs or bias, a non-boolean mask or non-integer key_lengths.
        """
        if self.positions is not None and inputs_kv is not None:
            raise ValueError(
                f"positions={self.positions!r} is for self-attention; got inputs_kv.shape={jnp.shape(inputs_kv)} "
                f"with inputs_q.shape={jnp.shape(inputs_q)}"
            )
        if self.decode and segment_ids is not None:
            raise ValueError("segment_ids are not supported with decode=True (the cache holds one sequence per row)")
        if self.decode and inputs_kv is not None:
            raise ValueError(
                f"decode=True is self-attention only; got inputs_kv.shape={jnp.shape(inputs_kv)} "
                f"with inputs_q.shape={jnp.shape(inputs_q)}"
            )
        inputs_kv = _checks.attention_inputs(inputs_q, inputs_kv)
        batch, num_queries, features = jnp.shape(inputs_q)
        num_keys = jnp.shape(inputs_kv)[1]
        heads = self.num_heads
        kv_heads = heads if self.num_kv_heads is None else self.num_kv_heads
        if self.head_dim is None and features % heads != 0:
            raise ValueError(
                f"without head_dim, the query features Dq={features} must be a multiple of num_heads N={heads}: "
                f"{jnp.shape(inputs_q)=}"
            )
        head_dim = features // heads if self.head_dim is None else self.head_dim
        out_features = features if self.out_features is None else self.out_features
        if head_gates is not None:
            _checks.floating("head_gates", head_gates)
            _checks.shape("head_gates", head_gates, (heads,))
        if self.positions == "rope" and head_dim % 2:
            raise ValueError(f"positions='rope' needs an even head dim, got H={head_dim}")

        cache_ready = self.decode and self.has_variable("cache", "cached_key")
        if cache_ready:
            cache_shape = self.get_variable("cache", "cached_key").shape  # [B, S_max, K, H]
            num_keys = cache_shape[1]
            if num_queries > num_keys or batch != cache_shape[0]:
                raise ValueError(
                    f"decode input [B, T, D]={jnp.shape(inputs_q)} does not fit the cache [B, S_max, K, H]="
                    f"{cache_shape}: need the same B and T <= S_max"
                )
        check_bias(bias, batch, heads, num_queries, num_keys)
        if key_lengths is not None:
            _check_lengths("key_lengths", key_lengths, batch)
        # Every mask source checked once, before any projection; the spec goes to attention_fn bound.
        spec = AttentionMask(mask, is_causal=is_causal, key_value_seq_lengths=key_lengths,
                             segment_ids=segment_ids).fit(batch, heads, num_queries, num_keys)

        query = self._dense((heads, head_dim), -1, "query")(inputs_q)  # [B, T, N, H]
        key = self._dense((kv_heads, head_dim), -1, "key")(inputs_kv)  # [B, S, K, H]
        value = self._dense((kv_heads, head_dim), -1, "value")(inputs_kv)  # [B, S, K, H]

        start = self._cache_start() if cache_ready else jnp.zeros((), jnp.int32)
        query_pos = start + jnp.arange(num_queries)  # [T] absolute positions of the queries (and new keys)
        if self.positions == "rope":
            rope = lambda x, pos: apply_rope(x, jnp.broadcast_to(pos, x.shape[:2]), base=self.rope_base)
            query = rope(query, query_pos)
            key = rope(key, query_pos if self.decode else jnp.arange(num_keys))  # rotated before caching

        if self.decode:
            key, value, mask, cache_lengths = self._use_cache(key, value, mask, cache_ready)
            if cache_lengths is not None:
                key_lengths = cache_lengths if key_lengths is None else jnp.minimum(key_lengths, cache_lengths)
            # No is_causal: the cache mask already is causal, in absolute positions.
            spec = AttentionMask(mask, key_value_seq_lengths=key_lengths)

        key_pos = jnp.arange(num_keys)  # [S] absolute positions of the keys (cache slots when decoding)
        distance = key_pos[None, :] - query_pos[:, None]  # [T, S], s - t
        shaw_ids = None
        if self.positions == "alibi":
            slopes = alibi_slopes(heads)  # [N]
            alibi = (-slopes[:, None, None] * jnp.abs(distance).astype(jnp.float32))[None]  # [1, N, T, S]
            bias = alibi if bias is None else bias.astype(jnp.float32) + alibi
        elif self.positions == "shaw":
            k = int(self.shaw_max_distance)
            table_k = self.param("shaw_key", self.kernel_init, (2 * k + 1, head_dim), self.param_dtype)
            table_v = self.param("shaw_value", self.kernel_init, (2 * k + 1, head_dim), self.param_dtype)
            shaw_ids = (jnp.clip(distance, -k, k) + k).astype(jnp.int32)  # [T, S]
            shaw = shaw_logits(query, table_k, shaw_ids, scale=1.0 / float(head_dim) ** 0.5)  # [B, N, T, S]
            bias = shaw if bias is None else bias.astype(jnp.float32) + shaw

        need_weights = return_weights or shaw_ids is not None
        rate = 0.0 if deterministic else float(self.dropout_rate)
        dropout_rng = self.make_rng("dropout") if rate > 0.0 else None
        spec = spec.bind(query, key, value)
        implementation = self.implementation
        if self.decode and mask is not None and implementation is not None and self.attention_fn is dot_product_attention:
            # A prefill (or the init call) needs the dense cache mask; a backend that takes none (flash, cudnn)
            # hands that call to implementation=None instead of failing. One-token steps keep the backend.
            ok, reason = supports(implementation, query, key, value, mask=spec)
            if not ok:
                logging.log_first_n(logging.INFO, "MultiHeadAttention: the cache prefill runs on "
                                    "implementation=None: %s", 1, reason)
                implementation = None
        result = self.attention_fn(
            query, key, value, bias, spec, dropout_rate=rate, dropout_rng=dropout_rng,
            return_weights=need_weights, implementation=implementation,
        )
        context, weights = (result[0], result[1]) if need_weights else (result, None)  # [B, T, N, H]
        if shaw_ids is not None:
            context = context + shaw_values(weights, table_v, shaw_ids).astype(context.dtype)  # eq. 3
        if head_gates is not None:
            context = context * head_gates[:, None].astype(context.dtype)  # [B, T, N, H]
        output = self._dense(out_features, (-2, -1), "out")(context)  # [B, T, D_out]
        return (output, weights) if return_weights else output

    def _cache_start(self) -> jax.Array:
        """The cache index before this call: the absolute position of its first query."""
        return self.get_variable("cache", "cache_index")

    def _use_cache(self, key, value, mask, cache_ready):
        """Writes key/value [B, T, K, H] at cache_index; returns the cache [B, S_max, K, H], its mask and lengths.

        A one-token step (T = 1) with no user mask sees exactly the cache slots s <= cache_index, which is the
        key length cache_index + 1: it returns (key, value, None, lengths [B]), so the step needs no dense mask
        and runs on every backend (flash and cudnn take lengths, not masks). Otherwise (prefill, or a user
        mask) it returns (key, value, bool mask [B|1, 1, T, S_max], None).
        """
        num_queries = key.shape[1]
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        start = cache_index.value if cache_ready else jnp.zeros((), jnp.int32)
        zero = jnp.zeros((), jnp.int32)
        full_key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                                (zero, start, zero, zero))  # [B, S_max, K, H]
        full_value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                                  (zero, start, zero, zero))  # [B, S_max, K, H]
        if cache_ready:  # the init call only shapes the cache; it stays empty with index 0
            cached_key.value = full_key
            cached_value.value = full_value
            cache_index.value = start + num_queries
        if num_queries == 1 and mask is None:
            return full_key, full_value, None, jnp.broadcast_to(start + 1, (key.shape[0],)).astype(jnp.int32)
        query_pos = start + jnp.arange(num_queries)[:, None]  # [T, 1] absolute positions
        key_pos = jnp.arange(full_key.shape[1])[None, :]  # [1, S_max]
        causal = (key_pos <= query_pos)[None, None]  # [1, 1, T, S_max]; also hides unwritten slots
        mask = causal if mask is None else jnp.logical_and(mask, causal)
        return full_key, full_value, mask, None
