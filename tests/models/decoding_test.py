"""Tests for attention_jax/models/decoding.py: the step-function protocol, greedy decoding and beam search.

The oracles are exhaustive enumerations of every hypothesis under small step functions written in float64
numpy, plus hand-made distributions whose best sequence is known. The beam search is the shrinking beam of
RNNsearch (Bahdanau et al. 2014, arXiv:1409.0473, §4.2), scored by sum log p / length ** length_penalty.
"""

import functools
import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.models import decoding
from attention_jax.models import seq2seq

BOS, EOS, PAD = 1, 2, decoding.PAD_ID
_BAD = (ValueError, TypeError)


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a value or shape) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


# ----------------------------------------------------------------------------------------------------------
# A tiny stateful step function: h_t = tanh(h_{t-1} W + E[y_{t-1}]), logits = h_t U + bias_b.
# The state matters, so a beam that reorders it wrongly scores its hypotheses wrongly.
# ----------------------------------------------------------------------------------------------------------


class ToyRNN:
    def __init__(self, vocab, batch, seed, dim=3, scale=1.5):
        rng = np.random.default_rng(seed)
        self.vocab, self.batch, self.dim = vocab, batch, dim
        self.emb = scale * rng.standard_normal((vocab, dim))
        self.w = scale * rng.standard_normal((dim, dim))
        self.u = scale * rng.standard_normal((dim, vocab))
        self.bias = rng.standard_normal((batch, vocab))
        self.h0 = rng.standard_normal((batch, dim))

    def memory(self):
        return {"bias": jnp.asarray(self.bias, jnp.float32)}

    def state(self):
        return {"h": jnp.asarray(self.h0, jnp.float32), "count": jnp.zeros((self.batch,), jnp.int32)}

    def step_fn(self, memory, state, tokens, t):
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        h = jnp.tanh(state["h"] @ f32(self.w) + f32(self.emb)[tokens])
        logits = h @ f32(self.u) + memory["bias"]
        count = state["count"] + 1
        return logits, {"h": h, "count": count}, {"h": h, "count": count, "t": jnp.full_like(count, t)}

    # float64 reference
    def _next(self, b, h, token):
        """(h', log p(. | ...)) after feeding `token` in state h, for sentence b."""
        h = np.tanh(h @ self.w + self.emb[token])
        logits = h @ self.u + self.bias[b]
        return h, logits - logits.max() - np.log(np.sum(np.exp(logits - logits.max())))

    def logp(self, b, prefix):
        """log p(. | prefix) for sentence b, prefix = generated tokens so far."""
        h = self.h0[b]
        for token in (BOS,) + tuple(prefix):
            h, lp = self._next(b, h, token)
        return lp

    def all_hypotheses(self, b, max_len, alpha):
        """Every hypothesis: EOS-terminated ones of length <= max_len and unfinished ones of length max_len."""
        out = []

        def grow(prefix, logp, h, lp):
            for token in range(self.vocab):
                seq, total = prefix + (token,), logp + lp[token]
                if token == EOS or len(seq) == max_len:
                    out.append((total / len(seq) ** alpha, seq))
                else:
                    grow(seq, total, *self._next(b, h, token))

        grow((), 0.0, *self._next(b, self.h0[b], BOS))
        return sorted(out, key=lambda x: -x[0])

    def greedy(self, b, max_len):
        seq = ()
        while len(seq) < max_len and (not seq or seq[-1] != EOS):
            seq += (int(np.argmax(self.logp(b, seq))),)
        return seq


def _pad(seq, max_len):
    return list(seq) + [PAD] * (max_len - len(seq))


def _greedy(step_fn, memory, state, batch, max_len):
    fn = functools.partial(decoding.greedy_decode, step_fn, batch_size=batch, bos_id=BOS, eos_id=EOS, max_len=max_len)
    return jax.jit(fn)(memory, state)


def _beam(step_fn, memory, state, batch, beam, max_len, alpha=1.0):
    fn = functools.partial(
        decoding.beam_search,
        step_fn,
        batch_size=batch,
        bos_id=BOS,
        eos_id=EOS,
        beam_size=beam,
        max_len=max_len,
        length_penalty=alpha,
    )
    return jax.jit(fn)(memory, state)


