"""Dai et al. 2019 (arXiv:1901.02860): Transformer-XL language model with segment-level recurrence.

One run trains a `attention_jax.TransformerXLLM` on one token stream (SentencePiece BPE) with truncated
back-propagation through time: B parallel contiguous streams, segments of T tokens, the per-layer memory of M
tokens carried from one step to the next (reset to zeros at every epoch start). It then reports the test
perplexity with evaluation memories of several lengths (default 0, T, 2T, 4T): the paper's point (§4, Table 6/7
and the "relative effective context length") is that a longer memory lowers perplexity, even a memory longer
than the one used in training, because the relative encodings do not depend on absolute positions.

Commands::

    python -m experiments.transformer_xl --preset=smoke --workdir=/tmp/txl_smoke
    python -m experiments.transformer_xl --preset=small --workdir=experiments/results/transformer_xl
    python -m experiments.transformer_xl --data_path=my_corpus.txt --config.eval.mem_lens='(0,64,256)'
    python -m experiments.transformer_xl --preset=paper     # an accelerator

Data: the King James Bible (Debian ``sword-text-kjv``, cached by `experiments.data` in ~/.cache/attention_jax),
31,102 verses in canonical order, one verse per line, each line followed by EOS in the token stream. A plain
UTF-8 text file given with ``--data_path`` replaces it (one line = one unit; blank lines skipped). Splits are
contiguous ranges of lines: the last ``data.test_fraction`` is test (for the KJV at 3%: Hebrews 10:36 to
Revelation 22:21), the ``data.valid_fraction`` before it is valid, the rest trains. The tokenizer is trained
on train only.

Presets and expected wall time on the 2-core CPU machine (first run, jit compiles included; the tokenizer is
trained once and cached; a rerun of a finished run only re-reports; a killed run resumes from its last
checkpoint, with the memories re-zeroed, which costs one segment of context):

* ``smoke``: D=32, 2 layers, T=16, M=16, 512-piece vocabulary, 200 steps; evaluation memories 0, 16, 32, 64 on
  4k test tokens. Under a minute. Checks the plumbing only.
* ``small``: D=128, 4 layers of 4 heads x 32, d_inner 512, T=64, M=64, batch 16 streams, 2000-piece
  vocabulary, Adam 1e-3 with 100 warmup steps and cosine decay, clip 0.25, dropout 0.1, 1400 steps (~1.4M
  tokens, 1.3 epochs; ``train.max_minutes=6`` caps a slow machine); evaluation memories 0, 64, 128, 256 on the
  first 24k test tokens. At most 8 minutes.
* ``paper``: the paper's WikiText-103 base model: 16 layers, D=410, 10 heads x 41, d_inner 2100, T=150,
  M=150, dropout 0.1, batch 60, 200k steps, lr 2.5e-4; evaluation memories 0, 150, 300, 640 (the paper
  evaluates with M=640 after training with 150). Days on this CPU; meant for an accelerator.

Numbers produced (seed 0; Linux x86_64, 2 CPUs, jax 0.10.2 on cpu; 2026-11-21):

* smoke (``python -m experiments.transformer_xl --preset=smoke --workdir=/tmp/txl_smoke``): 25 s wall (0.3 min,
  warm compilation cache); 512-piece vocabulary, 200 steps; test ppl 186.3 / 181.8 / 181.7 / 181.6 at
  M = 0 / 16 / 32 / 64: plumbing only.
* small (``python -m experiments.transformer_xl --preset=small --workdir=workdirs/transformer_xl``, copied to
  experiments/results/transformer_xl): 2.4 min wall in all (144 s) with the machine to itself; all 1400 steps
  (1.3 epochs), ~12k tokens/s. Test: the first 23,552 of the 35,950 tokens of the test split (which starts at
  Hebrews 10:36), 3.56 characters per token:

      eval memory M    0 (segment alone)   64 (= train M)   128 (2T)   256 (4T)
      test ppl         84.17               77.52            77.45      77.66
      test bpc         1.7980              1.7646           1.7643     1.7654

  A memory of one segment cuts perplexity by 8% (the paper's recurrence gain); doubling it gives a further
  0.1%, and 4T (distances never seen in training, 320 keys) gives back 0.3%. A model this small and this briefly
  trained uses little context beyond ~100 tokens of verse text; the paper's gains at 4T come from
  WikiText-103-sized models trained for 200k steps. (An earlier run on cores shared with other jobs stopped on
  its 6-minute cap at step 874 and gave 94.15 / 87.43 / 87.37 / 87.58: the same shape.)
"""

