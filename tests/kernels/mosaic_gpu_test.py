"""Tests for attention_jax/kernels/mosaic_gpu.py: the Hopper flash-attention forward in Pallas Mosaic GPU.

Four groups:
  * `available()` is False without a Hopper GPU and never raises; `supports_call` says no, with a reason,
    for what the kernel does not handle.
  * The forward TRACES on CPU (`jax.jit(...).trace`, which builds the kernel jaxpr with the real WGMMA,
    TMA and barrier primitives), with the right output shapes and dtypes. Lowering needs a GPU.
  * On CPU, the kernel also RUNS in jax's Mosaic GPU interpreter (`InterpretGPUParams`, a private jax
    feature; skipped if absent). The interpreter has no `layout_cast`, no transposed WGMMA operand and no
    register WGMMA operand, so in that mode the two products are plain dots; the TMA ring, the barriers,
    the tile ranges, the masks, the online softmax and the epilogue are the real ones. Compared with
    `dot_product_attention` (output, lse) at bfloat16 tolerance.
  * On a Hopper GPU only (`available()`): the compiled kernel against `dot_product_attention`.
"""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from attention_jax import AttentionMask, dot_product_attention
from attention_jax.kernels import masking, mosaic_gpu
from attention_jax.kernels.flash import EMPTY_ROW_LSE, flash_attention

TOL = 2e-2  # bfloat16: the kernel rounds P to bf16 before P V; the XLA path keeps it in float32


def _qkv(seed, b, t, s, n, k, h=64, dtype=jnp.bfloat16):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape).astype(np.float32), dtype)
                 for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))


def _interpret_params():
    try:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    except Exception:  # noqa: BLE001 - private API, may move
        return None
    return InterpretGPUParams()


@contextlib.contextmanager
def _interpreted(params):
    previous = mosaic_gpu._INTERPRET
    mosaic_gpu._INTERPRET = params
    try:
        yield
    finally:
        mosaic_gpu._INTERPRET = previous


def _xla(q, k, v, scale, is_causal, window, num_keys):
    result = dot_product_attention(q, k[:, :num_keys], v[:, :num_keys], scale=scale, is_causal=is_causal,
                                   local_window_size=window, return_lse=True)
    return result.output, result.lse


class AvailabilityTest(absltest.TestCase):

    def test_not_available_on_cpu(self):
        self.assertEqual(jax.devices()[0].platform, "cpu")
        self.assertFalse(mosaic_gpu.available())

    def test_available_never_raises(self):
        original = jax.devices
        try:
            jax.devices = lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("no backend"))
            self.assertFalse(mosaic_gpu.available())
        finally:
            jax.devices = original


class SupportsCallTest(parameterized.TestCase):

    def _spec(self, **kw):
        return masking.MaskSpec(num_queries=128, num_keys=128, padded_keys=128, **kw)

    def test_accepts_bf16_f16(self):
        for dtype in (jnp.bfloat16, jnp.float16):
            q, k, v = (jax.ShapeDtypeStruct(s, dtype) for s in ((2, 128, 4, 128), (2, 128, 2, 128), (2, 128, 2, 128)))
            self.assertEqual(mosaic_gpu.supports_call(q, k, v, self._spec(is_causal=True)), (True, ""))

    def test_rejects_float32(self):
        q, k, v = _qkv(0, 1, 128, 128, 2, 2, dtype=jnp.float32)
        ok, reason = mosaic_gpu.supports_call(q, k, v, self._spec())
        self.assertFalse(ok)
        self.assertIn("float32", reason)

    def test_rejects_segments(self):
        q, k, v = _qkv(0, 1, 128, 128, 2, 2)
        ok, reason = mosaic_gpu.supports_call(q, k, v, self._spec(has_segments=True))
        self.assertFalse(ok)
        self.assertIn("segment", reason)

    @parameterized.parameters(32, 96, 80)
    def test_rejects_odd_head_dim(self, head_dim):
        q, k, v = _qkv(0, 1, 128, 128, 2, 2, h=head_dim)
        ok, reason = mosaic_gpu.supports_call(q, k, v, self._spec())
        self.assertFalse(ok)
        self.assertIn("head dim", reason)

    def test_rejects_bad_gqa_and_mixed_dtypes(self):
        q, k, v = _qkv(0, 1, 128, 128, 3, 2)
        self.assertFalse(mosaic_gpu.supports_call(q, k, v, self._spec())[0])
        q, k, v = _qkv(0, 1, 128, 128, 2, 2)
        self.assertFalse(mosaic_gpu.supports_call(q, k.astype(jnp.float16), v, self._spec())[0])

    def test_never_raises(self):
        ok, reason = mosaic_gpu.supports_call(object(), None, 3, self._spec())
        self.assertFalse(ok)
        self.assertTrue(reason)


