"""Tests for attention_jax/context.py: weighted_context and attend (score -> alignment -> context).

Bahdanau et al. 2014 (arXiv:1409.0473) eq. 5, 6; Luong et al. 2015 (arXiv:1508.04025) eq. 7-10 and
section 3.2 (global, local-m, local-p). The oracle is tests/reference.py (float64 numpy).
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
from attention_jax.core import alignment, context, scores
from tests import reference as ref

B, T, S = 2, 4, 6
DQ, DK, DV = 4, 5, 3
A = 5
S_MAX = 8
LENGTHS = (S, 3)  # Batch element 1 is padded after 3 keys.
ALL_SCORES = tuple(scores.SCORES)  # the registry (tests/core/scores_test.py pins its names)
MODES = context.MODES
_BAD = (ValueError, TypeError)


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _make_mask(kind, num_keys, rng):
    if kind == "none":
        return None
    if kind == "bs":
        return ref.padding_mask([num_keys, min(3, num_keys)], num_keys)
    mask = ref.padding_mask([num_keys, min(3, num_keys)], num_keys)[:, None, :] & (rng.random((B, T, num_keys)) < 0.7)
    mask[:, :, 0] = True
    return mask


def _reference_local_p(query, params, mask, num_keys, key_lengths=None):
    """The reference p_t (Luong eq. 9) on each query's span of valid keys."""
    allowed = np.ones((B, T, num_keys), bool) if mask is None else np.broadcast_to(
        mask if np.ndim(mask) == 3 else mask[:, None, :], (B, T, num_keys))
    if key_lengths is not None:
        allowed = allowed & ref.padding_mask(key_lengths, num_keys)[:, None, :]
    first, extent = ref.valid_span(allowed)
    return ref.local_p_position(query, params["w_p"], params["v_p"], extent, first)


def _case(score, *, seed=0, mode="global", mask_kind="bs", num_keys=S, margin=0.05):
    """Random query/key/value/mask/params (numpy float32).

    For local-p the draw is repeated until every reference p_t is at least `margin` away from an integer, so
    floor(p_t) (the window) is the same in float32 and float64 and under finite-difference perturbations.
    """
    dk = DQ if scores.SCORES[score].same_features else DK
    for attempt in range(200):
        rng = np.random.default_rng(1000 * seed + attempt)
        query = rng.standard_normal((B, T, DQ)).astype(np.float32)
        key = rng.standard_normal((B, num_keys, dk)).astype(np.float32)
        value = rng.standard_normal((B, num_keys, DV)).astype(np.float32)
        mask = _make_mask(mask_kind, num_keys, rng)
        params = ref.random_params(rng, score, DQ, dk, hidden_dim=A, max_keys=S_MAX, local_p=(mode == "local_p"))
        if mode != "local_p":
            break
        p = _reference_local_p(query, params, mask, num_keys)
        frac = p - np.floor(p)
        if np.all((frac > margin) & (frac < 1.0 - margin)):
            break
    else:
        raise AssertionError("no well-conditioned local-p draw")
    return query, key, value, mask, params


def _j(x):
    if x is None:
        return None
    if isinstance(x, dict):
        return {n: jnp.asarray(w) for n, w in x.items()}
    return jnp.asarray(x)


# ----------------------------------------------------------------------------------------------------------
# weighted_context (Bahdanau eq. 5).


