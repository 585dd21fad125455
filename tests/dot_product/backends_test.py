"""Tests for kernels/dispatch.py: the "blockwise", "flash" and "cudnn" backends and implementation=None.

The "cudnn" backend runs the shared suite (tests/conformance.py) on NVIDIA GPUs only; the "blockwise" and
"flash" backends run it from tests/dot_product/blockwise_test.py and tests/kernels/flash_test.py. Here: the order
implementation=None tries, its logged choice and fallback reasons, interpret_mode, and MultiHeadAttention on
every backend (against the "xla" backend).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from absl.testing import absltest, parameterized

from attention_jax import MultiHeadAttention, dot_product_attention
from attention_jax.dot_product import api as dot_product
from attention_jax.dot_product.api import AttentionCall, auto_order
from attention_jax.dot_product import interpret_mode
from attention_jax.kernels import BlockSizes
from attention_jax.dot_product.backends import interpreting
from tests.dot_product import conformance


class CudnnConformanceTest(conformance.AttentionConformance):
    """jax.nn's cuDNN attention through this library's dispatch (NVIDIA GPUs only)."""

    IMPLEMENTATION = "cudnn"
    PLATFORMS = ("gpu",)
    DTYPES = ("bfloat16", "float16")
    SUPPORTS_LSE = False
    SUPPORTS_SEGMENTS = False
    HEAD_DIMS = (64, 128, 40)


def _call(shape_q, shape_k, dtype=jnp.float32, **kwargs):
    return AttentionCall(jax.ShapeDtypeStruct(shape_q, dtype), jax.ShapeDtypeStruct(shape_k, dtype),
                         jax.ShapeDtypeStruct(shape_k, dtype), **kwargs)


class AutoOrderTest(absltest.TestCase):

    def test_cpu_prefers_xla_until_the_logits_are_large(self):
        if jax.default_backend() != "cpu":
            self.skipTest("the CPU order")
        small = _call((1, 128, 8, 64), (1, 128, 8, 64))
        self.assertEqual(auto_order(small)[:2], ("xla", "blockwise"))
        large = _call((1, 16384, 8, 64), (1, 16384, 8, 64))  # 8 GiB of float32 logits
        self.assertEqual(auto_order(large)[:2], ("blockwise", "xla"))

    def test_gpu_order(self):
        saved = dot_product._platform
        try:
            dot_product._platform = lambda: "gpu"
            self.assertEqual(auto_order(_call((1, 8, 2, 64), (1, 8, 2, 64)))[:4], ("cudnn", "xla", "flash", "blockwise"))
            large = _call((4, 16384, 8, 64), (4, 16384, 8, 64))
            self.assertEqual(auto_order(large)[:4], ("cudnn", "flash", "xla", "blockwise"))
            dot_product._platform = lambda: "tpu"
            self.assertEqual(auto_order(large)[:3], ("flash", "xla", "blockwise"))
        finally:
            dot_product._platform = saved

    def test_none_logs_its_choice_and_why_it_skipped_the_others(self):
        q = jnp.ones((1, 8, 2, 16))
        saved = dict(dot_product._AUTO_ORDER)
        try:
            dot_product._AUTO_ORDER[dot_product._platform()] = ("cudnn", "flash", "xla", "blockwise")
            dot_product._LOGGED_CHOICES.clear()
            with self.assertLogs(logger=absl_logging.get_absl_logger(), level="INFO") as logs:
                dot_product_attention(q, q, q, implementation=None)
                dot_product_attention(q, q, q, implementation=None)
        finally:
            dot_product._AUTO_ORDER.clear()
            dot_product._AUTO_ORDER.update(saved)
        self.assertLen(logs.output, 1)
        if jax.default_backend() == "cpu":
            self.assertIn("picked 'xla'", logs.output[0])
            self.assertIn("cudnn: cuDNN needs an NVIDIA GPU", logs.output[0])
            self.assertIn("flash: Pallas kernels need a GPU or TPU", logs.output[0])

    def test_dropout_falls_back_to_xla(self):
        q = jnp.ones((1, 8, 2, 16))
        for name in ("blockwise", "flash"):
            with interpret_mode():
                ok, reason = dot_product.supports(name, q, q, q, dropout_rate=0.1, dropout_rng=jax.random.key(0))
            self.assertFalse(ok)
            self.assertIn("dropout", reason)


class InterpretModeTest(absltest.TestCase):

    def test_nesting_and_errors(self):
        self.assertIsNone(interpreting())
        with interpret_mode("mosaic_tpu"):
            with interpret_mode():
                self.assertEqual(interpreting(), "triton")
            self.assertEqual(interpreting(), "mosaic_tpu")
        self.assertIsNone(interpreting())
        with pytest.raises(ValueError, match="'cuda'"):
            with interpret_mode("cuda"):
                pass
        with pytest.raises(ValueError, match="BlockSizes"):
            with interpret_mode(block_sizes=(16, 16)):
                pass


class MultiHeadAttentionBackendsTest(parameterized.TestCase):

    @parameterized.parameters("blockwise", "flash")
    def test_module_on_each_backend_matches_xla(self, implementation):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((2, 37, 32)), jnp.float32)
        seg = jnp.asarray(np.repeat([[0] * 20 + [1] * 17], 2, 0), jnp.int32)
        kwargs = dict(is_causal=True, segment_ids=seg)
        ref_module = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation="xla")
        params = ref_module.init(jax.random.key(0), x, **kwargs)
        want = ref_module.apply(params, x, **kwargs)
        with interpret_mode(block_sizes=BlockSizes(16, 16, 16, 16, 16, 16)):
            module = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation=implementation)
            got, grads = jax.value_and_grad(lambda p: jnp.sum(module.apply(p, x, **kwargs) ** 2))(params)
        ref_grads = jax.grad(lambda p: jnp.sum(ref_module.apply(p, x, **kwargs) ** 2))(params)
        np.testing.assert_allclose(float(got), float(jnp.sum(want ** 2)), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=1e-4)

    @parameterized.parameters("blockwise", "flash")
    def test_cached_decode_steps_run_on_each_backend_and_equal_the_full_pass(self, implementation):
        """One-token cache steps pass lengths, not a dense mask, so the flash kernel can run them."""
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
        full_module = MultiHeadAttention(num_heads=2, implementation="xla")
        params = full_module.init(jax.random.key(0), x, is_causal=True)
        want = full_module.apply(params, x, is_causal=True)  # [B, T, D]
        step_module = MultiHeadAttention(num_heads=2, implementation=implementation, decode=True)
        outs = []
        with interpret_mode():
            cache = step_module.init(jax.random.key(0), x)["cache"]
            for t in range(x.shape[1]):
                out, mutated = step_module.apply({**params, "cache": cache}, x[:, t:t + 1], mutable=["cache"])
                cache = mutated["cache"]
                outs.append(out)
            # A prefill (T > 1) needs the dense cache mask: it falls back to implementation=None, then steps.
            cache = step_module.init(jax.random.key(0), x)["cache"]
            prefill, mutated = step_module.apply({**params, "cache": cache}, x[:, :4], mutable=["cache"])
            step, _ = step_module.apply({**params, **mutated}, x[:, 4:5], mutable=["cache"])
        np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, axis=1)), np.asarray(want), atol=1e-5)
        np.testing.assert_allclose(np.asarray(jnp.concatenate([prefill, step], axis=1)), np.asarray(want[:, :5]),
                                   atol=1e-5)

if __name__ == "__main__":
    absltest.main()
