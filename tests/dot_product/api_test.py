"""Tests for attention_jax/dot_product.py.

References: jax.nn.dot_product_attention (implementation="xla") and a float64 numpy transcription of
Vaswani et al. 2017 (arXiv:1706.03762) eq. 1, softmax(Q K^T / sqrt(H) + bias) V, with GQA head sharing
(Ainslie et al. 2023, arXiv:2305.13245) and every mask source written out position by position.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product import api as dot_product
from attention_jax.dot_product.api import EMPTY_ROW_LSE, dot_product_attention
from attention_jax.dot_product.blockwise import BlockwiseBackend
from attention_jax.dot_product.xla import XlaBackend
from attention_jax.kernels import platform
from tests.dot_product import conformance

B, T, S, N, K, H = 2, 4, 6, 4, 2, 8
TOL = {"float32": 1e-5, "bfloat16": 2e-2}


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _qkv(seed, t=T, s=S, n=N, k=K, h=H, dtype=jnp.float32, b=B):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h)).astype(np.float32)
    key = rng.standard_normal((b, s, k, h)).astype(np.float32)
    v = rng.standard_normal((b, s, k, h)).astype(np.float32)
    return jnp.asarray(q, dtype), jnp.asarray(key, dtype), jnp.asarray(v, dtype)


def _close(actual, expected, dtype="float32", err_msg=""):
    tol = TOL[str(dtype)]
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=tol, atol=tol, err_msg=err_msg
    )


# ----------------------------------------------------------------------------------------------------------
# Float64 reference.


def _reference_mask(b, t, s, n, mask=None, is_causal=False, window=None, q_len=None, k_len=None, q_seg=None,
                    kv_seg=None):
    """[B, N, T, S] bool, written out one position at a time."""
    out = np.ones((b, n, t, s), bool)
    for ib in range(b):
        for ih in range(n):
            for it in range(t):
                for js in range(s):
                    ok = True
                    if mask is not None:
                        ok &= bool(mask[ib if mask.shape[0] > 1 else 0, ih if mask.shape[1] > 1 else 0, it, js])
                    if is_causal:
                        ok &= js <= it
                    if window is not None:
                        left, right = window
                        ok &= left is None or js >= it - left
                        ok &= right is None or js <= it + right
                    if q_len is not None:
                        ok &= it < q_len[ib]
                    if k_len is not None:
                        ok &= js < k_len[ib]
                    if q_seg is not None:
                        ok &= q_seg[ib, it] == kv_seg[ib, js]
                    out[ib, ih, it, js] = ok
    return out


def _reference(q, k, v, full_mask, bias=None, scale=None):
    """Eq. 1 in float64. Returns output [B,T,N,H], weights [B,N,T,S], lse [B,N,T] (EMPTY_ROW_LSE when empty)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    g = n // k.shape[2]
    scale = 1.0 / np.sqrt(h) if scale is None else scale
    out = np.zeros((b, t, n, h))
    weights = np.zeros((b, n, t, k.shape[1]))
    lse = np.full((b, n, t), EMPTY_ROW_LSE)
    for ib in range(b):
        for ih in range(n):
            kh = ih // g  # query head ih reads key/value head ih // G
            for it in range(t):
                valid = full_mask[ib, ih, it]
                if not valid.any():
                    continue
                logits = k[ib, :, kh, :] @ q[ib, it, ih, :] * scale
                if bias is not None:
                    logits = logits + np.asarray(bias, np.float64)[min(ib, bias.shape[0] - 1),
                                                                   min(ih, bias.shape[1] - 1), it]
                m = logits[valid].max()
                e = np.where(valid, np.exp(np.where(valid, logits, m) - m), 0.0)
                weights[ib, ih, it] = e / e.sum()
                lse[ib, ih, it] = np.log(e.sum()) + m
                out[ib, it, ih] = weights[ib, ih, it][valid] @ v[ib, valid, kh, :]
    return out, weights, lse


# ----------------------------------------------------------------------------------------------------------


class MatchesJaxNnTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name="plain", kw={}, t=T),
        dict(testcase_name="bool_mask", kw={"mask": "mask"}, t=T),
        dict(testcase_name="bias", kw={"bias": "bias"}, t=T),
        dict(testcase_name="bias_broadcast", kw={"bias": "bias11"}, t=T),
        dict(testcase_name="causal_square", kw={"is_causal": True}, t=S),
        dict(testcase_name="causal_t_lt_s", kw={"is_causal": True}, t=T),
        dict(testcase_name="window", kw={"local_window_size": (1, 2)}, t=S),
        dict(testcase_name="window_t_ne_s", kw={"local_window_size": (2, 0)}, t=T),
        dict(testcase_name="window_int", kw={"local_window_size": 1}, t=S),
    )
    def test_matches_jax_nn(self, kw, t):
        for dtype in (jnp.float32, jnp.bfloat16):
            q, k, v = _qkv(0, t=t, dtype=dtype)
            rng = np.random.default_rng(1)
            ours, theirs = dict(kw), {}
            if kw.get("mask") == "mask":
                m = rng.random((B, N, t, S)) < 0.7
                m[..., 0] = True  # no fully masked row: jax.nn gives those non-zero output
                ours["mask"] = theirs["mask"] = jnp.asarray(m)
            if kw.get("bias") == "bias":
                ours["bias"] = theirs["bias"] = jnp.asarray(rng.standard_normal((B, N, t, S)), jnp.float32)
            if kw.get("bias") == "bias11":
                ours["bias"] = theirs["bias"] = jnp.asarray(rng.standard_normal((1, 1, t, S)), jnp.float32)
            if kw.get("is_causal"):
                theirs["is_causal"] = True
            if "local_window_size" in kw:
                theirs["local_window_size"] = kw["local_window_size"]
            got = self.variant(lambda q, k, v: dot_product_attention(q, k, v, **ours))(q, k, v)
            want = jax.nn.dot_product_attention(q, k, v, implementation="xla", **theirs)
            chex.assert_shape(got, (B, t, N, H))
            self.assertEqual(got.dtype, dtype)
            _close(got, want.astype(jnp.float32), jnp.dtype(dtype).name)

    @parameterized.named_parameters(
        dict(testcase_name="gqa", k=2), dict(testcase_name="mqa", k=1), dict(testcase_name="mha", k=N)
    )
    def test_head_sharing_matches_jax_nn(self, k):
        q, key, v = _qkv(2, k=k)
        _close(dot_product_attention(q, key, v, is_causal=True),
               jax.nn.dot_product_attention(q, key, v, is_causal=True, implementation="xla"))

    def test_lengths_match_jax_nn_on_valid_rows_and_are_zero_elsewhere(self):
        q, k, v = _qkv(3)
        q_len = jnp.array([2, 4], jnp.int32)
        k_len = jnp.array([0, 3], jnp.int32)  # batch 0: every key padded -> every row fully masked
        got = dot_product_attention(q, k, v, query_seq_lengths=q_len, key_value_seq_lengths=k_len)
        want = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=q_len, key_value_seq_lengths=k_len,
                                            implementation="xla")
        live = (np.arange(T)[None, :] < np.asarray(q_len)[:, None]) & (np.asarray(k_len) > 0)[:, None]  # [B, T]
        self.assertTrue(live.any() and not live.all())
        _close(np.asarray(got)[live], np.asarray(want)[live])
        np.testing.assert_array_equal(np.asarray(got)[~live], 0.0)


class ReferenceTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_everything_combined_matches_float64_reference(self):
        t = s = 6
        q, k, v = _qkv(4, t=t, s=s)
        rng = np.random.default_rng(5)
        mask = rng.random((B, 1, t, s)) < 0.8
        bias = rng.standard_normal((1, N, t, s)).astype(np.float32)
        seg = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]], np.int32)
        q_len, k_len = np.array([6, 5], np.int32), np.array([5, 6], np.int32)
        window = (2, None)
        full = _reference_mask(B, t, s, N, mask=mask, is_causal=True, window=window, q_len=q_len, k_len=k_len,
                               q_seg=seg, kv_seg=seg)
        self.assertTrue(full.any(-1).any() and not full.any(-1).all())  # some rows valid, some fully masked
        want_out, want_w, want_lse = _reference(q, k, v, full, bias=bias, scale=0.3)
        fn = self.variant(lambda q, k, v: dot_product_attention(
            q, k, v, jnp.asarray(bias), jnp.asarray(mask), scale=0.3, is_causal=True, query_seq_lengths=q_len,
            key_value_seq_lengths=k_len, segment_ids=jnp.asarray(seg), local_window_size=window, return_weights=True,
            return_lse=True))
        got = fn(q, k, v)
        self.assertIsInstance(got, dot_product.DotProductAttentionOutput)
        chex.assert_shape([got.output, got.weights, got.lse], [(B, t, N, H), (B, N, t, s), (B, N, t)])
        chex.assert_type([got.weights, got.lse], [jnp.float32, jnp.float32])
        _close(got.output, want_out)
        _close(got.weights, want_w)
        np.testing.assert_allclose(np.asarray(got.lse, np.float64), want_lse, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(got.lse)[~full.any(-1)], EMPTY_ROW_LSE)

    def test_gqa_bfloat16_matches_reference(self):
        q, k, v = _qkv(6, dtype=jnp.bfloat16)
        full = _reference_mask(B, T, S, N, is_causal=True)
        got = dot_product_attention(q, k, v, is_causal=True, return_lse=True)
        self.assertEqual(got.output.dtype, jnp.bfloat16)
        self.assertEqual(got.lse.dtype, jnp.float32)
        self.assertIsNone(got.weights)
        out, _, lse = _reference(q, k, v, full)
        _close(got.output.astype(jnp.float32), out, "bfloat16")
        _close(got.lse, lse, "bfloat16")

    def test_segment_ids_pair_with_t_ne_s(self):
        q, k, v = _qkv(7)
        q_seg = np.array([[0, 0, 1, 1], [0, 1, 1, 1]], np.int32)
        kv_seg = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]], np.int32)
        full = _reference_mask(B, T, S, N, q_seg=q_seg, kv_seg=kv_seg)
        got = dot_product_attention(q, k, v, segment_ids=(jnp.asarray(q_seg), jnp.asarray(kv_seg)))
        _close(got, _reference(q, k, v, full)[0])

    def test_check_grads(self):
        q, k, v = _qkv(8, t=3, s=4, n=2, k=1, h=4, b=1)
        mask = jnp.asarray(np.array([[[[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 0]]]], bool))
        bias = jnp.asarray(np.random.default_rng(9).standard_normal((1, 2, 3, 4)), jnp.float32)
        fn = lambda q, k, v: dot_product_attention(q, k, v, bias, mask, is_causal=False)
        jtu.check_grads(fn, (q, k, v), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-3)


