"""Deep Sets against attention pooling, GRU and LSTM on summing the labels of a set of images (`experiments.deep_sets`).

Zaheer, Kottur, Ravanbakhsh, Póczos, Salakhutdinov & Smola 2017, "Deep Sets" (NeurIPS, arXiv:1703.06114), §4.1.1
"sum of digits", Fig. 2 (right: image inputs): a set of MNIST8m digit images, the target is the sum of their
digits; trained on sets of at most 10 images, tested on larger sets. Fig. 2 gives accuracy curves against the
number of inputs, no table: Deep Sets keeps a high accuracy as the sets grow past the training sizes, while GRU
and LSTM fall towards zero. The authors' code (github.com/manzilzaheer/DeepSets, DigitSum/image_sum.ipynb) trains
every model with the L1 loss (Keras ``loss='mae'``) and Adam 1e-3 on sets of 1 to 9 items.

Here: Fashion-MNIST items (their class label 0..9 is the "digit"), training sets of ``data.min_train_size`` to
``data.max_train_size`` items from the train split, test sets of ``eval.test_sizes`` items from the test split.

Rows (one per-item encoder phi = `experiments.vision.ConvEncoder` + global mean pool + Dense, shared by every row;
then the row's aggregator and a scalar output; L1 loss):

  deep_sets          `attention_jax.layers.sets.DeepSets`: a ReLU layer per item, sum, a linear output (rho)
  attention_pooling  a ReLU layer per item, `attention_jax.layers.sets.AttentionPooling` (one seed, PMA's
                     attention), rho = ReLU layer + linear output
  gru, lstm          flax `GRUCell` / `OptimizedLSTMCell` over the items in their given order, the final state ->
                     ReLU layer + linear output

Presets (2-core CPU machine, ``--jobs=2``; wall times in WORKSPACE.md):

* ``smoke``: 4,000 train and 2,000 test images, test sets of 2 / 5 / 10 items (60 each), 30 steps of 16 sets,
  one seed, every row (plumbing only; about 2 min wall measured on the busy machine, 65 CPU-seconds: an
  estimated 40 s idle).
* ``small`` (default): every image, 3 seeds, 4 rows, ``train.num_steps`` (800) steps of 16 sets (about 1.2
  passes over the images), 500 test sets per size. Measured: **5.5 min** for the 12 runs and the report on the
  idle machine (2026-12-04).

Model sizes: ConvEncoder (8, 16) + mean pool + Dense 32 per item, aggregator width 64; Adam 3e-3 with a cosine
decay, batches of 16 sets. Single-seed trials on the busy machine: Deep Sets (1000 steps) 0.60 error per item at
size 5 (11% exact sums), 0.13 at size 100; GRU (900 steps) 0.61 at size 5, 3.8 at size 100; attention pooling
above 1 at every size (it cannot count, `experiments.deep_sets`).
"""

from __future__ import annotations

import ml_collections

from experiments import configs
from experiments.stats import Claim

ROWS = {
    "deep_sets": {"model.aggregator": "deep_sets"},
    "attention_pooling": {"model.aggregator": "attention_pooling"},
    "gru": {"model.aggregator": "gru"},
    "lstm": {"model.aggregator": "lstm"},
}
DEFAULT_ROWS = tuple(ROWS)
AGGREGATORS = tuple(ROWS)
BASELINE_ROW = "deep_sets"
DEFAULT_PRESET = "small"
DEFAULT_TEST_SIZES = (5, 10, 20, 50, 100)

_FIG = "Zaheer et al. 2017 (arXiv:1703.06114), §4.1.1, Fig. 2 right (curves only, no table)"
PAPER = {
    "deep_sets": {"text": "Fig. 2: accuracy stays high as sets grow past 10", "source": _FIG},
    "gru": {"text": "Fig. 2: accuracy falls towards 0 past the training sizes", "source": _FIG},
    "lstm": {"text": "Fig. 2: accuracy falls towards 0 past the training sizes", "source": _FIG},
}


def item_mae_key(size: int) -> str:
    """The record key of the mean absolute error divided by the set size, at one test size."""
    return f"test_s{size}_item_mae"


def accuracy_key(size: int) -> str:
    """The record key of the exact-sum accuracy (%) at one test size."""
    return f"test_s{size}_accuracy"


