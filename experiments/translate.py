"""Translate text with a trained row of a translation experiment (luong, bahdanau, transformer, head_pruning).

    python -m experiments.translate --workdir=workdirs/luong --row=local_p_general < sources.txt
    python -m experiments.translate --workdir=workdirs/luong --row=global_dot --input=de.txt --output=en.txt
    python -m experiments.translate --workdir=workdirs/transformer --row=base --seed=1 --beam_size=8 \\
        --heatmaps=/tmp/heatmaps < sources.txt

One source sentence per input line (``--input=FILE``, or stdin by default or with ``--input=-``); one detokenised
translation per output line, in order (``--output=FILE``, default stdout); an empty input line gives an empty
output line. Each line is whitespace-normalised and tokenised with the row's SentencePiece model, the sentences
are batched in the experiment's buckets (one longer than the last bucket is padded to a multiple of it, as in
evaluation) and decoded with beam search (`experiments.evaluation.make_decoder`), with the beam size, length
penalty and decoding-length limit of the row's ``eval`` config unless ``--beam_size``, ``--length_penalty`` or
``--max_decode_len`` say otherwise. ``--heatmaps=DIR`` writes the attention heatmap of every translated line,
``DIR/line_<n>.png`` (n counts input lines from 1; the source subwords along x, the emitted ones along y, like
Bahdanau et al. 2014, arXiv:1409.0473, Fig. 3).

What is read from the workdir (see `load`):

* ``config.json``: the experiment's name (``experiments.<name>.EXPERIMENT`` builds the model).
* The row's run directory: ``<workdir>/<row>/seed_<s>/`` (``--seed=s``; without it the lowest finished seed, else
  the lowest seed) or, in the layout without seeds, ``<workdir>/<row>/``. Its ``row_config.json`` is the row's
  config (else config.json's ``row_configs``); its ``done.json`` marks it finished. An unfinished run is refused
  unless ``--allow_unfinished``, which takes its latest checkpoint with a warning.
* The parameters of the orbax checkpoint (item "state", only its "params" subtree, restored onto one device);
  a finished run uses the step its done.json records.
* The tokenizer: the SentencePiece model named by ``<workdir>/data.json`` (the dataset's ``info``) when that
  exists; else the data are rebuilt with `experiments.data.prepare` (deterministic and cached, with
  ``<workdir>/tokenizers`` as the cache of a ``--data_path`` run).
* The model's ``max_source_len``: read off the checkpoint. The model is built with the last bucket first; when
  a parameter's shape differs (the 'location' score's W_a has max_source_len outputs, a learned position table
  has max(max_len, max_source_len) rows), it is rebuilt with each differing dimension until every shape
  matches. This needs no data, and where no parameter depends on the value the decoding does not either.
  An input longer than the model accepts is refused, naming its line.

The row decodes on one device: a row trained on a mesh is translated with its parameters gathered, and a
Transformer trained with the sequence-parallel "ring" / "ulysses" backends (or, on a CPU, with "flash" / "cudnn")
decodes with "xla" (the same math).

Errors (no workdir, no config.json, unknown row or seed, unfinished row, no checkpoint, empty input, bad flag
values) print ONE sentence naming the problem and the fix on stderr and exit with code 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import importlib
import json
import os
import re
import sys
from typing import Any, TextIO

from absl import app
from absl import flags
from absl import logging
from etils import epath
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from experiments import cli
from experiments import data
from experiments import evaluation
from experiments import plots
from experiments import training

SEED_DIR = re.compile(r"seed_(\d+)")
SEQUENCE_PARALLEL = ("ring", "ulysses")  # need the training mesh; decoded with "xla" (the same math)
ACCELERATOR_ONLY = ("flash", "cudnn")  # decoded with "xla" on a CPU


# -- the workdir -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    """One trained (row, seed) of a workdir.

    Attributes:
      row: the row name.
      seed: the seed folder's number, or None in the layout without seed folders.
      path: the directory holding checkpoints/, row_config.json and (once finished) done.json.
      done: done.json's record when the run finished, else None.
    """

    row: str
    seed: int | None
    path: str
    done: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.done is not None

    def describe(self) -> str:
        return f"row {self.row!r}" + ("" if self.seed is None else f" seed {self.seed}")


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _done(path: str) -> dict[str, Any] | None:
    """done.json's record in ``path`` ({} when it is unreadable), or None when the run has not finished."""
    file = os.path.join(path, "done.json")
    if not os.path.exists(file):
        return None
    try:
        done = _read_json(file)
    except (OSError, json.JSONDecodeError):
        return {}
    return dict(done.get("record") or {}) if isinstance(done, dict) else {}


