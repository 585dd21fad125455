"""Tests for kernels/masking.py and kernels/block_sizes.py.

Reference: brute force over every (query, key) pair with `kernels.reference.reference_mask` (numpy): a tile
range must contain every tile holding a valid pair (soundness) and, for the causal and window bounds it
computes, no tile without one at its ends (tightness).
"""

import itertools

import jax
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

    def test_ids_are_kept_up_to_a_monotone_relabelling(self):
        # User ids become their rank among the row's distinct ids (3 -> 0, 5 -> 1), so none is reserved.
        ids = (jnp.array([[3, 3, 5]]), jnp.array([[3, 5, 5, 5]]))
        q_seg, kv_seg = masking.encode_segments(ids, None, None, 1, 3, 4, 4, 4)
        np.testing.assert_array_equal(np.asarray(q_seg), [[0, 0, 1, masking.Q_DEAD]])
        np.testing.assert_array_equal(np.asarray(kv_seg), [[0, 1, 1, 1]])

    def test_the_dead_markers_as_user_ids(self):
        lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        q_ids = jnp.array([[lo, lo + 1, hi, 0], [hi, hi, lo, lo]], jnp.int32)
        kv_ids = jnp.array([[lo + 1, lo, hi, 7, 0], [lo, hi, lo + 1, hi, lo]], jnp.int32)
        q_seg, kv_seg = masking.encode_segments((q_ids, kv_ids), jnp.array([4, 3]), jnp.array([5, 4]),
                                                2, 4, 5, 16, 16)
        enc = np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]  # [B, Tp, Sp]
        want = reference_mask(2, 4, 5, query_lengths=[4, 3], key_lengths=[5, 4], segment_ids=(q_ids, kv_ids))
        np.testing.assert_array_equal(enc[:, :4, :5], want)
        self.assertFalse(enc[:, 4:].any() or enc[:, :, 5:].any())  # padding matches nothing


class DenseSegmentIdsTest(parameterized.TestCase):

    @parameterized.parameters(0, 1, 2)
    def test_keeps_equality_and_order_and_is_dense(self, seed):
        rng = np.random.default_rng(seed)
        info = np.iinfo(np.int32)
        pool = np.array([info.min, info.min + 1, -5, 0, 3, 1 << 20, info.max - 1, info.max], np.int32)
        q_ids, kv_ids = rng.choice(pool, (3, 9)), rng.choice(pool, (3, 13))
        q_rank, kv_rank = (np.asarray(x) for x in masking.dense_segment_ids(jnp.asarray(q_ids), jnp.asarray(kv_ids)))
        self.assertEqual((q_rank.dtype, kv_rank.dtype), (np.int32, np.int32))
        both, rank = np.concatenate([q_ids, kv_ids], 1), np.concatenate([q_rank, kv_rank], 1)
        for b in range(3):
            np.testing.assert_array_equal(np.sign(rank[b][:, None] - rank[b][None, :]),
                                          np.sign(both[b][:, None].astype(np.int64) - both[b][None, :]))
            np.testing.assert_array_equal(np.unique(rank[b]), np.arange(len(np.unique(both[b]))))

    def test_int64_ids_beyond_int32_stay_distinct(self):
        with jax.enable_x64(True):
            q_ids = jnp.array([[0, 1 << 32]], jnp.int64)  # equal after a cast to int32
            kv_ids = jnp.array([[1 << 32, 0, -(1 << 40)]], jnp.int64)
            q_rank, kv_rank = masking.dense_segment_ids(q_ids, kv_ids)
        np.testing.assert_array_equal(np.asarray(q_rank), [[1, 2]])
        np.testing.assert_array_equal(np.asarray(kv_rank), [[2, 1, 0]])


