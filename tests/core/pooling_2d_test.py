"""Tests for the 2-D poolings of attention_jax/core/pooling.py against float64 numpy loops over the windows.

max_pool_2d / avg_pool_2d over non-overlapping windows with partial edge windows and pixel masks; stochastic
pooling (Zeiler & Fergus 2013, arXiv:1301.3557, §3): p_i = a_i / sum_k a_k in each window, the test-time
probability-weighted sum, and the training-time sample, which is always one of the window's activations and
whose Monte Carlo mean converges to the test-time value.
"""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.core import pooling

B, H, W, C = 3, 5, 7, 2


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed, shape=(B, H, W, C), dtype=np.float32):
    """Distinct values (no ties for max), in [-2, 2)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape) * 4.0 - 2.0).astype(dtype)


def _mask():
    mask = np.ones((B, H, W), bool)
    mask[1, :, 4:] = False  # image 1: its right-hand windows are partly or wholly masked
    mask[1, 3:, :] = False
    mask[2] = np.random.default_rng(9).random((H, W)) < 0.5
    mask[2, 0, 0] = True
    return mask


def _pair(window):
    return (window, window) if isinstance(window, int) else window


def _np_pool(x, mask, window, how):
    """The float64 pool of every window, written from the definitions; 0 for a window with no real pixel."""
    wh, ww = _pair(window)
    x = np.asarray(x, np.float64)
    rows, cols = math.ceil(x.shape[1] / wh), math.ceil(x.shape[2] / ww)
    out = np.zeros((x.shape[0], rows, cols, x.shape[3]))
    for b in range(x.shape[0]):
        for i in range(rows):
            for j in range(cols):
                block = x[b, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww]
                real = block[mask[b, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww]]  # [k, C]
                if not len(real):
                    continue
                if how == "max":
                    out[b, i, j] = real.max(0)
                elif how == "avg":
                    out[b, i, j] = real.mean(0)
                else:  # stochastic, test time: sum_i p_i a_i with p_i = a_i / sum_k a_k over the window
                    a = np.maximum(real, 0.0)
                    total = a.sum(0)
                    out[b, i, j] = np.where(total > 0, (a * real).sum(0) / np.where(total > 0, total, 1.0), 0.0)
    return out


FUNCTIONS = {"max": pooling.max_pool_2d, "avg": pooling.avg_pool_2d, "stochastic": pooling.stochastic_pool_2d}
WINDOWS = (("w2", 2), ("w2x3", (2, 3)), ("w3x1", (3, 1)), ("w1", 1), ("wider_than_the_map", (8, 9)))


class Pool2dTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(how=("max", "avg", "stochastic"), window=tuple(w for _, w in WINDOWS))
    def test_matches_numpy(self, how, window):
        """Partial edge windows and masked pixels pool over the real pixels only; empty windows give 0."""
        x, mask = _inputs(0), _mask()
        if how == "stochastic":
            x = x * (np.arange(W) % 3 != 0)[:, None]  # exact zeros, and negatives (probability 0) stay
            x[0, :2, :3] = 0.0  # all-zero windows of real pixels: 0, never 0 / 0
        fn = self.variant(lambda x, mask: FUNCTIONS[how](x, window, mask))
        got = fn(x, mask)
        want = _np_pool(x, mask, window, how)
        wh, ww = _pair(window)
        chex.assert_shape(got, (B, math.ceil(H / wh), math.ceil(W / ww), C))
        self.assertEqual(got.dtype, jnp.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        no_mask = self.variant(lambda x: FUNCTIONS[how](x, window))(x)
        np.testing.assert_allclose(no_mask, _np_pool(x, np.ones((B, H, W), bool), window, how), rtol=1e-5,
                                   atol=1e-6)

    def test_the_fixture_has_partial_and_dead_windows(self):
        """The reference test above exercises windows with a masked part and windows with no real pixel."""
        mask = _mask()
        self.assertFalse(mask[1, 4:, 6:].any())  # image 1's bottom-right window of a 2 x 2 grid is all masked
        self.assertTrue(mask[1, 2:4, 2:4].any() and not mask[1, 2:4, 2:4].all())

    def test_stochastic_matches_the_sequence_version_on_one_row(self):
        """A map of one row with wh = 1 pools exactly as the sequence stochastic_pool over [B, W, C]."""
        x = np.abs(_inputs(1, (B, 1, W, C)))
        mask = _mask()[:, :1]
        got = pooling.stochastic_pool_2d(x, (1, 3), mask)
        want = pooling.stochastic_pool(x[:, 0], 3, mask[:, 0])
        np.testing.assert_allclose(got[:, 0], want, rtol=1e-6, atol=1e-7)

    def test_avg_does_not_dilute_partial_windows(self):
        """A 3 x 3 window over a 4 x 4 map of ones: every window's mean is 1, not (real pixels) / 9."""
        got = pooling.avg_pool_2d(jnp.ones((1, 4, 4, 1)), 3)
        np.testing.assert_array_equal(got, np.ones((1, 2, 2, 1)))

    def test_gradients_in_float64(self):
        with jax.enable_x64(True):
            x, mask = _inputs(2, dtype=np.float64), _mask()
            positive = np.abs(x) + 0.1  # away from the kink of max(a, 0)
            for name, fn, arg in (("max", pooling.max_pool_2d, x), ("avg", pooling.avg_pool_2d, x),
                                  ("stochastic", pooling.stochastic_pool_2d, positive)):
                with self.subTest(name):
                    self.assertEqual(fn(arg, (2, 3), mask).dtype, jnp.float64)
                    jtu.check_grads(lambda a, fn=fn: fn(a, (2, 3), mask), (arg,), order=1, modes=("rev",),
                                    eps=1e-4, atol=1e-6, rtol=1e-6)
                with self.subTest(f"{name} without a mask"):  # the maskless path pads partial windows itself
                    jtu.check_grads(lambda a, fn=fn: fn(a, (2, 3)), (arg,), order=1, modes=("rev",),
                                    eps=1e-4, atol=1e-6, rtol=1e-6)

    def test_gradients_by_hand(self):
        """avg: 1 / (real pixels of the window); stochastic: d/da_k sum a^2 / sum a = (2 a_k S - Q) / S^2."""
        x = np.abs(_inputs(3, (1, 2, 3, 1))) + 0.1
        mask = np.array([[[True, True, False], [True, False, False]]])
        g_avg = jax.grad(lambda a: jnp.sum(pooling.avg_pool_2d(a, (2, 3), mask)))(x)
        np.testing.assert_allclose(g_avg[..., 0], mask / 3.0, rtol=1e-6)
        g_sto = jax.grad(lambda a: jnp.sum(pooling.stochastic_pool_2d(a, (2, 3), mask)))(x)
        a = x[0, :, :, 0].astype(np.float64) * mask[0]
        s, q = a.sum(), (a * a).sum()
        np.testing.assert_allclose(g_sto[0, :, :, 0], np.where(mask[0], (2 * a * s - q) / s**2, 0.0), rtol=1e-5)

    def test_nan_at_masked_pixels_reaches_nothing(self):
        x, mask = _inputs(4), _mask()
        x = np.abs(x)
        for value in (np.nan, np.inf, -np.inf):
            dirty = np.where(mask[..., None], x, value).astype(np.float32)
            for name, fn in (*FUNCTIONS.items(),
                             ("sampled", lambda a, w, m: pooling.stochastic_pool_2d(
                                 a, w, m, deterministic=False, rng=jax.random.PRNGKey(3)))):
                with self.subTest(f"{name} {value}"):
                    clean_out = fn(x, (2, 3), mask)
                    dirty_out = fn(dirty, (2, 3), mask)
                    np.testing.assert_array_equal(dirty_out, clean_out)
                    grad = jax.grad(lambda a, fn=fn: jnp.sum(fn(a, (2, 3), mask)))(dirty)
                    self.assertTrue(np.isfinite(grad).all(), f"{name}: non-finite gradient")
                    np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)

    def test_dead_and_all_zero_windows_give_zeros_and_zero_gradients(self):
        x = np.abs(_inputs(5, (1, 4, 4, 2))) + 0.1
        x[0, :2, :2] = 0.0  # an all-zero window (real pixels)
        mask = np.ones((1, 4, 4), bool)
        mask[0, 2:, 2:] = False  # a window with no real pixel
        for name, fn in (*FUNCTIONS.items(),
                         ("sampled", lambda a, w, m: pooling.stochastic_pool_2d(
                             a, w, m, deterministic=False, rng=jax.random.PRNGKey(0)))):
            with self.subTest(name):
                out = fn(x, 2, mask)
                np.testing.assert_array_equal(out[0, 1, 1], 0.0)  # no real pixel
                grad = np.asarray(jax.grad(lambda a, fn=fn: jnp.sum(fn(a, 2, mask)))(x))
                np.testing.assert_array_equal(grad[0, 2:, 2:], 0.0)
                self.assertTrue(np.isfinite(grad).all())
                if name in ("stochastic", "sampled"):  # an all-zero window: 0, never 0 / 0, with zero gradients
                    np.testing.assert_array_equal(out[0, 0, 0], 0.0)
                    np.testing.assert_array_equal(grad[0, :2, :2], 0.0)
                    self.assertTrue(np.any(grad[0, :2, 2:] != 0.0), "a live window must have gradients")

    def test_empty_maps(self):
        for shape in ((2, 0, 5, 3), (2, 4, 0, 3), (0, 4, 5, 3)):
            x = jnp.zeros(shape)
            for name, fn in FUNCTIONS.items():
                for mask in (jnp.ones(shape[:3], bool), None):
                    with self.subTest(f"{name} {shape} mask={mask is not None}"):
                        out = fn(x, (2, 2), mask)
                        self.assertEqual(out.shape,
                                         (shape[0], math.ceil(shape[1] / 2), math.ceil(shape[2] / 2), 3))

    def test_dtypes(self):
        x = jnp.asarray(np.abs(_inputs(6)), jnp.bfloat16)
        for name, fn in FUNCTIONS.items():
            with self.subTest(name):
                out = fn(x, 2)
                self.assertEqual(out.dtype, jnp.bfloat16)
                want = _np_pool(np.asarray(x, np.float64), np.ones((B, H, W), bool), 2, name)
                np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=2e-2, atol=2e-2)
        sampled = pooling.stochastic_pool_2d(x, 2, deterministic=False, rng=jax.random.PRNGKey(1))
        self.assertEqual(sampled.dtype, jnp.bfloat16)

    def test_bad_arguments_raise_before_compute(self):
        x, mask = _inputs(7), _mask()
        key = jax.random.PRNGKey(0)
        for fn in FUNCTIONS.values():
            with _raises(ValueError, "inputs", (B, H, W)):
                jax.eval_shape(lambda fn=fn: fn(x[..., 0], 2))
            with _raises(ValueError, "mask", (B, H, W - 1), (B, H, W, C)):
                jax.eval_shape(lambda fn=fn: fn(x, 2, mask[:, :, 1:]))
            with _raises(TypeError, "mask", "int32"):
                fn(x, 2, mask.astype(np.int32))
            with _raises(TypeError, "inputs", "int32"):
                fn(x.astype(np.int32), 2)
            for window in (0, (2,), (2, 0), (1, 2, 3), 2.0, True, None):
                with _raises(ValueError, "window", repr(window) if not isinstance(window, tuple) else ""):
                    fn(x, window)
        with _raises(ValueError, "rng"):
            pooling.stochastic_pool_2d(x, 2, deterministic=False)
        with _raises(TypeError, "deterministic"):
            pooling.stochastic_pool_2d(x, 2, deterministic="no", rng=key)


