"""Tests for attention_jax/positional.py against float64 numpy transcriptions of the paper equations.

Vaswani et al. 2017 (arXiv:1706.03762) §3.5; Shaw et al. 2018 (arXiv:1803.02155) eq. 3-6; Su et al. 2021
(arXiv:2104.09864) eq. 34; Press et al. 2021 (arXiv:2108.12409) §3; Wang et al. 2020 (arXiv:1912.12333) §3.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax import test_util as jtu

import attention_jax as aj
from attention_jax.core import positional as pos

B, T, S, N, H = 2, 3, 5, 2, 4
K = 2  # Shaw max distance; S - 1 > K so clipping happens.


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np_sinusoid(positions, dim, base=10000.0):
    out = np.zeros(positions.shape + (dim,))
    for idx in np.ndindex(positions.shape):
        for j in range(dim):
            i = j // 2
            angle = positions[idx] / base ** (2.0 * i / dim)
            out[idx + (j,)] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return out


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


class SinusoidalTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(4, 5)
    def test_matches_formula(self, dim):
        got = self.variant(lambda: pos.sinusoidal_positions(7, dim))()
        chex.assert_shape(got, (7, dim))
        np.testing.assert_allclose(got, _np_sinusoid(np.arange(7.0), dim), atol=1e-5)

    def test_interleaved_not_half_split(self):
        got = np.asarray(pos.sinusoidal_positions(3, 6))
        np.testing.assert_allclose(got[:, 0], np.sin(np.arange(3)), atol=1e-6)
        np.testing.assert_allclose(got[:, 1], np.cos(np.arange(3)), atol=1e-6)

    def test_at_offsets_equals_table_rows(self):
        table = pos.sinusoidal_positions(20, 8)
        positions = jnp.array([[4, 5, 6], [11, 12, 13]])
        got = pos.sinusoidal_at(positions, 8)
        chex.assert_shape(got, (2, 3, 8))
        np.testing.assert_allclose(got, np.asarray(table)[np.asarray(positions)], atol=1e-6)

    def test_dtype(self):
        self.assertEqual(pos.sinusoidal_positions(3, 4, dtype=jnp.bfloat16).dtype, jnp.bfloat16)

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "length"):
            pos.sinusoidal_positions(0, 4)
        with self.assertRaisesRegex(ValueError, r"rank 2, got shape \(3,\)"):
            pos.sinusoidal_at(jnp.arange(3), 4)


class LearnedPositionsTest(absltest.TestCase):

    def test_lookup_and_range_check(self):
        module = pos.LearnedPositions(max_length=6, features=3)
        positions = jnp.array([[0, 1, 5], [2, 2, 3]])
        params = nn.unbox(module.init(jax.random.PRNGKey(0), positions))
        table = np.asarray(params["params"]["table"])
        got = module.apply(params, positions)
        chex.assert_shape(got, (2, 3, 3))
        np.testing.assert_allclose(got, table[np.asarray(positions)])
        with self.assertRaisesRegex(ValueError, r"max_length=6.*max 6"):
            module.apply(params, jnp.array([[0, 6]]))
        with self.assertRaisesRegex(TypeError, "integer"):
            module.apply(params, jnp.zeros((1, 2)))

    def test_traced_positions_clip(self):
        module = pos.LearnedPositions(max_length=4, features=2)
        params = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
        got = jax.jit(module.apply)(params, jnp.array([[9]]))
        np.testing.assert_allclose(got[0, 0], params["params"]["table"][3])


class ShawTest(chex.TestCase):

    def _tables(self, seed=0):
        rng = _rng(seed)
        query = rng.standard_normal((B, T, N, H)).astype(np.float32)
        table_k = rng.standard_normal((2 * K + 1, H)).astype(np.float32)
        table_v = rng.standard_normal((2 * K + 1, H)).astype(np.float32)
        return query, table_k, table_v

    def test_ids_clip(self):
        ids = np.asarray(pos.relative_position_ids(3, 5, 2))
        expected = np.array([[2, 3, 4, 4, 4], [1, 2, 3, 4, 4], [0, 1, 2, 3, 4]])
        np.testing.assert_array_equal(ids, expected)
        self.assertEqual(ids.dtype, np.int32)
        shifted = np.asarray(pos.relative_position_ids(2, 5, 1, query_offset=3))
        np.testing.assert_array_equal(shifted, [[0, 0, 0, 1, 2], [0, 0, 0, 0, 1]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_logits_and_values_match_loops(self):
        query, table_k, table_v = self._tables()
        ids = pos.relative_position_ids(T, S, K)
        weights = _np_softmax(_rng(1).standard_normal((B, N, T, S))).astype(np.float32)
        logits = self.variant(lambda q, t, i: pos.shaw_logits(q, t, i, scale=0.5))(query, table_k, ids)
        values = self.variant(pos.shaw_values)(weights, table_v, ids)
        chex.assert_shape(logits, (B, N, T, S))
        chex.assert_shape(values, (B, T, N, H))
        self.assertEqual(logits.dtype, jnp.float32)
        want_l = np.zeros((B, N, T, S))
        want_v = np.zeros((B, T, N, H))
        for b in range(B):
            for n in range(N):
                for t in range(T):
                    for s in range(S):
                        a = int(np.clip(s - t, -K, K) + K)
                        want_l[b, n, t, s] = 0.5 * np.dot(query[b, t, n].astype(np.float64), table_k[a])
                        want_v[b, t, n] += weights[b, n, t, s] * table_v[a].astype(np.float64)
        np.testing.assert_allclose(logits, want_l, atol=1e-5)
        np.testing.assert_allclose(values, want_v, atol=1e-5)

    def test_full_attention_matches_eq_3_to_6(self):
        query, table_k, table_v = self._tables()
        rng = _rng(2)
        key = rng.standard_normal((B, S, N, H)).astype(np.float32)
        value = rng.standard_normal((B, S, N, H)).astype(np.float32)
        ids = pos.relative_position_ids(T, S, K)
        bias = pos.shaw_logits(query, table_k, ids, scale=1.0 / np.sqrt(H))
        out, weights, _ = aj.dot_product_attention(query, key, value, bias=bias, return_weights=True)
        got = out + pos.shaw_values(weights, table_v, ids)
        want = np.zeros((B, T, N, H))
        q, k, v = (x.astype(np.float64) for x in (query, key, value))
        for b in range(B):
            for n in range(N):
                for t in range(T):
                    e = np.array([
                        np.dot(q[b, t, n], k[b, s, n] + table_k[int(np.clip(s - t, -K, K) + K)]) / np.sqrt(H)
                        for s in range(S)
                    ])  # eq. 5
                    alpha = _np_softmax(e)  # eq. 4
                    for s in range(S):
                        want[b, t, n] += alpha[s] * (v[b, s, n] + table_v[int(np.clip(s - t, -K, K) + K)])  # eq. 3
        np.testing.assert_allclose(got, want, atol=1e-5)

    def test_grads(self):
        query, table_k, _ = self._tables()
        ids = pos.relative_position_ids(T, S, K)
        jtu.check_grads(lambda q, t: pos.shaw_logits(q, t, ids), (query, table_k), order=1, modes=["rev"],
                        atol=1e-2, rtol=1e-2)

    def test_bad_inputs(self):
        query, table_k, table_v = self._tables()
        ids = pos.relative_position_ids(T, S, K)
        with self.assertRaisesRegex(ValueError, r"head dims differ.*\(5, 3\)"):
            pos.shaw_logits(query, table_k[:, :3], ids)
        with self.assertRaisesRegex(ValueError, r"T=3 rows.*\(4, 5\)"):
            pos.shaw_logits(query, table_k, pos.relative_position_ids(4, S, K))
        with self.assertRaisesRegex(ValueError, r"\[0, 3\)"):
            pos.shaw_logits(query, table_k[:3], ids)
        with self.assertRaisesRegex(TypeError, "integer"):
            pos.shaw_logits(query, table_k, ids.astype(jnp.float32))
        with self.assertRaisesRegex(ValueError, r"\(2, 2, 3, 4\).*\(3, 5\)"):
            pos.shaw_values(jnp.zeros((B, N, T, 4)), table_v, ids)
        with self.assertRaisesRegex(ValueError, "max_distance"):
            pos.relative_position_ids(T, S, -1)


def _np_rope(x, positions, base=10000.0):
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    h = x.shape[-1]
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            m = positions[b, t]
            rot = np.zeros((h, h))  # the block-diagonal R^d_{Theta,m} of eq. 15
            for i in range(h // 2):
                a = m * base ** (-2.0 * i / h)
                rot[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
            out[b, t] = x[b, t] @ rot.T
    return out


class RopeTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_rotation_matrix(self):
        x = _rng(0).standard_normal((B, T, N, H)).astype(np.float32)
        positions = np.array([[0, 1, 2], [7, 3, 11]])
        got = self.variant(pos.apply_rope)(x, positions)
        chex.assert_shape(got, x.shape)
        np.testing.assert_allclose(got, _np_rope(x, positions), atol=1e-5)

    def test_relative_property_and_norm(self):
        rng = _rng(1)
        q = rng.standard_normal((1, T, 1, 8)).astype(np.float32)
        k = rng.standard_normal((1, T, 1, 8)).astype(np.float32)
        p = jnp.array([[0, 2, 5]])

        def dots(shift):
            qr, kr = pos.apply_rope(q, p + shift), pos.apply_rope(k, p + shift)
            return jnp.einsum("BTNH,BSNH->BNTS", qr, kr)

        np.testing.assert_allclose(dots(0), dots(5), atol=1e-5)
        self.assertGreater(float(jnp.abs(dots(0) - jnp.einsum("BTNH,BSNH->BNTS", q, k)).max()), 1e-3)
        np.testing.assert_allclose(
            jnp.linalg.norm(pos.apply_rope(q, p), axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5)

    def test_bf16_keeps_dtype(self):
        x = jnp.asarray(_rng(2).standard_normal((B, T, N, H)), jnp.bfloat16)
        positions = np.array([[0, 1, 2], [3, 4, 5]])
        got = pos.apply_rope(x, positions)
        self.assertEqual(got.dtype, jnp.bfloat16)
        np.testing.assert_allclose(np.asarray(got, np.float32), _np_rope(np.asarray(x, np.float32), positions),
                                   atol=2e-2, rtol=2e-2)

    def test_grads(self):
        x = _rng(3).standard_normal((1, 2, 1, 4)).astype(np.float32)
        positions = jnp.array([[1, 4]])
        jtu.check_grads(lambda y: pos.apply_rope(y, positions), (x,), order=1, modes=["fwd", "rev"],
                        atol=1e-2, rtol=1e-2)

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, r"even head dim.*\(2, 3, 2, 3\)"):
            pos.apply_rope(jnp.zeros((B, T, N, 3)), jnp.zeros((B, T), jnp.int32))
        with self.assertRaisesRegex(ValueError, r"\(2, 3\).*\(2, 4\)"):
            pos.apply_rope(jnp.zeros((B, T, N, H)), jnp.zeros((B, 4), jnp.int32))
        with self.assertRaisesRegex(TypeError, "floating"):
            pos.apply_rope(jnp.zeros((B, T, N, H), jnp.int32), jnp.zeros((B, T), jnp.int32))


class AlibiTest(chex.TestCase):

    def test_slopes(self):
        np.testing.assert_allclose(pos.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
        np.testing.assert_allclose(pos.alibi_slopes(6), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])
        np.testing.assert_allclose(pos.alibi_slopes(1), [2.0 ** -8])
        self.assertEqual(pos.alibi_slopes(5).dtype, jnp.float32)

    def test_bias_values(self):
        got = pos.alibi_bias(2, 3, 5, query_offset=2)
        chex.assert_shape(got, (1, 2, 3, 5))
        slopes = np.array([2.0 ** -4, 2.0 ** -8])
        t = np.arange(3)[:, None] + 2
        s = np.arange(5)[None, :]
        np.testing.assert_allclose(got[0], -slopes[:, None, None] * (t - s), atol=1e-7)

    def test_in_attention(self):
        rng = _rng(4)
        heads = 3
        q = rng.standard_normal((B, S, heads, H)).astype(np.float32)
        k = rng.standard_normal((B, S, heads, H)).astype(np.float32)
        v = rng.standard_normal((B, S, heads, H)).astype(np.float32)
        got = aj.dot_product_attention(q, k, v, bias=pos.alibi_bias(heads, S, S), is_causal=True)
        slopes = np.array([2.0 ** -4, 2.0 ** -8, 2.0 ** -2])  # N=3: P=2 -> [1/16, 1/256] + [1/4]
        want = np.zeros((B, S, heads, H))
        for b in range(B):
            for n in range(heads):
                logits = q[b, :, n].astype(np.float64) @ k[b, :, n].T / np.sqrt(H)
                logits -= slopes[n] * (np.arange(S)[:, None] - np.arange(S)[None, :])
                logits = np.where(np.tril(np.ones((S, S), bool)), logits, -np.inf)
                want[b, :, n] = _np_softmax(logits) @ v[b, :, n]
        np.testing.assert_allclose(got, want, atol=1e-5)

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "num_heads"):
            pos.alibi_slopes(0)
        with self.assertRaisesRegex(ValueError, "query_offset"):
            pos.alibi_bias(2, 3, 3, query_offset=-1)


class ComplexOrderTest(chex.TestCase):

    def _params(self, shape, seed=0):
        rng = _rng(seed)
        return tuple(rng.standard_normal(shape).astype(np.float32) for _ in range(3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_formula(self):
        r, w, theta = self._params((B, T, H))
        positions = np.array([[0, 1, 2], [5, 6, 9]])
        real, imag = self.variant(pos.complex_word_order_embedding)(r, w, theta, positions)
        angle = w.astype(np.float64) * positions[..., None] + theta
        np.testing.assert_allclose(real, r * np.cos(angle), atol=1e-5)
        np.testing.assert_allclose(imag, r * np.sin(angle), atol=1e-5)

    def test_unbatched_params_broadcast(self):
        r, w, theta = self._params((T, H))
        positions = np.array([[0, 1, 2], [3, 4, 5]])
        real, imag = pos.complex_word_order_embedding(r, w, theta, positions)
        chex.assert_shape((real, imag), (B, T, H))
        np.testing.assert_allclose(imag[1], r * np.sin(w * positions[1][:, None] + theta), atol=1e-5)

    def test_offset_is_a_position_free_rotation(self):
        module = pos.ComplexOrderEmbedding(vocab_size=7, features=H)
        tokens = jnp.array([[1, 4, 6]])
        params = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, jnp.zeros((1, 3), jnp.int32)))
        freq = np.asarray(params["params"]["frequency"])[np.asarray(tokens)]  # [1, T, D]
        shift = 3
        for start in (0, 10):
            p = jnp.array([[start, start + 1, start + 2]])
            re0, im0 = module.apply(params, tokens, p)
            re1, im1 = module.apply(params, tokens, p + shift)
            c, s = np.cos(freq * shift), np.sin(freq * shift)  # the rotation depends on the offset only
            np.testing.assert_allclose(re1, c * re0 - s * im0, atol=1e-4)
            np.testing.assert_allclose(im1, s * re0 + c * im0, atol=1e-4)

    def test_bad_inputs(self):
        r, w, theta = self._params((B, T, H))
        with self.assertRaisesRegex(ValueError, r"shapes differ.*\(2, 3, 3\)"):
            pos.complex_word_order_embedding(r, w[..., :3], theta, np.zeros((B, T), np.int32))
        with self.assertRaisesRegex(ValueError, r"\(2, 3, 4\).*\(2, 4\)"):
            pos.complex_word_order_embedding(r, w, theta, np.zeros((B, 4), np.int32))
        module = pos.ComplexOrderEmbedding(vocab_size=7, features=H)
        with self.assertRaisesRegex(ValueError, r"\(1, 3\).*\(1, 2\)"):
            module.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32))


if __name__ == "__main__":
    absltest.main()