class MaskingBehaviourTest(chex.TestCase):

    def test_fully_masked_rows_zero_output_zero_finite_grads(self):
        q, k, v = _qkv(10)
        mask = np.ones((B, 1, T, S), bool)
        mask[0, 0, 1] = False  # one row with no key
        mask = jnp.asarray(mask)

        def loss(q, k, v):
            res = dot_product_attention(q, k, v, mask=mask, return_weights=True, return_lse=True)
            return jnp.sum(res.output[0, 1] ** 2) + jnp.sum(res.lse[0, :, 1]) + jnp.sum(res.weights[0, :, 1])

        res = dot_product_attention(q, k, v, mask=mask, return_weights=True, return_lse=True)
        np.testing.assert_array_equal(np.asarray(res.output[0, 1]), 0.0)
        np.testing.assert_array_equal(np.asarray(res.weights[0, :, 1]), 0.0)
        np.testing.assert_array_equal(np.asarray(res.lse[0, :, 1]), EMPTY_ROW_LSE)
        self.assertTrue(np.isfinite(np.asarray(res.lse)).all())
        grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        for g in grads:
            self.assertTrue(np.isfinite(np.asarray(g)).all())
            np.testing.assert_array_equal(np.asarray(g), 0.0)

    def test_nan_padding_does_not_leak(self):
        q, k, v = _qkv(11)
        k_len = jnp.array([4, 6], jnp.int32)
        q_len = jnp.array([3, 4], jnp.int32)
        pk = k.at[0, 4:].set(jnp.nan)
        pv = v.at[0, 4:].set(jnp.nan)
        pq = q.at[0, 3:].set(jnp.nan)

        def loss(q, k, v):
            return jnp.sum(dot_product_attention(q, k, v, query_seq_lengths=q_len, key_value_seq_lengths=k_len,
                                                 is_causal=True))

        clean = dot_product_attention(q, k, v, query_seq_lengths=q_len, key_value_seq_lengths=k_len, is_causal=True)
        dirty = dot_product_attention(pq, pk, pv, query_seq_lengths=q_len, key_value_seq_lengths=k_len, is_causal=True)
        np.testing.assert_array_equal(np.asarray(dirty), np.asarray(clean))
        g_clean = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        g_dirty = jax.grad(loss, argnums=(0, 1, 2))(pq, pk, pv)
        for gc, gd in zip(g_clean, g_dirty):
            self.assertTrue(np.isfinite(np.asarray(gd)).all())
            np.testing.assert_array_equal(np.asarray(gd), np.asarray(gc))

    def test_packed_segments_equal_separate_runs(self):
        q, k, v = _qkv(12, t=6, s=6)
        seg = jnp.asarray(np.array([[0, 0, 0, 1, 1, 1]] * B, np.int32))
        packed = dot_product_attention(q, k, v, segment_ids=seg, is_causal=True)
        first = dot_product_attention(q[:, :3], k[:, :3], v[:, :3], is_causal=True)
        second = dot_product_attention(q[:, 3:], k[:, 3:], v[:, 3:], is_causal=True)
        _close(packed, jnp.concatenate([first, second], axis=1))

    def test_causality_by_gradient(self):
        q, k, v = _qkv(13, t=5, s=5)
        for t in range(5):
            jac_k, jac_v = jax.grad(lambda k, v: jnp.sum(dot_product_attention(q, k, v, is_causal=True)[:, t]),
                                    argnums=(0, 1))(k, v)
            future = np.abs(np.asarray(jac_k)[:, t + 1:]).max(initial=0.0) + np.abs(
                np.asarray(jac_v)[:, t + 1:]).max(initial=0.0)
            self.assertEqual(future, 0.0)
            self.assertGreater(np.abs(np.asarray(jac_v)[:, : t + 1]).max(), 0.0)

    def test_masking_changes_nothing_outside_the_mask(self):
        q, k, v = _qkv(14)
        mask = np.ones((B, N, T, S), bool)
        mask[..., 5] = False
        got = dot_product_attention(q, k, v, mask=jnp.asarray(mask))
        want = dot_product_attention(q, k[:, :5], v[:, :5])
        _close(got, want)


