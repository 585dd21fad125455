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
from attention_jax.kernels.reference import reference_attention
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
    """A NaN in a value row reaches the output iff its tile is visited (P = 0 there, but 0 * NaN = NaN), and
    only lengths-dead rows are zeroed before the kernel. So a finite output proves the tile was skipped."""

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


if __name__ == "__main__":
    absltest.main()
