"""Tests for layers/sets.py: Deep Sets' pooling, invariant model and equivariant layer (Zaheer et al. 2017,
arXiv:1703.06114, Theorem 2, Lemma 3 and §2.3) and attention pooling over a set (Set Transformer's PMA, Lee et al.
2019, arXiv:1810.00825, eq. 11).

Oracles: float64 numpy transcriptions written below, one set at a time on its members (picked out by the mask),
and finite differences in float64. Members sit anywhere in the order (holes in the middle), and one set is empty.
The layer contract (jit, NaN at masked rows, logical axes, bad shapes) is in tests/layers/sets_contracts.py.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import test_util as jtu
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import sets

B, S, D = 3, 6, 4
# Row 0: members with holes; row 1: two members, the first masked; row 2: an empty set.
MASK = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
AGGREGATIONS = [(a, a) for a in sets.AGGREGATIONS]
TOL = dict(rtol=1e-5, atol=1e-5)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _x(seed, shape=(B, S, D)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _params(module, x, mask, seed=1, dtype=jnp.float32):
    """Unboxed parameters of module's structure drawn from 0.5 N(0, 1) (so biases and norms are exercised)."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), x, mask)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), dtype), shapes)


def _permute(rng, *arrays):
    """The same random permutation of the S axis of each array, drawn per row; returns (arrays, perms [B, S])."""
    perms = np.stack([rng.permutation(arrays[0].shape[1]) for _ in range(arrays[0].shape[0])])
    return [np.stack([a[b, perms[b]] for b in range(a.shape[0])]) for a in arrays], perms


# -- float64 references -------------------------------------------------------------------------------------------

