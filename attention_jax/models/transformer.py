"""The Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762).

  - `EncoderLayer`, `DecoderLayer`: self-attention (plus cross-attention in the decoder) and the position-wise
    feed-forward network FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (§3.3; the exact GELU in place of max(0, .)
    with `activation="gelu"`, as in BERT, arXiv:1810.04805), each sub-layer wrapped as
    post-LN, LayerNorm(x + Dropout(Sublayer(x))) (§3.1, §5.4, the paper), or pre-LN,
    x + Dropout(Sublayer(LayerNorm(x))) (Xiong et al. 2020, arXiv:2002.04745), with a final LayerNorm.
  - `Transformer`: embeddings scaled by sqrt(D) and shared between source, target and the pre-softmax
    projection (§3.4), positions (§3.5 sinusoidal, learned, or the relative schemes of
    `MultiHeadAttention.positions`: Shaw, RoPE, ALiBi), stacks of layers and the output logits. Its interface
    is `attention_jax.models.seq2seq.Seq2Seq`'s: ``__call__(src, src_lengths, tgt_in, train)``, ``encode`` and a
    ``decode_step`` that runs on the key/value cache of `MultiHeadAttention`.
  - `Transformer.init_decode` / `Transformer.decode_next`: the decoding protocol of `attention_jax.models.decoding`
    over that cache, so `decoding.prepare`, `decoding.beam_search` and `decoding.greedy_decode` decode a trained
    Transformer in O(T) per token (`make_step_fn` / `init_decode_state` are thin wrappers kept for callers).
  - `label_smoothed_cross_entropy` (§5.4, Szegedy et al. 2016, arXiv:1512.00567, §7) and
    `transformer_schedule`, the warm-up learning rate of §5.3 (eq. 3) as an optax schedule.

Letters: B batch, S source length, T target length, D = d_model, N heads, K key/value heads, H = d_v (and d_k
unless `qk_head_dim` sets it apart, Table 3 row B), F = d_ff, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.layers.head_gates import expected_l0, hard_concrete_deterministic, hard_concrete_sample
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.core.positional import LearnedPositions, sinusoidal_at
from attention_jax.models import decoding

Array = jax.Array
PyTree = Any

__all__ = [
    "ACTIVATIONS",
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "NORMS",
    "POSITIONS",
    "Transformer",
    "init_decode_state",
    "label_smoothed_cross_entropy",
    "make_step_fn",
    "transformer_schedule",
]

NORMS = ("post", "pre")
# The FFN's nonlinearity: the paper's ReLU, or the exact (erf) GELU of BERT.
ACTIVATIONS = ("relu", "gelu")
# "sinusoidal" and "learned" are added to the embeddings; "shaw", "rope" and "alibi" act inside every
# self-attention (cross-attention has no positions); "none" has no position information at all.
POSITIONS = ("sinusoidal", "learned", "shaw", "rope", "alibi", "none")
_RELATIVE = ("shaw", "rope", "alibi")
# Where the head gates of Voita et al. 2019 sit: none, the encoder self-attention, or every attention.
HEAD_GATES = ("none", "encoder", "all")


# ----------------------------------------------------------------------------------------------------------
# Loss and learning rate.


def label_smoothed_cross_entropy(
    logits: Array, labels: Array, mask: Array | None = None, *, smoothing: float = 0.1
) -> tuple[Array, Array]:
    """Summed cross-entropy against label-smoothed targets (arXiv:1706.03762 §5.4; arXiv:1512.00567 §7).

    The target distribution is q'(k) = (1 - eps) [k = y] + eps / V, and the loss of a token is
    -sum_k q'(k) log p(k). With eps = 0 this is the negative log-likelihood. The loss of a perfect model is the
    entropy of q' (not 0); perplexities should be computed with eps = 0.

    Args:
      logits: [B, T, V] floating (computed in float32).
      labels: [B, T] integer in [0, V).
      mask: None or [B, T] bool or floating; 1 for tokens that count (padding 0).
      smoothing: eps, a Python float in [0, 1).

    Returns:
      (loss_sum [] float32, count [] float32): the masked sum of token losses and the number of tokens (the
      sum of the mask), so the mean is loss_sum / count and sums over batches add up.

    Raises:
      ValueError: if logits is not rank 3, labels or mask differ from logits.shape[:2], or eps is not in [0, 1).
      TypeError: for non-floating logits or non-integer labels.
    """
    _checks.rank("logits", logits, 3)
    _checks.floating("logits", logits)
    _checks.integer("labels", labels)
    _checks.shape("labels", labels, tuple(jnp.shape(logits)[:2]))
    if mask is not None:
        _checks.shape("mask", mask, tuple(jnp.shape(logits)[:2]))
    _checks.rate("smoothing", smoothing)
    # Dense one-hot targets through optax: the backward pass is then softmax(logits) - q', elementwise, where
    # gathering the label's log-probability (take_along_axis) differentiates into a scatter over [B, T, V].
    targets = jax.nn.one_hot(labels, jnp.shape(logits)[-1], dtype=jnp.float32)  # [B, T, V]
    if smoothing > 0.0:
        targets = optax.smooth_labels(targets, smoothing)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)  # [B, T]
    weights = jnp.ones_like(loss) if mask is None else jnp.asarray(mask).astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(weights)


def transformer_schedule(d_model: int, warmup_steps: int = 4000, scale: float = 1.0) -> optax.Schedule:
    """The warm-up learning rate of arXiv:1706.03762, §5.3, eq. 3, as an optax schedule.

    lrate(step) = scale * d_model^-0.5 * min(n^-0.5, n * warmup_steps^-1.5) with n = step + 1 (optax counts
    updates from 0): linear growth for warmup_steps steps, then decay with the inverse square root.

    Args:
      d_model: D, a positive int.
      warmup_steps: a positive int (4000 in the paper).
      scale: a positive float multiplying the whole schedule (1 in the paper).

    Returns:
      An `optax.Schedule`: step (int or [] int32) -> [] float32.

    Raises:
      ValueError: if d_model or warmup_steps is not a positive int, or scale <= 0.
    """
    d_model = _checks.positive_int("d_model", d_model)
    warmup_steps = _checks.positive_int("warmup_steps", warmup_steps)
    scale = _checks.positive_real("scale", scale)

    def schedule(step):
        n = jnp.asarray(step, jnp.float32) + 1.0
        return scale * d_model ** -0.5 * jnp.minimum(n ** -0.5, n * float(warmup_steps) ** -1.5)

    return schedule


# ----------------------------------------------------------------------------------------------------------
# Layers.


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (arXiv:1706.03762, §3.3, eq. 2), or GELU in place of max(0, .).

    Attributes:
      d_ff: F, the inner width.
      dropout_rate: dropout on the inner activations when training (0 in the paper).
      dtype: compute dtype (None infers it).
      param_dtype: parameter dtype.
      activation: "relu" (the paper) or "gelu", the exact GELU x Phi(x) with the normal CDF through erf
        (Hendrycks & Gimpel 2016, arXiv:1606.08415), as in BERT (arXiv:1810.04805, §3.1).

    Raises:
      ValueError: at construction, if activation is not one of `ACTIVATIONS`.
    """

    d_ff: int
    dropout_rate: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    activation: str = "relu"

    def __post_init__(self):
        _checks.choice("activation", self.activation, ACTIVATIONS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, T, D] floating -> [B, T, D] in the compute dtype."""
        d_model = jnp.shape(x)[-1]
        h = nn.Dense(self.d_ff, dtype=self.dtype, param_dtype=self.param_dtype, name="inner",
                     **axes.dense_inits(axes.EMBED, axes.MLP))(x)  # [B, T, F]
        h = nn.relu(h) if self.activation == "relu" else jax.nn.gelu(h, approximate=False)
        h = axes.constrain(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        out = nn.Dense(d_model, dtype=self.dtype, param_dtype=self.param_dtype, name="outer",
                       **axes.dense_inits(axes.MLP, axes.EMBED))(h)  # [B, T, D]
        return axes.constrain(out, (axes.BATCH, axes.LENGTH, axes.EMBED))


class _Sublayer(nn.Module):
    """Wraps one sub-layer in post-LN or pre-LN residual form (§3.1 / arXiv:2002.04745) with residual dropout."""

    norm: str
    dropout_rate: float
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, fn: Callable[[Array], Any], train: bool) -> tuple[Array, Any]:
        layer_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm", **axes.norm_inits())
        out = fn(layer_norm(x) if self.norm == "pre" else x)
        out, extra = out if isinstance(out, tuple) else (out, None)
        y = x + nn.Dropout(self.dropout_rate)(out, deterministic=not train)
        y = layer_norm(y) if self.norm == "post" else y
        return axes.constrain(y, (axes.BATCH, axes.LENGTH, axes.EMBED)), extra  # the residual stream [B, T, D]


def _gates(module: nn.Module, name: str, heads: int, train: bool) -> tuple[Array, Array]:
    """Hard Concrete head gates [N] and their expected L0 [] (arXiv:1905.09418 §4); "gates" rng when training."""
    log_alpha = module.param(name, axes.partitioned(nn.initializers.constant(3.0), (axes.HEADS,)), (heads,),
                             jnp.float32)  # [N]
    gates = hard_concrete_sample(log_alpha, module.make_rng("gates")) if train else \
        hard_concrete_deterministic(log_alpha)
    return gates, expected_l0(log_alpha)


class _Layer(nn.Module):
    """The attributes and sub-module factories shared by `EncoderLayer` and `DecoderLayer`."""

    num_heads: int
    d_ff: int
    head_dim: int | None = None
    qk_head_dim: int | None = None
    num_kv_heads: int | None = None
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    relu_dropout_rate: float = 0.0
    norm: str = "post"
    positions: str | None = None
    shaw_max_distance: int = 16
    head_gates: bool = False
    implementation: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    activation: str = "relu"

    def _attention(self, name: str, *, relative: bool, decode: bool = False) -> MultiHeadAttention:
        """A sub-layer's MultiHeadAttention; `relative` gives it the layer's position scheme (self-attention)."""
        extra = dict(positions=self.positions, shaw_max_distance=self.shaw_max_distance) if relative else {}
        return MultiHeadAttention(
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            qk_head_dim=self.qk_head_dim, dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
            param_dtype=self.param_dtype, implementation=self.implementation, decode=decode, name=name, **extra)

    def _block(self, name: str) -> _Sublayer:
        return _Sublayer(norm=self.norm, dropout_rate=self.dropout_rate, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)

    def _ffn_block(self, x: Array, train: bool) -> Array:
        ffn = FeedForward(self.d_ff, self.relu_dropout_rate, self.dtype, self.param_dtype, activation=self.activation,
                          name="ffn")
        return self._block("ffn_block")(x, lambda h: ffn(h, train), train)[0]


class EncoderLayer(_Layer):
    """One encoder layer: self-attention and FFN, each a residual sub-layer (arXiv:1706.03762, §3.1).

    Attributes:
      num_heads: N.
      d_ff: F.
      head_dim: H = d_v (and d_k when qk_head_dim is None); None means D // N.
      qk_head_dim: d_k, the query/key head size of every attention; None means head_dim
        (`MultiHeadAttention.qk_head_dim`).
      num_kv_heads: K (grouped-query attention); None means N.
      dropout_rate: residual dropout P_drop (§5.4).
      attention_dropout_rate: dropout on the attention weights.
      relu_dropout_rate: dropout inside the FFN.
      norm: "post" (the paper) or "pre".
      positions: None or a relative scheme of `MultiHeadAttention.positions` ("shaw", "rope", "alibi").
      shaw_max_distance: k of the Shaw tables.
      head_gates: put Hard Concrete gates on the self-attention heads; the expected L0 is sown as
        intermediates "l0".
      implementation: the `dot_product_attention` backend.
      dtype, param_dtype: compute and parameter dtypes.
      activation: the FFN's nonlinearity, "relu" (the paper) or "gelu" (BERT, arXiv:1810.04805, §3.1); see
        `FeedForward`.
    """

    @nn.compact
    def __call__(self, x: Array, lengths: Array, train: bool = False) -> Array:
        """Encodes [B, S, D] with keys s >= lengths[b] masked; returns [B, S, D] in the compute dtype."""
        attention = self._attention("self_attention", relative=True)
        gates = None
        if self.head_gates:
            gates, l0 = _gates(self, "log_alpha", self.num_heads, train)
            self.sow("intermediates", "l0", l0)
        x, _ = self._block("attention_block")(
            x, lambda h: attention(h, key_lengths=lengths, deterministic=not train, head_gates=gates), train)
        return self._ffn_block(x, train)


class DecoderLayer(_Layer):
    """One decoder layer: masked self-attention, attention over the encoder, FFN (arXiv:1706.03762, §3.1).

    Attributes: those of `EncoderLayer` (gates apply to both attentions), plus
      decode: the self-attention keeps a key/value cache (see `MultiHeadAttention`).
    """

    decode: bool = False

    @nn.compact
    def __call__(self, y: Array, encoded: Array, src_lengths: Array, train: bool = False) -> tuple[Array, Array]:
        """Decodes [B, T, D] against encoded [B, S, D].

        Returns:
          (y [B, T, D] in the compute dtype, cross-attention weights [B, N, T, S] float32).
        """
        self_attention = self._attention("self_attention", relative=True, decode=self.decode)
        cross_attention = self._attention("cross_attention", relative=False)
        self_gates = cross_gates = None
        if self.head_gates:
            self_gates, l0_self = _gates(self, "log_alpha_self", self.num_heads, train)
            cross_gates, l0_cross = _gates(self, "log_alpha_cross", self.num_heads, train)
            self.sow("intermediates", "l0", l0_self + l0_cross)
        y, _ = self._block("self_attention_block")(
            y, lambda h: self_attention(h, is_causal=not self.decode, deterministic=not train, head_gates=self_gates),
            train)
        y, weights = self._block("cross_attention_block")(
            y, lambda h: cross_attention(h, encoded, key_lengths=src_lengths, deterministic=not train,
                                         return_weights=True, head_gates=cross_gates), train)
        return self._ffn_block(y, train), weights


# ----------------------------------------------------------------------------------------------------------
# The model.


class Transformer(nn.Module):
    """The Transformer encoder-decoder for translation (Vaswani et al. 2017, arXiv:1706.03762, §3, Fig. 1).

    Source and target share one embedding table, scaled by sqrt(D), whose transpose is also the pre-softmax
    projection (§3.4; `share_embeddings=False` gives three separate matrices). Padding: source tokens at
    s >= src_lengths[b] are masked as keys everywhere, so their values never reach the output. Target
    padding is the caller's business (mask it in the loss); the decoder is causal.

    Decoding: `decode_step` runs one target position against the self-attention caches of a clone with
    `decode=True`; `init_decode` / `decode_next` wrap it as the `attention_jax.models.decoding.Decodable`
    protocol. Decoding step by step equals the teacher-forced pass.

    Attributes:
      vocab_size: V.
      d_model: D (512 in the base model).
      num_heads: N (8).
      d_ff: F (2048).
      num_encoder_layers, num_decoder_layers: the stack depths (6 each).
      head_dim: H = d_v (and d_k when qk_head_dim is None); None means D // N (the paper's choice).
      qk_head_dim: d_k, the query/key head size of every attention; None means head_dim. Table 3 row (B) of
        arXiv:1706.03762 shrinks d_k (16, 32) with d_v = 64 fixed; logits are scaled by 1 / sqrt(d_k).
      num_kv_heads: K for grouped-query attention; None means N.
      dropout_rate: P_drop, on sub-layer outputs and on the sums of embeddings and positions (0.1).
      attention_dropout_rate: on the attention weights (0 in the paper).
      relu_dropout_rate: inside the FFN (0 in the paper).
      norm: "post" (the paper) or "pre" (with a final LayerNorm on each stack).
      positions: one of `POSITIONS`.
      max_len: the longest source or target (rows of the learned table; positions are also checked against
        it when known).
      shaw_max_distance: k of the Shaw tables (Shaw et al. use 16 for translation... and show k >= 2 suffices).
      share_embeddings: tie source, target and output embeddings.
      head_gates: one of `HEAD_GATES`; gates sow their expected L0 as intermediates "l0" and need the "gates"
        rng when training.
      implementation: the `dot_product_attention` backend of every attention.
      dtype: the compute dtype (None: float32 from the parameters); logits are float32.
      param_dtype: the parameter dtype.
      decode: the decoder self-attentions keep key/value caches (set by `init_decode_state`).

    Raises:
      ValueError: at construction, for non-positive sizes, D not a multiple of N without head_dim, an odd
        query/key head dim with "rope", rates outside [0, 1), or an unknown norm, positions or head_gates.
    """

    vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int | None = None
    qk_head_dim: int | None = None
    num_kv_heads: int | None = None
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    relu_dropout_rate: float = 0.0
    norm: str = "post"
    positions: str = "sinusoidal"
    max_len: int = 256
    shaw_max_distance: int = 16
    share_embeddings: bool = True
    head_gates: str = "none"
    implementation: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "max_len"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("num_encoder_layers", "num_decoder_layers", "shaw_max_distance"):
            _checks.positive_int(name, getattr(self, name), allow_zero=True)
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"without head_dim, d_model={self.d_model} must be a multiple of "
                             f"num_heads={self.num_heads}")
        head_dim = self.d_model // self.num_heads if self.head_dim is None else \
            _checks.positive_int("head_dim", self.head_dim)
        qk_dim = head_dim if self.qk_head_dim is None else _checks.positive_int("qk_head_dim", self.qk_head_dim)
        if self.num_kv_heads is not None and self.num_heads % _checks.positive_int("num_kv_heads", self.num_kv_heads):
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        for name in ("dropout_rate", "attention_dropout_rate", "relu_dropout_rate"):
            _checks.rate(name, getattr(self, name))
        _checks.choice("norm", self.norm, NORMS)
        _checks.choice("positions", self.positions, POSITIONS)
        _checks.choice("head_gates", self.head_gates, HEAD_GATES)
        for name in ("share_embeddings", "decode"):
            _checks.flag(name, getattr(self, name))
        if self.positions == "rope" and qk_dim % 2:
            raise ValueError(f"positions='rope' needs an even head dim, got {qk_dim} (d_model={self.d_model}, "
                             f"num_heads={self.num_heads}, head_dim={self.head_dim}, qk_head_dim={self.qk_head_dim})")
        if self.head_gates != "none" and self.num_kv_heads not in (None, self.num_heads):
            raise ValueError(f"head_gates={self.head_gates!r} needs num_kv_heads None or num_heads, got "
                             f"{self.num_kv_heads}")
        super().__post_init__()

    def _layer_kwargs(self) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, d_ff=self.d_ff, head_dim=self.head_dim, qk_head_dim=self.qk_head_dim,
                    num_kv_heads=self.num_kv_heads,
                    dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                    relu_dropout_rate=self.relu_dropout_rate, norm=self.norm,
                    positions=self.positions if self.positions in _RELATIVE else None,
                    shaw_max_distance=self.shaw_max_distance, implementation=self.implementation, dtype=self.dtype,
                    param_dtype=self.param_dtype)

    def setup(self):
        init = axes.embed_init(nn.initializers.normal(stddev=self.d_model ** -0.5))  # scaled by sqrt(D)
        self.embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=init, param_dtype=self.param_dtype)
        if not self.share_embeddings:
            self.target_embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=init,
                                         param_dtype=self.param_dtype)
            self.output_proj = nn.Dense(self.vocab_size, use_bias=False, param_dtype=self.param_dtype,
                                        **axes.dense_inits(axes.EMBED, axes.VOCAB))
        if self.positions == "learned":
            self.source_positions = LearnedPositions(self.max_len, self.d_model, param_dtype=self.param_dtype)
            self.target_positions = LearnedPositions(self.max_len, self.d_model, param_dtype=self.param_dtype)
        kwargs = self._layer_kwargs()
        self.encoder_layers = [EncoderLayer(**kwargs, head_gates=self.head_gates != "none")
                               for i in range(self.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(**kwargs, head_gates=self.head_gates == "all", decode=self.decode,
                                            ) for i in range(self.num_decoder_layers)]
        if self.norm == "pre":
            self.encoder_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, **axes.norm_inits())
            self.decoder_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, **axes.norm_inits())
        self.embed_dropout = nn.Dropout(self.dropout_rate)

    # -- pieces ------------------------------------------------------------------------------------------

    def _embed(self, tokens: Array, positions: Array, side: str, train: bool) -> Array:
        """Scaled token embeddings plus absolute positions, [B, L] -> [B, L, D] (§3.4, §3.5)."""
        table = self.embed if side == "source" or self.share_embeddings else self.target_embed
        x = table(tokens) * jnp.sqrt(jnp.float32(self.d_model))  # [B, L, D]
        if self.positions == "sinusoidal":
            x = x + sinusoidal_at(positions, self.d_model)
        elif self.positions == "learned":
            x = x + (self.source_positions if side == "source" else self.target_positions)(positions)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        return self.embed_dropout(x, deterministic=not train)

    def _logits(self, y: Array) -> Array:
        if self.share_embeddings:
            logits = self.embed.attend(y.astype(jnp.float32)).astype(jnp.float32)  # [B, T, V]
        else:
            logits = self.output_proj(y).astype(jnp.float32)  # [B, T, V]
        return axes.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))

    def _check_tokens(self, name: str, tokens: Any) -> None:
        _checks.tokens(name, tokens, 2)
        if self.positions == "learned" and jnp.shape(tokens)[1] > self.max_len:
            raise ValueError(f"{name} has {jnp.shape(tokens)[1]} positions, more than the learned table's "
                             f"max_len={self.max_len}: {name}.shape={jnp.shape(tokens)}")

    # -- the three entry points -----------------------------------------------------------------------------

    def encode(self, src: Array, src_lengths: Array, train: bool = False) -> dict[str, Array]:
        """Runs the encoder stack.

        Args:
          src: [B, S] integer source tokens (anything beyond src_lengths is ignored).
          src_lengths: [B] integer, 0 <= src_lengths <= S.
          train: enables dropout (rng "dropout"; "gates" with head gates).

        Returns:
          memory: {"encoded": [B, S, D] in the compute dtype, "lengths": [B] int32}.

        Raises:
          ValueError: if src is not [B, S], src_lengths is not [B], or S exceeds max_len with learned
            positions.
          TypeError: for non-integer src or src_lengths, or a train flag that is not a bool.
        """
        _checks.flag("train", train)
        self._check_tokens("src", src)
        _checks.rank("src_lengths", src_lengths, 1)
        _checks.integer("src_lengths", src_lengths)
        _checks.same_batch(src=src, src_lengths=src_lengths)
        batch, num_keys = jnp.shape(src)
        x = self._embed(src, jnp.broadcast_to(jnp.arange(num_keys), (batch, num_keys)), "source", train)  # [B,S,D]
        lengths = jnp.asarray(src_lengths, jnp.int32)
        for layer in self.encoder_layers:
            x = layer(x, lengths, train)
        if self.norm == "pre":
            x = self.encoder_norm(x)
        return {"encoded": x, "lengths": lengths}

    def decode_logits(self, memory: Mapping[str, Array], tgt_in: Array, train: bool = False,
               positions: Array | None = None) -> tuple[Array, Array]:
        """Runs the decoder stack on a target prefix (teacher forcing, or one step when `decode` is set).

        Args:
          memory: the output of `encode`; rows of "encoded" at s >= lengths[b] are ignored (even NaN there
            reaches no output and no gradient: the cross-attentions take lengths as key lengths).
          tgt_in: [B, T] integer target inputs (BOS first).
          train: enables dropout.
          positions: None (0 .. T - 1) or [B, T] integer absolute positions of tgt_in (decoding).

        Returns:
          (logits [B, T, V] float32, weights [B, T, S] float32): the last decoder layer's cross-attention
          weights averaged over heads (zeros without decoder layers).

        Raises:
          ValueError, TypeError: for tokens of the wrong rank, dtype or batch.
        """
        self._check_tokens("tgt_in", tgt_in)
        encoded, lengths = memory["encoded"], memory["lengths"]
        _checks.same_batch(tgt_in=tgt_in, encoded=encoded)
        batch, num_queries = jnp.shape(tgt_in)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(num_queries), (batch, num_queries))
        y = self._embed(tgt_in, positions, "target", train)  # [B, T, D]
        weights = jnp.zeros((batch, 1, num_queries, jnp.shape(encoded)[1]), jnp.float32)
        for layer in self.decoder_layers:
            y, weights = layer(y, encoded, lengths, train)
        if self.norm == "pre":
            y = self.decoder_norm(y)
        return self._logits(y), jnp.mean(weights, axis=1)

    def __call__(self, src: Array, src_lengths: Array, tgt_in: Array, train: bool = False) -> tuple[Array, Array]:
        """Teacher-forced translation logits, p(y_t | y_<t, x) (arXiv:1706.03762, Fig. 1).

        Args:
          src: [B, S] integer source tokens.
          src_lengths: [B] integer true source lengths.
          tgt_in: [B, T] integer target inputs (BOS, y_1, ..., y_{T-1}).
          train: enables dropout (rng "dropout"; "gates" with head gates).

        Returns:
          (logits [B, T, V] float32, weights [B, T, S] float32, see `decode_logits`).

        Raises:
          ValueError, TypeError: see `encode` and `decode_logits`.
        """
        _checks.flag("train", train)
        return self.decode_logits(self.encode(src, src_lengths, train), tgt_in, train)

    def decode_step(self, memory: Mapping[str, Array], tokens: Array, t: Array) -> tuple[Array, Array]:
        """One decoding step at position t on the caches (needs `decode=True` and an initialised cache).

        Args:
          memory: the output of `encode`.
          tokens: [B] integer, the previous output (BOS at t = 0).
          t: [] integer, the position being predicted; must equal the caches' index.

        Returns:
          (logits [B, V] float32, weights [B, S] float32).
        """
        _checks.rank("tokens", tokens, 1)
        positions = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (jnp.shape(tokens)[0], 1))
        logits, weights = self.decode_logits(memory, tokens[:, None], False, positions)
        return logits[:, 0], weights[:, 0]

    # -- the decoding protocol (`attention_jax.models.decoding.Decodable`) -------------------------------------

    @nn.nowrap
    def init_decode(self, variables: PyTree, src: Array, src_lengths: Array, *,
                    max_len: int) -> tuple[dict[str, Array], PyTree]:
        """`encode`, and empty self-attention caches of max_len slots, on the unbound module (`decoding.Decodable`).

        Args:
          variables: the model's variables ({"params": ...}).
          src: [B, S] integer source tokens.
          src_lengths: [B] integer.
          max_len: L, the cache length, at least the number of steps to decode; an int >= 1 (and <= the
            attribute max_len with learned positions, whose table has that many rows).

        Returns:
          (memory, state): memory from `encode`; state a pytree of zeros, [B, L, K, d_k] keys and [B, L, K, H]
          values of each decoder layer's self-attention, without the cache index (`decode_next` writes at t).

        Raises:
          ValueError: bad source shapes (see `encode`), max_len not an int >= 1, or beyond the learned table.
          TypeError: non-integer src or src_lengths.
        """
        max_len = _checks.positive_int("max_len", max_len)
        if self.positions == "learned" and max_len > self.max_len:
            raise ValueError(f"max_len={max_len} decoding steps exceed the learned position table's "
                             f"max_len={self.max_len} rows")
        memory = self.apply(variables, src, src_lengths, method=Transformer.encode)
        return memory, _empty_caches(self, memory, max_len)

    @nn.nowrap
    def decode_next(self, variables: PyTree, memory: Mapping[str, Array], state: PyTree, tokens: Array,
                    t: Array) -> tuple[Array, PyTree, Array]:
        """One cached decoding step at position t, on the unbound module (`decoding.Decodable`).

        Runs `decode_step` on a `decode=True` clone whose caches are `state` with their write index set to t,
        so beam search may reorder the state's rows freely (every leaf is batch-leading).

        Args:
          variables: the model's variables ({"params": ...}).
          memory: `encode`'s output (possibly tiled along the batch).
          state: the caches from `init_decode` or the previous `decode_next`.
          tokens: [B] integer, the previous outputs (BOS at t = 0).
          t: [] int32, the position being predicted, < the caches' length L.

        Returns:
          (logits [B, V] float32, state, weights [B, S] float32: the last decoder layer's cross-attention
          weights averaged over heads).
        """
        cache = _with_index(state, t)
        (logits, weights), updated = self.clone(decode=True).apply(
            {**variables, "cache": cache}, memory, tokens, t, method=Transformer.decode_step, mutable=["cache"])
        return logits, _strip_index(updated["cache"]), weights


# ----------------------------------------------------------------------------------------------------------
# Decoding with the cache.


def _strip_index(cache: PyTree) -> PyTree:
    """The cache without its scalar `cache_index` leaves (every remaining leaf is batch-leading)."""
    if isinstance(cache, Mapping):
        return {k: _strip_index(v) for k, v in cache.items() if k != "cache_index"}
    return cache


def _with_index(cache: PyTree, t: Array) -> PyTree:
    """Re-inserts `cache_index` = t beside every `cached_key` (each `MultiHeadAttention` cache)."""
    if isinstance(cache, Mapping):
        out = {k: _with_index(v, t) for k, v in cache.items()}
        if "cached_key" in cache:
            out["cache_index"] = jnp.asarray(t, jnp.int32)
        return out
    return cache


def _empty_caches(model: Transformer, memory: Mapping[str, Array], max_len: int) -> PyTree:
    """Zero self-attention caches of `max_len` slots for memory's batch, without their `cache_index` leaves."""
    batch = jnp.shape(memory["encoded"])[0]
    decoder = model.clone(decode=True)
    shapes = jax.eval_shape(
        lambda m: decoder.init({"params": jax.random.PRNGKey(0)}, m, jnp.zeros((batch, max_len), jnp.int32),
                               method=Transformer.decode_logits)["cache"], memory)
    return _strip_index(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))


