"""Tests of experiments.co_attention on tiny fixture canvases made here (no Fashion-MNIST).

Checks: the slot regions of the map and the co-attention weights read from the affinity, by hand; the table
(siamese and cosnet) trains, reports class and slot accuracy with the paired CIs and p against siamese, writes
claims, the loss curves and cosnet's attention overlays, learns the fixture task well above chance, and
re-reports without training on a rerun; bad flags exit 2 with one line.
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
from experiments import co_attention
from experiments.data.fashion_mnist import Split

REPO = str(pathlib.Path(__file__).resolve().parents[2])
CLASSES = 4


def test_slot_masks_cover_each_box():
    h, w, stride = co_attention.map_size(28, 64, (True, False, True))
    assert (h, w, stride) == (7, 16, 4)
    boxes = np.array([[[0, 0, 28, 28], [0, 30, 28, 28]]])
    masks = co_attention.slot_masks(boxes, h, w, stride)
    assert masks.shape == (1, 2, 7, 16)
    # Centres 1.5, 5.5, ...: columns 0-6 lie in [0, 28), columns 8-14 in [30, 58); every row is inside.
    np.testing.assert_array_equal(masks[0, 0].any(axis=0), np.arange(16) < 7)
    np.testing.assert_array_equal(masks[0, 1].any(axis=0), (np.arange(16) >= 8) & (np.arange(16) <= 14))
    assert masks[0, 0].any(axis=1).all() and not (masks[0, 0] & masks[0, 1]).any()


def test_attention_from_centres_reads_the_affinity_both_ways():
    size = (2, 4, 14)  # a 28 x 56 canvas, 2 x 4 positions
    pairs = co_attention.shared_item.Pairs(
        a=None, b=None, labels_a=None, labels_b=None, boxes_a=np.array([[[0, 0, 28, 28], [0, 28, 28, 28]]]),
        boxes_b=np.array([[[0, 0, 28, 28], [0, 28, 28, 28]]]), sources_a=None, sources_b=None,
        shared_class=np.array([0]), slot_a=np.array([1]), slot_b=np.array([0]))
    affinity = np.zeros((1, 8, 8))
    # A's shared item centre (14, 42) is position (1, 3) = 7; B's (14, 14) is (1, 1) = 5. S is [S_b, S_a].
    affinity[0, 4, 6] = 3.0  # another column and row: read by neither
    affinity[0, 5, 7] = 2.0  # B's centre against A's centre
    affinity[0, 5, 0] = 4.0  # B's centre against A's position 0
    a_to_b, b_to_a = co_attention.attention_from_centres(affinity, pairs, np.array([0]), size)
    assert a_to_b.shape == b_to_a.shape == (1, 2, 4)
    np.testing.assert_allclose(a_to_b.sum(), 1.0)
    assert np.argmax(a_to_b[0]) == 5 and np.argmax(b_to_a[0]) == 0
    expected = np.exp(2.0) / (np.exp(2.0) + 7)
    np.testing.assert_allclose(a_to_b[0, 1, 1], expected)


def _splits():
    """Items whose brightness names their class (plus per-image noise, so two items of a class differ)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, n in (("train", 160), ("test", 120)):
        labels = (np.arange(n) % CLASSES).astype(np.int32)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, c in enumerate(labels):
            images[i, 4:24, 4:24] = 50 + 60 * c + rng.integers(0, 10, (20, 20))
        out[name] = Split(images, labels)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("co_attention")
    config = co_attention.co_config.get_config()
    config.seeds = "1"
    config.data.cache = False
    config.data.num_items = 2
    config.data.height, config.data.width = 28, 64
    config.data.train_pairs, config.data.dev_pairs, config.data.test_pairs = 400, 40, 200
    config.model.features = (8, 16)
    config.model.pool = (True, True)
    config.model.hidden = 16
    config.train.num_steps = 40
    config.train.batch_size = 16
    config.train.learning_rate = 0.01
    config.train.eval_every = 20
    config.train.checkpoint_every = 0  # only the final checkpoint: orbax saves cost time
    config.train.log_every = 10
    config.eval.batch_size = 100
    config.eval.num_overlays = 2
    config.eval.significance_samples = 200
    co_attention.validate(config, ["siamese", "cosnet"])
    pair_data = co_attention.prepare(config, _splits())
    workdir = str(tmp / "work")
    rows = ["siamese", "cosnet"]
    records = co_attention.run(config, rows, workdir, command="test", pair_data=pair_data)
    return config, rows, workdir, records, pair_data


def test_table(finished):
    config, rows, workdir, records, pair_data = finished
    assert [(r["row"], r["seed"]) for r in records] == [("siamese", 0), ("cosnet", 0)]
    for r in records:
        assert r["steps"] == 40 and r["baseline_row"] == "siamese" and r["test_pairs"] == 200
        assert r["params"] > 0 and 0.0 <= r["test_slot_accuracy"] <= 100.0
    cosnet = records[1]
    for metric in ("test_accuracy", "test_slot_accuracy"):
        assert cosnet[f"{metric}_ci"][0] <= cosnet[f"{metric}_ci"][1] and 0 <= cosnet[f"{metric}_p"] <= 1
    assert cosnet["params"] > records[0]["params"]  # W, the gate and the wider heads
    # Chance: 25% class (4 fixture classes), 50% slot (200 test pairs: 3 points of standard error); matching
    # brightness is learnable in 40 steps (siamese about 49% and 73% here).
    assert max(r["test_accuracy"] for r in records) > 40.0
    assert max(r["test_slot_accuracy"] for r in records) > 62.0
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| siamese | none | - |" in text and "baseline" in text and "### Claims" in text
    assert "cosnet/seed_0/attention_overlays.png" in text and "loss_curves.png" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    slot = next(c for c in claims if c["metric"] == "test_slot_accuracy")
    assert slot["holds"] in (True, False) and slot["p"] is not None
    assert os.path.exists(os.path.join(workdir, "loss_curves.png"))
    assert os.path.exists(os.path.join(workdir, "cosnet", "seed_0", "attention_overlays.png"))
    assert not os.path.exists(os.path.join(workdir, "siamese", "seed_0", "attention_overlays.png"))


def test_rerun_only_reports(finished):
    config, rows, workdir, records, pair_data = finished
    stamp = os.path.getmtime(os.path.join(workdir, "siamese", "seed_0", "metrics.jsonl"))
    again = co_attention.run(config, rows, workdir, command="test", pair_data=pair_data)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "siamese", "seed_0", "metrics.jsonl")) == stamp


@pytest.mark.parametrize("flag, expected", [
    ("--config.data.num_items=6", "num_items"),
    ("--rows=siamese,nope", "unknown row"),
])
def test_bad_flags_exit_with_one_line(flag, expected, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.co_attention", "--preset=smoke",
                           f"--workdir={tmp_path}", flag], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
