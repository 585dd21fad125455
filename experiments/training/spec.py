"""What an experiment is: its `Experiment` spec, the config of each row, and a row's place in the workdir.

* `Experiment`: one paper's ablation (config, presets, rows, model builder, table columns, extra figures).
* `row_config`: the base config with a row's fields on top; `fingerprint` hashes it.
* A row lives in ``workdir/<row_dir_name(row)>``: ``row_config.json`` (`check_resumable` compares it with the
  current config before resuming a checkpoint) and, once finished, ``done.json`` (`done_record`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import ml_collections

from experiments import configs
from experiments import results


class ConfigError(ValueError):
    """A bad flag or config value; the message is one sentence naming the problem and the fix."""


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, max_source_len: int):
    """The `attention_jax.models.seq2seq.Seq2Seq` of a row.

    Args:
      model_config: the ``model`` section (Seq2Seq keyword arguments).
      vocab_size: V of the joint SentencePiece vocabulary.
      max_source_len: used when ``model_config.max_source_len`` is 0: the longest padded source
        the model will see (the location score's W_a has that many outputs).

    Raises:
      ValueError: invalid model options (raised by Seq2Seq itself).
    """
    from attention_jax.models.seq2seq import Seq2Seq  # pylint: disable=import-outside-toplevel

    kwargs = dict(model_config.to_dict())
    if not kwargs.get("max_source_len"):
        kwargs["max_source_len"] = int(max_source_len)
    return Seq2Seq(vocab_size=int(vocab_size), **kwargs)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What `experiments.training.run_experiment` needs to know about one paper's ablation.

    Attributes:
      name: short name ("luong"); also the module run by ``python -m experiments.<name>``.
      title: heading of results.md.
      get_config: returns the base config (see `experiments.configs`).
      presets: preset name -> flat dict of dotted overrides.
      rows: row name -> flat dict of dotted overrides that define the row.
      default_rows: rows run when --rows is not given.
      default_preset: preset used when --preset is not given.
      default_workdir: workdir used when --workdir is not given.
      custom_row: a row name that runs ``config.model`` as given (no row overrides).
      bleu_by_length: whether to plot and tabulate BLEU by source length.
      build_model: (model_config, vocab_size, max_source_len) -> flax module with the `Seq2Seq` call
        interface; None builds an `attention_jax.models.seq2seq.Seq2Seq`.
      describe_model: row config -> the descriptive columns of a row's record; None gives the
        attention / score / mode columns of the recurrent experiments.
      columns: (header, record key) pairs of results.md's table; None means `results.COLUMNS`.
      validate_model: None (the recurrent models' checks in `experiments.cli.validate`) or a function
        (row config) -> None raising `ConfigError` for a bad model config.
      preset_rows: preset name -> the rows run when --rows is not given with that preset (default:
        ``default_rows``).
      record_extras: None or (model, params, row config) -> extra fields of the row's record (for
        example the heads a pruned model keeps).
      extra_figures: None or (records in table order, workdir) -> paths of further PNG figures.
    """

    name: str
    title: str
    get_config: Callable[[], ml_collections.ConfigDict]
    presets: Mapping[str, Mapping[str, Any]]
    rows: Mapping[str, Mapping[str, Any]]
    default_rows: tuple[str, ...]
    default_preset: str
    default_workdir: str
    custom_row: str = "custom"
    bleu_by_length: bool = False
    build_model: Callable[..., Any] | None = None
    describe_model: Callable[[Any], dict[str, Any]] | None = None
    columns: tuple[tuple[str, str], ...] | None = None
    validate_model: Callable[[ml_collections.ConfigDict], None] | None = None
    preset_rows: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    record_extras: Callable[[Any, Any, ml_collections.ConfigDict], dict[str, Any]] | None = None
    extra_figures: Callable[[Sequence[dict[str, Any]], str], list[str]] | None = None

    def make_model(self, model_config: ml_collections.ConfigDict, vocab_size: int, max_source_len: int):
        """The row's model (see `build_model`)."""
        return (self.build_model or build_model)(model_config, vocab_size, max_source_len)

    def describe(self, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
        """The descriptive columns of a row from its config (see `describe_model`)."""
        return self.describe_model(cfg) if self.describe_model else results.describe_model(cfg.model)

    @property
    def row_names(self) -> tuple[str, ...]:
        return tuple(self.rows) + (self.custom_row,)


def row_config(exp: Experiment, config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
    """The config of one row: ``config`` with the row's fields set on top.

    A row that starts from another row's checkpoint (``train.init_from``) trains
    ``train.finetune_steps`` steps instead of ``train.num_steps`` when that field exists and is > 0.

    Raises:
      ConfigError: if ``row`` is not one of ``exp.row_names``.
    """
    if row not in exp.row_names:
        raise ConfigError(f"unknown row {row!r} for the {exp.name} experiment; fix: pass --rows as a comma-separated "
                          f"subset of {', '.join(exp.row_names)}")
    cfg = ml_collections.ConfigDict(config.to_dict())
    configs.apply_overrides(cfg, exp.rows.get(row, {}))
    if cfg.train.get("init_from", "") and cfg.train.get("finetune_steps", 0) > 0:
        cfg.train.num_steps = cfg.train.finetune_steps  # a warm-started row trains only its fine-tuning steps
    return cfg


def fingerprint(flat: Mapping[str, Any]) -> str:
    """A short stable hash of a flat config."""
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_dir_name(row: str) -> str:
    """A file-system-safe directory name for a row."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", row)


def resolve_init_from(init_from: str, workdir: str) -> str:
    """The row directory named by ``train.init_from``: "@row" is a row of the same workdir, else a path."""
    if init_from.startswith("@"):
        return os.path.join(workdir, row_dir_name(init_from[1:]))
    return os.path.expanduser(init_from)


def done_record(row_dir: str, fp: str) -> dict[str, Any] | None:
    """The record ``row_dir/done.json`` holds if it finished with the config of fingerprint ``fp``, else None."""
    path = os.path.join(row_dir, "done.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return done.get("record") if done.get("fingerprint") == fp else None


def check_resumable(exp: Experiment, row: str, flat: Mapping[str, Any], row_dir: str) -> None:
    """Refuses to resume a checkpoint trained with different model / data / optimiser settings.

    Raises:
      ConfigError: naming the changed fields and the fix.
    """
    saved_path = os.path.join(row_dir, "row_config.json")
    ckpt_dir = os.path.join(row_dir, "checkpoints")
    if not os.path.exists(saved_path) or not os.path.isdir(ckpt_dir) or not os.listdir(ckpt_dir):
        return
    with open(saved_path, encoding="utf-8") as f:
        saved = json.load(f)
    changed = sorted(k for k in set(saved) | set(flat)
                     if not configs.is_resumable_field(k) and saved.get(k) != flat.get(k))
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {flat.get(k)!r})" for k in changed[:4])
        raise ConfigError(f"{row_dir} holds a checkpoint of row {row!r} trained with a different config [{shown}]; "
                          f"fix: pass a new --workdir or delete {row_dir} to retrain that row")