from __future__ import annotations

import ml_collections

from experiments import configs

DEFAULT_PRESET = "small"
ROW = "transformer_xl"


def get_config() -> ml_collections.ConfigDict:
    """The base config (field types fixed here, so --config.* overrides are type-checked)."""
    config = ml_collections.ConfigDict()
    config.experiment = "transformer_xl"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.corpus = "kjv"
    config.data.data_dir = configs.DEFAULT_CACHE_DIR
    config.data.data_path = ""  # a plain UTF-8 text file replaces the corpus.
    config.data.vocab_size = 2000
    config.data.valid_fraction = 0.02
    config.data.test_fraction = 0.03

    config.model = ml_collections.ConfigDict()
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.head_dim = 32
    config.model.d_model = 128
    config.model.d_inner = 512
    config.model.dropout_rate = 0.1
    config.model.pre_norm = False

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 16
    config.train.segment_len = 64  # T
    config.train.mem_len = 64  # M during training
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 100
    config.train.min_lr_ratio = 0.0  # cosine decays to learning_rate * min_lr_ratio at num_steps.
    config.train.grad_clip_norm = 0.25
    config.train.num_steps = 1000
    config.train.max_minutes = 0.0  # 0: no time limit.
    config.train.log_every = 20
    config.train.eval_every = 250
    config.train.checkpoint_every = 250

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 8  # parallel test streams.
    config.eval.mem_lens = (0, 64, 128, 256)
    config.eval.max_tokens = 24000  # 0: the whole split.
    config.eval.valid_max_tokens = 4000  # the periodic valid perplexity during training.

    config.mesh = configs.mesh_config()  # the device mesh (experiments/training/distributed.py)
    return config


PRESETS = {
    "smoke": {
        "data.vocab_size": 512,
        "model.num_layers": 2, "model.num_heads": 2, "model.head_dim": 16, "model.d_model": 32,
        "model.d_inner": 64, "model.dropout_rate": 0.0,
        "train.batch_size": 8, "train.segment_len": 16, "train.mem_len": 16, "train.learning_rate": 3e-3,
        "train.warmup_steps": 20, "train.num_steps": 200, "train.max_minutes": 2.0, "train.log_every": 10,
        "train.eval_every": 100, "train.checkpoint_every": 100,
        "eval.batch_size": 4, "eval.mem_lens": (0, 16, 32, 64), "eval.max_tokens": 4000,
        "eval.valid_max_tokens": 1000,
    },
    "small": {"train.num_steps": 1400, "train.max_minutes": 6.0},
    "paper": {
        "data.vocab_size": 32000,
        "model.num_layers": 16, "model.num_heads": 10, "model.head_dim": 41, "model.d_model": 410,
        "model.d_inner": 2100, "model.dropout_rate": 0.1,
        "train.batch_size": 60, "train.segment_len": 150, "train.mem_len": 150, "train.learning_rate": 2.5e-4,
        "train.warmup_steps": 0, "train.num_steps": 200000, "train.grad_clip_norm": 0.25,
        "train.log_every": 200, "train.eval_every": 4000, "train.checkpoint_every": 4000,
        "eval.batch_size": 10, "eval.mem_lens": (0, 150, 300, 640), "eval.max_tokens": 0,
        "eval.valid_max_tokens": 0,
    },
}
