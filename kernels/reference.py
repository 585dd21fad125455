"""The float64 numpy reference the kernels are checked against: forward, lse and the closed-form VJP.

Vaswani et al. 2017, arXiv:1706.03762, eq. 1: O = softmax(scale Q K^T) V, written densely with every mask
spelled out position by position, in float64, with no JAX in it (so it shares no code with the kernels).
The VJP is the closed form used by FlashAttention (Dao et al. 2022, arXiv:2205.14135, Appendix B.2):
dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = scale dS K, dK = scale dS^T Q, summed over
the G query heads of each key/value head. Rows with no valid key give zero output, zero gradients and
lse = -inf here (the kernels report `EMPTY_ROW_LSE` instead).
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_attention", "reference_mask", "reference_vjp"]


def reference_mask(batch: int, num_queries: int, num_keys: int, *, is_causal=False, query_lengths=None,
                   key_lengths=None, segment_ids=None, local_window=None) -> np.ndarray:
    """bool [B, T, S]: True where query t may attend key s (top-left alignment).

    Args:
      batch, num_queries, num_keys: B, T, S.
      is_causal: s <= t. local_window: None or (left, right): t - left <= s <= t + right (None = unbounded).
      query_lengths, key_lengths: None or [B] ints. segment_ids: None, (q [B, T], kv [B, S]) or one [B, T].
    """
    t = np.arange(num_queries)[:, None]
    s = np.arange(num_keys)[None, :]
    mask = np.ones((batch, num_queries, num_keys), bool)
    if is_causal:
        mask &= (s <= t)[None]
    if local_window is not None:
        left, right = local_window
        if left is not None:
            mask &= (s >= t - left)[None]
        if right is not None:
            mask &= (s <= t + right)[None]
    if query_lengths is not None:
        mask &= (np.arange(num_queries)[None, :] < np.asarray(query_lengths)[:, None])[:, :, None]
    if key_lengths is not None:
        mask &= (np.arange(num_keys)[None, :] < np.asarray(key_lengths)[:, None])[:, None, :]
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
        mask &= np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]
    return mask


def _probabilities(query, key, mask, scale):
    """P [B, N, T, S] float64 and lse [B, N, T] (-inf on empty rows)."""
    heads, kv_heads = query.shape[2], key.shape[2]
    k = np.repeat(key, heads // kv_heads, axis=2)  # [B, S, N, H]: head n uses key head n // G
    logits = np.einsum("btnh,bsnh->bnts", query, k) * scale
    full = np.broadcast_to(mask[:, None], logits.shape)
    logits = np.where(full, logits, -np.inf)
    row_max = logits.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    unnormalised = np.where(full, np.exp(logits - row_max), 0.0)
    total = unnormalised.sum(axis=-1, keepdims=True)
    probs = np.where(total > 0, unnormalised / np.where(total > 0, total, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] > 0, np.log(np.where(total[..., 0] > 0, total[..., 0], 1.0)) + row_max[..., 0],
                       -np.inf)
    return probs, lse


def _clean(x, live):
    """x with the rows that no valid pair uses set to 0 (they may hold NaN padding)."""
    return np.where(live, x, 0.0)


def reference_attention(query, key, value, *, scale=None, **mask_kwargs):
    """float64 (output [B, T, N, H], lse [B, N, T]) of eq. 1 with the masks of `reference_mask`.

    Args:
      query: [B, T, N, H]; key, value: [B, S, K, H], K divides N (array-likes, any float dtype).
      scale: the logit scale, default 1 / sqrt(H).
      **mask_kwargs: the keyword arguments of `reference_mask`.
    """
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    batch, num_queries, heads, head_dim = query.shape
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    mask = reference_mask(batch, num_queries, key.shape[1], **mask_kwargs)
    query = _clean(query, mask.any(axis=2)[:, :, None, None])
    key_live = mask.any(axis=1)[:, :, None, None]
    key, value = _clean(key, key_live), _clean(value, key_live)
    probs, lse = _probabilities(query, key, mask, scale)
    v = np.repeat(value, heads // key.shape[2], axis=2)
    return np.einsum("bnts,bsnh->btnh", probs, v), lse


def reference_vjp(query, key, value, d_out, *, scale=None, **mask_kwargs):
    """float64 (dq [B, T, N, H], dk [B, S, K, H], dv [B, S, K, H]) of eq. 1 for output cotangent d_out.

    Args:
      query, key, value, scale, **mask_kwargs: as for `reference_attention`.
      d_out: [B, T, N, H], the cotangent of the output.
    """
    query, key, value, d_out = (np.asarray(x, np.float64) for x in (query, key, value, d_out))
    batch, num_queries, heads, head_dim = query.shape
    num_keys, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    mask = reference_mask(batch, num_queries, num_keys, **mask_kwargs)
    query = _clean(query, mask.any(axis=2)[:, :, None, None])
    key_live = mask.any(axis=1)[:, :, None, None]
    key, value = _clean(key, key_live), _clean(value, key_live)
    probs, _ = _probabilities(query, key, mask, scale)  # [B, N, T, S]
    k = np.repeat(key, groups, axis=2)
    v = np.repeat(value, groups, axis=2)
    out = np.einsum("bnts,bsnh->btnh", probs, v)
    d_v = np.einsum("bnts,btnh->bsnh", probs, d_out)
    d_p = np.einsum("btnh,bsnh->bnts", d_out, v)
    delta = np.einsum("btnh,btnh->bnt", d_out, out)[..., None]
    d_s = probs * (d_p - delta)
    d_q = np.einsum("bnts,bsnh->btnh", d_s, k) * scale
    d_k = np.einsum("bnts,btnh->bsnh", d_s, query) * scale

    def per_kv_head(x):  # [B, S, N, H] -> [B, S, K, H], summing the G query heads of each key/value head
        return x.reshape(batch, num_keys, kv_heads, groups, head_dim).sum(axis=3)

    return d_q, per_kv_head(d_k), per_kv_head(d_v)
