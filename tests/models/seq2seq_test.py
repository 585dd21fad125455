"""Tests for attention_jax/seq2seq.py: the attention modules, the encoder and the three Seq2Seq decoders.

RNNencdec (Cho et al. 2014, arXiv:1406.1078), RNNsearch (Bahdanau et al. 2014, arXiv:1409.0473 §3.1, A.1.2,
A.2.2) and Luong et al. 2015 (arXiv:1508.04025 eq. 5-10, §3.3 input feeding). Tiny sizes so the file runs
in seconds on one CPU core.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core import context
from attention_jax.models import seq2seq
from attention_jax.models.seq2seq import BahdanauAttention, Encoder, LuongAttention, Seq2Seq

V, E, H = 13, 8, 8
B, S, T = 2, 6, 5
SRC = np.array([[4, 5, 6, 7, 8, 0], [9, 10, 11, 0, 0, 0]], np.int32)
SRC_LENGTHS = np.array([5, 3], np.int32)
TGT_IN = np.array([[2, 4, 5, 6, 7], [2, 8, 9, 10, 3]], np.int32)


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a value or shape) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _luong_configs():
    configs = []
    for i, (score, mode) in enumerate(
        (s, m) for s in seq2seq.LUONG_SCORES for m in seq2seq.LUONG_MODES
    ):
        kwargs = dict(
            attention="luong",
            score=score,
            mode=mode,
            window=1 if mode == "local_m" else 2,
            max_source_len=S,
            cell=("lstm", "gru")[i % 2],
            num_layers=2 if i % 3 == 0 else 1,
            input_feeding=i != 4,
        )
        configs.append((f"luong_{score}_{mode}", kwargs))
    return configs


CONFIGS = [
    ("none_lstm", dict(attention="none")),
    ("none_gru_bidir_2layers", dict(attention="none", cell="gru", bidirectional=True, num_layers=2)),
    ("bahdanau_gru_bidir", dict(attention="bahdanau", cell="gru", bidirectional=True)),
    ("bahdanau_lstm_2layers_features", dict(attention="bahdanau", num_layers=2, attention_features=5)),
    ("luong_general_bidir", dict(attention="luong", score="general", bidirectional=True)),
] + _luong_configs()

def _model(**kwargs):
    return Seq2Seq(vocab_size=V, embed_dim=E, hidden_size=H, **kwargs)


def _init(model, seed=0):
    """Random variables of the right structure, without compiling `model.init` (slow under XLA on CPU).

    `model.init` itself is exercised by the overfitting tests.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), SRC, SRC_LENGTHS, TGT_IN)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(x.dtype), nn.unbox(shapes))


def _stepwise(model, variables, src, src_lengths, tgt_in, unroll=True):
    """Decodes tgt_in one token at a time through encode / init_state / decode_step.

    With unroll=False the steps run in a lax.scan (one compiled step, as a decoder would run under jit).
    """
    memory = model.apply(variables, src, src_lengths, method=Seq2Seq.encode)
    state = model.apply(variables, memory, method=Seq2Seq.init_state)

    def step(state, xs):
        tokens, t = xs
        logits, state, weights = model.apply(variables, memory, state, tokens, t, method=Seq2Seq.decode_step)
        return state, (logits, weights)

    xs = (jnp.asarray(tgt_in).T, jnp.arange(tgt_in.shape[1], dtype=jnp.int32))
    if unroll:
        outputs = []
        for t in range(tgt_in.shape[1]):
            state, out = step(state, jax.tree_util.tree_map(lambda x: x[t], xs))
            outputs.append(out)
        logits, weights = (jnp.stack(x) for x in zip(*outputs))
    else:
        _, (logits, weights) = jax.lax.scan(step, state, xs)
    return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(weights, 0, 1)


def _pad_differently(src, lengths, fill=12):
    other = np.array(src, copy=True)
    other[np.arange(src.shape[1])[None] >= lengths[:, None]] = fill
    return other


