"""Voita et al. 2019 (arXiv:1905.09418): test BLEU against the number of encoder heads kept after L0 pruning.

    python -m experiments.head_pruning                       # preset small, workdir workdirs/head_pruning
    python -m experiments.head_pruning --preset=smoke --workdir=/tmp/pruning_smoke

Rows, presets, wall times and numbers: `experiments/configs/head_pruning.py`. Flags: `experiments/cli.py`.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from experiments import cli
from experiments import plots
from experiments import training
from experiments import transformer
from experiments.configs import head_pruning as pruning_config

COLUMNS = (
    ("row", "row"),
    ("lambda", "l0_penalty"),
    ("heads kept", "heads_kept"),
    ("per layer", "heads_per_layer"),
    ("dev ppl", "dev_ppl"),
    ("test ppl", "test_ppl"),
    ("test BLEU", "test_bleu"),
    ("steps", "steps"),
    ("train minutes", "train_minutes"),
)


def describe(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The lambda column of a row."""
    return {"l0_penalty": cfg.train.l0_penalty}


def heads_kept(model, params, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The encoder heads whose test-time gate is open, in total and per layer (arXiv:1905.09418 §4)."""
    from attention_jax.layers.head_gates import kept_heads  # pylint: disable=import-outside-toplevel

    per_layer = []
    for i in range(cfg.model.num_encoder_layers):
        log_alpha = np.asarray(params[f"encoder_layers_{i}"]["log_alpha"])
        per_layer.append(int(kept_heads(log_alpha).sum()))
    return {"heads_kept": int(sum(per_layer)), "heads_total": int(cfg.model.num_heads * cfg.model.num_encoder_layers),
            "heads_per_layer": "/".join(str(k) for k in per_layer)}


def figures(table, workdir: str) -> list[str]:
    """bleu_vs_heads.png from the finished rows."""
    points = [{"heads_kept": r["heads_kept"], "test_bleu": r.get("test_bleu"), "test_ppl": r.get("test_ppl"),
               "label": f"{r['row']} (lambda={r['l0_penalty']:g})"} for r in table if "heads_kept" in r]
    if not points:
        return []
    total = max(r.get("heads_total", 0) for r in table)
    return [plots.bleu_vs_heads(points, os.path.join(workdir, "bleu_vs_heads.png"), total_heads=total,
                                title="Voita et al. 2019: test BLEU and perplexity vs encoder heads kept (L0 gates)")]


def validate(cfg: ml_collections.ConfigDict) -> None:
    """The Transformer checks plus the pruning fields."""
    transformer.validate(cfg)
    if cfg.model.head_gates == "none":
        raise training.ConfigError("--config.model.head_gates=none leaves nothing to prune; fix: use encoder or all")
    if isinstance(cfg.train.l0_penalty, bool) or not isinstance(cfg.train.l0_penalty, (int, float)) \
            or cfg.train.l0_penalty < 0:
        raise training.ConfigError(f"--config.train.l0_penalty={cfg.train.l0_penalty!r} is not valid; fix: use a "
                                   "number >= 0")


EXPERIMENT = training.Experiment(
        name="head_pruning",
        title="Voita et al. 2019 (arXiv:1905.09418), Fig. 7: pruning encoder heads with L0 gates",  # + the data used
        get_config=pruning_config.get_config,
        presets=pruning_config.PRESETS,
        rows=pruning_config.ROWS,
        default_rows=pruning_config.DEFAULT_ROWS,
        default_preset=pruning_config.DEFAULT_PRESET,
        default_workdir="workdirs/head_pruning",
        custom_row=pruning_config.CUSTOM_ROW,
        build_model=transformer.build_model,
        describe_model=describe,
        columns=COLUMNS,
        validate_model=validate,
        preset_rows=pruning_config.PRESET_ROWS,
        record_extras=heads_kept,
        extra_figures=figures,
)

if __name__ == "__main__":
    cli.run(EXPERIMENT)
