"""Tests for attention_jax/blockwise.py.

References: `dot_product_attention(implementation="xla")` (outputs, lse and jax.grad) and a float64 numpy
transcription of softmax(Q K^T * scale + bias) V (Vaswani et al. 2017, arXiv:1706.03762, eq. 1) with every
mask source written out position by position and GQA head sharing (query head n reads key head n // G).
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.blockwise import blockwise_attention
from attention_jax.dot_product.api import EMPTY_ROW_LSE, dot_product_attention
from tests.dot_product import conformance

B, H = 2, 8
TOL = {"float32": 1e-5, "bfloat16": 2e-2}


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _qkv(seed, t, s, n=4, k=2, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, t, n, H)).astype(np.float32)
    key = rng.standard_normal((B, s, k, H)).astype(np.float32)
    v = rng.standard_normal((B, s, k, H)).astype(np.float32)
    return jnp.asarray(q, dtype), jnp.asarray(key, dtype), jnp.asarray(v, dtype)


def _blockwise(query, key, value, *, bias=None, mask=None, block_k=512, return_lse=False, **sources):
    """blockwise_attention called with dot_product_attention's keywords: the mask sources go into one
    AttentionMask (blockwise_attention takes the spec, not the six keywords)."""
    if sources:
        mask = AttentionMask(mask, **sources)
    return blockwise_attention(query, key, value, bias, mask, block_k=block_k, return_lse=return_lse)


def _close(actual, expected, dtype="float32", err_msg=""):
    tol = TOL[str(dtype)]
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=tol, atol=tol, err_msg=err_msg
    )


def _reference(q, k, v, *, n, t, s, mask=None, bias=None, is_causal=False, local_window_size=None,
               query_seq_lengths=None, key_value_seq_lengths=None, segment_ids=None):
    """Float64 eq. 1 with the combined mask built one position at a time. Returns (out [B,T,N,H], lse [B,N,T])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    g = n // k.shape[2]
    if segment_ids is not None and not isinstance(segment_ids, tuple):
        segment_ids = (segment_ids, segment_ids)
    out = np.zeros((B, t, n, v.shape[-1]))
    lse = np.full((B, n, t), EMPTY_ROW_LSE)
    for ib in range(B):
        for ih in range(n):
            kh = ih // g
            for it in range(t):
                valid = np.ones(s, bool)
                for js in range(s):
                    ok = True
                    if mask is not None:
                        ok &= bool(np.asarray(mask)[min(ib, mask.shape[0] - 1), min(ih, mask.shape[1] - 1), it, js])
                    if is_causal:
                        ok &= js <= it
                    if local_window_size is not None:
                        left, right = local_window_size
                        ok &= left is None or js >= it - left
                        ok &= right is None or js <= it + right
                    if query_seq_lengths is not None:
                        ok &= it < int(query_seq_lengths[ib])
                    if key_value_seq_lengths is not None:
                        ok &= js < int(key_value_seq_lengths[ib])
                    if segment_ids is not None:
                        ok &= int(segment_ids[0][ib, it]) == int(segment_ids[1][ib, js])
                    valid[js] = ok
                if not valid.any():
                    continue
                logits = k[ib, :, kh] @ q[ib, it, ih] / np.sqrt(H)
                if bias is not None:
                    logits = logits + np.asarray(bias, np.float64)[min(ib, bias.shape[0] - 1),
                                                                   min(ih, bias.shape[1] - 1), it]
                m = logits[valid].max()
                e = np.where(valid, np.exp(np.where(valid, logits, m) - m), 0.0)
                lse[ib, ih, it] = np.log(e.sum()) + m
                out[ib, it, ih] = (e / e.sum())[valid] @ v[ib, valid, kh]
    return out, lse


