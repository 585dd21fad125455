"""Which (query, key) pairs attend, tile by tile: shared by every flash kernel (Triton, Mosaic GPU, Mosaic TPU).

A call's mask has a static part, `MaskSpec` (causal, local window, the true T and S before padding), and a
dynamic part, two int32 arrays of segment ids (`encode_segments`). The user's ids are first relabelled, row
by row, to their rank among that row's distinct ids (0, 1, 2, ...: equality and order are kept, and any
integer id works, int32 min and max included). Lengths are then folded in: a query beyond `query_lengths`
(or in the padding) gets `Q_DEAD` (int32 min, below every rank), a key beyond `key_lengths` (or in the
padding) gets `KV_DEAD` (int32 max, above every rank), so the two never equal each other or a real id. One
equality test then covers packed sequences, padding and lengths.

Dead rows (`live_rows`, `zero_dead_rows`): a query with no valid key, and a key or value that no valid query
attends, are zeroed with `where` before any kernel runs, exactly the rows the xla backend zeroes. Inside a
live tile a masked pair has P = 0, but 0 * NaN = NaN in P V, dS K and dS^T Q; zeroing those rows first is
what keeps a NaN or inf there out of the output and the gradients of live rows. Liveness is computed
exactly, without a [T, S] array: in closed form from the causal/window bounds, with prefix counts for
lengths, and with a sort and a binary search for segment ids.

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
    "KV_DEAD", "Q_DEAD", "MaskSpec", "dense_segment_ids", "element_mask", "encode_segments", "kv_tile_range",
    "live_rows", "q_tile_range", "segments_overlap", "zero_dead_rows",
]

# The kernels' ids of dead queries and dead keys. User ids never reach the kernels as they are: they are
# relabelled to ranks in [0, T + S) first (`dense_segment_ids`), so these can never collide with one. Q_DEAD
# lies below every rank and KV_DEAD above, so a dead row never widens a tile's id range in the direction
# that `segments_overlap` tests.
Q_DEAD = int(np.iinfo(np.int32).min)
KV_DEAD = int(np.iinfo(np.int32).max)


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


def dense_segment_ids(q_ids, kv_ids):
    """Each row's ids relabelled to their rank among that row's distinct ids: (q [B, T], kv [B, S]) int32.

    Equal ids stay equal, different ids stay different and their order is kept (so sorted, packed ids stay
    sorted), and every rank lies in [0, T + S): any integer ids work, whatever their dtype or range (int32
    min and max, int64 beyond int32), and none can equal `Q_DEAD` or `KV_DEAD`. Two sorts of the B rows of
    T + S ids, O((T + S) log(T + S)) per row, jit-friendly (no data-dependent shapes).

    Args:
      q_ids: [B, T] integer query segment ids.
      kv_ids: [B, S] integer key/value segment ids.
    """
    q_ids, kv_ids = jnp.asarray(q_ids), jnp.asarray(kv_ids)
    num_queries = q_ids.shape[1]
    dtype = jnp.promote_types(q_ids.dtype, kv_ids.dtype)
    both = jnp.concatenate([q_ids.astype(dtype), kv_ids.astype(dtype)], axis=1)  # [B, T + S]
    if both.shape[1] == 0:
        return q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)
    index = lax.broadcasted_iota(jnp.int32, both.shape, 1)
    ordered, order = lax.sort((both, index), dimension=1, num_keys=1)  # order: where each sorted id came from
    first = jnp.concatenate([jnp.zeros_like(ordered[:, :1], jnp.int32),
                             (ordered[:, 1:] != ordered[:, :-1]).astype(jnp.int32)], axis=1)
    rank = jnp.cumsum(first, axis=1, dtype=jnp.int32)  # [B, T + S], the rank of each sorted id
    _, rank = lax.sort((order, rank), dimension=1, num_keys=1)  # back to the original order
    return rank[:, :num_queries], rank[:, num_queries:]


def encode_segments(segments, query_lengths, key_lengths, batch: int, num_queries: int, num_keys: int,
                    padded_queries: int, padded_keys: int):
    """The kernels' segment ids: (q_seg [B, Tp] int32, kv_seg [B, Sp] int32), or None when no ids or lengths.

    User ids are relabelled by `dense_segment_ids` (ranks >= 0, so no user id is reserved); queries beyond
    `query_lengths` or in the padding get `Q_DEAD`, keys beyond `key_lengths` or in the padding `KV_DEAD`.

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
        q_ids, kv_ids = dense_segment_ids(*segments)
    q_ids = jnp.pad(q_ids, ((0, 0), (0, padded_queries - num_queries)), constant_values=Q_DEAD)
    kv_ids = jnp.pad(kv_ids, ((0, 0), (0, padded_keys - num_keys)), constant_values=KV_DEAD)
    if query_lengths is not None:
        live = jnp.arange(padded_queries)[None, :] < jnp.asarray(query_lengths)[:, None]  # [B, Tp]
        q_ids = jnp.where(live, q_ids, Q_DEAD)
    if key_lengths is not None:
        live = jnp.arange(padded_keys)[None, :] < jnp.asarray(key_lengths)[:, None]  # [B, Sp]
        kv_ids = jnp.where(live, kv_ids, KV_DEAD)
    return q_ids, kv_ids


