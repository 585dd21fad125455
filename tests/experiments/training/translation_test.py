"""End-to-end tests of the translation experiments (experiments/training/, cli.py, evaluation.py, ...).

A tiny word-level dataset is built in the test (no corpus, no network): one row trains ~10-20 steps.
Checks: the output files, resuming from the orbax checkpoint without redoing finished steps (and
with the same data order), skipping a finished row, re-reporting, and one-sentence CLI errors with
exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
import pathlib
import random
import shutil
import subprocess
import sys

from absl import logging as absl_logging
import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import cli
from experiments import data
from experiments import evaluation
from experiments import training
from experiments.bahdanau import EXPERIMENT as BAHDANAU
from experiments.luong import EXPERIMENT as LUONG
from experiments.training import report
from experiments.training import spec
from experiments.training import translation

REPO = str(pathlib.Path(__file__).resolve().parents[3])
ROW = "global_general"


class WordTokenizer:
    """Word-level stand-in for `experiments.data.Tokenizer` (same ids for pad/unk/bos/eos)."""

    def __init__(self, words):
        self.words = sorted(set(words))
        self.vocab_size = 4 + len(self.words)

    def encode(self, text):
        return [4 + self.words.index(w) if w in self.words else data.UNK_ID for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i - 4] for i in ids if i >= 4)

    def id_to_piece(self, i):
        return self.words[i - 4]


def tiny_dataset() -> data.Dataset:
    """Copy-and-reverse task over 12 words: 96 train, 12 dev, 12 test pairs of 2-7 words."""
    vocab = "a b c d e f g h i j k l".split()
    rng = random.Random(0)
    pairs = []
    for _ in range(120):
        words = [rng.choice(vocab) for _ in range(rng.randint(2, 7))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    tok = WordTokenizer(vocab)
    ex = [data.Example(tuple(tok.encode(s)), tuple(tok.encode(t)), s, t) for s, t in pairs]
    return data.Dataset(tokenizer=tok, train=ex[:96], dev=ex[96:108], test=ex[108:])


def tiny_config(exp=LUONG, **overrides):
    flat = {
        "model.embed_dim": 16, "model.hidden_size": 16, "model.attention_features": 16, "model.window": 2,
        "data.buckets": (16,), "train.batch_size": 8, "train.num_steps": 10, "train.max_minutes": 0.0,
        "train.log_every": 5, "train.eval_every": 5, "train.checkpoint_every": 5, "eval.batch_size": 16,
        "eval.beam_size": 2, "eval.max_decode_len": 15, "eval.num_heatmaps": 1, "eval.heatmap_max_tokens": 15,
        "eval.length_bins": (3, 6), "eval.dev_bleu": True,
    }
    flat.update(overrides)
    return cli.build_config(exp, "smoke", flat)


@contextlib.contextmanager
def count_train_steps():
    """Counts calls of the jitted train step made inside the block (train_row looks it up in its own module)."""
    calls = []
    original = translation.make_train_step

    def counting(*args, **kwargs):
        step = original(*args, **kwargs)

        def wrapped(*args):
            calls.append(1)
            return step(*args)

        return wrapped

    translation.make_train_step = counting
    try:
        yield calls
    finally:
        translation.make_train_step = original


def final_params(workdir, row=ROW, seed=0):
    """The parameters of a run's latest checkpoint."""
    path = os.path.abspath(os.path.join(workdir, row, f"seed_{seed}", "checkpoints"))
    step = training.checkpoint_manager(path).latest_step()
    return ocp.StandardCheckpointer().restore(os.path.join(path, str(step), "state"))["params"]


