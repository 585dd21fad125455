"""Train / dev / test splits by a hash of the source sentence, and fixed subsets of the training pairs."""

from __future__ import annotations

import collections
from collections.abc import Sequence
import hashlib

from experiments.data.base import Pair
from experiments.data.base import normalize_whitespace


def _unit_hash(text: str, salt: str = "") -> float:
    """A stable hash of ``text`` in [0, 1): SHA-256, so it is the same in every process and run."""
    digest = hashlib.sha256(f"{salt}\x00{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_key(source: str) -> str:
    """The normalised source sentence that decides a pair's split: whitespace collapsed, casefolded."""
    return normalize_whitespace(source).casefold()


def split_pairs(pairs: Sequence[Pair], dev_size: int, test_size: int) -> dict[str, list[Pair]]:
    """Splits pairs into train/dev/test by a hash of the normalised source sentence.

    Each distinct source (`split_key`) gets h in [0, 1), the SHA-256 of its text. Sources are taken
    in increasing h: the first ones go to test until it holds >= ``test_size`` pairs, the next ones
    to dev until it holds >= ``dev_size``, the rest to train. This amounts to hash-bucket
    thresholds chosen for the target sizes: every pair with the same source lands in the same
    split, the sizes hit the targets (overshooting by at most one source's pairs), the assignment is
    identical in every run and independent of the input order, and, being blind to length and
    content, dev and test follow the corpus's length distribution.

    Args:
      pairs: (source, target) pairs.
      dev_size: target number of dev pairs (>= 0).
      test_size: target number of test pairs (>= 0).

    Returns:
      ``{"train": [...], "dev": [...], "test": [...]}``, each in the input order.

    Raises:
      ValueError: if a size is negative or dev_size + test_size exceeds len(pairs).
    """
    if dev_size < 0 or test_size < 0:
        raise ValueError(f"split sizes must be >= 0, got {dev_size=} {test_size=}")
    if dev_size + test_size > len(pairs):
        raise ValueError(f"{dev_size=} + {test_size=} exceeds the {len(pairs)} pairs available")
    counts = collections.Counter(split_key(src) for src, _ in pairs)
    assignment: dict[str, str] = {}
    filled = {"test": 0, "dev": 0}
    for key in sorted(counts, key=lambda k: (_unit_hash(k, "split"), k)):
        name = ("test" if filled["test"] < test_size else "dev" if filled["dev"] < dev_size else "train")
        assignment[key] = name
        if name != "train":
            filled[name] += counts[key]
    splits: dict[str, list[Pair]] = {"train": [], "dev": [], "test": []}
    for pair in pairs:
        splits[assignment[split_key(pair[0])]].append(pair)
    return splits


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
