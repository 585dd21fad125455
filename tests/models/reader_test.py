"""Tests for models/reader.py: the Attention Sum Reader (Kadlec et al. 2016, arXiv:1603.01547) and the
Attention-over-Attention Reader (Cui et al. 2017, arXiv:1607.04423).

Each reader memorises eight cloze questions; more padding (and no padding at all) changes nothing; the
probabilities are the pointer sum of the document attention; bad ids raise. The attention functions are
checked against the papers' equations in tests/layers/reader_test.py; the contract checks (jit, NaN in the
padded embeddings and encoder states, logical axes, bad shapes) are in tests/models/contract_test.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers.reader import pointer_sum
from attention_jax.models import reader

V, E, H = 16, 8, 8
ENTITIES = (1, 2, 3, 4)  # candidate answers; ids 5.. are ordinary words
READERS = (("attention_sum", reader.AttentionSumReader), ("attention_over_attention",
                                                         reader.AttentionOverAttentionReader))


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _questions(n=8, s=10, t=4, seed=0):
    """n right-padded cloze questions: a document with three entities among words, the query the word before
    the answer (plus filler), three candidates. Row 0 has no padding."""
    rng = np.random.default_rng(seed)
    document, query = np.zeros((n, s), np.int32), np.zeros((n, t), np.int32)
    candidates, answer = np.zeros((n, 3), np.int32), np.zeros((n,), np.int32)
    for b in range(n):
        length, query_length = (s, t) if b == 0 else (rng.integers(6, s + 1), rng.integers(2, t + 1))
        words = rng.choice(np.arange(5, V), size=length, replace=True)
        entities = rng.choice(ENTITIES, size=3, replace=False)
        slots = np.sort(rng.choice(np.arange(1, length), size=3, replace=False))
        words[slots] = entities
        document[b, :length] = words
        k = rng.integers(3)
        query[b, :query_length] = [words[slots[k] - 1]] + list(rng.choice(np.arange(5, V), query_length - 1))
        candidates[b] = rng.permutation(entities)
        answer[b] = int(np.nonzero(candidates[b] == entities[k])[0][0])
    return jnp.asarray(document), jnp.asarray(query), jnp.asarray(candidates), jnp.asarray(answer)


class ReaderTest(parameterized.TestCase):

    @parameterized.named_parameters(*READERS)
    def test_memorises_eight_questions(self, model_class):
        document, query, candidates, answer = _questions()
        model = model_class(vocab_size=V, embed_dim=E, hidden_size=H, dropout_rate=0.1)
        params = model.init(jax.random.key(0), document, query, candidates)["params"]
        optimizer = optax.adam(0.03)

        @jax.jit
        def step(params, opt_state, rng):
            def loss_fn(params):
                probs, _ = model.apply({"params": params}, document, query, candidates, train=True,
                                       rngs={"dropout": rng})
                return reader.cloze_loss(probs, answer)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        evaluate = jax.jit(lambda p: reader.cloze_loss(model.apply({"params": p}, document, query, candidates)[0],
                                                       answer))
        first = float(evaluate(params))
        opt_state = optimizer.init(params)
        for i in range(60):
            params, opt_state, _ = step(params, opt_state, jax.random.key(i))
        probs, aux = jax.jit(model.apply)({"params": params}, document, query, candidates)
        np.testing.assert_array_equal(np.argmax(probs, axis=1), answer)
        self.assertLess(float(evaluate(params)), first / 10)
        # The pointer sum picks the candidate with the most attention over its occurrences.
        np.testing.assert_allclose(probs, pointer_sum(aux["document_attention"], document, candidates), atol=1e-6)

    @parameterized.named_parameters(*READERS)
    def test_padding_beyond_the_lengths_changes_nothing(self, model_class):
        document, query, candidates, _ = _questions(n=3, seed=1)  # row 0 fills every position
        model = model_class(vocab_size=V, embed_dim=E, hidden_size=H)
        variables = model.init(jax.random.key(1), document, query, candidates)
        wide = lambda x, k: jnp.pad(x, ((0, 0), (0, k)))  # noqa: E731
        apply = jax.jit(model.apply)
        probs, aux = apply(variables, document, query, candidates)
        more_probs, more_aux = apply(variables, wide(document, 3), wide(query, 2), wide(candidates, 1))
        s, t = document.shape[1], query.shape[1]
        np.testing.assert_allclose(more_probs[:, :3], probs, atol=1e-6)
        np.testing.assert_array_equal(more_probs[:, 3], 0.0)  # a 0 candidate is no candidate
        np.testing.assert_allclose(more_aux["document_attention"][:, :s], aux["document_attention"], atol=1e-6)
        np.testing.assert_array_equal(more_aux["document_attention"][:, s:], 0.0)
        np.testing.assert_array_equal(np.asarray(aux["document_attention"])[np.asarray(document) == 0], 0.0)
        if "alpha" in aux:
            np.testing.assert_allclose(more_aux["alpha"][:, :s, :t], aux["alpha"], atol=1e-6)
            np.testing.assert_allclose(more_aux["beta"][:, :t], aux["beta"], atol=1e-6)
            np.testing.assert_array_equal(more_aux["beta"][:, t:], 0.0)
        # All distinct document tokens as candidates: the probabilities sum to 1.
        every = jnp.asarray([np.pad(np.unique(d[d != 0]), (0, s)).astype(np.int32)[:s] for d in np.asarray(document)])
        all_probs, _ = apply(variables, document, query, every)
        np.testing.assert_allclose(np.asarray(all_probs).sum(1), 1.0, atol=1e-5)

    def test_query_vector_is_last_forward_and_first_backward_state(self):
        document, query, candidates, _ = _questions(n=2, seed=2)
        model = reader.AttentionSumReader(vocab_size=V, embed_dim=E, hidden_size=H)
        variables = model.init(jax.random.key(2), document, query, candidates)
        g = model.apply(variables, document, query, method="encode")["query"]
        n = int(np.sum(np.asarray(query[1]) != 0))
        states = model.apply(variables, query[1:, :n], method=lambda m, q: m.query_encoder(
            m.embed(q).astype(jnp.float32), jnp.array([n], jnp.int32)))  # [1, n, 2H], unpadded
        np.testing.assert_allclose(g[1], jnp.concatenate([states[0, n - 1, :H], states[0, 0, H:]]), atol=1e-6)

    def test_bad_ids_raise_naming_the_shapes(self):
        document, query, candidates, answer = _questions(n=2, seed=3)
        model = reader.AttentionOverAttentionReader(vocab_size=V, embed_dim=E, hidden_size=H)
        variables = jax.eval_shape(model.init, jax.random.key(0), document, query, candidates)
        call = lambda *args, **kw: jax.eval_shape(lambda: model.apply(variables, *args, **kw))  # noqa: E731
        with _raises(ValueError, "document", (2 * document.shape[1],)):
            call(document.reshape(-1), query, candidates)
        with _raises(ValueError, "query", (1, query.shape[1])):
            call(document, query[:1], candidates)
        with _raises(TypeError, "candidates", "float32"):
            call(document, query, candidates.astype(jnp.float32))
        with _raises(TypeError, "train"):
            call(document, query, candidates, train=1)
        with _raises(ValueError, "hidden_size"):
            reader.AttentionSumReader(vocab_size=V, embed_dim=E, hidden_size=0)
        with _raises(ValueError, "answer_index", (1,)):
            reader.cloze_loss(jnp.ones((2, 3)), answer[:1])

    def test_cloze_loss_is_finite_for_a_zero_probability(self):
        probs = jnp.array([[0.5, 0.5, 0.0], [0.1, 0.0, 0.9]])
        loss = reader.cloze_loss(probs, jnp.array([2, 2]))
        np.testing.assert_allclose(loss, (-np.log(1e-12) - np.log(0.9)) / 2, rtol=1e-6)
        grads = jax.grad(reader.cloze_loss)(probs, jnp.array([2, 2]))
        self.assertTrue(np.all(np.isfinite(grads)))


if __name__ == "__main__":
    absltest.main()


def test_cloze_losses_per_question():
    probs = jnp.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    losses = reader.cloze_losses(probs, jnp.array([1, 0]))
    np.testing.assert_allclose(losses, [np.log(4.0), -np.log(reader.PROB_FLOOR)], rtol=1e-6)
    np.testing.assert_allclose(reader.cloze_loss(probs, jnp.array([1, 0])), np.mean(losses), rtol=1e-6)