class TraceTest(parameterized.TestCase):
    """The kernel jaxpr builds on CPU (shape and API errors show up here); lowering needs a Hopper GPU."""

    @parameterized.parameters(
        dict(causal=False, n=4, kh=4, h=64, t=128, s=256, num_keys=256, window=None),
        dict(causal=True, n=4, kh=2, h=128, t=192, s=256, num_keys=200, window=None),  # GQA, key padding
        dict(causal=True, n=2, kh=1, h=256, t=80, s=96, num_keys=90, window=None),  # MQA, T, S not tile multiples
        dict(causal=False, n=2, kh=2, h=128, t=128, s=128, num_keys=128, window=(32, 16)),
    )
    def test_traces(self, causal, n, kh, h, t, s, num_keys, window):
        q = jax.ShapeDtypeStruct((2, t, n, h), jnp.bfloat16)
        kv = jax.ShapeDtypeStruct((2, s, kh, h), jnp.bfloat16)
        spec = masking.MaskSpec(t, num_keys, s, causal, window, False)
        self.assertTrue(mosaic_gpu.supports_call(q, kv, kv, spec)[0])
        fn = lambda q, k, v: mosaic_gpu.mosaic_gpu_forward(  # noqa: E731
            q, k, v, spec=spec, scale=0.1, empty_row_lse=EMPTY_ROW_LSE)
        try:
            traced = jax.jit(fn).trace(q, kv, kv)
        except (ImportError, NotImplementedError) as e:  # pragma: no cover - depends on the jax build
            self.skipTest(f"this jax cannot trace Pallas Mosaic GPU kernels without a GPU: {e}")
        out, lse = traced.out_info
        self.assertEqual((out.shape, out.dtype), ((2, t, n, h), jnp.dtype(jnp.bfloat16)))
        self.assertEqual((lse.shape, lse.dtype), ((2, n, t), jnp.dtype(jnp.float32)))
        self.assertIn("copy_gmem_to_smem", str(traced.jaxpr))
        if window is None:  # the kernel's WGMMA products (the other cases build the same ones)
            self.assertIn("wgmma", str(traced.jaxpr))

    def test_rejected_call_raises(self):
        q, k, v = _qkv(0, 1, 64, 64, 2, 2, dtype=jnp.float32)
        spec = masking.MaskSpec(64, 64, 64)
        with self.assertRaisesRegex(ValueError, "float32"):
            mosaic_gpu.mosaic_gpu_forward(q, k, v, spec=spec, scale=1.0, empty_row_lse=EMPTY_ROW_LSE)


