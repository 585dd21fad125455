"""Tests for layers/coda.py: compositional de-attention (Tay et al. 2019, arXiv:1910.01086, §2).

Oracles: a float64 numpy transcription of E, N, the centring and M = tanh(E) sigmoid(N) with the naive
[B, T, S, N, H] L1 distance; chunked against unchunked; finite differences; masks. The module's contract
checks (jit, NaN at padded positions, logical axes, bad shapes) are in tests/layers/contract_test.py.
"""

import re

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import coda

B, T, S, N, H = 2, 3, 5, 2, 4


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape) for shape in ((B, T, N, H), (B, S, N, H), (B, S, N, 3)))
    mask = np.ones((B, 1, T, S), bool)
    mask[1, :, :, 3:] = False  # example 1 has 3 keys
    mask[1, :, 2, :] = False  # and its query 2 sees none
    return q, k, v, mask


def _numpy_coda(q, k, v, mask, gate, alpha, beta):
    """E, N, centring over each (example, head)'s valid pairs, M and A' = M B, in float64."""
    e = alpha * np.einsum("btnh,bsnh->bnts", q, k)
    dist = np.abs(q[:, :, None] - k[:, None]).sum(-1)  # [B, T, S, N], the naive difference
    n = -beta * np.transpose(dist, (0, 3, 1, 2))
    valid = np.broadcast_to(mask, e.shape)
    if gate == "centred":
        for x in (e, n):
            for b in range(B):
                for h in range(N):
                    x[b, h] -= x[b, h][valid[b, h]].mean() if valid[b, h].any() else 0.0
    m = np.tanh(e) / (1.0 + np.exp(-n))
    if gate == "doubled":
        m = 2.0 * m
    m = np.where(valid, m, 0.0)
    return np.einsum("bnts,bsnh->btnh", m, v), m


class CoDATest(parameterized.TestCase):

    @parameterized.parameters(*coda.CODA_GATES)
    def test_matches_float64_equations(self, gate):
        q, k, v, mask = _inputs()
        context, weights = jax.jit(lambda *a: coda.coda_attention(*a, gate=gate, alpha=0.7, beta=0.3,
                                                                  key_chunk_size=2))(
            *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask))
        want_context, want_weights = _numpy_coda(q, k, v, mask, gate, 0.7, 0.3)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(context, want_context, rtol=1e-5, atol=1e-6)
        self.assertTrue(np.any(np.asarray(weights) < 0) and np.any(np.asarray(weights) > 0))  # add and subtract

    def test_chunking_changes_nothing_and_defaults_scale_by_sqrt_h(self):
        q, k, v, mask = (jnp.asarray(x) for x in _inputs(1))
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
        outs = [coda.coda_attention(q, k, v, mask, key_chunk_size=c)[1] for c in (1, 2, 5, 128)]
        for other in outs[1:]:
            np.testing.assert_allclose(other, outs[0], rtol=1e-6, atol=1e-7)
        explicit = coda.coda_attention(q, k, v, mask, alpha=H ** -0.5, beta=H ** -0.5)[1]
        np.testing.assert_allclose(outs[0], explicit, rtol=1e-6, atol=1e-7)

    def test_separate_dissimilarity_projection(self):
        q, k, v, mask = _inputs(2)
        rng = np.random.default_rng(3)
        nq, nk = rng.standard_normal((B, T, N, 2)), rng.standard_normal((B, S, N, 2))
        weights = coda.coda_weights(*(jnp.asarray(x, jnp.float32) for x in (q, k)), jnp.asarray(mask),
                                    dissimilarity_query=jnp.asarray(nq, jnp.float32),
                                    dissimilarity_key=jnp.asarray(nk, jnp.float32), gate="plain", alpha=1.0, beta=1.0)
        e = np.einsum("btnh,bsnh->bnts", q, k)
        n = -np.transpose(np.abs(nq[:, :, None] - nk[:, None]).sum(-1), (0, 3, 1, 2))
        want = np.where(np.broadcast_to(mask, e.shape), np.tanh(e) / (1 + np.exp(-n)), 0.0)
        np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-6)

    def test_masked_keys_and_dead_rows(self):
        q, k, v, mask = (jnp.asarray(x) for x in _inputs())
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
        dead_keys = ~np.asarray(mask[:, 0].any(axis=1))  # [B, S]
        poison = lambda x: jnp.where(jnp.asarray(dead_keys)[:, :, None, None], jnp.nan, x)

        def loss(q, k, v):
            context, _ = coda.coda_attention(q, k, v, mask)
            return jnp.sum(jnp.sin(context))

        clean = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
        dirty = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, poison(k), poison(v))
        np.testing.assert_allclose(dirty[0], clean[0], rtol=1e-6)
        for got, want in zip(dirty[1], clean[1]):
            np.testing.assert_allclose(jnp.nan_to_num(got, nan=7.0), want, rtol=1e-5, atol=1e-7)
        context, _ = coda.coda_attention(q, k, v, mask)
        np.testing.assert_array_equal(context[1, 2], 0.0)  # a query with no valid key
        np.testing.assert_array_equal(clean[1][0][1, 2], 0.0)  # ... and no gradient

    def test_gradients_match_finite_differences(self):
        q, k, v, mask = _inputs(4)
        args = tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))
        fn = jax.jit(lambda q, k, v: jnp.sum(jnp.sin(coda.coda_attention(q, k, v, jnp.asarray(mask),
                                                                          key_chunk_size=2)[0])))
        jax.test_util.check_grads(fn, args, order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)

    def test_empty_sequences(self):
        q, k, v = (jnp.asarray(x, jnp.float32) for x in _inputs()[:3])
        context, weights = coda.coda_attention(q, k[:, :0], v[:, :0])
        self.assertEqual(weights.shape, (B, N, T, 0))
        np.testing.assert_array_equal(context, 0.0)
        context, weights = coda.coda_attention(q[:, :0], k, v)
        self.assertEqual(context.shape, (B, 0, N, 3))

    def test_bad_inputs_raise(self):
        q, k, v, mask = (jnp.asarray(x) for x in _inputs())
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
        with _raises(ValueError, "query", "key", str((B, S, N, H - 1))):
            coda.coda_weights(q, k[..., :-1])
        with _raises(ValueError, "mask", str((B, 1, T, S - 1))):
            coda.coda_weights(q, k, mask[..., :-1])
        with _raises(ValueError, "value", str((B, S - 1, N, 3))):
            coda.coda_attention(q, k, v[:, :-1])
        with _raises(ValueError, "gate", "softmax"):
            coda.coda_weights(q, k, gate="softmax")
        with _raises(ValueError, "dissimilarity"):
            coda.coda_weights(q, k, dissimilarity_query=q)
        with _raises(TypeError, "mask"):
            coda.coda_weights(q, k, mask.astype(jnp.int32))


if __name__ == "__main__":
    absltest.main()
