"""What every data module shares: the error type, the pair type, whitespace and word counts."""

from __future__ import annotations

from collections.abc import Iterable

Pair = tuple[str, str]


class DataError(Exception):
    """The data cannot be obtained or read; the message names the problem and the fix in one sentence."""


def normalize_whitespace(text: str) -> str:
    """Collapses every run of whitespace to one space and strips both ends."""
    return " ".join(text.split())


def num_words(text: str) -> int:
    """Number of whitespace-separated words: the length unit of ``max_words`` and DATA.md."""
    return len(text.split())


def dedupe(pairs: Iterable[Pair]) -> list[Pair]:
    """Drops repeated identical pairs, keeping the first occurrence and the order."""
    return list(dict.fromkeys(pairs))
