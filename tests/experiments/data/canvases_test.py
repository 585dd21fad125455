"""Tests of experiments.data.canvases and experiments.vision on tiny fixture items made here."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import vision
from experiments.data import canvases
from experiments.data.fashion_mnist import Split


def _split(n=12):
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        images[i, 2:26, 2:26] = 10 + i  # each item's pixels name it
    return Split(images, (np.arange(n) % 10).astype(np.int32))


def test_captions_read_left_to_right_and_items_do_not_overlap():
    split = _split()
    out = canvases.caption_canvases(split, 20, 3, height=64, width=96, seed=1)
    assert out.images.shape == (20, 64, 96) and out.labels.shape == (20, 3)
    assert np.all(np.diff(out.lefts, axis=1) >= 4)
    for n in range(20):
        np.testing.assert_array_equal(out.labels[n], split.labels[out.sources[n]])
        covered = np.zeros((64, 96), np.int32)
        for k in range(3):
            t, l = out.tops[n, k], out.lefts[n, k]
            covered[t:t + 28, l:l + 28] += 1
            # The item is pasted unchanged where it lies.
            np.testing.assert_array_equal(out.images[n, t:t + 28, l:l + 28], split.images[out.sources[n, k]])
        assert covered.max() == 1
    again = canvases.caption_canvases(split, 20, 3, height=64, width=96, seed=1)
    np.testing.assert_array_equal(again.images, out.images)


def test_placement_errors():
    with pytest.raises(ValueError, match="does not fit"):
        canvases.place_items(np.zeros((1, 28, 28), np.uint8), 20, 96, np.random.default_rng(0))
    with pytest.raises(ValueError, match="could not place 4"):
        canvases.place_items(np.zeros((4, 28, 28), np.uint8), 28, 60, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fewer than items"):
        canvases.caption_canvases(_split(2), 1, 3)


def test_vision_helpers():
    x = vision.to_float(np.full((2, 5, 5), 255, np.uint8))
    assert x.shape == (2, 5, 5, 1) and np.allclose(x, (1 - vision.PIXEL_MEAN) / vision.PIXEL_STD)
    with pytest.raises(TypeError, match="uint8"):
        vision.to_float(np.zeros((2, 5, 5), np.float32))
    batches = list(vision.index_batches(5, 2, shuffle=True, seed=0))
    index = np.concatenate([b for b, _ in batches])
    assert sorted(index[index >= 0].tolist()) == [0, 1, 2, 3, 4] and index[-1] == -1
    np.testing.assert_array_equal(batches[-1][1], [1.0, 0.0])
    taken = vision.take(np.arange(1, 6)[:, None] * np.ones((1, 3)), np.array([4, -1]))
    np.testing.assert_array_equal(taken, [[5, 5, 5], [0, 0, 0]])
    encoder = vision.ConvEncoder(features=(8, 16), pool=(True, False))
    params = encoder.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    assert encoder.apply(params, np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 14, 14, 16)
    assert vision.param_count(params) == 9 * 8 + 8 + 16 + 9 * 8 * 16 + 16 + 32
    with pytest.raises(ValueError, match="NHWC"):
        encoder.apply(params, np.zeros((28, 28, 1), np.float32))
