"""Tests for layers/co_attention.py: COSNet's co-attention (Lu et al. 2019, CVPR 2019 §3.2; arXiv:2001.06810).

Oracle: a float64 numpy transcription of the paper's equations in its own layout (V in R^{C x (WH)}, one column
per position), S = V_b^T W V_a, S^c = softmax over S's columns, Z_a = V_b S^c, Z_b = V_a softmax(S^T), the gate
sigmoid(w_f Z + b_f) and [Z * f_g; V], run on the real pixels of each row only (the masks pick them out).
The layer contract (jit, NaN at masked pixels, logical axes, bad shapes) is in tests/layers/coattn_contracts.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import co_attention as co

B, HA, WA, HB, WB, C = 3, 3, 2, 2, 3, 4
# Row 0: every pixel real; row 1: holes in both maps; row 2: b has no real pixel.
MASK_A = np.array([[[1, 1], [1, 1], [1, 1]], [[1, 0], [1, 1], [0, 1]], [[1, 1], [0, 1], [1, 0]]], bool)
MASK_B = np.array([[[1, 1, 1], [1, 1, 1]], [[0, 1, 1], [1, 0, 1]], [[0, 0, 0], [0, 0, 0]]], bool)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _normal(seed, *shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _maps(seed, dtype=np.float32):
    return _normal(seed, B, HA, WA, C, dtype=dtype), _normal(seed + 100, B, HB, WB, C, dtype=dtype)


def _softmax_columns(s):
    e = np.exp(s - s.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _ref(fa, fb, w, mask_a, mask_b, gate_kernel=None, gate_bias=0.0):
    """The paper's equations per row, in float64, on the real pixels; zeros at padded ones.

    Returns (z_a, z_b, affinity [B, S_b, S_a], out_a, out_b, gate_a, gate_b).
    """
    fa, fb, w = (np.asarray(x, np.float64) for x in (fa, fb, w))
    mask_a = np.ones(fa.shape[:3], bool) if mask_a is None else mask_a
    mask_b = np.ones(fb.shape[:3], bool) if mask_b is None else mask_b
    big_w = w if w.ndim == 2 else np.diag(w)
    channels = fa.shape[-1]
    z_a, z_b = np.zeros_like(fa), np.zeros_like(fb)
    affinity = np.zeros((fa.shape[0], fb.shape[1] * fb.shape[2], fa.shape[1] * fa.shape[2]))
    for b in range(fa.shape[0]):
        ia, ib = mask_a[b].reshape(-1), mask_b[b].reshape(-1)
        v_a = fa[b].reshape(-1, channels).T[:, ia]  # [C, n_a] real pixels of a, as columns
        v_b = fb[b].reshape(-1, channels).T[:, ib]  # [C, n_b]
        s = v_b.T @ big_w @ v_a  # [n_b, n_a], eq. 2
        affinity[b][np.ix_(ib, ia)] = s
        if v_a.shape[1] and v_b.shape[1]:
            za_flat, zb_flat = z_a[b].reshape(-1, channels), z_b[b].reshape(-1, channels)
            za_flat[ia] = (v_b @ _softmax_columns(s)).T  # Z_a = V_b S^c
            zb_flat[ib] = (v_a @ _softmax_columns(s.T)).T  # Z_b = V_a S^r
            z_a[b], z_b[b] = za_flat.reshape(z_a[b].shape), zb_flat.reshape(z_b[b].shape)

    def fuse(z, f, mask):
        if gate_kernel is None:
            gate = np.ones(mask.shape)
        else:
            gate = 1.0 / (1.0 + np.exp(-(z @ np.asarray(gate_kernel, np.float64) + gate_bias)))  # eq. 7
        gate = np.where(mask, gate, 0.0)
        out = np.concatenate([z * gate[..., None], np.where(mask[..., None], f, 0.0)], axis=-1)  # eq. 8
        return out, gate

    out_a, gate_a = fuse(z_a, fa, mask_a)
    out_b, gate_b = fuse(z_b, fb, mask_b)
    return z_a, z_b, affinity, out_a, out_b, gate_a, gate_b


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


class ReferenceTest(parameterized.TestCase):

    @parameterized.product(w_rank=(2, 1), masked=(False, True))
    def test_function_matches_float64_reference(self, w_rank, masked):
        fa, fb = _maps(0)
        w = _normal(1, C, C) * 0.5 if w_rank == 2 else _normal(1, C) * 0.5
        gate_kernel, gate_bias = _normal(2, C), np.float32(0.3)
        masks = (MASK_A, MASK_B) if masked else (None, None)
        z_a, z_b, affinity = co.co_attention(fa, fb, w, *masks)
        chex.assert_shape((z_a, z_b, affinity), [(B, HA, WA, C), (B, HB, WB, C), (B, HB * WB, HA * WA)])
        self.assertEqual((z_a.dtype, z_b.dtype, affinity.dtype), (jnp.float32,) * 3)
        out_a, gate_a = co.co_attention_fusion(z_a, fa, gate_kernel, gate_bias, masks[0])
        out_b, gate_b = co.co_attention_fusion(z_b, fb, gate_kernel, gate_bias, masks[1])
        want = _ref(fa, fb, w, *masks, gate_kernel=gate_kernel, gate_bias=0.3)
        for got, ref in zip((z_a, z_b, affinity, out_a, out_b, gate_a, gate_b), want):
            _close(got, ref)
        if masked:  # row 2's b has no real pixel: a's summary is all 0 there, and b's outputs too
            np.testing.assert_array_equal(np.asarray(z_a)[2], 0.0)
            np.testing.assert_array_equal(np.asarray(out_b)[2], 0.0)

    def test_channel_wise_equals_its_diagonal_matrix(self):
        fa, fb = _maps(3)
        d = _normal(4, C)
        for got, want in zip(co.co_attention(fa, fb, d, MASK_A, MASK_B),
                             co.co_attention(fa, fb, np.diag(d), MASK_A, MASK_B)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    def test_directions_each_position_of_a_attends_over_b(self):
        """A map b that is the same vector everywhere: every position of a reads exactly that vector (and the
        other way round); swapped directions would average a instead."""
        fa, _ = _maps(5)
        v = _normal(6, C)
        fb = np.broadcast_to(v, (B, HB, WB, C)).copy()
        z_a, z_b, _ = co.co_attention(fa, fb, _normal(7, C, C))
        np.testing.assert_allclose(z_a, np.broadcast_to(v, z_a.shape), rtol=1e-5, atol=1e-5)
        self.assertGreater(float(np.max(np.abs(np.asarray(z_b) - v))), 0.1)  # b reads a, which is not constant
        mean_a = fa.reshape(B, -1, C).mean(1)
        self.assertGreater(float(np.max(np.abs(np.asarray(z_a)[:, 0, 0] - mean_a))), 0.1)

    @parameterized.parameters(None, "masked")
    def test_swapping_a_and_b_swaps_the_outputs_when_w_is_symmetric(self, masked):
        fa, fb = _maps(8)
        m = _normal(9, C, C)
        masks = (MASK_A, MASK_B) if masked else (None, None)
        z_a, z_b, s = co.co_attention(fa, fb, m + m.T, *masks)
        z_b2, z_a2, s2 = co.co_attention(fb, fa, m + m.T, masks[1], masks[0])
        np.testing.assert_allclose(z_a2, z_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z_b2, z_b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s2, np.swapaxes(s, 1, 2), rtol=1e-5, atol=1e-5)
        # Positive control: a non-symmetric W breaks the symmetry.
        z_a3 = co.co_attention(fa, fb, m, *masks)[0]
        z_a4 = co.co_attention(fb, fa, m, masks[1], masks[0])[1]
        self.assertGreater(float(np.max(np.abs(np.asarray(z_a3) - np.asarray(z_a4)))), 1e-3)

    def test_gate_lies_in_zero_one_and_scales_the_summary(self):
        fa, fb = _maps(10)
        z_a, _, _ = co.co_attention(fa, fb, _normal(11, C, C), MASK_A, MASK_B)
        fused, gate = co.co_attention_fusion(z_a, fa, _normal(12, C) * 3.0, np.float32(-0.5), MASK_A)
        gate, fused = np.asarray(gate), np.asarray(fused)
        live = MASK_A & np.array([True, True, False])[:, None, None]  # row 2: z_a is 0, gate sigmoid(b_f)
        self.assertTrue(np.all((gate[MASK_A] > 0.0) & (gate[MASK_A] < 1.0)))
        np.testing.assert_array_equal(gate[~MASK_A], 0.0)
        self.assertGreater(float(gate[live].max() - gate[live].min()), 0.1)  # the gate varies with Z
        np.testing.assert_allclose(fused[..., :C], np.asarray(z_a) * gate[..., None], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(fused[..., C:], np.where(MASK_A[..., None], fa, 0.0))
        ungated, ones = co.co_attention_fusion(z_a, fa, mask=MASK_A)
        np.testing.assert_array_equal(np.asarray(ones), MASK_A.astype(np.float32))
        np.testing.assert_array_equal(np.asarray(ungated)[..., :C], np.asarray(z_a))

    @parameterized.parameters("vanilla", "symmetric", "channel")
    def test_module_matches_reference(self, variant):
        fa, fb = _maps(13)
        module = co.CoAttention(variant=variant)
        variables = module.init(jax.random.PRNGKey(0), fa, fb, MASK_A, MASK_B)
        params = jax.tree_util.tree_map(np.asarray, dict(nn.unbox(variables)["params"]))
        if variant == "vanilla":
            w = params["w"]
        elif variant == "channel":
            w = params["d"]
        else:  # p stores P^T input-major, so W = P^T D P = p diag(d) p^T
            w = params["p"] @ np.diag(params["d"]) @ params["p"].T
            np.testing.assert_allclose(w, w.T, rtol=1e-6, atol=1e-6)
        out_a, out_b, affinity = module.apply(variables, fa, fb, MASK_A, MASK_B, return_affinity=True)
        chex.assert_shape((out_a, out_b), [(B, HA, WA, 2 * C), (B, HB, WB, 2 * C)])
        want = _ref(fa, fb, w, MASK_A, MASK_B, gate_kernel=params["gate_kernel"], gate_bias=params["gate_bias"])
        for got, ref in zip((affinity, out_a, out_b), (want[2], want[3], want[4])):
            _close(got, ref)
        two = module.apply(variables, fa, fb, MASK_A, MASK_B)
        self.assertLen(two, 2)

    def test_module_symmetric_variant_swaps_and_ungated_concatenates(self):
        fa, fb = _maps(14)
        module = co.CoAttention(variant="symmetric", gated=False)
        variables = module.init(jax.random.PRNGKey(1), fa, fb)
        self.assertNotIn("gate_kernel", variables["params"])
        out_a, out_b = module.apply(variables, fa, fb, MASK_A, MASK_B)
        out_b2, out_a2 = module.apply(variables, fb, fa, MASK_B, MASK_A)
        np.testing.assert_allclose(out_a2, out_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out_b2, out_b, rtol=1e-5, atol=1e-5)

    def test_bfloat16_inputs_give_bfloat16_outputs_and_float32_affinity(self):
        fa, fb = _maps(15)
        module = co.CoAttention()
        variables = module.init(jax.random.PRNGKey(0), fa, fb)
        out_a, out_b, affinity = module.apply(variables, fa.astype(jnp.bfloat16), fb.astype(jnp.bfloat16),
                                              return_affinity=True)
        self.assertEqual((out_a.dtype, out_b.dtype, affinity.dtype), (jnp.bfloat16, jnp.bfloat16, jnp.float32))
        want = module.apply(variables, fa.astype(jnp.bfloat16).astype(np.float32),
                            fb.astype(jnp.bfloat16).astype(np.float32), return_affinity=True)
        np.testing.assert_allclose(np.asarray(out_a, np.float32), want[0], rtol=2e-2, atol=2e-2)


class GradientsAndMaskingTest(parameterized.TestCase):

    @parameterized.parameters(None, "masked")
    def test_check_grads_float64(self, masked):
        masks = (MASK_A, MASK_B) if masked else (None, None)
        with jax.enable_x64(True):
            fa, fb = _maps(20, np.float64)
            w, kernel, bias = _normal(21, C, C, dtype=np.float64), _normal(22, C, dtype=np.float64), np.float64(0.2)

            def fn(fa, fb, w, kernel, bias):
                z_a, z_b, s = co.co_attention(fa, fb, w, *masks)
                out_a, gate_a = co.co_attention_fusion(z_a, fa, kernel, bias, masks[0])
                out_b, gate_b = co.co_attention_fusion(z_b, fb, kernel, bias, masks[1])
                return out_a, out_b, s, gate_a, gate_b

            self.assertEqual(fn(fa, fb, w, kernel, bias)[0].dtype, jnp.float64)
            jax.test_util.check_grads(fn, (fa, fb, w, kernel, bias), order=1, modes=("rev",), eps=1e-6,
                                      atol=1e-6, rtol=1e-6)
            jax.test_util.check_grads(lambda fa, fb, d: co.co_attention(fa, fb, d, *masks), (fa, fb, kernel),
                                      order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)

    def test_nan_and_inf_at_padded_pixels_leak_nowhere(self):
        fa, fb = _maps(23)
        clean_a, clean_b = np.where(MASK_A[..., None], fa, 0.0), np.where(MASK_B[..., None], fb, 0.0)
        module = co.CoAttention()
        variables = module.init(jax.random.PRNGKey(2), fa, fb)
        cot_a, cot_b = _normal(24, B, HA, WA, 2 * C), _normal(25, B, HB, WB, 2 * C)
        cot_s = _normal(26, B, HB * WB, HA * WA)

        @jax.jit
        def run(variables, fa, fb):
            def loss(variables, fa, fb):
                out = module.apply(variables, fa, fb, MASK_A, MASK_B, return_affinity=True)
                return jnp.sum(out[0] * cot_a) + jnp.sum(out[1] * cot_b) + jnp.sum(out[2] * cot_s), out
            return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(variables, fa, fb)

        want_grads, want = run(variables, clean_a.astype(np.float32), clean_b.astype(np.float32))
        for poison in (np.nan, np.inf, -np.inf):
            dirty_a = np.where(MASK_A[..., None], fa, poison).astype(np.float32)
            dirty_b = np.where(MASK_B[..., None], fb, poison).astype(np.float32)
            grads, got = run(variables, dirty_a, dirty_b)
            for leaf in jax.tree_util.tree_leaves((grads, got)):
                self.assertTrue(np.all(np.isfinite(leaf)), f"poison {poison} leaked")
            chex.assert_trees_all_close((grads, got), (want_grads, want), atol=1e-6, rtol=1e-6)
            _, g_a, g_b = grads
            np.testing.assert_array_equal(np.asarray(g_a)[~MASK_A], 0.0)
            np.testing.assert_array_equal(np.asarray(g_b)[~MASK_B], 0.0)
        # Positive control: NaN at a real pixel does reach the outputs.
        _, got = run(variables, np.where(MASK_A[..., None], np.nan, fa).astype(np.float32), clean_b)
        self.assertFalse(np.all(np.isfinite(got[0])))

    def test_row_without_real_pixels_gives_zero_summary_and_zero_grads(self):
        fa, fb = _maps(27)
        w = _normal(28, C, C)
        grads = jax.grad(lambda fa, fb, w: sum(jnp.sum(x) for x in co.co_attention(fa, fb, w, MASK_A, MASK_B)),
                         argnums=(0, 1, 2))(fa, fb, w)
        z_a, z_b, s = co.co_attention(fa, fb, w, MASK_A, MASK_B)
        np.testing.assert_array_equal(np.asarray(z_a)[2], 0.0)
        np.testing.assert_array_equal(np.asarray(s)[2], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[0])[2], 0.0)  # a's row 2 attends over nothing
        np.testing.assert_array_equal(np.asarray(grads[1])[2], 0.0)
        for g in grads:
            self.assertTrue(np.all(np.isfinite(g)))

    def test_empty_maps(self):
        fa, fb = _maps(29)
        empty_b = fb[:, :0]
        z_a, z_b, s = co.co_attention(fa, empty_b, _normal(30, C, C))
        chex.assert_shape((z_a, z_b, s), [(B, HA, WA, C), (B, 0, WB, C), (B, 0, HA * WA)])
        np.testing.assert_array_equal(z_a, 0.0)
        g = jax.grad(lambda fa: jnp.sum(co.co_attention(fa, empty_b, _normal(30, C, C))[0]))(fa)
        np.testing.assert_array_equal(g, 0.0)
        module = co.CoAttention()
        variables = module.init(jax.random.PRNGKey(0), fa, empty_b)
        out_a, out_b = module.apply(variables, fa, empty_b)
        chex.assert_shape((out_a, out_b), [(B, HA, WA, 2 * C), (B, 0, WB, 2 * C)])
        np.testing.assert_array_equal(np.asarray(out_a)[..., :C], 0.0)

    def test_jit_equals_eager(self):
        fa, fb = _maps(31)
        fn = lambda fa, fb, w: co.co_attention(fa, fb, w, MASK_A, MASK_B)  # noqa: E731
        w = _normal(32, C, C)
        chex.assert_trees_all_close(jax.jit(fn)(fa, fb, w), fn(fa, fb, w), rtol=1e-5, atol=1e-5)


class BadInputTest(absltest.TestCase):

    def test_bad_shapes_raise_value_error_naming_them(self):
        fa, fb = _maps(40)
        w = _normal(41, C, C)
        with _raises(ValueError, "feat_a", (B, WA, C)):
            co.co_attention(fa[:, 0], fb, w)
        with _raises(ValueError, "batch", (1, HB, WB, C)):
            co.co_attention(fa, fb[:1], w)
        with _raises(ValueError, "channels", (B, HB, WB, C - 1)):
            co.co_attention(fa, fb[..., 1:], w)
        with _raises(ValueError, "w must be", (C, C - 1)):
            co.co_attention(fa, fb, w[:, 1:])
        with _raises(ValueError, "mask_b", (B, HB, WB - 1)):
            co.co_attention(fa, fb, w, None, MASK_B[..., 1:])
        with _raises(ValueError, "mask_a", (B, WA, HA)):
            co.co_attention(fa, fb, w, np.swapaxes(MASK_A, 1, 2))
        with _raises(ValueError, "z", (B, HA, WA, C - 1)):
            co.co_attention_fusion(fa[..., 1:], fa)
        with _raises(ValueError, "gate_kernel", (C - 1,)):
            co.co_attention_fusion(fa, fa, _normal(42, C - 1))
        with _raises(ValueError, "gate_bias", (1,)):
            co.co_attention_fusion(fa, fa, None, np.zeros(1, np.float32))
        with _raises(ValueError, "gate_bias", (1,)):
            co.co_attention_fusion(fa, fa, _normal(42, C), np.zeros(1, np.float32))
        with _raises(ValueError, "variant", "diagonal"):
            co.CoAttention(variant="diagonal").init(jax.random.PRNGKey(0), fa, fb)
        with _raises(ValueError, "feat_b", (B, HB, WB)):  # eval_shape: the check fires while tracing
            jax.eval_shape(lambda: co.CoAttention().init(jax.random.PRNGKey(0), fa, fb[..., 0]))

    def test_bad_dtypes_raise_type_error(self):
        fa, fb = _maps(43)
        w = _normal(44, C, C)
        with _raises(TypeError, "mask_a", "bool"):
            co.co_attention(fa, fb, w, MASK_A.astype(np.float32))
        with _raises(TypeError, "feat_b", "floating"):
            co.co_attention(fa, fb.astype(np.int32), w)
        with _raises(TypeError, "w", "floating"):
            co.co_attention(fa, fb, w.astype(np.int32))
        with _raises(TypeError, "return_affinity"):
            co.CoAttention().init(jax.random.PRNGKey(0), fa, fb, return_affinity=1)


if __name__ == "__main__":
    absltest.main()
