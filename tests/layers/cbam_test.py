"""Tests for layers/cbam.py: CBAM, Woo et al. 2018 (arXiv:1807.06521), §3, eqs. 1-3.

Oracles: a float64 numpy transcription of eq. 2 (one image at a time over its real pixels) and of eq. 3 (an
explicit zero-padded 'SAME' cross-correlation over the [avg; max] maps), composed as eq. 1; finite differences
in float64. The specific checks: both pooled vectors go through ONE MLP (one set of weights, and perturbing it
moves both paths' logits together), and the spatial convolution reads the average map on input channel 0 and
the max map on channel 1. The layer contract is in tests/layers/channel_contracts.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from attention_jax.layers import cbam as cbam_lib

B, H, W, C, R, K = 4, 3, 4, 8, 2, 3
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


def _inputs(seed, dtype=np.float32, shape=(B, H, W, C)):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _mlp_weights(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple((0.7 * rng.standard_normal(shape)).astype(dtype) for shape in ((C, R), (R,), (R, C), (C,)))


def _conv_weights(seed, dtype=np.float32, k=K):
    rng = np.random.default_rng(seed)
    return (0.5 * rng.standard_normal((k, k, 2, 1))).astype(dtype), (0.5 * rng.standard_normal(1)).astype(dtype)


def _mlp(v, w1, b1, w2, b2):
    return np.maximum(v @ w1 + b1, 0.0) @ w2 + b2


def _ref_channel(x, w1, b1, w2, b2, mask=None):
    """Eq. 2 per image over its real pixels, in float64: (F' [B, H, W, C], M_c [B, C]); zeros when empty."""
    x, w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in (x, w1, b1, w2, b2))
    mask = np.ones(x.shape[:3], bool) if mask is None else np.asarray(mask)
    out, maps = np.zeros(x.shape), np.zeros((x.shape[0], x.shape[3]))
    for b in range(x.shape[0]):
        pixels = x[b][mask[b]]  # [n, C]
        if not len(pixels):
            continue
        avg, best = pixels.mean(axis=0), pixels.max(axis=0)
        maps[b] = _sigmoid(_mlp(avg, w1, b1, w2, b2) + _mlp(best, w1, b1, w2, b2))
        out[b] = np.where(mask[b][..., None], x[b] * maps[b], 0.0)
    return out, maps


def _ref_spatial(x, kernel, bias, mask=None):
    """Eq. 3 in float64: (M_s * F [B, H, W, C], M_s [B, H, W]) with a zero-padded 'SAME' cross-correlation."""
    x, kernel, bias = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    mask = np.ones(x.shape[:3], bool) if mask is None else np.asarray(mask)
    batch, height, width, _ = x.shape
    kh, kw = kernel.shape[:2]
    x = np.where(mask[..., None], x, 0.0)
    pooled = np.stack([x.mean(axis=-1), x.max(axis=-1)], axis=-1)  # [B, H, W, 2]: [F_avg; F_max]
    pooled = np.where(mask[..., None], pooled, 0.0)
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.zeros((batch, height + kh - 1, width + kw - 1, 2))
    padded[:, top:top + height, left:left + width] = pooled
    logits = np.full((batch, height, width), bias[0])
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                logits[b, i, j] += np.sum(padded[b, i:i + kh, j:j + kw] * kernel[..., 0])
    maps = np.where(mask, _sigmoid(logits), 0.0)
    return x * maps[..., None], maps


def _ref_cbam(x, mlp, conv, mask=None):
    """Eq. 1: (F'', M_c, M_s(F'))."""
    f1, channel = _ref_channel(x, *mlp, mask)
    f2, spatial = _ref_spatial(f1, *conv, mask)
    return f2, channel, spatial


def _random_params(variables, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(0.5 * rng.standard_normal(v.shape), v.dtype),
                                  nn.unbox(variables)["params"])


class ChannelAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_float64_equation_2(self):
        x, mlp = _inputs(0), _mlp_weights(1)
        fn = self.variant(cbam_lib.cbam_channel_attention)
        for mask in (None, MASK):
            out, channel = fn(x, *mlp, mask=mask)
            want_out, want_channel = _ref_channel(x, *mlp, mask)
            self.assertEqual((out.dtype, channel.dtype), (jnp.float32, jnp.float32))
            np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(channel, want_channel, rtol=1e-5, atol=1e-6)

    def test_both_pools_go_through_one_mlp(self):
        """One set of MLP weights; M_c = sigmoid(mlp(avg) + mlp(max)), not any single-pool variant."""
        x = _inputs(2)
        module = cbam_lib.CBAMChannelAttention(reduction=4)
        variables = module.init(jax.random.PRNGKey(0), x)
        params = nn.unbox(variables)["params"]
        self.assertEqual({k: v.shape for k, v in params.items()}, {"w1": (C, R), "b1": (R,), "w2": (R, C),
                                                                   "b2": (C,)})
        self.assertEqual(sum(v.size for v in jax.tree_util.tree_leaves(params)), 2 * C * R + R + C)
        self.assertEqual({k: tuple(v.names) for k, v in variables["params"].items()},
                         {"w1": ("embed", "mlp"), "b1": ("mlp",), "w2": ("mlp", "embed"), "b2": ("embed",)})
        params = _random_params(variables, 3)
        mlp = tuple(np.asarray(params[k], np.float64) for k in ("w1", "b1", "w2", "b2"))
        _, channel = module.apply({"params": params}, x, MASK, return_weights=True)
        np.testing.assert_allclose(channel, _ref_channel(x, *mlp, MASK)[1], rtol=1e-5, atol=1e-6)
        for b in range(3):  # the images with real pixels
            pixels = x[b][MASK[b]].astype(np.float64)
            avg, best = pixels.mean(0), pixels.max(0)
            for wrong in (_sigmoid(2 * _mlp(avg, *mlp)), _sigmoid(2 * _mlp(best, *mlp)),
                          _sigmoid(_mlp(avg + best, *mlp))):
                self.assertGreater(np.abs(np.asarray(channel[b]) - wrong).max(), 1e-3)

    def test_perturbing_the_mlp_moves_both_paths(self):
        """In float64: logit(M_c) = mlp(avg) + mlp(max) for the original and for perturbed weights alike."""
        with jax.enable_x64(True):
            x, mlp = _inputs(4, np.float64), _mlp_weights(5, np.float64)
            logit = lambda m: np.log(m / (1.0 - m))  # noqa: E731
            base = logit(np.asarray(cbam_lib.cbam_channel_attention(x, *mlp, mask=MASK)[1])[:3])
            w1, b1, w2, b2 = mlp
            # b2 enters both paths: a shift by delta moves every logit by 2 delta.
            delta = np.linspace(-0.3, 0.4, C)
            shifted = logit(np.asarray(cbam_lib.cbam_channel_attention(x, w1, b1, w2, b2 + delta, mask=MASK)[1])[:3])
            np.testing.assert_allclose(shifted - base, np.broadcast_to(2 * delta, (3, C)), atol=1e-9)
            # Any other perturbation: the change is the sum of the two paths' changes under the new weights.
            rng = np.random.default_rng(6)
            new = (w1 + 0.2 * rng.standard_normal(w1.shape), b1 + 0.2 * rng.standard_normal(b1.shape),
                   w2 + 0.2 * rng.standard_normal(w2.shape), b2)
            moved = logit(np.asarray(cbam_lib.cbam_channel_attention(x, *new, mask=MASK)[1])[:3])
            for b in range(3):
                pixels = x[b][MASK[b]]
                avg, best = pixels.mean(0), pixels.max(0)
                want = (_mlp(avg, *new) - _mlp(avg, *mlp)) + (_mlp(best, *new) - _mlp(best, *mlp))
                np.testing.assert_allclose(moved[b] - base[b], want, atol=1e-9)


class SpatialAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_float64_equation_3(self):
        x = _inputs(7)
        fn = self.variant(cbam_lib.cbam_spatial_attention)
        for k in (1, 3, 4, 7):  # 4: the 'SAME' padding is uneven (1 before, 2 after)
            kernel, bias = _conv_weights(8, k=k)
            for mask in (None, MASK):
                out, spatial = fn(x, kernel, bias, mask=mask)
                want_out, want_spatial = _ref_spatial(x, kernel, bias, mask)
                np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6, err_msg=f"k={k}")
                np.testing.assert_allclose(spatial, want_spatial, rtol=1e-5, atol=1e-6, err_msg=f"k={k}")

    def test_conv_sees_avg_on_channel_0_and_max_on_channel_1(self):
        x = _inputs(9)
        for channel, pool in ((0, x.mean(-1)), (1, x.max(-1))):
            kernel = np.zeros((K, K, 2, 1), np.float32)
            kernel[K // 2, K // 2, channel, 0] = 1.0  # the centre tap of one input map only
            _, spatial = cbam_lib.cbam_spatial_attention(x, kernel, np.zeros(1, np.float32))
            np.testing.assert_allclose(spatial, _sigmoid(pool.astype(np.float64)), rtol=1e-6, err_msg=f"{channel}")

    def test_module_params(self):
        x = _inputs(10)
        module = cbam_lib.CBAMSpatialAttention()
        variables = module.init(jax.random.PRNGKey(0), x)
        self.assertEqual({k: (v.value.shape, tuple(v.names)) for k, v in variables["params"].items()},
                         {"kernel": ((7, 7, 2, 1), (None,) * 4), "bias": ((1,), (None,))})
        params = _random_params(variables, 11)
        out, spatial = module.apply({"params": params}, x, MASK, return_weights=True)
        want_out, want_spatial = _ref_spatial(x, params["kernel"], params["bias"], MASK)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(spatial, want_spatial, rtol=1e-5, atol=1e-6)


class CBAMTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_module_matches_float64_equation_1(self):
        x = _inputs(12)
        module = cbam_lib.CBAM(reduction=4, kernel_size=K)
        params = _random_params(module.init(jax.random.PRNGKey(0), x), 13)
        self.assertEqual(sorted(params), ["channel", "spatial"])
        mlp = tuple(params["channel"][k] for k in ("w1", "b1", "w2", "b2"))
        conv = (params["spatial"]["kernel"], params["spatial"]["bias"])
        apply = self.variant(lambda p, x, m: module.apply({"params": p}, x, m, return_weights=True))
        for mask in (None, MASK):
            out, maps = apply(params, x, mask)
            want_out, want_channel, want_spatial = _ref_cbam(x, mlp, conv, mask)
            self.assertEqual(sorted(maps), ["channel", "spatial"])
            np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(maps["channel"], want_channel, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(maps["spatial"], want_spatial, rtol=1e-5, atol=1e-6)
            pure = cbam_lib.cbam(x, *mlp, *conv, mask=mask)
            chex.assert_trees_all_close(pure, (out, maps["channel"], maps["spatial"]), rtol=1e-6, atol=1e-7)

    def test_spatial_map_is_computed_on_the_refined_map(self):
        """M_s reads F' = M_c * F: the same kernel on F itself gives another map."""
        x, mlp, conv = _inputs(14), _mlp_weights(15), _conv_weights(16)
        _, _, spatial = cbam_lib.cbam(x, *mlp, *conv, mask=MASK)
        self.assertGreater(float(jnp.max(jnp.abs(spatial - _ref_spatial(x, *conv, MASK)[1]))), 1e-3)

    def test_channel_only_ablation(self):
        x = _inputs(17)
        module = cbam_lib.CBAM(reduction=4, spatial=False)
        params = _random_params(module.init(jax.random.PRNGKey(0), x), 18)
        self.assertEqual(sorted(params), ["channel"])
        out, maps = module.apply({"params": params}, x, MASK, return_weights=True)
        self.assertEqual(sorted(maps), ["channel"])
        mlp = tuple(params["channel"][k] for k in ("w1", "b1", "w2", "b2"))
        want_out, want_channel = _ref_channel(x, *mlp, MASK)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps["channel"], want_channel, rtol=1e-5, atol=1e-6)
        out2, channel2, spatial2 = cbam_lib.cbam(x, *mlp, mask=MASK)
        self.assertIsNone(spatial2)
        np.testing.assert_array_equal(out2, out)
        np.testing.assert_array_equal(channel2, maps["channel"])

    def test_low_precision_inputs_keep_their_dtype(self):
        x, mlp, conv = _inputs(19).astype(jnp.bfloat16), _mlp_weights(20), _conv_weights(21)
        out, channel, spatial = cbam_lib.cbam(x, *mlp, *conv, mask=MASK)
        self.assertEqual((out.dtype, channel.dtype, spatial.dtype), (jnp.bfloat16, jnp.float32, jnp.float32))
        want_out, _, _ = _ref_cbam(np.asarray(x, np.float64), mlp, conv, MASK)
        np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=3e-2, atol=3e-2)


