"""The translation experiments (Luong 2015, Bahdanau 2014, Vaswani 2017, Voita 2019): train, evaluate, report.

`run_experiment` trains every requested row of an `Experiment` once per seed (``config.seeds``), each (row, seed)
run in its own directory ``workdir/<row>/seed_<seed>/``, and reports them together:

* Training (`train_row`): Adam with global-norm gradient clipping (`experiments.training.optim`) on the
  label-masked cross-entropy; one jitted step (params and optimiser state donated) per bucket shape, so only a
  few compiles happen. The shared loop (`experiments.training.loop.train_loop`) logs step, loss, target
  tokens/s, elapsed, the run's ETA and the whole table's every ``train.log_every`` steps and the dev perplexity
  every ``train.eval_every`` steps, checkpoints with orbax every ``train.checkpoint_every`` steps and resumes
  from the latest checkpoint with the same data order; a run stops at ``train.num_steps`` or after
  ``train.max_minutes``. A run whose ``done.json`` holds the same config fingerprint (seed included; the
  report-only fields `experiments.configs.REPORT_FIELDS` left out) is not retrained, only re-reported, so
  adding seeds trains only the new ones. After each run the log gives "table: k/n runs done" with the ETA.
* Evaluation (`evaluate_row`, after training): dev and test perplexity, beam-search translations detokenised by
  the SentencePiece tokenizer, sacrebleu BLEU and chrF, BLEU by source length, alignment heatmaps.
* Outputs (`experiments.training.report`): results.md / results.jsonl / claims.jsonl (with the paired
  significance tests of `experiments.stats`), loss_curves.png, heatmaps/*.png and, when the experiment asks for
  it, bleu_by_length.png; ``test_references.txt`` and ``data.json`` (the dataset's ``info``, tokenizer path
  included) so that outputs can be re-scored and a finished run loaded later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import data
from experiments import evaluation
from experiments import plots
from experiments.training import distributed
from experiments.training import loop
from experiments.training import optim
from experiments.training import report
from experiments.training import spec


def make_loss_fn(model, train_config: ml_collections.ConfigDict | None = None) -> Callable:
    """``loss_fn(params, batch, rng) -> (loss, (nll_sum, tokens))`` of `make_train_step` (see there)."""
    from attention_jax.models.transformer import label_smoothed_cross_entropy  # pylint: disable=import-outside-toplevel

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

    return loss_fn


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
    loss_fn = make_loss_fn(model, train_config)

    def step(params, opt_state, batch, rng):
        grads, (total, count) = jax.grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, total, count

    return jax.jit(step, donate_argnums=(0, 1))


def make_sharded_train_step(model, optimizer: optax.GradientTransformation, train_config: ml_collections.ConfigDict,
                            mesh: jax.sharding.Mesh, rules: tuple, abstract_params: Any) -> Callable:
    """`make_train_step` on a mesh: the same ``step(params, opt_state, batch, rng) -> (params, opt_state, nll_sum,
    tokens)`` built by `attention_jax.sharding.make_train_step`, its shardings taken from the parameters' logical
    axis names (`abstract_params`, boxed) and the batch split over data/fsdp (its length over seq). The sharded
    step computes the same loss as the single-device one (`experiments/training/distributed.py`)."""
    from attention_jax import sharding  # pylint: disable=import-outside-toplevel

    base = make_loss_fn(model, train_config)

    def loss_fn(params, batch, rng):
        loss, (total, count) = base(params, batch, rng)
        return loss, {"total": total, "count": count}

    train_step = sharding.make_train_step(loss_fn, optimizer, mesh, rules, abstract_params, donate=True)

    def step(params, opt_state, batch, rng):
        params, opt_state, metrics = train_step(params, opt_state, batch, rng)
        return params, opt_state, metrics["total"], metrics["count"]

    step.init_opt_state = train_step.init_opt_state  # type: ignore[attr-defined]
    return step


def _num_kv_heads(model) -> int | None:
    """K of a model with attention heads (None for the recurrent models): the tensor-parallel rules need it."""
    return getattr(model, "num_kv_heads", None) or getattr(model, "num_heads", None)


def longest_source(dataset, buckets: Sequence[int]) -> int:
    """The longest padded source length of any split (dev/test may exceed the last bucket)."""
    longest = max((len(ex.src_ids) for split in (dataset.train, dataset.dev, dataset.test) for ex in split),
                  default=1)
    return max(int(max(buckets)), data.padded_length(longest, tuple(buckets)))


def _dummy_batch(buckets: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    length = int(min(buckets))
    return jnp.full((2, length), evaluation.EOS_ID, jnp.int32), jnp.full((2,), length, jnp.int32)


def init_params(model, rng: jax.Array, buckets: Sequence[int]):
    """Initialises the model parameters on a dummy batch of the smallest bucket shape."""
    src, lengths = _dummy_batch(buckets)
    variables = jax.jit(functools.partial(model.init, train=False))({"params": rng, "dropout": rng}, src, lengths,
                                                                    src)
    return nn.unbox(variables["params"])  # plain arrays: the models box them with logical axis names


def init_sharded_params(model, rng: jax.Array, buckets: Sequence[int], mesh: jax.sharding.Mesh, rules: tuple):
    """(params created sharded on the mesh, their boxed abstract tree): the values of `init_params`."""
    src, lengths = _dummy_batch(buckets)
    return distributed.sharded_params(model, mesh, rules, {"params": rng, "dropout": rng}, src, lengths, src,
                                      train=False)


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


def filter_train(examples: Sequence[Any], max_source_words: int) -> list[Any]:
    """Training pairs whose source has at most ``max_source_words`` words (0 keeps all)."""
    if max_source_words <= 0:
        return list(examples)
    return [ex for ex in examples if len(ex.src_text.split()) <= max_source_words]


def train_row(model, cfg: ml_collections.ConfigDict, train_examples: Sequence[Any], dev_examples: Sequence[Any],
              row_dir: str, *, row: str, workdir: str | None = None,
              after_s: float | Callable[[float], float | None] | None = None,
              dev_metrics: Callable[..., dict[str, Any]] | None = None) -> TrainOutcome:
    """Trains (or resumes) one (row, seed) run until its step or time budget is spent.

    Args:
      model: the row's `Seq2Seq`.
      cfg: the run's config (``cfg.seed`` seeds the initialisation, dropout and data order).
      train_examples: training `experiments.data.Example` list (already filtered for the row).
      dev_examples: dev examples for the periodic perplexity.
      row_dir: the run's directory (``workdir/<row>/seed_<seed>``); holds checkpoints/ and metrics.jsonl.
      row: row name, for the log.
      workdir: the experiment directory, where ``train.init_from="@row"`` looks for that row's run of the same
        seed (default: two levels above ``row_dir``).
      after_s: the seconds the runs queued after this one will take (see `loop.train_loop`), for the table ETA.
      dev_metrics: None, or (model, params, cfg, dev_examples) -> further metrics of each dev evaluation
        (`spec.Experiment.dev_metrics`), written to metrics.jsonl beside the dev perplexity.

    Returns:
      A `TrainOutcome`.

    Raises:
      ConfigError: if no training batch can be formed.
    """
    tc = cfg.train
    buckets = tuple(int(b) for b in cfg.data.buckets)
    optimizer = optim.make_optimizer(tc, cfg.model)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    mesh = distributed.mesh_from_config(cfg)
    if mesh is None:
        params = init_params(model, init_rng, buckets)
        train_step = make_train_step(model, optimizer, tc)
        opt_state = optimizer.init(params)
    else:
        rules = distributed.rules_for(mesh, _num_kv_heads(model))
        params, abstract = init_sharded_params(model, init_rng, buckets, mesh, rules)
        train_step = make_sharded_train_step(model, optimizer, tc, mesh, rules, abstract)
        opt_state = train_step.init_opt_state(params)
    forward = evaluation.make_forward(model)
    logging.info("[%s] %d training pairs on %s", row, len(train_examples), distributed.describe(mesh))

    def step_fn(params, opt_state, carry, batch, rng):
        params, opt_state, total, count = train_step(params, opt_state, evaluation.model_batch(batch), rng)
        return params, opt_state, carry, total, count

    def epoch_batches(epoch: int):
        if not train_examples:
            raise spec.ConfigError(f"row {row!r} has no training batch ({len(train_examples)} training pairs); fix: "
                                   "raise --config.data.max_words / --config.data.max_train or the largest of "
                                   "--config.data.buckets")
        for batch in data.batches(train_examples, tc.batch_size, buckets, shuffle=True, seed=cfg.seed, epoch=epoch):
            yield batch, float(np.sum(batch["tgt_mask"]))

    def dev_perplexity(params) -> dict[str, float]:
        dev = evaluation.perplexity(forward, params, dev_examples, batch_size=cfg.eval.batch_size, buckets=buckets)
        out = {"dev_loss": dev["nll"], "dev_ppl": dev["ppl"]}
        if dev_metrics is not None:
            out.update(dev_metrics(model, params, cfg, dev_examples))
        return out

    def warm_start(params, opt_state):
        init_from = tc.get("init_from", "")
        if not init_from:
            return params, opt_state
        base = workdir if workdir is not None else os.path.dirname(os.path.dirname(os.path.abspath(row_dir)))
        params, copied = loop.warm_start(params, spec.resolve_init_from(init_from, base, cfg.seed))
        logging.info("[%s] initialised %d of %d parameter arrays from %s", row, copied, len(jax.tree.leaves(params)),
                     init_from)
        return params, (optimizer.init(params) if mesh is None else train_step.init_opt_state(params))

    outcome = loop.train_loop(step_fn, params, opt_state, epoch_batches, train_config=tc,
                              run_dir=row_dir, rng=dropout_rng, evaluate=dev_perplexity if dev_examples else None,
                              on_fresh_start=warm_start, label=row, after_s=after_s)
    return TrainOutcome(params=outcome.params, forward=forward, steps=outcome.steps,
                        steps_this_run=outcome.steps_this_run, minutes=outcome.minutes,
                        stop_reason=outcome.stop_reason, epoch=outcome.epoch)


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.replace("\n", " ") + "\n")


def evaluate_row(model, params, cfg: ml_collections.ConfigDict, dataset, row_dir: str, heatmap_dir: str, *,
                 row: str, forward: Callable | None = None) -> dict[str, Any]:
    """Dev/test perplexity, BLEU (overall and by source length) and alignment heatmaps of one row.

    ``forward`` (from `evaluation.make_forward`) may be passed to reuse its compiled shapes.

    Returns:
      A dict with dev_ppl, test_ppl, dev_bleu (None when eval.dev_bleu is off), test_bleu, test_chrf,
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
            out[f"{split}_bleu"] = out[f"{split}_chrf"] = None
            continue
        ids = evaluation.translate(decoder, params, examples, batch_size=ec.batch_size, buckets=buckets,
                                   max_len_fn=max_len_fn)
        hyps = [tokenizer.decode(x) for x in ids]
        refs = [ex.tgt_text for ex in examples]
        out[f"{split}_bleu"] = evaluation.corpus_bleu(hyps, refs)
        out[f"{split}_chrf"] = evaluation.corpus_chrf(hyps, refs)
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
            path = os.path.join(heatmap_dir, f"{spec.row_dir_name(row)}_test{al.index}.png")
            plots.attention_heatmap(al.weights, al.source, al.target, path, title=title)
            out["heatmaps"].append(path)
    logging.info("[%s] evaluated in %.1f s: dev ppl %s, test ppl %s, dev BLEU %s, test BLEU %s, test chrF %s", row,
                 time.monotonic() - t0, _fmt(out["dev_ppl"]), _fmt(out["test_ppl"]), _fmt(out["dev_bleu"]),
                 _fmt(out["test_bleu"]), _fmt(out["test_chrf"]))
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _log_table_progress(done: int, total: int, durations: Sequence[float], elapsed: float,
                        processes: int = 1) -> None:
    """"table: k/n runs done, elapsed, ETA" (the ETA: the mean seconds of the runs finished in this process,
    training and evaluation, times the runs left, shared among ``processes`` workers)."""
    left = total - done
    eta = (sum(durations) / len(durations)) * -(-left // processes) if durations else None
    logging.info("table: %d/%d runs done, elapsed %s, ETA %s", done, total, loop.format_seconds(elapsed),
                 "-" if eta is None else loop.format_seconds(eta))


def _run_workers(count: int, command: Sequence[str]) -> None:
    """Starts ``count`` worker processes (``command --worker=i/count``) and waits for all of them.

    Their logs go to this process's stdout and stderr, each line prefixed by its run's label. On Ctrl-C every
    worker is stopped (a rerun resumes each run from its checkpoints).

    Raises:
      ConfigError: if ``command`` is empty, or a worker fails (naming it and its exit code).
    """
    import subprocess  # pylint: disable=import-outside-toplevel

    if not command:
        raise spec.ConfigError("jobs > 1 needs the worker command line; fix: run through the experiment's command "
                               "(python -m experiments.<name> --jobs=N)")
    logging.info("training with %d worker processes: %s --worker=i/%d", count, " ".join(command), count)
    procs = [subprocess.Popen([*command, f"--worker={i}/{count}"]) for i in range(count)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        i, code = failed[0]
        raise spec.ConfigError(f"worker {i + 1} of {count} stopped with exit code {code} (its error is in the log "
                               "above); fix: correct that and rerun the same command, which resumes every run from "
                               "its checkpoints")


def _count_finished(workdir: str, runs: Sequence[tuple[str, int]], fps: dict) -> int:
    """How many of ``runs`` ((row, seed) pairs) have a done record with their fingerprint, by any process."""
    return sum(spec.done_record(spec.run_dir(workdir, row, seed), fps[(row, seed)]) is not None
               for row, seed in runs)


def _claim_run(run_dir: str):
    """Takes the exclusive lock of one run for a worker process; returns the open lock file, or None if taken.

    The lock is ``run_dir/.worker.lock`` under ``fcntl.flock``: closing the file (or the process ending, even
    by a crash) releases it, so a stale lock never blocks a rerun.
    """
    import fcntl  # pylint: disable=import-outside-toplevel

    os.makedirs(run_dir, exist_ok=True)
    lock = open(os.path.join(run_dir, ".worker.lock"), "w", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def _write_data_files(workdir: str, dataset) -> None:
    """test_references.txt (one line per test sentence, to re-score outputs) and data.json (the dataset's info:
    source, counts, tokenizer path)."""
    _write_lines(os.path.join(workdir, report.REFERENCES_FILE), [ex.tgt_text for ex in dataset.test])
    with open(os.path.join(workdir, "data.json"), "w", encoding="utf-8") as f:
        json.dump(dict(getattr(dataset, "info", {}) or {}), f, indent=2, sort_keys=True, default=str)


def run_experiment(exp: spec.Experiment, config: ml_collections.ConfigDict, rows: Sequence[str], workdir: str, *,
                   preset: str = "", command: str = "", dataset=None,
                   cache_dir: str | None = None, jobs: int = 1, worker_command: Sequence[str] = (),
                   worker: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Trains, evaluates and reports every requested row once per seed; returns the records of the table.

    Args:
      exp: the experiment.
      config: the config after preset and overrides (rows add their own fields; ``config.seeds`` picks the
        seeds, see `spec.parse_seeds`).
      rows: row names to run, in any order (the table follows ``exp.row_names``).
      workdir: output directory (created).
      preset: preset name, for config.json and results.md.
      command: the command line, for command.txt, results.md and claims.jsonl.
      dataset: an `experiments.data.Dataset` to use instead of ``data.prepare(config.data)``
        (tests pass a tiny one).
      cache_dir: where `experiments.data.prepare` caches tokenizers (None: its default,
        ``<data.data_dir>/tokenizers``, or ``<workdir>/tokenizers`` for a --data_path run).
      jobs: how many (row, seed) runs train at once, each in its own process (``worker_command`` plus
        ``--worker=i/n``): XLA:CPU keeps one recurrent model's small, sequential steps on about one core, so
        two processes on the 2-core machine train about 1.4x as many steps per second as one (measured in
        WORKSPACE.md). Each run trains exactly as it would alone (same config, seed, data order); only its wall
        time is shared. 1 trains in this process.
      worker_command: the command line of a worker (required when jobs > 1).
      worker: (i, n) in a worker process: take the runs left to train one at a time, in table order, each under
        an exclusive lock on its run directory (``_claim_run``), so a worker that finishes early takes the next
        free run instead of idling while another works through a fixed share; write no report, and return []
        (the parent reports once every worker has finished).

    Returns:
      One record per (row, seed) in table order (row, then seed), with its statistics; runs finished earlier
      in this workdir with the same config are included.

    Raises:
      ConfigError: unknown rows, bad seeds or significance fields, a checkpoint from another config, no
        training data.
      experiments.data.DataError: the corpus cannot be obtained or read.
    """
    seeds = spec.check_report_config(exp, config)
    loop.quiet_orbax_logging()
    started = time.monotonic()
    run_cfgs = {(row, seed): spec.run_config(exp, config, row, seed) for seed in seeds for row in rows}
    os.makedirs(workdir, exist_ok=True)
    if worker is None:  # a worker leaves the parent's record of the invocation alone
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump({"experiment": exp.name, "preset": preset, "rows": list(rows), "seeds": list(seeds),
                       "config": config.to_dict(),
                       "row_configs": {r: spec.row_config(exp, config, r).to_dict() for r in rows}}, f, indent=2,
                      sort_keys=True, default=list)
        if command:
            with open(os.path.join(workdir, "command.txt"), "w", encoding="utf-8") as f:
                f.write(command + "\n")
    heatmap_dir = os.path.join(workdir, "heatmaps")

    # Seed-major order: every row's first seed comes first, so a partial table is a complete one-seed table,
    # and a row that starts from another row (train.init_from="@row") finds that row's run of its seed done.
    order = [(row, seed) for seed in seeds for row in rows]
    flats = {key: spec.run_flat(cfg) for key, cfg in run_cfgs.items()}
    fps = {key: spec.fingerprint(flat) for key, flat in flats.items()}
    todo = []
    for row, seed in order:
        run_dir = spec.run_dir(workdir, row, seed)
        if spec.done_record(run_dir, fps[(row, seed)]) is None:
            spec.check_resumable(exp, row, flats[(row, seed)], run_dir)
            todo.append((row, seed))
    if todo and dataset is None:
        t0 = time.monotonic()
        if not cache_dir and config.data.data_path:  # a tokenizer of the user's own text stays beside the run
            cache_dir = os.path.join(workdir, "tokenizers")
        dataset = data.prepare(config.data, cache_dir)
        logging.info("tokenizer: %s", dataset.tokenizer.path)
        logging.info("data %s: %d train / %d dev / %d test pairs, vocabulary %d (%.1f s)",
                     report.corpus_label(config.data), len(dataset.train), len(dataset.dev), len(dataset.test),
                     dataset.tokenizer.vocab_size, time.monotonic() - t0)
    if dataset is not None and worker is None:
        _write_data_files(workdir, dataset)
    if todo:
        logging.info("table: %d runs (%d rows x %d seeds), %d to train%s", len(order), len(rows), len(seeds),
                     len(todo), "" if worker is None else f"; worker {worker[0] + 1} of {worker[1]} takes the "
                     "next free one")
    if worker is not None:
        order = list(todo)
    elif jobs > 1 and len(todo) > 1:
        _run_workers(min(jobs, len(todo)), worker_command)
        # Normally every run is finished now and the loop below only collects the records.
        todo = [(row, seed) for row, seed in todo
                if spec.done_record(spec.run_dir(workdir, row, seed), fps[(row, seed)]) is None]

    records: dict[tuple[str, int], dict[str, Any]] = {}
    durations: list[float] = []
    trained = 0
    processes = 1 if worker is None else worker[1]  # the processes that share the runs left
    claim = None  # a worker's lock on the run it is training
    for row, seed in order:
        if claim is not None:
            claim.close()  # releases the lock of the previous run
            claim = None
        run_dir = spec.run_dir(workdir, row, seed)
        cfg, fp = run_cfgs[(row, seed)], fps[(row, seed)]
        label = row if len(seeds) == 1 else f"{row} seed {seed}"
        if worker is not None:
            claim = _claim_run(run_dir)
            if claim is None:  # another worker is training it
                continue
        done = spec.done_record(run_dir, fp)
        if done is not None:
            if worker is None:  # (in a worker: another one finished it before this one looked)
                logging.info("[%s] already finished with this config (%s); re-reporting it", label,
                             os.path.join(run_dir, "done.json"))
                records[(row, seed)] = done
            continue
        run_started = time.monotonic()
        finished = trained if worker is None else _count_finished(workdir, todo, fps)
        left = -(-(len(todo) - finished - 1) // processes)  # runs after this one that this process will train
        after_s = ((sum(durations) / len(durations)) * left if durations
                   else (lambda total, left=left: total * left))
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "row_config.json"), "w", encoding="utf-8") as f:
            json.dump(flats[(row, seed)], f, indent=2, sort_keys=True)
        train_examples = filter_train(dataset.train, cfg.train.max_source_words)
        model = exp.make_model(cfg.model, dataset.tokenizer.vocab_size, longest_source(dataset, cfg.data.buckets))
        logging.info("[%s] training: %s", label, ", ".join([f"seed={seed}"] + [f"{k}={v}" for k, v in
                                                                                 exp.rows.get(row, {}).items()]))
        mesh = distributed.mesh_from_config(cfg)
        # The mesh and rules are the ambient context of training AND evaluation, so attention backends that
        # need a mesh ("ring", "ulysses") and the models' logical constraints see it everywhere.
        with distributed.activate(mesh, distributed.rules_for(mesh, _num_kv_heads(model))):
            outcome = train_row(model, cfg, train_examples, dataset.dev, run_dir, row=label, workdir=workdir,
                                after_s=after_s, dev_metrics=exp.dev_metrics)
            scores = evaluate_row(model, outcome.params, cfg, dataset, run_dir, heatmap_dir,
                                  row=row if len(seeds) == 1 else f"{row}_seed{seed}", forward=outcome.forward)
        record = {"row": row, "seed": seed, **exp.describe(cfg),
                  "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)),
                  "dev_ppl": scores["dev_ppl"], "test_ppl": scores["test_ppl"], "dev_bleu": scores["dev_bleu"],
                  "test_bleu": scores["test_bleu"], "test_chrf": scores["test_chrf"],
                  "steps": outcome.steps, "train_minutes": round(outcome.minutes, 2),
                  "stop_reason": outcome.stop_reason, "epochs": outcome.epoch,
                  "train_pairs": len(train_examples), "max_source_words": cfg.train.max_source_words,
                  "bleu_by_length": scores.get("bleu_by_length"),
                  "heatmaps": [os.path.relpath(p, workdir) for p in scores["heatmaps"]],
                  "machine": report.machine_description(), "fingerprint": fp}
        if exp.record_extras is not None:
            record.update(exp.record_extras(model, outcome.params, cfg))
        with open(os.path.join(run_dir, "done.json"), "w", encoding="utf-8") as f:
            json.dump({"fingerprint": fp, "record": record}, f, indent=2, sort_keys=True)
        records[(row, seed)] = record
        trained += 1
        durations.append(time.monotonic() - run_started)
        _log_table_progress(trained if worker is None else _count_finished(workdir, todo, fps), len(todo),
                            durations, time.monotonic() - started, processes=processes)
        if worker is None:
            report.write_report(exp, config, workdir, rows, records, preset=preset, command=command,
                                started=started, seeds=seeds)
    if claim is not None:
        claim.close()
    if worker is not None:
        return []
    return report.write_report(exp, config, workdir, rows, records, preset=preset, command=command, final=True,
                               started=started, seeds=seeds)
