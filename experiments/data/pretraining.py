"""Documents and next-sentence-prediction pairs for BERT pretraining (Devlin et al. 2018, arXiv:1810.04805, §3.1,
§A.1-A.2), from the real English text of shared/DATA.md.

* **Documents.** The King James Bible cut into its 1,189 chapters (Debian ``sword-text-kjv``; a verse is a
  sentence) and the Debian ``fortunes`` entries that hold at least two sentences (pysbd splits them). Document
  boundaries are the chapters' and the entries' own.
* **Held-out documents.** A hash of each document's name puts ``held_out_fraction`` of them aside: the MLM and NSP
  accuracies are measured on documents never trained on.
* **Pairs** (`nsp_instances`, after the released ``create_pretraining_data``): a document's sentences are grouped
  into chunks of up to ``max_tokens - 3`` pieces; segment A is the first k sentences of a chunk (k drawn), and
  segment B is the rest of the chunk (is-next, label 1) or, half of the time, sentences from another document
  drawn at random (label 0; never the same document, never a sentence of A). The pair is cut, longest segment
  first, to fit ``[CLS] A [SEP] B [SEP]``; token types are 0 up to the first [SEP] and 1 after it.

The [CLS], [SEP] and [MASK] pieces are user-defined symbols of the SentencePiece vocabulary (ids 4, 5, 6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from experiments.data import classification, documents, download, sword
from experiments.data.base import DataError

SOURCES = ("kjv", "fortunes")
SPECIAL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: a name (unique, e.g. "kjv/Gen.1") and its sentences in order."""

    name: str
    sentences: tuple[str, ...]


@dataclasses.dataclass
class Instances:
    """Encoded pairs: tokens / token_type_ids [N, L] int32 (0-padded), is_next [N] int32, and same_group [N] bool
    (B comes from a document of A's group, e.g. the same corpus: always true for is-next pairs)."""

    tokens: np.ndarray
    token_type_ids: np.ndarray
    is_next: np.ndarray
    same_group: np.ndarray


def load_kjv_chapters(data_dir: str | os.PathLike[str] | None = None) -> list[Document]:
    """The 1,189 chapters of the KJV, one document each, verses as sentences.

    Raises:
      DataError: if the package cannot be obtained or read.
    """
    root = download.resolve_data_dir(data_dir)
    module = sword.find_ztext_module(download.obtain_debian_package(sword.KJV_PACKAGE, root), sword.KJV_PACKAGE)
    chapters: dict[str, list[str]] = {}
    for book, chapter, _, text in sword.kjv_verses(module):
        chapters.setdefault(f"kjv/{book}.{chapter}", []).append(text)
    return [Document(name, tuple(verses)) for name, verses in chapters.items()]


def load_fortune_documents(data_dir: str | os.PathLike[str] | None = None) -> list[Document]:
    """The fortunes entries (both of the classification corpus's splits) with two or more pysbd sentences.

    Raises:
      DataError: if the package cannot be obtained or pysbd is missing.
    """
    train, test = classification.load_corpus("fortunes", data_dir)
    texts = [text for _, text in [*train, *test]]
    cache = download.resolve_data_dir(data_dir) / "sentences" / "fortunes.pysbd.json"  # shared with classification
    out = []
    for i, sentences in enumerate(documents.segment(texts, "pysbd", cache)):
        if len(sentences) >= 2:
            out.append(Document(f"fortunes/{i}", tuple(sentences)))
    return out


def load_documents(sources: Sequence[str], data_dir: str | os.PathLike[str] | None = None) -> list[Document]:
    """The documents of ``sources`` (a subset of `SOURCES`), in a fixed order.

    Raises:
      DataError: for an unknown source, or data that cannot be obtained.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise DataError(f"unknown pretraining sources {unknown or list(sources)}; fix: choose from "
                        f"{', '.join(SOURCES)}")
    out: list[Document] = []
    for source in sources:
        out.extend(load_kjv_chapters(data_dir) if source == "kjv" else load_fortune_documents(data_dir))
    return out


def doc_rank(salt: str, name: str) -> float:
    """A document's place in [0, 1) by a hash of (salt, name)."""
    return int(hashlib.sha256(f"{salt}\x1f{name}".encode()).hexdigest()[:12], 16) / 16 ** 12


