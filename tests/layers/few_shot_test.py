"""Tests for layers/few_shot.py: CAN's cross attention module (Hou et al. 2019, arXiv:1910.07677) and the
prototypical network's prototypes and logits (Snell et al. 2017, arXiv:1703.05175).

Oracles: float64 numpy transcriptions, one (class, query) pair at a time: the cosine of eq. 1 from its
definition, the meta-learner of eq. 2, the attention of eq. 3 (with the released code's mean over positions),
eq. 4's residual attention; for the prototypical network, eq. 1's class means by a loop over the examples and
eq. 2's squared distances. The layer contract (jit, logical axes, bad shapes) is in
tests/layers/coattn_contracts.py.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.layers import few_shot as fs

B, H, W, C, R = 2, 2, 3, 4, 2  # m = 6 positions, hidden m // R = 3
M = H * W
TAU = 0.025


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _normal(seed, *shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _pair(seed, dtype=np.float32):
    return _normal(seed, B, H, W, C, dtype=dtype), _normal(seed + 100, B, H, W, C, dtype=dtype)


def _meta(seed, dtype=np.float32, scale=0.3):
    hidden = M // R
    return tuple(scale * _normal(seed + i, *shape, dtype=dtype)
                 for i, shape in enumerate(((M, hidden), (hidden,), (hidden, M), (M,))))


def _cos(u, v):
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))


def _ref_can(p, q, w1, b1, w2, b2, tau=TAU):
    """Eqs. 1-4 per pair in float64: (P', Q', A^p [B, H, W], A^q [B, H, W], R^p [B, m, m])."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    w1, b1, w2, b2 = (np.asarray(x, np.float64) for x in (w1, b1, w2, b2))
    outs = [np.zeros_like(p), np.zeros_like(q), np.zeros(p.shape[:3]), np.zeros(p.shape[:3])]
    r_all = np.zeros((p.shape[0], M, M))
    for b in range(p.shape[0]):
        pf, qf = p[b].reshape(M, -1), q[b].reshape(M, -1)
        r_p = np.array([[_cos(pf[i], qf[j]) for j in range(M)] for i in range(M)])  # eq. 1
        r_all[b] = r_p
        for k, (r, feat) in enumerate(((r_p, pf), (r_p.T, qf))):
            kernel = np.maximum(r.mean(axis=0) @ w1 + b1, 0.0) @ w2 + b2  # eq. 2
            e = np.array([np.mean(kernel * r[i]) for i in range(M)]) / tau
            a = np.exp(e - e.max())
            a /= a.sum()  # eq. 3
            outs[k][b] = (feat * (1.0 + a[:, None])).reshape(H, W, -1)  # eq. 4
            outs[2 + k][b] = a.reshape(H, W)
    return (*outs, r_all)


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


