"""The flash-attention backward kernels (Pallas, Triton lowering; also run in interpret mode on any device).

Dao 2023, "FlashAttention-2", arXiv:2307.08691, Algorithm 2, split into three kernels so no program writes
another's output (no atomics):

  1. `delta`: delta = rowsum(dO * O) per query row (the D_i of Algorithm 2, line 4), float32 [B, N, T].
  2. dK/dV: one program per (key tile, batch, key/value head). It walks every query tile that may see its
     keys, for all G query heads that share the key/value head, recomputing P = exp2(s - lse * log2 e) from
     the saved lse, and accumulates dV += P^T dO and dK += dS^T Q * scale with dS = P * (dP - delta),
     dP = dO V^T. Summing over the G heads in-kernel is how grouped-query attention gets dK, dV of shape
     [B, S, K, H] without repeating heads.
  3. dQ: one program per (query tile, batch, query head), walking key tiles: dQ += dS K * scale.

`lse2` is the saved lse times log2(e), with +inf on rows that have no valid key: every logit of such a row
is -inf after masking, and exp2(-inf - inf) = 0 gives them zero gradients without a NaN. As in the forward,
masked logits are replaced with `where`; the products dS K, dS^T Q and dO V^T of a masked pair still multiply
P = dS = 0 by the row, so they rely on `flash.py` having zeroed every dead query, key and value row
(`masking.zero_dead_rows`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attention_jax.kernels import masking
from attention_jax.kernels.block_sizes import BlockSizes
from attention_jax.kernels.forward import LOG2E, tile_dot, triton_compiler_params

__all__ = ["flash_backward", "flash_delta"]

_F32 = jnp.float32


def _delta_kernel(o_ref, do_ref, delta_ref):
    o = o_ref[...].astype(_F32)  # [bq, H]
    do = do_ref[...].astype(_F32)
    delta_ref[...] = jnp.sum(o * do, axis=1)


def flash_delta(out, d_out, *, block_q: int, interpret: bool):
    """delta [B, N, Tp] float32 = rowsum(dO * O) from out, d_out [B, Tp, N, Hp]."""
    batch, padded_q, heads, head_dim = out.shape
    spec = pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, n: (b, i, n, 0))
    return pl.pallas_call(
        _delta_kernel,
        grid=(padded_q // block_q, batch, heads),
        in_specs=[spec, spec],
        out_specs=pl.BlockSpec((None, None, block_q), lambda i, b, n: (b, n, i)),
        out_shape=jax.ShapeDtypeStruct((batch, heads, padded_q), _F32),
        compiler_params=None if interpret else triton_compiler_params(4, 1),
        interpret=interpret,
        name="attention_jax_flash_delta",
    )(out, d_out)


def _probabilities(q, k, lse2, q_pos, k_pos, q_seg, kv_seg, spec, scale):
    """P [bq, bk] f32 of one tile, recomputed from the saved lse (exactly 0 where masked)."""
    s = tile_dot(q, k.T) * (scale * LOG2E)  # [bq, bk]
    mask = masking.element_mask(spec, q_pos, k_pos, q_seg, kv_seg)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    return jnp.exp2(s - lse2[:, None])


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse2_ref, delta_ref, *refs, spec, scale, block_q, block_k,
                 groups, num_q_tiles):
    if spec.has_segments:
        q_seg_ref, kv_seg_ref, dk_ref, dv_ref = refs
    else:
        dk_ref, dv_ref = refs
    k_tile, kv_head = pl.program_id(0), pl.program_id(2)
    k = k_ref[...]  # [bk, H]
    v = v_ref[...]
    k_pos = k_tile * block_k + jnp.arange(block_k, dtype=jnp.int32)
    kv_seg = kv_seg_ref[...] if spec.has_segments else None  # [bk]
    lo, hi = masking.q_tile_range(spec, k_tile, block_q, block_k, num_q_tiles)

    def head_step(g, carry):
        head = kv_head * groups + g

        def q_step(q_tile, carry):
            dk, dv = carry  # [bk, H] f32 each
            rows = pl.ds(q_tile * block_q, block_q)
            q_seg = q_seg_ref[rows] if spec.has_segments else None

            def update():
                q = q_ref[rows, head, :]  # [bq, H]
                do = do_ref[rows, head, :]
                q_pos = q_tile * block_q + jnp.arange(block_q, dtype=jnp.int32)
                p = _probabilities(q, k, lse2_ref[head, rows], q_pos, k_pos, q_seg, kv_seg, spec, scale)
                dv_new = dv + tile_dot(p.astype(do.dtype).T, do)
                dp = tile_dot(do, v.T)  # [bq, bk]
                ds = p * (dp - delta_ref[head, rows][:, None])
                dk_new = dk + tile_dot(ds.astype(q.dtype).T, q)
                return dk_new, dv_new

            if spec.has_segments:
                return lax.cond(masking.segments_overlap(q_seg, kv_seg), update, lambda: carry)
            return update()

        return lax.fori_loop(lo, hi, q_step, carry)

    zeros = jnp.zeros(k.shape, _F32)
    dk, dv = lax.fori_loop(0, groups, head_step, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse2_ref, delta_ref, *refs, spec, scale, block_q, block_k):
    if spec.has_segments:
        q_seg_ref, kv_seg_ref, dq_ref = refs
    else:
        (dq_ref,) = refs
    q_tile = pl.program_id(0)
    q = q_ref[...]  # [bq, H]
    do = do_ref[...]
    lse2 = lse2_ref[...]  # [bq]
    delta = delta_ref[...]
    q_pos = q_tile * block_q + jnp.arange(block_q, dtype=jnp.int32)
    q_seg = q_seg_ref[...] if spec.has_segments else None

    def step(k_tile, dq):
        keys = pl.ds(k_tile * block_k, block_k)
        kv_seg = kv_seg_ref[keys] if spec.has_segments else None

        def update():
            k = k_ref[keys, :]  # [bk, H]
            v = v_ref[keys, :]
            k_pos = k_tile * block_k + jnp.arange(block_k, dtype=jnp.int32)
            p = _probabilities(q, k, lse2, q_pos, k_pos, q_seg, kv_seg, spec, scale)
            dp = tile_dot(do, v.T)
            ds = p * (dp - delta[:, None])
            return dq + tile_dot(ds.astype(k.dtype), k)

        if spec.has_segments:
            return lax.cond(masking.segments_overlap(q_seg, kv_seg), update, lambda: dq)
        return update()

    lo, hi = masking.kv_tile_range(spec, q_tile, block_q, block_k)
    dq = lax.fori_loop(lo, hi, step, jnp.zeros(q.shape, _F32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def flash_backward(query, key, value, d_out, lse2, delta, segments, *, spec: masking.MaskSpec, scale: float,
                   blocks: BlockSizes, interpret: bool):
    """dQ, dK, dV of the padded, sanitised call.

    Args:
      query: [B, Tp, N, Hp]; key, value: [B, Sp, K, Hp]; d_out: [B, Tp, N, Hp].
      lse2: [B, N, Tp] float32, lse * log2(e) with +inf on empty rows.
      delta: [B, N, Tp] float32, rowsum(dO * O) minus the lse cotangent.
      segments: None or (q_seg [B, Tp], kv_seg [B, Sp]) int32.
      spec, scale, blocks, interpret: as for `flash_forward`.

    Returns:
      (dq [B, Tp, N, Hp], dk [B, Sp, K, Hp], dv [B, Sp, K, Hp]) in the input dtypes.
    """
    batch, padded_q, heads, head_dim = query.shape
    padded_k, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    num_q_tiles_dkv = -(-spec.num_queries // blocks.block_q_dkv)
    params = None if interpret else triton_compiler_params(blocks.warps(head_dim), blocks.num_stages)
    seg_args = list(segments) if spec.has_segments else []

    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    dkdv_in = [
        pl.BlockSpec((None, padded_q, heads, head_dim), lambda j, b, h: (b, 0, 0, 0)),  # q: every head of b
        pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0)),
        pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0)),
        pl.BlockSpec((None, padded_q, heads, head_dim), lambda j, b, h: (b, 0, 0, 0)),  # dO
        pl.BlockSpec((None, heads, padded_q), lambda j, b, h: (b, 0, 0)),  # lse2
        pl.BlockSpec((None, heads, padded_q), lambda j, b, h: (b, 0, 0)),  # delta
    ]
    if spec.has_segments:
        dkdv_in += [pl.BlockSpec((None, padded_q), lambda j, b, h: (b, 0)),
                    pl.BlockSpec((None, bk), lambda j, b, h: (b, j))]
    kv_out = pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, spec=spec, scale=scale, block_q=bq, block_k=bk, groups=groups,
                          num_q_tiles=num_q_tiles_dkv),
        grid=(padded_k // bk, batch, kv_heads),
        in_specs=dkdv_in,
        out_specs=[kv_out, kv_out],
        out_shape=[jax.ShapeDtypeStruct(key.shape, key.dtype), jax.ShapeDtypeStruct(value.shape, value.dtype)],
        compiler_params=params,
        interpret=interpret,
        name="attention_jax_flash_dkdv",
    )(query, key, value, d_out, lse2, delta, *seg_args)

    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    q_spec = pl.BlockSpec((None, bq, None, head_dim), lambda i, b, n: (b, i, n, 0))
    kv_full = pl.BlockSpec((None, padded_k, None, head_dim), lambda i, b, n: (b, 0, n // groups, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i))
    dq_in = [q_spec, kv_full, kv_full, q_spec, row_spec, row_spec]
    if spec.has_segments:
        dq_in += [pl.BlockSpec((None, bq), lambda i, b, n: (b, i)),
                  pl.BlockSpec((None, padded_k), lambda i, b, n: (b, 0))]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec, scale=scale, block_q=bq, block_k=bk),
        grid=(padded_q // bq, batch, heads),
        in_specs=dq_in,
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(query.shape, query.dtype),
        compiler_params=params,
        interpret=interpret,
        name="attention_jax_flash_dq",
    )(query, key, value, d_out, lse2, delta, *seg_args)
    return dq, dk, dv
