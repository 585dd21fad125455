"""Command-line plumbing shared by ``python -m experiments.luong`` and ``python -m experiments.bahdanau``.

Flags:

* ``--preset=smoke|small|paper``: sizes and budgets (default: the experiment's, ``small``).
* ``--workdir=DIR``: outputs, checkpoints and logs (default ``workdirs/<experiment>``).
* ``--rows=a,b``: the rows to run (default: every row of the table; ``custom`` runs config.model).
* ``--data_path=FILE.tsv`` (or ``SRC,TGT``): your own parallel text (sets ``config.data.data_path``).
* ``--config.<section>.<field>=VALUE``: any config field (`experiments.configs`); these are
  re-applied AFTER the preset, so ``--preset=smoke --config.train.num_steps=100`` trains 100 steps.

``--help`` prints the experiment module's docstring (its usage examples), these flags and the names of
the config fields; ``--helpfull`` adds absl's and the libraries' own flags.

Bad flags, bad config values and missing data end the run with ONE sentence naming the problem and
the fix on stderr, and exit code 2 (never a traceback).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
import os
import shlex
import sys
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from attention_jax.layers.luong import LUONG_MODES, LUONG_SCORES
from attention_jax.models.seq2seq import ATTENTIONS, CELLS
from experiments import configs
from experiments import data
from experiments import training

FLAGS = flags.FLAGS
EXIT_USAGE = 2

# The choices come from the library, so a score added to the core registry is a valid flag value here too.
SCORES = LUONG_SCORES
MODES = LUONG_MODES

# The flags `define_flags` defines; --help lists them (`_list_in_help`).
EXPERIMENT_FLAGS = ("preset", "workdir", "rows", "data_path", "config")

# Fewer dev evaluations than this leave the dev panel of loss_curves.png nearly empty (`warn_sparse_evaluation`).
MIN_EVALUATIONS = 5

# The order in which --help lists the config sections; others follow alphabetically.
_SECTION_ORDER = ("", "data", "model", "train", "eval", "mesh")


def fail(message: str) -> NoReturn:
    """Prints ``error: <message>`` (one line) on stderr and exits with code 2."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def define_flags(exp: training.Experiment, argv: list[str] | None = None, *, data_path_help: str | None = None) -> None:
    """Defines --preset, --workdir, --rows, --data_path and --config.* for ``exp`` (once, before app.run).

    config_flags reads the ``--config.*`` overrides from the command line while defining the flag,
    so an unknown field is reported here (one sentence, exit 2). ``data_path_help`` replaces the
    parallel-text help of --data_path (experiments that read another kind of text).
    """
    flags.DEFINE_string("preset", exp.default_preset, f"size preset, one of {', '.join(exp.presets)}")
    flags.DEFINE_string("workdir", exp.default_workdir, "output directory (checkpoints, logs, results, figures)")
    flags.DEFINE_string("rows", "", f"comma-separated rows to run (default: {', '.join(exp.default_rows)}; "
                        f"'all' adds the rows run on request; '{exp.custom_row}' runs config.model as given)")
    flags.DEFINE_string("data_path", "", data_path_help or "your own parallel text instead of the default corpus: "
                        "a TSV file of 'source<TAB>target' lines, or 'SOURCE_FILE,TARGET_FILE' (sets "
                        "config.data.data_path)")
    base = exp.get_config()
    known = configs.flatten(base)
    for arg in (sys.argv if argv is None else argv)[1:]:
        if arg.startswith(("--config.", "--noconfig.")):
            path = arg.split("=", 1)[0].split("config.", 1)[1]
            if path not in known:
                fail(f"--config.{path} names no config field; fix: use a field of experiments/configs/{exp.name}.py "
                     f"(sections data, model, train, eval), e.g. --config.train.num_steps=100")
    try:
        config_flags.DEFINE_config_dict("config", base, config_help(exp, base), lock_config=True)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as err:
        fail(f"bad --config flag ({' '.join(str(err).split())}); fix: pass --config.<section>.<field>=VALUE with a "
             f"field of experiments/configs/{exp.name}.py")
    _list_in_help()