class WeightedContextTest(chex.TestCase):

    def _inputs(self, seed):
        rng = np.random.default_rng(seed)
        weights = ref.masked_softmax(rng.standard_normal((B, T, S)), _make_mask("bts", S, rng)).astype(np.float32)
        value = rng.standard_normal((B, S, DV)).astype(np.float32)
        return weights, value

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reference(self):
        weights, value = self._inputs(0)
        got = self.variant(context.weighted_context)(jnp.asarray(weights), jnp.asarray(value))
        chex.assert_shape(got, (B, T, DV))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.weighted_context(weights, value))

    def test_bfloat16_value_keeps_dtype(self):
        weights, value = self._inputs(1)
        v16 = jnp.asarray(value, jnp.bfloat16)
        got = context.weighted_context(jnp.asarray(weights), v16)
        self.assertEqual(got.dtype, jnp.bfloat16)
        ref.assert_close(got, ref.weighted_context(weights, np.asarray(v16)), "bfloat16")

    def test_check_grads(self):
        weights, value = self._inputs(2)
        jtu.check_grads(context.weighted_context, (jnp.asarray(weights), jnp.asarray(value)), order=1, modes=["rev"],
                        eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_shape_errors(self):
        weights = jnp.zeros((B, T, S))
        bad_len = jnp.zeros((B, S + 1, DV))
        with _raises(_BAD, weights.shape, bad_len.shape):
            context.weighted_context(weights, bad_len)
        bad_batch = jnp.zeros((B + 1, S, DV))
        with _raises(_BAD, weights.shape, bad_batch.shape):
            context.weighted_context(weights, bad_batch)
        bad_rank = jnp.zeros((S, DV))
        with _raises(_BAD, bad_rank.shape):
            context.weighted_context(weights, bad_rank)

    def test_package_reexports(self):
        self.assertIs(aj.weighted_context, context.weighted_context)
        self.assertIs(aj.attend, context.attend)


# ----------------------------------------------------------------------------------------------------------
# attend: composition against the reference.


def _attend_fn(score, mode="global", window=None, **kwargs):
    def fn(q, k, v, m, p):
        return context.attend(q, k, v, m, score=score, params=p, mode=mode, window=window, **kwargs)
    return fn


class AttendMatchesReferenceTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[dict(testcase_name=n, score=n) for n in ALL_SCORES])
    def test_global(self, score):
        query, key, value, mask, params = _case(score, seed=1)
        ctx, weights = self.variant(_attend_fn(score))(*map(_j, (query, key, value, mask, params)))
        chex.assert_shape(ctx, (B, T, DV))
        chex.assert_shape(weights, (B, T, S))
        self.assertEqual(weights.dtype, jnp.float32)
        self.assertEqual(ctx.dtype, jnp.float32)
        want_ctx, want_w = ref.attend(query, key, value, mask, score=score, params=params)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name="local_m_dot_w1", score="dot", mode="local_m", window=1, mask_kind="bs"),
        dict(testcase_name="local_m_general_w2_bts", score="general", mode="local_m", window=2, mask_kind="bts"),
        dict(testcase_name="local_m_location_w1_nomask", score="location", mode="local_m", window=1,
             mask_kind="none"),
        dict(testcase_name="local_p_general_w1", score="general", mode="local_p", window=1, mask_kind="bs"),
        dict(testcase_name="local_p_concat_w2_nomask", score="concat", mode="local_p", window=2, mask_kind="none"),
        dict(testcase_name="local_p_additive_w2_bts", score="additive", mode="local_p", window=2, mask_kind="bts"),
    )
    def test_local(self, score, mode, window, mask_kind):
        query, key, value, mask, params = _case(score, seed=2, mode=mode, mask_kind=mask_kind)
        ctx, weights = self.variant(_attend_fn(score, mode, window))(*map(_j, (query, key, value, mask, params)))
        self.assertEqual(weights.dtype, jnp.float32)
        want_ctx, want_w = ref.attend(query, key, value, mask, score=score, params=params, mode=mode, window=window)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    @parameterized.parameters("global", "local_m", "local_p")
    def test_value_none_means_key(self, mode):
        query, key, _, mask, params = _case("general", seed=3, mode=mode)
        ctx, weights = context.attend(*map(_j, (query, key)), None, _j(mask), score="general", params=_j(params),
                                      mode=mode, window=2)
        chex.assert_shape(ctx, (B, T, DK))
        want_ctx, want_w = ref.attend(query, key, key, mask, score="general", params=params, mode=mode, window=2)
        ref.assert_close(ctx, want_ctx)
        ref.assert_close(weights, want_w)

    def test_default_score_is_dot_and_default_mode_is_global(self):
        query, key, value, mask, _ = _case("dot", seed=4)
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)))
        want_ctx, want_w = ref.attend(query, key, value, mask, score="dot")
        ref.assert_close(ctx, want_ctx)
        ref.assert_close(weights, want_w)

    @parameterized.parameters("global", "local_p")
    def test_bfloat16_everything(self, mode):
        query, key, value, mask, params = _case("general", seed=5, mode=mode, margin=0.1)
        q16, k16, v16 = (jnp.asarray(x, jnp.bfloat16) for x in (query, key, value))
        p16 = {n: jnp.asarray(w, jnp.bfloat16) for n, w in params.items()}
        ctx, weights = context.attend(q16, k16, v16, _j(mask), score="general", params=p16, mode=mode, window=2)
        self.assertEqual(weights.dtype, jnp.float32)
        self.assertEqual(ctx.dtype, jnp.bfloat16)
        as64 = lambda x: np.asarray(x).astype(np.float64)
        want_ctx, want_w = ref.attend(as64(q16), as64(k16), as64(v16), mask, score="general",
                                      params={n: as64(w) for n, w in p16.items()}, mode=mode, window=2)
        ref.assert_close(weights, want_w, "bfloat16")
        ref.assert_close(ctx, want_ctx, "bfloat16")

    def test_context_dtype_follows_value(self):
        query, key, value, mask, _ = _case("dot", seed=6)
        ctx, weights = context.attend(_j(query), _j(key), jnp.asarray(value, jnp.bfloat16), _j(mask))
        self.assertEqual(ctx.dtype, jnp.bfloat16)
        self.assertEqual(weights.dtype, jnp.float32)
        ctx32, _ = context.attend(*map(_j, (query, key, value, mask)))
        self.assertEqual(ctx32.dtype, jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# attend: behaviour.


class AttendBehaviourTest(parameterized.TestCase):

    @parameterized.parameters(
        ("global", "dot"), ("global", "additive"), ("local_m", "general"), ("local_p", "concat"),
        ("local_p", "dot"))
    def test_masked_keys_and_values_do_not_matter(self, mode, score):
        query, key, value, mask, params = _case(score, seed=7, mode=mode)
        rng = np.random.default_rng(8)
        pad = ~mask  # [B,S]
        noisy_key, noisy_value = key.copy(), value.copy()
        noisy_key[pad] = (1e4 * rng.standard_normal(noisy_key[pad].shape)).astype(np.float32)
        noisy_value[pad] = (1e4 * rng.standard_normal(noisy_value[pad].shape)).astype(np.float32)
        kw = dict(score=score, params=_j(params), mode=mode, window=2)
        ctx_a, w_a = context.attend(*map(_j, (query, key, value, mask)), **kw)
        ctx_b, w_b = context.attend(*map(_j, (query, noisy_key, noisy_value, mask)), **kw)
        np.testing.assert_array_equal(np.asarray(w_b)[:, :, ~mask[1]][1], 0.0)
        ref.assert_close(w_b, w_a)
        ref.assert_close(ctx_b, ctx_a)

    @parameterized.parameters("global", "local_m", "local_p")
    def test_nan_keys_under_padding_do_not_leak(self, mode):
        # House style (STYLE.md "Tests that can fail"): padding with NaN does not leak into the output.
        query, key, value, mask, params = _case("dot", seed=9, mode=mode)
        poisoned_key = key.copy()
        poisoned_key[~mask] = np.nan
        kw = dict(score="dot", params=params, mode=mode, window=2)
        ctx, weights = context.attend(*map(_j, (query, poisoned_key, value, mask)), **kw)
        want_ctx, want_w = ref.attend(query, key, value, mask, **kw)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    @parameterized.parameters("global", "local_m", "local_p")
    def test_nan_values_under_padding_do_not_leak(self, mode):
        # House style (STYLE.md "Tests that can fail"): padding with NaN does not leak into the output.
        # A padded value row has weight exactly 0, but 0 * NaN = NaN unless the padding is zeroed out.
        query, key, value, mask, params = _case("dot", seed=9, mode=mode)
        poisoned_value = value.copy()
        poisoned_value[~mask] = np.nan
        kw = dict(score="dot", params=params, mode=mode, window=2)
        ctx, weights = context.attend(*map(_j, (query, key, poisoned_value, mask)), **kw)
        want_ctx, want_w = ref.attend(query, key, value, mask, **kw)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    @parameterized.parameters("global", "local_m", "local_p")
    def test_fully_masked_rows(self, mode):
        query, key, value, _, params = _case("general", seed=10, mode=mode, mask_kind="none")
        mask = np.ones((B, T, S), bool)
        mask[1] = False  # An empty source.
        mask[0, 2] = False  # One query with nothing to attend to.
        key_lengths = np.array([S, 0], np.int32)
        kw = dict(score="general", mode=mode, window=2, key_lengths=jnp.asarray(key_lengths))
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)), params=_j(params), **kw)
        ctx, weights = np.asarray(ctx), np.asarray(weights)
        self.assertTrue(np.all(np.isfinite(ctx)) and np.all(np.isfinite(weights)))
        np.testing.assert_array_equal(weights[1], 0.0)
        np.testing.assert_array_equal(weights[0, 2], 0.0)
        np.testing.assert_array_equal(ctx[1], 0.0)
        np.testing.assert_array_equal(ctx[0, 2], 0.0)

        cot = jnp.asarray(np.random.default_rng(11).standard_normal((B, T, DV)), jnp.float32)

        def loss(q, k, v, p):
            c, _ = context.attend(q, k, v, jnp.asarray(mask), params=p, **kw)
            return jnp.sum(c * cot)

        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*map(_j, (query, key, value, params)))
        for g in jax.tree_util.tree_leaves(grads):
            self.assertTrue(np.all(np.isfinite(np.asarray(g))), g)
        g_q, g_k, g_v, _ = (np.asarray(g) if not isinstance(g, dict) else g for g in grads)
        np.testing.assert_array_equal(g_q[1], 0.0)
        np.testing.assert_array_equal(g_q[0, 2], 0.0)
        np.testing.assert_array_equal(g_k[1], 0.0)
        np.testing.assert_array_equal(g_v[1], 0.0)
        self.assertTrue(np.any(g_q[0, 0] != 0.0))

    @parameterized.parameters("global", "local_m", "local_p")
    def test_step_by_step_equals_full(self, mode):
        query, key, value, mask, params = _case("general", seed=12, mode=mode)
        kw = dict(score="general", params=_j(params), mode=mode, window=1)
        full_ctx, full_w = context.attend(*map(_j, (query, key, value, mask)), **kw)
        for t in range(T):
            extra = {}
            if mode == "local_m":
                extra["query_positions"] = jnp.full((B, 1), t, jnp.int32)
            ctx_t, w_t = context.attend(_j(query[:, t:t + 1]), *map(_j, (key, value, mask)), **kw, **extra)
            chex.assert_shape(w_t, (B, 1, S))
            ref.assert_close(w_t, full_w[:, t:t + 1], err_msg=f"t={t}")
            ref.assert_close(ctx_t, full_ctx[:, t:t + 1], err_msg=f"t={t}")

    def test_local_m_query_positions_shift_the_window(self):
        query, key, value, mask, params = _case("dot", seed=13, mode="local_m", mask_kind="none")
        positions = np.array([[3, 5, 0, 1], [2, 2, 4, 9]], np.int32)
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)), score="dot", mode="local_m", window=1,
                                      query_positions=jnp.asarray(positions))
        want_ctx, want_w = ref.attend(query, key, value, mask, score="dot", mode="local_m", window=1,
                                      query_positions=positions)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)
        np.testing.assert_array_equal(np.asarray(weights)[1, 3], 0.0)  # p = 9: window [8, 10] is past S = 6.

    def test_local_m_default_positions_are_arange(self):
        query, key, value, mask, _ = _case("dot", seed=14, mode="local_m")
        kw = dict(score="dot", mode="local_m", window=1)
        ctx_a, w_a = context.attend(*map(_j, (query, key, value, mask)), **kw)
        arange = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        ctx_b, w_b = context.attend(*map(_j, (query, key, value, mask)), query_positions=arange, **kw)
        ref.assert_close(w_b, w_a)
        ref.assert_close(ctx_b, ctx_a)

    def test_local_m_wide_window_equals_global(self):
        query, key, value, mask, _ = _case("dot", seed=15, mode="local_m", mask_kind="bts")
        ctx_l, w_l = context.attend(*map(_j, (query, key, value, mask)), mode="local_m", window=S + T)
        ctx_g, w_g = context.attend(*map(_j, (query, key, value, mask)), mode="global")
        ref.assert_close(w_l, w_g)
        ref.assert_close(ctx_l, ctx_g)

    @parameterized.parameters("local_m", "local_p")
    def test_source_shorter_than_window(self, mode):
        query, key, value, mask, params = _case("general", seed=16, mode=mode, num_keys=3)
        kw = dict(score="general", params=params, mode=mode, window=4)
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)), **{**kw, "params": _j(params)})
        chex.assert_shape(weights, (B, T, 3))
        want_ctx, want_w = ref.attend(query, key, value, mask, **kw)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    def test_local_p_key_lengths_default_from_mask(self):
        query, key, value, mask, params = _case("dot", seed=17, mode="local_p")
        kw = dict(score="dot", params=_j(params), mode="local_p", window=1)
        ctx_a, w_a = context.attend(*map(_j, (query, key, value, mask)), **kw)
        ctx_b, w_b = context.attend(*map(_j, (query, key, value, mask)), key_lengths=jnp.asarray(mask.sum(-1)), **kw)
        ref.assert_close(w_a, w_b)
        ref.assert_close(ctx_a, ctx_b)
        want_ctx, want_w = ref.attend(query, key, value, mask, score="dot", params=params, mode="local_p", window=1)
        ref.assert_close(w_a, want_w)
        ref.assert_close(ctx_a, want_ctx)

    def test_local_p_key_lengths_default_without_mask_is_num_keys(self):
        query, key, value, _, params = _case("dot", seed=18, mode="local_p", mask_kind="none")
        kw = dict(score="dot", params=_j(params), mode="local_p", window=1)
        ctx_a, w_a = context.attend(*map(_j, (query, key, value)), None, **kw)
        ctx_b, w_b = context.attend(*map(_j, (query, key, value)), None, key_lengths=jnp.full((B,), S), **kw)
        ref.assert_close(w_a, w_b)
        ref.assert_close(ctx_a, ctx_b)

    def test_local_p_explicit_key_lengths_honoured(self):
        query, key, value, mask, params = _case("dot", seed=19, mode="local_p", mask_kind="bts")
        key_lengths = np.array([4, 3], np.int32)
        # Keep p_t well away from integers for these lengths too.
        p = _reference_local_p(query, params, mask, S, key_lengths)
        frac = p - np.floor(p)
        self.assertTrue(np.all((frac > 1e-3) & (frac < 1 - 1e-3)), p)
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)), score="dot", params=_j(params),
                                      mode="local_p", window=1, key_lengths=jnp.asarray(key_lengths))
        want_ctx, want_w = ref.attend(query, key, value, mask, score="dot", params=params, mode="local_p", window=1,
                                      key_lengths=key_lengths)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    def test_rank3_mask_same_as_rank2(self):
        for mode in ("global", "local_m", "local_p"):
            query, key, value, mask, params = _case("dot", seed=20, mode=mode)
            kw = dict(score="dot", params=_j(params), mode=mode, window=2, key_lengths=jnp.asarray(mask.sum(-1)))
            ctx_a, w_a = context.attend(*map(_j, (query, key, value, mask)), **kw)
            mask3 = np.broadcast_to(mask[:, None, :], (B, T, S))
            ctx_b, w_b = context.attend(*map(_j, (query, key, value, mask3)), **kw)
            ref.assert_close(w_b, w_a, err_msg=mode)
            ref.assert_close(ctx_b, ctx_a, err_msg=mode)

    def test_local_p_gradient_reaches_position_params(self):
        query, key, value, mask, params = _case("dot", seed=21, mode="local_p")

        def loss(p):
            c, _ = context.attend(*map(_j, (query, key, value, mask)), score="dot", params=p, mode="local_p",
                                  window=2)
            return jnp.sum(c * jnp.arange(DV, dtype=jnp.float32))

        grads = jax.grad(loss)(_j(params))
        self.assertGreater(float(jnp.max(jnp.abs(grads["w_p"]))), 0.0)
        self.assertGreater(float(jnp.max(jnp.abs(grads["v_p"]))), 0.0)


