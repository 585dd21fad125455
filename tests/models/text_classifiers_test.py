"""Tests for models/text_classifiers.py: TextCNN (Kim 2014) and BiLSTMClassifier, with every pooling.

Oracles: a float64 numpy transcription of Kim's eqs. 1-2 with wide convolutions; each padded sentence against
the same sentence alone and unpadded (padding must change nothing, for every pooling); Lin et al.'s eq. 8
recomputed from the returned weights; finite differences. The contract checks (jit, NaN at padded positions,
logical axes, bad shapes) are in tests/layers/contract_test.py.
"""

import re

import flax.linen as nn
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.models import text_classifiers as tc
from attention_jax.models.seq2seq import make_cell

V, C = 13, 3


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _tokens():
    """[4, 7] ids: a full sentence, one of 4 tokens, one of a single token (shorter than every filter), none."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, (4, 7)).astype(np.int32)
    tokens[1, 4:] = 0
    tokens[2, 1:] = 0
    tokens[3] = 0
    return tokens


def _init(module, tokens):
    variables = module.init(jax.random.PRNGKey(1), jnp.asarray(tokens))
    # Non-zero biases, so that every term of the equations shows.
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), variables)


def _padded_equals_alone(module, tokens, *, atol=1e-6):
    """Applies module to the padded batch and to each non-empty row alone, unpadded; asserts equal logits.

    Returns (variables, the batch's logits, the batch's aux)."""
    variables = _init(module, tokens)
    apply = jax.jit(module.apply)
    batched, aux = apply(variables, jnp.asarray(tokens))
    for b, row in enumerate(tokens):
        if np.any(row != 0):
            alone, _ = apply(variables, jnp.asarray(row[row != 0])[None])
            np.testing.assert_allclose(batched[b], alone[0], rtol=1e-5, atol=atol, err_msg=f"row {b}")
    return variables, batched, aux


def _numpy_textcnn(params, tokens, widths):
    """Kim 2014 eqs. 1-2 with wide convolutions and max over the windows that hold a real token, in float64."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), nn.meta.unbox(params))
    out = []
    for sentence in tokens:
        n = int(np.sum(sentence != 0))
        x = p["embed"]["embedding"][sentence[:n]]  # [n, E]
        pooled = []
        for h in widths:
            kernel, bias = p[f"conv{h}"]["kernel"], p[f"conv{h}"]["bias"]  # [h, E, F], [F]
            padded = np.concatenate([np.zeros((h - 1, x.shape[1])), x, np.zeros((h - 1, x.shape[1]))])
            c = [np.maximum(np.einsum("he,hef->f", padded[i:i + h], kernel) + bias, 0.0) for i in range(n + h - 1)]
            pooled.append(np.max(c, axis=0) if n else np.zeros_like(bias))
        feats = np.concatenate(pooled)
        out.append(feats @ p["classifier"]["kernel"] + p["classifier"]["bias"])
    return np.stack(out)


class _BiLSTM(nn.Module):
    """The classifier's encoder on its own (its cells are the classifier's "lstm_forward" / "lstm_backward")."""

    @nn.compact
    def __call__(self, x):
        return nn.Bidirectional(nn.RNN(make_cell("lstm", 4, name="lstm_forward")),
                                nn.RNN(make_cell("lstm", 4, name="lstm_backward")))(x)


