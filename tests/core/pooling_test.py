"""Tests for attention_jax/core/pooling.py against float64 numpy loops written from the papers.

k-max pooling keeps the original order (Kalchbrenner et al. 2014, arXiv:1404.2188, §3.3; eq. 3 for k_l);
stochastic pooling's test-time weighting is the expectation of its training-time sample (Zeiler & Fergus 2013,
arXiv:1301.3557, §3), checked by Monte Carlo.
"""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core import pooling

B, T, D = 3, 7, 4


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed, shape=(B, T, D)):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 10.0 - 2.0  # distinct values


def _mask(seed):
    mask = np.random.default_rng(seed).random((B, T)) < 0.6
    mask[0] = True
    mask[1, :] = False  # a sequence with no valid position
    mask[2, 1] = True
    return mask


def _np_kmax(x, k, mask):
    out = np.zeros((x.shape[0], k, x.shape[2]))
    for b in range(x.shape[0]):
        positions = np.flatnonzero(mask[b])
        for d in range(x.shape[2]):
            top = sorted(positions, key=lambda t: -x[b, t, d])[:k]
            for slot, t in enumerate(sorted(top)):
                out[b, slot, d] = x[b, t, d]
    return out


def _np_chunk_max(x, chunks, mask):
    out = np.zeros((x.shape[0], chunks, x.shape[2]))
    for b in range(x.shape[0]):
        positions = np.flatnonzero(mask[b])
        for c in range(chunks):
            members = [t for r, t in enumerate(positions) if (r * chunks) // len(positions) == c]
            if members:
                out[b, c] = x[b, members].max(axis=0)
    return out


class SimplePoolTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_sum_mean_max_match_numpy(self):
        x, mask = _inputs(0), _mask(1)
        got_sum = self.variant(pooling.sum_pool)(x, mask)
        got_mean = self.variant(pooling.mean_pool)(x, mask)
        got_max = self.variant(pooling.max_pool)(x, mask)
        for b in range(B):
            rows = x[b][mask[b]].astype(np.float64)
            np.testing.assert_allclose(got_sum[b], rows.sum(0) if len(rows) else 0.0, atol=1e-5)
            np.testing.assert_allclose(got_mean[b], rows.mean(0) if len(rows) else 0.0, atol=1e-5)
            np.testing.assert_allclose(got_max[b], rows.max(0) if len(rows) else 0.0, atol=1e-6)
        np.testing.assert_allclose(pooling.max_pool(x), x.max(1))
        weights = np.asarray(self.variant(pooling.mean_weights)(mask))
        np.testing.assert_allclose(np.einsum("bt,btd->bd", weights, np.where(mask[..., None], x, 0.0)), got_mean,
                                   atol=1e-5)  # the weights mean_pool gives, summing to 1 or (no position) to 0
        np.testing.assert_allclose(weights.sum(1), np.where(mask.any(1), 1.0, 0.0), atol=1e-6)

    @parameterized.parameters("sum_pool", "mean_pool", "max_pool")
    def test_nan_padding_and_empty_rows(self, name):
        fn = getattr(pooling, name)
        x, mask = _inputs(2), _mask(3)
        poisoned = np.where(mask[:, :, None], x, np.nan).astype(np.float32)
        np.testing.assert_array_equal(fn(poisoned, mask), fn(x, mask))
        grad = jax.grad(lambda v: jnp.sum(fn(v, mask) ** 2))(poisoned)
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)
        np.testing.assert_array_equal(np.asarray(fn(x, mask))[1], 0.0)
        chex.assert_shape(fn(np.zeros((B, 0, D), np.float32)), (B, D))
        np.testing.assert_array_equal(fn(np.zeros((B, 0, D), np.float32)), 0.0)

    def test_bad_input_raises(self):
        x = np.zeros((B, T, D), np.float32)
        with _raises(ValueError, "[B, T]", "(3, 6)"):
            pooling.max_pool(x, np.ones((B, T - 1), bool))
        with _raises(TypeError, "boolean"):
            pooling.mean_pool(x, np.ones((B, T), np.int32))
        with _raises(ValueError, "rank 3"):
            pooling.sum_pool(x[0])
        with _raises(TypeError, "floating"):
            pooling.sum_pool(x.astype(np.int32))


class KMaxPoolTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1, 3, 9)
    def test_matches_numpy_and_keeps_order(self, k):
        x, mask = _inputs(4), _mask(5)
        got = self.variant(lambda v, m: pooling.kmax_pool(v, k, m))(x, mask)
        chex.assert_shape(got, (B, k, D))
        np.testing.assert_array_equal(np.asarray(got), _np_kmax(x, k, mask).astype(np.float32))

    def test_order_not_value_order(self):
        # Kalchbrenner's own example: the top 3 of [1, 5, 2, 6, 3] are 5, 6, 3 in sequence order.
        x = np.array([1.0, 5.0, 2.0, 6.0, 3.0], np.float32)[None, :, None]
        np.testing.assert_array_equal(pooling.kmax_pool(x, 3)[0, :, 0], [5.0, 6.0, 3.0])

    def test_gradient_reaches_only_the_chosen_positions(self):
        x, mask = _inputs(6), _mask(7)
        poisoned = np.where(mask[:, :, None], x, np.nan).astype(np.float32)
        grad = np.asarray(jax.grad(lambda v: jnp.sum(pooling.kmax_pool(v, 2, mask)))(poisoned))
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(grad[~mask], 0.0)
        np.testing.assert_array_equal(grad[0].sum(0), 2.0)  # each feature of a full row passes 2 ones back

    def test_dynamic_k(self):
        # eq. 3 with L = 3 layers, s = 18, k_top = 3: k_1 = 12, k_2 = 6, k_3 = k_top.
        self.assertEqual([pooling.dynamic_k(l, 3, 18, 3) for l in (1, 2, 3)], [12, 6, 3])
        self.assertEqual(pooling.dynamic_k(1, 2, 3, 4), 4)
        with _raises(ValueError, "layer", "4"):
            pooling.dynamic_k(4, 3, 18, 3)
        with _raises(ValueError, "k"):
            pooling.kmax_pool(np.zeros((1, 2, 1), np.float32), 0)


class ChunkMaxPoolTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1, 2, 3, 8)
    def test_matches_numpy(self, chunks):
        x, mask = _inputs(8), _mask(9)
        got = self.variant(lambda v, m: pooling.chunk_max_pool(v, chunks, m))(x, mask)
        chex.assert_shape(got, (B, chunks, D))
        np.testing.assert_array_equal(np.asarray(got), _np_chunk_max(x, chunks, mask).astype(np.float32))

    def test_one_chunk_is_max_pool_and_nan_padding(self):
        x, mask = _inputs(10), _mask(11)
        np.testing.assert_array_equal(pooling.chunk_max_pool(x, 1, mask)[:, 0], pooling.max_pool(x, mask))
        poisoned = np.where(mask[:, :, None], x, np.nan).astype(np.float32)
        grad = jax.grad(lambda v: jnp.sum(pooling.chunk_max_pool(v, 3, mask)))(poisoned)
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)


class StochasticPoolTest(chex.TestCase):

    def _activations(self, seed):
        x = np.maximum(_inputs(seed), 0.0).astype(np.float32)  # after a ReLU
        x[0, :3] = 0.0  # an all-zero window (window 3)
        return x

    @chex.variants(with_jit=True, without_jit=True)
    def test_test_mode_is_probability_weighted(self):
        x, mask = self._activations(12), _mask(13)
        got = self.variant(lambda v, m: pooling.stochastic_pool(v, 3, m))(x, mask)
        chex.assert_shape(got, (B, math.ceil(T / 3), D))
        for b in range(B):
            for r in range(math.ceil(T / 3)):
                a = np.where(mask[b, 3 * r:3 * r + 3, None], x[b, 3 * r:3 * r + 3], 0.0).astype(np.float64)
                total = a.sum(0)
                want = np.where(total > 0, (a * a).sum(0) / np.where(total > 0, total, 1.0), 0.0)
                np.testing.assert_allclose(got[b, r], want, rtol=1e-5, atol=1e-6)

    def test_training_mean_matches_test_mode(self):
        x, mask = self._activations(14), _mask(15)
        samples = jax.vmap(lambda key: pooling.stochastic_pool(x, 3, mask, deterministic=False, rng=key))(
            jax.random.split(jax.random.key(0), 4000))
        expected = pooling.stochastic_pool(x, 3, mask)
        # Each sample is one of at most 3 values; 4000 draws give a standard error below 0.02 here.
        np.testing.assert_allclose(np.mean(samples, axis=0), expected, atol=0.06)
        # Every sample is one of the window's valid activations (or 0 for an all-zero window).
        for b, r, d in [(0, 0, 0), (2, 1, 3), (0, 2, 1)]:
            window = x[b, 3 * r:3 * r + 3, d][mask[b, 3 * r:3 * r + 3]]
            allowed = set(window[window > 0].tolist()) or {0.0}
            self.assertTrue(set(np.asarray(samples[:, b, r, d]).tolist()) <= allowed)

    def test_zero_windows_and_nan_padding(self):
        x, mask = self._activations(16), _mask(17)
        poisoned = np.where(mask[:, :, None], x, np.nan).astype(np.float32)
        for deterministic in (True, False):
            fn = lambda v: jnp.sum(pooling.stochastic_pool(v, 3, mask, deterministic=deterministic,
                                                           rng=jax.random.key(1)))
            value, grad = jax.value_and_grad(fn)(poisoned)
            self.assertTrue(np.isfinite(value))
            self.assertTrue(np.all(np.isfinite(grad)))
            np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)
        np.testing.assert_array_equal(pooling.stochastic_pool(x, 3, mask)[0, 0], 0.0)
        np.testing.assert_array_equal(pooling.stochastic_pool(x, 3, mask)[1], 0.0)

    def test_sampling_needs_an_rng(self):
        with _raises(ValueError, "rng"):
            pooling.stochastic_pool(np.ones((1, 2, 1), np.float32), 2, deterministic=False)


if __name__ == "__main__":
    absltest.main()
