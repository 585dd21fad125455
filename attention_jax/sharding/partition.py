"""Sharded parameters and training steps from the logical axis annotations of any model of the library.

The parameters carry logical names (`nn.LogicallyPartitioned`, see `attention_jax.core.axes`); the rules
(`attention_jax.sharding.rules`) map them onto a mesh (`attention_jax.sharding.make_mesh`). Everything here
returns *unboxed* trees of `jax.Array`s laid out on the mesh: plain trees are what `optax`, `jax.jit`'s
shardings and checkpointing take, and `module.apply` accepts them as it accepts boxes.

    mesh = aj.sharding.make_mesh(data=2, model=4)
    rules = aj.sharding.rules_for(mesh, num_kv_heads=2)
    params = aj.sharding.sharded_init(model, mesh, rules, rng, src, src_lengths, tgt_in)["params"]
    abstract = jax.eval_shape(model.init, rng, src, src_lengths, tgt_in)["params"]  # boxed: the names
    step = aj.sharding.make_train_step(loss_fn, optax.adam(1e-3), mesh, rules, abstract)
    params, opt_state, metrics = step(params, step.init_opt_state(params), batch, rng)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from flax.core import meta

from attention_jax.core import axes
from attention_jax.sharding.rules import Rules, check_rules, mesh_axes

__all__ = [
    "annotation_errors", "logical_specs", "make_train_step", "shard_params", "sharded_init", "shardings",
]

PyTree = Any
P = jax.sharding.PartitionSpec


def _plain(tree: PyTree) -> PyTree:
    """The tree unboxed WITHOUT sharding constraints (`meta.unbox` adds them whenever rules and a mesh are
    active, which fails outside jit and on `jax.ShapeDtypeStruct`s); for host-side and abstract trees."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, tree, is_leaf=_is_box)


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def annotation_errors(params: PyTree) -> list[str]:
    """What is wrong with the logical annotations of a parameter tree; [] when every leaf is well boxed.

    A leaf is well boxed when it is an `nn.LogicallyPartitioned` whose names tuple has one entry per axis of
    its value, each a name of `attention_jax.core.axes.NAMES` or None.

    Args:
      params: the "params" collection of `module.init` or of `jax.eval_shape(module.init, ...)` (boxed).

    Returns:
      one message per bad leaf, naming its path.
    """
    errors = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]:
        where = jax.tree_util.keystr(path)
        if not isinstance(leaf, nn.LogicallyPartitioned):
            errors.append(f"{where}: not logically partitioned ({type(leaf).__name__} of shape {jax.numpy.shape(leaf)})")
            continue
        names, rank = tuple(leaf.names), len(jax.numpy.shape(leaf.value))
        if len(names) != rank:
            errors.append(f"{where}: names {names} for a value of rank {rank}")
        unknown = [n for n in names if n is not None and n not in axes.NAMES]
        if unknown:
            errors.append(f"{where}: unknown logical names {unknown} (use {axes.NAMES} or None)")
    return errors


def logical_specs(variables: PyTree) -> PyTree:
    """The logical PartitionSpec of every leaf (`nn.get_partition_spec`): the names of a box, P() otherwise.

    Args:
      variables: a tree of boxed (and unboxed) leaves: arrays or `jax.ShapeDtypeStruct`s, e.g. the result of
        `jax.eval_shape(module.init, ...)`.

    Returns:
      the tree with every box replaced by PartitionSpec(*names) and every plain leaf by PartitionSpec().
    """
    return nn.get_partition_spec(variables)


def shardings(abstract_variables: PyTree, mesh: jax.sharding.Mesh, rules: Rules) -> PyTree:
    """NamedShardings on `mesh` for a boxed tree, from its logical names and `rules`.

    Args:
      abstract_variables: boxed leaves (arrays or ShapeDtypeStructs); plain leaves are replicated.
      mesh: the mesh.
      rules: logical-to-mesh rules (`rules_for`).

    Returns:
      a tree of `jax.sharding.NamedSharding`, shaped like the *unboxed* tree (one sharding per array).

    Raises:
      ValueError: for rules that `check_rules` rejects, or a leaf whose names map one mesh axis twice.
    """
    rules = check_rules(rules, mesh)
    specs = logical_specs(abstract_variables)
    return jax.tree_util.tree_map(lambda spec: jax.sharding.NamedSharding(mesh, mesh_axes(tuple(spec), rules)),
                                  specs, is_leaf=lambda x: isinstance(x, P))


