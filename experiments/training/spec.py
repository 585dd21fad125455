"""What an experiment is: its `Experiment` spec, the config of each (row, seed) run, and a run's place in the workdir.

* `Experiment`: one paper's ablation (config, presets, rows, model builder, table columns, extra figures, and
  the paper's numbers, claims and baseline row: ``PAPER``, ``CLAIMS``, ``BASELINE_ROW`` of its config module).
* `row_config`: the base config with a row's fields on top; `run_config` sets one seed on it; `run_flat`
  flattens it without the report-only fields (`experiments.configs.REPORT_FIELDS`) and `fingerprint` hashes it.
* `parse_seeds`: ``config.seeds`` ("" = ``config.seed``; "0,1,2"; a count "3" = 0, 1, 2).
* A (row, seed) run lives in ``workdir/<row_dir_name(row)>/seed_<seed>`` (`run_dir`): ``row_config.json``
  (`check_resumable` compares it with the current config before resuming a checkpoint), checkpoints/,
  metrics.jsonl, the dev/test translations and, once finished, ``done.json`` (`done_record`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import hashlib
import importlib
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
      title: the paper and table only, e.g. "Luong et al. 2015 (arXiv:1508.04025), Table 4"; the report adds
        the data actually used (`experiments.training.report.data_description`).
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
      dev_metrics: None or (model, params, run config, dev examples) -> a dict of further metrics computed at
        every dev evaluation during training (scalars are logged; lists only go to the run's metrics.jsonl), e.g.
        where local-p's windows sit (`experiments.local_p`).
      default_jobs: how many runs train at once when --jobs is not given (see `run_experiment`'s ``jobs``).
      paper: row -> the paper's numbers for it, e.g. {"bleu": 19.0, "ppl": 5.9, "source": "Luong et al. 2015,
        Table 4, row 'Local-p (general) + feed'"} ("text" may replace or add to the numbers). Empty: the
        ``PAPER`` of the config module that defines ``get_config``.
      claims: `experiments.stats.Claim` orderings the table tests. Empty: that module's ``CLAIMS``.
      baseline_row: the row every other row is tested against. "": that module's ``BASELINE_ROW``
        (``--config.eval.baseline_row`` overrides both).
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
    dev_metrics: Callable[..., dict[str, Any]] | None = None
    default_jobs: int = 1
    paper: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    claims: tuple[Any, ...] = ()
    baseline_row: str = ""

    def _config_attr(self, name: str, default: Any) -> Any:
        """``name`` of the config module that defines ``get_config`` (``PAPER``, ``CLAIMS``, ``BASELINE_ROW``)."""
        module_name = getattr(self.get_config, "__module__", "") or ""
        try:
            module = importlib.import_module(module_name) if module_name else None
        except ImportError:
            module = None
        return getattr(module, name, default) if module is not None else default

    @property
    def paper_numbers(self) -> dict[str, dict[str, Any]]:
        """row -> the paper's numbers and source (`paper`, else the config module's ``PAPER``)."""
        return {k: dict(v) for k, v in (self.paper or self._config_attr("PAPER", {}) or {}).items()}

    @property
    def claim_list(self) -> tuple[Any, ...]:
        """The `experiments.stats.Claim` tuple (`claims`, else the config module's ``CLAIMS``)."""
        return tuple(self.claims or self._config_attr("CLAIMS", ()) or ())

    @property
    def default_baseline(self) -> str:
        """The baseline row (`baseline_row`, else the config module's ``BASELINE_ROW``; "" when none)."""
        return self.baseline_row or str(self._config_attr("BASELINE_ROW", "") or "")

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


def parse_seeds(text: str, default_seed: int) -> tuple[int, ...]:
    """The seeds of ``config.seeds``: "" -> (default_seed,); "0,1,2" -> (0, 1, 2); a count "3" -> (0, 1, 2).

    A single seed other than a count's is written with a comma ("5,") or as ``--config.seed=5``.

    Raises:
      ConfigError: for anything else (not integers, negative, repeated, or a count < 1).
    """
    text = str(text).strip()
    if not text:
        return (int(default_seed),)
    fix = ("fix: pass a count (--config.seeds=3 runs seeds 0,1,2) or distinct non-negative integers separated by "
           "commas (--config.seeds=0,1,2)")
    parts = [p.strip() for p in text.split(",")]
    if "," not in text:
        if not parts[0].isdigit() or int(parts[0]) < 1:
            raise ConfigError(f"--config.seeds={text!r} is not a seed count or list; {fix}")
        return tuple(range(int(parts[0])))
    parts = [p for p in parts if p] if text.endswith(",") else parts
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--config.seeds={text!r} is not a list of non-negative integers; {fix}")
    seeds = tuple(int(p) for p in parts)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--config.seeds={text!r} repeats a seed; {fix}")
    return seeds


def run_config(exp: Experiment, config: ml_collections.ConfigDict, row: str, seed: int) -> ml_collections.ConfigDict:
    """The config of one (row, seed) run: `row_config` with ``seed`` set (and ``seeds`` cleared).

    Raises:
      ConfigError: if ``row`` is not one of ``exp.row_names``.
    """
    cfg = row_config(exp, config, row)
    cfg.seed = int(seed)
    if "seeds" in cfg:
        cfg.seeds = ""
    return cfg


def run_flat(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The flat config a run is fingerprinted and resumed by: every field but the report-only ones
    (`experiments.configs.REPORT_FIELDS`: which seeds run and how the table is tested)."""
    return {k: v for k, v in configs.flatten(cfg).items() if k not in configs.REPORT_FIELDS}


def baseline_row(exp: Experiment, config: ml_collections.ConfigDict) -> str:
    """``--config.eval.baseline_row`` if set, else the experiment's baseline row ("" when it has none)."""
    return str(config.eval.get("baseline_row", "") or "") or exp.default_baseline


def check_report_config(exp: Experiment, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Checks the seeds and the significance fields before anything runs; returns the seeds.

    Raises:
      ConfigError: naming the bad value and the fix.
    """
    seeds = parse_seeds(config.get("seeds", ""), config.seed)
    ec = config.eval
    test = ec.get("significance", "none")
    if test not in ("bs", "ar", "none"):
        raise ConfigError(f"--config.eval.significance={test!r} is not valid; fix: use bs (paired bootstrap), ar "
                          "(approximate randomisation) or none")
    samples = ec.get("significance_samples", 1000)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 100:
        raise ConfigError(f"--config.eval.significance_samples={samples!r} is not valid; fix: use an int >= 100 "
                          "(1000 is usual)")
    base = ec.get("baseline_row", "")
    if base and base not in exp.row_names:
        raise ConfigError(f"--config.eval.baseline_row={base!r} is not a row of the {exp.name} experiment; fix: use "
                          f"one of {', '.join(exp.row_names)} or leave it empty")
    return seeds


def paper_and_claim_problems(exp: Experiment) -> list[str]:
    """What is wrong with an experiment's ``PAPER``, ``CLAIMS`` and ``BASELINE_ROW`` (empty when nothing): rows
    they name that the experiment lacks, paper entries without a source, claims without rows."""
    problems = []
    known = set(exp.row_names)
    if exp.default_baseline and exp.default_baseline not in known:
        problems.append(f"BASELINE_ROW {exp.default_baseline!r} is not a row")
    for row, entry in exp.paper_numbers.items():
        if row not in known:
            problems.append(f"PAPER names the unknown row {row!r}")
        if not entry.get("source"):
            problems.append(f"PAPER[{row!r}] has no source")
        if not any(entry.get(k) is not None for k in ("bleu", "ppl", "text")):
            problems.append(f"PAPER[{row!r}] has no bleu, ppl or text")
    for claim in exp.claim_list:
        missing = [r for r in (claim.better, *claim.worse) if r not in known]
        if missing or not claim.worse:
            problems.append(f"claim {claim.name!r} names unknown rows {missing} or no worse row")
    return problems


def fingerprint(flat: Mapping[str, Any]) -> str:
    """A short stable hash of a flat config."""
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_dir_name(row: str) -> str:
    """A file-system-safe directory name for a row."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", row)


def run_dir(workdir: str, row: str, seed: int) -> str:
    """The directory of one (row, seed) run: ``workdir/<row_dir_name(row)>/seed_<seed>``."""
    return os.path.join(workdir, row_dir_name(row), f"seed_{int(seed)}")


def resolve_init_from(init_from: str, workdir: str, seed: int | None = None) -> str:
    """The run directory named by ``train.init_from`` for the run of seed ``seed``.

    "@row" is that row's run of the SAME seed in ``workdir``. A path is used as given, except that a row
    directory holding ``seed_<seed>/`` (a row of another seeded workdir) resolves to that seed's run.
    """
    if init_from.startswith("@"):
        if seed is None:
            return os.path.join(workdir, row_dir_name(init_from[1:]))
        return run_dir(workdir, init_from[1:], seed)
    path = os.path.expanduser(init_from)
    if seed is not None and os.path.isdir(os.path.join(path, f"seed_{int(seed)}")):
        return os.path.join(path, f"seed_{int(seed)}")
    return path


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
