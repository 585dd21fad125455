"""End-to-end tests of the translation experiments (experiments/training/, cli.py, evaluation.py, ...).

A tiny word-level dataset is built in the test (no corpus, no network): one row trains ~10-20 steps.
Checks: the output files, resuming from the orbax checkpoint without redoing finished steps (and
with the same data order), skipping a finished row, re-reporting, and one-sentence CLI errors with
exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli
from experiments import data
from experiments import evaluation
from experiments import training
from experiments.bahdanau import EXPERIMENT as BAHDANAU
from experiments.luong import EXPERIMENT as LUONG
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
        "eval.length_bins": (3, 6),
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


def train_losses(workdir, row=ROW):
    with open(os.path.join(workdir, row, "metrics.jsonl")) as f:
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
    for name in ("results.md", "results.jsonl", "config.json", "command.txt", "loss_curves.png",
                 f"{ROW}/metrics.jsonl", f"{ROW}/done.json", f"{ROW}/test_translations.txt"):
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
    assert "| row | attention | score | mode | dev ppl | test ppl | dev BLEU | test BLEU | steps | train minutes |" in table
    assert f"| {ROW} | luong | general | global |" in table
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
    os.remove(os.path.join(workdir, ROW, "done.json"))
    shutil.rmtree(os.path.join(workdir, ROW, "checkpoints", "10"))
    with count_train_steps() as calls:
        records = training.run_experiment(LUONG, tiny_config(), [ROW], workdir, command="test", dataset=dataset)
    assert len(calls) == 5  # Steps 6..10 only.
    assert records[0]["steps"] == 10
    resumed, original = train_losses(workdir), train_losses(first_run[0])
    assert sorted(resumed) == [5, 10]
    # Same params, optimiser state and data position => the same loss over steps 6..10.
    np.testing.assert_allclose(resumed[10], original[10], rtol=1e-4)

    # A larger step budget continues from the final checkpoint instead of starting over.
    with count_train_steps() as calls:
        records = training.run_experiment(LUONG, tiny_config(**{"train.num_steps": 14}), [ROW], workdir,
                                          command="test", dataset=dataset)
    assert len(calls) == 4 and records[0]["steps"] == 14


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
