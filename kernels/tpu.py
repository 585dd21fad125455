"""The flash-attention forward and backward in Pallas Mosaic TPU (block specs over a 4-D grid, VMEM scratch).

Dao et al. 2022, "FlashAttention", arXiv:2205.14135, Algorithm 1 (forward) and Appendix B (backward), in the
loop order of FlashAttention-2 (Dao 2023, arXiv:2307.08691, Algorithms 1 and 2). Same inputs, outputs and
conventions as the Triton-lowered kernels in `forward.py` and `backward.py`: base-2 logits
`s * scale * log2(e)`, float32 running max / sum / accumulators, a natural-log lse, `EMPTY_ROW_LSE` and a zero
output on rows with no valid key, and a backward that recomputes P = exp2(s - lse2) from `lse2` (lse * log2 e,
+inf on empty rows) so empty rows get zero gradients without a NaN.

Unlike the Triton kernels, which loop over tiles inside one program, here the tile loop is the last grid
axis (marked "arbitrary"), Mosaic pipelines the HBM -> VMEM copies of the tiles, and the running state lives
in VMEM scratch that is initialised on the first step of that axis and written out on the last:

  * forward: grid (B, N, Tp / bq, Sp / bk); scratch m, l [bq, 128] (lane-broadcast) and acc [bq, Hp].
  * dK/dV: grid (B, K, Sp / bk, G * Tp / bq); the last axis walks (query head of the group, query tile), so
    dK and dV of a key/value head sum over its G query heads without repeating keys or values.
  * dQ: grid (B, N, Tp / bq, Sp / bk).

Tiles that the causal mask, the window or the true lengths leave dead are skipped with `pl.when`
(`masking.kv_tile_range` / `masking.q_tile_range`) and their index maps are clamped to the live range, so
Mosaic sees the same block index as on the previous step and does not copy a dead tile. Tile pairs whose
segment-id ranges do not intersect (`masking.segments_overlap`) are skipped with `pl.when` too (they are still
copied: the index maps cannot read segment ids).

Layout: the wrappers transpose to head-major [B, N, T, H] so the last two dims of every block are
(tile, H); query segment ids are broadcast to [B, Tp, 128] and key segment ids to [B, 8, Sp], and the lse,
lse2 and delta rows to [B, N, Tp, 128], so every block's last two dims are (multiple of 8, multiple of 128)
or full dims, as Mosaic requires (the same layout as jax's own Pallas TPU flash-attention kernel).

Tested only in the TPU interpreter on CPU (pltpu.InterpretParams); not run on a TPU. The tests also lower
the kernels to Mosaic for a TPU target on the CPU host (jax's block-shape checks and Mosaic lowering rules),
but the Mosaic compiler itself has never run on them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from attention_jax.kernels import masking
from attention_jax.kernels.block_sizes import BlockSizes
from attention_jax.kernels.forward import LN2, LOG2E

__all__ = ["LANES", "SUBLANES", "tile_mask", "tpu_backward", "tpu_blocks", "tpu_forward"]

LANES = 128  # the TPU vector lane width: a block's last dim is a multiple of it or the full dim
SUBLANES = 8  # the sublane count: a block's second-to-last dim is a multiple of it or the full dim
_F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))  # a @ b.T


def _precision(a):
    """Full float32 products for float32 tiles (the MXU's default is bf16 passes); default otherwise."""
    return lax.Precision.HIGHEST if a.dtype == jnp.float32 else None


def _dot(a, b):
    return jnp.dot(a, b, precision=_precision(a), preferred_element_type=_F32)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tpu_blocks(blocks: BlockSizes, num_queries: int, num_keys: int) -> BlockSizes:
    """The tiles adjusted to the TPU layout rules.

    A key tile is a lane dim (of the [bq, bk] logits and of the [8, bk] key segment-id block), so it must be a
    multiple of 128 or cover all keys: a key tile below 128 is raised to min(128, next power of two >= S),
    i.e. to 128 lanes, or to one tile holding every key when S <= 128. Query tiles only need to be multiples
    of 8 sublanes, which every `BlockSizes` tile (a power of two >= 16) already is, so they are unchanged.

    Args:
      blocks: the tiles, already shrunk to the lengths with `BlockSizes.fit`.
      num_queries: T (unused: query tiles need no change; kept for a uniform signature).
      num_keys: S, the true number of keys (> 0).

    Returns:
      A valid `BlockSizes` (every tile a power of two >= 16).

    Raises:
      ValueError: if num_keys < 1.
    """
    del num_queries
    if num_keys < 1:
        raise ValueError(f"tpu_blocks needs num_keys >= 1, got {num_keys}")
    floor = min(LANES, max(16, _next_power_of_2(num_keys)))
    return dataclasses.replace(
        blocks,
        block_k=max(blocks.block_k, floor),
        block_k_dkv=max(blocks.block_k_dkv, floor),
        block_k_dq=max(blocks.block_k_dq, floor),
    )


def tile_mask(spec: masking.MaskSpec, q_first, k_first, block_q: int, block_k: int, q_seg=None, kv_seg=None):
    """bool [bq, bk] (or None when every pair attends): `masking.element_mask` with 2-D operands.

    The same rules as `masking.element_mask` (key padding when there are no segment ids, the causal/window
    band, segment-id equality), written with 2-D iotas and [bq, 1] / [1, bk] columns and rows, because Mosaic
    lowers 2-D vectors and has little support for 1-D ones.

    Args:
      spec: the static mask.
      q_first, k_first: int32 scalars, the first query and key position of the tile.
      block_q, block_k: the tile.
      q_seg: None or int32 [bq, 1] query segment ids; kv_seg: None or int32 [1, bk] key segment ids.
    """
    q_pos = q_first + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    k_pos = k_first + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    mask = None

    def both(a, b):
        return b if a is None else jnp.logical_and(a, b)

    if spec.padded_keys > spec.num_keys and not spec.has_segments:
        mask = both(mask, k_pos < spec.num_keys)
    if spec.right is not None:
        mask = both(mask, k_pos <= q_pos + spec.right)
    if spec.left is not None:
        mask = both(mask, k_pos >= q_pos - spec.left)
    if q_seg is not None:
        mask = both(mask, q_seg == kv_seg)
    return mask


def _interpret_arg(interpret):
    """pallas_call's `interpret`: an InterpretParams as given, True -> the TPU interpreter, else False."""
    if isinstance(interpret, pltpu.InterpretParams):
        return interpret
    return pltpu.InterpretParams() if interpret else False


def _clamp(index, lo, hi, count: int):
    """index clamped into the live tiles [lo, hi) (to lo when none is live), then into [0, count)."""
    index = jnp.minimum(jnp.maximum(index, lo), jnp.maximum(hi - 1, lo))
    return jnp.minimum(jnp.maximum(index, 0), count - 1)


def _segment_args(segments):
    """(q_seg [B, Tp, 128], kv_seg [B, 8, Sp]) int32 from (q_seg [B, Tp], kv_seg [B, Sp])."""
    q_seg, kv_seg = segments
    batch, padded_q = q_seg.shape
    padded_k = kv_seg.shape[1]
    q_wide = lax.broadcast_in_dim(q_seg.astype(jnp.int32), (batch, padded_q, LANES), (0, 1))
    kv_wide = lax.broadcast_in_dim(kv_seg.astype(jnp.int32), (batch, SUBLANES, padded_k), (0, 2))
    return q_wide, kv_wide


def _rows(x):
    """[B, N, Tp] float32 -> [B, N, Tp, 128], each row value broadcast over the lanes."""
    return jnp.broadcast_to(x.astype(_F32)[..., None], (*x.shape, LANES))


# ----------------------------------------------------------------------------------------------------------
# Forward


def _kv_tile_live(spec, q_tile, k_tile, block_q, block_k, q_seg_ref, kv_seg_ref):
    """Whether key tile k_tile is live for query tile q_tile: inside the causal/window/length tile range and,
    with segment ids, sharing an id range (the forward and dQ kernels both ask this)."""
    lo, hi = masking.kv_tile_range(spec, q_tile, block_q, block_k)
    live = jnp.logical_and(k_tile >= lo, k_tile < hi)
    if spec.has_segments:
        live = jnp.logical_and(live, masking.segments_overlap(q_seg_ref[...], kv_seg_ref[...]))
    return live


def _forward_kernel(q_ref, k_ref, v_ref, *refs, spec, scale, block_q, block_k, empty_row_lse):
    if spec.has_segments:
        q_seg_ref, kv_seg_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    else:
        q_seg_ref = kv_seg_ref = None
        o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    q_tile, k_tile = pl.program_id(2), pl.program_id(3)

    @pl.when(k_tile == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, _F32)
        l_ref[...] = jnp.zeros(l_ref.shape, _F32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    run = _kv_tile_live(spec, q_tile, k_tile, block_q, block_k, q_seg_ref, kv_seg_ref)

    @pl.when(run)
    def _update():
        q = q_ref[...]  # [bq, H]
        k = k_ref[...]  # [bk, H]
        s = lax.dot_general(q, k, _NT, precision=_precision(q), preferred_element_type=_F32) * (scale * LOG2E)  # [bq, bk] base 2
        segs = (q_seg_ref[:, 0:1], kv_seg_ref[0:1, :]) if spec.has_segments else (None, None)
        mask = tile_mask(spec, q_tile * block_q, k_tile * block_k, block_q, block_k, *segs)
        if mask is not None:
            s = jnp.where(mask, s, -jnp.inf)
        m_prev = m_ref[:, 0:1]  # [bq, 1]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        # -inf until a row meets its first valid key; 0 stands in so no (-inf) - (-inf) appears.
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp2(s - m_safe)  # [bq, bk]; exactly 0 where masked
        alpha = jnp.exp2(m_prev - m_safe)  # [bq, 1]; 0 while m = -inf
        v = v_ref[...]
        pv = _dot(p.astype(v.dtype), v)  # [bq, H]
        acc_ref[...] = alpha * acc_ref[...] + pv
        l_new = alpha * l_ref[:, 0:1] + jnp.sum(p, axis=1, keepdims=True)
        m_ref[...] = jnp.broadcast_to(m_new, m_ref.shape)
        l_ref[...] = jnp.broadcast_to(l_new, l_ref.shape)

    @pl.when(k_tile == pl.num_programs(3) - 1)
    def _finish():
        l = l_ref[:, 0:1]
        live = l > 0.0  # rows with at least one valid key
        l_safe = jnp.where(live, l, 1.0)
        o_ref[...] = (acc_ref[...] / l_safe).astype(o_ref.dtype)  # acc is 0 on empty rows
        lse = jnp.where(live, (m_ref[:, 0:1] + jnp.log2(l_safe)) * LN2, empty_row_lse)
        lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def tpu_forward(q, k, v, segments, *, spec: masking.MaskSpec, scale: float, blocks: BlockSizes, interpret,
                empty_row_lse: float):
    """The Mosaic TPU forward on padded, sanitised inputs.

    Args:
      q: [B, Tp, N, Hp] float32, bfloat16 or float16; k, v: [B, Sp, K, Hp] of the same dtype, K divides N
        (Tp, Sp multiples of the tiles, Hp in 64/128/256; dead rows zeroed by `flash.py`).
      segments: None or (q_seg [B, Tp] int32, kv_seg [B, Sp] int32) from `masking.encode_segments`; must be
        given exactly when `spec.has_segments`.
      spec: the static mask. scale: the logit scale. blocks: the tiles (`fit` and `tpu_blocks` applied).
      interpret: False (compile for TPU), True (the TPU interpreter, `pltpu.InterpretParams()`), or an
        `pltpu.InterpretParams`.
      empty_row_lse: the lse written for a row with no valid key.

    Returns:
      (out [B, Tp, N, Hp] in q's dtype, lse [B, N, Tp] float32).

    Raises:
      ValueError: if Tp or Sp is not a multiple of the forward tiles, or K does not divide N.
    """
    batch, padded_q, heads, head_dim = q.shape
    padded_k, kv_heads = k.shape[1], k.shape[2]
    block_q, block_k = blocks.block_q, blocks.block_k
    _check_shapes(padded_q, padded_k, heads, kv_heads, block_q, block_k)
    groups = heads // kv_heads
    num_k_tiles = padded_k // block_k

    def kv_map(b, n, i, j):
        lo, hi = masking.kv_tile_range(spec, i, block_q, block_k)
        return b, lax.div(n, groups), _clamp(j, lo, hi, num_k_tiles), 0

    def kv_seg_map(b, n, i, j):
        index = kv_map(b, n, i, j)
        return index[0], 0, index[2]

    in_specs = [
        pl.BlockSpec((None, None, block_q, head_dim), lambda b, n, i, j: (b, n, i, 0)),
        pl.BlockSpec((None, None, block_k, head_dim), kv_map),
        pl.BlockSpec((None, None, block_k, head_dim), kv_map),
    ]
    args = [jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)]
    if spec.has_segments:
        in_specs += [pl.BlockSpec((None, block_q, LANES), lambda b, n, i, j: (b, i, 0)),
                     pl.BlockSpec((None, SUBLANES, block_k), kv_seg_map)]
        args += list(_segment_args(segments))
    kernel = functools.partial(_forward_kernel, spec=spec, scale=scale, block_q=block_q, block_k=block_k,
                               empty_row_lse=float(empty_row_lse))
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=(batch, heads, padded_q // block_q, num_k_tiles),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, block_q, head_dim), lambda b, n, i, j: (b, n, i, 0)),
                       pl.BlockSpec((None, None, block_q, LANES), lambda b, n, i, j: (b, n, i, 0))],
            scratch_shapes=[pltpu.VMEM((block_q, LANES), _F32), pltpu.VMEM((block_q, LANES), _F32),
                            pltpu.VMEM((block_q, head_dim), _F32)],
        ),
        out_shape=[jax.ShapeDtypeStruct((batch, heads, padded_q, head_dim), q.dtype),
                   jax.ShapeDtypeStruct((batch, heads, padded_q, LANES), _F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=_interpret_arg(interpret),
        name="attention_jax_tpu_flash_forward",
    )(*args)
    return jnp.swapaxes(out, 1, 2), lse[..., 0]


def _check_shapes(padded_q, padded_k, heads, kv_heads, block_q, block_k):
    if padded_q % block_q or padded_k % block_k:
        raise ValueError(f"the Mosaic TPU kernels need padded lengths that are tile multiples, got "
                         f"Tp={padded_q} (block_q={block_q}) and Sp={padded_k} (block_k={block_k})")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"the number of key/value heads K={kv_heads} must divide the query heads N={heads}")


