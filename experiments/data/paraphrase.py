"""Paraphrase pairs from two English Bibles: King James Version against the World English Bible (New Testament).

The two translations say the same thing in different English ("Abraham begat Isaac" / "Abraham became the father
of Isaac"), verse by verse, so a verse and its counterpart are a real paraphrase pair, and a verse and its
counterpart's neighbour (same chapter, same names and topic, different content) a hard non-paraphrase.

Versification: the KJV module (Debian ``sword-text-kjv``) uses KJV versification; the WEB module
(``sword-text-web``) uses NRSVA, which places some verses differently (3 John has a 15th verse; in Revelation 22
the WEB entries run two slots behind the KJV ones) and has its own book titles. The New Testament entries are
therefore not paired by index: the KJV verses (`sword.kjv_verse_records`) are matched to the non-empty WEB entries
by a monotone matching that maximises their word overlap within a few slots (`align_testament`). The Old
Testament is left out: NRSVA puts the deuterocanonical books inside it.

Tasks built from the aligned verses (`build_pairs`):

* classification: for every KJV verse, (KJV verse, its WEB verse, 1) and (KJV verse, the WEB verse of the
  neighbour within 4 places in the same chapter that shares the most words with it, 0): balanced;
* answer selection (for MAP / MRR, as on WikiQA): each KJV verse is a question whose candidates are the WEB
  verses within 4 places of it in its chapter (up to 9; WikiQA has about 9 per question), one of them correct.

Splits are by chapter (a hash of "Book.chapter"), so a verse's neighbours are in its own split.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from experiments.data import download, splits, sword
from experiments.data.base import DataError

WEB_PACKAGE = "sword-text-web"
_WORD = re.compile(r"[a-z]+")


@dataclasses.dataclass(frozen=True)
class AlignedVerse:
    """One KJV verse and its WEB counterpart."""

    book: str
    chapter: int
    verse: int
    kjv: str
    web: str

    @property
    def chapter_key(self) -> str:
        return f"{self.book}.{self.chapter}"


def word_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the lower-cased word sets of two texts (0 when both are empty)."""
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return len(x & y) / len(x | y) if x | y else 0.0


def align_testament(kjv_entries: Sequence[str], web_entries: Sequence[str], testament: str = "nt", *,
                    band: int = 8, min_overlap: float = 0.05) -> list[AlignedVerse]:
    """The matched verses of one testament (see the module docstring).

    A monotone matching of KJV verses to WEB entries maximises the summed word overlap (`word_overlap`); the
    entry indices of the two modules differ by a few slots at most, so only WEB entries within ``band`` slots of
    a KJV verse's own slot are considered (dynamic programming over the band: linear in the verses). Matches
    whose overlap is below ``min_overlap`` (no shared word) are dropped. Length alone (Gale & Church) is not
    enough here: two English translations of neighbouring verses often have similar lengths, and it drifted by
    whole verses within Revelation 22.

    Args:
      kjv_entries: the KJV module's plain-text entries (KJV versification: `sword.kjv_num_records` of them).
      web_entries: the WEB module's plain-text entries (any versification).
      testament: "nt" or "ot".
      band: the largest index shift considered (>= 1).
      min_overlap: the smallest overlap of a kept match.

    Raises:
      DataError: if the KJV entries do not have KJV versification.
      ValueError: band < 1.
    """
    if len(kjv_entries) != sword.kjv_num_records(testament):
        raise DataError(f"the KJV module has {len(kjv_entries)} '{testament}' entries where KJV versification has "
                        f"{sword.kjv_num_records(testament)}; use the module of the Debian package "
                        f"{sword.KJV_PACKAGE!r}")
    if band < 1:
        raise ValueError(f"band must be >= 1, got {band}")
    kjv = [(k, book, chapter, verse) for k, book, chapter, verse in sword.kjv_verse_records(testament)
           if kjv_entries[k]]
    web = [k for k, text in enumerate(web_entries) if text]
    words_k = [set(_WORD.findall(kjv_entries[k].lower())) for k, *_ in kjv]
    words_w = [set(_WORD.findall(web_entries[k].lower())) for k in web]

    def sim(i: int, j: int) -> float:
        union = words_k[i] | words_w[j]
        return len(words_k[i] & words_w[j]) / len(union) if union else 0.0

    # best[(i, j)]: the largest summed overlap matching the first i KJV verses with the first j WEB entries.
    n, m = len(kjv), len(web)
    cols = {}  # i -> the j range near KJV verse i's slot
    j_lo = 0
    for i in range(n + 1):
        slot = kjv[i][0] if i < n else len(web_entries)
        while j_lo < m and web[j_lo] < slot - band:
            j_lo += 1
        j_hi = j_lo
        while j_hi < m and web[j_hi] <= slot + band:
            j_hi += 1
        cols[i] = (j_lo, j_hi)
    best: dict[tuple[int, int], float] = {}
    move: dict[tuple[int, int], int] = {}  # 0 skip KJV, 1 skip WEB, 2 match

    def value(i: int, j: int) -> float:
        if i == 0 or j == 0:
            return 0.0
        return best.get((i, j), float("-inf"))

    for i in range(1, n + 1):
        lo, hi = cols[i - 1]
        for j in range(max(lo, 1), min(hi + 1, m) + 1):
            options = [(value(i - 1, j), 0), (value(i, j - 1), 1), (value(i - 1, j - 1) + sim(i - 1, j - 1), 2)]
            best[(i, j)], move[(i, j)] = max(options)
    # Trace back from the best end cell of the last KJV verse.
    lo, hi = cols[n - 1]
    i, j = n, max(range(max(lo, 1), min(hi + 1, m) + 1), key=lambda jj: value(n, jj))
    out = []
    while i > 0 and j > 0 and (i, j) in move:
        step = move[(i, j)]
        if step == 2:
            if sim(i - 1, j - 1) >= min_overlap:
                k, book, chapter, verse = kjv[i - 1]
                out.append(AlignedVerse(book, chapter, verse, kjv_entries[k], web_entries[web[j - 1]]))
            i, j = i - 1, j - 1
        elif step == 0:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def load_aligned(data_dir: str | None = None) -> list[AlignedVerse]:
    """Downloads (once) both modules and aligns their New Testaments.

    Raises:
      DataError: a package cannot be obtained, or a module is malformed.
    """
    root = download.resolve_data_dir(data_dir or None)
    kjv_dir = sword.find_ztext_module(download.obtain_debian_package(sword.KJV_PACKAGE, root), sword.KJV_PACKAGE)
    web_dir = sword.find_ztext_module(download.obtain_debian_package(WEB_PACKAGE, root), WEB_PACKAGE)
    kjv = [sword.osis_to_text(x) for x in sword.read_ztext(kjv_dir, "nt")]
    web = [sword.osis_to_text(x) for x in sword.read_ztext(web_dir, "nt")]
    return align_testament(kjv, web)


