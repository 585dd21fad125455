"""Cloze-style readers' attention: attention sum, attention over attention, and the pointer sum over candidates.

Kadlec et al. 2016, "Text Understanding with the Attention Sum Reader Network", arXiv:1603.01547, §3:

    s_i = exp(f_i(d) . g(q)) / sum_j exp(f_j(d) . g(q))          eq. 2: one weight per document token
    P(w | q, d) = sum_{i in I(w, d)} s_i                           eq. 3: summed over w's occurrences

Cui et al. 2017, "Attention-over-Attention Neural Networks for Reading Comprehension", arXiv:1607.04423, §3:

    M(i, j) = h_doc(i)^T h_query(j)                                eq. 5: M [|D|, |Q|]
    alpha(t) = softmax(M(1, t), ..., M(|D|, t))                    eq. 6: one distribution over D per query word
    beta(t) = softmax(M(t, 1), ..., M(t, |Q|))                     eq. 7: one distribution over Q per document word
    beta = (1 / n) sum_{t=1}^{|D|} beta(t)                         eq. 8: averaged over the n document words
    s = alpha^T beta                                               eq. 9: s [|D|]
    P(w | D, Q) = sum_{i in I(w, D)} s_i                           eq. 10: as Kadlec's eq. 3

Here the letters follow the package legend: S = |D| document tokens, T = |Q| query tokens, D the state size.
Both softmaxes of eqs. 6-7 run over the real tokens only (each with its own mask), and eq. 8 averages over the
real document tokens, so padding changes nothing. The modules hold no parameters: the readers of
`attention_jax.models.reader` own the embeddings and encoders.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment

__all__ = ["AttentionOverAttention", "AttentionSum", "attention_over_attention", "attention_sum", "pointer_sum"]

_F32 = jnp.float32


def _check_mask(name: str, mask: Any, expected: tuple[int, int], what: str, shapes: str) -> None:
    _checks.rank(name, mask, 2)
    _checks.boolean(name, mask)
    if tuple(jnp.shape(mask)) != expected:
        raise ValueError(f"{name} must be {what} = {expected}, got {name}.shape={tuple(jnp.shape(mask))}; {shapes}")


def _check_document(document: Any, document_mask: Any) -> None:
    _checks.rank("document", document, 3)
    _checks.floating("document", document)
    _check_mask("document_mask", document_mask, tuple(jnp.shape(document)[:2]), "[B, S]",
                f"document.shape={tuple(jnp.shape(document))}")


def attention_sum(document: jax.Array, query: jax.Array, document_mask: jax.Array) -> jax.Array:
    """Kadlec et al. 2016 (arXiv:1603.01547), eq. 2: softmax over the document of <f_i(d), g(q)>.

    A row with no real document token (S = 0 included) gets all-zero weights and zero gradients, never NaN.
    Masked document positions, and the whole query of such a row, are zeroed before any score, so NaN or inf
    stored there reaches neither the weights nor any gradient.

    Args:
      document: [B, S, D] floating, the contextual embeddings f_i(d).
      query: [B, D] floating, the query embedding g(q).
      document_mask: [B, S] bool, True = a real document token.

    Returns:
      weights: [B, S] float32, summing to 1 over the real tokens of each row; exactly 0 at masked positions.

    Raises:
      ValueError: if document is not rank 3, query not rank 2, their B or D differ, or the mask is not [B, S]
        (the message names the shapes).
      TypeError: for non-floating document or query, or a non-boolean mask.
    """
    _check_document(document, document_mask)
    _checks.rank("query", query, 2)
    _checks.floating("query", query)
    if jnp.shape(query) != (jnp.shape(document)[0], jnp.shape(document)[2]):
        raise ValueError(f"query must be [B, D] for document [B, S, D]: query.shape={tuple(jnp.shape(query))} "
                         f"document.shape={tuple(jnp.shape(document))}")
    mask = jnp.asarray(document_mask)
    alive = jnp.any(mask, axis=1)  # [B]
    document = jnp.where(mask[..., None], jnp.asarray(document, _F32), 0.0)  # [B, S, D]
    query = jnp.where(alive[:, None], jnp.asarray(query, _F32), 0.0)  # [B, D]
    logits = jnp.einsum("BSD,BD->BS", document, query)  # [B, S]
    return alignment.masked_softmax(logits, mask)


def attention_over_attention(
    document: jax.Array, query: jax.Array, document_mask: jax.Array, query_mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cui et al. 2017 (arXiv:1607.04423), eqs. 5-9: document-level attention from attention over attention.

    alpha (eq. 6) normalises each column of M = document query^T over the real document tokens, and is zero in
    the columns of padded query words; the row-wise softmax of eq. 7 runs over the real query words and is
    averaged (eq. 8) over the real document words only. A row with no real document token or no real query
    word (S = 0 or T = 0 included) gets zero scores, alpha and beta, with zero gradients, never NaN. Masked
    positions are zeroed before any score, so NaN or inf stored there reaches no output and no gradient.

    Args:
      document: [B, S, D] floating, h_doc.
      query: [B, T, D] floating, h_query.
      document_mask: [B, S] bool, True = a real document token.
      query_mask: [B, T] bool, True = a real query word.

    Returns:
      scores: [B, S] float32, s = alpha beta (eq. 9): sums to 1 over the real document tokens of a row with
        real document and query tokens; exactly 0 at padded positions.
      alpha: [B, S, T] float32, the column-wise softmax (eq. 6): column t sums to 1 over the real document
        tokens when t is a real query word, and is all 0 otherwise.
      beta: [B, T] float32, the averaged query-level attention (eq. 8): sums to 1 over the real query words;
        exactly 0 at padded ones.

    Raises:
      ValueError: if document or query is not rank 3, B or D differ between them, or a mask is not [B, S] /
        [B, T] (the message names the shapes).
      TypeError: for a non-floating document or query, or a non-boolean mask.
    """
    _check_document(document, document_mask)
    _checks.rank("query", query, 3)
    _checks.floating("query", query)
    doc_shape, query_shape = jnp.shape(document), jnp.shape(query)
    if query_shape[0] != doc_shape[0] or query_shape[2] != doc_shape[2]:
        raise ValueError(f"query must be [B, T, D] for document [B, S, D]: query.shape={tuple(query_shape)} "
                         f"document.shape={tuple(doc_shape)}")
    _check_mask("query_mask", query_mask, tuple(query_shape[:2]), "[B, T]", f"query.shape={tuple(query_shape)}")
    doc_mask, query_mask = jnp.asarray(document_mask), jnp.asarray(query_mask)
    document = jnp.where(doc_mask[..., None], jnp.asarray(document, _F32), 0.0)  # [B, S, D]
    query = jnp.where(query_mask[..., None], jnp.asarray(query, _F32), 0.0)  # [B, T, D]
    pair_mask = doc_mask[:, :, None] & query_mask[:, None, :]  # [B, S, T]
    m = jnp.einsum("BSD,BTD->BST", document, query)  # [B, S, T], eq. 5
    alpha = jnp.swapaxes(alignment.masked_softmax(jnp.swapaxes(m, 1, 2), jnp.swapaxes(pair_mask, 1, 2)), 1, 2)
    beta_rows = alignment.masked_softmax(m, pair_mask)  # [B, S, T], eq. 7
    num_words = jnp.sum(doc_mask, axis=1, dtype=_F32)  # [B], n of eq. 8
    beta = jnp.sum(beta_rows, axis=1) / jnp.maximum(num_words, 1.0)[:, None]  # [B, T]
    scores = jnp.einsum("BST,BT->BS", alpha, beta)  # [B, S], eq. 9
    return scores, alpha, beta


