"""The report of a translation experiment: results.md / results.jsonl / claims.jsonl, the figures, the statistics.

`write_report` gathers the finished (row, seed) runs of a workdir and writes:

* results.jsonl: one record per (row, seed), with its 95% bootstrap CIs (test_bleu_ci, test_chrf_ci) and its
  paired p-values against the baseline row of the same seed (test_bleu_p, test_chrf_p), from
  `experiments.stats` (sacrebleu's paired tests, cached in ``workdir/significance.json``);
* results.md: one line per row (mean ± std over seeds, the number of seeds, the CI, the largest p over seeds,
  chrF, the paper's number beside ours with its citation), the sacrebleu signatures and how p and the CIs were
  computed, the claims the table tests, and the figures with captions that name the data actually used;
* claims.jsonl: one record per `experiments.stats.Claim` of the experiment (`claim_records`).

Intermediate reports (after each run) skip the significance tests; the final one runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
import platform
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from experiments import evaluation
from experiments import plots
from experiments import results
from experiments import stats
from experiments.training import spec

# The default corpora, named by their language pair and source (experiments/data/__init__.py).
CORPUS_DESCRIPTIONS = {
    "ding_de_en": "German->English, Ding dictionary example sentences (ding_de_en)",
    "bible_en_es": "English->Spanish, KJV -> Reina-Valera 1909 Bible verses (bible_en_es)",
}
SIGNIFICANCE_FILE = "significance.json"
REFERENCES_FILE = "test_references.txt"
TRANSLATIONS_FILE = "test_translations.txt"


def corpus_label(data_config: ml_collections.ConfigDict) -> str:
    """The corpus name, or the user's --data_path when one replaces it."""
    return f"--data_path={data_config.data_path}" if data_config.data_path else data_config.corpus


def data_description(data_config: ml_collections.ConfigDict) -> str:
    """The data a run actually used, for titles and captions: the corpus with its language pair, or the user's
    --data_path file(s)."""
    if data_config.get("data_path", ""):
        return f"the user's parallel text {data_config.data_path} (--data_path)"
    corpus = data_config.get("corpus", "")
    return CORPUS_DESCRIPTIONS.get(corpus, corpus or "unnamed corpus")


def full_title(exp: spec.Experiment, config: ml_collections.ConfigDict) -> str:
    """results.md's heading: the experiment's paper title and the data actually used."""
    return f"{exp.title}; data: {data_description(config.data)}"


def machine_description() -> str:
    """One line naming the machine a result came from: host OS, CPU count, jax version and device."""
    device = jax.devices()[0]
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
            f"on {device.platform} ({getattr(device, 'device_kind', device.platform)})")