def _case(name, t, s):
    """Keyword arguments shared by blockwise_attention and dot_product_attention for one mask kind."""
    rng = np.random.default_rng(7)
    if name == "plain" or name.startswith("gqa"):
        return {}
    if name == "causal":
        return {"is_causal": True}
    if name == "lengths":
        return {"query_seq_lengths": jnp.array([t, t - 3]), "key_value_seq_lengths": jnp.array([s - 5, s])}
    if name == "segments":
        q_seg = jnp.asarray(np.sort(rng.integers(0, 3, (B, t)), axis=1), jnp.int32)
        kv_seg = jnp.asarray(np.sort(rng.integers(0, 3, (B, s)), axis=1), jnp.int32)
        return {"segment_ids": (q_seg, kv_seg)}
    if name == "segments_single":
        return {"segment_ids": jnp.asarray(np.sort(rng.integers(0, 3, (B, t)), axis=1), jnp.int32)}
    if name == "window":
        return {"local_window_size": (3, 1)}
    if name == "window_left":
        return {"local_window_size": (5, None), "is_causal": True}
    if name == "mask":
        return {"mask": jnp.asarray(rng.random((B, 4, t, s)) < 0.6)}
    if name == "mask_broadcast":
        return {"mask": jnp.asarray(rng.random((1, 1, t, s)) < 0.6)}
    if name == "bias":
        return {"bias": jnp.asarray(rng.standard_normal((B, 4, t, s)), jnp.float32)}
    if name == "bias_broadcast_all":
        return {"bias": jnp.asarray(rng.standard_normal((1, 1, t, s)), jnp.float32),
                "mask": jnp.asarray(rng.random((B, 1, t, s)) < 0.7), "is_causal": True,
                "key_value_seq_lengths": jnp.array([s - 2, s - 9])}
    raise ValueError(name)


# name, T, S, K (key/value heads), block_k
CASES = [
    ("plain", 9, 13, 2, 4),
    ("causal", 13, 13, 2, 4),
    ("causal", 9, 19, 2, 7),
    ("causal", 19, 9, 2, 4),
    ("lengths", 11, 17, 2, 7),
    ("segments", 10, 15, 2, 4),
    ("segments_single", 14, 14, 2, 16),
    ("window", 12, 17, 2, 4),
    ("window_left", 17, 17, 2, 7),
    ("mask", 8, 11, 2, 4),
    ("mask_broadcast", 8, 11, 2, 7),
    ("bias", 8, 11, 2, 4),
    ("bias_broadcast_all", 10, 18, 2, 7),
    ("gqa_k1", 9, 13, 1, 4),
    ("gqa_k4", 9, 13, 4, 16),
]
NAMED = [dict(testcase_name=f"{c[0]}_t{c[1]}_s{c[2]}_k{c[3]}_b{c[4]}", name=c[0], t=c[1], s=c[2], kv=c[3],
              block_k=c[4]) for c in CASES]
# Gradients on a subset that still covers every mask source (the file must stay fast on a shared CPU).
GRAD_NAMED = [NAMED[i] for i in (1, 3, 4, 5, 8, 9, 12, 13)]


class ForwardTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED)
    def test_matches_xla_and_reference(self, name, t, s, kv, block_k):
        q, k, v = _qkv(0, t, s, k=kv)
        kw = _case(name, t, s)
        out, lse = self.variant(lambda q, k, v: _blockwise(q, k, v, block_k=block_k, return_lse=True,
                                                                    **kw))(q, k, v)
        chex.assert_shape(out, (B, t, 4, H))
        chex.assert_shape(lse, (B, 4, t))
        self.assertEqual(out.dtype, jnp.float32)
        self.assertEqual(lse.dtype, jnp.float32)
        want = dot_product_attention(q, k, v, implementation="xla", return_lse=True, **kw)
        _close(out, want.output, err_msg="output vs xla")
        _close(lse, want.lse, err_msg="lse vs xla")
        ref_out, ref_lse = _reference(q, k, v, n=4, t=t, s=s, **kw)
        _close(out, ref_out, err_msg="output vs float64 reference")
        _close(lse, ref_lse, err_msg="lse vs float64 reference")

    def test_bfloat16(self):
        t, s = 10, 15
        q, k, v = _qkv(3, t, s, dtype=jnp.bfloat16)
        kw = {"is_causal": True, "key_value_seq_lengths": jnp.array([12, 15])}
        out = jax.jit(lambda q, k, v: _blockwise(q, k, v, block_k=4, **kw))(q, k, v)
        self.assertEqual(out.dtype, jnp.bfloat16)
        ref_out, _ = _reference(q, k, v, n=4, t=t, s=s, **kw)
        _close(out, ref_out, dtype="bfloat16")
        grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(
            _blockwise(q, k, v, block_k=4, **kw).astype(jnp.float32)), argnums=(0, 1, 2)))(q, k, v)
        want = jax.jit(jax.grad(lambda q, k, v: jnp.sum(
            dot_product_attention(q, k, v, implementation="xla", **kw).astype(jnp.float32)), argnums=(0, 1, 2)))(q, k, v)
        for g, w, x in zip(grads, want, (q, k, v)):
            self.assertEqual(g.dtype, jnp.bfloat16)
            chex.assert_shape(g, x.shape)
            _close(g, w, dtype="bfloat16")

    @chex.variants(with_jit=True, without_jit=True)
    def test_block_k_larger_than_s(self):
        q, k, v = _qkv(4, 6, 5)
        got = self.variant(lambda q, k, v: _blockwise(q, k, v, block_k=512, is_causal=True))(q, k, v)
        _close(got, dot_product_attention(q, k, v, is_causal=True, implementation="xla"))

    def test_block_size_does_not_change_the_result(self):
        q, k, v = _qkv(5, 11, 23)
        outs = [_blockwise(q, k, v, block_k=b, is_causal=True) for b in (1, 7, 64)]
        for o in outs[1:]:
            _close(o, outs[0])

    def test_no_retrace(self):
        q, k, v = _qkv(6, 8, 9)
        fn = jax.jit(chex.assert_max_traces(lambda q, k, v: _blockwise(q, k, v, block_k=4), n=1))
        fn(q, k, v)
        fn(q + 1.0, k, v)


