"""The layer contract suite every attention layer and model inherits.

It stands beside the backend conformance suite (`tests/dot_product/conformance.py`): a base class whose test
methods are driven by hooks, and one small subclass per layer or model configuration. This module is not
collected by pytest (its name does not end in ``_test``); the subclasses live in tests/layers/contract_test.py
(every layer, plus `ContractSelfTest`, which shows each check failing on a deliberately broken toy layer) and
tests/models/contract_test.py (every model).

The contract (issue 9, "A layer contract suite"); the names in brackets are the keys of ``SKIP``:

  test_jit_equals_eager [jit]          the jitted call equals the eager one (and the eager outputs are finite).
  test_masked_never_leak_keys          NaN, +inf and -inf written into the keys/values the attention reads, at
    [masked_keys]                      masked positions, leave the live outputs and the gradients w.r.t. every
                                       floating input and every parameter finite and equal to the clean ones.
                                       A positive control writes NaN at the live positions of the same sites
                                       too and must reach the outputs, so sites that poison nothing fail.
  test_masked_never_leak_inputs        the same with the poison in the layer's raw inputs at positions the
    [masked_inputs]                    layer is told are masked (cross-attention inputs_kv rows beyond the key
                                       lengths, a masked Aaren token, a model's memory): stronger, since NaN
                                       there also meets the key/value projections (d W = x^T dy).
  test_no_retrace_per_step [retrace]   a jitted call traces once across calls with new values of the same
                                       shapes, and a jitted decoding step once across all steps.
  test_step_equals_full_pass [step]    decoding step by step equals the full pass, wherever the layer has a step
                                       (MultiHeadAttention's key/value cache, Aaren's O(1) step, the models'
                                       `decode_next` through `decoding.prepare`, Transformer-XL's segments).
  test_bad_shapes_raise_value_error    each bad-shape call raises ValueError whose message names the offending
    [bad_shapes]                       shapes, while tracing (before any compute).
  test_params_have_logical_axes        every parameter `init` creates is boxed with logical axis names, one per
                                       axis (`attention_jax.core.axes`), so `attention_jax.sharding` can lay
                                       it out on a mesh.

`ModelContract` (the encoder-decoders) adds: test_is_decodable, test_padding_tokens_change_nothing (other
ids at padded source positions change neither the outputs nor any parameter gradient; a live id does) and
test_greedy_decode_through_protocol (`decoding.prepare` + `decoding.greedy_decode` emit the argmax of the
teacher-forced logits on their own prefix).

How to add a layer (or a model):

  1. In ``tests/layers/contract_test.py`` (models: ``tests/models/contract_test.py``) subclass
     `LayerContract` (encoder-decoder models: `ModelContract`) as ``class <Layer><Variant>ContractTest``; import
     this module (``from tests.layers import contract``), not the class, so pytest does not collect the base.
     A shared intermediate base whose name starts with "_" is not collected either.
  2. Define the two required hooks:
       make_module(self) -> the Linen module (tiny sizes: the whole suite must stay about a minute);
       make_inputs(self, rng) -> dict of keyword arguments of the module's ``__call__``, drawn from the numpy
         Generator ``rng`` with the same shapes for every rng. Masked positions hold ordinary values.
  3. Define the hooks of each check that applies, or list the check in ``SKIP`` with the reason it does not
     apply. A check neither implemented nor skipped fails, saying which hook is missing:
       masked_keys      -> ``masked_keys(inputs)``: a list of `Poison` sites, each naming an input
                           (``Poison("key", dead)``) or a submodule output (``Poison(module="key", dead=...)``,
                           a glob over the submodule path, e.g. ``"decoder_layers_*/cross_attention/key"``),
                           with a bool mask ``dead`` broadcastable to it (True = masked, to be poisoned).
       masked_inputs    -> ``masked_inputs(inputs)``: the same, for raw inputs.
       step             -> ``step_init``, ``step``, ``num_steps``, ``step_reference`` (see their docstrings);
                           set ``STEP_FIXED_SHAPES = False`` (with ``STEP_RETRACE_REASON``) when the carry grows
                           by design, as Transformer-XL's memory does; t is then a static Python int.
       bad_shapes       -> ``bad_inputs(inputs)``: (label, bad keyword dict, fragments the message must hold).
     Optional hooks: ``apply`` (how to call the module; default ``module.apply(variables, **inputs)``),
     ``init_variables`` (default: parameters of ``module.init``'s structure drawn from 0.3 N(0, 1), so zero
     biases and unit LayerNorm scales are exercised too), ``live`` (the outputs that must stay clean; default all).
  4. Later variants of a layer subclass its contract class and change only what differs.
  5. A check that fails because of a known defect being fixed elsewhere is marked, never weakened:
     ``XFAIL = {"test_masked_never_leak_inputs": "issue 9: <the defect>"}`` wraps those inherited tests in a
     strict ``pytest.mark.xfail``, so the mark must go once the fix lands.

For example, a self-attention layer over padded sequences with a key/value cache:

    class MyAttentionContractTest(contract.LayerContract):
        SKIP = {"masked_inputs": "self-attention: a masked key is also a live query row"}

        def make_module(self):
            return MyAttention(num_heads=2)

        def make_inputs(self, rng):
            return dict(inputs_q=jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32),
                        key_lengths=jnp.array([5, 3], jnp.int32))

        def masked_keys(self, inputs):
            dead = jnp.arange(5)[None, :] >= inputs["key_lengths"][:, None]  # [B, S]
            return [Poison(module=kv, dead=dead[:, :, None, None]) for kv in ("key", "value")]

        # step_init / step / num_steps / step_reference: see MultiHeadSelfAttentionContractTest.
        # bad_inputs: [("inputs_q of rank 2", {**inputs, "inputs_q": x[:, 0]}, ("inputs_q", (2, 8))), ...]

Tolerances: jit vs eager and step vs full pass 1e-5 (``TOL``; models set their own); clean vs poisoned 1e-6.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

PyTree = Any
Inputs = dict[str, Any]

CHECKS = ("jit", "masked_keys", "masked_inputs", "retrace", "step", "bad_shapes")
POISONS = (float("nan"), float("inf"), float("-inf"))
LEAK_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Poison:
    """Where to write the poison: an input (by keyword) or a submodule's output (by path glob), and where not.

    Attributes:
      input: the keyword of a floating input to poison, or None.
      dead: bool array broadcastable to the poisoned array; True marks the masked positions to poison.
      module: a glob over the "/"-joined path of a submodule (``"key"``, ``"encoder"``, ``"*/cross_attention/key"``;
        "" is the root module itself) whose method output is poisoned, or None.
      method: the intercepted method's name.
      index: None to poison the method's output itself, or the index / key of the output entry to poison (e.g.
        0 for the first of a tuple, "encoded" for a dict entry).
    """

    input: str | None = None
    dead: Any = None
    module: str | None = None
    method: str = "__call__"
    index: int | str | None = None

    def __post_init__(self):
        if (self.input is None) == (self.module is None):
            raise ValueError(f"a Poison names exactly one of input or module: {self}")
        if self.dead is None:
            raise ValueError(f"a Poison needs its dead mask: {self}")


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a value or shape) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, jax.Array))


def _split(inputs: Inputs) -> tuple[list[jax.Array], Callable[[Sequence[jax.Array]], Inputs]]:
    """The array leaves of inputs (traced under jit) and a function rebuilding inputs from them.

    Python scalars, strings and None stay static (closed over).
    """
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    dynamic = [_is_array(x) for x in leaves]
    arrays = [jnp.asarray(x) for x, d in zip(leaves, dynamic) if d]

    def rebuild(values: Sequence[jax.Array]) -> Inputs:
        values = iter(values)
        return jax.tree_util.tree_unflatten(treedef, [next(values) if d else x for x, d in zip(leaves, dynamic)])

    return arrays, rebuild


class _Static:
    """A static jit argument that rebuilds inputs; equal (same hash) whenever the static leaves are equal.

    So a jitted call retraces only when the shapes, dtypes or static leaves (flags, strings) change, as a user's
    jitted step would, never because a new closure was built for new values.
    """

    def __init__(self, rebuild: Callable[[Sequence[jax.Array]], Inputs], inputs: Inputs):
        self.rebuild = rebuild
        leaves, self.treedef = jax.tree_util.tree_flatten(inputs)
        self.static = tuple((i, x) for i, x in enumerate(leaves) if not _is_array(x))

    def __call__(self, arrays):
        return self.rebuild(arrays)

    def __eq__(self, other):
        return isinstance(other, _Static) and (self.treedef, self.static) == (other.treedef, other.static)

    def __hash__(self):
        return hash((self.treedef, self.static))


def _floating(x: Any) -> bool:
    """A floating array (or the jax.ShapeDtypeStruct of one)."""
    return (_is_array(x) or isinstance(x, jax.ShapeDtypeStruct)) and jnp.issubdtype(x.dtype, jnp.floating)


def _float_leaves(tree: PyTree) -> list[jax.Array]:
    return [x for x in jax.tree_util.tree_leaves(tree) if _floating(x)]


def _assert_trees_close(actual: PyTree, expected: PyTree, tol: float, what: str) -> None:
    a_leaves, a_def = jax.tree_util.tree_flatten(actual)
    e_leaves, e_def = jax.tree_util.tree_flatten(expected)
    assert a_def == e_def, f"{what}: structure {a_def} != {e_def}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{what}, leaf {i}: shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"{what}, leaf {i}: dtype {a.dtype} != {e.dtype}"
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, e, atol=tol, rtol=tol, err_msg=f"{what}, leaf {i}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"{what}, leaf {i}")


def _path_of(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.path)


def _poison_leaf(x: jax.Array, dead: Any, value: jax.Array, control: jax.Array) -> jax.Array:
    """x + value where dead (everywhere when control), x elsewhere; value 0 gives x exactly."""
    dead = jnp.logical_or(jnp.asarray(dead, bool), control)
    return x + jnp.where(dead, value, jnp.zeros((), value.dtype)).astype(x.dtype)


def _poison_entry(out: Any, index: int | str | None, fn: Callable[[jax.Array], jax.Array]) -> Any:
    if index is None:
        return fn(out)
    if isinstance(out, tuple):
        return out[:index] + (fn(out[index]),) + out[index + 1:]
    if isinstance(out, list):
        return out[:index] + [fn(out[index])] + out[index + 1:]
    return {**out, index: fn(out[index])}


class LayerContract(parameterized.TestCase):
    """What every attention layer and model must do. Subclasses define the hooks (see the module docstring).

    pytest collects the subclasses defined outside this module whose name does not start with "_": an
    intermediate base class shared by several configurations (``class _Luong(LayerContract)``) holds hooks only.
    """

    __test__ = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The bases of this module (ModelContract) hold hooks only, even when pytest is given this file.
        cls.__test__ = not cls.__name__.startswith("_") and cls.__module__ != __name__
        for name, reason in cls.__dict__.get("XFAIL", {}).items():
            inherited = getattr(cls, name, None)
            if not name.startswith("test") or not callable(inherited):
                raise TypeError(f"{cls.__name__}.XFAIL names {name!r}, which is not a test method")

            @functools.wraps(inherited)
            def expected_failure(self, _inherited=inherited):
                return _inherited(self)

            setattr(cls, name, pytest.mark.xfail(strict=True, reason=reason)(expected_failure))

    # check name (see CHECKS) -> the reason it does not apply to this layer.
    SKIP: dict[str, str] = {}
    # test method name -> the known defect that makes it fail for now (a strict xfail; see the module docstring).
    XFAIL: dict[str, str] = {}
    # jit vs eager and step vs full pass tolerance (relative and absolute).
    TOL: float = 1e-5
    # False when the step carry changes shape by design (then t is static, each step traces anew, and only the
    # forward pass is checked for retracing); STEP_RETRACE_REASON says why.
    STEP_FIXED_SHAPES: bool = True
    STEP_RETRACE_REASON: str = ""
    # Inputs of the forward retrace check: this many fresh draws of make_inputs.
    RETRACE_CALLS: int = 3

    _setup_cache: dict[type, tuple[nn.Module, Inputs, PyTree]] = {}
    _forward_cache: dict[type, tuple[Callable[..., PyTree], list[int]]] = {}
    _step_cache: dict[type, tuple[PyTree, int, int]] = {}
    _leak_cache: dict[type, tuple[Callable[..., PyTree], list[str], PyTree]] = {}

    # -- required hooks ------------------------------------------------------------------------------------

    def make_module(self) -> nn.Module:
        """The module under test (tiny sizes)."""
        raise NotImplementedError(f"{type(self).__name__} must define make_module()")

    def make_inputs(self, rng: np.random.Generator) -> Inputs:
        """Keyword arguments of the module's call, drawn from rng; the same shapes for every rng."""
        raise NotImplementedError(f"{type(self).__name__} must define make_inputs(rng)")

    # -- optional hooks -------------------------------------------------------------------------------------

    def init_variables(self, module: nn.Module, inputs: Inputs) -> PyTree:
        """{"params": ...} of module's structure drawn from 0.3 N(0, 1), without compiling or running init.

        Random rather than initial values, so zero biases and unit LayerNorm scales are exercised too.
        """
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), **inputs)
        rng = np.random.default_rng(1)
        return {"params": jax.tree_util.tree_map(
            lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), dict(shapes).get("params", {}))}

    def apply(self, module: nn.Module, variables: PyTree, inputs: Inputs) -> PyTree:
        """The call under test; returns a pytree of arrays."""
        return module.apply(variables, **inputs)

    def live(self, inputs: Inputs, outputs: PyTree) -> PyTree:
        """The outputs that must stay clean when masked positions are poisoned (default: all of them)."""
        del inputs
        return outputs

    # -- hooks of the optional checks ------------------------------------------------------------------------

    def masked_keys(self, inputs: Inputs) -> list[Poison]:
        """The keys/values the attention reads, at masked positions (see `Poison`)."""
        raise NotImplementedError(self._missing("masked_keys", "masked_keys(inputs)"))

    def masked_inputs(self, inputs: Inputs) -> list[Poison]:
        """The layer's raw inputs at positions it is told are masked (see `Poison`)."""
        raise NotImplementedError(self._missing("masked_inputs", "masked_inputs(inputs)"))

    def step_init(self, module: nn.Module, variables: PyTree, inputs: Inputs) -> PyTree:
        """The carry before the first step (a cache, a recurrent state, (memory, state), ...)."""
        raise NotImplementedError(self._missing("step", "step_init, step, num_steps and step_reference"))

    def step(self, module: nn.Module, variables: PyTree, inputs: Inputs, carry: PyTree,
             t: jax.Array | int) -> tuple[PyTree, PyTree]:
        """One step at index t (a traced int32 scalar, or a static Python int when not STEP_FIXED_SHAPES).

        Returns (next carry, this step's outputs); the outputs of every step are stacked on axis 1.
        """
        raise NotImplementedError(self._missing("step", "step_init, step, num_steps and step_reference"))

    def num_steps(self, inputs: Inputs) -> int:
        """How many steps to run (>= 2); they must equal the reference's first num_steps positions."""
        raise NotImplementedError(self._missing("step", "step_init, step, num_steps and step_reference"))

    def step_reference(self, module: nn.Module, variables: PyTree, inputs: Inputs) -> PyTree:
        """The full pass whose first num_steps positions (axis 1 of every leaf) the stacked steps must equal."""
        raise NotImplementedError(self._missing("step", "step_init, step, num_steps and step_reference"))

    def bad_inputs(self, inputs: Inputs) -> list[tuple[str, Inputs, tuple[Any, ...]]]:
        """(label, bad keyword arguments, fragments the ValueError message must contain) for each bad shape."""
        raise NotImplementedError(self._missing("bad_shapes", "bad_inputs(inputs)"))

    # -- machinery -----------------------------------------------------------------------------------------

    def _missing(self, check: str, hooks: str) -> str:
        return (f"{type(self).__name__}: define {hooks} for the {check!r} check, or add {check!r} to SKIP with "
                "the reason it does not apply")

    def setUp(self):
        super().setUp()
        unknown = set(self.SKIP) - set(CHECKS)
        if unknown:
            self.fail(f"{type(self).__name__}.SKIP names unknown checks {sorted(unknown)}; checks are {CHECKS}")

    def _skip(self, check: str) -> None:
        if check in self.SKIP:
            self.skipTest(f"{check}: {self.SKIP[check]}")

    def _setup(self) -> tuple[nn.Module, Inputs, PyTree]:
        """(module, inputs, variables), built once per class."""
        cls = type(self)
        if cls not in LayerContract._setup_cache:
            module = self.make_module()
            inputs = self.make_inputs(np.random.default_rng(0))
            LayerContract._setup_cache[cls] = (module, inputs, self.init_variables(module, inputs))
        return LayerContract._setup_cache[cls]

    def _forward(self) -> tuple[Callable[..., PyTree], list[int]]:
        """(jitted forward(variables, inputs), its trace counter), once per class (jit and retrace checks share it)."""
        cls = type(self)
        if cls not in LayerContract._forward_cache:
            module, _, _ = self._setup()
            traces = [0]

            def forward(variables, arrays, rebuild):
                traces[0] += 1
                return self.apply(module, variables, rebuild(arrays))

            jitted = jax.jit(forward, static_argnums=2)

            def call(variables, inputs):
                arrays, rebuild = _split(inputs)
                return jitted(variables, arrays, _Static(rebuild, inputs))

            LayerContract._forward_cache[cls] = (call, traces)
        return LayerContract._forward_cache[cls]

    def _poisoned_apply(self, module, variables, inputs, groups):
        """apply() with each group's value added at its sites' dead positions (everywhere when its control is set).

        groups: a list of (sites, value [] float32, control [] bool).
        """
        inputs = dict(inputs)
        module_sites = []
        for sites, value, control in groups:
            for site in sites:
                if site.module is not None:
                    module_sites.append((site, value, control))
                    continue
                if site.input not in inputs or not _floating(inputs[site.input]):
                    raise ValueError(f"Poison names input {site.input!r}, not a floating input of {sorted(inputs)}")
                inputs[site.input] = _poison_leaf(inputs[site.input], site.dead, value, control)
        hits = {site.module: 0 for site, _, _ in module_sites}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            for site, value, control in module_sites:
                if context.method_name == site.method and fnmatch.fnmatchcase(_path_of(context.module), site.module):
                    hits[site.module] += 1
                    out = _poison_entry(out, site.index,
                                        lambda x, s=site, v=value, c=control: _poison_leaf(x, s.dead, v, c))
            return out

        with nn.intercept_methods(interceptor):
            outputs = self.apply(module, variables, inputs)
        missed = [glob for glob, n in hits.items() if n == 0]
        if missed:
            raise AssertionError(f"{type(self).__name__}: no submodule method matched the Poison globs {missed}")
        return outputs

    def _leak_fn(self):
        """(outputs_and_grads, groups, clean result), once per class for both masked checks (one compile).

        outputs_and_grads(values [G] float32, controls [G] bool) -> (live outputs, (param grads, input grads)),
        the gradients of sum(live outputs * fixed random cotangents), group g poisoned with values[g].
        """
        cls = type(self)
        if cls in LayerContract._leak_cache:
            return LayerContract._leak_cache[cls]
        module, inputs, variables = self._setup()
        groups = []
        for check in ("masked_keys", "masked_inputs"):
            if check in self.SKIP:
                continue
            try:
                sites = getattr(self, check)(inputs)
            except NotImplementedError:
                continue  # that check's own test reports the missing hook
            groups.append((check, sites))
        params = variables.get("params", {})
        arrays, rebuild = _split(inputs)
        floating = [i for i, a in enumerate(arrays) if _floating(a)]
        others = [i for i in range(len(arrays)) if i not in floating]
        float_arrays = [arrays[i] for i in floating]

        def run(params, float_arrays, values, controls, other_arrays):
            merged = list(arrays)
            for i, a in zip(floating + others, list(float_arrays) + list(other_arrays)):
                merged[i] = a
            poison = [(sites, values[g], controls[g]) for g, (_, sites) in enumerate(groups)]
            outputs = self._poisoned_apply(module, {**variables, "params": params}, rebuild(merged), poison)
            return self.live(inputs, outputs)

        zeros = jnp.zeros((len(groups),), jnp.float32)
        off = jnp.zeros((len(groups),), bool)
        other_arrays = [arrays[i] for i in others]
        shapes = jax.eval_shape(run, params, float_arrays, zeros, off, other_arrays)
        rng = np.random.default_rng(7)
        cotangents = [jnp.asarray(rng.standard_normal(s.shape), jnp.float32) for s in _float_leaves(shapes)]

        def loss(params, float_arrays, values, controls, other_arrays):
            outputs = _float_leaves(run(params, float_arrays, values, controls, other_arrays))
            return sum(jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outputs, cotangents))

        @jax.jit
        def jitted(values, controls, other_arrays):
            outputs = run(params, float_arrays, values, controls, other_arrays)
            grads = jax.grad(loss, argnums=(0, 1))(params, float_arrays, values, controls, other_arrays)
            return outputs, grads

        def outputs_and_grads(values, controls, inputs=None):
            """inputs: None, or inputs with other values of the non-floating arrays (e.g. token ids)."""
            if inputs is None:
                return jitted(values, controls, other_arrays)
            new = _split(inputs)[0]
            return jitted(values, controls, [new[i] for i in others])

        clean = outputs_and_grads(zeros, off) if cotangents else None
        LayerContract._leak_cache[cls] = (outputs_and_grads, [check for check, _ in groups], clean)
        return LayerContract._leak_cache[cls]

    def _check_no_leak(self, check: str) -> None:
        module, inputs, variables = self._setup()
        del module, variables
        sites = getattr(self, check)(inputs)  # raises when the hook is missing
        if not sites:
            self.fail(f"{type(self).__name__}.{check} returned no Poison site")
        for site in sites:
            self.assertTrue(bool(np.any(np.asarray(site.dead))), f"{site} marks no position as masked")
        outputs_and_grads, checks, clean = self._leak_fn()
        self.assertIsNotNone(clean, "the layer returned no floating output")
        for leaf in jax.tree_util.tree_leaves(clean):
            self.assertTrue(np.all(np.isfinite(np.asarray(leaf, np.float64))), "clean outputs or grads not finite")
        g = checks.index(check)
        off = jnp.zeros((len(checks),), bool)
        for value in POISONS:
            values = jnp.zeros((len(checks),), jnp.float32).at[g].set(value)
            dirty = outputs_and_grads(values, off)
            for what, got, want in (("live outputs", dirty[0], clean[0]), ("param grads", dirty[1][0], clean[1][0]),
                                    ("input grads", dirty[1][1], clean[1][1])):
                flat, _ = jax.tree_util.tree_flatten_with_path(got)
                for path, leaf in flat:
                    leaf = np.asarray(leaf)
                    if np.issubdtype(leaf.dtype, np.floating):
                        bad = ~np.isfinite(leaf)
                        self.assertFalse(bad.any(), f"poison {value} leaked into {what}"
                                         f"{jax.tree_util.keystr(path)}: {bad.sum()} of {bad.size} non-finite")
                _assert_trees_close(got, want, LEAK_TOL, f"{what} with poison {value} vs clean")
        # Positive control: the same poison at live positions too must reach the outputs.
        values = jnp.zeros((len(checks),), jnp.float32).at[g].set(np.nan)
        control = outputs_and_grads(values, off.at[g].set(True))
        reached = any(np.any(~np.isfinite(np.asarray(x))) for x in _float_leaves(control[0]))
        self.assertTrue(reached, "positive control: NaN written at every position of the Poison sites did not reach "
                                 "the outputs, so the sites poison nothing the layer reads")

    def _run_steps(self) -> tuple[PyTree, int, int]:
        """(stacked step outputs, number of traces, number of steps), once per class."""
        cls = type(self)
        if cls in LayerContract._step_cache:
            return LayerContract._step_cache[cls]
        module, inputs, variables = self._setup()
        arrays, rebuild = _split(inputs)
        carry = self.step_init(module, variables, inputs)
        traces = [0]

        def one(variables, arrays, carry, t):
            traces[0] += 1
            return self.step(module, variables, rebuild(arrays), carry, t)

        steps = self.num_steps(inputs)
        outs = []
        if self.STEP_FIXED_SHAPES:
            jitted = jax.jit(one)
            for t in range(steps):
                carry, out = jitted(variables, arrays, carry, jnp.int32(t))
                outs.append(out)
        else:  # one trace per step by design: t is static, so a step may slice with it
            jitted = jax.jit(one, static_argnums=3)
            for t in range(steps):
                carry, out = jitted(variables, arrays, carry, t)
                outs.append(out)
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=1), *outs)
        LayerContract._step_cache[cls] = (stacked, traces[0], steps)
        return LayerContract._step_cache[cls]

    # -- the checks ----------------------------------------------------------------------------------------

    def test_jit_equals_eager(self):
        self._skip("jit")
        module, inputs, variables = self._setup()
        eager = self.apply(module, variables, inputs)
        forward, _ = self._forward()
        jitted = forward(variables, inputs)
        self.assertNotEmpty(_float_leaves(eager), "the layer returned no floating output")
        for leaf in _float_leaves(eager):
            self.assertTrue(np.all(np.isfinite(np.asarray(leaf))), "eager outputs are not finite")
        _assert_trees_close(jitted, eager, self.TOL, "jit vs eager")

    @parameterized.named_parameters(("keys", "masked_keys"), ("inputs", "masked_inputs"))
    def test_masked_never_leak(self, check):
        """NaN/inf at masked keys/values (or masked raw inputs) reach neither live outputs nor any gradient."""
        self._skip(check)
        self._check_no_leak(check)

    def test_no_retrace_per_step(self):
        self._skip("retrace")
        _, _, variables = self._setup()
        forward, traces = self._forward()
        for seed in range(1, self.RETRACE_CALLS + 1):
            jax.block_until_ready(forward(variables, self.make_inputs(np.random.default_rng(seed))))
        self.assertEqual(traces[0], 1, f"the jitted call traced {traces[0]} times for {self.RETRACE_CALLS} calls "
                                       "with inputs of the same shapes")
        if "step" in self.SKIP:
            return
        if not self.STEP_FIXED_SHAPES:
            self.assertTrue(self.STEP_RETRACE_REASON, "STEP_FIXED_SHAPES=False needs a STEP_RETRACE_REASON")
            return
        _, step_traces, steps = self._run_steps()
        self.assertEqual(step_traces, 1, f"the jitted step traced {step_traces} times over {steps} steps")

    def test_step_equals_full_pass(self):
        self._skip("step")
        module, inputs, variables = self._setup()
        stacked, _, steps = self._run_steps()
        self.assertGreater(steps, 1, "step through at least two positions")
        reference = jax.tree_util.tree_map(lambda r: r[:, :steps], self.step_reference(module, variables, inputs))
        _assert_trees_close(stacked, reference, self.TOL, "step by step vs full pass")

    def test_params_have_logical_axes(self):
        """Every parameter is an `nn.LogicallyPartitioned` with one name of `core.axes.NAMES` (or None) per axis."""
        from attention_jax.sharding import annotation_errors  # pylint: disable=import-outside-toplevel

        module, inputs, _ = self._setup()
        shapes = jax.eval_shape(functools.partial(module.init, **inputs), jax.random.PRNGKey(0))
        errors = annotation_errors(dict(shapes).get("params", {}))
        self.assertEqual(errors, [], f"{type(module).__name__}: parameters without logical axes")

    def test_bad_shapes_raise_value_error(self):
        self._skip("bad_shapes")
        module, inputs, variables = self._setup()
        cases = self.bad_inputs(inputs)
        self.assertNotEmpty(cases, "bad_inputs returned no case")
        for label, bad, fragments in cases:
            self.assertNotEmpty(fragments, f"{label}: name the offending shapes in the fragments")
            with self.subTest(label):
                with _raises(ValueError, *fragments):  # shape checks fire while tracing, before any compute
                    jax.eval_shape(lambda: self.apply(module, variables, bad))


