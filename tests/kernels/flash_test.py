"""Tests for kernels/flash.py (and the forward/backward kernels it wires).

The shared backend suite (tests/conformance.py) runs on the "flash" backend: on a GPU or TPU as compiled
kernels (`FlashConformanceTest`), and on any device in the Pallas interpreter with 16-row tiles, so the test
sequences span several tiles and every tile-skipping path runs (`FlashInterpretConformanceTest`). The tests
below it cover what is particular to the kernel: tiles that the masks leave dead are never read, padding,
dtypes and its own errors.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.api import supports
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.kernels import BlockSizes, flash_attention
from attention_jax.kernels.flash import EMPTY_ROW_LSE, default_kernel
from attention_jax.kernels.reference import reference_attention, reference_mask
from tests.dot_product import conformance

SMALL_TILES = BlockSizes(16, 16, 16, 16, 16, 16)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


class FlashConformanceTest(conformance.AttentionConformance):
    """The compiled kernels, on the hardware they are written for."""

    IMPLEMENTATION = "flash"
    PLATFORMS = ("gpu", "tpu")


class FlashInterpretConformanceTest(FlashConformanceTest):
    """The Triton-lowered kernels in the Pallas interpreter (CPU, CI)."""

    IMPLEMENTATION = FlashBackend(interpret=True, kernel="triton", block_sizes=SMALL_TILES)
    PLATFORMS = ("cpu", "gpu", "tpu")


class FlashTpuInterpretConformanceTest(FlashConformanceTest):
    """The Mosaic TPU kernels (kernels/tpu.py) in the TPU interpreter (CPU, CI)."""

    IMPLEMENTATION = FlashBackend(interpret=True, kernel="mosaic_tpu", block_sizes=SMALL_TILES)
    PLATFORMS = ("cpu", "gpu", "tpu")


def _qkv(seed, t, s, n=2, k=1, h=32, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape), dtype) for shape in ((2, t, n, h), (2, s, k, h), (2, s, k, h)))


class DeadTilesAreNotReadTest(parameterized.TestCase):
    """A NaN in a live value row (one some query attends, so it is not zeroed before the kernel) reaches a
    query tile's output iff the tile holding it is visited (P = 0 there, but 0 * NaN = NaN). So a finite row
    proves the tile was skipped. NaN in dead rows (seen by no query) is zeroed first: `DeadRowsDoNotLeakTest`.
    """

    def _run(self, q, k, v, **kwargs):
        return flash_attention(q, k, v, AttentionMask(**kwargs), block_sizes=SMALL_TILES, interpret=True,
                               kernel="triton")

    def test_causal_skips_key_tiles_after_the_diagonal(self):
        q, k, v = _qkv(0, 16, 64)
        v = v.at[:, 16:].set(jnp.nan)  # top-left causal: queries 0..15 never see keys 16..63
        out = self._run(q, k, v, is_causal=True)
        self.assertTrue(np.all(np.isfinite(np.asarray(out))))
        ref, _ = reference_attention(q, k, v.at[:, 16:].set(0.0), is_causal=True)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)

    def test_causal_skips_key_tiles_after_the_diagonal_with_live_keys(self):
        q, k, v = _qkv(4, 64, 64)
        v = v.at[:, 16:].set(jnp.nan)  # keys 16..63 are live (later queries see them): not zeroed
        out = np.asarray(self._run(q, k, v, is_causal=True))
        self.assertTrue(np.all(np.isfinite(out[:, :16])))  # query tile 0 never visits key tiles 1..3
        self.assertTrue(np.all(np.isnan(out[:, 16:])))  # ...while the rows that see them are NaN
        loss = lambda q_, k_, v_: jnp.sum(self._run(q_, k_, v_, is_causal=True))  # noqa: E731
        clean_v = v.at[:, 16:].set(0.0)
        dq = jax.grad(loss)(q, k.at[:, 16:].set(jnp.nan), clean_v)
        self.assertTrue(np.all(np.isfinite(np.asarray(dq)[:, :16])))  # the dQ kernel skips them too
        self.assertTrue(np.all(np.isnan(np.asarray(dq)[:, 16:])))
        # NaN in the live queries of tile 0: the dK/dV programs of key tiles 1..3 never visit query tile 0.
        _, dk, dv = jax.grad(loss, argnums=(0, 1, 2))(q.at[:, :16].set(jnp.nan), k, clean_v)
        for g in (dk, dv):
            self.assertTrue(np.all(np.isfinite(np.asarray(g)[:, 16:])))
            self.assertTrue(np.all(np.isnan(np.asarray(g)[:, :16])))

    def test_window_skips_key_tiles_outside_the_band(self):
        q, k, v = _qkv(1, 64, 64)
        v = v.at[:, :16].set(jnp.nan)  # queries 32..63 with left=8 never reach keys 0..15
        out = np.asarray(self._run(q, k, v, local_window_size=(8, 8)))
        self.assertTrue(np.all(np.isfinite(out[:, 32:])))
        self.assertTrue(np.all(np.isnan(out[:, :16])))  # ...while rows that do see them are NaN: the test can fail

    def test_segments_skip_tiles_of_other_sequences(self):
        q, k, v = _qkv(2, 64, 64)
        seg = jnp.asarray(np.repeat(np.arange(4), 16)[None].repeat(2, 0), jnp.int32)  # one sequence per tile
        v = v.at[:, 48:].set(jnp.nan)
        out = np.asarray(self._run(q, k, v, segment_ids=seg))
        self.assertTrue(np.all(np.isfinite(out[:, :48])))
        self.assertTrue(np.all(np.isnan(out[:, 48:])))

    def test_backward_skips_dead_tiles_too(self):
        q, k, v = _qkv(3, 16, 64)
        k = k.at[:, 16:].set(jnp.nan)
        v = v.at[:, 16:].set(jnp.nan)
        grads = jax.grad(lambda q_, k_, v_: jnp.sum(self._run(q_, k_, v_, is_causal=True)), argnums=(0, 1, 2))(q, k, v)
        for g in grads:
            g = np.asarray(g)
            self.assertTrue(np.all(np.isfinite(g[:, :16])))
        np.testing.assert_array_equal(np.asarray(grads[1])[:, 16:], 0.0)


class FlashAttentionTest(parameterized.TestCase):

    @parameterized.parameters((1, 1), (15, 17), (16, 16), (33, 100), (100, 7))
    def test_any_lengths_with_default_tiles(self, t, s):
        q, k, v = _qkv(t * 1000 + s, t, s, n=4, k=2, h=48)
        out, lse = flash_attention(q, k, v, AttentionMask(is_causal=True), interpret=True, kernel="triton",
                                   return_lse=True)
        ref, ref_lse = reference_attention(q, k, v, is_causal=True)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
        np.testing.assert_allclose(np.asarray(lse), ref_lse, atol=1e-5)

    def test_sm_scale(self):
        q, k, v = _qkv(5, 20, 24)
        out = flash_attention(q, k, v, scale=0.3, interpret=True, kernel="triton")
        ref, _ = reference_attention(q, k, v, scale=0.3)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)

    def test_dispatch_through_an_interpreting_backend_equals_direct_call(self):
        q, k, v = _qkv(6, 20, 24)
        backend = FlashBackend(interpret=True)
        ok, reason = supports(backend, q, k, v, is_causal=True)
        via = jax.jit(lambda a, b, c: __import__("attention_jax").dot_product_attention(
            a, b, c, is_causal=True, implementation=backend))(q, k, v)
        self.assertTrue(ok, reason)
        direct = flash_attention(q, k, v, AttentionMask(is_causal=True), interpret=True, kernel="triton")
        np.testing.assert_array_equal(np.asarray(via), np.asarray(direct))

    def test_default_kernel_per_platform(self):
        self.assertEqual([default_kernel(p) for p in ("tpu", "gpu", "cuda", "cpu")],
                         ["mosaic_tpu", "triton", "triton", "triton"])

    def test_mosaic_gpu_request_falls_back_to_triton_without_a_hopper(self):
        q, k, v = _qkv(11, 20, 24, h=64, dtype=jnp.bfloat16)
        causal = AttentionMask(is_causal=True)
        got = flash_attention(q, k, v, causal, kernel="mosaic_gpu", interpret=True)
        want = flash_attention(q, k, v, causal, kernel="triton", interpret=True)
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))

    def test_unsupported_calls_say_why(self):
        q, k, v = _qkv(7, 8, 8)
        backend = FlashBackend(interpret=True)
        cases = {
            "bias": dict(bias=jnp.zeros((1, 1, 8, 8))),
            "dense mask": dict(mask=jnp.ones((1, 1, 8, 8), bool)),
            "dropout": dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)),
        }
        for fragment, kwargs in cases.items():
            ok, reason = supports(backend, q, k, v, **kwargs)
            self.assertFalse(ok)
            self.assertIn(fragment, reason)
        ok, reason = supports(backend, *(np.asarray(x, np.float64) for x in (q, k, v)))
        self.assertFalse(ok)
        self.assertIn("float32/bfloat16/float16", reason)
        ok, reason = supports(backend, *_qkv(8, 8, 8, h=320))
        self.assertFalse(ok)
        self.assertIn("H=320", reason)

    def test_errors(self):
        q, k, v = _qkv(9, 8, 8)
        with _raises(TypeError, "float32, bfloat16 and float16", "float64"):
            flash_attention(*(np.asarray(x, np.float64) for x in (q, k, v)), interpret=True)
        with _raises(TypeError, "one dtype", "bfloat16"):
            flash_attention(q, k.astype(jnp.bfloat16), v, interpret=True)
        with _raises(ValueError, "head dims 1..256", "300"):
            flash_attention(*_qkv(10, 8, 8, h=300), interpret=True)
        with _raises(ValueError, "unknown kernel", "'cuda'"):
            flash_attention(q, k, v, kernel="cuda", interpret=True)
        with _raises(ValueError, "query heads N=2", "K=3"):
            flash_attention(q, jnp.zeros((2, 8, 3, 32)), jnp.zeros((2, 8, 3, 32)), interpret=True)
        with _raises(ValueError, "BlockSizes.block_q", "24"):
            BlockSizes(block_q=24)
        with _raises(TypeError, "AttentionMask", "ndarray"):
            flash_attention(q, k, v, np.ones((2, 1, 8, 8), bool), interpret=True)
        with _raises(ValueError, "no dense mask"):
            flash_attention(q, k, v, AttentionMask(jnp.ones((2, 1, 8, 8), bool)), interpret=True)
        with _raises(TypeError, "return_lse", "1"):
            flash_attention(q, k, v, interpret=True, return_lse=1)
        with _raises(ValueError, "H=0"):
            flash_attention(*_qkv(12, 8, 8, h=0), interpret=True)

    @parameterized.parameters((2, 0, 9), (2, 9, 0), (0, 9, 9))
    def test_empty_sequences_launch_nothing_and_give_zeros(self, b, t, s):
        rng = np.random.default_rng(14)
        q = jnp.asarray(rng.standard_normal((b, t, 2, 32)), jnp.float32)
        k = v = jnp.asarray(rng.standard_normal((b, s, 1, 32)), jnp.float32)
        out, lse = flash_attention(q, k, v, AttentionMask(is_causal=True), interpret=True, return_lse=True)
        self.assertEqual((out.shape, lse.shape), ((b, t, 2, 32), (b, 2, t)))
        np.testing.assert_array_equal(np.asarray(out), 0.0)
        np.testing.assert_array_equal(np.asarray(lse), EMPTY_ROW_LSE)
        grads = jax.grad(lambda q_, k_, v_: jnp.sum(flash_attention(q_, k_, v_, interpret=True) + 1.0),
                         argnums=(0, 1, 2))(q, k, v)
        for g in grads:
            np.testing.assert_array_equal(np.asarray(g), 0.0)


# Dead rows: the xla backend's contract (`dot_product/xla.py`): a query with no valid key, and a key or value
# that no valid query attends, are zeroed with `where` before any compute, so NaN/inf there never reaches
# the output or the gradients of live rows. Cases where some of those rows share a live tile with live rows.
_DEAD_ROW_CASES = dict(
    # Top-left causal with T < S: keys 20..44 are seen by nobody; keys 20..31 share key tile 1 with key 16..19.
    causal_t_lt_s=(20, 45, dict(is_causal=True)),
    # T > S: every key is live by causality alone, but query lengths [10, 45] leave keys 10.. of batch 0 dead.
    causal_t_gt_s_with_query_lengths=(45, 20, dict(is_causal=True, query_seq_lengths=np.array([10, 45]))),
    # Queries t > S - 1 + left see no key.
    window_t_gt_s=(60, 20, dict(local_window_size=(3, 0))),
    # Both window sides, with key lengths: queries past key_lengths + left are dead, keys past them too.
    window_with_key_lengths=(40, 40, dict(local_window_size=(3, 2), key_value_seq_lengths=np.array([30, 40]))),
    # Query ids 5 and key ids 9 have no partner; key id 7 exists among queries only before it (causality).
    segments=(40, 40, dict(is_causal=True, segment_ids=(
        np.array([[1] * 12 + [7] * 6 + [5] * 10 + [1] * 12, [2] * 40]),
        np.array([[1] * 10 + [9] * 10 + [7] * 20, [2] * 20 + [9] * 20])))),
    lengths=(40, 40, dict(query_seq_lengths=np.array([5, 40]), key_value_seq_lengths=np.array([33, 0]))),
)


def _as_jax(kwargs):
    """kwargs with numpy arrays (and pairs of them) as jax arrays."""
    def convert(x):
        if isinstance(x, tuple):
            return tuple(convert(y) for y in x)
        return jnp.asarray(x, jnp.int32) if isinstance(x, np.ndarray) else x
    return {name: convert(x) for name, x in kwargs.items()}


def _reference_kwargs(kwargs):
    """The keyword names of `kernels.reference.reference_mask`."""
    names = dict(query_seq_lengths="query_lengths", key_value_seq_lengths="key_lengths",
                 local_window_size="local_window")
    return {names.get(name, name): x for name, x in kwargs.items()}


def _flash_and_xla(q, k, v, kernel, kwargs, seed):
    """(output, lse, dq, dk, dv) of the interpreted kernel and of the xla backend, for random cotangents."""
    rng = np.random.default_rng(seed + 100)
    d_out = jnp.asarray(rng.standard_normal(q.shape), q.dtype)
    d_lse = jnp.asarray(rng.standard_normal((q.shape[0], q.shape[2], q.shape[1])), jnp.float32)

    def flash(q_, k_, v_):
        return flash_attention(q_, k_, v_, AttentionMask(**kwargs), block_sizes=SMALL_TILES, interpret=True,
                               kernel=kernel, return_lse=True)

    def xla(q_, k_, v_):
        result = __import__("attention_jax").dot_product_attention(q_, k_, v_, implementation="xla",
                                                                   return_lse=True, **kwargs)
        return result.output, result.lse

    results = []
    for fn in (flash, xla):
        (out, lse), vjp = jax.vjp(fn, q, k, v)
        results.append([np.asarray(x) for x in (out, lse, *vjp((d_out, d_lse)))])
    return results


class DeadRowsDoNotLeakTest(parameterized.TestCase):
    """NaN in dead queries and keys, inf in dead values: output, lse, dq, dk and dv are finite and equal xla's.

    Before the fix, flash zeroed only rows beyond the lengths, and NaN/inf behind the causal, window or
    segment masks reached live rows through 0 * NaN in P V, dS K and dS^T Q (every case below failed).
    """

    def _check(self, name, kernel):
        t, s, kwargs = _DEAD_ROW_CASES[name]
        q, k, v = _qkv(len(name), t, s, h=16)
        mask = reference_mask(2, t, s, **_reference_kwargs(kwargs))
        live_q, live_k = mask.any(axis=2), mask.any(axis=1)  # [B, T], [B, S]
        self.assertFalse(live_q.all() and live_k.all(), "the case must have dead rows")
        q = jnp.where(live_q[:, :, None, None], q, jnp.nan)
        k = jnp.where(live_k[:, :, None, None], k, jnp.nan)
        v = jnp.where(live_k[:, :, None, None], v, jnp.inf)
        got, want = _flash_and_xla(q, k, v, kernel, _as_jax(kwargs), seed=len(name))
        for label, g, w in zip(("output", "lse", "dq", "dk", "dv"), got, want):
            self.assertTrue(np.all(np.isfinite(g)), f"{label} of flash is not finite")
            self.assertTrue(np.all(np.isfinite(w)), f"{label} of xla is not finite")
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(w).max(initial=0)),
                                       err_msg=label)
        np.testing.assert_array_equal(got[2][~live_q], 0.0)  # dq of dead queries
        np.testing.assert_array_equal(got[3][~live_k], 0.0)  # dk, dv of dead keys
        np.testing.assert_array_equal(got[4][~live_k], 0.0)

    @parameterized.parameters(*_DEAD_ROW_CASES)
    def test_triton(self, name):
        self._check(name, "triton")

    @parameterized.parameters("causal_t_lt_s", "segments")
    def test_mosaic_tpu(self, name):
        self._check(name, "mosaic_tpu")


class SegmentIdsTest(parameterized.TestCase):
    """Any int32 segment id works: the kernels relabel ids to per-row ranks, so none is reserved (before,
    int32 min and min + 1 marked dead rows and a user id equal to them gave silently wrong results)."""

    @parameterized.parameters("triton", "mosaic_tpu")
    def test_extreme_ids_match_xla(self, kernel):
        lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        q_ids = np.array([[lo] * 8 + [lo + 1] * 8 + [hi] * 8 + [0] * 6, [hi] * 10 + [lo + 1] * 20])
        kv_ids = np.array([[lo + 1] * 10 + [lo] * 10 + [hi] * 10 + [0] * 7, [lo] * 17 + [lo + 1] * 20])
        kwargs = dict(segment_ids=(q_ids, kv_ids), key_value_seq_lengths=np.array([37, 30]))
        q, k, v = _qkv(21, 30, 37, h=16)
        got, want = _flash_and_xla(q, k, v, kernel, _as_jax(kwargs), seed=21)
        ref, ref_lse = reference_attention(q, k, v, **_reference_kwargs(kwargs))
        np.testing.assert_allclose(got[0], ref, atol=1e-5)
        live = np.isfinite(ref_lse)
        np.testing.assert_allclose(got[1][live], ref_lse[live], atol=1e-5)
        np.testing.assert_array_equal(got[1][~live], EMPTY_ROW_LSE)
        for label, g, w in zip(("output", "lse", "dq", "dk", "dv"), got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(w).max(initial=0)),
                                       err_msg=label)


if __name__ == "__main__":
    absltest.main()
