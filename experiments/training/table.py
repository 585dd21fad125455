"""One table of (row, seed) runs for the experiments that are not translation (classification, sentence pairs,
cloze, BERT and issue 14's image experiments), and the first half of their reports.

`run_table` is the driver: it fingerprints every (row, seed) config, skips the finished runs (their
``done.json``), refuses checkpoints of another config, trains the rest in seed-major order (so a partial table is
a whole one-seed table) in this process or in ``--jobs`` worker processes (each run under a lock on its
directory), and calls the experiment's report. `add_paired_significance` adds, per seed, the paired bootstrap CI
and permutation p of a per-example score (correct or not; average precision) of each row against the baseline
row, from the ``test_scores.json`` each run leaves. `tabulate` does what every report does first: the records in
table order, those paired tests for each tested metric (one baseline, or one per group of rows), the paper
numbers and their footnotes, the per-row summary and the claims' verdicts, each claim judged with the p of its
own metric. `loss_curves_figure` draws the training curves of one seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from experiments import results
from experiments import stats
from experiments.training import loop, report, spec

SCORES_FILE = "test_scores.json"

# (run config, data, run dir, label, after_s) -> the run's record fields
TrainRun = Callable[[ml_collections.ConfigDict, Any, str, str, Any], dict[str, Any]]


def write_scores(run_dir: str, scores: dict[str, Sequence[float]]) -> None:
    """Saves a run's per-test-example scores (e.g. {"test_accuracy": 0/1 per example}) for the paired tests."""
    with open(os.path.join(run_dir, SCORES_FILE), "w", encoding="utf-8") as f:
        json.dump({k: [float(x) for x in v] for k, v in scores.items()}, f)