def _loss(fn):
    # A non-trivial cotangent for every output element (sum alone gives dO = 1).
    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(jnp.sin(out.astype(jnp.float32)) * jnp.arange(out.shape[-1], dtype=jnp.float32))
    return loss


class GradientTest(chex.TestCase):

    @chex.variants(with_jit=True)
    @parameterized.named_parameters(*GRAD_NAMED)
    def test_grads_match_xla(self, name, t, s, kv, block_k):
        q, k, v = _qkv(1, t, s, k=kv)
        kw = _case(name, t, s)
        got = self.variant(jax.grad(_loss(lambda q, k, v: _blockwise(q, k, v, block_k=block_k, **kw)),
                                    argnums=(0, 1, 2)))(q, k, v)
        want = jax.jit(jax.grad(_loss(lambda q, k, v: dot_product_attention(q, k, v, implementation="xla", **kw)),
                                argnums=(0, 1, 2)))(q, k, v)
        for g, w, label in zip(got, want, "qkv"):
            _close(g, w, err_msg=f"d{label}")

    def test_lse_gradient_matches_xla(self):
        q, k, v = _qkv(2, 9, 13)
        kw = {"is_causal": True, "key_value_seq_lengths": jnp.array([6, 13])}

        def loss(fn):
            def f(q, k, v):
                out, lse = fn(q, k, v)
                return jnp.sum(out ** 2) + jnp.sum(jnp.where(lse > EMPTY_ROW_LSE, lse, 0.0) * 0.3)
            return f

        got = jax.jit(jax.grad(loss(lambda q, k, v: _blockwise(q, k, v, block_k=4, return_lse=True, **kw)),
                               argnums=(0, 1, 2)))(q, k, v)
        want = jax.jit(jax.grad(loss(lambda q, k, v: tuple(dot_product_attention(
            q, k, v, implementation="xla", return_lse=True, **kw))[::2]), argnums=(0, 1, 2)))(q, k, v)
        for g, w in zip(got, want):
            _close(g, w)

    def test_check_grads(self):
        q, k, v = _qkv(3, 5, 7)
        fn = lambda q, k, v: _blockwise(q, k, v, block_k=3, is_causal=True,
                                                 key_value_seq_lengths=jnp.array([7, 5]))
        jtu.check_grads(fn, (q, k, v), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-3)

    def test_causality_by_gradients(self):
        t = s = 12
        q, k, v = _qkv(4, t, s)
        for it in (0, 5, 11):
            g_k, g_v = jax.grad(lambda k, v: jnp.sum(_blockwise(q, k, v, block_k=5, is_causal=True)[:, it]),
                                argnums=(0, 1))(k, v)
            for g in (g_k, g_v):
                self.assertEqual(float(jnp.abs(g[:, it + 1:]).max(initial=0.0)), 0.0)
            # dK of the only visible key is 0 at it = 0 (softmax of one logit), so check dV.
            self.assertGreater(float(jnp.abs(g_v[:, :it + 1]).min()), 0.0)

    def test_bias_gets_no_gradient(self):
        q, k, v = _qkv(5, 6, 7)
        bias = jnp.ones((1, 1, 6, 7))
        g = jax.grad(lambda b: jnp.sum(_blockwise(q, k, v, bias=b, block_k=4) ** 2))(bias)
        self.assertEqual(float(jnp.abs(g).max()), 0.0)


class MaskingBehaviourTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_fully_masked_rows(self):
        t, s = 8, 11
        q, k, v = _qkv(6, t, s)
        mask = np.ones((B, 1, t, s), bool)
        mask[0, 0, 2] = False  # one empty row from the mask
        kw = {"mask": jnp.asarray(mask), "query_seq_lengths": jnp.array([t, 5])}  # rows 5.. of batch 1 empty
        fn = self.variant(lambda q, k, v: _blockwise(q, k, v, block_k=4, return_lse=True, **kw))
        out, lse = fn(q, k, v)
        self.assertEqual(float(jnp.abs(out[0, 2]).max()), 0.0)
        self.assertEqual(float(jnp.abs(out[1, 5:]).max()), 0.0)
        np.testing.assert_array_equal(np.asarray(lse[0, :, 2]), EMPTY_ROW_LSE)
        np.testing.assert_array_equal(np.asarray(lse[1, :, 5:]), EMPTY_ROW_LSE)
        self.assertTrue(bool(jnp.all(lse[0, :, 3] > EMPTY_ROW_LSE)))
        grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)[0] ** 2 + 1.0 * fn(q, k, v)[0]),
                         argnums=(0, 1, 2))(q, k, v)
        for g in grads:
            self.assertTrue(bool(jnp.all(jnp.isfinite(g))))
        self.assertEqual(float(jnp.abs(grads[0][0, 2]).max()), 0.0)
        self.assertEqual(float(jnp.abs(grads[0][1, 5:]).max()), 0.0)

    def test_everything_masked(self):
        q, k, v = _qkv(7, 5, 9)
        fn = lambda q, k, v: _blockwise(q, k, v, key_value_seq_lengths=jnp.array([0, 0]), block_k=4)
        self.assertEqual(float(jnp.abs(fn(q, k, v)).max()), 0.0)
        for g in jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))(q, k, v):
            self.assertEqual(float(jnp.abs(g).max()), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_nan_padding_does_not_leak(self):
        t, s = 9, 13
        q, k, v = _qkv(8, t, s)
        kw = {"query_seq_lengths": jnp.array([t, 6]), "key_value_seq_lengths": jnp.array([8, s]), "is_causal": True}
        k_nan = k.at[0, 8:].set(jnp.nan)
        v_nan = v.at[0, 8:].set(jnp.nan)
        q_nan = q.at[1, 6:].set(jnp.nan)
        fn = self.variant(lambda q, k, v: _blockwise(q, k, v, block_k=4, **kw))
        loss = _loss(fn)
        clean_out = fn(q, k, v)
        out = fn(q_nan, k_nan, v_nan)
        self.assertTrue(bool(jnp.all(jnp.isfinite(out))))
        _close(out, clean_out)
        clean = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        grads = jax.grad(loss, argnums=(0, 1, 2))(q_nan, k_nan, v_nan)
        for g, c in zip(grads, clean):
            self.assertTrue(bool(jnp.all(jnp.isfinite(g))))
            _close(g, c)

    def test_masking_changes_nothing_outside_the_mask(self):
        t, s = 7, 12
        q, k, v = _qkv(9, t, s)
        base = _blockwise(q, k, v, key_value_seq_lengths=jnp.array([8, 8]), block_k=5)
        changed = _blockwise(q, k.at[:, 8:].add(3.0), v.at[:, 8:].add(5.0),
                                      key_value_seq_lengths=jnp.array([8, 8]), block_k=5)
        _close(changed, base)


def _max_intermediate_size(jaxpr) -> int:
    """The largest number of elements of any value produced in `jaxpr`, sub-jaxprs (scan bodies) included."""
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()), dtype=np.int64)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if hasattr(sub, "eqns"):
                    biggest = max(biggest, _max_intermediate_size(sub))
                elif hasattr(sub, "jaxpr") and hasattr(getattr(sub, "jaxpr"), "eqns"):
                    biggest = max(biggest, _max_intermediate_size(sub.jaxpr))
    return biggest


class MemoryTest(absltest.TestCase):

    def test_no_t_by_s_intermediate_in_the_gradient(self):
        t = s = 256
        q = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, s, 1, 16), jnp.float32)
        kw = {"is_causal": True, "key_value_seq_lengths": jnp.array([200]), "local_window_size": (64, 0),
              "segment_ids": jnp.zeros((1, t), jnp.int32)}

        def grad_jaxpr(fn):
            return jax.make_jaxpr(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))(q, kv, kv)

        ours = grad_jaxpr(lambda q, k, v: _blockwise(q, k, v, block_k=32, **kw))
        xla = grad_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, implementation="xla", **kw))
        self.assertGreaterEqual(_max_intermediate_size(xla.jaxpr), t * s)  # the check can see a [T, S] array
        self.assertLess(_max_intermediate_size(ours.jaxpr), t * s)
        # The scans are really there, with chunks of 32 keys: 2 heads * T * 32 logits at most per step.
        self.assertLessEqual(_max_intermediate_size(ours.jaxpr), 2 * t * 32)


