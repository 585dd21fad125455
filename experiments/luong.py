"""Luong et al. 2015 (arXiv:1508.04025), Table 4: attention variants on German->English.

    python -m experiments.luong                      # preset small, workdir workdirs/luong
    python -m experiments.luong --preset=smoke --workdir=/tmp/luong_smoke
    python -m experiments.luong --rows=global_dot,local_p_general --config.train.max_minutes=5

Rows, presets, wall times and numbers: `experiments/configs/luong.py`. Flags: `experiments/cli.py`.
"""

from __future__ import annotations

from experiments import cli
from experiments import training
from experiments.configs import luong as luong_config

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
        bleu_by_length=False,
)

if __name__ == "__main__":
    cli.run(EXPERIMENT)
