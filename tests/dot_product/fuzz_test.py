"""Property test: the xla, blockwise and flash backends agree on any small call, or all raise the same error.

`hypothesis` draws shapes (B, T, S including 0, N = K * G, H), a dtype, and masks: causality, a local
window, query/key lengths, segment ids (packed or unsorted, including int32 min / max), a dense mask and a
bias, alone and together. Queries with no valid key and keys/values that no valid query attends are filled
with NaN or inf. Every backend must then give the same finite output, lse and gradients dq, dk, dv (with an
lse cotangent too, so the backward's lse path runs): the output and lse against a float64 numpy
transcription of eq. 1 (Vaswani et al. 2017, arXiv:1706.03762), the gradients against xla's autodiff, and
dead rows exactly (zero output, zero gradients, `EMPTY_ROW_LSE`). Flash takes no dense mask and no bias: those
draws compare xla and blockwise, and check that flash's `supports` says so. A second property corrupts one
argument of a valid call and asserts that every backend, and every public entry point, raises the same clear
error class.

Flash runs the Triton kernels in the Pallas interpreter with 16-row tiles (several tiles and the tile-skipping
paths run at these lengths); blockwise uses 16-key chunks. Shapes come from small sets and each backend is
one jitted function, so draws reuse compiled programs; `derandomize=True` makes CI reproducible.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attention_jax as aj
from attention_jax.core.alignment import EMPTY_ROW_LSE
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.api import supports
from attention_jax.dot_product.blockwise import BlockwiseBackend, blockwise_attention
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.kernels import BlockSizes, flash_attention
from attention_jax.kernels.reference import reference_mask
from tests.reference import assert_close

INT32 = np.iinfo(np.int32)
BACKENDS = {
    "xla": "xla",
    "blockwise": BlockwiseBackend(block_k=16),
    "flash": FlashBackend(interpret=True, kernel="triton", block_sizes=BlockSizes(16, 16, 16, 16, 16, 16)),
}
# Gradient tolerance relative to the largest |xla gradient|: the kernels round P and dS to bf16 before their
# matmuls where xla keeps float32, so bf16 gradients get the bf16 tolerance of the house style.
GRAD_TOL = {"float32": 2e-5, "bfloat16": 2e-2}
SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------------------------------------
# Drawing a call.


@st.composite
def _window(draw):
    side = st.one_of(st.none(), st.integers(0, 6))
    return draw(st.one_of(st.none(), st.integers(0, 6), st.tuples(side, side)))


@st.composite
def calls(draw, *, flash: bool):
    """A dict describing one call: shapes, dtype, mask sources, data seed and the poison for dead rows.

    With flash=True, no dense mask and no bias (the kernels take neither) and fewer distinct shapes (every
    new static configuration compiles the interpreted kernels once).
    """
    lengths = [0, 9, 37, 9, 37] if flash else [0, 1, 9, 37, 9, 37]  # repeats: fewer empty draws
    case = dict(
        batch=draw(st.sampled_from([1, 2])),
        num_queries=draw(st.sampled_from(lengths)),
        num_keys=draw(st.sampled_from(lengths)),
        kv_heads=draw(st.sampled_from([1, 2])),
        groups=draw(st.sampled_from([1, 2])),
        head_dim=draw(st.sampled_from([16] if flash else [4, 16])),
        dtype=draw(st.sampled_from(["float32", "bfloat16"])),
        is_causal=draw(st.booleans()),
        window=draw(_window()),
        query_lengths=draw(st.booleans()),
        key_lengths=draw(st.booleans()),
        segments=draw(st.sampled_from([None, "packed", "unsorted"])),
        dense=False if flash else draw(st.booleans()),
        bias=False if flash else draw(st.booleans()),
        poison=draw(st.sampled_from([np.nan, np.inf, -np.inf])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    return case


def _arrays(case):
    """The call's arrays from its seed: q, k, v (clean), mask keyword arrays, bias, dense mask, cotangents."""
    rng = np.random.default_rng(case["seed"])
    b, t, s = case["batch"], case["num_queries"], case["num_keys"]
    k_heads, h = case["kv_heads"], case["head_dim"]
    n = k_heads * case["groups"]
    dtype = jnp.dtype(case["dtype"])
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype)
               for shape in ((b, t, n, h), (b, s, k_heads, h), (b, s, k_heads, h)))
    arrays = dict(q=q, k=k, v=v, query_lengths=None, key_lengths=None, segment_ids=None, bias=None, mask=None)
    if case["query_lengths"]:
        arrays["query_lengths"] = jnp.asarray(rng.integers(0, t + 1, b), jnp.int32)
    if case["key_lengths"]:
        arrays["key_lengths"] = jnp.asarray(rng.integers(0, s + 1, b), jnp.int32)
    if case["segments"] is not None:
        # A pool that includes int32 min, min + 1 and max: no id may be reserved by any backend.
        pool = rng.choice([INT32.min, INT32.min + 1, INT32.max, -3, 0, 1, 2], 3, replace=False)
        q_ids, kv_ids = rng.choice(pool, (b, t)), rng.choice(pool, (b, s))
        if case["segments"] == "packed":
            q_ids, kv_ids = np.sort(q_ids, axis=1), np.sort(kv_ids, axis=1)
        arrays["segment_ids"] = (jnp.asarray(q_ids, jnp.int32), jnp.asarray(kv_ids, jnp.int32))
    if case["dense"]:
        shape = (rng.choice([1, b]), rng.choice([1, n]), t, s)
        arrays["mask"] = jnp.asarray(rng.random(shape) < 0.7)
    if case["bias"]:
        arrays["bias"] = jnp.asarray(rng.standard_normal((b, 1, t, s)), jnp.float32)
    arrays["d_out"] = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32)
    arrays["d_lse"] = jnp.asarray(rng.standard_normal((b, n, t)), jnp.float32)
    return arrays