def init_decode_state(model: Transformer, params: PyTree, memory: Mapping[str, Array], max_len: int) -> PyTree:
    """Empty self-attention caches for decoding up to max_len tokens (the state of `Transformer.decode_next`).

    A thin wrapper kept for existing callers; `Transformer.init_decode` (or `attention_jax.models.decoding.prepare`)
    encodes and builds this state in one call.

    Args:
      model: the trained `Transformer` (decode False or True).
      params: its parameters (unused: the caches' shapes follow from the model and the memory).
      memory: `Transformer.encode`'s output for the batch.
      max_len: the cache length, at least the number of steps to decode; a Python int.

    Returns:
      A pytree of zeros, [B, max_len, K, d_k] keys and [B, max_len, K, H] values per decoder layer: the `state` of
      `make_step_fn`'s step function.

    Raises:
      ValueError: if max_len is not a positive int.
    """
    del params
    max_len = _checks.positive_int("max_len", max_len)
    return _empty_caches(model, memory, max_len)


def make_step_fn(model: Transformer, params: PyTree) -> decoding.StepFn:
    """The `attention_jax.models.decoding` step function of a `Transformer`: ``decode_next`` bound to params.

    A thin wrapper kept for existing callers; `attention_jax.models.decoding.prepare` gives the step function
    together with the memory and state for any decodable model.

    Args:
      model: the `Transformer`.
      params: its parameters.

    Returns:
      step_fn(memory, state, tokens [B'] int32, t [] int32) -> (logits [B', V] float32, state, weights [B', S]
      float32), with `state` from `init_decode_state`. Beam search may reorder the state's rows freely: every
      leaf is batch-leading, and the caches' write position is t itself.
    """
    return decoding.bind(model, {"params": params})
