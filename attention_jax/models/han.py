"""Hierarchical attention networks for document classification.

Yang et al. 2016, "Hierarchical Attention Networks for Document Classification", NAACL, N16-1174, §2:

    word encoder     h_it = [GRU->(x_it); GRU<-(x_it)]                                      eqs. 1-4
    word attention   u_it = tanh(W_w h_it + b_w), alpha_it = softmax_t(u_it^T u_w),
                     s_i = sum_t alpha_it h_it                                                eqs. 5-7
    sentence encoder h_i = [GRU->(s_i); GRU<-(s_i)]                                          eqs. 8-9
    sentence attn.   u_i = tanh(W_s h_i + b_s), alpha_i = softmax_i(u_i^T u_s), v = sum_i alpha_i h_i  eq. 10
    classifier       p = softmax(W_c v + b_c)                                                eq. 11

`pooling="mean"` and `"max"` replace both attentions by average or max pooling: the paper's HN-AVE and HN-MAX
rows (Table 2). The attentions are `layers.feedforward.FeedForwardAttention(hidden_dim=A)`, the same
context-vector pooling, so they take a sparse normaliser as well.

Documents are token ids [B, L, W]: L sentences of W words, id 0 = padding, words right-padded within each
sentence and sentences right-padded within the document. A sentence with no word (a padded sentence, or an
empty one in the middle of a document) is masked out of the sentence attention and pools to zeros; the
sentence GRUs run over the first L_b sentences, L_b being the index after the last non-empty one. A document
with no word at all gets a zero document vector.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment, axes, pooling
from attention_jax.layers.feedforward import FeedForwardAttention
from attention_jax.models.seq2seq import make_cell

__all__ = ["POOLINGS", "BiGRU", "HierarchicalAttentionNetwork"]

POOLINGS = ("attention", "mean", "max")


class BiGRU(nn.Module):
    """A bidirectional GRU over right-padded sequences of vectors; outputs at padded positions are zero.

    Attributes:
      hidden_size: H per direction (outputs are 2H).
    """

    hidden_size: int

    @nn.compact
    def __call__(self, inputs: jax.Array, lengths: jax.Array) -> jax.Array:
        """inputs [B, T, E] floating, lengths [B] int32 -> [B, T, 2H] float32 (eqs. 1-4 / 8-9 of Yang 2016)."""
        rnn = nn.Bidirectional(nn.RNN(make_cell("gru", self.hidden_size)), nn.RNN(make_cell("gru", self.hidden_size)))
        outputs = rnn(inputs.astype(jnp.float32), seq_lengths=lengths)
        valid = jnp.arange(inputs.shape[1])[None, :] < lengths[:, None]
        return jnp.where(valid[..., None], outputs, 0.0)


class HierarchicalAttentionNetwork(nn.Module):
    """HAN (Yang et al. 2016, N16-1174) and its HN-AVE / HN-MAX variants.

    Attributes:
      vocab_size: V (id 0 is padding).
      num_classes: C.
      embed_dim: word embedding size (the paper: 200).
      hidden_size: GRU size per direction (the paper: 50).
      attention_dim: A, the size of u_it and u_i (the paper: 100).
      pooling: "attention" (HN-ATT), "mean" (HN-AVE) or "max" (HN-MAX), at both levels.
      normalizer: the attentions' normaliser, a name in `alignment.NORMALIZERS`.
      dropout_rate: dropout on the document vector before the classifier.
    """

    vocab_size: int
    num_classes: int
    embed_dim: int = 200
    hidden_size: int = 50
    attention_dim: int = 100
    pooling: str = "attention"
    normalizer: str = "softmax"
    dropout_rate: float = 0.0

    def __post_init__(self):
        _checks.int_at_least("vocab_size", self.vocab_size, 2)
        _checks.int_at_least("num_classes", self.num_classes, 1)
        for name in ("embed_dim", "hidden_size", "attention_dim"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.choice("pooling", self.pooling, POOLINGS)
        _checks.choice("normalizer", self.normalizer, alignment.NORMALIZERS)
        _checks.rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=axes.embed_init())
        self.word_encoder = BiGRU(self.hidden_size)
        self.sentence_encoder = BiGRU(self.hidden_size)
        if self.pooling == "attention":
            self.word_attention = FeedForwardAttention(hidden_dim=self.attention_dim, normalizer=self.normalizer)
            self.sentence_attention = FeedForwardAttention(hidden_dim=self.attention_dim,
                                                           normalizer=self.normalizer)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.classifier = nn.Dense(self.num_classes, **axes.dense_inits(axes.MLP, None))

    def _pool(self, which: str, states: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.pooling == "attention":
            return getattr(self, f"{which}_attention")(states, mask)
        uniform = pooling.mean_weights(mask)  # [B, T]: what "attention" a pooling amounts to
        pooled = pooling.mean_pool(states, mask) if self.pooling == "mean" else pooling.max_pool(states, mask)
        return pooled, uniform

    def encode_sentences(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The word level: token ids [B, L, W] -> (sentence vectors s_i [B, L, 2H], word weights [B, L, W],
        sentence mask [B, L])."""
        batch, sentences, words = tokens.shape
        word_mask = tokens != 0  # [B, L, W]
        flat = tokens.reshape(batch * sentences, words)
        lengths = jnp.sum(word_mask, axis=-1).reshape(-1).astype(jnp.int32)  # [B L]
        flat_mask = word_mask.reshape(batch * sentences, words)
        # Padded steps still run through the GRU cells (their outputs are dropped): zero their inputs so that
        # nothing stored there, even NaN, reaches the cells' gradients.
        x = jnp.where(flat_mask[..., None], self.embed(flat).astype(jnp.float32), 0.0)  # [B L, W, E]
        h = self.word_encoder(x, lengths)  # [B L, W, 2H]
        h = axes.constrain(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        s, word_weights = self._pool("word", h, flat_mask)
        return (s.reshape(batch, sentences, -1), word_weights.reshape(batch, sentences, words),
                jnp.any(word_mask, axis=-1))

    def __call__(self, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Classifies documents.

        Args:
          tokens: [B, L, W] integer word ids, 0 = padding (see the module docstring for the layout).
          train: enables dropout (needs the "dropout" rng).

        Returns:
          logits: [B, C] float32 (eq. 11 before the softmax).
          aux: {"word_weights": [B, L, W] float32 alpha_it, "sentence_weights": [B, L] float32 alpha_i,
            "document": [B, 2H] float32 v}. For HN-AVE / HN-MAX the weights are the uniform weights of the
            valid positions (what the pooling would be as attention), for plotting beside HN-ATT.

        Raises:
          ValueError: if tokens are not rank 3.
          TypeError: if tokens are not integer or train is not a bool.
        """
        _checks.flag("train", train)
        _checks.tokens("tokens", tokens, 3)
        s, word_weights, sentence_mask = self.encode_sentences(tokens)
        num_sentences = jnp.max(jnp.where(sentence_mask, jnp.arange(tokens.shape[1])[None, :] + 1, 0), axis=1)
        h = self.sentence_encoder(s, num_sentences.astype(jnp.int32))  # [B, L, 2H]
        document, sentence_weights = self._pool("sentence", h, sentence_mask)
        document = self.dropout(document, deterministic=not train)
        logits = self.classifier(document).astype(jnp.float32)
        return logits, {"word_weights": word_weights, "sentence_weights": sentence_weights, "document": document}