def mae_key(size: int) -> str:
    """The record key of the mean absolute error of the sum at one test size."""
    return f"test_s{size}_mae"


def degradation_row(row: str, size: int) -> str:
    """The name of a row at one test size in the degradation claims ("gru @ 100")."""
    return f"{row} @ {size}"


def claims_for(test_sizes) -> tuple[Claim, ...]:
    """The row claims of a table tested at ``test_sizes``: Deep Sets beats GRU and LSTM at the largest size.

    The metric is the error per item (MAE / set size, lower is better): exact-sum accuracy at the largest sizes
    can be near 0 for every row with Fashion-MNIST's item confusions, so it cannot order the rows there
    (`experiments.deep_sets`'s docstring).
    """
    large = max(test_sizes)
    return (Claim(f"Deep Sets beats GRU and LSTM on sets of {large}", "deep_sets", ("gru", "lstm"),
                  metric=item_mae_key(large), higher_is_better=False,
                  paper="Fig. 2: Deep Sets above GRU and LSTM on the largest sets", source=_FIG),)


def degradation_claims(test_sizes) -> tuple[Claim, ...]:
    """GRU's and LSTM's error per item grows from the smallest test size to the largest.

    These compare one row at two sizes, so their "rows" are `degradation_row` names ("gru @ 5"), not table rows;
    `experiments.deep_sets.write_report` builds their records and tests them with an unpaired permutation test
    (different sets at the two sizes). None when there is one test size.
    """
    small, large = min(test_sizes), max(test_sizes)
    if small == large:
        return ()
    return tuple(Claim(f"{name}'s error per item grows from sets of {small} to {large}",
                       degradation_row(row, small), (degradation_row(row, large),), metric="test_item_mae",
                       higher_is_better=False, paper=f"Fig. 2: {name}'s accuracy falls as the sets grow",
                       source=_FIG)
                 for row, name in (("gru", "GRU"), ("lstm", "LSTM")))


CLAIMS = claims_for(DEFAULT_TEST_SIZES)

PRESETS = {
    "smoke": {"data.max_train_images": 4000, "data.dev_images": 500, "eval.test_pool": 2000,
              "eval.test_sizes": (2, 5, 10), "eval.test_sets": 60, "eval.dev_sets": 40, "train.num_steps": 30,
              "train.log_every": 10, "train.eval_every": 15, "train.checkpoint_every": 15,
              "eval.significance_samples": 500, "seeds": ""},
    "small": {"seeds": "3"},
}


def get_config() -> ml_collections.ConfigDict:
    """The base config (the ``small`` preset's values unless it overrides them)."""
    c = ml_collections.ConfigDict()
    c.experiment = "deep_sets"
    c.seed = 0
    c.seeds = ""

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = configs.DEFAULT_CACHE_DIR
    c.data.min_train_size = 1  # items per training set, drawn uniformly from [min, max]
    c.data.max_train_size = 10  # also the padded length of a training batch
    c.data.dev_images = 2000  # the last train images, held out for the dev sets
    c.data.max_train_images = 0  # 0: every other train image

    c.model = ml_collections.ConfigDict()
    c.model.aggregator = "deep_sets"
    c.model.conv_features = (8, 16)
    c.model.embed_dim = 32  # the per-item encoder's output
    c.model.hidden = 64  # the aggregator's width (phi layer, attention, recurrent state, rho)
    c.model.num_heads = 4  # attention_pooling
    c.model.output_scale = 5.0  # every row's output times this (about one label per unit)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16  # sets per step (packed into at most item_budget images)
    c.train.learning_rate = 3e-3  # cosine decay to 5% over num_steps
    c.train.grad_clip_norm = 5.0
    c.train.num_steps = 800
    c.train.max_minutes = 0.0
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200

    c.eval = ml_collections.ConfigDict()
    c.eval.test_sizes = DEFAULT_TEST_SIZES
    c.eval.test_sets = 500  # per size, the same for every row and seed
    c.eval.test_seed = 2017
    c.eval.test_pool = 0  # the first N test images the sets draw from; 0: all 10,000
    c.eval.dev_sets = 200  # of data.max_train_size items from the held-out train images
    c.eval.batch_size = 1000  # images per encoder call at evaluation
    c.eval.significance = "bs"
    c.eval.significance_samples = 2000
    c.eval.baseline_row = ""

    c.mesh = configs.mesh_config()
    return c
