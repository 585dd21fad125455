"""Tests for attention_jax/multihead.py: MultiHeadAttention (arXiv:1706.03762 §3.2.2, GQA arXiv:2305.13245).

Tiny sizes (D=8, N=4, K in {4, 2, 1}, T, S <= 6) so the file runs in seconds on one CPU core.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax import dot_product_attention
from attention_jax.layers.multihead import MultiHeadAttention
from tests import reference as ref

B, T, S, D, N = 2, 5, 6, 8, 4
ATOL = 1e-5


def _raises(*fragments):
    """pytest.raises(ValueError) that also checks every fragment (a value or shape) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(ValueError, match=pattern)


def _module(num_kv_heads=N, **kwargs):
    # Non-zero biases so the reference checks every parameter.
    return MultiHeadAttention(num_heads=N, num_kv_heads=num_kv_heads, bias_init=nn.initializers.normal(0.3), **kwargs)


def _inputs(seed=0, t=T, s=S, d_kv=D):
    rng = np.random.default_rng(seed)
    xq = rng.normal(size=(B, t, D)).astype(np.float32)
    xkv = rng.normal(size=(B, s, d_kv)).astype(np.float32)
    return jnp.asarray(xq), jnp.asarray(xkv)


def _random_mask(seed, t, s):
    mask = np.random.default_rng(seed).random((B, 1, t, s)) < 0.6
    mask[0, 0, 1] = False  # one fully masked row
    return jnp.asarray(mask)


def _np_multihead(params, xq, xkv, mask=None, causal=False, normalizer=None):
    """float64 numpy MultiHead(Q, K, V) = Concat(head_1..head_N) W^O (arXiv:1706.03762 §3.2.2).

    head_i = softmax(Q W^Q_i (K W^K_i)^T / sqrt(d_k)) V W^V_i, with key/value head i // G for GQA; d_k is the
    query/key head size and d_v (the value head size) may differ (Table 3 row B). `normalizer` (a float64
    function of (logits, mask), e.g. `reference.sparsemax`) replaces the softmax.
    """
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    xq, xkv = np.asarray(xq, np.float64), np.asarray(xkv, np.float64)
    q = np.einsum("btd,dnh->btnh", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bsd,dkh->bskh", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bsd,dkh->bskh", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    heads, kv_heads, d_k, d_v = q.shape[2], k.shape[2], q.shape[3], v.shape[3]
    t, s = q.shape[1], k.shape[1]
    allowed = np.ones((xq.shape[0], heads, t, s), bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask), allowed.shape)
    if causal:
        allowed &= np.tril(np.ones((t, s), bool))
    outs = []
    for i in range(heads):
        j = i // (heads // kv_heads)  # the key/value head of query head i
        logits = np.einsum("bth,bsh->bts", q[:, :, i], k[:, :, j]) / np.sqrt(d_k)
        if normalizer is not None:
            w = normalizer(logits, allowed[:, i])
            outs.append(np.einsum("bts,bsh->bth", w, v[:, :, j]))
            continue
        logits = np.where(allowed[:, i], logits, -np.inf)
        top = np.max(logits, axis=-1, keepdims=True)
        e = np.where(allowed[:, i], np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
        z = e.sum(-1, keepdims=True)
        w = np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)
        outs.append(np.einsum("bts,bsh->bth", w, v[:, :, j]))
    concat = np.concatenate(outs, axis=-1)  # [B, T, N*d_v]
    w_o = p["out"]["kernel"].reshape(heads * d_v, -1)
    return concat @ w_o + p["out"]["bias"]