def _seed_dirs(row_dir: str) -> dict[int, str]:
    """{seed: directory} of the ``seed_<s>`` folders of a row directory."""
    if not os.path.isdir(row_dir):
        return {}
    out = {}
    for name in os.listdir(row_dir):
        match = SEED_DIR.fullmatch(name)
        if match and os.path.isdir(os.path.join(row_dir, name)):
            out[int(match.group(1))] = os.path.join(row_dir, name)
    return dict(sorted(out.items()))


def _is_run_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in ("checkpoints", "row_config.json", "done.json"))


def read_workdir(workdir: str) -> dict[str, Any]:
    """``workdir/config.json`` of a translation experiment.

    Raises:
      ConfigError: no such directory, no readable config.json, or one written by a language-model experiment.
    """
    if not workdir:
        raise training.ConfigError("--workdir is required; fix: pass the --workdir of a trained translation "
                                   "experiment, e.g. --workdir=workdirs/luong")
    if not os.path.isdir(workdir):
        raise training.ConfigError(f"the workdir {workdir!r} does not exist; fix: pass the --workdir of a trained "
                                   "translation experiment (e.g. workdirs/luong after python -m experiments.luong)")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise training.ConfigError(f"{workdir!r} has no config.json, so no experiment ran there; fix: pass the "
                                   "--workdir an experiment trained into (e.g. workdirs/luong)")
    try:
        saved = _read_json(path)
    except (OSError, json.JSONDecodeError) as err:
        raise training.ConfigError(f"{path} cannot be read ({' '.join(str(err).split())}); fix: rerun the "
                                   "experiment's command, which rewrites it") from None
    if not isinstance(saved, dict) or "row_configs" not in saved:
        name = saved.get("experiment", "?") if isinstance(saved, dict) else "?"
        raise training.ConfigError(f"{workdir!r} holds a {name} run, which is not a translation experiment; fix: "
                                   "point --workdir at a luong, bahdanau, transformer or head_pruning workdir")
    return saved


def finished_rows(workdir: str) -> list[str]:
    """The rows of ``workdir`` with at least one finished run (done.json), sorted."""
    rows = set()
    for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        row_dir = os.path.join(workdir, name)
        for path in [row_dir, *_seed_dirs(row_dir).values()]:
            done = _done(path)
            if done is not None:
                rows.add(str(done.get("row") or name))
    return sorted(rows)


def find_run(workdir: str, row: str, seed: int | None = None) -> Run:
    """The run of ``row`` (and ``seed``) in ``workdir``, finished or not.

    Args:
      workdir: the experiment's workdir.
      row: a row name (its directory is `training.row_dir_name` of it).
      seed: a seed folder ``seed_<seed>``; None takes the lowest finished seed, else the lowest seed. In the
        layout without seed folders a seed must equal the row config's ``seed``.

    Raises:
      ConfigError: no such row or seed, naming the finished rows or the seeds there.
    """
    row_dir = os.path.join(workdir, training.row_dir_name(row))
    seeds = _seed_dirs(row_dir)
    if not seeds and not (os.path.isdir(row_dir) and _is_run_dir(row_dir)):
        done = finished_rows(workdir)
        listed = (f"pass --row as one of its finished rows: {', '.join(done)}" if done else
                  "no row has finished there yet, so train one first (run the experiment's command)")
        raise training.ConfigError(f"{workdir!r} has no trained row {row!r}; fix: {listed}")
    if seeds:
        if seed is None:
            finished = [s for s, path in seeds.items() if _done(path) is not None]
            seed = min(finished) if finished else min(seeds)
            if len(seeds) > 1:
                logging.info("row %r has seeds %s; using seed %d (pass --seed to choose)", row,
                             ", ".join(map(str, seeds)), seed)
        if seed not in seeds:
            raise training.ConfigError(f"row {row!r} of {workdir!r} has no seed {seed}; fix: pass --seed as one of "
                                       f"{', '.join(map(str, seeds))}, or leave it out")
        return Run(row=row, seed=seed, path=seeds[seed], done=_done(seeds[seed]))
    if seed is not None:
        trained = _run_config_flat(row_dir).get("seed")
        if trained is not None and int(trained) != int(seed):
            raise training.ConfigError(f"row {row!r} of {workdir!r} was trained with seed {trained} only; fix: pass "
                                       f"--seed={trained} or leave it out")
    return Run(row=row, seed=None, path=row_dir, done=_done(row_dir))


