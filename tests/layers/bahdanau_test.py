"""Tests for attention_jax/layers/bahdanau.py: additive attention (Bahdanau et al. 2014, arXiv:1409.0473).

The oracle is tests/reference.py (float64 numpy, eq. 5-6 and A.1.2). Both paths of the module are covered:
through `attend`, and through cached `projected_keys` (U_a h_j computed once per sentence).
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers.bahdanau import BahdanauAttention
from tests import reference as ref

B, T, S = 2, 3, 5
DQ, DK, DV, A = 4, 6, 3, 7


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((B, T, DQ)).astype(np.float32)
    key = rng.standard_normal((B, S, DK)).astype(np.float32)
    value = rng.standard_normal((B, S, DV)).astype(np.float32)
    mask = ref.padding_mask([S, 3], S)[:, None, :].repeat(T, axis=1)
    mask[1, 2] = False  # a query with nothing to attend
    return query, key, value, mask


def _module_and_params(query, key):
    module = BahdanauAttention(features=A)
    params = nn.unbox(module.init(jax.random.key(0), jnp.asarray(query), jnp.asarray(key)))
    return module, params


def _run(module, params, query, key, value, mask, projected):
    """(context, weights) of the module, through projected_keys or through attend."""
    if projected:
        projected_keys = module.apply(params, key, mask, method=BahdanauAttention.project_keys)
        return module.apply(params, query, key, value, mask, projected_keys=projected_keys)
    return module.apply(params, query, key, value, mask)


class BahdanauAttentionTest(parameterized.TestCase):

    @parameterized.parameters(False, True)
    def test_matches_reference(self, projected):
        query, key, value, mask = _inputs(1)
        module, params = _module_and_params(query, key)
        ctx, weights = _run(module, params, *map(jnp.asarray, (query, key, value, mask)), projected)
        p = params["params"]
        ref_params = {"w_q": p["w_q"]["kernel"], "w_k": p["w_k"]["kernel"], "v": p["v"]}
        want_ctx, want_w = ref.attend(query, key, value, mask, score="additive", params=ref_params)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    @parameterized.parameters(False, True)
    def test_nan_in_dead_rows_leaves_output_and_gradients_clean(self, projected):
        # Before the fix the projected path scored tanh(W q + U k) on the raw padded keys: a clean forward pass,
        # but d query and d W_a = 0 * tanh'(NaN) = NaN.
        query, key, value, mask = _inputs(2)
        module, params = _module_and_params(query, key)
        dead_key = ~mask.any(axis=1)
        p_query, p_key, p_value = query.copy(), key.copy(), value.copy()
        p_key[dead_key], p_value[dead_key], p_query[1, 2] = np.nan, np.inf, np.nan
        cot = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, DV)), jnp.float32)

        def loss(params, q, k, v):
            ctx, weights = _run(module, params, q, k, v, jnp.asarray(mask), projected)
            return jnp.sum(ctx * cot) + jnp.sum(weights ** 2)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
        got = grad(params, *map(jnp.asarray, (p_query, p_key, p_value)))
        want = grad(params, *map(jnp.asarray, (query, key, value)))
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
        _, (_, g_q, g_k, g_v) = got
        np.testing.assert_array_equal(g_q[1, 2], 0.0)
        np.testing.assert_array_equal(g_k[dead_key], 0.0)
        np.testing.assert_array_equal(g_v[dead_key], 0.0)

    @parameterized.product(sizes=((T, 0), (0, S), (0, 0)), projected=(False, True))
    def test_empty_sequences(self, sizes, projected):
        num_queries, num_keys = sizes
        query, key, value = jnp.ones((B, num_queries, DQ)), jnp.ones((B, num_keys, DK)), jnp.ones((B, num_keys, DV))
        module, params = _module_and_params(np.ones((B, T, DQ), np.float32), np.ones((B, S, DK), np.float32))
        ctx, weights = _run(module, params, query, key, value, None, projected)
        chex.assert_shape((ctx, weights), ((B, num_queries, DV), (B, num_queries, num_keys)))
        np.testing.assert_array_equal(ctx, 0.0)

    def test_bad_inputs_name_the_argument(self):
        query, key, value, mask = _inputs(4)
        module, params = _module_and_params(query, key)
        with _raises(TypeError, "query", "list"):
            module.apply(params, query.tolist(), jnp.asarray(key))
        with _raises(TypeError, "mask", "list"):
            module.apply(params, jnp.asarray(query), jnp.asarray(key), None, mask.tolist())
        with _raises(ValueError, "feature", (B, S, 0)):
            module.apply(params, jnp.asarray(query), jnp.zeros((B, S, 0)))
        with _raises(ValueError, "projected_keys", (B, S, A), (B, S, A + 1)):
            module.apply(params, jnp.asarray(query), jnp.asarray(key), projected_keys=jnp.zeros((B, S, A + 1)))
        with _raises(TypeError, "projected_keys", "int32"):
            module.apply(params, jnp.asarray(query), jnp.asarray(key), projected_keys=jnp.zeros((B, S, A), int))
        with _raises(TypeError, "key", "list"):
            module.apply(params, key.tolist(), method=BahdanauAttention.project_keys)
        with _raises(ValueError, "mask", (B, S + 1)):
            module.apply(params, jnp.asarray(key), jnp.ones((B, S + 1), bool), method=BahdanauAttention.project_keys)
        with _raises(ValueError, "features", "True"):
            BahdanauAttention(features=True)


if __name__ == "__main__":
    absltest.main()