class AttendGradientTest(parameterized.TestCase):

    @parameterized.named_parameters(
        dict(testcase_name="global_dot", score="dot", mode="global", mask_kind="bts"),
        dict(testcase_name="global_additive", score="additive", mode="global", mask_kind="bs"),
        dict(testcase_name="global_location", score="location", mode="global", mask_kind="bs"),
        dict(testcase_name="local_m_concat", score="concat", mode="local_m", mask_kind="bs"),
        dict(testcase_name="local_p_general", score="general", mode="local_p", mask_kind="bs"),
    )
    def test_check_grads(self, score, mode, mask_kind):
        query, key, value, mask, params = _case(score, seed=22, mode=mode, mask_kind=mask_kind, margin=0.1)
        m = _j(mask)

        def fn(q, k, v, p):
            return context.attend(q, k, v, m, score=score, params=p, mode=mode, window=2)

        jtu.check_grads(fn, tuple(map(_j, (query, key, value, params))), order=1, modes=["rev"], eps=1e-3,
                        atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------------------
# attend: bad input.


class AttendErrorsTest(parameterized.TestCase):

    def setUp(self):
        super().setUp()
        query, key, value, mask, params = _case("general", seed=23, mode="local_p")
        self.q, self.k, self.v, self.m = map(_j, (query, key, value, mask))
        self.params = _j(params)

    def _attend(self, **overrides):
        args = dict(query=self.q, key=self.k, value=self.v, mask=self.m, score="general", params=self.params,
                    mode="global", window=None)
        args.update(overrides)
        return context.attend(args.pop("query"), args.pop("key"), args.pop("value"), args.pop("mask"), **args)

    def test_key_batch_mismatch(self):
        key = jnp.zeros((B + 1, S, DK))
        with _raises(_BAD, self.q.shape, key.shape):
            self._attend(key=key, value=jnp.zeros((B + 1, S, DV)), mask=None)

    def test_value_batch_mismatch(self):
        value = jnp.zeros((B + 1, S, DV))
        with _raises(_BAD, value.shape):
            self._attend(value=value)

    def test_value_length_mismatch(self):
        value = jnp.zeros((B, S + 1, DV))
        with _raises(_BAD, value.shape):
            self._attend(value=value)

    def test_query_wrong_rank(self):
        query = jnp.zeros((T, DQ))
        with _raises(_BAD, query.shape):
            self._attend(query=query)

    def test_key_wrong_rank(self):
        key = jnp.zeros((B, S, 1, DK))
        with _raises(_BAD, key.shape):
            self._attend(key=key, value=None, mask=None)

    @parameterized.parameters((B, S + 1), (B, T + 1, S), (S,), (B + 1, S), (1, S))
    def test_mask_shape_that_does_not_fit(self, *shape):
        mask = jnp.ones(shape, bool)
        with _raises(_BAD, mask.shape):
            self._attend(mask=mask)

    def test_unknown_score(self):
        with _raises(ValueError, "bogus"):
            self._attend(score="bogus")

    def test_unknown_mode(self):
        with _raises(ValueError, "semi_local"):
            self._attend(mode="semi_local", window=2)

    def test_missing_score_params(self):
        with _raises(ValueError, "w_a"):
            self._attend(params=None)
        with _raises(ValueError, "w_a"):
            self._attend(params={"w_p": self.params["w_p"], "v_p": self.params["v_p"]})

    def test_missing_local_p_params(self):
        with _raises(ValueError, "w_p"):
            self._attend(params={"w_a": self.params["w_a"], "v_p": self.params["v_p"]}, mode="local_p", window=2)
        with _raises(ValueError, "v_p"):
            self._attend(params={"w_a": self.params["w_a"], "w_p": self.params["w_p"]}, mode="local_p", window=2)

    @parameterized.parameters("local_m", "local_p")
    def test_window_none_with_local_mode(self, mode):
        with _raises(ValueError, "window"):
            self._attend(mode=mode, window=None)

    @parameterized.parameters("local_m", "local_p")
    def test_negative_window(self, mode):
        with _raises(ValueError, -1):
            self._attend(mode=mode, window=-1)

    def test_location_more_keys_than_s_max(self):
        rng = np.random.default_rng(24)
        w_a = jnp.asarray(rng.standard_normal((DQ, S - 1)), jnp.float32)  # S_max = S - 1 < S.
        with _raises(ValueError, S - 1, S):
            self._attend(score="location", params={"w_a": w_a})

    def test_query_positions_shape(self):
        positions = jnp.zeros((B, T + 1), jnp.int32)
        with _raises(_BAD, positions.shape):
            self._attend(mode="local_m", window=1, query_positions=positions)

    def test_key_lengths_shape(self):
        lengths = jnp.full((B + 1,), S)
        with _raises(_BAD, lengths.shape):
            self._attend(mode="local_p", window=1, key_lengths=lengths)



class AttendFromLogitsTest(parameterized.TestCase):
    """attend_from_logits: the global path of attend for callers that computed the logits themselves."""

    def test_equals_attend_with_the_same_score(self):
        rng = np.random.default_rng(7)
        query, key, value, mask, params = (
            rng.standard_normal((B, T, DQ)).astype(np.float32),
            rng.standard_normal((B, S, DK)).astype(np.float32),
            rng.standard_normal((B, S, DV)).astype(np.float32),
            ref.padding_mask(LENGTHS, S),
            ref.random_params(rng, "additive", DQ, DK, hidden_dim=A, max_keys=S_MAX, local_p=False),
        )
        logits = aj.compute_score("additive", query, key, params)
        got_context, got_weights = context.attend_from_logits(logits, value, mask)
        want_context, want_weights = aj.attend(query, key, value, mask, score="additive", params=params)
        chex.assert_trees_all_close((got_context, got_weights), (want_context, want_weights), atol=1e-6)
        ref_weights = ref.masked_softmax(np.asarray(logits, np.float64), np.broadcast_to(mask[:, None], (B, T, S)))
        np.testing.assert_allclose(got_weights, ref_weights, rtol=1e-5, atol=1e-7)

    def test_nan_values_under_padding_do_not_leak(self):
        rng = np.random.default_rng(8)
        logits = rng.standard_normal((B, T, S)).astype(np.float32)
        value = rng.standard_normal((B, S, DV)).astype(np.float32)
        value[1, LENGTHS[1]:] = np.nan
        out, _ = context.attend_from_logits(logits, value, ref.padding_mask(LENGTHS, S))
        self.assertTrue(np.all(np.isfinite(np.asarray(out))))

    def test_rejects_value_that_does_not_fit(self):
        with _raises(ValueError, (B, T, S), (B, S + 1, DV)):
            context.attend_from_logits(jnp.zeros((B, T, S)), jnp.zeros((B, S + 1, DV)))


# ----------------------------------------------------------------------------------------------------------
# Reliability (issue 9): NaN padding and gradients, key_lengths, local-p spans, empty sequences, bad input.


def _poisoned_case(score, mode, seed):
    """A [B, T, S] mask with a dead key column, a fully masked query row and padding; inputs with NaN/inf there.

    Returns (clean, poisoned, mask, params): clean/poisoned are (query, key, value) numpy float32 tuples that
    differ only in rows no valid pair uses (keys/values nobody attends, the query that attends nothing).
    """
    query, key, value, _, params = _case(score, seed=seed, mode=mode, mask_kind="none")
    rng = np.random.default_rng(seed)
    mask = ref.padding_mask([S, 4], S)[:, None, :] & (rng.random((B, T, S)) < 0.8)
    mask[:, :, 0] = True
    mask[0, :, 2] = False  # key 2 of row 0: attended by nobody
    mask[1, 1] = False  # query 1 of row 1: attends nothing
    dead_key = ~mask.any(axis=1)  # [B, S]
    dead_query = ~mask.any(axis=2)  # [B, T]
    p_query, p_key, p_value = query.copy(), key.copy(), value.copy()
    p_key[dead_key] = np.nan
    p_value[dead_key] = np.inf
    p_query[dead_query] = np.nan
    return (query, key, value), (p_query, p_key, p_value), mask, params


def _value_and_grads(score, mode, inputs, mask, params, **kw):
    cot = jnp.asarray(np.random.default_rng(99).standard_normal((B, T, DV)), jnp.float32)

    def loss(q, k, v, p):
        ctx, weights = context.attend(q, k, v, jnp.asarray(mask), score=score, params=p, mode=mode, window=2, **kw)
        return jnp.sum(ctx * cot) + jnp.sum(weights * jnp.arange(S, dtype=jnp.float32)), (ctx, weights)

    (_, outs), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*map(_j, (*inputs, params)))
    return outs, grads


