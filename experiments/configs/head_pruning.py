"""Voita et al. 2019 (arXiv:1905.09418): pruning encoder self-attention heads with L0-regularised gates.

A Transformer (the ``experiments.transformer`` base model, German->English Ding sentences) gets a Hard
Concrete gate on every encoder self-attention head (§4). The ``dense`` row trains it with open gates and no
penalty. Each ``l0_*`` row starts from the dense row's checkpoint (``train.init_from="@dense"``) and fine-tunes
with the loss L = L_xent + lambda * L_C, L_C the expected number of open gates (eq. 6), so larger lambda closes
more heads. After training, each row's test-time gates decide which heads are kept (a closed gate is exactly 0,
so the model equals the one `attention_jax.layers.head_gates.prune_heads` returns); the table and bleu_vs_heads.png
give test BLEU against the number of heads kept, the paper's Fig. 7.

Command::

    python -m experiments.head_pruning                                # preset small
    python -m experiments.head_pruning --preset=smoke --workdir=/tmp/pruning_smoke
    python -m experiments.head_pruning --rows=dense,l0_0.05

Presets (2-core CPU, first run, jit compiles included):

* ``smoke``: the transformer smoke model (D=32, 4 heads, 1+1 layers), 30 dense steps and 20 steps per
  lambda row, greedy decoding: about 1-2 minutes. Plumbing only.
* ``small``: the transformer ``small`` base model (D=128, 8 heads, 2+2 layers: 16 encoder heads), 600 dense
  steps, then 300 fine-tuning steps per lambda at a constant learning rate 5e-4 (5e-2 for the gates'
  log_alpha, which must move from 3 to below -2.4 to close a gate), beam 4 on 500 test
  sentences. Numbers and wall time: WORKSPACE.md.
* ``paper``: the transformer ``paper`` sizes (6 layers x 8 heads = 48 encoder heads), for an accelerator.

Numbers produced (seed 0; Linux x86_64, 2 CPUs shared with the Transformer table run, jax 0.10.2 on cpu):
``python -m experiments.head_pruning`` took 24.3 min. Encoder heads kept (of 16) and test perplexity:
lambda 0.002: 16, 93.38; 0.005: 16, 93.39; 0.01: 13, 93.71; 0.02: 8, 93.88; 0.05: 2, 94.17 (the dense row,
600 steps: 16, 110.50). Test BLEU is 0.45-0.55 for every row (undertrained models; read perplexity).

Differences from the paper: a small corpus and model, fine-tuning for hundreds rather than thousands of steps,
and lambda scaled to a loss averaged per target token.

Paper numbers and claims (``PAPER``, ``CLAIMS``, ``BASELINE_ROW``, read by `experiments.training.Experiment`): the
paper's headline result (abstract and §6: on English-Russian WMT, pruning 38 of 48 encoder heads costs 0.15
BLEU) stands beside the strongest-penalty row; each row's p-value compares it with the dense row. The claims:
a larger lambda keeps fewer heads, and the most-pruned row loses at most 0.5 BLEU against the row fine-tuned
with the weakest penalty (same steps, all heads kept).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import transformer as transformer_config
from experiments.stats import Claim

LAMBDAS = (0.002, 0.005, 0.01, 0.02, 0.05)

ROWS = {"dense": {"train.l0_penalty": 0.0}}
for _lam in LAMBDAS:
    ROWS[f"l0_{_lam:g}"] = {"train.l0_penalty": _lam, "train.init_from": "@dense", "train.schedule": "constant",
                           "train.learning_rate": 5e-4}
DEFAULT_ROWS = tuple(ROWS)
CUSTOM_ROW = "custom"
PRESET_ROWS = {"smoke": ("dense", "l0_0.01", "l0_0.05")}

# Fine-tuning steps of the lambda rows, per preset (a row with train.init_from trains train.finetune_steps).
FINETUNE_STEPS = {"smoke": 20, "small": 300, "paper": 20000}

PRESETS = {name: dict(values) for name, values in transformer_config.PRESETS.items()}
for _name, _steps in FINETUNE_STEPS.items():
    PRESETS[_name]["train.finetune_steps"] = _steps
DEFAULT_PRESET = "small"

_SOURCE = "Voita et al. 2019 (arXiv:1905.09418), abstract and §6, English-Russian WMT (48 encoder heads)"
BASELINE_ROW = "dense"
PAPER = {
    "dense": {"text": "all 48 encoder heads (the full model of the -0.15 BLEU comparison)", "source": _SOURCE},
    "l0_0.05": {"text": "10 of 48 encoder heads kept: 0.15 BLEU below all heads", "source": _SOURCE},
}
CLAIMS = (
    Claim(name="a larger L0 penalty keeps fewer encoder heads", better="l0_0.05", worse=("l0_0.01",),
          metric="heads_kept", higher_is_better=False, paper="more heads close as lambda grows (Fig. 7: BLEU against encoder heads retained)",
          source="Voita et al. 2019 (arXiv:1905.09418), §6, Fig. 7"),
    Claim(name="pruning most encoder heads costs little BLEU", better="l0_0.05", worse=("l0_0.002",),
          metric="test_bleu", margin=0.5, paper="38 of 48 heads pruned: -0.15 BLEU (EN-RU WMT)", source=_SOURCE),
)


def get_config() -> ml_collections.ConfigDict:
    """The Transformer base config with gates on the encoder self-attention heads."""
    config = transformer_config.get_config()
    config.experiment = "head_pruning"
    config.model.head_gates = "encoder"
    config.train.init_from = ""
    config.train.finetune_steps = 300
    config.train.gate_learning_rate = 0.05  # log_alpha starts at 3 and a gate closes below about -2.4
    return config
