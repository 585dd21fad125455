"""Tests of experiments.sentence_pairs on tiny fixture verses made here (no Bible download).

Checks: average precision by hand; the table (BCNN and ABCNN-3) trains, reports MAP and pair accuracy with the
paired CIs and p against BCNN, writes claims and ABCNN's attention heatmaps, learns the fixture's name-matching
rule, and re-reports without training on a rerun; bad flags exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli
from experiments import sentence_pairs
from experiments.data import paraphrase

REPO = str(pathlib.Path(__file__).resolve().parents[2])
NAMES = "abel boaz cain dan eli gad hur ira jair kish laban micah nahor obed peleg reu".split()


def test_average_precisions():
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.2, 0.7, 0.7])
    q_index = np.array([0, 0, 0, 1, 1, 2, 2])
    correct = np.array([0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(sentence_pairs.average_precisions(scores, q_index, correct), [1 / 3, 1 / 2, 1 / 2])


def _verses():
    rng = random.Random(0)
    out = []
    for c in range(1, 61):
        for v in range(1, 7):
            a, b = rng.sample(NAMES, 2)
            out.append(paraphrase.AlignedVerse("Matt", c, v, f"And {a} begat {b} in those days.",
                                               f"{a.capitalize()} became the father of {b.capitalize()} then."))
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    config = sentence_pairs.pairs_config.get_config()
    config.seeds = "2"
    config.data.data_dir = str(tmp / "cache")
    config.data.vocab_size = 60
    config.data.max_len = 16
    config.model.features = 12
    config.model.embed_dim = 16
    config.train.num_steps = 150
    config.train.batch_size = 32
    config.train.learning_rate = 0.01
    config.train.eval_every = 75
    config.train.checkpoint_every = 75
    config.train.log_every = 25
    config.eval.significance_samples = 200
    pair_data = sentence_pairs.prepare(config, _verses())
    workdir = str(tmp / "work")
    rows = ["bcnn", "abcnn3"]
    records = sentence_pairs.run(config, rows, workdir, command="test", pair_data=pair_data)
    return config, rows, workdir, records, pair_data


def test_table(finished):
    config, rows, workdir, records, pair_data = finished
    assert [(r["row"], r["seed"]) for r in records] == [("bcnn", 0), ("bcnn", 1), ("abcnn3", 0), ("abcnn3", 1)]
    questions = int(pair_data.test.q_index.max()) + 1
    for r in records:
        assert 0.0 <= r["test_map"] <= 1.0 and r["test_questions"] == questions
        assert r["steps"] == 150 and r["baseline_row"] == "bcnn"
        if r["row"] == "abcnn3":
            assert r["test_map_ci"][0] <= r["test_map_ci"][1] and 0 <= r["test_map_p"] <= 1
            assert 0 <= r["test_accuracy_p"] <= 1
    # Candidates within 4 places: chance MAP is well below 0.6; matching the names is learnable.
    assert max(r["test_map"] for r in records) > 0.8
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| bcnn | bcnn | 1 |" in text and "baseline" in text and "### Claims" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    one_block = next(c for c in claims if c["name"] == "ABCNN-3 beats BCNN (one block)")
    assert one_block["holds"] in (True, False) and one_block["p"] is not None
    assert os.path.exists(os.path.join(workdir, "abcnn3", "seed_0", "attention_test0.png"))
    assert not any(name.startswith("attention_") for name in os.listdir(os.path.join(workdir, "bcnn", "seed_0")))


def test_rerun_only_reports(finished):
    config, rows, workdir, records, pair_data = finished
    stamp = os.path.getmtime(os.path.join(workdir, "bcnn", "seed_0", "metrics.jsonl"))
    again = sentence_pairs.run(config, rows, workdir, command="test", pair_data=pair_data)
    assert [r["test_map"] for r in again] == [r["test_map"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "bcnn", "seed_0", "metrics.jsonl")) == stamp


@pytest.mark.parametrize("flag, expected", [
    ("--config.model.width=0", "width"),
    ("--data_path=/tmp/x.tsv", "data_path"),
    ("--rows=bcnn,nope", "unknown row"),
    ("--config.data.max_len=0", "max_len"),
])
def test_bad_flags_exit_with_one_line(flag, expected, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.sentence_pairs", "--preset=smoke",
                           f"--workdir={tmp_path}", flag], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
