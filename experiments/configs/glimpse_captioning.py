"""Show, Attend and Tell's soft against hard attention on canvases of Fashion-MNIST items
(`experiments.glimpse_captioning`).

Xu et al. 2015 (ICML, arXiv:1502.03044) caption photographs with an LSTM that attends, at each word, over the
L = 14 x 14 annotation vectors of a VGG feature map: soft attention reads their expectation under alpha (§4.2,
trained by backpropagation with the doubly stochastic penalty of eq. 14), hard attention reads one sampled
location (§4.1, trained with the REINFORCE rule of eq. 12: a moving-average baseline, an entropy bonus, and half
the time the expected context instead of the sample). Here the image is a 64 x 96 canvas holding 3 real
Fashion-MNIST items and the caption is their 3 class names left to right, so a model must look at each item in
turn: the task asks for exactly the "where to look next" that the paper's attention maps show.

Rows (the same `ConvEncoder` (8, 32, 64) -> 16 x 24 map, L = 384 annotation vectors of D = 66: 64 channels and
the cell's (x, y), since the caption's order is spatial; an LSTM decoder initialised from the mean annotation
(f_init); `attention_jax.layers.show_attend_tell.ShowAttendTellAttention` with the beta gate; the deep output of
eq. 7):

  soft     expected context, loss NLL + lambda * doubly stochastic penalty (lambda = 1; baseline row)
  hard     one sampled location (the expected context with probability 0.5), REINFORCE with baseline and entropy
  gumbel   one location by the straight-through Gumbel-softmax (Jang et al. 2016, arXiv:1611.01144)
  soft_no_penalty  (on request) soft without the doubly stochastic penalty: with K = 3 steps over L = 384
           locations, sum_t alpha_ti is far below 1 everywhere, so eq. 14 mostly pushes each step's attention to
           spread out

The paper's Flickr8k BLEU-4 (Table 1): soft 19.5, hard 21.3 (as the task brief gives them, and as a
re-implementation's README quotes Table 1; the paper's own text was not readable here).

lambda of eq. 14: the paper gives no number; 1.0 is the released code's default (kelvinxu/arctic-captions,
evaluate_coco.py, ``alpha-c``). Test time: greedy decoding; the hard rows read the expected context
(``model.deterministic_context = "expected"``), as the released sampler does by default
(generate_caps.py without ``-sampling``: ``alpha_sample = alpha``). The hard and gumbel rows are also scored
reading the argmax location and reading a sampled location. One difference from the released code: there the coin
that picks the expected context is tossed once per minibatch (``h_sampling_mask``), here once per canvas (the
library's `show_attend_tell`).

Presets (2-core CPU machine, ``--jobs=2``):

* ``smoke``: 1,200 train / 200 dev / 300 test canvases, a smaller encoder, 30 steps, one seed, the default
  rows (plumbing only; about 1 min).
* ``small`` (default): 16,000 train / 500 dev / 2,000 test canvases, 3 seeds, ``train.num_steps`` (500) steps of
  32 canvases (one epoch). Measured: **8.1 min** for the 9 runs and the report on the idle machine (2026-12-04);
  a run trains for about 1 min (one core each).
"""

from __future__ import annotations

import ml_collections

from experiments import configs
from experiments.stats import Claim

ROWS = {
    "soft": {"model.mode": "soft", "train.doubly_stochastic": 1.0},
    "hard": {"model.mode": "hard", "train.doubly_stochastic": 0.0},
    "gumbel": {"model.mode": "gumbel", "train.doubly_stochastic": 0.0},
    # On request (--rows=soft_no_penalty or all): soft attention without eq. 14's penalty.
    "soft_no_penalty": {"model.mode": "soft", "train.doubly_stochastic": 0.0},
}
DEFAULT_ROWS = ("soft", "hard", "gumbel")
BASELINE_ROW = "soft"
DEFAULT_PRESET = "small"

_TABLE = ("Xu et al. 2015 (arXiv:1502.03044), Table 1, Flickr8k BLEU-4 (checked against a re-implementation's "
          "quotation of Table 1, not the paper's own text)")
PAPER = {
    "soft": {"text": "Flickr8k BLEU-4 19.5", "source": _TABLE},
    "hard": {"text": "Flickr8k BLEU-4 21.3", "source": _TABLE},
}
CLAIMS = (
    Claim("hard attention beats soft attention", "hard", ("soft",), metric="test_seq_accuracy",
          paper="Flickr8k BLEU-4 21.3 (hard) vs 19.5 (soft)", source=_TABLE),
)

PRESETS = {
    "smoke": {"data.train_size": 1200, "data.dev_size": 200, "data.test_size": 300, "model.features": (8, 16, 32),
              "model.hidden": 64, "model.attention_hidden": 32, "train.num_steps": 30, "train.log_every": 10,
              "train.eval_every": 15, "train.checkpoint_every": 15, "seeds": ""},
    "small": {"seeds": "3"},
}


def get_config() -> ml_collections.ConfigDict:
    """The base config (the ``small`` preset's values unless it overrides them)."""
    c = ml_collections.ConfigDict()
    c.experiment = "glimpse_captioning"
    c.seed = 0
    c.seeds = ""

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = configs.DEFAULT_CACHE_DIR
    c.data.num_items = 3  # items per canvas = caption length K
    c.data.height = 64
    c.data.width = 96
    c.data.min_dx = 4  # least distance of two items' left edges (pixels)
    c.data.train_size = 16000  # canvases from the training split
    c.data.dev_size = 500  # canvases from the first half of the test split
    c.data.test_size = 2000  # canvases from the second half of the test split
    c.data.canvas_seed = 0  # the canvases are the same for every row and seed

    c.model = ml_collections.ConfigDict()
    c.model.mode = "soft"
    c.model.features = (8, 32, 64)
    c.model.pool = (True, True, False)  # 64 x 96 -> 16 x 24 annotation vectors
    c.model.embed_dim = 32
    c.model.hidden = 128  # LSTM state
    c.model.attention_hidden = 64  # A of f_att
    c.model.gate = True  # the beta gate of §4.2.1
    c.model.expected_context_prob = 0.5  # hard: the chance a row reads the expected context (§4.1)
    c.model.temperature = 1.0  # gumbel: tau
    c.model.deterministic_context = "expected"  # what hard / gumbel read at test time

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.learning_rate = 2e-3
    c.train.grad_clip_norm = 5.0
    c.train.num_steps = 500
    c.train.max_minutes = 0.0
    c.train.log_every = 25
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.doubly_stochastic = 1.0  # lambda of eq. 14 (the rows set it)
    c.train.lambda_r = 1.0  # hard: weight of the REINFORCE term (eq. 12)
    c.train.lambda_e = 0.01  # hard: weight of the entropy bonus (eq. 12)
    c.train.baseline_decay = 0.9  # hard: b <- 0.9 b + 0.1 log p(y | s, a)

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 250
    c.eval.significance = "bs"
    c.eval.significance_samples = 2000
    c.eval.baseline_row = ""
    c.eval.num_overlays = 3  # test canvases drawn with their attention maps

    c.mesh = configs.mesh_config()
    return c
