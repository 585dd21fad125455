"""End-to-end tests of the Transformer experiments (experiments/transformer.py, head_pruning.py) and the
harness pieces they added: label smoothing and the warm-up schedule in the train step, warm starts
(train.init_from), per-row record extras and figures, per-preset default rows, and CLI errors; Table 3's row
(B) shrinking d_k alone, and the RNNsearch and ConvS2S rows (model.family) beside the Transformer.

Runs on the tiny word-level copy-and-reverse dataset of tests/experiments/training/translation_test.py (no
corpus, no network).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import cli
from experiments import evaluation
from experiments import results
from experiments import training
from experiments import transformer as transformer_exp
from experiments.head_pruning import EXPERIMENT as PRUNING
from experiments.transformer import EXPERIMENT as TRANSFORMER
from tests.experiments.training.translation_test import REPO, tiny_dataset

TINY_MODEL = {
    "model.d_model": 16, "model.num_heads": 4, "model.d_ff": 32, "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1, "model.max_len": 32, "data.buckets": (16,), "train.batch_size": 8,
    "train.num_steps": 8, "train.warmup_steps": 4, "train.max_minutes": 0.0, "train.log_every": 4,
    "train.eval_every": 4, "train.checkpoint_every": 4, "eval.batch_size": 16, "eval.beam_size": 2,
    "eval.max_decode_len": 15, "eval.num_heatmaps": 1, "eval.heatmap_max_tokens": 15, "eval.length_bins": (3, 6),
}


def _run_dir(workdir, row):
    """The directory of a row's (seed 0) run: ``<row>/seed_0`` where runs are kept per seed, else ``<row>``."""
    seeded = os.path.join(workdir, row, "seed_0")
    return seeded if os.path.isdir(seeded) else os.path.join(workdir, row)


def tiny_config(exp, **overrides):
    flat = dict(TINY_MODEL)
    flat.update(overrides)
    return cli.build_config(exp, "smoke", flat)


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory, dataset):
    workdir = str(tmp_path_factory.mktemp("transformer"))
    rows = ["base", "rope"]
    records = training.run_experiment(TRANSFORMER, tiny_config(TRANSFORMER), rows, workdir, preset="smoke",
                                      command="test", dataset=dataset)
    return workdir, records


def test_transformer_rows_report_table3_columns(transformer_run):
    workdir, records = transformer_run
    assert [r["row"] for r in records] == ["base", "rope"]
    for rec in records:
        assert rec["steps"] == 8 and np.isfinite(rec["test_ppl"]) and rec["test_bleu"] is not None
        assert rec["family"] == "Transformer" and rec["layers"] == "1+1"
        assert rec["num_heads"] == 4 and rec["qk_head_dim"] == 4 and rec["head_dim"] == 4
        assert rec["label_smoothing"] == 0.1 and rec["params"] > 0
        assert rec["bleu_by_length"] and rec["heatmaps"]
    assert records[0]["positions"] == "sinusoidal" and records[1]["positions"] == "rope"
    text = open(os.path.join(workdir, "results.md")).read()
    assert "| model | N | d_k | d_v | layers |" in text and "eps_ls" in text
    for name in ("results.jsonl", "loss_curves.png", "bleu_by_length.png"):
        assert os.path.exists(os.path.join(workdir, name)), name


@pytest.mark.parametrize("row,model_class", [("B_dk8", "Transformer"), ("RNNsearch", "Seq2Seq"),
                                             ("ConvS2S", "ConvS2S")])