class DropoutTest(absltest.TestCase):

    def test_rate_zero_equals_no_dropout(self):
        q, k, v = _qkv(15)
        np.testing.assert_array_equal(
            np.asarray(dot_product_attention(q, k, v, dropout_rate=0.0, dropout_rng=jax.random.PRNGKey(0))),
            np.asarray(dot_product_attention(q, k, v)))

    def test_deterministic_and_unbiased(self):
        q, k, v = _qkv(16)
        fn = jax.jit(lambda rng: dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng,
                                                       return_weights=True, return_lse=True))
        a, b = fn(jax.random.PRNGKey(1)), fn(jax.random.PRNGKey(1))
        np.testing.assert_array_equal(np.asarray(a.output), np.asarray(b.output))
        clean = dot_product_attention(q, k, v, return_lse=True)
        self.assertFalse(np.allclose(np.asarray(a.output), np.asarray(clean.output)))
        _close(a.lse, clean.lse)  # lse is before dropout
        dropped = np.asarray(a.weights)
        self.assertTrue(((dropped == 0) | (dropped > 0)).all() and (dropped == 0).any())
        outs = jax.vmap(lambda r: fn(r).output)(jax.random.split(jax.random.PRNGKey(2), 2000))
        np.testing.assert_allclose(np.asarray(outs).mean(0), np.asarray(clean.output), atol=0.08)

    def test_missing_rng_raises(self):
        q, k, v = _qkv(17)
        with _raises(ValueError, "dropout_rate=0.1", "dropout_rng"):
            dot_product_attention(q, k, v, dropout_rate=0.1)
        with _raises(ValueError, "1.0"):
            dot_product_attention(q, k, v, dropout_rate=1.0, dropout_rng=jax.random.PRNGKey(0))


class DispatchTest(absltest.TestCase):

    def test_supports(self):
        q, k, v = _qkv(18)
        self.assertEqual(dot_product.supports("xla", q, k, v, is_causal=True), (True, ""))
        ok, reason = dot_product.supports("no_such_backend", q, k, v)
        self.assertFalse(ok)
        self.assertIn("no_such_backend", reason)
        self.assertIn("xla", reason)

    def test_none_picks_xla_and_logs_once(self):
        q, k, v = _qkv(19)
        dot_product._LOGGED_CHOICES.clear()
        # The absl logger itself: other tests (the experiment CLI) may raise its level for the whole process.
        with self.assertLogs(logger=absl_logging.get_absl_logger(), level="INFO") as logs:
            a = dot_product_attention(q, k, v, implementation=None)
            dot_product_attention(q, k, v, implementation=None)
        self.assertEqual(sum("'xla'" in line for line in logs.output), 1)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(dot_product_attention(q, k, v, implementation="xla")))

    def test_unknown_name_raises(self):
        q, k, v = _qkv(20)
        with _raises(ValueError, "'magic'", "xla", "blockwise", "flash", "cudnn"):
            dot_product_attention(q, k, v, implementation="magic")

    def test_named_backend_that_cannot_run_raises_its_reason(self):
        q, k, v = _qkv(22)
        if jax.default_backend() == "cpu":
            with _raises(ValueError, "'flash' cannot run", "GPU or TPU"):
                dot_product_attention(q, k, v, implementation="flash")
        with _raises(ValueError, "'blockwise' cannot run", "dropout"):
            dot_product_attention(q, k, v, implementation="blockwise", dropout_rate=0.1, dropout_rng=jax.random.key(0))

    def test_registered_backend_is_used_and_unsupported_is_skipped(self):
        q, k, v = _qkv(21)
        calls = []

        def fake(call):
            calls.append(call.mask.dense_mask() is None)
            return XlaBackend()(call)

        saved_order, saved_registered = dict(dot_product._AUTO_ORDER), dict(dot_product._REGISTERED)
        try:
            # No built-in in the automatic order: only the registered backends are tried, in registration order.
            dot_product._AUTO_ORDER[platform()] = ()
            dot_product.register_backend("never", fake, lambda *a, **kw: (False, "never supports"))
            dot_product.register_backend("fake", fake, lambda *a, **kw: (True, ""))
            self.assertEqual(dot_product.auto_order(), ("never", "fake"))
            got = dot_product_attention(q, k, v, implementation=None)
            self.assertEqual(calls, [True])
            with _raises(ValueError, "never supports"):
                dot_product_attention(q, k, v, implementation="never")
        finally:
            dot_product._AUTO_ORDER.clear()
            dot_product._AUTO_ORDER.update(saved_order)
            dot_product._REGISTERED.clear()
            dot_product._REGISTERED.update(saved_registered)
        _close(got, dot_product_attention(q, k, v))

    def test_register_backend_never_replaces_a_built_in(self):
        q, k, v = _qkv(23)
        want = dot_product_attention(q, k, v, implementation="xla")
        for name in ("xla", "blockwise", "flash", "cudnn"):
            with _raises(ValueError, repr(name), "built-in"):
                dot_product.register_backend(name, lambda call: None, lambda call: (True, ""))
            with _raises(ValueError, repr(name), "built-in"):
                dot_product.register_backend(name, BlockwiseBackend(block_k=2))
        self.assertIs(dot_product.BUILTIN_BACKENDS["xla"], dot_product._lookup("xla"))
        np.testing.assert_array_equal(np.asarray(dot_product_attention(q, k, v, implementation="xla")),
                                      np.asarray(want))
        with self.assertRaises(TypeError):
            dot_product.BUILTIN_BACKENDS["xla"] = BlockwiseBackend()  # the table itself is read-only
        with _raises(ValueError, "non-empty string"):
            dot_product.register_backend("", lambda call: None, lambda call: (True, ""))
        with _raises(ValueError, "callable"):
            dot_product.register_backend("mine", lambda call: None, None)

    def test_register_a_backend_object_with_options(self):
        q, k, v = _qkv(24, t=9, s=11)
        saved = dict(dot_product._REGISTERED)
        try:
            dot_product.register_backend("blockwise_3", BlockwiseBackend(block_k=3))
            self.assertIn("blockwise_3", dot_product.registered_backends())
            got = dot_product_attention(q, k, v, is_causal=True, implementation="blockwise_3")
        finally:
            dot_product._REGISTERED.clear()
            dot_product._REGISTERED.update(saved)
        self.assertNotIn("blockwise_3", dot_product.registered_backends())
        _close(got, dot_product_attention(q, k, v, is_causal=True, implementation="xla"))