def shard_params(variables: PyTree, mesh: jax.sharding.Mesh, rules: Rules) -> PyTree:
    """Moves an initialised tree onto the mesh by its logical annotations.

    Args:
      variables: the output of `module.init` (boxed), or any part of it, e.g. its "params".
      mesh: the mesh.
      rules: the rules (`rules_for`).

    Returns:
      the tree *unboxed* (plain arrays), each array a global `jax.Array` with the sharding its names give.
    """
    return jax.device_put(_plain(variables), shardings(variables, mesh, rules))


def sharded_init(module: nn.Module, mesh: jax.sharding.Mesh, rules: Rules, rngs: Any, *args: Any,
                 **kwargs: Any) -> PyTree:
    """`module.init(rngs, *args, **kwargs)` jitted with out_shardings, so each parameter is created sharded.

    The shapes and names come from `jax.eval_shape` of the same init; no device ever holds a whole sharded
    parameter. The init runs under the rules and the mesh, so its `with_logical_constraint`s take effect.

    Args:
      module: any Linen module of the library (or one boxed the same way).
      mesh: the mesh.
      rules: the rules (`rules_for`).
      rngs: a PRNG key or a dict of them, as `module.init` takes.
      *args, **kwargs: the init call's inputs (closed over, so Python values such as train=False are fine).

    Returns:
      the variables, unboxed; equal to `nn.unbox(module.init(rngs, *args, **kwargs))` on one device.

    Raises:
      ValueError: for bad rules, or a sharded dimension its mesh axes do not divide (raised by jit).
    """
    init = functools.partial(module.init, **kwargs)
    abstract = jax.eval_shape(lambda r: init(r, *args), rngs)
    out_shardings = shardings(abstract, mesh, rules)

    def run(r):
        return meta.unbox(init(r, *args))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jax.jit(run, out_shardings=out_shardings)(rngs)


class TrainStep:
    """A jitted, sharded train step: `step(params, opt_state, batch, rng) -> (params, opt_state, metrics)`.

    Built by `make_train_step`. Attributes: `param_shardings`, `opt_state_shardings` (NamedSharding trees),
    `mesh`, `rules`; `init_opt_state(params)` creates the optimizer state already sharded.
    """

    def __init__(self, loss_fn, optimizer, mesh, rules, abstract_params, batch_axes, donate):
        self.loss_fn, self.optimizer, self.mesh, self.rules = loss_fn, optimizer, mesh, check_rules(rules, mesh)
        if not any(_is_box(x) for x in jax.tree_util.tree_leaves(abstract_params, is_leaf=_is_box)):
            raise ValueError("abstract_params carries no logical axis names (no nn.LogicallyPartitioned leaf), so "
                             "every parameter would be replicated; pass the boxed tree, e.g. "
                             "jax.eval_shape(model.init, rng, *inputs)['params']")
        self.param_shardings = shardings(abstract_params, mesh, self.rules)
        plain = _plain(abstract_params)
        abstract_state = jax.eval_shape(optimizer.init, plain)
        replicated = jax.sharding.NamedSharding(mesh, P())
        self.opt_state_shardings = optax.tree_map_params(
            optimizer, lambda _, sharding: sharding, abstract_state, self.param_shardings,
            transform_non_params=lambda _: replicated)
        self.replicated = replicated
        self.batch_axes = batch_axes
        self.donate = donate
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self._batch_shardings: dict[Any, Any] = {}

    def _batch_sharding(self, path, leaf) -> jax.sharding.NamedSharding:
        axes_of = self.batch_axes
        if callable(axes_of):
            names = axes_of(path, leaf)
        else:
            names = tuple(axes_of)[: leaf.ndim]
        names = tuple(names) + (None,) * (leaf.ndim - len(names))
        return jax.sharding.NamedSharding(self.mesh, mesh_axes(names, self.rules))

    def _step(self, params, opt_state, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **dict(metrics)}

    def compiled(self, batch: PyTree) -> Callable[..., Any]:
        """The jitted step for batches of `batch`'s structure and ranks (one per structure, cached)."""
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        key = (treedef, tuple(jax.numpy.ndim(x) for x in leaves))
        if key not in self._compiled:
            batch_shardings = jax.tree_util.tree_map_with_path(self._batch_sharding, batch)
            self._batch_shardings[key] = batch_shardings
            self._compiled[key] = jax.jit(
                self._step,
                in_shardings=(self.param_shardings, self.opt_state_shardings, batch_shardings, self.replicated),
                out_shardings=(self.param_shardings, self.opt_state_shardings, self.replicated),
                donate_argnums=(0, 1) if self.donate else ())
        return self._compiled[key]

    def init_opt_state(self, params: PyTree) -> PyTree:
        """`optimizer.init(params)` with its state created on the mesh in `opt_state_shardings`."""
        with jax.set_mesh(self.mesh):
            return jax.jit(self.optimizer.init, in_shardings=(self.param_shardings,),
                           out_shardings=self.opt_state_shardings)(params)

    def __call__(self, params, opt_state, batch, rng):
        step = self.compiled(batch)
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        # Host arrays are placed, and device arrays laid out otherwise (e.g. a carried state that came back
        # replicated as a metric) are resharded; arrays already in place are left as they are.
        batch = jax.device_put(batch, self._batch_shardings[(treedef, tuple(jax.numpy.ndim(x) for x in leaves))])
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return step(params, opt_state, batch, rng)


