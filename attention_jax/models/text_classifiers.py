"""Sentence and document classifiers whose pooling over time is a choice: max, k-max, chunk-max or attention.

  TextCNN             Kim 2014, "Convolutional Neural Networks for Sentence Classification", arXiv:1408.5882,
                      §2: word embeddings, one convolution per filter width h with ReLU (eq. 1,
                      c_i = f(w . x_{i:i+h-1} + b)), max-over-time pooling (eq. 2, c^ = max{c}), dropout,
                      then a softmax layer. `pooling` replaces eq. 2 per filter width by attention pooling
                      (`layers.feedforward.FeedForwardAttention`), order-preserving k-max pooling (Kalchbrenner
                      et al. 2014, arXiv:1404.2188, §3.3) or chunk-max pooling (`core.pooling`).
  TransformerClassifier  a pre-LN Transformer encoder (Vaswani et al. 2017, arXiv:1706.03762, §3.1) whose
                      self-attention normalises with the softmax, sparsemax (Martins & Astudillo 2016,
                      arXiv:1602.02068) or 1.5-entmax (Peters et al. 2019, arXiv:1905.05702), or is replaced by
                      compositional de-attention (Tay et al. 2019, arXiv:1910.01086, `layers.coda`); the sentence
                      vector is the mean of the final states over the real tokens.
  DAttnClassifier     D-Attn's local and global attention modules and their CNNs (Seo et al. 2017, RecSys,
                      `layers.dual_attention`), then the paper's two dense layers (500 units, ReLU, dropout) with a
                      softmax head in place of its user-item inner product.
  BiLSTMClassifier    a bidirectional LSTM whose sentence vector is the last states of both directions, the
                      mean or the max of the states, feed-forward attention pooling (Raffel & Ellis 2015,
                      arXiv:1512.08756; Yang et al. 2016's context-vector form), or Lin et al. 2017's
                      structured self-attention (arXiv:1703.03130, eq. 6, with the eq. 8 penalty in the aux).

Inputs are token ids [B, T] with id 0 = padding; a padded position reaches neither the outputs nor the
gradients, whatever its embedding holds. The convolutions are wide (Kalchbrenner et al. 2014, §2.1: each
window that overlaps the sentence is an output position), so a sentence shorter than a filter still has
features; an output position is valid when its window holds at least one real token. A sentence with no token
pools to zeros and is classified from the biases alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment, axes, pooling
from attention_jax.core.positional import sinusoidal_positions
from attention_jax.layers.coda import CODA_GATES, CoDAAttention
from attention_jax.layers.dual_attention import GLOBAL_SCORES, DualAttentionEncoder
from attention_jax.layers.feedforward import FeedForwardAttention
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.layers.structured import StructuredSelfAttention
from attention_jax.models.seq2seq import make_cell
from attention_jax.models.transformer import FeedForward

__all__ = ["CNN_POOLINGS", "ENCODER_ATTENTIONS", "RNN_POOLINGS", "BiLSTMClassifier", "DAttnClassifier", "TextCNN",
           "TransformerClassifier", "wide_conv_mask"]

CNN_POOLINGS = ("max", "attention", "kmax", "chunk_max")
RNN_POOLINGS = ("last", "mean", "max", "attention", "structured")
ENCODER_ATTENTIONS = ("softmax", "sparsemax", "entmax15", "coda")


def wide_conv_mask(mask: jax.Array, width: int) -> jax.Array:
    """Which outputs of a wide convolution of width h see at least one real token.

    Output t of a wide convolution covers inputs t - h + 1 .. t (T + h - 1 outputs in all).

    Args:
      mask: [B, T] bool, True = a real token.
      width: h >= 1.

    Returns:
      [B, T + h - 1] bool.

    Raises:
      ValueError: if the mask is not rank 2 or width < 1.
      TypeError: if the mask is not boolean.
    """
    _checks.rank("mask", mask, 2)
    _checks.boolean("mask", mask)
    width = _checks.int_at_least("width", width, 1)
    padded = jnp.pad(mask, ((0, 0), (width - 1, width - 1)))
    out = padded.shape[1] - width + 1
    return jnp.any(jnp.stack([padded[:, i:i + out] for i in range(width)]), axis=0)


def _check_call(tokens: jax.Array, train: bool) -> None:
    """Every classifier's call checks: token ids [B, T] of an integer dtype, and a bool `train`."""
    _checks.flag("train", train)
    _checks.tokens("tokens", tokens, 2)


