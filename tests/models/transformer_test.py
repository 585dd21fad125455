"""Tests for attention_jax/transformer.py: the Transformer encoder-decoder (Vaswani et al. 2017, arXiv:1706.03762).

The key reference is an independent float64 numpy forward of a one-layer encoder-decoder (post-LN, the paper's
§3.1, and pre-LN, Xiong et al. 2020, arXiv:2002.04745) run on the module's own (perturbed) params. Tiny sizes
(V=40, D=16, N=4, F=32) and one jit compile per configuration keep the file fast on one CPU core.
"""

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

from attention_jax.models import decoding
from attention_jax.models.transformer import (
    Transformer,
    init_decode_state,
    label_smoothed_cross_entropy,
    make_step_fn,
    transformer_schedule,
)
from tests import reference as ref

V, D, N, F = 40, 16, 4, 32
B, S, T = 2, 6, 5
BOS, EOS = 1, 2
POSITIONS = ("sinusoidal", "learned", "shaw", "rope", "alibi", "none")


def _model(**kwargs):
    base = dict(vocab_size=V, d_model=D, num_heads=N, d_ff=F, num_encoder_layers=1, num_decoder_layers=2,
                dropout_rate=0.0, max_len=16, shaw_max_distance=2)
    base.update(kwargs)
    return Transformer(**base)


def _batch(seed=0, s=S, t=T):
    rng = np.random.default_rng(seed)
    src = jnp.asarray(rng.integers(3, V, size=(B, s)), jnp.int32)
    tgt = jnp.asarray(rng.integers(3, V, size=(B, t)), jnp.int32)
    lengths = jnp.array([s, s - 2], jnp.int32)
    return src, lengths, tgt


def _init(model, seed=0, src=None, lengths=None, tgt=None, noise=0.0):
    d_src, d_len, d_tgt = _batch()
    src = d_src if src is None else src
    lengths = d_len if lengths is None else lengths
    tgt = d_tgt if tgt is None else tgt
    params = nn.unbox(model.init(jax.random.PRNGKey(seed), src, lengths, tgt)["params"])
    if noise:  # move LayerNorm scales/biases and zero biases away from their init so the reference sees them
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
        leaves = [a + noise * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
        params = jax.tree.unflatten(tree, leaves)
    return params


# ----------------------------------------------------------------------------------------------------------
# float64 numpy references.


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_sinusoid(length, dim):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)) (§3.5)."""
    pe = np.zeros((length, dim))
    for pos in range(length):
        for i in range(0, dim, 2):
            pe[pos, i] = np.sin(pos / 10000 ** (i / dim))
            if i + 1 < dim:
                pe[pos, i + 1] = np.cos(pos / 10000 ** (i / dim))
    return pe


def _np_layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_mha(p, xq, xkv, allowed):
    """MultiHead(Q, K, V) = Concat(head_i) W^O, head_i = softmax(Q_i K_i^T / sqrt(H)) V_i (§3.2.2)."""
    q = np.einsum("btd,dnh->btnh", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bsd,dnh->bsnh", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bsd,dnh->bsnh", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    w = ref.masked_softmax(np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1]), allowed)
    z = np.einsum("bnts,bsnh->btnh", w, v)
    return np.einsum("btnh,nhd->btd", z, p["out"]["kernel"]) + p["out"]["bias"], w


def _np_ffn(p, x):
    h = np.maximum(0.0, x @ p["inner"]["kernel"] + p["inner"]["bias"])
    return h @ p["outer"]["kernel"] + p["outer"]["bias"]


def _np_transformer(params, src, lengths, tgt, norm="post"):
    """One encoder and one decoder layer, shared embeddings, sinusoidal positions; (logits, mean weights)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    src, tgt, lengths = np.asarray(src), np.asarray(tgt), np.asarray(lengths)
    emb = p["embed"]["embedding"]
    s, t = src.shape[1], tgt.shape[1]

    def sub(x, block, fn):
        if norm == "post":  # LayerNorm(x + Sublayer(x))
            return _np_layer_norm(x + fn(x), block["norm"])
        return x + fn(_np_layer_norm(x, block["norm"]))  # x + Sublayer(LayerNorm(x))

    key_ok = (np.arange(s)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, S]
    x = emb[src] * np.sqrt(D) + _np_sinusoid(s, D)
    e = p["encoder_layers_0"]
    x = sub(x, e["attention_block"], lambda h: _np_mha(e["self_attention"], h, h, key_ok)[0])
    x = sub(x, e["ffn_block"], lambda h: _np_ffn(e["ffn"], h))
    if norm == "pre":
        x = _np_layer_norm(x, p["encoder_norm"])

    y = emb[tgt] * np.sqrt(D) + _np_sinusoid(t, D)
    d = p["decoder_layers_0"]
    causal = np.tril(np.ones((t, t), bool))[None, None]
    y = sub(y, d["self_attention_block"], lambda h: _np_mha(d["self_attention"], h, h, causal)[0])
    weights = []
    y = sub(y, d["cross_attention_block"],
            lambda h: weights.append(_np_mha(d["cross_attention"], h, x, key_ok)) or weights[-1][0])
    y = sub(y, d["ffn_block"], lambda h: _np_ffn(d["ffn"], h))
    if norm == "pre":
        y = _np_layer_norm(y, p["decoder_norm"])
    return y @ emb.T, weights[-1][1].mean(axis=1)


