"""Tests of experiments.vision_attention on fixture texture images made here (no Fashion-MNIST).

Checks: the batch-size draws, resizing, the data split, DANet's query rows and the figure's image choice by hand;
the config checks; the table (rows cbam and danet over a base config with stochastic pooling and the SPP head, so
one small table runs every module kind) trains, learns the fixture's texture classes, reports test error at two
sizes, train error and gap, the paired CI and p against its baseline, claims, loss curves and both attention
figures, and re-reports without training on a rerun; a bad flag exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli
from experiments import training
from experiments import vision_attention as va
from experiments.data import fashion_mnist

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def _texture(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 image whose texture gives its class: 0 horizontal stripes, 1 vertical stripes, 2 a
    checkerboard, 3 one bright square; random phase / place and noise, so no two images are equal."""
    yy, xx = np.mgrid[0:28, 0:28]
    phase = int(rng.integers(0, 4))
    if label == 0:
        on = (yy + phase) % 4 < 2
    elif label == 1:
        on = (xx + phase) % 4 < 2
    elif label == 2:
        on = ((yy + phase) // 3 + (xx + phase) // 3) % 2 == 0
    else:
        top, left = rng.integers(4, 16, size=2)
        on = (yy >= top) & (yy < top + 8) & (xx >= left) & (xx < left + 8)
    image = np.where(on, 200, 30) + rng.integers(0, 40, size=(28, 28))
    return image.astype(np.uint8)


def _split(n: int, seed: int) -> fashion_mnist.Split:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4).astype(np.int32)
    return fashion_mnist.Split(np.stack([_texture(int(y), rng) for y in labels]), labels)


def test_batch_sizes_are_drawn_per_epoch():
    a = va.batch_sizes(200, (24, 28, 32), seed=0, epoch=0)
    assert a.shape == (200,) and set(a.tolist()) == {24, 28, 32}
    np.testing.assert_array_equal(a, va.batch_sizes(200, (24, 28, 32), seed=0, epoch=0))  # resumable
    assert not np.array_equal(a, va.batch_sizes(200, (24, 28, 32), seed=0, epoch=1))
    assert not np.array_equal(a, va.batch_sizes(200, (24, 28, 32), seed=1, epoch=0))


def test_resize_and_batches():
    flat = np.full((3, 28, 28, 1), 0.5, np.float32)
    for size in (20, 36):
        out = va.resize_images(flat, size)
        assert out.shape == (3, size, size, 1)
        np.testing.assert_allclose(out, 0.5, atol=1e-5)  # a constant image stays constant
    assert va.resize_images(flat, 28) is flat
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    batch = va.image_batch(images, np.array([1, -1]), 20)
    assert batch.shape == (2, 20, 20, 1)
    np.testing.assert_allclose(batch[1], batch[1, 0, 0, 0], atol=1e-5)  # the padding row is one blank image
    assert [va.last_map_side(s, 3) for s in (20, 24, 28, 36)] == [5, 6, 7, 9]


def test_prepare_holds_out_dev_and_fixes_the_train_subset():
    config = va.va_config.get_config()
    config.data.dev_size, config.data.train_eval_size, config.data.max_test = 20, 30, 40
    vd = va.prepare(config, {"train": _split(120, 0), "test": _split(60, 1)})
    assert (vd.train_images.shape[0], vd.dev_images.shape[0], vd.test_images.shape[0]) == (100, 20, 40)
    train_rows = {img.tobytes() for img in vd.train_images}
    assert not any(img.tobytes() in train_rows for img in vd.dev_images)  # disjoint
    assert vd.train_eval_index.shape == (30,) and np.all(np.diff(vd.train_eval_index) > 0)
    again = va.prepare(config, {"train": _split(120, 0), "test": _split(60, 1)})
    np.testing.assert_array_equal(vd.train_eval_index, again.train_eval_index)
    np.testing.assert_array_equal(vd.dev_labels, again.dev_labels)
    assert vd.info["train_eval_images"] == 30