class AttendNanPaddingGradientTest(parameterized.TestCase):
    """NaN/inf in keys and values nobody attends, and in queries that attend nothing, change nothing.

    Before the fix, scores were computed on the raw keys and only the values were zeroed: the forward pass was
    clean but d query = sum_s d logits_s k_s = 0 * NaN = NaN on the live rows.
    """

    @parameterized.named_parameters(
        *[dict(testcase_name=f"{mode}_{score}", score=score, mode=mode) for mode in MODES for score in ALL_SCORES])
    def test_output_and_gradients_equal_the_clean_ones(self, score, mode):
        clean, poisoned, mask, params = _poisoned_case(score, mode, seed=31)
        (ctx_c, w_c), grads_c = _value_and_grads(score, mode, clean, mask, params)
        (ctx_p, w_p), grads_p = _value_and_grads(score, mode, poisoned, mask, params)
        for name, got in (("context", ctx_p), ("weights", w_p), *zip(("d_query", "d_key", "d_value"), grads_p[:3]),
                          *((f"d_{n}", g) for n, g in grads_p[3].items())):
            self.assertTrue(np.all(np.isfinite(np.asarray(got))), f"{name} is not finite")
        chex.assert_trees_all_close((ctx_p, w_p), (ctx_c, w_c), rtol=1e-6, atol=1e-6)
        chex.assert_trees_all_close(grads_p, grads_c, rtol=1e-6, atol=1e-6)
        # The dead rows get exactly zero gradients, and the live query rows a nonzero one.
        g_q, g_k, g_v = (np.asarray(g) for g in grads_p[:3])
        np.testing.assert_array_equal(g_q[1, 1], 0.0)
        np.testing.assert_array_equal(g_k[0, 2], 0.0)
        np.testing.assert_array_equal(g_v[0, 2], 0.0)
        self.assertTrue(np.any(g_v[0] != 0.0) and np.any(g_q[0] != 0.0))
        # And the clean result is the float64 reference.
        want_ctx, want_w = ref.attend(*clean, mask, score=score, params=params, mode=mode, window=2)
        ref.assert_close(w_c, want_w)
        ref.assert_close(ctx_c, want_ctx)

    @parameterized.parameters("dot", "general", "additive")
    def test_local_m_keys_outside_every_window(self, score):
        # T = 4 queries with D = 1 see keys 0..4; key 5 is in no window, so NaN there must not matter either.
        query, key, value, _, params = _case(score, seed=32, mode="local_m", mask_kind="none")
        poisoned_key, poisoned_value = key.copy(), value.copy()
        poisoned_key[:, S - 1] = np.nan
        poisoned_value[:, S - 1] = np.nan
        mask = np.ones((B, S), bool)

        def run(k, v):
            def loss(q, k, v, p):
                ctx, _ = context.attend(q, k, v, jnp.asarray(mask), score=score, params=p, mode="local_m", window=1)
                return jnp.sum(ctx ** 2), ctx
            return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*map(_j, (query, k, v, params)))

        (_, ctx_c), grads_c = run(key, value)
        (_, ctx_p), grads_p = run(poisoned_key, poisoned_value)
        chex.assert_tree_all_finite((ctx_p, grads_p))
        chex.assert_trees_all_close((ctx_p, grads_p), (ctx_c, grads_c), rtol=1e-6, atol=1e-6)

    def test_attend_from_logits_nan_in_masked_logits_and_values(self):
        rng = np.random.default_rng(33)
        logits = rng.standard_normal((B, T, S)).astype(np.float32)
        value = rng.standard_normal((B, S, DV)).astype(np.float32)
        mask = ref.padding_mask(LENGTHS, S)
        p_logits, p_value = logits.copy(), value.copy()
        p_logits[1, :, LENGTHS[1]:] = np.nan
        p_value[1, LENGTHS[1]:] = np.nan

        def run(lg, v):
            fn = lambda lg, v: jnp.sum(context.attend_from_logits(lg, v, jnp.asarray(mask))[0] ** 2)
            return jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(lg), jnp.asarray(v))

        got, want = run(p_logits, p_value), run(logits, value)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


