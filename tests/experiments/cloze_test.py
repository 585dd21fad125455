"""Tests of experiments.cloze on books made here (no Bible download).

Checks: the table (AS and AoA Readers on named entities) trains, reports accuracy with the paired CI and p against
the AS Reader, writes the claims, the accuracy-by-length figure and the coloured-text attention page; the encoded
candidates are the questions' words; a rerun only re-reports; bad flags exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import cli
from experiments import cloze as cloze_experiment
from tests.experiments.data.cloze_test import _books

REPO = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cloze")
    config = cloze_experiment.cloze_config.get_config()
    config.seeds = "1"
    config.data.data_dir = str(tmp / "cache")
    config.data.max_train = 64
    config.data.max_test = 40
    config.model.embed_dim = 16
    config.model.hidden_size = 8
    config.train.num_steps = 6
    config.train.batch_size = 16
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.train.log_every = 3
    config.eval.batch_size = 40
    config.eval.significance_samples = 200
    cd = cloze_experiment.prepare(config, _books(count=12, verses=40))
    workdir = str(tmp / "work")
    rows = ["as_ne", "aoa_ne"]
    records = cloze_experiment.run(config, rows, workdir, command="test", cloze_data=cd)
    return config, rows, workdir, records, cd


def test_encoding_points_at_the_words(finished):
    *_, cd = finished
    test = cd.splits["ne"]["test"]
    assert test.candidates.shape[1] == 10 and test.answers.shape == (len(test.questions),)
    for i, q in enumerate(test.questions[:5]):
        pieces = [cd.tokenizer.id_to_piece(x) for x in test.candidates[i]]
        assert pieces == ["▁" + c for c in q.candidates]
        assert test.candidates[i, test.answers[i]] in set(test.documents[i].tolist())  # the answer is in the context
        blank = cd.tokenizer.piece_to_id("▁XXXXX")  # the blank is a word of its own, never the unknown id
        assert blank != cd.tokenizer.unk_id and blank in set(test.queries[i].tolist())


def test_table(finished):
    _, _, workdir, records, cd = finished
    assert [r["row"] for r in records] == ["as_ne", "aoa_ne"]
    for r in records:
        assert r["steps"] == 6 and r["test_questions"] == len(cd.splits["ne"]["test"].questions)
        assert 0 <= r["test_accuracy"] <= 100 and r["baseline_row"] == "as_ne"
    assert 0 <= records[1]["test_accuracy_p"] <= 1
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| as_ne | AS Reader | ne |" in text and "### Claims" in text and "CBT-NE test 72.0" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    assert [c["name"] for c in claims] == ["AoA beats the AS Reader on named entities"]
    for name in ("accuracy_by_length.png", "loss_curves.png", "attention_aoa_ne.html"):
        assert os.path.exists(os.path.join(workdir, name)), name
    page = open(os.path.join(workdir, "attention_as_ne.html"), encoding="utf-8").read()
    assert "XXXXX" in page and "background:rgba" in page


def test_rerun_only_reports(finished):
    config, rows, workdir, records, cd = finished
    stamp = os.path.getmtime(os.path.join(workdir, "as_ne", "seed_0", "metrics.jsonl"))
    again = cloze_experiment.run(config, rows, workdir, command="test", cloze_data=cd)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "as_ne", "seed_0", "metrics.jsonl")) == stamp


@pytest.mark.parametrize("flag, expected", [
    ("--config.data.max_document=0", "max_document"),
])
def test_bad_flags_exit_with_one_line(flag, expected, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.cloze", "--preset=smoke", f"--workdir={tmp_path}", flag],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
