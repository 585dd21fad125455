"""Tests of experiments.data.cloze on books made here: the word-kind heuristic, the questions, the book split."""

from __future__ import annotations

import random

import pytest

from experiments.data import cloze

NAMES = "Abel Boaz Cain Dinah Eli Gad Hur Ira Jair Kish Laban Micah Nahor Obed Peleg Reu".split()
NOUNS = "house field sword cloak lamp altar river stone gate tent vine flock".split()


def _books(count: int = 4, verses: int = 40) -> list[cloze.Book]:
    rng = random.Random(0)
    books = []
    for b in range(count):
        text = []
        for _ in range(verses):
            a, c = rng.sample(NAMES, 2)
            n, m = rng.sample(NOUNS, 2)
            text.append(f"And {a} took the {n} of {c}, and went to the {m}. Then he was glad.")
        books.append(cloze.Book(f"Book{b}", tuple(text)))
    return books


def test_words_keeps_punctuation_and_apostrophes():
    assert cloze.words("Abraham's son, Isaac.") == ["Abraham's", "son", ",", "Isaac", "."]


def test_tag_words_finds_names_and_nouns_not_function_words():
    kinds = cloze.tag_words(_books())
    assert set(NAMES) <= kinds.named_entities
    assert set(NOUNS) <= kinds.common_nouns
    # "And" and "Then" are capitalised only at the start of a sentence; "glad" never follows a determiner.
    assert not {"And", "Then", "he", "glad", "the"} & (kinds.named_entities | kinds.common_nouns)
    with pytest.raises(ValueError, match="answer_type"):
        kinds.of("verbs")


@pytest.mark.parametrize("kind", cloze.ANSWER_TYPES)
def test_questions_are_cbt_shaped(kind):
    books = _books()
    kinds = cloze.tag_words(books)
    questions = cloze.questions_from_book(books[0], kinds, kind)
    assert questions
    vocab = kinds.of(kind)
    for q in questions[:10]:
        assert len(q.candidates) == cloze.NUM_CANDIDATES == len(set(q.candidates))
        assert q.candidates[q.answer_index] == q.answer
        assert all(c in vocab and c in q.context for c in q.candidates)
        assert cloze.BLANK in q.query and q.answer not in q.query
        assert sum(q.verse_lengths) == len(q.context) and len(q.verse_lengths) == cloze.CONTEXT_SENTENCES
        verse = cloze.words(books[0].verses[q.start + cloze.CONTEXT_SENTENCES])
        assert [cloze.BLANK if w == q.answer else w for w in verse] == list(q.query)
    # Deterministic: the same book gives the same questions.
    assert cloze.questions_from_book(books[0], kinds, kind) == questions
    assert len(cloze.questions_from_book(books[0], kinds, kind, stride=5)) < len(questions)


def test_split_books_is_disjoint_and_stable():
    books = _books(count=12)
    split = cloze.split_books(books, dev_fraction=0.1, test_fraction=0.2)
    names = [b.name for part in split.values() for b in part]
    assert sorted(names) == sorted(b.name for b in books) and all(split.values())
    again = cloze.split_books(list(reversed(books)), dev_fraction=0.1, test_fraction=0.2)  # by hash, not order
    assert {k: sorted(b.name for b in v) for k, v in split.items()} == \
        {k: sorted(b.name for b in v) for k, v in again.items()}
    with pytest.raises(ValueError, match="fraction"):
        cloze.split_books(books, dev_fraction=0.3, test_fraction=0.3)


def test_heuristic_accuracy_reads_only_the_context():
    q = cloze.Question("B", 0, ("Abel", "saw", "Cain", "and", "Abel", ".", "Dinah"), ("XXXXX", "ran"), "Abel",
                       ("Cain", "Abel", "Dinah"))
    assert cloze.heuristic_accuracy([q], "frequency") == 100.0  # Abel occurs twice
    assert cloze.heuristic_accuracy([q], "recency") == 0.0  # Dinah occurs last
    with pytest.raises(ValueError, match="rule"):
        cloze.heuristic_accuracy([q], "oracle")