def _run_config_flat(path: str) -> dict[str, Any]:
    file = os.path.join(path, "row_config.json")
    try:
        flat = _read_json(file) if os.path.exists(file) else {}
    except (OSError, json.JSONDecodeError):
        flat = {}
    return flat if isinstance(flat, dict) else {}


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs hold (buckets, length_bins, ...)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def run_config(run: Run, saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config ``run`` trained with: its row_config.json, else config.json's ``row_configs[row]``.

    Raises:
      ConfigError: if neither holds it.
    """
    flat = _run_config_flat(run.path)
    if flat:
        nested: dict[str, Any] = {}
        for path, value in flat.items():
            *parents, leaf = path.split(".")
            node = nested
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
    else:
        nested = (saved.get("row_configs") or {}).get(run.row)
        if not nested:
            raise training.ConfigError(f"neither {run.path}/row_config.json nor config.json holds the config of row "
                                       f"{run.row!r}; fix: rerun its experiment with --rows={run.row}")
    return ml_collections.ConfigDict(_tuples(nested))


def experiment(saved: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> training.Experiment:
    """``experiments.<name>.EXPERIMENT`` of the experiment config.json names.

    Raises:
      ConfigError: if no experiment module of that name exists.
    """
    name = str(saved.get("experiment") or cfg.get("experiment", "") or "")
    module = None
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        try:
            module = importlib.import_module(f"experiments.{name}")
        except ModuleNotFoundError:
            module = None
    exp = getattr(module, "EXPERIMENT", None)
    if not isinstance(exp, training.Experiment):
        raise training.ConfigError(f"config.json names the experiment {name!r}, which is no experiments/ module; "
                                   "fix: point --workdir at a luong, bahdanau, transformer or head_pruning workdir")
    return exp


def checkpoint_steps(path: str) -> list[int]:
    """The finished orbax checkpoints of ``path``: its step folders that hold a "state" item, sorted.

    Read-only: orbax writes a checkpoint into a temporary folder and renames it to its step when complete, so a
    run still training in the same workdir is neither disturbed (no `training.checkpoint_manager`, which cleans
    temporary folders up) nor read half-written.
    """
    if not os.path.isdir(path):
        return []
    return sorted(int(name) for name in os.listdir(path)
                  if name.isdigit() and os.path.isdir(os.path.join(path, name, "state")))


def checkpoint_step(run: Run, *, allow_unfinished: bool = False) -> int:
    """The checkpoint step to translate with: done.json's step for a finished run, else the latest.

    Raises:
      ConfigError: no checkpoint, or an unfinished run without ``allow_unfinished``.
    """
    path = os.path.join(run.path, "checkpoints")
    steps = checkpoint_steps(path)
    if not steps:
        raise training.ConfigError(f"{run.describe()} has no checkpoint in {path}; fix: train it first (rerun its "
                                   "experiment's command, which resumes it)")
    if not run.finished:
        if not allow_unfinished:
            raise training.ConfigError(f"{run.describe()} has not finished training (its latest checkpoint is step "
                                       f"{steps[-1]} and it has no done.json); fix: rerun its experiment's command to "
                                       "finish it, or pass --allow_unfinished to translate with that checkpoint")
        logging.warning("%s has not finished training; translating with its latest checkpoint, step %d",
                        run.describe(), steps[-1])
        return steps[-1]
    step = run.done.get("steps")
    return int(step) if step in steps else steps[-1]


def restore_params(run: Run, step: int) -> dict[str, Any]:
    """The "params" of the run's checkpoint ``step``, onto one device (no optimiser state is read).

    Raises:
      ConfigError: if the checkpoint holds no parameters.
    """
    path = epath.Path(os.path.abspath(os.path.join(run.path, "checkpoints", str(step), "state")))
    handler = ocp.PyTreeCheckpointHandler()
    tree = handler.metadata(path)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise training.ConfigError(f"the checkpoint {path} holds no model parameters; fix: point --workdir at a "
                                   "translation experiment's workdir")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                                     tree["params"])}
    restored = ocp.Checkpointer(handler).restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    return restored["params"]


def load_tokenizer(workdir: str, cfg: ml_collections.ConfigDict):
    """The row's tokenizer: the file ``workdir/data.json`` names, else `experiments.data.prepare`'s.

    Raises:
      ConfigError / experiments.data.DataError: the data cannot be rebuilt.
    """
    info_path = os.path.join(workdir, "data.json")
    named = ""
    if os.path.exists(info_path):
        try:
            named = str((_read_json(info_path) or {}).get("tokenizer") or "")
        except (OSError, json.JSONDecodeError, AttributeError):
            named = ""
    if named and named != "None":
        # The path as written, else the same file name in the workdir's tokenizers/ (a moved or copied workdir).
        for path in (os.path.expanduser(named), os.path.join(workdir, "tokenizers", os.path.basename(named))):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    return data.Tokenizer(f.read(), path)
        logging.warning("data.json names the tokenizer %s, which does not exist; rebuilding the data instead", named)
    local = os.path.join(workdir, "tokenizers")
    cache_dir = local if cfg.data.get("data_path") and os.path.isdir(local) else None
    logging.info("rebuilding the data of the run to find its tokenizer (cached tokenizers: %s)",
                 cache_dir or "<data.data_dir>/tokenizers")
    return data.prepare(cfg.data, cache_dir).tokenizer


# -- the model ---------------------------------------------------------------------------------------------------

def _flat_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _param_shapes(exp: training.Experiment, cfg: ml_collections.ConfigDict, vocab_size: int, max_source_len: int,
                  buckets: Sequence[int]) -> tuple[Any, dict[tuple[str, ...], tuple[int, ...]]]:
    """(model, its parameter shapes) for one max_source_len, traced without allocating (jax.eval_shape)."""
    model = exp.make_model(cfg.model, vocab_size, max_source_len)
    length = int(min(buckets))
    src = jax.ShapeDtypeStruct((2, length), jnp.int32)
    lengths = jax.ShapeDtypeStruct((2,), jnp.int32)

    def init(src, lengths):
        rng = jax.random.PRNGKey(0)
        return nn.unbox(model.init({"params": rng, "dropout": rng}, src, lengths, src, train=False)["params"])

    return model, _flat_shapes(jax.eval_shape(init, src, lengths))


def build_model(exp: training.Experiment, cfg: ml_collections.ConfigDict, vocab_size: int,
                params: Mapping[str, Any]) -> tuple[Any, int]:
    """The row's model, with the max_source_len its checkpoint was trained with (see the module docstring).

    Args:
      exp: the experiment.
      cfg: the row config.
      vocab_size: V of the tokenizer.
      params: the restored parameters.

    Returns:
      (model, max_source_len used to build it).

    Raises:
      ConfigError: if no max_source_len gives the checkpoint's parameter tree and shapes.
    """
    buckets = tuple(int(b) for b in cfg.data.buckets)
    saved = _flat_shapes(params)
    tried = []
    candidates = [int(max(buckets))]
    while candidates:
        length = candidates.pop(0)
        tried.append(length)
        model, shapes = _param_shapes(exp, cfg, vocab_size, length, buckets)
        if set(shapes) != set(saved):
            missing = sorted("/".join(k) for k in set(shapes) ^ set(saved))
            raise training.ConfigError(f"the checkpoint's parameters do not match the model of the row's config "
                                       f"(first differing parameter: {missing[0]}); fix: translate with the code "
                                       "version that trained this workdir, or retrain the row")
        differing = [k for k in shapes if shapes[k] != saved[k]]
        if not differing:
            return model, length
        if len(tried) == 1:  # the first build: every dimension where the checkpoint differs is a candidate
            dims = {int(d) for k in differing for d, mine in zip(saved[k], shapes[k]) if d != mine}
            candidates = sorted(d for d in dims if d > length)
    k = differing[0]
    raise training.ConfigError(f"the checkpoint's parameter {'/'.join(k)} has shape {saved[k]} but the row's model "
                               f"has {shapes[k]} (vocabulary {vocab_size}); fix: use the tokenizer the row was "
                               "trained with (workdir/data.json) and the code version that trained it")


# -- translating ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Translator:
    """A loaded row: the model, its parameters and tokenizer, and its decoders (one per beam setting).

    Attributes:
      row: the row name.
      seed: the seed folder (None without seed folders).
      step: the checkpoint step.
      model: the flax model (`Seq2Seq` / `Transformer` call and decoding interface).
      params: its parameters.
      tokenizer: the row's SentencePiece `experiments.data.Tokenizer`.
      config: the row config (its ``eval`` section gives the decoding defaults).
      max_source_len: the value the model was built with.
    """

    row: str
    seed: int | None
    step: int
    model: Any
    params: Any
    tokenizer: Any
    config: ml_collections.ConfigDict
    max_source_len: int
    _decoders: dict[tuple[int, float], Any] = dataclasses.field(default_factory=dict, repr=False)
    _forward: Any = dataclasses.field(default=None, repr=False)

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.config.data.buckets)

    @property
    def has_attention(self) -> bool:
        """False for the encoder-decoder baselines without attention (model.attention = "none")."""
        return self.config.model.get("attention", "") != "none"

    def encode(self, lines: Sequence[str]) -> list[data.Example]:
        """One `experiments.data.Example` per line: whitespace-normalised source ids, no target."""
        out = []
        for line in lines:
            text = data.normalize_whitespace(line)
            out.append(data.Example(tuple(self.tokenizer.encode(text)) if text else (), (), text, ""))
        return out

    def _check_lengths(self, examples: Sequence[data.Example]) -> None:
        """Refuses sources longer than the model takes (e.g. the location score's W_a, a learned position table).

        Only sources padded beyond the last bucket can be; the model is asked with a traced call (no compile).
        """
        longest = max(range(len(examples)), key=lambda i: len(examples[i].src_ids))
        tokens = len(examples[longest].src_ids)
        padded = data.padded_length(tokens, self.buckets)
        if padded <= max(self.buckets):
            return
        src = jax.ShapeDtypeStruct((1, padded), jnp.int32)
        try:
            jax.eval_shape(lambda p, s: self.model.apply({"params": p}, s, jnp.full((1,), tokens, jnp.int32),
                                                         s[:, :1], train=False), self.params, src)
        except ValueError as err:
            raise training.ConfigError(
                    f"input line {longest + 1} has {tokens} source tokens (padded to {padded}), more than this model "
                    f"takes ({' '.join(str(err).split())}); fix: split that line into shorter sentences") from None

    def translate_ids(self, examples: Sequence[data.Example], *, beam_size: int, length_penalty: float,
                      max_decode_len: int, batch_size: int) -> list[list[int]]:
        """Beam-search token ids of each example with a source (``[]`` for an empty one), in order.

        Decoding follows `experiments.training.translation.evaluate_row`: sources are padded to their bucket S
        (beyond the last one, in `data.padded_length`'s steps) and decoded for at most
        ``decode_len(S, eval.decode_len_ratio, eval.decode_len_extra, max_decode_len)`` steps.

        Args:
          examples: from `encode`; their target ids are ignored.
          beam_size: the beam (1 = greedy).
          length_penalty: beam score = sum log p / length**length_penalty.
          max_decode_len: the most tokens per translation.
          batch_size: B, sentences per decoding batch (one compile per bucket shape).

        Returns:
          One id list per example, cut at EOS (BOS / PAD removed).

        Raises:
          ConfigError: a source longer than the model takes, or max_decode_len beyond a learned position table.
        """
        ec = self.config.eval
        chosen = [i for i, ex in enumerate(examples) if ex.src_ids]
        out: list[list[int]] = [[] for _ in examples]
        if not chosen:
            return out
        self._check_lengths(examples)
        table = getattr(self.model, "max_len", None)
        if getattr(self.model, "positions", "") == "learned" and table is not None and max_decode_len > table:
            raise training.ConfigError(f"--max_decode_len={max_decode_len} exceeds the {table} rows of this model's "
                                       f"learned position table; fix: pass --max_decode_len <= {table}")
        key = (int(beam_size), float(length_penalty))
        if key not in self._decoders:
            self._decoders[key] = evaluation.make_decoder(self.model, beam_size=key[0], length_penalty=key[1])
        max_len_fn = functools.partial(evaluation.decode_len, ratio=ec.decode_len_ratio, extra=ec.decode_len_extra,
                                       max_len=max_decode_len)
        ids = evaluation.translate(self._decoders[key], self.params, [examples[i] for i in chosen],
                                   batch_size=batch_size, buckets=self.buckets, max_len_fn=max_len_fn)
        for i, hyp in zip(chosen, ids):
            out[i] = hyp
        return out

    def settings(self, *, beam_size: int | None = None, length_penalty: float | None = None,
                 max_decode_len: int | None = None, batch_size: int | None = None) -> dict[str, Any]:
        """`translate_ids`' keyword arguments: the given ones, the row's ``eval`` config for those left None."""
        ec = self.config.eval
        return {"beam_size": int(ec.beam_size if beam_size is None else beam_size),
                "length_penalty": float(ec.length_penalty if length_penalty is None else length_penalty),
                "max_decode_len": int(ec.max_decode_len if max_decode_len is None else max_decode_len),
                "batch_size": int(ec.batch_size if batch_size is None else batch_size)}

    def translate(self, lines: Sequence[str], **settings: Any) -> list[str]:
        """Detokenised translations of ``lines`` (one each, in order; "" for an empty line).

        Args:
          lines: source sentences.
          **settings: beam_size, length_penalty, max_decode_len, batch_size (see `settings`).

        Raises:
          ConfigError: a source longer than the model takes.
        """
        ids = self.translate_ids(self.encode(lines), **self.settings(**settings))
        return [self.tokenizer.decode(x) for x in ids]

    def write_heatmaps(self, examples: Sequence[data.Example], hypotheses: Sequence[list[int]], directory: str, *,
                       batch_size: int) -> list[str]:
        """Writes ``directory/line_<n>.png``, the attention heatmap of each translated example (n from 1).

        The weights are the model's teacher-forced on the hypothesis (`experiments.evaluation.alignments`), which
        equal the ones seen while decoding it (Bahdanau et al. 2014, arXiv:1409.0473, Fig. 3).

        Returns:
          The PNG paths, in input order.
        """
        if self._forward is None:
            self._forward = evaluation.make_forward(self.model)
        indices = [i for i, ex in enumerate(examples) if ex.src_ids]
        aligned = evaluation.alignments(self._forward, self.params, examples, hypotheses, self.tokenizer,
                                        indices=indices, batch_size=batch_size, buckets=self.buckets)
        width = max(4, len(str(len(examples))))
        paths = []
        for al in aligned:
            text = examples[al.index].src_text
            title = f"{self.row}: line {al.index + 1}\n{text[:90]}{'...' if len(text) > 90 else ''}"
            path = os.path.join(directory, f"line_{al.index + 1:0{width}d}.png")
            paths.append(plots.attention_heatmap(al.weights, al.source, al.target, path, title=title))
        return paths


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What `resolve` found for a (workdir, row, seed): the run, its config, experiment and checkpoint step."""

    workdir: str
    run: Run
    config: ml_collections.ConfigDict
    experiment: training.Experiment
    step: int


def resolve(workdir: str, row: str, *, seed: int | None = None, allow_unfinished: bool = False) -> Resolved:
    """Finds the run, its config, experiment and checkpoint step, reading no parameters and no data.

    Raises:
      ConfigError: no workdir / config.json, unknown row or seed, an unfinished row (without ``allow_unfinished``)
        or no checkpoint.
    """
    saved = read_workdir(workdir)
    run = find_run(workdir, row, seed)
    cfg = run_config(run, saved)
    exp = experiment(saved, cfg)
    step = checkpoint_step(run, allow_unfinished=allow_unfinished)
    return Resolved(workdir=workdir, run=run, config=cfg, experiment=exp, step=step)


def load(workdir: str, row: str, *, seed: int | None = None, allow_unfinished: bool = False,
         resolved: Resolved | None = None) -> Translator:
    """Loads a trained row of a workdir for translation (what is read: the module docstring).

    Args:
      workdir: the experiment's workdir.
      row: the row name.
      seed: the seed folder (None: the lowest finished seed, else the lowest).
      allow_unfinished: take the latest checkpoint of a run without done.json (with a warning).
      resolved: `resolve`'s answer for these arguments, if already at hand.

    Raises:
      ConfigError: as `resolve`, or a checkpoint that does not fit the row's model.
      experiments.data.DataError: the data cannot be rebuilt to find the tokenizer.
    """
    r = resolved or resolve(workdir, row, seed=seed, allow_unfinished=allow_unfinished)
    cfg = ml_collections.ConfigDict(r.config.to_dict())
    implementation = cfg.model.get("implementation", "")
    if implementation in SEQUENCE_PARALLEL or (implementation in ACCELERATOR_ONLY and jax.default_backend() == "cpu"):
        logging.info("row %r trained with implementation=%s; decoding on one %s device with xla", row, implementation,
                     jax.default_backend())
        cfg.model.implementation = "xla"
    tokenizer = load_tokenizer(r.workdir, cfg)
    params = restore_params(r.run, r.step)
    model, max_source_len = build_model(r.experiment, cfg, tokenizer.vocab_size, params)
    logging.info("%s of %s: checkpoint step %d, %s parameters, vocabulary %d", r.run.describe(), r.workdir, r.step,
                 f"{sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params)):,}", tokenizer.vocab_size)
    return Translator(row=r.run.row, seed=r.run.seed, step=r.step, model=model, params=params, tokenizer=tokenizer,
                      config=cfg, max_source_len=max_source_len)


# -- the command -------------------------------------------------------------------------------------------------

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags (once, in ``flag_values``)."""
    fv = flag_values
    flags.DEFINE_string("workdir", "", "the workdir of a trained translation experiment (required)", flag_values=fv)
    flags.DEFINE_string("row", "", "the row to translate with (required)", flag_values=fv)
    flags.DEFINE_integer("seed", None, "the seed_<N> folder of the row (default: the lowest finished seed)",
                         flag_values=fv)
    flags.DEFINE_string("input", "-", "file of source sentences, one per line ('-': stdin)", flag_values=fv)
    flags.DEFINE_string("output", "-", "file for the translations, one per line ('-': stdout)", flag_values=fv)
    flags.DEFINE_integer("beam_size", None, "beam size (default: the row's eval.beam_size; 1 = greedy)",
                         flag_values=fv)
    flags.DEFINE_float("length_penalty", None, "beam score = log p / length**penalty (default: eval.length_penalty)",
                       flag_values=fv)
    flags.DEFINE_integer("max_decode_len", None, "most tokens per translation (default: eval.max_decode_len)",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "sentences per decoding batch (default: eval.batch_size)",
                         flag_values=fv)
    flags.DEFINE_string("heatmaps", "", "write the attention heatmap of each line to DIR/line_<n>.png",
                        flag_values=fv)
    flags.DEFINE_bool("allow_unfinished", False, "translate with the latest checkpoint of a row that has not "
                      "finished training (with a warning)", flag_values=fv)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parses ``argv`` into ``flag_values``; a bad flag ends with one sentence and exit code 2."""
    try:
        return flag_values(argv)
    except flags.Error as err:
        cli.fail(f"{' '.join(str(err).split())}; fix: correct that flag (python -m experiments.translate --helpfull "
                 "lists them)")


def _check_flags(fv: flags.FlagValues) -> None:
    if not fv.row:
        raise training.ConfigError("--row is required; fix: pass --row=NAME, one of the finished rows of --workdir "
                                   "(e.g. --row=global_dot)")
    for name, minimum in (("beam_size", 1), ("max_decode_len", 1), ("batch_size", 1), ("length_penalty", 0)):
        value = fv[name].value
        if value is not None and value < minimum:
            raise training.ConfigError(f"--{name}={value} is not valid; fix: use a number >= {minimum}")


def read_lines(path: str, stdin: TextIO | None = None) -> list[str]:
    """The lines of ``path`` ('-' or "": stdin), without their line ends (only "\\n" and "\\r\\n" end a line).

    Raises:
      ConfigError: an unreadable or non-UTF-8 file, or an input without any sentence.
    """
    where = "stdin" if path in ("", "-") else path
    try:
        if path in ("", "-"):
            text = (stdin or sys.stdin).read()
        else:
            with open(os.path.expanduser(path), encoding="utf-8", newline="") as f:
                text = f.read()
    except FileNotFoundError:
        raise training.ConfigError(f"the input file {path!r} does not exist; fix: pass --input=FILE of source "
                                   "sentences, one per line, or pipe them into stdin") from None
    except (OSError, UnicodeDecodeError) as err:
        raise training.ConfigError(f"cannot read {where} ({' '.join(str(err).split())}); fix: pass UTF-8 text, one "
                                   "source sentence per line") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not any(line.strip() for line in lines):
        raise training.ConfigError(f"{where} holds no sentence to translate; fix: pass source sentences, one per "
                                   "line, with --input=FILE or on stdin")
    return lines


def _write_lines(path: str, lines: Sequence[str]) -> None:
    text = "".join(line.replace("\n", " ") + "\n" for line in lines)
    if path in ("", "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise training.ConfigError(f"cannot write --output={path} ({' '.join(str(err).split())}); fix: pass a "
                                   "writable file path") from None


def write_heatmaps(translator: Translator, examples: Sequence[data.Example], hypotheses: Sequence[list[int]],
                   directory: str, *, batch_size: int) -> list[str]:
    """--heatmaps: `Translator.write_heatmaps`, or a one-line note on stderr for a model without attention.

    Returns:
      The PNG paths written (none without attention).
    """
    if not translator.has_attention:
        print(f"note: row {translator.row!r} has no attention (model.attention=none), so --heatmaps wrote nothing",
              file=sys.stderr, flush=True)
        return []
    paths = translator.write_heatmaps(examples, hypotheses, directory, batch_size=batch_size)
    logging.info("wrote %d attention heatmaps to %s", len(paths), directory)
    return paths


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Translates ``--input`` with ``--row`` of ``--workdir`` (flags already parsed into ``flag_values``)."""
    fv = flag_values
    if len(argv) > 1:
        cli.fail(f"unexpected positional argument {argv[1]!r}; fix: pass options as --flag=value, the input as "
                 "--input=FILE or on stdin")
    if "verbosity" in fv and fv["verbosity"].using_default_value:
        logging.set_verbosity(logging.INFO)
    training.quiet_orbax_logging()
    try:
        _check_flags(fv)
        # Every refusal about the workdir comes before the input is read (stdin may be a terminal).
        resolved = resolve(fv.workdir, fv.row, seed=fv.seed, allow_unfinished=fv.allow_unfinished)
        lines = read_lines(fv.input)
        translator = load(fv.workdir, fv.row, resolved=resolved)
        settings = translator.settings(beam_size=fv.beam_size, length_penalty=fv.length_penalty,
                                       max_decode_len=fv.max_decode_len, batch_size=fv.batch_size)
        examples = translator.encode(lines)
        ids = translator.translate_ids(examples, **settings)
        _write_lines(fv.output, [translator.tokenizer.decode(x) for x in ids])
        if fv.heatmaps:
            write_heatmaps(translator, examples, ids, fv.heatmaps, batch_size=settings["batch_size"])
    except (training.ConfigError, data.DataError) as err:
        cli.fail(str(err))


def run() -> None:
    """The ``python -m experiments.translate`` entry point (absl)."""
    define_flags()
    training.enable_compilation_cache()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