def config_help(exp: training.Experiment, base: ml_collections.ConfigDict) -> str:
    """The help of --config: how to override a field, then the field names of each section, one line each."""
    sections: dict[str, list[str]] = {}
    for path in configs.flatten(base):
        section, _, field = path.rpartition(".")
        if path != "experiment":  # set by the experiment module, not a knob
            sections.setdefault(section, []).append(field)
    order = sorted(sections, key=lambda s: (_SECTION_ORDER.index(s) if s in _SECTION_ORDER else len(_SECTION_ORDER), s))
    lines = [f"- {section or 'top level'}: {', '.join(sections[section])}" for section in order]
    return ("--config.<section>.<field>=VALUE sets a config field after --preset, e.g. --config.train.num_steps=100; "
            f"the fields (values in experiments/configs/{exp.name}.py):\n" + "\n".join(lines))


def _list_in_help() -> None:
    """Makes absl's ``--help`` list `EXPERIMENT_FLAGS` beside the main module's own flags.

    --help shows only the key flags of the module named by ``sys.argv[0]`` (the experiment module run with
    ``python -m``), and these flags are defined here; --helpfull shows every module's flags.
    """
    for name in EXPERIMENT_FLAGS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
        # No "(default: '')" lines, and no YAML dump of the whole config as --config's default (about 70
        # lines): its help lists the field names instead.
        if name == "config" or FLAGS[name].default == "":
            FLAGS[name].default_as_str = None


def parse_rows(exp: training.Experiment, text: str, preset: str = "") -> list[str]:
    """Splits ``--rows``; empty means the default rows, ``all`` every named row (those run on request too).

    Raises:
      training.ConfigError: unknown row name.
    """
    default = exp.preset_rows.get(preset, exp.default_rows)
    names = [r.strip() for r in text.split(",") if r.strip()] if text else list(default)
    if names == ["all"]:
        names = list(exp.rows)
    unknown = [r for r in names if r not in exp.row_names]
    if unknown or not names:
        raise training.ConfigError(f"unknown row {unknown[0] if unknown else text!r} for the {exp.name} experiment; "
                                   f"fix: pass --rows as a comma-separated subset of {', '.join(exp.row_names)}")
    return list(dict.fromkeys(names))


