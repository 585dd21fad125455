"""Tests for attention_jax/alignment.py against float64 transcriptions of the paper equations.

Luong et al. 2015 (arXiv:1508.04025): eq. 7 (softmax alignment), section 3.2 (local-m, p_t = t),
eq. 9 (local-p position), eq. 10 (Gaussian factor, sigma = D/2, not renormalised);
Bahdanau et al. 2014 (arXiv:1409.0473) eq. 6.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

import attention_jax as aj
from attention_jax.core import alignment
from tests import reference as ref

B, T, S = 2, 4, 6
DQ, A = 3, 5
_BAD = (ValueError, TypeError)


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _logits(seed, shape=(B, T, S)):
    return (2.0 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _mask(seed, shape=(B, T, S), fully_masked_row=True):
    """Random boolean mask with at least one valid and one masked key, plus (optionally) a fully masked row."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.6
    mask[..., 0] = True
    mask[..., -1] = False
    if fully_masked_row:
        mask[(0,) * (len(shape) - 1)] = False
    return mask


def _positions(seed, num_keys=S, shape=(B, T)):
    """Real positions whose fractional parts stay away from integers (floor is then unambiguous)."""
    rng = np.random.default_rng(seed)
    whole = rng.integers(0, num_keys + 1, shape)
    frac = rng.choice([0.0, 0.25, 0.6], shape)
    return (whole + frac).astype(np.float32)


def _positions_off_integers(seed, num_keys=S, shape=(B, T)):
    rng = np.random.default_rng(seed)
    whole = rng.integers(0, num_keys, shape)
    frac = rng.choice([0.25, 0.6], shape)
    return (whole + frac).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# masked_softmax (Luong eq. 7, Bahdanau eq. 6).


class MaskedSoftmaxTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name="no_mask", mask_shape=None),
        dict(testcase_name="mask_bts", mask_shape=(B, T, S)),
        dict(testcase_name="mask_rank2", mask_shape=(B, S)),
    )
    def test_matches_reference(self, mask_shape):
        shape = (B, T, S) if mask_shape != (B, S) else (B, S)
        logits = _logits(0, shape)
        mask = None if mask_shape is None else _mask(1, shape)
        got = self.variant(alignment.masked_softmax)(jnp.asarray(logits), None if mask is None else jnp.asarray(mask))
        chex.assert_shape(got, shape)
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.masked_softmax(logits, mask))

    def test_bfloat16_logits_give_float32_weights(self):
        logits = jnp.asarray(_logits(2), jnp.bfloat16)
        mask = _mask(3)
        got = alignment.masked_softmax(logits, jnp.asarray(mask))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.masked_softmax(np.asarray(logits), mask), "bfloat16")

    def test_masked_keys_get_exactly_zero_and_rows_sum_to_one(self):
        mask = _mask(4)
        got = np.asarray(alignment.masked_softmax(jnp.asarray(_logits(5)), jnp.asarray(mask)))
        np.testing.assert_array_equal(got[~mask], 0.0)
        valid_rows = mask.any(-1)
        np.testing.assert_allclose(got.sum(-1)[valid_rows], 1.0, rtol=1e-6)
        np.testing.assert_array_equal(got[~valid_rows], 0.0)

    def test_large_logits_are_stable(self):
        logits = _logits(6) * 5e3
        mask = _mask(7)
        got = np.asarray(alignment.masked_softmax(jnp.asarray(logits), jnp.asarray(mask)))
        self.assertTrue(np.all(np.isfinite(got)))
        ref.assert_close(got, ref.masked_softmax(logits, mask))

    def test_values_under_mask_do_not_matter(self):
        logits = _logits(8)
        mask = _mask(9)
        noisy = logits.copy()
        rng = np.random.default_rng(10)
        noisy[~mask] = (rng.standard_normal((~mask).sum()) * 1e6).astype(np.float32)
        a = alignment.masked_softmax(jnp.asarray(logits), jnp.asarray(mask))
        b = alignment.masked_softmax(jnp.asarray(noisy), jnp.asarray(mask))
        ref.assert_close(b, a)

    def test_nan_and_inf_under_mask_do_not_leak(self):
        logits = _logits(11)
        mask = _mask(12)
        poisoned = logits.copy()
        poisoned[~mask] = np.nan
        poisoned[0, 1][~mask[0, 1]] = np.inf
        got = np.asarray(alignment.masked_softmax(jnp.asarray(poisoned), jnp.asarray(mask)))
        self.assertTrue(np.all(np.isfinite(got)), got)
        ref.assert_close(got, ref.masked_softmax(logits, mask))

    def test_fully_masked_rows_zero_weights_and_zero_finite_grads(self):
        logits = jnp.asarray(_logits(13))
        mask = np.ones((B, T, S), bool)
        mask[1] = False  # Whole batch element padded.
        mask[0, 2] = False  # One query row with nothing to attend to.
        cot = jnp.asarray(np.random.default_rng(14).standard_normal((B, T, S)), jnp.float32)

        def loss(x):
            return jnp.sum(alignment.masked_softmax(x, jnp.asarray(mask)) * cot)

        weights = np.asarray(alignment.masked_softmax(logits, jnp.asarray(mask)))
        np.testing.assert_array_equal(weights[1], 0.0)
        np.testing.assert_array_equal(weights[0, 2], 0.0)
        grad = np.asarray(jax.grad(loss)(logits))
        self.assertTrue(np.all(np.isfinite(grad)), grad)
        np.testing.assert_array_equal(grad[1], 0.0)
        np.testing.assert_array_equal(grad[0, 2], 0.0)
        self.assertTrue(np.any(grad[0, 0] != 0.0))

    def test_grad_is_zero_at_masked_positions(self):
        mask = _mask(15)
        cot = jnp.asarray(np.random.default_rng(16).standard_normal((B, T, S)), jnp.float32)
        grad = jax.grad(lambda x: jnp.sum(alignment.masked_softmax(x, jnp.asarray(mask)) * cot))(
            jnp.asarray(_logits(17)))
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)

    def test_check_grads(self):
        mask = jnp.asarray(_mask(18))
        fn = lambda x: alignment.masked_softmax(x, mask)
        jtu.check_grads(fn, (jnp.asarray(_logits(19)),), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_mask_shape_mismatch_raises(self):
        logits = jnp.zeros((B, T, S))
        mask = jnp.ones((B, T, S + 1), bool)
        with _raises(_BAD, mask.shape):
            alignment.masked_softmax(logits, mask)

    def test_package_reexports(self):
        for name in ("masked_softmax", "local_m_position", "local_p_position", "window_mask", "gaussian_window",
                     "local_alignment"):
            self.assertIs(getattr(aj.core.alignment, name), getattr(alignment, name), name)


# ----------------------------------------------------------------------------------------------------------
# Positions: local-m (section 3.2) and local-p (eq. 9).


class PositionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0, 3)
    def test_local_m_position(self, offset):
        got = self.variant(lambda: alignment.local_m_position(B, T, offset))()
        chex.assert_shape(got, (B, T))
        self.assertEqual(got.dtype, jnp.float32)
        np.testing.assert_array_equal(np.asarray(got), ref.local_m_position(B, T, offset))

    def _local_p_inputs(self, seed):
        rng = np.random.default_rng(seed)
        query = rng.standard_normal((B, T, DQ)).astype(np.float32)
        w_p = (rng.standard_normal((DQ, A)) / np.sqrt(DQ)).astype(np.float32)
        v_p = (2.0 * rng.standard_normal(A)).astype(np.float32)
        lengths = np.array([S, 2], np.int32)
        return query, w_p, v_p, lengths

    @chex.variants(with_jit=True, without_jit=True)
    def test_local_p_position_matches_reference(self):
        query, w_p, v_p, lengths = self._local_p_inputs(20)
        got = self.variant(alignment.local_p_position)(
            jnp.asarray(query), jnp.asarray(w_p), jnp.asarray(v_p), jnp.asarray(lengths))
        chex.assert_shape(got, (B, T))
        self.assertEqual(got.dtype, jnp.float32)
        want = ref.local_p_position(query, w_p, v_p, lengths)
        ref.assert_close(got, want)
        # p_t lies in [0, S_b]: the true source length, not the padded one.
        self.assertTrue(np.all(np.asarray(got) >= 0.0))
        self.assertTrue(np.all(np.asarray(got)[1] <= 2.0 + 1e-6))
        self.assertTrue(np.any(np.asarray(got)[0] > 2.0))

    def test_local_p_position_bfloat16_query(self):
        query, w_p, v_p, lengths = self._local_p_inputs(21)
        q16 = jnp.asarray(query, jnp.bfloat16)
        got = alignment.local_p_position(q16, jnp.asarray(w_p), jnp.asarray(v_p), jnp.asarray(lengths))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.local_p_position(np.asarray(q16), w_p, v_p, lengths), "bfloat16")

    def test_local_p_position_check_grads(self):
        query, w_p, v_p, lengths = self._local_p_inputs(22)
        fn = lambda q, w, v: alignment.local_p_position(q, w, v, jnp.asarray(lengths))
        jtu.check_grads(fn, (jnp.asarray(query), jnp.asarray(w_p), jnp.asarray(v_p)), order=1, modes=["rev"],
                        eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_local_p_position_bad_shapes(self):
        query, w_p, v_p, lengths = self._local_p_inputs(23)
        bad_lengths = jnp.asarray([S, S, S])
        with _raises(_BAD, bad_lengths.shape):
            alignment.local_p_position(jnp.asarray(query), jnp.asarray(w_p), jnp.asarray(v_p), bad_lengths)
        bad_w = jnp.zeros((DQ + 1, A))
        with _raises(_BAD, bad_w.shape):
            alignment.local_p_position(jnp.asarray(query), bad_w, jnp.asarray(v_p), jnp.asarray(lengths))
        bad_v = jnp.zeros((A + 2,))
        with _raises(_BAD, bad_v.shape):
            alignment.local_p_position(jnp.asarray(query), jnp.asarray(w_p), bad_v, jnp.asarray(lengths))


# ----------------------------------------------------------------------------------------------------------
# Windows.


class WindowTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1, 2, 3)
    def test_window_mask_matches_reference(self, window):
        position = _positions(24)
        got = self.variant(lambda p: alignment.window_mask(p, S, window))(jnp.asarray(position))
        chex.assert_shape(got, (B, T, S))
        self.assertEqual(got.dtype, jnp.bool_)
        np.testing.assert_array_equal(np.asarray(got), ref.window_mask(position, S, window))

    def test_window_mask_explicit(self):
        # floor(2.7) = 2, D = 1 -> {1, 2, 3}; floor(0.2) = 0 -> {0, 1}; 9.5 is past the source -> nothing.
        position = jnp.asarray([[2.7, 0.2, 9.5, 5.0]], jnp.float32)
        got = np.asarray(alignment.window_mask(position, 6, 1))
        np.testing.assert_array_equal(got.astype(int), [[
            [0, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 1],
        ]])

    def test_window_mask_negative_window_raises(self):
        with _raises(ValueError, -1):
            alignment.window_mask(jnp.zeros((B, T)), S, -1)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.5, 1.5)
    def test_gaussian_window_matches_reference(self, sigma):
        position = _positions(25)
        got = self.variant(lambda p: alignment.gaussian_window(p, S, sigma))(jnp.asarray(position))
        chex.assert_shape(got, (B, T, S))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.gaussian_window(position, S, sigma))

    def test_gaussian_window_explicit(self):
        # Centre 2.0, sigma 1: exp(-(s-2)^2 / 2).
        got = np.asarray(alignment.gaussian_window(jnp.asarray([[2.0]]), 5, 1.0))
        ref.assert_close(got, np.exp(-((np.arange(5) - 2.0) ** 2) / 2.0)[None, None, :])


