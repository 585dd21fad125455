"""Device meshes with the library's four axes: data, fsdp, model, seq."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from attention_jax import _checks

__all__ = ["MESH_AXES", "make_mesh"]

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "model", "seq")
"""The mesh axis names, in mesh order: data parallel, fully sharded data parallel, tensor (model) parallel,
sequence parallel. `attention_jax.sharding.rules` maps logical axis names onto them."""


def make_mesh(data: int = 1, fsdp: int = 1, model: int = 1, seq: int = 1, *,
              devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """A mesh of shape (data, fsdp, model, seq) with axis names `MESH_AXES`, every axis `AxisType.Auto`.

    Axes of size 1 are kept, so the same rules and specs work on any mesh. The product of the sizes must equal
    the number of devices: the mesh uses all of them (pass `devices` to use a subset).

    Args:
      data: devices along the data-parallel axis, an int >= 1.
      fsdp: devices along the fully-sharded data-parallel axis (batch and parameters sharded), an int >= 1.
      model: devices along the tensor-parallel axis (heads, mlp, vocab sharded), an int >= 1.
      seq: devices along the sequence-parallel axis (activation lengths sharded), an int >= 1.
      devices: the devices to lay out, or None for `jax.devices()`.

    Returns:
      a `jax.sharding.Mesh` with axis_names ("data", "fsdp", "model", "seq").

    Raises:
      ValueError: if a size is not an int >= 1, or data * fsdp * model * seq differs from the number of devices
        (the message names the sizes and how to get simulated CPU devices).
    """
    sizes = {name: _checks.int_at_least(name, size, 1) for name, size in zip(MESH_AXES, (data, fsdp, model, seq))}
    devices = list(jax.devices() if devices is None else devices)
    total = math.prod(sizes.values())
    if total != len(devices):
        shown = " * ".join(f"{n}={s}" for n, s in sizes.items())
        raise ValueError(
            f"the mesh {shown} needs {total} devices, but {len(devices)} are given or available. On a CPU, "
            f"simulate devices by setting XLA_FLAGS=--xla_force_host_platform_device_count={total} before jax "
            "starts (before the first `import jax` of the process)"
        )
    shape = tuple(sizes.values())
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:  # jax.make_mesh picks a device order that suits the hardware's topology
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except (TypeError, ValueError, NotImplementedError):  # an unusual device list: lay it out as given
        return jax.sharding.Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, axis_types=auto)
