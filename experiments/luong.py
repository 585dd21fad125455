"""Luong et al. 2015 (arXiv:1508.04025), Table 4 and Table 1's input feeding, on English->Spanish Bible verses.

    python -m experiments.luong                      # preset small, workdir workdirs/luong
    python -m experiments.luong --preset=smoke --workdir=/tmp/luong_smoke
    python -m experiments.luong --config.seeds=3     # three seeds per row: mean ± std, significance per seed
    python -m experiments.luong --rows=global_dot,local_p_general --config.train.num_steps=3000
    python -m experiments.luong --data_path=/path/to/parallel.tsv      # your own source<TAB>target lines

Besides the table it writes bleu_by_length.png (the paper's Fig. 6), loss curves, attention heatmaps and,
for the local-p rows, local_p_positions.png (where the predicted windows sit against the diagonal).

Rows, presets, wall times and numbers: `experiments/configs/luong.py`. Flags: `experiments/cli.py`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from experiments import cli
from experiments import local_p
from experiments import results
from experiments import training
from experiments.configs import luong as luong_config

# Dev sentences whose window centres are recorded at every dev evaluation of a local-p row, and how many of
# them are kept in metrics.jsonl for the figure.
POSITION_SENTENCES = 100
POSITION_TRAJECTORIES = 3


def is_local_p(cfg: ml_collections.ConfigDict) -> bool:
    """Whether a row's model predicts its window (Luong et al. 2015, eq. 9)."""
    return cfg.model.attention == "luong" and cfg.model.mode == "local_p"


def dev_metrics(model, params, cfg: ml_collections.ConfigDict, dev_examples: Sequence[Any]) -> dict[str, Any]:
    """Where a local-p row's windows sit at a dev evaluation (`experiments.local_p`); nothing for other rows.

    Returns:
      {} for rows that are not local-p; else the `local_p.diagnostics` of the first ``POSITION_SENTENCES`` dev
      sentences (p_diag_error, p_spread, p_mean, p_corr: logged) and "p_positions" / "p_source_lengths", the
      p_t of the first ``POSITION_TRAJECTORIES`` of them (kept in metrics.jsonl for `position_figures`).
    """
    if not is_local_p(cfg):
        return {}
    trajectories = local_p.positions(model, params, dev_examples, buckets=tuple(cfg.data.buckets),
                                     batch_size=cfg.eval.batch_size, limit=POSITION_SENTENCES)
    out: dict[str, Any] = local_p.diagnostics(trajectories)
    kept = trajectories[:POSITION_TRAJECTORIES]
    out["p_positions"] = [np.round(t.position, 3).tolist() for t in kept]
    out["p_source_lengths"] = [t.source_length for t in kept]
    return out


def position_figures(summary: Sequence[dict[str, Any]], workdir: str) -> list[str]:
    """For each local-p row: p_t / S against t / T of three dev sentences at its first, middle and last dev
    evaluation, with the diagonal (local_p_positions_<row>.png), from its lowest seed's metrics.jsonl."""
    paths = []
    for line in summary:
        row = line["row"]
        seeds = sorted(int(s) for s in (line.get("seeds") or [line.get("seed", 0)]))
        metrics = results.read_jsonl(os.path.join(training.spec.run_dir(workdir, row, seeds[0] if seeds else 0),
                                                  "metrics.jsonl"))
        evals = [m for m in metrics if m.get("p_positions")]
        if not evals:
            continue
        picked = {m["step"]: m for m in (evals[0], evals[len(evals) // 2], evals[-1])}
        snapshots = {step: [local_p.Trajectory(index=k, position=np.asarray(pos, np.float32), source_length=int(n))
                            for k, (pos, n) in enumerate(zip(m["p_positions"], m["p_source_lengths"]))]
                     for step, m in picked.items()}
        path = os.path.join(workdir, f"local_p_positions_{training.spec.row_dir_name(row)}.png")
        paths.append(local_p.figure(snapshots, path, title=f"{row}: local-p window centres on dev sentences"))
    return paths


EXPERIMENT = training.Experiment(
        name="luong",
        title="Luong et al. 2015 (arXiv:1508.04025), Table 4: attentional models",  # the report adds the data used
        get_config=luong_config.get_config,
        presets=luong_config.PRESETS,
        rows=luong_config.ROWS,
        default_rows=luong_config.DEFAULT_ROWS,
        default_preset=luong_config.DEFAULT_PRESET,
        default_workdir="workdirs/luong",
        custom_row=luong_config.CUSTOM_ROW,
        bleu_by_length=True,
        default_jobs=2,  # two recurrent runs at once: 1.4x the throughput of one on the 2-core machine
        preset_rows=luong_config.PRESET_ROWS,
        dev_metrics=dev_metrics,
        extra_figures=position_figures,
)

if __name__ == "__main__":
    cli.run(EXPERIMENT)
