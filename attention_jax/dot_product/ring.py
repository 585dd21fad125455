"""The "ring" backend: ring attention over a sequence mesh axis, with zig-zag load balancing for causal calls.

Liu et al. 2023, "Ring Attention with Blockwise Transformers for Near-Infinite Context", arXiv:2310.01889;
load balancing after Brandon et al. 2023, "Striped Attention", arXiv:2311.09431 (here the zig-zag variant:
2P chunks, device i holds chunks i and 2P - 1 - i).

Inside one `jax.shard_map`, each of the P devices on the sequence axis keeps its query chunk and a key/value
chunk. K and V, stacked into one array, travel around the ring with `jax.lax.ppermute` (device i sends to
i + 1), so after hop h device i holds the chunk of device j = i - h (mod P): P - 1 collective-permutes in the
forward. Each hop runs a single-device backend (`inner`) on (local queries, current keys/values) with a per-hop
`AttentionMask` (causal only on the diagonal hop; lengths re-expressed relative to the local chunks; segment ids
sliced from the replicated [B, T] / [B, S] ids) and returns (out, lse); the partial results merge in float32
through the lse. Hops whose blocks are all masked by causality are skipped with `lax.switch`.

Causal load balancing (`load_balance=True`, causal calls): the natural, contiguous sequence sharding comes in;
inside the shard_map each device sends the two halves of its chunk with two ppermutes (zig-zag order), and the
output goes back the same way (two more), so callers see natural order. In zig-zag order every hop h > 0 is one
full [2C, C] block ([all queries] x [first key chunk] when j < i, [second query chunk] x [all keys] when j > i,
C = T / 2P), and hop 0 is the causal [2C, 2C] block: every device does the same work.

Collective-permutes in one compiled program (P = size of the sequence axis), as `tests/dot_product/
sequence_parallel_devices.py` counts them in the optimised HLO:
  forward:  P - 1 (the K/V ring), plus 4 for causal zig-zag calls (2 in, 2 out), plus 2 more when the lse is
            returned in zig-zag order. No all-gather, no all-to-all.
  backward: P (P - 1 hops of the stacked [K, V, dK, dV], one final hop bringing dK/dV home), plus the 4
            transposed zig-zag permutes.

The backward is a `jax.custom_vjp` over the whole ring. The forward saves (q, local k, v, out, lse): O(S / P)
per device, not one residual per hop. The backward rotates K/V again with float32 dK/dV accumulators:
  * inner "blockwise": each hop calls `blockwise._attention_bwd` with the GLOBAL out and lse as residuals
    (P = exp(s - lse), delta = rowsum(dO * O) - d_lse): no forward recompute;
  * any other inner backend ("xla", flash): each hop is recomputed under `jax.vjp` and its cotangents are
    weighted, d out_j = exp(lse_j - lse) dO and d lse_j = exp(lse_j - lse) (d_lse + <dO, out_j - out>).

Weights (`return_weights`) are recomputed outside the shard_map from the lse (`base.weights_from_lse`, a dense
[B, N, T, S] array).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from attention_jax import _checks
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product import _sequence, blockwise
from attention_jax.dot_product.base import AttentionCall, Backend, BackendOutput, weights_from_lse
from attention_jax.dot_product.blockwise import BlockwiseBackend

__all__ = ["RingBackend"]

_F32 = jnp.float32
EMPTY_ROW_LSE = _sequence.EMPTY_ROW_LSE


class _Branch(NamedTuple):
    """One (query parts) x (key parts) block of a hop; parts index the local chunks (zig-zag: 0 and 1)."""

    q_parts: tuple[int, ...]
    k_parts: tuple[int, ...]
    causal: bool


class _Static(NamedTuple):
    """The hashable part of a ring call (the custom_vjp's nondiff argument)."""

    inner: Backend
    axis: str
    size: int  # P
    perm: tuple[tuple[int, int], ...]  # the ring step, (source, destination) pairs
    zigzag: bool
    causal: bool
    scale: float
    chunk_q: int  # rows of one local query part
    chunk_k: int  # rows of one local key part


def _starts(st: _Static, device: jax.Array, chunk: int) -> tuple[jax.Array, ...]:
    """The global first row of each local part of `device` (contiguous: chunk r; zig-zag: chunks r, 2P-1-r)."""
    if st.zigzag:
        return device * chunk, (2 * st.size - 1 - device) * chunk
    return (device * chunk,)


def _plan(st: _Static, hop: int) -> tuple[_Branch | None, ...]:
    """The branches of a hop; more than one are chosen at run time by `j < i` (None: skip the hop)."""
    parts = (0, 1) if st.zigzag else (0,)
    if hop == 0:
        return (_Branch(parts, parts, st.causal),)
    if not st.causal:
        return (_Branch(parts, parts, False),)
    if st.zigzag:  # j > i: second query chunk x all keys; j < i: all queries x first key chunk
        return _Branch((1,), (0, 1), False), _Branch((0, 1), (0,), False)
    return None, _Branch(parts, parts, False)  # contiguous causal: j > i is empty, j < i is full


def _rows(parts: tuple[int, ...], chunk: int) -> slice:
    return slice(parts[0] * chunk, (parts[-1] + 1) * chunk)


def _branch_mask(st: _Static, aux: dict, i, j, br: _Branch, q, k, v) -> AttentionMask:
    """The block's mask in local coordinates; lengths stay prefixes because local order is monotone in the
    global positions."""
    q_starts = [_starts(st, i, st.chunk_q)[p] for p in br.q_parts]
    k_starts = [_starts(st, j, st.chunk_k)[p] for p in br.k_parts]

    def local_length(lengths, starts, chunk):  # [B] -> [B], the valid local prefix
        if lengths is None:
            return None
        return sum(jnp.clip(lengths - s, 0, chunk) for s in starts).astype(jnp.int32)

    def local_ids(ids, starts, chunk):  # [B, T] replicated -> [B, t]
        return jnp.concatenate([jax.lax.dynamic_slice_in_dim(ids, s, chunk, axis=1) for s in starts], axis=1)

    segments = None
    if aux["q_ids"] is not None:
        segments = (local_ids(aux["q_ids"], q_starts, st.chunk_q), local_ids(aux["k_ids"], k_starts, st.chunk_k))
    return AttentionMask(
        is_causal=br.causal,
        query_seq_lengths=local_length(aux["q_lengths"], q_starts, st.chunk_q),
        key_value_seq_lengths=local_length(aux["k_lengths"], k_starts, st.chunk_k),
        segment_ids=segments,
    ).bind(q, k, v)


def _blockwise_setup(st: _Static, k, v):
    """blockwise's static config for a key block, and k, v padded to whole chunks."""
    num_keys = k.shape[1]
    block = max(1, min(st.inner.block_k, num_keys))
    num_blocks = -(-num_keys // block)
    cfg = blockwise._Config(float(st.scale), block, num_blocks)
    return cfg, _sequence.pad_to(k, 1, num_blocks * block), _sequence.pad_to(v, 1, num_blocks * block)


def _hop_forward(st: _Static, q, k, v, mask) -> tuple[jax.Array, jax.Array]:
    """(out [B, t, N, H] float32, lse [B, N, t] float32) of one block."""
    batch, rows, heads, _ = q.shape
    if isinstance(st.inner, BlockwiseBackend):
        cfg, k, v = _blockwise_setup(st, k, v)
        out, lse = blockwise._forward(cfg, q, k, v, {"mask": mask, "bias": None})  # lse [B, K, G, t]
        return out, lse.reshape(batch, heads, rows)
    out, _, lse = st.inner(AttentionCall(q, k, v, None, mask, st.scale, return_lse=True))
    return out.astype(_F32), lse


def _hop_backward(st: _Static, q, k, v, mask, out, lse, d_out, d_lse):
    """(dq, dk, dv) float32 of one block, from the global out, lse and their cotangents (rows of the block)."""
    batch, rows, heads, _ = q.shape
    kv_heads = k.shape[2]
    if isinstance(st.inner, BlockwiseBackend):
        num_keys = k.shape[1]
        cfg, k, v = _blockwise_setup(st, k.astype(_F32), v.astype(_F32))
        grouped = (batch, kv_heads, heads // kv_heads, rows)
        residuals = (q.astype(_F32), k, v, {"mask": mask, "bias": None}, out, lse.reshape(grouped))
        d_q, d_k, d_v, _ = blockwise._attention_bwd(cfg, residuals, (d_out, d_lse.reshape(grouped)))
        return d_q, d_k[:, :num_keys], d_v[:, :num_keys]

    # Generic path: recompute the block under jax.vjp and weight its cotangents by its share of the row.
    def block(q, k, v):
        out_j, _, lse_j = st.inner(AttentionCall(q, k, v, None, mask, st.scale, return_lse=True))
        return out_j, lse_j

    (out_j, lse_j), vjp = jax.vjp(block, q, k, v)
    live = (lse != EMPTY_ROW_LSE) & (lse_j != EMPTY_ROW_LSE)  # [B, N, t]
    w = jnp.where(live, jnp.exp(jnp.where(live, lse_j - lse, 0.0)), 0.0)  # exp(lse_j - lse)
    w_rows = jnp.transpose(w, (0, 2, 1))[..., None]  # [B, t, N, 1]
    d_out_j = w_rows * d_out
    inner = jnp.sum(d_out * (out_j.astype(_F32) - out), axis=-1)  # [B, t, N]
    d_lse_j = w * (d_lse + jnp.transpose(inner, (0, 2, 1)))
    d_q, d_k, d_v = vjp((d_out_j.astype(out_j.dtype), d_lse_j))
    return d_q.astype(_F32), d_k.astype(_F32), d_v.astype(_F32)


def _switch_index(i, j):
    return (j < i).astype(jnp.int32)


def _ring_forward(st: _Static, q, k, v, aux):
    """The forward ring: (out [B, t, N, H] float32, lse [B, N, t] float32) for the local queries."""
    batch, rows, heads, _ = q.shape
    i = jax.lax.axis_index(st.axis)
    out = jnp.zeros((batch, rows, heads, v.shape[-1]), _F32)
    lse = jnp.full((batch, heads, rows), EMPTY_ROW_LSE, _F32)
    kv = jnp.stack([k, v])  # one collective-permute per hop
    for hop in range(st.size):
        # Issued before this hop's compute, so the transfer can overlap it.
        incoming = jax.lax.ppermute(kv, st.axis, st.perm) if hop < st.size - 1 else None
        j = (i - hop) % st.size

        def run(br, out, lse, kv=kv, j=j):
            if br is None:
                return out, lse
            qs, ks = _rows(br.q_parts, st.chunk_q), _rows(br.k_parts, st.chunk_k)
            q_b, k_b, v_b = q[:, qs], kv[0][:, ks], kv[1][:, ks]
            mask = _branch_mask(st, aux, i, j, br, q_b, k_b, v_b)
            out_b, lse_b = _hop_forward(st, q_b, k_b, v_b, mask)
            out_m, lse_m = _sequence.merge(out[:, qs], lse[..., qs], out_b, lse_b)
            return out.at[:, qs].set(out_m), lse.at[..., qs].set(lse_m)

        branches = _plan(st, hop)
        if len(branches) == 1:
            out, lse = run(branches[0], out, lse)
        else:
            out, lse = jax.lax.switch(_switch_index(i, j), [functools.partial(run, br) for br in branches],
                                      out, lse)
        kv = incoming
    return out, lse


def _ring_backward(st: _Static, q, k, v, aux, out, lse, d_out, d_lse):
    """The backward ring: K, V and their float32 dK/dV accumulators travel together; one last hop brings
    dK/dV home."""
    i = jax.lax.axis_index(st.axis)
    d_out = d_out.astype(_F32)
    d_lse = d_lse.astype(_F32)
    d_q = jnp.zeros(q.shape, _F32)
    zeros = jnp.zeros(k.shape, _F32)
    carry = jnp.stack([k.astype(_F32), v.astype(_F32), zeros, zeros])  # [4, B, s, K, H]
    for hop in range(st.size):
        j = (i - hop) % st.size

        def run(br, d_q, carry=carry, j=j):
            if br is None:
                return d_q, zeros, zeros
            qs, ks = _rows(br.q_parts, st.chunk_q), _rows(br.k_parts, st.chunk_k)
            q_b, k_b, v_b = q[:, qs], carry[0][:, ks].astype(k.dtype), carry[1][:, ks].astype(v.dtype)
            mask = _branch_mask(st, aux, i, j, br, q_b, k_b, v_b)
            g_q, g_k, g_v = _hop_backward(st, q_b, k_b, v_b, mask, out[:, qs], lse[..., qs], d_out[:, qs],
                                          d_lse[..., qs])
            return d_q.at[:, qs].add(g_q), zeros.at[:, ks].set(g_k), zeros.at[:, ks].set(g_v)

        branches = _plan(st, hop)
        if len(branches) == 1:
            d_q, g_k, g_v = run(branches[0], d_q)
        else:
            d_q, g_k, g_v = jax.lax.switch(_switch_index(i, j), [functools.partial(run, br) for br in branches],
                                           d_q)
        carry = carry.at[2].add(g_k).at[3].add(g_v)
        if hop < st.size - 1:
            carry = jax.lax.ppermute(carry, st.axis, st.perm)
    d_kv = jax.lax.ppermute(carry[2:], st.axis, st.perm)  # after P hops the accumulators of i + 1 sit on i
    return d_q, d_kv[0], d_kv[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(st: _Static, q, k, v, aux):
    out, lse = _ring_forward(st, q, k, v, aux)
    return out.astype(q.dtype), lse


def _ring_fwd(st, q, k, v, aux):
    out, lse = _ring_forward(st, q, k, v, aux)
    return (out.astype(q.dtype), lse), (q, k, v, aux, out, lse)


def _ring_bwd(st, residuals, cotangents):
    q, k, v, aux, out, lse = residuals
    d_out, d_lse = cotangents
    d_q, d_k, d_v = _ring_backward(st, q, k, v, aux, out, lse, d_out, d_lse)
    d_aux = jax.tree.map(blockwise._zero_cotangent, aux)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), d_aux


_ring.defvjp(_ring_fwd, _ring_bwd)


@dataclasses.dataclass(frozen=True)
class RingBackend(Backend):
    """The "ring" backend: ring attention over the mesh axis `axis` (see the module docstring).

    Pass it as `implementation=RingBackend(...)` (or "ring" for the defaults) with inputs sharded, or not, along
    T/S over `axis`; it is never chosen by implementation=None.

    Attributes:
      mesh: the mesh, or None for the ambient mesh (`jax.set_mesh(mesh)`, read with
        `jax.sharding.get_abstract_mesh()`).
      axis: the sequence mesh axis; P is its size.
      batch_axes: mesh axes B is split over inside the shard_map (absent or size-1 axes are ignored; B is
        replicated when their product does not divide it).
      head_axes: mesh axes N and K are split over, when their product divides both N and K (else replicated).
      inner: the per-hop backend: "blockwise" (its backward runs straight from the global out and lse), "xla",
        "flash", or a single-device `Backend` object such as `FlashBackend(interpret=True, block_sizes=...)`.
      load_balance: zig-zag order for causal calls (every device does the same work).

    `supports` refuses: no mesh, `axis` not in the mesh, a bias, a dense mask, local_window_size, dropout,
    causal calls with T != S, and an inner backend that cannot run the per-hop call. T and S need not divide
    by P (or 2P): they are padded, the padded keys masked through key lengths and the padded query rows
    dropped. GQA (K < N) passes K/V heads as they are, never repeated.
    """

    mesh: Any = None
    axis: str = "seq"
    batch_axes: tuple = ("data", "fsdp")
    head_axes: tuple = ("model",)
    inner: Any = "blockwise"
    load_balance: bool = True
    name = "ring"
    softmax_only_reason = (
        "merges the shards' partial results through their log-sum-exp, which only the softmax has")
    sequence_parallel = True

    def __post_init__(self):
        _checks.flag("load_balance", self.load_balance)
        if not isinstance(self.axis, str):
            raise ValueError(f"axis must be a mesh axis name (str), got {self.axis!r}")
        for field in ("batch_axes", "head_axes"):
            if not isinstance(getattr(self, field), tuple):
                raise ValueError(f"{field} must be a tuple of mesh axis names, got {getattr(self, field)!r}")

    # Test hooks: the ring step and the zig-zag reordering (a positive control overrides them).
    def _rotation(self, size: int) -> tuple[tuple[int, int], ...]:
        return tuple((d, (d + 1) % size) for d in range(size))

    def _zigzag(self, call: AttentionCall) -> bool:
        return self.load_balance and call.mask.is_causal

    def _layout(self, call: AttentionCall):
        batch, num_queries, heads, _ = call.query.shape
        return _sequence.layout(self.mesh, self.axis, self.batch_axes, self.head_axes, batch, heads,
                                call.key.shape[2])

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        reason = self.normalizer_reason(call)
        if reason:
            return False, reason
        lay, reason = self._layout(call)
        if lay is None:
            return False, reason
        reason = _sequence.unsupported_call(call, "ring", window=False)
        if reason:
            return False, reason
        num_queries, num_keys = call.query.shape[1], call.key.shape[1]
        if call.mask.is_causal and num_queries != num_keys:
            return False, f"ring attention takes causal calls only with T == S, got T={num_queries} S={num_keys}"
        inner, reason = _sequence.inner_backend(self.inner)
        if inner is None:
            return False, reason
        chunks = lay.size * (2 if self._zigzag(call) else 1)
        local = lambda x, rows, heads: jax.ShapeDtypeStruct(
            (x.shape[0] // lay.batch_shards, rows, heads // lay.head_shards, x.shape[3]), x.dtype)
        rows_q, rows_k = -(-num_queries // chunks), -(-num_keys // chunks)
        hop = AttentionCall(local(call.query, rows_q, call.query.shape[2]), local(call.key, rows_k, call.key.shape[2]),
                            local(call.value, rows_k, call.value.shape[2]), None,
                            AttentionMask(is_causal=call.mask.is_causal), call.scale, return_lse=True)
        ok, reason = inner.supports(hop)
        if not ok:
            return False, f"the inner backend {inner.name or type(inner).__name__!r} cannot run a hop: {reason}"
        return True, ""

    def __call__(self, call: AttentionCall) -> BackendOutput:
        ok, reason = self.supports(call)
        if not ok:
            raise ValueError(f"RingBackend cannot run this call: {reason}")
        lay, _ = self._layout(call)
        inner, _ = _sequence.inner_backend(self.inner)
        mask = call.mask
        query, key, value = call.query, call.key, call.value
        batch, num_queries, _, _ = query.shape
        num_keys = key.shape[1]
        zigzag = self._zigzag(call)
        chunks = lay.size * (2 if zigzag else 1)
        padded_q = _sequence.round_up(num_queries, chunks)
        padded_k = _sequence.round_up(num_keys, chunks)
        k_lengths = mask.key_value_seq_lengths
        if k_lengths is None and padded_k > num_keys:  # padded keys are masked through key lengths
            k_lengths = jnp.full((batch,), num_keys, jnp.int32)
        aux = {
            "q_lengths": mask.query_seq_lengths,
            "k_lengths": k_lengths,
            "q_ids": _sequence.pad_to(mask.q_segment_ids, 1, padded_q),
            "k_ids": _sequence.pad_to(mask.kv_segment_ids, 1, padded_k),
        }
        st = _Static(inner, self.axis, lay.size, self._rotation(lay.size), zigzag, mask.is_causal, call.scale,
                     padded_q // chunks, padded_k // chunks)
        need_lse = call.return_lse or call.return_weights
        b, h, s = lay.batch, lay.heads, self.axis
        seq_spec = PartitionSpec(b, s, h, None)
        aux_specs = {name: (None if x is None else PartitionSpec(b, *([None] * (x.ndim - 1))))
                     for name, x in aux.items()}
        out_specs = (seq_spec, PartitionSpec(b, h, s)) if need_lse else seq_spec

        def body(q, k, v, aux):
            heads = q.shape[2]
            if zigzag:
                qkv = self._zigzag_in(jnp.concatenate([q, k, v], axis=2), lay.size, st.chunk_q)
                q, k, v = jnp.split(qkv, [heads, heads + k.shape[2]], axis=2)
            out, lse = _ring(st, q, k, v, aux)
            if zigzag:
                out = self._zigzag_out(out, lay.size, st.chunk_q)
                if need_lse:
                    lse = jnp.swapaxes(self._zigzag_out(jnp.swapaxes(lse, 1, 2), lay.size, st.chunk_q), 1, 2)
            return (out, lse) if need_lse else out

        mapped = jax.shard_map(body, mesh=lay.mesh, in_specs=(seq_spec, seq_spec, seq_spec, aux_specs),
                               out_specs=out_specs, check_vma=False)
        result = mapped(_sequence.pad_to(query, 1, padded_q), _sequence.pad_to(key, 1, padded_k),
                        _sequence.pad_to(value, 1, padded_k), aux)
        output, lse = result if need_lse else (result, None)
        output = output[:, :num_queries]
        if lse is not None:
            lse = lse[:, :, :num_queries]
        weights = weights_from_lse(call, lse) if call.return_weights else None
        return output, weights, lse

    # Zig-zag reordering along axis 1, inside the shard_map: 2 ppermutes each way.
    def _zigzag_in(self, x: jax.Array, size: int, chunk: int) -> jax.Array:
        """[B, 2C, ...] natural (device d holds chunks 2d, 2d+1) -> zig-zag (device i holds i, 2P-1-i)."""
        home = lambda c: c if c < size else 2 * size - 1 - c  # the device chunk c goes to
        even = jax.lax.ppermute(x[:, :chunk], self.axis, [(d, home(2 * d)) for d in range(size)])
        odd = jax.lax.ppermute(x[:, chunk:], self.axis, [(d, home(2 * d + 1)) for d in range(size)])
        first_even = jax.lax.axis_index(self.axis) % 2 == 0  # slot 0 (chunk i) is even iff i is
        return jnp.concatenate([jnp.where(first_even, even, odd), jnp.where(first_even, odd, even)], axis=1)

    def _zigzag_out(self, x: jax.Array, size: int, chunk: int) -> jax.Array:
        """The inverse of `_zigzag_in`."""
        home = lambda c: c if c < size else 2 * size - 1 - c
        first_even = jax.lax.axis_index(self.axis) % 2 == 0
        slot0, slot1 = x[:, :chunk], x[:, chunk:]
        even = jnp.where(first_even, slot0, slot1)
        odd = jnp.where(first_even, slot1, slot0)
        even = jax.lax.ppermute(even, self.axis, [(home(2 * d), d) for d in range(size)])
        odd = jax.lax.ppermute(odd, self.axis, [(home(2 * d + 1), d) for d in range(size)])
        return jnp.concatenate([even, odd], axis=1)