def _ref_pool(x, mask, aggregation):
    """Theorem 2's sum (or the mean, or the max) over each set's members; 0 for an empty set."""
    out = np.zeros((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        members = np.asarray(x[b][mask[b]], np.float64)
        if len(members):
            out[b] = {"sum": members.sum(0), "mean": members.mean(0), "max": members.max(0)}[aggregation]
    return out


def _relu(z):
    return np.maximum(z, 0.0)


def _ref_deep_sets(params, x, mask, num_phi, num_rho, aggregation):
    """rho(pool phi(x)): phi's layers each followed by ReLU, rho's with ReLU between them."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    h = np.asarray(x, np.float64)
    for i in range(num_phi):
        h = _relu(h @ p[f"phi_{i}"]["kernel"] + p[f"phi_{i}"]["bias"])
    h = _ref_pool(h, mask, aggregation)
    for j in range(num_rho):
        h = h @ p[f"rho_{j}"]["kernel"] + p[f"rho_{j}"]["bias"]
        if j < num_rho - 1:
            h = _relu(h)
    return h


def _ref_equivariant(x, mask, lam, gamma, bias, pool, activation):
    """y_i = sigma(x_i Lambda - pool_j(x_j) Gamma + b) on the members; 0 elsewhere."""
    lam, gamma = np.asarray(lam, np.float64), np.asarray(gamma, np.float64)
    out = np.zeros(x.shape[:2] + (lam.shape[1],))
    for b in range(x.shape[0]):
        members = np.asarray(x[b][mask[b]], np.float64)
        if not len(members):
            continue
        pooled = {"sum": members.sum(0), "mean": members.mean(0), "max": members.max(0)}[pool]
        y = members @ lam - pooled @ gamma
        if bias is not None:
            y = y + np.asarray(bias, np.float64)
        out[b][mask[b]] = activation(y)
    return out


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm(z, p, eps=1e-6):
    mean, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _ref_attention_pooling(params, x, mask, num_heads, mab):
    """Multihead(S, Z, Z) (Set Transformer §3.2), or PMA(Z) = MAB(S, rFF(Z)) (eq. 11), one set at a time."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    seeds = p["seeds"]  # [K, D]
    k_seeds, width = seeds.shape
    head_dim = p["query"]["kernel"].shape[-1]
    pooled = np.zeros((x.shape[0], k_seeds, width))
    weights = np.zeros((x.shape[0], num_heads, k_seeds, x.shape[1]))
    for b in range(x.shape[0]):
        z = np.asarray(x[b][mask[b]], np.float64)  # [n, D]
        if not len(z):
            continue
        if mab:
            z = _relu(z @ p["member_ff"]["kernel"] + p["member_ff"]["bias"])
        q = np.einsum("KD,DNH->KNH", seeds, p["query"]["kernel"]) + p["query"]["bias"]
        k = np.einsum("SD,DNH->SNH", z, p["key"]["kernel"]) + p["key"]["bias"]
        v = np.einsum("SD,DNH->SNH", z, p["value"]["kernel"]) + p["value"]["bias"]
        heads = []
        for h in range(num_heads):
            w = _softmax(q[:, h] @ k[:, h].T / np.sqrt(head_dim))  # [K, n]
            weights[b, h][:, mask[b]] = w
            heads.append(w @ v[:, h])  # [K, H]
        out = np.einsum("KNH,NHD->KD", np.stack(heads, 1), p["out"]["kernel"]) + p["out"]["bias"]
        if mab:
            hid = _layer_norm(seeds + out, p["norm_1"])
            out = _layer_norm(hid + _relu(hid @ p["seed_ff"]["kernel"] + p["seed_ff"]["bias"]), p["norm_2"])
        pooled[b] = out
    return pooled, weights


# -- the functions against their references ------------------------------------------------------------------------

class DeepSetsPoolTest(parameterized.TestCase):

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_matches_reference(self, aggregation):
        x = _x(0)
        got = sets.deep_sets_pool(x, MASK, aggregation)
        self.assertEqual(got.dtype, jnp.float32)
        np.testing.assert_allclose(got, _ref_pool(x, MASK, aggregation), **TOL)
        np.testing.assert_array_equal(got[2], 0.0)  # the empty set
        full = np.ones((B, S), bool)
        np.testing.assert_allclose(sets.deep_sets_pool(x, None, aggregation), _ref_pool(x, full, aggregation), **TOL)

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_invariant_to_permutations_under_masks(self, aggregation):
        x, rng = _x(1), np.random.default_rng(2)
        want = sets.deep_sets_pool(x, MASK, aggregation)
        for _ in range(3):
            (xp, mp), perms = _permute(rng, x, MASK)
            self.assertFalse(np.array_equal(mp, MASK) and np.array_equal(xp, x))
            np.testing.assert_allclose(sets.deep_sets_pool(xp, mp, aggregation), want, rtol=1e-6, atol=1e-6)

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_nan_at_masked_rows_and_empty_sets(self, aggregation):
        x = _x(3)
        dirty = np.where(MASK[..., None], x, np.nan).astype(np.float32)
        dirty[0, 1] = np.inf
        dirty[1, 0] = -np.inf
        cot = _x(4, (B, D))
        grad = jax.jit(jax.value_and_grad(lambda a: jnp.sum(sets.deep_sets_pool(a, MASK, aggregation) * cot)))
        (clean_v, clean_g), (dirty_v, dirty_g) = grad(x), grad(dirty)
        np.testing.assert_array_equal(dirty_v, clean_v)
        np.testing.assert_array_equal(dirty_g, clean_g)
        self.assertTrue(np.all(np.isfinite(dirty_g)))
        np.testing.assert_array_equal(np.asarray(dirty_g)[~MASK], 0.0)  # masked rows, and all of the empty set
        self.assertGreater(float(np.abs(np.asarray(dirty_g)[MASK]).sum()), 0.0)  # members do get gradients
        empty = sets.deep_sets_pool(np.zeros((2, 0, D), np.float32), np.zeros((2, 0), bool), aggregation)
        np.testing.assert_array_equal(empty, np.zeros((2, D)))
        g0 = jax.grad(lambda a: jnp.sum(sets.deep_sets_pool(a, None, aggregation)))(np.zeros((2, 0, D), np.float32))
        self.assertEqual(g0.shape, (2, 0, D))

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_check_grads_float64(self, aggregation):
        with jax.enable_x64(True):
            x = jnp.asarray(_x(5), jnp.float64)
            jtu.check_grads(lambda a: sets.deep_sets_pool(a, MASK, aggregation), (x,), order=1,
                                      modes=("rev",))

    def test_jit_equals_eager_and_dtype(self):
        x = _x(6)
        fn = lambda a: sets.deep_sets_pool(a, MASK, "mean")  # noqa: E731
        np.testing.assert_allclose(jax.jit(fn)(x), fn(x), **TOL)
        self.assertEqual(sets.deep_sets_pool(x.astype(jnp.bfloat16), MASK, "max").dtype, jnp.bfloat16)

    def test_bad_inputs(self):
        x = _x(7)
        with _raises(ValueError, "features", (B, S)):
            sets.deep_sets_pool(x[..., 0], MASK)
        with _raises(ValueError, "mask", (B, S - 1), (B, S, D)):
            sets.deep_sets_pool(x, MASK[:, 1:])
        with _raises(ValueError, "mask", (1, S)):
            sets.deep_sets_pool(x, MASK[:1])
        with _raises(ValueError, "aggregation", "median"):
            sets.deep_sets_pool(x, MASK, "median")
        with _raises(TypeError, "mask"):
            sets.deep_sets_pool(x, MASK.astype(np.int32))
        with _raises(TypeError, "features"):
            sets.deep_sets_pool(x.astype(np.int32), MASK)


class PermutationEquivariantTest(parameterized.TestCase):

    def _kernels(self, seed, out=3, dtype=np.float32):
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(s).astype(dtype) for s in ((D, out), (D, out), (out,))]

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_matches_reference(self, pool):
        x = _x(10)
        lam, gamma, bias = self._kernels(11)
        got = sets.permutation_equivariant(x, MASK, lam, gamma, bias, pool=pool, activation=jnp.tanh)
        np.testing.assert_allclose(got, _ref_equivariant(x, MASK, lam, gamma, bias, pool, np.tanh), **TOL)
        got = sets.permutation_equivariant(x, None, lam, gamma, pool=pool)  # linear, no bias, every row a member
        np.testing.assert_allclose(got, _ref_equivariant(x, np.ones((B, S), bool), lam, gamma, None, pool,
                                                         lambda z: z), **TOL)

    def test_max_variation_is_max_normalised(self):
        """Lambda = Gamma = I, no bias: y_i = x_i - max_j x_j, so each feature's max over the members is 0."""
        x = _x(12)
        eye = np.eye(D, dtype=np.float32)
        y = np.asarray(sets.permutation_equivariant(x, MASK, eye, eye, pool="max"))
        for b in range(2):
            members = y[b][MASK[b]]
            self.assertTrue(np.all(members <= 0.0))
            np.testing.assert_allclose(members.max(0), 0.0, atol=1e-6)
        np.testing.assert_array_equal(y[~MASK], 0.0)

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_equivariant_under_masks(self, pool):
        x, rng = _x(13), np.random.default_rng(14)
        lam, gamma, bias = self._kernels(15)
        fn = lambda a, m: sets.permutation_equivariant(a, m, lam, gamma, bias, pool=pool, activation=jnp.tanh)  # noqa
        out = np.asarray(fn(x, MASK))
        for _ in range(3):
            (xp, mp), perms = _permute(rng, x, MASK)
            want = np.stack([out[b, perms[b]] for b in range(B)])
            np.testing.assert_allclose(fn(xp, mp), want, rtol=1e-6, atol=1e-6)
        # A negative control: permuting the members without the mask changes the outputs.
        (xp,), perms = _permute(rng, x)
        self.assertGreater(float(np.abs(np.asarray(fn(xp, MASK)) - np.stack(
            [out[b, perms[b]] for b in range(B)])).max()), 1e-3)

    @parameterized.named_parameters(*AGGREGATIONS)
    def test_nan_at_masked_rows_never_leaks(self, pool):
        x = _x(16)
        dirty = np.where(MASK[..., None], x, np.nan).astype(np.float32)
        dirty[0, 4] = -np.inf
        lam, gamma, bias = self._kernels(17)
        cot = _x(18, (B, S, 3))

        @jax.jit
        def run(a, params):
            loss = lambda a, p: jnp.sum(sets.permutation_equivariant(a, MASK, *p, pool=pool,  # noqa: E731
                                                                     activation=jnp.tanh) * cot)
            return jax.value_and_grad(loss, argnums=(0, 1))(a, params)

        (clean_v, clean_g), (dirty_v, dirty_g) = run(x, (lam, gamma, bias)), run(dirty, (lam, gamma, bias))
        np.testing.assert_array_equal(dirty_v, clean_v)
        for got, want in zip(jax.tree_util.tree_leaves(dirty_g), jax.tree_util.tree_leaves(clean_g)):
            self.assertTrue(np.all(np.isfinite(got)))
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.asarray(dirty_g[0])[~MASK], 0.0)

    def test_empty_sets_and_check_grads(self):
        lam, gamma, bias = self._kernels(19)
        y = sets.permutation_equivariant(np.zeros((2, 0, D), np.float32), None, lam, gamma, bias)
        self.assertEqual(y.shape, (2, 0, 3))
        y = sets.permutation_equivariant(_x(20), MASK, lam, gamma, bias, activation=jnp.exp)
        np.testing.assert_array_equal(y[2], 0.0)  # exp(b) != 0 would show if the empty set were not zeroed
        with jax.enable_x64(True):
            args = tuple(jnp.asarray(a, jnp.float64) for a in (_x(21), lam, gamma, bias))
            for pool in sets.AGGREGATIONS:
                jtu.check_grads(
                    lambda a, l_, g, b_: sets.permutation_equivariant(a, MASK, l_, g, b_, pool=pool,
                                                                      activation=jnp.tanh),
                    args, order=1, modes=("rev",))

    def test_jit_equals_eager_and_dtype(self):
        x = _x(22)
        lam, gamma, bias = self._kernels(23)
        fn = lambda a: sets.permutation_equivariant(a, MASK, lam, gamma, bias, pool="mean")  # noqa: E731
        np.testing.assert_allclose(jax.jit(fn)(x), fn(x), **TOL)
        self.assertEqual(fn(x.astype(jnp.bfloat16)).dtype, jnp.bfloat16)

    def test_bad_inputs(self):
        x = _x(24)
        lam, gamma, bias = self._kernels(25)
        with _raises(ValueError, "lambda_kernel", (D + 1, 3), (B, S, D)):
            sets.permutation_equivariant(x, MASK, np.ones((D + 1, 3), np.float32), gamma)
        with _raises(ValueError, "gamma_kernel", (D, 2), (D, 3)):
            sets.permutation_equivariant(x, MASK, lam, gamma[:, :2])
        with _raises(ValueError, "bias", (2,)):
            sets.permutation_equivariant(x, MASK, lam, gamma, bias[:2])
        with _raises(ValueError, "mask", (B, S - 1)):
            sets.permutation_equivariant(x, MASK[:, 1:], lam, gamma)
        with _raises(ValueError, "pool", "min"):
            sets.permutation_equivariant(x, MASK, lam, gamma, pool="min")
        with _raises(TypeError, "activation"):
            sets.permutation_equivariant(x, MASK, lam, gamma, activation="tanh")


