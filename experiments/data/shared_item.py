"""Pairs of Fashion-MNIST canvases that share exactly one item class, for the co-attention experiment.

Lu et al. 2019 (COSNet, CVPR 2019) train a siamese network on pairs of frames of one video, whose common
foreground object the co-attention has to find. `shared_item_pairs` builds the same situation from real images:
canvas A and canvas B each hold K items (`experiments.data.canvases.place_items`, no overlap, left edges apart),
and exactly one class appears in both, once in each, as two DIFFERENT images of that class (a semantic match, not
a pixel match). The other 2 (K - 1) items are of 2 (K - 1) further classes, all distinct, so no other class
appears in both canvases (nor twice in one). Targets per pair:

* ``shared_class`` [N]: the shared item's class (10-way);
* ``slot_b`` [N]: the shared item's place in B counted from the left (K-way); ``slot_a`` likewise in A.

Every draw comes from one numpy Generator, so a seed fixes the pairs; `check_pairs` verifies the properties
above on a built set.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.data.canvases import place_items
from experiments.data.fashion_mnist import IMAGE_SIZE, Split


@dataclasses.dataclass(frozen=True)
class Pairs:
    """N canvas pairs of K items each; per canvas the items are in left-to-right order.

    Attributes:
      a, b: [N, H, W] uint8 canvases.
      labels_a, labels_b: [N, K] int32 item classes, by left edge.
      boxes_a, boxes_b: [N, K, 4] int32 item rectangles (top, left, height, width), by left edge.
      sources_a, sources_b: [N, K] int64 item indices into the split the pairs were drawn from.
      shared_class: [N] int32, the one class in both canvases.
      slot_a, slot_b: [N] int32, the shared item's left-to-right place in A and in B.
    """

    a: np.ndarray
    b: np.ndarray
    labels_a: np.ndarray
    labels_b: np.ndarray
    boxes_a: np.ndarray
    boxes_b: np.ndarray
    sources_a: np.ndarray
    sources_b: np.ndarray
    shared_class: np.ndarray
    slot_a: np.ndarray
    slot_b: np.ndarray

    def __len__(self) -> int:
        return int(self.shared_class.shape[0])

    @property
    def items(self) -> int:
        """K, the items per canvas."""
        return int(self.labels_a.shape[1])


def _canvas(split: Split, chosen: np.ndarray, slot: int, height: int, width: int, rng: np.random.Generator,
            min_dx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One canvas of the items ``chosen`` (the shared one first) with the shared item at left-to-right ``slot``.

    `place_items` finds K free places; since every item has the same size, the items are then dealt to the places
    sorted by left edge, the shared item to ``slot`` and the others in random order (the order in which
    `place_items` fills places would make the middle slot the likeliest). Returns the canvas, and the boxes,
    sources and labels in left-to-right order.
    """
    items = split.images[chosen]
    _, tops, lefts = place_items(items, height, width, rng, min_dx=min_dx)
    by_left = np.argsort(lefts, kind="stable")
    rest = rng.permutation(np.arange(1, len(chosen)))
    order = np.insert(rest, slot, 0)  # order[j]: the item dealt to the j-th place from the left
    canvas = np.zeros((height, width), np.uint8)
    h, w = items.shape[1:]
    for j, place in enumerate(by_left):
        top, left = int(tops[place]), int(lefts[place])
        window = canvas[top:top + h, left:left + w]
        np.maximum(window, items[order[j]], out=window)
    boxes = np.stack([tops[by_left], lefts[by_left], np.full(len(order), h), np.full(len(order), w)], -1)
    return canvas, boxes.astype(np.int32), chosen[order], split.labels[chosen[order]]