class GreedyTest(parameterized.TestCase):
    @parameterized.parameters(0, 1, 2)
    def test_matches_reference(self, seed):
        toy = ToyRNN(vocab=5, batch=3, seed=seed)
        max_len = 6
        tokens, aux = _greedy(toy.step_fn, toy.memory(), toy.state(), 3, max_len)
        chex.assert_shape(tokens, (3, max_len))
        self.assertEqual(tokens.dtype, jnp.int32)
        for b in range(3):
            expected = toy.greedy(b, max_len)
            np.testing.assert_array_equal(tokens[b], _pad(expected, max_len))
            n = len(expected)
            # aux is stacked on axis 1; rows stop updating after EOS (zeros).
            np.testing.assert_array_equal(aux["count"][b, :n], np.arange(1, n + 1))
            np.testing.assert_array_equal(aux["t"][b, :n], np.arange(n))
            np.testing.assert_array_equal(aux["count"][b, n:], 0)
            np.testing.assert_array_equal(aux["h"][b, n:], 0.0)
        chex.assert_shape(aux["h"], (3, max_len, toy.dim))

    def test_tokens_after_eos_are_pad(self):
        # Sentence 0 says EOS at once, sentence 1 never does.
        table = np.full((2, 4), -5.0, np.float32)
        table[0, EOS] = 5.0
        table[1, 3] = 5.0

        def step_fn(memory, state, tokens, t):
            return memory, state, jnp.zeros_like(tokens)

        tokens, _ = _greedy(step_fn, jnp.asarray(table), jnp.zeros((2,)), 2, 4)
        np.testing.assert_array_equal(tokens, [[EOS, PAD, PAD, PAD], [3, 3, 3, 3]])


