"""The conformance suite every `dot_product_attention` backend inherits.

A backend's test file subclasses `AttentionConformance` and sets `IMPLEMENTATION`: a backend name, or a
`Backend` object with its options (the Pallas kernels on the CPU use `FlashBackend(interpret=True, ...)`),
and `PLATFORMS`, where it runs. The base class lives in this module, which pytest does not collect, so only
the subclasses run.

References (independent of the library): `attention_jax.kernels.reference`, a float64 numpy transcription of
Vaswani et al. 2017, arXiv:1706.03762, eq. 1 with every mask written position by position, and its
closed-form VJP (Dao et al. 2022, arXiv:2205.14135, Appendix B.2); `jax.test_util.check_grads` finite
differences; `jax.nn.dot_product_attention` for the unmasked case.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax import test_util as jtu

from attention_jax.dot_product.api import EMPTY_ROW_LSE, dot_product_attention, supports
from attention_jax.kernels import platform
from attention_jax.kernels.reference import reference_attention, reference_vjp

# Relative tolerances per input dtype, against float64 (errors are measured relative to the largest
# reference magnitude of the compared array).
TOL = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}
_B = 2


def _segments(rng, batch, length, count):
    """Sorted (packed-sequence) ids in [0, count)."""
    return np.sort(rng.integers(0, count, (batch, length)), axis=1).astype(np.int32)


def _case(name, rng):
    """(T, S, N, K, H, mask kwargs) of a named case. Lengths are not tile multiples on purpose."""
    if name == "plain":
        return 37, 45, 4, 4, 32, {}
    if name == "causal_square":
        return 48, 48, 2, 2, 64, dict(is_causal=True)
    if name == "causal_t_lt_s":  # top-left: query t sees keys 0..t, the keys beyond T are never seen
        return 21, 50, 2, 1, 32, dict(is_causal=True)
    if name == "causal_t_gt_s":
        return 50, 21, 2, 2, 32, dict(is_causal=True)
    if name == "window":
        return 53, 53, 2, 1, 32, dict(local_window_size=(7, 4))
    if name == "window_causal_left_only":
        return 40, 47, 2, 2, 32, dict(is_causal=True, local_window_size=(9, None))
    if name == "lengths":
        return 35, 43, 4, 2, 32, dict(query_seq_lengths=np.array([35, 19]), key_value_seq_lengths=np.array([43, 6]))
    if name == "segments":
        t = 50
        return t, t, 4, 2, 32, dict(segment_ids=_segments(rng, _B, t, 3))
    if name == "segments_cross":
        return 33, 46, 2, 1, 32, dict(segment_ids=(_segments(rng, _B, 33, 2), _segments(rng, _B, 46, 2)))
    if name == "gqa_causal_segments_lengths":
        t = 44
        return t, t, 6, 2, 32, dict(is_causal=True, segment_ids=_segments(rng, _B, t, 3),
                                    key_value_seq_lengths=np.array([40, 29]), query_seq_lengths=np.array([44, 31]))
    if name == "mqa":
        return 30, 38, 4, 1, 32, dict(is_causal=True)
    raise KeyError(name)


CASES = ("plain", "causal_square", "causal_t_lt_s", "causal_t_gt_s", "window", "window_causal_left_only",
         "lengths", "segments", "segments_cross", "gqa_causal_segments_lengths", "mqa")
LOW_PRECISION_CASES = ("plain", "causal_square", "gqa_causal_segments_lengths")


def _inputs(seed, t, s, n, k, h, dtype):
    rng = np.random.default_rng(seed)
    shapes = ((_B, t, n, h), (_B, s, k, h), (_B, s, k, h), (_B, t, n, h))
    q, key, v, d_out = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes)
    return q, key, v, d_out


def _device_kwargs(kwargs):
    """numpy arrays (and pairs of them) as jax arrays; Python values (is_causal, local_window) unchanged."""
    def convert(value):
        if isinstance(value, np.ndarray):
            return jnp.asarray(value)
        if isinstance(value, tuple) and all(isinstance(x, np.ndarray) for x in value):
            return tuple(jnp.asarray(x) for x in value)
        return value

    return {name: convert(value) for name, value in kwargs.items()}


# dot_product_attention's (jax.nn's) keyword names -> the float64 reference's (kernels/reference.py).
_REFERENCE_NAMES = {"query_seq_lengths": "query_lengths", "key_value_seq_lengths": "key_lengths",
                    "local_window_size": "local_window"}


def _reference_kwargs(kwargs):
    return {_REFERENCE_NAMES.get(name, name): value for name, value in kwargs.items()}


def _assert_close(actual, expected, dtype, what):
    actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    bound = TOL[dtype] * max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= bound, f"{what} ({dtype}): max abs error {err:.3g} > {bound:.3g}"


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


class AttentionConformance(parameterized.TestCase):
    """What every backend must do. Subclasses set the class attributes below."""

    # A backend name, or a Backend object with its options (e.g. FlashBackend(interpret=True)).
    IMPLEMENTATION: Any = "xla"
    # Where it runs; elsewhere the class is skipped.
    PLATFORMS: tuple[str, ...] = ("cpu", "gpu", "tpu")
    DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
    SUPPORTS_LSE: bool = True
    SUPPORTS_WEIGHTS: bool = True
    SUPPORTS_SEGMENTS: bool = True
    HEAD_DIMS: tuple[int, ...] = (64, 128, 256, 40)

    def setUp(self):
        super().setUp()
        if platform() not in self.PLATFORMS:
            self.skipTest(f"{self.IMPLEMENTATION} runs on {self.PLATFORMS}, this is {platform()!r}")

    def attend(self, query, key, value, **kwargs):
        """dot_product_attention with this backend; returns (output, lse or None)."""
        if not self.SUPPORTS_LSE:
            return dot_product_attention(query, key, value, implementation=self.IMPLEMENTATION, **kwargs), None
        result = dot_product_attention(query, key, value, implementation=self.IMPLEMENTATION,
                                       return_lse=True, **kwargs)
        return result.output, result.lse

    def _skip_unsupported(self, kwargs):
        if "segment_ids" in kwargs and not self.SUPPORTS_SEGMENTS:
            self.skipTest(f"{self.IMPLEMENTATION} takes no segment ids")

    def _check_case(self, case, dtype):
        t, s, n, k, h, mask_kwargs = _case(case, np.random.default_rng(100 + CASES.index(case)))
        self._skip_unsupported(mask_kwargs)
        q, key, v, d_out = _inputs(CASES.index(case), t, s, n, k, h, getattr(jnp, dtype))
        kwargs = _device_kwargs(mask_kwargs)
        (out, lse), vjp = jax.vjp(lambda q_, k_, v_: self.attend(q_, k_, v_, **kwargs), q, key, v)
        ref_out, ref_lse = reference_attention(q, key, v, **_reference_kwargs(mask_kwargs))
        _assert_close(out, ref_out, dtype, "output")
        self.assertEqual(out.dtype, q.dtype)
        if lse is not None:
            empty = ~np.isfinite(ref_lse)
            np.testing.assert_array_equal(np.asarray(lse)[empty], EMPTY_ROW_LSE)
            _assert_close(np.where(empty, 0.0, lse), np.where(empty, 0.0, ref_lse), dtype, "lse")
        cotangent = (d_out, None if lse is None else jnp.zeros_like(lse))
        grads = vjp(cotangent)
        for name, got, want in zip(("dq", "dk", "dv"), grads,
                                   reference_vjp(q, key, v, d_out, **_reference_kwargs(mask_kwargs))):
            _assert_close(got, want, dtype, name)

    @parameterized.parameters(*CASES)
    def test_float32_forward_lse_and_gradients_match_float64_reference(self, case):
        if "float32" not in self.DTYPES:
            self.skipTest(f"{self.IMPLEMENTATION} takes no float32")
        self._check_case(case, "float32")

    @parameterized.parameters(*LOW_PRECISION_CASES)
    def test_bfloat16(self, case):
        if "bfloat16" not in self.DTYPES:
            self.skipTest(f"{self.IMPLEMENTATION} takes no bfloat16")
        self._check_case(case, "bfloat16")

    @parameterized.parameters(*LOW_PRECISION_CASES)
    def test_float16(self, case):
        if "float16" not in self.DTYPES:
            self.skipTest(f"{self.IMPLEMENTATION} takes no float16")
        self._check_case(case, "float16")

    def test_unmasked_matches_jax_nn(self):
        dtype = self.DTYPES[0]
        q, key, v, _ = _inputs(3, 40, 40, 4, 2, 64, getattr(jnp, dtype))
        out, _ = self.attend(q, key, v, is_causal=True)
        want = jax.nn.dot_product_attention(q, key, v, is_causal=True, implementation="xla")
        _assert_close(out, np.asarray(want.astype(jnp.float32)), dtype, "output vs jax.nn")

    def test_gradients_match_finite_differences(self):
        if "float32" not in self.DTYPES:
            self.skipTest("finite differences need float32")
        q, key, v, _ = _inputs(4, 9, 13, 2, 1, 8, jnp.float32)
        kwargs = dict(is_causal=True, key_value_seq_lengths=jnp.array([13, 5]))
        jtu.check_grads(lambda q_, k_, v_: self.attend(q_, k_, v_, **kwargs)[0], (q, key, v), order=1,
                        modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)

    def test_fully_masked_rows_are_zero_with_zero_finite_gradients(self):
        dtype = self.DTYPES[0]
        q, key, v, d_out = _inputs(5, 24, 30, 2, 2, 32, getattr(jnp, dtype))
        # Batch 0: queries 10.. are beyond query_lengths. Batch 1: no key at all.
        kwargs = dict(query_seq_lengths=jnp.array([10, 24]), key_value_seq_lengths=jnp.array([30, 0]))
        (out, lse), vjp = jax.vjp(lambda q_, k_, v_: self.attend(q_, k_, v_, **kwargs), q, key, v)
        out = np.asarray(out.astype(jnp.float32))
        np.testing.assert_array_equal(out[0, 10:], 0.0)
        np.testing.assert_array_equal(out[1], 0.0)
        self.assertTrue(np.all(out[0, :10] != 0.0))
        if lse is not None:
            np.testing.assert_array_equal(np.asarray(lse)[0, :, 10:], EMPTY_ROW_LSE)
            np.testing.assert_array_equal(np.asarray(lse)[1], EMPTY_ROW_LSE)
        dq, dk, dv = (np.asarray(g.astype(jnp.float32)) for g in
                      vjp((d_out, None if lse is None else jnp.zeros_like(lse))))
        for g in (dq, dk, dv):
            self.assertTrue(np.all(np.isfinite(g)))
        np.testing.assert_array_equal(dq[0, 10:], 0.0)
        np.testing.assert_array_equal(dq[1], 0.0)
        np.testing.assert_array_equal(dk[1], 0.0)
        np.testing.assert_array_equal(dv[1], 0.0)

    def test_window_leaves_rows_empty_when_t_exceeds_s(self):
        dtype = self.DTYPES[0]
        q, key, v, _ = _inputs(6, 40, 16, 2, 2, 32, getattr(jnp, dtype))
        out, lse = self.attend(q, key, v, local_window_size=(3, 0))  # queries t >= 19 see no key
        out = np.asarray(out.astype(jnp.float32))
        np.testing.assert_array_equal(out[:, 19:], 0.0)
        self.assertTrue(np.all(np.isfinite(out)))
        if lse is not None:
            np.testing.assert_array_equal(np.asarray(lse)[:, :, 19:], EMPTY_ROW_LSE)

    def test_nan_padding_does_not_leak(self):
        dtype = self.DTYPES[0]
        q, key, v, d_out = _inputs(7, 26, 34, 4, 2, 32, getattr(jnp, dtype))
        kwargs = dict(query_seq_lengths=jnp.array([26, 15]), key_value_seq_lengths=jnp.array([20, 34]))
        nan = jnp.asarray(jnp.nan, q.dtype)
        q_nan = q.at[1, 15:].set(nan)
        key_nan = key.at[0, 20:].set(nan)
        v_nan = v.at[0, 20:].set(nan)

        def run(q_, k_, v_):
            (out, lse), vjp = jax.vjp(lambda a, b, c: self.attend(a, b, c, **kwargs), q_, k_, v_)
            return (out,) + vjp((d_out, None if lse is None else jnp.zeros_like(lse)))

        clean, dirty = run(q, key, v), run(q_nan, key_nan, v_nan)
        for name, a, b in zip(("output", "dq", "dk", "dv"), clean, dirty):
            b = np.asarray(b.astype(jnp.float32))
            self.assertTrue(np.all(np.isfinite(b)), f"NaN leaked into {name}")
            np.testing.assert_allclose(b, np.asarray(a.astype(jnp.float32)), atol=1e-6, err_msg=name)

    def test_head_dims(self):
        dtype = self.DTYPES[0]
        for h in self.HEAD_DIMS:
            q, key, v, _ = _inputs(8 + h, 18, 22, 2, 1, h, getattr(jnp, dtype))
            out, _ = self.attend(q, key, v, is_causal=True)
            ref, _ = reference_attention(q, key, v, is_causal=True)
            _assert_close(out, ref, dtype, f"output at H={h}")

    def test_repeatable_and_jit_matches_eager(self):
        dtype = self.DTYPES[0]
        q, key, v, _ = _inputs(9, 33, 33, 2, 2, 32, getattr(jnp, dtype))
        seg = jnp.asarray(_segments(np.random.default_rng(1), _B, 33, 2))

        def f(q_, k_, v_):
            return self.attend(q_, k_, v_, is_causal=True, **({"segment_ids": seg} if self.SUPPORTS_SEGMENTS else {}))[0]

        first, second = f(q, key, v), f(q, key, v)
        np.testing.assert_array_equal(np.asarray(first.astype(jnp.float32)), np.asarray(second.astype(jnp.float32)))
        jitted = jax.jit(f)(q, key, v)
        np.testing.assert_allclose(np.asarray(jitted.astype(jnp.float32)), np.asarray(first.astype(jnp.float32)),
                                   atol=TOL[dtype], rtol=TOL[dtype])

    def test_masking_changes_nothing_outside_the_mask(self):
        """Changing keys the mask hides leaves the output exactly as it was."""
        dtype = self.DTYPES[0]
        q, key, v, _ = _inputs(10, 32, 32, 2, 2, 32, getattr(jnp, dtype))
        out, _ = self.attend(q, key, v, is_causal=True)
        out2, _ = self.attend(q, key.at[:, 20:].multiply(3.0), v.at[:, 20:].add(1.0), is_causal=True)
        np.testing.assert_array_equal(np.asarray(out[:, :20].astype(jnp.float32)),
                                      np.asarray(out2[:, :20].astype(jnp.float32)))
        self.assertFalse(np.allclose(np.asarray(out[:, 20:].astype(jnp.float32)),
                                     np.asarray(out2[:, 20:].astype(jnp.float32))))

    def test_bad_inputs_raise_before_compute(self):
        dtype = getattr(jnp, self.DTYPES[0])
        q, key, v, _ = _inputs(11, 8, 8, 4, 2, 16, dtype)
        impl = self.IMPLEMENTATION
        with _raises(ValueError, "head dims differ", "(2, 8, 4, 16)", "(2, 8, 2, 8)"):
            dot_product_attention(q, key[..., :8], v[..., :8], implementation=impl)
        with _raises(ValueError, "N=4", "K=3"):
            dot_product_attention(q, jnp.zeros((2, 8, 3, 16), dtype), jnp.zeros((2, 8, 3, 16), dtype),
                                  implementation=impl)
        with _raises(ValueError, "key_value_seq_lengths", "(3,)"):
            dot_product_attention(q, key, v, key_value_seq_lengths=jnp.array([1, 2, 3]), implementation=impl)
        with _raises(ValueError, "local_window_size"):
            dot_product_attention(q, key, v, local_window_size=(-1, 2), implementation=impl)
        with _raises(TypeError, "key_value_seq_lengths"):
            dot_product_attention(q, key, v, key_value_seq_lengths=jnp.array([1.0, 2.0]), implementation=impl)
        with _raises(TypeError, "is_causal", "'no'"):
            dot_product_attention(q, key, v, is_causal="no", implementation=impl)
        with _raises(TypeError, "key_value_seq_lengths", "list"):
            dot_product_attention(q, key, v, key_value_seq_lengths=[8, 8], implementation=impl)
        with _raises(TypeError, "key", "list"):
            dot_product_attention(q, np.asarray(key).tolist(), v, implementation=impl)

    def test_supports_accepts_this_call(self):
        q, key, v, _ = _inputs(12, 8, 8, 2, 2, 16, getattr(jnp, self.DTYPES[0]))
        ok, reason = supports(self.IMPLEMENTATION, q, key, v, is_causal=True)
        self.assertTrue(ok, reason)
        self.assertEqual(reason, "")

    # ------------------------------------------------------------------------------------------------------
    # Empty sequences: no (query, key) pair at all. Every backend returns the same zeros (issue 9).

    @parameterized.named_parameters(
        dict(testcase_name="no_keys", b=2, t=7, s=0),
        dict(testcase_name="no_queries", b=2, t=0, s=9),
        dict(testcase_name="neither", b=2, t=0, s=0),
        dict(testcase_name="no_batch", b=0, t=7, s=9),
    )
    def test_empty_sequences_give_zeros_empty_lse_and_zero_gradients(self, b, t, s):
        dtype = getattr(jnp, self.DTYPES[0])
        rng = np.random.default_rng(13)
        n, k, h = 4, 2, 32
        q, key, v, d_out = (jnp.asarray(rng.standard_normal(shape), dtype)
                            for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h), (b, t, n, h)))
        kwargs = dict(is_causal=True, key_value_seq_lengths=jnp.full((b,), s, jnp.int32))

        def run(q_, k_, v_):
            return self.attend(q_, k_, v_, **kwargs)

        for fn in (run, jax.jit(run)):
            (out, lse), vjp = jax.vjp(fn, q, key, v)
            self.assertEqual(out.shape, (b, t, n, h))
            self.assertEqual(out.dtype, dtype)
            np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), 0.0)
            if lse is not None:
                self.assertEqual(lse.shape, (b, n, t))
                self.assertEqual(lse.dtype, jnp.float32)
                np.testing.assert_array_equal(np.asarray(lse), EMPTY_ROW_LSE)
            grads = vjp((d_out, None if lse is None else jnp.ones_like(lse)))
            for grad, x in zip(grads, (q, key, v)):
                self.assertEqual(grad.shape, x.shape)
                np.testing.assert_array_equal(np.asarray(grad.astype(jnp.float32)), 0.0)
        if self.SUPPORTS_WEIGHTS:
            weights = dot_product_attention(q, key, v, implementation=self.IMPLEMENTATION, return_weights=True,
                                            **kwargs).weights
            self.assertEqual(weights.shape, (b, n, t, s))
            self.assertEqual(weights.dtype, jnp.float32)
            np.testing.assert_array_equal(np.asarray(weights), 0.0)

    def test_zero_head_dim_raises_one_clear_error(self):
        dtype = getattr(jnp, self.DTYPES[0])
        q, key = jnp.zeros((2, 5, 4, 0), dtype), jnp.zeros((2, 6, 2, 0), dtype)
        with _raises(ValueError, "head dim H must be >= 1", "H=0", "(2, 5, 4, 0)"):
            dot_product_attention(q, key, key, implementation=self.IMPLEMENTATION)
