"""Parallel text for the translation experiments: corpora, splits, SentencePiece, padded batches.

Two default corpora ship inside Debian packages (see ``shared/DATA.md``); a user's own parallel text
(for example WMT'14) is read from a TSV file or two aligned files instead:

* ``ding_de_en``: German->English sentence pairs from the Ding dictionary (``trans-de-en``):
  about 18.7k pairs, 8 English words on average.
* ``bible_en_es``: English->Spanish verse pairs, King James Version -> Reina-Valera 1909
  (``sword-text-kjv`` + ``sword-text-sparv``): about 30.8k pairs, 25.6 English words on average
  (median 24, 3% over 50), for Bahdanau et al.'s BLEU-by-length analysis (arXiv:1409.0473, Fig. 2).
  The Reina-Valera divides some chapters differently; those are re-aligned by length (`load_sword`).

The pipeline, as `prepare` runs it:

1. `get_pairs`: download and unpack the packages once (`obtain_debian_package`), parse them
   (`load_ding`, `load_sword`) and cache the pairs as ``<data_dir>/<corpus>.pairs.v<N>.tsv``.
2. Keep pairs with at most ``max_words`` whitespace words on both sides; this holds for every
   split, so dev and test never contain longer pairs either.
3. `split_pairs`: train/dev/test by a SHA-256 hash of the normalised source sentence, so a source
   sentence that occurs in several pairs never crosses splits; dev and test get ``dev_size`` and
   ``test_size`` pairs (up to one source's repeats more).
4. ``max_train``: optionally keep a fixed, hash-chosen subset of the training pairs.
5. `load_or_train_tokenizer`: one joint BPE SentencePiece model over the training sources and
   targets, with pad=0, unk=1, bos=2, eos=3, cached by a hash of its training text.
6. Encode; training examples longer than the last bucket boundary (source tokens, or target tokens
   + 1) are dropped; dev and test keep every example (`batches` pads those to a multiple of the
   last boundary).

`batches` turns examples into fixed-size numpy batches padded to a few bucket lengths.

Lengths: S = source tokens, T = target tokens + 1 (BOS or EOS), B = batch size.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
import dataclasses
import hashlib
import html
import io
import math
import os
import pathlib
import re
import shutil
import struct
import subprocess
import tempfile
import time
from typing import Any
import zlib

from absl import logging
import numpy as np
from scipy import special as scipy_special

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3

CORPORA = ("ding_de_en", "bible_en_es")
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "attention_jax")

# Debian packages of each corpus, and where the data lies inside them.
DING_PACKAGE = "trans-de-en"
DING_FILE = pathlib.PurePosixPath("usr/share/trans/de-en")
KJV_PACKAGE = "sword-text-kjv"
RV_PACKAGE = "sword-text-sparv"
SWORD_ZTEXT_DIR = pathlib.PurePosixPath("usr/share/sword/modules/texts/ztext")

# Bump when a parser changes, so stale pair caches are not reused.
_PARSER_VERSION = 2

_DATA_PATH_FORMAT = ("a UTF-8 TSV file with one 'source<TAB>target' pair per line, or two line-aligned "
                     "files given as --data_path=SOURCE_FILE,TARGET_FILE")

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


# ----------------------------------------------------------------------------------------------
# Ding (trans-de-en)
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# SWORD zText modules (sword-text-kjv, sword-text-sparv)
# ----------------------------------------------------------------------------------------------

# KJV versification (SWORD canon_kjv): book OSIS id followed by its chapters' verse counts.
_KJV_OT = """
Gen 31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 22 35 43 55
   32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26
Exod 22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 43 46 38
   18 35 23 35 35 38 29 31 43 38
Lev 17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34
Num 54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 31 40 16 54
   42 56 29 34 13
Deut 46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 19 19 26 68 29 20
   30 52 29 12
Josh 18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33
Judg 36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25
Ruth 22 23 18 22
1Sam 28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12 25 11 31
   13
2Sam 27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25
1Kgs 53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53
2Kgs 18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30
1Chr 54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30
2Chr 17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 27 36 27 21
   33 25 33 27 23
Ezra 11 70 13 24 17 22 28 36 15 44
Neh 11 20 32 23 19 19 73 18 38 39 36 47 31
Esth 22 23 15 17 14 14 10 17 32 3
Job 22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 28 25 31 40
   22 33 37 16 33 24 41 30 24 34 17
Ps 6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 24 11 22 22 28
   12 40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 17 12 8 12 11 10 13 20 7 35
   36 5 24 20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 7 18 52 17 16 15 5 23 11 13 12 9 9 5 8 28
   22 35 45 48 43 13 31 7 10 10 9 8 18 19 2 29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9 8 24
   13 10 7 12 15 21 10 20 14 9 6
Prov 33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 28 27 33
   31
Eccl 18 26 22 16 20 12 29 17 18 20 10 14
Song 17 17 11 16 16 13 13 14
Isa 31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 24 33 9 20 24
   17 10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 12 21 14 21 22 11 12 19 12
   25 24
Jer 19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 17 32 24 40
   44 26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34
Lam 22 22 66 22 22
Ezek 28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 26 21 26 18
   32 33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35
