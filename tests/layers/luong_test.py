"""Tests for attention_jax/layers/luong.py: global, local-m and local-p attention (Luong et al. 2015, arXiv:1508.04025).

The oracle is tests/reference.py (float64 numpy, eq. 7-10). The module's parameters come from the core score
registry (`attention_jax.core.scores.param_shapes`).
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core import scores
from attention_jax.layers import luong
from attention_jax.layers.luong import LuongAttention
from tests import reference as ref

B, T, S = 2, 3, 6
DQ, DK, DV, A = 4, 5, 3, 6
S_MAX = 8


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(score, seed=0):
    rng = np.random.default_rng(seed)
    dk = DQ if scores.SCORES[score].same_features else DK
    query = rng.standard_normal((B, T, DQ)).astype(np.float32)
    key = rng.standard_normal((B, S, dk)).astype(np.float32)
    value = rng.standard_normal((B, S, DV)).astype(np.float32)
    return query, key, value


def _module(score, mode, window=2):
    return LuongAttention(score=score, mode=mode, window=window, features=A, max_source_len=S_MAX)


class LuongAttentionTest(parameterized.TestCase):

    def test_score_and_mode_lists_come_from_the_core(self):
        self.assertEqual(luong.LUONG_SCORES, scores.LUONG_SCORES)
        self.assertEqual(luong.LUONG_MODES, ("global", "local_m", "local_p"))

    @parameterized.product(score=luong.LUONG_SCORES, mode=luong.LUONG_MODES)
    def test_params_follow_the_registry_and_match_reference(self, score, mode):
        query, key, value = _inputs(score, seed=1)
        mask = ref.padding_mask([S, 4], S)
        module = _module(score, mode, window=1)
        params = nn.unbox(module.init(jax.random.key(0), *map(jnp.asarray, (query, key, value, mask))).get("params", {}))
        want_shapes = scores.param_shapes(score, DQ, key.shape[-1], hidden_dim=A, max_keys=S_MAX)
        if mode == "local_p":
            want_shapes.update(w_p=(DQ, A), v_p=(A,))
        self.assertEqual({n: p.shape for n, p in params.items()}, want_shapes)
        ctx, weights = module.apply({"params": params}, *map(jnp.asarray, (query, key, value, mask)))
        want_ctx, want_w = ref.attend(query, key, value, mask, score=score, params=params, mode=mode, window=1)
        ref.assert_close(weights, want_w)
        ref.assert_close(ctx, want_ctx)

    @parameterized.parameters(*luong.LUONG_MODES)
    def test_nan_padding_does_not_reach_gradients(self, mode):
        query, key, value = _inputs("general", seed=2)
        mask = ref.padding_mask([S, 3], S)
        module = _module("general", mode)
        params = nn.unbox(module.init(jax.random.key(0), *map(jnp.asarray, (query, key, value, mask))))
        p_key, p_value = key.copy(), value.copy()
        p_key[~mask], p_value[~mask] = np.nan, -np.inf

        def loss(params, q, k, v):
            ctx, _ = module.apply(params, q, k, v, jnp.asarray(mask))
            return jnp.sum(ctx ** 2)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
        got = grad(params, *map(jnp.asarray, (query, p_key, p_value)))
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, grad(params, *map(jnp.asarray, (query, key, value))), rtol=1e-6, atol=1e-6)

    def test_local_p_left_padding_equals_right_padding(self):
        # p_t is placed on the valid span, so moving the sentence to the end of the row changes nothing.
        query, key, value = _inputs("general", seed=3)
        right = ref.padding_mask([S, 4], S)
        left = right[:, ::-1].copy()
        key_l, value_l = key.copy(), value.copy()
        key_l[1, S - 4:], value_l[1, S - 4:] = key[1, :4], value[1, :4]
        key_l[1, :S - 4], value_l[1, :S - 4] = np.nan, np.nan
        module = _module("general", "local_p", window=1)
        params = nn.unbox(module.init(jax.random.key(0), *map(jnp.asarray, (query, key, value, right))))
        ctx_r, w_r = module.apply(params, *map(jnp.asarray, (query, key, value, right)))
        ctx_l, w_l = module.apply(params, *map(jnp.asarray, (query, key_l, value_l, left)))
        ref.assert_close(ctx_l, ctx_r)
        ref.assert_close(np.asarray(w_l)[1, :, S - 4:], np.asarray(w_r)[1, :, :4])
        np.testing.assert_array_equal(np.asarray(w_l)[1, :, :S - 4], 0.0)

    def test_local_p_sows_the_window_centres_it_uses(self):
        query, key, value = _inputs("general", seed=4)
        mask = ref.padding_mask([S, 4], S)
        module = _module("general", "local_p", window=1)
        args = tuple(map(jnp.asarray, (query, key, value, mask)))
        params = nn.unbox(module.init(jax.random.key(0), *args))
        (ctx, weights), state = module.apply(params, *args, mutable=["intermediates"])
        (position,) = state["intermediates"]["position"]
        p = params["params"]
        want = ref.local_p_position(query, p["w_p"], p["v_p"], np.array([S, 4]))  # eq. 9, float64
        ref.assert_close(position, want)
        # The weights live inside [floor(p_t) - D, floor(p_t) + D] of the sown centres, and the outputs are those
        # of a plain apply, which sows nothing.
        outside = np.abs(np.arange(S)[None, None, :] - np.floor(np.asarray(position))[..., None]) > 1
        np.testing.assert_array_equal(np.asarray(weights)[outside], 0.0)
        ctx_plain, _ = module.apply(params, *args)
        np.testing.assert_array_equal(ctx, ctx_plain)

    @parameterized.product(mode=luong.LUONG_MODES, sizes=((T, 0), (0, S), (0, 0)))
    def test_empty_sequences(self, mode, sizes):
        num_queries, num_keys = sizes
        module = _module("location", mode)
        params = nn.unbox(module.init(jax.random.key(0), jnp.ones((B, T, DQ)), jnp.ones((B, S, DK))))
        ctx, weights = module.apply(params, jnp.ones((B, num_queries, DQ)), jnp.ones((B, num_keys, DK)),
                                    jnp.ones((B, num_keys, DV)))
        chex.assert_shape((ctx, weights), ((B, num_queries, DV), (B, num_queries, num_keys)))
        np.testing.assert_array_equal(ctx, 0.0)

    def test_bad_options_and_inputs(self):
        with _raises(ValueError, "'cosine'", "general"):
            LuongAttention(score="cosine")
        with _raises(ValueError, "features", "-1"):
            LuongAttention(features=-1)
        with _raises(ValueError, "max_source_len", "location"):
            LuongAttention(score="location")
        module = _module("general", "global")
        query, key, value = _inputs("general")
        params = nn.unbox(module.init(jax.random.key(0), jnp.asarray(query), jnp.asarray(key)))
        with _raises(TypeError, "key", "list"):
            module.apply(params, jnp.asarray(query), key.tolist())
        with _raises(ValueError, "feature", (B, T, 0)):
            module.apply(params, jnp.zeros((B, T, 0)), jnp.asarray(key))
        with _raises(ValueError, "dot", (B, T, DQ), (B, S, DK)):
            _module("dot", "global").init(jax.random.key(0), jnp.asarray(query), jnp.asarray(key))
        with _raises(ValueError, "max_source_len=8", (B, S_MAX + 1, DK)):
            _module("location", "global").init(jax.random.key(0), jnp.asarray(query), jnp.zeros((B, S_MAX + 1, DK)))


    def test_concat_projected_keys_give_the_same_outputs_and_gradients(self):
        query, key, value = _inputs("concat", seed=3)
        key[1, 4:] = np.nan  # padding: must reach neither path's outputs nor gradients
        value[1, 4:] = np.nan
        mask = jnp.asarray(ref.padding_mask([S, 4], S))
        module = _module("concat", "global")
        q, k, v = map(jnp.asarray, (query, key, value))
        params = module.init(jax.random.key(0), q, k, v, mask)

        def run(p, q, projected):
            if projected:
                pk = module.apply(p, DQ, k, mask, method=LuongAttention.project_keys)
                return module.apply(p, q, k, v, mask, projected_keys=pk)
            return module.apply(p, q, k, v, mask)

        for projected in (False, True):
            context, weights = jax.jit(run, static_argnums=2)(params, q, projected)
            self.assertTrue(np.all(np.isfinite(np.asarray(context))))
        want = run(params, q, False)
        got = run(params, q, True)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
        loss = lambda p, q, projected: jnp.sum(run(p, q, projected)[0] ** 2)
        g_want = jax.grad(loss, argnums=(0, 1))(params, q, False)
        g_got = jax.grad(loss, argnums=(0, 1))(params, q, True)
        self.assertTrue(all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g_got)))
        chex.assert_trees_all_close(g_got, g_want, rtol=1e-5, atol=1e-6)

    def test_projected_keys_only_for_global_concat(self):
        query, key, value = _inputs("general")
        q, k = jnp.asarray(query), jnp.asarray(key)
        module = _module("general", "global")
        params = module.init(jax.random.key(0), q, k)
        with _raises(ValueError, "score='general'", "mode='global'"):
            module.apply(params, q, k, projected_keys=jnp.zeros((B, S, A)))
        concat = _module("concat", "local_m")
        query, key, _ = _inputs("concat")
        q, k = jnp.asarray(query), jnp.asarray(key)
        params = concat.init(jax.random.key(0), q, k)
        with _raises(ValueError, "score='concat'", "mode='local_m'"):
            concat.apply(params, DQ, k, method=LuongAttention.project_keys)
        glob = _module("concat", "global")
        params = glob.init(jax.random.key(0), q, k)
        with _raises(ValueError, "projected_keys", str((B, S, A))):
            glob.apply(params, q, k, projected_keys=jnp.zeros((B, S, A + 1)))


if __name__ == "__main__":
    absltest.main()