class LiveRowsTest(parameterized.TestCase):
    """`live_rows` against brute force over every (query, key) pair: exactly the rows xla keeps."""

    def _check(self, batch, t, s, block, **kw):
        padded_q, padded_k = -(-t // block) * block, -(-s // block) * block
        segments = kw.get("segment_ids")
        seg = masking.encode_segments(
            None if segments is None else tuple(jnp.asarray(x) for x in segments),
            None if kw.get("query_lengths") is None else jnp.asarray(kw["query_lengths"]),
            None if kw.get("key_lengths") is None else jnp.asarray(kw["key_lengths"]),
            batch, t, s, padded_q, padded_k)
        spec = masking.MaskSpec(t, s, padded_k, kw.get("is_causal", False), kw.get("local_window"), seg is not None)
        live = masking.live_rows(spec, seg, padded_q, padded_k, has_ids=segments is not None)
        mask = reference_mask(batch, t, s, **kw)
        want_q = np.zeros((batch, padded_q), bool)
        want_q[:, :t] = mask.any(axis=2)
        want_k = np.zeros((batch, padded_k), bool)
        want_k[:, :s] = mask.any(axis=1)
        if live is None:
            self.assertTrue(mask.any(axis=2).all() and mask.any(axis=1).all(), f"{kw}: dead rows missed")
            return
        got_q, got_k = (np.broadcast_to(np.asarray(x), (batch, x.shape[1])) for x in live)
        np.testing.assert_array_equal(got_q, want_q, err_msg=f"queries, {kw}")
        np.testing.assert_array_equal(got_k, want_k, err_msg=f"keys, {kw}")

    @parameterized.parameters(
        dict(t=20, s=45, is_causal=True),  # keys 20.. are seen by nobody
        dict(t=45, s=20, is_causal=True),  # every row live: no work at all
        dict(t=60, s=20, local_window=(3, 0)),  # queries 23.. see no key
        dict(t=40, s=40, local_window=(None, 0)),
        dict(t=45, s=20, is_causal=True, query_lengths=[10, 0]),  # keys 10.. dead by the combination
        dict(t=33, s=17, query_lengths=[5, 33], key_lengths=[0, 9], local_window=(2, 2)),
    )
    def test_bands_and_lengths(self, t, s, **kw):
        self._check(2, t, s, 16, **kw)

    def test_segment_present_only_outside_the_band(self):
        # Key 20 has id 0, and queries with id 0 exist, but only at t < 16 where causality hides key 20: a
        # membership test of ids alone would call it live.
        ids_q = np.array([[0] * 16 + [1] * 16])
        ids_k = np.array([[1] * 16 + [0] * 16])
        self._check(1, 32, 32, 16, is_causal=True, segment_ids=(ids_q, ids_k))

    @parameterized.parameters(
        dict(is_causal=False, window=None), dict(is_causal=True, window=None),
        dict(is_causal=False, window=(3, 1)), dict(is_causal=True, window=(None, 4)),
    )
    def test_random_lengths_and_unsorted_ids(self, is_causal, window):
        batch, t, s, padded_q, padded_k = 3, 21, 37, 32, 48
        spec = masking.MaskSpec(t, s, padded_k, is_causal, window, True)

        @jax.jit
        def live(q_len, kv_len, q_ids, kv_ids):
            seg = masking.encode_segments((q_ids, kv_ids), q_len, kv_len, batch, t, s, padded_q, padded_k)
            return masking.live_rows(spec, seg, padded_q, padded_k, has_ids=True)

        rng = np.random.default_rng(7)
        info = np.iinfo(np.int32)
        for _ in range(8):
            pool = rng.choice([info.min, info.min + 1, info.max, 0, 1, 2, 3], int(rng.integers(1, 5)), replace=False)
            kw = dict(query_lengths=rng.integers(0, t + 1, batch), key_lengths=rng.integers(0, s + 1, batch),
                      segment_ids=(rng.choice(pool, (batch, t)), rng.choice(pool, (batch, s))))
            got_q, got_k = (np.asarray(x) for x in live(*kw["query_lengths"][None], *kw["key_lengths"][None],
                                                        *(jnp.asarray(x, jnp.int32) for x in kw["segment_ids"])))
            mask = reference_mask(batch, t, s, is_causal=is_causal, local_window=window, **kw)
            np.testing.assert_array_equal(got_q[:, :t], mask.any(axis=2), err_msg=f"queries, {kw}")
            np.testing.assert_array_equal(got_k[:, :s], mask.any(axis=1), err_msg=f"keys, {kw}")
            self.assertFalse(got_q[:, t:].any() or got_k[:, s:].any())

    def test_zero_dead_rows_uses_where(self):
        spec = masking.MaskSpec(4, 6, 6, True, None, False)
        q = jnp.full((1, 4, 1, 2), jnp.nan)
        k = jnp.full((1, 6, 1, 2), jnp.inf)
        _, k_out, v_out = masking.zero_dead_rows(spec, None, q, k, k, has_ids=False)
        np.testing.assert_array_equal(np.isinf(np.asarray(k_out))[0, :, 0, 0], [True] * 4 + [False] * 2)
        np.testing.assert_array_equal(np.asarray(v_out)[0, 4:], 0.0)
        grad = jax.grad(lambda k_: jnp.sum(masking.zero_dead_rows(spec, None, q, k_, k_, has_ids=False)[1]))(k)
        np.testing.assert_array_equal(np.asarray(grad)[0, :, 0, 0], [1, 1, 1, 1, 0, 0])

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
