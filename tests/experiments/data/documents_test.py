"""Tests of experiments.data.documents: the flat and sentence views, the token budget, batches, the TSV loader."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data import classification
from experiments.data import documents as docs
from experiments.data.base import DataError


def test_encode_document_views_hold_the_same_tokens():
    sentences = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    flat, rows, dropped = docs.encode_document(sentences, max_tokens=100, max_sentences=8, sentence_tokens=3)
    assert flat == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    # The long third sentence continues in the next row.
    assert rows == [[5, 6, 7], [8, 9], [10, 11, 12], [13, 14]]
    assert dropped == 0
    assert sum(rows, []) == flat


def test_encode_document_budget_and_dropped_rows():
    sentences = [[1, 2], [3, 4], [5, 6], [7, 8]]
    flat, rows, dropped = docs.encode_document(sentences, max_tokens=5, max_sentences=8, sentence_tokens=4)
    assert flat == [1, 2, 3, 4, 5]  # cut inside the third sentence
    assert rows == [[1, 2], [3, 4], [5]]
    flat, rows, dropped = docs.encode_document(sentences, max_tokens=8, max_sentences=2, sentence_tokens=4)
    assert flat == [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows == [[1, 2], [3, 4]] and dropped == 4  # the flat view keeps what the L rows cannot
    assert docs.encode_document([], max_tokens=8, max_sentences=2, sentence_tokens=4) == ([], [], 0)
    assert docs.encode_document([[], []], max_tokens=8, max_sentences=2, sentence_tokens=4) == ([], [], 0)


def test_segment_none_and_bad_mode():
    assert docs.segment(["a  b.\nc d.", ""], "none") == [["a b. c d."], []]
    with pytest.raises(ValueError, match="sentence mode"):
        docs.segment(["x"], "spacy")


def test_segment_pysbd_and_cache(tmp_path):
    pytest.importorskip("pysbd")
    cache = tmp_path / "s.json"
    text = "The cat sat down.\nThen it slept.   Why? Nobody knows."
    first = docs.segment([text], "pysbd", cache)
    assert first == [["The cat sat down.", "Then it slept.", "Why?", "Nobody knows."]]
    assert cache.exists()
    assert docs.segment([text], "pysbd", cache) == first


def _split(lengths, rows_per_doc=None, max_tokens=8, max_sentences=4, width=4):
    n = len(lengths)
    tokens = np.zeros((n, max_tokens), np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = np.arange(1, length + 1) + 10 * i
    sentence_lengths = rows_per_doc or [[min(length, width)] if length else [] for length in lengths]
    return docs.DocumentSplit(tokens, np.ones((n, max_sentences, width), np.int32), np.arange(n, dtype=np.int32) % 3,
                              np.asarray(lengths, np.int32), [f"d{i}" for i in range(n)], sentence_lengths)


def test_document_batches_cover_every_document_once():
    split = _split([1, 3, 8, 2, 7, 5, 0, 4, 6, 8, 1])
    seen = []
    for batch in docs.document_batches(split, 3, (2, 4, 8), shuffle=True, seed=3):
        assert batch["tokens"].shape[0] == batch["labels"].shape[0] == batch["weights"].shape[0] == 3
        real = batch["index"] >= 0
        np.testing.assert_array_equal(batch["weights"], real.astype(np.float32))
        assert not batch["tokens"][~real].any() and not batch["sentences"][~real].any()
        width = batch["tokens"].shape[1]
        assert width in (2, 4, 8)
        assert split.lengths[batch["index"][real]].max() <= width  # a document fits its bucket
        np.testing.assert_array_equal(batch["tokens"][real], split.tokens[batch["index"][real], :width])
        np.testing.assert_array_equal(batch["labels"][real], split.labels[batch["index"][real]])
        seen.extend(batch["index"][real].tolist())
    assert sorted(seen) == list(range(len(split)))


def test_document_batches_order_and_rows():
    split = _split([1, 2, 3], rows_per_doc=[[1], [1, 1, 1], [1]])
    batches = list(docs.document_batches(split, 4, (8,), shuffle=False))
    assert len(batches) == 1
    assert batches[0]["index"].tolist() == [0, 1, 2, -1]
    assert batches[0]["sentences"].shape == (4, 4, 4)  # 3 rows needed -> 4 (a power of two, at most L)
    again = [b["index"].tolist() for b in docs.document_batches(split, 2, (8,), shuffle=True, seed=1)]
    assert again == [b["index"].tolist() for b in docs.document_batches(split, 2, (8,), shuffle=True, seed=1)]


def test_document_batches_bad_arguments():
    split = _split([1, 2])
    with pytest.raises(ValueError, match="last bucket"):
        next(docs.document_batches(split, 2, (4,), shuffle=False))
    with pytest.raises(ValueError, match="batch_size"):
        next(docs.document_batches(split, 0, (8,), shuffle=False))


def test_load_labelled_tsv(tmp_path):
    path = tmp_path / "docs.tsv"
    path.write_text("".join(f"{'ab'[i % 2]}\ttext number {i}. Second sentence.\n" for i in range(50)) + "\n",
                    encoding="utf-8")
    train, test = classification.load_labelled_tsv(path, 0.2)
    assert len(train) + len(test) == 50 and test and train
    assert {label for label, _ in train} == {"a", "b"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tfine\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        classification.load_labelled_tsv(bad)
    with pytest.raises(DataError, match="cannot read"):
        classification.load_labelled_tsv(tmp_path / "missing.tsv")


def test_prepare_documents_from_tsv(tmp_path):
    path = tmp_path / "docs.tsv"
    rows = [f"{'xy'[i % 2]}\tword{i % 7} alpha beta. gamma {'xy'[i % 2]}ray delta." for i in range(120)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    corpus = docs.prepare_documents("", tmp_path / "cache", vocab_size=40, max_tokens=16, max_sentences=4,
                                    sentence_tokens=6, data_path=str(path), sentences="none")
    assert corpus.label_names == ["x", "y"]
    assert len(corpus.train) + len(corpus.dev) + len(corpus.test) == 120
    for split in (corpus.train, corpus.dev, corpus.test):
        assert split.tokens.shape[1] == 16 and split.sentences.shape[1:] == (4, 6)
        for i in range(len(split)):
            flat = split.tokens[i, :split.lengths[i]].tolist()
            rows = [split.sentences[i, r, :n].tolist() for r, n in enumerate(split.sentence_lengths[i])]
            assert sum(rows, []) == flat  # the two views hold the same tokens
    assert corpus.info["classes"] == 2 and corpus.info["sentences"] == "none"
