"""Simulated CPU devices for mesh runs, set up before jax starts.

A run with mesh flags (``--config.mesh.data=2 --config.mesh.model=2 --config.mesh.seq=2``) needs as many
devices as the mesh has. On a CPU machine XLA can split the host into N simulated devices, but only if
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set before jax initialises its backends, which is
before any experiment module has parsed its flags. So `experiments/__init__.py` calls
`simulate_devices_from_argv` first thing: it reads the mesh sizes off the command line and sets the flag to
their product. The flag only affects the CPU platform: on a GPU or TPU host the mesh is built from the
accelerators as usual, and a mesh larger than the host's accelerators is refused by the experiment with the
fix (JAX_PLATFORMS=cpu to simulate it). A device count the user already put in XLA_FLAGS is left alone.

This module must not import jax.
"""

from __future__ import annotations

import os
import re
import sys

MESH_AXES = ("data", "fsdp", "model", "seq")
_FLAG = "--xla_force_host_platform_device_count"
_MESH_ARG = re.compile(r"--config\.mesh\.(data|fsdp|model|seq)=(\d+)$")


def mesh_size_from_argv(argv: list[str]) -> int:
    """The product of the ``--config.mesh.<axis>=N`` values on a command line (1 when there are none).

    Malformed values are left to the flag parser, which reports them; they count as 1 here.
    """
    sizes = {}
    for arg in argv[1:]:
        match = _MESH_ARG.match(arg)
        if match:
            sizes[match.group(1)] = max(1, int(match.group(2)))
    product = 1
    for size in sizes.values():
        product *= size
    return product


def simulate_devices_from_argv(argv: list[str] | None = None, environ: dict[str, str] | None = None, *,
                               at_least: int = 1) -> int | None:
    """Sets the simulated CPU device count to the mesh size on the command line, if jax has not started.

    Args:
      argv: the command line (default sys.argv).
      environ: the environment to edit (default os.environ).
      at_least: simulate at least this many devices (an experiment whose presets use a mesh, or that compiles
        for several meshes, asks for its largest).

    Returns:
      The device count set, or None when nothing was set (no mesh flags, jax already imported, a device
      count already in XLA_FLAGS, or a multi-process run: JAX_COORDINATOR_ADDRESS or ATTENTION_JAX_DISTRIBUTED
      set, see `experiments.training.distributed.initialize_from_env`).
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    size = max(mesh_size_from_argv(argv), at_least)
    if size <= 1 or "jax" in sys.modules:
        return None
    if environ.get("JAX_COORDINATOR_ADDRESS") or environ.get("ATTENTION_JAX_DISTRIBUTED"):
        return None  # a multi-process run: the mesh spans every process's own devices
    flags = environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        return None
    environ["XLA_FLAGS"] = f"{flags} {_FLAG}={size}".strip()
    return size