def _embed_tokens(tokens: jax.Array, vocab_size: int, embed_dim: int) -> tuple[jax.Array, jax.Array]:
    """Embeddings [B, T, E] float32 with padded positions zeroed, and the token mask [B, T] (inside a compact
    method: the "embed" table belongs to the calling module)."""
    mask = tokens != 0
    x = nn.Embed(vocab_size, embed_dim, embedding_init=axes.embed_init(), name="embed")(tokens)
    x = jnp.where(mask[..., None], x.astype(jnp.float32), 0.0)
    return axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), mask


class TextCNN(nn.Module):
    """Kim 2014 (arXiv:1408.5882) with a choice of pooling over time.

    Attributes:
      vocab_size: V (id 0 is padding).
      num_classes: C.
      embed_dim: word embedding size (Kim: 300).
      filter_widths: the widths h (Kim: 3, 4, 5).
      num_filters: feature maps per width (Kim: 100).
      pooling: "max" (eq. 2), "attention" (feed-forward attention per width; `attention_dim` None is Raffel &
        Ellis' scalar form, an int Yang et al.'s context-vector form), "kmax" (the k largest per feature, in
        order) or "chunk_max" (the maximum within each of `num_chunks` chunks).
      attention_dim: A for pooling="attention".
      k: k for pooling="kmax".
      num_chunks: C for pooling="chunk_max".
      normalizer: the attention pooling's normaliser, a name in `alignment.NORMALIZERS`.
      dropout_rate: dropout on the pooled features (Kim: 0.5).
    """

    vocab_size: int
    num_classes: int
    embed_dim: int = 300
    filter_widths: Sequence[int] = (3, 4, 5)
    num_filters: int = 100
    pooling: str = "max"
    attention_dim: int | None = None
    k: int = 2
    num_chunks: int = 3
    normalizer: str = "softmax"
    dropout_rate: float = 0.5

    def __post_init__(self):
        _checks.int_at_least("vocab_size", self.vocab_size, 2)
        _checks.int_at_least("num_classes", self.num_classes, 1)
        for name in ("embed_dim", "num_filters", "k", "num_chunks"):
            _checks.int_at_least(name, getattr(self, name), 1)
        if not self.filter_widths:
            raise ValueError("filter_widths must name at least one width, got ()")
        for width in self.filter_widths:
            _checks.int_at_least("filter_widths entries", width, 1)
        if self.attention_dim is not None:
            _checks.int_at_least("attention_dim", self.attention_dim, 1)
        _checks.choice("pooling", self.pooling, CNN_POOLINGS)
        _checks.choice("normalizer", self.normalizer, alignment.NORMALIZERS)
        _checks.rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        """Classifies sentences.

        Args:
          tokens: [B, T] integer token ids, 0 = padding.
          train: enables dropout (needs the "dropout" rng).

        Returns:
          logits: [B, C] float32.
          aux: {"features": [B, F] float32, the pooled features (F = widths x filters, times k or num_chunks
            for k-max and chunk-max)}, plus for pooling="attention" {"weights": {h: [B, T + h - 1] float32}},
            each width's attention over its wide-convolution outputs.

        Raises:
          ValueError: if tokens are not rank 2.
          TypeError: if tokens are not integer or train is not a bool.
        """
        _check_call(tokens, train)
        x, mask = _embed_tokens(tokens, self.vocab_size, self.embed_dim)
        pooled, weights = [], {}
        for width in self.filter_widths:
            conv = nn.Conv(self.num_filters, (width,), padding=[(width - 1, width - 1)], name=f"conv{width}",
                           kernel_init=axes.partitioned(nn.linear.default_kernel_init, (None, axes.EMBED, axes.MLP)),
                           bias_init=axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
            valid = wide_conv_mask(mask, width)  # [B, T + h - 1]
            c = nn.relu(conv(x))  # eq. 1
            c = axes.constrain(jnp.where(valid[..., None], c, 0.0), (axes.BATCH, axes.LENGTH, axes.MLP))
            if self.pooling == "max":
                p = pooling.max_pool(c, valid)  # eq. 2
            elif self.pooling == "attention":
                p, weights[width] = FeedForwardAttention(hidden_dim=self.attention_dim, normalizer=self.normalizer,
                                                         name=f"attention{width}")(c, valid)
            elif self.pooling == "kmax":
                p = pooling.kmax_pool(c, self.k, valid).reshape(c.shape[0], -1)
            else:
                p = pooling.chunk_max_pool(c, self.num_chunks, valid).reshape(c.shape[0], -1)
            pooled.append(p)
        features = jnp.concatenate(pooled, axis=-1)
        dropped = nn.Dropout(self.dropout_rate)(features, deterministic=not train)
        logits = nn.Dense(self.num_classes, name="classifier", **axes.dense_inits(axes.MLP, None))(dropped)
        aux: dict[str, Any] = {"features": features}
        if weights:
            aux["weights"] = weights
        return logits.astype(jnp.float32), aux


class BiLSTMClassifier(nn.Module):
    """A BiLSTM sentence classifier with a choice of sentence vector.

    Attributes:
      vocab_size: V (id 0 is padding).
      num_classes: C.
      embed_dim: word embedding size.
      hidden_size: LSTM size per direction (states are 2H).
      pooling: "last" ([forward state at the last real token; backward state at the first]), "mean", "max",
        "attention" (feed-forward attention pooling) or "structured" (Lin et al. 2017: R hops, flattened).
      attention_dim: A (for "attention": None is Raffel & Ellis' scalar form; for "structured": d_a, required).
      hops: R for "structured" (Lin et al.: 30).
      mlp_dim: the hidden layer between the sentence vector and the softmax (Lin et al. use one of 3000);
        None goes straight to the softmax.
      normalizer: the attention's normaliser, a name in `alignment.NORMALIZERS`.
      dropout_rate: dropout on the sentence vector.
    """

    vocab_size: int
    num_classes: int
    embed_dim: int = 100
    hidden_size: int = 100
    pooling: str = "attention"
    attention_dim: int | None = None
    hops: int = 4
    mlp_dim: int | None = None
    normalizer: str = "softmax"
    dropout_rate: float = 0.0

    def __post_init__(self):
        _checks.int_at_least("vocab_size", self.vocab_size, 2)
        _checks.int_at_least("num_classes", self.num_classes, 1)
        for name in ("embed_dim", "hidden_size", "hops"):
            _checks.int_at_least(name, getattr(self, name), 1)
        for name in ("attention_dim", "mlp_dim"):
            if getattr(self, name) is not None:
                _checks.int_at_least(name, getattr(self, name), 1)
        _checks.choice("pooling", self.pooling, RNN_POOLINGS)
        if self.pooling == "structured" and self.attention_dim is None:
            raise ValueError("pooling='structured' needs attention_dim (d_a of Lin et al. 2017, eq. 6), got None")
        _checks.choice("normalizer", self.normalizer, alignment.NORMALIZERS)
        _checks.rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        """Classifies sentences.

        Args:
          tokens: [B, T] integer token ids, 0 = padding; the tokens of a sentence come first.
          train: enables dropout (needs the "dropout" rng).

        Returns:
          logits: [B, C] float32.
          aux: {"sentence": the sentence vector, [B, 2H] float32 ([B, R 2H] for "structured");
            "weights": what each token contributed, [B, T] float32 for "attention" and "mean" (uniform over the
            valid tokens), [B, R, T] for "structured", None for "last" and "max";
            and for "structured" "penalty": [B] float32, ||A A^T - I||_F^2 (Lin et al. eq. 8), which the loss
            adds as its mean times a coefficient}.

        Raises:
          ValueError: if tokens are not rank 2.
          TypeError: if tokens are not integer or train is not a bool.
        """
        _check_call(tokens, train)
        length = tokens.shape[1]
        if length == 0:  # T = 0: one padding step, so the scans have a step; every sentence is then empty
            tokens = jnp.zeros((tokens.shape[0], 1), tokens.dtype)
        x, mask = _embed_tokens(tokens, self.vocab_size, self.embed_dim)
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        rnn = nn.Bidirectional(nn.RNN(make_cell("lstm", self.hidden_size, name="lstm_forward")),
                               nn.RNN(make_cell("lstm", self.hidden_size, name="lstm_backward")), name="encoder")
        states = rnn(x, seq_lengths=lengths)  # [B, T, 2H]
        states = axes.constrain(jnp.where(mask[..., None], states, 0.0), (axes.BATCH, axes.LENGTH, axes.MLP))
        aux: dict[str, Any] = {"weights": None}
        if self.pooling == "last":
            # The outputs, not the carries: flax's final carry of an empty sequence is the one at index -1.
            last = jnp.take_along_axis(states, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
            sentence = jnp.concatenate([last[:, :self.hidden_size], states[:, 0, self.hidden_size:]], axis=-1)
            sentence = jnp.where((lengths > 0)[:, None], sentence, 0.0)
        elif self.pooling == "mean":
            sentence = pooling.mean_pool(states, mask)
            aux["weights"] = pooling.mean_weights(mask)
        elif self.pooling == "max":
            sentence = pooling.max_pool(states, mask)
        elif self.pooling == "attention":
            sentence, aux["weights"] = FeedForwardAttention(hidden_dim=self.attention_dim,
                                                            normalizer=self.normalizer, name="attention")(states, mask)
        else:
            embedding, aux["weights"], aux["penalty"] = StructuredSelfAttention(
                hops=self.hops, hidden_dim=self.attention_dim, normalizer=self.normalizer, name="attention")(states,
                                                                                                          mask)
            sentence = embedding.reshape(embedding.shape[0], -1)
        aux["sentence"] = sentence
        if aux["weights"] is not None:
            aux["weights"] = aux["weights"][..., :length]
        hidden = nn.Dropout(self.dropout_rate)(sentence, deterministic=not train)
        if self.mlp_dim is not None:
            hidden = nn.relu(nn.Dense(self.mlp_dim, name="mlp", **axes.dense_inits(None, axes.MLP))(hidden))
        logits = nn.Dense(self.num_classes, name="classifier", **axes.dense_inits(axes.MLP, None))(hidden)
        return logits.astype(jnp.float32), aux


class _ClassifierBlock(nn.Module):
    """x + Dropout(Attention(LN(x))), then x + Dropout(FFN(LN(x))): one pre-LN encoder layer."""

    num_heads: int
    d_ff: int
    attention: str
    coda_gate: str
    dropout_rate: float

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        h = nn.LayerNorm(name="attention_norm", **axes.norm_inits())(x)
        if self.attention == "coda":
            h, weights = CoDAAttention(num_heads=self.num_heads, gate=self.coda_gate, name="attention")(
                h, key_lengths=lengths, query_lengths=lengths)
        else:
            h, weights = MultiHeadAttention(num_heads=self.num_heads, normalizer=self.attention, name="attention")(
                h, key_lengths=lengths, return_weights=True)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = FeedForward(self.d_ff, name="ffn")(nn.LayerNorm(name="ffn_norm", **axes.norm_inits())(x), train)
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=not train), weights


class TransformerClassifier(nn.Module):
    """A pre-LN Transformer encoder classifier with a choice of attention normaliser, or CoDA.

    Attributes:
      vocab_size: V (id 0 is padding).
      num_classes: C.
      d_model: D.
      num_heads: N (D must be divisible by N).
      d_ff: the FFN's inner width.
      num_layers: encoder layers.
      attention: "softmax", "sparsemax", "entmax15" (`MultiHeadAttention(normalizer=...)`, the xla backend) or
        "coda" (`CoDAAttention`).
      coda_gate: CoDA's gate, a name in `layers.coda.CODA_GATES`.
      dropout_rate: residual and embedding dropout.
    """

    vocab_size: int
    num_classes: int
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 128
    num_layers: int = 2
    attention: str = "softmax"
    coda_gate: str = "centred"
    dropout_rate: float = 0.1

    def __post_init__(self):
        _checks.int_at_least("vocab_size", self.vocab_size, 2)
        _checks.int_at_least("num_classes", self.num_classes, 1)
        for name in ("d_model", "num_heads", "d_ff", "num_layers"):
            _checks.int_at_least(name, getattr(self, name), 1)
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        _checks.choice("attention", self.attention, ENCODER_ATTENTIONS)
        _checks.choice("coda_gate", self.coda_gate, CODA_GATES)
        _checks.rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        """Classifies sentences.

        Args:
          tokens: [B, T] integer token ids, 0 = padding; the tokens of a sentence come first.
          train: enables dropout (needs the "dropout" rng).

        Returns:
          logits: [B, C] float32.
          aux: {"sentence": [B, D] float32, the mean final state over the real tokens (zeros for a sentence with
            none); "weights": one [B, N, T, T] float32 array per layer, the self-attention weights (for "coda"
            the quasi-attention M in (-1, 1); exactly 0 towards padding)}.

        Raises:
          ValueError: if tokens are not rank 2.
          TypeError: if tokens are not integer or train is not a bool.
        """
        _check_call(tokens, train)
        x, mask = _embed_tokens(tokens, self.vocab_size, self.d_model)
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        if tokens.shape[1]:
            x = x * self.d_model ** 0.5 + sinusoidal_positions(tokens.shape[1], self.d_model)[None]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        weights = []
        for i in range(self.num_layers):
            x, w = _ClassifierBlock(self.num_heads, self.d_ff, self.attention, self.coda_gate, self.dropout_rate,
                                    name=f"layer_{i}")(x, lengths, train)
            x = jnp.where(mask[..., None], x, 0.0)  # padded rows carry nothing into the next layer
            weights.append(w)
        x = nn.LayerNorm(name="final_norm", **axes.norm_inits())(x)
        sentence = pooling.mean_pool(x.astype(jnp.float32), mask)
        logits = nn.Dense(self.num_classes, name="classifier", **axes.dense_inits(axes.EMBED, None))(sentence)
        return logits.astype(jnp.float32), {"sentence": sentence, "weights": weights}


class DAttnClassifier(nn.Module):
    """D-Attn (Seo et al. 2017) as a document classifier.

    Attributes:
      vocab_size: V (id 0 is padding).
      num_classes: C.
      max_len: the longest document (the global score's W_G has one row per position).
      embed_dim: word embedding size (100 in the public ports).
      window, local_features, global_widths, global_features, global_scores: as in `DualAttentionEncoder`.
      hidden_dim: the dense layer after the CNNs (500 in the ports).
      dropout_rate: dropout after that layer (0.5 in the ports).
    """

    vocab_size: int
    num_classes: int
    max_len: int
    embed_dim: int = 100
    window: int = 5
    local_features: int = 200
    global_widths: Sequence[int] = (2, 3, 4)
    global_features: int = 100
    global_scores: str = "document"
    hidden_dim: int = 500
    dropout_rate: float = 0.5

    def __post_init__(self):
        _checks.int_at_least("vocab_size", self.vocab_size, 2)
        _checks.int_at_least("num_classes", self.num_classes, 1)
        for name in ("max_len", "embed_dim", "hidden_dim"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.choice("global_scores", self.global_scores, GLOBAL_SCORES)
        _checks.rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        """Classifies documents.

        Args:
          tokens: [B, T] integer token ids, 0 = padding, T <= max_len; the tokens of a document come first.
          train: enables dropout (needs the "dropout" rng).

        Returns:
          logits: [B, C] float32.
          aux: {"features": [B, n_L + 3 n_G] float32, z; "local_scores": [B, T]; "global_scores": [B, 1] or
            [B, T] float32 (see `DualAttentionEncoder`)}.

        Raises:
          ValueError: if tokens are not rank 2 or T > max_len.
          TypeError: if tokens are not integer or train is not a bool.
        """
        _check_call(tokens, train)
        x, mask = _embed_tokens(tokens, self.vocab_size, self.embed_dim)
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        features, aux = DualAttentionEncoder(
            max_len=self.max_len, window=self.window, local_features=self.local_features,
            global_widths=tuple(self.global_widths), global_features=self.global_features,
            global_scores=self.global_scores, name="encoder")(x, lengths)
        hidden = nn.relu(nn.Dense(self.hidden_dim, name="hidden", **axes.dense_inits(None, axes.MLP))(features))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not train)
        logits = nn.Dense(self.num_classes, name="classifier", **axes.dense_inits(axes.MLP, None))(hidden)
        return logits.astype(jnp.float32), {"features": features, **aux}