# ----------------------------------------------------------------------------------------------------------
# local_alignment (Luong section 3.2 and eq. 10).


def _local_case(seed, mask_kind, num_keys=S):
    logits = _logits(seed, (B, T, num_keys))
    position = _positions(seed + 1, num_keys)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "bs":
        mask = ref.padding_mask([num_keys, max(num_keys - 3, 1)], num_keys)
    else:
        mask = _mask(seed + 2, (B, T, num_keys))
    return logits, position, mask


class LocalAlignmentTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name="m_nomask_w1", mask_kind="none", window=1, gaussian=False),
        dict(testcase_name="m_bs_w2", mask_kind="bs", window=2, gaussian=False),
        dict(testcase_name="p_bts_w1", mask_kind="bts", window=1, gaussian=True),
        dict(testcase_name="p_bs_w3", mask_kind="bs", window=3, gaussian=True),
        dict(testcase_name="p_nomask_w2", mask_kind="none", window=2, gaussian=True),
    )
    def test_matches_reference(self, mask_kind, window, gaussian):
        logits, position, mask = _local_case(30, mask_kind)
        fn = lambda x, p, m: alignment.local_alignment(x, p, window, m, gaussian)
        got = self.variant(fn)(jnp.asarray(logits), jnp.asarray(position), None if mask is None else jnp.asarray(mask))
        chex.assert_shape(got, (B, T, S))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.local_alignment(logits, position, window, mask, gaussian))

    @parameterized.parameters(False, True)
    def test_zero_outside_window_and_mask(self, gaussian):
        logits, position, mask = _local_case(33, "bts")
        got = np.asarray(alignment.local_alignment(
            jnp.asarray(logits), jnp.asarray(position), 1, jnp.asarray(mask), gaussian))
        allowed = ref.window_mask(position, S, 1) & mask
        np.testing.assert_array_equal(got[~allowed], 0.0)
        self.assertTrue(np.all(np.isfinite(got)))

    def test_local_m_rows_sum_to_one_inside_window(self):
        logits, position, mask = _local_case(36, "bs")
        got = np.asarray(alignment.local_alignment(jnp.asarray(logits), jnp.asarray(position), 2, jnp.asarray(mask),
                                                   False))
        has_key = (ref.window_mask(position, S, 2) & mask[:, None, :]).any(-1)
        np.testing.assert_allclose(got.sum(-1)[has_key], 1.0, rtol=1e-6)
        np.testing.assert_array_equal(got[~has_key], 0.0)

    def test_gaussian_multiplies_and_is_not_renormalised(self):
        logits = _logits(39)
        position = _positions_off_integers(40)
        window = 2
        plain = np.asarray(alignment.local_alignment(jnp.asarray(logits), jnp.asarray(position), window, None, False))
        scaled = np.asarray(alignment.local_alignment(jnp.asarray(logits), jnp.asarray(position), window, None, True))
        factor = ref.gaussian_window(position, S, window / 2.0)  # sigma = D / 2
        ref.assert_close(scaled, plain * factor)
        # Not renormalised: with p_t off the integer grid every Gaussian factor is < 1, so each row sums to < 1.
        self.assertTrue(np.all(scaled.sum(-1) < 1.0 - 1e-3), scaled.sum(-1))

    def test_window_covering_all_keys_is_global(self):
        logits, position, mask = _local_case(42, "bts")
        got = alignment.local_alignment(jnp.asarray(logits), jnp.asarray(position), 2 * S, jnp.asarray(mask), False)
        ref.assert_close(got, ref.masked_softmax(logits, mask))

    @parameterized.parameters(False, True)
    def test_source_shorter_than_window(self, gaussian):
        num_keys, window = 3, 5
        logits, position, mask = _local_case(45, "bs", num_keys=num_keys)
        got = alignment.local_alignment(jnp.asarray(logits), jnp.asarray(position), window, jnp.asarray(mask),
                                        gaussian)
        chex.assert_shape(got, (B, T, num_keys))
        ref.assert_close(got, ref.local_alignment(logits, position, window, mask, gaussian))

    @parameterized.parameters(False, True)
    def test_empty_window_rows_are_zero_with_zero_finite_grads(self, gaussian):
        logits = jnp.asarray(_logits(48))
        position = np.full((B, T), 1.25, np.float32)
        position[0, 1] = S + 4.5  # window [S+2, S+6]: past the source.
        position = jnp.asarray(position)
        mask = np.ones((B, S), bool)
        mask[1, :4] = False  # batch 1: keys 4, 5 valid, window around 1 is [0, 2]: empty.
        mask = jnp.asarray(mask)
        cot = jnp.asarray(np.random.default_rng(49).standard_normal((B, T, S)), jnp.float32)
        fn = lambda x, p: jnp.sum(alignment.local_alignment(x, p, 1, mask, gaussian) * cot)
        weights = np.asarray(alignment.local_alignment(logits, position, 1, mask, gaussian))
        np.testing.assert_array_equal(weights[0, 1], 0.0)
        np.testing.assert_array_equal(weights[1], 0.0)
        g_logits, g_pos = jax.grad(fn, argnums=(0, 1))(logits, position)
        g_logits, g_pos = np.asarray(g_logits), np.asarray(g_pos)
        self.assertTrue(np.all(np.isfinite(g_logits)) and np.all(np.isfinite(g_pos)))
        np.testing.assert_array_equal(g_logits[0, 1], 0.0)
        np.testing.assert_array_equal(g_logits[1], 0.0)
        np.testing.assert_array_equal(g_pos[1], 0.0)

    @parameterized.parameters(False, True)
    def test_check_grads_logits(self, gaussian):
        logits, position, mask = _local_case(50, "bts")
        fn = lambda x: alignment.local_alignment(x, jnp.asarray(position), 2, jnp.asarray(mask), gaussian)
        jtu.check_grads(fn, (jnp.asarray(logits),), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_gradient_flows_to_position_through_gaussian(self):
        # Luong eq. 10: the Gaussian is what makes p_t (and so W_p, v_p) trainable.
        logits = _logits(53)
        position = _positions_off_integers(54)
        fn = lambda p: alignment.local_alignment(jnp.asarray(logits), p, 2, None, True)
        jtu.check_grads(fn, (jnp.asarray(position),), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
        grad = jax.grad(lambda p: jnp.sum(fn(p) * jnp.arange(S, dtype=jnp.float32)))(jnp.asarray(position))
        self.assertTrue(np.all(np.abs(np.asarray(grad)) > 0.0), grad)

    def test_negative_window_raises(self):
        with _raises(ValueError, -2):
            alignment.local_alignment(jnp.zeros((B, T, S)), jnp.zeros((B, T)), -2, None, False)

    def test_position_shape_mismatch_raises(self):
        position = jnp.zeros((B, T + 1))
        with _raises(_BAD, position.shape):
            alignment.local_alignment(jnp.zeros((B, T, S)), position, 1, None, True)

    @parameterized.parameters((B, S + 1), (B, T + 1, S), (S,))
    def test_mask_shape_mismatch_raises(self, *mask_shape):
        mask = jnp.ones(mask_shape, bool)
        with _raises(_BAD, mask.shape):
            alignment.local_alignment(jnp.zeros((B, T, S)), jnp.zeros((B, T)), 1, mask, False)


if __name__ == "__main__":
    absltest.main()


class MaskedSoftmaxWithLseTest(parameterized.TestCase):
    """masked_softmax_with_lse: the weights of masked_softmax plus log sum exp over the valid keys."""

    @parameterized.parameters(True, False)
    def test_matches_float64_reference(self, with_mask):
        rng = np.random.default_rng(11)
        logits = (3.0 * rng.standard_normal((2, 3, 5))).astype(np.float32)
        mask = rng.random((2, 3, 5)) < 0.6 if with_mask else None
        if with_mask:
            mask[0, 1] = False  # One fully-masked row.
            mask[1, :, 0] = True
        weights, lse = alignment.masked_softmax_with_lse(jnp.asarray(logits), None if mask is None else jnp.asarray(mask))
        np.testing.assert_allclose(weights, ref.masked_softmax(logits.astype(np.float64), mask), rtol=1e-5, atol=1e-7)
        x = logits.astype(np.float64)
        valid = np.ones_like(x, bool) if mask is None else mask
        with np.errstate(divide="ignore"):
            want = np.log(np.sum(np.where(valid, np.exp(x), 0.0), axis=-1))
        has_key = valid.any(-1)
        np.testing.assert_allclose(np.asarray(lse)[has_key], want[has_key], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(lse)[~has_key], alignment.EMPTY_ROW_LSE)
        self.assertTrue(np.all(np.isfinite(np.asarray(lse))))
        np.testing.assert_array_equal(alignment.masked_softmax(jnp.asarray(logits), None if mask is None else jnp.asarray(mask)), weights)
