"""Tests of experiments.few_shot on fixture gratings made here (no Fashion-MNIST).

Checks: the episode sampler (shapes, disjoint support and queries, the same queries for every shot count, too
small classes refused); the class pools; CAN's shapes, attention sums and pairwise scoring; the config checks; the
table (prototypical 1-shot and CAN 1-shot) trains, beats chance on novel classes, reports the episode CI and
the paired CI / p of CAN against the prototypical row, writes claims, loss curves and CAN's attention overlays,
and re-reports without training on a rerun; a bad flag exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from experiments import few_shot
from experiments import training
from experiments.data import fashion_mnist

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def _gratings(per_class: int, seed: int) -> fashion_mnist.Split:
    """28 x 28 uint8 images whose class c is a grating of its own direction and period, at a random phase."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:28, 0:28]
    directions = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 1)]
    images, labels = [], []
    for c in range(10):
        dx, dy = directions[c % 5]
        period = 4 if c < 5 else 7
        for _ in range(per_class):
            phase = rng.integers(0, period)
            on = ((dx * x + dy * y + phase) // (period // 2)) % 2 == 0
            noise = rng.normal(0, 20, (28, 28))
            images.append(np.clip(np.where(on, 200, 30) + noise, 0, 255).astype(np.uint8))
            labels.append(c)
    return fashion_mnist.Split(np.stack(images), np.asarray(labels, np.int32))


@pytest.fixture(scope="module")
def splits():
    return {"train": _gratings(30, 0), "test": _gratings(25, 1)}


def test_sample_episodes():
    labels = np.repeat(np.arange(6), 12)
    one = few_shot.sample_episodes(labels, (0, 2, 3, 5), way=3, shot=1, queries=4, count=7, seed=3)
    five = few_shot.sample_episodes(labels, (0, 2, 3, 5), way=3, shot=5, queries=4, count=7, seed=3)
    assert one.support.shape == (7, 3, 1) and one.query.shape == (7, 12) and one.classes.shape == (7, 3)
    np.testing.assert_array_equal(one.query_labels, [0] * 4 + [1] * 4 + [2] * 4)
    for e in range(7):
        assert len(set(one.classes[e])) == 3 and set(one.classes[e]) <= {0, 2, 3, 5}
        assert not set(five.support[e].ravel()) & set(five.query[e])  # no query is a shot
        assert len(set(five.support[e].ravel()) | set(five.query[e])) == 3 * 9  # all distinct
        np.testing.assert_array_equal(labels[five.support[e]], np.repeat(five.classes[e][:, None], 5, axis=1))
        np.testing.assert_array_equal(labels[five.query[e]], five.classes[e][five.query_labels])
    # The shot count changes only the support: the same classes and queries, the 1-shot support nested.
    np.testing.assert_array_equal(one.query, five.query)
    np.testing.assert_array_equal(one.classes, five.classes)
    np.testing.assert_array_equal(one.support[..., 0], five.support[..., 0])
    again = few_shot.sample_episodes(labels, (0, 2, 3, 5), way=3, shot=1, queries=4, count=7, seed=3)
    np.testing.assert_array_equal(again.query, one.query)
    assert len({tuple(q) for q in one.query}) == 7  # the episodes differ
    with pytest.raises(ValueError, match="fewer than shot"):
        few_shot.sample_episodes(labels, (0, 1, 2), way=3, shot=5, queries=8, count=1, seed=0)


def test_prepare_pools(splits):
    config = few_shot.fs_config.get_config()
    config.data.dev_per_class = 20
    config.data.max_test_per_class = 22
    fd = few_shot.prepare(config, splits)
    assert set(fd.train.labels) == {0, 1, 2, 3, 4} and fd.train.labels.shape == (150,)
    assert set(fd.dev.labels) == {0, 1, 2, 3, 4} and fd.dev.labels.shape == (100,)
    assert set(fd.test.labels) == {5, 6, 7, 8, 9} and fd.test.labels.shape == (110,)
    # The dev images are the first test-split images of the meta-train classes.
    np.testing.assert_array_equal(fd.dev.images[:20], splits["test"].images[splits["test"].labels == 0][:20])
    assert fd.info["test_classes"] == list(fashion_mnist.CLASS_NAMES[5:])


def _model(kind: str) -> few_shot.FewShotNet:
    return few_shot.FewShotNet(kind=kind, features=(8, 8), pool=(True, True), groups=4, reduction=6, num_global=5)


def test_can_model():
    rng = np.random.default_rng(0)
    support = jnp.asarray(rng.normal(size=(3, 2, 28, 28, 1)), jnp.float32)
    query = jnp.asarray(rng.normal(size=(6, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray([0, 0, 1, 1, 2, 2], jnp.int32)
    model = _model("can")
    params = jax.jit(model.init)(jax.random.key(0), support, query, labels)["params"]
    apply = jax.jit(lambda s: model.apply({"params": params}, s, query, labels))
    logits, aux = apply(support)
    assert logits.shape == (6, 3)
    assert aux["global_logits"].shape == (6, 7, 7, 5)
    np.testing.assert_allclose(np.sum(aux["class_attention"], axis=(2, 3)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sum(aux["query_attention"], axis=(2, 3)), 1.0, rtol=1e-5)
    assert np.all(np.abs(logits) <= 7.0 + 1e-5)  # scaled cosines
    # Each (class, query) pair is scored on its own: another class's shots leave class 0's logits alone.
    changed = support.at[1].set(jnp.asarray(rng.normal(size=(2, 28, 28, 1)), jnp.float32))
    logits2, _ = apply(changed)
    np.testing.assert_allclose(logits2[:, 0], logits[:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits2[:, 1], logits[:, 1])


def test_overlay_pairs():
    assert few_shot.overlay_pairs(5, 15, 4) == [(0, 0), (0, 1), (15, 1), (15, 2)]


@pytest.mark.parametrize("field, value, expected", [
    ("data.test_classes", (4, 5, 6, 7, 8), "both meta-train and meta-test"),
    ("model.reduction", 50, "reduction"),
    ("data.max_test_per_class", 10, "max_test_per_class"),
])
def test_validate(field, value, expected):
    config = few_shot.fs_config.get_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(training.ConfigError, match=expected):
        few_shot.validate(config, list(few_shot.fs_config.ROWS))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, splits):
    tmp = tmp_path_factory.mktemp("few_shot")
    config = few_shot.fs_config.get_config()
    config.seeds = "1"
    config.data.queries = 5
    config.data.dev_per_class = 10
    config.model.features = (8, 8)
    config.model.pool = (True, True)
    config.model.groups = 4
    config.train.queries = 3
    config.train.num_steps = 20
    config.train.learning_rate = 3e-3
    config.train.episodes_per_epoch = 20
    config.train.log_every = 10
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
    config.eval.test_episodes = 20
    config.eval.dev_episodes = 4
    config.eval.episodes_per_batch = 8
    config.eval.batch_size = 64
    config.eval.significance_samples = 200
    rows = ["protonet_1shot", "can_1shot"]
    few_shot.validate(config, rows)
    data = few_shot.prepare(config, splits)
    workdir = str(tmp / "work")
    records = few_shot.run(config, rows, workdir, command="test", data=data)
    return config, rows, workdir, records, data


def test_table(finished):
    config, rows, workdir, records, _ = finished
    assert [(r["row"], r["seed"]) for r in records] == [("protonet_1shot", 0), ("can_1shot", 0)]
    for r in records:
        assert r["steps"] == 20 and r["test_episodes"] == 20 and r["test_queries"] == 500 and r["shot"] == 1
        assert 0 < r["test_ci95"] < 20 and r["params"] > 0
        scores = json.load(open(os.path.join(workdir, r["row"], "seed_0", "test_scores.json"), encoding="utf-8"))
        assert len(scores["test_accuracy"]) == 500
        assert abs(100 * np.mean(scores["test_accuracy"]) - r["test_accuracy"]) < 1e-6
    can = records[1]
    assert can["baseline_row"] == "protonet_1shot" and can["params"] > records[0]["params"]
    assert can["test_accuracy_ci"][0] <= can["test_accuracy_ci"][1] and 0 <= can["test_accuracy_p"] <= 1
    # Novel classes (other periods) after 20 episodes: chance is 20%; wrong query labels would score about that.
    assert min(r["test_accuracy"] for r in records) > 60
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| protonet_1shot | ProtoNet | 1 |" in text and "baseline" in text and "### Claims" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    one_shot = next(c for c in claims if c["name"] == "CAN beats the prototypical network (1-shot)")
    assert one_shot["holds"] in (True, False) and one_shot["p"] is not None
    five_shot = next(c for c in claims if c["name"] == "CAN beats the prototypical network (5-shot)")
    assert five_shot["holds"] is None  # its rows did not run
    assert os.path.exists(os.path.join(workdir, "loss_curves.png"))
    assert os.path.exists(os.path.join(workdir, "can_1shot", "seed_0", "attention_overlays.png"))
    assert not os.path.exists(os.path.join(workdir, "protonet_1shot", "seed_0", "attention_overlays.png"))
    dev = [r for r in map(json.loads, open(os.path.join(workdir, "can_1shot", "seed_0", "metrics.jsonl")))
           if "dev_accuracy" in r]
    assert [r["step"] for r in dev] == [10, 20]


def test_rerun_only_reports(finished):
    config, rows, workdir, records, data = finished
    stamp = os.path.getmtime(os.path.join(workdir, "can_1shot", "seed_0", "metrics.jsonl"))
    again = few_shot.run(config, rows, workdir, command="test", data=data)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "can_1shot", "seed_0", "metrics.jsonl")) == stamp


def test_bad_flag_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.few_shot", "--preset=smoke", f"--workdir={tmp_path}",
                           "--config.data.test_classes=(0,6,7,8,9)"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "meta-test" in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