class ReferenceTest(parameterized.TestCase):
    @parameterized.product(kv_heads=(4, 2, 1), cross=(False, True), masked=(False, True))
    def test_matches_numpy_multihead(self, kv_heads, cross, masked):
        model = _module(kv_heads)
        xq, xkv = _inputs(kv_heads)
        xkv = xkv if cross else None
        s = S if cross else T
        mask = _random_mask(kv_heads, T, s) if masked else None
        params = nn.unbox(model.init(jax.random.PRNGKey(kv_heads), xq, xkv)["params"])
        out = model.apply({"params": params}, xq, xkv, mask=mask)
        chex.assert_shape(out, (B, T, D))
        expected = _np_multihead(params, xq, xq if xkv is None else xkv, mask)
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-5)

    @parameterized.parameters(("sparsemax", ref.sparsemax), ("entmax15", ref.entmax))
    def test_sparse_normalizer_matches_numpy(self, normalizer, reference):
        model = _module(2, normalizer=normalizer)
        xq, xkv = _inputs(5)
        mask = _random_mask(5, T, S)
        params = nn.unbox(model.init(jax.random.PRNGKey(5), xq, xkv)["params"])
        out, weights = jax.jit(lambda p: model.apply({"params": p}, xq, xkv, mask=mask, return_weights=True))(params)
        expected = _np_multihead(params, xq, xkv, mask, normalizer=reference)
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-5)
        self.assertTrue(np.any(np.asarray(weights) == 0.0) and np.all(np.isfinite(weights)))
        with pytest.raises(ValueError, match="normalizer"):
            _module(2, normalizer=normalizer, implementation="blockwise").apply({"params": params}, xq, xkv)
        with pytest.raises(ValueError, match="softmax_"):
            _module(2, normalizer="softmax_")

    @parameterized.parameters(4, 2, 1)
    def test_matches_jax_nn_on_projections(self, kv_heads):
        model = _module(kv_heads, out_features=3, head_dim=5)
        xq, xkv = _inputs(10 + kv_heads)
        mask = _random_mask(kv_heads, T, S)
        mask = mask.at[0, 0, 1].set(True)  # jax.nn gives uniform weights on fully masked rows; avoid them
        params = nn.unbox(model.init(jax.random.PRNGKey(0), xq, xkv)["params"])
        out = model.apply({"params": params}, xq, xkv, mask=mask)
        chex.assert_shape(out, (B, T, 3))
        p = params
        q = jnp.einsum("btd,dnh->btnh", xq, p["query"]["kernel"]) + p["query"]["bias"]
        k = jnp.einsum("bsd,dkh->bskh", xkv, p["key"]["kernel"]) + p["key"]["bias"]
        v = jnp.einsum("bsd,dkh->bskh", xkv, p["value"]["kernel"]) + p["value"]["bias"]
        k, v = jnp.repeat(k, N // kv_heads, axis=2), jnp.repeat(v, N // kv_heads, axis=2)
        ctx = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, T, N, H]
        expected = jnp.einsum("btnh,nho->bto", ctx, p["out"]["kernel"]) + p["out"]["bias"]
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-5)

    @parameterized.parameters(4, 2, 1)
    def test_segment_ids_match_jax_nn_and_numpy(self, kv_heads):
        model = _module(kv_heads)
        xq, _ = _inputs(20 + kv_heads, t=6)  # T = 6
        segments = jnp.array([[0, 0, 0, 1, 1, 2], [5, 5, 7, 7, 7, 7]], jnp.int32)  # packed sequences
        params = nn.unbox(model.init(jax.random.PRNGKey(2), xq)["params"])
        out = model.apply({"params": params}, xq, segment_ids=segments, is_causal=True)
        same = np.asarray(segments)[:, :, None] == np.asarray(segments)[:, None, :]  # [B, T, T]
        expected = _np_multihead(params, xq, xq, same[:, None], causal=True)
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-5)
        p = params
        q = jnp.einsum("btd,dnh->btnh", xq, p["query"]["kernel"]) + p["query"]["bias"]
        k = jnp.einsum("bsd,dkh->bskh", xq, p["key"]["kernel"]) + p["key"]["bias"]
        v = jnp.einsum("bsd,dkh->bskh", xq, p["value"]["kernel"]) + p["value"]["bias"]
        k, v = jnp.repeat(k, N // kv_heads, axis=2), jnp.repeat(v, N // kv_heads, axis=2)
        mask = jnp.asarray(same)[:, None] & jnp.tril(jnp.ones((6, 6), bool))
        ctx = jax.nn.dot_product_attention(q, k, v, mask=mask)
        np.testing.assert_allclose(out, jnp.einsum("btnh,nho->bto", ctx, p["out"]["kernel"]) + p["out"]["bias"],
                                   atol=ATOL, rtol=1e-5)
        # A packed row equals its segments run one at a time.
        alone = model.apply({"params": params}, xq[:1, 3:5], is_causal=True)
        np.testing.assert_allclose(out[:1, 3:5], alone, atol=ATOL, rtol=1e-5)

    def test_segment_ids_errors(self):
        model = _module(2)
        xq, _ = _inputs(1)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), xq)["params"])
        with pytest.raises(ValueError, match="segment"):
            model.apply({"params": params}, xq, segment_ids=jnp.zeros((B, T + 1), jnp.int32))
        with pytest.raises(ValueError, match="segment_ids are not supported with decode=True"):
            _module(2, decode=True).init(jax.random.PRNGKey(0), xq, segment_ids=jnp.zeros((B, T), jnp.int32))

    def test_causal_matches_numpy_and_key_lengths(self):
        model = _module(2)
        xq, _ = _inputs(3)
        params = nn.unbox(model.init(jax.random.PRNGKey(1), xq)["params"])
        out = model.apply({"params": params}, xq, is_causal=True)
        np.testing.assert_allclose(out, _np_multihead(params, xq, xq, causal=True), atol=ATOL, rtol=1e-5)
        lengths = jnp.array([T, 2], jnp.int32)
        out = model.apply({"params": params}, xq, key_lengths=lengths)
        key_mask = (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
        np.testing.assert_allclose(out, _np_multihead(params, xq, xq, key_mask), atol=ATOL, rtol=1e-5)


class DecodeTest(parameterized.TestCase):
    @parameterized.product(kv_heads=(4, 2), prefill=(3, 6, 1))
    def test_incremental_equals_full_causal(self, kv_heads, prefill):
        self._check_incremental(kv_heads, prefill)

    @parameterized.parameters((2, 3, 5))
    def test_incremental_with_qk_head_dim(self, kv_heads, prefill, qk_head_dim):
        # d_k != d_v = D // N = 2: the key cache holds d_k features, the value cache d_v (d_k < d_v is stepped by
        # MultiHeadQKHeadDimContractTest in tests/layers/contract_test.py).
        self._check_incremental(kv_heads, prefill, qk_head_dim=qk_head_dim)

    def _check_incremental(self, kv_heads, prefill, qk_head_dim=None):
        length = 6
        x, _ = _inputs(20 + kv_heads, t=length)
        params = nn.unbox(_module(kv_heads, qk_head_dim=qk_head_dim).init(jax.random.PRNGKey(2), x)["params"])
        full = _module(kv_heads, qk_head_dim=qk_head_dim).apply({"params": params}, x, is_causal=True)  # [B, 6, D]

        decoder = _module(kv_heads, qk_head_dim=qk_head_dim, decode=True)
        cache = nn.unbox(decoder.init(jax.random.PRNGKey(2), jnp.zeros((B, length, D)))["cache"])  # S_max = 6
        chex.assert_shape(cache["cached_key"], (B, length, kv_heads, qk_head_dim or D // N))
        chex.assert_shape(cache["cached_value"], (B, length, kv_heads, D // N))
        self.assertEqual(int(cache["cache_index"]), 0)
        pieces = []
        out, state = decoder.apply({"params": params, "cache": cache}, x[:, :prefill], mutable=["cache"])
        pieces.append(out)
        for t in range(prefill, length):
            out, state = decoder.apply({"params": params, **state}, x[:, t : t + 1], mutable=["cache"])
            pieces.append(out)
        self.assertEqual(int(state["cache"]["cache_index"]), length)
        np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=ATOL, rtol=1e-5)

    def test_decode_step_with_mask_and_weights_never_sees_unwritten_slots(self):
        x, _ = _inputs(5, t=6)
        decoder = _module(2, decode=True)
        variables = nn.unbox(decoder.init(jax.random.PRNGKey(3), x))
        (out, weights), state = decoder.apply(variables, x[:, :2], return_weights=True, mutable=["cache"])
        chex.assert_shape(weights, (B, N, 2, 6))
        np.testing.assert_array_equal(np.asarray(weights)[:, :, 0, 1:], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[:, :, 1, 2:], 0.0)
        # A user mask is combined with the cache mask: hide slot 0 for batch row 1.
        user = np.ones((B, 1, 1, 6), bool)
        user[1, 0, 0, 0] = False
        (_, weights), _ = decoder.apply(
            {"params": variables["params"], **state}, x[:, 2:3], mask=jnp.asarray(user), return_weights=True,
            mutable=["cache"],
        )
        np.testing.assert_array_equal(np.asarray(weights)[1, :, 0, 0], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[:, :, 0, 3:], 0.0)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)

    def test_jitted_decode_step_traces_once(self):
        x, _ = _inputs(6, t=6)
        decoder = _module(2, decode=True)
        variables = nn.unbox(decoder.init(jax.random.PRNGKey(4), x))
        params = variables["params"]

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(cache, token):
            return decoder.apply({"params": params, "cache": cache}, token, mutable=["cache"])

        cache = variables["cache"]
        outs = []
        for t in range(3):
            out, state = step(cache, x[:, t : t + 1])
            cache = state["cache"]
            outs.append(out)
        self.assertEqual(int(cache["cache_index"]), 3)
        full = _module(2).apply({"params": params}, x[:, :3], is_causal=True)
        np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=ATOL, rtol=1e-5)


class BehaviourTest(chex.TestCase):
    def test_causality_by_gradient(self):
        model = _module(2)
        x, _ = _inputs(7)
        params = nn.unbox(model.init(jax.random.PRNGKey(5), x)["params"])
        jac = jax.jacfwd(lambda inp: model.apply({"params": params}, inp, is_causal=True))(x)  # [B,T,D,B,T,D]
        sens = np.abs(np.asarray(jac)[0, :, :, 0]).sum(axis=(1, 3))  # [T(out), T(in)]
        np.testing.assert_array_equal(np.triu(sens, k=1), 0.0)
        self.assertTrue(np.all(np.diag(sens) > 0) and np.all(sens[np.tril_indices(T, -1)] > 0))

    def test_attention_fn_hook_and_implementation(self):
        calls = []

        def recording_attention(query, key, value, bias=None, mask=None, **kwargs):
            calls.append((query.shape, key.shape, kwargs))
            return dot_product_attention(query, key, value, bias, mask, **kwargs)

        model = _module(2, attention_fn=recording_attention, implementation="xla")
        xq, xkv = _inputs(8)
        params = nn.unbox(model.init(jax.random.PRNGKey(6), xq, xkv)["params"])
        calls.clear()
        out = model.apply({"params": params}, xq, xkv)
        self.assertLen(calls, 1)
        q_shape, k_shape, kwargs = calls[0]
        self.assertEqual((q_shape, k_shape), ((B, T, N, D // N), (B, S, 2, D // N)))
        self.assertEqual(kwargs["implementation"], "xla")
        np.testing.assert_allclose(out, _module(2).apply({"params": params}, xq, xkv), atol=1e-6)
        with _raises("unknown implementation", "nope"):
            _module(2, implementation="nope").apply({"params": params}, xq, xkv)

    def test_return_weights_rows_sum_to_one_or_zero(self):
        model = _module(1)
        xq, xkv = _inputs(9)
        mask = _random_mask(9, T, S)
        params = nn.unbox(model.init(jax.random.PRNGKey(7), xq, xkv)["params"])
        out, weights = model.apply({"params": params}, xq, xkv, mask=mask, return_weights=True)
        chex.assert_shape(weights, (B, N, T, S))
        sums = np.asarray(weights).sum(-1)
        live = np.broadcast_to(np.asarray(mask).any(-1), sums.shape)
        np.testing.assert_allclose(sums, np.where(live, 1.0, 0.0), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(weights)[np.broadcast_to(~np.asarray(mask), weights.shape)], 0.0)
        np.testing.assert_allclose(out, model.apply({"params": params}, xq, xkv, mask=mask), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_no_jit(self):
        model = _module(2)
        xq, xkv = _inputs(11)
        mask = _random_mask(11, T, S)
        params = nn.unbox(model.init(jax.random.PRNGKey(8), xq, xkv)["params"])
        apply = self.variant(lambda p, a, b, m: model.apply({"params": p}, a, b, mask=m))
        np.testing.assert_allclose(apply(params, xq, xkv, mask), _np_multihead(params, xq, xkv, mask), atol=ATOL)

    def test_dropout(self):
        model = _module(2, dropout_rate=0.5)
        xq, xkv = _inputs(12)
        params = nn.unbox(model.init(jax.random.PRNGKey(9), xq, xkv)["params"])
        plain = model.apply({"params": params}, xq, xkv)
        with_rng = model.apply({"params": params}, xq, xkv, rngs={"dropout": jax.random.PRNGKey(1)})
        np.testing.assert_array_equal(plain, with_rng)  # deterministic=True ignores the rng
        dropped = model.apply(
            {"params": params}, xq, xkv, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}
        )
        again = model.apply({"params": params}, xq, xkv, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
        self.assertGreater(float(jnp.max(jnp.abs(dropped - plain))), 1e-3)
        np.testing.assert_array_equal(dropped, again)
        with pytest.raises(Exception, match="dropout"):
            model.apply({"params": params}, xq, xkv, deterministic=False)

    def test_param_dtype_and_compute_dtype(self):
        model = _module(2, dtype=jnp.bfloat16)
        xq, _ = _inputs(13)
        variables = nn.unbox(model.init(jax.random.PRNGKey(10), xq))
        for leaf in jax.tree.leaves(variables):
            self.assertEqual(leaf.dtype, jnp.float32)
        out = model.apply(variables, xq)
        self.assertEqual(out.dtype, jnp.bfloat16)
        expected = _np_multihead(variables["params"], xq, xq)
        np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=5e-2, rtol=5e-2)


class QKHeadDimTest(chex.TestCase):
    """Query/key head size d_k apart from the value head size d_v (arXiv:1706.03762 Table 3 row B)."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(dims=((1, 3), (5, 2)), masked=(False, True), cross=(False, True))
    def test_matches_numpy_multihead(self, dims, masked, cross):
        d_k, d_v = dims
        model = _module(2, qk_head_dim=d_k, head_dim=d_v)
        xq, xkv = _inputs(60 + d_k)
        xkv = xkv if cross else None
        s = S if cross else T
        mask = _random_mask(d_k, T, s) if masked else None
        params = nn.unbox(model.init(jax.random.PRNGKey(d_k), xq, xkv)["params"])
        apply = self.variant(lambda p, a, b, m: model.apply({"params": p}, a, b, mask=m))
        out = apply(params, xq, xkv, mask)
        chex.assert_shape(out, (B, T, D))
        expected = _np_multihead(params, xq, xq if xkv is None else xkv, mask)
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-5)
        # The scale is 1 / sqrt(d_k): rescaling the query kernel by sqrt(d_v / d_k) (what 1 / sqrt(d_v), or a
        # scale taken from the padded size, would amount to) moves the output.
        wrong = jax.tree.map(lambda a: a, params)
        wrong["query"] = {"kernel": params["query"]["kernel"] * np.sqrt(d_v / d_k),
                          "bias": params["query"]["bias"] * np.sqrt(d_v / d_k)}
        self.assertGreater(float(np.max(np.abs(_np_multihead(wrong, xq, xq if xkv is None else xkv, mask)
                                              - np.asarray(out)))), 1e-3)

    def test_parameter_shapes_and_count(self):
        d_k, d_v, kv_heads = 3, 5, 2
        xq, xkv = _inputs(61)
        params = nn.unbox(_module(kv_heads, qk_head_dim=d_k, head_dim=d_v).init(jax.random.key(0), xq, xkv)["params"])
        shapes = jax.tree.map(jnp.shape, params)
        self.assertEqual(shapes, {"query": {"kernel": (D, N, d_k), "bias": (N, d_k)},
                                  "key": {"kernel": (D, kv_heads, d_k), "bias": (kv_heads, d_k)},
                                  "value": {"kernel": (D, kv_heads, d_v), "bias": (kv_heads, d_v)},
                                  "out": {"kernel": (N, d_v, D), "bias": (D,)}})
        boxed = _module(kv_heads, qk_head_dim=d_k, head_dim=d_v).init(jax.random.key(0), xq, xkv)["params"]
        self.assertEqual(boxed["query"]["kernel"].names, ("embed", "heads", "head_dim"))
        self.assertEqual(boxed["key"]["kernel"].names, ("embed", "kv_heads", "head_dim"))

    @parameterized.parameters((1, 3), (5, 2))
    def test_backends_agree_and_attention_fn_gets_the_scale(self, d_k, d_v):
        from attention_jax.dot_product import BlockwiseBackend
        calls = []

        def recording_attention(query, key, value, bias=None, mask=None, **kwargs):
            calls.append((query.shape, key.shape, value.shape, kwargs.get("scale")))
            return dot_product_attention(query, key, value, bias, mask, **kwargs)

        xq, xkv = _inputs(62)
        lengths = jnp.asarray([S, 3], jnp.int32)
        variables = nn.unbox(_module(2, qk_head_dim=d_k, head_dim=d_v).init(jax.random.key(1), xq, xkv))
        want = _module(2, qk_head_dim=d_k, head_dim=d_v, implementation="xla").apply(variables, xq, xkv,
                                                                                     key_lengths=lengths)
        got = _module(2, qk_head_dim=d_k, head_dim=d_v, implementation=BlockwiseBackend(block_k=4)).apply(
            variables, xq, xkv, key_lengths=lengths)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)
        _module(2, qk_head_dim=d_k, head_dim=d_v, attention_fn=recording_attention).apply(variables, xq, xkv)
        common = max(d_k, d_v)
        self.assertEqual(calls, [((B, T, N, common), (B, S, 2, common), (B, S, 2, common), 1.0 / np.sqrt(d_k))])

    def test_equal_sizes_pass_no_scale(self):
        # qk_head_dim == head_dim is the plain module: same params, same output, no scale keyword.
        calls = []

        def recording_attention(query, key, value, bias=None, mask=None, **kwargs):
            calls.append(kwargs)
            return dot_product_attention(query, key, value, bias, mask, **kwargs)

        xq, xkv = _inputs(63)
        variables = nn.unbox(_module(2).init(jax.random.key(2), xq, xkv))
        out = _module(2, qk_head_dim=D // N, attention_fn=recording_attention).apply(variables, xq, xkv)
        np.testing.assert_array_equal(out, _module(2).apply(variables, xq, xkv))
        self.assertNotIn("scale", calls[0])


class BadInputTest(absltest.TestCase):
    def test_heads_not_divisible(self):
        with _raises("N=4", "K=3"):
            MultiHeadAttention(num_heads=4, num_kv_heads=3)
        with _raises("num_heads", "0"):
            MultiHeadAttention(num_heads=0)
        with _raises("dropout_rate", "1.5"):
            MultiHeadAttention(num_heads=4, dropout_rate=1.5)

    def test_decode_with_inputs_kv(self):
        xq, xkv = _inputs(14)
        with _raises("decode", str(xkv.shape)):
            _module(2, decode=True).init(jax.random.PRNGKey(0), xq, xkv)

    def test_decode_past_cache_length_and_batch(self):
        x, _ = _inputs(15, t=3)
        decoder = _module(2, decode=True)
        variables = nn.unbox(decoder.init(jax.random.PRNGKey(0), x))  # S_max = 3
        with _raises("(2, 4, 8)", "(2, 3, 2, 2)"):
            decoder.apply(variables, jnp.zeros((B, 4, D)), mutable=["cache"])
        with _raises("(1, 1, 8)", "(2, 3, 2, 2)"):
            decoder.apply(variables, jnp.zeros((1, 1, D)), mutable=["cache"])

    def test_shape_mismatches(self):
        xq, xkv = _inputs(16)
        with _raises("Dq=6", "N=4"):
            _module(2).init(jax.random.PRNGKey(0), jnp.zeros((B, T, 6)))
        with _raises("batch", str((B, T, D)), str((1, S, D))):
            _module(2).init(jax.random.PRNGKey(0), xq, xkv[:1])
        with _raises("inputs_q", "rank 3", str((T, D))):
            _module(2).init(jax.random.PRNGKey(0), xq[0])
        with _raises("mask", f"T={T}", f"S={S}", str((B, 1, T, T))):
            _module(2).init(jax.random.PRNGKey(0), xq, xkv, mask=jnp.ones((B, 1, T, T), bool))
        with _raises("key_lengths", str((3,))):
            _module(2).init(jax.random.PRNGKey(0), xq, xkv, key_lengths=jnp.ones((3,), jnp.int32))
        with pytest.raises(TypeError, match="mask"):
            _module(2).init(jax.random.PRNGKey(0), xq, xkv, mask=jnp.ones((B, 1, T, S)))



def _raises_type(*fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(TypeError, match=pattern)


class FlaxDropInTest(parameterized.TestCase):
    """MultiHeadAttention takes flax.linen.MultiHeadDotProductAttention's attribute and argument names (issue 9)."""

    @parameterized.parameters(False, True)
    def test_flax_params_and_names_give_flax_output(self, normalize_qk):
        kw = dict(num_heads=N, qkv_features=12, out_features=6, normalize_qk=normalize_qk,
                  bias_init=nn.initializers.normal(0.3))
        rng = np.random.default_rng(20)
        xq, xk, xv = (jnp.asarray(rng.normal(size=(B, t, d)), jnp.float32) for t, d in ((T, D), (S, 5), (S, 7)))
        mask = rng.random((B, 1, T, S)) < 0.7
        mask[..., 0] = True  # flax gives masked-out rows uniform weights; keep every row alive
        flax_module = nn.MultiHeadDotProductAttention(**kw)
        params = nn.unbox(flax_module.init(jax.random.key(0), xq, xk, xv, mask=jnp.asarray(mask)))
        ours = MultiHeadAttention(**kw)
        self.assertEqual(jax.tree.map(jnp.shape, nn.unbox(ours.init(jax.random.key(0), xq, xk, xv))),
                         jax.tree.map(jnp.shape, params))
        want = flax_module.apply(params, xq, xk, xv, mask=jnp.asarray(mask))
        got = ours.apply(params, xq, xk, xv, mask=jnp.asarray(mask))
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)

    def test_inputs_kv_keyword_is_inputs_k_and_v(self):
        # flax's older keyword: one input for keys and values.
        xq, xkv = _inputs(26)
        module = _module(2)
        variables = nn.unbox(module.init(jax.random.key(0), xq, xkv))
        chex.assert_trees_all_close(module.apply(variables, xq, inputs_kv=xkv), module.apply(variables, xq, xkv, xkv))
        chex.assert_trees_all_close(module.apply(variables, xq, inputs_kv=xkv), module.apply(variables, xq, xkv))

    def test_qkv_features_sets_the_head_dim(self):
        xq, xkv = _inputs(21)
        params = nn.unbox(MultiHeadAttention(num_heads=N, qkv_features=16).init(jax.random.key(0), xq, xkv)["params"])
        chex.assert_shape(params["query"]["kernel"], (D, N, 4))
        with _raises("qkv_features=10", "N=4"):
            MultiHeadAttention(num_heads=N, qkv_features=10)
        with _raises("qkv_features=16", "4 * 2"):
            MultiHeadAttention(num_heads=N, qkv_features=16, head_dim=2)

    def test_out_kernel_and_bias_init(self):
        xq, xkv = _inputs(22)
        module = MultiHeadAttention(num_heads=N, out_kernel_init=nn.initializers.zeros_init(),
                                    out_bias_init=nn.initializers.ones_init())
        out, variables = module.init_with_output(jax.random.key(0), xq, xkv)
        np.testing.assert_array_equal(out, 1.0)
        self.assertTrue(np.any(np.asarray(variables["params"]["query"]["kernel"]) != 0.0))

    def test_deterministic_attribute_call_argument_and_dropout_rng(self):
        xq, xkv = _inputs(23)
        variables = nn.unbox(_module(N, dropout_rate=0.5).init(jax.random.key(0), xq, xkv))
        clean = _module(N, dropout_rate=0.5).apply(variables, xq, xkv)  # neither set: deterministic
        by_attr = _module(N, dropout_rate=0.5, deterministic=False).apply(
            variables, xq, xkv, dropout_rng=jax.random.key(1))
        by_call = _module(N, dropout_rate=0.5).apply(variables, xq, xkv, deterministic=False,
                                                     dropout_rng=jax.random.key(1))
        by_rngs = _module(N, dropout_rate=0.5).apply(variables, xq, xkv, deterministic=False,
                                                     rngs={"dropout": jax.random.key(7)})
        chex.assert_trees_all_close(by_attr, by_call)
        self.assertGreater(float(jnp.max(jnp.abs(by_call - clean))), 1e-3)
        self.assertGreater(float(jnp.max(jnp.abs(by_call - by_rngs))), 1e-3)
        chex.assert_trees_all_close(_module(N, dropout_rate=0.5, deterministic=True).apply(variables, xq, xkv), clean)
        with _raises("deterministic", "attribute", "call"):
            _module(N, dropout_rate=0.5, deterministic=True).apply(variables, xq, xkv, deterministic=False)

    @parameterized.parameters(N, 2)
    def test_broadcast_dropout_shares_one_mask_and_matches_its_weights(self, kv_heads):
        xq, xkv = _inputs(24)
        module = _module(kv_heads, dropout_rate=0.5, broadcast_dropout=True)
        variables = nn.unbox(module.init(jax.random.key(0), xq, xkv))
        out, weights = module.apply(variables, xq, xkv, deterministic=False, return_weights=True,
                                    dropout_rng=jax.random.key(3))
        dropped = np.asarray(weights) == 0.0  # [B, N, T, S]; the softmax weights are all positive
        self.assertTrue(dropped.any() and not dropped.all())
        np.testing.assert_array_equal(dropped, np.broadcast_to(dropped[:1, :1], dropped.shape))
        # The output is the out projection of those (dropped, rescaled) weights times the values.
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
        value = np.einsum("bsd,dkh->bskh", np.asarray(xkv, np.float64), p["value"]["kernel"]) + p["value"]["bias"]
        value = np.repeat(value, N // kv_heads, axis=2)  # [B, S, N, H]
        context = np.einsum("bnts,bsnh->btnh", np.asarray(weights, np.float64), value)
        want = np.einsum("btnh,nhd->btd", context, p["out"]["kernel"]) + p["out"]["bias"]
        np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
        # Each kept weight is the clean weight / (1 - rate).
        _, clean = module.apply(variables, xq, xkv, return_weights=True)
        np.testing.assert_allclose(np.asarray(weights)[~dropped], 2.0 * np.asarray(clean)[~dropped], rtol=1e-5)

    def test_sow_weights(self):
        xq, xkv = _inputs(25)
        module = _module(2)
        variables = nn.unbox(module.init(jax.random.key(0), xq, xkv))
        (_, weights), state = module.apply(variables, xq, xkv, return_weights=True, sow_weights=True,
                                           mutable=["intermediates"])
        chex.assert_trees_all_close(state["intermediates"]["attention_weights"], (weights,))


class FlagsAndBadInputTest(parameterized.TestCase):
    """Flags must be bools, lists are rejected by name, zero sizes are ValueErrors (issue 9)."""

    def setUp(self):
        super().setUp()
        self.xq, self.xkv = _inputs(30)
        self.module = _module(2)
        self.variables = self.module.init(jax.random.key(0), self.xq, self.xkv)

    @parameterized.parameters(("is_causal", "no"), ("is_causal", 1), ("return_weights", "yes"),
                              ("deterministic", "False"), ("sow_weights", np.array(True)))
    def test_call_flags_must_be_bools(self, name, bad):
        # Before the fix, is_causal="no" was truthy and silently causal.
        with _raises_type(name, repr(bad)):
            self.module.apply(self.variables, self.xq, self.xkv, **{name: bad})

    @parameterized.parameters(("use_bias", "yes"), ("decode", 1), ("broadcast_dropout", "no"), ("normalize_qk", 0),
                              ("deterministic", "x"))
    def test_attribute_flags_must_be_bools(self, name, bad):
        with _raises_type(name, repr(bad)):
            MultiHeadAttention(num_heads=N, **{name: bad})

    def test_lists_are_rejected_by_name(self):
        with _raises_type("inputs_q", "list"):
            self.module.apply(self.variables, np.asarray(self.xq).tolist(), self.xkv)
        with _raises_type("inputs_kv", "list"):
            self.module.apply(self.variables, self.xq, np.asarray(self.xkv).tolist())
        with _raises_type("inputs_v", "list"):
            self.module.apply(self.variables, self.xq, self.xkv, np.asarray(self.xkv).tolist())
        with _raises_type("mask", "list"):
            self.module.apply(self.variables, self.xq, self.xkv, mask=np.ones((B, 1, T, S), bool).tolist())
        with _raises_type("key_lengths", "list"):
            self.module.apply(self.variables, self.xq, self.xkv, key_lengths=[S, S])
        with _raises_type("head_gates", "list"):
            self.module.apply(self.variables, self.xq, self.xkv, head_gates=[1.0] * N)

    @parameterized.parameters("num_heads", "head_dim", "qk_head_dim", "out_features", "qkv_features")
    def test_zero_sizes_at_construction(self, name):
        kw = {"num_heads": N, name: 0}
        with _raises(name, "0"):
            MultiHeadAttention(**kw)

    def test_zero_features_and_conflicting_inputs(self):
        with _raises("feature", (B, T, 0)):
            self.module.init(jax.random.key(0), jnp.zeros((B, T, 0)))
        with _raises("feature", (B, S, 0)):
            self.module.init(jax.random.key(0), self.xq, jnp.zeros((B, S, 0)))
        with _raises("inputs_kv", "inputs_k"):
            self.module.apply(self.variables, self.xq, self.xkv, inputs_kv=self.xkv)
        with _raises("inputs_v", (B, S + 1, D)):
            self.module.apply(self.variables, self.xq, self.xkv, jnp.zeros((B, S + 1, D)))


def _implementations():
    from attention_jax.dot_product import BlockwiseBackend, FlashBackend
    from attention_jax.kernels import BlockSizes
    return (("auto", None), ("xla", "xla"), ("blockwise", BlockwiseBackend(block_k=4)),
            ("flash_interpreted", FlashBackend(interpret=True, block_sizes=BlockSizes(16, 16, 16, 16, 16, 16))))


class EmptySequenceTest(parameterized.TestCase):
    """T = 0 gives an empty output; S = 0 the out bias of a zero context, on every backend (issue 9)."""

    @parameterized.product(backend=[name for name, _ in _implementations()], sizes=((0, S), (T, 0), (0, 0)))
    def test_empty(self, backend, sizes):
        implementation = dict(_implementations())[backend]
        num_queries, num_keys = sizes
        module = _module(2, implementation=implementation)
        xq, xkv = _inputs(40)
        variables = nn.unbox(module.init(jax.random.key(0), xq, xkv))  # parameters from non-empty inputs
        xq, xkv = xq[:, :num_queries], xkv[:, :num_keys]

        def loss(variables, xq, xkv):
            if backend == "flash_interpreted":  # the flash backend returns no weights
                out, weights = module.apply(variables, xq, xkv), None
            else:
                out, weights = module.apply(variables, xq, xkv, return_weights=True)
            return jnp.sum(out ** 2), (out, weights)

        (_, (out, weights)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(variables, xq, xkv)
        chex.assert_shape(out, (B, num_queries, D))
        out_bias = np.asarray(variables["params"]["out"]["bias"])
        np.testing.assert_allclose(out, np.broadcast_to(out_bias, out.shape), atol=1e-6)
        if weights is not None:
            chex.assert_shape(weights, (B, N, num_queries, num_keys))
        chex.assert_tree_all_finite(grads)


class NanInputRowsTest(parameterized.TestCase):
    """Raw input rows no valid pair uses (even NaN) reach neither the output nor any gradient (issue 9).

    Before the fix the backend masked them, but d W_k = x^T d k = NaN * 0 on the padded rows of inputs_kv.
    """

    @parameterized.named_parameters(
        ("key_lengths", dict(key_lengths=jnp.asarray([S, 3])), np.array([[False] * S, [False] * 3 + [True] * 3])),
        ("dense_mask", dict(mask=jnp.asarray(np.broadcast_to(
            np.arange(S)[None, None, None, :] < np.array([4, 2])[:, None, None, None], (B, 1, T, S)))),
         np.array([[False] * 4 + [True] * 2, [False] * 2 + [True] * 4])),
        ("segments", dict(segment_ids=(jnp.zeros((B, T), jnp.int32), jnp.asarray([[0, 0, 0, 0, 1, 1]] * B))),
         np.array([[False] * 4 + [True] * 2] * B)),
    )
    def test_cross_attention(self, masks, dead):
        xq, xkv = _inputs(50)
        module = _module(2)
        variables = nn.unbox(module.init(jax.random.key(0), xq, xkv))
        poisoned = np.asarray(xkv).copy()
        poisoned[dead] = np.nan

        def loss(variables, xq, xkv):
            return jnp.sum(module.apply(variables, xq, xkv, **masks) ** 2)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
        got, want = grad(variables, xq, jnp.asarray(poisoned)), grad(variables, xq, xkv)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

    def test_self_attention_keeps_masked_keys_that_are_live_queries(self):
        # A padded position is a dead key but a live query: its query projection must stay untouched.
        x, _ = _inputs(51)
        module = _module(2)
        variables = nn.unbox(module.init(jax.random.key(0), x))
        lengths = jnp.asarray([T, 2])
        out = module.apply(variables, x, key_lengths=lengths)
        params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
        want = _np_multihead(params, x, x, mask=np.asarray(np.arange(T)[None, None, None, :] < np.asarray(lengths)[
            :, None, None, None]))
        np.testing.assert_allclose(out, want, atol=ATOL)


if __name__ == "__main__":
    absltest.main()