class BeamSearchTest(parameterized.TestCase):
    @parameterized.parameters(0, 1, 2, 3)
    def test_beam_one_is_greedy(self, seed):
        toy = ToyRNN(vocab=5, batch=3, seed=seed)
        greedy_tokens, _ = _greedy(toy.step_fn, toy.memory(), toy.state(), 3, 6)
        tokens, scores = _beam(toy.step_fn, toy.memory(), toy.state(), 3, 1, 6, alpha=0.7)
        chex.assert_shape(tokens, (3, 1, 6))
        chex.assert_shape(scores, (3, 1))
        np.testing.assert_array_equal(tokens[:, 0], greedy_tokens)

    @parameterized.parameters(0.0, 0.6, 1.0)
    def test_exhaustive_beam_equals_enumeration(self, alpha):
        """V=4, L=3: 1 + 3 + 9 + 27 = 40 hypotheses, so a beam of 40 keeps and ranks every one of them."""
        toy = ToyRNN(vocab=4, batch=2, seed=7)
        tokens, scores = _beam(toy.step_fn, toy.memory(), toy.state(), 2, 40, 3, alpha=alpha)
        for b in range(2):
            expected = toy.all_hypotheses(b, 3, alpha)
            self.assertLen(expected, 40)
            np.testing.assert_allclose(scores[b], [s for s, _ in expected], atol=1e-5, rtol=1e-5)
            np.testing.assert_array_equal(tokens[b], [_pad(seq, 3) for _, seq in expected])

    @parameterized.parameters((2, 0.0), (3, 1.0), (4, 0.5))
    def test_top_hypotheses_rescore(self, beam, alpha):
        """Each returned hypothesis's score is its own sum log p / len ** alpha (state gathered by parent)."""
        toy = ToyRNN(vocab=6, batch=2, seed=11)
        max_len = 5
        tokens, scores = _beam(toy.step_fn, toy.memory(), toy.state(), 2, beam, max_len, alpha=alpha)
        self.assertTrue(np.all(np.diff(np.asarray(scores), axis=1) <= 0))  # best first
        for b in range(2):
            for k in range(beam):
                seq = [int(x) for x in tokens[b, k]]
                if EOS in seq:
                    seq = seq[: seq.index(EOS) + 1]
                    self.assertTrue(all(x == PAD for x in tokens[b, k, len(seq) :]))
                total = sum(toy.logp(b, seq[:i])[seq[i]] for i in range(len(seq)))
                np.testing.assert_allclose(scores[b, k], total / len(seq) ** alpha, atol=1e-5, rtol=1e-5)
            best = toy.all_hypotheses(b, max_len, alpha)[0]
            self.assertLessEqual(float(scores[b, 0]), best[0] + 1e-5)

    def _markov(self, rows):
        """A step function over a fixed table: p(y_t | y_{t-1}) = rows[y_{t-1}]; same for every sentence."""
        vocab = 5
        table = np.full((vocab, vocab), 1e-9)
        for prev, probs in rows.items():
            for token, p in probs.items():
                table[prev, token] = p
        logp = np.log(table / table.sum(1, keepdims=True)).astype(np.float32)

        def step_fn(memory, state, tokens, t):
            return memory[tokens], state, jnp.zeros_like(tokens)

        return step_fn, jnp.asarray(logp), logp

    def test_finds_what_greedy_misses(self):
        a, b = 3, 4
        step_fn, table, logp = self._markov(
            {BOS: {a: 0.6, b: 0.4}, a: {a: 0.4, b: 0.35, EOS: 0.25}, b: {EOS: 0.9, a: 0.1}}
        )
        memory, state = jnp.stack([table, table]), jnp.zeros((2,))
        step = lambda memory, state, tokens, t: step_fn(memory[0], state, tokens, t)
        greedy_tokens, _ = _greedy(step, memory, state, 2, 3)
        np.testing.assert_array_equal(greedy_tokens[0], [a, a, a])  # p = 0.096, never ends
        tokens, scores = _beam(step, memory, state, 2, 2, 3, alpha=0.0)
        np.testing.assert_array_equal(tokens[:, 0], [[b, EOS, PAD]] * 2)  # p = 0.36
        np.testing.assert_allclose(scores[:, 0], np.log(0.4 * 0.9), atol=1e-5)

    def test_length_normalisation(self):
        """[EOS] has p = 0.5, [a, b, EOS] has p = 0.5 * 0.95 * 0.95: raw log p prefers the short one, the
        per-token mean (alpha = 1) the long one."""
        a, b = 3, 4
        step_fn, table, _ = self._markov({BOS: {EOS: 0.5, a: 0.5}, a: {b: 0.95, EOS: 0.05}, b: {EOS: 0.95, a: 0.05}})
        memory, state = table[None], jnp.zeros((1,))
        step = lambda memory, state, tokens, t: step_fn(memory[0], state, tokens, t)
        short, long = [EOS, PAD, PAD, PAD], [a, b, EOS, PAD]
        logp_short, logp_long = np.log(0.5), np.log(0.5 * 0.95 * 0.95)
        for alpha, first, second in ((0.0, short, long), (0.5, long, short), (1.0, long, short)):
            tokens, scores = _beam(step, memory, state, 1, 3, 4, alpha=alpha)
            np.testing.assert_array_equal(tokens[0, 0], first)
            np.testing.assert_array_equal(tokens[0, 1], second)
            expected = {tuple(short): logp_short / 1**alpha, tuple(long): logp_long / 3**alpha}
            np.testing.assert_allclose(scores[0, :2], [expected[tuple(first)], expected[tuple(second)]], atol=1e-5)

    def test_finished_hypotheses_keep_their_slot(self):
        """The beam shrinks by one for every finished hypothesis (RNNsearch's beam search).

        p(y_t | y_{t-1}, t): [EOS] = 0.6 finishes at t = 0, so only one of [a, a] (0.2) and [a, b] (0.18)
        survives t = 1; [a, b, EOS] (0.178) is therefore never reached and [a, a, a] (0.102) comes second.
        """
        a, b, vocab = 3, 4, 5
        table = np.full((3, vocab, vocab), 1e-9)
        table[0, BOS, [EOS, a]] = 0.6, 0.4
        table[1, a, [a, b, EOS]] = 0.5, 0.45, 0.05
        table[2, a, [a, b]] = 0.51, 0.49
        table[2, b, EOS] = 0.99
        logp = jnp.asarray(np.log(table / table.sum(-1, keepdims=True)), jnp.float32)

        def step_fn(memory, state, tokens, t):
            return memory[0, t][tokens], state, tokens

        tokens, scores = _beam(step_fn, logp[None], jnp.zeros((1,)), 1, 2, 3, alpha=0.0)
        np.testing.assert_array_equal(tokens[0], [[EOS, PAD, PAD], [a, a, a]])
        np.testing.assert_allclose(scores[0], np.log([0.6, 0.4 * 0.5 * 0.51]), atol=1e-5)

    def test_unfinished_hypotheses_compete_at_max_len(self):
        # Nothing ever ends: the best unfinished hypotheses come back, normalised by max_len.
        step_fn, table, logp = self._markov({BOS: {3: 0.7, 4: 0.3}, 3: {3: 0.6, 4: 0.4}, 4: {3: 0.5, 4: 0.5}})
        step = lambda memory, state, tokens, t: step_fn(memory[0], state, tokens, t)
        tokens, scores = _beam(step, table[None], jnp.zeros((1,)), 1, 2, 2, alpha=1.0)
        np.testing.assert_array_equal(tokens[0], [[3, 3], [3, 4]])
        np.testing.assert_allclose(scores[0], [np.log(0.7 * 0.6) / 2, np.log(0.7 * 0.4) / 2], atol=1e-5)

    def test_fewer_hypotheses_than_beam(self):
        """V = 3 tokens, L = 1: only 3 hypotheses exist; the empty slots score -inf."""
        step_fn = lambda memory, state, tokens, t: (memory, state, tokens)
        logits = jnp.log(jnp.array([[0.2, 0.3, 0.5]], jnp.float32))
        tokens, scores = _beam(step_fn, logits, jnp.zeros((1,)), 1, 5, 1, alpha=1.0)
        np.testing.assert_array_equal(tokens[0, :3, 0], [2, 1, 0])
        np.testing.assert_allclose(scores[0, :3], np.log([0.5, 0.3, 0.2]), atol=1e-6)
        self.assertTrue(np.all(np.isneginf(scores[0, 3:])))