def read_scores(workdir: str, row: str, seed: int, metric: str) -> np.ndarray | None:
    """The per-example scores of ``metric`` that run (row, seed) saved, or None."""
    path = os.path.join(spec.run_dir(workdir, row, seed), SCORES_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return None if metric not in saved else np.asarray(saved[metric], np.float64)


def run_table(exp: spec.Experiment, config: ml_collections.ConfigDict, rows: Sequence[str], workdir: str, *,
              load_data: Callable[[], Any], train_run: TrainRun,
              report_fn: Callable[[tuple[int, ...], dict[tuple[str, int], dict[str, Any]], float], list],
              data_files: Callable[[Any], dict[str, Any]] | None = None, describe: Callable[[Any], dict] | None = None,
              preset: str = "", command: str = "", jobs: int = 1, worker_command: Sequence[str] = (),
              worker: tuple[int, int] | None = None, data: Any = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished in ``workdir``, then reports; returns the report's records.

    Args:
      exp: the experiment (rows, presets, name).
      config: the config after preset and overrides; ``config.seeds`` picks the seeds.
      rows: the rows to run, in table order.
      workdir: output directory.
      load_data: () -> the data every run trains on (called once per process, only when something trains).
      train_run: trains (or resumes) one run and returns its record fields (metrics, steps, minutes).
      report_fn: (seeds, {(row, seed): record}, wall seconds) -> the table's records (writes results.md, ...).
      data_files: data -> a JSON-able dict written to ``workdir/data.json`` (counts, labels, ...).
      describe: row config -> descriptive record fields (model, pooling, ...).
      preset, command: for config.json and command.txt.
      jobs: how many runs train at once, each in its own process (``worker_command`` + ``--worker=i/n``).
      worker_command: the command line of a worker.
      worker: (i, n) in a worker process: train free runs one at a time, report nothing, return [].
      data: the data, if already loaded (tests).

    Raises:
      spec.ConfigError: bad seeds or significance fields, a checkpoint of another config, a failed worker.
    """
    from experiments.training import translation  # pylint: disable=import-outside-toplevel

    seeds = spec.check_report_config(exp, config)
    loop.quiet_orbax_logging()
    started = time.monotonic()
    os.makedirs(workdir, exist_ok=True)
    if worker is None:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump({"experiment": exp.name, "preset": preset, "rows": list(rows), "seeds": list(seeds),
                       "config": config.to_dict()}, f, indent=2, sort_keys=True, default=list)
        if command:
            with open(os.path.join(workdir, "command.txt"), "w", encoding="utf-8") as f:
                f.write(command + "\n")
    order = [(row, seed) for seed in seeds for row in rows]
    cfgs = {key: spec.run_config(exp, config, *key) for key in order}
    flats = {key: spec.run_flat(cfg) for key, cfg in cfgs.items()}
    fps = {key: spec.fingerprint(flat) for key, flat in flats.items()}
    todo = []
    for row, seed in order:
        rd = spec.run_dir(workdir, row, seed)
        if spec.done_record(rd, fps[(row, seed)]) is None:
            spec.check_resumable(exp, row, flats[(row, seed)], rd)
            todo.append((row, seed))
    if todo and worker is None and jobs > 1 and len(todo) > 1:
        data = data if data is not None else load_data()  # here first, so the workers find every cache warm
        if data_files is not None:
            _write_json(os.path.join(workdir, "data.json"), data_files(data))
        logging.info("table: %d runs (%d rows x %d seeds), %d to train", len(order), len(rows), len(seeds), len(todo))
        translation._run_workers(min(jobs, len(todo)), list(worker_command))  # pylint: disable=protected-access
        todo = []
    if todo and data is None:
        t0 = time.monotonic()
        data = load_data()
        logging.info("data loaded in %.1f s", time.monotonic() - t0)
    if todo and worker is None and data_files is not None:
        _write_json(os.path.join(workdir, "data.json"), data_files(data))
    durations: list[float] = []
    for row, seed in todo:
        rd = spec.run_dir(workdir, row, seed)
        os.makedirs(rd, exist_ok=True)
        lock = translation._claim_run(rd) if worker is not None else None  # pylint: disable=protected-access
        if worker is not None and lock is None:
            continue  # another worker has it
        try:
            if spec.done_record(rd, fps[(row, seed)]) is not None:
                continue
            cfg = cfgs[(row, seed)]
            label = row if len(seeds) == 1 else f"{row} seed {seed}"
            _write_json(os.path.join(rd, "row_config.json"), flats[(row, seed)])
            left = -(-(len(todo) - len(durations) - 1) // (1 if worker is None else worker[1]))
            after_s = (sum(durations) / len(durations)) * left if durations else (lambda total, n=left: total * n)
            t0 = time.monotonic()
            fields = train_run(cfg, data, rd, label, after_s)
            record = {"row": row, "seed": seed, **(describe(cfg.model) if describe else {}), **fields,
                      "machine": report.machine_description(), "fingerprint": fps[(row, seed)]}
            _write_json(os.path.join(rd, "done.json"), {"fingerprint": fps[(row, seed)], "record": record})
            durations.append(time.monotonic() - t0)
        finally:
            if lock is not None:
                lock.close()
    if worker is not None:
        return []
    records = {key: spec.done_record(spec.run_dir(workdir, *key), fps[key]) for key in order}
    return report_fn(seeds, {k: v for k, v in records.items() if v is not None}, time.monotonic() - started)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)


def add_paired_significance(table: list[dict[str, Any]], workdir: str, *, metric: str, baseline: str,
                            n_resamples: int, claims: Sequence[stats.Claim] = (), scale: float = 100.0,
                            ) -> dict[tuple[str, str, int], float]:
    """Adds ``<metric>_ci`` and ``<metric>_p`` (against ``baseline``, same seed) to the records in place.

    The CI is the paired bootstrap interval of the difference of the per-example scores' means, times ``scale``
    (100: accuracy in points); p the paired permutation p (`stats.paired_accuracy_test`). Runs without saved
    scores are left untested.

    Returns:
      (better row, worse row, seed) -> p, for the claims on ``metric`` (and every row against the baseline).
    """
    pairs = {(rec["row"], baseline, int(rec["seed"])) for rec in table if rec["row"] != baseline}
    for claim in claims:
        if claim.metric == metric:
            for worse in claim.worse:
                pairs |= {(claim.better, worse, int(rec["seed"])) for rec in table if rec["row"] == claim.better}
    tested = {}
    for better, worse, seed in sorted(pairs):
        a, b = read_scores(workdir, better, seed, metric), read_scores(workdir, worse, seed, metric)
        if a is not None and b is not None and a.shape == b.shape and a.shape[0] >= 2:
            tested[(better, worse, seed)] = stats.paired_accuracy_test(a, b, n_resamples=n_resamples, seed=seed)
    for rec in table:
        test = tested.get((rec["row"], baseline, int(rec["seed"])))
        if test is not None:
            rec[f"{metric}_ci"] = [scale * test.ci[0], scale * test.ci[1]]
            rec[f"{metric}_p"] = test.p_value
        rec["baseline_row"] = baseline
    return {key: test.p_value for key, test in tested.items()}


def add_grouped_significance(table: list[dict[str, Any]], workdir: str, *, metric: str,
                             baselines: Mapping[str, str], n_resamples: int, claims: Sequence[stats.Claim] = (),
                             scale: float = 100.0) -> dict[tuple[str, str, int], float]:
    """`add_paired_significance` with a baseline per group of rows: each row is tested against ``baselines[row]``.

    For tables whose rows fall into groups, each with its own baseline (the cloze answer kinds, the BERT
    (dataset, label budget) cells). A group whose baseline has no record is left untested; rows missing from
    ``baselines`` are left alone.

    Returns:
      (better row, worse row, seed) -> p, over every group (as `add_paired_significance`).
    """
    p_values: dict[tuple[str, str, int], float] = {}
    for baseline in sorted(set(baselines.values())):
        group = [rec for rec in table if baselines.get(rec["row"]) == baseline]
        if any(rec["row"] == baseline for rec in group):
            p_values.update(add_paired_significance(group, workdir, metric=metric, baseline=baseline,
                                                    n_resamples=n_resamples, claims=claims, scale=scale))
    return p_values


@dataclasses.dataclass
class Tabulated:
    """What every table's report starts from (`tabulate`).

    Attributes:
      table: the per-(row, seed) records in table order, with "paper", "title" and the paired statistics
        (``<metric>_ci``, ``<metric>_p``, "baseline_row") added.
      summary: one line per row (`results.summarize`), with its "paper" cell and "baseline" in the p column of
        every tested metric on baseline rows.
      baseline: the baseline row when there is a single one with a record, else "".
      footnotes: the paper cells' sources (source -> number), for `results.write`.
      verdicts: `stats.claim_verdict` of each claim, with the paired p of the claim's own metric.
    """

    table: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    baseline: str
    footnotes: dict[str, int]
    verdicts: list[dict[str, Any]]


def tabulate(exp: spec.Experiment, config: ml_collections.ConfigDict, workdir: str, rows: Sequence[str],
             seeds: Sequence[int], records: Mapping[tuple[str, int], dict[str, Any]], *,
             metrics: Mapping[str, float] | None = None, baselines: Mapping[str, str] | None = None,
             claims: Sequence[stats.Claim] | None = None) -> Tabulated | None:
    """The shared first half of a report: records in table order, paired tests, paper cells and claim verdicts.

    Args:
      exp: the experiment (title, paper numbers, claims, baseline row).
      config: the reported config (``eval.significance``, ``eval.significance_samples``, ``eval.baseline_row``).
      workdir: the table's directory (the runs' saved per-example scores).
      rows, seeds: the table's rows and seeds, in order.
      records: (row, seed) -> a finished run's record.
      metrics: metric -> scale of its paired tests against the baseline (100: accuracy in points; 1: raw
        values), in order; None: {"test_accuracy": 100}. Each gets ``<metric>_ci`` and ``<metric>_p``.
      baselines: row -> the row it is tested against, for tables with a baseline per group of rows; None: one
        baseline, ``exp``'s (or ``eval.baseline_row``), when it has a record.
      claims: the claims to judge; None: ``exp.claim_list``.

    Returns:
      A `Tabulated`, or None (with a warning) when no run has finished.
    """
    table = [dict(records[(row, seed)]) for row in rows for seed in seeds if (row, seed) in records]
    if not table:
        logging.warning("no finished run in %s to report", workdir)
        return None
    metrics = {"test_accuracy": 100.0} if metrics is None else dict(metrics)
    claims = exp.claim_list if claims is None else list(claims)
    present = {rec["row"] for rec in table}
    baseline = ""
    if baselines is None:
        baseline = spec.baseline_row(exp, config)
        baseline = baseline if baseline in present else ""
        groups = {row: baseline for row in present} if baseline else {}
    else:
        groups = {row: base for row, base in baselines.items() if row in present}
    p_values: dict[str, dict[tuple[str, str, int], float]] = {}
    if config.eval.significance == "bs" and groups:
        for metric, scale in metrics.items():
            p_values[metric] = add_grouped_significance(
                table, workdir, metric=metric, baselines=groups, n_resamples=int(config.eval.significance_samples),
                claims=claims, scale=scale)
    paper = exp.paper_numbers
    for rec in table:
        rec["paper"], rec["title"] = paper.get(rec["row"]), exp.title
    summary = results.summarize(table, tested=tuple(metrics))
    footnotes: dict[str, int] = {}
    for line in summary:
        line["paper"] = results.paper_cell(paper.get(line["row"]), footnotes)
        if groups.get(line["row"]) == line["row"]:
            for metric in metrics:
                line[f"{metric}_p"] = "baseline"
    verdicts = [stats.claim_verdict(c, table, p_values=p_values.get(c.metric, {})) for c in claims]
    return Tabulated(table=table, summary=summary, baseline=baseline, footnotes=footnotes, verdicts=verdicts)


def write_claims(workdir: str, verdicts: Sequence[Mapping[str, Any]], *, exp: spec.Experiment, command: str,
                 seeds: Sequence[int], wall_s: float) -> None:
    """claims.jsonl: each verdict with the experiment, command, workdir, machine, seeds and wall time."""
    with open(os.path.join(workdir, "claims.jsonl"), "w", encoding="utf-8") as f:
        for v in verdicts:
            f.write(json.dumps({**v, "experiment": exp.name, "title": exp.title, "command": command,
                                "workdir": os.path.abspath(workdir), "machine": report.machine_description(),
                                "seeds": list(seeds), "wall_minutes": round(wall_s / 60, 1)}, sort_keys=True) + "\n")


def read_data_info(workdir: str) -> dict[str, Any]:
    """The table's data.json (what `run_table`'s ``data_files`` wrote), or {} when there is none."""
    path = os.path.join(workdir, "data.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def loss_curves_figure(workdir: str, rows: Sequence[str], seed: int, *, title: str,
                       loss_label: str = "train cross-entropy (nats / document)",
                       panels: Sequence[tuple[str, str]] | None = None) -> str | None:
    """loss_curves.png of the rows' runs of one seed; its path relative to ``workdir``, or None when no run has
    metrics.

    Args:
      workdir, rows, seed: the table's directory, the rows to draw and the seed whose runs they are.
      title: the figure's title.
      loss_label: the loss panel's y-axis label, for the default panels (`plots.classification_curves`:
        training loss and dev accuracy).
      panels: (metrics.jsonl key, y-axis label) per panel instead (`plots.metric_curves`), e.g. a third
        accuracy; ``loss_label`` is then unused.
    """
    from experiments import plots  # pylint: disable=import-outside-toplevel  (matplotlib only when reporting)

    metrics = {row: recs for row in rows
               if (recs := results.read_jsonl(os.path.join(spec.run_dir(workdir, row, seed), "metrics.jsonl")))}
    if not metrics:
        return None
    path = os.path.join(workdir, "loss_curves.png")
    if panels is None:
        plots.classification_curves(metrics, path, title=title, loss_label=loss_label)
    else:
        plots.metric_curves(metrics, path, panels=panels, title=title)
    return os.path.relpath(path, workdir)