def _partner_ranges(own: int, num_partners: int, before: int | None, after: int | None):
    """int32 [own] numpy (lo, hi): position i may pair with partners j in [lo_i, hi_i), j in [0, num_partners).

    `before` / `after` bound j - i from below / above (None = unbounded): j >= i - before, j <= i + after.
    """
    i = np.arange(own, dtype=np.int64)
    lo = np.zeros(own, np.int64) if before is None else np.maximum(i - before, 0)
    hi = np.full(own, num_partners, np.int64) if after is None else np.clip(i + after + 1, 0, num_partners)
    lo = np.minimum(lo, num_partners)
    return lo.astype(np.int32), hi.astype(np.int32)


def _count_in_ranges(flags, lo, hi):
    """int32 [B, n]: how many of flags [B, m] (bool) are True in [lo_i, hi_i) (lo, hi: int32 [n] numpy)."""
    counts = jnp.cumsum(flags.astype(jnp.int32), axis=1)
    counts = jnp.concatenate([jnp.zeros_like(counts[:, :1]), counts], axis=1)  # [B, m + 1], prefix counts
    return counts[:, np.maximum(hi, lo)] - counts[:, lo]


def _id_in_ranges(ids, lo, hi, partner_ids):
    """bool [B, n]: whether partner_ids[b, j] == ids[b, i] for some j in [lo_i, hi_i).

    A binary search of (ids[b, i], lo_i) among the (id, position) pairs of row b sorted lexicographically:
    the first pair at or after it is inside the range exactly when some partner in the range has the id.
    """
    num = partner_ids.shape[1]
    if num == 0:
        return jnp.zeros(ids.shape, bool)
    position = lax.broadcasted_iota(jnp.int32, partner_ids.shape, 1)
    sorted_ids, sorted_pos = lax.sort((partner_ids, position), dimension=1, num_keys=2)  # [B, m]
    lo = jnp.broadcast_to(jnp.asarray(lo)[None], ids.shape)
    hi = jnp.broadcast_to(jnp.asarray(hi)[None], ids.shape)

    def pair_at(index):
        index = jnp.minimum(index, num - 1)
        return jnp.take_along_axis(sorted_ids, index, axis=1), jnp.take_along_axis(sorted_pos, index, axis=1)

    def halve(_, bounds):  # the first index whose pair is >= (id, lo) lies in [first, last]
        first, last = bounds
        mid = lax.div(first + last, 2)
        mid_id, mid_pos = pair_at(mid)
        before = (mid_id < ids) | ((mid_id == ids) & (mid_pos < lo))
        searching = first < last
        return (jnp.where(searching & before, mid + 1, first), jnp.where(searching & ~before, mid, last))

    zeros = jnp.zeros(ids.shape, jnp.int32)
    first, _ = lax.fori_loop(0, num.bit_length(), halve, (zeros, zeros + num))
    found_id, found_pos = pair_at(first)
    return (first < num) & (found_id == ids) & (found_pos < hi)


