"""The "ulysses" backend: DeepSpeed-Ulysses sequence parallelism, all-to-all from sequence to head sharding.

Jacobs et al. 2023, "DeepSpeed Ulysses: System Optimizations for Enabling Training of Extreme Long Sequence
Transformer Models", arXiv:2309.14509, §3.1.

Inside one `jax.shard_map`, each of the P devices on the sequence axis holds [B, T/P, N, H] queries and
[B, S/P, K, H] keys/values. One `jax.lax.all_to_all` turns them into head-sharded [B, T, N/P, H] and
[B, S, K/P, H] (keys and values travel stacked, and with the queries too when T == S), the per-device backend
(`inner`) runs on the whole sequence with the whole mask (causal, local window, lengths and segment ids, the
ids replicated along the sequence), and one more all_to_all brings the output back to sequence sharding (one
more for the lse when it is returned). Autodiff transposes each all_to_all into an all_to_all, so the backward
has as many again; there is no collective-permute and no all-gather.

P must divide N (per head shard, see `head_axes`). GQA with P not dividing K repeats each key/value head
lcm(K, P) / K times inside the shard_map (the gradients of the copies are summed back by autodiff): keys and
values then cost that factor more in the all_to_all. T and S are padded to multiples of P; padded keys are
masked through key lengths and padded query rows dropped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product import _sequence
from attention_jax.dot_product.base import AttentionCall, Backend, BackendOutput, weights_from_lse

__all__ = ["UlyssesBackend"]


@dataclasses.dataclass(frozen=True)
class UlyssesBackend(Backend):
    """The "ulysses" backend: all-to-all sequence parallelism over the mesh axis `axis` (module docstring).

    Pass it as `implementation=UlyssesBackend(...)` (or "ulysses" for the defaults); never chosen by
    implementation=None.

    Attributes:
      mesh: the mesh, or None for the ambient mesh (`jax.set_mesh(mesh)`).
      axis: the sequence mesh axis; P is its size.
      batch_axes: mesh axes B is split over (absent or size-1 axes ignored; replicated unless they divide B).
      head_axes: mesh axes N and K are split over before the all_to_all, when their product divides N and K and
        leaves a multiple of P query heads per device (else heads are replicated over them).
      inner: the per-device backend: "blockwise", "xla", "flash" or a single-device `Backend` object.

    `supports` refuses: no mesh, `axis` not in the mesh, P not dividing N, a bias, a dense mask, dropout, and an
    inner backend that cannot run the full-sequence call. Every other mask source works, for any T and S.
    Weights (`return_weights`) are recomputed outside from the lse (a dense [B, N, T, S] array).
    """

    mesh: Any = None
    axis: str = "seq"
    batch_axes: tuple = ("data", "fsdp")
    head_axes: tuple = ("model",)
    inner: Any = "blockwise"
    name = "ulysses"
    softmax_only_reason = (
        "gathers partial results through the inner backend's log-sum-exp, which only the softmax has")
    sequence_parallel = True

    def __post_init__(self):
        if not isinstance(self.axis, str):
            raise ValueError(f"axis must be a mesh axis name (str), got {self.axis!r}")
        for field in ("batch_axes", "head_axes"):
            if not isinstance(getattr(self, field), tuple):
                raise ValueError(f"{field} must be a tuple of mesh axis names, got {getattr(self, field)!r}")

    def _layout(self, call: AttentionCall):
        batch, _, heads, _ = call.query.shape
        kv_heads = call.key.shape[2]
        lay, reason = _sequence.layout(self.mesh, self.axis, self.batch_axes, self.head_axes, batch, heads,
                                       kv_heads)
        if lay is not None and (heads // lay.head_shards) % lay.size:  # keep P | N per device: replicate heads
            lay, reason = _sequence.layout(self.mesh, self.axis, self.batch_axes, (), batch, heads, kv_heads)
        return lay, reason

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        reason = self.normalizer_reason(call)
        if reason:
            return False, reason
        lay, reason = self._layout(call)
        if lay is None:
            return False, reason
        reason = _sequence.unsupported_call(call, "ulysses", window=True)
        if reason:
            return False, reason
        heads = call.query.shape[2]
        if heads % lay.size:
            return False, (f"ulysses splits the query heads over the sequence axis {self.axis!r}: its size "
                           f"P={lay.size} must divide N={heads}")
        inner, reason = _sequence.inner_backend(self.inner)
        if inner is None:
            return False, reason
        local_heads = heads // lay.head_shards
        local_kv = call.key.shape[2] // lay.head_shards
        kv_per_device = math.lcm(local_kv, lay.size) // lay.size
        local = lambda x, rows, h: jax.ShapeDtypeStruct((x.shape[0] // lay.batch_shards, rows, h, x.shape[3]),
                                                        x.dtype)
        rows_q = _sequence.round_up(call.query.shape[1], lay.size)
        rows_k = _sequence.round_up(call.key.shape[1], lay.size)
        full = AttentionCall(local(call.query, rows_q, local_heads // lay.size),
                             local(call.key, rows_k, kv_per_device), local(call.value, rows_k, kv_per_device),
                             None, AttentionMask(is_causal=call.mask.is_causal,
                                                 local_window_size=call.mask.local_window_size),
                             call.scale, return_lse=True)
        ok, reason = inner.supports(full)
        if not ok:
            return False, f"the inner backend {inner.name or type(inner).__name__!r} cannot run: {reason}"
        return True, ""

    def __call__(self, call: AttentionCall) -> BackendOutput:
        ok, reason = self.supports(call)
        if not ok:
            raise ValueError(f"UlyssesBackend cannot run this call: {reason}")
        lay, _ = self._layout(call)
        inner, _ = _sequence.inner_backend(self.inner)
        mask, size, axis = call.mask, lay.size, self.axis
        query, key, value = call.query, call.key, call.value
        batch, num_queries, _, _ = query.shape
        num_keys = key.shape[1]
        padded_q, padded_k = _sequence.round_up(num_queries, size), _sequence.round_up(num_keys, size)
        k_lengths = mask.key_value_seq_lengths
        if k_lengths is None and padded_k > num_keys:  # padded keys are masked through key lengths
            k_lengths = jnp.full((batch,), num_keys, jnp.int32)
        aux = {
            "q_lengths": mask.query_seq_lengths,
            "k_lengths": k_lengths,
            "q_ids": _sequence.pad_to(mask.q_segment_ids, 1, padded_q),
            "k_ids": _sequence.pad_to(mask.kv_segment_ids, 1, padded_k),
        }
        need_lse = call.return_lse or call.return_weights
        b, h = lay.batch, lay.heads
        seq_spec = PartitionSpec(b, axis, h, None)
        aux_specs = {name: (None if x is None else PartitionSpec(b, *([None] * (x.ndim - 1))))
                     for name, x in aux.items()}
        out_specs = (seq_spec, PartitionSpec(b, h, axis)) if need_lse else seq_spec
        stack_all = padded_q == padded_k

        def to_heads(x):  # [B, t, P, n, H] -> [B, P t, n, H]: split the P head groups, gather the sequence
            x = jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)
            return x[:, :, 0]

        def body(q, k, v, aux):
            bq, tq, heads, dim = q.shape
            kv_heads = k.shape[2]
            repeat = math.lcm(kv_heads, size) // kv_heads
            if repeat > 1:  # GQA with P not dividing K: each key/value head is repeated `repeat` times
                k, v = jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2)
            grouped = lambda x: x.reshape(x.shape[0], x.shape[1], size, x.shape[2] // size, x.shape[3])
            n, m = heads // size, k.shape[2] // size
            if stack_all:  # one all_to_all for q, k and v
                qkv = to_heads(jnp.concatenate([grouped(q), grouped(k), grouped(v)], axis=3))
                q, k, v = qkv[:, :, :n], qkv[:, :, n:n + m], qkv[:, :, n + m:]
            else:
                q = to_heads(grouped(q))
                kv = to_heads(jnp.concatenate([grouped(k), grouped(v)], axis=3))
                k, v = kv[:, :, :m], kv[:, :, m:]
            spec = AttentionMask(
                is_causal=mask.is_causal, local_window_size=mask.local_window_size,
                query_seq_lengths=aux["q_lengths"], key_value_seq_lengths=aux["k_lengths"],
                segment_ids=None if aux["q_ids"] is None else (aux["q_ids"], aux["k_ids"]),
            ).bind(q, k, v)
            out, _, lse = inner(AttentionCall(q, k, v, None, spec, call.scale, return_lse=need_lse))
            # [B, T, N/P, H] -> [B, T/P, N, H]
            out = jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)
            if not need_lse:
                return out
            return out, jax.lax.all_to_all(lse, axis, split_axis=2, concat_axis=1, tiled=True)  # [B, N, T/P]

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
