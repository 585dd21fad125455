"""The one training loop of the experiments: a jitted step, a carried state, checkpoints, logging, eval hooks.

`train_loop` runs any experiment's step function until ``train.num_steps`` or ``train.max_minutes``, whichever
comes first (0 disables either). The translation rows (`experiments.training.translation.train_row`) and the
Transformer-XL language model (`experiments.lm.train_lm`) both train through it:

* Data: ``epoch_batches(epoch)`` yields (batch, tokens) for one pass over the training data, in an order fixed
  by the epoch number. The loop keeps its place as (epoch, batch index), so a resumed run reads the same
  batches in the same order as an uninterrupted one.
* Step: ``step_fn(params, opt_state, carry, batch, rng) -> (params, opt_state, carry, loss_sum, weight)``, with
  rng = fold_in(``rng``, step). ``carry`` is state passed from one step to the next that is not trained: the
  Transformer-XL memories of truncated backpropagation through time. It restarts from zeros at every epoch
  start and on resume (it is not checkpointed); None when the model has none.
* Logging: every ``train.log_every`` steps and at the end, one line to the absl log and one JSON record to
  ``metrics.jsonl``: step, epoch, loss (the window's sum of loss_sum / sum of weight), tokens/s (seconds spent
  on evaluation and checkpoints left out; the first window of a run includes the jit compile), elapsed_s and
  eta_s; with ``after_s`` (the runs still queued after this one, e.g. the other rows and seeds of a table) also
  the ETA of the whole table, table_eta_s.
* Evaluation: every ``train.eval_every`` steps (and after the last step with ``eval_at_end``), ``evaluate(params)``
  returns metrics (e.g. ``{"dev_ppl": ...}``) that go to the log and, with step and elapsed_s, to
  ``metrics.jsonl``.
* Checkpoints: `orbax.checkpoint.CheckpointManager` in ``run_dir/checkpoints``: params and optimiser state
  ("state") and a JSON part ("meta": step, epoch, batch_index, elapsed_s), saved every
  ``train.checkpoint_every`` steps and at the end. A run that finds a checkpoint restores the latest one and
  continues from it; a killed run loses at most the steps since its last checkpoint, and the metrics it logged
  after that checkpoint are dropped from metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import dataclasses
import itertools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from experiments import configs
from experiments import results
from experiments.training.spec import ConfigError

DEFAULT_CACHE_DIR = os.path.expanduser(configs.DEFAULT_CACHE_DIR)
COMPILATION_CACHE_DIR = os.path.join(DEFAULT_CACHE_DIR, "jax_cache")

# (params, opt_state, carry, batch, rng) -> (params, opt_state, carry, loss_sum, weight)
StepFn = Callable[[Any, Any, Any, Any, jax.Array], tuple[Any, Any, Any, Any, Any]]


class _QuietOrbax:
    """absl-logging filter that keeps orbax's warnings but drops its per-save INFO chatter."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "orbax" not in (record.pathname or "")


def quiet_orbax_logging() -> None:
    """Hides orbax's INFO lines (dozens per checkpoint), keeping the training log readable."""
    logger = logging.get_absl_logger()
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())


def enable_compilation_cache(path: str = COMPILATION_CACHE_DIR) -> None:
    """Turns on JAX's persistent compilation cache (reruns skip most jit compiles).

    Leaves a cache directory that the user configured (JAX_COMPILATION_CACHE_DIR) alone.
    """
    if jax.config.jax_compilation_cache_dir:
        return
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError) as e:  # A read-only home only costs speed.
        logging.warning("persistent compilation cache disabled: %s", e)


def checkpoint_manager(path: str) -> ocp.CheckpointManager:
    """The orbax manager of a run's checkpoints: the last two kept, items "state" and "meta", synchronous saves."""
    # Synchronous saves: the train step donates params, so a save must finish before the next step.
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(path), options=options, item_names=("state", "meta"))