Dan 21 49 30 37 31 28 28 27 27 21 45 13
Hos 11 23 5 19 15 11 16 14 17 15 12 14 16 9
Joel 20 32 21
Amos 15 16 15 13 27 14 17 14 15
Obad 21
Jonah 17 10 10 11
Mic 16 13 12 13 15 16 20
Nah 15 13 19
Hab 17 20 19
Zeph 18 15 20
Hag 15 23
Zech 21 13 10 14 11 15 14 23 17 12 17 14 9 21
Mal 14 17 18 6
"""
_KJV_NT = """
Matt 25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20
Mark 45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20
Luke 80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53
John 51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25
Acts 26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31
Rom 32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27
1Cor 31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24
2Cor 24 17 18 18 21 18 16 24 15 18 33 21 14
Gal 24 21 29 31 26 18
Eph 23 22 21 32 33 24
Phil 30 30 21 23
Col 29 23 25 18
1Thess 10 20 13 18 28
2Thess 12 17 18
1Tim 20 15 16 16 25 21
2Tim 18 26 17 22
Titus 16 15 15
Phlm 25
Heb 14 18 19 16 14 20 28 13 28 39 40 29 25
Jas 27 26 18 17 20
1Pet 25 25 22 19 14
2Pet 21 22 18
1John 10 29 24 21 21
2John 13
3John 14
Jude 25
Rev 20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21
"""


def _parse_versification(table: str) -> list[tuple[str, tuple[int, ...]]]:
    books: list[tuple[str, list[int]]] = []
    for token in table.split():
        if token.isdigit():
            books[-1][1].append(int(token))
        else:
            books.append((token, []))
    return [(name, tuple(counts)) for name, counts in books]


KJV_BOOKS = {"ot": _parse_versification(_KJV_OT), "nt": _parse_versification(_KJV_NT)}


def kjv_verse_records(testament: str) -> list[tuple[int, str, int, int]]:
    """Where each verse of the KJV versification sits in a zText ``ot``/``nt`` verse index (.bzv).

    SWORD orders a testament's entries as: module header, testament intro, then per book a book
    intro followed, per chapter, by a chapter intro and the chapter's verses. The intro entries
    hold titles and markup, not verses, so they are never paired.

    Args:
      testament: ``"ot"`` (39 books, 23,145 verses) or ``"nt"`` (27 books, 7,957 verses).

    Returns:
      (record index, book OSIS id, chapter, verse) per verse, in canonical order; e.g. Genesis 1:1
      is record 4 of ``ot``.

    Raises:
      ValueError: if ``testament`` is neither ``"ot"`` nor ``"nt"``.
    """
    if testament not in KJV_BOOKS:
        raise ValueError(f"testament must be 'ot' or 'nt', got {testament!r}")
    records, index = [], 2
    for book, chapters in KJV_BOOKS[testament]:
        index += 1  # book intro
        for chapter, verses in enumerate(chapters, start=1):
            index += 1  # chapter intro
            for verse in range(1, verses + 1):
                records.append((index, book, chapter, verse))
                index += 1
    return records


def kjv_num_records(testament: str) -> int:
    """Number of entries in a KJV-versified zText verse index: 24,115 (``ot``) or 8,246 (``nt``)."""
    last = kjv_verse_records(testament)[-1][0]
    return last + 1


def read_ztext(module_dir: str | os.PathLike[str], testament: str) -> list[str]:
    """Decodes every entry of one testament of a SWORD zText module.

    Format: ``<t>.bzs`` holds little-endian uint32 triples (offset, compressed size, uncompressed
    size) of the zlib blocks concatenated in ``<t>.bzz``; ``<t>.bzv`` holds one 10-byte record per
    entry, little-endian (uint32 block, uint32 offset in the decompressed block, uint16 size).

    Args:
      module_dir: the module directory, e.g. ``.../modules/texts/ztext/engKJV2006eb``.
      testament: ``"ot"`` or ``"nt"``.

    Returns:
      The raw (OSIS XML) text of each entry, ``""`` for empty ones, indexed like the .bzv file.

    Raises:
      DataError: if a file is missing or the three files are inconsistent.
    """
    base = pathlib.Path(module_dir)
    try:
        bzs = (base / f"{testament}.bzs").read_bytes()
        bzz = (base / f"{testament}.bzz").read_bytes()
        bzv = (base / f"{testament}.bzv").read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"SWORD module file {e.filename!r} does not exist; reinstall the module "
                        f"(delete its extracted/ folder in the data directory to download it again).") from None
    if len(bzs) % 12 or len(bzv) % 10:
        raise DataError(f"SWORD index files in {str(base)!r} have sizes {len(bzs)} (.bzs, want a multiple of 12) "
                        f"and {len(bzv)} (.bzv, want a multiple of 10); delete the extracted module to fetch "
                        f"it again.")
    blocks: dict[int, bytes] = {}

    def block(number: int) -> bytes:
        if number not in blocks:
            if number >= len(bzs) // 12:
                raise DataError(f"SWORD verse index {str(base / testament)}.bzv points to block {number} of "
                                f"{len(bzs) // 12}; delete the extracted module to fetch it again.")
            offset, csize, usize = struct.unpack_from("<III", bzs, 12 * number)
            try:
                data = zlib.decompress(bzz[offset:offset + csize])
            except zlib.error as e:
                raise DataError(f"SWORD block {number} of {str(base / testament)}.bzz does not decompress ({e}); "
                                f"delete the extracted module to fetch it again.") from None
            if len(data) != usize:
                raise DataError(f"SWORD block {number} of {str(base / testament)}.bzz has {len(data)} bytes, "
                                f"the index says {usize}; delete the extracted module to fetch it again.")
            blocks[number] = data
        return blocks[number]

    entries = []
    for number, offset, size in struct.iter_unpack("<IIH", bzv):
        if size == 0:
            entries.append("")
            continue
        data = block(number)[offset:offset + size]
        entries.append(data.decode("utf-8", errors="replace"))
    return entries


_NOTE = re.compile(r"<note\b[^>]*?(?:/>|>.*?</note\s*>)", re.DOTALL)
_EMPTY_ELEMENT = re.compile(r"<[^<>]*/>")
_TAG = re.compile(r"<[^<>]*>")


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS verse: notes dropped with their content, then every other tag, then
    whitespace collapsed.

    Empty elements (``<milestone/>``, ``<l/>``, ``<chapter/>``) become a space; start and end tags
    (``<w>``, ``<transChange>``) vanish without one, since they can sit inside a word
    (``repartiéron<transChange>lo</transChange>``). Entities are unescaped; the KJV paragraph
    sign ``¶`` is dropped.

    Args:
      osis: the entry text from `read_ztext`.

    Returns:
      The verse as one line, possibly empty.
    """
    text = _NOTE.sub(" ", osis)
    text = _EMPTY_ELEMENT.sub(" ", text)
    text = _TAG.sub("", text)
    text = html.unescape(text).replace("\u00b6", " ")
    return normalize_whitespace(text)


