"""Language modelling: one token stream, TBPTT with carried memories, perplexity by memory length.

Used by ``python -m experiments.transformer_xl`` (Dai et al. 2019, arXiv:1901.02860); written for any model with
the `attention_jax.TransformerXLLM` interface ``apply(params, tokens [B, T], memories, train=, mem_len=) ->
(logits [B, T, V] float32, new_memories)`` and ``init_memories(batch, mem_len)``.

* Data (`prepare_stream`): the lines of a corpus (the KJV verses, or a plain text file), split into contiguous
  train / valid / test ranges, a SentencePiece BPE model (`experiments.data.load_or_train_tokenizer`) trained on
  train, and each split encoded as one int32 stream with EOS after every line.
* Training (`train_lm`): the train stream cut into B contiguous streams; step k of an epoch reads segment k
  (T tokens) of every stream and the next-token targets. It runs on the experiments' shared loop
  (`experiments.training.loop.train_loop`) with the memories as its carried state: the memories returned by one
  step feed the next and restart from zeros at every epoch start (and on resume: they are not checkpointed).
  Adam, linear warmup then cosine decay (`experiments.training.optim.make_lm_optimizer`), global-norm clipping;
  step / loss / tokens/s / ETA to the absl log and metrics.jsonl, the valid perplexity every
  ``train.eval_every`` steps and at the end, orbax checkpoints of params + optimiser state.
* Evaluation (`evaluate_stream`): perplexity of a split cut into B streams, segments of T, with an evaluation
  memory of any length M (zero memories at the start, like training); M = 0 scores each segment alone.

Shapes: B = streams (batch), T = segment length, M = memory length, D = model dim, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
import os
import pathlib
import textwrap
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import data
from experiments import results
from experiments import training

KJV_CACHE_NAME = "kjv_verses.v1.txt"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def kjv_verses(data_dir: str | os.PathLike[str] | None) -> list[str]:
    """The 31,102 KJV verses in canonical order (Genesis 1:1 .. Revelation 22:21), empty ones dropped.

    Reads the ``sword-text-kjv`` zText module through `experiments.data` (downloaded once) and caches the verses,
    one per line, as ``<data_dir>/kjv_verses.v1.txt``.

    Raises:
      experiments.data.DataError: if the package cannot be obtained or read.
    """
    root = data.resolve_data_dir(data_dir)
    cache = root / KJV_CACHE_NAME
    if cache.is_file():
        return cache.read_text(encoding="utf-8").splitlines()
    module = data.find_ztext_module(data.obtain_debian_package(data.KJV_PACKAGE, root), data.KJV_PACKAGE)
    verses = [text for *_, text in data.kjv_verses(module)]
    root.mkdir(parents=True, exist_ok=True)
    cache.write_text("\n".join(verses) + "\n", encoding="utf-8")
    return verses


def read_text_lines(path: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, whitespace-normalised.

    Raises:
      experiments.data.DataError: if the file is missing, not UTF-8 or holds no text.
    """
    p = pathlib.Path(os.path.expanduser(path))
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise data.DataError(f"--data_path {path!r} is not a readable file; fix: pass a plain UTF-8 text file "
                             "(one line per sentence or paragraph)") from None
    except UnicodeDecodeError as e:
        raise data.DataError(f"--data_path {path!r} is not UTF-8 ({e.reason} at byte {e.start}); fix: convert it, "
                             "e.g. with iconv -t UTF-8") from None
    lines = [data.normalize_whitespace(line) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise data.DataError(f"--data_path {path!r} holds no text; fix: pass a non-empty plain UTF-8 text file")
    return lines


@dataclasses.dataclass
class Stream:
    """One split as a token stream."""

    ids: np.ndarray  # [N] int32, EOS after every line.
    num_lines: int
    num_chars: int  # characters of the text, one newline per line included (for bits per character).
    first_line: str

    @property
    def chars_per_token(self) -> float:
        return self.num_chars / max(len(self.ids), 1)


@dataclasses.dataclass
class LMData:
    """The three streams and the tokenizer."""

    train: Stream
    valid: Stream
    test: Stream
    tokenizer: data.Tokenizer
    source: str


def split_lines(lines: Sequence[str], valid_fraction: float, test_fraction: float) -> tuple[list[str], ...]:
    """Contiguous train / valid / test ranges: test is the last ``test_fraction`` of the lines, valid the range
    before it (each at least one line).

    Raises:
      experiments.data.DataError: if there are fewer than 3 lines.
    """
    n = len(lines)
    if n < 3:
        raise data.DataError(f"the corpus has {n} non-blank lines, too few for train/valid/test; fix: pass a text "
                             "file with at least a few hundred lines")
    n_test = max(1, int(round(n * test_fraction)))
    n_valid = max(1, int(round(n * valid_fraction)))
    n_train = n - n_test - n_valid
    if n_train < 1:
        raise data.DataError(f"valid and test fractions leave no training lines out of {n}; fix: lower "
                             "--config.data.valid_fraction / --config.data.test_fraction")
    return list(lines[:n_train]), list(lines[n_train:n_train + n_valid]), list(lines[n_train + n_valid:])


def _encode_stream(tokenizer: data.Tokenizer, lines: Sequence[str]) -> Stream:
    ids: list[int] = []
    for line in lines:
        ids.extend(tokenizer.encode(line))
        ids.append(data.EOS_ID)
    return Stream(ids=np.asarray(ids, np.int32), num_lines=len(lines),
                  num_chars=sum(len(line) + 1 for line in lines), first_line=lines[0] if lines else "")


def tokenizer_dir(data_config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The ``cache_dir`` of `prepare_stream` for a run in ``workdir``: ``<workdir>/tokenizers`` when the text is the
    user's ``--data_path`` (a model of it stays beside the run), else None (the shared ``<data_dir>/tokenizers``)."""
    return os.path.join(workdir, "tokenizers") if data_config.data_path else None


def prepare_stream(data_config: ml_collections.ConfigDict, cache_dir: str | os.PathLike[str] | None = None) -> LMData:
    """Reads the corpus, splits it, trains (or loads) the tokenizer and encodes the three streams.

    Args:
      data_config: the ``data`` section (corpus, data_dir, data_path, valid_fraction, test_fraction, vocab_size).
      cache_dir: folder for the SentencePiece model; None or "" means ``<data_dir>/tokenizers``. The experiments
        pass ``<workdir>/tokenizers`` for a ``--data_path`` run, so a model of the user's text stays beside the run.

    Raises:
      experiments.data.DataError: the corpus cannot be obtained or read, or is too small.
    """
    if data_config.data_path:
        lines, source = read_text_lines(data_config.data_path), f"--data_path={data_config.data_path}"
    elif data_config.corpus == "kjv":
        lines, source = kjv_verses(data_config.data_dir), "kjv (sword-text-kjv, verses in canonical order)"
    else:
        raise data.DataError(f"unknown corpus {data_config.corpus!r}; fix: use --config.data.corpus=kjv or pass "
                             "--data_path=FILE.txt")
    train_lines, valid_lines, test_lines = split_lines(lines, data_config.valid_fraction, data_config.test_fraction)
    if cache_dir:
        model_dir = pathlib.Path(cache_dir).expanduser()
    else:
        model_dir = data.resolve_data_dir(data_config.data_dir) / "tokenizers"
    tokenizer = data.load_or_train_tokenizer(train_lines, model_dir, int(data_config.vocab_size))
    return LMData(train=_encode_stream(tokenizer, train_lines), valid=_encode_stream(tokenizer, valid_lines),
                  test=_encode_stream(tokenizer, test_lines), tokenizer=tokenizer, source=source)


def as_streams(ids: np.ndarray, batch: int, max_tokens: int = 0) -> np.ndarray:
    """[N] -> [B, N // B]: B contiguous streams (the first ``max_tokens`` of ``ids`` when > 0)."""
    if max_tokens > 0:
        ids = ids[:max_tokens]
    n = len(ids) // batch
    return np.asarray(ids[:n * batch], np.int32).reshape(batch, n)


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


def _nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T] float32


def make_train_step(model, optimizer: optax.GradientTransformation) -> Callable:
    """Jitted ``step(params, opt_state, memories, inputs [B, T], targets [B, T], rng) -> (params, opt_state,
    new_memories, loss)``; params, optimiser state and memories are donated."""

    def loss_fn(params, memories, inputs, targets, rng):
        logits, new_memories = model.apply({"params": params}, inputs, memories, train=True, rngs={"dropout": rng})
        return _nll(logits, targets).mean(), new_memories

    def step(params, opt_state, memories, inputs, targets, rng):
        (loss, new_memories), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, memories, inputs, targets,
                                                                                rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_memories, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def make_sharded_train_step(model, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh, rules: tuple,
                            abstract_params: Any) -> Callable:
    """`make_train_step` on a mesh (`attention_jax.sharding.make_train_step`): the same step and results, the
    parameters sharded by their logical axis names, inputs, targets and memories split over the batch axes
    (and their length over seq). The new memories come back replicated, as the step's metrics."""
    from attention_jax import sharding  # pylint: disable=import-outside-toplevel

    def loss_fn(params, batch, rng):
        logits, new_memories = model.apply({"params": params}, batch["inputs"], batch["memories"], train=True,
                                           rngs={"dropout": rng})
        return _nll(logits, batch["targets"]).mean(), {"memories": new_memories}

    train_step = sharding.make_train_step(loss_fn, optimizer, mesh, rules, abstract_params, donate=True)

    def step(params, opt_state, memories, inputs, targets, rng):
        batch = {"inputs": inputs, "targets": targets, "memories": memories}
        params, opt_state, metrics = train_step(params, opt_state, batch, rng)
        return params, opt_state, metrics["memories"], metrics["loss"]

    step.init_opt_state = train_step.init_opt_state  # type: ignore[attr-defined]
    return step


@functools.lru_cache(maxsize=None)
def _eval_step(model, mem_len: int) -> Callable:
    def step(params, memories, inputs, targets):
        logits, new_memories = model.apply({"params": params}, inputs, memories, mem_len=mem_len)
        return new_memories, _nll(logits, targets).sum()

    return jax.jit(step)


def evaluate_stream(model, params, ids: np.ndarray, *, batch: int, segment_len: int, mem_len: int,
                    max_tokens: int = 0) -> dict[str, float]:
    """Perplexity of a token stream with an evaluation memory of ``mem_len`` tokens per layer.

    The stream is cut into ``batch`` contiguous streams read segment by segment (T = segment_len), the memories
    carried across segments and starting from zeros. Every M scores exactly the same tokens.

    Returns:
      {"nll": mean nats per token, "ppl": exp(nll), "tokens": scored tokens}.
    """
    streams = as_streams(ids, batch, max_tokens)  # [B, n]
    num_segments = (streams.shape[1] - 1) // segment_len
    if num_segments < 1:
        return {"nll": float("nan"), "ppl": float("nan"), "tokens": 0}
    step = _eval_step(model, int(mem_len))
    memories = model.init_memories(batch, mem_len)
    total = jnp.zeros((), jnp.float32)
    for k in range(num_segments):
        start = k * segment_len
        inputs = jnp.asarray(streams[:, start:start + segment_len])
        targets = jnp.asarray(streams[:, start + 1:start + 1 + segment_len])
        memories, nll = step(params, memories, inputs, targets)
        total = total + nll
    tokens = num_segments * segment_len * batch
    nll = float(total) / tokens
    return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), "tokens": tokens}


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LMTrainOutcome:
    params: Any
    steps: int
    steps_this_run: int
    minutes: float
    stop_reason: str
    epochs: float
    last_valid_ppl: float | None