class ZeroUnattendedTest(parameterized.TestCase):
    """The dead-row zeroing that every score runs on its inputs first."""

    def test_dead_rows_become_zeros_and_live_rows_stay(self):
        valid = np.zeros((2, 3, 4), bool)
        valid[0, :2, :3] = True  # batch 0: queries 0-1 attend keys 0-2; batch 1 attends nothing
        query = np.full((2, 3, 5), np.nan, np.float32)
        key = np.full((2, 4, 6), np.inf, np.float32)
        query[0, :2], key[0, :3] = 1.0, 2.0
        got_query, got_key = context.zero_unattended(jnp.asarray(valid), jnp.asarray(query), jnp.asarray(key))
        want_query = np.where(valid.any(2)[..., None], query, 0.0)
        want_key = np.where(valid.any(1)[..., None], key, 0.0)
        np.testing.assert_array_equal(got_query, want_query)
        np.testing.assert_array_equal(got_key, want_key)
        (only_key,) = context.zero_unattended_keys(jnp.asarray(valid), jnp.asarray(key))
        np.testing.assert_array_equal(only_key, want_key)
        self.assertIs(context.zero_unattended_keys(None, key)[0], key)


class AttendKeyLengthsTest(parameterized.TestCase):
    """key_lengths is a mask in every mode (before the fix it was ignored in global and local-m)."""

    @parameterized.parameters(*MODES)
    def test_key_lengths_equal_the_padding_mask(self, mode):
        query, key, value, _, params = _case("general", seed=40, mode=mode, mask_kind="bs")
        lengths = np.array([S - 1, 3], np.int32)
        kw = dict(score="general", params=_j(params), mode=mode, window=2)
        ctx_l, w_l = context.attend(*map(_j, (query, key, value)), None, key_lengths=jnp.asarray(lengths), **kw)
        ctx_m, w_m = context.attend(*map(_j, (query, key, value, ref.padding_mask(lengths, S))), **kw)
        np.testing.assert_array_equal(np.asarray(w_l)[1, :, 3:], 0.0)
        np.testing.assert_array_equal(np.asarray(w_l)[0, :, S - 1], 0.0)
        chex.assert_trees_all_close((ctx_l, w_l), (ctx_m, w_m), rtol=1e-6, atol=1e-7)
        want_ctx, want_w = ref.attend(query, key, value, ref.padding_mask(lengths, S), score="general",
                                      params=params, mode=mode, window=2)
        ref.assert_close(w_l, want_w)
        ref.assert_close(ctx_l, want_ctx)

    @parameterized.parameters(*MODES)
    def test_key_lengths_combine_with_a_3d_mask(self, mode):
        query, key, value, mask, params = _case("dot", seed=41, mode=mode, mask_kind="bts")
        lengths = np.array([4, 2], np.int32)
        kw = dict(score="dot", params=_j(params), mode=mode, window=2)
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)), key_lengths=jnp.asarray(lengths), **kw)
        combined = mask & ref.padding_mask(lengths, S)[:, None, :]
        ctx_m, w_m = context.attend(*map(_j, (query, key, value, combined)), **kw)
        chex.assert_trees_all_close((ctx, weights), (ctx_m, w_m), rtol=1e-6, atol=1e-7)
        self.assertTrue(np.all(np.asarray(weights)[~combined] == 0.0))

    def test_key_lengths_errors(self):
        query, key, value, _, _ = _case("dot", seed=42, mask_kind="none")
        with _raises(TypeError, "key_lengths", "float32"):
            context.attend(*map(_j, (query, key, value)), key_lengths=jnp.full((B,), 3.0))
        with _raises(ValueError, "key_lengths", (B + 1,)):
            context.attend(*map(_j, (query, key, value)), key_lengths=jnp.full((B + 1,), 3))
        with _raises(TypeError, "key_lengths", "list"):
            context.attend(*map(_j, (query, key, value)), key_lengths=[3, 3])


