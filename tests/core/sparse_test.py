"""Tests for attention_jax/core/sparse.py: sparsemax, 1.5-entmax and bisection alpha-entmax.

Oracles: the float64 transcriptions in tests/reference.py (sparsemax as the simplex projection, Martins &
Astudillo 2016, arXiv:1602.02068, eq. 2; alpha-entmax as a thresholded power found by float64 bisection,
Peters et al. 2019, arXiv:1905.05702, eq. 10), the published values for x = [-2, 0, 0.5], and finite
differences for the custom JVPs.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax import test_util as jtu

from attention_jax.core import alignment, sparse
from tests import reference as ref

B, T, S = 2, 3, 7
_X = np.array([-2.0, 0.0, 0.5], np.float32)

_NORMALISERS = {
    "sparsemax": (sparse.sparsemax, ref.sparsemax),
    "entmax15": (sparse.entmax15, lambda z, m=None: ref.entmax(z, m, alpha=1.5)),
    "entmax_1.25": (lambda z, m=None: sparse.entmax(z, m, alpha=1.25), lambda z, m=None: ref.entmax(z, m, 1.25)),
    "entmax_1.75": (lambda z, m=None: sparse.entmax(z, m, alpha=1.75), lambda z, m=None: ref.entmax(z, m, 1.75)),
}
_CASES = [dict(testcase_name=name, name=name) for name in _NORMALISERS]


_entmax = jax.jit(lambda z, alpha: sparse.entmax(z, alpha=alpha), static_argnums=1)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _logits(seed, shape=(B, T, S)):
    # Spaced values: no two logits (nor a logit and tau) tie, so every point is differentiable.
    rng = np.random.default_rng(seed)
    return (rng.permutation(np.prod(shape)).reshape(shape) * 0.37 / np.prod(shape) * 4.0
            + 0.05 * rng.standard_normal(shape)).astype(np.float32)


def _mask(seed, shape=(B, T, S)):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.7
    mask[..., 0] = True
    mask[0, 0] = False  # one row with no valid key
    return mask


class PublishedValuesTest(parameterized.TestCase):

    def test_issue_values(self):
        np.testing.assert_allclose(jax.nn.softmax(_X), [0.0486, 0.3592, 0.5922], atol=1e-4)
        np.testing.assert_allclose(jax.jit(sparse.sparsemax)(_X), [0.0, 0.25, 0.75], atol=1e-6)
        np.testing.assert_allclose(jax.jit(sparse.entmax15)(_X), [0.0, 0.3260, 0.6740], atol=1e-4)
        np.testing.assert_allclose(_entmax(_X, 1.5), [0.0, 0.3260, 0.6740], atol=1e-4)

    def test_alpha_limits(self):
        z = _logits(0)
        np.testing.assert_allclose(_entmax(z, 1.0), jax.nn.softmax(z), atol=1e-6)
        np.testing.assert_allclose(_entmax(z, 2.0), jax.jit(sparse.sparsemax)(z), atol=1e-5)
        np.testing.assert_allclose(_entmax(z, 1.5), jax.jit(sparse.entmax15)(z), atol=1e-5)

    def test_sparsity_grows_with_alpha(self):
        z = 3.0 * np.random.default_rng(1).standard_normal((64, 20)).astype(np.float32)
        zeros = [float(np.mean(np.asarray(_entmax(z, a)) == 0.0)) for a in (1.0, 1.25, 1.5, 2.0, 4.0)]
        self.assertEqual(zeros[0], 0.0)
        self.assertEqual(zeros, sorted(zeros))
        self.assertGreater(zeros[-1], zeros[1])


class NormaliserTest(chex.TestCase):

    @parameterized.named_parameters(*_CASES)
    def test_matches_reference_unmasked(self, name):
        fn, oracle = _NORMALISERS[name]
        z = _logits(2)
        got = jax.jit(fn)(jnp.asarray(z))
        self.assertEqual(got.dtype, jnp.float32)
        chex.assert_shape(got, z.shape)
        ref.assert_close(got, oracle(z))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*_CASES)
    def test_matches_reference_masked(self, name):
        fn, oracle = _NORMALISERS[name]
        z, mask = _logits(3), _mask(4)
        got = self.variant(fn)(jnp.asarray(z), jnp.asarray(mask))
        ref.assert_close(got, oracle(z, mask))

    @parameterized.named_parameters(*_CASES)
    def test_simplex_with_exact_zeros(self, name):
        fn, _ = _NORMALISERS[name]
        z, mask = 4.0 * _logits(5), _mask(6)
        got = np.asarray(fn(jnp.asarray(z), jnp.asarray(mask)))
        self.assertTrue(np.all(got >= 0.0))
        np.testing.assert_array_equal(got[~mask], 0.0)
        live = mask.any(-1)
        np.testing.assert_allclose(got.sum(-1)[live], 1.0, rtol=1e-5)
        np.testing.assert_array_equal(got[~live], 0.0)
        self.assertGreater(np.sum((got == 0.0) & mask), 0, "no valid key got an exact zero")

    @parameterized.named_parameters(*_CASES)
    def test_check_grads(self, name):
        fn, _ = _NORMALISERS[name]
        z = jnp.asarray(_logits(7), jnp.float32)
        jtu.check_grads(fn, (z,), order=1, modes=("fwd", "rev"), eps=1e-3, atol=1e-2, rtol=1e-2)

    @parameterized.named_parameters(*_CASES)
    def test_jacobian_matches_float64_finite_differences(self, name):
        fn, oracle = _NORMALISERS[name]
        z, mask = _logits(8, (5,)), np.array([True, True, False, True, True])
        jac = np.asarray(jax.jacfwd(lambda v: fn(v, jnp.asarray(mask)))(jnp.asarray(z)))
        eps = 1e-4
        numeric = np.stack([(oracle(z + eps * e, mask) - oracle(z - eps * e, mask)) / (2 * eps)
                            for e in np.eye(5)], axis=1)
        np.testing.assert_allclose(jac, numeric, atol=2e-3)
        np.testing.assert_array_equal(jac[:, 2], 0.0)  # a masked logit moves nothing
        np.testing.assert_array_equal(jac[2], 0.0)

    @parameterized.named_parameters(*_CASES)
    def test_nan_under_mask_reaches_neither_weights_nor_grads(self, name):
        fn, _ = _NORMALISERS[name]
        z, mask = _logits(9), _mask(10)
        poisoned = np.where(mask, z, np.nan).astype(np.float32)
        poisoned[0, 1, -1] = np.inf if not mask[0, 1, -1] else poisoned[0, 1, -1]
        got = fn(jnp.asarray(poisoned), jnp.asarray(mask))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(fn(jnp.asarray(z), jnp.asarray(mask))))
        probe = np.random.default_rng(11).standard_normal(z.shape).astype(np.float32)
        grad = jax.grad(lambda v: jnp.sum(fn(v, jnp.asarray(mask)) * probe))(jnp.asarray(poisoned))
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)

    @parameterized.named_parameters(*_CASES)
    def test_fully_masked_rows_zero_weights_and_zero_grads(self, name):
        fn, _ = _NORMALISERS[name]
        z = _logits(12)
        mask = np.zeros(z.shape, bool)
        got = fn(jnp.asarray(z), jnp.asarray(mask))
        np.testing.assert_array_equal(np.asarray(got), 0.0)
        grad = jax.grad(lambda v: jnp.sum(fn(v, jnp.asarray(mask)) ** 2 + fn(v, jnp.asarray(mask))))(jnp.asarray(z))
        np.testing.assert_array_equal(np.asarray(grad), 0.0)

    @parameterized.named_parameters(*_CASES)
    def test_empty_sequences(self, name):
        fn, _ = _NORMALISERS[name]
        grad_fn = jax.jit(jax.grad(lambda v: jnp.sum(fn(v))))
        for shape in ((B, T, 0), (0, T, S)):
            got = jax.jit(fn)(jnp.zeros(shape, jnp.float32))
            chex.assert_shape(got, shape)
            chex.assert_shape(grad_fn(jnp.zeros(shape, jnp.float32)), shape)

    @parameterized.named_parameters(*_CASES)
    def test_bfloat16_logits_give_float32_weights(self, name):
        fn, oracle = _NORMALISERS[name]
        z = jnp.asarray(_logits(13), jnp.bfloat16)
        got = fn(z)
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, oracle(np.asarray(z)), "bfloat16")

    @parameterized.named_parameters(*_CASES)
    def test_shift_invariance_and_large_logits(self, name):
        fn, _ = _NORMALISERS[name]
        z = _logits(14)
        np.testing.assert_allclose(fn(jnp.asarray(z + 1e3)), fn(jnp.asarray(z)), atol=2e-4)
        self.assertTrue(np.all(np.isfinite(np.asarray(fn(jnp.asarray(z * 1e6))))))

    @parameterized.named_parameters(*_CASES)
    def test_bad_input_raises(self, name):
        fn, _ = _NORMALISERS[name]
        z = jnp.zeros((B, S))
        with _raises(ValueError, "(2, 6)", "(2, 7)"):
            fn(z, jnp.ones((B, S - 1), bool))
        with _raises(TypeError, "boolean", "int32"):
            fn(z, jnp.ones((B, S), jnp.int32))
        with _raises(TypeError, "floating", "int32"):
            fn(jnp.zeros((B, S), jnp.int32))
        with _raises(ValueError, "scalar"):
            fn(jnp.float32(1.0))

    def test_bad_alpha_and_iterations_raise(self):
        z = jnp.zeros((B, S))
        with _raises(ValueError, "alpha", "0.5"):
            sparse.entmax(z, alpha=0.5)
        with _raises(TypeError, "alpha", "Array"):
            sparse.entmax(z, alpha=jnp.float32(1.5))
        with _raises(ValueError, "n_iter"):
            sparse.entmax(z, alpha=1.5, n_iter=0)

    def test_no_retrace_per_call(self):
        fn = jax.jit(chex.assert_max_traces(sparse.entmax15, n=1))
        for seed in range(3):
            fn(jnp.asarray(_logits(seed)))


class NormalizeRegistryTest(parameterized.TestCase):

    @parameterized.parameters("softmax", "sparsemax", "entmax15")
    def test_normalize_dispatches(self, normalizer):
        z, mask = _logits(15), _mask(16)
        expected = {"softmax": ref.masked_softmax, "sparsemax": ref.sparsemax,
                    "entmax15": lambda a, m: ref.entmax(a, m, 1.5)}[normalizer](z, mask)
        ref.assert_close(alignment.normalize(jnp.asarray(z), jnp.asarray(mask), normalizer), expected)

    def test_unknown_normalizer_raises(self):
        with _raises(ValueError, "normalizer", "'sparse'", "entmax15"):
            alignment.normalize(jnp.zeros((2, 3)), None, "sparse")


class PropertyTest(absltest.TestCase):

    # One shape, so the two jitted functions compile once; hypothesis draws the values (ties, repeats, large
    # spreads) and the masks (empty rows, single keys).
    _sparsemax = staticmethod(jax.jit(sparse.sparsemax))
    _entmax15 = staticmethod(jax.jit(sparse.entmax15))

    @settings(max_examples=30, deadline=None)
    @given(logits=hnp.arrays(np.float32, (3, 6), elements=st.floats(-20, 20, width=32)),
           mask=hnp.arrays(np.bool_, (3, 6)))
    def test_sparsemax_and_entmax15_match_float64(self, logits, mask):
        got = np.asarray(self._sparsemax(jnp.asarray(logits), jnp.asarray(mask)))
        ref.assert_close(got, ref.sparsemax(logits, mask))
        got15 = np.asarray(self._entmax15(jnp.asarray(logits), jnp.asarray(mask)))
        np.testing.assert_allclose(got15, ref.entmax(logits, mask, 1.5), atol=2e-5)


if __name__ == "__main__":
    absltest.main()
