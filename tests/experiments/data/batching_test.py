"""Tests of experiments/data/batching.py: padded bucketed batches, fillers, shuffling and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import data


def make_examples(lengths: list[tuple[int, int]]) -> list[data.Example]:
    return [data.Example(tuple(range(10, 10 + s)), tuple(range(100, 100 + t)), f"s{k}", f"t{k}")
            for k, (s, t) in enumerate(lengths)]



class TestBatches:

    def test_shapes_padding_shift_and_fillers(self):
        examples = make_examples([(3, 2), (5, 6), (1, 1)])
        (batch,) = list(data.batches(examples, 4, (4, 8), shuffle=False, seed=0, epoch=0))
        assert batch["src"].shape == (4, 8) and batch["tgt_in"].shape == (4, 8)
        for key, dtype in (("src", np.int32), ("src_lengths", np.int32), ("tgt_in", np.int32),
                           ("tgt_out", np.int32), ("tgt_mask", np.float32), ("index", np.int32)):
            assert batch[key].dtype == dtype, key
        rows = {int(k): r for r, k in enumerate(batch["index"]) if k >= 0}
        assert sorted(rows) == [0, 1, 2]
        r = rows[0]
        np.testing.assert_array_equal(batch["src"][r], [10, 11, 12, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(batch["tgt_in"][r], [data.BOS_ID, 100, 101, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(batch["tgt_out"][r], [100, 101, data.EOS_ID, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(batch["tgt_mask"][r], [1, 1, 1, 0, 0, 0, 0, 0])
        assert batch["src_lengths"][r] == 3
        filler = [r for r, k in enumerate(batch["index"]) if k < 0]
        assert len(filler) == 1
        f = filler[0]
        assert batch["src_lengths"][f] == 0 and not batch["src"][f].any() and not batch["tgt_mask"][f].any()
        assert not batch["tgt_in"][f].any() and not batch["tgt_out"][f].any()

    def test_bucket_boundaries(self):
        # Beyond the last boundary 16: steps of 8 (16 - 8), so 17 -> 24 and 41 -> 48.
        buckets = (4, 8, 16)
        for s, t, want in [(4, 3, (4, 4)), (5, 3, (8, 4)), (2, 4, (4, 8)), (16, 15, (16, 16)),
                           (17, 1, (24, 4)), (40, 40, (40, 48)), (24, 25, (24, 32))]:
            (batch,) = list(data.batches(make_examples([(s, t)]), 2, buckets, shuffle=False, seed=0, epoch=0))
            assert (batch["src"].shape[1], batch["tgt_in"].shape[1]) == want, (s, t)

    def test_every_example_once_few_shapes_only_last_batch_filled(self):
        rng = np.random.default_rng(0)
        examples = make_examples([(int(rng.integers(1, 30)), int(rng.integers(1, 30))) for _ in range(203)])
        got = list(data.batches(examples, 16, (8, 16, 32), shuffle=True, seed=3, epoch=1))
        assert len(got) == 13
        index = np.concatenate([b["index"] for b in got])
        assert sorted(index[index >= 0].tolist()) == list(range(203)) and (index < 0).sum() == 13 * 16 - 203
        assert sum(bool((b["index"] < 0).any()) for b in got) == 1
        assert {b["src"].shape[1] for b in got} <= {8, 16, 32}
        for b in got:
            assert b["src"].shape[0] == 16
            for row, k in enumerate(b["index"]):
                if k >= 0:
                    assert b["src_lengths"][row] == len(examples[k].src_ids)
                    assert b["tgt_mask"][row].sum() == len(examples[k].tgt_ids) + 1

    def test_bucketing_groups_similar_lengths(self):
        examples = make_examples([(2, 2)] * 32 + [(30, 30)] * 32)
        for b in data.batches(examples, 16, (4, 32), shuffle=True, seed=0, epoch=0):
            assert b["src"].shape[1] == (4 if b["index"].max() < 32 else 32)

    def test_batch_order_is_shuffled(self):
        examples = make_examples([(2, 2)] * 64 + [(30, 30)] * 64)
        widths = [b["src"].shape[1] for b in data.batches(examples, 8, (4, 32), shuffle=True, seed=0, epoch=0)]
        assert sorted(widths) == [4] * 8 + [32] * 8 and widths != sorted(widths)
        widths = [b["src"].shape[1] for b in data.batches(examples, 8, (4, 32), shuffle=False, seed=0, epoch=0)]
        assert widths == sorted(widths)

    def test_determinism(self):
        examples = make_examples([(k % 13 + 1, k % 7 + 1) for k in range(100)])

        def order(**kw):
            return [b["index"].tolist() for b in data.batches(examples, 8, (4, 8, 16), **kw)]

        assert order(shuffle=True, seed=1, epoch=2) == order(shuffle=True, seed=1, epoch=2)
        assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=1, epoch=3)
        assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=2, epoch=2)
        assert order(shuffle=False, seed=0, epoch=0) == order(shuffle=False, seed=5, epoch=9)

    def test_bad_arguments(self):
        examples = make_examples([(1, 1)])
        with pytest.raises(ValueError, match="batch_size"):
            list(data.batches(examples, 0, (4,), shuffle=False, seed=0, epoch=0))
        with pytest.raises(ValueError, match="increasing"):
            list(data.batches(examples, 2, (8, 4), shuffle=False, seed=0, epoch=0))
        assert not list(data.batches([], 2, (4,), shuffle=False, seed=0, epoch=0))