def test_each_family_trains_one_step_and_decodes(dataset, row, model_class):
    cfg = training.row_config(TRANSFORMER, tiny_config(TRANSFORMER), row)
    TRANSFORMER.validate_model(cfg)
    model = TRANSFORMER.make_model(cfg.model, dataset.tokenizer.vocab_size, 16)
    assert type(model).__name__ == model_class
    params = training.init_params(model, jax.random.PRNGKey(0), (16,))
    batch = evaluation.model_batch(next(iter(evaluation.data.batches(dataset.train, 8, (16,), shuffle=False, seed=0,
                                                                      epoch=0))))
    optimizer = training.make_optimizer(cfg.train, cfg.model)
    step = training.make_train_step(model, optimizer, cfg.train)
    before = jax.tree.map(np.asarray, params)
    after, _, total, count = step(jax.tree.map(jnp.array, params), optimizer.init(params), batch,
                                  jax.random.PRNGKey(1))
    assert np.isfinite(float(total)) and float(count) == float(np.sum(batch["tgt_mask"]))
    moved = [float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
    assert max(moved) > 0.0
    tokens = evaluation.make_decoder(model, beam_size=1)(after, batch["src"], batch["src_lengths"], 6)
    assert tokens.shape == (batch["src"].shape[0], 6) and tokens.dtype == jnp.int32
    assert int(jnp.min(tokens)) >= 0 and int(jnp.max(tokens)) < dataset.tokenizer.vocab_size


def test_family_rows_use_their_own_recipe_and_size():
    config = cli.build_config(TRANSFORMER, "small", {})
    rnn, conv, base = (training.row_config(TRANSFORMER, config, r) for r in ("RNNsearch", "ConvS2S", "base"))
    # RNNsearch: Adam at a constant 2e-3 clipped at 5 (experiments/configs/bahdanau.py); ConvS2S: clip 0.1.
    assert training.learning_rate(rnn.train, rnn.model) == 2e-3 and rnn.train.grad_clip_norm == 5.0
    assert rnn.train.label_smoothing == 0.0 and rnn.train.adam_b2 == 0.999
    assert training.learning_rate(conv.train, conv.model) == 3e-3 and conv.train.grad_clip_norm == 0.1
    assert callable(training.learning_rate(base.train, base.model))  # the Transformer keeps its warm-up schedule

    def count(cfg):
        model = TRANSFORMER.make_model(cfg.model, 4000, 64)
        src = jax.ShapeDtypeStruct((2, 16), jnp.int32)
        shapes = jax.eval_shape(lambda s: model.init({"params": jax.random.PRNGKey(0)}, s, jnp.full((2,), 16), s),
                                src)["params"]
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))

    sizes = {name: count(cfg) for name, cfg in (("base", base), ("RNNsearch", rnn), ("ConvS2S", conv))}
    for name in ("RNNsearch", "ConvS2S"):  # roughly the base Transformer's parameter count at small
        assert abs(sizes[name] / sizes["base"] - 1.0) < 0.1, sizes


def test_row_b_shrinks_d_k_alone():
    config = cli.build_config(TRANSFORMER, "small", {})
    for row, d_k in (("B_dk8", 8), ("B_dk4", 4), ("base", 16)):
        cfg = training.row_config(TRANSFORMER, config, row)
        model = TRANSFORMER.make_model(cfg.model, 4000, 64)
        src = jax.ShapeDtypeStruct((2, 16), jnp.int32)
        params = nn.unbox(jax.eval_shape(
            lambda s: model.init({"params": jax.random.PRNGKey(0)}, s, jnp.full((2,), 16), s), src)["params"])
        for name in ("self_attention", "cross_attention"):
            attention = params["decoder_layers_0"][name]
            assert attention["query"]["kernel"].shape == (128, 8, d_k)
            assert attention["key"]["kernel"].shape == (128, 8, d_k)
            assert attention["value"]["kernel"].shape == (128, 8, 16)  # d_v = D / N stays
            assert attention["out"]["kernel"].shape == (8, 16, 128)
        described = TRANSFORMER.describe(cfg)
        assert (described["qk_head_dim"], described["head_dim"]) == (d_k, 16)


def test_table_shows_model_family_and_dashes_for_transformer_columns():
    config = cli.build_config(TRANSFORMER, "smoke", {})
    records = [{"row": r, **TRANSFORMER.describe(training.row_config(TRANSFORMER, config, r))}
               for r in ("base", "RNNsearch", "ConvS2S")]
    lines = results.markdown_table(records, TRANSFORMER.columns).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    column = dict(zip(header, range(len(header))))
    assert [cells[r][column["model"]] for r in ("base", "RNNsearch", "ConvS2S")] == ["Transformer", "RNNsearch",
                                                                                    "ConvS2S"]
    for name in ("N", "d_k", "d_v", "d_model", "d_ff", "positions", "norm"):
        assert cells["base"][column[name]] != "-"
        assert cells["RNNsearch"][column[name]] == "-" and cells["ConvS2S"][column[name]] == "-", name
    assert cells["RNNsearch"][column["eps_ls"]] == "0.0" and cells["ConvS2S"][column["layers"]] == "1+1"


