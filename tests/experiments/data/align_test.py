"""Tests of experiments/data/align.py: Gale & Church alignment by length, with and without verse keys."""

from __future__ import annotations

import pytest

from experiments import data


class TestAlignByLength:

    def test_align_by_length(self):
        lengths = [50, 120, 80, 200, 60, 140]
        assert data.align_by_length(lengths, lengths) == [(k, k + 1, k, k + 1) for k in range(6)]
        # The target merges source sentences 1 and 2 and splits sentence 5 in two.
        beads = data.align_by_length(lengths, [50, 200, 200, 60, 70, 70])
        assert beads == [(0, 1, 0, 1), (1, 3, 1, 2), (3, 4, 2, 3), (4, 5, 3, 4), (5, 6, 4, 6)]
        # A close call: by length alone a one-sentence shift fits better; matching keys keep 1-1.
        src, tgt = [98, 39, 44, 45, 53, 139], [137, 44, 45, 53, 42, 97]
        assert data.align_by_length(src, tgt) == [(0, 2, 0, 1), (2, 3, 1, 2), (3, 4, 2, 3), (4, 5, 3, 4),
                                                  (5, 6, 4, 6)]
        keys = list(range(6))
        assert data.align_by_length(src, tgt, src_keys=keys, tgt_keys=keys) == [(k, k + 1, k, k + 1) for k in range(6)]
        assert data.align_by_length([], [3]) == [(0, 0, 0, 1)]
        with pytest.raises(ValueError):
            data.align_by_length([1], [1], src_keys=["a"])