class LocalPSpanTest(parameterized.TestCase):
    """Local-p centres p_t on each row's valid span (before the fix, p_t = S_b sigmoid(.) assumed right padding)."""

    def _draw(self, seed, num_valid):
        rng = np.random.default_rng(seed)
        query = rng.standard_normal((B, T, DQ)).astype(np.float32)
        key = rng.standard_normal((B, S, DK)).astype(np.float32)
        value = rng.standard_normal((B, S, DV)).astype(np.float32)
        params = ref.random_params(rng, "general", DQ, DK, hidden_dim=A, local_p=True)
        return query, key, value, params

    @staticmethod
    def _numpy_local_p(query, key, value, mask3, params, window):
        """Luong eq. 7-10 per (b, t) in float64 on the row's valid span, written out plainly."""
        q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
        w_a, w_p, v_p = (np.asarray(params[n], np.float64) for n in ("w_a", "w_p", "v_p"))
        weights = np.zeros((B, T, S))
        for b in range(B):
            for t in range(T):
                valid = np.flatnonzero(mask3[b, t])
                if valid.size == 0:
                    continue
                first, extent = valid[0], valid[-1] - valid[0] + 1
                p = first + extent / (1.0 + np.exp(-(np.tanh(q[b, t] @ w_p) @ v_p)))  # eq. 9 on the span
                inside = [s for s in valid if abs(s - np.floor(p)) <= window]
                if not inside:
                    continue
                logits = np.array([q[b, t] @ w_a @ k[b, s] for s in inside])  # eq. 8, general
                align = np.exp(logits - logits.max())
                align /= align.sum()  # eq. 7 over the window
                for s, a in zip(inside, align):
                    weights[b, t, s] = a * np.exp(-((s - p) ** 2) / (2.0 * (window / 2.0) ** 2))  # eq. 10
        return np.einsum("bts,bsv->btv", weights, v), weights

    def test_left_padding_matches_the_numpy_reference_and_right_padding(self):
        query, key, value, params = self._draw(50, None)
        lengths = np.array([S, 3])
        right = ref.padding_mask(lengths, S)  # valid keys first
        left = right[:, ::-1].copy()  # valid keys last
        # The left-padded sentence holds the same keys, moved to the end.
        key_left, value_left = key.copy(), value.copy()
        key_left[1, S - 3:], value_left[1, S - 3:] = key[1, :3], value[1, :3]
        key_left[1, :S - 3], value_left[1, :S - 3] = np.nan, np.nan  # the padding: never read
        kw = dict(score="general", params=_j(params), mode="local_p", window=1)
        ctx_r, w_r = context.attend(*map(_j, (query, key, value, right)), **kw)
        ctx_l, w_l = context.attend(*map(_j, (query, key_left, value_left, left)), **kw)
        want_ctx, want_w = self._numpy_local_p(query, np.nan_to_num(key_left), np.nan_to_num(value_left),
                                               np.broadcast_to(left[:, None], (B, T, S)), params, window=1)
        ref.assert_close(w_l, want_w)
        ref.assert_close(ctx_l, want_ctx)
        np.testing.assert_array_equal(np.asarray(w_l)[1, :, :S - 3], 0.0)
        # Same sentence, same attention: only the key positions move.
        ref.assert_close(ctx_l, ctx_r)
        ref.assert_close(np.asarray(w_l)[1, :, S - 3:], np.asarray(w_r)[1, :, :3])

    def test_3d_mask_matches_the_numpy_reference(self):
        query, key, value, params = self._draw(51, None)
        rng = np.random.default_rng(52)
        mask = np.zeros((B, T, S), bool)
        for b in range(B):
            for t in range(T):
                first = int(rng.integers(0, S - 1))
                mask[b, t, first:int(rng.integers(first + 1, S + 1))] = True
        mask[1, 2] = False  # a query with nothing to attend
        kw = dict(score="general", params=_j(params), mode="local_p", window=1)
        ctx, weights = context.attend(*map(_j, (query, key, value, mask)), **kw)
        want_ctx, want_w = self._numpy_local_p(query, key, value, mask, params, window=1)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)
        self.assertTrue(np.all(np.asarray(weights)[~mask] == 0.0))
        # Every query with a valid key puts weight on it: the window never points only into padding.
        has_key = mask.any(-1)
        self.assertTrue(np.all(np.asarray(weights).sum(-1)[has_key] > 0.0))

    def test_valid_span(self):
        mask = np.array([[True, True, False, False], [False, True, False, True], [False] * 4])
        start, extent = alignment.valid_span(jnp.asarray(mask))
        np.testing.assert_array_equal(start, [0, 1, 0])
        np.testing.assert_array_equal(extent, [2, 3, 0])
        want_start, want_extent = ref.valid_span(mask)
        np.testing.assert_array_equal(start, want_start)
        np.testing.assert_array_equal(extent, want_extent)
        start, extent = alignment.valid_span(jnp.zeros((2, 0), bool))
        chex.assert_shape((start, extent), (2,))

    def test_local_p_position_with_starts_matches_reference(self):
        query, _, _, params = self._draw(53, None)
        lengths = jnp.asarray([[3, 2, 6, 1], [4, 4, 0, 2]], jnp.int32)
        starts = jnp.asarray([[1, 0, 0, 5], [2, 2, 0, 3]], jnp.int32)
        got = alignment.local_p_position(_j(query), _j(params["w_p"]), _j(params["v_p"]), lengths, starts)
        ref.assert_close(got, ref.local_p_position(query, params["w_p"], params["v_p"], lengths, starts))
        with _raises(ValueError, "key_lengths", (B, T + 1)):
            alignment.local_p_position(_j(query), _j(params["w_p"]), _j(params["v_p"]), jnp.zeros((B, T + 1), int))
        with _raises(ValueError, "key_starts"):
            alignment.local_p_position(_j(query), _j(params["w_p"]), _j(params["v_p"]), lengths, starts[:, :1])


