"""Tests for layers/abcnn.py: BCNN and ABCNN-1/-2/-3 (Yin et al. 2016, arXiv:1512.05193).

Oracle: a float64 numpy transcription of the wide convolution, w-ap, all-ap, the match-score matrix, ABCNN-1's
attention feature maps and ABCNN-2's attention pooling, run on each sentence pair unpadded (so padding must
change nothing in the batched model); finite differences; the epsilon at identical rows. The contract checks
(jit, NaN at padded rows, logical axes, bad shapes) are in tests/layers/contract_test.py.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import abcnn

B, S0, S1, D, W = 3, 5, 6, 4, 3
LENGTHS0, LENGTHS1 = np.array([5, 2, 4]), np.array([6, 3, 1])


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, S0, D)), rng.standard_normal((B, S1, D))


def _np_match(a, b, eps):
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) + eps)
    return 1.0 / (1.0 + dist)


def _np_conv(x, kernel, bias):
    w = kernel.shape[0]
    padded = np.concatenate([np.zeros((w - 1, x.shape[1])), x, np.zeros((w - 1, x.shape[1]))])
    return np.stack([np.tanh(np.einsum("wd,wdf->f", padded[j:j + w], kernel) + bias)
                     for j in range(x.shape[0] + w - 1)])


def _np_cos(a, b):
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _np_abcnn(params, x0, x1, variant, blocks, eps=1e-6):
    """One unpadded pair: the logits of eqs. (wide conv, w-ap / attention pooling, all-ap, LR on cosines)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(params))
    xs = [x0, x1]
    cos = [_np_cos(x0.mean(0), x1.mean(0))]
    for l in range(blocks):
        if variant in ("abcnn1", "abcnn3"):
            a = _np_match(xs[0], xs[1], eps)
            w_att = p[f"attention_{l}"]
            xs = [np.concatenate([xs[0], a @ w_att[:len(xs[1])]], -1),
                  np.concatenate([xs[1], a.T @ w_att[:len(xs[0])]], -1)]
        convs = [_np_conv(x, p[f"conv_{l}"]["kernel"], p[f"conv_{l}"]["bias"]) for x in xs]
        if variant in ("abcnn2", "abcnn3"):
            a = _np_match(convs[0], convs[1], eps)
            weights = [a.sum(1), a.sum(0)]
        else:
            weights = [np.full(len(c), 1.0 / W) for c in convs]
        xs = [np.stack([sum(wt[k] * c[k] for k in range(j, j + W)) for j in range(len(c) - W + 1)])
              for c, wt in zip(convs, weights)]
        cos.append(_np_cos(xs[0].mean(0), xs[1].mean(0)))  # all-ap over the block's pooled rows
    return np.array(cos) @ p["output"]["kernel"] + p["output"]["bias"]


