"""Labelled documents as padded token arrays, in a flat view and a sentence view, for the classification experiment.

`prepare_documents` runs the whole pipeline on one corpus of `experiments.data.classification`:

1. Load (train, test) (label, text) lists; hold out ``dev_fraction`` of train by a hash of the text (salt "dev"),
   so the dev split is the same on every machine and for every row. ``max_train`` / ``max_test`` keep the first
   n of each (in hash order, so a smaller set is a subset of a larger one).
2. Sentences: `pysbd` (a rule-based sentence boundary detector, Sadvilkar & Neumann 2020) on the text with its
   whitespace normalised, or none (the whole document is one "sentence") for corpora whose punctuation was
   stripped (R8, R52, 20 Newsgroups). The segmentation of each text is cached in the data folder.
3. Tokens: a SentencePiece BPE model trained on the train split (`tokenizer.load_or_train_tokenizer`); each
   sentence is encoded on its own, and a document is the concatenation of its sentences, cut after
   ``max_tokens`` tokens. Every model sees exactly these tokens: the flat models as one sequence [T], the
   hierarchical ones as sentences [L, W], where a sentence longer than W tokens continues in the next row
   (so nothing in the first ``max_tokens`` is lost unless the document has more than L rows; those tokens are
   counted in ``info["hier_dropped_tokens"]``).
4. Labels: the train split's label names, sorted; dev and test documents whose label never occurs in train are
   dropped (and counted).

Batches (`document_batches`) group documents of similar length: each document goes to the smallest of the
``buckets`` that holds its tokens, and a batch takes B documents of one bucket; the sentence view of a batch is
cut to the rows its longest document needs, rounded up to a power of two (few distinct shapes, few compiles).
Short batches are filled with empty documents of weight 0, so no document is dropped and the shapes stay fixed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging
import numpy as np

from experiments.data import classification, download, splits
from experiments.data.base import DataError, normalize_whitespace
from experiments.data.tokenizer import PAD_ID, Tokenizer, load_or_train_tokenizer

SENTENCE_MODES = ("pysbd", "none")
# Corpora whose text ships without punctuation: the sentence detector has nothing to go on.
UNPUNCTUATED = ("r8", "r52", "20news")


@dataclasses.dataclass
class DocumentSplit:
    """One split as arrays.

    Attributes:
      tokens: [N, T] int32 token ids, 0 = padding (T = max_tokens).
      sentences: [N, L, W] int32 the same tokens by sentence, 0 = padding.
      labels: [N] int32 class ids.
      lengths: [N] int32 real tokens per document.
      texts: the N raw texts.
      sentence_lengths: per document, the token count of each sentence row (for figures).
    """

    tokens: np.ndarray
    sentences: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    texts: list[str]
    sentence_lengths: list[list[int]]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass
class Documents:
    """A corpus ready for training: tokenizer, label names, the three splits and counts (``info``)."""

    tokenizer: Tokenizer
    label_names: list[str]
    train: DocumentSplit
    dev: DocumentSplit
    test: DocumentSplit
    info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def default_sentence_mode(corpus: str) -> str:
    """"none" for the corpora without punctuation, else "pysbd"."""
    return "none" if corpus in UNPUNCTUATED else "pysbd"


def _segmenter():
    try:
        import pysbd  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise DataError("sentence splitting needs the pysbd package; fix: pip install -e '.[experiments]' (or pass "
                        "--config.data.sentences=none)") from err
    return pysbd.Segmenter(language="en", clean=False)


def segment(texts: Sequence[str], mode: str, cache_path: str | os.PathLike[str] | None = None) -> list[list[str]]:
    """The sentences of each text (whitespace normalised; empty sentences dropped).

    Args:
      texts: the documents.
      mode: "pysbd" or "none" (each document is one sentence).
      cache_path: a JSON file of earlier segmentations (text hash -> sentences), read and extended; None: no
        cache.

    Raises:
      ValueError: for an unknown mode.
      DataError: if pysbd is needed and missing.
    """
    if mode not in SENTENCE_MODES:
        raise ValueError(f"sentence mode must be one of {SENTENCE_MODES}, got {mode!r}")
    normal = [normalize_whitespace(t) for t in texts]
    if mode == "none":
        return [[t] if t else [] for t in normal]
    cache: dict[str, list[str]] = {}
    if cache_path and os.path.exists(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as f:
                cache = json.load(f)
        except (OSError, json.JSONDecodeError):
            cache = {}
    keys = [hashlib.sha256(t.encode("utf-8")).hexdigest()[:24] for t in normal]
    missing = [i for i, k in enumerate(keys) if k not in cache]
    if missing:
        seg = _segmenter()
        logging.info("splitting %d documents into sentences with pysbd (cached afterwards)", len(missing))
        for i in missing:
            cache[keys[i]] = [s.strip() for s in seg.segment(normal[i]) if s.strip()] if normal[i] else []
        if cache_path:
            os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
            tmp = f"{cache_path}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(cache, f)
            os.replace(tmp, cache_path)
    return [cache[k] for k in keys]


def encode_document(sentences: Sequence[Sequence[int]], *, max_tokens: int, max_sentences: int,
                    sentence_tokens: int) -> tuple[list[int], list[list[int]], int]:
    """One document's flat tokens and sentence rows.

    Args:
      sentences: the token ids of each sentence.
      max_tokens: T, the document's token budget (its first T tokens are kept).
      max_sentences: L, the most sentence rows.
      sentence_tokens: W, the most tokens per row (a longer sentence continues in the next row).

    Returns:
      (flat ids, rows, tokens of the first T that did not fit in L rows).
    """
    flat: list[int] = []
    rows: list[list[int]] = []
    dropped = 0
    for ids in sentences:
        ids = list(ids)[:max_tokens - len(flat)]
        if not ids:
            continue
        flat.extend(ids)
        for start in range(0, len(ids), sentence_tokens):
            piece = ids[start:start + sentence_tokens]
            if len(rows) < max_sentences:
                rows.append(piece)
            else:
                dropped += len(piece)
        if len(flat) >= max_tokens:
            break
    return flat, rows, dropped


def encode_split(items: Sequence[tuple[int, str, list[str]]], tokenizer: Tokenizer, *, max_tokens: int,
                 max_sentences: int, sentence_tokens: int) -> tuple[DocumentSplit, int]:
    """(label id, text, sentences) triples -> a `DocumentSplit` and the number of tokens the sentence view drops."""
    n = len(items)
    tokens = np.zeros((n, max_tokens), np.int32)
    rows_out = np.zeros((n, max_sentences, sentence_tokens), np.int32)
    labels = np.zeros((n,), np.int32)
    lengths = np.zeros((n,), np.int32)
    sentence_lengths, texts, dropped = [], [], 0
    for i, (label, text, sentences) in enumerate(items):
        flat, rows, lost = encode_document([tokenizer.encode(s) for s in sentences], max_tokens=max_tokens,
                                           max_sentences=max_sentences, sentence_tokens=sentence_tokens)
        tokens[i, :len(flat)] = flat
        for j, row in enumerate(rows):
            rows_out[i, j, :len(row)] = row
        labels[i], lengths[i] = label, len(flat)
        sentence_lengths.append([len(r) for r in rows])
        texts.append(text)
        dropped += lost
    return DocumentSplit(tokens, rows_out, labels, lengths, texts, sentence_lengths), dropped


def _hash_order(items: Sequence[tuple[str, str]], salt: str) -> list[tuple[str, str]]:
    return sorted(items, key=lambda item: splits._unit_hash(item[1], salt))  # pylint: disable=protected-access


def prepare_documents(corpus: str, data_dir: str | os.PathLike[str] | None = None, *, vocab_size: int = 8000,
                      max_tokens: int = 128, max_sentences: int = 8, sentence_tokens: int = 32,
                      dev_fraction: float = 0.1, test_fraction: float = 0.2, max_train: int = 0, max_test: int = 0,
                      sentences: str = "", data_path: str = "", tokenizer: Tokenizer | None = None) -> Documents:
    """Loads, splits, segments, tokenises and encodes one corpus (see the module docstring).

    Args:
      corpus: a name in `classification.CORPORA`.
      data_dir: the cache folder (None or "": ~/.cache/attention_jax).
      vocab_size: requested SentencePiece vocabulary V.
      max_tokens: T.
      max_sentences: L.
      sentence_tokens: W.
      dev_fraction: share of train held out as dev.
      test_fraction: for corpora without a test split, the share of texts held out (by hash).
      max_train: keep at most this many train documents (0: all).
      max_test: keep at most this many test (and dev) documents (0: all).
      sentences: "pysbd", "none", or "" for the corpus' default (`default_sentence_mode`).
      data_path: a "label<TAB>text" file to use instead of ``corpus`` (`classification.load_labelled_tsv`).
      tokenizer: a tokenizer to use instead of one trained on the train split (e.g. a pretrained BERT's).

    Raises:
      DataError: the corpus cannot be obtained, or a split is empty.
      ValueError: bad sizes.
    """
    for name, value in (("vocab_size", vocab_size), ("max_tokens", max_tokens), ("max_sentences", max_sentences),
                        ("sentence_tokens", sentence_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    root = download.resolve_data_dir(data_dir or None)
    if data_path:
        corpus = os.path.basename(data_path)
        mode = sentences or "pysbd"
        train_items, test_items = classification.load_labelled_tsv(data_path, test_fraction)
    else:
        mode = sentences or default_sentence_mode(corpus)
        train_items, test_items = classification.load_corpus(corpus, root, test_fraction=test_fraction)
    in_dev = [splits._unit_hash(text, "dev") < dev_fraction for _, text in train_items]
    dev_items = [item for item, dev in zip(train_items, in_dev) if dev]
    train_items = [item for item, dev in zip(train_items, in_dev) if not dev]
    train_items = _hash_order(train_items, "order")
    dev_items, test_items = _hash_order(dev_items, "order"), _hash_order(test_items, "order")
    if max_train:
        train_items = train_items[:max_train]
    if max_test:
        dev_items, test_items = dev_items[:max_test], test_items[:max_test]
    label_names = sorted({label for label, _ in train_items})
    index = {name: i for i, name in enumerate(label_names)}
    unseen = {"dev": sum(l not in index for l, _ in dev_items), "test": sum(l not in index for l, _ in test_items)}
    dev_items = [item for item in dev_items if item[0] in index]
    test_items = [item for item in test_items if item[0] in index]
    if not train_items or not dev_items or not test_items:
        raise DataError(f"the {corpus} corpus gave {len(train_items)} train / {len(dev_items)} dev / "
                        f"{len(test_items)} test documents; fix: raise --config.data.max_train / max_test or "
                        "dev_fraction")
    cache = os.path.join(root, "sentences", f"{corpus}.{mode}.json")
    split_sentences = {}
    for name, items in (("train", train_items), ("dev", dev_items), ("test", test_items)):
        split_sentences[name] = segment([t for _, t in items], mode, cache if mode == "pysbd" else None)
    if tokenizer is None:
        tokenizer = load_or_train_tokenizer([s for doc in split_sentences["train"] for s in doc],
                                            os.path.join(root, "tokenizers"), vocab_size)
    out, dropped = {}, {}
    for name, items in (("train", train_items), ("dev", dev_items), ("test", test_items)):
        triples = [(index[label], text, sents) for (label, text), sents in zip(items, split_sentences[name])]
        out[name], dropped[name] = encode_split(triples, tokenizer, max_tokens=max_tokens,
                                                max_sentences=max_sentences, sentence_tokens=sentence_tokens)
    lengths = out["train"].lengths
    info = {"corpus": corpus, "sentences": mode, "vocab_size": tokenizer.vocab_size, "classes": len(label_names),
            "train": len(out["train"]), "dev": len(out["dev"]), "test": len(out["test"]),
            "unseen_labels_dropped": unseen, "hier_dropped_tokens": dropped,
            "truncated_documents": int(np.sum(lengths >= max_tokens)),
            "mean_tokens": float(lengths.mean()), "mean_sentences": float(np.mean(
                [len(s) for s in split_sentences["train"]])), "tokenizer": str(tokenizer.path)}
    return Documents(tokenizer, label_names, out["train"], out["dev"], out["test"], info)


def _bucket_of(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    edges = np.asarray(buckets)
    return np.minimum(np.searchsorted(edges, np.maximum(lengths, 1)), len(edges) - 1)


def _rows_needed(split: DocumentSplit, index: np.ndarray) -> int:
    used = max([len(split.sentence_lengths[i]) for i in index] + [1])
    rows = 1
    while rows < used:
        rows *= 2
    return min(rows, split.sentences.shape[1])


def document_batches(split: DocumentSplit, batch_size: int, buckets: Sequence[int], *, shuffle: bool,
                     seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Padded batches of one split, grouped by length (see the module docstring).

    Args:
      split: the documents.
      batch_size: B.
      buckets: increasing token counts; the last must be >= the split's T.
      shuffle: shuffle within buckets and the order of batches (by ``seed``), else split order.
      seed: the shuffle's seed (the epoch number for training).

    Yields:
      {"tokens": [B, T_b] int32, "sentences": [B, L_b, W] int32, "labels": [B] int32, "weights": [B] float32
      (0 for filler), "index": [B] int32 (the documents' positions in the split, -1 for filler)}.

    Raises:
      ValueError: if the last bucket is shorter than the split's T, or batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if buckets[-1] < split.tokens.shape[1]:
        raise ValueError(f"the last bucket {buckets[-1]} must hold the split's {split.tokens.shape[1]} tokens")
    rng = np.random.default_rng(seed)
    which = _bucket_of(split.lengths, buckets)
    plan = []
    for b in range(len(buckets)):
        members = np.flatnonzero(which == b)
        if shuffle:
            members = rng.permutation(members)
        for start in range(0, len(members), batch_size):
            plan.append((b, members[start:start + batch_size]))
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    for b, members in plan:
        width = min(int(buckets[b]), split.tokens.shape[1])
        rows = _rows_needed(split, members)
        fill = batch_size - len(members)
        index = np.concatenate([members, np.full((fill,), -1, np.int64)]).astype(np.int32)
        safe = np.maximum(index, 0)
        real = index >= 0
        yield {"tokens": np.where(real[:, None], split.tokens[safe, :width], PAD_ID).astype(np.int32),
               "sentences": np.where(real[:, None, None], split.sentences[safe, :rows], PAD_ID).astype(np.int32),
               "labels": np.where(real, split.labels[safe], 0).astype(np.int32),
               "weights": real.astype(np.float32), "index": index}