@dataclasses.dataclass
class PairSplit:
    """One split: pairs (KJV, WEB, label) and answer-selection questions.

    Attributes:
      pairs: (kjv text, web text, 1 paraphrase / 0 neighbour) for the classification task.
      questions: per KJV verse, (kjv text, [candidate web texts], index of the correct candidate).
    """

    pairs: list[tuple[str, str, int]]
    questions: list[tuple[str, list[str], int]]


def build_pairs(verses: Sequence[AlignedVerse], *, dev_fraction: float = 0.1, test_fraction: float = 0.15,
                window: int = 4) -> dict[str, PairSplit]:
    """Splits the aligned verses by chapter and builds both tasks (see the module docstring).

    Args:
      verses: the aligned verses in canonical order.
      dev_fraction, test_fraction: shares of the chapters (by hash).
      window: a verse's neighbours are the verses within ``window`` places in its chapter.

    Returns:
      {"train", "dev", "test"} -> `PairSplit`.

    Raises:
      ValueError: if the fractions do not leave a train split.
    """
    if not (0 < dev_fraction and 0 < test_fraction and dev_fraction + test_fraction < 1):
        raise ValueError(f"dev_fraction and test_fraction must be > 0 with a sum below 1, got {dev_fraction}, "
                         f"{test_fraction}")
    chapters: dict[str, list[AlignedVerse]] = {}
    for v in verses:
        chapters.setdefault(v.chapter_key, []).append(v)
    out = {name: PairSplit([], []) for name in ("train", "dev", "test")}
    for key, members in chapters.items():
        if len(members) < 2:
            continue  # no neighbour to contrast with
        u = splits._unit_hash(key, "paraphrase")  # pylint: disable=protected-access
        split = out["test" if u < test_fraction else "dev" if u < test_fraction + dev_fraction else "train"]
        for i, v in enumerate(members):
            candidates = [j for j in range(i - window, i + window + 1) if 0 <= j < len(members)]
            # The hardest neighbour: the one whose WEB text shares the most words with this KJV verse.
            pick = max((j for j in candidates if j != i), key=lambda j: word_overlap(v.kjv, members[j].web))
            split.pairs.append((v.kjv, v.web, 1))
            split.pairs.append((v.kjv, members[pick].web, 0))
            split.questions.append((v.kjv, [members[j].web for j in candidates], candidates.index(i)))
    return out