def build_config(exp: training.Experiment, preset: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Base config, then the preset, then the command-line overrides.

    Raises:
      training.ConfigError: unknown preset.
    """
    if preset not in exp.presets:
        raise training.ConfigError(f"unknown preset {preset!r}; fix: pass --preset={' or --preset='.join(exp.presets)}")
    config = exp.get_config()
    configs.apply_preset(config, exp.presets, preset)
    configs.apply_overrides(config, overrides)
    return config


def _choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise training.ConfigError(f"--config.{path}={value!r} is not valid; fix: use one of {', '.join(choices)}")


def _at_least(path: str, value: Any, minimum: float, what: str = "a number") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise training.ConfigError(f"--config.{path}={value!r} is not valid; fix: use {what} >= {minimum:g}")


def int_at_least(path: str, value: Any, minimum: int) -> None:
    """Raises a one-line ConfigError unless ``--config.<path>`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise training.ConfigError(f"--config.{path}={value!r} is not valid; fix: use an int >= {minimum}")


def _increasing(path: str, values: Any) -> None:
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if (not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)
            or list(values) != sorted(set(values))):
        raise training.ConfigError(f"--config.{path}={values!r} is not valid; fix: use a strictly increasing tuple of "
                                   f"positive ints, e.g. --config.{path}='(16,32,64)'")


def validate(exp: training.Experiment, config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the run will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    if d.data_path:
        parts = [p for p in d.data_path.split(",") if p]
        missing = [p for p in parts if not os.path.exists(os.path.expanduser(p))]
        if missing:
            raise training.ConfigError(f"the data path file {missing[0]!r} does not exist; fix: point --data_path (or "
                                       "--config.data.data_path) at a TSV file of 'source<TAB>target' lines or at two "
                                       "line-aligned files 'SRC,TGT', or leave it empty to use the default corpus")
    _at_least("data.vocab_size", d.vocab_size, 8, "an int")
    _at_least("data.max_words", d.max_words, 1, "an int")
    _at_least("data.dev_size", d.dev_size, 1, "an int")
    _at_least("data.test_size", d.test_size, 1, "an int")
    _at_least("data.max_train", d.max_train, 0, "an int (0 = all)")
    _increasing("data.buckets", d.buckets)
    _at_least("train.batch_size", t.batch_size, 1, "an int")
    _at_least("train.learning_rate", t.learning_rate, 1e-12)
    _at_least("train.grad_clip_norm", t.grad_clip_norm, 0)
    _at_least("train.num_steps", t.num_steps, 0, "an int (0 = no step limit)")
    _at_least("train.max_minutes", t.max_minutes, 0, "minutes (0 = no time limit)")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps or --config.train.max_minutes")
    for name in ("log_every", "eval_every", "checkpoint_every", "max_source_words"):
        _at_least(f"train.{name}", t[name], 0, "an int (0 = off)")
    _at_least("eval.batch_size", e.batch_size, 1, "an int")
    _at_least("eval.beam_size", e.beam_size, 1, "an int")
    _at_least("eval.length_penalty", e.length_penalty, 0)
    _at_least("eval.max_decode_len", e.max_decode_len, 1, "an int")
    _at_least("eval.num_heatmaps", e.num_heatmaps, 0, "an int")
    _increasing("eval.length_bins", e.length_bins)
    for row in rows:
        cfg = training.row_config(exp, config, row)
        if exp.validate_model is not None:
            exp.validate_model(cfg)
        else:
            _validate_recurrent(cfg)
        try:
            exp.make_model(cfg.model, d.vocab_size, max(d.buckets))
        except (ValueError, TypeError) as err:
            raise training.ConfigError(f"row {row!r} has an invalid model config ({err}); fix: change the "
                                       "--config.model fields it names") from err


def _validate_recurrent(cfg: ml_collections.ConfigDict) -> None:
    """The model checks of the recurrent (Luong / Bahdanau) experiments."""
    m, d = cfg.model, cfg.data
    _choice("model.attention", m.attention, ATTENTIONS)
    _choice("model.cell", m.cell, CELLS)
    _choice("model.score", m.score, SCORES)
    _choice("model.mode", m.mode, MODES)
    if isinstance(m.window, bool) or not isinstance(m.window, int) or m.window < (1 if m.mode == "local_p" else 0):
        raise training.ConfigError(f"--config.model.window={m.window!r} is not valid for mode {m.mode!r}; fix: use an "
                                   f"int >= {1 if m.mode == 'local_p' else 0} (Luong's D, e.g. 10)")
    if not 0.0 <= m.dropout_rate < 1.0:
        raise training.ConfigError(f"--config.model.dropout_rate={m.dropout_rate!r} is not valid; fix: use a rate in "
                                   "[0, 1)")
    if m.attention == "luong" and m.score == "location" and 0 < m.max_source_len < max(d.buckets):
        raise training.ConfigError(f"--config.model.max_source_len={m.max_source_len} is shorter than the largest "
                                   f"bucket {max(d.buckets)}; fix: set it to 0 (= largest bucket) or raise it")


def warn_sparse_evaluation(train_configs: Mapping[str, ml_collections.ConfigDict], *, what: str = "dev perplexity",
                           at_end: bool = False) -> list[str]:
    """Warns, one line per distinct budget, about rows that evaluate fewer than `MIN_EVALUATIONS` times.

    A row evaluates every ``train.eval_every`` steps (and after its last step if ``at_end``), so with
    ``num_steps=1400, eval_every=500`` the dev panel of its loss curves has 2 points. Rows that train for
    a time budget only (``num_steps=0``) or never evaluate (``eval_every=0``) are not checked.

    Args:
      train_configs: row name -> the row's ``train`` section (num_steps, eval_every).
      what: the evaluated quantity, for the message.
      at_end: whether the training loop also evaluates after the last step.

    Returns:
      The warning lines (also logged with absl's logging.warning).
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for row, t in train_configs.items():
        groups.setdefault((int(t.num_steps), int(t.eval_every)), []).append(row)
    lines = []
    for (num_steps, eval_every), rows in groups.items():
        if num_steps <= 0 or eval_every <= 0:
            continue
        count = num_steps // eval_every + (1 if at_end and num_steps % eval_every else 0)
        if count >= MIN_EVALUATIONS:
            continue
        lines.append(f"{'row' if len(rows) == 1 else 'rows'} {', '.join(rows)} will evaluate {what} only {count} "
                     f"time{'' if count == 1 else 's'} in {num_steps} steps (train.eval_every={eval_every}), too few "
                     f"points for a curve; fix: pass --config.train.eval_every={max(1, num_steps // MIN_EVALUATIONS)}")
        logging.warning("%s", lines[-1])
    return lines


def _warn_shadowed(exp: training.Experiment, overrides: dict[str, Any], rows: list[str]) -> None:
    """Warns about overrides that every requested row replaces (they only reach the custom row)."""
    for path in overrides:
        shadowed = [r for r in rows if path in exp.rows.get(r, {})]
        if shadowed and len(shadowed) == len(rows):
            logging.warning("--config.%s is set by each requested row (%s), so it has no effect; use "
                            "--rows=%s to run config.model as given", path, ", ".join(shadowed), exp.custom_row)


def command_line(exp: training.Experiment, argv: list[str]) -> str:
    """The exact command, as ``python -m experiments.<name> ARGS``."""
    return " ".join(["python", "-m", f"experiments.{exp.name}", *(shlex.quote(a) for a in argv[1:])])


def main(exp: training.Experiment, argv: list[str]) -> None:
    """Builds the config from the flags, validates it and runs the experiment."""
    if len(argv) > 1:
        fail(f"unexpected positional argument {argv[1]!r}; fix: pass options as --flag=value (see --help)")
    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.INFO)
    try:
        rows = parse_rows(exp, FLAGS.rows, FLAGS.preset)
        overrides = dict(config_flags.get_override_values(FLAGS["config"]))
        if FLAGS.data_path:
            overrides["data.data_path"] = FLAGS.data_path
        config = build_config(exp, FLAGS.preset, overrides)
        _warn_shadowed(exp, overrides, rows)
        validate(exp, config, rows)
        warn_sparse_evaluation({row: training.row_config(exp, config, row).train for row in rows})
        training.enable_compilation_cache()
        jobs, worker = parse_jobs(exp, FLAGS.jobs, FLAGS.worker)
        training.run_experiment(exp, config, rows, FLAGS.workdir, preset=FLAGS.preset,
                                command=command_line(exp, sys.argv), jobs=jobs,
                                worker_command=worker_command(exp, sys.argv), worker=worker)
    except (training.ConfigError, data.DataError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume {FLAGS.workdir} from its last checkpoints",
              file=sys.stderr, flush=True)
        sys.exit(130)


def table_main(exp: training.Experiment, argv: list[str], *, validate_fn: Callable[..., None],
               run_fn: Callable[..., Any], data_path: str | None = None, left_out_of_all: tuple[str, ...] = ()) -> None:
    """The main of an experiment with its own ``validate`` and ``run`` (and no custom row).

    Builds the config from the flags, calls ``validate_fn(config, rows)`` and then ``run_fn(config, rows,
    workdir, preset=, command=, jobs=, worker_command=, worker=)``; every `training.ConfigError` or
    `data.DataError` exits with its one line.

    Args:
      exp: the experiment.
      argv: absl's remaining arguments (only the program name is accepted).
      validate_fn, run_fn: the experiment's checks and its table.
      data_path: None to pass ``--data_path`` on as ``data.data_path``; otherwise why this experiment refuses
        it (its data come from elsewhere), said in the error.
      left_out_of_all: rows that ``--rows=all`` leaves out (they run on their own).
    """
    if len(argv) > 1:
        fail(f"unexpected positional argument {argv[1]!r}; fix: pass options as --flag=value (see --help)")
    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.INFO)
    try:
        rows = parse_rows(exp, FLAGS.rows, FLAGS.preset)
        if FLAGS.rows.strip() == "all":
            rows = [row for row in rows if row not in left_out_of_all]
        if exp.custom_row in rows:
            raise training.ConfigError(f"the {exp.custom_row!r} row is not offered here; fix: pass --rows from "
                                       f"{', '.join(exp.rows)}")
        overrides = dict(config_flags.get_override_values(FLAGS["config"]))
        if FLAGS.data_path:
            if data_path is not None:
                raise training.ConfigError(f"--data_path is not offered by this experiment ({data_path}); fix: "
                                           "leave it out")
            overrides["data.data_path"] = FLAGS.data_path
        config = build_config(exp, FLAGS.preset, overrides)
        validate_fn(config, rows)
        training.enable_compilation_cache()
        jobs, worker = parse_jobs(exp, FLAGS.jobs, FLAGS.worker)
        run_fn(config, rows, FLAGS.workdir, preset=FLAGS.preset, command=command_line(exp, sys.argv), jobs=jobs,
               worker_command=worker_command(exp, sys.argv), worker=worker)
    except (training.ConfigError, data.DataError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume {FLAGS.workdir} from its last checkpoints",
              file=sys.stderr, flush=True)
        sys.exit(130)


def run_table(exp: training.Experiment, *, data_path_help: str | None = None, **main_kwargs: Any) -> None:
    """Defines the flags and runs `table_main` under absl (entry point of experiments with their own run)."""
    define_flags(exp, data_path_help=data_path_help)
    define_job_flags(exp)
    app.run(functools.partial(table_main, exp, **main_kwargs), flags_parser=functools.partial(_parse_flags, exp))


def _parse_flags(exp: training.Experiment, argv: list[str]) -> list[str]:
    try:
        remaining = FLAGS(argv)
    except flags.Error as err:
        text = " ".join(str(err).split())
        fail(f"{text}; fix: correct that flag (python -m experiments.{exp.name} --help lists them, and "
             f"--config.<section>.<field> must name a field of experiments/configs/{exp.name}.py with a value of its "
             "type)")
    try:  # a multi-process run (JAX_COORDINATOR_ADDRESS, ...) joins its peers before jax touches a device
        training.distributed.initialize_from_env()
    except training.ConfigError as err:
        fail(str(err))
    return remaining


def define_job_flags(exp: training.Experiment) -> None:
    """Defines --jobs (runs trained at once, in worker processes) and the internal --worker."""
    flags.DEFINE_integer("jobs", 0, "how many (row, seed) runs train at once, each in its own process (0: the "
                         f"experiment's default, {exp.default_jobs}; 1: one after another in this process). A "
                         "recurrent model's training step leaves cores idle: 2 runs at once on the 2-core machine train "
                         "about 1.4x as many steps per second as 1; each run trains exactly as it would alone")
    flags.DEFINE_string("worker", "", "internal: 'i/n', set on the worker processes that --jobs starts")
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS["jobs"])


def parse_jobs(exp: training.Experiment, jobs: int, worker: str) -> tuple[int, tuple[int, int] | None]:
    """(jobs, worker) from --jobs and --worker.

    Raises:
      training.ConfigError: a negative --jobs, a malformed --worker, or jobs > 1 in a multi-process (jax.distributed)
        run.
    """
    if jobs < 0:
        raise training.ConfigError(f"--jobs={jobs} is not valid; fix: pass 0 (the default), 1, or more runs at once")
    jobs = jobs or exp.default_jobs
    parsed = None
    if worker:
        try:
            i, n = (int(x) for x in worker.split("/"))
        except ValueError:
            i, n = -1, 0
        if not 0 <= i < n:
            raise training.ConfigError(f"--worker={worker!r} is not valid; fix: leave --worker out (--jobs sets it)")
        parsed = (i, n)
    multi_process = bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("ATTENTION_JAX_DISTRIBUTED"))
    if jobs > 1 and not parsed and multi_process:
        raise training.ConfigError(f"--jobs={jobs} cannot start worker processes inside a multi-process "
                                   "(jax.distributed) run; fix: pass --jobs=1")
    return jobs, parsed


def worker_command(exp: training.Experiment, argv: list[str]) -> list[str]:
    """The command line of a --jobs worker: this command without --jobs/--worker, plus --jobs=1."""
    kept = [a for a in argv[1:] if not a.startswith(("--jobs", "--worker"))]
    return [sys.executable, "-m", f"experiments.{exp.name}", *kept, "--jobs=1"]


def run(exp: training.Experiment) -> None:
    """Defines the flags and runs ``main`` under absl (entry point of the experiment modules)."""
    define_flags(exp)
    define_job_flags(exp)
    app.run(functools.partial(main, exp), flags_parser=functools.partial(_parse_flags, exp))
