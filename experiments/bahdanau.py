"""Bahdanau et al. 2014 (arXiv:1409.0473): RNNencdec vs RNNsearch on English->Spanish (Bible).

    python -m experiments.bahdanau                   # preset small, workdir workdirs/bahdanau
    python -m experiments.bahdanau --preset=smoke --workdir=/tmp/bahdanau_smoke
    python -m experiments.bahdanau --rows=RNNsearch-50 --config.train.max_minutes=20

Besides the table it writes bleu_by_length.png (like Fig. 2) and alignment heatmaps (like Fig. 3).
Rows, presets, wall times and numbers: `experiments/configs/bahdanau.py`. Flags: `experiments/cli.py`.
"""

from __future__ import annotations

from experiments import cli
from experiments import training
from experiments.configs import bahdanau as bahdanau_config

EXPERIMENT = training.Experiment(
        name="bahdanau",
        title="Bahdanau et al. 2014 (arXiv:1409.0473), Table 1 and Fig. 2: RNNencdec vs RNNsearch",  # + the data used
        get_config=bahdanau_config.get_config,
        presets=bahdanau_config.PRESETS,
        rows=bahdanau_config.ROWS,
        default_rows=bahdanau_config.DEFAULT_ROWS,
        default_preset=bahdanau_config.DEFAULT_PRESET,
        default_workdir="workdirs/bahdanau",
        custom_row=bahdanau_config.CUSTOM_ROW,
        bleu_by_length=True,
        default_jobs=2,  # two recurrent runs at once: 1.4x the throughput of one on the 2-core machine
)

if __name__ == "__main__":
    cli.run(EXPERIMENT)
