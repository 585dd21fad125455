"""Tests for layers/danet.py: Fu et al. 2019 (arXiv:1809.02983), §3.2-3.4, eqs. 1-4.

Oracles: float64 numpy transcriptions of eqs. 1-2 (PAM) and eqs. 3-4 (CAM, in the paper's form and the released
code's), written one image at a time over its real pixels (the mask picks them out); a direct einsum softmax
in JAX for the PAM that bypasses `dot_product_attention`; finite differences (check_grads). The padded fixture
holds an image padded at its bottom and right, one with holes and one with no real pixel. The layer contract
(jit, NaN at masked pixels, retracing, logical axes, bad shapes) is in tests/layers/danet_contracts.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.dot_product import BlockwiseBackend, FlashBackend
from attention_jax.layers import danet

B, H, W, C = 4, 3, 4, 8
S = H * W
# Image 0: all real; 1: real in its top-left 2 x 3 (padded at the bottom and right); 2: holes in the middle;
# 3: no real pixel.
MASK = np.ones((B, H, W), bool)
MASK[1, 2:, :] = MASK[1, :, 3:] = False
MASK[2, 1, 1:3] = False
MASK[3] = False


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed, dtype=np.float32, shape=(B, H, W, C)):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _pam_weights(seed, dtype=np.float32, channels=C, reduced=2, gamma=0.7):
    """(wq, bq, wk, bk, wv, bv, gamma): a nonzero gamma, so the attention term is exercised."""
    rng = np.random.default_rng(seed)
    shapes = ((channels, reduced), (reduced,), (channels, reduced), (reduced,), (channels, channels), (channels,))
    return tuple(rng.standard_normal(s).astype(dtype) * 0.5 for s in shapes) + (np.asarray(gamma, dtype),)


def _softmax_rows(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _ref_pam(x, wq, bq, wk, bk, wv, bv, gamma, mask=None):
    """Eqs. 1-2 in the paper's letters, float64, over each image's real pixels.

    The paper's B (read at the attended position i) is our key convolution, its C (read at the output position
    j) our query convolution: s_ji = exp(B_i . C_j) / sum_i exp(B_i . C_j), E_j = gamma sum_i s_ji D_i + A_j.
    """
    x, wq, bq, wk, bk, wv, bv, gamma = (np.asarray(a, np.float64) for a in (x, wq, bq, wk, bk, wv, bv, gamma))
    mask = np.ones(x.shape[:3], bool) if mask is None else np.asarray(mask)
    batch, height, width, channels = x.shape
    out, weights = np.zeros(x.shape), np.zeros((batch, height * width, height * width))
    for b in range(batch):
        real = mask[b].reshape(-1)
        a = x[b].reshape(-1, channels)[real]  # [n, C], A at the real pixels
        if not len(a):
            continue
        paper_b, paper_c, paper_d = a @ wk + bk, a @ wq + bq, a @ wv + bv
        n = len(a)
        s = np.empty((n, n))
        for j in range(n):  # eq. 1, literally: row j normalised over i
            e = np.array([np.exp(paper_b[i] @ paper_c[j]) for i in range(n)])
            s[j] = e / e.sum()
        e_out = gamma * s @ paper_d + a  # eq. 2
        flat = np.zeros((height * width, channels))
        flat[real] = e_out
        out[b] = flat.reshape(height, width, channels)
        weights[b][np.ix_(real, real)] = s
    return out, weights


def _ref_cam(x, beta, mask=None, energy="paper"):
    """Eqs. 3-4 (or the released softmax(max - energy)), float64, over each image's real pixels."""
    x, beta = np.asarray(x, np.float64), float(beta)
    mask = np.ones(x.shape[:3], bool) if mask is None else np.asarray(mask)
    batch, _, _, channels = x.shape
    out, weights = np.zeros(x.shape), np.zeros((batch, channels, channels))
    for b in range(batch):
        a = x[b][mask[b]]  # [n, C]; channel i's map A_i is a[:, i]
        e = np.array([[a[:, i] @ a[:, j] for i in range(channels)] for j in range(channels)])  # e[j, i]
        if energy == "released":
            e = e.max(axis=1, keepdims=True) - e
        xw = np.exp(e - e.max(axis=1, keepdims=True))
        xw /= xw.sum(axis=1, keepdims=True)  # eq. 3: x[j, i], normalised over i
        weights[b] = xw
        out[b][mask[b]] = beta * a @ xw.T + a  # eq. 4: E_j = beta sum_i x_ji A_i + A_j
    return out, weights


