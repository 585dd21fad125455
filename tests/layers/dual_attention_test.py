"""Tests for layers/dual_attention.py: D-Attn's local and global attention modules (Seo et al. 2017).

Oracle: a float64 numpy transcription of the window-scored local gate, the global gate, the gated CNNs and
max over time, run on each document unpadded (so padding must change nothing in the batched encoder). The
contract checks (jit, NaN at padded words, logical axes, bad shapes) are in tests/layers/contract_test.py.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import dual_attention as da

B, T, D = 3, 7, 4
LENGTHS = np.array([7, 4, 1])


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_conv_max(x, kernel, bias):
    w = kernel.shape[0]
    if len(x) < w:
        x = np.concatenate([x, np.zeros((w - len(x), x.shape[1]))])
    outs = [np.tanh(np.einsum("wd,wdf->f", x[j:j + w], kernel) + bias) for j in range(len(x) - w + 1)]
    return np.max(outs, axis=0)


def _np_encoder(params, x, window, widths, scores):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(params))
    n, half = len(x), window // 2
    padded = np.concatenate([np.zeros((half, D)), x, np.zeros((half, D))])
    s_local = np.array([_sigmoid(np.sum(p["local_score_kernel"] * padded[t:t + window]) + p["local_score_bias"])
                        for t in range(n)])
    z = [_np_conv_max(s_local[:, None] * x, p["local_conv"]["kernel"], p["local_conv"]["bias"])]
    per_word = np.einsum("td,td->t", x, p["global_score_kernel"][:n])
    if scores == "document":
        s_global = _sigmoid(per_word.sum() + p["global_score_bias"])
        gated = s_global * x
    else:
        gated = _sigmoid(per_word + p["global_score_bias"])[:, None] * x
    for h in widths:
        z.append(_np_conv_max(gated, p[f"global_conv_{h}"]["kernel"], p[f"global_conv_{h}"]["bias"]))
    return np.concatenate(z), s_local


class DualAttentionTest(parameterized.TestCase):

    @parameterized.parameters("document", "word")
    def test_matches_float64_transcription_per_unpadded_document(self, scores):
        module = da.DualAttentionEncoder(max_len=T, window=3, local_features=2, global_widths=(2, 3),
                                         global_features=3, global_scores=scores)
        x = np.random.default_rng(0).standard_normal((B, T, D))
        args = (jnp.asarray(x, jnp.float32), jnp.asarray(LENGTHS))
        variables = module.init(jax.random.PRNGKey(0), *args)
        variables = jax.tree.map(lambda v: v + 0.1, variables)
        features, aux = jax.jit(module.apply)(variables, *args)
        for b in range(B):
            want, s_local = _np_encoder(variables["params"], x[b, :LENGTHS[b]], 3, (2, 3), scores)
            np.testing.assert_allclose(features[b], want, rtol=1e-5, atol=1e-6, err_msg=f"document {b}")
            np.testing.assert_allclose(aux["local_scores"][b, :LENGTHS[b]], s_local, rtol=1e-5)
            np.testing.assert_array_equal(aux["local_scores"][b, LENGTHS[b]:], 0.0)

    def test_gradients_and_empty_documents(self):
        module = da.DualAttentionEncoder(max_len=T, window=3, local_features=2, global_widths=(2,), global_features=2)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, D)), jnp.float32)
        lengths = jnp.array([7, 0, 3])
        variables = module.init(jax.random.PRNGKey(1), x, lengths)
        features, aux = jax.jit(module.apply)(variables, x, lengths)
        np.testing.assert_array_equal(features[1], 0.0)
        np.testing.assert_array_equal(aux["global_scores"][1], 0.0)
        fn = jax.jit(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x, lengths)[0])))
        jax.test_util.check_grads(fn, (variables, x), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)

    def test_bad_inputs_raise(self):
        x = jnp.ones((B, T, D))
        with _raises(ValueError, "max_len=5", str(T)):
            da.DualAttentionEncoder(max_len=5).init(jax.random.PRNGKey(0), x, jnp.asarray(LENGTHS))
        with _raises(ValueError, "window", "4"):
            da.DualAttentionEncoder(max_len=T, window=4)
        with _raises(ValueError, "kernel", str((2, D))):
            da.local_attention_scores(x, jnp.ones((2, D)), jnp.zeros(()))


if __name__ == "__main__":
    absltest.main()