# ----------------------------------------------------------------------------------------------------------
# Loss and schedule.


class LossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(eps=(0.0, 0.1, 0.3), masked=(False, True))
    def test_matches_numpy(self, eps, masked):
        rng = np.random.default_rng(int(eps * 10) + masked)
        logits = rng.normal(size=(B, T, V)).astype(np.float32) * 3
        labels = rng.integers(0, V, size=(B, T)).astype(np.int32)
        mask = (rng.random((B, T)) < 0.6) if masked else None
        fn = self.variant(lambda l, y, m: label_smoothed_cross_entropy(l, y, m, smoothing=eps))
        loss, count = fn(jnp.asarray(logits), jnp.asarray(labels), None if mask is None else jnp.asarray(mask))
        log_p = _np_log_softmax(logits.astype(np.float64))
        target = np.full((B, T, V), eps / V)
        target[np.arange(B)[:, None], np.arange(T)[None, :], labels] += 1.0 - eps
        per_token = -(target * log_p).sum(-1)
        w = np.ones((B, T)) if mask is None else mask.astype(np.float64)
        chex.assert_trees_all_close(loss, np.float32((per_token * w).sum()), rtol=1e-5)
        chex.assert_trees_all_close(count, np.float32(w.sum()))

    def test_perfect_model_loss_is_entropy_of_smoothed_target(self):
        labels = jnp.array([[3, 5]], jnp.int32)
        logits = jax.nn.one_hot(labels, V) * 1e4
        loss, _ = label_smoothed_cross_entropy(logits, labels, smoothing=0.0)
        self.assertLess(float(loss), 1e-3)
        loss, _ = label_smoothed_cross_entropy(logits, labels, smoothing=0.1)
        self.assertGreater(float(loss), 1.0)  # the uniform part pays for the -1e4 logits

    def test_float_mask_weights(self):
        logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, V)), jnp.float32)
        labels = jnp.array([[1, 2, 3]], jnp.int32)
        full, _ = label_smoothed_cross_entropy(logits[:, :1], labels[:, :1], smoothing=0.1)
        part, count = label_smoothed_cross_entropy(logits, labels, jnp.array([[1.0, 0.0, 0.0]]), smoothing=0.1)
        chex.assert_trees_all_close(part, full, rtol=1e-6)
        self.assertEqual(float(count), 1.0)

    def test_bad_inputs(self):
        logits = jnp.zeros((B, T, V))
        labels = jnp.zeros((B, T), jnp.int32)
        with pytest.raises(TypeError, match="labels"):
            label_smoothed_cross_entropy(logits, labels.astype(jnp.float32))
        with pytest.raises(TypeError, match="logits"):
            label_smoothed_cross_entropy(logits.astype(jnp.int32), labels)
        with pytest.raises(ValueError, match="logits"):
            label_smoothed_cross_entropy(logits[0], labels)
        with pytest.raises(ValueError, match="labels"):
            label_smoothed_cross_entropy(logits, labels[:, :-1])
        with pytest.raises(ValueError, match="mask"):
            label_smoothed_cross_entropy(logits, labels, jnp.ones((B, T + 1)))
        for eps in (-0.1, 1.0, True):
            with pytest.raises(ValueError, match="smoothing"):
                label_smoothed_cross_entropy(logits, labels, smoothing=eps)


