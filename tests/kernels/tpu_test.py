"""Tests for attention_jax/kernels/tpu.py: the Mosaic TPU flash-attention kernels, run in the TPU interpreter.

Every case runs `flash_attention(..., kernel="mosaic_tpu", interpret=True)` (the Pallas TPU interpreter,
`pltpu.InterpretParams()`, on CPU) and compares the output, the lse and the gradients wrt q, k and v with
`dot_product_attention` (the XLA path) on the same call. The loss also weights the lse, so the lse cotangent
path of the backward (delta - d_lse) is checked too. Shapes are tiny: the interpreter is slow.

Tolerances: float32 1e-5 (the interpreter's f32 matmuls are plain f32 on CPU, so the only difference from
XLA is the order of the online softmax sums); bfloat16 2e-2 relative, since the kernel rounds P and dS to
bf16 before its matmuls while the XLA path keeps them in float32.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from attention_jax import AttentionMask, dot_product_attention
from attention_jax.kernels import masking, tpu
from attention_jax.kernels.block_sizes import BlockSizes
from attention_jax.kernels.flash import EMPTY_ROW_LSE, flash_attention

TOL = {"float32": 1e-5, "bfloat16": 2e-2}
# Small query tiles give several query tiles per call even at T <= 80 (key tiles are raised to 128 lanes, so S > 128
# gives two key tiles).
SMALL = BlockSizes(block_q=16, block_k=16, block_q_dkv=32, block_k_dkv=16, block_q_dq=16, block_k_dq=16)


def _qkv(seed, b, t, s, n, k, h=64, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape).astype(np.float32), dtype)
                 for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))


def _weights(seed, b, t, n, h):
    rng = np.random.default_rng(seed + 1000)
    return (jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32),
            jnp.asarray(rng.standard_normal((b, n, t)), jnp.float32))


# The cases below use the reference's mask keyword names; the API takes jax.nn's names.
_API_NAMES = {"query_lengths": "query_seq_lengths", "key_lengths": "key_value_seq_lengths",
              "local_window": "local_window_size"}


def _mask_kwargs(kw):
    """(the AttentionMask sources in kw under the API's names, the other keyword arguments)."""
    sources = ("is_causal", "segment_ids", *_API_NAMES)
    return ({_API_NAMES.get(n, n): x for n, x in kw.items() if n in sources},
            {n: x for n, x in kw.items() if n not in sources})


def _flash(q, k, v, **kw):
    sources, rest = _mask_kwargs(kw)
    return flash_attention(q, k, v, AttentionMask(**sources), kernel="mosaic_tpu", interpret=True,
                           return_lse=True, **rest)


def _xla(q, k, v, **kw):
    sources, rest = _mask_kwargs(kw)
    result = dot_product_attention(q, k, v, return_lse=True, **sources, **rest)
    return result.output, result.lse


def _loss(fn, w_out, w_lse, **kw):
    def loss(q, k, v):
        out, lse = fn(q, k, v, **kw)
        live = lse != EMPTY_ROW_LSE
        return jnp.sum(out.astype(jnp.float32) * w_out) + jnp.sum(jnp.where(live, lse, 0.0) * w_lse)
    return loss


def _close(actual, expected, dtype, what):
    tol = TOL[str(jnp.dtype(dtype))]
    actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    expected = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    # Relative to the array's largest magnitude (gradients sum over many rows).
    atol = tol * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol, err_msg=what)


class TpuBlocksTest(absltest.TestCase):

    def test_key_tiles_become_lane_multiples_or_cover_all_keys(self):
        blocks = BlockSizes().fit(300, 300)  # key tiles 64
        out = tpu.tpu_blocks(blocks, 300, 300)
        self.assertEqual((out.block_k, out.block_k_dkv, out.block_k_dq), (128, 128, 128))
        self.assertEqual((out.block_q, out.block_q_dkv, out.block_q_dq),
                         (blocks.block_q, blocks.block_q_dkv, blocks.block_q_dq))
        # S <= 128: one key tile holding every key (a full-dim block is legal).
        out = tpu.tpu_blocks(SMALL.fit(40, 70), 40, 70)
        self.assertEqual((out.block_k, out.block_k_dkv, out.block_k_dq), (128, 128, 128))
        out = tpu.tpu_blocks(SMALL.fit(20, 20), 20, 20)
        self.assertEqual((out.block_k, out.block_k_dkv, out.block_k_dq), (32, 32, 32))
        # Larger key tiles are kept; the result is a valid BlockSizes.
        big = BlockSizes(block_k=256, block_k_dkv=256, block_k_dq=256)
        self.assertEqual(tpu.tpu_blocks(big, 1000, 1000), big)
        for s in (1, 5, 16, 17, 100, 128, 129, 1000):
            out = tpu.tpu_blocks(SMALL.fit(8, s), 8, s)
            for tile in (out.block_k, out.block_k_dkv, out.block_k_dq):
                self.assertTrue(tile % 128 == 0 or tile >= s, (s, tile))
            BlockSizes(**{f: getattr(out, f) for f in ("block_q", "block_k", "block_q_dkv", "block_k_dkv",
                                                      "block_q_dq", "block_k_dq")})

    def test_rejects_no_keys(self):
        with self.assertRaisesRegex(ValueError, "num_keys"):
            tpu.tpu_blocks(BlockSizes(), 4, 0)


