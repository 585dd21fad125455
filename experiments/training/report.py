"""The report of a translation experiment: results.md / results.jsonl, the figures, and the machine it ran on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import platform
import time
from typing import Any

import jax
import ml_collections

from experiments import configs
from experiments import plots
from experiments import results
from experiments.training import spec


def corpus_label(data_config: ml_collections.ConfigDict) -> str:
    """The corpus name, or the user's --data_path when one replaces it."""
    return f"--data_path={data_config.data_path}" if data_config.data_path else data_config.corpus


def machine_description() -> str:
    """One line naming the machine a result came from: host OS, CPU count, jax version and device."""
    device = jax.devices()[0]
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
            f"on {device.platform} ({getattr(device, 'device_kind', device.platform)})")


def write_report(exp: spec.Experiment, config: ml_collections.ConfigDict, workdir: str, rows: Sequence[str],
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
            other = spec.row_config(exp, config, row)
            done = spec.done_record(os.path.join(workdir, spec.row_dir_name(row)),
                                    spec.fingerprint(configs.flatten(other)))
            if done is not None:
                table.append(done)
    metrics = {rec["row"]: results.read_jsonl(os.path.join(workdir, spec.row_dir_name(rec["row"]), "metrics.jsonl"))
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