class Seq2SeqDecodingTest(parameterized.TestCase):
    """The decoders driving a `Seq2Seq` through `make_step_fn` (memory tiled to B * beam rows)."""

    def test_greedy_beam_and_rescoring(self):
        vocab, src_len, max_len = 13, 6, 5
        model = seq2seq.Seq2Seq(vocab, embed_dim=8, hidden_size=8, attention="bahdanau", bidirectional=True)
        src = np.array([[4, 5, 6, 7, 8, 0], [9, 10, 11, 0, 0, 0]], np.int32)
        lengths = np.array([5, 3], np.int32)
        shapes = jax.eval_shape(model.init, jax.random.key(0), src, lengths, src[:, :max_len])
        rng = np.random.default_rng(0)
        variables = jax.tree_util.tree_map(lambda x: (0.8 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
        step_fn = seq2seq.make_step_fn(model, variables)
        memory = model.apply(variables, src, lengths, method=seq2seq.Seq2Seq.encode)
        state = model.apply(variables, memory, method=seq2seq.Seq2Seq.init_state)

        greedy_tokens, weights = _greedy(step_fn, memory, state, 2, max_len)
        chex.assert_shape(weights, (2, max_len, src_len))
        beam1, _ = _beam(step_fn, memory, state, 2, 1, max_len)
        np.testing.assert_array_equal(beam1[:, 0], greedy_tokens)

        alpha, beam = 0.8, 3
        tokens, scores = _beam(step_fn, memory, state, 2, beam, max_len, alpha=alpha)
        # Rescore every hypothesis with the teacher-forced model.
        for k in range(beam):
            tgt_out = np.asarray(tokens[:, k])
            tgt_in = np.concatenate([np.full((2, 1), BOS, np.int32), tgt_out[:, :-1]], 1)
            logits, _ = model.apply(variables, src, lengths, tgt_in)
            logp = np.asarray(jax.nn.log_softmax(logits))
            for b in range(2):
                seq = list(tgt_out[b])
                n = seq.index(EOS) + 1 if EOS in seq else max_len
                total = sum(logp[b, i, seq[i]] for i in range(n))
                np.testing.assert_allclose(scores[b, k], total / n**alpha, atol=1e-4, rtol=1e-4)


class ToyDecodable:
    """ToyRNN behind the `decoding.Decodable` protocol: the variables are ignored, the source sets the batch."""

    def __init__(self, toy):
        self.toy = toy

    def init_decode(self, variables, src, src_lengths, *, max_len):
        del variables, src_lengths, max_len
        assert src.shape[0] == self.toy.batch
        return self.toy.memory(), self.toy.state()

    def decode_next(self, variables, memory, state, tokens, t):
        del variables
        return self.toy.step_fn(memory, state, tokens, t)


class ProtocolTest(parameterized.TestCase):
    """`decoding.prepare` and `decoding.bind` over any `Decodable` (the models' own runs are in contract_test)."""

    def setUp(self):
        super().setUp()
        self.toy = ToyRNN(vocab=5, batch=2, seed=3)
        self.src = jnp.zeros((2, 4), jnp.int32)
        self.lengths = jnp.array([4, 2], jnp.int32)

    def test_prepare_feeds_the_decoders_as_the_raw_step_function_does(self):
        model = ToyDecodable(self.toy)
        self.assertIsInstance(model, decoding.Decodable)
        step_fn, memory, state = decoding.prepare(model, {}, self.src, self.lengths, max_len=4)
        self.assertIsInstance(step_fn, decoding.StepFn)
        got, got_aux = _greedy(step_fn, memory, state, 2, 4)
        want, want_aux = _greedy(self.toy.step_fn, self.toy.memory(), self.toy.state(), 2, 4)
        np.testing.assert_array_equal(got, want)
        chex.assert_trees_all_close(got_aux, want_aux)
        beams, _ = _beam(decoding.bind(model, {}), memory, state, 2, 2, 4)
        want_beams, _ = _beam(self.toy.step_fn, memory, state, 2, 2, 4)
        np.testing.assert_array_equal(beams, want_beams)

    def test_bind_is_a_plain_function_that_traces_once(self):
        step_fn = jax.jit(chex.assert_max_traces(decoding.bind(ToyDecodable(self.toy), {}), n=1))
        memory, state = self.toy.memory(), self.toy.state()
        tokens = jnp.full((2,), BOS, jnp.int32)
        for t in range(3):
            logits, state, _ = step_fn(memory, state, tokens, jnp.int32(t))
            tokens = jnp.argmax(logits, -1).astype(jnp.int32)
        chex.clear_trace_counter()

    def test_prepare_rejects_what_is_not_decodable(self):
        class EncodeOnly:
            def init_decode(self, variables, src, src_lengths, *, max_len):
                return {}, {}

        with _raises(TypeError, "EncodeOnly", "decode_next"):
            decoding.prepare(EncodeOnly(), {}, self.src, self.lengths, max_len=3)
        with _raises(TypeError, "object", "init_decode", "decode_next"):
            decoding.bind(object(), {})

    @parameterized.parameters((0,), (2.0,), (True,))
    def test_prepare_rejects_bad_max_len(self, max_len):
        with _raises(ValueError, "max_len", repr(max_len)):
            decoding.prepare(ToyDecodable(self.toy), {}, self.src, self.lengths, max_len=max_len)


class ArgumentTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.toy = ToyRNN(vocab=4, batch=2, seed=0)

    @parameterized.named_parameters(
        ("beam_size", dict(beam_size=0), "beam_size", "0"),
        ("max_len", dict(max_len=0), "max_len", "0"),
        ("max_len_float", dict(max_len=2.0), "max_len", "2.0"),
        ("length_penalty", dict(length_penalty=-1.0), "length_penalty", "-1.0"),
        ("batch_size", dict(batch_size=3), "bias", "(2, 4)", "3"),
    )
    def test_beam_search_rejects(self, overrides, *fragments):
        kwargs = dict(batch_size=2, bos_id=BOS, eos_id=EOS, beam_size=2, max_len=3) | overrides
        with _raises(ValueError, *fragments):
            decoding.beam_search(self.toy.step_fn, self.toy.memory(), self.toy.state(), **kwargs)

    def test_greedy_rejects(self):
        kwargs = dict(bos_id=BOS, eos_id=EOS, max_len=3)
        with _raises(ValueError, "batch_size", "0"):
            decoding.greedy_decode(self.toy.step_fn, self.toy.memory(), self.toy.state(), batch_size=0, **kwargs)
        with _raises(ValueError, "state", "['h']", "(3, 3)"):
            bad_state = {"h": jnp.zeros((3, 3)), "count": jnp.zeros((2,), jnp.int32)}
            decoding.greedy_decode(self.toy.step_fn, self.toy.memory(), bad_state, batch_size=2, **kwargs)

    def test_step_fn_that_changes_the_state_is_rejected(self):
        def step_fn(memory, state, tokens, t):
            logits, new_state, aux = self.toy.step_fn(memory, state, tokens, t)
            return logits, {"h": new_state["h"], "count": new_state["count"].astype(jnp.float32)}, aux

        with _raises(ValueError, "state", "float32", "int32"):
            decoding.greedy_decode(
                step_fn, self.toy.memory(), self.toy.state(), batch_size=2, bos_id=BOS, eos_id=EOS, max_len=3
            )


if __name__ == "__main__":
    absltest.main()