class TileMaskTest(parameterized.TestCase):

    @parameterized.parameters(
        dict(is_causal=False, window=None, segments=False),
        dict(is_causal=True, window=None, segments=False),
        dict(is_causal=True, window=(5, None), segments=True),
        dict(is_causal=False, window=(3, 7), segments=True),
    )
    def test_matches_element_mask(self, is_causal, window, segments):
        spec = masking.MaskSpec(40, 50, 64, is_causal, window, segments)
        rng = np.random.default_rng(0)
        q_seg = jnp.asarray(np.sort(rng.integers(0, 3, 16)), jnp.int32) if segments else None
        kv_seg = jnp.asarray(np.sort(rng.integers(0, 3, 32)), jnp.int32) if segments else None
        for q_first, k_first in ((0, 0), (16, 32), (32, 0)):
            expected = masking.element_mask(spec, q_first + jnp.arange(16), k_first + jnp.arange(32),
                                            q_seg, kv_seg)
            actual = tpu.tile_mask(spec, jnp.int32(q_first), jnp.int32(k_first), 16, 32,
                                   None if q_seg is None else q_seg[:, None],
                                   None if kv_seg is None else kv_seg[None, :])
            np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


class TpuKernelTest(parameterized.TestCase):

    def _check(self, shape, dtype=jnp.float32, seed=0, **kw):
        b, t, s, n, k = shape
        q, key, v = _qkv(seed, b, t, s, n, k, dtype=dtype)
        out, lse = _flash(q, key, v, **kw)
        ref_out, ref_lse = _xla(q, key, v, **{x: y for x, y in kw.items() if x != "block_sizes"})
        chex.assert_shape(out, (b, t, n, 64))
        chex.assert_shape(lse, (b, n, t))
        self.assertEqual(out.dtype, dtype)
        self.assertEqual(lse.dtype, jnp.float32)
        _close(out, ref_out, dtype, "output")
        _close(lse, ref_lse, jnp.float32 if dtype == jnp.float32 else dtype, "lse")
        w_out, w_lse = _weights(seed, b, t, n, 64)
        xla_kw = {x: y for x, y in kw.items() if x != "block_sizes"}
        grads = jax.grad(_loss(_flash, w_out, w_lse, **kw), (0, 1, 2))(q, key, v)
        ref_grads = jax.grad(_loss(_xla, w_out, w_lse, **xla_kw), (0, 1, 2))(q, key, v)
        for name, g, r in zip("qkv", grads, ref_grads):
            self.assertEqual(g.dtype, dtype)
            _close(g, r, dtype, f"d{name}")
        return out, lse, grads

    @parameterized.named_parameters(
        # Unmasked and single-key-tile cases are the conformance suite's (FlashTpuInterpretConformanceTest);
        # these span two key tiles.
        dict(testcase_name="causal_t_ne_s_gqa", shape=(1, 72, 136, 4, 2), kw=dict(is_causal=True)),
        # Each interpreted case costs ~15 s of compiling, so the masks are combined: a two-sided window with
        # lengths here, a causal window with segments in test_segment_ids_gqa_causal_window.
        dict(testcase_name="local_window_lengths", shape=(2, 72, 160, 2, 1),
             kw=dict(local_window=(20, 5), query_lengths=jnp.array([61, 72]), key_lengths=jnp.array([131, 9]))),
    )
    def test_matches_xla(self, shape, kw):
        self._check(shape, block_sizes=SMALL, **kw)

    def test_segment_ids_gqa_causal_window(self):
        t, s = 72, 144
        q_ids = jnp.asarray([[0] * 15 + [1] * 35 + [2] * 22, [5] * 72], jnp.int32)
        kv_ids = jnp.asarray([[0] * 20 + [1] * 90 + [2] * 34, [5] * 100 + [6] * 44], jnp.int32)
        self._check((2, t, s, 4, 2), block_sizes=SMALL, segment_ids=(q_ids, kv_ids), is_causal=True,
                    local_window=(33, None))

    def test_bfloat16_causal(self):
        self._check((1, 80, 140, 2, 1), dtype=jnp.bfloat16, block_sizes=SMALL, is_causal=True)

    def test_fully_masked_rows_are_zero(self):
        q, k, v = _qkv(3, 2, 40, 60, 2, 1)
        lengths = jnp.array([0, 13])  # batch 0: every row empty; batch 1: rows 13.. empty
        # Query segment 7 has no key: those rows are empty too.
        q_ids = jnp.asarray([[0] * 40, [0] * 10 + [7] * 30], jnp.int32)
        kv_ids = jnp.zeros((2, 60), jnp.int32)
        kw = dict(query_lengths=lengths, segment_ids=(q_ids, kv_ids))
        out, lse = _flash(q, k, v, block_sizes=SMALL, **kw)
        dead = np.arange(40)[None, :] >= np.array([0, 10])[:, None]  # [B, T]
        self.assertTrue(np.all(np.asarray(out)[dead] == 0.0))
        self.assertTrue(np.all(np.asarray(lse).transpose(0, 2, 1)[dead] == EMPTY_ROW_LSE))
        ref_out, ref_lse = _xla(q, k, v, **kw)
        _close(out, ref_out, jnp.float32, "output")
        _close(lse, ref_lse, jnp.float32, "lse")
        w_out, w_lse = _weights(3, 2, 40, 2, 64)
        dq, dk, dv = jax.grad(_loss(_flash, w_out, w_lse, block_sizes=SMALL, **kw), (0, 1, 2))(q, k, v)
        for g in (dq, dk, dv):
            self.assertTrue(np.all(np.isfinite(np.asarray(g))))
        self.assertTrue(np.all(np.asarray(dq)[dead] == 0.0))
        self.assertTrue(np.all(np.asarray(dk)[0] == 0.0) and np.all(np.asarray(dv)[0] == 0.0))
        ref = jax.grad(_loss(_xla, w_out, w_lse, **kw), (0, 1, 2))(q, k, v)
        for name, g, r in zip("qkv", (dq, dk, dv), ref):
            _close(g, r, jnp.float32, f"d{name}")

    def test_nan_in_padded_keys_does_not_leak(self):
        q, k, v = _qkv(4, 1, 24, 140, 2, 1)
        key_lengths = jnp.array([100])
        k = k.at[:, 100:].set(jnp.nan)
        v = v.at[:, 100:].set(jnp.nan)
        out, lse, (dq, dk, dv) = self._check_nan(q, k, v, key_lengths)
        self.assertTrue(np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(np.asarray(lse))))
        self.assertTrue(np.all(np.isfinite(np.asarray(dq))))
        self.assertTrue(np.all(np.asarray(dk)[:, 100:] == 0.0) and np.all(np.asarray(dv)[:, 100:] == 0.0))
        clean = (k.at[:, 100:].set(0.0), v.at[:, 100:].set(0.0))
        ref_out, ref_lse = _xla(q, *clean, key_lengths=key_lengths)
        _close(out, ref_out, jnp.float32, "output")
        _close(lse, ref_lse, jnp.float32, "lse")
        w_out, w_lse = _weights(4, 1, 24, 2, 64)
        ref = jax.grad(_loss(_xla, w_out, w_lse, key_lengths=key_lengths), (0, 1, 2))(q, *clean)
        _close(dq, ref[0], jnp.float32, "dq")
        _close(dk[:, :100], ref[1][:, :100], jnp.float32, "dk")
        _close(dv[:, :100], ref[2][:, :100], jnp.float32, "dv")

    def _check_nan(self, q, k, v, key_lengths):
        out, lse = _flash(q, k, v, key_lengths=key_lengths, block_sizes=SMALL)
        w_out, w_lse = _weights(4, 1, 24, 2, 64)
        grads = jax.grad(_loss(_flash, w_out, w_lse, key_lengths=key_lengths, block_sizes=SMALL),
                         (0, 1, 2))(q, k, v)
        return out, lse, grads


