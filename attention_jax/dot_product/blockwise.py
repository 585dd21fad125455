"""Memory-efficient (blockwise) dot-product attention: a scan over key/value chunks with an online softmax.

Rabe & Staats 2021, "Self-attention does not need O(n^2) memory", arXiv:2112.05682; Dao et al. 2022,
"FlashAttention", arXiv:2205.14135, §3.1 Algorithm 1 (forward) and Appendix B (backward). Pure JAX: one
`jax.lax.scan` over chunks of `block_k` keys keeps a running max, a running sum and a running weighted value
sum in float32, so no [T, S] array is ever built unless the caller passes a dense `mask` or `bias`. A
`jax.custom_vjp` recomputes each chunk's logits from (q, k, v, out, lse) in a second scan, so the backward
does not store the [T, S] weights either.

Same layout, mask conventions and empty-row semantics as `attention_jax.dot_product.dot_product_attention`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks
from attention_jax.core import alignment, masks
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.base import AttentionCall, Backend, BackendOutput, check_bias, weights_from_lse

_F32 = jnp.float32
EMPTY_ROW_LSE = alignment.EMPTY_ROW_LSE

__all__ = ["BlockwiseBackend", "blockwise_attention"]


class _Config(NamedTuple):
    """The static (hashable) part of a call."""

    scale: float
    block_k: int
    num_blocks: int


def _grouped(x: jax.Array, kv_heads: int, groups: int) -> jax.Array:
    """[B|1, N|1, T, C] -> [B|1, K|1, G|1, T, C]."""
    b, n, t, c = x.shape
    return x[:, :, None] if n == 1 else x.reshape(b, kv_heads, groups, t, c)


def _chunk_valid(cfg: _Config, j: jax.Array, aux: dict, num_queries: int, kv_heads: int, groups: int) -> jax.Array:
    """Bool broadcastable to [B, K, G, T, C]: which (query, key) pairs of chunk j may attend.

    `AttentionMask.mask_for` builds it from positions, lengths and segment ids, and gathers only the chunk's
    columns of a dense mask; keys past S (the padding of the last chunk) are never valid.
    """
    k_pos = j * cfg.block_k + jnp.arange(cfg.block_k)  # [C]
    valid = aux["mask"].mask_for(k_pos=k_pos)  # [B|1, N|1, T, C]
    return _grouped(valid, kv_heads, groups)  # [B|1, K|1, G|1, T, C]


def _chunk_logits(cfg, j, q, k_chunk, aux, kv_heads, groups):
    """Scaled, biased float32 logits [B, K, G, T, C] of chunk j; q is [B, T, K, G, H] float32."""
    logits = jnp.einsum("BTKGH,BCKH->BKGTC", q, k_chunk) * jnp.asarray(cfg.scale, _F32)  # [B, K, G, T, C]
    if aux["bias"] is not None:
        chunk = jax.lax.dynamic_slice_in_dim(aux["bias"], j * cfg.block_k, cfg.block_k, axis=3)  # [B|1,N|1,T,C]
        logits = logits + _grouped(chunk.astype(_F32), kv_heads, groups)
    return logits


def _live_keys(valid: jax.Array, batch: int) -> jax.Array:
    """[B, C, 1, 1] bool: keys of the chunk that some query attends (the others may hold NaN padding)."""
    live = jnp.any(valid, axis=(1, 2, 3))  # [B|1, C]
    return jnp.broadcast_to(live, (batch, live.shape[-1]))[:, :, None, None]


def _chunks(x: jax.Array, cfg: _Config) -> jax.Array:
    """[B, Sp, K, H] -> [num_blocks, B, C, K, H], the scan's xs."""
    b, _, kh, h = x.shape
    return jnp.moveaxis(x.reshape(b, cfg.num_blocks, cfg.block_k, kh, h), 1, 0)


