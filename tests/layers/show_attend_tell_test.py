"""Tests for layers/show_attend_tell.py: Xu et al. 2015 (arXiv:1502.03044), soft and hard attention.

Oracles: float64 numpy transcriptions of eqs. 4-5 (the MLP score and softmax), 9 and 13 (hard and soft
contexts), the §4.2.1 gate and eq. 14 (the doubly stochastic penalty), one unpadded row at a time; the
closed-form gradient of E_s[r(s)] for a categorical over four locations, against which the REINFORCE surrogate
(eq. 12) is checked unbiased within Monte Carlo tolerance, with and without the moving-average baseline (which
must also shrink the variance); the paper's learning rule term by term; and finite differences. The layer
contract (jit, NaN at masked locations, logical axes, bad shapes) is in tests/layers/show_attend_tell_contracts.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.core import alignment
from attention_jax.layers import show_attend_tell as sat

B, L, D, DH, A = 3, 5, 4, 3, 6
# Row 0: all real; row 1: holes in the middle; row 2: no real location.
MASK = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], bool)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, L, D)).astype(np.float32), rng.standard_normal((B, DH)).astype(np.float32)


def _params(seed, gate=True):
    rng = np.random.default_rng(seed)
    p = dict(w_a=rng.standard_normal((D, A)), b_a=rng.standard_normal(A), w_h=rng.standard_normal((DH, A)),
             w_att=rng.standard_normal(A))
    if gate:
        p.update(w_beta=rng.standard_normal((DH, 1)), b_beta=rng.standard_normal(1))
    return {k: (0.5 * v).astype(np.float32) for k, v in p.items()}


def _ref(annotations, state, p, mask):
    """Eqs. 4-5, 13 and the gate in float64, per row over its real locations: (logits, alpha, soft context)."""
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    logits, alpha, context = np.zeros((B, L)), np.zeros((B, L)), np.zeros((B, D))
    for b in range(B):
        real = mask[b]
        if not real.any():
            continue
        a = f64(annotations[b, real])  # [n, D]
        e = np.tanh(a @ f64(p["w_a"]) + f64(p["b_a"]) + f64(state[b]) @ f64(p["w_h"])) @ f64(p["w_att"])  # eq. 4
        w = np.exp(e - e.max())
        logits[b, real], alpha[b, real] = e, w / w.sum()  # eq. 5
        z = alpha[b, real] @ a  # eq. 13
        if "w_beta" in p:
            z = z / (1.0 + np.exp(-(f64(state[b]) @ f64(p["w_beta"]) + f64(p["b_beta"]))))  # §4.2.1
        context[b] = z
    return logits, alpha, context


def _gate(state, p):
    g = 1.0 / (1.0 + np.exp(-(np.asarray(state, np.float64) @ p["w_beta"] + p["b_beta"])))  # [B, 1]
    return g


def _module_params(variables):
    return {k: np.asarray(v) for k, v in nn.unbox(variables)["params"].items()}


class SoftAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_eqs_4_5_13_and_the_gate(self):
        annotations, state = _inputs(0)
        for gate in (True, False):
            p = _params(1, gate)
            want_logits, want_alpha, want_context = _ref(annotations, state, p, MASK)
            fn = self.variant(lambda x, h, p: sat.show_attend_tell(x, h, mask=MASK, **p))
            context, alpha = fn(annotations, state, p)
            chex.assert_shape((context, alpha), ((B, D), (B, L)))
            self.assertEqual((context.dtype, alpha.dtype), (jnp.float32, jnp.float32))
            np.testing.assert_allclose(alpha, want_alpha, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(alpha)[~MASK], 0.0)
            np.testing.assert_allclose(context, want_context, rtol=1e-5, atol=1e-6)
            logits = sat.attention_logits(annotations, state, p["w_a"], p["b_a"], p["w_h"], p["w_att"], MASK)
            np.testing.assert_allclose(np.asarray(logits)[MASK], want_logits[MASK], rtol=1e-5, atol=1e-5)

    def test_module_is_the_function_with_its_parameters(self):
        annotations, state = _inputs(2)
        module = sat.ShowAttendTellAttention(hidden=A)
        variables = module.init(jax.random.PRNGKey(0), annotations, state, MASK)
        p = _module_params(variables)
        self.assertEqual({k: v.shape for k, v in p.items()},
                         dict(w_a=(D, A), b_a=(A,), w_h=(DH, A), w_att=(A,), w_beta=(DH, 1), b_beta=(1,)))
        p = {k: (v + 0.1 * np.random.default_rng(3).standard_normal(v.shape)).astype(np.float32) for k, v in p.items()}
        context, alpha = module.apply({"params": p}, annotations, state, MASK)
        _, want_alpha, want_context = _ref(annotations, state, p, MASK)
        np.testing.assert_allclose(alpha, want_alpha, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(context, want_context, rtol=1e-5, atol=1e-6)
        no_gate = sat.ShowAttendTellAttention(hidden=A, gate=False)
        self.assertNotIn("w_beta", no_gate.init(jax.random.PRNGKey(0), annotations, state)["params"])

    def test_context_takes_the_input_dtype_and_softmax_runs_in_float32(self):
        annotations, state = _inputs(4)
        context, alpha = sat.show_attend_tell(jnp.asarray(annotations, jnp.bfloat16), jnp.asarray(state, jnp.bfloat16),
                                              mask=MASK, **_params(5))
        self.assertEqual((context.dtype, alpha.dtype), (jnp.bfloat16, jnp.float32))
        _, want_alpha, want_context = _ref(annotations, state, _params(5), MASK)
        np.testing.assert_allclose(np.asarray(context, np.float32), want_context, rtol=3e-2, atol=3e-2)

    def test_check_grads(self):
        annotations, state = _inputs(6)
        p = _params(7)

        def fn(annotations, state, w_a, w_att, w_beta):
            return sat.show_attend_tell(annotations, state, w_a, p["b_a"], p["w_h"], w_att, MASK, w_beta=w_beta,
                                        b_beta=p["b_beta"])

        jtu.check_grads(fn, (annotations, state, p["w_a"], p["w_att"], p["w_beta"]), order=1, modes=["rev"],
                        eps=1e-3, atol=2e-2, rtol=2e-2)

    def test_empty_image_gives_zeros(self):
        annotations, state = np.zeros((2, 0, D), np.float32), np.ones((2, DH), np.float32)
        for mode in sat.MODES:
            out = sat.show_attend_tell(annotations, state, mode=mode, deterministic=False,
                                       rng=jax.random.PRNGKey(0), **_params(8))
            chex.assert_shape(out[:2], ((2, D), (2, 0)))
            np.testing.assert_array_equal(out[0], 0.0)
            if mode != "soft":
                chex.assert_shape(out[2:], ((2, 0), (2,)))
                np.testing.assert_array_equal(out[3], 0.0)


class HardAttentionTest(parameterized.TestCase):

    def _run(self, mode, seed, **kwargs):
        annotations, state = _inputs(seed)
        p = _params(seed + 1)
        kwargs.setdefault("deterministic", False)
        fn = jax.jit(lambda x, h, p, rng: sat.show_attend_tell(x, h, mask=MASK, mode=mode, rng=rng, **p, **kwargs))
        return annotations, state, p, fn

    @parameterized.parameters("hard", "gumbel")
    def test_context_reads_the_sampled_location(self, mode):
        """Eq. 9: z = beta a_s; log_prob = log alpha_s; masked and empty rows never drawn."""
        annotations, state, p, fn = self._run(mode, 10, expected_context_prob=0.0)
        _, want_alpha, _ = _ref(annotations, state, p, MASK)
        gate = _gate(state, p)
        for seed in range(20):
            context, alpha, sample, log_prob = (np.asarray(x) for x in fn(annotations, state, p,
                                                                          jax.random.PRNGKey(seed)))
            np.testing.assert_array_equal(sample[~MASK], 0.0)
            np.testing.assert_array_equal(sample.sum(1), [1.0, 1.0, 0.0])
            index = sample.argmax(1)
            for b in range(2):
                np.testing.assert_allclose(context[b], gate[b] * annotations[b, index[b]], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(log_prob[b], np.log(want_alpha[b, index[b]]), rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(context[2], 0.0)
            np.testing.assert_array_equal(log_prob[2], 0.0)

    def test_expected_context_with_probability_p(self):
        """§4.1: with probability 0.5 the expected context replaces the sample (and log_prob is 0)."""
        annotations, state, p, _ = self._run("hard", 11)
        _, _, soft = _ref(annotations, state, p, MASK)
        for prob in (0.0, 1.0):
            fn = self._run("hard", 11, expected_context_prob=prob)[3]
            context, _, _, log_prob = fn(annotations, state, p, jax.random.PRNGKey(1))
            if prob == 1.0:
                np.testing.assert_allclose(context, soft, rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(log_prob, 0.0)
            else:
                self.assertTrue(np.all(np.asarray(log_prob)[:2] < 0))
        many = 400
        x, h = np.repeat(annotations[:1], many, 0), np.repeat(state[:1], many, 0)
        _, _, _, log_prob = sat.show_attend_tell(x, h, mode="hard", deterministic=False, rng=jax.random.PRNGKey(2),
                                                 **p)
        fraction = float(np.mean(np.asarray(log_prob) == 0.0))
        self.assertBetween(fraction, 0.4, 0.6)  # 400 fair coins: 5 standard deviations either side

    @parameterized.parameters("hard", "gumbel")
    def test_deterministic_reads_the_expectation_or_the_argmax(self, mode):
        annotations, state, p, _ = self._run(mode, 12)
        _, alpha, soft = _ref(annotations, state, p, MASK)
        context, _, sample, log_prob = sat.show_attend_tell(annotations, state, mask=MASK, mode=mode,
                                                            deterministic=True, **p)
        np.testing.assert_allclose(context, soft, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(log_prob, 0.0)
        np.testing.assert_array_equal(np.asarray(sample).argmax(1)[:2], alpha.argmax(1)[:2])
        context, _, _, log_prob = sat.show_attend_tell(annotations, state, mask=MASK, mode=mode, deterministic=True,
                                                       deterministic_context="argmax", **p)
        top = alpha.argmax(1)
        np.testing.assert_allclose(np.asarray(context)[:2], _gate(state, p)[:2] * annotations[[0, 1], top[:2]],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(log_prob)[:2], np.log(alpha[[0, 1], top[:2]]), rtol=1e-5, atol=1e-6)

    def test_gradient_paths(self):
        """Gumbel-ST: the context's gradient reaches the score weights; hard: only log_prob's does."""
        annotations, state = _inputs(13)
        p = _params(14)
        cot = np.random.default_rng(15).standard_normal((B, D)).astype(np.float32)

        def grads(mode):
            def loss(w_att, which):
                out = sat.show_attend_tell(annotations, state, p["w_a"], p["b_a"], p["w_h"], w_att, MASK,
                                           w_beta=p["w_beta"], b_beta=p["b_beta"], mode=mode, deterministic=False,
                                           rng=jax.random.PRNGKey(0), expected_context_prob=0.0)
                return jnp.sum(out[0] * cot) if which == "context" else jnp.sum(out[3])
            return (jax.grad(loss)(p["w_att"], "context"), jax.grad(loss)(p["w_att"], "log_prob"))

        hard_context, hard_log_prob = grads("hard")
        gumbel_context, _ = grads("gumbel")
        np.testing.assert_array_equal(hard_context, 0.0)
        self.assertGreater(float(jnp.max(jnp.abs(hard_log_prob))), 1e-3)
        self.assertGreater(float(jnp.max(jnp.abs(gumbel_context))), 1e-3)

    def test_module_draws_from_the_sample_stream(self):
        annotations, state = _inputs(16)
        module = sat.ShowAttendTellAttention(hidden=A, mode="hard", expected_context_prob=0.0)
        variables = module.init(jax.random.PRNGKey(0), annotations, state, MASK, deterministic=True)
        by_stream = module.apply(variables, annotations, state, MASK, deterministic=False,
                                 rngs={"sample": jax.random.PRNGKey(3)})
        by_key = module.apply(variables, annotations, state, MASK, deterministic=False, rng=jax.random.PRNGKey(3))
        chex.assert_trees_all_equal(by_stream[1], by_key[1])  # alpha: the same weights either way
        chex.assert_shape(by_stream, ((B, D), (B, L), (B, L), (B,)))
        again = module.apply(variables, annotations, state, MASK, deterministic=False,
                             rngs={"sample": jax.random.PRNGKey(3)})
        chex.assert_trees_all_equal(by_stream, again)  # the stream decides the draw
        # deterministic as an attribute (flax's merge_param): given once, at the call or on the module.
        fixed = sat.ShowAttendTellAttention(hidden=A, mode="hard", expected_context_prob=0.0, deterministic=False)
        chex.assert_trees_all_equal(fixed.apply(variables, annotations, state, MASK, rng=jax.random.PRNGKey(3)),
                                    by_key)
        with _raises(ValueError, "deterministic"):
            fixed.apply(variables, annotations, state, MASK, deterministic=True)
        with _raises(ValueError, "deterministic"):
            module.apply(variables, annotations, state, MASK)


class MaskingTest(parameterized.TestCase):

    @parameterized.parameters("soft", "hard", "gumbel")
    def test_nan_at_masked_locations_and_dead_rows_leaks_nowhere(self, mode):
        annotations, state = _inputs(20)
        p = _params(21)
        dirty = np.where(MASK[..., None], annotations, np.nan).astype(np.float32)
        dirty_state = state.copy()
        dirty_state[2] = np.inf  # the row with no real location
        rng = np.random.default_rng(22)
        cot_c, cot_a = rng.standard_normal((B, D)).astype(np.float32), rng.standard_normal((B, L)).astype(np.float32)

        @jax.jit
        def run(x, h, p):
            def loss(x, h, p):
                out = sat.show_attend_tell(x, h, mask=MASK, mode=mode, deterministic=False,
                                           rng=jax.random.PRNGKey(4), **p)
                extra = 0.0 if mode == "soft" else jnp.sum(out[3]) + jnp.sum(out[2] * cot_a)
                return jnp.sum(out[0] * cot_c) + jnp.sum(out[1] * cot_a) + extra, out
            return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(x, h, p)

        clean, poisoned = run(annotations, state, p), run(dirty, dirty_state, p)
        for got, want in zip(jax.tree_util.tree_leaves(poisoned), jax.tree_util.tree_leaves(clean)):
            self.assertTrue(np.all(np.isfinite(got)))
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        (g_x, g_h, _), out = poisoned
        np.testing.assert_array_equal(np.asarray(g_x)[~MASK], 0.0)
        np.testing.assert_array_equal(np.asarray(g_h)[2], 0.0)
        np.testing.assert_array_equal(out[0][2], 0.0)

    def test_masking_equals_dropping_the_locations(self):
        """Row 1 with its holes equals the same row with the masked locations removed."""
        annotations, state = _inputs(23)
        p = _params(24)
        context, alpha = sat.show_attend_tell(annotations, state, mask=MASK, **p)
        keep = MASK[1]
        small_context, small_alpha = sat.show_attend_tell(annotations[1:2, keep], state[1:2], **p)
        np.testing.assert_allclose(np.asarray(alpha)[1, keep], small_alpha[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(context[1], small_context[0], rtol=1e-6, atol=1e-7)


def _ref_penalty(alphas, location_mask, time_mask, lam):
    out = np.zeros(alphas.shape[0])
    for b in range(alphas.shape[0]):
        a = np.asarray(alphas[b], np.float64)[time_mask[b]][:, location_mask[b]]  # [T_b, L_b]
        out[b] = lam * np.sum((1.0 - a.sum(0)) ** 2)
    return out


class DoublyStochasticPenaltyTest(absltest.TestCase):

    def test_matches_eq_14_with_padding_and_nan_never_leaks(self):
        rng = np.random.default_rng(30)
        steps = 4
        alphas = rng.dirichlet(np.ones(L), size=(B, steps)).astype(np.float32)  # [B, T, L]
        time_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
        location_mask = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
        want = _ref_penalty(alphas, location_mask, time_mask, 0.7)
        fn = jax.jit(lambda a: sat.doubly_stochastic_penalty(a, location_mask, time_mask, lam=0.7))
        got = fn(alphas)
        self.assertEqual(got.dtype, jnp.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        dead = ~(time_mask[:, :, None] & location_mask[:, None, :])
        dirty = np.where(dead, np.nan, alphas).astype(np.float32)
        np.testing.assert_allclose(fn(dirty), want, rtol=1e-5)
        grad = np.asarray(jax.grad(lambda a: jnp.sum(fn(a)))(dirty))
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(grad[dead], 0.0)
        # d/d alpha_ti of (1 - sum_t alpha_ti)^2 = -2 (1 - sum_t alpha_ti), times lambda, at real entries.
        totals = np.where(~dead, alphas, 0.0).sum(1)  # [B, L]
        want_grad = np.broadcast_to((-2 * 0.7 * (1 - totals))[:, None, :], alphas.shape)
        np.testing.assert_allclose(grad[~dead], want_grad[~dead], rtol=1e-5, atol=1e-6)
        # Without masks every entry counts; a perfectly doubly stochastic attention costs nothing.
        np.testing.assert_allclose(sat.doubly_stochastic_penalty(alphas), _ref_penalty(
            alphas, np.ones((B, L), bool), np.ones((B, steps), bool), 1.0), rtol=1e-5)
        self.assertEqual(float(sat.doubly_stochastic_penalty(jnp.eye(L)[None])[0]), 0.0)

    def test_bad_inputs_raise(self):
        alphas = np.ones((B, 4, L), np.float32) / L
        with _raises(ValueError, "time_mask", (B, 3), (B, 4, L)):
            sat.doubly_stochastic_penalty(alphas, time_mask=np.ones((B, 3), bool))
        with _raises(ValueError, "location_mask", (B, L - 1)):
            sat.doubly_stochastic_penalty(alphas, location_mask=np.ones((B, L - 1), bool))
        with _raises(ValueError, "alphas", (B, L)):
            sat.doubly_stochastic_penalty(alphas[:, 0])
        with _raises(ValueError, "lam", "-1"):
            sat.doubly_stochastic_penalty(alphas, lam=-1.0)
        with _raises(TypeError, "time_mask", "float32"):
            sat.doubly_stochastic_penalty(alphas, time_mask=np.ones((B, 4), np.float32))


# The toy problem: a categorical over four locations with logits theta and a fixed reward per location, offset
# far from 0 so that the baseline has something to remove.
THETA = np.array([0.3, -0.6, 1.1, 0.0], np.float32)
REWARD = np.array([4.0, 6.5, 5.0, 3.0], np.float32)
NUM_SAMPLES = 20_000


def _softmax64(theta):
    e = np.exp(np.asarray(theta, np.float64) - np.max(theta))
    return e / e.sum()


def _per_sample_grads(baseline, reward_fn, params, key=jax.random.PRNGKey(0)):
    """[N, ...] gradients of the surrogate for N independent draws s ~ softmax(theta) (eq. 12, one sample each).

    baseline: a value, or a function of the one-hot draw (only for the positive control: that is biased).
    """
    def one(key):
        def surrogate(params):
            theta = params["theta"]
            alpha = jax.nn.softmax(theta)
            one_hot, _ = alignment.sample_hard(key, alpha)  # eq. 8
            log_prob = jnp.sum(one_hot * jax.nn.log_softmax(theta))  # log p(s | a)
            b = baseline(one_hot) if callable(baseline) else baseline
            return sat.reinforce_surrogate(log_prob, reward_fn(one_hot, params), b)
        return jax.grad(surrogate)(params)
    return jax.jit(jax.vmap(one))(jax.random.split(key, NUM_SAMPLES))


class ReinforceTest(absltest.TestCase):

    def _assert_unbiased(self, grads, want):
        grads = np.asarray(grads, np.float64)
        mean, se = grads.mean(0), grads.std(0, ddof=1) / np.sqrt(len(grads))
        self.assertTrue(np.all(np.abs(mean - want) < 4.5 * se + 1e-6), f"MC mean {mean} vs closed form {want}, "
                                                                        f"standard errors {se}")
        self.assertLess(float(se.max()), 0.1 * float(np.abs(want).max()))  # the test has the power to fail
        return grads.var(0, ddof=1).sum()

    def test_unbiased_on_a_categorical_and_the_baseline_cuts_the_variance(self):
        """d/d theta E[r] = p (r - p.r); the MC mean of the surrogate's gradient matches, b or no b."""
        p = _softmax64(THETA)
        want = p * (REWARD - p @ REWARD)
        reward = lambda one_hot, params: jnp.sum(one_hot * REWARD)  # noqa: E731, no gradient of its own
        params = {"theta": jnp.asarray(THETA)}
        variance_without = self._assert_unbiased(_per_sample_grads(0.0, reward, params)["theta"], want)
        # The paper's moving average, fed minibatch rewards, settles near E[r].
        baseline = jnp.float32(0.0)
        rng = np.random.default_rng(1)
        for _ in range(100):
            baseline = sat.update_baseline(baseline, jnp.asarray(rng.choice(REWARD, size=32, p=p), jnp.float32))
        self.assertAlmostEqual(float(baseline), float(p @ REWARD), delta=0.3)
        variance_with = self._assert_unbiased(_per_sample_grads(baseline, reward, params, jax.random.PRNGKey(1))
                                              ["theta"], want)
        self.assertLess(variance_with, 0.2 * variance_without)
        # Positive control: a baseline that depends on the sample (b = r(s) / 2) biases the estimate, and the
        # same check rejects it.
        biased = _per_sample_grads(lambda one_hot: 0.5 * jnp.sum(one_hot * REWARD), reward, params,
                                   jax.random.PRNGKey(2))["theta"]
        with self.assertRaisesRegex(AssertionError, "MC mean"):
            self._assert_unbiased(biased, want)

    def test_unbiased_for_a_differentiable_likelihood(self):
        """log p(y|s, w) = -(w - c_s)^2: the surrogate's expected gradient is d/d(theta, w) E_s[log p(y|s, w)]."""
        centres = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
        w = 0.4
        params = {"theta": jnp.asarray(THETA), "w": jnp.float32(w)}
        log_lik = lambda one_hot, params: -jnp.sum(one_hot * (params["w"] - centres) ** 2)  # noqa: E731
        p = _softmax64(THETA)
        ll = -(w - centres.astype(np.float64)) ** 2
        grads = _per_sample_grads(-5.0, log_lik, params, jax.random.PRNGKey(2))
        self._assert_unbiased(grads["theta"], p * (ll - p @ ll))
        self._assert_unbiased(np.asarray(grads["w"])[:, None], np.array([p @ (-2 * (w - centres))]))

    def test_gradient_is_the_papers_learning_rule_term_by_term(self):
        """d surrogate = d log p(y|s) + lambda_r (log p(y|s) - b) d log p(s) + lambda_e dH (eq. 12)."""
        rng = np.random.default_rng(3)
        params = jnp.asarray(rng.standard_normal(4), jnp.float32)
        lps = lambda w: jnp.stack([jnp.sum(w * w) * -0.1, jnp.sum(w) * -0.2])  # noqa: E731  log p(s^n | a)
        lls = lambda w: jnp.stack([jnp.sin(w[0]) - 2.0, w[1] * w[2] - 1.0])  # noqa: E731  log p(y | s^n, a)
        ent = lambda w: jnp.stack([jnp.cos(w[3]), w[0] ** 2])  # noqa: E731  H[s^n]
        b, lambda_r, lambda_e = -1.2, 0.8, 0.3
        got = jax.grad(lambda w: jnp.sum(sat.reinforce_surrogate(lps(w), lls(w), b, ent(w), lambda_r, lambda_e)))(
            params)
        jac = lambda f: np.asarray(jax.jacobian(f)(params), np.float64)  # noqa: E731
        advantage = np.asarray(lls(params), np.float64) - b
        want = (jac(lls) + lambda_r * advantage[:, None] * jac(lps) + lambda_e * jac(ent)).sum(0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # The baseline is never differentiated, even when it is an array of per-sample values.
        grad_b = jax.grad(lambda b: jnp.sum(sat.reinforce_surrogate(lps(params), lls(params), b)))(jnp.ones(2))
        np.testing.assert_array_equal(grad_b, 0.0)

    def test_update_baseline_and_entropy(self):
        b = sat.update_baseline(1.0, jnp.array([2.0, 4.0]))
        self.assertAlmostEqual(float(b), 0.9 * 1.0 + 0.1 * 3.0, places=6)
        self.assertAlmostEqual(float(sat.update_baseline(b, jnp.array([8.0]), decay=0.5)), 0.5 * float(b) + 4.0,
                               places=5)
        self.assertEqual(float(sat.update_baseline(2.5, jnp.zeros((0,)))), 2.5)
        self.assertEqual(float(jax.grad(lambda x: sat.update_baseline(1.0, x * jnp.ones(3)))(2.0)), 0.0)
        alpha = np.array([[0.2, 0.3, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]], np.float32)
        mask = np.array([[True, True, True, False], [True, True, True, True]])
        h = np.asarray(sat.attention_entropy(alpha, mask))
        want = [-np.sum(alpha[0, :3] * np.log(alpha[0, :3].astype(np.float64))), np.log(4.0)]
        np.testing.assert_allclose(h, want, rtol=1e-6)
        grad = jax.grad(lambda a: jnp.sum(sat.attention_entropy(a, mask)))(np.where(mask, alpha, np.nan))
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)

    def test_bad_inputs_raise(self):
        with _raises(ValueError, "log_likelihood", (3,), (2,)):
            sat.reinforce_surrogate(jnp.zeros(2), jnp.zeros(3))
        with _raises(ValueError, "baseline", (3,), (2,)):
            sat.reinforce_surrogate(jnp.zeros(2), jnp.zeros(2), jnp.zeros(3))
        with _raises(ValueError, "entropy", (1,)):
            sat.reinforce_surrogate(jnp.zeros(2), jnp.zeros(2), entropy=jnp.zeros(1))
        with _raises(ValueError, "lambda_r", "-0.5"):
            sat.reinforce_surrogate(jnp.zeros(2), jnp.zeros(2), lambda_r=-0.5)
        with _raises(TypeError, "log_prob_samples", "int32"):
            sat.reinforce_surrogate(jnp.zeros(2, jnp.int32), jnp.zeros(2))
        with _raises(ValueError, "decay", "1.5"):
            sat.update_baseline(0.0, jnp.zeros(2), decay=1.5)
        with _raises(ValueError, "baseline", (2,)):
            sat.update_baseline(jnp.zeros(2), jnp.zeros(2))