def train_losses(workdir, row=ROW, seed=0):
    with open(os.path.join(workdir, row, f"seed_{seed}", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, dataset):
    workdir = str(tmp_path_factory.mktemp("luong"))
    with count_train_steps() as calls:
        records = training.run_experiment(LUONG, tiny_config(), [ROW], workdir, preset="smoke", command="test",
                                          dataset=dataset)
    return workdir, records, len(calls)


def test_outputs_are_written(first_run):
    workdir, records, steps = first_run
    assert steps == 10
    for name in ("results.md", "results.jsonl", "config.json", "command.txt", "loss_curves.png", "data.json",
                 "test_references.txt", f"{ROW}/seed_0/metrics.jsonl", f"{ROW}/seed_0/done.json",
                 f"{ROW}/seed_0/test_translations.txt"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    heatmaps = os.listdir(os.path.join(workdir, "heatmaps"))
    assert len(heatmaps) == 1 and heatmaps[0].endswith(".png")
    (record,) = records
    assert record["row"] == ROW and record["steps"] == 10
    assert (record["attention"], record["score"], record["mode"]) == ("luong", "general", "global")
    assert np.isfinite(record["dev_ppl"]) and np.isfinite(record["test_ppl"]) and record["test_ppl"] > 1
    assert 0 <= record["test_bleu"] <= 100 and record["dev_bleu"] is not None
    with open(os.path.join(workdir, "results.jsonl")) as f:
        assert [json.loads(line)["row"] for line in f] == [ROW]
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    baseline = LUONG.default_baseline
    assert ("| row | attention | score | mode | dev ppl | test ppl | dev BLEU | test BLEU | test BLEU 95% CI | "
            + (f"p vs {baseline} | " if baseline else "") + "test chrF | "
            + ("paper | " if LUONG.paper_numbers else "") + "seeds | steps | train minutes |") in table
    assert f"| {ROW} | luong | general | global |" in table
    assert record["seed"] == 0 and 0 <= record["test_chrf"] <= 100
    low, high = record["test_bleu_ci"]
    assert low <= high and "sacreBLEU signatures" in table and "chrF: `nrefs:1|" in table
    # Titles and captions name the data actually used, the experiment's title only the paper.
    assert table.startswith(f"# {LUONG.title}; data: {report.data_description(tiny_config().data)}\n")
    with open(os.path.join(workdir, "test_references.txt")) as f:
        assert f.read().splitlines() == [ex.tgt_text for ex in tiny_dataset().test]
    assert sorted(train_losses(workdir)) == [5, 10]
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["rows"] == [ROW] and saved["config"]["train"]["num_steps"] == 10


def test_finished_row_is_skipped_and_rereported(first_run, dataset, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(first_run[0], workdir)
    os.remove(os.path.join(workdir, "results.md"))
    with count_train_steps() as calls:
        records = training.run_experiment(LUONG, tiny_config(), [ROW], workdir, command="test", dataset=dataset)
    assert not calls
    assert records[0]["test_bleu"] == first_run[1][0]["test_bleu"]
    assert os.path.exists(os.path.join(workdir, "results.md"))
    # A finished row needs no data at all: dataset=None must not try to load the corpus.
    assert training.run_experiment(LUONG, tiny_config(), [ROW], workdir, command="test")[0]["row"] == ROW


def test_killed_run_resumes_from_checkpoint(first_run, dataset, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(first_run[0], workdir)
    # Simulate a kill between the checkpoints of steps 5 and 10: the row is unfinished, step 10 lost.
    os.remove(os.path.join(workdir, ROW, "seed_0", "done.json"))
    shutil.rmtree(os.path.join(workdir, ROW, "seed_0", "checkpoints", "10"))
    with count_train_steps() as calls:
        records = training.run_experiment(LUONG, tiny_config(), [ROW], workdir, command="test", dataset=dataset)
    assert len(calls) == 5  # Steps 6..10 only.
    assert records[0]["steps"] == 10
    resumed, original = train_losses(workdir), train_losses(first_run[0])
    assert sorted(resumed) == [5, 10]
    # Same params, optimiser state, data position and seed => bit-identical parameters, scores and outputs.
    assert resumed[10] == original[10]
    chex.assert_trees_all_equal(final_params(workdir), final_params(first_run[0]))
    for key in ("dev_ppl", "test_ppl", "dev_bleu", "test_bleu", "test_chrf", "test_bleu_ci"):
        assert records[0][key] == first_run[1][0][key], key
    translations = [pathlib.Path(w, ROW, "seed_0", "test_translations.txt").read_text() for w in (workdir, first_run[0])]
    assert translations[0] == translations[1]

    # A larger step budget continues from the final checkpoint instead of starting over.
    with count_train_steps() as calls:
        records = training.run_experiment(LUONG, tiny_config(**{"train.num_steps": 14}), [ROW], workdir,
                                          command="test", dataset=dataset)
    assert len(calls) == 4 and records[0]["steps"] == 14


@contextlib.contextmanager
def absl_log_lines():
    """The absl INFO lines logged inside the block (other tests may leave absl's logger off the root logger)."""
    lines = []
    handler = std_logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger, verbosity = absl_logging.get_absl_logger(), absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        absl_logging.set_verbosity(verbosity)


def test_another_seed_trains_only_that_run(first_run, dataset, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(first_run[0], workdir)
    with count_train_steps() as calls, absl_log_lines() as log:
        records = training.run_experiment(LUONG, tiny_config(**{"seeds": "0,1"}), [ROW], workdir, command="test",
                                          dataset=dataset)
    assert len(calls) == 10  # seed 0 is finished: only seed 1 trains
    assert [(r["row"], r["seed"]) for r in records] == [(ROW, 0), (ROW, 1)]
    assert records[0]["test_bleu"] == first_run[1][0]["test_bleu"]
    assert any(line.startswith("table: 1/1 runs done, elapsed ") for line in log), log
    assert any("table eta" in line for line in log)  # the per-step line of train_loop
    assert all("table_eta_s" in r for r in
               map(json.loads, pathlib.Path(workdir, ROW, "seed_1", "metrics.jsonl").read_text().splitlines())
               if "loss" in r)
    # Two seeds, two different initialisations and dropout/data orders.
    leaves = zip(jax.tree.leaves(final_params(workdir, seed=0)), jax.tree.leaves(final_params(workdir, seed=1)))
    assert any(not np.array_equal(a, b) for a, b in leaves)
    with open(os.path.join(workdir, "results.jsonl")) as f:
        assert [json.loads(line)["seed"] for line in f] == [0, 1]
    table = pathlib.Path(workdir, "results.md").read_text()
    line = next(line for line in table.splitlines() if line.startswith(f"| {ROW} |"))
    assert "| 2 | 10 |" in line and " ± " in line and "mean ± sample standard deviation" in table
    # A count of 2 is seeds 0 and 1: both finished, nothing trains.
    with count_train_steps() as calls:
        training.run_experiment(LUONG, tiny_config(**{"seeds": "2"}), [ROW], workdir, command="test", dataset=dataset)
    assert not calls


@pytest.mark.parametrize("text,default,expected", [("", 7, (7,)), ("3", 0, (0, 1, 2)), ("0,1,2", 0, (0, 1, 2)),
                                                   ("5,", 0, (5,)), (" 4 , 2 ", 0, (4, 2))])
def test_parse_seeds(text, default, expected):
    assert spec.parse_seeds(text, default) == expected


@pytest.mark.parametrize("text", ["0", "-1", "a,b", "1,1", "1,,2", "2.5", ","])
def test_bad_seeds_are_one_sentence_config_errors(text):
    with pytest.raises(training.ConfigError, match="fix: pass a count") as err:
        spec.parse_seeds(text, 0)
    assert str(err.value).count(";") == 1 and "\n" not in str(err.value)


def test_bad_significance_fields_are_config_errors():
    for field, value, match in [("eval.significance", "bogus", "significance"),
                                ("eval.significance_samples", 10, "significance_samples"),
                                ("eval.baseline_row", "bogus", "baseline_row")]:
        with pytest.raises(training.ConfigError, match=match):
            spec.check_report_config(LUONG, tiny_config(**{field: value}))


def test_init_from_resolves_the_same_seed(tmp_path):
    assert spec.resolve_init_from("@dense", "/w", 3) == os.path.join("/w", "dense", "seed_3")
    row = tmp_path / "other" / "dense"
    (row / "seed_1").mkdir(parents=True)
    assert spec.resolve_init_from(str(row), "/w", 1) == str(row / "seed_1")  # a row of a seeded workdir
    assert spec.resolve_init_from(str(row), "/w", 2) == str(row)  # no such seed: the path as given


def test_changed_model_refuses_to_resume(first_run, dataset, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(first_run[0], workdir)
    with pytest.raises(training.ConfigError, match="hidden_size"):
        training.run_experiment(LUONG, tiny_config(**{"model.hidden_size": 8}), [ROW], workdir, dataset=dataset)


def test_bahdanau_bleu_by_length(tmp_path, dataset):
    config = tiny_config(BAHDANAU, **{"train.num_steps": 4, "train.log_every": 2, "train.eval_every": 0})
    records = training.run_experiment(BAHDANAU, config, ["RNNsearch-30"], str(tmp_path), dataset=dataset)
    assert [b["bucket"] for b in records[0]["bleu_by_length"]] == ["1-3", "4-6", "7+"]
    assert sum(b["n"] for b in records[0]["bleu_by_length"]) == len(dataset.test)
    assert os.path.getsize(tmp_path / "bleu_by_length.png") > 0
    assert (records[0]["attention"], records[0]["score"]) == ("bahdanau", "additive")


def test_preset_then_overrides():
    config = cli.build_config(LUONG, "smoke", {"train.num_steps": 7, "model.score": "dot"})
    assert config.train.num_steps == 7 and config.model.score == "dot"
    assert config.model.hidden_size == LUONG.presets["smoke"]["model.hidden_size"]
    assert cli.parse_rows(LUONG, "") == list(LUONG.default_rows)
    with pytest.raises(training.ConfigError, match="unknown row"):
        cli.parse_rows(LUONG, "global_dot,bogus")


def test_bleu_helpers():
    assert evaluation.corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    assert data.strip_special_ids([2, 5, 6, 3, 7, 0]) == [5, 6]
    buckets = evaluation.bleu_by_length(["x y", "a b c d"], ["x y", "a b c e"], [2, 9], (5,))
    assert [(b["bucket"], b["n"]) for b in buckets] == [("1-5", 1), ("6+", 1)]


@pytest.mark.parametrize("args", [
        ["--rows=bogus"],
        ["--config.model.score=bogus"],
        ["--preset=bogus"],
        ["--config.train.num_steps=0", "--config.train.max_minutes=0"],  # Overrides come after the preset.
])
def test_cli_errors_are_one_sentence_and_exit_2(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.luong", "--preset=smoke", f"--workdir={tmp_path}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fix:" in errors[0], proc.stderr
    assert not os.listdir(tmp_path)  # Failed before writing anything.