def _full_mask(case, arrays):
    """numpy bool [B, N, T, S]: every mask source of the call, pair by pair (independent of the library)."""
    b, t, s = case["batch"], case["num_queries"], case["num_keys"]
    n = case["kv_heads"] * case["groups"]
    window = case["window"]
    if isinstance(window, int):
        window = (window, window)
    ids = arrays["segment_ids"]
    mask = reference_mask(
        b, t, s, is_causal=case["is_causal"], local_window=window,
        query_lengths=None if arrays["query_lengths"] is None else np.asarray(arrays["query_lengths"]),
        key_lengths=None if arrays["key_lengths"] is None else np.asarray(arrays["key_lengths"]),
        segment_ids=None if ids is None else tuple(np.asarray(x) for x in ids))[:, None]  # [B, 1, T, S]
    if arrays["mask"] is not None:
        mask = mask & np.asarray(arrays["mask"])
    return np.broadcast_to(mask, (b, n, t, s))


def _reference(case, arrays, full):
    """float64 (output [B, T, N, H], lse [B, N, T]) of eq. 1 on the clean inputs; lse -inf on empty rows."""
    q, k, v = (np.asarray(jnp.asarray(arrays[x], jnp.float32), np.float64) for x in "qkv")
    groups = case["groups"]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # query head n reads kv head n // G
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(case["head_dim"])
    if arrays["bias"] is not None:
        logits = logits + np.asarray(arrays["bias"], np.float64)
    row_max = np.max(np.where(full, logits, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    unnormalised = np.where(full, np.exp(np.where(full, logits, 0.0) - row_max), 0.0)  # [B, N, T, S]
    total = unnormalised.sum(axis=-1)  # [B, N, T]; 0 on rows with no valid key
    probs = unnormalised / np.where(total > 0, total, 1.0)[..., None]
    lse = np.log(np.where(total > 0, total, 1.0)) + row_max[..., 0]
    return np.einsum("bnts,bsnh->btnh", probs, v), np.where(total > 0, lse, -np.inf)


def _poisoned(case, arrays, full):
    """q, k, v with NaN/inf (the case's poison) in every query with no valid key and every key/value that no
    valid query attends; the live rows ([B, T] and [B, S] bool)."""
    live_q = full.any(axis=(1, 3))  # [B, T]
    live_k = full.any(axis=(1, 2))  # [B, S]
    poison = case["poison"]
    q = jnp.where(live_q[:, :, None, None], arrays["q"], poison)
    k = jnp.where(live_k[:, :, None, None], arrays["k"], poison)
    v = jnp.where(live_k[:, :, None, None], arrays["v"], -poison)
    return (q, k, v), live_q, live_k


# The draws are tiny, so XLA's CPU compile time dominates; its cheapest backend optimisation level halves it.
@functools.partial(jax.jit, static_argnames=("implementation", "is_causal", "window"),
                   compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
def _run(q, k, v, bias, mask, query_lengths, key_lengths, segment_ids, d_out, d_lse, *, implementation,
         is_causal, window):
    """(output, lse, dq, dk, dv) of one backend, the gradients for cotangents (d_out, d_lse)."""

    def attention(q, k, v):
        result = aj.dot_product_attention(
            q, k, v, bias, mask, is_causal=is_causal, local_window_size=window, query_seq_lengths=query_lengths,
            key_value_seq_lengths=key_lengths, segment_ids=segment_ids, implementation=implementation,
            return_lse=True)
        return result.output, result.lse

    (out, lse), vjp = jax.vjp(attention, q, k, v)
    return (out, lse, *vjp((d_out.astype(out.dtype), d_lse)))


def _kwargs(case, arrays):
    return dict(bias=arrays["bias"], mask=arrays["mask"], query_lengths=arrays["query_lengths"],
                key_lengths=arrays["key_lengths"], segment_ids=arrays["segment_ids"], d_out=arrays["d_out"],
                d_lse=arrays["d_lse"], is_causal=case["is_causal"], window=case["window"])


def _finite(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


class BackendsAgreeTest(absltest.TestCase):

    def _check(self, case, names):
        arrays = _arrays(case)
        full = _full_mask(case, arrays)
        (q, k, v), live_q, live_k = _poisoned(case, arrays, full)
        ref_out, ref_lse = _reference(case, arrays, full)
        results = {name: [_finite(x) for x in _run(q, k, v, implementation=BACKENDS[name], **_kwargs(case, arrays))]
                   for name in names}
        dtype = case["dtype"]
        grad_tol = GRAD_TOL[dtype]
        live_rows = full.any(axis=-1)  # [B, N, T]
        for name, (out, lse, dq, dk, dv) in results.items():
            what = f"{name}, {case}"
            for label, x in (("output", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
                self.assertTrue(np.all(np.isfinite(x)), f"{label} not finite: {what}")
            assert_close(out, ref_out, dtype, err_msg=f"output: {what}")
            assert_close(np.where(live_rows, lse, 0.0), np.where(live_rows, ref_lse, 0.0), "float32",
                         err_msg=f"lse: {what}")
            np.testing.assert_array_equal(lse[~live_rows], EMPTY_ROW_LSE, err_msg=f"empty-row lse: {what}")
            np.testing.assert_array_equal(out.transpose(0, 2, 1, 3)[~live_rows], 0.0, err_msg=f"empty rows: {what}")
            np.testing.assert_array_equal(dq[~live_q], 0.0, err_msg=f"dq of dead queries: {what}")
            np.testing.assert_array_equal(dk[~live_k], 0.0, err_msg=f"dk of dead keys: {what}")
            np.testing.assert_array_equal(dv[~live_k], 0.0, err_msg=f"dv of dead keys: {what}")
        for name in names[1:]:
            for label, got, want in zip(("dq", "dk", "dv"), results[name][2:], results[names[0]][2:]):
                scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
                np.testing.assert_allclose(got, want, rtol=grad_tol, atol=grad_tol * scale,
                                           err_msg=f"{label} of {name} vs {names[0]}: {case}")

    @settings(max_examples=8, **SETTINGS)
    @given(calls(flash=True))
    def test_xla_blockwise_and_flash_agree(self, case):
        self._check(case, ("xla", "blockwise", "flash"))

    @settings(max_examples=12, **SETTINGS)
    @given(calls(flash=False))
    def test_xla_and_blockwise_agree_with_dense_masks_and_bias(self, case):
        arrays = _arrays(case)
        if arrays["mask"] is not None or arrays["bias"] is not None:
            ok, reason = supports(BACKENDS["flash"], arrays["q"], arrays["k"], arrays["v"], bias=arrays["bias"],
                                  mask=arrays["mask"])
            self.assertFalse(ok)
            self.assertIn("dense mask" if arrays["bias"] is None else "bias", reason)
        self._check(case, ("xla", "blockwise"))


# ----------------------------------------------------------------------------------------------------------
# Bad calls: every backend and entry point raises the same error class.


def _corrupt(kind, arrays, kwargs):
    """(q, k, v, kwargs) of a valid call with one argument made invalid in the way `kind` names."""
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    b, t, n, h = q.shape
    s = k.shape[1]
    kwargs = dict(kwargs)
    if kind == "batch":
        k = v = jnp.zeros((b + 1, s, k.shape[2], h), k.dtype)
    elif kind == "heads":  # N = K * G with K, G in {1, 2}: 3 key/value heads never divide N
        k = v = jnp.zeros((b, s, 3, h), k.dtype)
    elif kind == "head_dim":
        k = v = jnp.zeros((b, s, k.shape[2], h + 1), k.dtype)
    elif kind == "value_length":
        v = jnp.zeros((b, s + 1, k.shape[2], h), k.dtype)
    elif kind == "rank":
        q = q[0]
    elif kind == "integer_query":
        q = q.astype(jnp.int32)
    elif kind == "zero_head_dim":
        q, k, v = q[..., :0], k[..., :0], v[..., :0]
    elif kind == "float_lengths":
        kwargs["query_seq_lengths"] = jnp.full((b,), 1.0)
    elif kind == "lengths_shape":
        kwargs["key_value_seq_lengths"] = jnp.ones((b + 1,), jnp.int32)
    elif kind == "list_lengths":
        kwargs["query_seq_lengths"] = [1] * b
    elif kind == "segment_length":
        kwargs["segment_ids"] = (jnp.zeros((b, t), jnp.int32), jnp.zeros((b, s + 1), jnp.int32))
    elif kind == "float_segments":
        kwargs["segment_ids"] = (jnp.zeros((b, t)), jnp.zeros((b, s)))
    elif kind == "negative_window":
        kwargs["local_window_size"] = (2, -1)
    elif kind == "causal_string":
        kwargs["is_causal"] = "no"
    elif kind == "dense_shape":
        kwargs["mask"] = jnp.ones((b, n, t + 1, s), bool)
    elif kind == "dense_dtype":
        kwargs["mask"] = jnp.ones((b, n, t, s), jnp.int32)
    else:
        raise AssertionError(kind)
    return q, k, v, kwargs


CORRUPTIONS = ("batch", "heads", "head_dim", "value_length", "rank", "integer_query", "zero_head_dim",
               "float_lengths", "lengths_shape", "list_lengths", "segment_length", "float_segments",
               "negative_window", "causal_string", "dense_shape", "dense_dtype")


def _entry_points():
    """name -> fn(q, k, v, **dot_product_attention keywords): every public way into the three backends."""

    def through_api(implementation):
        return lambda q, k, v, **kw: aj.dot_product_attention(q, k, v, implementation=implementation, **kw)

    def direct(fn, **options):
        def call(q, k, v, mask=None, **kw):
            return fn(q, k, v, mask=AttentionMask(mask, **kw), **options)
        return call

    points = {name: through_api(backend) for name, backend in BACKENDS.items()}
    points["blockwise_attention"] = direct(blockwise_attention, block_k=16)
    points["flash_attention"] = direct(flash_attention, interpret=True, kernel="triton")
    return points


class BadCallsTest(absltest.TestCase):

    @settings(max_examples=25, **SETTINGS)
    @given(calls(flash=True), st.sampled_from(CORRUPTIONS))
    def test_every_backend_raises_the_same_error_class(self, case, kind):
        arrays = _arrays(case)
        kwargs = dict(is_causal=case["is_causal"], local_window_size=case["window"],
                      query_seq_lengths=arrays["query_lengths"], key_value_seq_lengths=arrays["key_lengths"],
                      segment_ids=arrays["segment_ids"])
        q, k, v, kwargs = _corrupt(kind, arrays, kwargs)
        raised = {}
        for name, fn in _entry_points().items():
            try:
                fn(q, k, v, **kwargs)
            except (ValueError, TypeError) as err:
                raised[name] = err
            else:
                raise AssertionError(f"{name} accepted a call with a bad {kind}: {case}")
        classes = {name: type(err).__name__ for name, err in raised.items()}
        self.assertLen(set(classes.values()), 1, f"{kind}: {classes}\n{raised}")


if __name__ == "__main__":
    absltest.main()
