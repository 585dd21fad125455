"""End-to-end test of ``python -m experiments.transformer_xl`` on a tiny plain-text fixture (no corpus, no network).

Checks: the smoke path writes results.md / results.jsonl (one row per evaluation memory length) and the figures;
an identical rerun only re-reports; a longer budget resumes from the orbax checkpoint; bad flags exit 2 with one
line on stderr.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import pytest

from experiments import cli
from experiments import lm
from experiments import training
from experiments import transformer_xl

REPO = str(pathlib.Path(__file__).resolve().parents[2])
TINY = ["--preset=smoke", "--config.train.num_steps=20", "--config.train.log_every=5",
        "--config.train.eval_every=10", "--config.train.checkpoint_every=10", "--config.data.vocab_size=64",
        "--config.data.test_fraction=0.1", "--config.data.valid_fraction=0.1", "--config.eval.max_tokens=0",
        "--config.eval.mem_lens=(0,16,32)", "--config.model.d_model=16", "--config.model.head_dim=8",
        "--config.model.d_inner=32"]


def _fixture_text(path) -> str:
    """300 lines of a toy language where a line repeats a name given a few lines earlier (context helps)."""
    rng = random.Random(0)
    names = "abel boaz cain dan eli gad".split()
    verbs = "saw met blessed followed".split()
    lines, name = [], rng.choice(names)
    for i in range(300):
        if i % 4 == 0:
            name = rng.choice(names)
            lines.append(f"and {name} went into the land of {rng.choice(names)}.")
        else:
            lines.append(f"then {name} {rng.choice(verbs)} the {rng.choice(['king', 'people', 'priest'])}.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _run(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "experiments.transformer_xl", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("txl")
    text = _fixture_text(tmp / "tiny.txt")
    workdir = str(tmp / "work")
    args = [f"--data_path={text}", f"--workdir={workdir}", f"--config.data.data_dir={tmp / 'cache'}", *TINY]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, workdir, args


def test_smoke_path_writes_results(finished):
    _, workdir, _ = finished
    for name in ("results.md", "results.jsonl", "config.json", "command.txt", "metrics.jsonl", "loss_curves.png",
                 "ppl_vs_memory.png", "done.json"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "results.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["mem_len"] for r in rows] == [0, 16, 32]
    assert len({r["test_tokens"] for r in rows}) == 1 and rows[0]["test_tokens"] > 0
    for r in rows:
        assert 1.0 < r["test_ppl"] < 64 and r["test_bpc"] > 0 and r["steps"] == 20
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| eval memory M |" in text and "ppl_vs_memory.png" in text
    metrics = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
    assert [m["step"] for m in metrics if "loss" in m] == [5, 10, 15, 20]
    assert all({"tokens_per_s", "eta_s"} <= set(m) for m in metrics if "loss" in m)
    assert any("dev_ppl" in m for m in metrics)


def test_rerun_skips_and_longer_budget_resumes(finished):
    tmp, workdir, args = finished
    before = open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8").read()
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already finished with this config" in proc.stderr
    assert open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8").read() == before
    # In process (no second jax start-up): 30 steps resume from the step-20 checkpoint.
    config = cli.build_config(transformer_xl.EXPERIMENT, "smoke", {})
    overrides = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
    for path, value in overrides.items():
        section, field = path.split(".")
        value = tuple(int(x) for x in value.strip("()").split(",")) if value.startswith("(") else value
        config[section][field] = type(config[section][field])(value)
    config.data.data_path = args[0].split("=", 1)[1]
    config.train.num_steps = 30
    records = transformer_xl.run(config, workdir, preset="smoke")
    assert records[0]["steps"] == 30
    metrics = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
    assert [m["step"] for m in metrics if "loss" in m] == [5, 10, 15, 20, 25, 30]  # steps 1-20 not redone


@pytest.mark.parametrize("flag, words", [
    ("--preset=huge", "unknown preset"),
    ("--config.model.no_such=1", "names no config field"),
])
def test_bad_flag_exits_2_with_one_line(flag, words, tmp_path):
    proc = _run([flag, f"--workdir={tmp_path / 'w'}"], timeout=60)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "fix:" in lines[0] and words in lines[0]


@pytest.mark.parametrize("path, value, words", [
    ("train.segment_len", 0, "segment_len"),
    ("eval.mem_lens", (64, 0), "mem_lens"),
    ("data.data_path", "/nonexistent/file.txt", "does not exist"),
    ("model.dropout_rate", 1.0, "dropout_rate"),
])
def test_bad_values_are_config_errors(path, value, words):
    config = cli.build_config(transformer_xl.EXPERIMENT, "smoke", {path: value})
    with pytest.raises(training.ConfigError, match=words) as err:
        transformer_xl.validate(config)
    assert "fix:" in str(err.value)


def test_split_lines_contiguous():
    train, valid, test = lm.split_lines([str(i) for i in range(100)], 0.1, 0.2)
    assert (train[-1], valid[0], valid[-1], test[0], len(test)) == ("69", "70", "79", "80", 20)