class BadInputTest(absltest.TestCase):

    def test_bad_inputs_raise_with_shapes(self):
        q, k, v = _qkv(22)
        cases = [
            (lambda: dot_product_attention(q[0], k, v), ValueError, ["rank 4", "(4, 4, 8)"]),
            (lambda: dot_product_attention(q, k[:1], v[:1]), ValueError, ["(2, 4, 4, 8)", "(1, 6, 2, 8)"]),
            (lambda: dot_product_attention(q, k, v[:, :5]), ValueError, ["(2, 6, 2, 8)", "(2, 5, 2, 8)"]),
            (lambda: dot_product_attention(q, k[..., :4], v[..., :4]), ValueError, ["(2, 4, 4, 8)", "(2, 6, 2, 4)"]),
            (lambda: dot_product_attention(q[:, :, :3], k, v), ValueError, ["N=3", "K=2"]),
            (lambda: dot_product_attention(q, k, v, mask=jnp.ones((B, 3, T, S), bool)), ValueError,
             ["(2, 3, 4, 6)", "N=4"]),
            (lambda: dot_product_attention(q, k, v, mask=jnp.ones((B, T, S), bool)), ValueError, ["(2, 4, 6)"]),
            (lambda: dot_product_attention(q, k, v, mask=jnp.ones((B, 1, T, S), jnp.int32)), TypeError, ["int32"]),
            (lambda: dot_product_attention(q, k, v, jnp.ones((B, 1, S, T))), ValueError, ["(2, 1, 6, 4)"]),
            (lambda: dot_product_attention(q, k, v, jnp.ones((3, 1, T, S))), ValueError, ["(3, 1, 4, 6)", "B=2"]),
            (lambda: dot_product_attention(q, k, v, segment_ids=jnp.zeros((B, T), jnp.int32)), ValueError,
             ["T=4", "S=6"]),
            (lambda: dot_product_attention(q, k, v, segment_ids=(jnp.zeros((B, T), jnp.int32),
                                                                  jnp.zeros((B, T), jnp.int32))), ValueError,
             ["(2, 6)", "(2, 4)"]),
            (lambda: dot_product_attention(q, k, v, segment_ids=(jnp.zeros((B, T)), jnp.zeros((B, S)))), TypeError,
             ["float32"]),
            (lambda: dot_product_attention(q, k, v, local_window_size=(-1, 2)), ValueError, ["left", "-1"]),
            (lambda: dot_product_attention(q, k, v, local_window_size=(1, -3)), ValueError, ["right", "-3"]),
            # An int is jax.nn's symmetric window now; a float is still rejected.
            (lambda: dot_product_attention(q, k, v, local_window_size=3.5), ValueError, ["3.5"]),
            (lambda: dot_product_attention(q, k, v, local_window_size=(1, 2, 3)), ValueError, ["(1, 2, 3)"]),
            (lambda: dot_product_attention(q, k, v, key_value_seq_lengths=jnp.array([1, 2, 3])), ValueError,
             ["(3,)", "(2,)"]),
            (lambda: dot_product_attention(q, k, v, query_seq_lengths=jnp.array([1.0, 2.0])), TypeError,
             ["float32"]),
            (lambda: dot_product_attention(q.astype(jnp.int32), k, v), TypeError, ["int32"]),
            # Flags are real bools; Python lists are not arrays.
            (lambda: dot_product_attention(q, k, v, is_causal="no"), TypeError, ["is_causal", "'no'"]),
            (lambda: dot_product_attention(q, k, v, is_causal=1), TypeError, ["is_causal", "int"]),
            (lambda: dot_product_attention(q, k, v, return_weights="yes"), TypeError, ["return_weights"]),
            (lambda: dot_product_attention(q, k, v, return_lse=None), TypeError, ["return_lse"]),
            (lambda: dot_product_attention(q, k, v, return_residual=1), TypeError, ["return_residual"]),
            (lambda: dot_product_attention(np.asarray(q).tolist(), k, v), TypeError, ["query", "list"]),
            (lambda: dot_product_attention(q, k, v, key_value_seq_lengths=[6, 6]), TypeError,
             ["key_value_seq_lengths", "list"]),
            (lambda: dot_product_attention(q, k, v, segment_ids=[[0] * T] * B), TypeError, ["segment_ids", "list"]),
            (lambda: dot_product_attention(q, k, v, mask=[[[[True] * S] * T]]), TypeError, ["mask", "list"]),
            (lambda: dot_product_attention(q, k, v, bias=[[[[0.0] * S] * T]]), TypeError, ["bias", "list"]),
            (lambda: dot_product_attention(q, k, v, scale="0.5"), ValueError, ["scale", "'0.5'"]),
            (lambda: dot_product_attention(q, k, v, scale=float("nan")), ValueError, ["scale", "nan"]),
            (lambda: dot_product_attention(q[..., :0], k[..., :0], v[..., :0]), ValueError, ["H=0", "(2, 4, 4, 0)"]),
            (lambda: dot_product_attention(q, k, v, implementation=3), TypeError, ["implementation", "3"]),
            (lambda: dot_product_attention(q, k, v, return_residual=True, return_lse=True), ValueError,
             ["return_residual", "return_lse"]),
        ]
        for fn, exc, fragments in cases:
            with _raises(exc, *fragments):
                fn()