# ----------------------------------------------------------------------------------------------------------
# Backward


def _probabilities(q, k, lse2, q_first, k_first, block_q, block_k, segs, spec, scale):
    """P [bq, bk] float32 of one tile from the saved lse2 [bq, 1] (exactly 0 where masked)."""
    s = lax.dot_general(q, k, _NT, precision=_precision(q), preferred_element_type=_F32) * (scale * LOG2E)
    mask = tile_mask(spec, q_first, k_first, block_q, block_k, *segs)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    return jnp.exp2(s - lse2)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse2_ref, delta_ref, *refs, spec, scale, block_q, block_k,
                 num_q_tiles, num_q_tiles_live):
    if spec.has_segments:
        q_seg_ref, kv_seg_ref, dk_ref, dv_ref, dk_acc, dv_acc = refs
    else:
        dk_ref, dv_ref, dk_acc, dv_acc = refs
    k_tile, step = pl.program_id(2), pl.program_id(3)
    q_tile = lax.rem(step, num_q_tiles)  # (lax.div/rem: non-negative ints, and no floor-division sign)

    @pl.when(step == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, _F32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, _F32)

    lo, hi = masking.q_tile_range(spec, k_tile, block_q, block_k, num_q_tiles_live)
    run = jnp.logical_and(q_tile >= lo, q_tile < hi)
    if spec.has_segments:
        run = jnp.logical_and(run, masking.segments_overlap(q_seg_ref[...], kv_seg_ref[...]))

    @pl.when(run)
    def _update():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        segs = (q_seg_ref[:, 0:1], kv_seg_ref[0:1, :]) if spec.has_segments else (None, None)
        p = _probabilities(q, k, lse2_ref[:, 0:1], q_tile * block_q, k_tile * block_k, block_q, block_k,
                           segs, spec, scale)  # [bq, bk]
        dv_acc[...] += _dot(p.astype(do.dtype).T, do)  # [bk, H]
        dp = lax.dot_general(do, v, _NT, precision=_precision(do), preferred_element_type=_F32)  # [bq, bk]
        ds = p * (dp - delta_ref[:, 0:1])
        dk_acc[...] += _dot(ds.astype(q.dtype).T, q)  # [bk, H]

    @pl.when(step == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse2_ref, delta_ref, *refs, spec, scale, block_q, block_k):
    if spec.has_segments:
        q_seg_ref, kv_seg_ref, dq_ref, dq_acc = refs
    else:
        q_seg_ref = kv_seg_ref = None
        dq_ref, dq_acc = refs
    q_tile, k_tile = pl.program_id(2), pl.program_id(3)

    @pl.when(k_tile == 0)
    def _init():
        dq_acc[...] = jnp.zeros(dq_acc.shape, _F32)

    run = _kv_tile_live(spec, q_tile, k_tile, block_q, block_k, q_seg_ref, kv_seg_ref)

    @pl.when(run)
    def _update():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        segs = (q_seg_ref[:, 0:1], kv_seg_ref[0:1, :]) if spec.has_segments else (None, None)
        p = _probabilities(q, k, lse2_ref[:, 0:1], q_tile * block_q, k_tile * block_k, block_q, block_k,
                           segs, spec, scale)
        dp = lax.dot_general(do, v, _NT, precision=_precision(do), preferred_element_type=_F32)
        ds = p * (dp - delta_ref[:, 0:1])
        dq_acc[...] += _dot(ds.astype(k.dtype), k)  # [bq, H]

    @pl.when(k_tile == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_acc[...] * scale).astype(dq_ref.dtype)


