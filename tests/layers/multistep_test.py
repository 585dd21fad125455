"""Tests for attention_jax/layers/multistep.py: ConvS2S multi-step attention (Gehring et al. 2017, arXiv:1705.03122).

The reference tests of the equations live with the model (tests/models/convs2s_test.py); these cover the
reliability contract: NaN in dead rows, empty sequences and bad arguments.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers.multistep import MultiStepAttention, multistep_attention

B, T, S, C, E = 3, 4, 5, 6, 4


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((B, T, C), (B, T, E), (B, S, E), (B, S, E))]
    params = {"w_d": rng.standard_normal((C, E)).astype(np.float32) / np.sqrt(C),
              "b_d": rng.standard_normal((E,)).astype(np.float32)}
    mask = np.array([[True] * S, [True, True, False, False, False], [False] * S])  # row 2: no source at all
    return arrays, params, mask


class MultistepReliabilityTest(parameterized.TestCase):

    def test_nan_in_dead_rows_leaves_output_and_gradients_clean(self):
        # Row 2 has no valid source: its decoder states are dead queries. Before the fix they were only masked
        # in the softmax, so NaN there reached d W_d through d query = sum_s 0 * k_s... times NaN states.
        (state, target, enc_out, enc_in), params, mask = _inputs(1)
        p_state, p_target, p_out, p_in = state.copy(), target.copy(), enc_out.copy(), enc_in.copy()
        p_state[2], p_target[2] = np.nan, np.inf
        p_out[~mask], p_in[~mask] = np.nan, np.nan

        def loss(params, *arrays):
            ctx, weights = multistep_attention(*arrays, w_d=params["w_d"], b_d=params["b_d"], mask=jnp.asarray(mask))
            return jnp.sum(ctx ** 2) + jnp.sum(weights)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))
        got = grad(params, *map(jnp.asarray, (p_state, p_target, p_out, p_in)))
        want = grad(params, *map(jnp.asarray, (state, target, enc_out, enc_in)))
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    @parameterized.parameters((T, 0), (0, S), (0, 0))
    def test_empty_sequences(self, num_queries, num_keys):
        module = MultiStepAttention()
        args = (jnp.ones((B, num_queries, C)), jnp.ones((B, num_queries, E)), jnp.ones((B, num_keys, E)),
                jnp.ones((B, num_keys, E)))
        (ctx, weights), _ = module.init_with_output(jax.random.key(0), *args, jnp.ones((B, num_keys), bool))
        chex.assert_shape((ctx, weights), ((B, num_queries, E), (B, num_queries, num_keys)))
        np.testing.assert_array_equal(ctx, 0.0)

    def test_bad_arguments(self):
        (state, target, enc_out, enc_in), params, mask = _inputs(2)
        with _raises(TypeError, "scale_context", "str"):
            multistep_attention(state, target, enc_out, enc_in, **params, scale_context="yes")
        with _raises(TypeError, "scale_context", "int"):
            MultiStepAttention(scale_context=1)
        with _raises(TypeError, "decoder_state", "list"):
            multistep_attention(state.tolist(), target, enc_out, enc_in, **params)
        with _raises(TypeError, "mask", "list"):
            multistep_attention(state, target, enc_out, enc_in, **params, mask=mask.tolist())
        with _raises(ValueError, "feature", (B, T, 0)):
            MultiStepAttention().init(jax.random.key(0), jnp.zeros((B, T, 0)), target, enc_out, enc_in)


if __name__ == "__main__":
    absltest.main()