def train_lm(model, cfg: ml_collections.ConfigDict, lm_data: LMData, run_dir: str) -> LMTrainOutcome:
    """Trains (or resumes) the model on the train stream until train.num_steps or train.max_minutes.

    Raises:
      experiments.training.ConfigError: if the train stream is too short for one segment per stream.
    """
    tc, ec = cfg.train, cfg.eval
    seg, batch = int(tc.segment_len), int(tc.batch_size)
    streams = as_streams(lm_data.train.ids, batch)  # [B, n]
    steps_per_epoch = (streams.shape[1] - 1) // seg
    if steps_per_epoch < 1:
        raise training.ConfigError(f"the train split has {len(lm_data.train.ids)} tokens, too few for {batch} "
                                   f"streams of one {seg}-token segment; fix: lower --config.train.batch_size or "
                                   "--config.train.segment_len, or use a longer text")
    optimizer = training.make_lm_optimizer(tc)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    example = (jnp.zeros((batch, seg), jnp.int32), model.init_memories(batch, tc.mem_len))
    mesh = training.distributed.mesh_from_config(cfg)
    if mesh is None:
        params = nn.unbox(jax.jit(model.init)(init_rng, *example)["params"])  # the model boxes them with axis names
        train_step = make_train_step(model, optimizer)
        opt_state = optimizer.init(params)
    else:
        rules = training.distributed.rules_for(mesh, int(cfg.model.num_heads))
        params, abstract = training.distributed.sharded_params(model, mesh, rules, init_rng, *example)
        train_step = make_sharded_train_step(model, optimizer, mesh, rules, abstract)
        opt_state = train_step.init_opt_state(params)
    logging.info("train stream %d tokens = %d streams x %d segments of %d, on %s", len(lm_data.train.ids), batch,
                 steps_per_epoch, seg, training.distributed.describe(mesh))

    def step_fn(params, opt_state, memories, segment, rng):
        inputs, targets = segment
        params, opt_state, memories, loss = train_step(params, opt_state, memories, inputs, targets, rng)
        return params, opt_state, memories, loss, 1.0

    def epoch_batches(epoch: int):
        del epoch  # every epoch reads the streams in the same order
        for k in range(steps_per_epoch):
            yield (streams[:, k * seg:(k + 1) * seg], streams[:, k * seg + 1:(k + 1) * seg + 1]), batch * seg

    def valid_perplexity(params) -> dict[str, float]:
        valid = evaluate_stream(model, params, lm_data.valid.ids, batch=int(ec.batch_size), segment_len=seg,
                                mem_len=int(tc.mem_len), max_tokens=int(ec.valid_max_tokens))
        return {"dev_ppl": valid["ppl"]}

    outcome = training.train_loop(step_fn, params, opt_state, epoch_batches, train_config=tc,
                                  run_dir=run_dir, rng=dropout_rng, carry=model.init_memories(batch, tc.mem_len),
                                  evaluate=valid_perplexity, eval_at_end=True, steps_per_epoch=steps_per_epoch)
    return LMTrainOutcome(params=outcome.params, steps=outcome.steps, steps_this_run=outcome.steps_this_run,
                          minutes=outcome.minutes, stop_reason=outcome.stop_reason,
                          epochs=round(outcome.steps / steps_per_epoch, 3),
                          last_valid_ppl=outcome.last_eval["dev_ppl"] if outcome.last_eval else None)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def memory_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per evaluation memory length (test ppl, bits per character, bits per token)."""
    lines = ["| eval memory M | keys per query (max) | test ppl | test bpc | bits/token | test tokens |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['mem_len']} | {r['mem_len'] + r['segment_len']} | {r['test_ppl']:.2f} | "
                     f"{r['test_bpc']:.4f} | {r['test_bits_per_token']:.4f} | {r['test_tokens']} |")
    return "\n".join(lines)


def ppl_vs_memory_figure(records: Sequence[dict[str, Any]], path: str, *, train_mem_len: int, title: str) -> str:
    """Test perplexity against evaluation memory length (log-2 x axis from M=T; M=0 drawn at the left)."""
    from experiments import plots  # pylint: disable=import-outside-toplevel  (sets the Agg backend)

    fig, ax = plots.plt.subplots(figsize=(6.5, 4.2))
    xs = [r["mem_len"] for r in records]
    ax.plot(range(len(xs)), [r["test_ppl"] for r in records], marker="o")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([f"{x}" + (" (train)" if x == train_mem_len else "") for x in xs])
    ax.set_xlabel("evaluation memory length M (tokens per layer)")
    ax.set_ylabel("test perplexity")
    ax.grid(alpha=0.3)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plots.plt.close(fig)
    return path


# The summary table of results.md (one row per evaluation memory length).
LM_COLUMNS = (("row", "row"), ("eval memory M", "mem_len"), ("test ppl", "test_ppl"), ("steps", "steps"),
              ("train minutes", "train_minutes"))


def write_report(workdir: str, records: Sequence[dict[str, Any]], *, title: str, command: str,
                 notes: Sequence[str], train_mem_len: int) -> str:
    """results.jsonl / results.md (through `experiments.results.write`), loss_curves.png and ppl_vs_memory.png."""
    from experiments import plots  # pylint: disable=import-outside-toplevel

    metrics = {"transformer_xl": results.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
    figures = [plots.loss_curves(metrics, os.path.join(workdir, "loss_curves.png"), title=title),
               ppl_vs_memory_figure(records, os.path.join(workdir, "ppl_vs_memory.png"), train_mem_len=train_mem_len,
                                    title=title)]
    text = results.write(workdir, records, title=title, command=command, notes=notes,
                         figures=[os.path.relpath(p, workdir) for p in figures], columns=LM_COLUMNS)
    # The detailed numbers (bits per character and per token, keys per query) get a table of their own.
    head, sep, tail = text.partition("\n![")
    text = (head.rstrip() + "\n\nTest perplexity by evaluation memory length (the paper's claim: longer memory, "
            "lower perplexity):\n\n" + memory_table(records) + "\n\n" + (sep.lstrip("\n") + tail if sep else ""))
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text.rstrip() + "\n")
    return text