class SampledStochasticPool2dTest(parameterized.TestCase):

    def test_sample_is_a_real_value_of_its_window_and_its_mean_is_the_test_time_value(self):
        rng = np.random.default_rng(8)
        x = np.round(rng.uniform(0.0, 2.0, (1, 4, 5, 2)), 1).astype(np.float32)
        x[0, 0, 0, 0] = 0.0
        mask = np.ones((1, 4, 5), bool)
        mask[0, 1, 1] = mask[0, 3, 4] = False
        x = np.where(mask[..., None], x, np.nan).astype(np.float32)  # masked pixels hold NaN
        draws = 4000
        keys = jax.random.split(jax.random.PRNGKey(0), draws)
        sample = jax.jit(jax.vmap(lambda k: pooling.stochastic_pool_2d(x, 2, mask, deterministic=False, rng=k)))
        samples = np.asarray(sample(keys), np.float64)  # [N, 1, 2, 3, 2]
        self.assertTrue(np.isfinite(samples).all())
        expected = np.asarray(pooling.stochastic_pool_2d(x, 2, mask), np.float64)[0]
        ref = _np_pool(np.nan_to_num(x), mask, 2, "stochastic")[0]
        np.testing.assert_allclose(expected, ref, rtol=1e-5)
        for i in range(2):
            for j in range(3):
                block = x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                real = block[mask[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]].astype(np.float64)  # [k, C]
                for c in range(2):
                    values = samples[:, 0, i, j, c]
                    a = np.maximum(real[:, c], 0.0)
                    p = a / a.sum()
                    # every draw is one of the window's real activations with p > 0
                    self.assertTrue(np.isin(values, real[:, c][p > 0]).all(), f"window {(i, j, c)}")
                    # frequencies follow p: the mean converges to sum p_i a_i within 4 standard errors
                    std = math.sqrt(max((p * a * a).sum() - (p * a).sum() ** 2, 0.0))
                    self.assertLessEqual(abs(values.mean() - expected[i, j, c]), 4 * std / math.sqrt(draws) + 1e-6)
                    # and each value is drawn with its probability (equal values share theirs), not the max alone
                    for value in np.unique(real[:, c][p > 0]):
                        prob = p[real[:, c] == value].sum()
                        freq = np.mean(values == value)
                        self.assertLessEqual(abs(freq - prob), 4 * math.sqrt(prob * (1 - prob) / draws) + 1e-3,
                                             f"window {(i, j, c)}, value {value}")

    def test_rng_decides_the_draw(self):
        x = np.abs(_inputs(10, (2, 4, 4, 3))) + 0.1
        one = pooling.stochastic_pool_2d(x, 2, deterministic=False, rng=jax.random.PRNGKey(1))
        again = pooling.stochastic_pool_2d(x, 2, deterministic=False, rng=jax.random.PRNGKey(1))
        other = pooling.stochastic_pool_2d(x, 2, deterministic=False, rng=jax.random.PRNGKey(2))
        np.testing.assert_array_equal(one, again)
        self.assertTrue(np.any(np.asarray(one) != np.asarray(other)))


if __name__ == "__main__":
    absltest.main()
