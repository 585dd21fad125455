"""Tests for attention_jax/layers/relative.py: Transformer-XL relative attention (Dai et al. 2019, arXiv:1901.02860).

The reference tests of the equations live with the model (tests/models/transformer_xl_test.py); these cover the
reliability contract: NaN in dead rows (per head), empty segments and bad arguments.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import relative

B, T, M, N, H, D = 2, 3, 2, 2, 4, 8
L = M + T


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


class RelativeAttentionReliabilityTest(absltest.TestCase):

    def test_nan_in_dead_rows_leaves_output_and_gradients_clean(self):
        rng = np.random.default_rng(0)
        query, key, value = (rng.standard_normal(shape).astype(np.float32)
                             for shape in ((B, T, N, H), (B, L, N, H), (B, L, N, H)))
        rel_key, u, v = (rng.standard_normal(shape).astype(np.float32) for shape in ((L, N, H), (N, H), (N, H)))
        mask = np.broadcast_to(np.asarray(relative.causal_memory_mask(T, M)), (B, N, T, L)).copy()
        mask[0, :, :, 0] = False  # memory slot 0 of row 0 is padding for both heads
        mask[1, 1, 1] = False  # head 1 of row 1: query 1 attends nothing
        p_query, p_key, p_value = query.copy(), key.copy(), value.copy()
        p_key[0, 0], p_value[0, 0] = np.nan, np.inf
        p_query[1, 1, 1] = np.nan
        cot = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)

        def loss(q, k, v, rel_key, u, v_bias):
            out = relative.relative_attention(q, k, v, rel_key, u, v_bias, mask=jnp.asarray(mask))
            return jnp.sum(out * cot)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))
        got = grad(*map(jnp.asarray, (p_query, p_key, p_value, rel_key, u, v)))
        want = grad(*map(jnp.asarray, (query, key, value, rel_key, u, v)))
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    def test_empty_segment(self):
        layer = relative.RelativeMultiHeadAttention(num_heads=N, head_dim=H)
        out, _ = layer.init_with_output(jax.random.key(0), jnp.ones((B, 0, D)), jnp.ones((B, M, D)))
        chex.assert_shape(out, (B, 0, D))
        chex.assert_shape(relative.causal_memory_mask(0, M), (1, 1, 0, M))

    def test_bad_arguments(self):
        with _raises(ValueError, "num_heads", "0"):
            relative.RelativeMultiHeadAttention(num_heads=0, head_dim=H)
        with _raises(ValueError, "head_dim", "2.0"):
            relative.RelativeMultiHeadAttention(num_heads=N, head_dim=2.0)
        with _raises(TypeError, "causal", "str"):
            relative.RelativeMultiHeadAttention(num_heads=N, head_dim=H, causal="no")
        layer = relative.RelativeMultiHeadAttention(num_heads=N, head_dim=H)
        with _raises(TypeError, "h", "list"):
            layer.init(jax.random.key(0), np.ones((B, T, D)).tolist())
        with _raises(ValueError, "feature", (B, T, 0)):
            layer.init(jax.random.key(0), jnp.ones((B, T, 0)))
        with _raises(ValueError, "H must be >= 1"):
            relative.relative_attention(*(jnp.ones(s) for s in ((B, T, N, 0), (B, L, N, 0), (B, L, N, 0), (L, N, 0),
                                                                  (N, 0), (N, 0))))


class RelativeLayerNanMemoryTest(absltest.TestCase):

    def test_padded_memory_slots_reach_no_gradient(self):
        # Before the fix the attention masked them, but d W_k = [m; h]^T d k = NaN * 0 on the padded slots.
        rng = np.random.default_rng(1)
        h = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
        memory = rng.standard_normal((B, M, D)).astype(np.float32)
        layer = relative.RelativeMultiHeadAttention(num_heads=N, head_dim=H)
        params = nn.unbox(layer.init(jax.random.key(0), h, jnp.asarray(memory)))
        mask = np.ones((B, 1, T, L), bool)
        mask[1, :, :, :M] = False  # row 1: its memory is padding
        poisoned = memory.copy()
        poisoned[1] = np.nan
        grad = jax.value_and_grad(lambda p, h: jnp.sum(layer.apply(p, h, memory_, jnp.asarray(mask)) ** 2),
                                  argnums=(0, 1))
        memory_ = jnp.asarray(poisoned)
        got = grad(params, h)
        memory_ = jnp.asarray(memory)
        want = grad(params, h)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    absltest.main()