# Gale & Church (1993), "A Program for Aligning Sentences in Bilingual Corpora", Computational
# Linguistics 19(1): -log prior of each bead (source sentences, target sentences). Verses are nearly
# always 1-1 here; the rest absorbs the places where the two Bibles divide verses differently.
_NEG_LOG_PRIOR = {(1, 1): -math.log(0.95), (1, 0): -math.log(0.003), (0, 1): -math.log(0.003),
                  (2, 1): -math.log(0.015), (1, 2): -math.log(0.015), (2, 2): -math.log(0.003)}
_NEG_LOG_PRIOR_MANY = -math.log(0.001)  # k-1 and 1-k beads, 3 <= k <= max_merge
# Extra cost of a 1-1 bead joining sentences with different keys (verse references), when keys are
# given: the verse numbers agree almost everywhere, and length alone can be fooled by runs of
# verses of similar length (it shifted Job 20 by one verse without this).
_KEY_MISMATCH_COST = 1.5
# k-1 and 1-k beads (k >= 3) are only tried while |delta| of the merge stays below this.
_MAX_MERGE_DELTA = 4.0
# Variance of the length difference per character. Gale & Church's 6.8 is for sentences of
# European parliament text; on the 1-1 KJV / Reina-Valera verses it is 1.7.
CHAR_VARIANCE = 2.0


def _neg_log_length_prob(ls: np.ndarray, lt: np.ndarray, ratio: float,
                         char_variance: float) -> tuple[np.ndarray, np.ndarray]:
    """Gale & Church's -log P(|delta|) and the signed delta, for ls source and lt target characters."""
    ls, lt = np.asarray(ls, np.float64), np.asarray(lt, np.float64)
    mean = (ls + lt / ratio) / 2
    delta = (lt - ratio * ls) / np.sqrt(char_variance * np.maximum(mean, 1e-9))
    delta = np.where(mean > 0, delta, 0.0)
    return -(math.log(2.0) + scipy_special.log_ndtr(-np.abs(delta))), delta