def _forward(cfg: _Config, query, key, value, aux):
    """Algorithm 1 of arXiv:2205.14135 with one query block. Returns out [B,T,N,H] f32, lse [B,K,G,T] f32."""
    batch, num_queries, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    q = query.astype(_F32).reshape(batch, num_queries, kv_heads, groups, head_dim)  # [B, T, K, G, H]

    def body(carry, xs):
        row_max, row_sum, acc = carry  # [B, K, G, T], [B, K, G, T], [B, K, G, T, H]
        j, k_chunk, v_chunk = xs  # [], [B, C, K, H], [B, C, K, H]
        valid = _chunk_valid(cfg, j, aux, num_queries, kv_heads, groups)
        live = _live_keys(valid, batch)
        # jnp.where, not a product with 0: a NaN in an unused key or value must not reach any valid row.
        k_chunk = jnp.where(live, k_chunk.astype(_F32), 0.0)
        v_chunk = jnp.where(live, v_chunk.astype(_F32), 0.0)
        logits = _chunk_logits(cfg, j, q, k_chunk, aux, kv_heads, groups)  # [B, K, G, T, C]
        chunk_max = jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1)  # [B, K, G, T]
        new_max = jnp.maximum(row_max, chunk_max)
        # -inf only while a row has seen no valid key yet; a finite stand-in avoids (-inf) - (-inf).
        safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        p = jnp.where(valid, jnp.exp(logits - safe_max[..., None]), 0.0)  # [B, K, G, T, C]
        alpha = jnp.exp(row_max - safe_max)  # [B, K, G, T]; 0 when row_max = -inf
        row_sum = alpha * row_sum + jnp.sum(p, axis=-1)
        acc = alpha[..., None] * acc + jnp.einsum("BKGTC,BCKH->BKGTH", p, v_chunk)
        return (new_max, row_sum, acc), None

    init = (
        jnp.full((batch, kv_heads, groups, num_queries), -jnp.inf, _F32),
        jnp.zeros((batch, kv_heads, groups, num_queries), _F32),
        jnp.zeros((batch, kv_heads, groups, num_queries, value.shape[-1]), _F32),
    )
    xs = (jnp.arange(cfg.num_blocks), _chunks(key, cfg), _chunks(value, cfg))
    (row_max, row_sum, acc), _ = jax.lax.scan(body, init, xs)
    has_key = row_sum > 0
    safe_sum = jnp.where(has_key, row_sum, 1.0)
    out = jnp.where(has_key[..., None], acc / safe_sum[..., None], 0.0)  # [B, K, G, T, H]
    safe_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    lse = jnp.where(has_key, jnp.log(safe_sum) + safe_max, EMPTY_ROW_LSE)  # [B, K, G, T]
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, num_queries, heads, value.shape[-1])  # [B, T, N, H]
    return out, lse


def _attention_fwd(cfg, query, key, value, aux):
    out, lse = _forward(cfg, query, key, value, aux)
    return (out.astype(query.dtype), lse), (query, key, value, aux, out, lse)


