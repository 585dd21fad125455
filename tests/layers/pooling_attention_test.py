"""Tests for the attention-pooling layers: feed-forward attention (Raffel & Ellis 2015, arXiv:1512.08756; Yang
et al. 2016's context-vector form) and structured self-attention (Lin et al. 2017, arXiv:1703.03130).

Oracles: the float64 transcriptions in tests/reference.py (eqs. 1-2 of Raffel & Ellis, eqs. 6 and 8 of Lin),
finite differences, and the identity-versus-scalar check of Lin's penalty. The layer contract (jit, masking,
NaN, logical axes, bad shapes) is in tests/layers/contract_test.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import feedforward, structured
from tests import reference as ref

B, T, D, A, R = 3, 6, 5, 4, 3
LENGTHS = np.array([T, 2, 0])


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, D)).astype(np.float32), np.arange(T)[None, :] < LENGTHS[:, None]


class AttentionPoolTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("softmax", "sparsemax", "entmax15")
    def test_matches_reference(self, normalizer):
        x, mask = _inputs(0)
        logits = np.random.default_rng(1).standard_normal((B, T)).astype(np.float32)
        context, weights = self.variant(lambda *a: feedforward.attention_pool(*a, normalizer=normalizer))(
            x, logits, mask)
        oracle = {"softmax": ref.masked_softmax, "sparsemax": ref.sparsemax,
                  "entmax15": lambda z, m: ref.entmax(z, m, 1.5)}[normalizer]
        want_context, want_weights = ref.attention_pool(x, logits, mask, oracle)
        ref.assert_close(weights, want_weights)
        ref.assert_close(context, want_context)
        np.testing.assert_array_equal(np.asarray(context)[2], 0.0)  # no valid position

    def test_bad_shapes(self):
        x, mask = _inputs(2)
        with _raises(ValueError, "logits", "(3, 5)"):
            feedforward.attention_pool(x, np.zeros((B, T - 1), np.float32), mask)
        with _raises(ValueError, "mask", "(3, 5)"):
            feedforward.attention_pool(x, np.zeros((B, T), np.float32), mask[:, :-1])


class FeedForwardAttentionTest(chex.TestCase):

    @parameterized.named_parameters(dict(testcase_name="raffel_ellis", hidden_dim=None),
                                    dict(testcase_name="yang_context_vector", hidden_dim=A))
    def test_matches_the_paper_equation(self, hidden_dim):
        x, mask = _inputs(3)
        module = feedforward.FeedForwardAttention(hidden_dim=hidden_dim)
        variables = module.init(jax.random.key(0), x, mask)
        params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables)["params"])
        context, weights = module.apply(variables, x, mask)
        if hidden_dim is None:  # e_t = tanh(w^T h_t + b)
            logits = np.tanh(x.astype(np.float64) @ params["w"] + params["b"])
            self.assertEqual(params["w"].shape, (D,))
        else:  # e_t = u^T tanh(W h_t + b)
            logits = np.tanh(x.astype(np.float64) @ params["W"]["kernel"] + params["W"]["bias"]) @ params["u"]
        want_context, want_weights = ref.attention_pool(x, logits, mask)
        ref.assert_close(weights, want_weights)
        ref.assert_close(context, want_context)

    def test_check_grads(self):
        x, mask = _inputs(4)
        module = feedforward.FeedForwardAttention(hidden_dim=A)
        variables = module.init(jax.random.key(1), x, mask)
        fn = jax.jit(lambda v, x: module.apply(v, x, mask)[0])
        jax.test_util.check_grads(fn, (variables, x), order=1, modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_learns_to_attend(self):
        # A position marked by feature 0 carries the target in feature 1; after training, the weight on it
        # should dominate (Raffel & Ellis' point: a(h_t) alone can find what matters).
        rng = np.random.default_rng(5)
        x = rng.standard_normal((64, T, D)).astype(np.float32)
        x[..., 0] = 0.0
        marked = rng.integers(0, T, 64)
        x[np.arange(64), marked, 0] = 3.0
        target = x[np.arange(64), marked, 1]
        module = feedforward.FeedForwardAttention(hidden_dim=A)
        params = module.init(jax.random.key(2), x)["params"]

        @jax.jit
        def step(params):
            loss_fn = lambda p: jnp.mean((module.apply({"params": p}, x)[0][:, 1] - target) ** 2)
            loss, grads = jax.value_and_grad(loss_fn)(params)
            return jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads), loss

        for _ in range(300):
            params, loss = step(params)
        weights = module.apply({"params": params}, x)[1]
        self.assertGreater(float(jnp.mean(weights[np.arange(64), marked])), 0.8)
        self.assertLess(float(loss), 0.1)

    def test_bad_attributes(self):
        x, _ = _inputs(6)
        with _raises(ValueError, "hidden_dim"):
            feedforward.FeedForwardAttention(hidden_dim=0).init(jax.random.key(0), x)
        with _raises(ValueError, "normalizer", "'max'"):
            feedforward.FeedForwardAttention(normalizer="max").init(jax.random.key(0), x)


class StructuredSelfAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_eq_6_and_8(self):
        x, mask = _inputs(7)
        module = structured.StructuredSelfAttention(hops=R, hidden_dim=A)
        variables = module.init(jax.random.key(3), x, mask)
        params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables)["params"])
        embedding, weights, penalty = self.variant(module.apply)(variables, x, mask)
        chex.assert_shape((embedding, weights, penalty), ((B, R, D), (B, R, T), (B,)))
        want_embedding, want_weights = ref.structured_self_attention(x, params["w_s1"], params["w_s2"], mask)
        ref.assert_close(weights, want_weights)
        ref.assert_close(embedding, want_embedding)
        ref.assert_close(penalty, ref.frobenius_penalty(want_weights))
        self.assertEqual(float(penalty[2]), 0.0)  # an empty sentence

    def test_penalty_subtracts_the_identity(self):
        # Two one-hot hops on different tokens: A A^T = I, so the penalty is 0. With a scalar 1 subtracted
        # (the bug in several ports) it would be 2 (the two off-diagonal zeros, each (0 - 1)^2).
        a = np.zeros((1, 2, 4), np.float32)
        a[0, 0, 1] = a[0, 1, 3] = 1.0
        self.assertEqual(float(structured.frobenius_penalty(a)[0]), 0.0)
        # Two identical one-hot hops: A A^T = all ones; ||ones - I||^2 = 2.
        a[0, 1] = a[0, 0]
        self.assertAlmostEqual(float(structured.frobenius_penalty(a)[0]), 2.0, places=6)
        np.testing.assert_allclose(structured.frobenius_penalty(a), ref.frobenius_penalty(a))

    def test_penalty_gradient_pushes_hops_apart(self):
        x, mask = _inputs(8)
        module = structured.StructuredSelfAttention(hops=R, hidden_dim=A)
        params = module.init(jax.random.key(4), x, mask)["params"]

        @jax.jit
        def step(params):
            loss_fn = lambda p: jnp.mean(module.apply({"params": p}, x[:1], mask[:1])[2])
            loss, grads = jax.value_and_grad(loss_fn)(params)
            return jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads), loss

        _, first = step(params)
        for _ in range(200):
            params, loss = step(params)
        self.assertLess(float(loss), 0.5 * float(first))

    def test_check_grads_and_nan_padding(self):
        x, mask = _inputs(9)
        module = structured.StructuredSelfAttention(hops=R, hidden_dim=A, normalizer="sparsemax")
        variables = module.init(jax.random.key(5), x, mask)
        fn = jax.jit(lambda v, x: jnp.sum(module.apply(v, x, mask)[0]) + jnp.sum(module.apply(v, x, mask)[2]))
        jax.test_util.check_grads(fn, (variables, x), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)
        poisoned = np.where(mask[:, :, None], x, np.nan).astype(np.float32)
        grads = jax.grad(fn, argnums=(0, 1))(variables, poisoned)
        clean = jax.grad(fn, argnums=(0, 1))(variables, x)
        chex.assert_trees_all_close(grads[0], clean[0])
        self.assertTrue(np.all(np.isfinite(grads[1])))
        np.testing.assert_array_equal(np.asarray(grads[1])[~mask], 0.0)

    def test_bad_shapes(self):
        x, mask = _inputs(10)
        with _raises(ValueError, "w_s2", "(5, 4)", "(5, 3)"):
            structured.structured_self_attention(x, np.zeros((D, A), np.float32), np.zeros((D, R), np.float32))
        with _raises(ValueError, "hops"):
            structured.StructuredSelfAttention(hops=0, hidden_dim=A).init(jax.random.key(0), x)


if __name__ == "__main__":
    absltest.main()
