"""Multi-step attention of ConvS2S (Gehring et al. 2017, arXiv:1705.03122, §3.3, eqs. 1-2, §3.4 scaling).

Every decoder layer l attends on its own: d_i^l = W_d^l h_i^l + b_d^l + g_i; a_ij^l = softmax_j(d_i^l · z_j^u)
over the encoder outputs z^u, and c_i^l = sum_j a_ij^l (z_j^u + e_j), scaled by m sqrt(1/m). The model around
it is `attention_jax.models.convs2s`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment, axes, masks

Array = jax.Array

_F32 = jnp.float32

__all__ = ["MultiStepAttention", "multistep_attention"]


def multistep_attention(
    decoder_state: Array,
    target_embedding: Array,
    encoder_out: Array,
    encoder_in: Array,
    *,
    w_d: Array,
    b_d: Array,
    mask: Array | None = None,
    scale_context: bool = True,
) -> tuple[Array, Array]:
    """One decoder layer's multi-step attention of ConvS2S (arXiv:1705.03122, §3.3 eqs. 1-2 and §3.4).

    d_i = W_d h_i + b_d + g_i,   a_ij = softmax_j(d_i · z_j),   c_i = sum_j a_ij (z_j + e_j),
    and, with ``scale_context``, c_i is multiplied by m sqrt(1/m) = sqrt(m), m the number of valid source
    positions of the sentence (§3.4: undoes the variance lost by averaging m vectors with uniform weights).
    Here ``encoder_in`` is the value vector itself, z_j + e_j (as `ConvS2S.encode` returns it), not e_j alone.

    Logits and softmax run in float32 through `attention_jax.core.alignment.masked_softmax`. Masked source
    positions are zeroed before any product, so NaN or inf stored there reaches neither the output nor the
    gradients; a sentence with no valid source position gets zero weights, a zero context and zero gradients
    (its queries are zeroed too). S = 0 gives a zero context and empty weights; T = 0 empty outputs.

    Args:
      decoder_state: [B, T, C] floating, h_i^l, the layer's GLU output.
      target_embedding: [B, T, E] floating, g_i, the embedding of the previous target element.
      encoder_out: [B, S, E] floating, z_j^u, the keys.
      encoder_in: [B, S, E] floating, z_j^u + e_j, the values.
      w_d: [C, E] floating, W_d^l.
      b_d: [E] floating, b_d^l.
      mask: None (every key valid) or [B, S] bool, True = valid source position.
      scale_context: multiply c_i by sqrt(m) (§3.4).

    Returns:
      context: [B, T, E] in the result dtype of encoder_out and encoder_in.
      weights: [B, T, S] float32, a_ij; exactly 0 at masked positions.

    Raises:
      ValueError: wrong ranks, batch sizes that differ, T differing between decoder_state and target_embedding,
        encoder_out and encoder_in of different shapes, w_d / b_d / mask shapes that do not fit, C or E = 0.
      TypeError: inputs that are not floating arrays, a non-boolean mask, or a scale_context that is not a bool.
    """
    for name, x in (("decoder_state", decoder_state), ("target_embedding", target_embedding),
                    ("encoder_out", encoder_out), ("encoder_in", encoder_in)):
        _checks.rank(name, x, 3)
        _checks.floating(name, x)
    _checks.same_batch(decoder_state=decoder_state, target_embedding=target_embedding, encoder_out=encoder_out)
    if decoder_state.shape[1] != target_embedding.shape[1]:
        raise ValueError(f"decoder_state and target_embedding lengths differ: {decoder_state.shape=} "
                         f"{target_embedding.shape=}")
    if encoder_out.shape != encoder_in.shape:
        raise ValueError(f"encoder_out and encoder_in shapes differ: {encoder_out.shape=} {encoder_in.shape=}")
    batch, num_keys, features = encoder_out.shape
    if features == 0 or decoder_state.shape[-1] == 0:
        raise ValueError(f"decoder_state and encoder_out need at least one feature: {decoder_state.shape=} "
                         f"{encoder_out.shape=}")
    if target_embedding.shape[-1] != features:
        raise ValueError(f"target_embedding and encoder_out sizes differ: {target_embedding.shape=} "
                         f"{encoder_out.shape=}")
    _checks.floating("w_d", w_d)
    _checks.floating("b_d", b_d)
    _checks.shape("w_d", w_d, (decoder_state.shape[-1], features))
    _checks.shape("b_d", b_d, (features,))
    if mask is not None:
        _checks.boolean("mask", mask)
        _checks.shape("mask", mask, (batch, num_keys))
    scale_context = _checks.flag("scale_context", scale_context)

    out_dtype = jnp.result_type(encoder_out, encoder_in)
    keys = encoder_out.astype(_F32)  # [B,S,E]
    values = encoder_in.astype(_F32)  # [B,S,E]
    decoder_state = decoder_state.astype(_F32)  # [B,T,C]
    target_embedding = target_embedding.astype(_F32)  # [B,T,E]
    if mask is not None:
        # Zero padding first, and the queries of a sentence with no valid source: 0 * NaN would otherwise reach
        # the logits and the context (and their gradients, d W_d included).
        keys = jnp.where(mask[..., None], keys, 0.0)
        values = jnp.where(mask[..., None], values, 0.0)
        has_key = jnp.any(mask, axis=-1)[:, None, None]  # [B,1,1]
        decoder_state = jnp.where(has_key, decoder_state, 0.0)
        target_embedding = jnp.where(has_key, target_embedding, 0.0)
    query = (jnp.einsum("BTC,CE->BTE", decoder_state, w_d.astype(_F32))
             + b_d.astype(_F32) + target_embedding)  # d_i, [B,T,E]
    logits = jnp.einsum("BTE,BSE->BTS", query, keys)  # [B,T,S]
    num_queries = decoder_state.shape[1]
    full_mask = None if mask is None else jnp.broadcast_to(mask[:, None, :], (batch, num_queries, num_keys))
    weights = alignment.masked_softmax(logits, full_mask)  # [B,T,S] float32
    context = jnp.einsum("BTS,BSE->BTE", weights, values)  # [B,T,E]
    if scale_context:
        if mask is None:
            valid = jnp.full((batch,), float(num_keys), _F32)
        else:
            valid = jnp.sum(mask, axis=-1).astype(_F32)  # [B]
        context = context * (valid * jnp.sqrt(1.0 / jnp.maximum(valid, 1.0)))[:, None, None]
    return context.astype(out_dtype), weights


class MultiStepAttention(nn.Module):
    """Owns W_d [C, E] and b_d [E] of one decoder layer and calls `multistep_attention` (arXiv:1705.03122, §3.3).

    Attributes:
      scale_context: see `multistep_attention`; a bool.
      param_dtype: dtype of the parameters.

    Raises:
      TypeError: at construction, if scale_context is not a bool.
    """

    scale_context: bool = True
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.flag("MultiStepAttention.scale_context", self.scale_context)
        super().__post_init__()

    @nn.compact
    def __call__(self, decoder_state: Array, target_embedding: Array, encoder_out: Array, encoder_in: Array,
                 mask: Array | None = None) -> tuple[Array, Array]:
        """See `multistep_attention` for the arguments, returns and errors; C and E are read from the inputs."""
        _checks.rank("decoder_state", decoder_state, 3)
        _checks.rank("encoder_out", encoder_out, 3)
        c, e = decoder_state.shape[-1], encoder_out.shape[-1]
        if c == 0 or e == 0:
            raise ValueError(f"decoder_state and encoder_out need at least one feature: {decoder_state.shape=} "
                             f"{encoder_out.shape=}")
        w_d = self.param("w_d", axes.partitioned(nn.initializers.lecun_normal(), (axes.MLP, axes.EMBED)), (c, e),
                         self.param_dtype)  # [C, E]
        b_d = self.param("b_d", axes.partitioned(nn.initializers.zeros, (axes.EMBED,)), (e,), self.param_dtype)
        return multistep_attention(decoder_state, target_embedding, encoder_out, encoder_in, w_d=w_d, b_d=b_d,
                                   mask=mask, scale_context=self.scale_context)
