"""Logical-to-mesh axis rules, one set per parallelism style, and `rules_for`, which combines them for a mesh.

A rule is (logical name, mesh axis | tuple of mesh axes | None); a tuple of rules is what
`nn.logical_axis_rules`, `nn.logical_to_mesh_axes` and `nn.logical_to_mesh_sharding` take. Flax resolves an
array's names in rule order, and skips a rule whose mesh axis an earlier dimension of the same array already
took; so "batch" comes first, and an activation [B, T, D] under FSDP shards B over (data, fsdp) and leaves D
whole, while a parameter [V, D], which has no batch axis, shards D over fsdp.

  style                 rules                                                      mesh axis
  data parallel         batch -> data                                              data
  FSDP (ZeRO-3)         batch -> (data, fsdp); embed -> fsdp (every parameter      fsdp
                        with a model-width axis is sharded over fsdp)
  tensor parallel       heads, mlp, vocab -> model; kv_heads -> model only when    model
  (Megatron)            the model axis size divides K, else replicated
  sequence parallel     length -> seq (activations only)                           seq

head_dim is never sharded. Every sharded dimension must be divisible by the product of its mesh axes' sizes
(jit rejects uneven shardings of its inputs and outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from attention_jax.core import axes
from attention_jax.sharding.mesh import MESH_AXES

__all__ = [
    "DATA_PARALLEL", "FSDP", "SEQUENCE_PARALLEL", "TENSOR_PARALLEL", "Rules", "check_rules", "data_parallel",
    "fsdp", "mesh_axes", "rules_for", "sequence_parallel", "tensor_parallel",
]

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DATA_PARALLEL: Rules = ((axes.BATCH, "data"),)
"""Data parallelism: the batch over "data"; parameters replicated."""

FSDP: Rules = ((axes.BATCH, ("data", "fsdp")), (axes.EMBED, "fsdp"))
"""Fully sharded data parallelism: the batch over (data, fsdp); the model width of every parameter over fsdp."""

TENSOR_PARALLEL: Rules = ((axes.HEADS, "model"), (axes.KV_HEADS, "model"), (axes.MLP, "model"),
                          (axes.VOCAB, "model"))
"""Tensor parallelism: heads, key/value heads, the MLP width and the vocabulary over "model" (use
`tensor_parallel(mesh, num_kv_heads=K)` when K may not divide the model axis)."""

SEQUENCE_PARALLEL: Rules = ((axes.LENGTH, "seq"),)
"""Sequence parallelism: the length of activations over "seq"."""


def _size(mesh: jax.sharding.Mesh, name: str) -> int:
    return int(dict(mesh.shape).get(name, 1))


def _batch_axes(mesh: jax.sharding.Mesh) -> MeshAxes:
    used = tuple(a for a in ("data", "fsdp") if _size(mesh, a) > 1)
    return used[0] if len(used) == 1 else (used or None)


def data_parallel(mesh: jax.sharding.Mesh) -> Rules:
    """`DATA_PARALLEL`, with the batch over every batch axis of `mesh` of size > 1 ("data", "fsdp")."""
    return ((axes.BATCH, _batch_axes(mesh) or "data"),)


def fsdp(mesh: jax.sharding.Mesh) -> Rules:
    """`FSDP`: the batch over (data, fsdp) (the axes of size > 1), the parameters' model width over fsdp."""
    return ((axes.BATCH, _batch_axes(mesh) or "fsdp"), (axes.EMBED, "fsdp"))


def tensor_parallel(mesh: jax.sharding.Mesh, *, num_kv_heads: int | None = None) -> Rules:
    """`TENSOR_PARALLEL`, with kv_heads sharded only when the model axis size divides `num_kv_heads`.

    Args:
      mesh: the mesh; its "model" axis size P is read.
      num_kv_heads: K of the model's attention, or None when K = N (kv_heads then follow heads onto "model").

    Returns:
      the rules; kv_heads -> None (replicated key/value projections) when K % P != 0, e.g. K = 2 on P = 4.
    """
    model = _size(mesh, "model")
    kv = "model"
    if num_kv_heads is not None and num_kv_heads % model:
        kv = None
    return ((axes.HEADS, "model"), (axes.KV_HEADS, kv), (axes.MLP, "model"), (axes.VOCAB, "model"))