class InterpretTest(parameterized.TestCase):
    """The kernel run by jax's Mosaic GPU interpreter on CPU (products as plain dots, see the module doc)."""

    def setUp(self):
        super().setUp()
        self.params = _interpret_params()
        if self.params is None:
            self.skipTest("this jax has no Mosaic GPU interpreter (InterpretGPUParams)")

    @parameterized.named_parameters(
        dict(testcase_name="dense", causal=False, n=2, kh=2, h=64, t=64, s=192, num_keys=192, window=None),
        dict(testcase_name="causal_gqa_padded", causal=True, n=2, kh=1, h=64, t=128, s=192, num_keys=150,
             window=None),
        dict(testcase_name="odd_lengths_h128", causal=True, n=1, kh=1, h=128, t=80, s=112, num_keys=100,
             window=None),
        dict(testcase_name="window", causal=False, n=1, kh=1, h=64, t=128, s=256, num_keys=256, window=(40, 8)),
        # Queries 96.. see no key (window (0, 0), only 96 keys): zero output and EMPTY_ROW_LSE.
        dict(testcase_name="empty_rows", causal=False, n=1, kh=1, h=64, t=128, s=128, num_keys=96,
             window=(0, 0)),
    )
    def test_matches_xla(self, causal, n, kh, h, t, s, num_keys, window):
        q, k, v = _qkv(1, 1, t, s, n, kh, h=h)
        spec = masking.MaskSpec(t, num_keys, s, causal, window, False)
        scale = 0.7 / np.sqrt(h)
        with _interpreted(self.params):
            out, lse = mosaic_gpu.mosaic_gpu_forward(q, k, v, spec=spec, scale=scale, empty_row_lse=EMPTY_ROW_LSE)
        chex.assert_shape(out, (1, t, n, h))
        chex.assert_shape(lse, (1, n, t))
        self.assertEqual(out.dtype, jnp.bfloat16)
        self.assertEqual(lse.dtype, jnp.float32)
        want_out, want_lse = _xla(q, k, v, scale, causal, window, num_keys)
        np.testing.assert_allclose(np.float32(out), np.float32(want_out), atol=TOL, rtol=TOL)
        live = np.asarray(want_lse) != EMPTY_ROW_LSE
        np.testing.assert_allclose(np.asarray(lse)[live], np.asarray(want_lse)[live], atol=TOL, rtol=TOL)
        np.testing.assert_array_equal(np.asarray(lse)[~live], EMPTY_ROW_LSE)
        if window == (0, 0):
            self.assertFalse(live.all())
            np.testing.assert_array_equal(np.float32(out)[:, num_keys:], 0.0)


@absltest.skipUnless(mosaic_gpu.available(), "needs a Hopper (sm90) GPU with Pallas Mosaic GPU")
class HopperNumericsTest(parameterized.TestCase):
    """The compiled kernel on a Hopper GPU, directly and through `flash_attention(kernel="mosaic_gpu")`."""

    @parameterized.parameters(
        dict(causal=False, n=4, kh=4, h=64, t=256, s=256, num_keys=256, window=None),
        dict(causal=True, n=4, kh=2, h=128, t=384, s=512, num_keys=450, window=None),
        dict(causal=True, n=4, kh=1, h=256, t=200, s=192, num_keys=170, window=None),
        dict(causal=False, n=2, kh=2, h=128, t=320, s=320, num_keys=320, window=(64, 32)),
        dict(causal=False, n=1, kh=1, h=64, t=128, s=128, num_keys=96, window=(0, 0)),
    )
    def test_forward_matches_xla(self, causal, n, kh, h, t, s, num_keys, window):
        q, k, v = _qkv(2, 2, t, s, n, kh, h=h)
        spec = masking.MaskSpec(t, num_keys, s, causal, window, False)
        scale = 1.0 / np.sqrt(h)
        out, lse = jax.jit(lambda q, k, v: mosaic_gpu.mosaic_gpu_forward(
            q, k, v, spec=spec, scale=scale, empty_row_lse=EMPTY_ROW_LSE))(q, k, v)
        want_out, want_lse = _xla(q, k, v, scale, causal, window, num_keys)
        np.testing.assert_allclose(np.float32(out), np.float32(want_out), atol=TOL, rtol=TOL)
        live = np.asarray(want_lse) != EMPTY_ROW_LSE
        np.testing.assert_allclose(np.asarray(lse)[live], np.asarray(want_lse)[live], atol=TOL, rtol=TOL)
        np.testing.assert_array_equal(np.asarray(lse)[~live], EMPTY_ROW_LSE)

    @parameterized.parameters(jnp.bfloat16, jnp.float16)
    def test_flash_attention_with_grads(self, dtype):
        q, k, v = _qkv(3, 2, 300, 260, 4, 2, h=96, dtype=dtype)

        def loss(fn, q, k, v):
            return jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)

        flash = lambda q, k, v: flash_attention(q, k, v, AttentionMask(is_causal=True), kernel="mosaic_gpu")  # noqa: E731
        xla = lambda q, k, v: dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        np.testing.assert_allclose(np.float32(flash(q, k, v)), np.float32(xla(q, k, v)), atol=TOL, rtol=TOL)
        got = jax.grad(lambda *a: loss(flash, *a), argnums=(0, 1, 2))(q, k, v)
        want = jax.grad(lambda *a: loss(xla, *a), argnums=(0, 1, 2))(q, k, v)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.float32(g), np.float32(w), atol=5e-2, rtol=5e-2)


if __name__ == "__main__":
    absltest.main()
