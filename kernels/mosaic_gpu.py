"""The flash-attention forward for Hopper (sm90) GPUs, in Pallas Mosaic GPU.

The FlashAttention-2 forward (Dao 2023, arXiv:2307.08691, Algorithm 1) with the Hopper building blocks of
FlashAttention-3 (Shah et al. 2024, arXiv:2407.08608): the Q K^T and P V products run as warpgroup-level
WGMMA instructions (`plgpu.wgmma`, float32 accumulators in registers), and key/value tiles stream from global
to shared memory through TMA copies (`plgpu.copy_gmem_to_smem`) into a ring of shared-memory slots, each
slot guarded by an mbarrier (`plgpu.Barrier`), so the copy of the next tiles overlaps the maths on the
current one. Unlike FlashAttention-3 this kernel is not warp-specialised: one warpgroup (128 threads) per
CTA both issues the copies and computes, and there is no ping-pong between two consumer warpgroups and no
FP8 path. It is the simple, easy-to-audit member of that family.

Semantics match `kernels/forward.py` (the Triton forward) exactly: logits are scaled by `scale * log2(e)`,
the softmax is an online one in base 2 (running max m, running sum l, unnormalised float32 accumulator),
and the kernel writes the natural log-sum-exp lse = (m + log2 l) * ln 2 = m * ln 2 + ln l. A row with no
valid key gets a zero output and `empty_row_lse`.

Grid: (N, Tq / 64, B), one CTA per [64, H] query tile of one head (64 rows: one WGMMA M-tile). Query head n
reads key/value head n // G (grouped-query attention without repeated heads). The key tiles a query tile
may attend come from `masking.kv_tile_range` (causal mask, local window, true key count), so fully masked
tiles cost nothing; tiles that are fully visible skip the element mask, and only the boundary tiles build
it (from `plgpu.broadcasted_iota` in the WGMMA register layout).

Supported: bfloat16/float16, head dims 64/128/256, causal (top-left alignment), local windows, the static
key-padding mask (keys in [spec.num_keys, spec.padded_keys)), GQA, any `scale`. Not supported (the caller
falls back to the Triton forward, see `supports_call`): float32, segment ids and lengths. The sequence
lengths need no particular divisibility: the wrapper pads queries to a multiple of 64 and keys to a multiple
of the key tile (the added keys are masked) and slices the result.

Testing hook: setting the module global `_INTERPRET` to a `jax._src.pallas.mosaic_gpu.interpret.params.
InterpretGPUParams()` runs the kernel in jax's (private) Mosaic GPU interpreter on CPU. That interpreter has
no `layout_cast`, no transposed or register WGMMA operands and no `run_state`, so in that mode the two
products are plain dots and layouts are left alone; the TMA ring, barriers, tile ranges, masks, softmax and
epilogue are the same code the GPU runs.

Written against the Pallas Mosaic GPU API of jax 0.10; it traces on CPU but has not been compiled or run on
a Hopper GPU in this project.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attention_jax.kernels import masking
from attention_jax.kernels.block_sizes import pad_axis, round_up

__all__ = ["BLOCK_Q", "HEAD_DIMS", "available", "mosaic_gpu_forward", "supports_call"]

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
_F32 = jnp.float32

BLOCK_Q = 64  # query rows per CTA: one WGMMA M-tile for one warpgroup
HEAD_DIMS = (64, 128, 256)
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_SMEM_BUDGET = 200 * 1024  # bytes of shared memory the Q tile and the K/V ring may use (sm90 has 227 KiB)
_MAX_SLOTS = 3
_INTERPRET = None  # tests only: run plgpu.kernel in the Mosaic GPU interpreter (a private jax feature)
# The names the kernel uses; `available()` checks that this jax has all of them.
_PLGPU_API = ("kernel", "CompilerParams", "Barrier", "SMEM", "ACC", "Layout", "TilingTransform",
              "SwizzleTransform", "wgmma", "copy_gmem_to_smem", "copy_smem_to_gmem", "wait_smem_to_gmem",
              "barrier_wait", "commit_smem", "transpose_ref", "layout_cast")


def _plgpu():
    """The `jax.experimental.pallas.mosaic_gpu` module (raises ImportError when this jax has none)."""
    from jax.experimental.pallas import mosaic_gpu as plgpu
    return plgpu


def available() -> bool:
    """Whether this kernel can run here: Pallas Mosaic GPU with every API it uses, on a Hopper GPU.

    True only when `jax.experimental.pallas.mosaic_gpu` imports, has the functions this kernel calls, and
    `jax.devices()[0]` is a CUDA GPU of compute capability 9.x. Never raises (any error means False).
    """
    try:
        plgpu = _plgpu()
        if not all(hasattr(plgpu, name) for name in _PLGPU_API):
            return False
        if not hasattr(plgpu.Layout, "WGMMA"):
            return False
        device = jax.devices()[0]
        if device.platform not in ("gpu", "cuda"):
            return False
        capability = str(getattr(device, "compute_capability", ""))
        return capability.split(".")[0] == "9"
    except Exception:  # noqa: BLE001 - any failure (no plugin, no device, odd build) means "not available"
        return False


def supports_call(q, k, v, spec: masking.MaskSpec) -> tuple[bool, str]:
    """Whether `mosaic_gpu_forward` can run this call, and if not why (for a log line). Never raises.

    Args:
      q: [B, Tp, N, Hp] padded queries (any array-like with .shape and .dtype).
      k, v: [B, Sp, K, Hp] padded keys and values.
      spec: the call's static mask.

    Returns:
      (True, "") or (False, reason). Reasons: a dtype other than bfloat16/float16 or dtypes that differ; not
      4-D or shapes that disagree; Hp not in 64/128/256; K not dividing N; `spec.has_segments` (segment ids
      and lengths are not implemented here); an empty query or key axis.
    """
    try:
        dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
        if len(dtypes) != 1:
            return False, f"query, key and value dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
        dtype = dtypes.pop()
        if dtype not in _DTYPES:
            return False, f"dtype {dtype} is not bfloat16 or float16"
        if len(q.shape) != 4 or len(k.shape) != 4 or tuple(k.shape) != tuple(v.shape):
            return False, f"expected q [B,T,N,H] and k, v [B,S,K,H]; got {q.shape}, {k.shape}, {v.shape}"
        batch, padded_q, heads, head_dim = q.shape
        if k.shape[0] != batch or k.shape[3] != head_dim:
            return False, f"key shape {k.shape} does not match query shape {q.shape}"
        if head_dim not in HEAD_DIMS:
            return False, f"head dim {head_dim} is not one of {HEAD_DIMS}"
        kv_heads = k.shape[2]
        if kv_heads < 1 or heads % kv_heads:
            return False, f"{kv_heads} key/value heads do not divide {heads} query heads"
        if spec.has_segments:
            return False, "segment ids / lengths are not supported by the Mosaic GPU forward"
        if padded_q < 1 or k.shape[1] < 1 or spec.num_keys < 1:
            return False, "empty query or key axis"
        if spec.num_keys > k.shape[1]:
            return False, f"spec.num_keys={spec.num_keys} exceeds the {k.shape[1]} keys given"
        return True, ""
    except Exception as e:  # noqa: BLE001 - must never raise
        return False, f"cannot inspect the call ({type(e).__name__}: {e})"


def _block_kv(head_dim: int, num_keys: int) -> int:
    """The key tile: 128 rows for H <= 128 when there are more than 64 keys, else 64 (registers/SMEM)."""
    return 128 if head_dim <= 128 and num_keys > 64 else 64


def _num_slots(head_dim: int, block_kv: int, itemsize: int) -> int:
    """How many K/V tiles the TMA ring holds: as many as fit next to the Q tile, 2 to `_MAX_SLOTS`."""
    q_bytes = BLOCK_Q * head_dim * itemsize
    slot_bytes = 2 * block_kv * head_dim * itemsize  # one K and one V tile
    return max(2, min(_MAX_SLOTS, (_SMEM_BUDGET - q_bytes) // slot_bytes))


def _full_tile_range(spec: masking.MaskSpec, q_first, lo, hi, block_kv: int):
    """[mid_lo, mid_hi) within [lo, hi): the key tiles every row of the query tile sees whole (no mask)."""
    q_last = q_first + (BLOCK_Q - 1)
    mid_lo = lo
    if spec.left is not None:  # every key of tile j is >= q_last - left  <=>  j * bk >= q_last - left
        first_ok = jnp.maximum(q_last - spec.left, 0)
        mid_lo = jnp.maximum(lo, lax.div(first_ok + (block_kv - 1), block_kv))
    mid_lo = jnp.minimum(mid_lo, hi)
    mid_hi = hi
    if spec.right is not None:  # every key of tile j is <= q_first + right  <=>  (j + 1) * bk <= q_first + right + 1
        mid_hi = jnp.minimum(mid_hi, lax.div(jnp.maximum(q_first + spec.right + 1, 0), block_kv))
    if spec.num_keys % block_kv:  # the last live tile holds masked (padding) keys
        mid_hi = jnp.minimum(mid_hi, jnp.int32(spec.num_keys // block_kv))
    mid_hi = jnp.maximum(mid_hi, mid_lo)
    return mid_lo, mid_hi


def _forward_kernel(q_ref, k_ref, v_ref, out_ref, lse_ref, q_smem, k_smem, v_smem, lse_smem, q_barrier,
                    k_barriers, v_barriers, *, spec: masking.MaskSpec, scale: float, groups: int,
                    block_kv: int, num_slots: int, empty_row_lse: float, interpreted: bool):
    plgpu = _plgpu()
    dtype = q_ref.dtype
    head_dim = q_ref.shape[-1]
    head = lax.axis_index("heads")
    q_tile = lax.axis_index("q_tiles")
    batch = lax.axis_index("batch")
    kv_head = lax.div(head, jnp.array(groups, head.dtype))
    q_first = q_tile * BLOCK_Q
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout = plgpu.Layout.WGMMA.reduce(1)

    # The interpreter has no `layout_cast`; layouts only matter to the GPU lowering.
    def cast(x, layout):
        return x if interpreted else plgpu.layout_cast(x, layout)

    def iota(dimension):
        return cast(lax.broadcasted_iota(jnp.int32, (BLOCK_Q, block_kv), dimension), wgmma_layout)

    lo, hi = masking.kv_tile_range(spec, q_tile, BLOCK_Q, block_kv)
    hi = jnp.maximum(hi, lo)  # an empty range stays empty (and every sub-range below lies in [lo, hi))
    mid_lo, mid_hi = _full_tile_range(spec, q_first, lo, hi, block_kv)

    def load_kv(step, slot):
        keys = (batch, pl.ds(step * block_kv, block_kv), kv_head)
        plgpu.copy_gmem_to_smem(k_ref.at[keys], k_smem.at[slot], k_barriers.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[keys], v_smem.at[slot], v_barriers.at[slot])

    # Prologue: the query tile, and the first `num_slots` key/value tiles into the ring.
    plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(q_first, BLOCK_Q), head], q_smem, q_barrier.at[0])
    for i in range(num_slots):
        pl.when(lo + i < hi)(lambda i=i: load_kv(lo + i, i))
    plgpu.barrier_wait(q_barrier.at[0])

    def step(kv_step, carry, *, masked: bool):
        acc, m, l = carry  # [bq, H] f32 (WGMMA layout), [bq] f32, [bq] f32 (row layout)
        slot = lax.rem(kv_step - lo, jnp.array(num_slots, kv_step.dtype))

        plgpu.barrier_wait(k_barriers.at[slot])

        def qk_product(acc_ref):
            plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
            return acc_ref[...]  # waits for the WGMMA

        if interpreted:
            # The interpreter cannot read a transposed SMEM ref as a WGMMA operand: same product, plain dot.
            s = lax.dot_general(q_smem[...], k_smem[slot], (((1,), (1,)), ((), ())), preferred_element_type=_F32)
        else:
            s = pl.run_scoped(qk_product, plgpu.ACC((BLOCK_Q, block_kv), _F32))
        s = s * (scale * LOG2E)  # base-2 logits
        if masked:
            q_pos = q_first + iota(0)
            k_pos = kv_step * block_kv + iota(1)
            conditions = []
            if spec.num_keys % block_kv:  # key padding: only the last live tile can hold any
                conditions.append(k_pos < spec.num_keys)
            if spec.right is not None:
                conditions.append(k_pos <= q_pos + spec.right)
            if spec.left is not None:
                conditions.append(k_pos >= q_pos - spec.left)
            if conditions:
                keep = conditions[0]
                for condition in conditions[1:]:
                    keep = jnp.logical_and(keep, condition)
                s = jnp.where(keep, s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=1))
        if masked:
            # -inf until a row meets its first valid key; 0 stands in so no (-inf) - (-inf) appears.
            m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        else:
            m_use = m_new  # a fully visible tile gives every row a finite max
        p = jnp.exp2(s - lax.broadcast_in_dim(m_use, s.shape, [0]))  # exactly 0 where masked
        alpha = jnp.exp2(m - m_use)  # 0 while m = -inf
        l = l * alpha + p.sum(axis=1)
        acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        p_low = p.astype(dtype)

        plgpu.barrier_wait(v_barriers.at[slot])

        if interpreted:
            # The interpreter takes no register operand in `wgmma` (and has no `run_state`): plain dot.
            acc = acc + jnp.dot(p_low, v_smem[slot], preferred_element_type=_F32)
        else:
            def pv_product(acc_ref):
                plgpu.wgmma(acc_ref, p_low, v_smem.at[slot])

            # Accumulates into the rescaled acc in place; `run_state` waits for the WGMMA before returning.
            acc = pl.run_state(pv_product)(plgpu.ACC.init(acc))

        # Both WGMMAs reading this slot are done: refill it with the tile `num_slots` steps ahead.
        next_step = kv_step + num_slots
        pl.when(next_step < hi)(lambda: load_kv(next_step, slot))
        return acc, m_new, l

    carry = (
        cast(jnp.zeros((BLOCK_Q, head_dim), _F32), wgmma_layout),
        cast(jnp.full((BLOCK_Q,), -jnp.inf, _F32), row_layout),
        cast(jnp.zeros((BLOCK_Q,), _F32), row_layout),
    )
    masked_step = lambda j, c: step(j, c, masked=True)  # noqa: E731
    full_step = lambda j, c: step(j, c, masked=False)  # noqa: E731
    if spec.left is not None:
        carry = lax.fori_loop(lo, mid_lo, masked_step, carry)  # tiles cut by the window's left edge
    carry = lax.fori_loop(mid_lo, mid_hi, full_step, carry)  # tiles every row sees whole
    carry = lax.fori_loop(mid_hi, hi, masked_step, carry)  # causal diagonal / right edge / key padding
    acc, m, l = carry

    live = l > 0.0  # rows with at least one valid key
    l_safe = jnp.where(live, l, 1.0)
    out = acc / lax.broadcast_in_dim(l_safe, acc.shape, [0])  # acc is 0 on empty rows
    # The Q tile is no longer read by any WGMMA: reuse its shared memory for the output tile.
    q_smem[...] = out.astype(dtype)
    lse_smem[...] = jnp.where(live, m * LN2 + jnp.log(l_safe), empty_row_lse)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_smem, out_ref.at[batch, pl.ds(q_first, BLOCK_Q), head])
    plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[batch, head, pl.ds(q_first, BLOCK_Q)])
    plgpu.wait_smem_to_gmem(0)


def mosaic_gpu_forward(q, k, v, *, spec: masking.MaskSpec, scale: float, empty_row_lse: float):
    """Runs the Hopper forward kernel on padded inputs (see `supports_call` for what it accepts).

    Args:
      q: [B, Tp, N, Hp] bfloat16 or float16, Hp in 64/128/256.
      k, v: [B, Sp, K, Hp], the dtype of q; K divides N (query head n reads key/value head n // (N / K)).
        Keys in [spec.num_keys, Sp) are masked; Tp and Sp need no particular divisibility (padded here to
        multiples of 64 and of the key tile, then sliced back).
      spec: the static mask (`spec.has_segments` must be False).
      scale: the logit scale (a Python float).
      empty_row_lse: the lse written for a row with no valid key.

    Returns:
      (out [B, Tp, N, Hp] in q's dtype, lse [B, N, Tp] float32), with lse the natural log-sum-exp of the
      scaled logits over the valid keys.

    Raises:
      ValueError: if `supports_call` rejects the call.
      ImportError: if this jax has no Pallas Mosaic GPU.
      Lowering/compilation errors from jax when not run on a Hopper GPU (tracing works anywhere).
    """
    ok, reason = supports_call(q, k, v, spec)
    if not ok:
        raise ValueError(f"mosaic_gpu_forward cannot run this call: {reason}")
    plgpu = _plgpu()
    batch, padded_q, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    dtype = jnp.dtype(q.dtype)
    block_kv = _block_kv(head_dim, spec.num_keys)
    num_slots = _num_slots(head_dim, block_kv, dtype.itemsize)

    # The kernel's own tiles: 64 query rows, `block_kv` key rows. Added keys lie beyond spec.num_keys.
    tq = round_up(padded_q, BLOCK_Q)
    sk = round_up(k.shape[1], block_kv)
    q_in = pad_axis(q, 1, tq)
    k_in = pad_axis(k, 1, sk)
    v_in = pad_axis(v, 1, sk)
    kernel_spec = masking.MaskSpec(spec.num_queries, spec.num_keys, sk, spec.is_causal, spec.window, False)

    def body(q_ref, k_ref, v_ref, out_ref, lse_ref):
        transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
        pl.run_scoped(
            lambda *scratch: _forward_kernel(
                q_ref, k_ref, v_ref, out_ref, lse_ref, *scratch, spec=kernel_spec, scale=float(scale),
                groups=heads // kv_heads, block_kv=block_kv, num_slots=num_slots,
                empty_row_lse=float(empty_row_lse), interpreted=_INTERPRET is not None),
            plgpu.SMEM((BLOCK_Q, head_dim), dtype, transforms=transforms),  # Q tile, then the output tile
            plgpu.SMEM((num_slots, block_kv, head_dim), dtype, transforms=transforms),  # K ring
            plgpu.SMEM((num_slots, block_kv, head_dim), dtype, transforms=transforms),  # V ring
            plgpu.SMEM((BLOCK_Q,), _F32),  # lse tile
            plgpu.Barrier(num_barriers=1),  # Q arrived
            plgpu.Barrier(num_barriers=num_slots),  # K slot i arrived
            plgpu.Barrier(num_barriers=num_slots),  # V slot i arrived
        )

    out_type = (jax.ShapeDtypeStruct((batch, tq, heads, head_dim), dtype),
                jax.ShapeDtypeStruct((batch, heads, tq), _F32))
    out, lse = plgpu.kernel(
        body,
        out_type=out_type,
        grid=(heads, tq // BLOCK_Q, batch),
        grid_names=("heads", "q_tiles", "batch"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        **({"interpret": _INTERPRET} if _INTERPRET is not None else {}),
    )(q_in, k_in, v_in)
    return out[:, :padded_q], lse[:, :, :padded_q]