def warm_start(params: Any, row_dir: str) -> tuple[Any, int]:
    """Copies the parameters of ``row_dir``'s latest checkpoint into ``params`` wherever path and shape match.

    Parameters the checkpoint lacks (e.g. head gates added to a trained model) keep their fresh values.

    Returns:
      (params, number of arrays copied).

    Raises:
      ConfigError: if ``row_dir`` holds no checkpoint or none of its arrays fits.
    """
    path = os.path.join(row_dir, "checkpoints")
    latest = checkpoint_manager(path).latest_step() if os.path.isdir(path) else None
    if latest is None:
        raise ConfigError(f"train.init_from points at {row_dir!r}, which holds no checkpoint; fix: train that row "
                          "first (run its experiment) or point --config.train.init_from at a finished row directory")
    restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), str(latest), "state"))
    source = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(restored["params"])[0]}
    copied = 0

    def pick(key_path, fresh):
        nonlocal copied
        old = source.get(jax.tree_util.keystr(key_path))
        if old is not None and tuple(np.shape(old)) == tuple(fresh.shape):
            copied += 1
            return jnp.asarray(old, fresh.dtype)
        return fresh

    params = jax.tree_util.tree_map_with_path(pick, params)
    if copied == 0:
        raise ConfigError(f"no parameter of the checkpoint in {row_dir!r} fits this row's model; fix: point "
                          "--config.train.init_from at a row with the same architecture")
    return params, copied


