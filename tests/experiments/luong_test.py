"""Tests of the Luong experiment's own parts: the local-p position predictor's learning rate, the window
positions recorded at every dev evaluation, their figure, and the config's paper numbers and claims."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import luong
from experiments import results
from experiments import training
from experiments.configs import luong as luong_config
from tests.experiments.training.translation_test import tiny_config, tiny_dataset


def test_position_lr_scale_slows_only_the_local_p_predictor():
    tc = ml_collections.ConfigDict({"learning_rate": 1e-2, "grad_clip_norm": 0.0, "position_lr_scale": 0.01})
    params = {"attn": {"w_p": jnp.zeros((2, 3)), "v_p": jnp.zeros(3), "w_a": jnp.zeros((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    optimizer = training.make_optimizer(tc)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # Adam's first step is -lr * sign(g): the predictor moves a hundredth as far as the score weights.
    np.testing.assert_allclose(updates["attn"]["w_p"], -1e-4, rtol=1e-4)
    np.testing.assert_allclose(updates["attn"]["v_p"], -1e-4, rtol=1e-4)
    np.testing.assert_allclose(updates["attn"]["w_a"], -1e-2, rtol=1e-4)
    # Scale 1 is plain Adam: one transformation, every parameter at the learning rate.
    plain = training.make_optimizer(ml_collections.ConfigDict({"learning_rate": 1e-2, "grad_clip_norm": 0.0,
                                                               "position_lr_scale": 1.0}))
    updates, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(updates["attn"]["w_p"], -1e-2, rtol=1e-4)


def test_every_local_p_row_but_the_ablation_trains_its_predictor_slowly():
    config = luong_config.get_config()
    for row in luong_config.ROWS:
        cfg = training.row_config(luong.EXPERIMENT, config, row)
        want = 1.0 if row == "local_p_general_adam" else 0.01
        assert cfg.train.position_lr_scale == want, row
    assert training.spec.paper_and_claim_problems(luong.EXPERIMENT) == []
    assert luong.EXPERIMENT.default_baseline == "no_attention"


@pytest.fixture(scope="module")
def local_p_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("luong_local_p"))
    config = tiny_config(luong.EXPERIMENT, **{"train.num_steps": 6, "train.eval_every": 3, "train.log_every": 3,
                                             "train.checkpoint_every": 6, "eval.num_heatmaps": 0,
                                             "eval.significance": "none"})
    records = training.run_experiment(luong.EXPERIMENT, config, ["local_p_general", "global_dot"], workdir,
                                      command="test", dataset=tiny_dataset())
    return workdir, records


def test_dev_evaluations_of_local_p_rows_record_their_windows(local_p_run):
    workdir, _ = local_p_run
    evals = [m for m in results.read_jsonl(os.path.join(workdir, "local_p_general", "seed_0", "metrics.jsonl"))
             if "dev_ppl" in m]
    assert [m["step"] for m in evals] == [3, 6]
    dev = tiny_dataset().dev
    for m in evals:
        assert 0.0 <= m["p_mean"] <= 1.0 and 0.0 <= m["p_diag_error"] <= 1.0 and m["p_spread"] >= 0.0
        assert len(m["p_positions"]) == luong.POSITION_TRAJECTORIES
        # One centre per target step (the target plus EOS), inside its sentence's source.
        assert [len(p) for p in m["p_positions"]] == [len(ex.tgt_ids) + 1 for ex in dev[:3]]
        assert m["p_source_lengths"] == [len(ex.src_ids) for ex in dev[:3]]
        assert all(0.0 <= x <= n for p, n in zip(m["p_positions"], m["p_source_lengths"]) for x in p)
    other = [m for m in results.read_jsonl(os.path.join(workdir, "global_dot", "seed_0", "metrics.jsonl"))
             if "dev_ppl" in m]
    assert other and not any("p_mean" in m for m in other)  # global rows predict no window


def test_position_figure_for_local_p_rows_only(local_p_run):
    workdir, _ = local_p_run
    assert os.path.getsize(os.path.join(workdir, "local_p_positions_local_p_general.png")) > 1000
    assert not os.path.exists(os.path.join(workdir, "local_p_positions_global_dot.png"))
    with open(os.path.join(workdir, "results.md")) as f:
        assert "local_p_positions_local_p_general.png" in f.read()