def make_train_step(
    loss_fn: Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]],
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: Rules,
    abstract_params: PyTree,
    *,
    batch_axes: Sequence[str | None] | Callable[[Any, Any], Sequence[str | None]] = (axes.BATCH, axes.LENGTH),
    donate: bool = False,
) -> TrainStep:
    """A jitted train step sharded by the logical annotations, for any model of the library.

    `step(params, opt_state, batch, rng) -> (params, opt_state, metrics)` computes
    `(loss, metrics), grads = value_and_grad(loss_fn, has_aux=True)(params, batch, rng)`, then
    `optimizer.update` and `optax.apply_updates`. Its shardings:
      params and the returned params: from the logical names of `abstract_params` under `rules`;
      opt_state: the same sharding for each parameter-shaped entry (`optax.tree_map_params` over
        `jax.eval_shape(optimizer.init, params)`), replicated scalars (counts);
      batch: each leaf's leading axes named by `batch_axes` (default ("batch", "length"): the batch over the
        data/fsdp axes, a leaf's second axis over "seq" when the rules map length; a rank-1 leaf such as
        lengths [B] takes only "batch");
      rng and metrics: replicated.
    The step traces under `nn.logical_axis_rules(rules)` and `jax.set_mesh(mesh)`, so the models'
    `with_logical_constraint`s shard the activations too. One compilation per batch structure.

    Args:
      loss_fn: (params, batch, rng) -> (loss [] float, metrics: a mapping of name -> scalar array); params is
        the unboxed "params" tree, e.g. `lambda p, b, r: (xent(model.apply({"params": p}, ...)), {})`.
      optimizer: an optax GradientTransformation.
      mesh: the mesh (`make_mesh`).
      rules: the rules (`rules_for`).
      abstract_params: the *boxed* "params" tree: `jax.eval_shape(model.init, ...)["params"]` or
        `model.init(...)["params"]` (arrays or ShapeDtypeStructs; only shapes and names are read).
      batch_axes: the logical names of each batch leaf's leading axes (cut to the leaf's rank, the remaining
        axes unsharded), or a function (key path, leaf) -> names for batches whose leaves differ.
      donate: donate params and opt_state to the step (their old buffers become invalid).

    Returns:
      a `TrainStep`: call it as above; `step.init_opt_state(params)` gives the sharded optimizer state;
      `step.param_shardings` / `step.opt_state_shardings` hold the layouts (e.g. for `jax.device_put`).

    Raises:
      ValueError: for bad rules (`check_rules`), or abstract_params without any logical names (an unboxed tree);
        jit raises when a sharded dimension is not divisible by its mesh axes (e.g. a batch of 6 over data=4).
    """
    return TrainStep(loss_fn, optimizer, mesh, rules, abstract_params, batch_axes, donate)
