"""Tests for attention_jax/models/bert.py: BERT (Devlin et al. 2018, arXiv:1810.04805).

References: a float64 numpy transcription of the embeddings, one encoder layer (post-LN and pre-LN) and the
pooler; the MLM head recomputed from the parameters (tied to the token embedding); the 15% / 80-10-10 masking
statistics over many rows. Tiny sizes (V=50, D=16, T=12) and few compiles keep the file fast.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from scipy import special

from attention_jax.models.bert import (
    BertClassifier,
    BertEncoder,
    BertForPretraining,
    BertTokenClassifier,
    mlm_loss_and_accuracy,
    mlm_mask,
)
from attention_jax.models.transformer import FeedForward

V, D, N, F, T, MAX_POS = 50, 16, 2, 32, 12, 16
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL = (PAD, CLS, SEP)
CONFIG = dict(vocab_size=V, hidden_size=D, num_layers=2, num_heads=N, intermediate_size=F,
              max_position_embeddings=MAX_POS, dropout_rate=0.0, attention_dropout_rate=0.0)


def _batch(lengths=(T, 7, 9), seed=0, low=4, high=V):
    """[CLS] a [SEP] b [SEP] rows right-padded to T, with segment ids 0 (A) and 1 (B, up to the last [SEP])."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), T), np.int32)
    types = np.zeros((len(lengths), T), np.int32)
    for b, n in enumerate(lengths):
        tokens[b, :n] = rng.integers(low, high, n)
        split = n // 2
        tokens[b, [0, split, n - 1]] = CLS, SEP, SEP
        types[b, split + 1:n] = 1
    return jnp.asarray(tokens), jnp.asarray(types)


def _perturbed(params, seed, noise=0.1):
    """Every leaf moved off its init (LayerNorm scales, zero biases) so the references see them."""
    leaves, tree = jax.tree_util.tree_flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [a + noise * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _f64(x):
    return np.asarray(x, np.float64)


def _layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * _f64(p["scale"]) + _f64(p["bias"])


def _gelu(x):
    return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))  # exact, as in BERT


def _dense(x, p):
    return x @ _f64(p["kernel"]) + _f64(p["bias"])