class TpuLoweringTest(parameterized.TestCase):
    """The kernels (interpret=False) lower to Mosaic for a TPU target on this CPU host.

    This runs jax's Pallas -> Mosaic lowering (block-shape rules, every primitive's Mosaic rule) for the
    forward, dK/dV and dQ kernels; the Mosaic compiler itself only runs on a TPU, so it is not exercised.
    """

    @parameterized.parameters(
        dict(dtype=jnp.float32, kw=dict(is_causal=True, local_window=(40, None))),
        dict(dtype=jnp.bfloat16, kw=dict(key_lengths=jnp.array([150]),
                                         segment_ids=(jnp.zeros((1, 160), jnp.int32),
                                                      jnp.zeros((1, 200), jnp.int32)))),
    )
    def test_lowers_for_tpu(self, dtype, kw):
        q = jnp.zeros((1, 160, 4, 64), dtype)
        k = jnp.zeros((1, 200, 2, 64), dtype)

        def loss(q, k, v):
            out, lse = flash_attention(q, k, v, AttentionMask(**_mask_kwargs(kw)[0]), kernel="mosaic_tpu",
                                       interpret=False, return_lse=True, block_sizes=SMALL)
            return jnp.sum(out.astype(jnp.float32)) + jnp.sum(lse)

        lowered = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).trace(q, k, k).lower(lowering_platforms=("tpu",))
        self.assertEqual(lowered.as_text().count("tpu_custom_call"), 3)  # forward, dK/dV, dQ


if __name__ == "__main__":
    absltest.main()