class Seq2SeqStepTest(parameterized.TestCase):
    """Decoding step by step equals the teacher-forced pass (same cell, same parameters); padding is ignored."""

    @parameterized.named_parameters(*CONFIGS)
    def test_decode_step_equals_teacher_forcing(self, kwargs):
        model = _model(**kwargs)

        @jax.jit
        def run(variables, sources):
            # The same sentences with two different paddings, through one vmapped teacher-forced pass.
            forced = jax.vmap(lambda src: model.apply(variables, src, SRC_LENGTHS, TGT_IN))(sources)
            return forced, _stepwise(model, variables, sources[0], SRC_LENGTHS, TGT_IN, unroll=False)

        sources = np.stack([SRC, _pad_differently(SRC, SRC_LENGTHS)])
        (logits, weights), (step_logits, step_weights) = run(_init(model), sources)
        chex.assert_shape(logits, (2, B, T, V))
        chex.assert_shape(weights, (2, B, T, S))
        self.assertEqual(logits.dtype, jnp.float32)
        self.assertEqual(weights.dtype, jnp.float32)
        np.testing.assert_allclose(step_logits, logits[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(step_weights, weights[0], atol=1e-5, rtol=0)
        # Tokens beyond src_lengths change nothing, and padded source positions get exactly zero weight.
        np.testing.assert_allclose(logits[1], logits[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(weights[1], weights[0], atol=1e-6, rtol=0)
        padded = np.arange(S)[None, None, None, :] >= SRC_LENGTHS[None, :, None, None]  # [1,B,1,S]
        self.assertTrue(np.all(np.where(padded, np.asarray(weights), 0.0) == 0.0))
        if kwargs["attention"] == "none":
            np.testing.assert_array_equal(weights, 0.0)
        else:
            self.assertTrue(np.all(np.asarray(weights) >= 0.0) and np.all(np.asarray(weights) <= 1.0 + 1e-6))
            if kwargs.get("mode", "global") == "global":
                np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)

    def test_state_and_memory_layout(self):
        model = _model(attention="luong", cell="lstm", num_layers=2, bidirectional=False)
        variables = _init(model)
        memory = model.apply(variables, SRC, SRC_LENGTHS, method=Seq2Seq.encode)
        self.assertEqual(set(memory), {"annotations", "mask", "lengths", "summary"})
        chex.assert_shape(memory["annotations"], (B, S, H))
        np.testing.assert_array_equal(memory["mask"], np.arange(S)[None] < SRC_LENGTHS[:, None])
        state = model.apply(variables, memory, method=Seq2Seq.init_state)
        self.assertEqual(set(state), {"rnn", "feed"})
        self.assertLen(state["rnn"], 2)
        for c, h in state["rnn"]:
            chex.assert_shape([c, h], (B, H))
        np.testing.assert_array_equal(state["feed"], 0.0)

        bahdanau = _model(attention="bahdanau", bidirectional=True, cell="gru", attention_features=5)
        memory = bahdanau.apply(_init(bahdanau), SRC, SRC_LENGTHS, method=Seq2Seq.encode)
        chex.assert_shape(memory["annotations"], (B, S, 2 * H))
        chex.assert_shape(memory["projected_keys"], (B, S, 5))

    def test_input_feeding_switch(self):
        """Luong §3.3: with input feeding the first decoder layer reads [E(y_{t-1}); h~_{t-1}]."""
        for feeding, in_size in ((True, E + H), (False, E)):
            model = _model(attention="luong", cell="gru", input_feeding=feeding)
            params = _init(model)["params"]
            self.assertEqual(params["decoder"]["rnn_0"]["ir"]["kernel"].shape, (in_size, H))
            memory = model.apply({"params": params}, SRC, SRC_LENGTHS, method=Seq2Seq.encode)
            state = model.apply({"params": params}, memory, method=Seq2Seq.init_state)
            self.assertEqual("feed" in state, feeding)

    def test_dropout_only_when_training(self):
        model = _model(attention="bahdanau", num_layers=2, dropout_rate=0.5)
        variables = _init(model)
        apply = jax.jit(model.apply, static_argnames="train")
        eval_a, _ = apply(variables, SRC, SRC_LENGTHS, TGT_IN)
        rngs = lambda seed: {"dropout": jax.random.key(seed)}
        train_a, _ = apply(variables, SRC, SRC_LENGTHS, TGT_IN, train=True, rngs=rngs(1))
        train_b, _ = apply(variables, SRC, SRC_LENGTHS, TGT_IN, train=True, rngs=rngs(2))
        self.assertGreater(float(jnp.abs(train_a - eval_a).max()), 1e-3)
        self.assertGreater(float(jnp.abs(train_a - train_b).max()), 1e-3)
        # Different dropout masks at different time steps (split_rngs dropout=True in the scan).
        self.assertFalse(np.allclose(train_a[:, 1] - eval_a[:, 1], train_a[:, 2] - eval_a[:, 2]))


class LocalPPositionsTest(absltest.TestCase):

    def test_teacher_forced_pass_sows_one_centre_per_step_inside_each_source(self):
        model = _model(attention="luong", score="general", mode="local_p", window=1)
        variables = _init(model, seed=3)
        (logits, weights), state = model.apply(variables, SRC, SRC_LENGTHS, TGT_IN, mutable=["intermediates"])
        (position,) = jax.tree_util.tree_leaves(state["intermediates"])
        chex.assert_shape(position, (TGT_IN.shape[1], SRC.shape[0], 1))  # stacked over the decoder's time steps
        p = np.asarray(position)[..., 0].T  # [B, T]
        self.assertTrue(np.all(p >= 0) and np.all(p <= np.asarray(SRC_LENGTHS)[:, None]))
        # The step-by-step decoder attends inside the same windows: weight is zero beyond floor(p_t) +- D.
        _, step_weights = _stepwise(model, variables, SRC, SRC_LENGTHS, TGT_IN)
        outside = np.abs(np.arange(SRC.shape[1])[None, None] - np.floor(p)[..., None]) > 1
        np.testing.assert_array_equal(np.asarray(step_weights)[outside], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[outside], 0.0)


def _init_encoder(encoder, seed=0):
    shapes = jax.eval_shape(encoder.init, jax.random.key(0), SRC, SRC_LENGTHS)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(x.dtype), nn.unbox(shapes))


class EncoderTest(parameterized.TestCase):
    @parameterized.parameters(("lstm", 1), ("gru", 2))
    def test_bidirectional_padding(self, cell, num_layers):
        encoder = Encoder(V, E, H, num_layers=num_layers, cell=cell, bidirectional=True)
        variables = _init_encoder(encoder)
        outputs, summary = encoder.apply(variables, SRC, SRC_LENGTHS)
        chex.assert_shape(outputs, (B, S, 2 * H))
        chex.assert_shape(summary, (B, 2 * H))
        for b in range(B):
            n = int(SRC_LENGTHS[b])
            # The same sentence without padding: the backward RNN must start at its last real token.
            alone, alone_summary = encoder.apply(variables, SRC[b : b + 1, :n], SRC_LENGTHS[b : b + 1])
            np.testing.assert_allclose(outputs[b, :n], alone[0], atol=1e-6, rtol=0)
            np.testing.assert_allclose(summary[b], alone_summary[0], atol=1e-6, rtol=0)
            np.testing.assert_array_equal(outputs[b, n:], 0.0)
            if num_layers == 1:
                # summary = [forward state after the last token; backward state after the first token].
                np.testing.assert_allclose(summary[b, :H], outputs[b, n - 1, :H], atol=1e-6, rtol=0)
                np.testing.assert_allclose(summary[b, H:], outputs[b, 0, H:], atol=1e-6, rtol=0)

    def test_outputs_at_valid_positions_ignore_padding_tokens(self):
        encoder = Encoder(V, E, H, cell="gru", bidirectional=True)
        variables = _init_encoder(encoder)
        outputs, summary = encoder.apply(variables, SRC, SRC_LENGTHS)
        other = np.where(np.arange(S)[None] >= SRC_LENGTHS[:, None], 7, SRC).astype(np.int32)
        other_outputs, other_summary = encoder.apply(variables, other, SRC_LENGTHS)
        np.testing.assert_array_equal(other_outputs, outputs)
        np.testing.assert_array_equal(other_summary, summary)

    def test_unidirectional_summary_is_last_valid_state(self):
        encoder = Encoder(V, E, H, cell="lstm")
        variables = _init_encoder(encoder)
        outputs, summary = encoder.apply(variables, SRC, SRC_LENGTHS)
        chex.assert_shape(outputs, (B, S, H))
        np.testing.assert_allclose(summary, outputs[np.arange(B), SRC_LENGTHS - 1], atol=1e-6, rtol=0)

    def test_empty_rows_give_zero_summary(self):
        encoder = Encoder(V, E, H, cell="gru", bidirectional=True)
        lengths = np.array([5, 0], np.int32)
        variables = _init_encoder(encoder)
        outputs, summary = encoder.apply(variables, SRC, lengths)
        np.testing.assert_array_equal(outputs[1], 0.0)
        np.testing.assert_array_equal(summary[1], 0.0)


class AttentionModuleTest(parameterized.TestCase):
    def _inputs(self, dk=6):
        rng = np.random.default_rng(0)
        query = rng.standard_normal((B, 3, 4)).astype(np.float32)
        key = rng.standard_normal((B, S, dk)).astype(np.float32)
        mask = np.arange(S)[None] < SRC_LENGTHS[:, None]
        return query, key, mask

    def test_bahdanau_projected_keys_equal_core_attend(self):
        """Precomputing U_a h_j (A.1.2) gives the same result as the core additive score."""
        query, key, mask = self._inputs()
        attention = BahdanauAttention(features=5)
        variables = nn.unbox(attention.init(jax.random.key(0), query, key, None, mask))
        params = variables["params"]
        self.assertEqual(params["w_q"]["kernel"].shape, (4, 5))
        self.assertEqual(params["w_k"]["kernel"].shape, (6, 5))
        self.assertEqual(params["v"].shape, (5,))
        ctx, weights = attention.apply(variables, query, key, None, mask)
        projected = attention.apply(variables, key, method=BahdanauAttention.project_keys)
        ctx_p, weights_p = attention.apply(variables, query, key, None, mask, projected_keys=projected)
        np.testing.assert_allclose(ctx_p, ctx, atol=1e-6)
        np.testing.assert_allclose(weights_p, weights, atol=1e-6)
        # float64 transcription of eq. 6 / A.1.2.
        w_q, w_k, v = (np.asarray(x, np.float64) for x in (params["w_q"]["kernel"], params["w_k"]["kernel"], params["v"]))
        e = np.tanh((query @ w_q)[:, :, None, :] + (key @ w_k)[:, None, :, :]) @ v
        e = np.where(mask[:, None, :], e, -np.inf)
        alpha = np.exp(e - e.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        np.testing.assert_allclose(weights, alpha, atol=1e-5)
        np.testing.assert_allclose(ctx, alpha @ key.astype(np.float64), atol=1e-5)

    @parameterized.product(score=seq2seq.LUONG_SCORES, mode=seq2seq.LUONG_MODES)
    def test_luong_module_is_core_attend(self, score, mode):
        dk = 4 if score == "dot" else 6
        query, key, mask = self._inputs(dk)
        attention = LuongAttention(score=score, mode=mode, window=2, max_source_len=S, features=3)
        positions = np.array([[0, 2, 4], [1, 1, 5]], np.int32)
        variables = nn.unbox(attention.init(jax.random.key(0), query, key, None, mask, positions))
        params = dict(variables.get("params", {}))
        ctx, weights = attention.apply(variables, query, key, None, mask, positions)
        expected = context.attend(
            query,
            key,
            None,
            mask,
            score=score,
            params=params,
            mode=mode,
            window=None if mode == "global" else 2,
            query_positions=positions if mode == "local_m" else None,
        )
        np.testing.assert_allclose(ctx, expected[0], atol=1e-6)
        np.testing.assert_allclose(weights, expected[1], atol=1e-6)
        expected_params = {"dot": set(), "general": {"w_a"}, "concat": {"w_a", "v_a"}, "location": {"w_a"}}[score]
        if mode == "local_p":
            expected_params |= {"w_p", "v_p"}
        self.assertEqual(set(params), expected_params)

    def test_luong_location_rejects_long_sources(self):
        query, key, mask = self._inputs()
        attention = LuongAttention(score="location", max_source_len=S - 1)
        with _raises(ValueError, "max_source_len=5", str(key.shape)):
            attention.init(jax.random.key(0), query, key, None, mask)


def _batch(seed):
    rng = np.random.default_rng(seed)
    src = rng.integers(4, V, (B, S)).astype(np.int32)
    lengths = rng.integers(1, S + 1, (B,)).astype(np.int32)
    tgt = rng.integers(4, V, (B, T + 1)).astype(np.int32)
    tgt[:, 0] = 2
    return src, lengths, tgt[:, :-1], tgt[:, 1:]


def _loss(model, params, src, lengths, tgt_in, tgt_out, mask, rngs=None):
    logits, _ = model.apply({"params": params}, src, lengths, tgt_in, train=rngs is not None, rngs=rngs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tgt_out)
    return jnp.sum(losses * mask) / jnp.sum(mask)


class TrainingTest(parameterized.TestCase):
    def test_train_step_does_not_retrace(self):
        model = _model(attention="luong", score="concat", mode="local_p", dropout_rate=0.1, num_layers=2)
        params = _init(model)["params"]
        optimizer = optax.adam(1e-2)
        opt_state = optimizer.init(params)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def train_step(params, opt_state, batch, key):
            loss, grads = jax.value_and_grad(lambda p: _loss(model, p, *batch, rngs={"dropout": key}))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        for step in range(3):
            src, lengths, tgt_in, tgt_out = _batch(step)
            mask = (np.arange(T)[None] < np.array([T, T - 2])[:, None]).astype(np.float32)
            params, opt_state, loss = train_step(
                params, opt_state, (src, lengths, tgt_in, tgt_out, mask), jax.random.key(step)
            )
            self.assertTrue(np.isfinite(float(loss)))

    @parameterized.named_parameters(
        ("none", dict(attention="none")),
        ("bahdanau", dict(attention="bahdanau", bidirectional=True, cell="gru")),
        ("luong", dict(attention="luong", score="general")),
    )
    def test_overfits_four_pairs(self, kwargs):
        model = _model(**kwargs)
        rng = np.random.default_rng(0)
        src = rng.integers(4, V, (4, S)).astype(np.int32)
        lengths = np.array([6, 4, 5, 3], np.int32)
        tgt = rng.integers(4, V, (4, T + 1)).astype(np.int32)
        tgt[:, 0] = 2
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        mask = np.ones((4, T), np.float32)
        params = nn.unbox(jax.jit(model.init)(jax.random.key(0), src, lengths, tgt_in)["params"])
        optimizer = optax.adam(3e-2)
        loss_fn = lambda p: _loss(model, p, src, lengths, tgt_in, tgt_out, mask)

        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        _, losses = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), None, length=100))(params)
        first, last = float(losses[0]), float(losses[-1])
        self.assertGreater(first, 2.0)  # about log(13) at initialisation
        self.assertLess(last, first / 20, msg=f"loss {first:.3f} -> {last:.3f}")


class BadOptionsTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("attention", dict(attention="transformer"), "'transformer'", "bahdanau"),
        ("score", dict(attention="luong", score="bilinear"), "'bilinear'", "general"),
        ("mode", dict(attention="luong", mode="local"), "'local'", "local_p"),
        ("window_negative", dict(attention="luong", mode="local_m", window=-1), "-1"),
        ("window_float", dict(attention="luong", mode="local_m", window=2.5), "2.5"),
        ("window_local_p_zero", dict(attention="luong", mode="local_p", window=0), "window", "0"),
        ("cell", dict(cell="rnn"), "'rnn'", "lstm"),
        ("location_without_max", dict(attention="luong", score="location"), "max_source_len"),
        ("dot_bidirectional", dict(attention="luong", score="dot", bidirectional=True), "dot", "bidirectional"),
        ("layers", dict(num_layers=0), "num_layers", "0"),
        ("dropout", dict(dropout_rate=1.0), "dropout_rate", "1.0"),
    )
    def test_seq2seq_raises_at_construction(self, kwargs, *fragments):
        with _raises(ValueError, *fragments):
            _model(**kwargs)

    def test_modules_raise(self):
        with _raises(ValueError, "'cosine'", "concat"):
            LuongAttention(score="cosine")
        with _raises(ValueError, "'soft'", "global"):
            LuongAttention(mode="soft")
        with _raises(ValueError, "window", "-3"):
            LuongAttention(mode="local_p", window=-3)
        with _raises(ValueError, "'rnn'", "gru"):
            Encoder(V, E, H, cell="rnn")
        with _raises(ValueError, "features", "0"):
            BahdanauAttention(features=0)

    def test_bad_inputs(self):
        model = _model(attention="bahdanau")
        with _raises(ValueError, "batch", "(2, 6)", "(1, 5)"):
            model.init(jax.random.key(0), SRC, SRC_LENGTHS, TGT_IN[:1])
        with _raises(TypeError, "src", "float32"):
            model.init(jax.random.key(0), SRC.astype(np.float32), SRC_LENGTHS, TGT_IN)
        with _raises(ValueError, "lengths"):
            model.init(jax.random.key(0), SRC, SRC_LENGTHS[:1], TGT_IN)


if __name__ == "__main__":
    absltest.main()