class AttendEmptySequenceTest(parameterized.TestCase):
    """S = 0 gives a zero context and empty weights; T = 0 empty outputs; never an error (issue 9)."""

    @parameterized.product(mode=MODES, score=("general", "location", "additive"), sizes=((T, 0), (0, S), (0, 0)))
    def test_empty(self, mode, score, sizes):
        num_queries, num_keys = sizes
        rng = np.random.default_rng(60)
        params = ref.random_params(rng, score, DQ, DK, hidden_dim=A, max_keys=S_MAX, local_p=True)
        query = jnp.asarray(rng.standard_normal((B, num_queries, DQ)), jnp.float32)
        key = jnp.asarray(rng.standard_normal((B, num_keys, DK)), jnp.float32)
        value = jnp.asarray(rng.standard_normal((B, num_keys, DV)), jnp.float32)

        def loss(q, k, v, p):
            ctx, weights = context.attend(q, k, v, jnp.ones((B, num_keys), bool), score=score, params=p, mode=mode,
                                          window=2, key_lengths=jnp.full((B,), num_keys))
            return jnp.sum(ctx), (ctx, weights)

        (_, (ctx, weights)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
            query, key, value, _j(params))
        chex.assert_shape(ctx, (B, num_queries, DV))
        chex.assert_shape(weights, (B, num_queries, num_keys))
        np.testing.assert_array_equal(ctx, 0.0)
        chex.assert_tree_all_finite(grads)
        for g in jax.tree_util.tree_leaves(grads):
            np.testing.assert_array_equal(g, 0.0)

    def test_attend_from_logits_and_masked_softmax_with_s_zero(self):
        ctx, weights = context.attend_from_logits(jnp.zeros((B, T, 0)), jnp.zeros((B, 0, DV)))
        chex.assert_shape((ctx, weights), ((B, T, DV), (B, T, 0)))
        np.testing.assert_array_equal(ctx, 0.0)
        weights, lse = alignment.masked_softmax_with_lse(jnp.zeros((B, T, 0)))
        chex.assert_shape(weights, (B, T, 0))
        np.testing.assert_array_equal(lse, alignment.EMPTY_ROW_LSE)