def split_documents(docs: Sequence[Document], held_out_fraction: float, salt: str = "bert-held-out",
                    ) -> tuple[list[Document], list[Document]]:
    """(train, held out) by a hash of each document's name.

    Raises:
      ValueError: if the fraction is not in (0, 0.5], or either side is empty.
    """
    if not 0 < held_out_fraction <= 0.5:
        raise ValueError(f"held_out_fraction must be in (0, 0.5], got {held_out_fraction}")
    train = [d for d in docs if doc_rank(salt, d.name) >= held_out_fraction]
    held = [d for d in docs if doc_rank(salt, d.name) < held_out_fraction]
    if not train or not held:
        raise ValueError(f"{len(docs)} documents leave {len(train)} to train and {len(held)} held out; fix: use "
                         "more documents or another fraction")
    return train, held


def _truncate(a: list[int], b: list[int], budget: int, rng: np.random.Generator) -> None:
    """Cuts the longer of a / b until they fit (a random end each time, as the released code does)."""
    while len(a) + len(b) > budget:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def nsp_instances(encoded: Sequence[Sequence[Sequence[int]]], *, max_tokens: int, cls_id: int, sep_id: int,
                  seed: int, short_seq_prob: float = 0.1, groups: Sequence[str] | None = None) -> Instances:
    """Sentence-pair instances with next-sentence labels from encoded documents (arXiv:1810.04805, §3.1, §A.2).

    Args:
      encoded: per document, per sentence, the piece ids (no special ids).
      max_tokens: L, the length of ``[CLS] A [SEP] B [SEP]`` after cutting (>= 8).
      cls_id, sep_id: the ids of [CLS] and [SEP].
      seed: the draws (chunk lengths, split points, random documents); the same seed gives the same instances.
      short_seq_prob: how often a chunk aims at a random shorter length (as the released code does).
      groups: per document, a group name (its corpus); recorded per instance as ``same_group``, so the NSP accuracy
        can be read apart for random next segments from the same corpus (harder than from another one).

    Returns:
      `Instances`; is_next 1 for a true continuation, 0 for a random one (about half each).

    Raises:
      ValueError: if max_tokens < 8 or fewer than two documents have any sentence.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be >= 8, got {max_tokens}")
    docs = [[list(s) for s in doc if len(s)] for doc in encoded]
    live = [i for i, d in enumerate(docs) if d]
    if len(live) < 2:
        raise ValueError(f"need at least two non-empty documents for random next sentences, got {len(live)}")
    rng = np.random.default_rng(seed)
    budget = max_tokens - 3
    groups = list(groups) if groups is not None else [""] * len(docs)
    if len(groups) != len(docs):
        raise ValueError(f"groups has {len(groups)} entries for {len(docs)} documents")
    rows_tokens, rows_types, labels, same = [], [], [], []
    for i in live:
        doc = docs[i]
        target = budget if rng.random() >= short_seq_prob else int(rng.integers(2, budget + 1))
        chunk: list[list[int]] = []
        length = 0
        for j, sentence in enumerate(doc):
            chunk.append(sentence)
            length += len(sentence)
            if j != len(doc) - 1 and length < target:
                continue
            if chunk:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                if len(chunk) >= 2 and rng.random() >= 0.5:
                    b, is_next, other = [t for s in chunk[a_end:] for t in s], 1, i
                else:
                    other = i
                    while other == i:
                        other = live[int(rng.integers(len(live)))]
                    taken = {tuple(s) for s in chunk[:a_end]}
                    start = int(rng.integers(len(docs[other])))
                    b = []
                    for s in docs[other][start:]:
                        if tuple(s) in taken:
                            continue  # a sentence repeated in another document is never its own "random" next
                        b.extend(s)
                        if len(a) + len(b) >= target:
                            break
                    is_next = 0
                if a and b:
                    a, b = list(a), list(b)
                    _truncate(a, b, budget, rng)
                    rows_tokens.append([cls_id, *a, sep_id, *b, sep_id])
                    rows_types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
                    labels.append(is_next)
                    same.append(groups[other] == groups[i])
            chunk, length = [], 0
            target = budget if rng.random() >= short_seq_prob else int(rng.integers(2, budget + 1))
    tokens = np.zeros((len(rows_tokens), max_tokens), np.int32)
    types = np.zeros((len(rows_tokens), max_tokens), np.int32)
    for k, (row, row_types) in enumerate(zip(rows_tokens, rows_types)):
        tokens[k, :len(row)] = row
        types[k, :len(row_types)] = row_types
    return Instances(tokens, types, np.asarray(labels, np.int32), np.asarray(same, bool))
