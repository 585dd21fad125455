"""Tests for the hard alignments of attention_jax/core/alignment.py: `sample_hard` and `gumbel_softmax`.

Xu et al. 2015 (arXiv:1502.03044) eq. 8: s ~ Multinoulli(alpha); Jang et al. 2016 (arXiv:1611.01144) eq. 1 and
the straight-through estimator (§2); Maddison et al. 2016 (arXiv:1611.00712). Oracles: the multinoulli's own
probabilities (a chi-square test on 20,000 draws, with a positive control that the same test rejects a wrong
distribution), a float64 numpy transcription of eq. 1 given the same Gumbel noise, and the relaxed sample's
gradient for the straight-through one.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from jax import test_util as jtu

from attention_jax.core import alignment

N = 20_000
# chi-square with 3 or 4 degrees of freedom exceeds 30 with probability < 1e-5: the seeds are fixed, and a wrong
# distribution (the positive controls) lands far above it.
CHI2_LIMIT = 30.0


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _chi2(counts, probs):
    support = probs > 0
    expected = probs[support] * counts.sum()
    return float(np.sum((counts[support] - expected) ** 2 / expected))


# Location 1 masked (holding NaN), location 3 of zero weight; the weights are not normalised (sum 2).
WEIGHTS = np.array([0.2, np.nan, 0.4, 0.0, 0.6, 0.8], np.float32)
MASK = np.array([True, False, True, True, True, True])
PROBS = np.array([0.1, 0.0, 0.2, 0.0, 0.3, 0.4])


class SampleHardTest(chex.TestCase):

    def test_frequencies_match_the_weights_and_never_hit_masked_or_zero(self):
        weights = np.broadcast_to(WEIGHTS, (N, 6))
        mask = np.broadcast_to(MASK, (N, 6))
        one_hot, index = jax.jit(alignment.sample_hard)(jax.random.PRNGKey(0), weights, mask)
        one_hot, index = np.asarray(one_hot), np.asarray(index)
        self.assertEqual((one_hot.dtype, index.dtype), (np.float32, np.int32))
        np.testing.assert_array_equal(one_hot.sum(1), 1.0)
        np.testing.assert_array_equal(one_hot, np.eye(6, dtype=np.float32)[index])
        counts = one_hot.sum(0)
        self.assertEqual(counts[1], 0)  # masked (NaN)
        self.assertEqual(counts[3], 0)  # zero weight
        self.assertLess(_chi2(counts, PROBS), CHI2_LIMIT)
        # Positive control: the same draws reject the distribution that ignores the weights.
        uniform = np.where(PROBS > 0, 0.25, 0.0)
        self.assertGreater(_chi2(counts, uniform), 10 * CHI2_LIMIT)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rows_with_nothing_to_draw_and_typed_keys(self):
        weights = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.3, np.nan, 0.7]], np.float32)
        mask = np.array([[True, True, True], [True, True, True], [False, False, False]])
        one_hot, index = self.variant(alignment.sample_hard)(jax.random.key(3), weights, mask)
        np.testing.assert_array_equal(index[1:], [-1, -1])
        np.testing.assert_array_equal(one_hot[1:], 0.0)
        self.assertIn(int(index[0]), (0, 1))
        one_hot, index = self.variant(alignment.sample_hard)(jax.random.key(3), np.zeros((2, 0), np.float32))
        chex.assert_shape((one_hot, index), ((2, 0), (2,)))
        np.testing.assert_array_equal(index, -1)

    def test_jit_equals_eager_and_the_key_decides(self):
        weights = np.random.default_rng(0).random((64, 5)).astype(np.float32)
        key = jax.random.PRNGKey(7)
        eager, jitted = alignment.sample_hard(key, weights), jax.jit(alignment.sample_hard)(key, weights)
        chex.assert_trees_all_equal(eager, jitted)
        other = alignment.sample_hard(jax.random.PRNGKey(8), weights)[1]
        self.assertTrue(np.any(np.asarray(other) != np.asarray(eager[1])))

    def test_nan_at_masked_weights_gives_no_nan_gradient(self):
        weights = jnp.asarray(WEIGHTS)
        grad = jax.grad(lambda w: jnp.sum(alignment.sample_hard(jax.random.PRNGKey(1), w, MASK)[0] * w.at[1].set(0)))
        got = np.asarray(grad(weights))
        self.assertTrue(np.all(np.isfinite(got)))

    def test_bad_inputs_raise(self):
        key = jax.random.PRNGKey(0)
        weights = np.ones((2, 3), np.float32)
        with _raises(ValueError, "mask", (2, 2), (2, 3)):
            alignment.sample_hard(key, weights, np.ones((2, 2), bool))
        with _raises(TypeError, "mask", "int32"):
            alignment.sample_hard(key, weights, np.ones((2, 3), np.int32))
        with _raises(TypeError, "weights", "int32"):
            alignment.sample_hard(key, np.ones((2, 3), np.int32))
        with _raises(ValueError, "weights", "()"):
            alignment.sample_hard(key, np.float32(1.0))
        with _raises(TypeError, "rng", "float32"):
            alignment.sample_hard(np.zeros(2, np.float32), weights)
        with _raises(ValueError, "rng", "(2,)"):
            alignment.sample_hard(jax.random.split(jax.random.key(0)), weights)


LOGITS = np.array([[1.0, -0.5, 0.3, np.nan, 2.0], [0.2, 0.1, -1.0, 0.5, np.inf]], np.float32)
LOGIT_MASK = np.array([[True, True, True, False, True], [True, True, True, True, False]])


def _ref_relaxed(logits, noise, mask, temperature):
    """Jang et al. eq. 1 in float64 over the valid locations of each row; 0 elsewhere."""
    out = np.zeros(logits.shape)
    for b in range(logits.shape[0]):
        z = (logits[b, mask[b]].astype(np.float64) + noise[b, mask[b]]) / temperature
        e = np.exp(z - z.max())
        out[b, mask[b]] = e / e.sum()
    return out


class GumbelSoftmaxTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_relaxed_matches_eq_1_and_hard_forward_is_exactly_one_hot(self):
        key, temperature = jax.random.PRNGKey(4), 0.7
        noise = np.asarray(jax.random.gumbel(key, LOGITS.shape, jnp.float32), np.float64)
        relaxed = self.variant(alignment.gumbel_softmax, static_argnames=("temperature", "hard"))(
            key, LOGITS, LOGIT_MASK, temperature=temperature, hard=False)
        want = _ref_relaxed(LOGITS, noise, LOGIT_MASK, temperature)
        np.testing.assert_allclose(relaxed, want, rtol=1e-5, atol=1e-6)
        hard = np.asarray(self.variant(alignment.gumbel_softmax, static_argnames=("temperature", "hard"))(
            key, LOGITS, LOGIT_MASK, temperature=temperature, hard=True))
        np.testing.assert_array_equal(hard, np.eye(5, dtype=np.float32)[np.argmax(want, 1)])  # exact, not close
        self.assertTrue(set(np.unique(hard)) <= {0.0, 1.0})

    def test_straight_through_gradient_is_the_relaxed_softmax_gradient(self):
        key = jax.random.PRNGKey(5)
        logits = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)), jnp.float32)
        cot = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4)), jnp.float32)

        def loss(logits, hard):
            return jnp.sum(alignment.gumbel_softmax(key, logits, temperature=0.5, hard=hard) * cot)

        hard_grad = jax.grad(loss)(logits, True)
        relaxed_grad = jax.grad(loss)(logits, False)
        np.testing.assert_allclose(hard_grad, relaxed_grad, rtol=1e-6, atol=1e-7)
        self.assertGreater(float(jnp.max(jnp.abs(hard_grad))), 1e-3)  # it is not the zero gradient of argmax

    def test_argmax_frequencies_follow_the_softmax(self):
        """Gumbel-max: the hard sample is a draw from softmax(logits) over the valid locations."""
        logits = np.array([0.5, np.nan, -1.0, 1.5, 0.0], np.float32)
        mask = np.array([True, False, True, True, True])
        samples = jax.jit(alignment.gumbel_softmax, static_argnames=("temperature",))(
            jax.random.PRNGKey(6), np.broadcast_to(logits, (N, 5)), np.broadcast_to(mask, (N, 5)), temperature=2.0)
        counts = np.asarray(samples).sum(0)
        probs = np.where(mask, np.exp(np.where(mask, logits, 0.0)), 0.0)
        probs /= probs.sum()
        self.assertEqual(counts[1], 0)
        self.assertLess(_chi2(counts, probs), CHI2_LIMIT)
        self.assertGreater(_chi2(counts, np.where(mask, 0.25, 0.0)), 10 * CHI2_LIMIT)  # positive control

    def test_nan_at_masked_logits_never_chosen_and_never_leaks(self):
        key = jax.random.PRNGKey(9)
        cot = np.random.default_rng(3).standard_normal(LOGITS.shape).astype(np.float32)
        clean = np.where(LOGIT_MASK, LOGITS, 0.0).astype(np.float32)

        @jax.jit
        def run(logits):
            return jax.value_and_grad(lambda l: jnp.sum(alignment.gumbel_softmax(key, l, LOGIT_MASK) * cot))(logits)

        (dirty_value, dirty_grad), (clean_value, clean_grad) = run(LOGITS), run(clean)
        self.assertTrue(np.isfinite(dirty_value) and np.all(np.isfinite(dirty_grad)))
        np.testing.assert_array_equal(dirty_value, clean_value)
        np.testing.assert_array_equal(dirty_grad, clean_grad)
        np.testing.assert_array_equal(np.asarray(dirty_grad)[~LOGIT_MASK], 0.0)
        draws = alignment.gumbel_softmax(key, np.broadcast_to(LOGITS, (500, 2, 5)),
                                         np.broadcast_to(LOGIT_MASK, (500, 2, 5)))
        np.testing.assert_array_equal(np.asarray(draws)[:, ~LOGIT_MASK], 0.0)

    def test_rows_with_no_valid_location_are_zero_with_zero_gradient(self):
        key = jax.random.PRNGKey(10)
        logits = jnp.ones((2, 3), jnp.float32)
        mask = np.array([[True, False, True], [False, False, False]])
        for hard in (True, False):
            y = alignment.gumbel_softmax(key, logits, mask, hard=hard)
            np.testing.assert_array_equal(y[1], 0.0)
            self.assertAlmostEqual(float(jnp.sum(y[0])), 1.0, places=6)
            grad = jax.grad(lambda l, h=hard: jnp.sum(alignment.gumbel_softmax(key, l, mask, hard=h) ** 2))(logits)
            np.testing.assert_array_equal(grad[1], 0.0)
        self.assertEqual(alignment.gumbel_softmax(key, jnp.zeros((2, 0))).shape, (2, 0))

    def test_check_grads_relaxed(self):
        key = jax.random.PRNGKey(11)
        logits = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4)), jnp.float32)
        mask = np.array([[True, True, False, True], [True, True, True, True]])
        jtu.check_grads(lambda l: alignment.gumbel_softmax(key, l, mask, temperature=0.8, hard=False), (logits,),
                        order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_bad_inputs_raise(self):
        key = jax.random.PRNGKey(0)
        logits = np.zeros((2, 3), np.float32)
        with _raises(ValueError, "mask", (3,), (2, 3)):
            alignment.gumbel_softmax(key, logits, np.ones(3, bool))
        with _raises(ValueError, "temperature", "0.0"):
            alignment.gumbel_softmax(key, logits, temperature=0.0)
        with _raises(TypeError, "hard", "1"):
            alignment.gumbel_softmax(key, logits, hard=1)
        with _raises(TypeError, "logits", "int32"):
            alignment.gumbel_softmax(key, logits.astype(np.int32))


if __name__ == "__main__":
    absltest.main()
