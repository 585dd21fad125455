"""Tests for MultiHeadAttention's relative positions ("rope", "alibi", "shaw") and per-head gates.

References are float64 numpy transcriptions of the papers' equations, computed from the module's own params:
RoPE (Su et al. 2021, arXiv:2104.09864, eq. 34, interleaved pairs), ALiBi (Press et al. 2021, arXiv:2108.12409,
§3, slopes 2^(-8h/N)), Shaw et al. 2018 (arXiv:1803.02155, eqs. 3-6) and head gates (Voita et al. 2019,
arXiv:1905.09418, §4). Tiny sizes (B=2, T<=7, D=8, N=4, H=2) so the file runs in seconds.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util as jtu
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers.multihead import MultiHeadAttention
from tests import reference as ref

B, T, D, N = 2, 6, 8, 4
H = D // N
ATOL = 1e-5


def _module(positions, **kwargs):
    return MultiHeadAttention(num_heads=N, positions=positions, bias_init=nn.initializers.normal(0.3), **kwargs)


def _x(seed=0, t=T, d=D):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, t, d)).astype(np.float32))


def _np_rope(x, base=10000.0):
    """[B, T, N, H] rotated at positions 0..T-1: pairs (x_2i, x_2i+1) by angle m * base^(-2i/H) (eq. 34)."""
    _, t, _, h = x.shape
    out = np.empty_like(x)
    for m in range(t):
        for i in range(h // 2):
            theta = m * base ** (-2.0 * i / h)
            c, s = np.cos(theta), np.sin(theta)
            a, b = x[:, m, :, 2 * i], x[:, m, :, 2 * i + 1]
            out[:, m, :, 2 * i] = c * a - s * b
            out[:, m, :, 2 * i + 1] = s * a + c * b
    return out


def _np_attention(params, x, positions, *, causal=False, key_lengths=None, shaw_k=None, gates=None):
    """float64 self-attention with positions; returns (output [B, T, D], weights [B, N, T, S])."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bsd,dnh->bsnh", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bsd,dnh->bsnh", x, p["value"]["kernel"]) + p["value"]["bias"]
    batch, t, heads, h = q.shape
    if positions == "rope":
        q, k = _np_rope(q), _np_rope(k)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    dist = np.arange(t)[None, :] - np.arange(t)[:, None]  # [T, S], s - t
    if positions == "alibi":
        slopes = np.array([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])
        logits = logits - slopes[None, :, None, None] * np.abs(dist)[None, None]
    if positions == "shaw":
        ids = np.clip(dist, -shaw_k, shaw_k) + shaw_k
        a_k, a_v = p["shaw_key"][ids], p["shaw_value"][ids]  # [T, S, H]
        logits = np.einsum("btnh,bsnh->bnts", q, k)
        for tt in range(t):
            for ss in range(t):  # eq. 5: e_ts = q_t (k_s + a^K_ts)^T / sqrt(H)
                logits[:, :, tt, ss] = np.einsum("bnh,bnh->bn", q[:, tt], k[:, ss] + a_k[tt, ss]) / np.sqrt(h)
    allowed = np.ones((batch, heads, t, t), bool)
    if causal:
        allowed &= np.tril(np.ones((t, t), bool))
    if key_lengths is not None:
        allowed &= (np.arange(t)[None, :] < np.asarray(key_lengths)[:, None])[:, None, None, :]
    w = ref.masked_softmax(logits, allowed)  # [B, N, T, S]
    z = np.einsum("bnts,bsnh->btnh", w, v)
    if positions == "shaw":  # eq. 3: z_t = sum_s w_ts (v_s + a^V_ts)
        z = z + np.einsum("bnts,tsh->btnh", w, a_v)
    if gates is not None:
        z = z * np.asarray(gates, np.float64)[None, None, :, None]
    return np.einsum("btnh,nhd->btd", z, p["out"]["kernel"]) + p["out"]["bias"], w


def _init(model, x, seed=0):
    return nn.unbox(model.init(jax.random.PRNGKey(seed), x)["params"])


class ReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(positions=("rope", "alibi"), causal=(False, True), masked=(False, True))
    def test_rope_alibi_match_numpy(self, positions, causal, masked):
        model = _module(positions)
        x = _x(1)
        params = _init(model, x)
        lengths = jnp.array([T, 3], jnp.int32) if masked else None
        fn = self.variant(lambda p, x, l: model.apply({"params": p}, x, is_causal=causal, key_lengths=l,
                                                       return_weights=True))
        out, weights = fn(params, x, lengths)
        chex.assert_shape(out, (B, T, D))
        expected, expected_w = _np_attention(params, x, positions, causal=causal, key_lengths=lengths)
        chex.assert_trees_all_close(out, expected.astype(np.float32), atol=ATOL, rtol=1e-5)
        chex.assert_trees_all_close(weights, expected_w.astype(np.float32), atol=ATOL, rtol=1e-5)
        # The positions matter: the same params without them give a different output.
        plain = MultiHeadAttention(num_heads=N).apply({"params": params}, x, is_causal=causal, key_lengths=lengths)
        self.assertGreater(float(jnp.max(jnp.abs(plain - out))), 1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(k=(0, 1, 3), masked=(False, True), causal=(False, True))
    def test_shaw_matches_eqs_3_to_6(self, k, masked, causal):
        model = _module("shaw", shaw_max_distance=k)
        x = _x(2 + k)
        params = _init(model, x, seed=k)
        chex.assert_shape([params["shaw_key"], params["shaw_value"]], (2 * k + 1, H))
        self.assertFalse(np.allclose(params["shaw_key"], params["shaw_value"]))  # separate tables
        lengths = jnp.array([4, 2], jnp.int32) if masked else None
        fn = self.variant(lambda p, x, l: model.apply({"params": p}, x, is_causal=causal, key_lengths=l,
                                                       return_weights=True))
        out, weights = fn(params, x, lengths)
        expected, expected_w = _np_attention(params, x, "shaw", causal=causal, key_lengths=lengths, shaw_k=k)
        chex.assert_trees_all_close(out, expected.astype(np.float32), atol=ATOL, rtol=1e-5)
        chex.assert_trees_all_close(weights, expected_w.astype(np.float32), atol=ATOL, rtol=1e-5)

    @parameterized.parameters(("rope", 4), ("alibi", 1), ("shaw", 3))
    def test_positions_with_qk_head_dim(self, positions, d_k):
        # d_k != d_v = H (Table 3 row B of arXiv:1706.03762): the reference scales by sqrt(d_k), and the Shaw key
        # table has d_k columns, the value table d_v.
        model = _module(positions, qk_head_dim=d_k, shaw_max_distance=2)
        x = _x(7)
        params = _init(model, x)
        chex.assert_shape([params["query"]["kernel"], params["value"]["kernel"]], [(D, N, d_k), (D, N, H)])
        if positions == "shaw":
            chex.assert_shape([params["shaw_key"], params["shaw_value"]], [(5, d_k), (5, H)])
        lengths = jnp.array([T, 3], jnp.int32)
        out, weights = model.apply({"params": params}, x, is_causal=True, key_lengths=lengths, return_weights=True)
        expected, expected_w = _np_attention(params, x, positions, causal=True, key_lengths=lengths, shaw_k=2)
        chex.assert_trees_all_close(out, expected.astype(np.float32), atol=ATOL, rtol=1e-5)
        chex.assert_trees_all_close(weights, expected_w.astype(np.float32), atol=ATOL, rtol=1e-5)

    def test_shaw_clipping_distance_matters(self):
        # With T > k + 1, distances beyond k share a row; perturbing the last row of the key table moves only
        # logits with s - t >= k, so k=1 and k=3 must disagree once the tables are trained apart.
        x = _x(3)
        params = _init(_module("shaw", shaw_max_distance=1), x)
        bumped = jax.tree.map(lambda a: a, params)
        bumped["shaw_key"] = params["shaw_key"].at[2].add(1.0)  # the row of clip(s - t) = +1
        _, w0 = _module("shaw", shaw_max_distance=1).apply({"params": params}, x, return_weights=True)
        _, w1 = _module("shaw", shaw_max_distance=1).apply({"params": bumped}, x, return_weights=True)
        changed = np.abs(np.asarray(w1 - w0)).max(axis=(0, 1)) > 1e-6  # [T, S]
        # Every row t with a key at s > t has changed weights; the last row has none with s > t, unchanged.
        self.assertTrue(np.all(changed[:-1].any(axis=-1)))
        self.assertFalse(changed[-1].any())

    def test_rope_is_relative_shift_through_cache(self):
        # Same tokens written at cache slots p..p+T-1 with slots < p masked out: relative schemes give the same
        # output as the plain causal pass at 0..T-1, since logits depend only on s - t.
        t, p = 4, 3
        x = _x(4, t=t)
        for positions in ("rope", "alibi", "shaw"):
            model = _module(positions, shaw_max_distance=2)
            params = _init(model, x)
            full = model.apply({"params": params}, x, is_causal=True)
            decoder = _module(positions, shaw_max_distance=2, decode=True)
            cache = nn.unbox(decoder.init(jax.random.PRNGKey(0), jnp.zeros((B, p + t, D)))["cache"])
            _, state = decoder.apply({"params": params, "cache": cache}, _x(9, t=p), mutable=["cache"])
            hide = jnp.broadcast_to(jnp.asarray(np.arange(p + t) >= p), (1, 1, t, p + t))  # [1, 1, T, S_max]
            shifted, _ = decoder.apply({"params": params, **state}, x, mask=hide, mutable=["cache"])
            chex.assert_trees_all_close(shifted, full, atol=1e-4, rtol=1e-4)
        # Absolute information would break it: RoPE on only the queries is not shift invariant, so check the
        # shifted queries alone do change the logits (the test above can fail).
        q = np.random.default_rng(0).normal(size=(1, 1, 1, 4))
        from attention_jax.core.positional import apply_rope
        q0 = apply_rope(jnp.asarray(q, jnp.float32), jnp.zeros((1, 1), jnp.int32))
        q3 = apply_rope(jnp.asarray(q, jnp.float32), jnp.full((1, 1), 3, jnp.int32))
        self.assertGreater(float(jnp.max(jnp.abs(q0 - q3))), 1e-2)


class DecodeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("rope", "alibi", "shaw")
    def test_prefill_then_steps_equals_full_causal(self, positions):
        length, prefill = 7, 3
        x = _x(5, t=length)
        model = _module(positions, shaw_max_distance=2)
        params = _init(model, x)
        full = model.apply({"params": params}, x, is_causal=True)
        decoder = _module(positions, shaw_max_distance=2, decode=True)
        cache = nn.unbox(decoder.init(jax.random.PRNGKey(0), jnp.zeros((B, length, D)))["cache"])
        step = self.variant(lambda p, c, xs: decoder.apply({"params": p, "cache": c}, xs, mutable=["cache"]))
        out, state = step(params, cache, x[:, :prefill])
        pieces = [out]
        for t in range(prefill, length):
            out, state = step(params, state["cache"], x[:, t:t + 1])
            pieces.append(out)
        self.assertEqual(int(state["cache"]["cache_index"]), length)
        chex.assert_trees_all_close(jnp.concatenate(pieces, axis=1), full, atol=ATOL, rtol=1e-5)


class GradTest(parameterized.TestCase):
    @parameterized.parameters("rope", "alibi", "shaw")
    def test_check_grads(self, positions):
        model = _module(positions, shaw_max_distance=1)
        x = _x(6, t=4)
        params = _init(model, x)
        lengths = jnp.array([4, 3], jnp.int32)

        def loss(p, inputs):
            out = model.apply({"params": p}, inputs, is_causal=True, key_lengths=lengths)
            return jnp.sum(jnp.sin(out))

        jtu.check_grads(loss, (params, x), order=1, modes=["rev"], eps=1e-3, atol=3e-2, rtol=3e-2)

    def test_shaw_table_grads_match_numpy_finite_differences(self):
        k = 1
        model = _module("shaw", shaw_max_distance=k)
        x = _x(7, t=4)
        params = _init(model, x)
        loss = lambda p: jnp.sum(model.apply({"params": p}, x, is_causal=True) ** 2)
        grads = jax.grad(loss)(params)

        def np_loss(table_name, row, col, delta):
            p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
            p[table_name] = p[table_name].copy()
            p[table_name][row, col] += delta
            return np.sum(_np_attention(p, x, "shaw", causal=True, shaw_k=k)[0] ** 2)

        for name in ("shaw_key", "shaw_value"):
            fd = np.array([[(np_loss(name, r, c, 1e-6) - np_loss(name, r, c, -1e-6)) / 2e-6 for c in range(H)]
                           for r in range(2 * k + 1)])
            chex.assert_trees_all_close(grads[name], fd.astype(np.float32), atol=1e-3, rtol=1e-3)
            # Causal: clip(s - t) = +1 never occurs, so that row gets no gradient.
            np.testing.assert_array_equal(np.asarray(grads[name])[2 * k], 0.0)
            self.assertGreater(float(np.abs(fd[:k + 1]).max()), 1e-3)


class HeadGatesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(None, "rope", "shaw")
    def test_ones_equal_no_gates_and_zero_removes_head(self, positions):
        model = _module(positions, shaw_max_distance=2)
        x = _x(8)
        params = _init(model, x)
        fn = self.variant(lambda p, g: model.apply({"params": p}, x, is_causal=True, head_gates=g))
        plain = model.apply({"params": params}, x, is_causal=True)
        chex.assert_trees_all_close(fn(params, jnp.ones((N,))), plain, atol=1e-6, rtol=1e-6)
        for i in range(N):
            gates = jnp.ones((N,)).at[i].set(0.0)
            zeroed = jax.tree.map(lambda a: a, params)
            zeroed["out"] = dict(params["out"], kernel=params["out"]["kernel"].at[i].set(0.0))
            chex.assert_trees_all_close(fn(params, gates), model.apply({"params": zeroed}, x, is_causal=True),
                                        atol=1e-6, rtol=1e-6)
            self.assertGreater(float(jnp.max(jnp.abs(fn(params, gates) - plain))), 1e-4)

    def test_fractional_gates_match_numpy(self):
        model = _module("alibi")
        x = _x(9)
        params = _init(model, x)
        gates = jnp.array([0.0, 0.25, 1.0, 0.6])
        out = model.apply({"params": params}, x, head_gates=gates)
        expected, _ = _np_attention(params, x, "alibi", gates=gates)
        chex.assert_trees_all_close(out, expected.astype(np.float32), atol=ATOL, rtol=1e-5)

    def test_bad_gates(self):
        model = _module(None)
        x = _x(0)
        params = _init(model, x)
        with pytest.raises(ValueError, match="head_gates"):
            model.apply({"params": params}, x, head_gates=jnp.ones((N + 1,)))
        with pytest.raises(ValueError, match="head_gates"):
            model.apply({"params": params}, x, head_gates=jnp.ones((1, N)))
        with pytest.raises(TypeError, match="head_gates"):
            model.apply({"params": params}, x, head_gates=jnp.ones((N,), jnp.int32))


class ErrorsTest(parameterized.TestCase):
    @parameterized.parameters("rope", "alibi", "shaw")
    def test_positions_with_cross_attention(self, positions):
        x = _x(0)
        with pytest.raises(ValueError, match=re.escape(f"positions={positions!r}")):
            _module(positions).init(jax.random.PRNGKey(0), x, _x(1, t=3))

    def test_bad_construction(self):
        with pytest.raises(ValueError, match="positions must be None or one of"):
            MultiHeadAttention(num_heads=N, positions="sinusoidal")
        with pytest.raises(ValueError, match="shaw_max_distance"):
            MultiHeadAttention(num_heads=N, positions="shaw", shaw_max_distance=-1)
        with pytest.raises(ValueError, match="shaw_max_distance"):
            MultiHeadAttention(num_heads=N, positions="shaw", shaw_max_distance=1.5)

    def test_rope_odd_head_dim(self):
        with pytest.raises(ValueError, match="even head dim, got H=3"):
            MultiHeadAttention(num_heads=2, head_dim=3, positions="rope").init(jax.random.PRNGKey(0), _x(0))
        with pytest.raises(ValueError, match="even head dim, got H=3 .qk_head_dim"):
            MultiHeadAttention(num_heads=2, qk_head_dim=3, positions="rope").init(jax.random.PRNGKey(0), _x(0))
        # An even explicit head dim works.
        MultiHeadAttention(num_heads=2, head_dim=4, positions="rope").init(jax.random.PRNGKey(0), _x(0))


if __name__ == "__main__":
    absltest.main()