def test_family_config_errors():
    def check(rows, match, **overrides):
        config = cli.build_config(TRANSFORMER, "smoke", overrides)
        with pytest.raises(training.ConfigError, match=match):
            cli.validate(TRANSFORMER, config, rows)

    check(["custom"], "model.family='lstm' is not valid; fix: use one of transformer, rnnsearch, convs2s",
          **{"model.family": "lstm"})
    check(["RNNsearch"], "model.rnnsearch.hidden_size=0 is not valid; fix: use an int >= 1",
          **{"model.rnnsearch.hidden_size": 0})
    check(["ConvS2S"], "model.convs2s.dropout_rate=1.0 is not valid", **{"model.convs2s.dropout_rate": 1.0})
    check(["custom"], "invalid model config.*qk_head_dim", **{"model.qk_head_dim": -1})
    # The Transformer-only fields do not stop the other families' rows.
    cli.validate(TRANSFORMER, cli.build_config(TRANSFORMER, "smoke", {"model.implementation": "xla"}),
                 ["RNNsearch", "ConvS2S"])
    # A config from before model.family (a trained workdir's row_config.json) still builds its Transformer.
    legacy = cli.build_config(TRANSFORMER, "smoke", {}).model.to_dict()
    for name in ("family", "qk_head_dim", "rnnsearch", "convs2s"):
        legacy.pop(name)
    model = transformer_exp.build_model(ml_collections.ConfigDict(legacy), 100, 16)
    assert type(model).__name__ == "Transformer" and model.qk_head_dim is None


def test_train_step_smooths_loss_but_reports_nll(dataset):
    cfg = training.row_config(TRANSFORMER, tiny_config(TRANSFORMER, **{"model.dropout_rate": 0.0,
                                                                       "train.label_smoothing": 0.2}), "base")
    model = TRANSFORMER.make_model(cfg.model, dataset.tokenizer.vocab_size, 16)
    params = training.init_params(model, jax.random.PRNGKey(0), (16,))
    batch = next(iter(evaluation.data.batches(dataset.train, 8, (16,), shuffle=False, seed=0, epoch=0)))
    batch = evaluation.model_batch(batch)
    nll, tokens, _ = evaluation.make_forward(model)(params, batch)
    copy = jax.tree.map(jnp.array, params)
    optimizer = training.make_optimizer(cfg.train, cfg.model)
    step = training.make_train_step(model, optimizer, cfg.train)
    _, _, total, count = step(copy, optimizer.init(copy), batch, jax.random.PRNGKey(1))
    np.testing.assert_allclose(float(total), float(np.sum(nll)), rtol=1e-5)  # unsmoothed NLL is what is logged
    assert float(count) == float(np.sum(tokens))


def test_rsqrt_warmup_learning_rate_follows_eq3():
    tc = ml_collections.ConfigDict({"learning_rate": 2.0, "schedule": "rsqrt_warmup", "warmup_steps": 10})
    mc = ml_collections.ConfigDict({"d_model": 64})
    lr = training.learning_rate(tc, mc)
    for step in (0, 4, 9, 10, 100):
        n = step + 1
        assert float(lr(step)) == pytest.approx(2.0 * 64 ** -0.5 * min(n ** -0.5, n * 10 ** -1.5), rel=1e-6)
    with pytest.raises(training.ConfigError, match="schedule"):
        training.learning_rate(ml_collections.ConfigDict({"learning_rate": 1.0, "schedule": "cosine"}))