def _einsum_pam(x, wq, bq, wk, bk, wv, bv, gamma):
    """The PAM as a direct einsum softmax in JAX (no dot_product_attention), in x's dtype; unmasked."""
    a = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, S, C]
    q, k, v = a @ wq + bq, a @ wk + bk, a @ wv + bv
    s = jax.nn.softmax(jnp.einsum("BjR,BiR->Bji", q, k), axis=-1)  # [B, S, S]
    return (gamma * jnp.einsum("Bji,BiC->BjC", s, v) + a).reshape(x.shape), s


class PositionAttentionTest(parameterized.TestCase):

    @parameterized.named_parameters(("r_divides_c", 2), ("r_does_not_divide_c", 3), ("r_exceeds_c", 11))
    def test_matches_float64_equations_1_2(self, reduced):
        x, params = _inputs(0), _pam_weights(1, reduced=reduced)
        out, weights = danet.position_attention(x, *params, mask=MASK, return_weights=True)
        want_out, want_weights = _ref_pam(x, *params, MASK)
        self.assertEqual((out.dtype, weights.dtype), (jnp.float32, jnp.float32))
        chex.assert_shape(weights, (B, S, S))
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(danet.position_attention(x, *params, mask=MASK), out)

    def test_equals_a_direct_einsum_softmax(self):
        x, params = _inputs(2), _pam_weights(3)
        out, weights = danet.position_attention(x, *params, return_weights=True)
        want_out, want_weights = _einsum_pam(*(jnp.asarray(a) for a in (x, *params)))
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)

    def test_logits_are_not_scaled(self):
        """Positive control for scale = 1: the 1 / sqrt(R) scaling of the library's default differs."""
        x, params = _inputs(4), _pam_weights(5, reduced=4)
        scaled = list(params)
        scaled[0], scaled[1] = params[0] / 2.0, params[1] / 2.0  # q / sqrt(4), as a default scale would do
        _, weights = danet.position_attention(x, *params, return_weights=True)
        _, halved = danet.position_attention(x, *scaled, return_weights=True)
        _, want = _einsum_pam(*(jnp.asarray(a) for a in (x, *params)))
        np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-6)
        self.assertGreater(float(jnp.max(jnp.abs(halved - weights))), 1e-3)

    @parameterized.named_parameters(("blockwise", "blockwise"), ("blockwise_chunks", BlockwiseBackend(block_k=5)),
                                    ("flash_interpreted", FlashBackend(interpret=True)))
    def test_backends_agree(self, implementation):
        x, params = _inputs(6), _pam_weights(7, reduced=3)
        want = danet.position_attention(x, *params, mask=MASK, implementation="xla")
        got = danet.position_attention(x, *params, mask=MASK, implementation=implementation)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def test_module_uses_its_implementation(self):
        x = _inputs(8)
        module = danet.PositionAttention(reduction=4, implementation="no-such-backend")
        with _raises(ValueError, "no-such-backend"):
            module.init(jax.random.PRNGKey(0), x)

    def test_module_matches_the_function(self):
        x = _inputs(9)
        module = danet.PositionAttention(reduction=4)
        params = nn.unbox(module.init(jax.random.PRNGKey(0), x)["params"])
        params = jax.tree.map(lambda p: p + 0.3, params)  # gamma != 0
        out, weights = module.apply({"params": params}, x, MASK, return_weights=True)
        args = [params[n] for n in ("query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel",
                                    "value_bias", "gamma")]
        want_out, want_weights = _ref_pam(x, *args, MASK)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
        self.assertEqual(params["query_kernel"].shape, (C, 2))
        self.assertEqual(params["value_kernel"].shape, (C, C))

    def test_low_precision_inputs_keep_their_dtype(self):
        x, params = _inputs(10).astype(jnp.bfloat16), _pam_weights(11)
        out, weights = danet.position_attention(x, *params, mask=MASK, return_weights=True)
        self.assertEqual((out.dtype, weights.dtype), (jnp.bfloat16, jnp.float32))
        want_out, _ = _ref_pam(np.asarray(x, np.float64), *params, MASK)
        np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=5e-2, atol=5e-2)


