"""Tests of experiments.bert on documents and labelled texts made here (no download).

Checks: both phases run through `bert.run` (pretraining nsp / no_nsp, then fine-tuning rows from scratch and from
each encoder), the encoder is saved with orbax and loads back equal, the fine-tuned rows start from it, the
report tests each row against its scratch row, a rerun only re-reports; bad flags exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import bert
from experiments import cli
from experiments.data import pretraining

REPO = str(pathlib.Path(__file__).resolve().parents[2])
WORDS = "sun moon star river hill stone tree bird fish wind rain snow fire cloud sea road".split()


def _documents() -> list[pretraining.Document]:
    rng = random.Random(0)
    docs = []
    for d in range(80):
        topic = rng.sample(WORDS, 4)
        docs.append(pretraining.Document(f"{'ab'[d % 2]}/{d}", tuple(
            f"The {rng.choice(topic)} and the {rng.choice(topic)} met {rng.choice(topic)}." for _ in range(6))))
    return docs


def _items():
    rng = random.Random(1)

    def texts(n):
        out = []
        for _ in range(n):
            label = rng.choice(["wet", "dry"])
            pool = ["river", "rain", "sea", "snow"] if label == "wet" else ["sun", "fire", "stone", "hill"]
            out.append((label, " ".join(rng.choice(pool + ["the", "and"]) for _ in range(8))))
        return out

    return {"r8": (texts(120), texts(60))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    config = bert.bert_config.get_config()
    config.seeds = "1"
    config.pretrain.data_dir = str(tmp / "cache")
    config.pretrain.vocab_size = 60
    config.pretrain.max_tokens = 24
    config.pretrain.batch_size = 16
    config.pretrain.num_steps = 20
    config.pretrain.eval_every = 15
    config.pretrain.checkpoint_every = 15
    config.pretrain.log_every = 10
    config.pretrain.eval_instances = 32
    config.pretrain.held_out_fraction = 0.2
    config.model.update(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=32)
    config.data.max_len = 16
    config.train.num_steps = 20
    config.train.batch_size = 16
    config.train.learning_rate = 3e-3
    config.train.log_every = 10
    config.eval.significance_samples = 200
    docs = _documents()
    pretrain_data = bert.prepare_pretraining(bert.pretrain_config(config), docs)
    finetune_data = bert.prepare_finetuning(config, ["r8"], documents=docs, items=_items())
    rows = ["r8_100_scratch", "r8_100_nsp", "r8_100_no_nsp"]
    workdir = str(tmp / "work")
    records = bert.run(config, rows, workdir, command="test", pretrain_data=pretrain_data,
                       finetune_data=finetune_data)
    return config, rows, workdir, records, pretrain_data, finetune_data


def test_pretraining_saves_an_encoder_that_loads_back(finished):
    config, _, workdir, _, pretrain_data, _ = finished
    pre = os.path.join(workdir, "pretrain")
    table = [json.loads(line) for line in open(os.path.join(pre, "results.jsonl"), encoding="utf-8")]
    assert [r["row"] for r in table] == ["nsp", "no_nsp"]
    for r in table:
        assert r["steps"] == 20 and 0 <= r["held_out_mlm_accuracy"] <= 100 and 0 <= r["held_out_nsp_accuracy"] <= 100
        assert r["unigram_rule_mlm_accuracy"] == pretrain_data.info["unigram_rule_mlm_accuracy"] > 0
    assert "most-frequent-piece rule" in open(os.path.join(pre, "results.md"), encoding="utf-8").read()
    assert os.path.exists(os.path.join(pre, "curves.png"))
    params, tokenizer, meta = bert.load_encoder(os.path.join(pre, "nsp", "seed_0", "encoder"))
    assert tokenizer.vocab_size == pretrain_data.tokenizer.vocab_size and meta["pretrain"]["nsp"] is True
    assert meta["model"]["hidden_size"] == config.model.hidden_size
    assert params["token_embeddings"]["embedding"].shape == (tokenizer.vocab_size, 16)
    with pytest.raises(bert.data.DataError, match="no saved BERT encoder"):
        bert.load_encoder(os.path.join(pre, "nsp"))


def test_fine_tuning_rows_start_from_their_encoder(finished):
    _, _, workdir, records, _, finetune_data = finished
    assert [(r["row"], r["seed"]) for r in records] == [(row, s) for row in ["r8_100_scratch", "r8_100_nsp",
                                                                            "r8_100_no_nsp"] for s in (0,)]
    for r in records:
        assert r["train_examples"] == 100 and r["test_examples"] == 60 and r["steps"] == 20
        expected = "" if r["row"].endswith("scratch") else os.path.join("pretrain", r["row"][len("r8_100_"):])
        assert expected in r["encoder_dir"]
        if r["row"] != "r8_100_scratch":
            assert r["baseline_row"] == "r8_100_scratch" and 0 <= r["test_accuracy_p"] <= 1
    # A classifier built on a loaded encoder holds exactly the saved parameters before training.
    model = bert.BertClassifier(**bert.encoder_kwargs(finished[0].model, finetune_data.tokenizer.vocab_size),
                                num_classes=2)
    fresh = bert.nn.unbox(model.init(jax.random.key(0), finetune_data.corpora["r8"][0].tokens[:2])["params"]["bert"])
    saved, _, _ = bert.load_encoder(os.path.join(workdir, "pretrain", "nsp", "seed_0", "encoder"),
                                    jax.tree.map(np.asarray, fresh))
    raw, _, _ = bert.load_encoder(os.path.join(workdir, "pretrain", "nsp", "seed_0", "encoder"))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, saved), jax.tree.map(np.asarray, raw))
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "### Claims" in text and "baseline" in text and "held-out MLM accuracy" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    assert {c["name"] for c in claims} == {"pretraining helps (r8, 100 labels)",
                                           "NSP helps fine-tuning (r8, 100 labels)"}


def test_rerun_only_reports(finished):
    config, rows, workdir, records, pretrain_data, finetune_data = finished
    stamp = os.path.getmtime(os.path.join(workdir, "pretrain", "nsp", "seed_0", "metrics.jsonl"))
    again = bert.run(config, rows, workdir, command="test", pretrain_data=pretrain_data, finetune_data=finetune_data)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "pretrain", "nsp", "seed_0", "metrics.jsonl")) == stamp


def test_unigram_rule_accuracy_is_the_expectation_over_mlm_mask_draws():
    rng = np.random.default_rng(0)
    never = {0, 1, 9}
    train = [[[2, 3, 3, 4], [3, 5]], [[3, 6, 7]]]  # 3 is the most frequent training piece
    tokens = rng.choice(np.arange(2, 9), size=(12, 20), p=[0.1, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]).astype(np.int32)
    tokens[:, 0] = 1
    tokens[3, 8:] = 0  # a short row (padding) and a row with nothing to predict
    tokens[5, 1:] = 0
    piece, expected = bert.unigram_rule_accuracy(train, tokens, never, 0.15)
    assert piece == 3
    hits = total = 0.0
    draw = jax.jit(lambda key: bert.mlm_mask(key, tokens, vocab_size=10, mask_id=9, special_ids=(0, 1),
                                             mask_rate=0.15))
    for i in range(400):
        _, positions, weights = draw(jax.random.key(i))
        targets = np.take_along_axis(tokens, np.asarray(positions), axis=1)
        hits += float(np.sum(np.asarray(weights) * (targets == piece)))
        total += float(np.sum(weights))
    assert abs(100.0 * hits / total - expected) < 1.5, (100.0 * hits / total, expected)
    assert bert.unigram_rule_accuracy([], tokens, never, 0.15) == (-1, 0.0)
    assert bert.unigram_rule_accuracy(train, np.zeros((2, 5), np.int32), never, 0.15) == (-1, 0.0)


@pytest.mark.parametrize("flag, expected", [
    ("--config.train.encoder_dir=/nonexistent", "encoder_dir"),
])
def test_bad_flags_exit_with_one_line(flag, expected, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.bert", "--preset=smoke", f"--workdir={tmp_path}", flag],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "fix" in lines[0], proc.stderr[-2000:]


def test_classification_experiment_fine_tunes_a_saved_encoder(finished, tmp_path):
    """``experiments.classification --rows=bert --config.model.bert_encoder=...`` trains on the saved encoder."""
    pytest.importorskip("pysbd")
    from tests.experiments import classification_test  # pylint: disable=import-outside-toplevel

    _, _, workdir, *_ = finished
    encoder = os.path.join(workdir, "pretrain", "nsp", "seed_0", "encoder")
    out = str(tmp_path / "cls")
    fixture = classification_test._fixture(tmp_path / "docs.tsv")  # pylint: disable=protected-access
    proc = classification_test._run([  # pylint: disable=protected-access
        f"--data_path={fixture}", f"--workdir={out}",
        "--rows=bert", f"--config.model.bert_encoder={encoder}", "--config.train.num_steps=8", "--config.seeds=1",
        "--config.train.eval_every=0", "--config.train.batch_size=16", "--config.eval.significance=none",
        f"--config.data.data_dir={tmp_path / 'cache'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = classification_test._records(out)  # pylint: disable=protected-access
    assert record["row"] == "bert" and record["model"] == "bert" and record["steps"] == 8
    data_info = json.load(open(os.path.join(out, "data.json"), encoding="utf-8"))
    assert data_info["tokenizer"].endswith(os.path.join("encoder", "tokenizer.model"))
