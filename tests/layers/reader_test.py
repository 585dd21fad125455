"""Tests for layers/reader.py: attention sum (Kadlec et al. 2016, arXiv:1603.01547), attention over attention
(Cui et al. 2017, arXiv:1607.04423) and the pointer sum over candidates.

Oracles: float64 numpy transcriptions of Kadlec's eq. 2-3 and Cui's eqs. 5-10, written below one unpadded row at
a time (the real tokens picked out by the masks), and finite differences. Padding sits on both the
document and the query side, in the middle of a row too. The layer contract (jit, NaN at masked positions,
logical axes, bad shapes) is in tests/layers/contract_test.py.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from attention_jax.layers import reader

B, S, T, D = 4, 6, 4, 5
# Row 0: all real; row 1: document holes in the middle and query padding; row 2: no document token;
# row 3: no query word.
DOC_MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], bool)
QUERY_MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, S, D)).astype(np.float32), rng.standard_normal((B, T, D)).astype(np.float32),
            rng.standard_normal((B, D)).astype(np.float32))


def _softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _ref_attention_sum(document, query, mask):
    """Kadlec eq. 2 per row over its real tokens, in float64; zeros elsewhere."""
    out = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        if mask[b].any():
            out[b, mask[b]] = _softmax(document[b, mask[b]].astype(np.float64) @ query[b].astype(np.float64), 0)
    return out


def _ref_attention_over_attention(document, query, doc_mask, query_mask):
    """Cui eqs. 5-9 per row on its unpadded document [n, D] and query [m, D], in float64; zeros elsewhere."""
    scores, alpha, beta = np.zeros(doc_mask.shape), np.zeros(doc_mask.shape + query_mask.shape[1:]), np.zeros(
        query_mask.shape)
    for b in range(doc_mask.shape[0]):
        if not (doc_mask[b].any() and query_mask[b].any()):
            continue
        m = document[b, doc_mask[b]].astype(np.float64) @ query[b, query_mask[b]].astype(np.float64).T  # eq. 5
        a = _softmax(m, 0)  # eq. 6: each column over the document
        beta_b = _softmax(m, 1).mean(0)  # eqs. 7-8: each row over the query, averaged over the n rows
        alpha[b][np.ix_(doc_mask[b], query_mask[b])] = a
        beta[b, query_mask[b]] = beta_b
        scores[b, doc_mask[b]] = a @ beta_b  # eq. 9
    return scores, alpha, beta


def _ref_pointer_sum(weights, document_ids, candidate_ids, candidate_mask):
    """Kadlec eq. 3 by a loop over positions."""
    probs = np.zeros(candidate_ids.shape)
    for b in range(candidate_ids.shape[0]):
        for c in range(candidate_ids.shape[1]):
            if candidate_mask[b, c]:
                probs[b, c] = sum(float(weights[b, s]) for s in range(document_ids.shape[1])
                                  if document_ids[b, s] == candidate_ids[b, c])
    return probs


def _assert_real_close_and_padding_zero(got, want, real):
    got = np.asarray(got)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got[~real], 0.0)


class AttentionSumTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_eq_2(self):
        document, _, query = _inputs(0)
        weights = self.variant(reader.attention_sum)(document, query, DOC_MASK)
        chex.assert_shape(weights, (B, S))
        self.assertEqual(weights.dtype, jnp.float32)
        _assert_real_close_and_padding_zero(weights, _ref_attention_sum(document, query, DOC_MASK), DOC_MASK)
        np.testing.assert_allclose(np.asarray(weights).sum(1), [1, 1, 0, 1], atol=1e-6)

    def test_module_is_the_function_without_parameters(self):
        document, _, query = _inputs(1)
        module = reader.AttentionSum()
        variables = module.init(jax.random.key(0), document, query, DOC_MASK)
        self.assertEqual(jax.tree_util.tree_leaves(variables), [])
        np.testing.assert_array_equal(module.apply(variables, document, query, DOC_MASK),
                                      reader.attention_sum(document, query, DOC_MASK))


class AttentionOverAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_eqs_5_to_9(self):
        document, query, _ = _inputs(2)
        scores, alpha, beta = self.variant(reader.attention_over_attention)(document, query, DOC_MASK, QUERY_MASK)
        chex.assert_shape((scores, alpha, beta), ((B, S), (B, S, T), (B, T)))
        want_scores, want_alpha, want_beta = _ref_attention_over_attention(document, query, DOC_MASK, QUERY_MASK)
        live = (DOC_MASK.any(1) & QUERY_MASK.any(1))[:, None]
        _assert_real_close_and_padding_zero(scores, want_scores, DOC_MASK & live)
        _assert_real_close_and_padding_zero(alpha, want_alpha, DOC_MASK[:, :, None] & QUERY_MASK[:, None, :])
        _assert_real_close_and_padding_zero(beta, want_beta, QUERY_MASK & live)
        np.testing.assert_allclose(np.asarray(scores).sum(1), [1, 1, 0, 0], atol=1e-6)

    def test_module_is_the_function_without_parameters(self):
        document, query, _ = _inputs(3)
        module = reader.AttentionOverAttention()
        variables = module.init(jax.random.key(0), document, query, DOC_MASK, QUERY_MASK)
        self.assertEqual(jax.tree_util.tree_leaves(variables), [])
        chex.assert_trees_all_equal(module.apply(variables, document, query, DOC_MASK, QUERY_MASK),
                                    reader.attention_over_attention(document, query, DOC_MASK, QUERY_MASK))


class PointerSumTest(absltest.TestCase):

    def test_sums_repeated_occurrences(self):
        weights = np.random.default_rng(4).dirichlet(np.ones(S), size=2).astype(np.float32)
        document_ids = np.array([[5, 7, 5, 9, 5, 0], [3, 3, 8, 2, 0, 0]], np.int32)
        # 5 occurs three times; 7 twice in the list; 4 and 6 never in the document; 0 is no candidate.
        candidate_ids = np.array([[5, 7, 4, 7], [3, 8, 6, 0]], np.int32)
        got = jax.jit(reader.pointer_sum)(weights, document_ids, candidate_ids)
        self.assertEqual(got.dtype, jnp.float32)
        want = _ref_pointer_sum(weights, document_ids, candidate_ids, candidate_ids != 0)
        np.testing.assert_allclose(got, want, atol=1e-6)
        self.assertAlmostEqual(float(got[0, 0]), float(weights[0, [0, 2, 4]].sum()), places=6)
        self.assertEqual(float(got[0, 1]), float(got[0, 3]))
        self.assertEqual(float(got[0, 2]), 0.0)  # absent from the document
        self.assertEqual(float(got[1, 2]), 0.0)
        self.assertEqual(float(got[1, 3]), 0.0)  # masked
        mask = np.array([[True, False, True, True], [True, True, True, True]])
        got = reader.pointer_sum(weights, document_ids, candidate_ids, mask)
        np.testing.assert_allclose(got, _ref_pointer_sum(weights, document_ids, candidate_ids, mask), atol=1e-6)
        self.assertEqual(float(got[0, 1]), 0.0)

    def test_nan_weights_elsewhere_reach_nothing(self):
        weights = np.full((1, 4), np.nan, np.float32)
        weights[0, 1] = 0.25
        fn = lambda w: reader.pointer_sum(w, np.array([[0, 6, 0, 0]]), np.array([[6]]))  # noqa: E731
        self.assertEqual(float(fn(weights)[0, 0]), 0.25)
        np.testing.assert_array_equal(jax.grad(lambda w: fn(w).sum())(weights), [[0.0, 1.0, 0.0, 0.0]])


class GradientsAndMaskingTest(absltest.TestCase):

    def test_check_grads(self):
        """Finite differences in float32 (the functions compute in float32 whatever the input dtype)."""
        document, query, query_vector = _inputs(5)
        rng = np.random.default_rng(6)
        weights, ids = rng.random((B, S)).astype(np.float32), rng.integers(1, 4, (B, S))
        check = lambda fn, args: jax.test_util.check_grads(fn, args, order=1, modes=("rev",), eps=1e-3,  # noqa: E731
                                                            atol=1e-2, rtol=1e-2)
        check(lambda d, q: reader.attention_sum(d, q, DOC_MASK), (document, query_vector))
        check(lambda d, q: reader.attention_over_attention(d, q, DOC_MASK, QUERY_MASK), (document, query))
        check(lambda w: reader.pointer_sum(w, ids, np.array([[1, 2]] * B)), (weights,))

    def test_nan_at_masked_positions_leaks_nowhere_and_dead_rows_get_zero_grads(self):
        document, query, query_vector = _inputs(7)
        dirty_doc = np.where(DOC_MASK[..., None], document, np.nan).astype(np.float32)
        dirty_query = np.where(QUERY_MASK[..., None], query, np.inf).astype(np.float32)
        dirty_vector = query_vector.copy()
        dirty_vector[2] = np.nan  # the query of the row with no document token
        cot = np.random.default_rng(8).standard_normal((B, S)).astype(np.float32)

        @jax.jit
        def run(d, q, v):
            def loss(d, q, v):
                scores, alpha, beta = reader.attention_over_attention(d, q, DOC_MASK, QUERY_MASK)
                weights = reader.attention_sum(d, v, DOC_MASK)
                return jnp.sum((scores + weights) * cot) + jnp.sum(alpha) + jnp.sum(beta), (scores, alpha, beta,
                                                                                             weights)
            return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(d, q, v)

        clean, dirty = run(document, query, query_vector), run(dirty_doc, dirty_query, dirty_vector)
        for got, want in zip(jax.tree_util.tree_leaves(dirty), jax.tree_util.tree_leaves(clean)):
            self.assertTrue(np.all(np.isfinite(got)))
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
        (g_doc, g_query, g_vector), (scores, alpha, beta, weights) = dirty
        np.testing.assert_array_equal(np.asarray(g_doc)[~DOC_MASK], 0.0)  # row 2 whole: no document token
        np.testing.assert_array_equal(np.asarray(g_query)[~QUERY_MASK], 0.0)  # row 3 whole: no query word
        np.testing.assert_array_equal(np.asarray(g_vector)[2], 0.0)
        for dead in (scores[2:], alpha[2:], beta[2:], weights[2]):  # the dead rows' outputs
            np.testing.assert_array_equal(dead, 0.0)

    def test_empty_document_or_query_gives_zeros(self):
        empty_doc, doc_mask = np.zeros((2, 0, D), np.float32), np.zeros((2, 0), bool)
        query, query_mask = np.ones((2, T, D), np.float32), np.ones((2, T), bool)
        self.assertEqual(reader.attention_sum(empty_doc, np.ones((2, D), np.float32), doc_mask).shape, (2, 0))
        scores, alpha, beta = reader.attention_over_attention(empty_doc, query, doc_mask, query_mask)
        chex.assert_shape((scores, alpha, beta), ((2, 0), (2, 0, T), (2, T)))
        np.testing.assert_array_equal(beta, 0.0)
        probs = reader.pointer_sum(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.int32), np.ones((2, 3), np.int32))
        np.testing.assert_array_equal(probs, np.zeros((2, 3)))
        document = np.ones((2, S, D), np.float32)
        scores, alpha, beta = reader.attention_over_attention(document, query[:, :0], np.ones((2, S), bool),
                                                              query_mask[:, :0])
        chex.assert_shape((scores, alpha, beta), ((2, S), (2, S, 0), (2, 0)))
        np.testing.assert_array_equal(scores, 0.0)


class ArgumentChecksTest(absltest.TestCase):

    def test_bad_shapes_and_dtypes_raise_naming_them(self):
        document, query, vector = _inputs(9)
        with _raises(ValueError, "query", (B - 1, D), (B, S, D)):
            reader.attention_sum(document, vector[1:], DOC_MASK)
        with _raises(ValueError, "query", (B, D + 1), (B, S, D)):
            reader.attention_sum(document, np.ones((B, D + 1), np.float32), DOC_MASK)
        with _raises(ValueError, "document", (B, S)):
            reader.attention_sum(document[:, :, 0], vector, DOC_MASK)
        with _raises(ValueError, "document_mask", (B, S - 1), (B, S, D)):
            reader.attention_sum(document, vector, DOC_MASK[:, 1:])
        with _raises(TypeError, "document_mask", "int32"):
            reader.attention_sum(document, vector, DOC_MASK.astype(np.int32))
        with _raises(TypeError, "document", "int32"):
            reader.attention_sum(document.astype(np.int32), vector, DOC_MASK)
        with _raises(ValueError, "query", (B, T, D - 1), (B, S, D)):
            reader.attention_over_attention(document, query[..., 1:], DOC_MASK, QUERY_MASK)
        with _raises(ValueError, "query", (B - 1, T, D)):
            reader.attention_over_attention(document, query[1:], DOC_MASK, QUERY_MASK)
        with _raises(ValueError, "query_mask", (B, T - 1), (B, T, D)):
            reader.attention_over_attention(document, query, DOC_MASK, QUERY_MASK[:, 1:])
        with _raises(TypeError, "query_mask", "float32"):
            reader.attention_over_attention(document, query, DOC_MASK, QUERY_MASK.astype(np.float32))
        weights, ids = np.ones((B, S), np.float32), np.ones((B, S), np.int32)
        with _raises(ValueError, "document_ids", (B, S - 1), (B, S)):
            reader.pointer_sum(weights, ids[:, 1:], ids)
        with _raises(ValueError, "candidate_ids", (B - 1, 2)):
            reader.pointer_sum(weights, ids, ids[1:, :2])
        with _raises(ValueError, "candidate_mask", (B, 1), (B, 2)):
            reader.pointer_sum(weights, ids, ids[:, :2], np.ones((B, 1), bool))
        with _raises(TypeError, "candidate_ids", "float32"):
            reader.pointer_sum(weights, ids, weights)
        with _raises(TypeError, "document_ids", "float32"):
            reader.pointer_sum(weights, weights, ids)


if __name__ == "__main__":
    absltest.main()