class SetAttentionPoolTest(absltest.TestCase):

    def test_matches_dense_softmax_and_weights(self):
        rng = np.random.default_rng(30)
        q = rng.standard_normal((2, 2, 3)).astype(np.float32)  # [K, N, H]
        k, v = (rng.standard_normal((B, S, 2, 3)).astype(np.float32) for _ in range(2))
        pooled, weights = sets.set_attention_pool(q, k, v, MASK)
        self.assertEqual((pooled.shape, weights.shape), ((B, 2, 2, 3), (B, 2, 2, S)))
        for b in range(B):
            for h in range(2):
                if not MASK[b].any():
                    np.testing.assert_array_equal(pooled[b, :, h], 0.0)
                    np.testing.assert_array_equal(weights[b, h], 0.0)
                    continue
                w = _softmax(q[:, h].astype(np.float64) @ k[b][MASK[b]][:, h].T / np.sqrt(3))
                np.testing.assert_allclose(weights[b, h][:, MASK[b]], w, **TOL)
                np.testing.assert_array_equal(weights[b, h][:, ~MASK[b]], 0.0)
                np.testing.assert_allclose(pooled[b, :, h], w @ v[b][MASK[b]][:, h], **TOL)
        per_set = np.broadcast_to(q, (B,) + q.shape)
        np.testing.assert_allclose(sets.set_attention_pool(per_set, k, v, MASK)[0], pooled, **TOL)

    def test_bad_inputs(self):
        q, k = np.ones((2, 2, 3), np.float32), np.ones((B, S, 2, 3), np.float32)
        with _raises(ValueError, "queries", (2, 1, 3), (B, S, 2, 3)):
            sets.set_attention_pool(q[:, :1], k, k, MASK)
        with _raises(ValueError, "queries", (1, 2, 2, 3)):
            sets.set_attention_pool(q[None], k, k, MASK)
        with _raises(ValueError, "values", (B, S - 1, 2, 3)):
            sets.set_attention_pool(q, k, k[:, 1:], MASK)
        with _raises(ValueError, "mask", (B, S - 1)):
            sets.set_attention_pool(q, k, k, MASK[:, 1:])