def align_by_length(src_lengths: Sequence[int], tgt_lengths: Sequence[int], *,
                    src_keys: Sequence[Any] | None = None, tgt_keys: Sequence[Any] | None = None, band: int = 10,
                    char_variance: float = CHAR_VARIANCE, max_merge: int = 10) -> list[tuple[int, int, int, int]]:
    """Aligns two sequences of sentences by their character lengths (Gale & Church 1993).

    A dynamic programme over beads of 1-1, 1-0, 0-1, 2-2, k-1 and 1-k sentences (k <= ``max_merge``)
    minimises the sum of -log P(bead) - log P(|delta|), where delta = (l_t - c l_s) /
    sqrt(s^2 (l_s + l_t / c) / 2), c is the overall length ratio, s^2 = ``char_variance`` and
    P(|delta|) the two-sided normal tail. With keys (verse references), a 1-1 bead of sentences
    whose keys differ costs a further 1.5, so length evidence must be clear to shift the
    alignment away from the numbering. Only cells within ``band`` sentences of the diagonal
    j = i m / n are visited (the band doubles until a path exists), so the cost is linear in n.

    Args:
      src_lengths: [n] character lengths of the source sentences, in order.
      tgt_lengths: [m] character lengths of the target sentences, in order.
      src_keys: optional [n] labels of the source sentences (e.g. "Gen.1.1").
      tgt_keys: optional [m] labels of the target sentences; given together with ``src_keys``.
      band: half-width of the visited band around the diagonal, in sentences (>= 1).
      char_variance: s^2, variance of the length difference per character (> 0).
      max_merge: the largest k of a k-1 or 1-k bead (>= 2).

    Returns:
      Beads (i0, i1, j0, j1) in order, covering both sequences: source sentences i0:i1 align with
      target sentences j0:j1 (one of the two ranges is empty for a 1-0 or 0-1 bead).

    Raises:
      ValueError: for a negative length, keys of the wrong length, band < 1, char_variance <= 0 or
        max_merge < 2.
    """
    n, m = len(src_lengths), len(tgt_lengths)
    if (src_keys is None) != (tgt_keys is None) or (
            src_keys is not None and (len(src_keys) != n or len(tgt_keys) != m)):
        raise ValueError(f"src_keys and tgt_keys must both be given, with {n} and {m} entries")
    if band < 1 or char_variance <= 0 or max_merge < 2:
        raise ValueError(f"need band >= 1, char_variance > 0, max_merge >= 2; "
                         f"got {band=} {char_variance=} {max_merge=}")
    if any(x < 0 for x in src_lengths) or any(x < 0 for x in tgt_lengths):
        raise ValueError("sentence lengths must be non-negative")
    if n == 0 or m == 0:
        return [(i, i + 1, 0, 0) for i in range(n)] + [(n, n, j, j + 1) for j in range(m)]
    ratio = max(sum(tgt_lengths), 1) / max(sum(src_lengths), 1)
    src_cum = np.concatenate([[0], np.cumsum(src_lengths)]).astype(np.int64)  # [n + 1]
    tgt_cum = np.concatenate([[0], np.cumsum(tgt_lengths)]).astype(np.int64)  # [m + 1]
    inf = float("inf")
    while True:
        width = 2 * band + 1
        rows = np.arange(n + 1)
        lows = np.clip((rows * m) // n - band, 0, max(0, m + 1 - width))  # [n + 1] first j of each row
        cols = lows[:, None] + np.arange(width)[None, :]  # [n + 1, width] the j of each cell
        valid = cols <= m

        def span(cum: np.ndarray, end: np.ndarray, size: int) -> np.ndarray:
            """Characters of the ``size`` sentences ending before ``end`` (-1 where there are fewer)."""
            start = end - size
            ok = start >= 0
            return np.where(ok, cum[np.clip(end, 0, len(cum) - 1)] - cum[np.clip(start, 0, None)], -1)

        ends_i = np.broadcast_to(rows[:, None], cols.shape)
        step_cost = {}  # bead -> [n + 1, width] cost of the bead ending at the cell (inf if impossible)
        for (di, dj), prior in _NEG_LOG_PRIOR.items():
            ls, lt = span(src_cum, ends_i, di), span(tgt_cum, np.minimum(cols, m), dj)
            cost, _ = _neg_log_length_prob(np.maximum(ls, 0), np.maximum(lt, 0), ratio, char_variance)
            cost = np.where((ls >= 0) & (lt >= 0) & valid, cost + prior, inf)
            if (di, dj) == (1, 1) and src_keys is not None:
                src_k = np.array([None] + list(src_keys), dtype=object)[ends_i]
                tgt_k = np.array([None] + list(tgt_keys), dtype=object)[np.minimum(cols, m)]
                cost = np.where(src_k != tgt_k, cost + _KEY_MISMATCH_COST, cost)
            step_cost[(di, dj)] = cost.tolist()
        # Cells where a 3-1 or 1-3 bead is not hopeless; only there are longer merges tried.
        _, d31 = _neg_log_length_prob(np.maximum(span(src_cum, ends_i, 3), 0),
                                      np.maximum(span(tgt_cum, np.minimum(cols, m), 1), 0), ratio, char_variance)
        _, d13 = _neg_log_length_prob(np.maximum(span(src_cum, ends_i, 1), 0),
                                      np.maximum(span(tgt_cum, np.minimum(cols, m), 3), 0), ratio, char_variance)
        try_many = ((d31 > -_MAX_MERGE_DELTA) | (d13 < _MAX_MERGE_DELTA)).tolist()
        lows_l = lows.tolist()
        src_cum_l, tgt_cum_l = src_cum.tolist(), tgt_cum.tolist()

        def many_cost(ls: int, lt: int) -> tuple[float, float]:
            delta = (lt - ratio * ls) / math.sqrt(char_variance * max((ls + lt / ratio) / 2, 1e-9))
            tail = math.erfc(abs(delta) / math.sqrt(2.0))
            return (-math.log(tail) if tail > 0 else 0.5 * delta * delta) + _NEG_LOG_PRIOR_MANY, delta

        costs: list[list[float]] = []
        backs: list[list[tuple[int, int]]] = []
        for i in range(n + 1):
            lo = lows_l[i]
            row_cost = [inf] * width
            row_back = [(0, 0)] * width
            costs.append(row_cost)
            backs.append(row_back)
            for c in range(width):
                j = lo + c
                if j > m:
                    break
                if i == 0 and j == 0:
                    row_cost[0] = 0.0
                    continue
                best, arg = inf, (0, 0)
                for bead, table in step_cost.items():
                    step = table[i][c]
                    if step == inf:
                        continue
                    pi, pj = i - bead[0], j - bead[1]
                    pc = pj - lows_l[pi]
                    if 0 <= pc < width:
                        total = (row_cost if pi == i else costs[pi])[pc] + step
                        if total < best:
                            best, arg = total, bead
                if try_many[i][c]:
                    for k in range(3, max_merge + 1):  # k-1 beads, while the k sources can still fit
                        if k > i or j < 1:
                            break
                        step, delta = many_cost(src_cum_l[i] - src_cum_l[i - k], tgt_cum_l[j] - tgt_cum_l[j - 1])
                        if delta < -_MAX_MERGE_DELTA:
                            break
                        pc = j - 1 - lows_l[i - k]
                        if 0 <= pc < width and costs[i - k][pc] + step < best:
                            best, arg = costs[i - k][pc] + step, (k, 1)
                    for k in range(3, max_merge + 1):  # 1-k beads
                        if k > j or i < 1:
                            break
                        step, delta = many_cost(src_cum_l[i] - src_cum_l[i - 1], tgt_cum_l[j] - tgt_cum_l[j - k])
                        if delta > _MAX_MERGE_DELTA:
                            break
                        pc = j - k - lows_l[i - 1]
                        if 0 <= pc < width and costs[i - 1][pc] + step < best:
                            best, arg = costs[i - 1][pc] + step, (1, k)
                row_cost[c] = best
                row_back[c] = arg
        end = m - lows_l[n]
        if 0 <= end < width and costs[n][end] < inf:
            break
        band *= 2
    beads = []
    i, j = n, m
    while i or j:
        di, dj = backs[i][j - lows_l[i]]
        beads.append((i - di, i, j - dj, j))
        i, j = i - di, j - dj
    return beads[::-1]


def load_sword(kjv_dir: str | os.PathLike[str], rv_dir: str | os.PathLike[str]) -> list[Pair]:
    """Reads (English, Spanish) verse pairs from the KJV and Reina-Valera 1909 zText modules.

    Both modules use KJV versification, so entry k of one .bzv index is entry k of the other; only
    verse entries are used (`kjv_verse_records`), never the book and chapter intros. Where the
    Reina-Valera divides verses differently (Jonah 1:17 is its 2:1, Job 40:1-5 close its chapter
    39, 1 Chronicles 21:15 is split in two, ...) its text is shifted against the KJV slots, so each
    book is re-aligned by length (`align_by_length`): 1-1 verses pair directly, verses joined by a
    2-1, 1-2 or 2-2 bead pair as joined text, and a verse left without a partner (an empty slot)
    is dropped. The Reina-Valera's capitalised first word of a chapter is re-cased
    ("EN el principio" -> "En el principio", `_truecase_drop_capital`).

    Args:
      kjv_dir: the ``engKJV2006eb`` module directory (with ``ot.*`` and ``nt.*`` files).
      rv_dir: the ``spaRV1909eb`` module directory.

    Returns:
      (English, Spanish) pairs in canonical order, both sides non-empty (about 31k).

    Raises:
      DataError: if a module is missing, corrupt, or not in KJV versification.
    """
    texts: dict[str, tuple[list[str], list[str]]] = {}
    for testament in ("ot", "nt"):
        expected = kjv_num_records(testament)
        raw = read_ztext(kjv_dir, testament), read_ztext(rv_dir, testament)
        for name, entries in zip((kjv_dir, rv_dir), raw):
            if len(entries) != expected:
                raise DataError(f"SWORD module {str(name)!r} has {len(entries)} '{testament}' entries where KJV "
                                f"versification has {expected}; use the modules of the Debian packages "
                                f"{KJV_PACKAGE!r} and {RV_PACKAGE!r}.")
        texts[testament] = ([osis_to_text(x) for x in raw[0]], [osis_to_text(x) for x in raw[1]])
    word_counts = collections.Counter(word for _, spanish in texts.values() for verse in spanish
                                      for word in _WORD.findall(verse)[1:])
    pairs: list[Pair] = []
    for testament, (english, spanish) in texts.items():
        by_book: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for index, book, _, verse in kjv_verse_records(testament):
            by_book[book].append((index, verse))
        for verses in by_book.values():
            en = [(k, english[k]) for k, _ in verses if english[k]]
            es = [(k, _truecase_drop_capital(spanish[k], word_counts) if v == 1 else spanish[k])
                  for k, v in verses if spanish[k]]
            beads = align_by_length([len(t) for _, t in en], [len(t) for _, t in es],
                                    src_keys=[k for k, _ in en], tgt_keys=[k for k, _ in es])
            for i0, i1, j0, j1 in beads:
                if i1 > i0 and j1 > j0:
                    pairs.append((" ".join(t for _, t in en[i0:i1]), " ".join(t for _, t in es[j0:j1])))
    return pairs


_WORD = re.compile(r"\w+")
_SENTENCE_OPENERS = tuple(".:;!?¡¿(\"«")


def _truecase_drop_capital(text: str, word_counts: Mapping[str, int]) -> str:
    """Undoes the Reina-Valera's capitalised first word of a chapter (after a psalm title too).

    The first all-capital word takes the casing it has most often elsewhere (``word_counts``) and a
    capital initial at a sentence start: "EN el principio" -> "En el principio", "Y ACONTECIÓ" ->
    "Y aconteció", "Y JEHOVÁ dijo" -> "Y Jehová dijo", "Salmo de David. ALEGRARÁSE el rey" ->
    "Salmo de David. Alegraráse el rey".
    """
    for match in _WORD.finditer(text):
        word = match.group()
        if len(word) >= 2 and word.isalpha() and word.isupper():
            break
    else:
        return text
    before = text[:match.start()]
    lower, title = word.lower(), word.capitalize()
    cased = lower if word_counts.get(lower, 0) > word_counts.get(title, 0) else title
    head = before.rstrip()
    if not head or head.endswith(_SENTENCE_OPENERS):
        cased = cased[0].upper() + cased[1:]
    return before + cased + text[match.end():]


# ----------------------------------------------------------------------------------------------
# Generic parallel text
# ----------------------------------------------------------------------------------------------


def _missing_data_path(path: pathlib.Path) -> DataError:
    return DataError(f"--data_path file {str(path)!r} does not exist; pass {_DATA_PATH_FORMAT}.")


def _read_lines(path: pathlib.Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise _missing_data_path(path) from None
    except IsADirectoryError:
        raise DataError(f"--data_path {str(path)!r} is a directory; pass {_DATA_PATH_FORMAT}.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"--data_path file {str(path)!r} is not UTF-8 ({e.reason} at byte {e.start}); "
                        f"convert it, e.g. with iconv -t UTF-8.") from None


def load_parallel_tsv(path: str | os.PathLike[str]) -> list[Pair]:
    """Reads ``source<TAB>target`` lines (further columns ignored; blank lines skipped).

    Args:
      path: a UTF-8 text file.

    Returns:
      (source, target) pairs with normalised whitespace, in file order; pairs with an empty side are
      dropped.

    Raises:
      DataError: if the file is missing, not UTF-8, or a non-blank line has no tab.
    """
    path = pathlib.Path(path).expanduser()
    pairs = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"line {number} of {str(path)!r} has no tab; each line must be 'source<TAB>target'.")
        src, tgt = normalize_whitespace(fields[0]), normalize_whitespace(fields[1])
        if src and tgt:
            pairs.append((src, tgt))
    return pairs


def load_parallel_files(src_path: str | os.PathLike[str], tgt_path: str | os.PathLike[str]) -> list[Pair]:
    """Reads two line-aligned files: line i of ``src_path`` translates line i of ``tgt_path``.

    Returns:
      (source, target) pairs with normalised whitespace; pairs with an empty side are dropped.

    Raises:
      DataError: if a file is missing or not UTF-8, or the two line counts differ.
    """
    src_path, tgt_path = pathlib.Path(src_path).expanduser(), pathlib.Path(tgt_path).expanduser()
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(f"{str(src_path)!r} has {len(src_lines)} lines but {str(tgt_path)!r} has {len(tgt_lines)}; "
                        f"the two files must be line-aligned translations.")
    pairs = []
    for src, tgt in zip(src_lines, tgt_lines):
        src, tgt = normalize_whitespace(src), normalize_whitespace(tgt)
        if src and tgt:
            pairs.append((src, tgt))
    return pairs


def write_parallel_tsv(pairs: Iterable[Pair], path: str | os.PathLike[str]) -> None:
    """Writes pairs as ``source<TAB>target`` lines, atomically (a temp file renamed into place)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=path.name,
                                     suffix=".tmp", delete=False) as f:
        for src, tgt in pairs:
            f.write(f"{normalize_whitespace(src)}\t{normalize_whitespace(tgt)}\n")
    os.replace(f.name, path)


# ----------------------------------------------------------------------------------------------
# Obtaining the corpora
# ----------------------------------------------------------------------------------------------


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    line = (errors or lines or ["no output"])[-1]
    return line[2:].strip() if line.startswith("E:") else line


def obtain_debian_package(name: str, cache_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Downloads and unpacks a Debian package without root, once.

    Runs ``apt-get download NAME`` in ``cache_dir/NAME`` and ``dpkg-deb -x`` into
    ``cache_dir/NAME/extracted``; a later call finds the non-empty ``extracted`` folder and returns
    it at once, without asking the registry again.

    Args:
      name: the Debian package name, e.g. ``"trans-de-en"``.
      cache_dir: folder for the downloads (``~`` is expanded).

    Returns:
      The root of the unpacked package (holds ``usr/share/...``).

    Raises:
      DataError: if apt-get or dpkg-deb is not installed, or the download or unpacking fails.
    """
    package_dir = pathlib.Path(cache_dir).expanduser() / name
    extracted = package_dir / "extracted"
    if extracted.is_dir() and any(extracted.iterdir()):
        logging.info("Debian package %s: using the cached copy in %s", name, extracted)
        return extracted
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataError(f"Debian package {name!r} cannot be fetched because {tool} is not installed; run on a "
                            f"Debian/Ubuntu machine, or pass --data_path=FILE.tsv with your own parallel text.")
    package_dir.mkdir(parents=True, exist_ok=True)
    debs = sorted(package_dir.glob(f"{name}_*.deb"))
    if not debs:
        logging.info("Debian package %s: running apt-get download in %s", name, package_dir)
        result = subprocess.run(["apt-get", "download", name], cwd=package_dir, capture_output=True, text=True,
                                check=False)
        debs = sorted(package_dir.glob(f"{name}_*.deb"))
        if result.returncode != 0 or not debs:
            reason = _last_line(result.stderr + "\n" + result.stdout)
            raise DataError(f"Debian package {name!r} could not be downloaded (apt-get: {reason}); run `sudo apt-get "
                            f"update` once and try again, or pass --data_path=FILE.tsv with your own parallel text.")
    staging = package_dir / "extracted.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(staging)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"Debian package file {str(debs[-1])!r} could not be unpacked (dpkg-deb: "
                        f"{_last_line(result.stderr + result.stdout)}); delete it and run again to download it anew.")
    shutil.rmtree(extracted, ignore_errors=True)
    os.replace(staging, extracted)
    logging.info("Debian package %s: unpacked %s into %s", name, debs[-1].name, extracted)
    return extracted


def _find_module(root: pathlib.Path, package: str) -> pathlib.Path:
    modules = sorted(p.parent for p in (root / SWORD_ZTEXT_DIR).glob("*/ot.bzv"))
    if len(modules) != 1:
        raise DataError(f"Debian package {package!r} in {str(root)!r} holds {len(modules)} zText modules under "
                        f"{SWORD_ZTEXT_DIR}, expected one; delete that folder to download the package again.")
    return modules[0]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    """``data_dir`` with ``~`` expanded; empty or None means ``~/.cache/attention_jax``."""
    return pathlib.Path(os.fspath(data_dir) if data_dir else DEFAULT_DATA_DIR).expanduser()


def get_pairs(corpus: str, data_dir: str | os.PathLike[str] | None, data_path: str = "") -> list[Pair]:
    """The parallel text of a corpus, or of the user's own files.

    Args:
      corpus: ``"ding_de_en"`` or ``"bible_en_es"``; ignored when ``data_path`` is given.
      data_dir: cache folder for packages and parsed pairs ("" or None: ``~/.cache/attention_jax``).
      data_path: "" to use ``corpus``; else a TSV file (``source<TAB>target``) or
        ``"SOURCE_FILE,TARGET_FILE"`` (two line-aligned files).

    Returns:
      (source, target) pairs without duplicates: (German, English) for ``ding_de_en``, (English,
      Spanish) for ``bible_en_es``.

    Raises:
      DataError: for an unknown corpus, a missing or malformed ``data_path``, or a package that
        cannot be obtained.
    """
    if data_path:
        parts = [p.strip() for p in data_path.split(",")]
        if len(parts) == 1:
            pairs = load_parallel_tsv(parts[0])
        elif len(parts) == 2 and all(parts):
            pairs = load_parallel_files(parts[0], parts[1])
        else:
            raise DataError(f"--data_path={data_path!r} names {len(parts)} files; pass {_DATA_PATH_FORMAT}.")
        unique = dedupe(pairs)
        logging.info("Read %d pairs (%d after removing duplicates) from --data_path=%s", len(pairs), len(unique),
                     data_path)
        if not unique:
            raise DataError(f"--data_path={data_path!r} holds no pairs; pass {_DATA_PATH_FORMAT}.")
        return unique
    if corpus not in CORPORA:
        raise DataError(f"unknown corpus {corpus!r}; set --config.data.corpus to one of {', '.join(CORPORA)}, or "
                        f"pass --data_path with your own parallel text.")
    root = resolve_data_dir(data_dir)
    cache = root / f"{corpus}.pairs.v{_PARSER_VERSION}.tsv"
    if cache.is_file():
        pairs = load_parallel_tsv(cache)
        logging.info("Read %d %s pairs from the cache %s", len(pairs), corpus, cache)
        return pairs
    start = time.perf_counter()
    if corpus == "ding_de_en":
        source = obtain_debian_package(DING_PACKAGE, root) / DING_FILE
        pairs = load_ding(source)
    else:
        kjv = _find_module(obtain_debian_package(KJV_PACKAGE, root), KJV_PACKAGE)
        rv = _find_module(obtain_debian_package(RV_PACKAGE, root), RV_PACKAGE)
        source = f"{kjv} + {rv}"
        pairs = dedupe(load_sword(kjv, rv))
    write_parallel_tsv(pairs, cache)
    logging.info("Parsed %d %s pairs from %s in %.1f s; cached them in %s", len(pairs), corpus, source,
                 time.perf_counter() - start, cache)
    return pairs


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def strip_special_ids(ids: Iterable[int]) -> list[int]:
    """Cuts a decoded id sequence at the first EOS and drops PAD and BOS."""
    kept = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            kept.append(i)
    return kept


class Tokenizer:
    """A SentencePiece model with the ids pad=0, unk=1, bos=2, eos=3.

    ``encode`` returns the pieces of a text without BOS/EOS; ``decode`` stops at the first EOS and
    ignores pad and BOS, so it reads a decoder's output directly. Pickles as its model bytes.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes, path: str | os.PathLike[str] | None = None):
        import sentencepiece as spm  # pylint: disable=g-import-not-at-top

        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.path = pathlib.Path(path) if path is not None else None
        specials = (self.processor.pad_id(), self.processor.unk_id(), self.processor.bos_id(),
                    self.processor.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"SentencePiece model has special ids (pad, unk, bos, eos) = {specials}, "
                             f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")

    @property
    def vocab_size(self) -> int:
        """V: the number of ids, special ones included (may be below the requested size)."""
        return int(self.processor.get_piece_size())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        return list(self.processor.encode(text, out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, cut at the first EOS, with pad and BOS ignored."""
        return self.processor.decode(strip_special_ids(ids))

    def id_to_piece(self, i: int) -> str:
        """The subword string of id ``i`` (``<pad>``, ``<unk>``, ``<s>``, ``</s>`` for the special ids)."""
        return self.processor.id_to_piece(int(i))

    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self.processor.serialized_model_proto(), "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"], state["path"])