class GradientsAndMaskingTest(absltest.TestCase):

    def test_check_grads_float64(self):
        with jax.enable_x64(True):
            x, mlp, conv = _inputs(22, np.float64), _mlp_weights(23, np.float64), _conv_weights(24, np.float64)
            check = lambda fn, args: jax.test_util.check_grads(fn, args, order=1, modes=("rev",),  # noqa: E731
                                                                eps=1e-5, atol=1e-6, rtol=1e-6)
            for mask in (None, MASK):
                out, channel, spatial = cbam_lib.cbam(x, *mlp, *conv, mask=mask)
                self.assertEqual({out.dtype, channel.dtype, spatial.dtype}, {np.dtype(np.float64)})
                check(lambda *a, m=mask: cbam_lib.cbam_channel_attention(*a, mask=m), (x, *mlp))
                check(lambda *a, m=mask: cbam_lib.cbam_spatial_attention(*a, mask=m), (x, *conv))
                check(lambda *a, m=mask: cbam_lib.cbam(*a, mask=m), (x, *mlp, *conv))

    def test_nan_and_inf_at_padded_pixels_leak_nowhere(self):
        x, mlp, conv = _inputs(25), _mlp_weights(26), _conv_weights(27)
        clean = np.where(MASK[..., None], x, 0.0).astype(np.float32)
        cot = _inputs(28)

        @jax.jit
        def run(x, *params):
            def loss(x, *params):
                out, channel, spatial = cbam_lib.cbam(x, *params, mask=MASK)
                return jnp.sum(out * cot) + jnp.sum(channel) + jnp.sum(spatial), (out, channel, spatial)
            return jax.grad(loss, argnums=tuple(range(7)), has_aux=True)(x, *params)

        want_grads, want = run(clean, *mlp, *conv)
        for poison in (np.nan, np.inf, -np.inf):
            dirty = np.where(MASK[..., None], x, poison).astype(np.float32)
            grads, got = run(dirty, *mlp, *conv)
            for g in grads:
                self.assertTrue(np.all(np.isfinite(g)), f"poison {poison} leaked into a gradient")
            chex.assert_trees_all_close(got, want, atol=1e-6)
            chex.assert_trees_all_close(grads, want_grads, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(grads[0])[~MASK], 0.0)
            np.testing.assert_array_equal(np.asarray(got[0])[~MASK], 0.0)
            np.testing.assert_array_equal(np.asarray(got[2])[~MASK], 0.0)

    def test_mask_changes_both_pools_and_the_spatial_map(self):
        """Positive control: the padded pixels hold ordinary, large values the unmasked pools would read."""
        x, mlp, conv = _inputs(29), _mlp_weights(30), _conv_weights(31)
        x = np.where(MASK[..., None], x, 5.0).astype(np.float32)  # raises the max pools and the means
        _, masked_channel, masked_spatial = cbam_lib.cbam(x, *mlp, *conv, mask=MASK)
        _, channel, spatial = cbam_lib.cbam(x, *mlp, *conv)
        np.testing.assert_allclose(masked_channel[0], channel[0], rtol=1e-6)
        self.assertGreater(float(jnp.max(jnp.abs(masked_channel[1] - channel[1]))), 1e-3)
        self.assertGreater(float(jnp.max(jnp.abs(masked_spatial[1, :2, :3] - spatial[1, :2, :3]))), 1e-3)

    def test_each_pool_is_masked(self):
        """Padding that leaves one pool of the unmasked image unchanged: the other pool alone must be masked."""
        x, mlp = _inputs(45), _mlp_weights(46)
        real = x[1][MASK[1]].astype(np.float64)  # [6, C]
        padded = np.argwhere(~MASK[1])  # 6 pixels
        max_only = x.copy()  # +-5 around the real mean: the overall mean is unchanged, the max is not
        for n, (i, j) in enumerate(padded):
            max_only[1, i, j] = real.mean(0) + (5.0 if n % 2 else -5.0)
        avg_only = x.copy()  # below the real minimum: the overall max is unchanged, the mean is not
        avg_only[1][~MASK[1]] = real.min(0) - 5.0
        zero_padded = x.copy()  # all-negative real pixels, zero padding: a max reading the zeros would give 0
        zero_padded[1] = np.where(MASK[1][..., None], x[1] - 10.0, 0.0)
        for name, y in (("max pool", max_only), ("average pool", avg_only), ("zero padding", zero_padded)):
            pixels = y[1][MASK[1]].astype(np.float64)
            want = _sigmoid(_mlp(pixels.mean(0), *mlp) + _mlp(pixels.max(0), *mlp))
            _, masked = cbam_lib.cbam_channel_attention(y, *mlp, mask=MASK)
            _, unmasked = cbam_lib.cbam_channel_attention(y, *mlp)
            np.testing.assert_allclose(masked[1], want, rtol=1e-5, err_msg=name)
            self.assertGreater(float(np.max(np.abs(unmasked[1] - want))), 1e-3, f"{name}: the padding changes nothing")

    def test_padded_image_equals_the_cropped_one(self):
        """Padding at the bottom and right acts as the convolution's zero padding (default k = 7 > H, W)."""
        x = _inputs(32)
        module = cbam_lib.CBAM(reduction=4)
        params = _random_params(module.init(jax.random.PRNGKey(0), x), 33)
        out, maps = module.apply({"params": params}, x, MASK, return_weights=True)
        crop_out, crop_maps = module.apply({"params": params}, x[1:2, :2, :3], return_weights=True)
        np.testing.assert_allclose(out[1, :2, :3], crop_out[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps["channel"][1], crop_maps["channel"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps["spatial"][1, :2, :3], crop_maps["spatial"][0], rtol=1e-5, atol=1e-6)

    def test_image_without_real_pixel_gives_zeros_and_zero_grads(self):
        x, mlp, conv = _inputs(34), _mlp_weights(35), _conv_weights(36)
        out, channel, spatial = cbam_lib.cbam(x, *mlp, *conv, mask=MASK)
        for a in (out, channel, spatial):
            np.testing.assert_array_equal(a[3], 0.0)

        def loss(x, *params):
            out, channel, spatial = cbam_lib.cbam(x, *params, mask=MASK)
            return jnp.sum(out[3] ** 2) + jnp.sum(channel[3]) + jnp.sum(spatial[3])

        for g in jax.grad(loss, argnums=tuple(range(7)))(x, *mlp, *conv):
            np.testing.assert_array_equal(g, 0.0)

    def test_empty_maps(self):
        mlp, conv = _mlp_weights(37), _conv_weights(38)
        for shape in ((B, 0, W, C), (B, H, 0, C), (0, H, W, C)):
            x = np.zeros(shape, np.float32)
            out, channel, spatial = cbam_lib.cbam(x, *mlp, *conv)
            self.assertEqual((out.shape, channel.shape, spatial.shape), (shape, (shape[0], C), shape[:3]))
            self.assertTrue(np.all(np.asarray(channel) == 0.0) or shape[0] == 0 and channel.size == 0)
            grads = jax.grad(lambda *p, x=x: sum(jnp.sum(a) for a in cbam_lib.cbam(x, *p)),
                             argnums=tuple(range(6)))(*mlp, *conv)
            for g in grads:
                self.assertTrue(np.all(np.isfinite(g)))


class ArgumentChecksTest(absltest.TestCase):

    def test_bad_shapes_raise_value_error_naming_them(self):
        x, mlp, (kernel, bias) = _inputs(39), _mlp_weights(40), _conv_weights(41)
        for fn, args in ((cbam_lib.cbam_channel_attention, mlp), (cbam_lib.cbam_spatial_attention, (kernel, bias))):
            with _raises(ValueError, "inputs", (B, H, W)):
                fn(x[..., 0], *args)
            with _raises(ValueError, "inputs", (1, B, H, W, C)):
                fn(x[None], *args)
            with _raises(ValueError, "mask", (B, H, W - 1), (B, H, W, C)):
                fn(x, *args, mask=MASK[:, :, 1:])
        with _raises(ValueError, "w2.shape=(2, 7)", "C=8"):
            cbam_lib.cbam_channel_attention(x, mlp[0], mlp[1], mlp[2][:, 1:], mlp[3])
        with _raises(ValueError, "kernel.shape=(3, 3, 1, 1)"):
            cbam_lib.cbam_spatial_attention(x, kernel[:, :, :1], bias)
        with _raises(ValueError, "bias.shape=(2,)"):
            cbam_lib.cbam_spatial_attention(x, kernel, np.zeros(2, np.float32))
        with _raises(ValueError, "C >= 1", (B, H, W, 0)):
            cbam_lib.cbam_spatial_attention(x[..., :0], kernel, bias)
        with _raises(ValueError, "kernel and bias"):
            cbam_lib.cbam(x, *mlp, kernel, None)
        for module in (cbam_lib.CBAM(reduction=2), cbam_lib.CBAMChannelAttention(reduction=2),
                       cbam_lib.CBAMSpatialAttention()):
            with _raises(ValueError, "inputs", (B, H, W)):
                module.init(jax.random.PRNGKey(0), x[..., 0])
            with _raises(ValueError, "mask", (B, H - 1, W)):
                module.init(jax.random.PRNGKey(0), x, MASK[:, 1:])

    def test_bad_settings_raise(self):
        x = _inputs(42)
        for reduction, fragment in ((0, "got 0"), (C + 1, f"C = {C}"), (-2, "got -2")):
            for cls in (cbam_lib.CBAM, cbam_lib.CBAMChannelAttention):
                with self.subTest(cls=cls.__name__, reduction=reduction), _raises(ValueError, "reduction", fragment):
                    cls(reduction=reduction).init(jax.random.PRNGKey(0), x)
        with _raises(ValueError, "kernel_size", "got 0"):
            cbam_lib.CBAM(reduction=2, kernel_size=0).init(jax.random.PRNGKey(0), x)
        with _raises(TypeError, "spatial"):
            cbam_lib.CBAM(reduction=2, spatial="no").init(jax.random.PRNGKey(0), x)
        with _raises(TypeError, "return_weights"):
            cbam_lib.CBAM(reduction=2).init(jax.random.PRNGKey(0), x, return_weights=1)
        with _raises(TypeError, "mask"):
            cbam_lib.cbam_spatial_attention(x, *_conv_weights(43), mask=MASK.astype(np.int32))
        with _raises(TypeError, "inputs"):
            cbam_lib.cbam_channel_attention(x.astype(np.int32), *_mlp_weights(44))


if __name__ == "__main__":
    absltest.main()