class AttendBadInputTest(parameterized.TestCase):
    """Lists, zero features and misused arguments raise a clear error naming the argument (issue 9)."""

    def setUp(self):
        super().setUp()
        query, key, value, mask, params = _case("general", seed=70, mode="local_p")
        self.args = dict(query=query, key=key, value=value, mask=mask)
        self.params = params

    def _attend(self, **overrides):
        args = {n: _j(x) for n, x in self.args.items()}
        args.update(overrides)
        kw = dict(score="general", params=_j(self.params), mode="local_p", window=2)
        return context.attend(args.pop("query"), args.pop("key"), args.pop("value"), args.pop("mask"), **kw, **args)

    @parameterized.parameters("query", "key", "value", "mask")
    def test_python_list_names_the_argument(self, name):
        with _raises(TypeError, name, "list"):
            self._attend(**{name: self.args[name].tolist()})

    def test_list_params_and_positions(self):
        with _raises(TypeError, "w_p", "list"):
            context.attend(*map(_j, self.args.values()), score="general", mode="local_p", window=2,
                           params={**_j(self.params), "w_p": self.params["w_p"].tolist()})
        with _raises(TypeError, "query_positions", "list"):
            context.attend(*map(_j, self.args.values()), score="general", params=_j(self.params), mode="local_m",
                           window=2, query_positions=[[0] * T] * B)
        with _raises(TypeError, "params", "tuple"):
            context.attend(*map(_j, self.args.values()), score="general", params=(self.params["w_a"],))

    @parameterized.parameters("query", "key", "value")
    def test_zero_features(self, name):
        shape = _j(self.args[name]).shape[:2] + (0,)
        with _raises(ValueError, "feature", shape):
            self._attend(**{name: jnp.zeros(shape)})

    def test_local_p_window_zero(self):
        with _raises(ValueError, "window", "0"):
            context.attend(*map(_j, self.args.values()), score="general", params=_j(self.params), mode="local_p",
                           window=0)

    def test_non_bool_gaussian_flag(self):
        with _raises(TypeError, "gaussian", "str"):
            alignment.local_alignment(jnp.zeros((B, T, S)), jnp.zeros((B, T)), 1, gaussian="yes")

    def test_sigma_must_be_a_positive_number(self):
        for bad in (0.0, -1.0, "1", True):
            with _raises(ValueError, "sigma", repr(bad)):
                alignment.gaussian_window(jnp.zeros((B, T)), S, bad)


if __name__ == "__main__":
    absltest.main()