def test_query_rows_and_figure_images():
    position = np.arange(2 * 9 * 9, dtype=np.float32).reshape(2, 9, 9)  # S = 3 x 3
    maps = va.query_rows(position, 3, 3, ((1, 1), (0, 2)))
    assert maps.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(maps[1, 0], position[1, 4].reshape(3, 3))  # the centre query's row
    np.testing.assert_array_equal(maps[0, 1], position[0, 2].reshape(3, 3))
    labels = np.array([3, 3, 1, 0, 1, 2])
    np.testing.assert_array_equal(va.figure_images(labels, 5), [3, 2, 5, 0, 1])  # one per class first


@pytest.mark.parametrize("field, value, expected", [
    ("model.reduction", 32, "reduction"),
    ("model.groups", 3, "groups"),
    ("eval.other_sizes", (12, 28), "repeats 28"),
    ("model.levels", (1, 2, 8), "pyramid level 8"),
    ("train.sizes", (32, 24), "train.sizes"),
])
def test_validate_names_the_bad_value(field, value, expected):
    config = va.va_config.get_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(training.ConfigError, match=expected):
        va.validate(config, ["none", "se", "spp"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vision")
    config = va.va_config.get_config()
    config.seeds = "1"
    config.data.dev_size, config.data.train_eval_size = 100, 200
    config.model.widths = (4, 8)
    config.model.groups = 4
    config.model.pool = "stochastic"  # the rows below override only the attention
    config.model.head = "spp"
    config.model.levels = (1, 2)
    config.model.danet_reduction = 4
    config.train.batch_size = 32
    config.train.num_steps = 40
    config.train.learning_rate = 5e-3
    config.train.eval_every = 20
    config.train.checkpoint_every = 0  # only the final checkpoint
    config.train.log_every = 10
    config.eval.batch_size = 100
    config.eval.other_sizes = (20,)
    config.eval.significance_samples = 200
    config.eval.baseline_row = "cbam"
    config.eval.num_maps = 2
    rows = ["cbam", "danet"]
    va.validate(config, rows)
    data = va.prepare(config, {"train": _split(700, 2), "test": _split(200, 3)})
    workdir = str(tmp / "work")
    records = va.run(config, rows, workdir, command="test", vision_data=data)
    return config, rows, workdir, records, data


def test_table(finished):
    _, _, workdir, records, _ = finished
    assert [(r["row"], r["seed"], r["pooling"], r["head"]) for r in records] == [
        ("cbam", 0, "stochastic", "spp"), ("danet", 0, "stochastic", "spp")]
    for r in records:
        assert r["steps"] == 40 and r["test_images"] == 200 and r["baseline_row"] == "cbam"
        assert r["test_error"] == pytest.approx(100.0 - r["test_accuracy"])
        assert r["train_test_gap"] == pytest.approx(r["test_error"] - r["train_error"])
        assert 0.0 <= r["test_error_20"] <= 100.0 and r["train_sizes"] == "28"
    danet = records[1]
    assert danet["test_accuracy_ci"][0] <= danet["test_accuracy_ci"][1] and 0 <= danet["test_accuracy_p"] <= 1
    # Four texture classes: chance is 75% error; the textures are learnable in 40 steps.
    assert min(r["test_error"] for r in records) < 35.0
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| cbam | cbam | stochastic | spp |" in text and "baseline" in text and "### Claims" in text
    assert "test error % (20)" in text and "cbam/seed_0/cbam_spatial_maps.png" in text
    assert "danet/seed_0/danet_position_maps.png" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    assert {c["name"] for c in claims} == {c.name for c in va.va_config.CLAIMS}
    assert all(c["holds"] is None for c in claims)  # their rows are not in this table
    for path in ("loss_curves.png", "cbam/seed_0/cbam_spatial_maps.png", "danet/seed_0/danet_position_maps.png"):
        assert os.path.getsize(os.path.join(workdir, path)) > 0


def test_rerun_only_reports(finished):
    config, rows, workdir, records, data = finished
    stamp = os.path.getmtime(os.path.join(workdir, "cbam", "seed_0", "metrics.jsonl"))
    again = va.run(config, rows, workdir, command="test", vision_data=data)
    assert [r["test_error"] for r in again] == [r["test_error"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "cbam", "seed_0", "metrics.jsonl")) == stamp


def test_bad_flag_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.vision_attention", "--preset=smoke",
                           f"--workdir={tmp_path}", "--config.model.reduction=64"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "reduction" in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
