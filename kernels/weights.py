"""Attention weights on demand: exact softmax rows recomputed from a fast path's saved lse.

The flash kernels (and the blockwise path) never build the [T, S] weights. Given the lse they return,
weights[b, n, t, s] = exp(scale * q[b,t,n] . k[b,s,n//G] - lse[b,n,t]) on the valid keys and 0 elsewhere,
which is the softmax of Vaswani et al. 2017, arXiv:1706.03762, eq. 1, exactly (up to float32 rounding),
because lse is that row's log-normaliser. `attention_weights` computes only the (batch, head, query-row)
triples a caller asks for, in chunks of rows, so plotting the attention of a long-context model costs
O(rows x S) memory and never O(T x S).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks
from attention_jax.core import alignment, masks
from attention_jax.core.masks import AttentionMask

__all__ = ["attention_weights"]

_F32 = jnp.float32


def _index(name: str, x, bound: int) -> jax.Array:
    _checks.integer(name, x)
    x = jnp.asarray(x)
    if x.ndim > 1:
        raise ValueError(f"{name} must be an int or a 1-D int array, got {name}.shape={x.shape}")
    try:
        values = np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        values = None  # traced indices are not range-checked
    if values is not None and values.size:
        if values.min() < 0 or values.max() >= bound:
            raise ValueError(f"{name} must lie in [0, {bound}), got values in [{values.min()}, {values.max()}]")
    return x.astype(jnp.int32)


def attention_weights(
    query: jax.Array,
    key: jax.Array,
    lse: jax.Array,
    mask: jax.Array | AttentionMask | None = None,
    *,
    batch_index,
    head_index,
    query_index,
    scale: float | None = None,
    rows_per_chunk: int = 64,
) -> jax.Array:
    """The exact attention weights of the requested (batch, head, query-row) triples, from a saved lse.

    Softmax(Q K^T * scale) of Vaswani et al. 2017, arXiv:1706.03762, eq. 1, row by row, normalised with the
    lse of the call that produced the output (`flash_attention(..., return_lse=True)`, or
    `dot_product_attention(..., return_lse=True)` with any implementation), so no second pass over the keys
    is needed. The mask must be the one of that call. Rows are processed `rows_per_chunk` at a time
    (`jax.lax.map`), so memory is O(rows_per_chunk x S x H), never O(T x S); only the requested rows of a
    dense mask are read (`AttentionMask.mask_for`).

    Args:
      query: [B, T, N, H] floating, the query of the call.
      key: [B, S, K, H] floating, the key of the call; K divides N.
      lse: [B, N, T] float32, the call's log-sum-exp (`EMPTY_ROW_LSE` on rows with no valid key).
      mask: None, a [B|1, N|1, T, S] bool array, or the call's `attention_jax.core.masks.AttentionMask`.
      batch_index, head_index, query_index: ints or [R] int arrays (broadcast against each other): the rows
        (b, n, t) to recompute.
      scale: a Python float, the call's logit scale; default 1 / sqrt(H).
      rows_per_chunk: a positive int, rows computed at once.

    Returns:
      weights [R, S] float32 (R = the broadcast length of the indices; a scalar triple gives [1, S]): each
      row sums to 1 over its valid keys, or is all zeros for a row with no valid key.

    Raises:
      ValueError: for the shape, length, segment and window errors of `dot_product_attention`; an lse whose
        shape is not [B, N, T]; indices that are not ints or 1-D, out of range (when concrete), or do not
        broadcast; a bad rows_per_chunk.
      TypeError: for non-array or non-floating query/key or lse, or non-integer indices, lengths or ids.
    """
    mask = masks.as_attention_mask(mask).bind(query, key)
    batch, heads, num_queries, num_keys = mask.shape
    groups = heads // key.shape[2]
    _checks.floating("lse", lse)
    if jnp.shape(lse) != (batch, heads, num_queries):
        raise ValueError(f"lse must have shape [B, N, T]={(batch, heads, num_queries)}, got {jnp.shape(lse)=}")
    rows_per_chunk = _checks.positive_int("rows_per_chunk", rows_per_chunk)
    b_idx = _index("batch_index", batch_index, batch)
    n_idx = _index("head_index", head_index, heads)
    t_idx = _index("query_index", query_index, num_queries)
    try:
        b_idx, n_idx, t_idx = (jnp.atleast_1d(x) for x in jnp.broadcast_arrays(b_idx, n_idx, t_idx))
    except ValueError as err:
        raise ValueError(f"batch_index, head_index and query_index do not broadcast: {b_idx.shape=} "
                         f"{n_idx.shape=} {t_idx.shape=}") from err
    scale = masks.attention_scale(scale, query.shape[-1])
    if b_idx.shape[0] == 0 or num_keys == 0:
        return jnp.zeros((b_idx.shape[0], num_keys), _F32)

    def row(idx):
        b, n, t = idx
        q = query[b, t, n].astype(_F32)  # [H]
        k = key[b, :, n // groups].astype(_F32)  # [S, H]
        logits = (k @ q) * scale  # [S]
        valid = mask.mask_for(q_pos=t[None], batch=b, head=n)  # [1, 1, 1, S] or None
        valid = jnp.ones((num_keys,), bool) if valid is None else valid[0, 0, 0]
        row_lse = lse[b, n, t].astype(_F32)
        valid = valid & (row_lse != alignment.EMPTY_ROW_LSE)
        # where before exp: an invalid key may hold NaN padding or a logit far above the lse.
        return jnp.where(valid, jnp.exp(jnp.where(valid, logits, 0.0) - row_lse), 0.0)

    return jax.lax.map(row, (b_idx, n_idx, t_idx), batch_size=min(rows_per_chunk, int(b_idx.shape[0])))