_SPM_SETTINGS = dict(model_type="bpe", character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID,
                     eos_id=EOS_ID, normalization_rule_name="identity", minloglevel=2)


def _train_sentencepiece(texts: Sequence[str], vocab_size: int, *, hard_vocab_limit: bool = True) -> bytes:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   hard_vocab_limit=hard_vocab_limit, num_threads=max(1, min(8, os.cpu_count() or 1)),
                                   **_SPM_SETTINGS)
    return model.getvalue()


def load_or_train_tokenizer(texts: Sequence[str], model_dir: str | os.PathLike[str], vocab_size: int) -> Tokenizer:
    """A joint BPE SentencePiece model of ``texts``, read from ``model_dir`` if trained before.

    The model file is ``model_dir/spm_bpe_<vocab_size>_<hash>.model``, the hash covering the texts
    and the settings, so a different training split or vocabulary trains a new model. When the texts
    are too small for ``vocab_size`` (SentencePiece refuses), training is repeated with
    ``hard_vocab_limit=False``, which gives a smaller vocabulary; `Tokenizer.vocab_size` says which.

    Args:
      texts: training sentences (for translation, the sources and the targets of the train split).
      model_dir: cache folder for models (``~`` is expanded).
      vocab_size: requested vocabulary size V, special ids included (>= 5).

    Returns:
      The tokenizer.

    Raises:
      ValueError: if ``texts`` is empty or ``vocab_size`` < 5.
    """
    if vocab_size < 5:
        raise ValueError(f"vocab_size must be >= 5 (4 special ids + 1 piece), got {vocab_size=}")
    texts = [normalize_whitespace(t) for t in texts]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("cannot train a tokenizer on no text")
    digest = hashlib.sha256()
    digest.update(repr(sorted(_SPM_SETTINGS.items())).encode())
    digest.update(str(vocab_size).encode())
    for t in texts:
        digest.update(t.encode("utf-8") + b"\n")
    path = pathlib.Path(model_dir).expanduser() / f"spm_bpe_{vocab_size}_{digest.hexdigest()[:16]}.model"
    if path.is_file():
        logging.info("Tokenizer: using the cached SentencePiece model %s", path)
        return Tokenizer(path.read_bytes(), path)
    start = time.perf_counter()
    try:
        proto = _train_sentencepiece(texts, vocab_size)
    except RuntimeError as e:
        if "Vocabulary size" not in str(e):
            raise
        logging.warning("Tokenizer: %d sentences are too few for %d pieces (%s); training with "
                        "hard_vocab_limit=False instead", len(texts), vocab_size, str(e).split("] ")[-1])
        proto = _train_sentencepiece(texts, vocab_size, hard_vocab_limit=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(proto)
    os.replace(f.name, path)
    tokenizer = Tokenizer(proto, path)
    logging.info("Tokenizer: trained a %d-piece BPE SentencePiece model on %d sentences in %.1f s; saved %s",
                 tokenizer.vocab_size, len(texts), time.perf_counter() - start, path)
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
    """One translation pair: token ids (no BOS/EOS) and the original texts."""

    src_ids: tuple[int, ...]
    tgt_ids: tuple[int, ...]
    src_text: str
    tgt_text: str


@dataclasses.dataclass
class Dataset:
    """Tokenizer and encoded splits from `prepare`; ``info`` records where the data came from and counts."""

    tokenizer: Tokenizer
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Validates bucket boundaries: a non-empty, strictly increasing tuple of positive ints.

    Raises:
      ValueError: naming ``buckets`` if it is not.
    """
    try:
        out = tuple(int(b) for b in buckets)
    except (TypeError, ValueError):
        raise ValueError(f"buckets must be a sequence of ints, got {buckets=}") from None
    if not out or out[0] < 1 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"buckets must be positive and strictly increasing, got {buckets=}")
    return out


def _encode(tokenizer: Tokenizer, pairs: Sequence[Pair]) -> list[Example]:
    return [Example(tuple(tokenizer.encode(s)), tuple(tokenizer.encode(t)), s, t) for s, t in pairs]


def _word_stats(texts: Sequence[str]) -> dict[str, float]:
    lengths = np.array([num_words(t) for t in texts]) if texts else np.zeros(1)
    return {"mean": round(float(lengths.mean()), 2), "median": float(np.median(lengths)), "max": int(lengths.max())}


def prepare(data_config: Any, cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Builds the tokenizer and the encoded train/dev/test splits (the pipeline in the module docstring).

    Args:
      data_config: ConfigDict (or mapping) with ``corpus``, ``data_dir``, ``data_path``,
        ``max_words`` (0: no limit), ``vocab_size``, ``dev_size``, ``test_size``, ``max_train``
        (0: all) and ``buckets`` (token-length boundaries).
      cache_dir: folder for SentencePiece models; None or "" means ``<data_dir>/tokenizers``.

    Returns:
      The Dataset; ``info`` holds the source, pair counts per stage, word-length statistics and
      the vocabulary size. Examples keep the split's pair order.

    Raises:
      DataError: if the data cannot be obtained or read, or a split would be empty.
      ValueError: for malformed buckets or sizes.
    """
    start = time.perf_counter()
    corpus = str(_field(data_config, "corpus", "") or "")
    data_path = str(_field(data_config, "data_path", "") or "")
    data_dir = resolve_data_dir(_field(data_config, "data_dir", ""))
    max_words = int(_field(data_config, "max_words", 0) or 0)
    vocab_size = int(_field(data_config, "vocab_size", 8000))
    dev_size = int(_field(data_config, "dev_size", 1000))
    test_size = int(_field(data_config, "test_size", 1000))
    max_train = int(_field(data_config, "max_train", 0) or 0)
    buckets = check_buckets(_field(data_config, "buckets", (16, 32, 64)))

    pairs = get_pairs(corpus, data_dir, data_path)
    kept = [p for p in pairs if max_words <= 0 or (num_words(p[0]) <= max_words and num_words(p[1]) <= max_words)]
    if dev_size + test_size >= len(kept):
        within = f" have at most {max_words} words" if max_words > 0 else " are available"
        raise DataError(f"only {len(kept)} pairs{within}, too few for {dev_size} dev + {test_size} test pairs and a "
                        f"train split; lower data.dev_size/data.test_size or raise data.max_words.")
    splits = split_pairs(kept, dev_size, test_size)
    train_pairs = subsample(splits["train"], max_train)
    texts = [s for s, _ in train_pairs] + [t for _, t in train_pairs]
    model_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else data_dir / "tokenizers"
    tokenizer = load_or_train_tokenizer(texts, model_dir, vocab_size)

    limit = buckets[-1]
    train = [e for e in _encode(tokenizer, train_pairs) if len(e.src_ids) <= limit and len(e.tgt_ids) + 1 <= limit]
    dev, test = _encode(tokenizer, splits["dev"]), _encode(tokenizer, splits["test"])
    for name, split, wanted in (("train", train, 1), ("dev", dev, dev_size), ("test", test, test_size)):
        if wanted > 0 and not split:
            knob = "max_train" if name == "train" else f"{name}_size"
            raise DataError(f"the {name} split is empty; raise data.{knob} or data.buckets, or use more data.")
    info = {
        "source": data_path or corpus,
        "pairs": len(pairs),
        "pairs_within_max_words": len(kept),
        "split_pairs": {k: len(v) for k, v in splits.items()},
        "train_after_max_train": len(train_pairs),
        "train_dropped_over_last_bucket": len(train_pairs) - len(train),
        "examples": {"train": len(train), "dev": len(dev), "test": len(test)},
        "source_words": _word_stats([s for s, _ in kept]),
        "target_words": _word_stats([t for _, t in kept]),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": str(tokenizer.path),
        "seconds": round(time.perf_counter() - start, 2),
    }
    logging.info("Data %s: %d pairs, %d within %d words -> train %d / dev %d / test %d examples, vocabulary %d "
                 "(%.1f s)", info["source"], len(pairs), len(kept), max_words, len(train), len(dev), len(test),
                 tokenizer.vocab_size, info["seconds"])
    return Dataset(tokenizer=tokenizer, train=train, dev=dev, test=test, info=info)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def padded_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket boundary >= ``length``; beyond the last boundary L, the next multiple of L."""
    for b in buckets:
        if length <= b:
            return int(b)
    last = int(buckets[-1])
    return last * math.ceil(length / last)


def batches(examples: Sequence[Example], batch_size: int, buckets: Sequence[int], *, shuffle: bool,
            seed: int = 0, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Groups examples by length into fixed-size padded batches (teacher forcing inputs included).

    Each example's bucket is the padded length (`padded_length`) of max(S, T), with S its source
    tokens and T = target tokens + 1. Within a bucket the examples are taken in order (or shuffled),
    cut into full batches; the remainders of all buckets are pooled, in bucket order, into more
    batches, and only the very last batch is topped up with filler rows (index -1, lengths 0,
    all-zero mask). With ``shuffle`` the batch order is shuffled too; the permutations come from
    numpy's generator seeded with (seed, epoch), so an epoch is the same on every run. Every
    example appears exactly once per pass.

    Args:
      examples: the examples (`prepare`'s train, dev or test list).
      batch_size: B, rows per batch (>= 1).
      buckets: increasing token-length boundaries; S and T of a batch are each padded to the
        smallest boundary that fits its longest row (multiples of the last one beyond it).
      shuffle: shuffle within buckets and the batch order (training) or keep a fixed order (eval).
      seed: non-negative int.
      epoch: non-negative int.

    Yields:
      Dicts of numpy arrays: ``src`` [B, S] int32 (pad 0), ``src_lengths`` [B] int32, ``tgt_in``
      [B, T] int32 (BOS, y_1 .. y_n, pad), ``tgt_out`` [B, T] int32 (y_1 .. y_n, EOS, pad),
      ``tgt_mask`` [B, T] float32 (1 on the n + 1 real positions), ``index`` [B] int32 (position in
      ``examples``, -1 for filler rows).

    Raises:
      ValueError: for batch_size < 1, malformed buckets, or a negative seed or epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size=}")
    buckets = check_buckets(buckets)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed=} {epoch=}")
    if not examples:
        return
    rng = np.random.default_rng([int(seed), int(epoch)])
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for k, ex in enumerate(examples):
        groups[padded_length(max(len(ex.src_ids), len(ex.tgt_ids) + 1), buckets)].append(k)
    full: list[list[int]] = []
    rest: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        if shuffle:
            members = [members[k] for k in rng.permutation(len(members))]
        cut = len(members) - len(members) % batch_size
        full.extend(members[k:k + batch_size] for k in range(0, cut, batch_size))
        rest.extend(members[cut:])
    full.extend(rest[k:k + batch_size] for k in range(0, len(rest), batch_size))
    order = rng.permutation(len(full)) if shuffle else range(len(full))
    for b in order:
        yield _make_batch(examples, full[b], batch_size, buckets)


def _make_batch(examples: Sequence[Example], rows: Sequence[int], batch_size: int,
                buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    chosen = [examples[k] for k in rows]
    s = padded_length(max(len(e.src_ids) for e in chosen), buckets)
    t = padded_length(max(len(e.tgt_ids) + 1 for e in chosen), buckets)
    src = np.full((batch_size, s), PAD_ID, np.int32)  # [B, S]
    tgt_in = np.full((batch_size, t), PAD_ID, np.int32)  # [B, T]
    tgt_out = np.full((batch_size, t), PAD_ID, np.int32)  # [B, T]
    tgt_mask = np.zeros((batch_size, t), np.float32)  # [B, T]
    src_lengths = np.zeros((batch_size,), np.int32)  # [B]
    index = np.full((batch_size,), -1, np.int32)  # [B]
    for row, (k, ex) in enumerate(zip(rows, chosen)):
        n = len(ex.tgt_ids)
        src[row, :len(ex.src_ids)] = ex.src_ids
        src_lengths[row] = len(ex.src_ids)
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1:n + 1] = ex.tgt_ids
        tgt_out[row, :n] = ex.tgt_ids
        tgt_out[row, n] = EOS_ID
        tgt_mask[row, :n + 1] = 1.0
        index[row] = k
    return {"src": src, "src_lengths": src_lengths, "tgt_in": tgt_in, "tgt_out": tgt_out, "tgt_mask": tgt_mask,
            "index": index}
