"""Cloze questions built from the King James Bible the way the Children's Book Test was built.

Hill, Bordes, Chopra & Weston 2015 (arXiv:1511.02301, §2) cut children's books into windows of 21 sentences:
the first 20 are the context, a word of sentence 21 is removed (the query), and 10 candidate answers of the same
kind (named entity, common noun, verb, preposition) are drawn from the context. No reading-comprehension corpus
ships in a package here, so the questions are built from ``sword-text-kjv`` (shared/DATA.md):

* **Sentences are verses.** A KJV verse is one or two sentences long (25 words on average); a window is 21
  consecutive verses of one book, never crossing a book boundary.
* **Books are documents.** The 66 books are split into train / dev / test by a hash of the book's name, so no
  question's text is seen in training (CBT splits by book too).
* **Word kinds without a tagger.** No part-of-speech tagger with a model ships on PyPI or Debian (spaCy's and
  NLTK's models are separate downloads), so the kinds come from corpus statistics over the whole Bible
  (`tag_words`), a documented heuristic:

  - **named entity (NE):** a capitalised word seen at least ``min_count`` times inside a sentence (not first in
    the verse, not after . ! ? : ; or a quote) and written in lower case there less than 5% of the time:
    David, Jerusalem, Pharaoh, LORD;
  - **common noun (CN):** a lower-case word of 3+ letters, not a function word, that follows a determiner (the,
    a, his, thy, ...) in at least half of its occurrences, and after a determiner is followed by punctuation or
    a function word at least half the time (this drops adjectives: "the holy place"): house, land, sword.

* **The answer occurs in the context.** CBT's answers mostly do, and the attention-sum readers can only point
  at context words, so windows whose blank word is absent from the context are skipped. Every occurrence of
  the answer in the query verse is blanked (``XXXXX``), so the query does not leak it.
* **Candidates:** the answer and 9 other distinct words of its kind from the context, chosen and ordered by a
  hash, so every question is reproducible.

Tokens are words and punctuation marks (`words`), case kept; the readers' vocabulary is a SentencePiece
word model of the training questions (`experiments.data.tokenizer`, ``model_type="word"``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Sequence

from experiments.data import download, sword

ANSWER_TYPES = ("ne", "cn")
BLANK = "XXXXX"
CONTEXT_SENTENCES = 20
NUM_CANDIDATES = 10

_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+|[^\w\s]")
_OPENERS = frozenset(".!?:;(\"'")
DETERMINERS = frozenset("the a an his her their my thy our your its this these those every thine mine no"
                        .split())
FUNCTION_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doth down during each either else even ever every for from further had hast
hath have having he hence her here hers him himself his how i if in into is it its itself let lo may me might
mine more most much must my myself neither no nor not now o of off on once one only or other our ours out over
own saith said say shall she should so some such than that the thee their them themselves then there therefore
these they thine this those thou though through thus thy thyself till to too under unto until up upon us very
was we were what when whence where wherefore whether which while who whom whose why will with within without
ye yea yet you your
""".split())


@dataclasses.dataclass(frozen=True)
class Book:
    """One book of the Bible: its OSIS name and its verses in order."""

    name: str
    verses: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class WordKinds:
    """The words of each answer kind (`tag_words`)."""

    named_entities: frozenset[str]
    common_nouns: frozenset[str]

    def of(self, answer_type: str) -> frozenset[str]:
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
        return self.named_entities if answer_type == "ne" else self.common_nouns


@dataclasses.dataclass(frozen=True)
class Question:
    """One cloze question: 20 context verses, the query verse with the answer blanked, 10 candidates.

    ``context`` and ``query`` are token lists (`words`); ``answer`` is one of ``candidates``.
    """

    book: str
    start: int  # index of the first context verse in the book
    context: tuple[str, ...]
    query: tuple[str, ...]
    answer: str
    candidates: tuple[str, ...]
    verse_lengths: tuple[int, ...] = ()  # tokens per context verse (they sum to len(context))

    @property
    def answer_index(self) -> int:
        return self.candidates.index(self.answer)


def words(text: str) -> list[str]:
    """Word and punctuation tokens of ``text``: ``"Abraham's son, Isaac."`` -> Abraham's, son, ",", Isaac, "."."""
    return _TOKEN.findall(text)


def load_kjv_books(data_dir: str | os.PathLike[str] | None = None) -> list[Book]:
    """The 66 books of the KJV (Debian ``sword-text-kjv``, downloaded once), empty verses dropped.

    Raises:
      DataError: if the package cannot be obtained or its module does not have KJV versification.
    """
    root = download.resolve_data_dir(data_dir)
    module = sword.find_ztext_module(download.obtain_debian_package(sword.KJV_PACKAGE, root), sword.KJV_PACKAGE)
    books: dict[str, list[str]] = {}
    for book, _, _, text in sword.kjv_verses(module):
        books.setdefault(book, []).append(text)
    return [Book(name, tuple(verses)) for name, verses in books.items()]


