"""The Attention Sum Reader against the Attention-over-Attention Reader on CBT-style cloze questions
(`experiments.cloze`).

Kadlec et al. 2016 (arXiv:1603.01547) answer a cloze question by attending from the query vector over the
document and summing the attention of each candidate's occurrences (pointer-sum). Cui et al. 2017
(arXiv:1607.04423) put a second attention over the query (attention-over-attention) and report on the Children's
Book Test (Hill et al. 2015, arXiv:1511.02301) named entities AoA 72.0 against the AS Reader's 68.6 (test), and
common nouns 69.4 against 63.4. CBT is not reachable from this machine; the questions are built from the King James
Bible as CBT was built from children's books (`experiments.data.cloze`: 20 verses of context, a named entity or
common noun blanked in verse 21, 10 candidates from the context, split by book).

Rows (`attention_jax.models.reader`, word embeddings and bidirectional GRUs; one row per reader and answer kind):

  as_ne, aoa_ne      named entities       (baseline of its kind: as_ne)
  as_cn, aoa_cn      common nouns         (baseline of its kind: as_cn)

Presets (2-core CPU machine, ``--jobs=2``; wall times in WORKSPACE.md):

* ``smoke``: 300 training questions per kind, 100 test questions, 20 steps, one seed (plumbing only).
* ``small`` (default): every question, 3 seeds, ``train.num_steps`` (400) steps of 32 questions: 50.7 min for the
  12 runs on partly shared cores, about 40 min alone.
* ``paper``: the papers' sizes (embedding 384, GRU 256 per direction (AS) / 384 embedding and 256 GRU (AoA)), for
  an accelerator.
"""

from __future__ import annotations

import ml_collections

from experiments import configs
from experiments.stats import Claim

ROWS = {
    "as_ne": {"model.reader": "as", "data.answer_type": "ne"},
    "aoa_ne": {"model.reader": "aoa", "data.answer_type": "ne"},
    "as_cn": {"model.reader": "as", "data.answer_type": "cn"},
    "aoa_cn": {"model.reader": "aoa", "data.answer_type": "cn"},
}
DEFAULT_ROWS = tuple(ROWS)
BASELINE_ROW = "as_ne"  # the report tests each row against the AS Reader of its own answer kind
DEFAULT_PRESET = "small"

_AS = "Kadlec et al. 2016 (arXiv:1603.01547), Table 4, 'AS Reader (single model)', CBT test"
_AOA = "Cui et al. 2017 (arXiv:1607.04423), Table 3, 'AoA Reader (single model)', CBT test"
PAPER = {
    "as_ne": {"text": "CBT-NE test 68.6", "accuracy": 68.6, "source": _AS},
    "aoa_ne": {"text": "CBT-NE test 72.0", "accuracy": 72.0, "source": _AOA},
    "as_cn": {"text": "CBT-CN test 63.4", "accuracy": 63.4, "source": _AS},
    "aoa_cn": {"text": "CBT-CN test 69.4", "accuracy": 69.4, "source": _AOA},
}
CLAIMS = (
    Claim("AoA beats the AS Reader on named entities", "aoa_ne", ("as_ne",), metric="test_accuracy",
          paper="CBT-NE test 72.0 vs 68.6", source=f"{_AOA}; {_AS}"),
    Claim("AoA beats the AS Reader on common nouns", "aoa_cn", ("as_cn",), metric="test_accuracy",
          paper="CBT-CN test 69.4 vs 63.4", source=f"{_AOA}; {_AS}"),
)

PRESETS = {
    "smoke": {"data.max_train": 300, "data.max_test": 100, "train.num_steps": 20, "train.log_every": 5,
              "train.eval_every": 10, "train.checkpoint_every": 10, "model.embed_dim": 32, "model.hidden_size": 32,
              "seeds": ""},
    "small": {"seeds": "3"},
    "paper": {"model.embed_dim": 384, "model.hidden_size": 256, "train.batch_size": 32, "train.num_steps": 20000,
              "train.learning_rate": 1e-3, "seeds": "3"},
}


def get_config() -> ml_collections.ConfigDict:
    """The base config (the ``small`` preset's values unless it overrides them)."""
    c = ml_collections.ConfigDict()
    c.experiment = "cloze"
    c.seed = 0
    c.seeds = ""

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = configs.DEFAULT_CACHE_DIR
    c.data.answer_type = "ne"  # "ne" | "cn" (set by the rows)
    c.data.vocab_size = 20000  # word pieces; the KJV has fewer distinct words, so all of them get one
    c.data.dev_fraction = 0.1
    c.data.test_fraction = 0.15
    c.data.train_stride = 1  # a question starts at every verse of the training books
    c.data.test_stride = 1
    c.data.max_document = 1024  # context tokens kept (the last ones, nearest the query)
    c.data.max_query = 128
    c.data.max_train = 0  # questions; 0: all
    c.data.max_test = 0  # questions of dev and of test; 0: all

    c.model = ml_collections.ConfigDict()
    c.model.reader = "aoa"  # "as" | "aoa" (set by the rows)
    c.model.embed_dim = 128
    c.model.hidden_size = 96
    c.model.dropout_rate = 0.1

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.learning_rate = 1e-3
    c.train.grad_clip_norm = 5.0
    c.train.num_steps = 400
    c.train.max_minutes = 0.0
    c.train.log_every = 25
    c.train.eval_every = 200
    c.train.checkpoint_every = 100

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64
    c.eval.significance = "bs"
    c.eval.significance_samples = 2000
    c.eval.baseline_row = ""
    c.eval.num_figures = 2

    c.mesh = configs.mesh_config()
    return c