class ArgumentChecksTest(absltest.TestCase):

    def test_bad_shapes_and_arguments_raise_naming_them(self):
        annotations, state = _inputs(40)
        p = _params(41)
        call = lambda **kw: sat.show_attend_tell(**{"annotations": annotations, "state": state, "mask": MASK,  # noqa
                                                    **p, **kw})
        with _raises(ValueError, "state", (B - 1, DH), (B, L, D)):
            call(state=state[1:])
        with _raises(ValueError, "mask", (B, L - 1), (B, L, D)):
            call(mask=MASK[:, 1:])
        with _raises(ValueError, "annotations", (B, L)):
            call(annotations=annotations[..., 0])
        with _raises(ValueError, "w_a", (D - 1, A), (D, A)):
            call(w_a=p["w_a"][1:])
        with _raises(ValueError, "w_h", (DH, A - 1)):
            call(w_h=p["w_h"][:, 1:])
        with _raises(ValueError, "w_beta", (DH, 2)):
            call(w_beta=np.ones((DH, 2), np.float32))
        with _raises(ValueError, "w_beta", "b_beta"):
            call(b_beta=None)
        with _raises(TypeError, "mask", "int32"):
            call(mask=MASK.astype(np.int32))
        with _raises(ValueError, "mode", "'sharp'"):
            call(mode="sharp")
        with _raises(ValueError, "deterministic"):
            call(mode="hard")
        with _raises(ValueError, "rng"):
            call(mode="gumbel", deterministic=False)
        with _raises(TypeError, "deterministic", "1"):
            call(mode="hard", deterministic=1)
        with _raises(ValueError, "expected_context_prob", "1.5"):
            call(mode="hard", deterministic=True, expected_context_prob=1.5)
        with _raises(ValueError, "temperature", "0"):
            call(mode="gumbel", deterministic=True, temperature=0)
        with _raises(ValueError, "hidden", "0"):
            sat.ShowAttendTellAttention(hidden=0)
        with _raises(ValueError, "mode", "'Soft'"):
            sat.ShowAttendTellAttention(hidden=2, mode="Soft")


if __name__ == "__main__":
    absltest.main()