def sequence_parallel(mesh: jax.sharding.Mesh) -> Rules:
    """`SEQUENCE_PARALLEL`: activation lengths over "seq"."""
    del mesh
    return SEQUENCE_PARALLEL


def rules_for(mesh: jax.sharding.Mesh, *, num_kv_heads: int | None = None) -> Rules:
    """The rules of every style whose mesh axis has size > 1 on `mesh`, in an order that never conflicts.

    data > 1 or fsdp > 1: batch -> the batch axes of size > 1; fsdp > 1: embed -> fsdp; model > 1: heads, mlp,
    vocab -> model and kv_heads as `tensor_parallel` decides; seq > 1: length -> seq. Every logical name not
    mapped to a mesh axis is listed with None (replicated), so the result names all of `axes.NAMES`.

    Args:
      mesh: a mesh with (some of) the axes "data", "fsdp", "model", "seq" (`make_mesh`).
      num_kv_heads: K of the model's attention layers, or None when K = N.

    Returns:
      the rules, a tuple of (logical name, mesh axis or tuple of mesh axes or None), checked by `check_rules`.

    Raises:
      ValueError: if `mesh` has an axis other than "data", "fsdp", "model", "seq" of size > 1 (it would be left
        unused) or num_kv_heads is not an int >= 1.
    """
    unknown = [a for a in mesh.axis_names if a not in MESH_AXES and _size(mesh, a) > 1]
    if unknown:
        raise ValueError(f"rules_for knows the mesh axes {MESH_AXES}; the mesh {dict(mesh.shape)} also has {unknown}")
    if num_kv_heads is not None and (not isinstance(num_kv_heads, int) or num_kv_heads < 1):
        raise ValueError(f"num_kv_heads must be None or an int >= 1, got {num_kv_heads!r}")
    rules: list[tuple[str, MeshAxes]] = []
    if _batch_axes(mesh) is not None:
        rules.append((axes.BATCH, _batch_axes(mesh)))
    if _size(mesh, "seq") > 1:
        rules += sequence_parallel(mesh)
    if _size(mesh, "model") > 1:
        rules += tensor_parallel(mesh, num_kv_heads=num_kv_heads)
    if _size(mesh, "fsdp") > 1:
        rules.append((axes.EMBED, "fsdp"))
    named = {name for name, _ in rules}
    rules += [(name, None) for name in axes.NAMES if name not in named]
    return check_rules(tuple(rules), mesh)


def check_rules(rules: Sequence[tuple[str, MeshAxes]], mesh: jax.sharding.Mesh | None = None) -> Rules:
    """Checks that rules map each logical name once, and onto distinct axes of `mesh`.

    Args:
      rules: (logical name, mesh axis or tuple of mesh axes or None) pairs.
      mesh: None, or the mesh whose axis names the rules may use.

    Returns:
      the rules as a tuple of tuples.

    Raises:
      ValueError: if a logical name has two rules, one rule names a mesh axis twice, or a mesh axis is not in
        `mesh`.
    """
    out, seen = [], set()
    for rule in rules:
        name, target = rule
        if name in seen:
            raise ValueError(f"logical axis {name!r} has more than one rule in {tuple(rules)}")
        seen.add(name)
        targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        if len(set(targets)) != len(targets):
            raise ValueError(f"the rule {rule} uses a mesh axis twice")
        if mesh is not None:
            missing = [t for t in targets if t not in mesh.axis_names]
            if missing:
                raise ValueError(f"the rule {rule} names mesh axes {missing} that the mesh {dict(mesh.shape)} lacks")
        out.append((name, target if target is None or isinstance(target, str) else tuple(target)))
    return tuple(out)


def mesh_axes(names: Sequence[str | None], rules: Rules) -> jax.sharding.PartitionSpec:
    """The PartitionSpec of an array with logical axis `names` under `rules`, checked for a mesh axis used twice.

    Args:
      names: one logical name (or None) per axis of the array.
      rules: the rules (`rules_for`).

    Raises:
      ValueError: if one mesh axis would shard two dimensions of the array (flax's resolution skips such a
        rule, so this only fires for rules that bypass it, e.g. a hand-made PartitionSpec).
    """
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    used: list[Any] = []
    for entry in spec:
        used += [] if entry is None else [entry] if isinstance(entry, str) else list(entry)
    if len(set(used)) != len(used):
        raise ValueError(f"logical axes {tuple(names)} map onto {spec}, which uses a mesh axis twice")
    return spec
