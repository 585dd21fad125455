"""The `normalizer` argument of `dot_product_attention` and `attend`: sparsemax and 1.5-entmax in place of the
softmax (Martins & Astudillo 2016, arXiv:1602.02068; Peters et al. 2019, arXiv:1905.05702).

Oracle: float64 numpy, the scaled logits of Vaswani eq. 1 normalised by tests/reference.py's sparsemax and
entmax transcriptions, then the weighted sum of values.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

import attention_jax as aj
from attention_jax.core import context
from attention_jax.dot_product import api
from attention_jax.dot_product.base import AttentionCall
from attention_jax.dot_product.blockwise import BlockwiseBackend
from attention_jax.dot_product.cudnn import CudnnBackend
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.dot_product.ring import RingBackend
from attention_jax.dot_product.ulysses import UlyssesBackend
from attention_jax.core.masks import AttentionMask
from tests import reference as ref

B, T, S, N, K, H = 2, 4, 6, 4, 2, 8
_ORACLES = {"softmax": ref.masked_softmax, "sparsemax": ref.sparsemax,
            "entmax15": lambda z, m: ref.entmax(z, m, 1.5)}


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed):
    rng = np.random.default_rng(seed)
    q = (1.5 * rng.standard_normal((B, T, N, H))).astype(np.float32)
    k = (1.5 * rng.standard_normal((B, S, K, H))).astype(np.float32)
    v = rng.standard_normal((B, S, K, H)).astype(np.float32)
    return q, k, v


def _reference(q, k, v, normalizer, mask):
    """float64: [B, T, N, H] outputs and [B, N, T, S] weights; mask [B, N, T, S] bool."""
    groups = N // K
    kk, vv = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # [B, S, N, H]
    logits = np.einsum("btnh,bsnh->bnts", q.astype(np.float64), kk.astype(np.float64)) / np.sqrt(H)
    weights = _ORACLES[normalizer](logits, mask)
    return np.einsum("bnts,bsnh->btnh", weights, vv.astype(np.float64)), weights


def _length_mask(lengths, causal=False):
    mask = np.arange(S)[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
    mask = np.broadcast_to(mask, (B, N, T, S))
    if causal:
        mask = mask & (np.arange(S)[None, :] <= np.arange(T)[:, None])
    return mask


class DotProductNormalizerTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(normalizer=("sparsemax", "entmax15"), causal=(False, True))
    def test_matches_float64_reference(self, normalizer, causal):
        q, k, v = _inputs(0)
        lengths = np.array([S, 3], np.int32)
        fn = self.variant(lambda q, k, v, lengths: aj.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, is_causal=causal, normalizer=normalizer, return_weights=True))
        got = fn(q, k, v, lengths)
        out, weights = _reference(q, k, v, normalizer, _length_mask(lengths, causal))
        ref.assert_close(got.output, out)
        ref.assert_close(got.weights, weights)
        self.assertIsNone(got.lse)
        self.assertGreater(int(np.sum((np.asarray(got.weights) == 0) & _length_mask(lengths, causal))), 0)

    @parameterized.parameters("sparsemax", "entmax15")
    def test_grads_match_finite_differences(self, normalizer):
        q, k, v = _inputs(1)
        lengths = jnp.array([S, 4], jnp.int32)
        fn = lambda q, k, v: aj.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                                      normalizer=normalizer)
        jax.test_util.check_grads(fn, (q, k, v), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)

    @parameterized.parameters("sparsemax", "entmax15")
    def test_dead_rows_and_nan_padding(self, normalizer):
        q, k, v = _inputs(2)
        lengths = jnp.array([S, 2], jnp.int32)
        q_lengths = jnp.array([T, 3], jnp.int32)
        k_bad, v_bad = k.copy(), v.copy()
        k_bad[1, 2:], v_bad[1, 2:] = np.nan, np.inf
        q_bad = q.copy()
        q_bad[1, 3:] = np.nan

        def loss(q, k, v):
            out = aj.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, query_seq_lengths=q_lengths,
                                           normalizer=normalizer)
            return jnp.sum(out * jnp.arange(H, dtype=jnp.float32)), out

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q_bad, k_bad, v_bad)
        (_, clean), clean_grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        np.testing.assert_array_equal(np.asarray(out)[1, 3:], 0.0)  # rows with no valid key
        np.testing.assert_array_equal(np.asarray(out), np.asarray(clean))
        for got, want in zip(grads, clean_grads):
            self.assertTrue(np.all(np.isfinite(got)))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(grads[1])[1, 2:], 0.0)

    def test_empty_sequences(self):
        q, k, v = _inputs(3)
        out = aj.dot_product_attention(q[:, :0], k, v, normalizer="sparsemax", return_weights=True)
        chex.assert_shape(out.output, (B, 0, N, H))
        out = aj.dot_product_attention(q, k[:, :0], v[:, :0], normalizer="entmax15", return_weights=True)
        np.testing.assert_array_equal(np.asarray(out.output), 0.0)
        chex.assert_shape(out.weights, (B, N, T, 0))

    def test_none_picks_xla_and_softmax_default_unchanged(self):
        q, k, v = _inputs(4)
        auto = aj.dot_product_attention(q, k, v, normalizer="entmax15")
        xla = aj.dot_product_attention(q, k, v, normalizer="entmax15", implementation="xla")
        np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))
        softmax = aj.dot_product_attention(q, k, v, normalizer="softmax")
        np.testing.assert_allclose(softmax, jax.nn.dot_product_attention(q, k, v), atol=1e-5)
        self.assertGreater(float(jnp.max(jnp.abs(auto - softmax))), 1e-3)

    def test_dropout_applies_after_the_normaliser(self):
        q, k, v = _inputs(5)
        out = aj.dot_product_attention(q, k, v, normalizer="sparsemax", dropout_rate=0.5,
                                       dropout_rng=jax.random.key(0), return_weights=True)
        plain = aj.dot_product_attention(q, k, v, normalizer="sparsemax", return_weights=True)
        kept = np.asarray(out.weights) != 0
        np.testing.assert_allclose(np.asarray(out.weights)[kept], 2.0 * np.asarray(plain.weights)[kept], rtol=1e-6)

    @parameterized.named_parameters(
        dict(testcase_name="blockwise", backend=BlockwiseBackend(), fragment="online softmax"),
        dict(testcase_name="flash", backend=FlashBackend(interpret=True), fragment="online softmax"),
        dict(testcase_name="cudnn", backend=CudnnBackend(), fragment="cuDNN"),
        dict(testcase_name="ring", backend=RingBackend(), fragment="log-sum-exp"),
        dict(testcase_name="ulysses", backend=UlyssesBackend(), fragment="log-sum-exp"),
    )
    def test_softmax_only_backends_say_why(self, backend, fragment):
        q, k, v = _inputs(6)
        call = AttentionCall(q, k, v, None, AttentionMask().bind(q, k, v), 0.35, normalizer="sparsemax")
        ok, reason = backend.supports(call)
        self.assertFalse(ok)
        self.assertIn("'sparsemax'", reason)
        self.assertIn(fragment, reason)
        self.assertIn("implementation='xla'", reason)
        ok, reason = api.supports(backend, q, k, v, normalizer="entmax15")
        self.assertFalse(ok)
        self.assertIn("'entmax15'", reason)
        with _raises(ValueError, "cannot run this call", "entmax15"):
            aj.dot_product_attention(q, k, v, normalizer="entmax15", implementation=backend)

    def test_registered_function_backends_are_softmax_only(self):
        q, k, v = _inputs(7)
        backend = aj.dot_product.base.FunctionBackend(lambda call: (call.query, None, None),
                                                      lambda call: (True, ""), name="mine")
        ok, reason = api.supports(backend, q, k, v, normalizer="sparsemax")
        self.assertFalse(ok)
        self.assertIn("mine computes the softmax only", reason)

    def test_bad_arguments_raise(self):
        q, k, v = _inputs(8)
        with _raises(ValueError, "normalizer", "'sparse'"):
            aj.dot_product_attention(q, k, v, normalizer="sparse")
        with _raises(ValueError, "return_lse", "'sparsemax'"):
            aj.dot_product_attention(q, k, v, normalizer="sparsemax", return_lse=True)
        with _raises(ValueError, "return_residual", "'entmax15'"):
            aj.dot_product_attention(q, k, v, normalizer="entmax15", return_residual=True)


class AttendNormalizerTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(normalizer=("sparsemax", "entmax15"), mode=("global", "local_m"))
    def test_matches_float64_reference(self, normalizer, mode):
        rng = np.random.default_rng(9)
        query = (2.0 * rng.standard_normal((B, T, H))).astype(np.float32)
        key = (2.0 * rng.standard_normal((B, S, H))).astype(np.float32)
        value = rng.standard_normal((B, S, 3)).astype(np.float32)
        lengths = np.array([S, 4], np.int32)
        window = 2 if mode == "local_m" else None
        got_context, got_weights = self.variant(
            lambda q, k, v, n: context.attend(q, k, v, key_lengths=n, mode=mode, window=window,
                                              normalizer=normalizer))(query, key, value, lengths)
        logits = np.einsum("btd,bsd->bts", query.astype(np.float64), key.astype(np.float64))
        allowed = np.broadcast_to((np.arange(S)[None, :] < lengths[:, None])[:, None, :], logits.shape)
        if mode == "local_m":
            allowed = allowed & ref.window_mask(ref.local_m_position(B, T), S, window)
        weights = _ORACLES[normalizer](logits, allowed)
        ref.assert_close(got_weights, weights)
        ref.assert_close(got_context, np.einsum("bts,bsd->btd", weights, value))

    def test_attend_from_logits_and_bad_name(self):
        logits = jnp.asarray([[[-2.0, 0.0, 0.5]]])
        _, weights = context.attend_from_logits(logits, jnp.ones((1, 3, 2)), normalizer="sparsemax")
        np.testing.assert_allclose(weights[0, 0], [0.0, 0.25, 0.75], atol=1e-6)
        with _raises(ValueError, "normalizer", "'max'"):
            context.attend(jnp.ones((1, 2, 3)), jnp.ones((1, 4, 3)), normalizer="max")


if __name__ == "__main__":
    absltest.main()