class BadInputTest(absltest.TestCase):

    def test_bad_inputs_raise_with_shapes(self):
        q, k, v = _qkv(22, 4, 6)
        cases = [
            (lambda: _blockwise(q[0], k, v), ValueError, ["rank 4", "(4, 4, 8)"]),
            (lambda: _blockwise(q, k[:1], v[:1]), ValueError, ["(2, 4, 4, 8)", "(1, 6, 2, 8)"]),
            (lambda: _blockwise(q, k, v[:, :5]), ValueError, ["(2, 6, 2, 8)", "(2, 5, 2, 8)"]),
            (lambda: _blockwise(q, k[..., :4], v[..., :4]), ValueError, ["(2, 4, 4, 8)", "(2, 6, 2, 4)"]),
            (lambda: _blockwise(q[:, :, :3], k, v), ValueError, ["N=3", "K=2"]),
            (lambda: _blockwise(q, k, v, mask=jnp.ones((B, 3, 4, 6), bool)), ValueError,
             ["(2, 3, 4, 6)", "N=4"]),
            (lambda: _blockwise(q, k, v, mask=jnp.ones((B, 1, 4, 6), jnp.int32)), TypeError, ["int32"]),
            (lambda: _blockwise(q, k, v, bias=jnp.ones((B, 1, 6, 4))), ValueError, ["(2, 1, 6, 4)"]),
            (lambda: _blockwise(q, k, v, segment_ids=jnp.zeros((B, 4), jnp.int32)), ValueError,
             ["T=4", "S=6"]),
            (lambda: _blockwise(q, k, v, segment_ids=(jnp.zeros((B, 4)), jnp.zeros((B, 6)))), TypeError,
             ["float32"]),
            (lambda: _blockwise(q, k, v, local_window_size=(-1, 2)), ValueError, ["left", "-1"]),
            (lambda: _blockwise(q, k, v, key_value_seq_lengths=jnp.array([1, 2, 3])), ValueError,
             ["(3,)", "(2,)"]),
            (lambda: _blockwise(q, k, v, query_seq_lengths=jnp.array([1.0, 2.0])), TypeError, ["float32"]),
            (lambda: _blockwise(q.astype(jnp.int32), k, v), TypeError, ["int32"]),
            (lambda: _blockwise(q, k, v, block_k=0), ValueError, ["block_k", "0"]),
            (lambda: _blockwise(q, k, v, block_k=2.5), ValueError, ["block_k", "2.5"]),
            (lambda: _blockwise(q, k, v, block_k=True), ValueError, ["block_k", "True"]),
            # Called directly, with no helper in between.
            (lambda: blockwise_attention(q, k, v, mask=np.ones((B, 1, 4, 6), bool).tolist()), TypeError,
             ["mask", "list"]),
            (lambda: blockwise_attention(q, k, v, return_lse="yes"), TypeError, ["return_lse", "'yes'"]),
            (lambda: blockwise_attention(q, k, v, scale="big"), ValueError, ["scale", "'big'"]),
            (lambda: blockwise_attention(q[..., :0], k[..., :0], v[..., :0]), ValueError, ["H=0"]),
        ]
        for fn, exc, fragments in cases:
            with _raises(exc, *fragments):
                fn()


class EmptySequenceTest(parameterized.TestCase):
    """Direct calls (the dot_product_attention path is in the conformance suite)."""

    @parameterized.parameters((2, 0, 5), (2, 5, 0), (0, 5, 5))
    def test_zeros_and_empty_lse(self, b, t, s):
        rng = np.random.default_rng(0)
        q = jnp.asarray(rng.standard_normal((b, t, 4, H)), jnp.float32)
        k = v = jnp.asarray(rng.standard_normal((b, s, 2, H)), jnp.float32)
        out, lse = blockwise_attention(q, k, v, mask=AttentionMask(is_causal=True), block_k=4, return_lse=True)
        chex.assert_shape([out, lse], [(b, t, 4, H), (b, 4, t)])
        np.testing.assert_array_equal(np.asarray(out), 0.0)
        np.testing.assert_array_equal(np.asarray(lse), EMPTY_ROW_LSE)
        grads = jax.grad(lambda q, k, v: jnp.sum(blockwise_attention(q, k, v) + 1.0), argnums=(0, 1, 2))(q, k, v)
        for g, x in zip(grads, (q, k, v)):
            chex.assert_shape(g, x.shape)
            np.testing.assert_array_equal(np.asarray(g), 0.0)


class BlockwiseConformanceTest(conformance.AttentionConformance):
    """The shared backend suite (tests/conformance.py) on the "blockwise" backend."""

    IMPLEMENTATION = "blockwise"


if __name__ == "__main__":
    absltest.main()
