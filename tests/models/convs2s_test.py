"""Tests for attention_jax/convs2s.py: multi-step attention and the ConvS2S model.

Gehring et al. 2017, arXiv:1705.03122: §3.2 (GLU blocks, causal decoder), §3.3 eqs. 1-2 (multi-step attention),
§3.4 (sqrt(0.5) residuals, m sqrt(1/m) context scaling). Tiny sizes so the file runs in seconds on one CPU core.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util as jtu
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.models import convs2s
from attention_jax.models import decoding
from attention_jax.layers.multistep import multistep_attention
from attention_jax.models.convs2s import ConvS2S
from tests import reference as ref

B, T, S, C, E, V = 2, 4, 5, 7, 6, 11
SRC = np.array([[4, 5, 6, 7, 0], [8, 9, 10, 0, 0]], np.int32)
SRC_LENGTHS = np.array([4, 3], np.int32)
TGT_IN = np.array([[2, 4, 5, 6], [2, 7, 8, 9]], np.int32)
MASK = np.array([[True, True, False, True, False], [True, False, False, False, False]])
_BAD = (ValueError, TypeError)


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a value or shape) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _attention_inputs(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: (0.7 * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    return dict(decoder_state=normal(B, T, C), target_embedding=normal(B, T, E), encoder_out=normal(B, S, E),
                encoder_in=normal(B, S, E), w_d=normal(C, E), b_d=normal(E))


def _reference_attention(decoder_state, target_embedding, encoder_out, encoder_in, w_d, b_d, mask=None,
                         scale_context=True):
    """Float64 transcription of arXiv:1705.03122 eqs. 1-2 and the §3.4 scaling (c_i * m sqrt(1/m))."""
    h, g, z, values = (np.asarray(x, np.float64) for x in (decoder_state, target_embedding, encoder_out, encoder_in))
    d = h @ np.asarray(w_d, np.float64) + np.asarray(b_d, np.float64) + g  # [B,T,E]
    logits = np.einsum("bte,bse->bts", d, z)
    valid = np.ones((B, S), bool) if mask is None else np.asarray(mask)
    weights = ref.masked_softmax(logits, valid[:, None, :])
    context = np.einsum("bts,bse->bte", weights, values)
    if scale_context:
        m = valid.sum(-1).astype(np.float64)
        context = context * np.where(m > 0, m * np.sqrt(1.0 / np.maximum(m, 1.0)), 0.0)[:, None, None]
    return context, weights


class MultistepAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(masked=(False, True), scale_context=(False, True))
    def test_matches_reference(self, masked, scale_context):
        inputs = _attention_inputs(0)
        mask = jnp.asarray(MASK) if masked else None
        fn = self.variant(lambda kw, m: multistep_attention(**kw, mask=m, scale_context=scale_context))
        context, weights = fn(inputs, mask)
        chex.assert_shape(context, (B, T, E))
        chex.assert_shape(weights, (B, T, S))
        self.assertEqual(weights.dtype, jnp.float32)
        want_context, want_weights = _reference_attention(**inputs, mask=None if mask is None else MASK,
                                                          scale_context=scale_context)
        ref.assert_close(weights, want_weights)
        ref.assert_close(context, want_context)
        if masked:
            np.testing.assert_array_equal(np.asarray(weights)[np.broadcast_to(~MASK[:, None], weights.shape)], 0.0)

    def test_scaling_is_sqrt_of_valid_count(self):
        inputs = _attention_inputs(1)
        scaled, _ = multistep_attention(**inputs, mask=jnp.asarray(MASK))
        plain, _ = multistep_attention(**inputs, mask=jnp.asarray(MASK), scale_context=False)
        factor = np.sqrt(MASK.sum(-1))[:, None, None]  # m sqrt(1/m) = sqrt(m): sqrt(3), 1
        np.testing.assert_allclose(scaled, factor * np.asarray(plain), rtol=1e-6, atol=1e-6)
        self.assertGreater(float(np.abs(np.asarray(scaled) - np.asarray(plain)).max()), 1e-3)

    @parameterized.parameters(False, True)
    def test_check_grads(self, masked):
        inputs = _attention_inputs(2)
        mask = jnp.asarray(MASK) if masked else None
        names = list(inputs)
        fn = lambda *args: multistep_attention(**dict(zip(names, args)), mask=mask)  # noqa: E731
        jtu.check_grads(fn, tuple(jnp.asarray(inputs[n]) for n in names), order=1, modes=["rev"],
                        eps=1e-3, atol=2e-2, rtol=2e-2)

    def test_fully_masked_row_gives_zeros_and_zero_grads(self):
        inputs = {k: jnp.asarray(v) for k, v in _attention_inputs(3).items()}
        mask = jnp.asarray(np.array([[True, True, True, False, False], [False] * S]))
        context, weights = multistep_attention(**inputs, mask=mask)
        np.testing.assert_array_equal(np.asarray(context)[1], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[1], 0.0)
        self.assertGreater(float(np.abs(np.asarray(context)[0]).max()), 0.0)

        def loss(kw):
            c, w = multistep_attention(**kw, mask=mask)
            return jnp.sum(c ** 2) + jnp.sum(w * jnp.arange(S))

        grads = jax.grad(loss)(inputs)
        for name in ("decoder_state", "target_embedding", "encoder_out", "encoder_in"):
            g = np.asarray(grads[name])
            self.assertTrue(np.all(np.isfinite(g)), name)
            np.testing.assert_array_equal(g[1], 0.0, err_msg=name)
            self.assertGreater(float(np.abs(g[0]).max()), 0.0, name)

    def test_nan_in_padding_does_not_leak(self):
        inputs = {k: jnp.asarray(v) for k, v in _attention_inputs(4).items()}
        mask = jnp.asarray(MASK)
        poisoned = dict(inputs)
        for name in ("encoder_out", "encoder_in"):
            poisoned[name] = jnp.where(mask[..., None], inputs[name], jnp.nan)

        def loss(kw):
            c, w = multistep_attention(**kw, mask=mask)
            return jnp.sum(c ** 2) + jnp.sum(w ** 2)

        for got, want in zip(multistep_attention(**poisoned, mask=mask), multistep_attention(**inputs, mask=mask)):
            np.testing.assert_array_equal(got, want)
        grads = jax.grad(loss)(poisoned)
        for name, g in grads.items():
            self.assertTrue(np.all(np.isfinite(np.asarray(g))), name)
        chex.assert_trees_all_close(grads, jax.grad(loss)(inputs), atol=1e-6)

    def test_bfloat16_values_keep_dtype(self):
        inputs = {k: jnp.asarray(v, jnp.bfloat16) for k, v in _attention_inputs(5).items()}
        context, weights = multistep_attention(**inputs, mask=jnp.asarray(MASK))
        self.assertEqual(context.dtype, jnp.bfloat16)
        self.assertEqual(weights.dtype, jnp.float32)
        want_context, want_weights = _reference_attention(**{k: np.asarray(v, np.float64) for k, v in inputs.items()},
                                                          mask=MASK)
        ref.assert_close(weights, want_weights, "bfloat16")
        ref.assert_close(context, want_context, "bfloat16")

    def test_bad_inputs_raise(self):
        inputs = _attention_inputs(6)
        with _raises(ValueError, "decoder_state", "rank 3", (B, C)):
            multistep_attention(**{**inputs, "decoder_state": inputs["decoder_state"][:, 0]})
        with _raises(ValueError, "batch sizes differ"):
            multistep_attention(**{**inputs, "encoder_out": inputs["encoder_out"][:1],
                                   "encoder_in": inputs["encoder_in"][:1]})
        with _raises(ValueError, "encoder_out and encoder_in shapes differ", (B, S - 1, E)):
            multistep_attention(**{**inputs, "encoder_in": inputs["encoder_in"][:, 1:]})
        with _raises(ValueError, "w_d", (C, E), (E, E)):
            multistep_attention(**{**inputs, "w_d": np.zeros((E, E), np.float32)})
        with _raises(ValueError, "lengths differ", (B, T - 1, E)):
            multistep_attention(**{**inputs, "target_embedding": inputs["target_embedding"][:, 1:]})
        with _raises(TypeError, "mask", "bool"):
            multistep_attention(**inputs, mask=np.ones((B, S), np.int32))
        with _raises(ValueError, "mask", (B, T, S)):
            multistep_attention(**inputs, mask=np.ones((B, T, S), bool))
        with _raises(TypeError, "encoder_out", "floating", "int32"):
            multistep_attention(**{**inputs, "encoder_out": np.ones((B, S, E), np.int32)})


# ----------------------------------------------------------------------------------------------------------
# The model.

CONFIGS = (
    ("k3_two_layers", dict(num_encoder_layers=2, num_decoder_layers=2, kernel_size=3)),
    ("k2_even_width", dict(num_encoder_layers=1, num_decoder_layers=1, kernel_size=2)),
    ("k1_no_buffer", dict(num_encoder_layers=1, num_decoder_layers=2, kernel_size=1, scale_context=False)),
)


def _model(**kwargs):
    kwargs = {"num_encoder_layers": 2, "num_decoder_layers": 2, "max_len": 8, **kwargs}
    return ConvS2S(vocab_size=V, embed_dim=E, hidden_size=C, **kwargs)


def _init(model, seed=0):
    """Random variables of the right structure, without compiling `model.init`."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), SRC, SRC_LENGTHS, TGT_IN)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(x.dtype), nn.unbox(shapes))


