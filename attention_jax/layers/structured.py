"""Structured self-attention: r attention hops that pool a sentence into a matrix, with a redundancy penalty.

Lin et al. 2017, "A Structured Self-Attentive Sentence Embedding", arXiv:1703.03130, §2:

    A = softmax(W_s2 tanh(W_s1 H^T))       eq. 6: A [r, n], one distribution over the n tokens per hop
    M = A H                                 §2.1: the sentence embedding [r, 2u]
    P = || A A^T - I ||_F^2                 eq. 8: pushes the hops apart; I is the r x r identity

H [n, 2u] holds the BiLSTM states, W_s1 [d_a, 2u] and W_s2 [r, d_a]. The softmax runs over the valid tokens
only. Several public ports compute (A A^T - 1) with a scalar 1 instead of the identity matrix, which
penalises every off-diagonal product towards 1; `frobenius_penalty` subtracts I.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment, axes
from attention_jax.layers.feedforward import check_pool_inputs

__all__ = ["StructuredSelfAttention", "frobenius_penalty", "structured_self_attention"]

_F32 = jnp.float32


def structured_self_attention(
    inputs: jax.Array,
    w_s1: jax.Array,
    w_s2: jax.Array,
    mask: jax.Array | None = None,
    *,
    normalizer: str = "softmax",
) -> tuple[jax.Array, jax.Array]:
    """Lin et al. 2017 (arXiv:1703.03130), eq. 6 and M = A H, batched.

    Masked tokens (even NaN) reach neither the embedding nor any gradient; a sentence with no valid token gets
    zero weights and a zero embedding.

    Args:
      inputs: [B, T, D] floating, H.
      w_s1: [D, A] floating, W_s1^T (A = d_a).
      w_s2: [A, R] floating, W_s2^T (R = r hops).
      mask: None or [B, T] bool, True = a real token.
      normalizer: a name in `alignment.NORMALIZERS`.

    Returns:
      embedding: [B, R, D] in the inputs' dtype, M.
      weights: [B, R, T] float32, A.

    Raises:
      ValueError: for shapes that do not fit (named in the message) or an unknown normalizer.
      TypeError: for non-floating inputs or weights, or a non-boolean mask.
    """
    inputs, mask = check_pool_inputs(inputs, mask)  # masked tokens zeroed
    _checks.rank("w_s1", w_s1, 2)
    _checks.rank("w_s2", w_s2, 2)
    _checks.floating("w_s1", w_s1)
    _checks.floating("w_s2", w_s2)
    if w_s1.shape[0] != inputs.shape[-1] or w_s2.shape[0] != w_s1.shape[1]:
        raise ValueError(f"w_s1 must be [D, A] and w_s2 [A, R] for inputs [B, T, D]: {inputs.shape=} "
                         f"{w_s1.shape=} {w_s2.shape=}")
    _checks.choice("normalizer", normalizer, alignment.NORMALIZERS)
    hidden = jnp.tanh(jnp.einsum("BTD,DA->BTA", inputs.astype(_F32), w_s1.astype(_F32)))  # [B, T, A]
    logits = jnp.einsum("BTA,AR->BRT", hidden, w_s2.astype(_F32))  # [B, R, T]
    weights = alignment.normalize(logits, jnp.broadcast_to(mask[:, None, :], logits.shape), normalizer)  # [B, R, T]
    embedding = jnp.einsum("BRT,BTD->BRD", weights, inputs.astype(_F32))
    return embedding.astype(inputs.dtype), weights


def frobenius_penalty(weights: jax.Array) -> jax.Array:
    """Lin et al. 2017 (arXiv:1703.03130), eq. 8: P = ||A A^T - I||_F^2 per example.

    A sentence with no valid token has all-zero weights; its penalty is defined as 0 (there is nothing to
    diversify), not ||I||_F^2 = R.

    Args:
      weights: [B, R, T] floating, the hops' weights A.

    Returns:
      [B] float32.

    Raises:
      ValueError: if weights are not rank 3.
      TypeError: if weights are not floating.
    """
    _checks.rank("weights", weights, 3)
    _checks.floating("weights", weights)
    weights = weights.astype(_F32)
    gram = jnp.einsum("BRT,BQT->BRQ", weights, weights)  # [B, R, R]
    eye = jnp.eye(weights.shape[1], dtype=_F32)
    penalty = jnp.sum(jnp.square(gram - eye), axis=(1, 2))
    alive = jnp.any(weights != 0, axis=(1, 2))
    return jnp.where(alive, penalty, 0.0)


class StructuredSelfAttention(nn.Module):
    """Lin et al. 2017's r-hop self-attentive embedding (arXiv:1703.03130, §2).

    Parameters: "w_s1" [D, A] (W_s1^T, no bias, as in eq. 6) and "w_s2" [A, R] (W_s2^T).

    Attributes:
      hops: R = r >= 1 (the paper uses 30).
      hidden_dim: A = d_a >= 1 (the paper uses 350).
      normalizer: a name in `alignment.NORMALIZERS`.
      kernel_init: the initialiser of both matrices.
      param_dtype: the parameter dtype, float32 by default.
    """

    hops: int
    hidden_dim: int
    normalizer: str = "softmax"
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Embeds each sentence as R pooled vectors.

        Args:
          inputs: [B, T, D] floating, H.
          mask: None or [B, T] bool, True = a real token.

        Returns:
          embedding: [B, R, D] in the inputs' dtype, M = A H.
          weights: [B, R, T] float32, A.
          penalty: [B] float32, ||A A^T - I||_F^2 (eq. 8); the loss adds its mean times a coefficient.

        Raises:
          ValueError: if inputs are not [B, T, D] with D >= 1, the mask is not [B, T], or the attributes are bad.
          TypeError: for non-floating inputs or a non-boolean mask.
        """
        hops = _checks.int_at_least("hops", self.hops, 1)
        hidden = _checks.int_at_least("hidden_dim", self.hidden_dim, 1)
        check_pool_inputs(inputs, mask)
        w_s1 = self.param("w_s1", axes.partitioned(self.kernel_init, (axes.EMBED, axes.MLP)),
                          (inputs.shape[-1], hidden), self.param_dtype)
        w_s2 = self.param("w_s2", axes.partitioned(self.kernel_init, (axes.MLP, None)), (hidden, hops),
                          self.param_dtype)
        embedding, weights = structured_self_attention(inputs, w_s1, w_s2, mask, normalizer=self.normalizer)
        return embedding, weights, frobenius_penalty(weights)