def tag_words(books: Iterable[Book], *, min_count: int = 5) -> WordKinds:
    """Named entities and common nouns by the corpus statistics of the module docstring.

    Args:
      books: the text to count over (all splits: the kinds are a property of the language, not of the labels).
      min_count: the fewest occurrences a word needs to get a kind.
    """
    inside_upper: collections.Counter[str] = collections.Counter()  # capitalised, inside a sentence
    inside_lower: collections.Counter[str] = collections.Counter()  # its lower-case form, inside a sentence
    total: collections.Counter[str] = collections.Counter()
    after_det: collections.Counter[str] = collections.Counter()
    det_then_light: collections.Counter[str] = collections.Counter()  # after a determiner, then punct / function
    for book in books:
        for verse in book.verses:
            toks = words(verse)
            for i, w in enumerate(toks):
                if not w[0].isalpha():
                    continue
                total[w] += 1
                inside = i > 0 and toks[i - 1] not in _OPENERS
                if inside and w[0].isupper():
                    inside_upper[w] += 1
                elif inside:
                    inside_lower[w] += 1
                if i > 0 and toks[i - 1].lower() in DETERMINERS and w.islower():
                    after_det[w] += 1
                    nxt = toks[i + 1] if i + 1 < len(toks) else "."
                    if not nxt[0].isalpha() or nxt.lower() in FUNCTION_WORDS:
                        det_then_light[w] += 1
    named = set()
    for w, n in inside_upper.items():
        if n < min_count or w.lower() in FUNCTION_WORDS or len(w) < 2:
            continue
        lower = inside_lower.get(w.lower(), 0)
        if lower < 0.05 * (n + lower):
            named.add(w)
    common = set()
    for w, n in total.items():
        if not w.isalpha() or not w.islower() or len(w) < 3 or w in FUNCTION_WORDS or n < min_count:
            continue
        if after_det[w] >= 0.5 * n and det_then_light[w] >= 0.5 * after_det[w]:
            common.add(w)
    return WordKinds(frozenset(named), frozenset(common))


def _rank(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def questions_from_book(book: Book, kinds: WordKinds, answer_type: str, *, stride: int = 1,
                        context_sentences: int = CONTEXT_SENTENCES, num_candidates: int = NUM_CANDIDATES,
                        salt: str = "cloze") -> list[Question]:
    """The questions of every window of ``context_sentences + 1`` verses of ``book``, starting every ``stride``.

    A window gives a question when its last verse holds a word of the kind that also occurs in the context and
    the context holds at least ``num_candidates`` distinct words of the kind; the blanked word and the other
    candidates are picked by a hash of (salt, book, window start, word).

    Raises:
      ValueError: for an unknown answer type or sizes below 1.
    """
    if stride < 1 or context_sentences < 1 or num_candidates < 2:
        raise ValueError(f"need stride >= 1, context_sentences >= 1 and num_candidates >= 2, got {stride=}, "
                         f"{context_sentences=}, {num_candidates=}")
    vocab = kinds.of(answer_type)
    tokens = [words(v) for v in book.verses]
    out = []
    for start in range(0, len(tokens) - context_sentences, stride):
        context = [w for verse in tokens[start:start + context_sentences] for w in verse]
        query = tokens[start + context_sentences]
        in_context = {w for w in context if w in vocab}
        options = sorted({w for w in query if w in in_context})
        if not options or len(in_context) < num_candidates:
            continue
        answer = min(options, key=lambda w: _rank(salt, book.name, start, "answer", w))
        others = sorted(in_context - {answer}, key=lambda w: _rank(salt, book.name, start, "candidate", w))
        candidates = sorted([answer, *others[:num_candidates - 1]], key=lambda w: _rank(salt, start, "order", w))
        out.append(Question(book.name, start, tuple(context), tuple(BLANK if w == answer else w for w in query),
                            answer, tuple(candidates),
                            tuple(len(v) for v in tokens[start:start + context_sentences])))
    return out


def heuristic_accuracy(questions: Sequence[Question], rule: str) -> float:
    """Accuracy (%) of a rule that reads no query: "frequency" picks the candidate seen most often in the context
    (the first in candidate order on ties), "recency" the one that occurs last. Chance is 100 / 10.

    Raises:
      ValueError: for an unknown rule.
    """
    if rule not in ("frequency", "recency"):
        raise ValueError(f"rule must be 'frequency' or 'recency', got {rule!r}")
    if not questions:
        return 0.0
    right = 0
    for q in questions:
        if rule == "frequency":
            pick = max(q.candidates, key=q.context.count)
        else:
            last = {w: i for i, w in enumerate(q.context)}
            pick = max(q.candidates, key=lambda c: last.get(c, -1))
        right += pick == q.answer
    return 100.0 * right / len(questions)


def split_books(books: Sequence[Book], *, dev_fraction: float = 0.1, test_fraction: float = 0.15,
                salt: str = "cloze-split") -> dict[str, list[Book]]:
    """Train / dev / test books, by the rank of a hash of each book's name, about the given shares of verses.

    Raises:
      ValueError: if the fractions are not in (0, 0.5) together, or fewer than 3 books are given.
    """
    if not (dev_fraction > 0 and test_fraction > 0 and dev_fraction + test_fraction < 0.5):
        raise ValueError(f"need dev_fraction, test_fraction > 0 with a sum below 0.5, got {dev_fraction}, "
                         f"{test_fraction}")
    if len(books) < 3:
        raise ValueError(f"need at least 3 books to split, got {len(books)}")
    order = sorted(books, key=lambda b: _rank(salt, b.name))
    total = sum(len(b.verses) for b in books)
    out: dict[str, list[Book]] = {"test": [], "dev": [], "train": []}
    seen = 0
    for book in order:
        if not out["test"] or seen + len(book.verses) / 2 <= test_fraction * total:
            out["test"].append(book)
        elif not out["dev"] or seen + len(book.verses) / 2 <= (test_fraction + dev_fraction) * total:
            out["dev"].append(book)
        else:
            out["train"].append(book)
        seen += len(book.verses)
    if not out["train"]:
        raise ValueError(f"no book is left for training out of {len(books)}; fix: lower the fractions")
    return out