class ScheduleTest(parameterized.TestCase):
    @parameterized.parameters((512, 4000, 1.0), (16, 10, 2.0))
    def test_formula_and_peak(self, d, w, scale):
        fn = transformer_schedule(d, w, scale)
        steps = np.arange(0, 5 * w)
        got = np.asarray(jax.vmap(fn)(jnp.asarray(steps)))
        n = steps + 1.0
        expected = scale * d ** -0.5 * np.minimum(n ** -0.5, n * w ** -1.5)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        self.assertEqual(int(np.argmax(got)), w - 1)
        np.testing.assert_allclose(float(fn(w - 1)), scale * (d * w) ** -0.5, rtol=1e-5)
        self.assertGreater(float(fn(0)), 0.0)

    def test_bad_args(self):
        for args in ((0, 10), (16, 0), (16.5, 10), (16, -3)):
            with pytest.raises(ValueError):
                transformer_schedule(*args)
        for scale in (0.0, -1.0, True):
            with pytest.raises(ValueError, match="scale"):
                transformer_schedule(16, 10, scale)


# ----------------------------------------------------------------------------------------------------------
# The model.


class ReferenceTest(parameterized.TestCase):
    @parameterized.parameters("post", "pre")
    def test_one_layer_matches_numpy(self, norm):
        model = _model(num_encoder_layers=1, num_decoder_layers=1, norm=norm)
        src, lengths, tgt = _batch(1)
        params = _init(model, noise=0.2)
        logits, weights = model.apply({"params": params}, src, lengths, tgt)
        chex.assert_shape([logits, weights], [(B, T, V), (B, T, S)])
        expected, expected_w = _np_transformer(params, src, lengths, tgt, norm)
        chex.assert_trees_all_close(logits, expected.astype(np.float32), atol=1e-4, rtol=1e-4)
        chex.assert_trees_all_close(weights, expected_w.astype(np.float32), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(weights)[1, :, S - 2:], 0.0)  # padded source keys

    @parameterized.parameters(2, 6)
    def test_qk_head_dim_matches_numpy(self, d_k):
        # Table 3 row (B): d_k apart from d_v = D // N = 4 in every attention; the reference scales by sqrt(d_k).
        model = _model(num_encoder_layers=1, num_decoder_layers=1, qk_head_dim=d_k)
        src, lengths, tgt = _batch(7)
        params = _init(model, noise=0.2)
        for layer, name in (("encoder_layers_0", "self_attention"), ("decoder_layers_0", "self_attention"),
                            ("decoder_layers_0", "cross_attention")):
            attention = params[layer][name]
            chex.assert_shape([attention["query"]["kernel"], attention["key"]["kernel"], attention["value"]["kernel"],
                               attention["out"]["kernel"]], [(D, N, d_k), (D, N, d_k), (D, N, D // N), (N, D // N, D)])
        logits, weights = model.apply({"params": params}, src, lengths, tgt)
        expected, expected_w = _np_transformer(params, src, lengths, tgt)
        chex.assert_trees_all_close(logits, expected.astype(np.float32), atol=1e-4, rtol=1e-4)
        chex.assert_trees_all_close(weights, expected_w.astype(np.float32), atol=1e-5, rtol=1e-5)

    def test_pre_differs_from_post_and_has_final_norms(self):
        src, lengths, tgt = _batch(2)
        pre, post = _model(norm="pre"), _model(norm="post")
        p_pre, p_post = _init(pre), _init(post)
        self.assertIn("encoder_norm", p_pre)
        self.assertIn("decoder_norm", p_pre)
        self.assertNotIn("encoder_norm", p_post)
        self.assertNotIn("decoder_norm", p_post)
        shared = dict(p_post, encoder_norm=p_pre["encoder_norm"], decoder_norm=p_pre["decoder_norm"])
        a, _ = pre.apply({"params": shared}, src, lengths, tgt)
        b, _ = post.apply({"params": p_post}, src, lengths, tgt)
        self.assertGreater(float(jnp.max(jnp.abs(a - b))), 1e-2)

    def test_separate_embeddings(self):
        src, lengths, tgt = _batch(3)
        model = _model(share_embeddings=False, num_encoder_layers=1, num_decoder_layers=1)
        params = _init(model)
        chex.assert_shape([params["embed"]["embedding"], params["target_embed"]["embedding"]], (V, D))
        chex.assert_shape(params["output_proj"]["kernel"], (D, V))
        self.assertNotIn("target_embed", _init(_model()))
        logits, _ = model.apply({"params": params}, src, lengths, tgt)
        # The output projection is its own matrix: zeroing it zeroes the logits, the embeddings stay.
        zero = dict(params, output_proj={"kernel": jnp.zeros((D, V))})
        np.testing.assert_array_equal(model.apply({"params": zero}, src, lengths, tgt)[0], 0.0)
        # The target table feeds the decoder: moving it alone moves the logits.
        bumped = dict(params, target_embed={"embedding": params["target_embed"]["embedding"] + 0.5})
        self.assertGreater(float(jnp.max(jnp.abs(model.apply({"params": bumped}, src, lengths, tgt)[0] - logits))),
                           1e-3)


def _step_decode(model, params, src, lengths, tgt):
    memory = model.apply({"params": params}, src, lengths, method=Transformer.encode)
    state = init_decode_state(model, params, memory, T)
    step = jax.jit(make_step_fn(model, params))
    logits, weights = [], []
    for t in range(tgt.shape[1]):
        lt, state, wt = step(memory, state, tgt[:, t], jnp.int32(t))
        logits.append(lt)
        weights.append(wt)
    return memory, state, step, jnp.stack(logits, 1), jnp.stack(weights, 1)


class DecodeTest(parameterized.TestCase):
    @parameterized.product(positions=POSITIONS, norm=("post", "pre"))
    def test_step_by_step_equals_teacher_forcing(self, positions, norm):
        self._check_steps(positions, norm)

    def test_step_by_step_with_qk_head_dim(self):
        self._check_steps("rope", "post", qk_head_dim=2)  # d_k = 2 < d_v = 4: caches of their own sizes

    def _check_steps(self, positions, norm, **kwargs):
        model = _model(positions=positions, norm=norm, num_decoder_layers=1, **kwargs)  # 2 layers: the search test
        src, lengths, tgt = _batch(4)
        params = _init(model, noise=0.05)
        forward = jax.jit(lambda p, s_, l, t_: model.apply({"params": p}, s_, l, t_))
        full_logits, full_weights = forward(params, src, lengths, tgt)
        _, _, _, logits, weights = _step_decode(model, params, src, lengths, tgt)
        chex.assert_trees_all_close(logits, full_logits, atol=1e-4, rtol=1e-4)
        chex.assert_trees_all_close(weights, full_weights, atol=1e-5, rtol=1e-5)
        # Causality: changing future target tokens leaves earlier logits as they were.
        other, _ = forward(params, src, lengths, tgt.at[:, 3:].set((tgt[:, 3:] + 7) % V))
        chex.assert_trees_all_close(other[:, :3], full_logits[:, :3], atol=1e-5, rtol=1e-5)
        self.assertGreater(float(jnp.max(jnp.abs(other[:, 3:] - full_logits[:, 3:]))), 1e-4)

    @parameterized.parameters(("shaw", "pre"))
    def test_greedy_and_beam_search(self, positions, norm):
        model = _model(positions=positions, norm=norm)
        src, lengths, _ = _batch(5)
        params = _init(model, noise=0.05)
        memory = model.apply({"params": params}, src, lengths, method=Transformer.encode)
        step = jax.jit(make_step_fn(model, params))
        state0 = init_decode_state(model, params, memory, T)
        greedy, aux = decoding.greedy_decode(step, memory, state0, batch_size=B, bos_id=BOS, eos_id=EOS,
                                             max_len=T)
        chex.assert_shape([greedy, aux], [(B, T), (B, T, S)])
        beams, scores = decoding.beam_search(step, memory, state0, batch_size=B, bos_id=BOS, eos_id=EOS,
                                             beam_size=1, max_len=T)
        np.testing.assert_array_equal(beams[:, 0], greedy)
        self.assertTrue(np.all(np.isfinite(np.asarray(scores))))
        # Greedy tokens are the argmaxes of the teacher-forced logits on its own prefix (before any EOS), and
        # its cross-attention weights are the teacher-forced ones.
        tgt_in = jnp.concatenate([jnp.full((B, 1), BOS, jnp.int32), greedy[:, :-1]], axis=1)
        logits, weights = model.apply({"params": params}, src, lengths, tgt_in)
        greedy_np = np.asarray(greedy)
        for b in range(B):
            ends = np.flatnonzero(greedy_np[b] == EOS)
            n = T if ends.size == 0 else ends[0] + 1
            np.testing.assert_array_equal(greedy_np[b, :n], np.argmax(np.asarray(logits)[b, :n], -1))
            chex.assert_trees_all_close(aux[b, :n], weights[b, :n], atol=1e-5, rtol=1e-5)
        beams, scores = decoding.beam_search(step, memory, state0, batch_size=B, bos_id=BOS, eos_id=EOS,
                                             beam_size=3, max_len=T)
        chex.assert_shape(beams, (B, 3, T))
        scores = np.asarray(scores)
        self.assertTrue(np.all(np.diff(scores, axis=1) <= 1e-6))
        self.assertTrue(np.all(np.isfinite(scores)))

    def test_jitted_step_traces_once(self):
        model = _model(positions="shaw", num_encoder_layers=1, num_decoder_layers=1)
        src, lengths, tgt = _batch(6)
        params = _init(model)
        memory = model.apply({"params": params}, src, lengths, method=Transformer.encode)
        state = init_decode_state(model, params, memory, T)
        step = jax.jit(chex.assert_max_traces(make_step_fn(model, params), n=1))
        for t in range(T):
            _, state, _ = step(memory, state, tgt[:, t], jnp.int32(t))
        chex.clear_trace_counter()

    def test_init_decode_state_shapes(self):
        model = _model(num_kv_heads=2)
        params = _init(model)
        src, lengths, _ = _batch(0)
        memory = model.apply({"params": params}, src, lengths, method=Transformer.encode)
        state = init_decode_state(model, params, memory, 7)
        leaves = jax.tree.leaves(state)
        self.assertEqual(len(leaves), 2 * 2)  # keys and values of 2 decoder layers
        chex.assert_shape(leaves, (B, 7, 2, D // N))
        for leaf in leaves:
            np.testing.assert_array_equal(leaf, 0.0)
        with pytest.raises(ValueError, match="max_len"):
            init_decode_state(model, params, memory, 0)
        model = _model(num_kv_heads=2, qk_head_dim=3)
        state = init_decode_state(model, None, memory, 7)  # the shapes follow from the model and the memory
        layer = state["decoder_layers_0"]["self_attention"]
        chex.assert_shape([layer["cached_key"], layer["cached_value"]], [(B, 7, 2, 3), (B, 7, 2, D // N)])


def _target_embedding_jacobian(model, params, src, lengths, tgt):
    """d logits [B, T, V] / d delta [B, T, D], delta added to the target embedding lookup."""

    def fn(delta):
        def add_delta(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.module.name == "target_embed" and context.method_name == "__call__":
                out = out + delta
            return out

        with nn.intercept_methods(add_delta):
            return model.apply({"params": params}, src, lengths, tgt)[0]

    return jax.jit(jax.jacfwd(fn))(jnp.zeros((B, tgt.shape[1], D)))  # [B, T, V, B, T, D]


class BehaviourTest(parameterized.TestCase):
    @parameterized.parameters(("sinusoidal", "post"), ("shaw", "pre"))
    def test_causality_by_gradient(self, positions, norm):
        model = _model(positions=positions, norm=norm, share_embeddings=False)
        src, lengths, tgt = _batch(7)
        params = _init(model)
        jac = np.asarray(_target_embedding_jacobian(model, params, src, lengths, tgt))
        sens = np.abs(jac[0, :, :, 0]).sum(axis=(1, 3))  # [T(out), T(in)]
        np.testing.assert_array_equal(np.triu(sens, k=1), 0.0)
        self.assertTrue(np.all(np.diag(sens) > 0) and np.all(sens[np.tril_indices(T, -1)] > 0))
        np.testing.assert_array_equal(jac[0, :, :, 1], 0.0)  # no mixing across the batch

    def test_source_padding_is_ignored(self):
        model = _model(positions="shaw")
        src, lengths, tgt = _batch(8)
        params = _init(model)
        logits, weights = model.apply({"params": params}, src, lengths, tgt)
        garbage = src.at[1, S - 2:].set(jnp.array([0, V - 1], jnp.int32))
        other, other_w = model.apply({"params": params}, garbage, lengths, tgt)
        chex.assert_trees_all_close(other, logits, atol=1e-6, rtol=1e-6)
        chex.assert_trees_all_close(other_w, weights, atol=1e-7)
        # Row 0 has no padding: the same change there does move its logits.
        moved, _ = model.apply({"params": params}, src.at[0, S - 2:].set(jnp.array([0, V - 1])), lengths, tgt)
        self.assertGreater(float(jnp.max(jnp.abs(moved[0] - logits[0]))), 1e-4)

    @parameterized.parameters("post", "pre")
    def test_empty_source_row(self, norm):
        model = _model(norm=norm, positions="rope")
        src, _, tgt = _batch(9)
        lengths = jnp.array([S, 0], jnp.int32)
        params = _init(model)
        logits, weights = model.apply({"params": params}, src, lengths, tgt)
        self.assertTrue(np.all(np.isfinite(np.asarray(logits))))
        np.testing.assert_array_equal(np.asarray(weights)[1], 0.0)
        np.testing.assert_allclose(np.asarray(weights)[0].sum(-1), 1.0, atol=1e-5)

        def loss(p):
            out, _ = model.apply({"params": p}, src, lengths, tgt)
            total, count = label_smoothed_cross_entropy(out, tgt, smoothing=0.1)
            return total / count

        grads = jax.jit(jax.grad(loss))(params)
        for leaf in jax.tree.leaves(grads):
            self.assertTrue(np.all(np.isfinite(np.asarray(leaf))))
        # The empty row's logits do not depend on its source tokens.
        other, _ = model.apply({"params": params}, src.at[1].set(3), lengths, tgt)
        chex.assert_trees_all_close(other[1], logits[1], atol=1e-6, rtol=1e-6)

    def test_training_overfits_with_dropout_and_smoothing(self):
        model = _model(dropout_rate=0.1, attention_dropout_rate=0.1, relu_dropout_rate=0.1,
                       num_encoder_layers=1, num_decoder_layers=1)
        src, lengths, tgt = _batch(10)
        labels = jnp.roll(tgt, -1, axis=1)
        params = _init(model)
        opt = optax.adam(1e-2)
        opt_state = opt.init(params)

        def loss_fn(p, rng):
            logits, _ = model.apply({"params": p}, src, lengths, tgt, train=True, rngs={"dropout": rng})
            total, count = label_smoothed_cross_entropy(logits, labels, smoothing=0.1)
            return total / count

        @jax.jit
        def train_step(p, s, rng):
            loss, grads = jax.value_and_grad(loss_fn)(p, rng)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        def eval_loss(p):
            logits, _ = model.apply({"params": p}, src, lengths, tgt)
            return float(label_smoothed_cross_entropy(logits, labels, smoothing=0.1)[0])

        # Dropout is on in train mode: two rngs give different losses.
        self.assertNotAlmostEqual(float(loss_fn(params, jax.random.PRNGKey(1))),
                                  float(loss_fn(params, jax.random.PRNGKey(2))), places=4)
        start = eval_loss(params)
        for i in range(20):
            params, opt_state, _ = train_step(params, opt_state, jax.random.PRNGKey(i))
        self.assertLess(eval_loss(params), 0.7 * start)

    def test_encoder_head_gates(self):
        gated = _model(head_gates="encoder", positions="alibi", num_encoder_layers=2, num_decoder_layers=1)
        plain = _model(head_gates="none", positions="alibi", num_encoder_layers=2, num_decoder_layers=1)
        src, lengths, tgt = _batch(11)
        params = _init(gated)
        for i in range(2):
            chex.assert_trees_all_close(params[f"encoder_layers_{i}"]["log_alpha"], jnp.full((N,), 3.0))
        self.assertNotIn("log_alpha_self", params["decoder_layers_0"])
        (logits, _), state = gated.apply({"params": params}, src, lengths, tgt, mutable=["intermediates"])
        l0 = state["intermediates"]
        self.assertEqual(sorted(l0), ["encoder_layers_0", "encoder_layers_1"])
        for i in range(2):
            (value,) = l0[f"encoder_layers_{i}"]["l0"]
            chex.assert_shape(value, ())
            self.assertTrue(3.0 < float(value) <= N)  # log_alpha = 3: every head nearly surely open
        # Deterministic gates at log_alpha = 3 are exactly 1: the same as no gates.
        stripped = {k: ({kk: vv for kk, vv in v.items() if kk != "log_alpha"} if k.startswith("encoder") else v)
                    for k, v in params.items()}
        expected, _ = plain.apply({"params": stripped}, src, lengths, tgt)
        chex.assert_trees_all_close(logits, expected, atol=1e-6, rtol=1e-6)
        # Closing a head (log_alpha very negative) changes the output.
        closed = jax.tree.map(lambda a: a, params)
        closed["encoder_layers_0"] = dict(params["encoder_layers_0"],
                                          log_alpha=jnp.array([-20.0, 3.0, 3.0, 3.0]))
        other, _ = gated.apply({"params": closed}, src, lengths, tgt)
        self.assertGreater(float(jnp.max(jnp.abs(other - logits))), 1e-4)
        # Training samples the gates: it needs the "gates" rng.
        with pytest.raises(flax.errors.InvalidRngError, match="gates"):
            gated.apply({"params": params}, src, lengths, tgt, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
        a, _ = gated.apply({"params": closed}, src, lengths, tgt, train=True,
                           rngs={"dropout": jax.random.PRNGKey(0), "gates": jax.random.PRNGKey(1)})
        self.assertTrue(np.all(np.isfinite(np.asarray(a))))

    def test_all_head_gates_sow_decoder_l0(self):
        model = _model(head_gates="all", num_encoder_layers=1, num_decoder_layers=1)
        src, lengths, tgt = _batch(12)
        params = _init(model)
        self.assertIn("log_alpha_self", params["decoder_layers_0"])
        self.assertIn("log_alpha_cross", params["decoder_layers_0"])
        _, state = model.apply({"params": params}, src, lengths, tgt, mutable=["intermediates"])
        self.assertEqual(sorted(state["intermediates"]), ["decoder_layers_0", "encoder_layers_0"])
        (dec,) = state["intermediates"]["decoder_layers_0"]["l0"]
        (enc,) = state["intermediates"]["encoder_layers_0"]["l0"]
        chex.assert_trees_all_close(dec, 2 * enc, rtol=1e-6)  # self + cross, same log_alpha init


class BadInputsTest(parameterized.TestCase):
    def test_bad_tokens(self):
        model = _model(positions="learned", num_encoder_layers=1, num_decoder_layers=1)
        src, lengths, tgt = _batch(0)
        params = _init(model)
        apply = lambda *a: model.apply({"params": params}, *a)
        with pytest.raises(TypeError, match="src"):
            apply(src.astype(jnp.float32), lengths, tgt)
        with pytest.raises(TypeError, match="tgt_in"):
            apply(src, lengths, tgt.astype(jnp.float32))
        with pytest.raises(TypeError, match="src_lengths"):
            apply(src, lengths.astype(jnp.float32), tgt)
        with pytest.raises(ValueError, match="src"):
            apply(src[0], lengths, tgt)
        with pytest.raises(ValueError, match="tgt_in"):
            apply(src, lengths, tgt[..., None])
        with pytest.raises(ValueError, match="src_lengths"):
            apply(src, lengths[:, None], tgt)
        with pytest.raises(ValueError, match="batch sizes differ"):
            apply(src, lengths[:1], tgt)
        with pytest.raises(ValueError, match="batch sizes differ"):
            apply(src, lengths, tgt[:1])
        long = jnp.zeros((B, 17), jnp.int32)
        with pytest.raises(ValueError, match="max_len=16"):
            apply(long, lengths, tgt)
        with pytest.raises(ValueError, match="max_len=16"):
            apply(src, lengths, long)

    def test_bad_construction(self):
        bad = [
            dict(norm="middle"), dict(positions="absolute"), dict(head_gates="decoder"), dict(dropout_rate=1.0),
            dict(attention_dropout_rate=-0.1), dict(relu_dropout_rate=True), dict(d_model=18),
            dict(vocab_size=0), dict(d_ff=0), dict(max_len=0), dict(num_encoder_layers=-1),
            dict(num_kv_heads=3), dict(head_gates="all", num_kv_heads=2), dict(shaw_max_distance=-1),
            dict(qk_head_dim=0), dict(qk_head_dim=2.5),
        ]
        for kwargs in bad:
            with pytest.raises(ValueError):
                _model(**kwargs)
        with pytest.raises(ValueError, match="multiple of num_heads"):
            _model(d_model=18)
        with pytest.raises(ValueError, match="even head dim"):
            _model(head_dim=3, positions="rope")
        with pytest.raises(ValueError, match="even head dim, got 3"):
            _model(qk_head_dim=3, positions="rope")
        with pytest.raises(ValueError, match="norm"):
            _model(norm="middle")
        # Valid neighbours construct fine.
        _model(head_dim=4, positions="rope")
        _model(num_encoder_layers=0, shaw_max_distance=0)


if __name__ == "__main__":
    absltest.main()
