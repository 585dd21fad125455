"""Tests for layers/squeeze_excitation.py: Hu et al. 2017 (arXiv:1709.01507), §3, eqs. 2-4.

Oracle: a float64 numpy transcription of eqs. 2-4 written below one image at a time over its real pixels (the
mask picks them out), and finite differences in float64. The padded fixture holds an image padded at its bottom
and right, one with holes in its middle and one with no real pixel. The layer contract (jit, NaN at masked
pixels, logical axes, bad shapes) is in tests/layers/channel_contracts.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from attention_jax.layers import squeeze_excitation as se

B, H, W, C, R = 4, 3, 4, 8, 2
# Image 0: all real; 1: real in its top-left 2 x 3 (padded at the bottom and right); 2: holes in the middle;
# 3: no real pixel.
MASK = np.ones((B, H, W), bool)
MASK[1, 2:, :] = MASK[1, :, 3:] = False
MASK[2, 1, 1:3] = False
MASK[3] = False


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _weights(seed, dtype=np.float32, channels=C, hidden=R):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype) * 0.7
                 for shape in ((channels, hidden), (hidden,), (hidden, channels), (channels,)))


def _inputs(seed, dtype=np.float32, shape=(B, H, W, C)):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _ref_se(x, w1, b1, w2, b2, mask=None):
    """Eqs. 2-4 per image over its real pixels, in float64; zero weights and outputs for an empty image."""
    x, w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in (x, w1, b1, w2, b2))
    mask = np.ones(x.shape[:3], bool) if mask is None else np.asarray(mask)
    out, weights = np.zeros(x.shape), np.zeros((x.shape[0], x.shape[3]))
    for b in range(x.shape[0]):
        pixels = x[b][mask[b]]  # [n, C]
        if not len(pixels):
            continue
        z = pixels.sum(axis=0) / len(pixels)  # eq. 2
        s = _sigmoid(np.maximum(z @ w1 + b1, 0.0) @ w2 + b2)  # eq. 3
        out[b] = np.where(mask[b][..., None], x[b] * s, 0.0)  # eq. 4
        weights[b] = s
    return out, weights


class SqueezeExcitationTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_float64_equations(self):
        x, params = _inputs(0), _weights(1)
        fn = self.variant(se.squeeze_excitation)
        for mask in (None, MASK):
            out, weights = fn(x, *params, mask=mask)
            want_out, want_weights = _ref_se(x, *params, mask)
            self.assertEqual(out.dtype, jnp.float32)
            self.assertEqual(weights.dtype, jnp.float32)
            np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)

    def test_squeeze_is_the_mean_not_the_max(self):
        """A wrong squeeze (max pool) would give other weights: the reference comparison can fail."""
        x, (w1, b1, w2, b2) = _inputs(2), _weights(3)
        _, weights = se.squeeze_excitation(x, w1, b1, w2, b2)
        wrong = _sigmoid(np.maximum(x.max(axis=(1, 2)) @ w1 + b1, 0.0) @ w2 + b2)
        self.assertGreater(np.abs(np.asarray(weights) - wrong).max(), 1e-2)

    def test_module_params_and_outputs(self):
        x = _inputs(4)
        module = se.SqueezeExcitation(reduction=3)  # C // 3 = 2 hidden units
        variables = module.init(jax.random.PRNGKey(0), x)
        boxed = variables["params"]
        self.assertEqual(sorted(boxed), ["b1", "b2", "w1", "w2"])
        names = {k: tuple(v.names) for k, v in boxed.items()}
        self.assertEqual(names, {"w1": ("embed", "mlp"), "b1": ("mlp",), "w2": ("mlp", "embed"), "b2": ("embed",)})
        params = nn.unbox(variables)["params"]
        self.assertEqual({k: v.shape for k, v in params.items()}, {"w1": (C, R), "b1": (R,), "w2": (R, C),
                                                                   "b2": (C,)})
        rng = np.random.default_rng(5)
        params = {k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in params.items()}
        out, weights = module.apply({"params": params}, x, MASK, return_weights=True)
        want_out, want_weights = _ref_se(x, params["w1"], params["b1"], params["w2"], params["b2"], MASK)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
        plain = module.apply({"params": params}, x, MASK)
        np.testing.assert_array_equal(plain, out)

    def test_hidden_width(self):
        self.assertEqual(se.hidden_width(8, 1), 8)
        self.assertEqual(se.hidden_width(8, 3), 2)
        self.assertEqual(se.hidden_width(8, 8), 1)

    def test_low_precision_inputs_keep_their_dtype(self):
        x, params = _inputs(6).astype(jnp.bfloat16), _weights(7)
        out, weights = se.squeeze_excitation(x, *params, mask=MASK)
        self.assertEqual(out.dtype, jnp.bfloat16)
        self.assertEqual(weights.dtype, jnp.float32)
        want_out, want_weights = _ref_se(np.asarray(x, np.float64), *params, MASK)
        np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=2e-2, atol=2e-2)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)


class GradientsAndMaskingTest(absltest.TestCase):

    def test_check_grads_float64(self):
        with jax.enable_x64(True):
            x, params = _inputs(8, np.float64), _weights(9, np.float64)
            for mask in (None, MASK):
                out, weights = se.squeeze_excitation(x, *params, mask=mask)
                self.assertEqual((out.dtype, weights.dtype), (jnp.float64, jnp.float64))
                jax.test_util.check_grads(lambda *a, m=mask: se.squeeze_excitation(*a, mask=m), (x, *params),
                                          order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-6)

    def test_nan_and_inf_at_padded_pixels_leak_nowhere(self):
        x, params = _inputs(10), _weights(11)
        clean = np.where(MASK[..., None], x, 0.0).astype(np.float32)
        cot = _inputs(12)

        @jax.jit
        def run(x, *params):
            def loss(x, *params):
                out, weights = se.squeeze_excitation(x, *params, mask=MASK)
                return jnp.sum(out * cot) + jnp.sum(weights), (out, weights)
            return jax.grad(loss, argnums=tuple(range(5)), has_aux=True)(x, *params)

        want_grads, want = run(clean, *params)
        for poison in (np.nan, np.inf, -np.inf):
            dirty = np.where(MASK[..., None], x, poison).astype(np.float32)
            grads, got = run(dirty, *params)
            for g in grads:
                self.assertTrue(np.all(np.isfinite(g)), f"poison {poison} leaked into a gradient")
            chex.assert_trees_all_close(got, want, atol=1e-6)
            chex.assert_trees_all_close(grads, want_grads, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(grads[0])[~MASK], 0.0)
            np.testing.assert_array_equal(np.asarray(got[0])[~MASK], 0.0)

    def test_mask_changes_the_weights(self):
        """Positive control: the padded pixels hold ordinary values that the unmasked squeeze would read."""
        x, params = _inputs(13), _weights(14)
        _, masked = se.squeeze_excitation(x, *params, mask=MASK)
        _, unmasked = se.squeeze_excitation(x, *params)
        np.testing.assert_allclose(masked[0], unmasked[0], rtol=1e-6)
        self.assertGreater(float(jnp.max(jnp.abs(masked[1] - unmasked[1]))), 1e-3)

    def test_padded_image_equals_the_cropped_one(self):
        x, params = _inputs(15), _weights(16)
        out, weights = se.squeeze_excitation(x, *params, mask=MASK)
        crop_out, crop_weights = se.squeeze_excitation(x[1:2, :2, :3], *params)
        np.testing.assert_allclose(out[1, :2, :3], crop_out[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(weights[1], crop_weights[0], rtol=1e-6, atol=1e-7)

    def test_image_without_real_pixel_gives_zeros_and_zero_grads(self):
        x, params = _inputs(17), _weights(18)
        out, weights = se.squeeze_excitation(x, *params, mask=MASK)
        np.testing.assert_array_equal(out[3], 0.0)
        np.testing.assert_array_equal(weights[3], 0.0)

        def loss(x, *params):
            out, weights = se.squeeze_excitation(x, *params, mask=MASK)
            return jnp.sum(out[3] ** 2) + jnp.sum(weights[3])

        for g in jax.grad(loss, argnums=tuple(range(5)))(x, *params):
            np.testing.assert_array_equal(g, 0.0)

    def test_empty_maps(self):
        params = _weights(19)
        for shape in ((B, 0, W, C), (B, H, 0, C), (0, H, W, C)):
            x = np.zeros(shape, np.float32)
            out, weights = se.squeeze_excitation(x, *params)
            self.assertEqual(out.shape, shape)
            np.testing.assert_array_equal(weights, np.zeros((shape[0], C)))
            g = jax.grad(lambda w, x=x: jnp.sum(se.squeeze_excitation(x, w, *params[1:])[1]))(params[0])
            np.testing.assert_array_equal(g, 0.0)


class ArgumentChecksTest(absltest.TestCase):

    def test_bad_shapes_raise_value_error_naming_them(self):
        x, (w1, b1, w2, b2) = _inputs(20), _weights(21)
        with _raises(ValueError, "inputs", (B, H, W)):
            se.squeeze_excitation(x[..., 0], w1, b1, w2, b2)
        with _raises(ValueError, "mask", (B, H, W - 1), (B, H, W, C)):
            se.squeeze_excitation(x, w1, b1, w2, b2, mask=MASK[:, :, 1:])
        with _raises(ValueError, "w1.shape=(7, 2)", "C=8"):
            se.squeeze_excitation(x, w1[1:], b1, w2, b2)
        with _raises(ValueError, "b2.shape=(7,)"):
            se.squeeze_excitation(x, w1, b1, w2, b2[1:])
        module = se.SqueezeExcitation()
        with _raises(ValueError, "inputs", (B, H, W)):
            module.init(jax.random.PRNGKey(0), x[..., 0])
        with _raises(ValueError, "mask", (B, H - 1, W)):
            se.SqueezeExcitation(reduction=2).init(jax.random.PRNGKey(0), x, MASK[:, 1:])

    def test_reduction_outside_one_to_c_raises(self):
        x = _inputs(22)
        for reduction, fragment in ((0, "reduction must be an int >= 1, got 0"), (C + 1, f"C = {C}"),
                                    (True, "True"), (2.0, "2.0")):
            with self.subTest(reduction=reduction), _raises(ValueError, "reduction", fragment):
                se.SqueezeExcitation(reduction=reduction).init(jax.random.PRNGKey(0), x)

    def test_bad_types_raise_type_error(self):
        x, params = _inputs(23), _weights(24)
        with _raises(TypeError, "inputs"):
            se.squeeze_excitation(x.astype(np.int32), *params)
        with _raises(TypeError, "mask"):
            se.squeeze_excitation(x, *params, mask=MASK.astype(np.float32))
        with _raises(TypeError, "return_weights"):
            se.SqueezeExcitation(reduction=2).init(jax.random.PRNGKey(0), x, return_weights="yes")


if __name__ == "__main__":
    absltest.main()
