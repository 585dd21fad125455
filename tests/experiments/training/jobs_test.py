"""Tests of --jobs: worker processes that each take the next free run of a table, and the parent that reports."""

from __future__ import annotations

import os
import sys

import pytest

from experiments import cli
from experiments import luong
from experiments import training
from experiments.training import translation
from tests.experiments.training.translation_test import count_train_steps, tiny_config, tiny_dataset

ROWS = ["global_general", "no_attention", "global_dot"]


def _done(workdir, row):
    return os.path.exists(os.path.join(workdir, row, "seed_0", "done.json"))


def test_workers_take_free_runs_and_the_parent_only_reports(tmp_path):
    workdir, dataset = str(tmp_path / "w"), tiny_dataset()
    config = tiny_config(luong.EXPERIMENT, **{"train.num_steps": 4, "eval.significance": "none",
                                             "eval.num_heatmaps": 0})
    # Another worker holds the first row's run: this one takes every other free run, in table order.
    held = translation._claim_run(os.path.join(workdir, ROWS[0], "seed_0"))
    assert held is not None and translation._claim_run(os.path.join(workdir, ROWS[0], "seed_0")) is None
    with count_train_steps() as calls:
        assert translation.run_experiment(luong.EXPERIMENT, config, ROWS, workdir, dataset=dataset,
                                          worker=(1, 2)) == []
    assert len(calls) == 8 and [_done(workdir, r) for r in ROWS] == [False, True, True]
    assert not os.path.exists(os.path.join(workdir, "results.md"))  # a worker writes no report
    held.close()  # released (as when its process ends): the next worker takes it
    with count_train_steps() as calls:
        translation.run_experiment(luong.EXPERIMENT, config, ROWS, workdir, dataset=dataset, worker=(0, 2))
    assert len(calls) == 4 and all(_done(workdir, r) for r in ROWS)
    with count_train_steps() as calls:
        records = translation.run_experiment(luong.EXPERIMENT, config, ROWS, workdir, dataset=dataset)
    assert not calls and [r["row"] for r in records] == sorted(ROWS, key=luong.EXPERIMENT.row_names.index)
    assert os.path.exists(os.path.join(workdir, "results.md"))


def test_a_failing_worker_is_one_sentence_naming_it(tmp_path):
    config = tiny_config(luong.EXPERIMENT, **{"train.num_steps": 2})
    with pytest.raises(training.ConfigError, match=r"worker 1 of 2 stopped with exit code 3.*rerun"):
        translation.run_experiment(luong.EXPERIMENT, config, ROWS[:2], str(tmp_path / "w"), dataset=tiny_dataset(),
                                   jobs=2, worker_command=[sys.executable, "-c", "import sys; sys.exit(3)"])


def test_jobs_flags():
    assert cli.parse_jobs(luong.EXPERIMENT, 0, "") == (luong.EXPERIMENT.default_jobs, None)
    assert cli.parse_jobs(luong.EXPERIMENT, 3, "1/3") == (3, (1, 3))
    for jobs, worker in ((-1, ""), (2, "3/2"), (2, "x")):
        with pytest.raises(training.ConfigError, match="fix"):
            cli.parse_jobs(luong.EXPERIMENT, jobs, worker)
    command = cli.worker_command(luong.EXPERIMENT, ["luong.py", "--preset=smoke", "--jobs=2", "--rows=a"])
    assert command == [sys.executable, "-m", "experiments.luong", "--preset=smoke", "--rows=a", "--jobs=1"]


def test_multi_process_runs_refuse_worker_processes(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    with pytest.raises(training.ConfigError, match="jobs=1"):
        cli.parse_jobs(luong.EXPERIMENT, 2, "")
    assert cli.parse_jobs(luong.EXPERIMENT, 1, "") == (1, None)