class ChannelAttentionTest(parameterized.TestCase):

    @parameterized.named_parameters(("paper", "paper"), ("released", "released"))
    def test_matches_float64_equations_3_4(self, energy):
        x = _inputs(20) * 0.3  # moderate energies, so the weights are not one-hot
        out, weights = danet.channel_attention(x, np.float32(0.6), mask=MASK, energy=energy, return_weights=True)
        want_out, want_weights = _ref_cam(x, 0.6, MASK, energy)
        chex.assert_shape(weights, (B, C, C))
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)

    def test_released_is_a_softmax_of_the_negated_energy(self):
        x = _inputs(21) * 0.3
        _, paper = danet.channel_attention(x, 0.0, energy="paper", return_weights=True)
        _, released = danet.channel_attention(x, 0.0, energy="released", return_weights=True)
        a = x.reshape(B, S, C).astype(np.float64)
        energy = np.einsum("bsj,bsi->bji", a, a)
        np.testing.assert_allclose(paper, _softmax_rows(energy), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(released, _softmax_rows(-energy), rtol=1e-5, atol=1e-6)
        # The released form puts the most weight on the least similar channel, the paper's on the most similar.
        np.testing.assert_array_equal(np.argmax(released, -1), np.argmin(energy, -1))
        np.testing.assert_array_equal(np.argmax(paper, -1), np.argmax(energy, -1))

    def test_module_has_only_beta(self):
        x = _inputs(22)
        for energy in danet.ENERGIES:
            module = danet.ChannelAttention(energy=energy)
            params = nn.unbox(module.init(jax.random.PRNGKey(0), x)["params"])
            self.assertEqual(jax.tree.map(jnp.shape, params), {"beta": ()})
            out = module.apply({"params": {"beta": jnp.float32(0.6)}}, x * 0.3, MASK)
            np.testing.assert_allclose(out, _ref_cam(x * 0.3, 0.6, MASK, energy)[0], rtol=1e-5, atol=1e-5)

    def test_low_precision_inputs_keep_their_dtype(self):
        x = (_inputs(23) * 0.3).astype(jnp.bfloat16)
        out, weights = danet.channel_attention(x, 0.6, mask=MASK, return_weights=True)
        self.assertEqual((out.dtype, weights.dtype), (jnp.bfloat16, jnp.float32))
        want, _ = _ref_cam(np.asarray(x, np.float64), 0.6, MASK)
        np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=5e-2, atol=5e-2)


