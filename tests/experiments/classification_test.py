"""End-to-end test of ``python -m experiments.classification`` on a tiny labelled TSV fixture (no corpus download).

Checks: the table's rows train in two worker processes and report test accuracy with the paired CI and p against
the baseline; a model that can learn the fixture's keyword rule does; sparsemax heads give exact zeros; the HAN
figure renders words and sentences; a rerun only re-reports; a longer budget resumes from the checkpoint; bad flags
exit 2 with one line. Unit checks: `merge_pieces`, the penalty in the training loss, `validate`.
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
import optax
import pytest

from experiments import classification
from experiments import cli
from experiments import training

REPO = str(pathlib.Path(__file__).resolve().parents[2])
ROWS = "cnn_max,lstm_attention,lstm_structured_penalty,han_att,transformer_sparsemax,dattn"
TINY = ["--preset=smoke", "--config.train.num_steps=60", "--config.train.log_every=20", "--config.train.eval_every=30",
        "--config.train.checkpoint_every=30", "--config.train.batch_size=16", "--config.train.learning_rate=0.01",
        "--config.data.vocab_size=80", "--config.data.max_tokens=32", "--config.data.buckets=(16,32)",
        "--config.data.max_sentences=4", "--config.data.sentence_tokens=12", "--config.data.max_train=0",
        "--config.data.max_test=0", "--config.model.embed_dim=16", "--config.model.hidden_size=12",
        "--config.model.attention_dim=8", "--config.model.num_filters=8", "--config.model.d_model=16",
        "--config.model.d_ff=32", "--config.model.local_features=8", "--config.model.global_features=8",
        "--config.model.hidden_dim=16", "--config.model.hops=2", "--config.eval.num_documents=2",
        "--config.eval.significance_samples=200"]
KEYWORDS = {"sea": "boat", "land": "horse", "air": "bird"}
FILLER = ["the day was long", "they walked on", "nobody said a word", "it rained all night", "the town was quiet"]


def _fixture(path) -> str:
    """360 documents of 2-3 sentences; the label is told by one keyword in a random sentence."""
    rng = random.Random(0)
    lines = []
    for i in range(360):
        label = list(KEYWORDS)[i % 3]
        sentences = [rng.choice(FILLER).capitalize() + "." for _ in range(rng.randint(2, 3))]
        k = rng.randrange(len(sentences))
        sentences[k] = sentences[k][:-1] + f" with the {KEYWORDS[label]}."
        lines.append(f"{label}\t{' '.join(sentences)} Item {i}.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _run(args, timeout=400):
    return subprocess.run([sys.executable, "-m", "experiments.classification", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _records(workdir):
    with open(os.path.join(workdir, "results.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    pytest.importorskip("pysbd")  # the fixture's sentences come from pysbd (the experiments extra)
    tmp = tmp_path_factory.mktemp("cls")
    workdir = str(tmp / "work")
    args = [f"--data_path={_fixture(tmp / 'docs.tsv')}", f"--workdir={workdir}",
            f"--config.data.data_dir={tmp / 'cache'}", f"--rows={ROWS}", "--jobs=2", *TINY]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, args, proc


def test_table_records_and_statistics(finished):
    workdir, _, proc = finished
    assert "training with 2 worker processes" in proc.stderr
    records = _records(workdir)
    assert [r["row"] for r in records] == ROWS.split(",")
    for r in records:
        assert 0.0 <= r["test_accuracy"] <= 100.0 and r["steps"] == 60
        assert r["baseline_row"] == "cnn_max"
        if r["row"] != "cnn_max":
            low, high = r["test_accuracy_ci"]
            assert low <= high and 0.0 <= r["test_accuracy_p"] <= 1.0
    by_row = {r["row"]: r for r in records}
    # The keyword rule is learnable: a max-pooled CNN finds it (3 classes, chance 33%).
    assert by_row["cnn_max"]["test_accuracy"] > 80.0
    # Sparsemax self-attention gives exact zeros; the other rows have no self-attention to count.
    assert by_row["transformer_sparsemax"]["attention_zero_share"] > 0.0
    assert by_row["cnn_max"]["attention_zero_share"] is None
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| cnn_max |" in text and "### Claims" in text and "baseline" in text
    claims = [json.loads(line) for line in open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8")]
    assert {c["name"] for c in claims} >= {"the penalty helps structured self-attention"}
    for name in ("loss_curves.png", "accuracy_by_length.png", "attention_sparsity.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 1000, name


def test_han_figure_shows_words_and_sentences(finished):
    workdir, _, _ = finished
    page = open(os.path.join(workdir, "attention_han_att.html"), encoding="utf-8").read()
    assert page.count("<h3>") == 2 and "class='s'" in page
    assert "\u2581" not in page  # pieces are merged into words
    shown = json.load(open(os.path.join(workdir, "han_att", "seed_0", "attention_documents.json"), encoding="utf-8"))
    for doc in shown:
        total = sum(sum(w) * s for w, s in zip(doc["word_weights"], doc["sentence_weights"]))
        np.testing.assert_allclose(sum(doc["sentence_weights"]), 1.0, atol=1e-5)
        np.testing.assert_allclose(total, 1.0, atol=1e-4)  # each sentence's word weights sum to 1


def test_rerun_only_reports_and_longer_budget_resumes(finished, tmp_path):
    workdir, args, _ = finished
    before = _records(workdir)
    proc = _run([a for a in args if not a.startswith("--jobs")] + ["--jobs=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "new model" not in proc.stderr and "resumed" not in proc.stderr
    assert [r["test_accuracy"] for r in _records(workdir)] == [r["test_accuracy"] for r in before]
    longer = [a for a in args if not a.startswith(("--rows", "--jobs", "--config.train.num_steps"))]
    proc = _run(longer + ["--rows=cnn_max", "--jobs=1", "--config.train.num_steps=90"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from checkpoint step 60" in proc.stderr
    assert _records(workdir)[0]["steps"] == 90


@pytest.mark.parametrize("flag, expected", [
    ("--config.data.corpus=nope", "data.corpus"),
    ("--config.model.dropout_rate=1.5", "dropout_rate"),
    ("--config.data.buckets=(16,)", "buckets"),
    ("--rows=cnn_max,nope", "unknown row"),
    ("--config.eval.significance=ar", "significance"),
])
def test_bad_flags_exit_with_one_line(flag, expected, tmp_path):
    proc = _run(["--preset=smoke", f"--workdir={tmp_path}", flag], timeout=120)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_merge_pieces():
    words, weights = classification.merge_pieces(["\u2581The", "\u2581bo", "at", "s", "\u2581sank"],
                                                 np.array([0.1, 0.2, 0.3, 0.1, 0.3]))
    assert words == ["The", "boats", "sank"]
    np.testing.assert_allclose(weights, [0.1, 0.6, 0.3])
    assert classification.merge_pieces([], np.zeros(0)) == ([], [])


def test_train_step_adds_the_lin_penalty():
    config = classification.cls_config.get_config()
    m = training.row_config(classification.EXPERIMENT, config, "lstm_structured_penalty").model
    m.embed_dim, m.hidden_size, m.attention_dim, m.hops = 8, 6, 5, 3
    model = classification.build_model(m, 30, 4, 16)
    tokens = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], np.int32)
    batch = {"tokens": tokens, "sentences": tokens[:, None], "labels": np.array([1, 2], np.int32),
             "weights": np.array([1.0, 1.0], np.float32)}
    params = model.init(jax.random.key(0), tokens)["params"]
    logits, aux = model.apply({"params": params}, tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    optimizer = optax.sgd(1.0)

    def loss_of(coefficient):
        step = classification.make_train_step(model, "bilstm", optimizer, coefficient)
        new_params, _, _, ce_sum, weight = step(params, optimizer.init(params), None, batch, None)
        return new_params, float(ce_sum), float(weight)

    with_penalty, ce_sum, weight = loss_of(0.5)
    without, ce_sum2, _ = loss_of(0.0)
    np.testing.assert_allclose(ce_sum, float(np.sum(ce)), rtol=1e-5)  # the logged loss is the cross-entropy
    assert weight == 2.0 and ce_sum == ce_sum2
    # SGD with rate 1: params - grad; the penalty changes the update of the attention's weights.
    delta = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), with_penalty, without)
    assert delta["attention"] and max(jax.tree.leaves(delta["attention"])) > 1e-6
    assert float(np.mean(aux["penalty"])) > 0.0  # three hops over at most three tokens cannot be orthonormal

def test_validate_rejects_bad_values():
    config = classification.cls_config.get_config()
    classification.validate(config, [row for row in classification.EXPERIMENT.rows if row != "bert"])
    with pytest.raises(training.ConfigError, match="bert_encoder"):  # the bert row needs a saved encoder
        classification.validate(config, ["bert"])
    config.model.bert_encoder = "/nonexistent/encoder"
    with pytest.raises(training.ConfigError, match="bert_encoder"):  # ... and only it may take one
        classification.validate(config, ["cnn_max"])
    config.model.bert_encoder = ""
    config.model.penalty = -1.0
    with pytest.raises(training.ConfigError, match="penalty"):
        classification.validate(config, ["lstm_attention"])
    config = classification.cls_config.get_config()
    config.data.max_tokens = 256
    with pytest.raises(training.ConfigError, match="buckets"):
        classification.validate(config, ["cnn_max"])
