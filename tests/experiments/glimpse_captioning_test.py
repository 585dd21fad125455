"""Tests of experiments.glimpse_captioning on fixture items made here (no Fashion-MNIST download).

Checks: the canvases' captions read the items left to right and dev / test draw from disjoint halves of the test
split; caption scoring by hand; the table (soft and hard) trains, reports sequence accuracy with the paired CI and p
against soft, the entropy per step, claims and the figures, learns the fixture captions well above chance, keeps the
hard row's REINFORCE baseline in the checkpointed optimiser state, and re-reports without training on a rerun; a bad
flag exits 2 with one line and validate names bad values.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import cli
from experiments import glimpse_captioning as glimpse
from experiments import training
from experiments.data import fashion_mnist

REPO = str(pathlib.Path(__file__).resolve().parents[2])
CLASSES = (0, 1, 2)


def _item(label: int, value: int = 255) -> np.ndarray:
    """A 28 x 28 item whose pattern names its class: horizontal bars, vertical bars or a filled square."""
    img = np.zeros((28, 28), np.uint8)
    if label == 0:
        img[4:24:4, 4:24] = value
    elif label == 1:
        img[4:24, 4:24:4] = value
    else:
        img[8:20, 8:20] = value
    return img


def _split(n: int, values: tuple[int, int] = (255, 255)) -> fashion_mnist.Split:
    """n items cycling through the classes; the first half drawn with brightness values[0], the rest values[1]."""
    labels = np.asarray(CLASSES * (n // len(CLASSES)), np.int32)
    images = [_item(int(y), values[0] if i < len(labels) // 2 else values[1]) for i, y in enumerate(labels)]
    return fashion_mnist.Split(np.stack(images), labels)


def _fixture_config():
    config = glimpse.glimpse_config.get_config()
    config.seeds = "1"
    config.data.num_items = 2
    config.data.height = 28
    config.data.width = 64
    config.data.train_size = 600
    config.data.dev_size = 60
    config.data.test_size = 90
    config.model.features = (8,)  # one block: each XLA convolution costs seconds of compile time
    config.model.pool = (True,)
    config.model.embed_dim = 16
    config.model.hidden = 32
    config.model.attention_hidden = 16
    config.train.batch_size = 32
    config.train.learning_rate = 0.01
    config.train.num_steps = 40
    config.train.log_every = 10
    config.train.eval_every = 20
    config.train.checkpoint_every = 40
    config.eval.significance_samples = 200
    config.eval.num_overlays = 2
    return config


def test_canvases_read_left_to_right_and_keep_dev_and_test_apart():
    config = _fixture_config()
    config.data.train_size = 50
    splits = {"train": _split(30), "test": _split(30, values=(100, 250))}
    cd = glimpse.make_canvases(splits, config.data)
    assert cd.train.images.shape == (50, 28, 64) and cd.test.labels.shape == (90, 2)
    for c in (cd.train, cd.dev, cd.test):
        assert np.all(np.diff(c.lefts, axis=1) > 0)  # the caption's order is the items' left edges
    # The caption is the class pattern found at each left edge.
    for i in range(5):
        for k in range(2):
            top, left = cd.test.tops[i, k], cd.test.lefts[i, k]
            window = cd.test.images[i, top:top + 28, left:left + 28]
            assert np.array_equal(window > 0, _item(int(cd.test.labels[i, k])) > 0)
    # Dev canvases use only the first half of the test split (brightness 100), test canvases only the second.
    assert set(np.unique(cd.dev.images)) == {0, 100} and set(np.unique(cd.test.images)) == {0, 250}
    assert cd.info["item_pools"] == {"train": 30, "dev": 15, "test": 15}
    again = glimpse.make_canvases(splits, config.data)  # fixed seeds: every row sees the same canvases
    assert np.array_equal(again.train.images, cd.train.images) and np.array_equal(again.test.labels, cd.test.labels)


def test_caption_scores():
    seq, tok = glimpse.caption_scores(np.array([[1, 2, 3], [1, 0, 3], [0, 0, 0]]), np.array([[1, 2, 3]] * 3))
    np.testing.assert_allclose(seq, [1, 0, 0])
    np.testing.assert_allclose(tok, [1, 2 / 3, 0])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glimpse")
    config = _fixture_config()
    cd = glimpse.make_canvases({"train": _split(300), "test": _split(300)}, config.data)
    workdir = str(tmp / "work")
    rows = ["soft", "hard"]
    records = glimpse.run(config, rows, workdir, command="test", canvas_data_=cd)
    return config, rows, workdir, records, cd


def test_table(finished):
    config, rows, workdir, records, cd = finished
    assert [(r["row"], r["seed"]) for r in records] == [("soft", 0), ("hard", 0)]
    for r in records:
        assert r["steps"] == 40 and r["baseline_row"] == "soft" and r["test_canvases"] == 90
        assert 0.0 <= r["test_seq_accuracy"] <= r["test_token_accuracy"] <= 100.0
        assert all(0.0 <= r[f"test_entropy_step{k}"] <= np.log(r["locations"]) + 1e-4 for k in (1, 2))
    soft, hard = records
    assert hard["test_seq_accuracy_ci"][0] <= hard["test_seq_accuracy_ci"][1] and 0 <= hard["test_seq_accuracy_p"] <= 1
    assert {"test_argmax_seq_accuracy", "test_sampled_seq_accuracy"} <= set(hard)
    assert "test_argmax_seq_accuracy" not in soft
    # The hard row's moving-average baseline of log p(y | s, a) is part of the checkpointed optimiser state.
    assert -2 * np.log(10) < hard["final_baseline"] < 0 and soft["final_baseline"] == 0
    saved = training.checkpoint_manager(os.path.join(workdir, "hard", "seed_0", "checkpoints"))
    state = saved.restore(saved.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    assert float(state["opt_state"]["baseline"]) == pytest.approx(hard["final_baseline"])
    # Three classes, two items: chance is 1/9 of the captions; the fixture patterns are learnable.
    assert max(r["test_seq_accuracy"] for r in records) > 50.0
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| soft | soft |" in text and "baseline" in text and "### Claims" in text and "H step 2" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    assert claims[0]["better"] == "hard" and claims[0]["holds"] in (True, False) and claims[0]["p"] is not None
    for name in ("loss_curves.png", "entropy_by_step.png", "soft/seed_0/attention.png", "hard/seed_0/attention.png"):
        assert os.path.exists(os.path.join(workdir, name)), name


def test_rerun_only_reports(finished):
    config, rows, workdir, records, cd = finished
    stamp = os.path.getmtime(os.path.join(workdir, "soft", "seed_0", "metrics.jsonl"))
    again = glimpse.run(config, rows, workdir, command="test", canvas_data_=cd)
    assert [r["test_seq_accuracy"] for r in again] == [r["test_seq_accuracy"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "soft", "seed_0", "metrics.jsonl")) == stamp


def test_bad_flag_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.glimpse_captioning", "--preset=smoke",
                           f"--workdir={tmp_path}", "--config.data.num_items=7"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "num_items=7" in lines[0] and "fix" in lines[0], proc.stderr[-2000:]


def test_validate_names_the_bad_value():
    config = _fixture_config()
    config.model.deterministic_context = "nope"
    with pytest.raises(training.ConfigError, match="deterministic_context='nope'.*fix"):
        glimpse.validate(config, ["soft"])
    config = _fixture_config()
    config.train.baseline_decay = 1.5
    with pytest.raises(training.ConfigError, match="baseline_decay=1.5.*fix"):
        glimpse.validate(config, ["hard"])
    glimpse.validate(_fixture_config(), list(glimpse.glimpse_config.ROWS))