def live_rows(spec: MaskSpec, segments, padded_queries: int, padded_keys: int, *, has_ids: bool):
    """Which queries have a valid key and which keys a valid query, or None when every real row does.

    Exactly the rows that the xla backend keeps (any over the other axis of the full [B, T, S] mask), but
    without building it: the causal/window band gives each query the key range [max(0, t - left),
    t + right] and each key the query range [s - right, s + left] in closed form; lengths and padding (dead
    ids) are counted with prefix sums; user segment ids are found with a binary search among the row's
    sorted (id, position) pairs. O(B (T + S) log(T + S)) work and memory.

    Args:
      spec: the static mask.
      segments: None or (q_seg [B, Tp], kv_seg [B, Sp]) int32 from `encode_segments` (ids relabelled).
      padded_queries, padded_keys: Tp >= T and Sp >= S, the padded lengths.
      has_ids: whether `segments` hold user segment ids (else only lengths and padding, ids 0 or dead).

    Returns:
      None, or (q_live [B or 1, Tp] bool, kv_live [B or 1, Sp] bool); rows past T or S (padding) are False.
    """
    right, left = spec.right, spec.left
    if segments is None:
        # Static: only the band and the true lengths T, S decide (numpy at trace time, no runtime cost).
        q_lo, q_hi = _partner_ranges(spec.num_queries, spec.num_keys, left, right)
        kv_lo, kv_hi = _partner_ranges(spec.num_keys, spec.num_queries, right, left)
        q_live, kv_live = q_lo < q_hi, kv_lo < kv_hi
        if q_live.all() and kv_live.all():
            return None
        return (jnp.asarray(np.pad(q_live, (0, padded_queries - spec.num_queries)))[None],
                jnp.asarray(np.pad(kv_live, (0, padded_keys - spec.num_keys)))[None])
    q_seg, kv_seg = segments
    q_lo, q_hi = _partner_ranges(padded_queries, padded_keys, left, right)
    kv_lo, kv_hi = _partner_ranges(padded_keys, padded_queries, right, left)
    q_ok, kv_ok = q_seg != Q_DEAD, kv_seg != KV_DEAD
    if not has_ids:  # every live id is 0: a row is live when its range holds a live partner
        return (q_ok & (_count_in_ranges(kv_ok, q_lo, q_hi) > 0),
                kv_ok & (_count_in_ranges(q_ok, kv_lo, kv_hi) > 0))
    # Dead ids never match: Q_DEAD and KV_DEAD differ from each other and from every (relabelled) user id.
    return _id_in_ranges(q_seg, q_lo, q_hi, kv_seg), _id_in_ranges(kv_seg, kv_lo, kv_hi, q_seg)


def zero_dead_rows(spec: MaskSpec, segments, query, key, value, *, has_ids: bool):
    """query, key, value with the rows `live_rows` finds dead set to 0 by `where` (never by a product).

    The contract of the xla backend: a NaN or inf in a query that has no valid key, or in a key or value
    that no valid query attends, never reaches the output or the gradients of live rows (which would happen
    inside a live tile, where P = 0 but 0 * NaN = NaN), and their gradients are 0.

    Args:
      spec, segments, has_ids: as for `live_rows`.
      query: [B, Tp, N, Hp]; key, value: [B, Sp, K, Hp] (padded).

    Returns:
      (query, key, value), the same shapes and dtypes.
    """
    live = live_rows(spec, segments, query.shape[1], key.shape[1], has_ids=has_ids)
    if live is None:
        return query, key, value
    q_live = live[0][:, :, None, None]
    kv_live = live[1][:, :, None, None]
    zero = lambda x: jnp.zeros((), x.dtype)  # noqa: E731
    return (jnp.where(q_live, query, zero(query)), jnp.where(kv_live, key, zero(key)),
            jnp.where(kv_live, value, zero(value)))
