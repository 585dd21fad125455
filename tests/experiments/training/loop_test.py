"""Tests of experiments/training/loop.py: the shared loop on a counting toy step (no model, no data).

The step adds 1 to a scalar "parameter" and to the carried state, so the batches a run reads, the carried state
each step sees and the restored parameters are all known: epochs read their batches in order, the carried state
restarts from zeros at every epoch start and on resume, logging and evaluation follow the cadence, and a resumed
run continues at the checkpoint's data position.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import pytest

from experiments.training import loop

BATCHES_PER_EPOCH = 3


def train_config(**overrides) -> ml_collections.ConfigDict:
    fields = dict(num_steps=7, max_minutes=0.0, log_every=2, eval_every=3, checkpoint_every=3)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def epoch_batches(epoch):
    for k in range(BATCHES_PER_EPOCH):
        yield (epoch, k), 2.0


def run(run_dir, seen, **kwargs):
    """Runs the loop on the toy step; ``seen`` collects (batch, carry) per step."""

    def step_fn(params, opt_state, carry, batch, rng):
        del rng
        seen.append((batch, int(carry)))
        return {"w": params["w"] + 1.0}, {"n": opt_state["n"] + 1}, carry + 1, params["w"], 1.0

    kwargs.setdefault("train_config", train_config())
    return loop.train_loop(step_fn, {"w": jnp.zeros(())}, {"n": jnp.zeros((), jnp.int32)}, epoch_batches,
                           run_dir=str(run_dir), rng=jax.random.PRNGKey(0), carry=jnp.zeros((), jnp.int32),
                           evaluate=lambda params: {"dev_ppl": float(params["w"])}, **kwargs)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    seen = []
    outcome = run(run_dir, seen, eval_at_end=True)
    return run_dir, seen, outcome


def test_epochs_in_order_and_carry_restarts_each_epoch(first_run):
    _, seen, outcome = first_run
    assert [batch for batch, _ in seen] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert [carry for _, carry in seen] == [0, 1, 2, 0, 1, 2, 0]
    assert (outcome.steps, outcome.steps_this_run, outcome.epoch) == (7, 7, 2)
    assert outcome.stop_reason == "reached train.num_steps=7"
    assert float(outcome.params["w"]) == 7.0 and int(outcome.opt_state["n"]) == 7
    assert outcome.last_eval == {"dev_ppl": 7.0}


def test_log_and_eval_cadence(first_run):
    run_dir, _, _ = first_run
    records = metrics(run_dir)
    losses = {r["step"]: r for r in records if "loss" in r}
    assert sorted(losses) == [2, 4, 6, 7]  # every log_every steps, and the last step
    assert losses[2]["loss"] == pytest.approx(0.5)  # the mean of the window's loss_sum / weight: (0 + 1) / 2
    assert losses[7]["loss"] == pytest.approx(6.0)
    for record in losses.values():
        assert {"epoch", "tokens_per_s", "elapsed_s", "eta_s"} <= set(record) and record["tokens_per_s"] > 0
    evals = [(r["step"], r["dev_ppl"]) for r in records if "dev_ppl" in r]
    assert evals == [(3, 3.0), (6, 6.0), (7, 7.0)]  # every eval_every steps, and at the end (eval_at_end)


def test_resume_from_checkpoint_continues_at_its_data_position(first_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "7")  # killed after the step-6 checkpoint
    seen = []
    outcome = run(run_dir, seen, train_config=train_config(num_steps=9))
    assert [batch for batch, _ in seen] == [(2, 0), (2, 1), (2, 2)]
    assert [carry for _, carry in seen] == [0, 1, 2]
    assert (outcome.steps, outcome.steps_this_run) == (9, 3) and float(outcome.params["w"]) == 9.0
    assert outcome.last_eval == {"dev_ppl": 9.0}
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [2, 4, 6, 8, 9]  # step 7 was dropped


def test_checkpoint_without_data_position_resumes_at_steps_place(tmp_path):
    manager = loop.checkpoint_manager(str(tmp_path / "checkpoints"))
    state = {"params": {"w": jnp.full((), 4.0)}, "opt_state": {"n": jnp.full((), 4, jnp.int32)}}
    manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave({"step": 4, "elapsed_s": 1.0})))
    manager.wait_until_finished()
    manager.close()
    seen = []
    outcome = run(tmp_path, seen, train_config=train_config(num_steps=6), steps_per_epoch=BATCHES_PER_EPOCH)
    assert [batch for batch, _ in seen] == [(1, 1), (1, 2)]
    assert float(outcome.params["w"]) == 6.0


def test_nothing_left_to_train(first_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run[0], run_dir)
    seen = []
    outcome = run(run_dir, seen)
    assert not seen and outcome.steps_this_run == 0 and outcome.last_eval is None


def test_empty_epoch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no batch"):
        loop.train_loop(lambda *a: a, {"w": jnp.zeros(())}, {}, lambda epoch: iter(()), train_config=train_config(),
                        run_dir=str(tmp_path), rng=jax.random.PRNGKey(0))


def test_table_eta_adds_the_queued_runs(tmp_path):
    # A number is the queued runs' seconds; a function extrapolates them from this run's projected length.
    assert loop._table_eta(10.0, 5.0, 100.0) == 110.0  # pylint: disable=protected-access
    assert loop._table_eta(10.0, 5.0, lambda total: 2 * total) == 40.0  # pylint: disable=protected-access
    assert loop._table_eta(None, 5.0, 100.0) is None  # pylint: disable=protected-access
    run(tmp_path / "fixed", [], after_s=100.0)
    logged = [r for r in metrics(tmp_path / "fixed") if "loss" in r]
    assert logged and all(r["table_eta_s"] == pytest.approx(r["eta_s"] + 100.0, abs=0.2) for r in logged)
    run(tmp_path / "plain", [])
    assert not any("table_eta_s" in r for r in metrics(tmp_path / "plain"))


def test_log_line_names_the_throughput_unit_and_drops_perplexity_on_request(tmp_path, monkeypatch):
    """The step log says what it counts: "tok/s (ppl ...)" by default, "images/s" and no ppl when asked."""
    lines = []
    monkeypatch.setattr(loop.logging, "info", lambda fmt, *args: lines.append(str(fmt) % args if args else str(fmt)))
    run(tmp_path / "tokens", [], train_config=train_config(num_steps=2, eval_every=0, checkpoint_every=0))
    run(tmp_path / "images", [], train_config=train_config(num_steps=2, eval_every=0, checkpoint_every=0),
        unit="images", perplexity=False)
    steps = [line for line in lines if "  loss " in line]
    assert len(steps) == 2, lines
    assert " tok/s" in steps[0] and "(ppl " in steps[0]
    assert " images/s" in steps[1] and "ppl" not in steps[1] and "tok/s" not in steps[1]
