"""Tests of experiments/training/table.py's report helpers: `tabulate` (the shared first half of every
non-translation report) and `loss_curves_figure`, on per-example scores written here (no training).

The fixture: rows "base", "good" and "bad" over two seeds, each with per-example 0/1 "test_accuracy" and
real-valued "test_error" scores. "good" is right far more often than "base" and has a lower error; "bad" is
worse than "base" on both. So the paired p of good against base is small in every seed, and the verdict of a
claim on one metric must carry the p of that metric, not of another.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import pytest

from experiments import results
from experiments import stats
from experiments.training import spec
from experiments.training import table as runs_table
from experiments.vision_attention import EXPERIMENT as VISION

SEEDS = (0, 1)
N = 200
ACCURACY = {"base": 0.6, "good": 0.9, "bad": 0.4}
ERROR = {"base": 1.0, "good": 0.5, "bad": 1.0}  # bad's error equals base's: no claim on it can be significant
CLAIM_ACCURACY = stats.Claim("good beats base", "good", ("base",), metric="test_accuracy", paper="p1",
                             source="fixture paper A")
CLAIM_ERROR = stats.Claim("bad has a lower error than base", "bad", ("base",), metric="test_error",
                          higher_is_better=False, paper="p2", source="fixture paper B")
EXP = dataclasses.replace(VISION, baseline_row="base", claims=(CLAIM_ACCURACY, CLAIM_ERROR),
                          paper={"good": {"text": "err 1.0", "source": "fixture paper A, Table 1"},
                                 "bad": {"text": "err 2.0", "source": "fixture paper A, Table 1"}})


def _config(significance="bs"):
    return ml_collections.ConfigDict({"eval": {"significance": significance, "significance_samples": 300,
                                               "baseline_row": ""}})


def _fixture(workdir, rows=("base", "good", "bad")):
    rng = np.random.default_rng(0)
    records = {}
    for seed in SEEDS:
        for row in rows:
            correct = (rng.random(N) < ACCURACY[row]).astype(float)
            error = ERROR[row] + 0.01 * rng.standard_normal(N)
            run_dir = spec.run_dir(workdir, row, seed)
            os.makedirs(run_dir)
            runs_table.write_scores(run_dir, {"test_accuracy": correct, "test_error": error})
            records[(row, seed)] = {"row": row, "seed": seed, "test_accuracy": 100 * correct.mean(),
                                    "test_error": float(error.mean())}
    return records


def test_tabulate_tests_each_metric_and_judges_claims_by_their_own_metric(tmp_path):
    records = _fixture(str(tmp_path))
    tab = runs_table.tabulate(EXP, _config(), str(tmp_path), ["base", "good", "bad"], SEEDS, records,
                              metrics={"test_accuracy": 100.0, "test_error": 1.0})
    assert tab.baseline == "base"
    assert [(r["row"], r["seed"]) for r in tab.table] == [(row, s) for row in ("base", "good", "bad") for s in SEEDS]
    good = [r for r in tab.table if r["row"] == "good"]
    assert all(r["test_accuracy_p"] < 0.01 and r["test_accuracy_ci"][0] > 0 for r in good)
    assert all(r["test_error_ci"][1] < 0 for r in good)  # scale 1: the raw error difference, good - base
    lines = {line["row"]: line for line in tab.summary}
    assert lines["base"]["test_accuracy_p"] == lines["base"]["test_error_p"] == "baseline"
    # the summary combines the tested metrics conservatively: union of the CIs, largest p
    assert lines["good"]["test_error_ci"] == [min(r["test_error_ci"][0] for r in good),
                                              max(r["test_error_ci"][1] for r in good)]
    assert lines["good"]["test_accuracy_p"] == max(r["test_accuracy_p"] for r in good)
    assert lines["good"]["paper"] == "err 1.0 [1]" and tab.footnotes == {"fixture paper A, Table 1": 1}
    verdicts = {v["name"]: v for v in tab.verdicts}
    assert verdicts["good beats base"]["holds"] and verdicts["good beats base"]["p"] < 0.01
    # bad's error is base's plus noise, so its p comes from the error test (large), never the accuracy test
    # (where bad is far worse than base and the p is tiny, but counts as 1 when the ordering goes the other way).
    error_ps = [r["test_error_p"] for r in tab.table if r["row"] == "bad"]
    assert verdicts["bad has a lower error than base"]["p_seeds"] == 2
    assert verdicts["bad has a lower error than base"]["p"] in (1.0, max(error_ps))


def test_tabulate_with_grouped_baselines_and_without_significance(tmp_path):
    records = _fixture(str(tmp_path))
    tab = runs_table.tabulate(EXP, _config(), str(tmp_path), ["base", "good", "bad"], SEEDS, records,
                              baselines={"base": "base", "good": "base", "bad": "bad"})
    assert tab.baseline == ""  # several groups: no single baseline
    lines = {line["row"]: line for line in tab.summary}
    assert lines["base"]["test_accuracy_p"] == lines["bad"]["test_accuracy_p"] == "baseline"
    assert lines["good"]["test_accuracy_p"] < 0.01
    plain = runs_table.tabulate(EXP, _config("none"), str(tmp_path), ["base", "good"], SEEDS, records)
    assert all("test_accuracy_p" not in r for r in plain.table)
    assert {v["name"]: v["p"] for v in plain.verdicts}["good beats base"] is None


def test_tabulate_without_the_baseline_or_any_record(tmp_path):
    records = _fixture(str(tmp_path), rows=("good", "bad"))
    tab = runs_table.tabulate(EXP, _config(), str(tmp_path), ["good", "bad"], SEEDS, records)
    assert tab.baseline == "" and all("test_accuracy_p" not in r for r in tab.table)
    assert runs_table.tabulate(EXP, _config(), str(tmp_path), ["good"], SEEDS, {}) is None


def test_results_write_lists_the_footnotes_last_under_their_heading(tmp_path):
    text = results.write(str(tmp_path), [{"row": "a", "paper": "x [1]"}], title="T", command="c",
                         columns=(("row", "row"), ("paper", "paper")), footnotes={"Someone 2020, Table 2": 1},
                         footnote_heading="Paper numbers (other data)")
    assert text.endswith("\nPaper numbers (other data):\n\n- [1] Someone 2020, Table 2\n")
    assert "Paper numbers" not in results.write(str(tmp_path), [{"row": "a"}], title="T", command="c")


@pytest.mark.parametrize("panels", [None, (("loss", "train L1 loss"), ("dev_accuracy", "dev accuracy %"))])
def test_loss_curves_figure(tmp_path, panels):
    workdir = str(tmp_path)
    assert runs_table.loss_curves_figure(workdir, ["a"], 0, title="t") is None  # no metrics yet
    run_dir = spec.run_dir(workdir, "a", 0)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w", encoding="utf-8") as f:
        f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0, "dev_accuracy": 50.0}\n')
    path = runs_table.loss_curves_figure(workdir, ["a"], 0, title="t", loss_label="nats / image", panels=panels)
    assert path == "loss_curves.png" and os.path.getsize(os.path.join(workdir, path)) > 1000