class CrossAttentionTest(parameterized.TestCase):

    def test_correlation_is_cosine_similarity(self):
        p, q = _pair(0)
        p[1, 0, 0] = 0.0  # a zero feature vector: cosine 0, no NaN
        r = fs.correlation(p, q)
        chex.assert_shape(r, (B, M, M))
        _close(r, _ref_can(p, q, *_meta(1))[4])
        np.testing.assert_array_equal(np.asarray(r)[1, 0], 0.0)
        np.testing.assert_allclose(fs.correlation(q, p), np.swapaxes(r, 1, 2), rtol=1e-6, atol=1e-6)  # R^q
        np.testing.assert_allclose(np.diagonal(fs.correlation(q, q), axis1=1, axis2=2), 1.0, rtol=1e-6)
        scaled = fs.correlation(p * 3.0, q * 0.5)  # invariant to the features' norms
        np.testing.assert_allclose(scaled, r, rtol=1e-5, atol=1e-6)

    def test_module_function_matches_float64_reference(self):
        p, q = _pair(2)
        weights = _meta(3, scale=1.0)
        got = fs.cross_attention_module(p, q, *weights, temperature=TAU)
        chex.assert_shape(got, [(B, H, W, C), (B, H, W, C), (B, H, W), (B, H, W)])
        self.assertEqual(tuple(x.dtype for x in got), (jnp.float32,) * 4)
        want = _ref_can(p, q, *weights)
        for g, ref in zip(got, want[:4]):
            _close(g, ref)
        # The temperature matters: another tau gives other attention.
        other = fs.cross_attention_module(p, q, *weights, temperature=1.0)[2]
        self.assertGreater(float(jnp.max(jnp.abs(other - got[2]))), 1e-3)

    def test_attention_sums_to_one_and_outputs_are_residual(self):
        p, q = _pair(4)
        p_out, q_out, a_p, a_q = fs.cross_attention_module(p, q, *_meta(5, scale=1.0))
        np.testing.assert_allclose(np.sum(a_p, axis=(1, 2)), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.sum(a_q, axis=(1, 2)), 1.0, rtol=1e-6)
        self.assertTrue(np.all(np.asarray(a_p) > 0) and np.all(np.asarray(a_q) > 0))
        np.testing.assert_allclose(p_out, p * (1.0 + np.asarray(a_p)[..., None]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(q_out, q * (1.0 + np.asarray(a_q)[..., None]), rtol=1e-6, atol=1e-6)
        # A = 0 would be the identity: P' - P is exactly P A, nothing else.
        np.testing.assert_allclose(np.asarray(p_out) - p, p * np.asarray(a_p)[..., None], rtol=1e-5, atol=1e-6)
        self.assertGreater(float(np.max(np.abs(np.asarray(p_out) - p))), 1e-3)

    def test_meta_fusion_attention_weights_rows_by_the_kernel(self):
        """A hand-built R and meta-learner: w = b_2 (W_2 = 0), so e_i = mean_j(b_2[j] R[i, j])."""
        r = _normal(6, 1, M, M)
        w1, b1 = np.zeros((M, 3), np.float32), np.zeros(3, np.float32)
        w2, b2 = np.zeros((3, M), np.float32), _normal(7, M)
        a = fs.meta_fusion_attention(r, w1, b1, w2, b2, temperature=0.5)
        e = (r[0] * b2[None, :]).mean(axis=1) / 0.5
        want = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
        np.testing.assert_allclose(a[0], want, rtol=1e-5, atol=1e-6)

    def test_module_uses_its_meta_learner(self):
        p, q = _pair(8)
        module = fs.CrossAttentionModule(reduction=R, temperature=TAU)
        variables = module.init(jax.random.PRNGKey(0), p, q)
        params = jax.tree_util.tree_map(np.asarray, dict(nn.unbox(variables)["params"]))
        chex.assert_shape([params[k] for k in ("w1", "b1", "w2", "b2")], [(M, M // R), (M // R,), (M // R, M), (M,)])
        params = {k: v + 0.5 * _normal(9, *v.shape) for k, v in params.items()}  # non-zero biases too
        got = module.apply({"params": params}, p, q, return_attention=True)
        want = _ref_can(p, q, params["w1"], params["b1"], params["w2"], params["b2"])
        for g, ref in zip(got, want[:4]):
            _close(g, ref)
        self.assertLen(module.apply({"params": params}, p, q), 2)

    def test_bfloat16_inputs_keep_their_dtype(self):
        p, q = _pair(10)
        out = fs.cross_attention_module(p.astype(jnp.bfloat16), q.astype(jnp.bfloat16), *_meta(11))
        self.assertEqual(tuple(x.dtype for x in out), (jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32))

    def test_check_grads_float64(self):
        with jax.enable_x64(True):
            p, q = _pair(12, np.float64)
            weights = _meta(13, np.float64, scale=1.0)
            self.assertEqual(fs.cross_attention_module(p, q, *weights)[0].dtype, jnp.float64)
            # A milder temperature keeps the finite differences well conditioned.
            jax.test_util.check_grads(lambda *a: fs.cross_attention_module(*a, temperature=0.5), (p, q, *weights),
                                      order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
            jax.test_util.check_grads(lambda *a: fs.cross_attention_module(*a, temperature=TAU), (p, q, *weights),
                                      order=1, modes=("rev",), eps=1e-7, atol=1e-5, rtol=1e-5)

    def test_zero_feature_vector_gives_finite_grads(self):
        p, q = _pair(14)
        p[0, 1, 2] = 0.0
        grads = jax.grad(lambda p, q: sum(jnp.sum(x) for x in fs.cross_attention_module(p, q, *_meta(15))),
                         argnums=(0, 1))(p, q)
        for g in grads:
            self.assertTrue(np.all(np.isfinite(g)))

    def test_jit_equals_eager(self):
        p, q = _pair(16)
        weights = _meta(17)
        chex.assert_trees_all_close(jax.jit(fs.cross_attention_module)(p, q, *weights),
                                    fs.cross_attention_module(p, q, *weights), rtol=1e-5, atol=1e-5)

    def test_empty_maps(self):
        p = np.zeros((B, 0, W, C), np.float32)
        hidden = np.zeros((0, 1), np.float32)
        out = fs.cross_attention_module(p, p, hidden, np.zeros(1, np.float32), hidden.T, np.zeros(0, np.float32))
        chex.assert_shape(out, [(B, 0, W, C), (B, 0, W, C), (B, 0, W), (B, 0, W)])

    def test_bad_inputs_raise(self):
        p, q = _pair(18)
        weights = _meta(19)
        with _raises(ValueError, "query_feat", (B, H, W - 1, C)):
            fs.cross_attention_module(p, q[:, :, 1:], *weights)
        with _raises(ValueError, "class_feat", (B, H, W)):
            fs.cross_attention_module(p[..., 0], q, *weights)
        with _raises(ValueError, "w1", (M - 1, M // R)):
            fs.cross_attention_module(p, q, weights[0][1:], *weights[1:])
        with _raises(ValueError, "r must be", (B, M, M - 1)):
            fs.meta_fusion_attention(np.zeros((B, M, M - 1), np.float32), *weights)
        for bad in (0.0, -1.0, True):
            with _raises(ValueError, "temperature"):
                fs.cross_attention_module(p, q, *weights, temperature=bad)
        with _raises(ValueError, "reduction", M + 1):
            fs.CrossAttentionModule(reduction=M + 1).init(jax.random.PRNGKey(0), p, q)
        with _raises(ValueError, "reduction"):
            fs.CrossAttentionModule(reduction=0).init(jax.random.PRNGKey(0), p, q)
        with _raises(TypeError, "query_feat", "floating"):
            fs.correlation(p, q.astype(np.int32))
        with _raises(TypeError, "return_attention"):
            fs.CrossAttentionModule(reduction=R).init(jax.random.PRNGKey(0), p, q, return_attention="yes")


# ----------------------------------------------------------------------------------------------------------
# Prototypical networks.

N_WAY, K_SHOT, D, T = 3, 2, 5, 4
LABELS = np.array([[0, 1, 2, 0, 1, 2], [2, 2, 0, 1, 1, 7]])  # row 1: a label outside [0, N) in the last slot
SUPPORT_MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 0, 1, 1, 1, 1]], bool)  # row 0 keeps one example of class 2


def _ref_prototypes(support, labels, mask, n):
    support = np.asarray(support, np.float64)
    out = np.zeros((support.shape[0], n, support.shape[-1]))
    for b in range(support.shape[0]):
        for k in range(n):
            rows = [support[b, s] for s in range(support.shape[1]) if labels[b, s] == k and mask[b, s]]
            if rows:
                out[b, k] = np.mean(rows, axis=0)  # eq. 1
    return out


def _ref_logits(queries, protos):
    queries, protos = np.asarray(queries, np.float64), np.asarray(protos, np.float64)
    return -np.array([[[np.sum((x - c) ** 2) for c in protos[b]] for x in queries[b]]
                      for b in range(queries.shape[0])])  # -d of eq. 2


class PrototypicalTest(parameterized.TestCase):

    def test_labelled_prototypes_are_class_means(self):
        support = _normal(30, 2, 6, D)
        for mask in (None, SUPPORT_MASK):
            got = fs.prototypes(support, LABELS, N_WAY, mask)
            chex.assert_shape(got, (2, N_WAY, D))
            want = _ref_prototypes(support, LABELS, np.ones((2, 6), bool) if mask is None else mask, N_WAY)
            _close(got, want)

    def test_episode_layout_equals_labelled_layout(self):
        support = _normal(31, N_WAY, K_SHOT, D)
        mask = np.array([[1, 1], [1, 0], [0, 0]], bool)  # class 2 has no example: a zero prototype
        got = fs.prototypes(support, mask=mask)
        chex.assert_shape(got, (N_WAY, D))
        np.testing.assert_allclose(got[:2], [support[0].mean(0), support[1, 0]], rtol=1e-6)
        np.testing.assert_array_equal(got[2], 0.0)
        labels = np.repeat(np.arange(N_WAY), K_SHOT)[None]
        flat = fs.prototypes(support.reshape(1, -1, D), labels, N_WAY, mask.reshape(1, -1))
        np.testing.assert_allclose(flat[0], got, rtol=1e-6, atol=1e-7)
        batched = fs.prototypes(np.stack([support, support]), mask=np.stack([mask, mask]))
        np.testing.assert_allclose(batched, np.stack([got, got]), rtol=1e-6)

    def test_logits_are_negative_squared_distances_and_argmax_is_nearest(self):
        queries, protos = _normal(32, 2, T, D), _normal(33, 2, N_WAY, D)
        logits = fs.prototypical_logits(queries, protos)
        chex.assert_shape(logits, (2, T, N_WAY))
        self.assertEqual(logits.dtype, jnp.float32)
        want = _ref_logits(queries, protos)
        _close(logits, want)
        np.testing.assert_array_equal(np.argmax(logits, -1), np.argmin(-want, -1))
        # eq. 2's probabilities are the softmax of the logits.
        probs = jax.nn.softmax(logits, axis=-1)
        np.testing.assert_allclose(probs, np.exp(want) / np.exp(want).sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
        # A query placed on a prototype picks it, with logit exactly 0.
        on = fs.prototypical_logits(protos[:, 1:2] + 0.0, protos)
        np.testing.assert_array_equal(np.argmax(on, -1), 1)
        np.testing.assert_array_equal(np.asarray(on)[:, 0, 1], 0.0)
        unbatched = fs.prototypical_logits(queries[0], protos[0])
        np.testing.assert_allclose(unbatched, logits[0], rtol=1e-6)

    def test_class_mask_hides_classes_and_their_nan(self):
        queries, protos = _normal(34, 2, T, D), _normal(35, 2, N_WAY, D)
        class_mask = np.array([[1, 0, 1], [1, 1, 1]], bool)
        dirty = protos.copy()
        dirty[0, 1] = np.nan
        fn = lambda q, c: fs.prototypical_logits(q, c, class_mask)  # noqa: E731
        logits = fn(queries, dirty)
        self.assertTrue(np.all(np.isfinite(logits)))
        _close(np.asarray(logits)[class_mask[:, None, :].repeat(T, 1)],
               _ref_logits(queries, protos)[class_mask[:, None, :].repeat(T, 1)])
        self.assertEqual(float(np.asarray(jax.nn.softmax(logits, -1))[0, :, 1].max()), 0.0)
        grads = jax.grad(lambda q, c: jnp.sum(jax.nn.log_softmax(fn(q, c), -1) * class_mask[:, None, :]),
                         argnums=(0, 1))(queries, dirty)
        for g in grads:
            self.assertTrue(np.all(np.isfinite(g)))
        np.testing.assert_array_equal(np.asarray(grads[1])[0, 1], 0.0)

    def test_nan_in_masked_support_leaks_nowhere_and_empty_class_is_zero(self):
        support = _normal(36, 2, 6, D)
        dirty = np.where(SUPPORT_MASK[..., None], support, np.nan).astype(np.float32)
        queries = _normal(37, 2, T, D)
        only_row0 = SUPPORT_MASK & np.array([True, False])[:, None]  # row 1: no example of any class

        def loss(s, q, mask):
            return jnp.sum(jax.nn.log_softmax(fs.prototypical_logits(q, fs.prototypes(s, LABELS, N_WAY, mask)), -1))

        for mask in (SUPPORT_MASK, only_row0):
            clean_grads = jax.grad(loss, argnums=(0, 1))(np.where(mask[..., None], support, 0.0), queries, mask)
            grads = jax.grad(loss, argnums=(0, 1))(np.where(mask[..., None], support, np.nan).astype(np.float32),
                                                   queries, mask)
            for g, want in zip(grads, clean_grads):
                self.assertTrue(np.all(np.isfinite(g)))
                np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(grads[0])[~mask], 0.0)
        protos = fs.prototypes(dirty, LABELS, N_WAY, only_row0)
        np.testing.assert_array_equal(np.asarray(protos)[1], 0.0)
        self.assertTrue(np.all(np.isfinite(protos)))

    def test_empty_support(self):
        got = fs.prototypes(np.zeros((2, 0, D), np.float32), np.zeros((2, 0), np.int32), N_WAY)
        np.testing.assert_array_equal(got, np.zeros((2, N_WAY, D)))
        logits = fs.prototypical_logits(np.zeros((2, 0, D), np.float32), got)
        chex.assert_shape(logits, (2, 0, N_WAY))

    def test_check_grads_float64(self):
        with jax.enable_x64(True):
            support, queries = _normal(38, 2, 6, D, dtype=np.float64), _normal(39, 2, T, D, dtype=np.float64)
            fn = lambda s, q: fs.prototypical_logits(q, fs.prototypes(s, LABELS, N_WAY, SUPPORT_MASK))  # noqa: E731
            self.assertEqual(fn(support, queries).dtype, jnp.float64)
            jax.test_util.check_grads(fn, (support, queries), order=1, modes=("rev",), eps=1e-6, atol=1e-6,
                                      rtol=1e-6)

    def test_jit_equals_eager(self):
        support, queries = _normal(40, 2, 6, D), _normal(41, 2, T, D)

        def fn(s, q):
            return fs.prototypical_logits(q, fs.prototypes(s, LABELS, N_WAY, SUPPORT_MASK))

        chex.assert_trees_all_close(jax.jit(fn)(support, queries), fn(support, queries), rtol=1e-5, atol=1e-5)

    def test_bad_inputs_raise(self):
        support, queries = _normal(42, 2, 6, D), _normal(43, 2, T, D)
        with _raises(ValueError, "labels", (2, 5)):
            fs.prototypes(support, LABELS[:, 1:], N_WAY)
        with _raises(ValueError, "num_classes"):
            fs.prototypes(support, LABELS)
        with _raises(ValueError, "num_classes"):
            fs.prototypes(support, num_classes=N_WAY)
        with _raises(ValueError, "num_classes"):
            fs.prototypes(support, LABELS, -1)
        with _raises(ValueError, "mask", (2, 5)):
            fs.prototypes(support, LABELS, N_WAY, SUPPORT_MASK[:, 1:])
        with _raises(ValueError, "support", (2, 6)):
            fs.prototypes(support[..., 0], LABELS, N_WAY)
        with _raises(ValueError, "protos", (2, N_WAY, D - 1)):
            fs.prototypical_logits(queries, _normal(44, 2, N_WAY, D - 1))
        with _raises(ValueError, "protos", (1, N_WAY, D)):
            fs.prototypical_logits(queries, _normal(44, 1, N_WAY, D))
        with _raises(ValueError, "protos", (N_WAY, D)):
            fs.prototypical_logits(queries, _normal(44, N_WAY, D))
        with _raises(ValueError, "class_mask", (2, N_WAY - 1)):
            fs.prototypical_logits(queries, _normal(44, 2, N_WAY, D), np.ones((2, N_WAY - 1), bool))
        with _raises(TypeError, "labels", "integer"):
            fs.prototypes(support, LABELS.astype(np.float32), N_WAY)
        with _raises(TypeError, "mask", "bool"):
            fs.prototypes(support, LABELS, N_WAY, SUPPORT_MASK.astype(np.int32))


if __name__ == "__main__":
    absltest.main()
