"""Shared training and evaluation loop of the translation experiments (Luong 2015, Bahdanau 2014).

`run_experiment` trains every requested row of an `Experiment` in its own directory
``workdir/<row>/`` and reports them together:

* Training: Adam with global-norm gradient clipping on the label-masked cross-entropy; one jitted
  step (params and optimiser state donated) per bucket shape, so only a few compiles happen.
  Every ``train.log_every`` steps: step, loss, target tokens/s, elapsed and ETA go to the absl log
  and to ``metrics.jsonl``; every ``train.eval_every`` steps the dev perplexity too. A row stops at
  ``train.num_steps`` or after ``train.max_minutes``, whichever comes first (0 disables either).
* Checkpoints: `orbax.checkpoint.CheckpointManager` in ``workdir/<row>/checkpoints`` with params,
  optimiser state and a JSON part (step, epoch, batch index in the epoch, elapsed seconds), saved
  every ``train.checkpoint_every`` steps and at the end. Re-running the same command restores the
  latest one and continues with the same data order; a killed run loses at most the steps since
  the last checkpoint. A row whose ``done.json`` holds the same config fingerprint is not retrained,
  only re-reported.
* Evaluation (after training): dev and test perplexity, beam-search translations detokenised by
  the SentencePiece tokenizer, sacrebleu BLEU, BLEU by source length, alignment heatmaps.
* Outputs: results.md / results.jsonl (`experiments.results`), loss_curves.png, heatmaps/*.png and,
  when the experiment asks for it, bleu_by_length.png (`experiments.plots`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import platform
import re
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from experiments import configs
from experiments import data
from experiments import evaluation
from experiments import plots
from experiments import results

DEFAULT_CACHE_DIR = os.path.expanduser(configs.DEFAULT_CACHE_DIR)
COMPILATION_CACHE_DIR = os.path.join(DEFAULT_CACHE_DIR, "jax_cache")


class ConfigError(ValueError):
    """A bad flag or config value; the message is one sentence naming the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What `run_experiment` needs to know about one paper's ablation.

    Attributes:
      name: short name ("luong"); also the module run by ``python -m experiments.<name>``.
      title: heading of results.md.
      get_config: returns the base config (see `experiments.configs`).
      presets: preset name -> flat dict of dotted overrides.
      rows: row name -> flat dict of dotted overrides that define the row.
      default_rows: rows run when --rows is not given.
      default_preset: preset used when --preset is not given.
      default_workdir: workdir used when --workdir is not given.
      custom_row: a row name that runs ``config.model`` as given (no row overrides).
      bleu_by_length: whether to plot and tabulate BLEU by source length.
      build_model: (model_config, vocab_size, max_source_len) -> flax module with the `Seq2Seq` call
        interface; None builds an `attention_jax.seq2seq.Seq2Seq`.
      describe_model: row config -> the descriptive columns of a row's record; None gives the
        attention / score / mode columns of the recurrent experiments.
      columns: (header, record key) pairs of results.md's table; None means `results.COLUMNS`.
      validate_model: None (the recurrent models' checks in `experiments.cli.validate`) or a function
        (row config) -> None raising `ConfigError` for a bad model config.
      preset_rows: preset name -> the rows run when --rows is not given with that preset (default:
        ``default_rows``).
      record_extras: None or (model, params, row config) -> extra fields of the row's record (for
        example the heads a pruned model keeps).
      extra_figures: None or (records in table order, workdir) -> paths of further PNG figures.
    """

    name: str
    title: str
    get_config: Callable[[], ml_collections.ConfigDict]
    presets: Mapping[str, Mapping[str, Any]]
    rows: Mapping[str, Mapping[str, Any]]
    default_rows: tuple[str, ...]
    default_preset: str
    default_workdir: str
    custom_row: str = "custom"
    bleu_by_length: bool = False
    build_model: Callable[..., Any] | None = None
    describe_model: Callable[[Any], dict[str, Any]] | None = None
    columns: tuple[tuple[str, str], ...] | None = None
    validate_model: Callable[[ml_collections.ConfigDict], None] | None = None
    preset_rows: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    record_extras: Callable[[Any, Any, ml_collections.ConfigDict], dict[str, Any]] | None = None
    extra_figures: Callable[[Sequence[dict[str, Any]], str], list[str]] | None = None

    def make_model(self, model_config: ml_collections.ConfigDict, vocab_size: int, max_source_len: int):
        """The row's model (see `build_model`)."""
        return (self.build_model or build_model)(model_config, vocab_size, max_source_len)

    def describe(self, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
        """The descriptive columns of a row from its config (see `describe_model`)."""
        return self.describe_model(cfg) if self.describe_model else results.describe_model(cfg.model)

    @property
    def row_names(self) -> tuple[str, ...]:
        return tuple(self.rows) + (self.custom_row,)


# ----------------------------------------------------------------------------------------------
# Configs of rows.
# ----------------------------------------------------------------------------------------------


def row_config(exp: Experiment, config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
    """The config of one row: ``config`` with the row's fields set on top.

    A row that starts from another row's checkpoint (``train.init_from``) trains
    ``train.finetune_steps`` steps instead of ``train.num_steps`` when that field exists and is > 0.

    Raises:
      ConfigError: if ``row`` is not one of ``exp.row_names``.
    """
    if row not in exp.row_names:
        raise ConfigError(f"unknown row {row!r} for the {exp.name} experiment; fix: pass --rows as a comma-separated "
                          f"subset of {', '.join(exp.row_names)}")
    cfg = ml_collections.ConfigDict(config.to_dict())
    configs.apply_overrides(cfg, exp.rows.get(row, {}))
    if cfg.train.get("init_from", "") and cfg.train.get("finetune_steps", 0) > 0:
        cfg.train.num_steps = cfg.train.finetune_steps  # a warm-started row trains only its fine-tuning steps
    return cfg


def fingerprint(flat: Mapping[str, Any]) -> str:
    """A short stable hash of a flat config."""
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_dir_name(row: str) -> str:
    """A file-system-safe directory name for a row."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", row)


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


# ----------------------------------------------------------------------------------------------
# Model and optimiser.
# ----------------------------------------------------------------------------------------------


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, max_source_len: int):
    """The `attention_jax.seq2seq.Seq2Seq` of a row.

    Args:
      model_config: the ``model`` section (Seq2Seq keyword arguments).
      vocab_size: V of the joint SentencePiece vocabulary.
      max_source_len: used when ``model_config.max_source_len`` is 0: the longest padded source
        the model will see (the location score's W_a has that many outputs).

    Raises:
      ValueError: invalid model options (raised by Seq2Seq itself).
    """
    from attention_jax.seq2seq import Seq2Seq  # pylint: disable=import-outside-toplevel

    kwargs = dict(model_config.to_dict())
    if not kwargs.get("max_source_len"):
        kwargs["max_source_len"] = int(max_source_len)
    return Seq2Seq(vocab_size=int(vocab_size), **kwargs)


SCHEDULES = ("constant", "rsqrt_warmup")


def learning_rate(train_config: ml_collections.ConfigDict,
                  model_config: ml_collections.ConfigDict | None = None) -> float | optax.Schedule:
    """The learning rate: ``train.learning_rate``, or with ``train.schedule="rsqrt_warmup"`` the warm-up
    schedule of Vaswani et al. 2017 (arXiv:1706.03762 §5.3, eq. 3) for ``model.d_model`` and
    ``train.warmup_steps``, times ``train.learning_rate``."""
    schedule = train_config.get("schedule", "constant")
    if schedule == "constant":
        return train_config.learning_rate
    if schedule == "rsqrt_warmup":
        from attention_jax.transformer import transformer_schedule  # pylint: disable=import-outside-toplevel

        return transformer_schedule(int(model_config.d_model), int(train_config.warmup_steps),
                                    scale=float(train_config.learning_rate))
    raise ConfigError(f"--config.train.schedule={schedule!r} is not valid; fix: use one of {', '.join(SCHEDULES)}")


def make_optimizer(train_config: ml_collections.ConfigDict,
                   model_config: ml_collections.ConfigDict | None = None) -> optax.GradientTransformation:
    """Adam with global-norm gradient clipping (Luong 2015 §4.1 clips at norm 5).

    Optional fields (the Transformer experiment sets them): ``train.schedule`` (see `learning_rate`),
    ``train.adam_b2`` and ``train.adam_eps`` (0.98 and 1e-9 in arXiv:1706.03762 §5.3), and
    ``train.gate_learning_rate`` (> 0: a separate constant Adam learning rate for the head gates'
    "log_alpha" parameters, which must travel several units while the weights are fine-tuned).
    """
    parts = []
    if train_config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
    adam = functools.partial(optax.adam, b2=train_config.get("adam_b2", 0.999), eps=train_config.get("adam_eps", 1e-8))
    gate_lr = float(train_config.get("gate_learning_rate", 0.0))
    if gate_lr > 0:
        def labels(params):
            return jax.tree_util.tree_map_with_path(
                    lambda path, _: "gates" if "log_alpha" in jax.tree_util.keystr(path) else "weights", params)

        parts.append(optax.multi_transform({"weights": adam(learning_rate(train_config, model_config)),
                                            "gates": adam(gate_lr)}, labels))
    else:
        parts.append(adam(learning_rate(train_config, model_config)))
    return optax.chain(*parts)


def make_train_step(model, optimizer: optax.GradientTransformation,
                    train_config: ml_collections.ConfigDict | None = None) -> Callable:
    """A jitted ``step(params, opt_state, batch, rng) -> (params, opt_state, nll_sum, tokens)``.

    The loss is the mean label-masked cross-entropy per target token, against label-smoothed targets
    when ``train.label_smoothing`` > 0 (arXiv:1706.03762 §5.4), plus ``train.l0_penalty`` times the
    summed expected L0 of the model's head gates when that is > 0 (Voita et al. 2019,
    arXiv:1905.09418, eq. 6; the model sows them as intermediates "l0" and draws gates from the
    "gates" rng). ``nll_sum`` is the unsmoothed NLL, so the logged loss stays a log-perplexity.
    Params and optimiser state are donated, so the update happens in place.
    """
    from attention_jax.transformer import label_smoothed_cross_entropy  # pylint: disable=import-outside-toplevel

    tc = train_config if train_config is not None else ml_collections.ConfigDict()
    smoothing = float(tc.get("label_smoothing", 0.0))
    l0_weight = float(tc.get("l0_penalty", 0.0))

    def loss_fn(params, batch, rng):
        dropout_rng, gates_rng = jax.random.split(rng)
        rngs = {"dropout": dropout_rng, "gates": gates_rng}
        if l0_weight > 0:
            (logits, _), inter = model.apply({"params": params}, batch["src"], batch["src_lengths"], batch["tgt_in"],
                                             train=True, rngs=rngs, mutable=["intermediates"])
            l0 = sum(jnp.sum(x) for x in jax.tree.leaves(inter))
        else:
            logits, _ = model.apply({"params": params}, batch["src"], batch["src_lengths"], batch["tgt_in"],
                                    train=True, rngs=rngs)
            l0 = 0.0
        mask = batch["tgt_mask"].astype(jnp.float32)
        total, count = label_smoothed_cross_entropy(logits, batch["tgt_out"], mask, smoothing=0.0)
        if smoothing > 0:
            smoothed, _ = label_smoothed_cross_entropy(logits, batch["tgt_out"], mask, smoothing=smoothing)
        else:
            smoothed = total
        loss = smoothed / jnp.maximum(count, 1.0) + l0_weight * l0
        return loss, (total, count)

    def step(params, opt_state, batch, rng):
        grads, (total, count) = jax.grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, total, count

    return jax.jit(step, donate_argnums=(0, 1))


def longest_source(dataset, buckets: Sequence[int]) -> int:
    """The longest padded source length of any split (dev/test may exceed the last bucket)."""
    longest = max((len(ex.src_ids) for split in (dataset.train, dataset.dev, dataset.test) for ex in split),
                  default=1)
    return max(int(max(buckets)), data.padded_length(longest, tuple(buckets)))


def init_params(model, rng: jax.Array, buckets: Sequence[int]):
    """Initialises the model parameters on a dummy batch of the smallest bucket shape."""
    length = int(min(buckets))
    src = jnp.full((2, length), evaluation.EOS_ID, jnp.int32)
    lengths = jnp.full((2,), length, jnp.int32)
    variables = jax.jit(functools.partial(model.init, train=False))({"params": rng, "dropout": rng}, src, lengths,
                                                                    src)
    return variables["params"]


# ----------------------------------------------------------------------------------------------
# Training one row.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainOutcome:
    """What `train_row` did: the final params and how the budget was spent."""

    params: Any
    forward: Callable
    steps: int
    steps_this_run: int
    minutes: float
    stop_reason: str
    epoch: int


def _format_seconds(seconds: float) -> str:
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


def _checkpoint_manager(path: str) -> ocp.CheckpointManager:
    # Synchronous saves: the train step donates params, so a save must finish before the next step.
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(path), options=options, item_names=("state", "meta"))


def resolve_init_from(init_from: str, workdir: str) -> str:
    """The row directory named by ``train.init_from``: "@row" is a row of the same workdir, else a path."""
    if init_from.startswith("@"):
        return os.path.join(workdir, row_dir_name(init_from[1:]))
    return os.path.expanduser(init_from)


def warm_start(params: Any, row_dir: str) -> tuple[Any, int]:
    """Copies the parameters of ``row_dir``'s latest checkpoint into ``params`` wherever path and shape match.

    Parameters the checkpoint lacks (e.g. head gates added to a trained model) keep their fresh values.

    Returns:
      (params, number of arrays copied).

    Raises:
      ConfigError: if ``row_dir`` holds no checkpoint or none of its arrays fits.
    """
    path = os.path.join(row_dir, "checkpoints")
    latest = _checkpoint_manager(path).latest_step() if os.path.isdir(path) else None
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


def _stop_reason(step: int, elapsed: float, train_config: ml_collections.ConfigDict) -> str | None:
    if train_config.num_steps > 0 and step >= train_config.num_steps:
        return f"reached train.num_steps={train_config.num_steps}"
    if train_config.max_minutes > 0 and elapsed >= 60.0 * train_config.max_minutes:
        return f"reached train.max_minutes={train_config.max_minutes:g}"
    return None


def train_row(model, cfg: ml_collections.ConfigDict, train_examples: Sequence[Any], dev_examples: Sequence[Any],
              row_dir: str, *, row: str) -> TrainOutcome:
    """Trains (or resumes) one row until its step or time budget is spent.

    Args:
      model: the row's `Seq2Seq`.
      cfg: the row's config.
      train_examples: training `experiments.data.Example` list (already filtered for the row).
      dev_examples: dev examples for the periodic perplexity.
      row_dir: ``workdir/<row>``; holds checkpoints/ and metrics.jsonl.
      row: row name, for the log.

    Returns:
      A `TrainOutcome`.

    Raises:
      ConfigError: if no training batch can be formed.
    """
    tc = cfg.train
    buckets = tuple(int(b) for b in cfg.data.buckets)
    optimizer = make_optimizer(tc, cfg.model)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = init_params(model, init_rng, buckets)
    opt_state = optimizer.init(params)
    metrics_path = os.path.join(row_dir, "metrics.jsonl")
    manager = _checkpoint_manager(os.path.join(row_dir, "checkpoints"))
    meta = {"step": 0, "epoch": 0, "batch_index": 0, "elapsed_s": 0.0}
    latest = manager.latest_step()
    if latest is not None:
        state = {"params": params, "opt_state": opt_state}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                    meta=ocp.args.JsonRestore()))
        params, opt_state = restored.state["params"], restored.state["opt_state"]
        meta.update(restored.meta)
        logging.info("[%s] resumed from checkpoint step %d (epoch %d, batch %d, %.1f min trained)", row,
                     meta["step"], meta["epoch"], meta["batch_index"], meta["elapsed_s"] / 60)
    else:
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        logging.info("[%s] new model with %s parameters; %d training pairs", row, f"{num_params:,}",
                     len(train_examples))
        init_from = cfg.train.get("init_from", "")
        if init_from:
            params, copied = warm_start(params, resolve_init_from(init_from, os.path.dirname(row_dir)))
            opt_state = optimizer.init(params)
            logging.info("[%s] initialised %d of %d parameter arrays from %s", row, copied,
                         len(jax.tree.leaves(params)), init_from)
    _truncate_metrics(metrics_path, meta["step"])

    step, epoch, batch_index = int(meta["step"]), int(meta["epoch"]), int(meta["batch_index"])
    start_step = step
    last_saved = latest if latest is not None else -1
    train_step = make_train_step(model, optimizer, tc)
    forward = evaluation.make_forward(model)
    t0, base_elapsed = time.monotonic(), float(meta["elapsed_s"])

    def elapsed() -> float:
        return base_elapsed + time.monotonic() - t0

    def save() -> None:
        nonlocal last_saved
        if step == last_saved:
            return
        manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                meta=ocp.args.JsonSave({"step": step, "epoch": epoch, "batch_index": batch_index,
                                        "elapsed_s": elapsed()})))
        last_saved = step

    # The current logging window; "pause" holds seconds spent on dev evaluation and checkpoints,
    # which tokens/s leaves out. The first window of a run includes the jit compile.
    window = {"t": time.monotonic(), "step": step, "tokens": 0.0, "sums": [], "pause": 0.0, "first": True}

    def log_window(metrics_file) -> None:
        sums = jax.device_get(window["sums"])
        total = sum(float(s) for s, _ in sums)
        count = sum(float(c) for _, c in sums)
        now = time.monotonic()
        busy = max(now - window["t"] - window["pause"], 1e-9)
        rate = window["tokens"] / busy
        steps_per_s = (step - window["step"]) / busy
        remaining = []
        if tc.num_steps > 0:
            remaining.append((tc.num_steps - step) / max(steps_per_s, 1e-9))
        if tc.max_minutes > 0:
            remaining.append(60.0 * tc.max_minutes - elapsed())
        eta = _format_seconds(min(remaining)) if remaining else "?"
        loss = total / max(count, 1.0)
        logging.info("[%s] step %d%s  loss %.4f  %.0f tok/s%s  elapsed %s  eta %s", row, step,
                     f"/{tc.num_steps}" if tc.num_steps > 0 else "", loss, rate,
                     " (incl. jit compile)" if window["first"] else "", _format_seconds(elapsed()), eta)
        metrics_file.write(json.dumps({"step": step, "loss": loss, "tokens_per_s": rate, "elapsed": elapsed(),
                                       "epoch": epoch}) + "\n")
        metrics_file.flush()
        window.update(t=now, step=step, tokens=0.0, sums=[], pause=0.0, first=False)

    reason = _stop_reason(step, elapsed(), tc)
    with open(metrics_path, "a", encoding="utf-8") as metrics_file:
        while reason is None:
            stream = data.batches(train_examples, tc.batch_size, buckets, shuffle=True, seed=cfg.seed, epoch=epoch)
            progressed = False
            for batch in itertools.islice(stream, batch_index, None):
                rng = jax.random.fold_in(dropout_rng, step)
                params, opt_state, total, count = train_step(params, opt_state, evaluation.model_batch(batch), rng)
                step += 1
                batch_index += 1
                progressed = True
                window["sums"].append((total, count))
                window["tokens"] += float(np.sum(batch["tgt_mask"]))
                if tc.log_every > 0 and step % tc.log_every == 0:
                    log_window(metrics_file)
                if tc.eval_every > 0 and dev_examples and step % tc.eval_every == 0:
                    paused = time.monotonic()
                    dev = evaluation.perplexity(forward, params, dev_examples, batch_size=cfg.eval.batch_size,
                                                buckets=buckets)
                    logging.info("[%s] step %d  dev ppl %.2f", row, step, dev["ppl"])
                    metrics_file.write(json.dumps({"step": step, "dev_loss": dev["nll"], "dev_ppl": dev["ppl"],
                                                   "elapsed": elapsed()}) + "\n")
                    metrics_file.flush()
                    window["pause"] += time.monotonic() - paused
                if tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0:
                    paused = time.monotonic()
                    save()
                    window["pause"] += time.monotonic() - paused
                reason = _stop_reason(step, elapsed(), tc)
                if reason is not None:
                    break
            else:
                if not progressed and batch_index == 0:
                    raise ConfigError(
                            f"row {row!r} has no training batch ({len(train_examples)} training pairs); fix: raise "
                            "--config.data.max_words / --config.data.max_train or the largest of --config.data.buckets")
                epoch += 1
                batch_index = 0
        if window["sums"]:
            log_window(metrics_file)
    save()
    manager.wait_until_finished()
    manager.close()
    minutes = elapsed() / 60.0
    if step > start_step:
        logging.info("[%s] stopped at step %d after %.1f min: %s", row, step, minutes, reason)
    else:
        logging.info("[%s] nothing left to train at step %d: %s", row, step, reason)
    return TrainOutcome(params=params, forward=forward, steps=step, steps_this_run=step - start_step, minutes=minutes,
                        stop_reason=reason or "", epoch=epoch)


# ----------------------------------------------------------------------------------------------
# Evaluating one row.
# ----------------------------------------------------------------------------------------------


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.replace("\n", " ") + "\n")


def evaluate_row(model, params, cfg: ml_collections.ConfigDict, dataset, row_dir: str, heatmap_dir: str, *,
                 row: str, forward: Callable | None = None) -> dict[str, Any]:
    """Dev/test perplexity, BLEU (overall and by source length) and alignment heatmaps of one row.

    ``forward`` (from `evaluation.make_forward`) may be passed to reuse its compiled shapes.

    Returns:
      A dict with dev_ppl, test_ppl, dev_bleu (None when eval.dev_bleu is off), test_bleu,
      bleu_by_length and heatmaps (PNG paths).
    """
    ec = cfg.eval
    buckets = tuple(int(b) for b in cfg.data.buckets)
    tokenizer = dataset.tokenizer
    forward = forward or evaluation.make_forward(model)
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    for split in ("dev", "test"):
        examples = getattr(dataset, split)
        out[f"{split}_ppl"] = evaluation.perplexity(forward, params, examples, batch_size=ec.batch_size,
                                                    buckets=buckets)["ppl"] if examples else None
    decoder = evaluation.make_decoder(model, beam_size=ec.beam_size, length_penalty=ec.length_penalty)
    max_len_fn = functools.partial(evaluation.decode_len, ratio=ec.decode_len_ratio, extra=ec.decode_len_extra,
                                   max_len=ec.max_decode_len)
    test_ids: list[list[int]] = []
    for split in ("dev", "test"):
        examples = getattr(dataset, split)
        if not examples or (split == "dev" and not ec.dev_bleu):
            out[f"{split}_bleu"] = None
            continue
        ids = evaluation.translate(decoder, params, examples, batch_size=ec.batch_size, buckets=buckets,
                                   max_len_fn=max_len_fn)
        hyps = [tokenizer.decode(x) for x in ids]
        refs = [ex.tgt_text for ex in examples]
        out[f"{split}_bleu"] = evaluation.corpus_bleu(hyps, refs)
        _write_lines(os.path.join(row_dir, f"{split}_translations.txt"), hyps)
        if split == "test":
            test_ids = ids
            words = [len(ex.src_text.split()) for ex in examples]
            out["bleu_by_length"] = evaluation.bleu_by_length(hyps, refs, words, tuple(ec.length_bins))
    out["heatmaps"] = []
    if cfg.model.get("attention", "") != "none" and test_ids and ec.num_heatmaps > 0:
        indices = evaluation.pick_heatmap_examples(dataset.test, ec.num_heatmaps, ec.heatmap_max_tokens)
        aligned = evaluation.alignments(forward, params, dataset.test, test_ids, tokenizer, indices=indices,
                                        batch_size=ec.batch_size, buckets=buckets)
        for al in aligned:
            src_text = dataset.test[al.index].src_text
            title = f"{row}: test sentence {al.index}\n{src_text[:90]}{'...' if len(src_text) > 90 else ''}"
            path = os.path.join(heatmap_dir, f"{row_dir_name(row)}_test{al.index}.png")
            plots.attention_heatmap(al.weights, al.source, al.target, path, title=title)
            out["heatmaps"].append(path)
    logging.info("[%s] evaluated in %.1f s: dev ppl %s, test ppl %s, dev BLEU %s, test BLEU %s", row,
                 time.monotonic() - t0, _fmt(out["dev_ppl"]), _fmt(out["test_ppl"]), _fmt(out["dev_bleu"]),
                 _fmt(out["test_bleu"]))
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


# ----------------------------------------------------------------------------------------------
# The whole experiment.
# ----------------------------------------------------------------------------------------------


def _done_record(row_dir: str, fp: str) -> dict[str, Any] | None:
    path = os.path.join(row_dir, "done.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return done.get("record") if done.get("fingerprint") == fp else None


def check_resumable(exp: Experiment, row: str, flat: Mapping[str, Any], row_dir: str) -> None:
    """Refuses to resume a checkpoint trained with different model / data / optimiser settings.

    Raises:
      ConfigError: naming the changed fields and the fix.
    """
    saved_path = os.path.join(row_dir, "row_config.json")
    ckpt_dir = os.path.join(row_dir, "checkpoints")
    if not os.path.exists(saved_path) or not os.path.isdir(ckpt_dir) or not os.listdir(ckpt_dir):
        return
    with open(saved_path, encoding="utf-8") as f:
        saved = json.load(f)
    changed = sorted(k for k in set(saved) | set(flat)
                     if not configs.is_resumable_field(k) and saved.get(k) != flat.get(k))
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {flat.get(k)!r})" for k in changed[:4])
        raise ConfigError(f"{row_dir} holds a checkpoint of row {row!r} trained with a different config [{shown}]; "
                          f"fix: pass a new --workdir or delete {row_dir} to retrain that row")


def filter_train(examples: Sequence[Any], max_source_words: int) -> list[Any]:
    """Training pairs whose source has at most ``max_source_words`` words (0 keeps all)."""
    if max_source_words <= 0:
        return list(examples)
    return [ex for ex in examples if len(ex.src_text.split()) <= max_source_words]


def run_experiment(exp: Experiment, config: ml_collections.ConfigDict, rows: Sequence[str], workdir: str, *,
                   preset: str = "", command: str = "", dataset=None,
                   cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Trains, evaluates and reports every requested row; returns the records of the table.

    Args:
      exp: the experiment.
      config: the config after preset and overrides (rows add their own fields).
      rows: row names to run, in any order (the table follows ``exp.row_names``).
      workdir: output directory (created).
      preset: preset name, for config.json and results.md.
      command: the command line, for command.txt and results.md.
      dataset: an `experiments.data.Dataset` to use instead of ``data.prepare(config.data)``
        (tests pass a tiny one).
      cache_dir: where `experiments.data.prepare` caches tokenizers (None: its default,
        ``<data.data_dir>/tokenizers``).

    Returns:
      The result records in table order (rows finished earlier in this workdir with the same
      config are included).

    Raises:
      ConfigError: unknown rows, a checkpoint from another config, no training data.
      experiments.data.DataError: the corpus cannot be obtained or read.
    """
    quiet_orbax_logging()
    started = time.monotonic()
    os.makedirs(workdir, exist_ok=True)
    row_cfgs = {row: row_config(exp, config, row) for row in rows}
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"experiment": exp.name, "preset": preset, "rows": list(rows), "config": config.to_dict(),
                   "row_configs": {r: c.to_dict() for r, c in row_cfgs.items()}}, f, indent=2, sort_keys=True,
                  default=list)
    if command:
        with open(os.path.join(workdir, "command.txt"), "w", encoding="utf-8") as f:
            f.write(command + "\n")
    heatmap_dir = os.path.join(workdir, "heatmaps")

    flats = {row: configs.flatten(cfg) for row, cfg in row_cfgs.items()}
    fps = {row: fingerprint(flat) for row, flat in flats.items()}
    todo = []
    for row in rows:
        row_dir = os.path.join(workdir, row_dir_name(row))
        if _done_record(row_dir, fps[row]) is None:
            check_resumable(exp, row, flats[row], row_dir)
            todo.append(row)
    if todo and dataset is None:
        t0 = time.monotonic()
        dataset = data.prepare(config.data, cache_dir)
        logging.info("data %s: %d train / %d dev / %d test pairs, vocabulary %d (%.1f s)", corpus_label(config.data),
                     len(dataset.train), len(dataset.dev), len(dataset.test), dataset.tokenizer.vocab_size,
                     time.monotonic() - t0)

    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        row_dir = os.path.join(workdir, row_dir_name(row))
        cfg, fp = row_cfgs[row], fps[row]
        done = _done_record(row_dir, fp)
        if done is not None:
            logging.info("[%s] already finished with this config (%s); re-reporting it", row,
                         os.path.join(row_dir, "done.json"))
            records[row] = done
            continue
        os.makedirs(row_dir, exist_ok=True)
        with open(os.path.join(row_dir, "row_config.json"), "w", encoding="utf-8") as f:
            json.dump(flats[row], f, indent=2, sort_keys=True)
        train_examples = filter_train(dataset.train, cfg.train.max_source_words)
        model = exp.make_model(cfg.model, dataset.tokenizer.vocab_size, longest_source(dataset, cfg.data.buckets))
        logging.info("[%s] training: %s", row, ", ".join(f"{k}={v}" for k, v in exp.rows.get(row, {}).items()))
        outcome = train_row(model, cfg, train_examples, dataset.dev, row_dir, row=row)
        scores = evaluate_row(model, outcome.params, cfg, dataset, row_dir, heatmap_dir, row=row,
                              forward=outcome.forward)
        record = {"row": row, **exp.describe(cfg),
                  "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)), "dev_ppl": scores["dev_ppl"],
                  "test_ppl": scores["test_ppl"], "dev_bleu": scores["dev_bleu"], "test_bleu": scores["test_bleu"],
                  "steps": outcome.steps, "train_minutes": round(outcome.minutes, 2),
                  "stop_reason": outcome.stop_reason, "epochs": outcome.epoch,
                  "train_pairs": len(train_examples), "max_source_words": cfg.train.max_source_words,
                  "bleu_by_length": scores.get("bleu_by_length"),
                  "heatmaps": [os.path.relpath(p, workdir) for p in scores["heatmaps"]],
                  "seed": cfg.seed, "machine": machine_description(), "fingerprint": fp}
        if exp.record_extras is not None:
            record.update(exp.record_extras(model, outcome.params, cfg))
        with open(os.path.join(row_dir, "done.json"), "w", encoding="utf-8") as f:
            json.dump({"fingerprint": fp, "record": record}, f, indent=2, sort_keys=True)
        records[row] = record
        report(exp, config, workdir, rows, records, preset=preset, command=command, started=started)
    return report(exp, config, workdir, rows, records, preset=preset, command=command, final=True, started=started)