class ABCNNTest(parameterized.TestCase):

    @parameterized.parameters(("bcnn", 2), ("abcnn1", 1), ("abcnn2", 1), ("abcnn3", 2))
    def test_matches_float64_transcription_per_unpadded_pair(self, variant, blocks):
        module = abcnn.ABCNN(variant=variant, num_blocks=blocks, width=W, features=3, max_len=8)
        x0, x1 = _inputs()
        args = (jnp.asarray(x0, jnp.float32), jnp.asarray(x1, jnp.float32), jnp.asarray(LENGTHS0),
                jnp.asarray(LENGTHS1))
        variables = module.init(jax.random.PRNGKey(0), *args)
        variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero biases
        logits, aux = jax.jit(module.apply)(variables, *args)
        for b in range(B):
            want = _np_abcnn(variables["params"], x0[b, :LENGTHS0[b]], x1[b, :LENGTHS1[b]], variant, blocks)
            np.testing.assert_allclose(logits[b], want, rtol=1e-4, atol=1e-5, err_msg=f"pair {b}")
        self.assertEqual(aux["cosines"].shape, (B, blocks + 1))

    @parameterized.parameters(("abcnn2", "bcnn"), ("abcnn3", "abcnn1"))
    def test_one_block_attention_pooling_reaches_the_output(self, variant, without):
        # With the same parameters, a one-block model with attention pooling must score differently from the
        # same model without it: all-ap over the raw convolution rows would make them equal.
        x0, x1 = _inputs()
        args = (jnp.asarray(x0, jnp.float32), jnp.asarray(x1, jnp.float32), jnp.asarray(LENGTHS0),
                jnp.asarray(LENGTHS1))
        module = abcnn.ABCNN(variant=variant, num_blocks=1, width=W, features=3, max_len=8)
        variables = module.init(jax.random.PRNGKey(1), *args)
        with_pooling, _ = module.apply(variables, *args)
        plain, _ = abcnn.ABCNN(variant=without, num_blocks=1, width=W, features=3, max_len=8).apply(variables, *args)
        self.assertGreater(float(jnp.max(jnp.abs(with_pooling - plain))), 1e-4)

    def test_match_score_is_finite_at_identical_rows(self):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 3, D)), jnp.float32)
        a = abcnn.match_score(x, x)
        np.testing.assert_allclose(np.diag(a[0]), 1.0 / (1.0 + np.sqrt(1e-6)), rtol=1e-6)
        grad = jax.grad(lambda y: jnp.sum(abcnn.match_score(y, x)))(x)
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_allclose(abcnn.match_score(x, x[:, ::-1] + 1.0, eps=1e-12),
                                   _np_match(np.asarray(x[0], np.float64), np.asarray(x[0, ::-1] + 1.0), 0.0)[None],
                                   rtol=1e-5)

    def test_gradients_match_finite_differences(self):
        module = abcnn.ABCNN(variant="abcnn3", width=2, features=2, max_len=6)
        x0, x1 = (jnp.asarray(x, jnp.float32) for x in _inputs(2))
        lengths = (jnp.asarray(LENGTHS0), jnp.asarray(LENGTHS1))
        variables = module.init(jax.random.PRNGKey(3), x0, x1, *lengths)
        fn = jax.jit(lambda v, a, b: jnp.sum(jnp.sin(module.apply(v, a, b, *lengths)[0])))
        jax.test_util.check_grads(fn, (variables, x0, x1), order=1, modes=("rev",), eps=1e-3, atol=2e-2,
                                  rtol=2e-2)

    def test_empty_sentence_gives_zero_cosines(self):
        module = abcnn.ABCNN(variant="abcnn3", width=W, features=3, max_len=8)
        x0, x1 = (jnp.asarray(x, jnp.float32) for x in _inputs())
        lengths0 = jnp.array([0, 2, 4])
        variables = module.init(jax.random.PRNGKey(0), x0, x1, lengths0, jnp.asarray(LENGTHS1))
        logits, aux = jax.jit(module.apply)(variables, x0, x1, lengths0, jnp.asarray(LENGTHS1))
        np.testing.assert_array_equal(aux["cosines"][0], 0.0)
        self.assertTrue(np.all(np.isfinite(logits)))

    def test_bad_inputs_raise(self):
        x0, x1 = (jnp.asarray(x, jnp.float32) for x in _inputs())
        lengths = (jnp.asarray(LENGTHS0), jnp.asarray(LENGTHS1))
        with _raises(ValueError, "max_len=4", str(S0), str(S1)):
            abcnn.ABCNN(variant="abcnn1", max_len=4).init(jax.random.PRNGKey(0), x0, x1, *lengths)
        with _raises(ValueError, "x0", "x1", str((B, S1, D - 1))):
            abcnn.match_score(x0, x1[..., :-1])
        with _raises(ValueError, "variant", "abcnn4"):
            abcnn.ABCNN(variant="abcnn4")
        with _raises(ValueError, "weights", str((B, 2))):
            abcnn.window_pool(x0, jnp.ones((B, 2)), 2, lengths[0])


if __name__ == "__main__":
    absltest.main()