# -- the modules ------------------------------------------------------------------------------------------------

MODULES = {
    "deep_sets_sum": lambda: sets.DeepSets((5, 3), (4, 2), aggregation="sum"),
    "deep_sets_mean": lambda: sets.DeepSets((5,), (2,), aggregation="mean"),
    "deep_sets_max": lambda: sets.DeepSets((5, 3), (), aggregation="max"),
    "equivariant_max": lambda: sets.PermutationEquivariant(3, pool="max"),
    "equivariant_sum": lambda: sets.PermutationEquivariant(3, pool="sum", activation=None, use_bias=False),
    "attention_pooling": lambda: sets.AttentionPooling(num_heads=2, num_seeds=3),
    "attention_pooling_pma": lambda: sets.AttentionPooling(num_heads=2, num_seeds=2, head_dim=3, mab=True),
}
NAMED_MODULES = [(name, name) for name in MODULES]


def _reference(name, module, params, x, mask):
    if isinstance(module, sets.DeepSets):
        return _ref_deep_sets(params, x, mask, len(module.phi_features), len(module.rho_features), module.aggregation)
    if isinstance(module, sets.PermutationEquivariant):
        act = (lambda z: z) if module.activation is None else np.tanh
        return _ref_equivariant(x, mask, params["lambda"], params["gamma"], params.get("bias"), module.pool, act)
    return _ref_attention_pooling(params, x, mask, module.num_heads, module.mab)