def _attention_bwd(cfg, residuals, cotangents):
    """Appendix B of arXiv:2205.14135: dS = P * (dP - delta), delta = rowsum(dO * O), per chunk."""
    query, key, value, aux, out, lse = residuals
    d_out, d_lse = cotangents  # [B, T, N, H], [B, K, G, T]
    batch, num_queries, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    value_dim = value.shape[-1]
    scale = jnp.asarray(cfg.scale, _F32)

    row_live = lse != EMPTY_ROW_LSE  # [B, K, G, T]
    live_q = jnp.transpose(row_live, (0, 3, 1, 2))[..., None]  # [B, T, K, G, 1]
    # Rows with no valid key: zero their query and output cotangent, so NaN padding never reaches dK, dV.
    q = jnp.where(live_q, query.astype(_F32).reshape(batch, num_queries, kv_heads, groups, head_dim), 0.0)
    d_o = jnp.where(live_q, d_out.astype(_F32).reshape(batch, num_queries, kv_heads, groups, value_dim), 0.0)
    o = out.reshape(batch, num_queries, kv_heads, groups, value_dim)  # [B, T, K, G, H] f32
    delta = jnp.einsum("BTKGH,BTKGH->BKGT", d_o, jnp.where(live_q, o, 0.0))  # [B, K, G, T]
    d_lse = jnp.where(row_live, d_lse.astype(_F32), 0.0)
    safe_lse = jnp.where(row_live, lse, 0.0)

    def body(d_q, xs):
        j, k_chunk, v_chunk = xs  # [], [B, C, K, H], [B, C, K, H]
        valid = _chunk_valid(cfg, j, aux, num_queries, kv_heads, groups) & row_live[..., None]
        live = _live_keys(valid, batch)
        k_chunk = jnp.where(live, k_chunk.astype(_F32), 0.0)
        v_chunk = jnp.where(live, v_chunk.astype(_F32), 0.0)
        logits = _chunk_logits(cfg, j, q, k_chunk, aux, kv_heads, groups)  # [B, K, G, T, C]
        p = jnp.where(valid, jnp.exp(logits - safe_lse[..., None]), 0.0)  # [B, K, G, T, C]
        d_v = jnp.einsum("BKGTC,BTKGH->BCKH", p, d_o)  # [B, C, K, H]
        d_p = jnp.einsum("BTKGH,BCKH->BKGTC", d_o, v_chunk)  # [B, K, G, T, C]
        # d lse / d logits = P, so a cotangent on lse joins delta's row term.
        d_s = p * (d_p - delta[..., None] + d_lse[..., None])  # [B, K, G, T, C]
        d_q = d_q + jnp.einsum("BKGTC,BCKH->BTKGH", d_s, k_chunk) * scale
        d_k = jnp.einsum("BKGTC,BTKGH->BCKH", d_s, q) * scale  # [B, C, K, H]
        return d_q, (d_k, d_v)

    xs = (jnp.arange(cfg.num_blocks), _chunks(key, cfg), _chunks(value, cfg))
    d_q, (d_k, d_v) = jax.lax.scan(body, jnp.zeros_like(q), xs)
    padded = cfg.num_blocks * cfg.block_k

    def unchunk(x, like):  # [num_blocks, B, C, K, H] -> [B, Sp, K, H]
        return jnp.moveaxis(x, 0, 1).reshape(batch, padded, kv_heads, x.shape[-1]).astype(like.dtype)

    d_q = d_q.reshape(batch, num_queries, heads, head_dim).astype(query.dtype)
    # No gradient flows to the mask, lengths, ids or bias (the bias is stop_gradient'ed by the caller).
    d_aux = jax.tree.map(_zero_cotangent, aux)
    return d_q, unchunk(d_k, key), unchunk(d_v, value), d_aux