def test_gate_learning_rate_only_moves_gates_faster():
    tc = ml_collections.ConfigDict({"learning_rate": 1e-4, "grad_clip_norm": 0.0, "gate_learning_rate": 0.1})
    params = {"layer": {"log_alpha": jnp.zeros(3), "kernel": jnp.zeros(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    optimizer = training.make_optimizer(tc)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["layer"]["log_alpha"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(updates["layer"]["kernel"], -1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def pruning_run(tmp_path_factory, dataset):
    workdir = str(tmp_path_factory.mktemp("pruning"))
    config = tiny_config(PRUNING, **{"train.finetune_steps": 6, "train.gate_learning_rate": 0.5})
    records = training.run_experiment(PRUNING, config, ["dense", "l0_0.05"], workdir, preset="smoke", command="test",
                                      dataset=dataset)
    return workdir, records


def test_pruning_rows_warm_start_and_count_heads(pruning_run):
    workdir, records = pruning_run
    dense, pruned = records
    assert dense["row"] == "dense" and dense["steps"] == 8
    assert pruned["row"] == "l0_0.05" and pruned["steps"] == 6  # train.finetune_steps, not num_steps
    assert dense["heads_total"] == 4 and dense["heads_kept"] == 4  # no penalty: every gate stays open
    assert 0 <= pruned["heads_kept"] <= 4
    assert os.path.exists(os.path.join(workdir, "bleu_vs_heads.png"))
    # The fine-tuned row's first logged loss is that of a trained model, not of a fresh one.
    first = lambda row: [json.loads(l) for l in open(os.path.join(_run_dir(workdir, row), "metrics.jsonl"))
                         if '"loss"' in l][0]
    assert first("l0_0.05")["loss"] < first("dense")["loss"]


def test_strong_penalty_closes_heads(pruning_run, dataset, tmp_path):
    workdir, _ = pruning_run
    config = tiny_config(PRUNING, **{"train.finetune_steps": 40, "train.gate_learning_rate": 0.5,
                                     "train.l0_penalty": 0.05, "train.init_from": _run_dir(workdir, "dense")})
    records = training.run_experiment(PRUNING, config, ["custom"], str(tmp_path), preset="smoke", command="test",
                                      dataset=dataset)
    assert records[0]["steps"] == 40
    assert records[0]["heads_kept"] < 4  # 40 steps at gate lr 0.5 move log_alpha from 3 well below -2.4


def test_warm_start_copies_matching_arrays_and_rejects_missing(pruning_run, tmp_path):
    workdir, _ = pruning_run
    fresh = {"encoder_layers_0": {"log_alpha": jnp.full((4,), -7.0)}, "unrelated": {"w": jnp.zeros((2,))}}
    params, copied = training.warm_start(fresh, _run_dir(workdir, "dense"))
    assert copied == 1 and float(params["encoder_layers_0"]["log_alpha"][0]) != -7.0
    np.testing.assert_array_equal(params["unrelated"]["w"], 0.0)
    with pytest.raises(training.ConfigError, match="holds no checkpoint"):
        training.warm_start(fresh, str(tmp_path))


def test_preset_rows():
    assert cli.parse_rows(TRANSFORMER, "", "smoke") == ["base", "A_heads1", "rope"]
    assert cli.parse_rows(TRANSFORMER, "", "small") == list(TRANSFORMER.default_rows)
    assert "pre_ln" not in TRANSFORMER.default_rows and "pre_ln" in TRANSFORMER.row_names
    everything = cli.parse_rows(TRANSFORMER, "all", "small")
    assert "pre_ln" in everything and "custom" not in everything and len(everything) == len(TRANSFORMER.rows)


@pytest.mark.parametrize("module,args", [
        ("experiments.transformer", ["--config.model.positions=bogus"]),
        ("experiments.transformer", ["--config.model.max_len=8"]),
        ("experiments.transformer", ["--config.model.implementation=triton"]),
        ("experiments.transformer", ["--config.model.implementation=cudnn"]),
        ("experiments.transformer", ["--rows=custom", "--config.model.num_heads=3"]),
        ("experiments.head_pruning", ["--config.model.head_gates=none"]),
])
def test_cli_errors_are_one_sentence_and_exit_2(module, args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", module, "--preset=smoke", f"--workdir={tmp_path}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fix:" in errors[0], proc.stderr
    assert not os.listdir(tmp_path)
