"""Tests for attention_jax/aaren.py against a float64 numpy transcription of prefix softmax attention.

Feng et al. 2024, "Attention as an RNN" (arXiv:2405.13956): §3.1 (the many-to-one RNN), §3.2 (the parallel
prefix scan and its associative operator), §3.3 (Aaren, a learned query token).
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.layers import aaren
from attention_jax.layers.aaren import Aaren, AarenState, aaren_init, aaren_scan, aaren_step
from attention_jax.core.alignment import EMPTY_ROW_LSE
from attention_jax.dot_product.api import dot_product_attention

B, S, N, H, D = 3, 6, 2, 4, 5


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed, b=B, s=S, n=N, h=H):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((b, n, h)).astype(np.float32)
    key = rng.standard_normal((b, s, n, h)).astype(np.float32)
    value = rng.standard_normal((b, s, n, h)).astype(np.float32)
    return query, key, value


def _mask(seed, b=B, s=S):
    """Batch 0: the first two positions masked (empty prefixes); batch 1: random; batch 2: all masked."""
    rng = np.random.default_rng(seed)
    mask = rng.random((b, s)) < 0.6
    mask[0, :2] = False
    mask[0, 2] = True
    mask[1, 0] = True
    mask[2, :] = False
    return mask


def _reference(query, key, value, mask=None, scale=None):
    """float64: out[b, k, n] = sum_{i <= k, valid} softmax_i(scale q.k_i) v_i, zeros if no valid i <= k."""
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    b, s, n, h = key.shape
    scale = 1.0 / np.sqrt(h) if scale is None else scale
    mask = np.ones((b, s), bool) if mask is None else np.asarray(mask)
    out = np.zeros((b, s, n, h))
    for bi in range(b):
        for k in range(s):
            valid = [i for i in range(k + 1) if mask[bi, i]]
            if not valid:
                continue
            for ni in range(n):
                logits = np.array([scale * query[bi, ni] @ key[bi, i, ni] for i in valid])
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                out[bi, k, ni] = sum(w * value[bi, i, ni] for w, i in zip(weights, valid))
    return out


class AarenScanTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(False, True)
    def test_matches_reference(self, masked):
        query, key, value = _inputs(0)
        mask = _mask(1) if masked else None
        fn = self.variant(lambda q, k, v, m: aaren_scan(q, k, v, m))
        got = fn(query, key, value, None if mask is None else jnp.asarray(mask))
        chex.assert_shape(got, (B, S, N, H))
        self.assertEqual(got.dtype, jnp.float32)
        chex.assert_trees_all_close(np.asarray(got, np.float64), _reference(query, key, value, mask), atol=1e-5)
        if masked:
            np.testing.assert_array_equal(np.asarray(got[0, :2]), 0.0)
            np.testing.assert_array_equal(np.asarray(got[2]), 0.0)

    def test_custom_scale(self):
        query, key, value = _inputs(2)
        got = aaren_scan(query, key, value, scale=0.3)
        chex.assert_trees_all_close(np.asarray(got, np.float64), _reference(query, key, value, scale=0.3), atol=1e-5)

    @parameterized.parameters(False, True)
    def test_matches_causal_dot_product_attention(self, masked):
        query, key, value = _inputs(3)
        mask = _mask(4) if masked else None
        repeated = jnp.broadcast_to(jnp.asarray(query)[:, None], (B, S, N, H))  # query t = q for every t
        pair_mask = None if mask is None else jnp.broadcast_to(jnp.asarray(mask)[:, None, None, :], (B, 1, S, S))
        want = dot_product_attention(repeated, key, value, mask=pair_mask, is_causal=True)
        got = aaren_scan(query, key, value, None if mask is None else jnp.asarray(mask))
        chex.assert_trees_all_close(got, want, atol=1e-5)

    def test_nan_at_masked_positions_does_not_leak(self):
        query, key, value = _inputs(5)
        mask = _mask(6)
        key[~mask] = np.nan
        value[~mask] = np.nan
        clean_key, clean_value = np.where(mask[..., None, None], key, 0.0), np.where(mask[..., None, None], value, 0.0)
        got = aaren_scan(query, key, value, jnp.asarray(mask))
        self.assertTrue(np.all(np.isfinite(got)))
        chex.assert_trees_all_close(
            np.asarray(got, np.float64), _reference(query, clean_key, clean_value, mask), atol=1e-5
        )
        grads = jax.grad(lambda q, k, v: jnp.sum(aaren_scan(q, k, v, jnp.asarray(mask)) ** 2), argnums=(0, 1, 2))(
            jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
        )
        for g in grads:
            self.assertTrue(np.all(np.isfinite(g)))
        # Masked positions get zero gradients.
        np.testing.assert_array_equal(np.asarray(grads[1])[~mask], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[2])[~mask], 0.0)

    def test_fully_masked_prefix_has_zero_gradients(self):
        query, key, value = _inputs(7)
        mask = np.zeros((B, S), bool)
        grads = jax.grad(lambda q, k, v: jnp.sum(aaren_scan(q, k, v, jnp.asarray(mask))), argnums=(0, 1, 2))(
            jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
        )
        for g in grads:
            np.testing.assert_array_equal(np.asarray(g), 0.0)

    def test_large_logits_are_stable(self):
        query, key, value = _inputs(8)
        # |logits| ~ 1e4 with both signs: a naive exp overflows to inf (and inf / inf = NaN).
        key = (key * 1e4 / np.sqrt(H)).astype(np.float32)
        mask = _mask(9)
        mask[2, 3:] = True
        for m in (None, mask):
            got = aaren_scan(query, key, value, None if m is None else jnp.asarray(m))
            self.assertTrue(np.all(np.isfinite(got)))
            logits = np.einsum("bnh,bsnh->bsn", query.astype(np.float64), key.astype(np.float64)) / np.sqrt(H)
            self.assertGreater(np.abs(logits).max(), 1e3)
            chex.assert_trees_all_close(np.asarray(got, np.float64), _reference(query, key, value, m), atol=1e-5)

    @parameterized.parameters(False, True)
    def test_check_grads(self, masked):
        query, key, value = _inputs(10, b=2, s=4, n=1, h=3)
        mask = jnp.asarray(np.array([[False, True, True, False], [True, True, False, True]])) if masked else None
        fn = lambda q, k, v: aaren_scan(q, k, v, mask)  # noqa: E731
        jtu.check_grads(
            fn, (jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)), order=1, modes=["rev"],
            eps=1e-3, atol=1e-2, rtol=1e-2,
        )

    def test_bfloat16_inputs_keep_value_dtype(self):
        query, key, value = _inputs(11)
        got = aaren_scan(*(jnp.asarray(x, jnp.bfloat16) for x in (query, key, value)))
        self.assertEqual(got.dtype, jnp.bfloat16)
        chex.assert_trees_all_close(
            np.asarray(got, np.float64), _reference(query, key, value), atol=5e-2, rtol=5e-2
        )

    def test_bad_inputs_raise_naming_shapes(self):
        query, key, value = _inputs(12)
        with _raises(ValueError, "rank 3", (B, S, N, H)):
            aaren_scan(key, key, value)
        with _raises(ValueError, "rank 4", (B, N, H)):
            aaren_scan(query, query, value)
        with _raises(ValueError, (B, S, N, H), (B, S - 1, N, H)):
            aaren_scan(query, key, value[:, :-1])
        with _raises(ValueError, (B, N + 1, H), (B, S, N, H)):
            aaren_scan(np.zeros((B, N + 1, H), np.float32), key, value)
        with _raises(ValueError, (B - 1, N, H), (B, S, N, H)):
            aaren_scan(query[:-1], key, value)
        with _raises(ValueError, (B, S + 1), (B, S, N, H)):
            aaren_scan(query, key, value, np.ones((B, S + 1), bool))
        with _raises(TypeError, "bool"):
            aaren_scan(query, key, value, np.ones((B, S), np.float32))
        with _raises(TypeError, "int32"):
            aaren_scan(query, key.astype(np.int32), value)


class AarenStepTest(chex.TestCase):

    def test_init(self):
        state = aaren_init(B, N, H)
        self.assertIsInstance(state, AarenState)
        chex.assert_shape((state.m, state.u, state.w), ((B, N), (B, N), (B, N, H)))
        np.testing.assert_array_equal(np.asarray(state.m), EMPTY_ROW_LSE)
        np.testing.assert_array_equal(np.asarray(state.u), 0.0)
        with _raises(ValueError, "heads", -1):
            aaren_init(B, -1, H)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(False, True)
    def test_fold_equals_scan(self, masked):
        query, key, value = _inputs(13)
        mask = _mask(14) if masked else None
        if masked:
            key[~mask] = np.nan
            value[~mask] = np.nan
        step = self.variant(aaren_step)
        state, outs = aaren_init(B, N, H), []
        for t in range(S):
            state, out = step(state, query, key[:, t], value[:, t], None if mask is None else jnp.asarray(mask[:, t]))
            chex.assert_shape(out, (B, N, H))
            outs.append(out)
        want = aaren_scan(query, key, value, None if mask is None else jnp.asarray(mask))
        chex.assert_trees_all_close(jnp.stack(outs, axis=1), want, atol=1e-5)
        self.assertTrue(np.all(np.isfinite(np.stack(outs))))

    def test_lax_scan_fold(self):
        query, key, value = _inputs(15)

        def body(state, kv):
            return aaren_step(state, query, kv[0], kv[1])

        _, outs = jax.lax.scan(body, aaren_init(B, N, H), (jnp.swapaxes(key, 0, 1), jnp.swapaxes(value, 0, 1)))
        chex.assert_trees_all_close(jnp.swapaxes(outs, 0, 1), _reference(query, key, value).astype(np.float32),
                                    atol=1e-5)

    def test_bad_inputs_raise_naming_shapes(self):
        query, key, value = _inputs(16)
        state = aaren_init(B, N, H)
        with _raises(ValueError, (B, N, H), (B, N, H + 1)):
            aaren_step(state, query, np.zeros((B, N, H + 1), np.float32), value[:, 0])
        with _raises(ValueError, (B + 1, N), (B, N, H)):
            aaren_step(aaren_init(B + 1, N, H), query, key[:, 0], value[:, 0])
        with _raises(ValueError, (B + 1,)):
            aaren_step(state, query, key[:, 0], value[:, 0], np.ones((B + 1,), bool))
        with _raises(TypeError, "bool"):
            aaren_step(state, query, key[:, 0], value[:, 0], np.ones((B,), np.int32))


class AarenModuleTest(chex.TestCase):

    def _setup(self, out_features=None):
        module = Aaren(num_heads=N, head_dim=H, out_features=out_features)
        x = jnp.asarray(np.random.default_rng(17).standard_normal((B, S, D)), jnp.float32)
        params = nn.unbox(module.init(jax.random.PRNGKey(0), x))
        return module, params, x

    def test_params_and_shapes(self):
        module, params, x = self._setup(out_features=7)
        p = params["params"]
        chex.assert_shape(p["query"], (N, H))
        chex.assert_shape(p["key"]["kernel"], (D, N, H))
        chex.assert_shape(p["out"]["kernel"], (N, H, 7))
        y = module.apply(params, x)
        chex.assert_shape(y, (B, S, 7))

    def test_call_matches_functional(self):
        module, params, x = self._setup()
        p = params["params"]
        key = jnp.einsum("BSD,DNH->BSNH", x, p["key"]["kernel"]) + p["key"]["bias"]
        value = jnp.einsum("BSD,DNH->BSNH", x, p["value"]["kernel"]) + p["value"]["bias"]
        query = jnp.broadcast_to(p["query"], (B, N, H))
        ref = _reference(query, key, value)
        want = np.einsum("BSNH,NHE->BSE", ref, np.asarray(p["out"]["kernel"], np.float64)) + p["out"]["bias"]
        chex.assert_trees_all_close(np.asarray(module.apply(params, x), np.float64), want, atol=1e-5)

    @parameterized.parameters(False, True)
    def test_step_equals_call(self, masked):
        module, params, x = self._setup()
        mask = jnp.asarray(_mask(18)) if masked else None
        want = module.apply(params, x, mask)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(state, x_t, valid_t):
            return module.apply(params, state, x_t, valid_t, method=Aaren.step)

        chex.clear_trace_counter()
        state, outs = aaren_init(B, N, H), []
        for t in range(S):
            valid_t = jnp.ones((B,), bool) if mask is None else mask[:, t]
            state, y_t = step(state, x[:, t], valid_t)
            outs.append(y_t)
        chex.assert_trees_all_close(jnp.stack(outs, axis=1), want, atol=1e-5)

    def test_causal(self):
        module, params, x = self._setup()
        # y[:, k] must not depend on x[:, j] for j > k.
        jac = jax.jacrev(lambda x: module.apply(params, x)[0, 2])(x)  # [D, B, S, D]
        np.testing.assert_array_equal(np.asarray(jac[:, :, 3:]), 0.0)
        self.assertGreater(np.abs(np.asarray(jac[:, 0, :3])).max(), 0.0)

    def test_bad_inputs_raise(self):
        module, params, x = self._setup()
        with _raises(ValueError, "rank 3", (B, D)):
            module.apply(params, x[:, 0])
        with _raises(ValueError, (B, S - 1), (B, S, D)):
            module.apply(params, x, jnp.ones((B, S - 1), bool))
        with _raises(ValueError, (B + 1, N), (B, N, H)):
            module.apply(params, aaren_init(B + 1, N, H), x[:, 0], method=Aaren.step)
        with _raises(ValueError, "head_dim", 0):
            Aaren(num_heads=N, head_dim=0)

    def test_empty_sequence_lists_and_zero_features(self):
        module, params, x = self._setup()
        chex.assert_shape(module.apply(params, x[:, :0]), (B, 0, D))
        chex.assert_shape(aaren_scan(*(jnp.zeros(s) for s in ((B, N, H), (B, 0, N, H), (B, 0, N, H)))), (B, 0, N, H))
        with _raises(TypeError, "x", "list"):
            module.apply(params, np.asarray(x).tolist())
        with _raises(TypeError, "mask", "list"):
            module.apply(params, x, np.ones((B, S), bool).tolist())
        with _raises(ValueError, "feature", (B, S, 0)):
            module.init(jax.random.PRNGKey(0), jnp.zeros((B, S, 0)))
        with _raises(ValueError, "H", "0"):
            aaren_scan(*(jnp.zeros(s) for s in ((B, N, 0), (B, S, N, 0), (B, S, N, 0))))
        with _raises(ValueError, "out_features", "0"):
            Aaren(num_heads=N, head_dim=H, out_features=0)
        with _raises(TypeError, "use_bias", "'no'"):
            Aaren(num_heads=N, head_dim=H, use_bias="no")

    def test_nan_in_masked_tokens_reaches_no_gradient(self):
        # Before the fix the scan ignored them, but d W_k = x^T d k = NaN * 0 on the masked tokens.
        module, params, x = self._setup()
        mask = np.ones((B, S), bool)
        mask[0, 1], mask[1, 4:] = False, False
        poisoned = np.asarray(x).copy()
        poisoned[~mask] = np.nan
        grad = jax.value_and_grad(lambda p, x: jnp.sum(module.apply(p, x, jnp.asarray(mask)) ** 2), argnums=(0, 1))
        got, want = grad(params, jnp.asarray(poisoned)), grad(params, x)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
        step = lambda p, x_t: jnp.sum(module.apply(p, aaren_init(B, N, H), x_t, jnp.asarray(mask[:, 1]),
                                                   method=Aaren.step)[1] ** 2)
        got = jax.grad(step)(params, jnp.asarray(poisoned[:, 1]))
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, jax.grad(step)(params, x[:, 1]), rtol=1e-5, atol=1e-6)

    def test_module_exports(self):
        for name in ("Aaren", "AarenState", "aaren_init", "aaren_scan", "aaren_step"):
            self.assertTrue(hasattr(aaren, name), name)


if __name__ == "__main__":
    absltest.main()
