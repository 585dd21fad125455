"""Train / dev / test splits by a hash of the source sentence, and fixed subsets of the training pairs."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence
import hashlib

from experiments.data.base import Pair
from experiments.data.base import normalize_whitespace
from experiments.data.base import num_words


def _unit_hash(text: str, salt: str = "") -> float:
    """A stable hash of ``text`` in [0, 1): SHA-256, so it is the same in every process and run."""
    digest = hashlib.sha256(f"{salt}\x00{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_key(source: str) -> str:
    """The normalised source sentence that decides a pair's split: whitespace collapsed, casefolded."""
    return normalize_whitespace(source).casefold()


def split_pairs(pairs: Sequence[Pair], dev_size: int, test_size: int, *, test_min_per_bin: int = 0,
                test_bins: Sequence[int] = ()) -> dict[str, list[Pair]]:
    """Splits pairs into train/dev/test by a hash of the normalised source sentence.

    Each distinct source (`split_key`) gets h in [0, 1), the SHA-256 of its text. Sources are taken
    in increasing h: the first ones go to test until it holds >= ``test_size`` pairs, the next ones
    to dev until it holds >= ``dev_size``, the rest to train. This amounts to hash-bucket
    thresholds chosen for the target sizes: every pair with the same source lands in the same
    split, the sizes hit the targets (overshooting by at most one source's pairs), the assignment is
    identical in every run and independent of the input order, and, being blind to length and
    content, dev and test follow the corpus's length distribution.

    A test set drawn this way holds few long sentences (on the Bible corpus 2% of the verses have over 50
    words). ``test_min_per_bin`` tops it up: for every source-length bin (`length_bins`) whose test pairs
    number fewer, further sources of that length move from train to test, again in increasing hash order,
    until the bin holds ``test_min_per_bin`` pairs. The test set then over-represents the long bins (say so
    where its corpus BLEU is reported), while every bin of a BLEU-by-length figure rests on enough sentences
    (Luong et al. 2015, arXiv:1508.04025, Fig. 6; Bahdanau et al. 2014, arXiv:1409.0473, Fig. 2).

    Args:
      pairs: (source, target) pairs.
      dev_size: target number of dev pairs (>= 0).
      test_size: target number of test pairs (>= 0), before the top-up.
      test_min_per_bin: 0 (no top-up) or the fewest test pairs each bin of ``test_bins`` must hold.
      test_bins: increasing word-count edges of the source-length bins, as in
        `experiments.evaluation.bleu_by_length` (edges (10, 20) give the bins 1-10, 11-20 and 21+).

    Returns:
      ``{"train": [...], "dev": [...], "test": [...]}``, each in the input order.

    Raises:
      ValueError: if a size is negative, dev_size + test_size exceeds len(pairs), the bins are not
        increasing, or a bin has too few pairs outside dev to reach ``test_min_per_bin``.
    """
    if dev_size < 0 or test_size < 0 or test_min_per_bin < 0:
        raise ValueError(f"split sizes must be >= 0, got {dev_size=} {test_size=} {test_min_per_bin=}")
    if dev_size + test_size > len(pairs):
        raise ValueError(f"{dev_size=} + {test_size=} exceeds the {len(pairs)} pairs available")
    bins = [int(b) for b in test_bins]
    if test_min_per_bin and (not bins or bins != sorted(set(bins)) or bins[0] < 1):
        raise ValueError(f"test_bins must be increasing positive word counts, got {tuple(test_bins)}")
    counts = collections.Counter(split_key(src) for src, _ in pairs)
    assignment: dict[str, str] = {}
    filled = {"test": 0, "dev": 0}
    ordered = sorted(counts, key=lambda k: (_unit_hash(k, "split"), k))
    for key in ordered:
        name = ("test" if filled["test"] < test_size else "dev" if filled["dev"] < dev_size else "train")
        assignment[key] = name
        if name != "train":
            filled[name] += counts[key]
    if test_min_per_bin:
        _top_up_test(pairs, counts, ordered, assignment, test_min_per_bin, bins)
    splits: dict[str, list[Pair]] = {"train": [], "dev": [], "test": []}
    for pair in pairs:
        splits[assignment[split_key(pair[0])]].append(pair)
    return splits


def _length_bin(words: int, bins: Sequence[int]) -> int:
    """The index of the bin (edges ``bins``, open last bin) holding a source of ``words`` words."""
    return bisect.bisect_left(list(bins), words)


def _top_up_test(pairs: Sequence[Pair], counts: collections.Counter, ordered: Sequence[str],
                 assignment: dict[str, str], minimum: int, bins: Sequence[int]) -> None:
    """Moves train sources (in hash order) to test until every length bin holds ``minimum`` test pairs."""
    words = {split_key(src): num_words(src) for src, _ in pairs}
    have = collections.Counter()
    for key, name in assignment.items():
        if name == "test":
            have[_length_bin(words[key], bins)] += counts[key]
    for key in ordered:
        b = _length_bin(words[key], bins)
        if assignment[key] == "train" and have[b] < minimum:
            assignment[key] = "test"
            have[b] += counts[key]
    short = [b for b in range(len(bins) + 1) if have[b] < minimum]
    if short:
        edges = [0, *bins]
        label = ", ".join(f"{edges[b] + 1}-{bins[b] if b < len(bins) else ''} words ({have[b]})" for b in short)
        raise ValueError(f"too few pairs outside dev to give every length bin {minimum} test pairs: {label}")


def subsample(pairs: Sequence[Pair], max_pairs: int) -> list[Pair]:
    """A fixed subset of ``max_pairs`` pairs (all if ``max_pairs`` is 0 or exceeds the count).

    The pairs with the smallest hash of the whole pair are kept, in input order: the same subset in
    every run, and a subset of the one for a larger ``max_pairs``.
    """
    if max_pairs <= 0 or max_pairs >= len(pairs):
        return list(pairs)
    ranked = sorted(range(len(pairs)), key=lambda k: _unit_hash("\t".join(pairs[k]), "subsample"))
    keep = sorted(ranked[:max_pairs])
    return [pairs[k] for k in keep]
