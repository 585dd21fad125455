"""Tests for models/han.py: hierarchical attention networks (Yang et al. 2016, N16-1174) and HN-AVE / HN-MAX.

The oracle is the model's two levels applied by hand, one unpadded document and one unpadded sentence at a
time (eqs. 1-11): padding of words and sentences, empty sentences in the middle and empty documents must not
change what the batched, padded model computes. The contract checks (jit, NaN at padded positions, logical
axes, bad shapes) are in tests/layers/contract_test.py.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core import pooling
from attention_jax.models import han

V, C, E, H, A = 20, 3, 6, 4, 5


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _documents():
    """[3, 4, 5] ids: a full document, one with short and empty sentences (one empty in the middle), an empty one."""
    tokens = np.zeros((3, 4, 5), np.int32)
    rng = np.random.default_rng(0)
    tokens[0] = rng.integers(1, V, (4, 5))
    tokens[1, 0, :3] = rng.integers(1, V, 3)
    tokens[1, 2, :5] = rng.integers(1, V, 5)  # sentence 1 is empty, sentence 3 is padding
    return tokens


def _by_hand(module, variables, tokens):
    """Logits of each document computed one unpadded sentence and one unpadded document at a time."""

    def level(which):
        def run(m, x, n, mask):
            h = getattr(m, f"{which}_encoder")(x, n)
            if m.pooling == "attention":
                return getattr(m, f"{which}_attention")(h, mask)[0]
            return pooling.mean_pool(h, mask) if m.pooling == "mean" else pooling.max_pool(h, mask)
        return jax.jit(lambda x, n, mask: module.apply(variables, x, n, mask, method=run))

    word, sentence = level("word"), level("sentence")
    embed = jax.jit(lambda ids: module.apply(variables, ids, method=lambda m, ids: m.embed(ids)))
    classify = jax.jit(lambda v: module.apply(variables, v, method=lambda m, v: m.classifier(v)))
    out = []
    for doc in tokens:
        lengths = (doc != 0).sum(-1)
        last = int(np.max(np.nonzero(lengths)[0], initial=-1)) + 1
        sentence_vectors = []
        for i in range(last):
            n = int(lengths[i])
            if n == 0:
                sentence_vectors.append(jnp.zeros((2 * H,)))
                continue
            x = embed(jnp.asarray(doc[i, :n])[None]).astype(jnp.float32)
            sentence_vectors.append(word(x, jnp.array([n]), jnp.ones((1, n), bool))[0])
        if last == 0:
            document = jnp.zeros((2 * H,))
        else:
            s = jnp.stack(sentence_vectors)[None]  # [1, L_b, 2H]
            document = sentence(s, jnp.array([last]), jnp.asarray(lengths[:last] > 0)[None])[0]
        out.append(classify(document))
    return jnp.stack(out)


class HierarchicalAttentionNetworkTest(chex.TestCase):

    def _module(self, pooling_name="attention", normalizer="softmax"):
        return han.HierarchicalAttentionNetwork(vocab_size=V, num_classes=C, embed_dim=E, hidden_size=H,
                                                attention_dim=A, pooling=pooling_name, normalizer=normalizer)

    @parameterized.named_parameters(
        dict(testcase_name="hn_att", pooling_name="attention", normalizer="softmax"),
        dict(testcase_name="hn_ave", pooling_name="mean", normalizer="softmax"),
        dict(testcase_name="hn_max", pooling_name="max", normalizer="softmax"),
    )
    def test_equals_its_two_levels_applied_by_hand(self, pooling_name, normalizer):
        module = self._module(pooling_name, normalizer)
        tokens = _documents()
        variables = module.init(jax.random.key(0), tokens)
        logits, aux = jax.jit(module.apply)(variables, tokens)
        chex.assert_shape(logits, (3, C))
        np.testing.assert_allclose(logits, _by_hand(module, variables, tokens), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(aux["document"])[2], 0.0)  # an empty document
        weights = np.asarray(aux["sentence_weights"])
        np.testing.assert_array_equal(weights[1, [1, 3]], 0.0)  # the empty and the padded sentence
        np.testing.assert_allclose(weights[:2].sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(aux["word_weights"])[tokens == 0], 0.0)

    def test_more_padding_changes_nothing(self):
        module = self._module()
        tokens = _documents()
        variables = module.init(jax.random.key(1), tokens)
        wider = np.zeros((3, 6, 8), np.int32)
        wider[:, :4, :5] = tokens
        np.testing.assert_allclose(module.apply(variables, wider)[0], module.apply(variables, tokens)[0],
                                   atol=1e-5)

    def test_trains_and_grads_are_finite(self):
        module = self._module()
        tokens = _documents()
        variables = module.init(jax.random.key(2), tokens)
        labels = jnp.array([0, 2, 1])

        def loss(params):
            logits, _ = module.apply({"params": params}, tokens)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

        step = jax.jit(jax.value_and_grad(loss))
        params = variables["params"]
        first, grads = step(params)
        self.assertTrue(all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)))
        for _ in range(30):
            value, grads = step(params)
            params = jax.tree_util.tree_map(lambda p, g: p - 0.3 * g, params, grads)
        self.assertLess(float(value), float(first))

    def test_bad_input(self):
        module = self._module()
        tokens = _documents()
        with _raises(ValueError, "tokens", "3 dims", "(3, 4)"):
            module.init(jax.random.key(0), tokens[:, :, 0])
        with _raises(TypeError, "tokens", "float32"):
            module.init(jax.random.key(0), tokens.astype(np.float32))
        with _raises(ValueError, "pooling", "'sum'"):
            han.HierarchicalAttentionNetwork(vocab_size=V, num_classes=C, pooling="sum")


if __name__ == "__main__":
    absltest.main()