def _invariant(module):
    return not isinstance(module, sets.PermutationEquivariant)


class ModulesTest(parameterized.TestCase):

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_matches_reference(self, name):
        module, x = MODULES[name](), _x(40)
        params = _params(module, x, MASK)
        got = module.apply({"params": params}, x, MASK)
        want = _reference(name, module, params, x, MASK)
        if isinstance(module, sets.AttentionPooling):
            np.testing.assert_allclose(got[1], want[1], **TOL)
            got, want = got[0], want[0]
            np.testing.assert_array_equal(got[2], 0.0)  # the empty set
        np.testing.assert_allclose(got, want, **TOL)

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_permutations_under_masks(self, name):
        """Invariant modules: equal outputs; the equivariant layer: permuted outputs (weights permute too)."""
        module, x, rng = MODULES[name](), _x(41), np.random.default_rng(42)
        variables = {"params": _params(module, x, MASK)}
        apply = jax.jit(module.apply)
        out = jax.tree_util.tree_map(np.asarray, apply(variables, x, MASK))
        for _ in range(3):
            (xp, mp), perms = _permute(rng, x, MASK)
            got = apply(variables, xp, mp)
            if isinstance(module, sets.AttentionPooling):
                np.testing.assert_allclose(got[0], out[0], rtol=1e-6, atol=1e-6)
                want_w = np.stack([out[1][b][..., perms[b]] for b in range(B)])
                np.testing.assert_allclose(got[1], want_w, rtol=1e-6, atol=1e-6)
            elif _invariant(module):
                np.testing.assert_allclose(got, out, rtol=1e-6, atol=1e-6)
            else:
                np.testing.assert_allclose(got, np.stack([out[b, perms[b]] for b in range(B)]), rtol=1e-6,
                                           atol=1e-6)

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_nan_at_masked_rows_never_leaks(self, name):
        module, x = MODULES[name](), _x(43)
        params = _params(module, x, MASK)
        dirty = np.where(MASK[..., None], x, np.nan).astype(np.float32)
        dirty[0, 1, 0], dirty[1, 0, 2] = np.inf, -np.inf
        shapes = jax.eval_shape(module.apply, {"params": params}, x, MASK)
        cots = [jnp.asarray(_x(44 + i, s.shape)) for i, s in enumerate(jax.tree_util.tree_leaves(shapes))]

        @jax.jit
        def run(p, a):
            def loss(p, a):
                outs = jax.tree_util.tree_leaves(module.apply({"params": p}, a, MASK))
                return sum(jnp.sum(o * c) for o, c in zip(outs, cots))
            return jax.value_and_grad(loss, argnums=(0, 1))(p, a)

        clean, poisoned = run(params, x), run(params, dirty)
        for got, want in zip(jax.tree_util.tree_leaves(poisoned), jax.tree_util.tree_leaves(clean)):
            self.assertTrue(np.all(np.isfinite(got)))
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        input_grads = np.asarray(poisoned[1][1])
        np.testing.assert_array_equal(input_grads[~MASK], 0.0)
        self.assertGreater(float(np.abs(input_grads[MASK]).sum()), 0.0)

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_empty_sets(self, name):
        module, x = MODULES[name](), _x(50)
        params = _params(module, x, MASK)
        none = np.zeros((B, S), bool)
        grads = jax.jit(jax.grad(lambda a: sum(jnp.sum(o) for o in jax.tree_util.tree_leaves(
            module.apply({"params": params}, a, none)))))(x)
        np.testing.assert_array_equal(grads, 0.0)
        for mask, inputs in ((none, x), (np.zeros((B, 0), bool), np.zeros((B, 0, D), np.float32))):
            got = jax.jit(module.apply)({"params": params}, inputs, mask)
            for leaf in jax.tree_util.tree_leaves(got):
                self.assertTrue(np.all(np.isfinite(leaf)))
            if isinstance(module, sets.DeepSets):  # rho(0): the pool of an empty set is 0
                want = _reference(name, module, params, np.zeros((B, 1, D)), np.zeros((B, 1), bool))
                np.testing.assert_allclose(got, want, **TOL)
            else:
                np.testing.assert_array_equal(jax.tree_util.tree_leaves(got)[0], 0.0)

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_check_grads_float64(self, name):
        """Finite differences in float64. AttentionPooling's softmax runs in float32 inside
        `dot_product_attention` whatever the input dtype, so its differences take a float32 step and tolerance."""
        module = MODULES[name]().clone(param_dtype=jnp.float64)
        tol = dict(eps=1e-3, atol=5e-3, rtol=5e-3) if isinstance(module, sets.AttentionPooling) else dict(
            atol=1e-5, rtol=1e-5)
        with jax.enable_x64(True):
            x = jnp.asarray(_x(51), jnp.float64)
            params = _params(module, x, MASK, dtype=jnp.float64)
            fn = jax.jit(lambda p, a: module.apply({"params": p}, a, MASK))
            jtu.check_grads(fn, (params, x), order=1, modes=("rev",), **tol)

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_jit_equals_eager(self, name):
        module, x = MODULES[name](), _x(52)
        variables = {"params": _params(module, x, MASK)}
        eager = module.apply(variables, x, MASK)
        jitted = jax.jit(module.apply)(variables, x, MASK)
        for got, want in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
            np.testing.assert_allclose(got, want, **TOL)

    @parameterized.named_parameters(*NAMED_MODULES)
    def test_no_kernel_names_an_axis_twice(self, name):
        module, x = MODULES[name](), _x(53)
        boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, MASK)["params"]
        leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))
        for leaf in leaves:
            self.assertIsInstance(leaf, nn.LogicallyPartitioned)
            names = [n for n in leaf.names if n is not None]
            self.assertEqual(len(names), len(set(names)), f"{leaf.names}")

    def test_bad_inputs_and_config(self):
        x = _x(54)
        for name, make in MODULES.items():
            module = make()
            variables = {"params": _params(module, x, MASK)}
            with self.subTest(name):
                with _raises(ValueError, "inputs", (B, S)):
                    module.apply(variables, x[..., 0], MASK[:, :])
                with _raises(ValueError, "mask", (B, S - 1), (B, S, D)):
                    module.apply(variables, x, MASK[:, 1:])
                with _raises(ValueError, "inputs", (B, S, 0)):
                    module.apply(variables, x[..., :0], MASK)
                with _raises(TypeError, "mask"):
                    module.apply(variables, x, MASK.astype(np.float32))
        with _raises(ValueError, "phi_features"):
            sets.DeepSets(())
        with _raises(ValueError, "rho_features[1]", "0"):
            sets.DeepSets((3,), (2, 0))
        with _raises(ValueError, "aggregation", "median"):
            sets.DeepSets((3,), aggregation="median")
        with _raises(ValueError, "pool", "min"):
            sets.PermutationEquivariant(3, pool="min")
        with _raises(ValueError, "features"):
            sets.PermutationEquivariant(0)
        with _raises(ValueError, "num_seeds"):
            sets.AttentionPooling(num_seeds=0)
        with _raises(TypeError, "mab"):
            sets.AttentionPooling(mab=1)
        with _raises(ValueError, "num_heads N=3", "D=4"):
            sets.AttentionPooling(num_heads=3).init(jax.random.PRNGKey(0), x, MASK)


if __name__ == "__main__":
    absltest.main()