def tpu_backward(q, k, v, d_out, lse2, delta, segments, *, spec: masking.MaskSpec, scale: float,
                 blocks: BlockSizes, interpret):
    """dQ, dK, dV of the padded, sanitised call: a dK/dV kernel and a dQ kernel in Mosaic TPU.

    Args:
      q: [B, Tp, N, Hp]; k, v: [B, Sp, K, Hp]; d_out: [B, Tp, N, Hp] (float32, bfloat16 or float16).
      lse2: [B, N, Tp] float32, lse * log2(e) with +inf on rows that have no valid key.
      delta: [B, N, Tp] float32, rowsum(dO * O) minus the lse cotangent.
      segments: None or (q_seg [B, Tp], kv_seg [B, Sp]) int32; given exactly when `spec.has_segments`.
      spec, scale, blocks, interpret: as for `tpu_forward` (the dK/dV kernel uses
        (block_q_dkv, block_k_dkv), the dQ kernel (block_q_dq, block_k_dq)).

    Returns:
      (dq [B, Tp, N, Hp], dk [B, Sp, K, Hp], dv [B, Sp, K, Hp]) in the dtypes of q, k and v.

    Raises:
      ValueError: if Tp or Sp is not a multiple of the backward tiles, or K does not divide N.
    """
    batch, padded_q, heads, head_dim = q.shape
    padded_k, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))
    interpret = _interpret_arg(interpret)
    qt, kt, vt, dot = (jnp.swapaxes(x, 1, 2) for x in (q, k, v, d_out))  # head-major [B, heads, len, Hp]
    rows = [_rows(lse2), _rows(delta)]  # [B, N, Tp, 128]
    seg_args = list(_segment_args(segments)) if spec.has_segments else []

    # dK/dV: grid (B, K, Sp / bk, G * Tp / bq); the last axis walks (g, query tile) of kv head h.
    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    _check_shapes(padded_q, padded_k, heads, kv_heads, bq, bk)
    num_q_tiles = padded_q // bq
    num_q_tiles_live = -(-spec.num_queries // bq)

    def q_map(b, h, j, r):
        lo, hi = masking.q_tile_range(spec, j, bq, bk, num_q_tiles_live)
        head = h * groups + lax.div(r, num_q_tiles)
        return b, head, _clamp(lax.rem(r, num_q_tiles), lo, hi, num_q_tiles), 0

    def q_seg_map(b, h, j, r):
        index = q_map(b, h, j, r)
        return index[0], index[2], 0

    kv_spec = pl.BlockSpec((None, None, bk, head_dim), lambda b, h, j, r: (b, h, j, 0))
    q_spec = pl.BlockSpec((None, None, bq, head_dim), q_map)
    row_spec = pl.BlockSpec((None, None, bq, LANES), q_map)
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    if spec.has_segments:
        in_specs += [pl.BlockSpec((None, bq, LANES), q_seg_map),
                     pl.BlockSpec((None, SUBLANES, bk), lambda b, h, j, r: (b, 0, j))]
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, spec=spec, scale=scale, block_q=bq, block_k=bk,
                          num_q_tiles=num_q_tiles, num_q_tiles_live=num_q_tiles_live),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=(batch, kv_heads, padded_k // bk, groups * num_q_tiles),
            in_specs=in_specs,
            out_specs=[kv_spec, kv_spec],
            scratch_shapes=[pltpu.VMEM((bk, head_dim), _F32), pltpu.VMEM((bk, head_dim), _F32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
        compiler_params=params,
        interpret=interpret,
        name="attention_jax_tpu_flash_dkdv",
    )(qt, kt, vt, dot, *rows, *seg_args)

    # dQ: grid (B, N, Tp / bq, Sp / bk); the last axis walks the key tiles.
    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    _check_shapes(padded_q, padded_k, heads, kv_heads, bq, bk)
    num_k_tiles = padded_k // bk

    def kv_map(b, n, i, j):
        lo, hi = masking.kv_tile_range(spec, i, bq, bk)
        return b, lax.div(n, groups), _clamp(j, lo, hi, num_k_tiles), 0

    def kv_seg_map(b, n, i, j):
        index = kv_map(b, n, i, j)
        return index[0], 0, index[2]

    q_spec = pl.BlockSpec((None, None, bq, head_dim), lambda b, n, i, j: (b, n, i, 0))
    row_spec = pl.BlockSpec((None, None, bq, LANES), lambda b, n, i, j: (b, n, i, 0))
    kv_spec = pl.BlockSpec((None, None, bk, head_dim), kv_map)
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    if spec.has_segments:
        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b, n, i, j: (b, i, 0)),
                     pl.BlockSpec((None, SUBLANES, bk), kv_seg_map)]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec, scale=scale, block_q=bq, block_k=bk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=(batch, heads, padded_q // bq, num_k_tiles),
            in_specs=in_specs,
            out_specs=q_spec,
            scratch_shapes=[pltpu.VMEM((bq, head_dim), _F32)],
        ),
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=params,
        interpret=interpret,
        name="attention_jax_tpu_flash_dq",
    )(qt, kt, vt, dot, *rows, *seg_args)
    return jnp.swapaxes(dq, 1, 2), jnp.swapaxes(dk, 1, 2), jnp.swapaxes(dv, 1, 2)