def _read_lines(path: str) -> list[str] | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def collect_runs(exp: spec.Experiment, config: ml_collections.ConfigDict, workdir: str, rows: Sequence[str],
                 seeds: Sequence[int], records: Mapping[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the table, in row order (then seed order): ``records`` plus the runs of rows not requested
    that finished earlier in ``workdir`` with the config they would get now (so running rows one at a time
    builds one table)."""
    table = []
    for row in exp.row_names:
        for seed in sorted(seeds):
            if (row, seed) in records:
                table.append(dict(records[(row, seed)]))
            elif row not in rows and row != exp.custom_row:
                cfg = spec.run_config(exp, config, row, seed)
                done = spec.done_record(spec.run_dir(workdir, row, seed), spec.fingerprint(spec.run_flat(cfg)))
                if done is not None:
                    table.append(dict(done))
    return table


def _interval(result: stats.MetricResult) -> list[float] | None:
    iv = result.interval
    return None if iv is None else [round(iv[0], 4), round(iv[1], 4)]


def add_significance(table: list[dict[str, Any]], workdir: str, *, baseline: str, test: str, n_samples: int,
                     claims: Sequence[stats.Claim] = ()) -> tuple[dict[str, str] | None, dict[tuple[str, str, int], dict[str, float | None]]]:
    """Adds test_{bleu,chrf}_ci and, against ``baseline`` of the same seed, test_{bleu,chrf}_p to the records.

    Reads each run's test_translations.txt and the workdir's test_references.txt; runs without them get no
    statistics. Results are cached in ``workdir/significance.json``.

    Returns:
      (the sacrebleu signatures of the test, or None when nothing could be tested;
       (better row, worse row, seed) -> {"test_bleu": p, "test_chrf": p} for the claims' pairs).
    """
    refs = _read_lines(os.path.join(workdir, REFERENCES_FILE))
    if not refs:
        logging.warning("no %s in %s: the report has no significance tests", REFERENCES_FILE, workdir)
        return None, {}
    hyps: dict[tuple[str, int], list[str]] = {}
    for rec in table:
        seed = int(rec.get("seed", 0))
        lines = _read_lines(os.path.join(spec.run_dir(workdir, rec["row"], seed), TRANSLATIONS_FILE))
        if lines is not None and len(lines) == len(refs):
            hyps[(rec["row"], seed)] = lines
    if not hyps:
        return None, {}
    t0 = time.monotonic()
    tester = stats.TranslationTester(refs, test=test, n_samples=n_samples,
                                     cache_path=os.path.join(workdir, SIGNIFICANCE_FILE))
    for rec in table:
        key = (rec["row"], int(rec.get("seed", 0)))
        if key not in hyps:
            continue
        ci = tester.interval(hyps[key])
        rec["test_bleu_ci"], rec["test_chrf_ci"] = _interval(ci["bleu"]), _interval(ci["chrf"])
        rec["test_bleu_p"] = rec["test_chrf_p"] = None
        base = hyps.get((baseline, key[1])) if baseline else None
        if base is not None and key[0] != baseline:
            compared = tester.compare(base, {key[0]: hyps[key]})[key[0]]
            rec["test_bleu_p"], rec["test_chrf_p"] = compared["bleu"].p_value, compared["chrf"].p_value
    claim_p: dict[tuple[str, str, int], dict[str, float | None]] = {}
    for claim in claims:
        if claim.metric not in ("test_bleu", "test_chrf"):
            continue
        for worse in claim.worse:
            for (row, seed), better_hyps in hyps.items():
                if row != claim.better or (worse, seed) not in hyps:
                    continue
                compared = tester.compare(hyps[(worse, seed)], {row: better_hyps})[row]
                claim_p[(row, worse, seed)] = {"test_bleu": compared["bleu"].p_value,
                                               "test_chrf": compared["chrf"].p_value}
    signatures = tester.signatures
    tester.save()
    logging.info("significance tests (%s, %d samples) in %.1f s", test, n_samples, time.monotonic() - t0)
    return signatures, claim_p


def summarize_table(table: Sequence[dict[str, Any]], *, baseline: str,
                    paper: Mapping[str, Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The results.md lines (`results.summarize`: mean ± std over seeds, the union of the seeds' CIs, the largest
    p over seeds; "baseline" in the baseline row's p cells) with the paper's cell, and the paper footnotes
    (source -> number)."""
    summary = results.summarize(table)
    footnotes: dict[str, int] = {}
    for line in summary:
        for metric in ("test_bleu", "test_chrf"):
            if line["row"] == baseline and line.get(f"{metric}_ci"):
                line[f"{metric}_p"] = "baseline"
        line["paper"] = results.paper_cell(paper.get(line["row"]), footnotes)
    return summary, footnotes


def _fmt_row_value(summary_row: Mapping[str, Any]) -> str:
    mean, std, n = summary_row["mean"], summary_row["std"], summary_row["n"]
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if n > 1 else "")
    if summary_row.get("ci"):
        text += f" [CI {summary_row['ci'][0]:.2f}, {summary_row['ci'][1]:.2f}]"
    return text


def claims_section(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The claims table of results.md."""
    lines = ["### Claims", "",
             "A claim holds when the better row's mean beats each worse row's mean (within the stated margin); "
             "p is the largest paired p between them over the pairs and seeds, where a seed that orders them the "
             "other way counts as 1; \"(k of n seeds)\" after the verdict: the seeds disagree (\"-\": not "
             "tested).", "",
             "| claim | paper | ours | holds | p |", "|---|---|---|---|---:|"]
    for v in verdicts:
        ours = "; ".join(f"{row} {_fmt_row_value(s)}" for row, s in v["rows"].items() if s["mean"] is not None)
        n = max((s["n"] for s in v["rows"].values()), default=0)
        ours = f"{ours} ({v['metric']}, {n} seed{'s' if n != 1 else ''})" if ours else "-"
        holds = {True: "yes", False: "no"}.get(v["holds"], f"not run ({', '.join(v['missing'])} missing)")
        holds += results.seeds_holding_note(v)
        paper = v["paper"] + (f" ({v['source']})" if v.get("source") else "")
        lines.append(f"| {v['name']}: {v['statement']} | {paper or '-'} | {ours} | {holds} | "
                     f"{results.format_p(v['p'])} |")
    return "\n".join(lines)


def claim_records(verdicts: Sequence[dict[str, Any]], *, exp: spec.Experiment, config: ml_collections.ConfigDict,
                  workdir: str, command: str, seeds: Sequence[int], table: Sequence[Mapping[str, Any]],
                  wall_minutes: float | None) -> list[dict[str, Any]]:
    """The claims.jsonl records: each verdict with the experiment, data, command, workdir, machine, seeds and
    the training minutes of the claim's runs."""
    out = []
    for v in verdicts:
        runs = [r for r in table if r["row"] in (v["better"], *v["worse"])]
        out.append({**v, "experiment": exp.name, "title": exp.title, "data": data_description(config.data),
                    "command": command, "workdir": os.path.abspath(workdir), "machine": machine_description(),
                    "seeds": list(seeds), "train_minutes": round(sum(r.get("train_minutes") or 0 for r in runs), 2),
                    "wall_minutes": None if wall_minutes is None else round(wall_minutes, 1)})
    return out


def write_report(exp: spec.Experiment, config: ml_collections.ConfigDict, workdir: str, rows: Sequence[str],
                 records: Mapping[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 final: bool = False, started: float | None = None,
                 seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Writes results.md / results.jsonl / claims.jsonl and the figures from the run records and metrics files.

    Args:
      exp: the experiment.
      config: the config of the invocation (before rows and seeds).
      workdir: the experiment directory.
      rows: the rows requested; other rows that finished earlier in ``workdir`` are added.
      records: (row, seed) -> the run's record (done.json's).
      preset: preset name, for the notes.
      command: the command line.
      final: run the significance tests and print results.md.
      started: time.monotonic() at the start of the invocation, for the wall time.
      seeds: the seeds of the table (default: those of ``config``).

    Returns:
      The run records in table order (row order, then seed), with their statistics.
    """
    seeds = tuple(seeds) if seeds is not None else spec.parse_seeds(config.get("seeds", ""), config.seed)
    table = collect_runs(exp, config, workdir, rows, seeds, records)
    baseline = spec.baseline_row(exp, config)
    test = config.eval.get("significance", "none")
    n_samples = int(config.eval.get("significance_samples", 1000))
    claims = exp.claim_list
    signatures, claim_p = None, {}
    if final and test in stats.TESTS and table:
        signatures, claim_p = add_significance(table, workdir, baseline=baseline, test=test, n_samples=n_samples,
                                               claims=claims)
    paper = exp.paper_numbers
    title = full_title(exp, config)
    description = data_description(config.data)
    sigs = signatures or evaluation.metric_signatures()
    for rec in table:
        rec.update({"experiment": exp.name, "title": title, "baseline_row": baseline or None,
                    "paper": paper.get(rec["row"]), "sacrebleu": sigs,
                    "significance": stats.describe_test(test, n_samples) if signatures else None})
    summary, footnotes = summarize_table(table, baseline=baseline, paper=paper)

    # Figures: the lowest seed of each row (one curve per row keeps them readable).
    first_seed = {}
    for rec in table:
        first_seed.setdefault(rec["row"], int(rec.get("seed", 0)))
    metrics = {row: results.read_jsonl(os.path.join(spec.run_dir(workdir, row, seed), "metrics.jsonl"))
               for row, seed in first_seed.items()}
    several = len(seeds) > 1
    seed_note = f" (seed {min(seeds)} of each row)" if several else ""
    figures = [(plots.loss_curves(metrics, os.path.join(workdir, "loss_curves.png"), title=title),
                f"Training loss and dev perplexity per row{seed_note}; data: {description}.")]
    if exp.bleu_by_length:
        buckets = {line["row"]: line["bleu_by_length"] for line in summary if line.get("bleu_by_length")}
        if buckets:
            figures.append((plots.bleu_by_length(buckets, os.path.join(workdir, "bleu_by_length.png"),
                                                 title=f"{exp.name}: test BLEU by source sentence length\n{description}"),
                            f"Test BLEU by source sentence length{' (mean over seeds)' if several else ''}; "
                            f"data: {description}."))
    if exp.extra_figures is not None and summary:
        figures.extend((path, f"{os.path.splitext(os.path.basename(path))[0]}"
                              f"{' (means over seeds)' if several else ''}; data: {description}.")
                       for path in exp.extra_figures(summary, workdir))
    for line in summary:
        figures.extend((os.path.join(workdir, p), f"Attention weights of row {line['row']} on a test sentence of "
                        f"{description}.") for p in (line.get("heatmaps") or [])[:2])

    stop = {}
    for rec in table:
        stop.setdefault(rec["row"], set()).add(rec.get("stop_reason", "?"))
    notes = [f"preset: {preset or '-'}; data: {description}; vocabulary: {config.data.vocab_size}",
             "perplexity per target token (EOS included); BLEU and chrF: sacrebleu corpus scores on detokenised "
             f"output, beam {config.eval.beam_size}",
             "stop reasons: " + "; ".join(f"{r}: {', '.join(sorted(s))}" for r, s in stop.items()),
             f"seeds: {', '.join(str(s) for s in seeds)}"
             + ("; numbers are mean ± sample standard deviation over the seeds" if several else "")
             + f"; machine: {machine_description()}"]
    wall = None if started is None else (time.monotonic() - started) / 60
    if wall is not None:
        notes.append(f"wall time of this invocation (data, compiles, training, evaluation, figures): {wall:.1f} min")

    stat_lines = ["sacreBLEU signatures:", "", f"- BLEU: `{sigs['bleu']}`", f"- chrF: `{sigs['chrf']}`", ""]
    if signatures:
        stat_lines.append("- " + stats.describe_test(test, n_samples))
        if baseline:
            stat_lines.append(f"- baseline row: {baseline}; p compares each row with the baseline's run of the same "
                              "seed" + ("; with several seeds the table shows the largest p over seeds (every "
                                        "seed must be significant) and the union of the seeds' 95% CIs"
                                        if several else ""))
    elif test in stats.TESTS:
        stat_lines.append("- significance tests run in the final report of an invocation"
                          + ("" if final else " (this is an intermediate one)")
                          + ("; none ran: no test references or translations in the workdir" if final else ""))
    else:
        stat_lines.append("- no significance tests (eval.significance=none)")
    sections = ["\n".join(stat_lines)]
    if footnotes:
        sections.append("Paper numbers (column \"paper\"; their data and model sizes differ from ours):\n\n"
                        + "\n".join(f"- [{n}] {source}" for source, n in footnotes.items()))
    verdicts = []
    if claims:
        for claim in claims:
            p_of = {key: ps.get(claim.metric) for key, ps in claim_p.items()
                    if key[0] == claim.better and key[1] in claim.worse}
            intervals = {line["row"]: line.get(f"{claim.metric}_ci") for line in summary}
            verdicts.append(stats.claim_verdict(claim, table, p_values=p_of, intervals=intervals))
        sections.append(claims_section(verdicts))
        with open(os.path.join(workdir, "claims.jsonl"), "w", encoding="utf-8") as f:
            for rec in claim_records(verdicts, exp=exp, config=config, workdir=workdir, command=command, seeds=seeds,
                                     table=table, wall_minutes=wall):
                f.write(json.dumps(rec, sort_keys=True) + "\n")

    columns = results.statistics_columns(exp.columns or results.COLUMNS, baseline=baseline,
                                         significance=test in stats.TESTS, paper=bool(paper))
    text = results.write(workdir, table, title=title, command=command, notes=notes,
                         figures=[(os.path.relpath(p, workdir), c) for p, c in figures],
                         length_table=exp.bleu_by_length, columns=columns, summary=summary, sections=sections)
    if final:
        print(text, flush=True)
    return table
