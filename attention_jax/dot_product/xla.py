"""The "xla" backend: eq. 1 of arXiv:1706.03762 with einsums and one dense mask.

Materialises the float32 [B, N, T, S] logits; supports everything (bias, every mask source, dropout, weights,
lse, and the sparse normalisers, which need each row's logits at once). Query rows with no valid key, and
key/value rows that no query attends, are zeroed with `where` before any product, so NaN padding there never
reaches the output or the gradients of live rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from attention_jax.core import alignment
from attention_jax.dot_product.base import AttentionCall, Backend, BackendOutput

__all__ = ["XlaBackend", "xla_attention"]

_F32 = jnp.float32


def xla_attention(query, key, value, bias, mask, *, scale, dropout_rate=0.0, dropout_rng=None,
                  normalizer="softmax") -> BackendOutput:
    """softmax(Q K^T * scale + bias) V on checked inputs; rows with no valid key give zeros and EMPTY_ROW_LSE.

    With `normalizer` "sparsemax" or "entmax15" the softmax is replaced by that sparse normaliser
    (`attention_jax.core.sparse`); lse is then None, since it belongs to the softmax.

    Args:
      query: [B, T, N, H]; key, value: [B, S, K, H]; bias: None or [B|1, N|1, T, S]; mask: None or
        [B|1, N|1, T, S] bool (every mask source folded in); scale: a Python float; dropout_rate: in [0, 1);
        dropout_rng: a PRNG key when dropout_rate > 0; normalizer: a name in `alignment.NORMALIZERS`.

    Returns:
      (output [B, T, N, H] query dtype, weights [B, N, T, S] float32 after dropout, lse [B, N, T] float32, or
      None for a normalizer other than the softmax).
    """
    batch, num_queries, heads, head_dim = query.shape
    num_keys, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads

    def grouped(x):  # [B|1, N|1, T, S] -> [B|1, K|1, G|1, T, S]
        b, n = x.shape[:2]
        return x[:, :, None] if n == 1 else x.reshape(b, kv_heads, groups, num_queries, num_keys)

    if mask is not None:
        # Zero the query rows and key/value rows that nothing attends to: their weights are 0, but 0 * NaN
        # (padding) would still leak into the output and into the gradients of the valid rows.
        live_q = jnp.any(mask, axis=(1, 3))  # [B|1, T]
        live_k = jnp.any(mask, axis=(1, 2))  # [B|1, S]
        query = jnp.where(live_q[:, :, None, None], query, jnp.zeros((), query.dtype))
        key = jnp.where(live_k[:, :, None, None], key, jnp.zeros((), key.dtype))
        value = jnp.where(live_k[:, :, None, None], value, jnp.zeros((), value.dtype))

    q = query.astype(_F32).reshape(batch, num_queries, kv_heads, groups, head_dim)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key.astype(_F32)) * jnp.asarray(scale, _F32)  # [B, K, G, T, S]
    if bias is not None:
        logits = logits + grouped(bias.astype(_F32))
    full = None if mask is None else jnp.broadcast_to(grouped(mask), logits.shape)  # [B, K, G, T, S]
    if normalizer == "softmax":
        weights, lse = alignment.masked_softmax_with_lse(logits, full)  # [B, K, G, T, S], [B, K, G, T]
    else:
        weights, lse = alignment.normalize(logits, full, normalizer), None
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", weights, value.astype(_F32))  # [B, T, K, G, H]
    out = out.reshape(batch, num_queries, heads, value.shape[-1]).astype(query.dtype)
    weights = weights.reshape(batch, heads, num_queries, num_keys)  # [B, N, T, S]
    if lse is not None:
        lse = lse.reshape(batch, heads, num_queries)  # [B, N, T]
    return out, weights, lse


@dataclasses.dataclass(frozen=True)
class XlaBackend(Backend):
    """The "xla" backend: materialises the logits; supports every call."""

    name = "xla"
    normalizers = alignment.NORMALIZERS

    def __call__(self, call: AttentionCall) -> BackendOutput:
        return xla_attention(call.query, call.key, call.value, call.bias, call.mask.dense_mask(), scale=call.scale,
                             dropout_rate=call.dropout_rate, dropout_rng=call.dropout_rng,
                             normalizer=call.normalizer)

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        del call
        return True, ""
