"""Tests for the backend table of attention_jax/dot_product: the built-in backends, implementation=None and
the backend objects' options.

The "cudnn" backend runs the shared suite (tests/dot_product/conformance.py) on NVIDIA GPUs only; the
"blockwise" and "flash" backends run it from tests/dot_product/blockwise_test.py and
tests/kernels/flash_test.py. Here: the order implementation=None tries, its logged choice and fallback
reasons, the flash backend's explicit interpretation option (it replaced the `interpret_mode()` context
manager), arguments checked once per call, and MultiHeadAttention on every backend (against the "xla" backend).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from absl.testing import absltest, parameterized

from attention_jax import MultiHeadAttention, dot_product_attention
from attention_jax.core import masks
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product import api as dot_product
from attention_jax.dot_product.api import AttentionCall, auto_order
from attention_jax.dot_product.blockwise import blockwise_attention
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.kernels import BlockSizes, platform
from tests.dot_product import conformance

SMALL_TILES = BlockSizes(16, 16, 16, 16, 16, 16)


class CudnnConformanceTest(conformance.AttentionConformance):
    """jax.nn's cuDNN attention through this library's dispatch (NVIDIA GPUs only)."""

    IMPLEMENTATION = "cudnn"
    PLATFORMS = ("gpu",)
    DTYPES = ("bfloat16", "float16")
    SUPPORTS_LSE = False
    SUPPORTS_SEGMENTS = False
    HEAD_DIMS = (64, 128, 40)


def _call(shape_q, shape_k, dtype=jnp.float32):
    q, k = jax.ShapeDtypeStruct(shape_q, dtype), jax.ShapeDtypeStruct(shape_k, dtype)
    return AttentionCall(q, k, k, None, AttentionMask().bind(q, k, k), 1.0)


class AutoOrderTest(absltest.TestCase):

    def test_cpu_prefers_xla_until_the_logits_are_large(self):
        if jax.default_backend() != "cpu":
            self.skipTest("the CPU order")
        small = _call((1, 128, 8, 64), (1, 128, 8, 64))
        self.assertEqual(auto_order(small)[:2], ("xla", "blockwise"))
        large = _call((1, 16384, 8, 64), (1, 16384, 8, 64))  # 8 GiB of float32 logits
        self.assertEqual(auto_order(large)[:2], ("blockwise", "xla"))

    def test_gpu_order(self):
        small = _call((1, 8, 2, 64), (1, 8, 2, 64))
        self.assertEqual(auto_order(small, platform="gpu")[:4], ("cudnn", "xla", "flash", "blockwise"))
        large = _call((4, 16384, 8, 64), (4, 16384, 8, 64))
        self.assertEqual(auto_order(large, platform="gpu")[:4], ("cudnn", "flash", "xla", "blockwise"))
        self.assertEqual(auto_order(large, platform="tpu")[:3], ("flash", "xla", "blockwise"))

    def test_none_logs_its_choice_and_why_it_skipped_the_others(self):
        q = jnp.ones((1, 8, 2, 16))
        saved = dict(dot_product._AUTO_ORDER)
        try:
            dot_product._AUTO_ORDER[platform()] = ("cudnn", "flash", "xla", "blockwise")
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
        for backend in ("blockwise", FlashBackend(interpret=True)):
            ok, reason = dot_product.supports(backend, q, q, q, dropout_rate=0.1, dropout_rng=jax.random.key(0))
            self.assertFalse(ok)
            self.assertIn("dropout", reason)


class FlashBackendOptionsTest(parameterized.TestCase):
    """Interpretation is an option of the backend object, fixed when a function is traced."""

    def test_bad_options_raise_at_construction(self):
        with pytest.raises(ValueError, match="'cuda'"):
            FlashBackend(kernel="cuda")
        with pytest.raises(ValueError, match="BlockSizes"):
            FlashBackend(block_sizes=(16, 16))
        with pytest.raises(ValueError, match="interpret must be a bool"):
            FlashBackend(interpret="yes")

    def test_objects_are_hashable_values(self):
        self.assertEqual(FlashBackend(interpret=True, block_sizes=SMALL_TILES),
                         FlashBackend(interpret=True, block_sizes=SMALL_TILES))
        self.assertEqual(len({FlashBackend(), FlashBackend(), FlashBackend(interpret=True)}), 2)

    def test_jitted_function_keeps_its_backend_option(self):
        """The old interpret_mode() was read at trace time: a function jitted outside it stayed compiled inside
        it. The option now travels with the call, so each jitted function runs what it names."""
        rng = np.random.default_rng(0)
        q, k, v = (jnp.asarray(rng.standard_normal((1, 20, 2, 16)), jnp.float32) for _ in range(3))
        interpreted = jax.jit(lambda a, b, c: dot_product_attention(
            a, b, c, is_causal=True, implementation=FlashBackend(interpret=True, block_sizes=SMALL_TILES)))
        want = dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        np.testing.assert_allclose(np.asarray(interpreted(q, k, v)), np.asarray(want), atol=1e-5)
        if platform() == "cpu":
            compiled = jax.jit(lambda a, b, c: dot_product_attention(a, b, c, implementation="flash"))
            with pytest.raises(ValueError, match="FlashBackend\\(interpret=True\\)"):
                compiled(q, k, v)

    def test_supports_depends_on_the_object(self):
        q = jnp.ones((1, 8, 2, 16))
        self.assertEqual(dot_product.supports(FlashBackend(interpret=True), q, q, q), (True, ""))
        if platform() == "cpu":
            ok, reason = dot_product.supports("flash", q, q, q)
            self.assertFalse(ok)
            self.assertIn("GPU or TPU", reason)


class ChecksOnceTest(absltest.TestCase):
    """MultiHeadAttention -> dot_product_attention -> the flash backend -> flash_attention checks each argument
    once: the inputs once, every mask source once."""

    def test_module_to_kernel_checks_once(self):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.standard_normal((2, 20, 32)), jnp.float32)
        seg = jnp.asarray(np.repeat([[0] * 12 + [1] * 8], 2, 0), jnp.int32)
        module = MultiHeadAttention(num_heads=4, num_kv_heads=2,
                                    implementation=FlashBackend(interpret=True, block_sizes=SMALL_TILES))
        params = module.init(jax.random.key(0), x, is_causal=True, segment_ids=seg)
        counts = {"inputs": 0, "fit": 0}
        saved_inputs, saved_fit = masks.check_attention_inputs, masks._check_fit

        def count_inputs(*args, **kwargs):
            counts["inputs"] += 1
            return saved_inputs(*args, **kwargs)

        def count_fit(*args, **kwargs):
            counts["fit"] += 1
            return saved_fit(*args, **kwargs)

        try:
            masks.check_attention_inputs, masks._check_fit = count_inputs, count_fit
            out = module.apply(params, x, is_causal=True, segment_ids=seg)
        finally:
            masks.check_attention_inputs, masks._check_fit = saved_inputs, saved_fit
        self.assertEqual(counts, {"inputs": 1, "fit": 1})
        want = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation="xla").apply(
            params, x, is_causal=True, segment_ids=seg)
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)

    def test_direct_calls_still_check(self):
        from attention_jax.kernels import flash_attention
        q = jnp.ones((1, 8, 2, 16))
        with pytest.raises(ValueError, match="key_value_seq_lengths"):
            flash_attention(q, q, q, AttentionMask(key_value_seq_lengths=jnp.array([1, 2])), interpret=True)
        with pytest.raises(ValueError, match="key_value_seq_lengths"):
            blockwise_attention(q, q, q, mask=AttentionMask(key_value_seq_lengths=jnp.array([1, 2])))


class MultiHeadAttentionBackendsTest(parameterized.TestCase):

    @parameterized.parameters("blockwise", "flash")
    def test_module_on_each_backend_matches_xla(self, implementation):
        if implementation == "flash":
            implementation = FlashBackend(interpret=True, block_sizes=SMALL_TILES)
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((2, 37, 32)), jnp.float32)
        seg = jnp.asarray(np.repeat([[0] * 20 + [1] * 17], 2, 0), jnp.int32)
        kwargs = dict(is_causal=True, segment_ids=seg)
        ref_module = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation="xla")
        params = ref_module.init(jax.random.key(0), x, **kwargs)
        want = ref_module.apply(params, x, **kwargs)
        module = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation=implementation)
        got, grads = jax.value_and_grad(lambda p: jnp.sum(module.apply(p, x, **kwargs) ** 2))(params)
        ref_grads = jax.grad(lambda p: jnp.sum(ref_module.apply(p, x, **kwargs) ** 2))(params)
        np.testing.assert_allclose(float(got), float(jnp.sum(want ** 2)), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=1e-4)

    @parameterized.parameters("blockwise", "flash")
    def test_cached_decode_steps_run_on_each_backend_and_equal_the_full_pass(self, implementation):
        """One-token cache steps pass lengths, not a dense mask, so the flash kernel can run them."""
        if implementation == "flash":
            implementation = FlashBackend(interpret=True)
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
        full_module = MultiHeadAttention(num_heads=2, implementation="xla")
        params = full_module.init(jax.random.key(0), x, is_causal=True)
        want = full_module.apply(params, x, is_causal=True)  # [B, T, D]
        step_module = MultiHeadAttention(num_heads=2, implementation=implementation, decode=True)
        outs = []
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
