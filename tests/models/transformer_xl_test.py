"""Tests for attention_jax/models/transformer_xl.py and layers/relative.py against float64 numpy transcriptions of Dai et al. 2019.

arXiv:1901.02860: §3.2 (segment recurrence with stop-gradient memory), §3.3 (A^rel_{i,j}, terms (a)-(d)) and
appendix B (the relative shift).
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.layers import relative
from attention_jax.models import transformer_xl as txl

B, T, N, H, D = 2, 3, 2, 4, 8


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np_rel_shift(x):
    """Explicit gather: y[..., i, j] = x[..., i, L - 1 - d] with distance d = (L - T + i) - j, zero for d < 0."""
    *_, t, l = x.shape
    y = np.zeros_like(x)
    for i in range(t):
        for j in range(l):
            d = (l - t + i) - j
            if d >= 0:
                y[..., i, j] = x[..., i, l - 1 - d]
    return y


def _np_relative_attention(q, k, val, rel_key, u, v, mask, scale):
    """Double loop over (i, j) of A^rel = (a) + (b) + (c) + (d), float64, with explicit distances."""
    q, k, val, rel_key, u, v = (np.asarray(a, np.float64) for a in (q, k, val, rel_key, u, v))
    b_, t, n, _ = q.shape
    l = k.shape[1]
    m = l - t
    out = np.zeros(q.shape)
    for b in range(b_):
        for h in range(n):
            logits = np.zeros((t, l))
            for i in range(t):
                for j in range(l):
                    d = (m + i) - j
                    a_ = q[b, i, h] @ k[b, j, h]
                    c_ = u[h] @ k[b, j, h]
                    if d >= 0:
                        r = rel_key[l - 1 - d, h]  # W_R R_{i-j}
                        b_term, d_term = q[b, i, h] @ r, v[h] @ r
                    else:
                        b_term = d_term = 0.0
                    logits[i, j] = scale * (a_ + b_term + c_ + d_term)
            allowed = np.ones((t, l), bool) if mask is None else np.broadcast_to(mask, (b_, n, t, l))[b, h]
            for i in range(t):
                if not allowed[i].any():
                    continue
                row = np.where(allowed[i], logits[i], -np.inf)
                w = np.exp(row - row.max())
                w /= w.sum()
                out[b, i, h] = w @ val[b, :, h]
    return out


def _inputs(memory_length, seed=0):
    rng = _rng(seed)
    l = memory_length + T
    return tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in
                 ((B, T, N, H), (B, l, N, H), (B, l, N, H), (l, N, H), (N, H), (N, H)))


class RelShiftTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((3, 3), (3, 5), (1, 4), (4, 7))
    def test_matches_gather(self, t, l):
        x = _rng(1).normal(size=(2, 2, t, l)).astype(np.float32)
        got = self.variant(relative.rel_shift)(jnp.asarray(x))
        chex.assert_shape(got, x.shape)
        np.testing.assert_allclose(got, _np_rel_shift(x), atol=0)

    def test_distance_zero_is_last_column(self):
        # Each query's own position (j = M + i) must read the distance-0 column L - 1.
        t, l = 3, 5
        x = np.tile(np.arange(l, dtype=np.float32), (1, 1, t, 1))
        got = np.asarray(relative.rel_shift(jnp.asarray(x)))[0, 0]
        for i in range(t):
            self.assertEqual(got[i, l - t + i], l - 1)

    def test_bad_shapes_raise(self):
        with self.assertRaisesRegex(ValueError, r"T <= L.*\(1, 1, 4, 3\)"):
            relative.rel_shift(jnp.zeros((1, 1, 4, 3)))
        with self.assertRaisesRegex(ValueError, "rank 4"):
            relative.rel_shift(jnp.zeros((4, 3)))


class CausalMemoryMaskTest(absltest.TestCase):

    def test_values(self):
        got = np.asarray(relative.causal_memory_mask(2, 3))
        chex.assert_shape(got, (1, 1, 2, 5))
        np.testing.assert_array_equal(got[0, 0], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
        self.assertEqual(got.dtype, np.bool_)

    def test_bad_args(self):
        with self.assertRaisesRegex(ValueError, "memory_length"):
            relative.causal_memory_mask(2, -1)


class RelativeAttentionTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(memory_length=(0, 2), masked=(True, False))
    def test_matches_reference(self, memory_length, masked):
        q, k, val, rel_key, u, v = _inputs(memory_length)
        mask = relative.causal_memory_mask(T, memory_length) if masked else None
        fn = self.variant(lambda *a: relative.relative_attention(*a, mask=mask))
        got = fn(q, k, val, rel_key, u, v)
        chex.assert_shape(got, (B, T, N, H))
        want = _np_relative_attention(q, k, val, rel_key, u, v, None if mask is None else np.asarray(mask), H ** -0.5)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    def test_custom_scale_and_each_term_matters(self):
        q, k, val, rel_key, u, v = _inputs(2, seed=3)
        mask = relative.causal_memory_mask(T, 2)
        base = np.asarray(relative.relative_attention(q, k, val, rel_key, u, v, mask=mask, scale=0.7))
        want = _np_relative_attention(q, k, val, rel_key, u, v, np.asarray(mask), 0.7)
        np.testing.assert_allclose(base, want, atol=1e-5, rtol=1e-5)
        # Zeroing u, v or rel_key changes the output: every term reaches the logits.
        for zeroed in ({"u": jnp.zeros_like(u)}, {"v": jnp.zeros_like(v)}, {"rel_key": jnp.zeros_like(rel_key)}):
            args = dict(u=u, v=v, rel_key=rel_key) | zeroed
            other = relative.relative_attention(q, k, val, args["rel_key"], args["u"], args["v"], mask=mask, scale=0.7)
            self.assertGreater(np.abs(np.asarray(other) - base).max(), 1e-4)

    def test_fully_masked_rows_are_zero(self):
        q, k, val, rel_key, u, v = _inputs(1)
        mask = np.asarray(relative.causal_memory_mask(T, 1)).repeat(B, 0).repeat(N, 1)
        mask[0, 1, 2, :] = False
        out = relative.relative_attention(q, k, val, rel_key, u, v, mask=jnp.asarray(mask))
        self.assertTrue(np.isfinite(np.asarray(out)).all())
        np.testing.assert_array_equal(np.asarray(out)[0, 2, 1], 0.0)
        grads = jax.grad(lambda q: relative.relative_attention(q, k, val, rel_key, u, v, mask=jnp.asarray(mask))[0, 2, 1].sum())(q)
        np.testing.assert_array_equal(np.asarray(grads), 0.0)

    def test_check_grads(self):
        q, k, val, rel_key, u, v = _inputs(1, seed=5)
        mask = relative.causal_memory_mask(T, 1)
        fn = lambda *a: relative.relative_attention(*a, mask=mask)
        jtu.check_grads(fn, (q, k, val, rel_key, u, v), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)

    def test_bad_inputs_raise(self):
        q, k, val, rel_key, u, v = _inputs(2)
        with self.assertRaisesRegex(ValueError, r"key and value shapes differ.*\(2, 5, 2, 4\).*\(2, 4, 2, 4\)"):
            relative.relative_attention(q, k, val[:, :4], rel_key, u, v)
        with self.assertRaisesRegex(ValueError, r"rel_key must be \[L, N, H\] = \(5, 2, 4\).*\(4, 2, 4\)"):
            relative.relative_attention(q, k, val, rel_key[:4], u, v)
        with self.assertRaisesRegex(ValueError, r"u must be \[N, H\].*\(2, 3\)"):
            relative.relative_attention(q, k, val, rel_key, u[:, :3], v)
        with self.assertRaisesRegex(ValueError, r"L = M \+ T >= T"):
            relative.relative_attention(q, k[:, :2], val[:, :2], rel_key[:2], u, v)
        with self.assertRaisesRegex(ValueError, r"mask must be .*got mask.shape=\(1, 1, 3, 4\)"):
            relative.relative_attention(q, k, val, rel_key, u, v, mask=jnp.ones((1, 1, 3, 4), bool))
        with self.assertRaisesRegex(TypeError, "boolean"):
            relative.relative_attention(q, k, val, rel_key, u, v, mask=jnp.ones((1, 1, 3, 5)))


class UpdateMemoryTest(absltest.TestCase):

    def test_last_rows_and_no_gradient(self):
        memory = jnp.asarray(_rng(0).normal(size=(B, 4, D)), jnp.float32)
        hidden = jnp.asarray(_rng(1).normal(size=(B, T, D)), jnp.float32)
        got = txl.update_memory(memory, hidden, 5)
        chex.assert_shape(got, (B, 5, D))
        np.testing.assert_array_equal(got, np.concatenate([memory, hidden], 1)[:, -5:])
        np.testing.assert_array_equal(txl.update_memory(None, hidden, 2), np.asarray(hidden)[:, -2:])
        chex.assert_shape(txl.update_memory(None, hidden, 10), (B, T, D))
        chex.assert_shape(txl.update_memory(memory, hidden, 0), (B, 0, D))
        grad = jax.grad(lambda h: txl.update_memory(memory, h, 5).sum())(hidden)
        np.testing.assert_array_equal(grad, 0.0)

    def test_bad_inputs_raise(self):
        with self.assertRaisesRegex(ValueError, r"\(2, 4, 8\).*\(2, 3, 6\)"):
            txl.update_memory(jnp.zeros((2, 4, 8)), jnp.zeros((2, 3, 6)), 2)
        with self.assertRaisesRegex(ValueError, "mem_len"):
            txl.update_memory(None, jnp.zeros((2, 3, 6)), -1)


class RelativeEncodingsTest(absltest.TestCase):

    def test_distance_order(self):
        got = np.asarray(relative.relative_encodings(4, 6))
        chex.assert_shape(got, (4, 6))
        # Row r holds distance L - 1 - r: column 0 is sin(distance), column 1 cos(distance).
        np.testing.assert_allclose(got[:, 0], np.sin([3.0, 2.0, 1.0, 0.0]), atol=1e-6)
        np.testing.assert_allclose(got[:, 1], np.cos([3.0, 2.0, 1.0, 0.0]), atol=1e-6)


def _layer_and_params(seed=0):
    layer = relative.RelativeMultiHeadAttention(num_heads=N, head_dim=H, bias_init=jax.nn.initializers.normal(0.5))
    params = nn.unbox(layer.init(jax.random.PRNGKey(seed), jnp.zeros((B, T, D)), jnp.zeros((B, 2, D))))
    return layer, params


class RelativeMultiHeadAttentionTest(chex.TestCase, parameterized.TestCase):

    def _segments(self, length, seed=0):
        return jnp.asarray(_rng(seed).normal(size=(B, length, D)), jnp.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_two_segments_equal_one_pass(self):
        # Segment 2 with memory = segment 1 equals the second half of one causal pass over both (M=0, 2T).
        layer, params = _layer_and_params()
        x = self._segments(2 * T)
        seg1, seg2 = x[:, :T], x[:, T:]
        apply = self.variant(layer.apply)
        full = apply(params, x)
        chex.assert_shape(full, (B, 2 * T, D))
        memory = txl.update_memory(None, seg1, T)
        second = apply(params, seg2, memory)
        chex.assert_shape(second, (B, T, D))
        np.testing.assert_allclose(second, np.asarray(full)[:, T:], atol=1e-5, rtol=1e-5)
        first = apply(params, seg1)
        np.testing.assert_allclose(first, np.asarray(full)[:, :T], atol=1e-5, rtol=1e-5)

    def test_longer_memory_at_evaluation(self):
        layer, params = _layer_and_params()  # initialised with M = 2
        for memory_length in (2, 5):
            x = self._segments(memory_length + T, seed=memory_length)
            memory, segment = x[:, :memory_length], x[:, memory_length:]
            got = layer.apply(params, segment, memory)
            chex.assert_shape(got, (B, T, D))
            np.testing.assert_allclose(got, np.asarray(layer.apply(params, x))[:, memory_length:], atol=1e-5, rtol=1e-5)

    def test_memory_gets_no_gradient(self):
        layer, params = _layer_and_params()
        h, memory = self._segments(T), self._segments(2, seed=1)
        grad_memory, grad_h = jax.grad(lambda m, h: layer.apply(params, h, m).sum(), argnums=(0, 1))(memory, h)
        np.testing.assert_array_equal(grad_memory, 0.0)
        self.assertGreater(np.abs(np.asarray(grad_h)).max(), 0.0)

    def test_causal_by_gradient(self):
        # Output i must not depend on segment positions after i.
        layer, params = _layer_and_params()
        h, memory = self._segments(T), self._segments(2, seed=1)
        jac = jax.jacobian(lambda h: layer.apply(params, h, memory).sum(-1))(h)  # [B, T, B, T, D]
        for i in range(T):
            np.testing.assert_array_equal(np.asarray(jac)[:, i, :, i + 1:], 0.0)

    def test_memory_matters(self):
        layer, params = _layer_and_params()
        h = self._segments(T)
        a = layer.apply(params, h, self._segments(2, seed=1))
        b = layer.apply(params, h, self._segments(2, seed=2))
        self.assertGreater(np.abs(np.asarray(a) - np.asarray(b)).max(), 1e-4)

    def test_param_shapes(self):
        _, params = _layer_and_params()
        p = params["params"]
        chex.assert_shape(p["u"], (N, H))
        chex.assert_shape(p["v"], (N, H))
        chex.assert_shape(p["rel_key"]["kernel"], (D, N, H))
        chex.assert_shape(p["out"]["kernel"], (N, H, D))

    def test_bad_memory_raises(self):
        layer, params = _layer_and_params()
        with self.assertRaisesRegex(ValueError, r"shape\(memory\)=\(2, 2, 5\).*\(2, 3, 8\)"):
            layer.apply(params, self._segments(T), jnp.zeros((B, 2, 5)))


# --------------------------------------------------------------------------------------------------
# The full block and the language model (§3.2 recurrence, §3.3 block).
# --------------------------------------------------------------------------------------------------

V, LAYERS, SEG = 11, 2, 5


def _lm(mem_len=SEG, pre_norm=False, dropout_rate=0.0):
    return txl.TransformerXLLM(vocab_size=V, num_layers=LAYERS, num_heads=N, head_dim=H, d_model=D, d_inner=16,
                               mem_len=mem_len, dropout_rate=dropout_rate, pre_norm=pre_norm)


def _tokens(length, seed=0):
    return jnp.asarray(_rng(seed).integers(0, V, size=(B, length)), jnp.int32)


class TransformerXLLayerTest(chex.TestCase, parameterized.TestCase):

    @parameterized.parameters(False, True)
    def test_shapes_and_post_ln_output_is_normalised(self, pre_norm):
        layer = txl.TransformerXLLayer(num_heads=N, head_dim=H, d_inner=16, pre_norm=pre_norm)
        h = jnp.asarray(_rng(1).normal(size=(B, T, D)), jnp.float32)
        memory = jnp.asarray(_rng(2).normal(size=(B, 4, D)), jnp.float32)
        params = nn.unbox(layer.init(jax.random.PRNGKey(0), h, memory))
        out = layer.apply(params, h, memory)
        chex.assert_shape(out, (B, T, D))
        if not pre_norm:  # The paper's post-LN: the block output is a LayerNorm output (zero mean, unit variance).
            np.testing.assert_allclose(np.asarray(out).mean(-1), 0.0, atol=1e-5)
            np.testing.assert_allclose(np.asarray(out).var(-1), 1.0, atol=1e-3)

    def test_dropout_only_in_training(self):
        layer = txl.TransformerXLLayer(num_heads=N, head_dim=H, d_inner=16, dropout_rate=0.5)
        h = jnp.asarray(_rng(1).normal(size=(B, T, D)), jnp.float32)
        params = nn.unbox(layer.init(jax.random.PRNGKey(0), h))
        chex.assert_trees_all_close(layer.apply(params, h), layer.apply(params, h))
        a = layer.apply(params, h, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        b = layer.apply(params, h, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
        self.assertGreater(float(jnp.abs(a - b).max()), 1e-3)

    def test_bad_inputs_raise(self):
        layer = txl.TransformerXLLayer(num_heads=N, head_dim=H, d_inner=16)
        with self.assertRaisesRegex(ValueError, "rank"):
            layer.init(jax.random.PRNGKey(0), jnp.zeros((T, D)))
        with self.assertRaisesRegex(TypeError, "floating"):
            layer.init(jax.random.PRNGKey(0), jnp.zeros((B, T, D), jnp.int32))
        with self.assertRaisesRegex(ValueError, "d_inner"):
            txl.TransformerXLLayer(num_heads=N, head_dim=H, d_inner=0).init(jax.random.PRNGKey(0), jnp.zeros((B, T, D)))


class TransformerXLLMTest(chex.TestCase, parameterized.TestCase):

    def _params(self, model, length=SEG):
        return nn.unbox(model.init(jax.random.PRNGKey(0), _tokens(length))["params"])

    @parameterized.parameters((False, SEG), (True, SEG), (False, 2 * SEG))
    def test_two_segments_with_memory_equal_one_causal_pass(self, pre_norm, mem_len):
        model = _lm(mem_len=mem_len, pre_norm=pre_norm)
        params = self._params(model)
        tokens = _tokens(2 * SEG)
        full, _ = model.apply({"params": params}, tokens)  # [B, 2 SEG, V]
        first, memories = model.apply({"params": params}, tokens[:, :SEG])
        second, _ = model.apply({"params": params}, tokens[:, SEG:], memories)
        chex.assert_shape(second, (B, SEG, V))
        self.assertEqual(second.dtype, jnp.float32)
        chex.assert_trees_all_close(first, full[:, :SEG], atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(second, full[:, SEG:], atol=1e-5, rtol=1e-5)
        # Without the memory the second segment is scored differently: the memory carries the context.
        alone, _ = model.apply({"params": params}, tokens[:, SEG:])
        self.assertGreater(float(jnp.abs(alone - full[:, SEG:]).max()), 1e-3)

    def test_memories_are_layer_inputs_truncated_to_mem_len(self):
        model = _lm(mem_len=3)
        params = self._params(model)
        tokens = _tokens(SEG)
        _, memories = model.apply({"params": params}, tokens)
        self.assertLen(memories, LAYERS)
        for memory in memories:
            chex.assert_shape(memory, (B, 3, D))
        embedding = params["embed"]["embedding"][tokens] * np.sqrt(D)  # layer 0's input: the scaled embeddings
        chex.assert_trees_all_close(memories[0], embedding[:, -3:], atol=1e-6)
        _, state = model.apply({"params": params}, tokens, capture_intermediates=True)
        layer0_out = state["intermediates"]["layer_0"]["__call__"][0]
        chex.assert_trees_all_close(memories[1], layer0_out[:, -3:], atol=1e-6)
        # Carrying on: the next memories hold the last 3 of [memory; segment].
        _, nxt = model.apply({"params": params}, tokens[:, :2], memories)
        chex.assert_trees_all_close(nxt[0][:, :1], memories[0][:, -1:], atol=1e-6)

    def test_no_gradient_into_memory(self):
        model = _lm()
        params = self._params(model)
        memories = model.init_memories(B, SEG)
        memories = [m + jnp.asarray(_rng(3 + i).normal(size=m.shape), jnp.float32) for i, m in enumerate(memories)]

        def loss(mems):
            logits, new = model.apply({"params": params}, _tokens(SEG), mems)
            return jnp.sum(logits ** 2) + sum(jnp.sum(x ** 2) for x in new)

        grads = jax.grad(loss)(memories)
        for g in grads:
            self.assertEqual(float(jnp.abs(g).max()), 0.0)
        # Sanity: the memory does change the output, so the zero gradient is the stop-gradient's doing.
        a, _ = model.apply({"params": params}, _tokens(SEG), memories)
        b, _ = model.apply({"params": params}, _tokens(SEG), [m * 0 for m in memories])
        self.assertGreater(float(jnp.abs(a - b).max()), 1e-3)

    def test_causal_by_gradient(self):
        model = _lm()
        params = self._params(model)
        memories = model.init_memories(B, SEG)
        embedded = params["embed"]["embedding"][_tokens(SEG)]  # [B, T, D]

        def logits_from_embedding(emb, i):
            p = jax.tree.map(lambda x: x, params)
            # Feed embeddings directly: swap the table for one whose rows are this segment's embeddings.
            table = emb.reshape(B * SEG, D)
            p = {**p, "embed": {"embedding": jnp.concatenate([table, params["embed"]["embedding"]])}}
            ids = jnp.arange(B * SEG, dtype=jnp.int32).reshape(B, SEG)
            logits, _ = model.clone(vocab_size=B * SEG + V).apply({"params": p}, ids, memories)
            return logits[:, i, B * SEG:].sum()

        for i in range(SEG):
            g = jax.grad(logits_from_embedding)(embedded, i)  # [B, T, D]
            per_position = np.asarray(jnp.abs(g).sum(axis=(0, 2)))
            self.assertTrue(np.all(per_position[i + 1:] == 0.0), msg=f"query {i} sees the future: {per_position}")
            self.assertGreater(per_position[i], 0.0)
            if i:
                self.assertGreater(per_position[0], 0.0)

    def test_longer_evaluation_memory_runs_and_changes_results(self):
        model = _lm(mem_len=SEG)
        params = self._params(model)
        stream = _tokens(4 * SEG, seed=5)

        def run(mem_len):
            memories, outs = None, []
            for s in range(4):
                logits, memories = model.apply({"params": params}, stream[:, s * SEG:(s + 1) * SEG], memories,
                                               mem_len=mem_len)
                outs.append(logits)
            return memories, jnp.concatenate(outs, axis=1)

        short_mem, short = run(SEG)
        long_mem, long = run(3 * SEG)
        chex.assert_shape(short_mem[0], (B, SEG, D))
        chex.assert_shape(long_mem[0], (B, 3 * SEG, D))
        chex.assert_tree_all_finite(long)
        # Segments 0-1 see at most SEG earlier tokens either way; later ones see more with the long memory.
        chex.assert_trees_all_close(short[:, :2 * SEG], long[:, :2 * SEG], atol=1e-5)
        self.assertGreater(float(jnp.abs(short[:, 2 * SEG:] - long[:, 2 * SEG:]).max()), 1e-3)
        # With memory >= everything seen, the last segment equals one pass over the whole stream.
        full, _ = model.apply({"params": params}, stream)
        chex.assert_trees_all_close(long[:, 3 * SEG:], full[:, 3 * SEG:], atol=1e-4, rtol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_matches_no_jit(self):
        model = _lm()
        params = self._params(model)
        memories = [m + 1.0 for m in model.init_memories(B)]

        @self.variant
        def step(p, tokens, mems):
            return model.apply({"params": p}, tokens, mems)

        logits, new = step(params, _tokens(SEG), memories)
        ref_logits, ref_new = model.apply({"params": params}, _tokens(SEG), memories)
        chex.assert_trees_all_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(new, ref_new, atol=1e-6)

    def test_no_retrace_per_segment(self):
        model = _lm()
        params = self._params(model)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(p, tokens, mems):
            return model.apply({"params": p}, tokens, mems)

        mems = model.init_memories(B)
        for s in range(3):
            _, mems = step(params, _tokens(SEG, seed=s), mems)

    def test_tied_output_projection_and_param_independence_of_memory(self):
        model = _lm()
        params = self._params(model)
        names = {"/".join(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
        self.assertFalse(any("out_proj" in n or "logits" in n for n in names), names)
        other = nn.unbox(model.init(jax.random.PRNGKey(0), _tokens(SEG), model.init_memories(B, 7))["params"])
        chex.assert_trees_all_equal_shapes(params, other)

    def test_bad_inputs_raise(self):
        model = _lm()
        params = self._params(model)
        apply = lambda *a, **k: model.apply({"params": params}, *a, **k)  # noqa: E731
        with self.assertRaisesRegex(ValueError, "tokens"):
            apply(jnp.zeros((B, SEG, 1), jnp.int32))
        with self.assertRaisesRegex(TypeError, "tokens must be integer"):
            apply(jnp.zeros((B, SEG), jnp.float32))
        with self.assertRaisesRegex(ValueError, "one \\[B, M, D\\] array per layer"):
            apply(_tokens(SEG), model.init_memories(B)[:1])
        with self.assertRaisesRegex(TypeError, "list"):
            apply(_tokens(SEG), jnp.zeros((B, SEG, D)))
        with self.assertRaisesRegex(ValueError, "B=2, D=8"):
            apply(_tokens(SEG), model.init_memories(B + 1))
        with self.assertRaisesRegex(ValueError, "same shape"):
            apply(_tokens(SEG), [jnp.zeros((B, 3, D)), jnp.zeros((B, 4, D))])
        with self.assertRaisesRegex(ValueError, "mem_len"):
            apply(_tokens(SEG), mem_len=-1)
        with self.assertRaisesRegex(ValueError, "batch"):
            model.init_memories(0)


if __name__ == "__main__":
    absltest.main()