def _zero_cotangent(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


_attention = jax.custom_vjp(lambda cfg, q, k, v, aux: _attention_fwd(cfg, q, k, v, aux)[0], nondiff_argnums=(0,))
_attention.defvjp(_attention_fwd, _attention_bwd)


def _blockwise(query, key, value, bias, mask: AttentionMask, scale: float, block_k: int):
    """The computation on checked inputs (mask bound to them): (output [B, T, N, H], lse [B, N, T])."""
    batch, num_queries, heads, _ = query.shape
    num_keys = key.shape[1]
    if mask.is_empty:
        return masks.empty_attention(query, value)
    block = max(1, min(block_k, num_keys))
    num_blocks = -(-num_keys // block)
    pad = num_blocks * block - num_keys
    cfg = _Config(float(scale), block, num_blocks)

    def pad_keys(x, axis):
        if pad == 0:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        return jnp.pad(x, widths)

    aux: dict[str, Any] = {
        "mask": mask,
        "bias": None if bias is None else pad_keys(jax.lax.stop_gradient(jnp.asarray(bias)), 3),
    }
    output, lse = _attention(cfg, query, pad_keys(key, 1), pad_keys(value, 1), aux)
    return output, lse.reshape(batch, heads, num_queries)


def blockwise_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | AttentionMask | None = None,
    *,
    scale: float | None = None,
    block_k: int = 512,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention softmax(Q K^T * scale + bias) V in O(T H + block_k) memory per head.

    Rabe & Staats 2021, arXiv:2112.05682; Dao et al. 2022 (FlashAttention), arXiv:2205.14135, §3.1
    Algorithm 1 for the forward and Appendix B for the backward, written as `jax.lax.scan`s over chunks of
    `block_k` keys. The forward keeps a running max m, sum l and weighted value sum per query row (online
    softmax, all float32); a `jax.custom_vjp` backward recomputes each chunk's logits from (q, k, v, out, lse)
    with delta = rowsum(dO * O) and dS = P * (dP - delta), so neither pass stores a [T, S] array. Grouped-query
    attention (N = G K) reshapes the query to [B, T, K, G, H] and never repeats keys or values.

    Masks follow `attention_jax.dot_product_attention`: `mask` is a bool array (True = attend, jax.nn's
    meaning) or an `attention_jax.core.masks.AttentionMask` holding causality, a local window, lengths, segment
    ids and/or a dense mask, top-left aligned. The causal, window, length and segment masks are built per chunk
    from positions (`AttentionMask.mask_for`); only a dense mask or `bias` is [.., T, S], and only its chunk's
    columns are read inside the scan. S is padded to a multiple of `block_k` internally and the padding is
    masked.

    A query row with no valid key gets a zero output, zero (finite) gradients and lse = `EMPTY_ROW_LSE`
    (finfo(float32).min); a call with T, S, B or N = 0 returns that for every row. Keys, values and queries
    that no valid pair uses never reach the output or the gradients of the valid rows, even when they hold NaN.

    Args:
      query: [B, T, N, H] floating.
      key: [B, S, K, H] floating, K divides N.
      value: [B, S, K, H] floating.
      bias: None or [B or 1, N or 1, T, S] floating, added to the scaled logits in float32. It is treated as a
        constant: no gradient flows to it (it is wrapped in `jax.lax.stop_gradient`).
      mask: None, a [B or 1, N or 1, T, S] bool array, or an `AttentionMask`.
      scale: a Python float, the logit scale; default 1 / sqrt(H).
      block_k: a positive int, the number of keys per chunk (clamped to S).
      return_lse: a bool; also return the log-sum-exp.

    Returns:
      output [B, T, N, H] in the query dtype; with `return_lse`, the pair (output, lse) where lse is
      [B, N, T] float32, log sum_s exp(logits) over the valid keys, `EMPTY_ROW_LSE` for an empty row.

    Raises:
      ValueError: for wrong ranks; B, S, K or H that differ between query, key and value; N % K != 0; H = 0;
        mask, bias, lengths or segment id shapes that do not fit; a bad local window; a block_k that is not a
        positive int; a scale that is not a finite real number.
      TypeError: for non-array arguments, non-floating query/key/value/bias, a non-boolean mask, non-integer
        lengths or ids, or flags that are not bools.
    """
    mask = masks.as_attention_mask(mask).bind(query, key, value)
    batch, heads, num_queries, num_keys = mask.shape
    check_bias(bias, batch, heads, num_queries, num_keys)
    block_k = _checks.positive_int("block_k", block_k)
    return_lse = _checks.flag("return_lse", return_lse)
    scale = masks.attention_scale(scale, query.shape[-1])
    output, lse = _blockwise(query, key, value, bias, mask, scale, block_k)
    return (output, lse) if return_lse else output


@dataclasses.dataclass(frozen=True)
class BlockwiseBackend(Backend):
    """The "blockwise" backend: `blockwise_attention`, pure JAX, O(S) memory, any device; everything but
    dropout. Weights, when asked for, are recomputed from its lse.

    Attributes:
      block_k: keys per chunk (a positive int).
    """

    block_k: int = 512
    name = "blockwise"
    softmax_only_reason = (
        "merges key blocks through a running max and sum (the online softmax); sparsemax and entmax need each "
        "row's threshold tau over all of its logits at once")

    def __post_init__(self):
        _checks.positive_int("block_k", self.block_k)

    def __call__(self, call: AttentionCall) -> BackendOutput:
        output, lse = _blockwise(call.query, call.key, call.value, call.bias, call.mask, call.scale, self.block_k)
        weights = weights_from_lse(call, lse) if call.return_weights else None
        return output, weights, lse

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        reason = self.normalizer_reason(call)
        if reason:
            return False, reason
        if call.dropout_rate > 0.0:
            return False, "blockwise has no attention dropout"
        return True, ""
