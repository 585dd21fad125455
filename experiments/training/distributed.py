"""Mesh runs: the ``mesh`` config section turned into a device mesh, rules and a sharded step.

Every experiment config has a ``mesh`` section (data, fsdp, model, seq; all 1 by default: one device, no
mesh). With any size above 1 the run builds `attention_jax.sharding.make_mesh(**mesh)` and the rules for it
(`attention_jax.sharding.rules_for`), creates the parameters already sharded by their logical annotations,
and trains with `attention_jax.sharding.make_train_step`: the batch is split over data/fsdp (and its length
over seq), heads, MLP and vocabulary over model. Evaluation and decoding run inside the same mesh and rules
(`activate`), so a row named "ring" or "ulysses" finds its mesh there too.

On a CPU the devices are simulated: `experiments/__init__.py` sets
XLA_FLAGS=--xla_force_host_platform_device_count=<product of the mesh sizes> before jax starts
(`experiments/devices.py`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import flax.linen as nn
import jax
import ml_collections

from attention_jax import sharding
from experiments.devices import MESH_AXES
from experiments.training.spec import ConfigError


def initialize_from_env(environ: dict[str, str] | None = None) -> bool:
    """Joins a multi-process run (`jax.distributed.initialize`) when the environment asks for one.

    One process per host (or per GPU) runs the same command; the mesh then spans every process's devices and
    each jitted step runs as one SPMD program across them. Two ways to ask:
      * JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i (0..N-1) on every process;
      * ATTENTION_JAX_DISTRIBUTED=auto: jax detects the cluster itself (SLURM, Open MPI, Cloud TPU pod slices).
    Without either, nothing happens (one process). Must run before jax touches a device: the experiments call it
    right after parsing their flags.

    Returns:
      Whether this process joined a multi-process run.

    Raises:
      ConfigError: a partial or malformed set of variables, naming the fix.
    """
    env = os.environ if environ is None else environ
    if env.get("ATTENTION_JAX_DISTRIBUTED", "") == "auto":
        jax.distributed.initialize()
        return True
    address = env.get("JAX_COORDINATOR_ADDRESS", "")
    if not address:
        return False
    try:
        num_processes, process_id = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
    except (KeyError, ValueError):
        raise ConfigError("JAX_COORDINATOR_ADDRESS is set, so this is a multi-process run, but JAX_NUM_PROCESSES and "
                          "JAX_PROCESS_ID are missing or not integers; fix: set both on every process (process ids "
                          "0..N-1), or unset JAX_COORDINATOR_ADDRESS for a single-process run") from None
    # Cross-process collectives for CPU devices (the option touches only the CPU client; read before any backend
    # starts, so no platform query here).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes, process_id=process_id)
    return True


def mesh_sizes(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """{axis: size} of the ``mesh`` section (all 1 when the config has none)."""
    section = cfg.get("mesh")
    return {axis: int(section.get(axis, 1)) if section is not None else 1 for axis in MESH_AXES}


def mesh_from_config(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh | None:
    """The run's mesh, or None when every size is 1 (a plain single-device run).

    Raises:
      ConfigError: a size below 1, or a mesh larger than the devices jax sees, with the fix.
    """
    sizes = mesh_sizes(cfg)
    for axis, size in sizes.items():
        if size < 1:
            raise ConfigError(f"--config.mesh.{axis}={size} is not valid; fix: use an int >= 1")
    total = 1
    for size in sizes.values():
        total *= size
    if total == 1:
        return None
    available = jax.device_count()
    if total != available:
        shown = " x ".join(f"{axis}={size}" for axis, size in sizes.items() if size > 1)
        raise ConfigError(
            f"the mesh {shown} needs {total} devices but jax sees {available} {jax.default_backend()} device(s); "
            f"fix: make the mesh sizes multiply to {available}, or run on the CPU with simulated devices "
            f"(JAX_PLATFORMS=cpu; the experiment sets XLA_FLAGS itself when the mesh flags are on the command line)")
    return sharding.make_mesh(**sizes)


def rules_for(mesh: jax.sharding.Mesh | None, num_kv_heads: int | None = None) -> tuple:
    """The logical-to-mesh rules of the run (empty without a mesh)."""
    return () if mesh is None else sharding.rules_for(mesh, num_kv_heads=num_kv_heads)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh | None, rules: tuple) -> Iterator[None]:
    """The mesh and rules as the ambient context (nothing without a mesh)."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def describe(mesh: jax.sharding.Mesh | None) -> str:
    """One line for the log: the mesh shape and device kind, or 'one device'."""
    if mesh is None:
        return f"one {jax.default_backend()} device"
    shape = " x ".join(f"{name}={size}" for name, size in dict(mesh.shape).items() if size > 1)
    return f"mesh {shape} over {mesh.devices.size} {jax.default_backend()} devices"


def sharded_params(model: Any, mesh: jax.sharding.Mesh, rules: tuple, rngs: Any, *args: Any, **kwargs: Any):
    """(params, boxed abstract params): the model's parameters created sharded, and their annotated shapes."""
    abstract = jax.eval_shape(lambda r: model.init(r, *args, **kwargs), rngs)["params"]
    params = sharding.sharded_init(model, mesh, rules, rngs, *args, **kwargs)["params"]
    return params, abstract
