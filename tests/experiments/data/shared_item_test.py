"""Tests of experiments.data.shared_item on tiny fixture items made here (no Fashion-MNIST)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.data import shared_item
from experiments.data.fashion_mnist import Split


def _split(per_class=4, classes=10):
    """Items whose pixels name them: image n of class c is filled with 10 + n (so sources are recoverable)."""
    n = per_class * classes
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        images[i, 3:25, 3:25] = 10 + i
    return Split(images, (np.arange(n) % classes).astype(np.int32))


def test_exactly_one_shared_class_and_the_targets_point_at_it():
    split = _split()
    pairs = shared_item.shared_item_pairs(split, 60, items=3, height=64, width=96, seed=3)
    assert pairs.a.shape == pairs.b.shape == (60, 64, 96) and pairs.labels_a.shape == (60, 3) and len(pairs) == 60
    shared_item.check_pairs(pairs, split)  # the full property check, then the same facts by hand
    for i in range(60):
        la, lb = pairs.labels_a[i].tolist(), pairs.labels_b[i].tolist()
        assert set(la) & set(lb) == {int(pairs.shared_class[i])}
        assert len(set(la + lb)) == 5  # 1 shared + 2 + 2 distinct classes: nothing else repeats
        assert la[pairs.slot_a[i]] == lb[pairs.slot_b[i]] == pairs.shared_class[i]
        # Two different images of the shared class, each pasted unchanged at its box (pixels name the image).
        src_a, src_b = pairs.sources_a[i, pairs.slot_a[i]], pairs.sources_b[i, pairs.slot_b[i]]
        assert src_a != src_b and split.labels[src_a] == split.labels[src_b]
        top, left = pairs.boxes_b[i, pairs.slot_b[i], :2]
        assert pairs.b[i, top + 14, left + 14] == 10 + src_b
        assert np.all(np.diff(pairs.boxes_b[i, :, 1]) >= 4) and np.all(pairs.boxes_b[i, :, 2:] == 28)
    # The shared item's slot is spread over every place (not pinned by the placement order), and every class shares.
    assert set(pairs.slot_b.tolist()) == {0, 1, 2} and set(pairs.slot_a.tolist()) == {0, 1, 2}
    assert len(set(pairs.shared_class.tolist())) >= 8
    again = shared_item.shared_item_pairs(split, 60, items=3, height=64, width=96, seed=3)
    np.testing.assert_array_equal(again.b, pairs.b)
    np.testing.assert_array_equal(again.slot_b, pairs.slot_b)
    other = shared_item.shared_item_pairs(split, 60, items=3, height=64, width=96, seed=4)
    assert not np.array_equal(other.shared_class, pairs.shared_class)


def test_check_pairs_catches_a_second_shared_class():
    split = _split()
    pairs = shared_item.shared_item_pairs(split, 5, items=2, height=32, width=64, seed=0)
    shared_item.check_pairs(pairs, split)
    labels_b = pairs.labels_b.copy()
    other = 1 - int(pairs.slot_b[0])
    labels_b[0, other] = pairs.labels_a[0, 1 - int(pairs.slot_a[0])]  # B's other item now shares A's other class
    with pytest.raises(ValueError, match="pair 0: classes in both"):
        shared_item.check_pairs(dataclasses.replace(pairs, labels_b=labels_b), split)
    slot_b = pairs.slot_b.copy()
    slot_b[1] = 1 - slot_b[1]
    with pytest.raises(ValueError, match="pair 1: slots"):
        shared_item.check_pairs(dataclasses.replace(pairs, slot_b=slot_b), split)


def test_errors():
    with pytest.raises(ValueError, match="count must be"):
        shared_item.shared_item_pairs(_split(), -1)
    with pytest.raises(ValueError, match="need 5 classes"):
        shared_item.shared_item_pairs(_split(classes=4), 2, items=3)
    one_each = Split(np.zeros((10, 28, 28), np.uint8), np.arange(10, dtype=np.int32))
    with pytest.raises(ValueError, match="two images"):
        shared_item.shared_item_pairs(one_each, 2, items=3)
    with pytest.raises(ValueError, match="could not place"):
        shared_item.shared_item_pairs(_split(), 1, items=4, height=28, width=60)
