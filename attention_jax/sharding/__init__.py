"""Meshes, logical-axis rules, sharded init and sharded train steps for every model of the library.

    import attention_jax as aj
    mesh = aj.sharding.make_mesh(data=2, model=2)             # axes ("data", "fsdp", "model", "seq")
    rules = aj.sharding.rules_for(mesh, num_kv_heads=2)      # logical name -> mesh axis
    variables = aj.sharding.sharded_init(model, mesh, rules, rng, *inputs)
    step = aj.sharding.make_train_step(loss_fn, optimizer, mesh, rules, abstract_params)

  mesh.py       make_mesh, MESH_AXES.
  rules.py      the rules per style (DATA_PARALLEL, FSDP, TENSOR_PARALLEL, SEQUENCE_PARALLEL and their
                mesh-aware functions), rules_for, check_rules, mesh_axes.
  partition.py  logical_specs, shardings, shard_params, sharded_init, make_train_step, annotation_errors.

The logical names themselves live in `attention_jax.core.axes`. This package sits above the models (import-linter
contract in setup.cfg): it may import them, nothing below imports it.
"""

from attention_jax.sharding.mesh import MESH_AXES, make_mesh
from attention_jax.sharding.partition import (
    TrainStep,
    annotation_errors,
    logical_specs,
    make_train_step,
    shard_params,
    sharded_init,
    shardings,
)
from attention_jax.sharding.rules import (
    DATA_PARALLEL,
    FSDP,
    SEQUENCE_PARALLEL,
    TENSOR_PARALLEL,
    Rules,
    check_rules,
    data_parallel,
    fsdp,
    mesh_axes,
    rules_for,
    sequence_parallel,
    tensor_parallel,
)

__all__ = [
    "DATA_PARALLEL", "FSDP", "MESH_AXES", "SEQUENCE_PARALLEL", "TENSOR_PARALLEL", "Rules", "TrainStep",
    "annotation_errors", "check_rules", "data_parallel", "fsdp", "logical_specs", "make_mesh", "make_train_step",
    "mesh_axes", "rules_for", "sequence_parallel", "shard_params", "sharded_init", "shardings", "tensor_parallel",
]
