"""Cloze-style reading comprehension: the Attention Sum Reader and the Attention-over-Attention Reader.

Both read a document and a query with one blank and pick the answer among candidate words by summing the
attention over each candidate's occurrences in the document (the pointer sum).

Kadlec et al. 2016, "Text Understanding with the Attention Sum Reader Network", arXiv:1603.01547, §3:

    f(d) = BiGRU_f(e(d)) [S, 2H]                       the contextual embedding of each document token
    g(q) = [GRU->_g(e(q))_|q| ; GRU<-_g(e(q))_1] [2H]   the last forward and first backward query states
    s_i ~ exp(f_i(d) . g(q))                            eq. 2 (`layers.reader.attention_sum`)
    P(w | q, d) = sum_{i in I(w, d)} s_i                eq. 3 (`layers.reader.pointer_sum`)

The two encoders are separate; the word embedding e is shared.

Cui et al. 2017, "Attention-over-Attention Neural Networks for Reading Comprehension", arXiv:1607.04423, §3:
one shared embedding and one shared BiGRU encode the document [S, 2H] and the query [T, 2H] (§3.1); the
document-level attention s [S] comes from attention over attention (eqs. 5-9,
`layers.reader.attention_over_attention`) and P(w | D, Q) from the same pointer sum (eq. 10).

Inputs are token ids, id 0 = padding, right-padded: document [B, S], query [B, T], candidates [B, C] (a 0
candidate is no candidate). Padded tokens are zeroed after the embedding (so even NaN stored in the
embedding's row 0 reaches nothing), the GRUs run over the real tokens only, and the attentions mask them.
Train with `cloze_loss`, the negative log-likelihood of the right candidate (Kadlec eq. 4, Cui eq. 11).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.layers.reader import AttentionOverAttention, AttentionSum, pointer_sum
from attention_jax.models.han import BiGRU

__all__ = ["AttentionOverAttentionReader", "AttentionSumReader", "cloze_loss", "cloze_losses"]

_F32 = jnp.float32
PROB_FLOOR = 1e-12
"""The smallest probability `cloze_loss` takes the log of, so that the loss stays finite."""


def cloze_losses(probs: jax.Array, answer_index: jax.Array) -> jax.Array:
    """Per question, the negative log-likelihood of the right candidate: Kadlec et al. 2016 (arXiv:1603.01547),
    eq. 4; Cui et al. 2017 (arXiv:1607.04423), eq. 11.

    Each probability is floored at `PROB_FLOOR` before the log, so a right answer with probability 0 (absent
    from the document, or a masked candidate) gives a large finite loss, with zero gradient, not inf. Use this
    form to weight questions (padding rows of a batch); `cloze_loss` is its mean.

    Args:
      probs: [B, C] floating, P(c | q, d) of each candidate (a reader's output).
      answer_index: [B] integer, the index in [0, C) of the right candidate of each question.

    Returns:
      losses: [B] float32, -log max(probs[b, answer_index[b]], PROB_FLOOR).

    Raises:
      ValueError: if probs is not rank 2, answer_index not rank 1, or their batch sizes differ.
      TypeError: for non-floating probs or non-integer answer indices.
    """
    _checks.rank("probs", probs, 2)
    _checks.floating("probs", probs)
    _checks.rank("answer_index", answer_index, 1)
    _checks.integer("answer_index", answer_index)
    _checks.same_batch(probs=probs, answer_index=answer_index)
    picked = jnp.take_along_axis(jnp.asarray(probs, _F32), jnp.asarray(answer_index)[:, None], axis=1)[:, 0]
    return -jnp.log(jnp.maximum(picked, PROB_FLOOR))


def cloze_loss(probs: jax.Array, answer_index: jax.Array) -> jax.Array:
    """The mean over the batch of `cloze_losses` (Kadlec et al. 2016, arXiv:1603.01547, eq. 4).

    Args:
      probs: [B, C] floating, P(c | q, d) of each candidate.
      answer_index: [B] integer, the index in [0, C) of the right candidate.

    Returns:
      loss: [] float32.

    Raises:
      ValueError, TypeError: as `cloze_losses`.
    """
    return jnp.mean(cloze_losses(probs, answer_index))


def _check_ids(document: jax.Array, query: jax.Array, candidates: jax.Array) -> None:
    for name, ids in (("document", document), ("query", query), ("candidates", candidates)):
        _checks.tokens(name, ids, 2)
    _checks.same_batch(document=document, query=query, candidates=candidates)


def _lengths_and_mask(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Right-padded ids [B, L] -> (lengths [B] int32, the count of non-zero ids; mask [B, L], True below them)."""
    lengths = jnp.sum(ids != 0, axis=1, dtype=jnp.int32)
    return lengths, jnp.arange(ids.shape[1])[None, :] < lengths[:, None]


def _check_attributes(reader: nn.Module) -> None:
    _checks.int_at_least("vocab_size", reader.vocab_size, 2)
    _checks.int_at_least("embed_dim", reader.embed_dim, 1)
    _checks.int_at_least("hidden_size", reader.hidden_size, 1)
    _checks.rate("dropout_rate", reader.dropout_rate)


def _embed_both(embed: nn.Embed, dropout: nn.Dropout, document: jax.Array, query: jax.Array,
                train: bool) -> tuple[jax.Array, jax.Array]:
    """One call of the shared embedding over [document; query] -> ([B, S, E], [B, T, E]) float32.

    Padded tokens are zeroed before the encoders, whose padded steps still run (their outputs are dropped):
    nothing stored in the padding row, even NaN, reaches the cells' gradients.
    """
    ids = jnp.concatenate([document, query], axis=1)  # [B, S + T]
    mask = jnp.concatenate([_lengths_and_mask(document)[1], _lengths_and_mask(query)[1]], axis=1)
    x = jnp.where(mask[..., None], embed(ids).astype(_F32), 0.0)  # [B, S + T, E]
    x = dropout(x, deterministic=not train)
    return x[:, :document.shape[1]], x[:, document.shape[1]:]


class AttentionSumReader(nn.Module):
    """The Attention Sum Reader (Kadlec et al. 2016, arXiv:1603.01547, §3).

    Submodules: "embed" [V, E] (shared by document and query), "document_encoder" (f) and "query_encoder" (g),
    two BiGRUs of H per direction.

    Attributes:
      vocab_size: V >= 2 (id 0 is padding).
      embed_dim: E (the paper: 384).
      hidden_size: H, the GRU size per direction (the paper: 384 / 768).
      dropout_rate: dropout on the word embeddings when train=True.
    """

    vocab_size: int
    embed_dim: int
    hidden_size: int
    dropout_rate: float = 0.0

    def __post_init__(self):
        _check_attributes(self)
        super().__post_init__()

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=axes.embed_init())
        self.dropout = nn.Dropout(self.dropout_rate)
        self.document_encoder = BiGRU(self.hidden_size)
        self.query_encoder = BiGRU(self.hidden_size)
        self.attention = AttentionSum()

    def encode(self, document: jax.Array, query: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Token ids document [B, S], query [B, T] -> {"document": f(d) [B, S, 2H], zero at padded tokens;
        "query": g(q) [B, 2H], the last real forward state and the first backward state, zero for an empty
        query} (float32)."""
        x_doc, x_query = _embed_both(self.embed, self.dropout, document, query, train)
        doc_lengths, _ = _lengths_and_mask(document)
        query_lengths, _ = _lengths_and_mask(query)
        f = axes.constrain(self.document_encoder(x_doc, doc_lengths), (axes.BATCH, axes.LENGTH, axes.MLP))
        states = self.query_encoder(x_query, query_lengths)  # [B, T, 2H]
        last = jnp.maximum(query_lengths - 1, 0)[:, None, None]  # an empty query's states are all zero
        forward = jnp.take_along_axis(states[..., :self.hidden_size], last, axis=1)[:, 0]  # [B, H]
        backward = states[:, 0, self.hidden_size:]  # [B, H]
        g = axes.constrain(jnp.concatenate([forward, backward], axis=-1), (axes.BATCH, axes.MLP))
        return {"document": f, "query": g}

    def __call__(self, document: jax.Array, query: jax.Array, candidates: jax.Array,
                 train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Answers cloze questions.

        Args:
          document: [B, S] integer token ids, 0 = padding (right-padded).
          query: [B, T] integer token ids, 0 = padding (right-padded).
          candidates: [B, C] integer ids of the candidate answers, 0 = no candidate.
          train: enables dropout on the embeddings (needs the "dropout" rng).

        Returns:
          probs: [B, C] float32, P(c | q, d) (eq. 3); 0 for a 0 candidate or one absent from the document.
          aux: {"document_attention": [B, S] float32, the weights s_i of eq. 2 (zero at padded tokens)}.

        Raises:
          ValueError: if an input is not rank 2 or the batch sizes differ (the message names the shapes).
          TypeError: if an input is not integer or train is not a bool.
        """
        _checks.flag("train", train)
        _check_ids(document, query, candidates)
        encoded = self.encode(document, query, train)
        _, doc_mask = _lengths_and_mask(document)
        weights = self.attention(encoded["document"], encoded["query"], doc_mask)  # [B, S]
        return pointer_sum(weights, document, candidates), {"document_attention": weights}


class AttentionOverAttentionReader(nn.Module):
    """The Attention-over-Attention Reader (Cui et al. 2017, arXiv:1607.04423, §3).

    Submodules: "embed" [V, E] and one "encoder", a BiGRU of H per direction, both shared by document and
    query (§3.1).

    Attributes:
      vocab_size: V >= 2 (id 0 is padding).
      embed_dim: E (the paper: 384).
      hidden_size: H, the GRU size per direction (the paper: 256).
      dropout_rate: dropout on the word embeddings when train=True (the paper: 0.1).
    """

    vocab_size: int
    embed_dim: int
    hidden_size: int
    dropout_rate: float = 0.0

    def __post_init__(self):
        _check_attributes(self)
        super().__post_init__()

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=axes.embed_init())
        self.dropout = nn.Dropout(self.dropout_rate)
        self.encoder = BiGRU(self.hidden_size)
        self.attention = AttentionOverAttention()

    def encode(self, document: jax.Array, query: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Token ids document [B, S], query [B, T] -> {"document": h_doc [B, S, 2H], "query": h_query [B, T, 2H]}
        (float32, zero at padded tokens), from the one shared encoder."""
        x_doc, x_query = _embed_both(self.embed, self.dropout, document, query, train)
        doc_lengths, _ = _lengths_and_mask(document)
        query_lengths, _ = _lengths_and_mask(query)
        names = (axes.BATCH, axes.LENGTH, axes.MLP)
        return {"document": axes.constrain(self.encoder(x_doc, doc_lengths), names),
                "query": axes.constrain(self.encoder(x_query, query_lengths), names)}

    def __call__(self, document: jax.Array, query: jax.Array, candidates: jax.Array,
                 train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Answers cloze questions.

        Args:
          document: [B, S] integer token ids, 0 = padding (right-padded).
          query: [B, T] integer token ids, 0 = padding (right-padded).
          candidates: [B, C] integer ids of the candidate answers, 0 = no candidate.
          train: enables dropout on the embeddings (needs the "dropout" rng).

        Returns:
          probs: [B, C] float32, P(c | D, Q) (eq. 10); 0 for a 0 candidate or one absent from the document.
          aux: {"document_attention": [B, S] s (eq. 9), "alpha": [B, S, T] (eq. 6), "beta": [B, T] (eq. 8)},
            float32, zero at padded positions.

        Raises:
          ValueError: if an input is not rank 2 or the batch sizes differ (the message names the shapes).
          TypeError: if an input is not integer or train is not a bool.
        """
        _checks.flag("train", train)
        _check_ids(document, query, candidates)
        encoded = self.encode(document, query, train)
        _, doc_mask = _lengths_and_mask(document)
        _, query_mask = _lengths_and_mask(query)
        scores, alpha, beta = self.attention(encoded["document"], encoded["query"], doc_mask, query_mask)
        probs = pointer_sum(scores, document, candidates)
        return probs, {"document_attention": scores, "alpha": alpha, "beta": beta}