def _attention(x, p, lengths):
    """Multi-head self-attention with keys s >= lengths[b] masked (arXiv:1706.03762, §3.2)."""
    q, k, v = (np.einsum("btd,dnh->btnh", x, _f64(p[n]["kernel"])) + _f64(p[n]["bias"])
               for n in ("query", "key", "value"))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    live = np.arange(x.shape[1])[None, None, None, :] < lengths[:, None, None, None]
    logits = np.where(live, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = np.einsum("bnts,bsnh->btnh", weights, v)
    return np.einsum("btnh,nhd->btd", context, _f64(p["out"]["kernel"])) + _f64(p["out"]["bias"])


def _reference_encoder(p, tokens, types, norm):
    """Fig. 2 embeddings, the encoder layers (post-LN or pre-LN, GELU FFN) and the pooler, in float64."""
    tokens, types = np.asarray(tokens), np.asarray(types)
    x = (_f64(p["token_embeddings"]["embedding"])[tokens] + _f64(p["position_embeddings"]["table"])[:tokens.shape[1]]
         + _f64(p["token_type_embeddings"]["embedding"])[types])
    x = _layer_norm(x, p["embeddings_norm"])
    lengths = (tokens != PAD).sum(1)
    i = 0
    while f"layers_{i}" in p:
        layer = p[f"layers_{i}"]
        ffn = lambda h: _dense(_gelu(_dense(h, layer["ffn"]["inner"])), layer["ffn"]["outer"])  # noqa: E731
        if norm == "post":
            x = _layer_norm(x + _attention(x, layer["self_attention"], lengths), layer["attention_block"]["norm"])
            x = _layer_norm(x + ffn(x), layer["ffn_block"]["norm"])
        else:
            x = x + _attention(_layer_norm(x, layer["attention_block"]["norm"]), layer["self_attention"], lengths)
            x = x + ffn(_layer_norm(x, layer["ffn_block"]["norm"]))
        i += 1
    if norm == "pre":
        x = _layer_norm(x, p["final_norm"])
    return x, np.tanh(_dense(x[:, 0], p["pooler"]))


class _Pretrained:
    """One BertForPretraining, its perturbed params and a batch, shared by the head tests."""

    _cache = None

    @classmethod
    def get(cls):
        if cls._cache is None:
            model = BertForPretraining(**CONFIG)
            tokens, types = _batch(high=30)  # ids 30..49 never appear in the inputs
            params = _perturbed(model.init(jax.random.PRNGKey(0), tokens, types)["params"], seed=1)
            cls._cache = model, params, tokens, types
        return cls._cache


class MlmMaskTest(parameterized.TestCase):

    def test_statistics_over_many_rows(self):
        """15% of eligible tokens chosen, 80% [MASK], 10% random, 10% kept; specials never chosen or drawn."""
        rows, length = 512, 64
        rng = np.random.default_rng(0)
        tokens = np.zeros((rows, length), np.int32)
        for b, n in enumerate(rng.integers(8, length + 1, rows)):
            tokens[b, :n] = rng.integers(4, V, n)
            tokens[b, [0, n // 2, n - 1]] = CLS, SEP, SEP
        fn = jax.jit(lambda key, t: mlm_mask(key, t, vocab_size=V, mask_id=MASK, special_ids=SPECIAL))
        inputs, positions, weights = (np.asarray(a) for a in fn(jax.random.PRNGKey(0), jnp.asarray(tokens)))
        P = int(np.ceil(0.15 * length))
        self.assertEqual((inputs.shape, positions.shape, weights.shape), ((rows, length), (rows, P), (rows, P)))
        self.assertEqual((inputs.dtype, positions.dtype, weights.dtype), (np.int32, np.int32, np.float32))

        eligible = tokens >= 4
        num_eligible = eligible.sum(1)
        count = np.minimum(np.maximum(np.round(np.float32(0.15) * num_eligible.astype(np.float32)), 1), P)
        np.testing.assert_array_equal(weights.sum(1), count)
        chosen = np.zeros_like(eligible)
        for b in range(rows):
            k = int(count[b])
            np.testing.assert_array_equal(weights[b], np.arange(P) < k)
            np.testing.assert_array_equal(positions[b, k:], 0)
            self.assertTrue(np.all(np.diff(positions[b, :k]) > 0), f"row {b}: positions not increasing")
            chosen[b, positions[b, :k]] = True
        self.assertFalse(np.any(chosen & ~eligible), "a [CLS], [SEP] or pad position was chosen")
        np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])  # nothing else changes
        share = chosen.sum() / eligible.sum()
        self.assertAlmostEqual(share, 0.15, delta=0.01)
        # Uniform over eligible positions: each position is chosen about as often as its rows' rate says.
        expected = (eligible * (count / num_eligible)[:, None]).sum(0)
        hits = chosen.sum(0)
        live = expected > 20
        np.testing.assert_array_less(np.abs(hits - expected)[live], 5 * np.sqrt(expected[live]) + 1)

        before, after = tokens[chosen], inputs[chosen]
        total = before.size
        allowed = V - 4  # ids 4..49: neither special nor [MASK]
        shares = {"mask": np.mean(after == MASK), "random": np.mean((after != MASK) & (after != before)),
                  "kept": np.mean(after == before)}
        want = {"mask": 0.8, "random": 0.1 * (1 - 1 / allowed), "kept": 0.1 + 0.1 / allowed}
        for name, p in want.items():
            self.assertAlmostEqual(shares[name], p, delta=5 * np.sqrt(p * (1 - p) / total), msg=name)
        self.assertTrue(np.all((after == MASK) | (after >= 4)), "a random replacement drew a special id")

    def test_edge_rows_and_bad_arguments(self):
        tokens = jnp.array([[CLS, SEP, PAD, PAD], [CLS, 7, 8, SEP]], jnp.int32)
        inputs, positions, weights = mlm_mask(jax.random.PRNGKey(3), tokens, vocab_size=V, mask_id=MASK,
                                              special_ids=SPECIAL, max_predictions=3, mask_token_rate=1.0,
                                              random_token_rate=0.0)
        np.testing.assert_array_equal(weights, [[0, 0, 0], [1, 0, 0]])  # no eligible token; round(0.3) -> 1
        np.testing.assert_array_equal(inputs[0], tokens[0])
        self.assertIn(int(positions[1, 0]), (1, 2))
        self.assertEqual(int(inputs[1, positions[1, 0]]), MASK)
        kwargs = dict(vocab_size=V, mask_id=MASK, special_ids=SPECIAL)
        key = jax.random.PRNGKey(0)
        with self.assertRaisesRegex(ValueError, r"tokens must have 2 dims, got shape \(4,\)"):
            mlm_mask(key, tokens[0], **kwargs)
        with self.assertRaisesRegex(TypeError, "integer"):
            mlm_mask(key, tokens.astype(jnp.float32), **kwargs)
        with self.assertRaisesRegex(ValueError, "mask_id=50"):
            mlm_mask(key, tokens, vocab_size=V, mask_id=V, special_ids=SPECIAL)
        with self.assertRaisesRegex(ValueError, "exceeds 1"):
            mlm_mask(key, tokens, **kwargs, mask_token_rate=0.9, random_token_rate=0.2)
        with self.assertRaisesRegex(ValueError, "special id 60"):
            mlm_mask(key, tokens, vocab_size=V, mask_id=MASK, special_ids=(0, 60))
        with self.assertRaisesRegex(ValueError, "every id"):
            mlm_mask(key, tokens, vocab_size=3, mask_id=2, special_ids=(0, 1))


class EncoderTest(parameterized.TestCase):

    def test_gelu_feed_forward_matches_numpy(self):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, D)) * 2, jnp.float32)
        ffn = FeedForward(d_ff=F, activation="gelu")
        params = _perturbed(ffn.init(jax.random.PRNGKey(0), x)["params"], seed=2)
        want = _dense(_gelu(_dense(_f64(x), params["inner"])), params["outer"])
        np.testing.assert_allclose(ffn.apply({"params": params}, x), want, atol=1e-5, rtol=1e-5)
        with self.assertRaisesRegex(ValueError, "activation"):
            FeedForward(d_ff=F, activation="tanh")

    @parameterized.parameters("post", "pre")
    def test_matches_float64_numpy(self, norm):
        """Embeddings + one layer + pooler against a float64 transcription (dropout off)."""
        model = BertEncoder(**{**CONFIG, "num_layers": 1, "norm": norm})
        tokens, types = _batch()
        params = _perturbed(model.init(jax.random.PRNGKey(0), tokens, types)["params"], seed=3)
        sequence, pooled = model.apply({"params": params}, tokens, types)
        want_sequence, want_pooled = _reference_encoder(params, tokens, types, norm)
        self.assertEqual((sequence.shape, pooled.shape), ((3, T, D), (3, D)))
        np.testing.assert_allclose(sequence, want_sequence, atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(pooled, want_pooled, atol=2e-5, rtol=2e-5)

    def test_padding_changes_nothing_at_real_positions(self):
        """A padded row equals the same row unpadded; segment ids at padded positions change nothing."""
        model = BertEncoder(**CONFIG)
        tokens, types = _batch(lengths=(T, 7))
        params = _perturbed(model.init(jax.random.PRNGKey(0), tokens, types)["params"], seed=4)
        apply = jax.jit(lambda t, s: model.apply({"params": params}, t, s))
        sequence, pooled = apply(tokens, types)
        other_types = jnp.where(tokens == PAD, 1 - types, types)
        self.assertTrue(bool(jnp.any(other_types != types)))
        sequence2, pooled2 = apply(tokens, other_types)
        np.testing.assert_allclose(sequence2[:, :7], sequence[:, :7], atol=1e-6)
        np.testing.assert_allclose(sequence2[0], sequence[0], atol=1e-6)
        np.testing.assert_allclose(pooled2, pooled, atol=1e-6)
        short, short_pooled = model.apply({"params": params}, tokens[1:, :7], types[1:, :7])
        np.testing.assert_allclose(sequence[1, :7], short[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(pooled[1], short_pooled[0], atol=1e-5, rtol=1e-5)
        # Positive control: a live segment id does change the row.
        moved, _ = apply(tokens, types.at[1, 1].set(1 - types[1, 1]))
        self.assertGreater(float(jnp.max(jnp.abs(moved[1, :7] - sequence[1, :7]))), 1e-4)

    def test_bad_inputs_raise_naming_shapes(self):
        model = BertEncoder(**CONFIG)
        tokens, types = _batch()
        init = lambda *a: jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *a))  # noqa: E731
        long = jnp.ones((2, MAX_POS + 1), jnp.int32)
        with self.assertRaisesRegex(ValueError, r"T=17 .*max_position_embeddings=16.*\(2, 17\)"):
            init(long)
        with self.assertRaisesRegex(ValueError, r"\(3, 11\).*\(3, 12\)"):
            init(tokens, types[:, :-1])
        with self.assertRaisesRegex(TypeError, "integer"):
            init(tokens.astype(jnp.float32))
        with self.assertRaisesRegex(TypeError, "integer"):
            init(tokens, types.astype(jnp.float32))
        with self.assertRaisesRegex(ValueError, r"tokens must have 2 dims, got shape \(12,\)"):
            init(tokens[0])
        pretraining = BertForPretraining(**CONFIG)
        with self.assertRaisesRegex(ValueError, r"\(2, 3\).*\(3, 12\)"):
            jax.eval_shape(lambda: pretraining.init(jax.random.PRNGKey(0), tokens, types,
                                                    jnp.zeros((2, 3), jnp.int32)))
        with self.assertRaisesRegex(ValueError, "num_heads=3 must divide hidden_size=16"):
            BertEncoder(**{**CONFIG, "num_heads": 3})
        with self.assertRaisesRegex(ValueError, "norm"):
            BertEncoder(**{**CONFIG, "norm": "sandwich"})
        with self.assertRaisesRegex(ValueError, "pad_id=50"):
            BertEncoder(**{**CONFIG, "pad_id": V})
        with self.assertRaisesRegex(ValueError, r"targets must have shape \(3, 2\)"):
            mlm_loss_and_accuracy(jnp.zeros((3, 2, V)), jnp.zeros((3, 3), jnp.int32), jnp.ones((3, 2)))


class HeadsTest(parameterized.TestCase):

    def test_mlm_logits_are_tied_to_the_token_embedding(self):
        """mlm_logits = LayerNorm(GELU(h W + b)) E^T + b_V; the MLM loss's gradient reaches E's unused rows."""
        model, params, tokens, types = _Pretrained.get()
        positions = jnp.array([[1, 4, 0], [2, 3, 5], [6, 0, 0]], jnp.int32)
        mlm_logits, nsp_logits = model.apply({"params": params}, tokens, types, positions)
        self.assertEqual((mlm_logits.shape, nsp_logits.shape), ((3, 3, V), (3, 2)))
        self.assertEqual((mlm_logits.dtype, nsp_logits.dtype), (jnp.float32, jnp.float32))
        sequence, pooled = BertEncoder(**CONFIG).apply({"params": params["bert"]}, tokens, types)
        h = np.take_along_axis(_f64(sequence), np.asarray(positions)[..., None], axis=1)
        h = _layer_norm(_gelu(_dense(h, params["mlm_transform"])), params["mlm_norm"])
        want = h @ _f64(params["bert"]["token_embeddings"]["embedding"]).T + _f64(params["mlm_bias"])
        np.testing.assert_allclose(mlm_logits, want, atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(nsp_logits, _dense(_f64(pooled), params["nsp"]), atol=2e-5, rtol=2e-5)
        vocab_sized = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                       if V in leaf.shape]
        self.assertEqual(sorted(vocab_sized), ["['bert']['token_embeddings']['embedding']", "['mlm_bias']"])

        targets = jnp.full(positions.shape, 40, jnp.int32)  # an id absent from the inputs

        def loss(p):
            logits, _ = model.apply({"params": p}, tokens, types, positions)
            return mlm_loss_and_accuracy(logits, targets, jnp.ones(positions.shape))[0]

        grad = jax.grad(loss)(params)["bert"]["token_embeddings"]["embedding"]  # [V, D]
        self.assertGreater(float(jnp.min(jnp.linalg.norm(grad[30:], axis=-1))), 0.0,
                           "no gradient through the tied output projection")

    def test_masked_positions_gather_equals_all_positions(self):
        model, params, tokens, types = _Pretrained.get()
        positions = jnp.array([[0, 3, 11], [5, 5, 1], [2, 7, 0]], jnp.int32)
        everywhere, nsp = model.apply({"params": params}, tokens, types)
        gathered, nsp2 = model.apply({"params": params}, tokens, types, positions)
        self.assertEqual(everywhere.shape, (3, T, V))
        np.testing.assert_allclose(gathered, np.take_along_axis(np.asarray(everywhere),
                                                                np.asarray(positions)[..., None], axis=1),
                                   atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(nsp2, nsp, atol=1e-6)

    def test_pretrained_encoder_transplants_into_the_fine_tuning_heads(self):
        model, params, tokens, types = _Pretrained.get()
        sequence, pooled = BertEncoder(**CONFIG).apply({"params": params["bert"]}, tokens, types)
        for head in (BertClassifier(**CONFIG, num_classes=3), BertTokenClassifier(**CONFIG, num_classes=3)):
            fresh = nn.unbox(head.init(jax.random.PRNGKey(5), tokens, types)["params"])
            self.assertEqual(sorted(fresh), ["bert", "classifier"])
            self.assertEqual(jax.tree_util.tree_structure(fresh["bert"]), jax.tree_util.tree_structure(params["bert"]))
            for a, b in zip(jax.tree_util.tree_leaves(fresh["bert"]), jax.tree_util.tree_leaves(params["bert"])):
                self.assertEqual(a.shape, b.shape)
            logits = head.apply({"params": {**fresh, "bert": params["bert"]}}, tokens, types)
            features = sequence if isinstance(head, BertTokenClassifier) else pooled
            np.testing.assert_allclose(logits, _dense(_f64(features), fresh["classifier"]), atol=2e-5, rtol=2e-5)

    def test_overfits_mlm_and_nsp_on_eight_sequences(self):
        """MLM + NSP on 8 fixed sequences, two fixed maskings each, 100 Adam steps: MLM loss << log V, NSP 100%."""
        model = BertForPretraining(**{**CONFIG, "hidden_size": 32, "intermediate_size": 64})
        tokens, types = _batch(lengths=(12, 12, 11, 10, 12, 9, 12, 11), seed=7)
        tokens, types = jnp.tile(tokens, (2, 1)), jnp.tile(types, (2, 1))
        inputs, positions, weights = mlm_mask(jax.random.PRNGKey(1), tokens, vocab_size=V, mask_id=MASK,
                                              special_ids=SPECIAL, max_predictions=3)
        targets = jnp.take_along_axis(tokens, positions, axis=1)
        labels = jnp.tile(jnp.array([0, 1, 1, 0, 1, 0, 0, 1], jnp.int32), 2)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), inputs, types, positions)["params"])
        optimizer = optax.adam(3e-3)

        def losses(p):
            mlm_logits, nsp_logits = model.apply({"params": p}, inputs, types, positions)
            mlm, _ = mlm_loss_and_accuracy(mlm_logits, targets, weights)
            nsp = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, labels).mean()
            return mlm + nsp, (mlm, jnp.mean(jnp.argmax(nsp_logits, -1) == labels))

        @jax.jit
        def train(params):
            def step(carry, _):
                p, state = carry
                grads = jax.grad(lambda q: losses(q)[0])(p)
                updates, state = optimizer.update(grads, state, p)
                return (optax.apply_updates(p, updates), state), None

            start = losses(params)[1]
            (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=100)
            return losses(params)[1], start

        (mlm, nsp_accuracy), (mlm_at_init, _) = train(params)
        self.assertGreater(float(mlm_at_init), 0.8 * np.log(V))
        self.assertLess(float(mlm), 0.25 * np.log(V))
        self.assertEqual(float(nsp_accuracy), 1.0)


if __name__ == "__main__":
    absltest.main()
