"""Tests for `AttentionMask` (attention_jax/core/masks.py), the one mask spec of dot-product attention.

Reference: a numpy mask written out position by position (`_reference`), independent of the library; the
backends' use of the spec is covered by the conformance suite (tests/dot_product/conformance.py).
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core import masks
from attention_jax.core.masks import AttentionMask

B, T, S, N, K, H = 2, 5, 7, 4, 2, 8


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(b=B, t=T, s=S, n=N, k=K, h=H):
    return (jax.ShapeDtypeStruct((b, t, n, h), jnp.float32), jax.ShapeDtypeStruct((b, s, k, h), jnp.float32),
            jax.ShapeDtypeStruct((b, s, k, h), jnp.float32))


def _reference(b, n, t, s, dense=None, is_causal=False, window=None, q_len=None, kv_len=None, q_seg=None,
               kv_seg=None):
    """bool [B, N, T, S], one position at a time."""
    out = np.ones((b, n, t, s), bool)
    for ib in range(b):
        for ih in range(n):
            for it in range(t):
                for js in range(s):
                    ok = True
                    if dense is not None:
                        ok &= bool(dense[min(ib, dense.shape[0] - 1), min(ih, dense.shape[1] - 1), it, js])
                    if is_causal:
                        ok &= js <= it
                    if window is not None:
                        ok &= window[0] is None or js >= it - window[0]
                        ok &= window[1] is None or js <= it + window[1]
                    if q_len is not None:
                        ok &= it < q_len[ib]
                    if kv_len is not None:
                        ok &= js < kv_len[ib]
                    if q_seg is not None:
                        ok &= q_seg[ib, it] == kv_seg[ib, js]
                    out[ib, ih, it, js] = ok
    return out


def _sources(seed):
    rng = np.random.default_rng(seed)
    return dict(
        dense=rng.random((B, 1, T, S)) < 0.8,
        q_len=np.array([5, 3], np.int32), kv_len=np.array([6, 7], np.int32),
        q_seg=np.sort(rng.integers(0, 2, (B, T)), 1).astype(np.int32),
        kv_seg=np.sort(rng.integers(0, 2, (B, S)), 1).astype(np.int32),
    )


class DenseMaskTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name="nothing", use=(), causal=False, window=None),
        dict(testcase_name="causal", use=(), causal=True, window=None),
        dict(testcase_name="window_int", use=(), causal=False, window=1),
        dict(testcase_name="window_left", use=(), causal=True, window=(2, None)),
        dict(testcase_name="lengths", use=("q_len", "kv_len"), causal=False, window=None),
        dict(testcase_name="segments", use=("seg",), causal=False, window=None),
        dict(testcase_name="everything", use=("dense", "q_len", "kv_len", "seg"), causal=True, window=(3, 1)),
    )
    def test_matches_reference(self, use, causal, window):
        src = _sources(0)
        spec = AttentionMask(
            jnp.asarray(src["dense"]) if "dense" in use else None, is_causal=causal, local_window_size=window,
            query_seq_lengths=jnp.asarray(src["q_len"]) if "q_len" in use else None,
            key_value_seq_lengths=jnp.asarray(src["kv_len"]) if "kv_len" in use else None,
            segment_ids=(jnp.asarray(src["q_seg"]), jnp.asarray(src["kv_seg"])) if "seg" in use else None,
        ).bind(*_inputs())
        pair = window if not isinstance(window, int) else (window, window)
        want = _reference(B, N, T, S, src["dense"] if "dense" in use else None, causal, pair,
                          src["q_len"] if "q_len" in use else None, src["kv_len"] if "kv_len" in use else None,
                          src["q_seg"] if "seg" in use else None, src["kv_seg"] if "seg" in use else None)
        got = self.variant(lambda m: m.dense_mask())(spec)  # the spec crosses jit as a pytree
        if not use and not causal and window is None:
            self.assertIsNone(got)
            self.assertTrue(spec.masks_nothing)
            return
        got = np.broadcast_to(np.asarray(got), want.shape)
        np.testing.assert_array_equal(got, want)

    def test_mask_for_chunks_rows_and_padding(self):
        src = _sources(1)
        spec = AttentionMask(jnp.asarray(src["dense"]), is_causal=True, query_seq_lengths=jnp.asarray(src["q_len"]),
                             segment_ids=(jnp.asarray(src["q_seg"]), jnp.asarray(src["kv_seg"]))).bind(*_inputs())
        full = np.broadcast_to(np.asarray(spec.dense_mask()), (B, N, T, S))
        # A key chunk that runs past S: the padding keys are masked, the rest equals the full mask's columns.
        k_pos = jnp.arange(4, 10)
        chunk = np.broadcast_to(np.asarray(spec.mask_for(k_pos=k_pos)), (B, N, T, 6))
        np.testing.assert_array_equal(chunk[..., :3], full[..., 4:7])
        np.testing.assert_array_equal(chunk[..., 3:], False)
        # One row of one batch entry and head, as attention_weights reads it.
        row = spec.mask_for(q_pos=jnp.array([3]), batch=jnp.int32(1), head=jnp.int32(2))
        self.assertEqual(row.shape, (1, 1, 1, S))
        np.testing.assert_array_equal(np.asarray(row)[0, 0, 0], full[1, 2, 3])
        # Query positions past T see nothing.
        np.testing.assert_array_equal(np.asarray(spec.mask_for(q_pos=jnp.array([T, T + 3]))), False)

    def test_window_bounds_fold_causality(self):
        self.assertEqual(masks.window_bounds(True, None), (None, 0))
        self.assertEqual(masks.window_bounds(True, (3, 5)), (3, 0))
        self.assertEqual(masks.window_bounds(False, (3, None)), (3, None))
        self.assertEqual(AttentionMask(local_window_size=2).local_window_size, (2, 2))  # jax.nn's int form


class BindTest(absltest.TestCase):

    def test_bind_once_then_identity(self):
        spec = AttentionMask(is_causal=True, key_value_seq_lengths=jnp.array([3, 7]))
        bound = spec.bind(*_inputs())
        self.assertIsNone(spec.shape)
        self.assertEqual(bound.shape, (B, N, T, S))
        self.assertIs(bound.bind(*_inputs()), bound)  # same shapes and dtypes: nothing checked again
        rebound = bound.bind(*_inputs(t=6))  # other inputs: checked again
        self.assertEqual(rebound.shape, (B, N, 6, S))
        self.assertEqual(spec.fit(B, N, T, S).shape, (B, N, T, S))

    def test_pytree_leaves_and_static_part(self):
        spec = AttentionMask(is_causal=True, segment_ids=jnp.zeros((B, T), jnp.int32),
                             local_window_size=(1, None)).bind(*_inputs(s=T))
        leaves, treedef = jax.tree.flatten(spec)
        self.assertLen(leaves, 2)  # q and kv ids; causal, window and shapes are static
        again = jax.tree.unflatten(treedef, leaves)
        self.assertEqual((again.is_causal, again.local_window_size, again.shape),
                         (True, (1, None), (B, N, T, T)))
        traced = jax.jit(lambda m: jax.tree.map(lambda x: x + 1, m))(spec)
        np.testing.assert_array_equal(np.asarray(traced.kv_segment_ids), 1)

    def test_bad_sources_raise_with_names(self):
        cases = [
            (lambda: AttentionMask(is_causal="no"), TypeError, ["is_causal", "'no'"]),
            (lambda: AttentionMask(is_causal=1), TypeError, ["is_causal", "int"]),
            (lambda: AttentionMask([[True]]), TypeError, ["mask", "list"]),
            (lambda: AttentionMask(jnp.ones((1, 1, T, S), jnp.int32)), TypeError, ["mask", "int32"]),
            (lambda: AttentionMask(jnp.ones((T, S), bool)), ValueError, ["mask", "rank 4", "(5, 7)"]),
            (lambda: AttentionMask(key_value_seq_lengths=[3, 4]), TypeError, ["key_value_seq_lengths", "list"]),
            (lambda: AttentionMask(query_seq_lengths=jnp.ones((B,))), TypeError, ["query_seq_lengths", "float32"]),
            (lambda: AttentionMask(query_seq_lengths=jnp.ones((B, 1), jnp.int32)), ValueError,
             ["query_seq_lengths", "rank 1", "(2, 1)"]),
            (lambda: AttentionMask(segment_ids=[[0, 1]]), TypeError, ["segment_ids", "list"]),
            (lambda: AttentionMask(segment_ids=(jnp.zeros((B, T), jnp.int32),) * 3), ValueError, ["pair", "3"]),
            (lambda: AttentionMask(local_window_size=-1), ValueError, ["local_window_size", "-1"]),
            (lambda: AttentionMask(local_window_size=(2, -3)), ValueError, ["right", "-3"]),
            (lambda: AttentionMask(local_window_size=2.0), ValueError, ["local_window_size", "2.0"]),
        ]
        for fn, exc, fragments in cases:
            with _raises(exc, *fragments):
                fn()

    def test_bad_fit_raises_with_shapes(self):
        cases = [
            (AttentionMask(jnp.ones((B, 3, T, S), bool)), ["mask", "(2, 3, 5, 7)", "N=4"]),
            (AttentionMask(jnp.ones((B, 1, S, T), bool)), ["mask", "(2, 1, 7, 5)", "T=5", "S=7"]),
            (AttentionMask(key_value_seq_lengths=jnp.ones((3,), jnp.int32)), ["key_value_seq_lengths", "(3,)"]),
            (AttentionMask(segment_ids=jnp.zeros((B, T), jnp.int32)), ["single segment_ids", "T=5", "S=7"]),
            (AttentionMask(segment_ids=(jnp.zeros((B, T), jnp.int32), jnp.zeros((B, T), jnp.int32))),
             ["kv_segment_ids", "(2, 7)", "(2, 5)"]),
        ]
        for spec, fragments in cases:
            with _raises(ValueError, *fragments):
                spec.bind(*_inputs())
            with _raises(ValueError, *fragments):
                spec.fit(B, N, T, S)

    def test_unbound_views_raise(self):
        with _raises(ValueError, "not bound"):
            AttentionMask(is_causal=True).dense_mask()


class InputChecksTest(absltest.TestCase):

    def test_check_attention_inputs(self):
        q, k, v = _inputs()
        self.assertEqual(masks.check_attention_inputs(q, k, v), (B, T, N, H, S, K))
        cases = [
            (lambda: masks.check_attention_inputs([[1.0]], k, v), TypeError, ["query", "list"]),
            (lambda: masks.check_attention_inputs(q, k, jnp.zeros((B, S, K, H + 1))), ValueError,
             ["key and value shapes differ"]),
            (lambda: masks.check_attention_inputs(*_inputs(h=0)), ValueError, ["H=0"]),
            (lambda: masks.check_attention_inputs(*_inputs(k=3)), ValueError, ["N=4", "K=3"]),
            (lambda: masks.check_attention_inputs(*_inputs(k=0)), ValueError, ["K=0"]),
            (lambda: masks.check_attention_inputs(jnp.zeros((B, T, N, H), jnp.int32), k, v), TypeError,
             ["query", "int32"]),
        ]
        for fn, exc, fragments in cases:
            with _raises(exc, *fragments):
                fn()

    def test_check_lengths(self):
        masks.check_lengths("key_lengths", jnp.array([1, 2]), 2)
        with _raises(ValueError, "key_lengths", "(3,)", "(2,)"):
            masks.check_lengths("key_lengths", jnp.array([1, 2, 3]), 2)
        with _raises(TypeError, "key_lengths", "list"):
            masks.check_lengths("key_lengths", [1, 2], 2)
        with _raises(TypeError, "key_lengths", "float32"):
            masks.check_lengths("key_lengths", jnp.array([1.0, 2.0]), 2)

    def test_scale(self):
        self.assertAlmostEqual(masks.attention_scale(None, 16), 0.25)
        self.assertEqual(masks.attention_scale(2, 16), 2.0)
        for bad in (True, "0.5", float("inf"), jnp.float32(0.5)):
            with _raises(ValueError, "scale"):
                masks.attention_scale(bad, 16)

    def test_empty_attention(self):
        q = jnp.zeros((2, 3, 4, 8), jnp.bfloat16)
        v = jnp.zeros((2, 0, 2, 8), jnp.bfloat16)
        out, lse = masks.empty_attention(q, v)
        chex.assert_shape([out, lse], [(2, 3, 4, 8), (2, 4, 3)])
        self.assertEqual(out.dtype, jnp.bfloat16)
        np.testing.assert_array_equal(np.asarray(lse), masks.alignment.EMPTY_ROW_LSE)


if __name__ == "__main__":
    absltest.main()