def _stepwise(model, variables, src, src_lengths, tgt_in):
    """Teacher-forced decoding one token at a time through encode / init_state / decode_step, in a lax.scan."""
    memory = model.apply(variables, src, src_lengths, method=ConvS2S.encode)
    state = model.apply(variables, memory, method=ConvS2S.init_state)

    def step(state, xs):
        tokens, t = xs
        logits, state, weights = model.apply(variables, memory, state, tokens, t, method=ConvS2S.decode_step)
        return state, (logits, weights)

    xs = (jnp.asarray(tgt_in).T, jnp.arange(tgt_in.shape[1], dtype=jnp.int32))
    _, (logits, weights) = jax.lax.scan(step, state, xs)
    return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(weights, 0, 1)


def _pad_differently(src, lengths, fill=10):
    other = np.array(src, copy=True)
    other[np.arange(src.shape[1])[None] >= lengths[:, None]] = fill
    return other


class ConvS2STest(parameterized.TestCase):

    @parameterized.named_parameters(*CONFIGS)
    def test_decode_step_equals_full_pass_and_ignores_padding(self, kwargs):
        model = _model(**kwargs)

        @jax.jit
        def run(variables, sources):
            forced = jax.vmap(lambda src: model.apply(variables, src, SRC_LENGTHS, TGT_IN))(sources)
            return forced, _stepwise(model, variables, sources[0], SRC_LENGTHS, TGT_IN)

        sources = np.stack([SRC, _pad_differently(SRC, SRC_LENGTHS)])
        (logits, weights), (step_logits, step_weights) = run(_init(model), sources)
        chex.assert_shape(logits, (2, B, T, V))
        chex.assert_shape(weights, (2, B, T, S))
        self.assertEqual(logits.dtype, jnp.float32)
        self.assertEqual(weights.dtype, jnp.float32)
        np.testing.assert_allclose(step_logits, logits[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(step_weights, weights[0], atol=1e-5, rtol=0)
        # Tokens beyond src_lengths change nothing; padded positions get exactly zero weight.
        np.testing.assert_allclose(logits[1], logits[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(weights[1], weights[0], atol=1e-6, rtol=0)
        padded = np.arange(S)[None, None, :] >= SRC_LENGTHS[:, None, None]
        np.testing.assert_array_equal(np.asarray(weights[0])[np.broadcast_to(padded, (B, T, S))], 0.0)
        np.testing.assert_allclose(np.asarray(weights[0]).sum(-1), 1.0, atol=1e-5)
        # The source matters at all (the padding check above would pass for a model that ignores it).
        other = model.apply(_init(model), np.where(SRC > 0, SRC % 9 + 1, 0).astype(np.int32), SRC_LENGTHS, TGT_IN)
        self.assertGreater(float(np.abs(np.asarray(other[0]) - np.asarray(logits[0])).max()), 1e-4)

    def test_decoder_is_causal_by_gradient(self):
        model = _model(kernel_size=3)
        variables = _init(model, seed=1)
        memory = model.apply(variables, SRC, SRC_LENGTHS, method=ConvS2S.encode)

        def decode(module, g, mem):
            return module._decode(g, mem, lambda l, x: module.dec_convs[l](x, causal=True), False)[0]

        g = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, E)), jnp.float32)
        jac = jax.jacrev(lambda g: model.apply(variables, g, memory, method=decode))(g)  # [B,T,V,B,T,E]
        influence = np.abs(np.asarray(jac)).sum(axis=(2, 5))  # [B,T,B,T]: d logits[b,t] / d g[b',t']
        for t in range(T):
            for u in range(T):
                per_row = np.array([influence[b, t, b, u] for b in range(B)])
                if u > t:
                    np.testing.assert_array_equal(per_row, 0.0, err_msg=f"logits at {t} see target at {u}")
                else:
                    self.assertTrue(np.all(per_row > 0), f"logits at {t} ignore target at {u}")
        np.testing.assert_array_equal(influence[0, :, 1], 0.0)  # no mixing across the batch

    def test_future_tokens_do_not_change_earlier_logits(self):
        model = _model()
        variables = _init(model, seed=3)
        rng = np.random.default_rng(4)
        changed = []
        for u in range(T):
            tgt = TGT_IN.copy()
            tgt[:, u:] = rng.integers(1, V, size=(B, T - u))
            changed.append(tgt)
        logits, weights = jax.jit(jax.vmap(lambda tgt: model.apply(variables, SRC, SRC_LENGTHS, tgt)))(
            np.stack(changed))
        base_logits, base_weights = model.apply(variables, SRC, SRC_LENGTHS, TGT_IN)
        for u in range(T):
            # jit vs eager rounding only; a leak from the future moves logits by O(1e-1).
            np.testing.assert_allclose(logits[u][:, :u], base_logits[:, :u], atol=1e-5, rtol=0)
            np.testing.assert_allclose(weights[u][:, :u], base_weights[:, :u], atol=1e-5, rtol=0)
        self.assertGreater(float(np.abs(np.asarray(logits[1]) - np.asarray(base_logits)).max()), 1e-4)

    def test_greedy_decode_matches_teacher_forced_argmax(self):
        model = _model()
        variables = _init(model, seed=5)
        bos, eos, max_len = 2, 3, 6
        memory = model.apply(variables, SRC, SRC_LENGTHS, method=ConvS2S.encode)
        state = model.apply(variables, memory, method=ConvS2S.init_state)
        step_fn = convs2s.make_step_fn(model, variables)
        tokens, weights = jax.jit(lambda m, s: decoding.greedy_decode(
            step_fn, m, s, batch_size=B, bos_id=bos, eos_id=eos, max_len=max_len))(memory, state)
        chex.assert_shape(tokens, (B, max_len))
        chex.assert_shape(weights, (B, max_len, S))
        tgt_in = np.concatenate([np.full((B, 1), bos, np.int32), np.asarray(tokens)[:, :-1]], axis=1)
        logits, forced_weights = model.apply(variables, SRC, SRC_LENGTHS, tgt_in)
        for b in range(B):
            row = list(np.asarray(tokens[b]))
            n = row.index(eos) + 1 if eos in row else max_len
            np.testing.assert_array_equal(np.argmax(np.asarray(logits[b, :n]), -1), tokens[b, :n])
            np.testing.assert_allclose(weights[b, :n], forced_weights[b, :n], atol=1e-5, rtol=0)

    def test_dropout_only_in_training(self):
        model = _model(dropout_rate=0.3)
        variables = _init(model, seed=6)
        run = jax.jit(lambda rng, train: model.apply(variables, SRC, SRC_LENGTHS, TGT_IN, train=train,
                                                     rngs={"dropout": rng})[0], static_argnums=1)
        eval_a, eval_b = run(jax.random.key(0), False), run(jax.random.key(1), False)
        train_a, train_b = run(jax.random.key(0), True), run(jax.random.key(1), True)
        np.testing.assert_array_equal(eval_a, eval_b)
        self.assertTrue(np.all(np.isfinite(np.asarray(train_a))))
        self.assertGreater(float(np.abs(np.asarray(train_a) - np.asarray(train_b)).max()), 1e-4)

    def test_every_decoder_layer_has_its_own_attention(self):
        params = _init(_model(num_decoder_layers=3))["params"]
        for l in range(3):
            chex.assert_shape(params[f"attention_{l}"]["w_d"], (C, E))
            chex.assert_shape(params[f"dec_convs_{l}"]["kernel"], (3, C, 2 * C))
        self.assertNotIn("attention_3", params)

    def test_state_leaves_are_batch_leading(self):
        model = _model(kernel_size=3)
        memory = jax.eval_shape(lambda: model.apply(_init(model), SRC, SRC_LENGTHS, method=ConvS2S.encode))
        state = jax.eval_shape(lambda: model.apply(_init(model), memory, method=ConvS2S.init_state))
        for leaf in jax.tree_util.tree_leaves((memory, state)):
            self.assertEqual(leaf.shape[0], B)
        self.assertEqual([x.shape for x in state["conv"]], [(B, 2, C)] * 2)

    def test_bad_construction_raises(self):
        with _raises(ValueError, "kernel_size", "0"):
            _model(kernel_size=0)
        with _raises(ValueError, "dropout_rate", "1.0"):
            _model(dropout_rate=1.0)
        with _raises(ValueError, "num_decoder_layers", "0"):
            _model(num_decoder_layers=0)
        with _raises(ValueError, "vocab_size", "2.5"):
            ConvS2S(vocab_size=2.5)

    def test_bad_call_inputs_raise(self):
        model = _model()
        variables = _init(model)
        with _raises(ValueError, "src", "2 dims", (B * S,)):
            model.apply(variables, SRC.reshape(-1), SRC_LENGTHS, TGT_IN)
        with _raises(TypeError, "tgt_in", "integer", "float32"):
            model.apply(variables, SRC, SRC_LENGTHS, TGT_IN.astype(np.float32))
        with _raises(ValueError, "batch differ", (1, T)):
            model.apply(variables, SRC, SRC_LENGTHS, TGT_IN[:1])
        with _raises(ValueError, "src_lengths", (B, S)):
            model.apply(variables, SRC, SRC_LENGTHS[:1], TGT_IN)
        with _raises(ValueError, "target length 9", "max_len=8"):
            model.apply(variables, SRC, SRC_LENGTHS, np.zeros((B, 9), np.int32))
        memory = model.apply(variables, SRC, SRC_LENGTHS, method=ConvS2S.encode)
        state = model.apply(variables, memory, method=ConvS2S.init_state)
        with _raises(ValueError, "tokens", "1 dims"):
            model.apply(variables, memory, state, TGT_IN, 0, method=ConvS2S.decode_step)
        with _raises(ValueError, "tokens and memory batch differ", (3,)):
            model.apply(variables, memory, state, np.zeros(3, np.int32), 0, method=ConvS2S.decode_step)
        with _raises(ValueError, "t must be in", "8"):
            model.apply(variables, memory, state, TGT_IN[:, 0], 8, method=ConvS2S.decode_step)
        with _raises(ValueError, "state['conv']", (B, 2, C)):
            model.apply(variables, memory, {"conv": state["conv"][:1]}, TGT_IN[:, 0], 0,
                        method=ConvS2S.decode_step)


if __name__ == "__main__":
    absltest.main()