def format_seconds(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _truncate_metrics(path: str, step: int) -> None:
    """Drops metrics logged after ``step`` (steps lost when a run was killed after a checkpoint)."""
    records = results.read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
        with open(path, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")


def _stop_reason(step: int, elapsed: float, train_config: ml_collections.ConfigDict) -> str | None:
    if train_config.num_steps > 0 and step >= train_config.num_steps:
        return f"reached train.num_steps={train_config.num_steps}"
    if train_config.max_minutes > 0 and elapsed >= 60.0 * train_config.max_minutes:
        return f"reached train.max_minutes={train_config.max_minutes:g}"
    return None


def _table_eta(eta: float | None, run_seconds: float, after_s: float | Callable[[float], float | None] | None
               ) -> float | None:
    """This run's ETA plus the queued runs' seconds (``after_s``, or ``after_s(projected seconds of this run)``,
    the run's seconds in this process so far plus its ETA)."""
    if eta is None or after_s is None:
        return None
    after = after_s(run_seconds + eta) if callable(after_s) else after_s
    return None if after is None else eta + max(0.0, float(after))


@dataclasses.dataclass
class LoopOutcome:
    """What `train_loop` did: the final state and how the budget was spent."""

    params: Any
    opt_state: Any
    steps: int  # the step reached, counting earlier runs
    steps_this_run: int
    minutes: float  # training time, earlier runs included
    stop_reason: str
    epoch: int  # the epoch the last step was in
    last_eval: dict[str, float] | None  # the last `evaluate` metrics of this run


def _is_scalar(value: Any) -> bool:
    """A number or a 0-d array (a metric for the log line), as opposed to a list or a larger array."""
    return isinstance(value, (int, float, np.number)) or getattr(value, "ndim", None) == 0


def _zeros_like(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def train_loop(step_fn: StepFn, params: Any, opt_state: Any,
               epoch_batches: Callable[[int], Iterable[tuple[Any, float]]], *,
               train_config: ml_collections.ConfigDict, run_dir: str, rng: jax.Array, carry: Any = None,
               evaluate: Callable[[Any], dict[str, float]] | None = None, eval_at_end: bool = False,
               on_fresh_start: Callable[[Any, Any], tuple[Any, Any]] | None = None,
               steps_per_epoch: int | None = None, label: str = "",
               after_s: float | Callable[[float], float | None] | None = None, unit: str = "tok",
               perplexity: bool = True) -> LoopOutcome:
    """Trains (or resumes) until the step or time budget of ``train_config`` is spent.

    Args:
      step_fn: the jitted step, ``(params, opt_state, carry, batch, rng) -> (params, opt_state, carry,
        loss_sum, weight)``; the logged loss is sum(loss_sum) / sum(weight) over a logging window.
      params: freshly initialised parameters; a checkpoint in ``run_dir`` is restored into their shapes.
      opt_state: the optimiser state of ``params``.
      epoch_batches: epoch -> iterable of (batch, tokens) for one pass over the training data, the same on every
        run; tokens (the batch's target tokens, or images, sets, ... in ``unit``) only count for throughput.
      train_config: the ``train`` section: num_steps, max_minutes, log_every, eval_every, checkpoint_every.
      run_dir: holds checkpoints/ and metrics.jsonl (created).
      rng: the key of the step's randomness (dropout, gates); step k gets fold_in(rng, k).
      carry: the carried state at the start of an epoch (zeros), or None.
      evaluate: None, or params -> metrics, run every ``train_config.eval_every`` steps. Scalar metrics are logged
        and written to metrics.jsonl; other values (lists, arrays) only written there.
      eval_at_end: also evaluate after the last step of this run.
      on_fresh_start: (params, opt_state) -> (params, opt_state), applied when there is no checkpoint to
        resume (e.g. a warm start from another run).
      steps_per_epoch: when known, epochs are logged as fractions, and a checkpoint whose meta holds no data
        position resumes at step's place in the epoch.
      label: prefix of the log lines (the row name).
      after_s: None, or the seconds the runs queued after this one will take, for the table ETA in the log:
        a number, or a function of this run's projected seconds (elapsed + ETA) for when no other run has
        finished yet to measure (e.g. ``lambda total: 3 * total`` for three more runs like this one).
      unit: what ``tokens`` counts, for the log's throughput ("tok", "images", "sets"); metrics.jsonl keeps
        it under "tokens_per_s" whatever the unit.
      perplexity: log exp(loss) beside the loss (for token-level cross-entropies; False for other losses).

    Returns:
      A `LoopOutcome`.

    Raises:
      ValueError: if an epoch yields no batch at all.
    """
    tc = train_config
    prefix = f"[{label}] " if label else ""
    os.makedirs(run_dir, exist_ok=True)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    manager = checkpoint_manager(os.path.join(run_dir, "checkpoints"))
    meta = {"step": 0, "epoch": 0, "batch_index": 0, "elapsed_s": 0.0}
    latest = manager.latest_step()
    if latest is not None:
        state = {"params": params, "opt_state": opt_state}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                    meta=ocp.args.JsonRestore()))
        params, opt_state = restored.state["params"], restored.state["opt_state"]
        saved = dict(restored.meta)
        if "batch_index" not in saved and steps_per_epoch:  # saved without a data position
            saved["epoch"], saved["batch_index"] = divmod(int(saved["step"]), steps_per_epoch)
        meta.update(saved)
        logging.info("%sresumed from checkpoint step %d (epoch %d, batch %d, %.1f min trained)%s", prefix,
                     meta["step"], meta["epoch"], meta["batch_index"], meta["elapsed_s"] / 60,
                     "; the carried state restarts from zeros" if carry is not None else "")
    else:
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        logging.info("%snew model with %s parameters", prefix, f"{num_params:,}")
        if on_fresh_start is not None:
            params, opt_state = on_fresh_start(params, opt_state)
    _truncate_metrics(metrics_path, int(meta["step"]))

    step, epoch, batch_index = int(meta["step"]), int(meta["epoch"]), int(meta["batch_index"])
    start_step = step
    last_saved = latest if latest is not None else -1
    last_eval: dict[str, float] | None = None
    t0, base_elapsed = time.monotonic(), float(meta["elapsed_s"])

    def elapsed() -> float:
        return base_elapsed + time.monotonic() - t0

    def epoch_value() -> float:
        return round(step / steps_per_epoch, 3) if steps_per_epoch else epoch

    def save() -> None:
        nonlocal last_saved
        if step == last_saved:
            return
        manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                meta=ocp.args.JsonSave({"step": step, "epoch": epoch, "batch_index": batch_index,
                                        "elapsed_s": elapsed()})))
        last_saved = step

    # The current logging window; "pause" holds seconds spent on evaluation and checkpoints, which tokens/s
    # leaves out.
    window = {"t": time.monotonic(), "step": step, "tokens": 0.0, "sums": [], "pause": 0.0, "first": True}

    def log_window(metrics_file) -> None:
        sums = jax.device_get(window["sums"])
        loss = sum(float(s) for s, _ in sums) / max(sum(float(w) for _, w in sums), 1.0)
        now = time.monotonic()
        busy = max(now - window["t"] - window["pause"], 1e-9)
        rate = window["tokens"] / busy
        steps_per_s = (step - window["step"]) / busy
        remaining = []
        if tc.num_steps > 0:
            remaining.append((tc.num_steps - step) / max(steps_per_s, 1e-9))
        if tc.max_minutes > 0:
            remaining.append(60.0 * tc.max_minutes - elapsed())
        eta = max(0.0, min(remaining)) if remaining else None
        table_eta = _table_eta(eta, elapsed() - base_elapsed, after_s)
        ppl = f" (ppl {math.exp(min(loss, 50.0)):.1f})" if perplexity else ""
        logging.info("%sstep %d%s  epoch %s  loss %.4f%s  %.0f %s/s%s  elapsed %s  eta %s%s", prefix, step,
                     f"/{tc.num_steps}" if tc.num_steps > 0 else "", epoch_value(), loss, ppl, rate, unit,
                     " (incl. jit compile)" if window["first"] else "", format_seconds(elapsed()),
                     "?" if eta is None else format_seconds(eta),
                     "" if after_s is None else f"  table eta {'?' if table_eta is None else format_seconds(table_eta)}")
        record = {"step": step, "epoch": epoch_value(), "loss": loss, "tokens_per_s": round(rate, 1),
                  "elapsed_s": round(elapsed(), 1), "eta_s": None if eta is None else round(eta, 1)}
        if after_s is not None:
            record["table_eta_s"] = None if table_eta is None else round(table_eta, 1)
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        window.update(t=now, step=step, tokens=0.0, sums=[], pause=0.0, first=False)

    def run_eval(metrics_file) -> None:
        nonlocal last_eval
        paused = time.monotonic()
        metrics = evaluate(params)
        # Scalars go to the log line; anything else (e.g. lists of per-sentence values) only to metrics.jsonl.
        last_eval = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        extra = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in metrics.items() if k not in last_eval}
        logging.info("%sstep %d  %s", prefix, step, "  ".join(f"{k.replace('_', ' ')} {v:.2f}"
                                                              for k, v in last_eval.items()))
        metrics_file.write(json.dumps({"step": step, **last_eval, **extra, "elapsed_s": round(elapsed(), 1)}) + "\n")
        metrics_file.flush()
        window["pause"] += time.monotonic() - paused

    reason = _stop_reason(step, elapsed(), tc)
    with open(metrics_path, "a", encoding="utf-8") as metrics_file:
        while reason is None:
            if batch_index == 0 and carry is not None:
                carry = _zeros_like(carry)  # an epoch starts without context
            progressed = False
            for batch, tokens in itertools.islice(epoch_batches(epoch), batch_index, None):
                params, opt_state, carry, loss_sum, weight = step_fn(params, opt_state, carry, batch,
                                                                     jax.random.fold_in(rng, step))
                step += 1
                batch_index += 1
                progressed = True
                window["sums"].append((loss_sum, weight))
                window["tokens"] += float(tokens)
                reason = _stop_reason(step, elapsed(), tc)
                if (tc.log_every > 0 and step % tc.log_every == 0) or reason is not None:
                    log_window(metrics_file)
                if evaluate is not None and ((tc.eval_every > 0 and step % tc.eval_every == 0)
                                             or (eval_at_end and reason is not None)):
                    run_eval(metrics_file)
                if tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0:
                    paused = time.monotonic()
                    save()
                    window["pause"] += time.monotonic() - paused
                if reason is not None:
                    break
            else:
                if not progressed and batch_index == 0:
                    raise ValueError(f"epoch {epoch} of the training data has no batch")
                epoch += 1
                batch_index = 0
    save()
    manager.wait_until_finished()
    manager.close()
    minutes = elapsed() / 60.0
    if step > start_step:
        logging.info("%sstopped at step %d after %.1f min: %s", prefix, step, minutes, reason)
    else:
        logging.info("%snothing left to train at step %d: %s", prefix, step, reason)
    return LoopOutcome(params=params, opt_state=opt_state, steps=step, steps_this_run=step - start_step,
                       minutes=minutes, stop_reason=reason or "", epoch=epoch, last_eval=last_eval)
