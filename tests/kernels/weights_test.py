"""Tests for kernels/weights.py.

References: the weights `dot_product_attention(implementation="xla", return_weights=True)` materialises, and
the float64 numpy softmax of `kernels.reference` (Vaswani et al. 2017, arXiv:1706.03762, eq. 1).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.api import dot_product_attention
from attention_jax.kernels import attention_weights, flash_attention
from attention_jax.kernels.reference import reference_mask
from tests.dot_product.blockwise_test import _max_intermediate_size

B, T, S, N, K, H = 2, 23, 31, 4, 2, 16


def _qkv(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), dtype) for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


MASKS = {
    "none": {},
    "causal": dict(is_causal=True),
    "window": dict(local_window_size=(4, 2)),
    "lengths": dict(query_seq_lengths=np.array([23, 11]), key_value_seq_lengths=np.array([31, 9])),
    "segments": dict(segment_ids=(np.sort(np.random.default_rng(0).integers(0, 3, (B, T)), 1),
                                  np.sort(np.random.default_rng(1).integers(0, 3, (B, S)), 1))),
}


def _jax_kwargs(kwargs):
    return {k: (tuple(jnp.asarray(x) for x in v) if k == "segment_ids" else jnp.asarray(v) if isinstance(v, np.ndarray)
                else v) for k, v in kwargs.items()}


# dot_product_attention's (jax.nn's) keyword names -> the float64 reference's (kernels/reference.py).
_REFERENCE_NAMES = {"query_seq_lengths": "query_lengths", "key_value_seq_lengths": "key_lengths",
                    "local_window_size": "local_window"}


def _reference_kwargs(kwargs):
    return {_REFERENCE_NAMES.get(name, name): value for name, value in kwargs.items()}


class AttentionWeightsTest(parameterized.TestCase):

    @parameterized.parameters(*MASKS)
    def test_rows_equal_the_materialised_weights(self, name):
        q, k, v = _qkv(len(name))
        kwargs = _jax_kwargs(MASKS[name])
        full = dot_product_attention(q, k, v, return_weights=True, return_lse=True, implementation="xla", **kwargs)
        b = jnp.array([0, 1, 1, 0, 1])
        n = jnp.array([3, 0, 2, 1, 3])
        t = jnp.array([0, 5, 22, 17, 12])
        got = attention_weights(q, k, full.lse, AttentionMask(**kwargs), batch_index=b, head_index=n, query_index=t,
                                rows_per_chunk=2)
        want = np.asarray(full.weights)[np.asarray(b), np.asarray(n), np.asarray(t)]
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
        mask = reference_mask(B, T, S, **_reference_kwargs(MASKS[name]))[np.asarray(b), np.asarray(t)]
        sums = np.asarray(got).sum(-1)
        np.testing.assert_allclose(sums, np.where(mask.any(-1), 1.0, 0.0), atol=1e-5)

    def test_from_the_flash_kernels_lse(self):
        q, k, v = _qkv(7)
        causal = AttentionMask(is_causal=True)
        _, lse = flash_attention(q, k, v, causal, interpret=True, kernel="triton", return_lse=True)
        got = attention_weights(q, k, lse, causal, batch_index=1, head_index=2, query_index=jnp.arange(T))
        want = dot_product_attention(q, k, v, is_causal=True, return_weights=True).weights[1, 2]
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)

    def test_empty_rows_and_nan_padding(self):
        q, k, v = _qkv(8)
        kwargs = dict(query_seq_lengths=jnp.array([5, 23]), key_value_seq_lengths=jnp.array([31, 10]))
        lse = dot_product_attention(q, k, v, return_lse=True, **kwargs).lse
        k = k.at[1, 10:].set(jnp.nan)
        got = np.asarray(attention_weights(q, k, lse, AttentionMask(**kwargs), batch_index=jnp.array([0, 1]),
                                           head_index=0, query_index=jnp.array([9, 3])))
        np.testing.assert_array_equal(got[0], 0.0)  # query 9 >= query_lengths[0]
        self.assertTrue(np.all(np.isfinite(got[1])))
        np.testing.assert_array_equal(got[1, 10:], 0.0)
        self.assertAlmostEqual(float(got[1].sum()), 1.0, places=5)

    def test_never_builds_t_by_s(self):
        big_t = big_s = 512
        q = jax.ShapeDtypeStruct((1, big_t, 2, 8), jnp.float32)
        k = jax.ShapeDtypeStruct((1, big_s, 1, 8), jnp.float32)
        lse = jax.ShapeDtypeStruct((1, 2, big_t), jnp.float32)
        jaxpr = jax.make_jaxpr(lambda q_, k_, l_: attention_weights(
            q_, k_, l_, AttentionMask(is_causal=True), batch_index=0, head_index=jnp.array([0, 1, 1]),
            query_index=jnp.array([1, 2, 3]), rows_per_chunk=3))(q, k, lse)
        self.assertLess(_max_intermediate_size(jaxpr.jaxpr), big_t * big_s // 8)
        dense = jax.make_jaxpr(lambda q_, k_: dot_product_attention(q_, k_, k_, return_weights=True))(q, k)
        self.assertGreaterEqual(_max_intermediate_size(dense.jaxpr), big_t * big_s)  # the check can fail

    def test_jit_with_traced_indices(self):
        q, k, v = _qkv(9)
        lse = dot_product_attention(q, k, v, return_lse=True).lse
        f = jax.jit(lambda t: attention_weights(q, k, lse, batch_index=0, head_index=1, query_index=t))
        np.testing.assert_allclose(np.asarray(f(jnp.array([4]))), np.asarray(
            dot_product_attention(q, k, v, return_weights=True).weights[0, 1, 4:5]), atol=1e-6)

    def test_dense_mask_rows(self):
        q, k, v = _qkv(11)
        mask = np.random.default_rng(12).random((B, 1, T, S)) < 0.7
        mask[1, 0, 4] = False  # one row with no key
        mask = jnp.asarray(mask)
        full = dot_product_attention(q, k, v, mask=mask, return_weights=True, return_lse=True)
        b, n, t = jnp.array([0, 1, 1]), jnp.array([3, 0, 2]), jnp.array([7, 4, 19])
        for spec in (mask, AttentionMask(mask)):
            got = attention_weights(q, k, full.lse, spec, batch_index=b, head_index=n, query_index=t)
            want = np.asarray(full.weights)[np.asarray(b), np.asarray(n), np.asarray(t)]
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(got)[1], 0.0)

    def test_no_rows_or_no_keys(self):
        q, k, v = _qkv(13)
        lse = dot_product_attention(q, k, v, return_lse=True).lse
        got = attention_weights(q, k, lse, batch_index=jnp.zeros((0,), jnp.int32), head_index=0, query_index=0)
        self.assertEqual(got.shape, (0, S))
        k0 = k[:, :0]  # S = 0: every row is empty
        lse0 = dot_product_attention(q, k0, k0, return_lse=True).lse
        got = attention_weights(q, k0, lse0, batch_index=jnp.array([0, 1]), head_index=1, query_index=3)
        self.assertEqual(got.shape, (2, 0))

    def test_errors(self):
        q, k, v = _qkv(10)
        lse = jnp.zeros((B, N, T))
        with _raises(ValueError, "lse must have shape", "(2, 4, 23)", "(2, 23)"):
            attention_weights(q, k, jnp.zeros((B, T)), batch_index=0, head_index=0, query_index=0)
        with _raises(ValueError, "head_index", "[0, 4)", "4"):
            attention_weights(q, k, lse, batch_index=0, head_index=4, query_index=0)
        with _raises(TypeError, "query_index"):
            attention_weights(q, k, lse, batch_index=0, head_index=0, query_index=1.5)
        with _raises(ValueError, "do not broadcast"):
            attention_weights(q, k, lse, batch_index=jnp.array([0, 1]), head_index=0, query_index=jnp.array([1, 2, 3]))
        with _raises(ValueError, "1-D", "(1, 2)"):
            attention_weights(q, k, lse, batch_index=jnp.zeros((1, 2), jnp.int32), head_index=0, query_index=0)
        with _raises(ValueError, "key_value_seq_lengths", "(3,)"):
            attention_weights(q, k, lse, AttentionMask(key_value_seq_lengths=jnp.array([1, 2, 3])), batch_index=0,
                              head_index=0, query_index=0)
        with _raises(TypeError, "query", "list"):
            attention_weights(np.asarray(q).tolist(), k, lse, batch_index=0, head_index=0, query_index=0)


if __name__ == "__main__":
    absltest.main()
