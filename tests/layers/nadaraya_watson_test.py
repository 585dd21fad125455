"""Tests for Nadaraya-Watson kernel regression as attention (layers/nadaraya_watson.py).

Oracle: the estimator written directly, f(x) = sum_i K(u_i) y_i / sum_j K(u_j), in float64, for each kernel.
Also: narrow kernels do not underflow to 0/0, leave-one-out masks the diagonal, and the parametric form
learns a finite bandwidth on d2l's own toy problem (y = 2 sin x + x^0.8 + noise).
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import nadaraya_watson as nw

B, T, S, F = 2, 4, 9, 1


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _kernel(name, u):
    if name == "gaussian":
        return np.exp(-0.5 * u ** 2)
    if name == "boxcar":
        return (u <= 1.0).astype(np.float64)
    return np.where(u < 1.0, 0.75 * (1.0 - u ** 2), 0.0)


def _oracle(queries, keys, values, bandwidth, kernel, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (queries, keys, values))
    u = np.sqrt(((q[:, :, None, :] - k[:, None, :, :]) ** 2).sum(-1)) / bandwidth
    weight = _kernel(kernel, u)
    if mask is not None:
        weight = weight * np.broadcast_to(np.asarray(mask)[:, None, :] if np.ndim(mask) == 2 else mask,
                                          weight.shape)
    total = weight.sum(-1, keepdims=True)
    alpha = np.where(total > 0, weight / np.where(total > 0, total, 1.0), 0.0)
    return np.einsum("bts,bsd->btd", alpha, v), alpha


def _data(seed):
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.uniform(0, 5, (B, S, F)), axis=1).astype(np.float32)
    values = (2 * np.sin(keys) + keys ** 0.8).astype(np.float32)
    queries = rng.uniform(0, 5, (B, T, F)).astype(np.float32)
    return queries, keys, values


class NadarayaWatsonTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(kernel=nw.KERNELS, bandwidth=(0.4, 1.5))
    def test_matches_the_estimator(self, kernel, bandwidth):
        queries, keys, values = _data(0)
        mask = np.arange(S)[None, :] < np.array([S, 6])[:, None]
        got, weights = self.variant(lambda *a: nw.nadaraya_watson(*a, bandwidth=bandwidth, kernel=kernel))(
            queries, keys, values, mask)
        want, want_weights = _oracle(queries, keys, values, bandwidth, kernel, mask)
        np.testing.assert_allclose(weights, want_weights, atol=1e-5)
        np.testing.assert_allclose(got, want, atol=1e-5)

    def test_narrow_gaussian_does_not_underflow(self):
        queries, keys, values = _data(1)
        got, weights = nw.nadaraya_watson(queries, keys, values, bandwidth=1e-4)
        self.assertTrue(np.all(np.isfinite(got)))
        nearest = np.argmin(np.abs(queries[:, :, None, 0] - keys[:, None, :, 0]), axis=-1)
        np.testing.assert_allclose(got[..., 0], np.take_along_axis(values[..., 0], nearest, axis=1), atol=1e-6)
        np.testing.assert_allclose(np.sum(weights, -1), 1.0, atol=1e-6)

    def test_compact_kernel_without_support_gives_zero(self):
        keys = np.zeros((1, 3, 1), np.float32)
        got, weights = nw.nadaraya_watson(np.full((1, 1, 1), 10.0, np.float32), keys, np.ones((1, 3, 2), np.float32),
                                          bandwidth=1.0, kernel="epanechnikov")
        np.testing.assert_array_equal(got, 0.0)
        np.testing.assert_array_equal(weights, 0.0)

    def test_leave_one_out_and_nan_keys(self):
        _, keys, values = _data(2)
        loo = nw.leave_one_out_mask(B, S)
        chex.assert_shape(loo, (B, S, S))
        _, weights = nw.nadaraya_watson(keys, keys, values, loo, bandwidth=0.5)
        np.testing.assert_array_equal(np.diagonal(np.asarray(weights), axis1=1, axis2=2), 0.0)
        mask = np.arange(S)[None, :] < np.array([S, 5])[:, None]
        poisoned_keys, poisoned_values = keys.copy(), values.copy()
        poisoned_keys[1, 5:], poisoned_values[1, 5:] = np.nan, np.inf
        queries = _data(3)[0]
        fn = jax.jit(jax.value_and_grad(
            lambda k, v: jnp.sum(nw.nadaraya_watson(queries, k, v, mask, bandwidth=0.7)[0]), argnums=(0, 1)))
        clean = fn(keys, values)
        dirty = fn(poisoned_keys, poisoned_values)
        chex.assert_trees_all_close(dirty, clean)

    def test_parametric_learns_a_finite_bandwidth_with_leave_one_out(self):
        rng = np.random.default_rng(4)
        x = np.sort(rng.uniform(0, 5, 50)).astype(np.float32)
        y = (2 * np.sin(x) + x ** 0.8 + rng.normal(0, 0.5, 50)).astype(np.float32)
        keys, values = x[None, :, None], y[None, :, None]
        module = nw.NadarayaWatson(init_bandwidth=2.0)
        params = module.init(jax.random.key(0), keys, keys, values)["params"]
        optimizer = optax.sgd(0.5)
        state = optimizer.init(params)
        loo = nw.leave_one_out_mask(1, 50)

        @jax.jit
        def step(params, state):
            loss_fn = lambda p: jnp.mean((module.apply({"params": p}, keys, keys, values, loo)[0] - values) ** 2)
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = optimizer.update(grads, state)
            return optax.apply_updates(params, updates), state, loss

        params, state, first = step(params, state)
        for _ in range(100):
            params, state, loss = step(params, state)
        self.assertLess(float(loss), float(first))
        sigma = 1.0 / abs(float(nn.unbox(params)["w"]))
        self.assertTrue(0.05 < sigma < 2.0, sigma)
        # Without leave-one-out the best fit is sigma -> 0 (each point copies itself): the loss falls further
        # and the learned bandwidth shrinks below the leave-one-out one.
        self_fit = lambda p: jnp.mean((module.apply({"params": p}, keys, keys, values)[0] - values) ** 2)
        narrow = jax.tree_util.tree_map(lambda w: w * 20.0, params)
        self.assertLess(float(self_fit(narrow)), float(self_fit(params)))

    def test_bad_input(self):
        queries, keys, values = _data(5)
        with _raises(ValueError, "kernel", "'tophat'"):
            nw.nadaraya_watson(queries, keys, values, kernel="tophat")
        with _raises(ValueError, "bandwidth"):
            nw.nadaraya_watson(queries, keys, values, bandwidth=0.0)
        with _raises(ValueError, "values", f"{(B, S - 1, F)}"):
            nw.nadaraya_watson(queries, keys, values[:, :-1])


if __name__ == "__main__":
    absltest.main()
