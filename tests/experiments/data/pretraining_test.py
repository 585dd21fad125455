"""Tests of experiments.data.pretraining's next-sentence pairs on documents made here (no download)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data import pretraining

CLS, SEP = 4, 5


def _docs(count: int = 60, sentences: int = 8, seed: int = 0) -> list[list[list[int]]]:
    """Documents whose sentence ids encode (document, sentence): id 100 * (d + 1) + s, 3 pieces a sentence."""
    del seed
    return [[[100 * (d + 1) + s] * 3 for s in range(sentences)] for d in range(count)]


def _segments(row: np.ndarray, types: np.ndarray) -> tuple[list[int], list[int]]:
    real = row[row != 0]
    assert real[0] == CLS and real[-1] == SEP and np.sum(real == SEP) == 2
    first_sep = int(np.flatnonzero(real == SEP)[0])
    a, b = real[1:first_sep].tolist(), real[first_sep + 1:-1].tolist()
    np.testing.assert_array_equal(types[:len(real)], [0] * (first_sep + 1) + [1] * (len(real) - first_sep - 1))
    assert not types[len(real):].any()
    return a, b


def test_pairs_layout_labels_and_never_self_pairs():
    inst = pretraining.nsp_instances(_docs(), max_tokens=16, cls_id=CLS, sep_id=SEP, seed=3)
    assert inst.tokens.shape[1] == 16 and inst.tokens.shape == inst.token_type_ids.shape
    assert 0.35 < inst.is_next.mean() < 0.65  # about half true next segments
    for row, types, is_next in zip(inst.tokens, inst.token_type_ids, inst.is_next):
        a, b = _segments(row, types)
        assert a and b
        doc_a, doc_b = {t // 100 for t in a}, {t // 100 for t in b}
        assert len(doc_a) == 1
        if is_next:
            assert doc_b == doc_a and min(t % 100 for t in b) > max(t % 100 for t in a)  # the continuation
        else:
            assert not doc_b & doc_a  # a random segment comes from another document, never A's own


def test_random_segment_skips_sentences_repeated_from_a():
    docs = _docs(count=3, sentences=6)
    docs[1][2] = list(docs[0][0])  # the same sentence in two documents
    for seed in range(20):
        inst = pretraining.nsp_instances(docs, max_tokens=12, cls_id=CLS, sep_id=SEP, seed=seed)
        for row, types, is_next in zip(inst.tokens, inst.token_type_ids, inst.is_next):
            a, b = _segments(row, types)
            if not is_next and a[:3] == docs[0][0]:
                assert docs[0][0] != b[:3]


def test_same_seed_same_instances_and_groups():
    docs = _docs(count=20)
    groups = ["x"] * 10 + ["y"] * 10
    one = pretraining.nsp_instances(docs, max_tokens=16, cls_id=CLS, sep_id=SEP, seed=1, groups=groups)
    two = pretraining.nsp_instances(docs, max_tokens=16, cls_id=CLS, sep_id=SEP, seed=1, groups=groups)
    np.testing.assert_array_equal(one.tokens, two.tokens)
    assert one.same_group[one.is_next == 1].all() and not one.same_group.all()
    with pytest.raises(ValueError, match="groups"):
        pretraining.nsp_instances(docs, max_tokens=16, cls_id=CLS, sep_id=SEP, seed=1, groups=["x"])
    with pytest.raises(ValueError, match="two non-empty documents"):
        pretraining.nsp_instances(docs[:1], max_tokens=16, cls_id=CLS, sep_id=SEP, seed=1)


def test_split_documents_by_hash():
    docs = [pretraining.Document(f"d{i}", ("a.", "b.")) for i in range(200)]
    train, held = pretraining.split_documents(docs, 0.1)
    assert len(train) + len(held) == 200 and 5 <= len(held) <= 40
    assert {d.name for d in held} == {d.name for d in pretraining.split_documents(docs[::-1], 0.1)[1]}