def pointer_sum(
    weights: jax.Array, document_ids: jax.Array, candidate_ids: jax.Array, candidate_mask: jax.Array | None = None
) -> jax.Array:
    """Kadlec et al. 2016 (arXiv:1603.01547), eq. 3 (Cui et al. 2017, arXiv:1607.04423, eq. 10): the attention
    a candidate gets is the sum of the weights of all its occurrences in the document.

    Only the weights at positions whose id equals the candidate's are read (selected, not multiplied by 0), so
    NaN elsewhere reaches neither the candidate's probability nor its gradient. A candidate absent from the
    document gets 0; two equal candidate ids get the same probability.

    Args:
      weights: [B, S] floating, attention over the document tokens.
      document_ids: [B, S] integer, the document's token ids.
      candidate_ids: [B, C] integer, the candidate answers' ids.
      candidate_mask: [B, C] bool (True = a real candidate), or None for candidate_ids != 0.

    Returns:
      probs: [B, C] float32, P(c | q, d); exactly 0 for masked candidates.

    Raises:
      ValueError: if an argument is not rank 2, document_ids is not the weights' [B, S], candidate_ids has
        another B, or candidate_mask is not [B, C] (the message names the shapes).
      TypeError: for non-floating weights, non-integer ids or a non-boolean candidate_mask.
    """
    _checks.rank("weights", weights, 2)
    _checks.floating("weights", weights)
    _checks.rank("document_ids", document_ids, 2)
    _checks.integer("document_ids", document_ids)
    _checks.rank("candidate_ids", candidate_ids, 2)
    _checks.integer("candidate_ids", candidate_ids)
    if jnp.shape(document_ids) != jnp.shape(weights):
        raise ValueError(f"document_ids must be [B, S] like the weights: document_ids.shape="
                         f"{tuple(jnp.shape(document_ids))} weights.shape={tuple(jnp.shape(weights))}")
    _checks.same_batch(weights=weights, candidate_ids=candidate_ids)
    candidate_ids = jnp.asarray(candidate_ids)
    if candidate_mask is None:
        candidate_mask = candidate_ids != 0
    else:
        _check_mask("candidate_mask", candidate_mask, tuple(candidate_ids.shape), "[B, C]",
                    f"candidate_ids.shape={tuple(candidate_ids.shape)}")
    match = jnp.asarray(document_ids)[:, :, None] == candidate_ids[:, None, :]  # [B, S, C]
    picked = jnp.where(match, jnp.asarray(weights, _F32)[:, :, None], 0.0)  # [B, S, C]
    return jnp.where(candidate_mask, jnp.sum(picked, axis=1), 0.0)  # [B, C]


class AttentionSum(nn.Module):
    """Kadlec et al. 2016's attention over the document (arXiv:1603.01547, eq. 2); no parameters."""

    @nn.compact
    def __call__(self, document: jax.Array, query: jax.Array, document_mask: jax.Array) -> jax.Array:
        """`attention_sum`: document [B, S, D], query [B, D], document_mask [B, S] -> weights [B, S] float32.

        Raises:
          ValueError, TypeError: as `attention_sum`.
        """
        return attention_sum(document, query, document_mask)


class AttentionOverAttention(nn.Module):
    """Cui et al. 2017's attention-over-attention (arXiv:1607.04423, eqs. 5-9); no parameters."""

    @nn.compact
    def __call__(self, document: jax.Array, query: jax.Array, document_mask: jax.Array,
                 query_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`attention_over_attention`: document [B, S, D], query [B, T, D], masks [B, S] / [B, T] ->
        (scores [B, S], alpha [B, S, T], beta [B, T]), all float32.

        Raises:
          ValueError, TypeError: as `attention_over_attention`.
        """
        return attention_over_attention(document, query, document_mask, query_mask)
