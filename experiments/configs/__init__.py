"""Shared config schema for the translation experiments.

Every experiment config has the same four sections, so the shared training loop
(`experiments/training/`) reads them the same way:

* ``data``: the fields `experiments.data.prepare` reads (corpus, vocabulary, splits, buckets).
* ``model``: the keyword arguments of `attention_jax.models.seq2seq.Seq2Seq` (minus ``vocab_size``,
  which comes from the tokenizer).
* ``train``: optimiser, budget (``num_steps`` and ``max_minutes``, whichever comes first) and the
  logging / evaluation / checkpoint cadence.
* ``eval``: decoding (beam size, length penalty, maximum length), evaluation batch size,
  BLEU-by-length bins and the number of attention heatmaps.

An experiment module (`configs/luong.py`, `configs/bahdanau.py`) provides ``get_config()`` (the base
config), ``PRESETS`` (name -> flat dict of dotted overrides, applied on top of the base) and ``ROWS``
(row name -> flat dict of dotted overrides that define the row). The command line applies, in
order: base, preset, ``--config.*`` overrides; each row then sets its own fields on top.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
from typing import Any

import ml_collections

PRESET_NAMES = ("smoke", "small", "paper")

# Fields a row may change between runs without invalidating its checkpoint: they only change how
# long it trains, how often it logs, and how it is evaluated.
RESUMABLE_FIELDS = (
    "train.num_steps",
    "train.max_minutes",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "eval.",
    "mesh.",  # a checkpoint restores into any mesh: orbax reshards it to the new layout
    "seeds",  # which (row, seed) runs to do; each run's own seed is in its config
)

# Fields that only choose which runs happen and how the table is reported: they are left out of a run's
# fingerprint, so changing them keeps every finished (row, seed) run.
REPORT_FIELDS = ("seeds", "eval.significance", "eval.significance_samples", "eval.baseline_row")

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "attention_jax")


def base_config() -> ml_collections.ConfigDict:
    """Returns the fields every translation experiment has, with neutral defaults.

    Returns:
      A ConfigDict with sections data, model, train, eval and mesh; types are fixed here, so a
      ``--config.section.field=value`` override is type-checked against them.
    """
    config = ml_collections.ConfigDict()
    config.experiment = ""
    config.seed = 0
    # Seeds of every row: "" runs once with ``seed``; "0,1,2" runs those seeds; a bare count "3" runs 0, 1, 2
    # (for one other seed, "5," or --config.seed=5). Each (row, seed) trains and resumes on its own.
    config.seeds = ""

    config.data = ml_collections.ConfigDict()
    config.data.corpus = ""
    config.data.data_dir = DEFAULT_CACHE_DIR  # Debian packages, parsed pairs and tokenizers/ go here.
    config.data.data_path = ""
    config.data.skip_malformed = False  # True: skip (and count) --data_path TSV lines without a tab, not stop.
    config.data.max_words = 50
    config.data.vocab_size = 8000
    config.data.dev_size = 1000
    config.data.test_size = 1000
    config.data.max_train = 0
    config.data.buckets = (16, 32, 64)
    # Length-stratified test set: every source-length bin of test_bins gets at least this many test pairs (moved
    # from train in hash order; 0 = off). Experiments set test_bins to eval.length_bins.
    config.data.test_min_per_bin = 0
    config.data.test_bins = (10, 20, 30, 40, 50, 60)

    config.model = ml_collections.ConfigDict()
    config.model.embed_dim = 256
    config.model.hidden_size = 256
    config.model.num_layers = 1
    config.model.cell = "lstm"
    config.model.bidirectional = False
    config.model.dropout_rate = 0.0
    config.model.attention = "luong"
    config.model.score = "general"
    config.model.mode = "global"
    config.model.window = 10
    config.model.input_feeding = True
    config.model.max_source_len = 0  # 0: the longest padded source of the data (used by the 'location' score).
    config.model.attention_features = 0

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.learning_rate = 1e-3
    config.train.grad_clip_norm = 5.0
    config.train.num_steps = 1000
    config.train.max_minutes = 0.0  # 0: no time limit.
    config.train.max_source_words = 0  # 0: every training pair; Bahdanau's -30 / -50 rows set it.
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.checkpoint_every = 200

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64
    config.eval.beam_size = 5
    config.eval.length_penalty = 1.0
    config.eval.decode_len_ratio = 1.5  # max decode length = ratio * source bucket + extra.
    config.eval.decode_len_extra = 10
    config.eval.max_decode_len = 128
    config.eval.num_heatmaps = 3
    config.eval.heatmap_max_tokens = 40
    config.eval.length_bins = (10, 20, 30, 40, 50, 60)
    config.eval.dev_bleu = True
    # Paired significance of each row's test BLEU / chrF against the baseline row (experiments/stats.py):
    # "bs" sacrebleu's paired bootstrap resampling, "ar" its paired approximate randomisation, "none" off.
    config.eval.significance = "bs"
    config.eval.significance_samples = 1000  # resamples (bs) or trials (ar); the CIs use 1000 resamples
    config.eval.baseline_row = ""  # "": the experiment's BASELINE_ROW (its config module); else a row name

    # The device mesh (experiments/training/distributed.py): all 1 is one device. On a CPU the product of the
    # sizes is simulated as that many devices (experiments/devices.py sets XLA_FLAGS before jax starts).
    config.mesh = mesh_config()
    return config


def mesh_config() -> ml_collections.ConfigDict:
    """The ``mesh`` section: data, fsdp, model, seq, all 1 (one device)."""
    mesh = ml_collections.ConfigDict()
    mesh.data = 1
    mesh.fsdp = 1
    mesh.model = 1
    mesh.seq = 1
    return mesh


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted-path fields in place, e.g. ``{"model.score": "dot"}``.

    Args:
      config: the config to change.
      overrides: dotted path -> value.

    Raises:
      KeyError: if a path names no existing field.
      TypeError: if a value has the wrong type for its field.
    """
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"config has no field {path!r}")
        node[leaf] = value


def apply_preset(config: ml_collections.ConfigDict, presets: Mapping[str, Mapping[str, Any]],
                 name: str) -> None:
    """Applies the preset ``name`` (a flat dict of dotted overrides) to ``config`` in place.

    Raises:
      ValueError: if ``name`` is not a key of ``presets``.
    """
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    apply_overrides(config, presets[name])


def is_resumable_field(path: str) -> bool:
    """Whether a change to the dotted field ``path`` keeps a row's checkpoint usable."""
    return any(path == f or (f.endswith(".") and path.startswith(f)) for f in RESUMABLE_FIELDS)


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens a (nested) config into ``{"section.field": value}`` with JSON-friendly values."""
    flat = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            flat.update(flatten(value, prefix=path + "."))
        elif isinstance(value, tuple):
            flat[path] = list(value)
        else:
            flat[path] = value
    return flat