class DropInForJaxNnTest(parameterized.TestCase):
    """The same keyword dict goes to jax.nn.dot_product_attention and to ours: the import can be swapped."""

    @parameterized.named_parameters(
        dict(testcase_name="plain", kwargs={}),
        dict(testcase_name="scale_bias", kwargs={"scale": 0.3, "bias": "bias"}),
        dict(testcase_name="mask", kwargs={"mask": "mask"}),
        dict(testcase_name="causal", kwargs={"is_causal": True}),
        dict(testcase_name="lengths", kwargs={"query_seq_lengths": "q_len", "key_value_seq_lengths": "kv_len"}),
        dict(testcase_name="window_pair", kwargs={"local_window_size": (2, 1)}),
        dict(testcase_name="window_int_causal", kwargs={"local_window_size": 1, "is_causal": True}),
        dict(testcase_name="implementation", kwargs={"implementation": "xla", "is_causal": True}),
        dict(testcase_name="everything", kwargs={"bias": "bias", "mask": "mask", "is_causal": True, "scale": 0.5,
                                                 "query_seq_lengths": "q_len", "key_value_seq_lengths": "kv_len",
                                                 "local_window_size": (3, 0), "implementation": None}),
    )
    def test_same_keyword_dict_same_output(self, kwargs):
        t = s = 6
        q, k, v = _qkv(30, t=t, s=s)
        rng = np.random.default_rng(31)
        mask = rng.random((B, 1, t, s)) < 0.8
        mask[..., 0] = True  # every row keeps a key: jax.nn averages the values of an empty row, we give 0
        arrays = {"bias": jnp.asarray(rng.standard_normal((1, N, t, s)), jnp.float32), "mask": jnp.asarray(mask),
                  "q_len": jnp.array([6, 6], jnp.int32), "kv_len": jnp.array([4, 6], jnp.int32)}
        kwargs = {name: arrays[value] if isinstance(value, str) and value in arrays else value
                  for name, value in kwargs.items()}
        want = jax.nn.dot_product_attention(q, k, v, **kwargs)
        got = dot_product_attention(q, k, v, **kwargs)
        chex.assert_shape(got, want.shape)
        _close(got, want)
        want_out, want_res = jax.nn.dot_product_attention(q, k, v, return_residual=True, **kwargs)
        got_out, got_res = dot_product_attention(q, k, v, return_residual=True, **kwargs)
        chex.assert_shape(got_res, want_res.shape)  # [B, T, N], jax.nn's layout
        _close(got_out, want_out)
        _close(got_res, want_res)

    def test_signature_has_jax_nn_names_in_order(self):
        import inspect
        theirs = list(inspect.signature(jax.nn.dot_product_attention).parameters)
        ours = list(inspect.signature(dot_product_attention).parameters)
        self.assertEqual(ours[:len(theirs)], theirs)


