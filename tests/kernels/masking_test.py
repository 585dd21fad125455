"""Tests for kernels/masking.py and kernels/block_sizes.py.

Reference: brute force over every (query, key) pair with `kernels.reference.reference_mask` (numpy): a tile
range must contain every tile holding a valid pair (soundness) and, for the causal and window bounds it
computes, no tile without one at its ends (tightness).
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.kernels import masking
from attention_jax.kernels.block_sizes import BlockSizes, padded_head_dim
from attention_jax.kernels.reference import reference_mask

SPECS = [
    dict(is_causal=False, window=None),
    dict(is_causal=True, window=None),
    dict(is_causal=False, window=(5, 3)),
    dict(is_causal=True, window=(9, None)),
    dict(is_causal=False, window=(None, 0)),
    dict(is_causal=False, window=(0, 40)),
]


def _live_tiles(mask, block_q, block_k):
    """bool [q tiles, k tiles]: which tile pairs hold a valid pair."""
    t, s = mask.shape
    nq, nk = -(-t // block_q), -(-s // block_k)
    padded = np.zeros((nq * block_q, nk * block_k), bool)
    padded[:t, :s] = mask
    return padded.reshape(nq, block_q, nk, block_k).any(axis=(1, 3))


class TileRangeTest(parameterized.TestCase):

    @parameterized.parameters(*itertools.product(range(len(SPECS)), [(40, 40), (21, 70), (70, 21)], [(16, 16), (32, 16)]))
    def test_ranges_cover_exactly_the_live_tiles(self, spec_index, lengths, blocks):
        t, s = lengths
        block_q, block_k = blocks
        kw = SPECS[spec_index]
        spec = masking.MaskSpec(t, s, -(-s // block_k) * block_k, kw["is_causal"], kw["window"])
        mask = reference_mask(1, t, s, is_causal=kw["is_causal"], local_window=kw["window"])[0]
        live = _live_tiles(mask, block_q, block_k)
        nq, nk = live.shape
        for i in range(nq):
            lo, hi = (int(x) for x in masking.kv_tile_range(spec, jnp.int32(i), block_q, block_k))
            in_range = np.zeros(nk, bool)
            in_range[max(lo, 0):max(hi, 0)] = True
            self.assertTrue(np.all(in_range[live[i]]), f"query tile {i}: live key tiles outside [{lo}, {hi})")
            if live[i].any():
                self.assertTrue(live[i, lo] and live[i, hi - 1], f"query tile {i}: [{lo}, {hi}) has dead ends")
        for j in range(nk):
            lo, hi = (int(x) for x in masking.q_tile_range(spec, jnp.int32(j), block_q, block_k, nq))
            in_range = np.zeros(nq, bool)
            in_range[max(lo, 0):max(hi, 0)] = True
            self.assertTrue(np.all(in_range[live[:, j]]), f"key tile {j}: live query tiles outside [{lo}, {hi})")
            if live[:, j].any():
                self.assertTrue(live[lo, j] and live[hi - 1, j], f"key tile {j}: [{lo}, {hi}) has dead ends")

    @parameterized.parameters(*range(len(SPECS)))
    def test_element_mask_matches_reference(self, spec_index):
        kw = SPECS[spec_index]
        spec = masking.MaskSpec(30, 27, 32, kw["is_causal"], kw["window"])
        got = masking.element_mask(spec, jnp.arange(32), jnp.arange(32))
        want = np.zeros((32, 32), bool)
        want[:, :27] = reference_mask(1, 32, 27, is_causal=kw["is_causal"], local_window=kw["window"])[0]
        np.testing.assert_array_equal(np.asarray(got), want)

    def test_segments_overlap(self):
        overlap = lambda a, b: bool(masking.segments_overlap(jnp.array(a), jnp.array(b)))
        self.assertTrue(overlap([0, 0, 1], [1, 2, 2]))
        self.assertFalse(overlap([0, 0, 1], [2, 2, 3]))
        self.assertFalse(overlap([masking.Q_DEAD] * 3, [0, 1, 2]))
        self.assertFalse(overlap([0, 1, 2], [masking.KV_DEAD] * 3))
        self.assertFalse(overlap([masking.Q_DEAD] * 2, [masking.KV_DEAD] * 2))


class EncodeSegmentsTest(absltest.TestCase):

    def test_lengths_and_padding_become_dead_ids(self):
        q_seg, kv_seg = masking.encode_segments(None, jnp.array([2, 3]), jnp.array([4, 1]), 2, 3, 4, 8, 8)
        dq, dk = masking.Q_DEAD, masking.KV_DEAD
        np.testing.assert_array_equal(np.asarray(q_seg), [[0, 0] + [dq] * 6, [0, 0, 0] + [dq] * 5])
        np.testing.assert_array_equal(np.asarray(kv_seg), [[0] * 4 + [dk] * 4, [0] + [dk] * 7])
        # Equality of the encoded ids is the reference mask.
        enc = np.asarray(q_seg)[:, :3, None] == np.asarray(kv_seg)[:, None, :4]
        np.testing.assert_array_equal(enc, reference_mask(2, 3, 4, query_lengths=[2, 3], key_lengths=[4, 1]))

    def test_ids_are_kept(self):
        ids = (jnp.array([[3, 3, 5]]), jnp.array([[3, 5, 5, 5]]))
        q_seg, kv_seg = masking.encode_segments(ids, None, None, 1, 3, 4, 4, 4)
        np.testing.assert_array_equal(np.asarray(q_seg), [[3, 3, 5, masking.Q_DEAD]])
        np.testing.assert_array_equal(np.asarray(kv_seg), [[3, 5, 5, 5]])

    def test_nothing_to_encode(self):
        self.assertIsNone(masking.encode_segments(None, None, None, 1, 3, 4, 16, 16))


class BlockSizesTest(absltest.TestCase):

    def test_fit_shrinks_to_the_lengths(self):
        fitted = BlockSizes().fit(20, 5)
        self.assertEqual((fitted.block_q, fitted.block_k), (32, 16))
        self.assertEqual((fitted.block_q_dkv, fitted.block_k_dkv, fitted.block_q_dq, fitted.block_k_dq), (32, 16, 32, 16))
        self.assertEqual(BlockSizes().fit(4096, 4096), BlockSizes())

    def test_validation(self):
        for bad in (dict(block_q=8), dict(block_k=48), dict(block_q_dq=0), dict(num_warps=0), dict(num_stages=0)):
            with pytest.raises(ValueError, match=next(iter(bad))):
                BlockSizes(**bad)

    def test_default_halves_tiles_at_256(self):
        self.assertEqual(BlockSizes.default(128), BlockSizes())
        self.assertLess(BlockSizes.default(256).block_q, BlockSizes().block_q)

    def test_padded_head_dim(self):
        self.assertEqual([padded_head_dim(h) for h in (1, 40, 64, 65, 128, 200, 256)], [64, 64, 64, 128, 128, 256, 256])
        for bad in (0, 257, 64.0):
            with pytest.raises(ValueError, match="head dims"):
                padded_head_dim(bad)


if __name__ == "__main__":
    absltest.main()
