"""Luong et al. 2015 (arXiv:1508.04025), Table 4: attentional architectures on German->English.

One run trains every row of the ablation (global attention with the location / dot / general /
concat scores, local-m and local-p with dot / general, and a no-attention baseline) on the Ding
dictionary's example sentences (``ding_de_en``) and reports dev and test perplexity and sacrebleu
BLEU (beam search, SentencePiece-detokenised) for each row.

Command (the README's main command; preset ``small``, workdir ``workdirs/luong``)::

    python -m experiments.luong
    python -m experiments.luong --preset=smoke --workdir=/tmp/luong_smoke
    python -m experiments.luong --rows=global_dot,local_p_general --config.train.max_minutes=5
    python -m experiments.luong --rows=custom --config.model.score=concat --config.model.mode=local_p

Presets and expected wall time on the 2-core CPU machine (all rows, first run, jit compiles
included; the corpus download adds ~10 s once; a rerun resumes from the checkpoints and skips
finished rows, and JAX's persistent compilation cache in ~/.cache/attention_jax/jax_cache makes
later compiles cheaper):

* ``smoke``: tiny LSTM (32 units), 40 steps per row, greedy decoding, ~100-sentence dev/test, one
  bucket shape: measured 2.0 minutes for the whole table (cold compile cache). Checks the
  plumbing only: dev ppl ~280, BLEU ~0.
* ``small``: one 128-unit LSTM layer, 4k SentencePiece vocabulary, 1400 steps per row (batch 64,
  about 5 epochs; ``train.max_minutes=2.7`` only caps a slow machine), beam 4 on 500-sentence dev and
  test sets: measured 19.1 minutes for the whole table (1148 s, cold compile cache).
* ``paper``: Luong's sizes: 4 LSTM layers of 1000 units, 1000-dim embeddings, dropout 0.2,
  window D=10, batch 128, ~12 epochs, beam 12 (Adam instead of plain SGD). Not feasible on this
  machine (days per row); meant for an accelerator.

Differences from the paper: the corpus is the Ding dictionary's ~18.5k example sentences instead of
WMT'14 (4.5M pairs), the vocabulary is a joint SentencePiece model, the optimiser is Adam with
global-norm clipping, and there is no unknown-word replacement.

Numbers produced (seed 0, 2-core CPU, jax 0.10.2; full table and discussion in WORKSPACE.md):
smoke checks the plumbing only (dev ppl ~280, BLEU < 0.5 after 40 steps). small gives test ppl 53.4-69.4
and test BLEU 0.35-3.29 for the attention rows (best: local-m dot 3.29, global dot 3.10) against ppl
48.7 / BLEU 1.00 without attention.
"""

from __future__ import annotations

import ml_collections

from experiments import configs

# Row name -> the fields that define it (Luong Table 4; all attentional rows use input feeding).
ROWS = {
    "global_location": {"model.attention": "luong", "model.mode": "global", "model.score": "location"},
    "global_dot": {"model.attention": "luong", "model.mode": "global", "model.score": "dot"},
    "global_general": {"model.attention": "luong", "model.mode": "global", "model.score": "general"},
    "global_concat": {"model.attention": "luong", "model.mode": "global", "model.score": "concat"},
    "local_m_dot": {"model.attention": "luong", "model.mode": "local_m", "model.score": "dot"},
    "local_m_general": {"model.attention": "luong", "model.mode": "local_m", "model.score": "general"},
    "local_p_dot": {"model.attention": "luong", "model.mode": "local_p", "model.score": "dot"},
    "local_p_general": {"model.attention": "luong", "model.mode": "local_p", "model.score": "general"},
    "no_attention": {"model.attention": "none"},
}
# Rows run when --rows is not given. "custom" (not in the default set) runs config.model as given.
DEFAULT_ROWS = tuple(ROWS)
CUSTOM_ROW = "custom"

PRESETS = {
    "smoke": {
        "data.vocab_size": 1000,
        "data.max_words": 12,
        "data.dev_size": 100,
        "data.test_size": 100,
        "data.max_train": 3000,
        "data.buckets": (40,),  # One shape: one compile per jitted function.
        "model.embed_dim": 32,
        "model.hidden_size": 32,
        "model.window": 4,
        "train.batch_size": 32,
        "train.learning_rate": 3e-3,
        "train.num_steps": 40,
        "train.max_minutes": 1.0,
        "train.log_every": 10,
        "train.eval_every": 20,
        "train.checkpoint_every": 20,
        "eval.batch_size": 128,
        "eval.beam_size": 1,
        "eval.max_decode_len": 39,  # Keeps the heatmap pass (hypothesis + EOS) inside the bucket.
        "eval.num_heatmaps": 2,
        "eval.dev_bleu": True,
    },
    "small": {
        "data.vocab_size": 4000,
        "data.max_words": 30,
        "data.dev_size": 500,
        "data.test_size": 500,
        "data.max_train": 0,
        "data.buckets": (16, 32, 64),
        "model.embed_dim": 128,
        "model.hidden_size": 128,
        "model.dropout_rate": 0.1,
        "model.window": 5,
        "train.batch_size": 64,
        "train.learning_rate": 2e-3,
        "train.num_steps": 1400,  # Equal steps for every row; max_minutes is only a safety cap.
        "train.max_minutes": 2.7,
        "train.log_every": 50,
        "train.eval_every": 500,
        "train.checkpoint_every": 200,
        "eval.batch_size": 250,
        "eval.beam_size": 4,
        "eval.max_decode_len": 64,
        "eval.num_heatmaps": 3,
    },
    "paper": {
        "data.vocab_size": 16000,  # Luong used 50k words; the Ding sentences cannot fill that.
        "data.max_words": 50,
        "data.dev_size": 1000,
        "data.test_size": 1000,
        "data.max_train": 0,
        "data.buckets": (16, 32, 64, 128),
        "model.embed_dim": 1000,
        "model.hidden_size": 1000,
        "model.num_layers": 4,
        "model.dropout_rate": 0.2,
        "model.window": 10,
        "train.batch_size": 128,
        "train.learning_rate": 1e-3,
        "train.num_steps": 1700,  # ~12 epochs of the ~18k Ding training sentences.
        "train.max_minutes": 0.0,
        "train.log_every": 50,
        "train.eval_every": 500,
        "train.checkpoint_every": 500,
        "eval.batch_size": 64,
        "eval.beam_size": 12,
        "eval.max_decode_len": 128,
        "eval.num_heatmaps": 4,
    },
}
DEFAULT_PRESET = "small"


def get_config() -> ml_collections.ConfigDict:
    """Returns the base Luong config (a 1-layer LSTM with input feeding; rows set score/mode)."""
    config = configs.base_config()
    config.experiment = "luong"
    config.data.corpus = "ding_de_en"
    config.model.cell = "lstm"
    config.model.bidirectional = False
    config.model.attention = "luong"
    config.model.score = "general"
    config.model.mode = "global"
    config.model.input_feeding = True
    config.eval.length_bins = (5, 10, 15, 20, 30, 40)
    return config