class IdentityAtInitAndDualTest(parameterized.TestCase):

    @parameterized.named_parameters(("position", danet.PositionAttention(reduction=4)),
                                    ("channel", danet.ChannelAttention()),
                                    ("channel_released", danet.ChannelAttention(energy="released")))
    def test_fresh_module_is_the_identity(self, module):
        x = _inputs(30)
        variables = module.init(jax.random.PRNGKey(1), x)
        scale = nn.unbox(variables["params"]).get("gamma", nn.unbox(variables["params"]).get("beta"))
        self.assertEqual(float(scale), 0.0)
        np.testing.assert_array_equal(module.apply(variables, x), x)
        np.testing.assert_array_equal(module.apply(variables, x, MASK), np.where(MASK[..., None], x, 0.0))
        xb = x.astype(jnp.bfloat16)
        out = module.apply(variables, xb)
        self.assertEqual(out.dtype, jnp.bfloat16)
        np.testing.assert_array_equal(out, xb)

    def test_fresh_dual_attention_returns_twice_the_input(self):
        x = _inputs(31)
        module = danet.DualAttention(reduction=4)
        variables = module.init(jax.random.PRNGKey(2), x)
        np.testing.assert_array_equal(module.apply(variables, x), 2 * x)

    def test_dual_attention_sums_the_two_modules(self):
        x = _inputs(32) * 0.3
        module = danet.DualAttention(reduction=4, energy="released")
        params = jax.tree.map(lambda p: p + 0.4, nn.unbox(module.init(jax.random.PRNGKey(3), x)["params"]))
        out, maps = module.apply({"params": params}, x, MASK, return_weights=True)
        pam, pam_map = danet.PositionAttention(reduction=4).apply({"params": params["position"]}, x, MASK,
                                                                  return_weights=True)
        cam, cam_map = danet.ChannelAttention(energy="released").apply({"params": params["channel"]}, x, MASK,
                                                                       return_weights=True)
        np.testing.assert_allclose(out, pam + cam, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(maps["position"], pam_map)
        np.testing.assert_array_equal(maps["channel"], cam_map)
        np.testing.assert_array_equal(module.apply({"params": params}, x, MASK), out)

    def test_fusion_convolutions(self):
        x = _inputs(33) * 0.3
        module = danet.DualAttention(reduction=4, fusion_kernel_size=3)
        params = jax.tree.map(lambda p: p + 0.1, nn.unbox(module.init(jax.random.PRNGKey(4), x)["params"]))
        self.assertEqual(params["position_fusion"]["kernel"].shape, (3, 3, C, C))
        out = module.apply({"params": params}, x, MASK)
        pam = danet.PositionAttention(reduction=4).apply({"params": params["position"]}, x, MASK)
        cam = danet.ChannelAttention().apply({"params": params["channel"]}, x, MASK)
        conv = nn.Conv(C, (3, 3), padding="SAME")
        want = (conv.apply({"params": params["position_fusion"]}, pam)
                + conv.apply({"params": params["channel_fusion"]}, cam))
        np.testing.assert_allclose(out, np.where(MASK[..., None], want, 0.0), rtol=1e-5, atol=1e-5)


class GradientsTest(parameterized.TestCase):

    def test_pam_check_grads(self):
        """Finite differences w.r.t. the map, every weight and gamma (the attention itself runs in float32)."""
        with jax.enable_x64(True):
            x, params = _inputs(40, np.float64)[:2, :2], _pam_weights(41, np.float64, reduced=3)
            for mask in (None, MASK[:2, :2]):
                jax.test_util.check_grads(lambda *a, m=mask: danet.position_attention(*a, mask=m), (x, *params),
                                          order=1, modes=("rev",), eps=1e-3, atol=2e-3, rtol=2e-3)

    def test_pam_grads_match_the_float64_einsum_reference(self):
        x, params = _inputs(42), _pam_weights(43)
        cot = _inputs(44)

        def loss(fn, *args):
            return jnp.sum(fn(*args) * cot)

        got = jax.grad(lambda *a: loss(danet.position_attention, *a), argnums=tuple(range(8)))(x, *params)
        with jax.enable_x64(True):
            args64 = [jnp.asarray(a, jnp.float64) for a in (x, *params)]
            want = jax.grad(lambda *a: loss(lambda *b: _einsum_pam(*b)[0], *a), argnums=tuple(range(8)))(*args64)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
        self.assertGreater(abs(float(got[7])), 1e-3)  # d/d gamma is exercised

    @parameterized.named_parameters(("paper", "paper"), ("released", "released"))
    def test_cam_check_grads_float64(self, energy):
        with jax.enable_x64(True):
            x = _inputs(45, np.float64) * 0.3
            beta = np.float64(0.6)
            for mask in (None, MASK):
                out = danet.channel_attention(x, beta, mask=mask, energy=energy)
                self.assertEqual(out.dtype, jnp.float64)
                jax.test_util.check_grads(lambda *a, m=mask: danet.channel_attention(*a, mask=m, energy=energy),
                                          (x, beta), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-6)

    def test_jit_equals_eager(self):
        x, params = _inputs(46), _pam_weights(47)
        for fn in (lambda x, m: danet.position_attention(x, *params, mask=m, return_weights=True),
                   lambda x, m: danet.channel_attention(x, 0.6, mask=m, energy="released", return_weights=True)):
            chex.assert_trees_all_close(jax.jit(fn)(x, MASK), fn(x, MASK), rtol=1e-6, atol=1e-6)


def _functions():
    params = _pam_weights(50, reduced=3)
    return {
        "position": lambda x, m: danet.position_attention(x, *params, mask=m, return_weights=True),
        "position_blockwise": lambda x, m: danet.position_attention(
            x, *params, mask=m, return_weights=True, implementation=BlockwiseBackend(block_k=5)),
        "channel": lambda x, m: danet.channel_attention(x, 0.6, mask=m, return_weights=True),
        "channel_released": lambda x, m: danet.channel_attention(x, 0.6, mask=m, energy="released",
                                                                 return_weights=True),
    }


class MaskingTest(parameterized.TestCase):

    @parameterized.parameters("position", "position_blockwise", "channel", "channel_released")
    def test_nan_and_inf_at_padded_pixels_leak_nowhere(self, name):
        fn = _functions()[name]
        x = _inputs(51) * 0.5
        clean = np.where(MASK[..., None], x, 0.0).astype(np.float32)
        cot = _inputs(52)

        @jax.jit
        def run(x):
            def loss(x):
                out, weights = fn(x, MASK)
                return jnp.sum(out * cot) + jnp.sum(weights), (out, weights)
            return jax.grad(loss, has_aux=True)(x)

        want_grad, want = run(clean)
        for poison in (np.nan, np.inf, -np.inf):
            grad, got = run(np.where(MASK[..., None], x, poison).astype(np.float32))
            self.assertTrue(np.all(np.isfinite(grad)), f"poison {poison} leaked into the gradient")
            chex.assert_trees_all_close(got, want, atol=1e-6)
            np.testing.assert_allclose(grad, want_grad, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(grad)[~MASK], 0.0)
            np.testing.assert_array_equal(np.asarray(got[0])[~MASK], 0.0)
        # Positive control: the same poison at a real pixel does reach the outputs.
        _, control = run(np.where(MASK[..., None], np.where(np.arange(W)[:, None] == 0, np.nan, x), np.nan)
                         .astype(np.float32))
        self.assertFalse(np.all(np.isfinite(control[0])))

    def test_nan_at_padded_pixels_reaches_no_parameter_gradient(self):
        for module in (danet.PositionAttention(reduction=4), danet.DualAttention(reduction=4, fusion_kernel_size=3)):
            x = _inputs(53) * 0.5
            variables = module.init(jax.random.PRNGKey(5), x)
            params = jax.tree.map(lambda p: p + 0.3, nn.unbox(variables["params"]))

            @jax.jit
            def grads(params, x, module=module):
                return jax.grad(lambda p: jnp.sum(module.apply({"params": p}, x, MASK) ** 2))(params)

            want = grads(params, np.where(MASK[..., None], x, 0.0).astype(np.float32))
            got = grads(params, np.where(MASK[..., None], x, np.nan).astype(np.float32))
            chex.assert_tree_all_finite(got)
            chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    @parameterized.parameters("position", "channel", "channel_released")
    def test_mask_changes_the_result(self, name):
        """Positive control: the padded pixels hold ordinary values that the unmasked attention would read."""
        fn = _functions()[name]
        x = _inputs(54) * 0.5
        masked, _ = fn(x, MASK)
        unmasked, _ = fn(x, None)
        np.testing.assert_allclose(masked[0], unmasked[0], rtol=1e-6, atol=1e-6)
        self.assertGreater(float(jnp.max(jnp.abs(masked[1] - unmasked[1]))), 1e-3)

    @parameterized.parameters("position", "position_blockwise", "channel", "channel_released")
    def test_padded_image_equals_the_cropped_one(self, name):
        fn = _functions()[name]
        x = _inputs(55) * 0.5
        out, weights = fn(x, MASK)
        crop_out, crop_weights = fn(x[1:2, :2, :3], None)
        np.testing.assert_allclose(out[1, :2, :3], crop_out[0], rtol=1e-5, atol=1e-6)
        if name.startswith("position"):
            real = MASK[1].reshape(-1)
            np.testing.assert_allclose(np.asarray(weights[1])[np.ix_(real, real)], crop_weights[0], rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_array_equal(np.asarray(weights[1])[:, ~real], 0.0)
            np.testing.assert_array_equal(np.asarray(weights[1])[~real], 0.0)
        else:
            np.testing.assert_allclose(weights[1], crop_weights[0], rtol=1e-5, atol=1e-6)

    def test_dual_attention_padded_equals_cropped(self):
        x = _inputs(56) * 0.5
        for module in (danet.DualAttention(reduction=4), danet.DualAttention(reduction=4, fusion_kernel_size=3)):
            params = jax.tree.map(lambda p: p + 0.3, nn.unbox(module.init(jax.random.PRNGKey(6), x)["params"]))
            out = module.apply({"params": params}, x, MASK)
            crop = module.apply({"params": params}, x[1:2, :2, :3])
            np.testing.assert_allclose(out[1, :2, :3], crop[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(np.asarray(out)[~MASK], 0.0)

    @parameterized.parameters("position", "position_blockwise", "channel", "channel_released")
    def test_image_without_real_pixel_gives_zeros_and_zero_grads(self, name):
        fn = _functions()[name]
        x = _inputs(57)
        out, weights = fn(x, MASK)
        np.testing.assert_array_equal(out[3], 0.0)
        if name.startswith("position"):
            np.testing.assert_array_equal(weights[3], 0.0)
        grad = jax.grad(lambda x: jnp.sum(fn(x, MASK)[0][3] ** 2))(x)
        np.testing.assert_array_equal(grad, 0.0)

    @parameterized.parameters("position", "position_blockwise", "channel", "channel_released")
    def test_empty_maps(self, name):
        fn = _functions()[name]
        for shape in ((B, 0, W, C), (0, H, W, C)):
            x = np.zeros(shape, np.float32)
            out, _ = fn(x, np.ones(shape[:3], bool))
            self.assertEqual(out.shape, shape)
            grad = jax.grad(lambda x: jnp.sum(fn(x, None)[0]))(x)
            self.assertEqual(grad.shape, shape)
            self.assertTrue(np.all(np.isfinite(grad)))


class ArgumentChecksTest(absltest.TestCase):

    def test_bad_shapes_raise_value_error_naming_them(self):
        x, (wq, bq, wk, bk, wv, bv, gamma) = _inputs(60), _pam_weights(61)
        params = (wq, bq, wk, bk, wv, bv, gamma)
        for fn in (lambda x, m: danet.position_attention(x, *params, mask=m),
                   lambda x, m: danet.channel_attention(x, 0.5, mask=m)):
            with _raises(ValueError, "inputs", (B, H, W)):
                fn(x[..., 0], None)
            with _raises(ValueError, "mask", (B, H, W - 1), (B, H, W, C)):
                fn(x, MASK[:, :, 1:])
            with _raises(ValueError, "C >= 1", (B, H, W, 0)):
                fn(x[..., :0], None)
        with _raises(ValueError, "wq.shape=(7, 2)", "wv.shape=(8, 8)", "C=8"):
            danet.position_attention(x, wq[1:], bq, wk, bk, wv, bv, gamma)
        with _raises(ValueError, "bk.shape=(3,)", "C=8"):
            danet.position_attention(x, wq, bq, wk, np.zeros(3, np.float32), wv, bv, gamma)
        with _raises(ValueError, "wv.shape=(8, 7)"):
            danet.position_attention(x, wq, bq, wk, bk, wv[:, 1:], bv, gamma)
        with _raises(ValueError, "R >= 1", "wq.shape=(8, 0)"):
            danet.position_attention(x, wq[:, :0], bq[:0], wk[:, :0], bk[:0], wv, bv, gamma)
        with _raises(ValueError, "gamma", (1,)):
            danet.position_attention(x, wq, bq, wk, bk, wv, bv, np.ones(1, np.float32))
        with _raises(ValueError, "beta", (2,)):
            danet.channel_attention(x, np.ones(2, np.float32))
        with _raises(ValueError, "reduction", "C = 8", (B, H, W, C)):
            danet.PositionAttention(reduction=9).init(jax.random.PRNGKey(0), x)

    def test_errors_fire_while_tracing(self):
        x, params = _inputs(62), _pam_weights(63)
        with _raises(ValueError, "mask", (B, H, W - 1)):
            jax.eval_shape(lambda x: danet.position_attention(x, *params, mask=MASK[:, :, 1:]), x)

    def test_bad_types_and_settings(self):
        x, params = _inputs(64), _pam_weights(65)
        with _raises(TypeError, "inputs", "floating"):
            danet.position_attention(x.astype(np.int32), *params)
        with _raises(TypeError, "mask", "boolean"):
            danet.channel_attention(x, 0.5, mask=MASK.astype(np.int32))
        with _raises(TypeError, "gamma", "floating"):
            danet.position_attention(x, *params[:-1], np.int32(1))
        with _raises(TypeError, "return_weights"):
            danet.channel_attention(x, 0.5, return_weights=1)
        with _raises(ValueError, "energy", "'softmax'"):
            danet.channel_attention(x, 0.5, energy="softmax")
        with _raises(ValueError, "energy", "'softmax'"):
            danet.ChannelAttention(energy="softmax").init(jax.random.PRNGKey(0), x)
        with _raises(ValueError, "reduction", "0"):
            danet.PositionAttention(reduction=0).init(jax.random.PRNGKey(0), x)
        with _raises(ValueError, "fusion_kernel_size", "0"):
            danet.DualAttention(reduction=4, fusion_kernel_size=0).init(jax.random.PRNGKey(0), x)


if __name__ == "__main__":
    absltest.main()
