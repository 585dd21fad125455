"""The Ding German-English dictionary (Debian ``trans-de-en``): its line format and its sentence pairs.

One entry per line, ``German side :: English side``; each side holds `` | ``-separated sub-entries (sub-entry i
of one side translates sub-entry i of the other), ``; ``-separated synonyms and ``{...}``, ``[...]``, ``(...)``
annotations (``shared/DATA.md``). `load_ding` keeps the pairs whose two sides are sentences: about 18.7k.
"""

from __future__ import annotations

import os
import pathlib
import re

from experiments.data.base import DataError
from experiments.data.base import Pair
from experiments.data.base import dedupe
from experiments.data.base import normalize_whitespace
from experiments.data.base import num_words

DING_PACKAGE = "trans-de-en"
DING_FILE = pathlib.PurePosixPath("usr/share/trans/de-en")

# Innermost {...}, [...] or (...) annotation, with the whitespace before it. It never crosses '|',
# so an unbalanced bracket cannot swallow a neighbouring sub-entry.
_ANNOTATION = re.compile(r"(\s*)(?:\{[^{}|]*\}|\[[^\[\]|]*\]|\([^()|]*\))")


def strip_annotations(text: str) -> str:
    """Removes Ding annotations: ``{m}`` grammar, ``[ugs.]`` register, ``(...)`` glosses (nested too).

    The whitespace before an annotation goes with it (``Haus (alt).`` -> ``Haus.``), unless the
    annotation is glued to the next word (``petrol (a)round`` -> ``petrol round``).

    Args:
      text: one side (or sub-entry) of a Ding line.

    Returns:
      The text without annotations, whitespace not yet normalised.
    """
    def repl(match: re.Match[str]) -> str:
        after = match.string[match.end():match.end() + 1]
        return match.group(1) if after.isalnum() else ""

    while True:
        stripped = _ANNOTATION.sub(repl, text)
        if stripped == text:
            return text
        text = stripped


def parse_ding_line(line: str) -> list[Pair]:
    """Aligned (German, English) sub-entry pairs of one Ding line, per DATA.md.

    The two sides are split at `` :: ``; each side into sub-entries at `` | `` (sub-entry i of one
    side translates sub-entry i of the other); annotations are stripped; of the ``; ``-separated
    synonyms the first is kept; whitespace is normalised. Header lines (``#``), lines without
    `` :: `` and entries whose sides have different sub-entry counts give no pairs.

    Args:
      line: one line of ``usr/share/trans/de-en``.

    Returns:
      Every aligned pair whose two sides are non-empty: words, phrases and sentences alike.
    """
    line = line.strip()
    if not line or line.startswith("#") or " :: " not in line:
        return []
    german, english = line.split(" :: ", 1)
    de_parts = strip_annotations(german).split(" | ")
    en_parts = strip_annotations(english).split(" | ")
    if len(de_parts) != len(en_parts):
        return []
    pairs = []
    for de, en in zip(de_parts, en_parts):
        de = normalize_whitespace(de.split("; ")[0])
        en = normalize_whitespace(en.split("; ")[0])
        if de and en:
            pairs.append((de, en))
    return pairs


def is_sentence(text: str, min_words: int = 4) -> bool:
    """DATA.md's sentence rule: at least ``min_words`` words and a final ``.``, ``!`` or ``?``."""
    return num_words(text) >= min_words and text.endswith((".", "!", "?"))


def load_ding(path: str | os.PathLike[str]) -> list[Pair]:
    """Reads the sentence pairs of the Ding German-English dictionary (``trans-de-en``).

    Args:
      path: the dictionary file (``usr/share/trans/de-en`` of the package), UTF-8.

    Returns:
      (German, English) pairs, both sides sentences by `is_sentence`, identical pairs removed,
      in file order: about 18.7k pairs from the Debian 1.9-6 file.

    Raises:
      DataError: if the file is missing or not UTF-8.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"Ding dictionary file {str(path)!r} does not exist; point to the 'de-en' file of "
                        f"the Debian package {DING_PACKAGE!r}.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"Ding dictionary file {str(path)!r} is not UTF-8 ({e.reason} at byte {e.start}); "
                        f"use the file of the Debian package {DING_PACKAGE!r}.") from None
    pairs = []
    for line in text.splitlines():
        german, _, english = line.partition(" :: ")
        if not (any(c in german for c in ".!?") and any(c in english for c in ".!?")):
            continue  # no sentence on one side: skip the parsing
        for de, en in parse_ding_line(line):
            if is_sentence(de) and is_sentence(en):
                pairs.append((de, en))
    return dedupe(pairs)
