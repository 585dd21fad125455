"""Tests of experiments.data.paraphrase: matching two versifications, and the pair and question tasks."""

from __future__ import annotations

import pytest

from experiments.data import paraphrase
from experiments.data import sword
from experiments.data.base import DataError


def _kjv_entries():
    entries = [""] * sword.kjv_num_records("nt")
    for index, book, chapter, verse in sword.kjv_verse_records("nt"):
        entries[index] = f"and {book.lower()} wrote chapter c{chapter} verse v{verse} of the book"
    return entries


def _web_entries(kjv):
    """The same verses reworded, with a book title, two extra verses and a shift of two slots from then on."""
    web = [text.replace("wrote", "penned").replace("and ", "") for text in kjv]
    web[2] = "The Good News According to Matthew"
    return web[:4000] + ["an extra verse nobody else has", "another extra one"] + web[4000:]


def test_align_testament_follows_the_shift():
    kjv = _kjv_entries()
    aligned = paraphrase.align_testament(kjv, _web_entries(kjv))
    assert len(aligned) == 7957  # every KJV verse found its counterpart
    for v in aligned:
        assert v.web == v.kjv.replace("wrote", "penned").replace("and ", ""), (v.book, v.chapter, v.verse)
    assert aligned[-1].book == "Rev" and (aligned[-1].chapter, aligned[-1].verse) == (22, 21)


def test_align_testament_checks_the_versification():
    with pytest.raises(DataError, match="KJV versification"):
        paraphrase.align_testament(["x"] * 10, ["x"] * 10)
    with pytest.raises(ValueError, match="band"):
        paraphrase.align_testament(_kjv_entries(), _kjv_entries(), band=0)


def test_word_overlap():
    assert paraphrase.word_overlap("The cat sat.", "the CAT ran") == pytest.approx(2 / 4)
    assert paraphrase.word_overlap("", "") == 0.0
    assert paraphrase.word_overlap("a b", "c d") == 0.0


def _verses(chapters=40, per_chapter=6):
    out = []
    for c in range(1, chapters + 1):
        for v in range(1, per_chapter + 1):
            out.append(paraphrase.AlignedVerse("Mark", c, v, f"kjv {c} {v} word{v} shared", f"web {c} {v} word{v}"))
    return out


def test_build_pairs_tasks_and_splits():
    verses = _verses()
    splits = paraphrase.build_pairs(verses, dev_fraction=0.2, test_fraction=0.2, window=2)
    chapters = {name: {kjv.split()[1] for kjv, _, _ in split.pairs} for name, split in splits.items()}
    assert not (chapters["train"] & chapters["test"]) and not (chapters["dev"] & chapters["test"])
    assert sum(len(s.questions) for s in splits.values()) == len(verses)
    for split in splits.values():
        positives = [p for p in split.pairs if p[2] == 1]
        assert len(positives) * 2 == len(split.pairs)
        for kjv, web, label in split.pairs:
            _, c, v, *_ = kjv.split()
            _, wc, wv, _ = web.split()
            assert wc == c  # negatives come from the same chapter
            assert (wv == v) == (label == 1) and abs(int(wv) - int(v)) <= 2
        for kjv, candidates, right in split.questions:
            _, c, v, *_ = kjv.split()
            assert candidates[right].split()[2] == v
            assert 2 <= len(candidates) <= 5 and all(w.split()[1] == c for w in candidates)
    with pytest.raises(ValueError, match="fraction"):
        paraphrase.build_pairs(verses, dev_fraction=0.6, test_fraction=0.5)