class TextCNNTest(parameterized.TestCase):

    def test_max_pooling_matches_float64_kim(self):
        widths = (2, 3)
        module = tc.TextCNN(vocab_size=V, num_classes=C, embed_dim=5, filter_widths=widths, num_filters=4,
                            dropout_rate=0.0)
        tokens = _tokens()
        variables = _init(module, tokens)
        logits, aux = jax.jit(module.apply)(variables, jnp.asarray(tokens))
        expected = _numpy_textcnn(variables["params"], tokens, widths)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(aux["features"][3], 0.0)  # no token: zero features

    def test_wide_conv_mask_against_brute_force(self):
        mask = np.array([[1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)
        for h in (1, 2, 3):
            got = np.asarray(tc.wide_conv_mask(jnp.asarray(mask), h))
            want = [[any(0 <= t - j < mask.shape[1] and row[t - j] for j in range(h)) for t in range(7 + h - 1)]
                    for row in mask]
            np.testing.assert_array_equal(got, np.array(want), err_msg=f"h={h}")

    @parameterized.parameters(*tc.CNN_POOLINGS)
    def test_padding_changes_nothing(self, pooling):
        module = tc.TextCNN(vocab_size=V, num_classes=C, embed_dim=5, filter_widths=(2, 3), num_filters=4,
                            pooling=pooling, attention_dim=3, k=2, num_chunks=2, dropout_rate=0.0)
        tokens = _tokens()[:3]
        _, _, aux = _padded_equals_alone(module, tokens)
        if pooling == "attention":
            for h, w in aux["weights"].items():
                valid = np.asarray(tc.wide_conv_mask(jnp.asarray(tokens != 0), h))
                np.testing.assert_allclose(np.sum(w, axis=-1), 1.0, rtol=1e-5)
                np.testing.assert_array_equal(np.asarray(w)[~valid], 0.0)

    def test_attention_pooling_gradients_match_finite_differences(self):
        module = tc.TextCNN(vocab_size=V, num_classes=C, embed_dim=3, filter_widths=(2,), num_filters=2,
                            pooling="attention", attention_dim=2, dropout_rate=0.0)
        tokens = jnp.asarray(_tokens()[:2])
        variables = _init(module, tokens)
        fn = jax.jit(lambda v: jnp.sum(jnp.sin(module.apply(v, tokens)[0])))
        jax.test_util.check_grads(fn, (variables,), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)

    def test_empty_sequences(self):
        module = tc.TextCNN(vocab_size=V, num_classes=C, embed_dim=5, filter_widths=(2, 3), num_filters=4,
                            pooling="attention", dropout_rate=0.0)
        variables = _init(module, _tokens())
        logits, aux = module.apply(variables, jnp.zeros((2, 0), jnp.int32))
        np.testing.assert_array_equal(aux["features"], 0.0)
        self.assertEqual(aux["weights"][3].shape, (2, 2))  # the T + h - 1 = 2 windows of padding only
        self.assertTrue(np.all(np.isfinite(logits)))

    def test_bad_configs_raise(self):
        with _raises(ValueError, "pooling", "mean"):
            tc.TextCNN(vocab_size=V, num_classes=C, pooling="mean")
        with _raises(ValueError, "filter_widths"):
            tc.TextCNN(vocab_size=V, num_classes=C, filter_widths=())
        with _raises(ValueError, "filter_widths", "0"):
            tc.TextCNN(vocab_size=V, num_classes=C, filter_widths=(3, 0))


class TransformerClassifierTest(parameterized.TestCase):

    @parameterized.parameters(*tc.ENCODER_ATTENTIONS)
    def test_padding_changes_nothing(self, attention):
        module = tc.TransformerClassifier(vocab_size=V, num_classes=C, d_model=8, num_heads=2, d_ff=12,
                                          attention=attention, dropout_rate=0.0)
        tokens = _tokens()
        _, _, aux = _padded_equals_alone(module, tokens, atol=1e-5)
        np.testing.assert_array_equal(aux["sentence"][3], 0.0)
        for w in aux["weights"]:
            w = np.asarray(w)
            np.testing.assert_array_equal(w[1][..., 4:], 0.0)  # nothing towards padding
            if attention != "coda":
                np.testing.assert_allclose(w[:3].sum(-1), 1.0, rtol=1e-5)
            if attention in ("sparsemax", "entmax15"):
                self.assertGreater(np.mean(w[0] == 0.0), 0.0)  # exact zeros among real tokens

    def test_bad_configs_raise(self):
        with _raises(ValueError, "attention", "linear"):
            tc.TransformerClassifier(vocab_size=V, num_classes=C, attention="linear")
        with _raises(ValueError, "num_heads", "d_model"):
            tc.TransformerClassifier(vocab_size=V, num_classes=C, d_model=10, num_heads=4)


class DAttnClassifierTest(parameterized.TestCase):

    def test_padding_changes_nothing_and_features_feed_the_head(self):
        module = tc.DAttnClassifier(vocab_size=V, num_classes=C, max_len=7, embed_dim=5, window=3, local_features=2,
                                    global_widths=(2, 3), global_features=2, hidden_dim=4, dropout_rate=0.0,
                                    global_scores="word")
        tokens = _tokens()
        variables, _, aux = _padded_equals_alone(module, tokens)
        np.testing.assert_array_equal(aux["features"][3], 0.0)
        self.assertEqual(aux["features"].shape, (4, 2 + 2 * 2))
        with _raises(ValueError, "max_len=7", "8"):
            module.apply(variables, jnp.ones((1, 8), jnp.int32))


class BiLSTMClassifierTest(parameterized.TestCase):

    def _module(self, pooling):
        return tc.BiLSTMClassifier(vocab_size=V, num_classes=C, embed_dim=5, hidden_size=4, pooling=pooling,
                                   attention_dim=3, hops=2, mlp_dim=6)

    @parameterized.parameters(*tc.RNN_POOLINGS)
    def test_padding_changes_nothing(self, pooling):
        module = self._module(pooling)
        tokens = _tokens()
        _, logits, aux = _padded_equals_alone(module, tokens)
        # The empty sentence: a zero sentence vector, so its logits are the biases' alone.
        np.testing.assert_array_equal(aux["sentence"][3], 0.0)
        self.assertTrue(np.all(np.isfinite(logits)))

    def test_last_is_forward_end_and_backward_start(self):
        module = self._module("last")
        tokens = _tokens()
        variables = _init(module, tokens)

        params = nn.meta.unbox(variables["params"])
        cells = {name: params[name] for name in ("lstm_forward", "lstm_backward")}
        _, aux = module.apply(variables, jnp.asarray(tokens))
        sentence = np.asarray(aux["sentence"])
        for b in (0, 1):
            n = int(np.sum(tokens[b] != 0))
            x = params["embed"]["embedding"][tokens[b, :n]][None]  # the sentence alone, unpadded
            h = _BiLSTM().apply({"params": cells}, x)  # [1, n, 2H]
            np.testing.assert_allclose(sentence[b, :4], h[0, n - 1, :4], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(sentence[b, 4:], h[0, 0, 4:], rtol=1e-5, atol=1e-6)

    def test_structured_penalty_is_lin_eq8(self):
        module = self._module("structured")
        tokens = _tokens()
        variables = _init(module, tokens)
        _, aux = jax.jit(module.apply)(variables, jnp.asarray(tokens))
        a = np.asarray(aux["weights"], np.float64)  # [B, R, T]
        gram = np.einsum("brt,bqt->brq", a, a)
        expected = np.sum((gram - np.eye(2)) ** 2, axis=(1, 2))
        expected[3] = 0.0  # no token: nothing to diversify
        np.testing.assert_allclose(aux["penalty"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a[:3].sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(a[1][:, 4:], 0.0)
        self.assertEqual(aux["sentence"].shape, (4, 2 * 2 * 4))

    @parameterized.parameters("last", "structured")
    def test_empty_sequences(self, pooling):
        module = self._module(pooling)
        variables = _init(module, _tokens())
        logits, aux = module.apply(variables, jnp.zeros((2, 0), jnp.int32))
        np.testing.assert_array_equal(aux["sentence"], 0.0)
        self.assertEqual(logits.shape, (2, C))
        self.assertTrue(np.all(np.isfinite(logits)))
        if pooling == "structured":
            self.assertEqual(aux["weights"].shape, (2, 2, 0))

    def test_bad_configs_raise(self):
        with _raises(ValueError, "attention_dim", "structured"):
            tc.BiLSTMClassifier(vocab_size=V, num_classes=C, pooling="structured")
        with _raises(ValueError, "pooling", "kmax"):
            tc.BiLSTMClassifier(vocab_size=V, num_classes=C, pooling="kmax")
        with _raises(TypeError, "tokens"):
            module = tc.BiLSTMClassifier(vocab_size=V, num_classes=C)
            module.init(jax.random.PRNGKey(0), jnp.ones((2, 3), jnp.float32))


if __name__ == "__main__":
    absltest.main()