def corpus_label(data_config: ml_collections.ConfigDict) -> str:
    """The corpus name, or the user's --data_path when one replaces it."""
    return f"--data_path={data_config.data_path}" if data_config.data_path else data_config.corpus


def machine_description() -> str:
    """One line naming the machine a result came from: host OS, CPU count, jax version and device."""
    device = jax.devices()[0]
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
            f"on {device.platform} ({getattr(device, 'device_kind', device.platform)})")


def report(exp: Experiment, config: ml_collections.ConfigDict, workdir: str, rows: Sequence[str],
           records: Mapping[str, dict[str, Any]], *, preset: str, command: str,
           final: bool = False, started: float | None = None) -> list[dict[str, Any]]:
    """Writes results.md / results.jsonl and the figures from the records and metrics files.

    Rows of this experiment that are not in ``rows`` but finished earlier in ``workdir`` with the
    config they would get now are added, so running rows one at a time builds one table.
    """
    table = []
    for row in exp.row_names:
        if row in records:
            table.append(records[row])
        elif row not in rows and row != exp.custom_row:
            other = row_config(exp, config, row)
            done = _done_record(os.path.join(workdir, row_dir_name(row)), fingerprint(configs.flatten(other)))
            if done is not None:
                table.append(done)
    metrics = {rec["row"]: results.read_jsonl(os.path.join(workdir, row_dir_name(rec["row"]), "metrics.jsonl"))
               for rec in table}
    figures = [plots.loss_curves(metrics, os.path.join(workdir, "loss_curves.png"), title=exp.title)]
    if exp.bleu_by_length:
        buckets = {rec["row"]: rec["bleu_by_length"] for rec in table if rec.get("bleu_by_length")}
        if buckets:
            figures.append(plots.bleu_by_length(buckets, os.path.join(workdir, "bleu_by_length.png"),
                                                title=f"{exp.name}: test BLEU by source sentence length"))
    if exp.extra_figures is not None and table:
        figures.extend(exp.extra_figures(table, workdir))
    for rec in table:
        figures.extend(os.path.join(workdir, p) for p in rec.get("heatmaps", [])[:2])
    notes = [f"preset: {preset or '-'}; corpus: {corpus_label(config.data)}; vocabulary: {config.data.vocab_size}",
             "perplexity per target token (EOS included); BLEU: sacrebleu corpus BLEU on detokenised output, beam "
             f"{config.eval.beam_size}",
             "stop reasons: " + "; ".join(f"{r['row']}: {r.get('stop_reason', '?')}" for r in table),
             f"seed: {config.seed}; machine: {machine_description()}"]
    if started is not None:
        notes.append(f"wall time of this invocation (data, compiles, training, evaluation, figures): "
                     f"{(time.monotonic() - started) / 60:.1f} min")
    text = results.write(workdir, table, title=exp.title, command=command, notes=notes,
                         figures=[os.path.relpath(p, workdir) for p in figures], length_table=exp.bleu_by_length,
                         columns=exp.columns)
    if final:
        print(text, flush=True)
    return table
