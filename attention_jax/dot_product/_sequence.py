"""What the sequence-parallel backends (`ring.RingBackend`, `ulysses.UlyssesBackend`) share: the mesh they run
on, how the batch and heads are split inside their `jax.shard_map`, the per-device backend they call, padding,
and the float32 merge of partial results through their log-sum-exp.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from attention_jax.core import alignment
from attention_jax.dot_product.base import AttentionCall, Backend
from attention_jax.dot_product.blockwise import BlockwiseBackend
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.dot_product.xla import XlaBackend

_F32 = jnp.float32
EMPTY_ROW_LSE = alignment.EMPTY_ROW_LSE

# The per-device backends a sequence-parallel backend may name (api.py's table sits above this module).
_INNER = {"blockwise": BlockwiseBackend(), "xla": XlaBackend(), "flash": FlashBackend()}


def inner_backend(inner: Any) -> tuple[Backend | None, str]:
    """(backend, '') for "blockwise", "xla", "flash" or a single-device `Backend` object; (None, reason) else."""
    if isinstance(inner, str):
        if inner not in _INNER:
            return None, f"inner must be one of {sorted(_INNER)} or a Backend object, got {inner!r}"
        return _INNER[inner], ""
    if not isinstance(inner, Backend):
        return None, f"inner must be a backend name or a Backend object, got {inner!r}"
    if getattr(inner, "sequence_parallel", False):
        return None, f"inner must be a single-device backend, got the sequence-parallel {type(inner).__name__}"
    return inner, ""


class Layout(NamedTuple):
    """How one sequence-parallel call is laid out over the mesh (all static).

    Attributes:
      mesh: the concrete mesh, or None for the ambient one (`jax.set_mesh`).
      axis: the sequence axis; size: its size P.
      batch: the PartitionSpec entry of B (a tuple of mesh axes, or None: replicated).
      heads: the PartitionSpec entry of N and K (or None: replicated).
      batch_shards, head_shards: the number of pieces B and the heads are cut into.
    """

    mesh: Any
    axis: str
    size: int
    batch: Any
    heads: Any
    batch_shards: int
    head_shards: int


def mesh_shape(mesh: Any) -> tuple[dict[str, int] | None, str]:
    """({axis: size}, '') of `mesh`, or of the ambient mesh when it is None; (None, reason) without one."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            return None, "no mesh: pass mesh= or set one with jax.set_mesh(mesh)"
    if not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
        return None, f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}"
    return dict(mesh.shape), ""


def layout(mesh: Any, axis: str, batch_axes: tuple, head_axes: tuple, batch: int, heads: int, kv_heads: int,
           head_multiple: int = 1) -> tuple[Layout | None, str]:
    """Where B and the heads go: over the mesh axes of `batch_axes` / `head_axes` that exist with size > 1, when
    their product divides B (resp. N and K, leaving N and K per device multiples of `head_multiple` for
    Ulysses); otherwise replicated. (None, reason) when there is no mesh or `axis` is not in it."""
    shape, reason = mesh_shape(mesh)
    if shape is None:
        return None, reason
    if axis not in shape:
        return None, f"the sequence axis {axis!r} is not an axis of the mesh {shape}"

    def split(axes, *sizes, multiple=1):
        used = tuple(a for a in axes if a != axis and shape.get(a, 1) > 1)
        pieces = 1
        for a in used:
            pieces *= shape[a]
        if not used or any(s % pieces or (s // pieces) % multiple for s in sizes):
            return None, 1
        return used, pieces

    batch_spec, batch_shards = split(tuple(batch_axes), batch)
    head_spec, head_shards = split(tuple(head_axes), heads, kv_heads, multiple=head_multiple)
    if batch_spec is not None and head_spec is not None and set(batch_spec) & set(head_spec):
        head_spec, head_shards = None, 1
    return Layout(mesh, axis, shape[axis], batch_spec, head_spec, batch_shards, head_shards), ""


def unsupported_call(call: AttentionCall, name: str, *, window: bool) -> str:
    """The reason a sequence-parallel backend refuses `call` for what it never takes, or ''."""
    if call.bias is not None:
        return f"{name} takes no bias"
    if call.mask.dense is not None:
        return (f"{name} takes no dense mask (use is_causal, lengths or segment_ids"
                f"{', local_window_size' if window else ''})")
    if not window and call.mask.local_window_size is not None:
        return f"{name} takes no local_window_size"
    if call.dropout_rate > 0.0:
        return f"{name} has no attention dropout"
    return ""


def pad_to(x: jax.Array, axis: int, size: int) -> jax.Array:
    """`x` zero-padded at the end of `axis` to `size`."""
    if x is None or x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def merge(out_a: jax.Array, lse_a: jax.Array, out_b: jax.Array, lse_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two partial attentions over disjoint keys, merged through their lse (float32).

    out_*: [B, T, N, H] float32, lse_*: [B, N, T] float32 (`EMPTY_ROW_LSE` for a row with no valid key, whose
    out is 0). lse = logaddexp(lse_a, lse_b); out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b. Written
    with the larger lse as the pivot, so two empty rows give an empty row (not NaN) and an empty side gets
    weight exp(EMPTY_ROW_LSE - lse) = 0.
    """
    top = jnp.maximum(lse_a, lse_b)  # [B, N, T]
    w_a, w_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)  # in [0, 1], one of them is 1
    total = w_a + w_b
    live = top != EMPTY_ROW_LSE
    lse = jnp.where(live, top + jnp.log(total), EMPTY_ROW_LSE)

    def rows(w):  # [B, N, T] -> [B, T, N, 1]
        return jnp.transpose(jnp.where(live, w / total, 0.0), (0, 2, 1))[..., None]

    return rows(w_a) * out_a + rows(w_b) * out_b, lse