class ModelContract(LayerContract):
    """The contract of the encoder-decoder models (`decoding.Decodable`): `Seq2Seq`, `ConvS2S`, `Transformer`.

    Inputs are ``src`` [B, S], ``src_lengths`` [B] and ``tgt_in`` [B, T] int32 (bos first); outputs are
    (logits [B, T, V], weights [B, T, S]). The step check runs the decoding protocol: `decoding.prepare`, then
    ``model.decode_next`` token by token, against the teacher-forced pass. Two checks of their own:
    padded source ids change nothing (outputs and every parameter gradient), and `decoding.greedy_decode`
    through the protocol emits the argmax of the teacher-forced logits on its own prefix.

    Subclasses define make_module() and masked_keys(inputs) (the memory the decoder's attentions read, at
    padded source positions); `padded(inputs)` gives the [B, S] bool mask of those positions.
    """

    B, S, T, V = 2, 6, 5, 13
    SRC_LENGTHS = (6, 3)
    BOS, EOS = 1, 2
    TOL = 1e-4
    SKIP = {"masked_inputs": "the models' inputs are token ids, which hold no NaN; "
                             "test_padding_tokens_change_nothing perturbs the padded source ids instead"}

    def make_inputs(self, rng: np.random.Generator) -> Inputs:
        src = rng.integers(3, self.V, (self.B, self.S))
        tgt_in = rng.integers(3, self.V, (self.B, self.T))
        tgt_in[:, 0] = self.BOS
        return dict(src=jnp.asarray(src, jnp.int32), src_lengths=jnp.asarray(self.SRC_LENGTHS, jnp.int32),
                    tgt_in=jnp.asarray(tgt_in, jnp.int32))

    def padded(self, inputs: Inputs) -> jax.Array:
        """[B, S] bool, True at the source positions beyond src_lengths."""
        return jnp.arange(inputs["src"].shape[1])[None, :] >= inputs["src_lengths"][:, None]

    # -- the step check runs the decoding protocol -------------------------------------------------------------

    def step_init(self, module, variables, inputs):
        from attention_jax.models import decoding  # pylint: disable=import-outside-toplevel

        _, memory, state = decoding.prepare(module, variables, inputs["src"], inputs["src_lengths"],
                                            max_len=inputs["tgt_in"].shape[1])
        return memory, state

    def step(self, module, variables, inputs, carry, t):
        memory, state = carry
        logits, state, weights = module.decode_next(variables, memory, state, inputs["tgt_in"][:, t], t)
        return (memory, state), (logits, weights)

    def num_steps(self, inputs):
        return inputs["tgt_in"].shape[1]

    def step_reference(self, module, variables, inputs):
        return self.apply(module, variables, inputs)

    def bad_inputs(self, inputs):
        src, lengths, tgt_in = inputs["src"], inputs["src_lengths"], inputs["tgt_in"]
        return [
            ("src of rank 1", {**inputs, "src": src.reshape(-1)}, ("src", (src.size,))),
            ("src_lengths of another batch", {**inputs, "src_lengths": lengths[:1]}, ("lengths", (1,))),
            ("tgt_in of another batch", {**inputs, "tgt_in": tgt_in[:1]}, ("tgt_in", (1, tgt_in.shape[1]))),
        ]

    # -- the models' own checks ------------------------------------------------------------------------------

    def test_is_decodable(self):
        from attention_jax.models import decoding  # pylint: disable=import-outside-toplevel

        module, _, _ = self._setup()
        self.assertIsInstance(module, decoding.Decodable)

    def test_padding_tokens_change_nothing(self):
        """Other ids at padded source positions: the same outputs and parameter gradients; live ids matter."""
        _, inputs, _ = self._setup()
        padded = self.padded(inputs)
        outputs_and_grads, checks, clean = self._leak_fn()  # shares the masked checks' compiled function
        values, off = jnp.zeros((len(checks),), jnp.float32), jnp.zeros((len(checks),), bool)
        shifted = (inputs["src"] + 5) % (self.V - 3) + 3
        other = jnp.where(padded, shifted, inputs["src"])
        self.assertTrue(bool(jnp.any(other != inputs["src"])), "the fixture has no padded source position")
        _assert_trees_close(outputs_and_grads(values, off, {**inputs, "src": other}), clean, LEAK_TOL,
                            "outputs and parameter gradients with other padded source ids")
        live = jnp.where(jnp.arange(self.S) == 0, shifted, inputs["src"])  # position 0 is live in every row
        moved = outputs_and_grads(values, off, {**inputs, "src": live})
        self.assertGreater(float(jnp.max(jnp.abs(moved[0][0] - clean[0][0]))), 1e-6,
                           "positive control: changing a live source token changed nothing")

    def test_greedy_decode_through_protocol(self):
        """decoding.prepare + greedy_decode: the argmax of the teacher-forced logits on its own prefix."""
        from attention_jax.models import decoding  # pylint: disable=import-outside-toplevel

        module, inputs, variables = self._setup()
        max_len = inputs["tgt_in"].shape[1]

        @jax.jit
        def greedy(variables, src, src_lengths):
            step_fn, memory, state = decoding.prepare(module, variables, src, src_lengths, max_len=max_len)
            return decoding.greedy_decode(step_fn, memory, state, batch_size=self.B, bos_id=self.BOS,
                                          eos_id=self.EOS, max_len=max_len)

        tokens, weights = greedy(variables, inputs["src"], inputs["src_lengths"])
        self.assertEqual(tokens.shape, (self.B, max_len))
        self.assertEqual(weights.shape, (self.B, max_len, self.S))
        tgt_in = jnp.concatenate([jnp.full((self.B, 1), self.BOS, jnp.int32), tokens[:, :-1]], axis=1)
        logits, forced_weights = self.apply(module, variables, {**inputs, "tgt_in": tgt_in})
        tokens, logits = np.asarray(tokens), np.asarray(logits)
        for b in range(self.B):
            row = list(tokens[b])
            n = row.index(self.EOS) + 1 if self.EOS in row else max_len
            np.testing.assert_array_equal(tokens[b, :n], np.argmax(logits[b, :n], -1), err_msg=f"row {b}")
            np.testing.assert_array_equal(tokens[b, n:], decoding.PAD_ID, err_msg=f"row {b} after EOS")
            np.testing.assert_allclose(np.asarray(weights)[b, :n], np.asarray(forced_weights)[b, :n],
                                       atol=self.TOL, rtol=self.TOL, err_msg=f"row {b} weights")
