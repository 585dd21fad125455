"""Tests of experiments/data/splits.py: hash splits that no source sentence crosses, and subsets."""

from __future__ import annotations

import collections

import pytest

from experiments import data
from tests.experiments.data.fixtures import synthetic_pairs


class TestSplits:

    def test_deterministic_and_sources_never_cross(self):
        pairs = synthetic_pairs(3000)
        # The same source with other targets and other spacing/case must follow its first pair.
        pairs += [(pairs[k][0].upper().replace(" ", "  "), f"other {k}") for k in range(0, 3000, 7)]
        splits = data.split_pairs(pairs, 300, 300)
        assert splits == data.split_pairs(pairs, 300, 300)
        assert sum(len(v) for v in splits.values()) == len(pairs)
        where = {}
        for name, members in splits.items():
            for src, _ in members:
                assert where.setdefault(data.split_key(src), name) == name
        shuffled = data.split_pairs(pairs[::-1], 300, 300)
        assert {k: set(v) for k, v in shuffled.items()} == {k: set(v) for k, v in splits.items()}

    def test_sizes_are_close_to_targets_and_cover_lengths(self):
        pairs = synthetic_pairs(20000, max_words=90)
        splits = data.split_pairs(pairs, 1000, 1000)
        assert 1000 <= len(splits["dev"]) <= 1005 and 1000 <= len(splits["test"]) <= 1005
        test_buckets = collections.Counter(min(data.num_words(s) // 10, 8) for s, _ in splits["test"])
        assert set(test_buckets) == set(range(9))

    def test_bad_sizes(self):
        with pytest.raises(ValueError, match="exceeds"):
            data.split_pairs(synthetic_pairs(10), 6, 6)
        with pytest.raises(ValueError, match=">= 0"):
            data.split_pairs(synthetic_pairs(10), -1, 1)

    def test_subsample(self):
        pairs = synthetic_pairs(100)
        small, large = data.subsample(pairs, 10), data.subsample(pairs, 30)
        assert len(small) == 10 and set(small) <= set(large) and small == data.subsample(pairs, 10)
        assert data.subsample(pairs, 0) == pairs


class TestLengthStratifiedTest:

    def test_every_bin_gets_its_minimum_and_nothing_crosses(self):
        pairs = synthetic_pairs(6000, max_words=90)
        plain = data.split_pairs(pairs, 300, 300)
        bins = (10, 20, 40, 60)
        topped = data.split_pairs(pairs, 300, 300, test_min_per_bin=120, test_bins=bins)

        def per_bin(members):
            return collections.Counter(sum(data.num_words(s) > b for b in bins) for s, _ in members)

        assert min(per_bin(plain["test"]).values()) < 120  # the top-up had work to do
        assert all(per_bin(topped["test"])[b] >= 120 for b in range(len(bins) + 1))
        # Dev is untouched, the plain test set is kept, and the added pairs come from train only.
        assert topped["dev"] == plain["dev"]
        assert set(plain["test"]) <= set(topped["test"])
        assert set(topped["test"]) - set(plain["test"]) <= set(plain["train"])
        assert sum(len(v) for v in topped.values()) == len(pairs)
        assert topped == data.split_pairs(pairs[::-1][::-1], 300, 300, test_min_per_bin=120, test_bins=bins)

    def test_too_few_long_pairs_is_an_error_naming_the_bin(self):
        pairs = synthetic_pairs(500, max_words=20)  # sources of at most 21 words
        with pytest.raises(ValueError, match="31- words"):
            data.split_pairs(pairs, 50, 50, test_min_per_bin=10, test_bins=(10, 30))
        with pytest.raises(ValueError, match="increasing"):
            data.split_pairs(pairs, 50, 50, test_min_per_bin=10, test_bins=(30, 10))