class AttentionMaskArgumentTest(parameterized.TestCase):
    """mask= takes an AttentionMask holding every source; it equals the keywords."""

    def test_spec_equals_keywords(self):
        q, k, v = _qkv(32, t=6, s=6)
        seg = jnp.asarray(np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int32))
        sources = dict(is_causal=True, key_value_seq_lengths=jnp.array([5, 6]), segment_ids=seg,
                       local_window_size=(2, None))
        want = dot_product_attention(q, k, v, return_lse=True, **sources)
        spec = AttentionMask(**sources)
        for implementation in ("xla", "blockwise"):
            got = dot_product_attention(q, k, v, mask=spec, return_lse=True, implementation=implementation)
            _close(got.output, want.output)
            _close(got.lse, want.lse)
        got = jax.jit(lambda m: dot_product_attention(q, k, v, mask=m))(spec)  # a pytree argument
        _close(got, want.output)

    def test_spec_and_keywords_together_raise(self):
        q, k, v = _qkv(33)
        with _raises(ValueError, "AttentionMask", "is_causal"):
            dot_product_attention(q, k, v, mask=AttentionMask(), is_causal=True)
        with _raises(ValueError, "AttentionMask", "key_value_seq_lengths"):
            dot_product_attention(q, k, v, mask=AttentionMask(is_causal=True),
                                  key_value_seq_lengths=jnp.array([1, 2]))

    def test_spec_bound_to_other_inputs_is_checked_again(self):
        q, k, v = _qkv(34)
        spec = AttentionMask(key_value_seq_lengths=jnp.array([3, 6])).bind(q, k, v)
        q3, k3, v3 = _qkv(34, b=3)
        with _raises(ValueError, "key_value_seq_lengths", "(3,)", "(2,)"):
            dot_product_attention(q3, k3, v3, mask=spec)


class XlaConformanceTest(conformance.AttentionConformance):
    """The shared backend suite (tests/conformance.py) on the "xla" backend."""

    IMPLEMENTATION = "xla"


if __name__ == "__main__":
    absltest.main()
