"""Training of the experiments: the experiment spec, the optimisers, one shared loop, the translation rows, reports.

  spec.py         `Experiment`, `ConfigError`, `row_config`, `fingerprint`, a row's directory (`done_record`,
                  `check_resumable`) and the default `Seq2Seq` builder.
  optim.py        the optax optimisers and learning-rate schedules (translation and language model).
  loop.py         `train_loop`: any jitted step with a carried state (TBPTT memories), orbax checkpoints and
                  resume, logging (step, loss, tokens/s, ETA) and evaluation hooks; `warm_start`.
  translation.py  the translation rows: step, `train_row`, `evaluate_row` and `run_experiment`.
  report.py       results.md / results.jsonl and the figures of a translation experiment.

The language model (`experiments.lm`) trains through the same `train_loop`. This package re-exports the names
the experiment mains and the tests use, so ``from experiments import training`` and ``training.run_experiment``.
"""

from experiments.training.loop import LoopOutcome
from experiments.training.loop import checkpoint_manager
from experiments.training.loop import enable_compilation_cache
from experiments.training.loop import quiet_orbax_logging
from experiments.training.loop import train_loop
from experiments.training.loop import warm_start
from experiments.training.optim import SCHEDULES
from experiments.training.optim import learning_rate
from experiments.training.optim import make_lm_optimizer
from experiments.training.optim import make_optimizer
from experiments.training.optim import warmup_cosine_schedule
from experiments.training.report import corpus_label
from experiments.training.report import machine_description
from experiments.training.report import write_report
from experiments.training.spec import ConfigError
from experiments.training import distributed
from experiments.training.spec import Experiment
from experiments.training.spec import build_model
from experiments.training.spec import check_resumable
from experiments.training.spec import done_record
from experiments.training.spec import fingerprint
from experiments.training.spec import resolve_init_from
from experiments.training.spec import row_config
from experiments.training.spec import row_dir_name
from experiments.training.translation import TrainOutcome
from experiments.training.translation import evaluate_row
from experiments.training.translation import filter_train
from experiments.training.translation import init_params
from experiments.training.translation import longest_source
from experiments.training.translation import make_train_step
from experiments.training.translation import run_experiment
from experiments.training.translation import train_row

__all__ = [
    "ConfigError", "Experiment", "LoopOutcome", "SCHEDULES", "TrainOutcome", "build_model", "check_resumable",
    "checkpoint_manager", "corpus_label", "distributed", "done_record", "enable_compilation_cache", "evaluate_row", "filter_train",
    "fingerprint", "init_params", "learning_rate", "longest_source", "machine_description", "make_lm_optimizer",
    "make_optimizer", "make_train_step", "quiet_orbax_logging", "resolve_init_from", "row_config", "row_dir_name",
    "run_experiment", "train_loop", "train_row", "warm_start", "warmup_cosine_schedule", "write_report",
]