def shared_item_pairs(split: Split, count: int, *, items: int = 3, height: int = 64, width: int = 96,
                      seed: int = 0, min_dx: int = 4) -> Pairs:
    """``count`` canvas pairs of ``items`` items each that share exactly one class.

    Per pair: the shared class is drawn uniformly from the classes with at least two images, then 2 (items - 1)
    further distinct classes; A gets the shared class and the first items - 1 of them, B the shared class and the
    rest. Each item is a random image of its class; the two shared items are two different images. Each canvas
    places its items at random (`place_items`), the shared item at a uniformly drawn left-to-right slot.

    Args:
      split: the images to draw from (e.g. Fashion-MNIST's train split, or part of its test split).
      count: N >= 0.
      items: K >= 1 items per canvas.
      height, width: the canvas size.
      seed: the seed of every draw.
      min_dx: the least distance between two left edges of one canvas.

    Returns:
      `Pairs`.

    Raises:
      ValueError: if count < 0 or items < 1, the split has fewer than 2 items - 1 classes (with a class of at
        least two images), or the items cannot be placed (`place_items`).
    """
    if count < 0 or items < 1:
        raise ValueError(f"count must be >= 0 and items >= 1, got count={count} items={items}")
    labels = np.asarray(split.labels)
    present = np.unique(labels)
    by_class = {int(c): np.flatnonzero(labels == c) for c in present}
    doubles = np.asarray([c for c, idx in by_class.items() if len(idx) >= 2], np.int64)
    if len(present) < 2 * items - 1 or not len(doubles):
        raise ValueError(f"{items} items per canvas need {2 * items - 1} classes in the split, one of them with two "
                         f"images; the split has {len(present)} classes, {len(doubles)} with two images or more")
    rng = np.random.default_rng(seed)
    n, k = int(count), int(items)
    a = np.zeros((n, height, width), np.uint8)
    b = np.zeros((n, height, width), np.uint8)
    labels_a, labels_b = np.zeros((n, k), np.int32), np.zeros((n, k), np.int32)
    boxes_a, boxes_b = np.zeros((n, k, 4), np.int32), np.zeros((n, k, 4), np.int32)
    sources_a, sources_b = np.zeros((n, k), np.int64), np.zeros((n, k), np.int64)
    shared = np.zeros((n,), np.int32)
    slot_a, slot_b = np.zeros((n,), np.int32), np.zeros((n,), np.int32)
    for i in range(n):
        c = int(rng.choice(doubles))
        others = rng.choice(present[present != c], size=2 * (k - 1), replace=False)
        first, second = rng.choice(by_class[c], size=2, replace=False)
        singles = [int(rng.choice(by_class[int(x)])) for x in others]  # one image of each other class
        chosen_a = np.asarray([first] + singles[:k - 1], np.int64)
        chosen_b = np.asarray([second] + singles[k - 1:], np.int64)
        slot_a[i], slot_b[i] = rng.integers(0, k, size=2)
        a[i], boxes_a[i], sources_a[i], labels_a[i] = _canvas(split, chosen_a, int(slot_a[i]), height, width, rng,
                                                              min_dx)
        b[i], boxes_b[i], sources_b[i], labels_b[i] = _canvas(split, chosen_b, int(slot_b[i]), height, width, rng,
                                                              min_dx)
        shared[i] = c
    return Pairs(a, b, labels_a, labels_b, boxes_a, boxes_b, sources_a, sources_b, shared, slot_a, slot_b)


def check_pairs(pairs: Pairs, split: Split) -> None:
    """Verifies the task's properties on built pairs: one shared class, once per canvas, two different images,
    the targets pointing at it, items left to right and pasted where their boxes say.

    Raises:
      ValueError: naming the first pair that breaks a property.
    """
    for i in range(len(pairs)):
        la, lb = pairs.labels_a[i], pairs.labels_b[i]
        common = set(la.tolist()) & set(lb.tolist())
        if common != {int(pairs.shared_class[i])}:
            raise ValueError(f"pair {i}: classes in both canvases {sorted(common)}, expected only "
                             f"{int(pairs.shared_class[i])}")
        if len(set(la.tolist())) != len(la) or len(set(lb.tolist())) != len(lb):
            raise ValueError(f"pair {i}: a class repeats within a canvas: A {la.tolist()} B {lb.tolist()}")
        sa, sb = int(pairs.slot_a[i]), int(pairs.slot_b[i])
        if la[sa] != pairs.shared_class[i] or lb[sb] != pairs.shared_class[i]:
            raise ValueError(f"pair {i}: slots {sa}, {sb} do not hold the shared class")
        if pairs.sources_a[i, sa] == pairs.sources_b[i, sb]:
            raise ValueError(f"pair {i}: the shared item is the same image in both canvases")
        for canvas, boxes, sources, labels in ((pairs.a[i], pairs.boxes_a[i], pairs.sources_a[i], la),
                                               (pairs.b[i], pairs.boxes_b[i], pairs.sources_b[i], lb)):
            if np.any(np.diff(boxes[:, 1]) <= 0):
                raise ValueError(f"pair {i}: items are not in left-to-right order: lefts {boxes[:, 1].tolist()}")
            for (top, left, h, w), src, label in zip(boxes, sources, labels):
                if label != split.labels[src] or not np.array_equal(canvas[top:top + h, left:left + w],
                                                                    split.images[src]):
                    raise ValueError(f"pair {i}: item {int(src)} is not where its box says or has another label")


__all__ = ["IMAGE_SIZE", "Pairs", "check_pairs", "shared_item_pairs"]
