"""Multi-head attention as a Flax Linen module, with grouped-query heads and a key/value cache.

MultiHead(Q, K, V) = Concat(head_1, ..., head_N) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762, §3.2.2. With K < N key/value heads each
key/value head serves G = N // K query heads: grouped-query attention, Ainslie et al. 2023, arXiv:2305.13245
(K = 1 is multi-query attention, Shazeer 2019, arXiv:1911.02150).

Queries and keys may have their own head size d_k (`qk_head_dim`) beside the values' d_v (`head_dim`), as in
Vaswani et al.'s Table 3 row (B), which varies d_k with d_v fixed: the logits are q . k / sqrt(d_k). The
`dot_product_attention` backends take one H for query, key and value, so the smaller side is zero-padded to
max(d_k, d_v) features (zero features add nothing to q . k or to the output) and the scale 1 / sqrt(d_k) is
passed explicitly; the output is sliced back to d_v. Parameters and caches keep their true sizes.

The module only owns the four projections (and the cache); the attention itself is `attention_fn`, by
default `attention_jax.dot_product_attention`, so any backend it dispatches to (or any function with its
signature) runs under the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from attention_jax import _checks
from attention_jax.core import alignment, axes
from attention_jax.core.masks import AttentionMask, check_lengths
from attention_jax.dot_product.api import dot_product_attention, supports
from attention_jax.dot_product.base import Backend, check_bias
from attention_jax.core.positional import alibi_slopes, apply_rope, shaw_logits, shaw_values
from attention_jax.layers._common import live_rows, zero_dead

__all__ = ["MultiHeadAttention", "RELATIVE_POSITIONS"]

# Position schemes MultiHeadAttention applies inside self-attention (absolute ones are added to the inputs).
RELATIVE_POSITIONS = ("rope", "alibi", "shaw")


def dense_projection(module: nn.Module, features: Any, axis: Any, name: str,
                     kernel_axes: Sequence[str | None]) -> nn.DenseGeneral:
    """A DenseGeneral configured from `module`'s use_bias, dtype, param_dtype, kernel_init and bias_init.

    Shared as the `_dense` method of the attention modules that project into and out of heads. The "out"
    projection takes `module.out_kernel_init` / `out_bias_init` when the module has them and they are set, and
    every projection takes `module.precision` when the module has it (flax's MultiHeadDotProductAttention).
    The kernel is boxed with the logical names `kernel_axes` (one per axis of the full kernel, e.g. ("embed",
    "heads", "head_dim")) and the bias with the names of its output axes (the last len(features) of them).
    """
    kernel_init, bias_init = module.kernel_init, module.bias_init
    if name == "out":
        kernel_init = getattr(module, "out_kernel_init", None) or kernel_init
        bias_init = getattr(module, "out_bias_init", None) or bias_init
    kernel_axes = tuple(kernel_axes)
    num_features = len(features) if isinstance(features, Sequence) else 1
    return nn.DenseGeneral(
        features=features, axis=axis, use_bias=module.use_bias, dtype=module.dtype, param_dtype=module.param_dtype,
        kernel_init=axes.partitioned(kernel_init, kernel_axes),
        bias_init=axes.partitioned(bias_init, kernel_axes[-num_features:]),
        precision=getattr(module, "precision", None), name=name,
    )


class MultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention, Concat(head_1..head_N) W^O (arXiv:1706.03762 §3.2.2).

    Projections: query [B, T, Dq] -> [B, T, N, H_qk] ("query"), key [B, S, Dkv] -> [B, S, K, H_qk] ("key"),
    value [B, S, Dkv] -> [B, S, K, H] ("value"), output [B, T, N, H] -> [B, T, D_out] ("out"); each is an
    `nn.DenseGeneral`. H_qk = d_k is `qk_head_dim` (H when None) and H = d_v is the head dim; the logits are
    scaled by 1 / sqrt(H_qk).

    Key/value cache (`decode=True`, self-attention only). Initialise the module with a dummy input
    [B, S_max, D]: S_max, the cache length, is that call's T. `init` creates, in the "cache" collection,
    `cached_key` [B, S_max, K, H_qk] and `cached_value` [B, S_max, K, H] (zeros, in the key dtype) and
    `cache_index` [] int32 (0); the init call itself leaves them empty. Each later
    `apply(..., mutable=["cache"])` writes its T new key/value rows at `cache_index` (T > 1 is a prefill, then
    T = 1 steps), advances `cache_index` by T and
    attends causally in absolute positions: query t (position cache_index + t) sees cached keys
    s <= cache_index + t, never an unwritten slot. For a prefill (T > 1) that rule is an explicit bool mask
    [1, 1, T, S_max], since `dot_product_attention`'s `is_causal` is top-left aligned, which is wrong against a
    cache; a one-token step passes it as key lengths cache_index + 1 instead, so steps also run on the
    "flash" and "cudnn" backends, which take no dense mask (a prefill, and the init call, run on
    implementation=None when the named backend cannot take the mask; this is logged once). In decode mode attention is always causal and
    `is_causal` adds nothing. Overflow: T > S_max raises ValueError; a traced
    `cache_index + T > S_max` cannot be detected, and then `lax.dynamic_update_slice` clamps the write to the
    last T slots, silently overwriting them. Keep the total number of tokens <= S_max.

    Drop-in for `flax.linen.MultiHeadDotProductAttention`: the attributes and call arguments that have a flax
    counterpart carry its name and meaning (num_heads, qkv_features, out_features, dropout_rate,
    broadcast_dropout, deterministic, precision, kernel_init, out_kernel_init, bias_init, out_bias_init,
    use_bias, attention_fn, decode, normalize_qk, dtype, param_dtype; inputs_q, inputs_k, inputs_v, inputs_kv,
    mask, deterministic, dropout_rng, sow_weights). Differences: `attention_fn` has `dot_product_attention`'s
    signature (not flax's); logits and softmax always run in float32 (flax's force_fp32_for_softmax); a
    module built with neither `deterministic` nor a call argument is deterministic (flax raises when
    dropout_rate > 0); broadcast_dropout defaults to False (one dropout draw per batch row and head).

    Attributes:
      num_heads: N, the query heads.
      num_kv_heads: K, the key/value heads; None means N. N % K must be 0.
      head_dim: H = d_v, the value (and output) head size, also d_k when qk_head_dim is None; None means
        qkv_features // N, or Dq // N without qkv_features (which must then divide).
      qk_head_dim: H_qk = d_k, the query/key head size; None means H. With H_qk != H the "query" and "key"
        kernels are [Dq, N, H_qk] and [Dkv, K, H_qk], the logits are q . k / sqrt(H_qk), and `attention_fn`
        receives zero-padded query/key/value of max(H_qk, H) features and `scale=1 / sqrt(H_qk)` (so it must
        accept `dot_product_attention`'s `scale` keyword); Vaswani et al. 2017, arXiv:1706.03762, Table 3
        row (B) (d_k = 16 and 32 with d_v = 64).
      qkv_features: N * H, flax's name for the total query width; None means N * head_dim, or Dq. Must be a
        multiple of N, and equal N * head_dim when both are given.
      out_features: D_out; None means Dq.
      dropout_rate: dropout on the attention weights, used when not deterministic (rng "dropout", or the
        call's `dropout_rng`).
      broadcast_dropout: one dropout mask [T, S] shared by every batch row and head (flax's meaning); then the
        output is computed here from the weights `attention_fn` returns, so it costs a [B, N, T, S] array.
      deterministic: None, or the default of the call argument (setting both raises, as in flax).
      use_bias: whether the four projections have biases.
      dtype: the compute dtype of the projections; None infers it from inputs and params.
      param_dtype: the parameter dtype, float32 by default.
      precision: the `jax.lax.Precision` of the projections.
      kernel_init: initialiser of the projection kernels.
      out_kernel_init: initialiser of the "out" kernel; None means kernel_init.
      bias_init: initialiser of the projection biases.
      out_bias_init: initialiser of the "out" bias; None means bias_init.
      normalize_qk: apply a LayerNorm without bias to each head's queries and keys ("query_ln", "key_ln"),
        Dehghani et al. 2023, arXiv:2302.05442, §3.1.1.
      attention_fn: (query [B,T,N,H], key [B,S,K,H], value [B,S,K,H], bias, mask, *, dropout_rate,
        dropout_rng, return_weights, implementation[, scale]) -> output [B,T,N,H], or (output, weights
        [B,N,T,S]) when return_weights (H here is max(H_qk, H), and `scale` is passed only when qk_head_dim
        differs from H); `dot_product_attention` by default. `mask` is an `AttentionMask` (causality, lengths,
        segment ids and the dense mask together) already bound to (query, key, value), so
        `dot_product_attention` and its backend check nothing again.
      implementation: forwarded to `attention_fn`: None, a `dot_product_attention` backend name, or a `Backend`
        object (hashable), e.g. `RingBackend(mesh=mesh)` for sequence-parallel attention over a mesh axis.
      decode: key/value cache mode (see above).
      positions: None, or a relative position scheme applied inside self-attention, with query t at absolute
        position t (cache_index + t when decoding) and key s at s:
        "rope": queries and keys rotated by `apply_rope` before the logits (and before caching), Su et al.
          2021, arXiv:2104.09864, eq. 34;
        "alibi": the bias -m_h |t - s| added to the logits, Press et al. 2021, arXiv:2108.12409, §3 (the
          paper's causal form on the visible keys; symmetric in |t - s| for bidirectional attention);
        "shaw": learned tables "shaw_key" [2k + 1, H_qk] and "shaw_value" [2k + 1, H] (k = shaw_max_distance,
          shared by the heads) for the clipped distance clip(s - t, -k, k): e_ts = q_t (k_s + a^K_ts)^T /
          sqrt(H_qk) and
          z_t = sum_s w_ts (v_s + a^V_ts), Shaw et al. 2018, arXiv:1803.02155, eqs. 3-6. Needs an
          `attention_fn` that returns weights.
      rope_base: the 10000 of RoPE.
      shaw_max_distance: k, the clipping distance of the Shaw tables.
      normalizer: the attention weights' normaliser, "softmax" or a sparse one ("sparsemax", Martins &
        Astudillo 2016, arXiv:1602.02068; "entmax15", Peters et al. 2019, arXiv:1905.05702), forwarded to
        `attention_fn` as `normalizer=` when it is not the softmax (so a custom `attention_fn` only needs the
        keyword to use one). Only the "xla" backend computes sparse normalisers; implementation=None picks it.

    Raises:
      ValueError: at construction, if N, K, head_dim, qk_head_dim, qkv_features or out_features is not a
        positive int,
        N % K != 0, qkv_features is not N * head_dim, the dropout rate is not in [0, 1), positions is not None
        or one of `RELATIVE_POSITIONS`, or shaw_max_distance < 0.
      TypeError: at construction, if use_bias, decode, broadcast_dropout, normalize_qk or deterministic (when
        set) is not a bool.
    """

    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    qk_head_dim: int | None = None
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    broadcast_dropout: bool = False
    deterministic: bool | None = None
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    out_kernel_init: Callable[..., Any] | None = None
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    out_bias_init: Callable[..., Any] | None = None
    normalize_qk: bool = False
    attention_fn: Callable[..., Any] = dot_product_attention
    implementation: str | Backend | None = None
    decode: bool = False
    positions: str | None = None
    rope_base: float = 10000.0
    shaw_max_distance: int = 16
    normalizer: str = "softmax"

    def __post_init__(self):
        _checks.int_at_least("num_heads", self.num_heads, 1)
        if self.num_kv_heads is not None:
            _checks.int_at_least("num_kv_heads", self.num_kv_heads, 1)
            if self.num_heads % self.num_kv_heads != 0:
                raise ValueError(
                    f"num_heads N={self.num_heads} must be a multiple of num_kv_heads K={self.num_kv_heads}"
                )
        for name in ("head_dim", "qk_head_dim", "qkv_features", "out_features"):
            if getattr(self, name) is not None:
                _checks.int_at_least(name, getattr(self, name), 1)
        if self.qkv_features is not None:
            if self.qkv_features % self.num_heads != 0:
                raise ValueError(f"qkv_features={self.qkv_features} must be a multiple of num_heads N={self.num_heads}")
            if self.head_dim is not None and self.qkv_features != self.num_heads * self.head_dim:
                raise ValueError(f"qkv_features={self.qkv_features} must equal num_heads * head_dim = "
                                 f"{self.num_heads} * {self.head_dim} when both are given")
        _checks.rate("dropout_rate", self.dropout_rate)
        for name in ("use_bias", "decode", "broadcast_dropout", "normalize_qk"):
            _checks.flag(name, getattr(self, name))
        if self.deterministic is not None:
            _checks.flag("deterministic", self.deterministic)
        if self.positions is not None and self.positions not in RELATIVE_POSITIONS:
            raise ValueError(f"positions must be None or one of {RELATIVE_POSITIONS}, got {self.positions!r}")
        _checks.int_at_least("shaw_max_distance", self.shaw_max_distance, 0)
        _checks.choice("normalizer", self.normalizer, alignment.NORMALIZERS)
        super().__post_init__()

    def _head_dim(self, features: int) -> int:
        """H from head_dim, qkv_features or the query features Dq (checked at construction and here)."""
        if self.head_dim is not None:
            return self.head_dim
        width = features if self.qkv_features is None else self.qkv_features
        if width % self.num_heads != 0:
            raise ValueError(
                f"without head_dim, the query features Dq={features} (or qkv_features={self.qkv_features}) must be "
                f"a multiple of num_heads N={self.num_heads}"
            )
        return width // self.num_heads

    _dense = dense_projection

    def _deterministic(self, deterministic: bool | None) -> bool:
        """Merges the attribute and the call argument as flax does (both set raises); neither means True."""
        if self.deterministic is not None and deterministic is not None:
            raise ValueError(
                f"deterministic is set both as an attribute ({self.deterministic!r}) and in the call "
                f"({deterministic!r}); set one, as in flax.linen.MultiHeadDotProductAttention"
            )
        if deterministic is None:
            deterministic = True if self.deterministic is None else self.deterministic
        return _checks.flag("deterministic", deterministic)

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        inputs_kv: jax.Array | None = None,
        mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        is_causal: bool = False,
        key_lengths: jax.Array | None = None,
        segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
        deterministic: bool | None = None,
        dropout_rng: jax.Array | None = None,
        return_weights: bool = False,
        sow_weights: bool = False,
        head_gates: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Attends from `inputs_q` to `inputs_k`/`inputs_v` (or to itself), MultiHead(Q, K, V) of arXiv:1706.03762 §3.2.2.

        Empty sequences: T = 0 gives an empty output [B, 0, D_out]; S = 0 gives, on every backend, the output
        projection of zero heads (the "out" bias) and zero weights, as `dot_product_attention` does.

        Args:
          inputs_q: [B, T, Dq] floating, Dq >= 1.
          inputs_k: [B, S, Dk] floating (Dk >= 1), the keys' input, or None for self-attention (S = T). Must be
            None when decoding. The second positional argument, as in flax.
          inputs_v: [B, S, Dv] floating, the values' input, or None for inputs_k.
          inputs_kv: [B, S, Dkv] floating, one input for keys and values (flax's older keyword); give it or
            inputs_k, not both.
          mask: None or [B or 1, N or 1, T, S] bool, True = attend. When decoding, S = S_max (cache slots).
          bias: None or [B or 1, N or 1, T, S] floating, added to the scaled logits (S = S_max when decoding).
          is_causal: key s is masked for query t when s > t (top-left, as in `dot_product_attention`).
            Ignored when decoding, which is always causal in absolute positions.
          key_lengths: None or [B] integer; keys s >= key_lengths[b] are masked (cache slots when decoding).
          segment_ids: None, a pair (q_segment_ids [B, T], kv_segment_ids [B, S]) integer, or one [B, T] integer
            array for self-attention: query t sees key s only within the same segment (packed sequences;
            forwarded to `attention_fn`). Not available when decoding.
          deterministic: a bool; if False and dropout_rate > 0, drop attention weights. None takes the
            attribute (True when that is None too).
          dropout_rng: a PRNG key for the dropout; None draws one from the "dropout" rng collection.
          return_weights: also return the attention weights.
          sow_weights: store the weights [B, N, T, S] in the "intermediates" collection as "attention_weights"
            (flax's name), for inspection with `mutable=["intermediates"]`.
          head_gates: None or [N] floating; head i's context is multiplied by head_gates[i] before the output
            projection, Concat(g_1 head_1, ..., g_N head_N) W^O (Voita et al. 2019, arXiv:1905.09418, §4).
            A zero gate removes the head (see `attention_jax.layers.head_gates`).

        Returns:
          output: [B, T, D_out], in the compute dtype; with `return_weights`, (output, weights [B, N, T, S]
          float32 after dropout; rows with no valid key are 0).

        Raises:
          ValueError: for inputs that are not rank 3, batch sizes or key/value lengths that differ, a zero
            feature size, Dq not a multiple of N without head_dim, inputs_kv together with inputs_k, key/value
            inputs while decoding, T > S_max or a batch that differs from the cache's, mask, bias or
            key_lengths shapes that do not fit, `positions` with cross-attention, "rope" with an odd H_qk,
            segment_ids while decoding, deterministic set both here and as an attribute, and segment id shapes
            that do not fit (raised by `dot_product_attention`).
          TypeError: for inputs that are not floating arrays, a non-floating bias, a non-boolean mask,
            non-integer key_lengths, or flags (is_causal, deterministic, return_weights, sow_weights) that are
            not bools.
        """
        is_causal = _checks.flag("is_causal", is_causal)
        return_weights = _checks.flag("return_weights", return_weights)
        sow_weights = _checks.flag("sow_weights", sow_weights)
        deterministic = self._deterministic(deterministic)
        if inputs_kv is not None:
            if inputs_k is not None or inputs_v is not None:
                given = "inputs_k" if inputs_k is not None else "inputs_v"
                raise ValueError(f"give inputs_kv or inputs_k/inputs_v, not both: got inputs_kv.shape="
                                 f"{jnp.shape(inputs_kv)} and {given}")
            inputs_k = inputs_kv
        if inputs_v is not None and inputs_k is None:
            raise ValueError(f"inputs_v needs inputs_k: {jnp.shape(inputs_v)=}")
        inputs_kv = inputs_k  # the keys' input; the values' input is inputs_v (inputs_k when None)
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
        if inputs_v is None:
            inputs_v = inputs_kv
        else:
            _checks.rank("inputs_v", inputs_v, 3)
            _checks.floating("inputs_v", inputs_v)
            if jnp.shape(inputs_v)[:2] != jnp.shape(inputs_kv)[:2]:
                raise ValueError(f"inputs_k and inputs_v must share [B, S]: {jnp.shape(inputs_kv)=} "
                                 f"{jnp.shape(inputs_v)=}")
        if 0 in (jnp.shape(inputs_q)[-1], jnp.shape(inputs_kv)[-1], jnp.shape(inputs_v)[-1]):
            raise ValueError(f"inputs need at least one feature: {jnp.shape(inputs_q)=} {jnp.shape(inputs_kv)=} "
                             f"{jnp.shape(inputs_v)=}")
        batch, num_queries, features = jnp.shape(inputs_q)
        num_keys = jnp.shape(inputs_kv)[1]
        heads = self.num_heads
        kv_heads = heads if self.num_kv_heads is None else self.num_kv_heads
        head_dim = self._head_dim(features)  # H = d_v
        qk_dim = head_dim if self.qk_head_dim is None else self.qk_head_dim  # H_qk = d_k
        out_features = features if self.out_features is None else self.out_features
        if head_gates is not None:
            _checks.floating("head_gates", head_gates)
            _checks.shape("head_gates", head_gates, (heads,))
        if self.positions == "rope" and qk_dim % 2:
            source = "" if self.qk_head_dim is None else " (qk_head_dim, the query/key head size)"
            raise ValueError(f"positions='rope' needs an even head dim, got H={qk_dim}{source}")

        cache_ready = self.decode and self.has_variable("cache", "cached_key")
        if cache_ready:
            cache_shape = self.get_variable("cache", "cached_key").shape  # [B, S_max, K, H_qk]
            num_keys = cache_shape[1]
            if num_queries > num_keys or batch != cache_shape[0]:
                raise ValueError(
                    f"decode input [B, T, D]={jnp.shape(inputs_q)} does not fit the cache [B, S_max, K, H_qk]="
                    f"{cache_shape}: need the same B and T <= S_max"
                )
        check_bias(bias, batch, heads, num_queries, num_keys)
        if key_lengths is not None:
            check_lengths("key_lengths", key_lengths, batch)
        # Every mask source checked once, before any projection; the spec goes to attention_fn bound.
        spec = AttentionMask(mask, is_causal=is_causal, key_value_seq_lengths=key_lengths,
                             segment_ids=segment_ids).fit(batch, heads, num_queries, num_keys)

        if not self.decode:
            # Input rows that no valid pair uses are zeroed before the projections: the backend keeps them out of
            # the output, but NaN there would still reach d W (x^T dy = NaN * 0). Each copy is zeroed on its own
            # rule, so in self-attention a masked key that is a live query keeps its query projection.
            segments = segment_ids if segment_ids is None or isinstance(segment_ids, tuple) else \
                (segment_ids, segment_ids)
            live_q, live_k = live_rows(batch, num_queries, num_keys, mask=mask, key_lengths=key_lengths,
                                       segment_ids=segments, is_causal=is_causal)
            inputs_q, inputs_kv, inputs_v = zero_dead(inputs_q, live_q), zero_dead(inputs_kv, live_k), \
                zero_dead(inputs_v, live_k)
        q_names = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        kv_names = (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM)
        query = self._dense((heads, qk_dim), -1, "query", q_names)(inputs_q)  # [B, T, N, H_qk]
        key = self._dense((kv_heads, qk_dim), -1, "key", kv_names)(inputs_kv)  # [B, S, K, H_qk]
        value = self._dense((kv_heads, head_dim), -1, "value", kv_names)(inputs_v)  # [B, S, K, H]
        query = axes.constrain(query, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM))
        key = axes.constrain(key, (axes.BATCH, axes.LENGTH, axes.KV_HEADS, axes.HEAD_DIM))
        value = axes.constrain(value, (axes.BATCH, axes.LENGTH, axes.KV_HEADS, axes.HEAD_DIM))
        if self.normalize_qk:  # arXiv:2302.05442 §3.1.1: LayerNorm (no bias) over each head's H features
            layer_norm = lambda name: nn.LayerNorm(
                use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                scale_init=axes.partitioned(nn.initializers.ones_init(), (axes.HEAD_DIM,)))
            query = layer_norm("query_ln")(query)  # [B, T, N, H_qk]
            key = layer_norm("key_ln")(key)  # [B, S, K, H_qk]

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
            shaw_init = axes.partitioned(self.kernel_init, (None, axes.HEAD_DIM))
            table_k = self.param("shaw_key", shaw_init, (2 * k + 1, qk_dim), self.param_dtype)
            table_v = self.param("shaw_value", shaw_init, (2 * k + 1, head_dim), self.param_dtype)
            shaw_ids = (jnp.clip(distance, -k, k) + k).astype(jnp.int32)  # [T, S]
            shaw = shaw_logits(query, table_k, shaw_ids, scale=1.0 / float(qk_dim) ** 0.5)  # [B, N, T, S]
            bias = shaw if bias is None else bias.astype(jnp.float32) + shaw

        need_weights = return_weights or shaw_ids is not None
        rate = 0.0 if deterministic else float(self.dropout_rate)
        if rate > 0.0 and dropout_rng is None:
            dropout_rng = self.make_rng("dropout")
        broadcast = rate > 0.0 and self.broadcast_dropout
        if broadcast:  # one [T, S] mask for every row and head: dropped here, on the weights attention_fn returns
            rate, broadcast_rng, dropout_rng = 0.0, dropout_rng, None
        need_weights = need_weights or sow_weights or broadcast
        # d_k != d_v: one common head size for the backends (zero features change neither q . k nor the output).
        common = max(qk_dim, head_dim)
        scale_kw = {} if qk_dim == head_dim else {"scale": 1.0 / float(qk_dim) ** 0.5}
        query_in, key_in, value_in = (_pad_features(x, common) for x in (query, key, value))  # [.., max(H_qk, H)]
        spec = spec.bind(query_in, key_in, value_in)
        implementation = self.implementation
        normalizer_kw = {} if self.normalizer == "softmax" else {"normalizer": self.normalizer}
        if self.decode and mask is not None and implementation is not None and self.attention_fn is dot_product_attention:
            # A prefill (or the init call) needs the dense cache mask; a backend that takes none (flash, cudnn)
            # hands that call to implementation=None instead of failing. One-token steps keep the backend.
            ok, reason = supports(implementation, query_in, key_in, value_in, mask=spec, **scale_kw, **normalizer_kw)
            if not ok:
                logging.log_first_n(logging.INFO, "MultiHeadAttention: the cache prefill runs on "
                                    "implementation=None: %s", 1, reason)
                implementation = None
        result = self.attention_fn(
            query_in, key_in, value_in, bias, spec, dropout_rate=rate, dropout_rng=dropout_rng,
            return_weights=need_weights, implementation=implementation, **scale_kw, **normalizer_kw,
        )
        context, weights = (result[0], result[1]) if need_weights else (result, None)  # [B, T, N, max(H_qk, H)]
        context = context[..., :head_dim]  # [B, T, N, H]
        if broadcast:
            keep = jax.random.bernoulli(broadcast_rng, 1.0 - self.dropout_rate, weights.shape[2:])  # [T, S]
            weights = jnp.where(keep, weights / (1.0 - self.dropout_rate), 0.0)  # [B, N, T, S]
            grouped = weights.reshape(batch, kv_heads, heads // kv_heads, num_queries, -1)  # [B, K, G, T, S]
            live = jnp.any(grouped > 0, axis=(2, 3))  # [B, K, S]: a value row nobody attends may hold NaN
            live_value = jnp.where(jnp.swapaxes(live, 1, 2)[..., None], value.astype(jnp.float32), 0.0)
            context = jnp.einsum("BKGTS,BSKH->BTKGH", grouped, live_value)
            context = context.reshape(batch, num_queries, heads, head_dim).astype(result[0].dtype)  # [B, T, N, H]
        if sow_weights:
            self.sow("intermediates", "attention_weights", weights)
        if shaw_ids is not None:
            context = context + shaw_values(weights, table_v, shaw_ids).astype(context.dtype)  # eq. 3
        if head_gates is not None:
            context = context * head_gates[:, None].astype(context.dtype)  # [B, T, N, H]
        output = self._dense(out_features, (-2, -1), "out", (axes.HEADS, axes.HEAD_DIM, axes.EMBED))(context)
        output = axes.constrain(output, (axes.BATCH, axes.LENGTH, axes.EMBED))  # [B, T, D_out]
        return (output, weights) if return_weights else output

    def _cache_start(self) -> jax.Array:
        """The cache index before this call: the absolute position of its first query."""
        return self.get_variable("cache", "cache_index")

    def _use_cache(self, key, value, mask, cache_ready):
        """Writes key [B, T, K, H_qk] / value [B, T, K, H] at cache_index; returns the caches, mask and lengths.

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
                                                (zero, start, zero, zero))  # [B, S_max, K, H_qk]
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


def _pad_features(x: jax.Array, features: int) -> jax.Array:
    """[..., H] -> [..., features] with zeros after the H features (x itself when H == features)."""
    missing = features - x.shape[-1]
    if missing == 0:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, missing)])
