"""Which (query, key) pairs attend, tile by tile: shared by every flash kernel (Triton, Mosaic GPU, Mosaic TPU).

A call's mask has a static part, `MaskSpec` (causal, local window, the true T and S before padding), and a
dynamic part, two int32 arrays of segment ids. Lengths are folded into the segment ids before a kernel runs:
a query beyond `query_lengths` (or in the padding) gets `Q_DEAD`, a key beyond `key_lengths` (or in the
padding) gets `KV_DEAD`, and the two never equal each other or a real id. One equality test then covers
packed sequences, padding and lengths.

Tiles are skipped two ways:
  * statically bounded loops: `kv_tile_range` / `q_tile_range` give the only tiles the causal and window
    masks and the true lengths leave alive, so dead tiles cost no iteration at all;
  * `segments_overlap`: a tile pair whose id ranges do not intersect (another packed sequence, or only
    padding) is skipped with a branch.
The element mask inside a live tile is `element_mask`.

Alignment is top-left, as in `jax.nn.dot_product_attention`: query t and key s both count from 0, and with
`is_causal` query t sees keys s <= t for any T and S.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attention_jax.core.masks import AttentionMask, window_bounds

__all__ = [
    "KV_DEAD", "Q_DEAD", "MaskSpec", "element_mask", "encode_segments", "kv_tile_range", "q_tile_range",
    "segments_overlap",
]

# Reserved segment ids (the two smallest int32 values): user segment ids must not use them.
Q_DEAD = int(np.iinfo(np.int32).min)
KV_DEAD = Q_DEAD + 1


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """The static tiling view of a call's `AttentionMask` (hashable: a `custom_vjp` nondiff argument).

    `flash_attention` derives it from the call's `attention_jax.core.masks.AttentionMask` with `from_mask`: T,
    S, causality and the window are the mask's, and the two fields of its own are the kernels' (the padded key
    length and whether segment-id arrays are passed). Kernel tests may build one directly.

    Attributes:
      num_queries: T before padding.
      num_keys: S before padding.
      padded_keys: S after padding to the key tile; keys in [num_keys, padded_keys) are masked.
      is_causal: key s is masked for query t when s > t.
      window: None or (left, right) with entries int >= 0 or None: query t sees t - left <= s <= t + right.
      has_segments: whether the kernel gets segment-id arrays (ids, lengths or both were given).
    """

    num_queries: int
    num_keys: int
    padded_keys: int
    is_causal: bool = False
    window: tuple[int | None, int | None] | None = None
    has_segments: bool = False

    @classmethod
    def from_mask(cls, mask: AttentionMask, padded_keys: int, *, has_segments: bool) -> "MaskSpec":
        """The tiling view of `mask` (bound to the call's inputs) for keys padded to `padded_keys`."""
        return cls(mask.num_queries, mask.num_keys, padded_keys, mask.is_causal, mask.local_window_size,
                   has_segments)

    @property
    def left(self) -> int | None:
        """The most keys before the query a row may see (None = unbounded)."""
        return window_bounds(self.is_causal, self.window)[0]

    @property
    def right(self) -> int | None:
        """The most keys after the query a row may see (None = unbounded); causality makes it at most 0."""
        return window_bounds(self.is_causal, self.window)[1]


def _cdiv(a, b: int):
    """Ceil division of a non-negative traced or static int by a static int (lax.div: Triton has no //)."""
    return lax.div(a + (b - 1), b) if isinstance(a, jax.Array) else -(-a // b)


def kv_tile_range(spec: MaskSpec, q_tile, block_q: int, block_k: int):
    """The key tiles [lo, hi) that query tile `q_tile` (traced int32) may attend; hi <= lo means none."""
    num_tiles = _cdiv(spec.num_keys, block_k)
    q_first = q_tile * block_q
    lo = jnp.int32(0)
    hi = jnp.int32(num_tiles)
    if spec.left is not None:
        lo = lax.div(jnp.maximum(q_first - spec.left, 0), block_k)
    if spec.right is not None:
        # The largest key any real row of the tile sees (rows past T are padding and need nothing).
        last_key = jnp.minimum(q_first + block_q, spec.num_queries) - 1 + spec.right
        hi = jnp.minimum(hi, lax.div(jnp.maximum(last_key + 1, 0) + (block_k - 1), block_k))
    return lo, hi


def q_tile_range(spec: MaskSpec, k_tile, block_q: int, block_k: int, num_q_tiles: int):
    """The query tiles [lo, hi) that may attend key tile `k_tile` (traced int32); hi <= lo means none."""
    k_first = k_tile * block_k
    lo = jnp.int32(0)
    hi = jnp.int32(num_q_tiles)
    if spec.right is not None:  # s <= t + right  <=>  t >= s - right
        lo = lax.div(jnp.maximum(k_first - spec.right, 0), block_q)
    if spec.left is not None:  # s >= t - left  <=>  t <= s + left
        last_query = jnp.minimum(k_first + block_k, spec.num_keys) - 1 + spec.left
        hi = jnp.minimum(hi, lax.div(last_query + 1 + (block_q - 1), block_q))
    return lo, hi


def element_mask(spec: MaskSpec, q_pos, k_pos, q_seg=None, kv_seg=None):
    """bool [bq, bk]: which pairs of a tile attend, or None when every pair does.

    Args:
      spec: the static mask.
      q_pos: [bq] int32 query positions of the tile.
      k_pos: [bk] int32 key positions of the tile.
      q_seg: None or [bq] int32 query segment ids (with `Q_DEAD` for dead queries).
      kv_seg: None or [bk] int32 key segment ids (with `KV_DEAD` for dead keys).
    """
    mask = None

    def both(a, b):
        return b if a is None else jnp.logical_and(a, b)

    if spec.padded_keys > spec.num_keys and not spec.has_segments:
        mask = both(mask, jnp.broadcast_to(k_pos[None, :] < spec.num_keys, (q_pos.shape[0], k_pos.shape[0])))
    if spec.right is not None:
        mask = both(mask, k_pos[None, :] <= q_pos[:, None] + spec.right)
    if spec.left is not None:
        mask = both(mask, k_pos[None, :] >= q_pos[:, None] - spec.left)
    if q_seg is not None:
        mask = both(mask, q_seg[:, None] == kv_seg[None, :])
    return mask


def segments_overlap(q_seg, kv_seg):
    """Scalar bool: whether any id of q_seg [bq] can equal any id of kv_seg [bk] (their ranges intersect).

    Exact for sorted (packed) ids and conservative for any others; a tile of only dead queries or only dead
    keys never overlaps anything.
    """
    return jnp.logical_and(jnp.min(q_seg) <= jnp.max(kv_seg), jnp.min(kv_seg) <= jnp.max(q_seg))


def encode_segments(segments, query_lengths, key_lengths, batch: int, num_queries: int, num_keys: int,
                    padded_queries: int, padded_keys: int):
    """The kernels' segment ids: (q_seg [B, Tp] int32, kv_seg [B, Sp] int32), or None when no ids or lengths.

    Args:
      segments: None or (q_ids [B, T], kv_ids [B, S]) integers.
      query_lengths, key_lengths: None or [B] integers.
      batch, num_queries, num_keys: B, T, S.
      padded_queries, padded_keys: Tp >= T and Sp >= S, the padded lengths.
    """
    if segments is None and query_lengths is None and key_lengths is None:
        return None
    if segments is None:
        q_ids = jnp.zeros((batch, num_queries), jnp.int32)
        kv_ids = jnp.zeros((batch, num_keys), jnp.int32)
    else:
        q_ids, kv_ids = (jnp.asarray(x).astype(jnp.int32) for x in segments)
    q_ids = jnp.pad(q_ids, ((0, 0), (0, padded_queries - num_queries)), constant_values=Q_DEAD)
    kv_ids = jnp.pad(kv_ids, ((0, 0), (0, padded_keys - num_keys)), constant_values=KV_DEAD)
    if query_lengths is not None:
        live = jnp.arange(padded_queries)[None, :] < jnp.asarray(query_lengths)[:, None]  # [B, Tp]
        q_ids = jnp.where(live, q_ids, Q_DEAD)
    if key_lengths is not None:
        live = jnp.arange(padded_keys)[None, :] < jnp.asarray(key_lengths)[:, None]  # [B, Sp]
        kv_ids = jnp.where(live, kv_ids, KV_DEAD)
    return q_ids, kv_ids
