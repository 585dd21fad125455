"""Canvases of real Fashion-MNIST items, for the glimpse-captioning and co-attention experiments (issue 14).

`place_items` pastes K item images (28 x 28, background 0) onto an H x W canvas at random places where no two
items overlap and no two left edges lie closer than ``min_dx`` pixels, so "left to right" is unambiguous.
Pixels are combined with a maximum (the background is 0, so an item is pasted unchanged).

`caption_canvases` draws N canvases of K items from one split; each canvas's caption is its items' labels sorted
by left edge. Every draw comes from a numpy Generator, so a seed fixes the canvases.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.data.fashion_mnist import IMAGE_SIZE, Split

MAX_TRIES = 10_000


@dataclasses.dataclass(frozen=True)
class Canvases:
    """N canvases of K items each, the items in left-to-right order.

    Attributes:
      images: [N, H, W] uint8.
      labels: [N, K] int32, the items' classes by left edge (the caption).
      tops, lefts: [N, K] int32, each item's top-left corner, in the same order.
      sources: [N, K] int64, each item's index in the split it came from.
    """

    images: np.ndarray
    labels: np.ndarray
    tops: np.ndarray
    lefts: np.ndarray
    sources: np.ndarray


def place_items(items: np.ndarray, height: int, width: int, rng: np.random.Generator, *, min_dx: int = 4
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pastes K items onto one canvas without overlap.

    Args:
      items: [K, h, w] uint8 item images.
      height, width: the canvas size (each at least the item size).
      rng: the random source of the places.
      min_dx: the least distance between two items' left edges.

    Returns:
      (canvas [height, width] uint8, tops [K] int32, lefts [K] int32) in the order of ``items``.

    Raises:
      ValueError: if the items do not fit, or no placement was found in `MAX_TRIES` tries (the canvas is too
        small for K items).
    """
    items = np.asarray(items)
    k, h, w = items.shape
    if height < h or width < w:
        raise ValueError(f"a {h} x {w} item does not fit a {height} x {width} canvas")
    tops = np.zeros((k,), np.int32)
    lefts = np.zeros((k,), np.int32)
    placed = misses = 0
    # Items go down one at a time; when one finds no free place in 100 draws the canvas starts again, so an
    # unlucky early item cannot block the rest.
    for _ in range(MAX_TRIES):
        if placed == k:
            break
        if misses == 100:
            placed = misses = 0
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        t, l = tops[:placed], lefts[:placed]
        overlaps = (np.abs(t - top) < h) & (np.abs(l - left) < w)
        if np.any(overlaps) or np.any(np.abs(l - left) < min_dx):
            misses += 1
            continue
        tops[placed], lefts[placed] = top, left
        placed, misses = placed + 1, 0
    if placed < k:
        raise ValueError(f"could not place {k} items of {h} x {w} on a {height} x {width} canvas with left edges "
                         f"{min_dx} apart in {MAX_TRIES} tries; use a larger canvas or fewer items")
    canvas = np.zeros((height, width), np.uint8)
    for item, top, left in zip(items, tops, lefts):
        window = canvas[top:top + h, left:left + w]
        np.maximum(window, item, out=window)
    return canvas, tops, lefts


def caption_canvases(split: Split, count: int, items: int, *, height: int = 64, width: int = 96, seed: int = 0,
                     min_dx: int = 4) -> Canvases:
    """``count`` canvases of ``items`` random items of ``split``, with left-to-right captions.

    Raises:
      ValueError: if count < 0, items < 1, the split has fewer images than ``items``, or they cannot be placed.
    """
    if count < 0 or items < 1:
        raise ValueError(f"count must be >= 0 and items >= 1, got count={count} items={items}")
    if len(split.labels) < items:
        raise ValueError(f"the split has {len(split.labels)} images, fewer than items={items}")
    rng = np.random.default_rng(seed)
    images = np.zeros((count, height, width), np.uint8)
    labels = np.zeros((count, items), np.int32)
    tops = np.zeros((count, items), np.int32)
    lefts = np.zeros((count, items), np.int32)
    sources = np.zeros((count, items), np.int64)
    for i in range(count):
        chosen = rng.choice(len(split.labels), size=items, replace=False)
        canvas, t, l = place_items(split.images[chosen], height, width, rng, min_dx=min_dx)
        order = np.argsort(l, kind="stable")
        images[i], tops[i], lefts[i] = canvas, t[order], l[order]
        sources[i], labels[i] = chosen[order], split.labels[chosen[order]]
    return Canvases(images, labels, tops, lefts, sources)


__all__ = ["Canvases", "IMAGE_SIZE", "caption_canvases", "place_items"]
