"""The AS Reader (Kadlec et al. 2016, arXiv:1603.01547) against the AoA Reader (Cui et al. 2017, arXiv:1607.04423)
on CBT-style cloze questions built from the King James Bible.

    python -m experiments.cloze                                    # 4 rows (NE, CN) x 3 seeds
    python -m experiments.cloze --preset=smoke --workdir=/tmp/cloze_smoke
    python -m experiments.cloze --rows=as_ne,aoa_ne --config.seeds=5

Rows, data, presets and claims: `experiments/configs/cloze.py`; the questions: `experiments/data/cloze.py`. Flags:
`experiments/cli.py` (--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (resumed when killed; re-reported when finished) and logs step,
loss, questions/s and ETA.

Outputs in the workdir: results.md / results.jsonl (per (row, seed): test accuracy with the paired bootstrap CI and
permutation p against the AS Reader of the same answer kind over the same test questions), claims.jsonl,
loss_curves.png (training loss and dev accuracy), accuracy_by_length.png (test accuracy by context length) and
attention_<row>.html (the document attention of test questions as coloured text, verse by verse).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attention_jax.models.reader import AttentionOverAttentionReader, AttentionSumReader, cloze_losses
from experiments import cli
from experiments import results
from experiments import training
from experiments.configs import cloze as cloze_config
from experiments.data import cloze
from experiments.data.tokenizer import load_or_train_tokenizer
from experiments.training import report, spec
from experiments.training import table as runs_table

FLAGS = flags.FLAGS

EXPERIMENT = training.Experiment(
        name="cloze",
        title="Kadlec et al. 2016 (arXiv:1603.01547) vs Cui et al. 2017 (arXiv:1607.04423): AS Reader vs AoA Reader "
              "on CBT-style cloze questions from the King James Bible",
        get_config=cloze_config.get_config,
        presets=cloze_config.PRESETS,
        rows=cloze_config.ROWS,
        default_rows=cloze_config.DEFAULT_ROWS,
        default_preset=cloze_config.DEFAULT_PRESET,
        default_workdir="workdirs/cloze",
        default_jobs=2,
)
READERS = {"as": AttentionSumReader, "aoa": AttentionOverAttentionReader}
LENGTH_BINS = (0, 400, 500, 600, 700, 800, 100000)


@dataclasses.dataclass
class EncodedQuestions:
    """One split of one answer kind: documents [Q, S], queries [Q, T], candidates [Q, 10], answers [Q]."""

    documents: np.ndarray
    queries: np.ndarray
    candidates: np.ndarray
    answers: np.ndarray
    questions: list[cloze.Question]


@dataclasses.dataclass
class ClozeData:
    tokenizer: Any
    splits: dict[str, dict[str, EncodedQuestions]]  # answer kind -> split -> questions
    info: dict[str, Any]


def _ids(tokenizer, tokens) -> list[int]:
    return [tokenizer.piece_to_id("▁" + w) for w in tokens]


def _encode(tokenizer, questions: list[cloze.Question], max_document: int, max_query: int) -> EncodedQuestions:
    q = len(questions)
    docs = np.zeros((q, max_document), np.int32)
    queries = np.zeros((q, max_query), np.int32)
    cands = np.zeros((q, cloze.NUM_CANDIDATES), np.int32)
    for i, question in enumerate(questions):
        doc = _ids(tokenizer, question.context)[-max_document:]  # keep the verses nearest the query
        docs[i, :len(doc)] = doc
        query = _ids(tokenizer, question.query)[:max_query]
        queries[i, :len(query)] = query
        cands[i] = _ids(tokenizer, question.candidates)
    answers = np.asarray([question.answer_index for question in questions], np.int32)
    return EncodedQuestions(docs, queries, cands, answers, questions)


def prepare(config: ml_collections.ConfigDict, books: list[cloze.Book] | None = None) -> ClozeData:
    """The questions of both answer kinds in the three splits, encoded with a word-level SentencePiece vocabulary.

    The vocabulary covers the words of every book (its pieces are words, learned without labels), so a test
    candidate never collapses into the unknown id; words seen only in dev / test books keep their initial
    embeddings.

    Raises:
      experiments.data.DataError: the package cannot be obtained.
    """
    d = config.data
    books = cloze.load_kjv_books(d.data_dir) if books is None else books
    kinds = cloze.tag_words(books)
    split_books = cloze.split_books(books, dev_fraction=d.dev_fraction, test_fraction=d.test_fraction)
    root = os.path.expanduser(d.data_dir)
    tokenizer = load_or_train_tokenizer([" ".join(cloze.words(v)) for b in books for v in b.verses],
                                        os.path.join(root, "tokenizers"), d.vocab_size, model_type="word",
                                        user_defined_symbols=(cloze.BLANK,))
    out: dict[str, dict[str, EncodedQuestions]] = {}
    info: dict[str, Any] = {"corpus": "King James Bible (sword-text-kjv), 66 books", "vocab_size": tokenizer.vocab_size,
                            "tokenizer": str(tokenizer.path), "named_entities": len(kinds.named_entities),
                            "common_nouns": len(kinds.common_nouns),
                            **{f"{name}_books": [b.name for b in bs] for name, bs in split_books.items()}}
    for kind in cloze.ANSWER_TYPES:
        out[kind] = {}
        for name, bs in split_books.items():
            stride = d.train_stride if name == "train" else d.test_stride
            questions = [q for b in bs for q in cloze.questions_from_book(b, kinds, kind, stride=stride)]
            limit = d.max_train if name == "train" else d.max_test
            questions = questions[:limit] if limit else questions
            out[kind][name] = _encode(tokenizer, questions, d.max_document, d.max_query)
            info[f"{kind}_{name}_questions"] = len(questions)
            if questions:
                mean = float(np.mean([len(q.context) for q in questions]))
                info[f"{kind}_{name}_mean_context_tokens"] = round(mean, 1)
        for rule in ("frequency", "recency"):  # what a reader must beat without reading the query
            info[f"{kind}_test_{rule}_accuracy"] = round(cloze.heuristic_accuracy(out[kind]["test"].questions, rule), 2)
        unknown = int(np.sum(out[kind]["test"].candidates == tokenizer.unk_id))
        info[f"{kind}_test_unknown_candidates"] = unknown
    return ClozeData(tokenizer, out, info)


def build_model(m: ml_collections.ConfigDict, vocab_size: int):
    return READERS[m.reader](vocab_size=int(vocab_size), embed_dim=m.embed_dim, hidden_size=m.hidden_size,
                             dropout_rate=m.dropout_rate)


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval

    cli.int_at_least("data.vocab_size", d.vocab_size, 8)
    for name in ("max_document", "max_query", "train_stride", "test_stride"):
        cli.int_at_least(f"data.{name}", d[name], 1)
    for name in ("max_train", "max_test"):
        cli.int_at_least(f"data.{name}", d[name], 0)
    if not (0 < d.dev_fraction and 0 < d.test_fraction and d.dev_fraction + d.test_fraction < 0.5):
        raise training.ConfigError(f"--config.data.dev_fraction={d.dev_fraction} and test_fraction={d.test_fraction} "
                                   "must be > 0 with a sum below 0.5; fix: change them")
    cli.int_at_least("train.batch_size", t.batch_size, 1)
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.grad_clip_norm < 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and grad_clip_norm, max_minutes >= 0; "
                                   "fix: change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.num_figures", e.num_figures, 0)
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    for row in rows:
        rc = training.row_config(EXPERIMENT, config, row)
        if rc.model.reader not in READERS:
            raise training.ConfigError(f"row {row}: model.reader={rc.model.reader!r} is not valid; fix: use one of "
                                       f"{', '.join(READERS)}")
        if rc.data.answer_type not in cloze.ANSWER_TYPES:
            raise training.ConfigError(f"row {row}: data.answer_type={rc.data.answer_type!r} is not valid; fix: use "
                                       f"one of {', '.join(cloze.ANSWER_TYPES)}")
        m = rc.model
        cli.int_at_least("model.embed_dim", m.embed_dim, 1)
        cli.int_at_least("model.hidden_size", m.hidden_size, 1)
        if not 0 <= m.dropout_rate < 1:
            raise training.ConfigError(f"--config.model.dropout_rate={m.dropout_rate} must be in [0, 1); fix: change "
                                       "it")


def _width(lengths: np.ndarray, cap: int, multiple: int = 128) -> int:
    """A padded width for a batch: its longest row rounded up (few distinct shapes, so few compilations)."""
    return int(min(cap, max(multiple, -(-int(lengths.max(initial=1)) // multiple) * multiple)))


def _batches(split: EncodedQuestions, batch_size: int, *, shuffle: bool, seed: int = 0):
    n = split.answers.shape[0]
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    doc_len = np.sum(split.documents != 0, axis=1)
    query_len = np.sum(split.queries != 0, axis=1)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        index = np.concatenate([idx, np.full((batch_size - len(idx),), -1, np.int64)])
        safe, real = np.maximum(index, 0), index >= 0
        s = _width(doc_len[idx], split.documents.shape[1])
        t = _width(query_len[idx], split.queries.shape[1], 32)
        yield {"document": np.where(real[:, None], split.documents[safe, :s], 0).astype(np.int32),
               "query": np.where(real[:, None], split.queries[safe, :t], 0).astype(np.int32),
               "candidates": split.candidates[safe].astype(np.int32),
               "answer": np.where(real, split.answers[safe], 0).astype(np.int32),
               "weights": real.astype(np.float32)}, index


def _predict_all(predict, params, split: EncodedQuestions, batch_size: int) -> np.ndarray:
    """Candidate probabilities [Q, 10] of every question of a split."""
    out = np.zeros(split.candidates.shape, np.float64)
    for batch, index in _batches(split, batch_size, shuffle=False):
        real = index >= 0
        out[index[real]] = np.asarray(predict(params, batch["document"], batch["query"], batch["candidates"]))[real]
    return out


def train_run(cfg: ml_collections.ConfigDict, cd: ClozeData, run_dir: str, label: str, after_s: Any = None,
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and evaluates it; returns its record fields."""
    m, t = cfg.model, cfg.train
    split = cd.splits[cfg.data.answer_type]
    model = build_model(m, cd.tokenizer.vocab_size)
    optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm else optax.identity(),
                            optax.adam(t.learning_rate))
    first = next(_batches(split["train"], 2, shuffle=False))[0]
    params = model.init(jax.random.key(int(cfg.seed)), first["document"], first["query"], first["candidates"])["params"]
    opt_state = optimizer.init(params)

    def loss_fn(p, batch, rng):
        probs, _ = model.apply({"params": p}, batch["document"], batch["query"], batch["candidates"], train=True,
                               rngs={"dropout": rng})
        losses = cloze_losses(probs, batch["answer"])  # Kadlec eq. 4 per question
        return jnp.sum(losses * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0), (
            jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"]))

    @jax.jit
    def step(p, o, carry, batch, rng):
        (_, (loss_sum, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, rng)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, carry, loss_sum, weight

    @jax.jit
    def predict(p, document, query, candidates):
        return model.apply({"params": p}, document, query, candidates)[0]

    def epoch_batches(epoch: int):
        for batch, _ in _batches(split["train"], int(t.batch_size), shuffle=True, seed=int(cfg.seed) * 100003 + epoch):
            yield batch, float(np.count_nonzero(batch["document"]) + np.count_nonzero(batch["query"]))

    def evaluate(p) -> dict[str, float]:
        probs = _predict_all(predict, p, split["dev"], int(cfg.eval.batch_size))
        return {"dev_accuracy": 100.0 * float(np.mean(np.argmax(probs, 1) == split["dev"].answers))}

    steps_per_epoch = -(-split["train"].answers.shape[0] // int(t.batch_size))
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(int(cfg.seed) + 1), evaluate=evaluate if t.eval_every else None,
                                  eval_at_end=True, steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  perplexity=False)
    test = split["test"]
    probs = _predict_all(predict, outcome.params, test, int(cfg.eval.batch_size))
    correct = (np.argmax(probs, 1) == test.answers).astype(np.float64)
    runs_table.write_scores(run_dir, {"test_accuracy": correct.tolist()})
    dev = evaluate(outcome.params)
    _figures(model, outcome.params, cd, test, probs, run_dir, int(cfg.eval.num_figures))
    context_tokens = np.sum(test.documents != 0, axis=1)
    by_length = []
    for lo, hi in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        sel = (context_tokens >= lo) & (context_tokens < hi)
        by_length.append({"bucket": f"{lo}-{hi - 1}" if hi < LENGTH_BINS[-1] else f">={lo}", "n": int(sel.sum()),
                          "accuracy": 100.0 * float(correct[sel].mean()) if sel.any() else None})
    fields = {"test_accuracy": 100.0 * float(correct.mean()), "dev_accuracy": dev["dev_accuracy"],
              "test_questions": int(correct.shape[0]), "accuracy_by_length": by_length,
              "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)),
              "steps": outcome.steps, "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
              "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason}
    logging.info("[%s] test accuracy %.2f%% after %d steps, %.1f min", label, fields["test_accuracy"],
                 fields["steps"], fields["train_minutes"])
    return fields


def _figures(model, params, cd: ClozeData, test: EncodedQuestions, probs: np.ndarray, run_dir: str,
             count: int) -> None:
    """The document attention of the first ``count`` test questions as coloured text (one verse a line)."""
    if count == 0 or not test.questions:
        return
    from experiments import plots  # pylint: disable=import-outside-toplevel

    picked = list(range(min(count, len(test.questions))))
    batch = next(_batches(EncodedQuestions(test.documents[picked], test.queries[picked], test.candidates[picked],
                                           test.answers[picked], []), len(picked), shuffle=False))[0]
    _, aux = model.apply({"params": params}, batch["document"], batch["query"], batch["candidates"])
    attention = np.asarray(aux["document_attention"], np.float64)
    documents = []
    for j, i in enumerate(picked):
        q = test.questions[i]
        n_doc = int(np.sum(test.documents[i] != 0))
        offset = len(q.context) - n_doc  # context tokens cut from the front (max_document)
        weights = attention[j, :n_doc]
        sentences, word_weights, at = [], [], 0
        for length in q.verse_lengths:
            lo, hi = max(at, offset), at + length
            if hi > lo:
                sentences.append(list(q.context[lo:hi]))
                word_weights.append(weights[lo - offset:hi - offset].tolist())
            at += length
        ranked = ", ".join(f"{c} {100 * p:.1f}%" for c, p in sorted(zip(q.candidates, probs[i]), key=lambda x: -x[1]))
        documents.append({"sentences": sentences + [list(q.query)],
                          "word_weights": word_weights + [[0.0] * len(q.query)],
                          "caption": f"{q.book}, verses {q.start + 1}-{q.start + 21}: answer {q.answer!r}; "
                                     f"candidates by probability: {ranked}"})
    plots.attention_text_html(documents, os.path.join(run_dir, "document_attention.html"),
                              title="Document attention over the 20 context verses (last line: the query)")


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"model": {"as": "AS Reader", "aoa": "AoA Reader"}[m.reader]}


COLUMNS = (("row", "row"), ("model", "model"), ("answers", "answer_type"), ("test accuracy %", "test_accuracy"),
           ("Δ vs AS Reader, 95% CI", "test_accuracy_ci"), ("p", "test_accuracy_p"),
           ("dev accuracy %", "dev_accuracy"), ("paper", "paper"), ("seeds", "n_seeds"), ("params", "params"),
           ("steps", "steps"), ("epochs", "epochs"), ("train minutes", "train_minutes"))


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and the figures; returns the records in table order."""
    kinds = {row: training.row_config(EXPERIMENT, config, row).data.answer_type for row in rows}
    records = {key: {**rec, "answer_type": kinds[key[0]]} for key, rec in records.items()}
    claims = [c for c in EXPERIMENT.claim_list if c.better in rows and all(w in rows for w in c.worse)]
    # each row against the AS Reader of its answer kind
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records, claims=claims,
                              baselines={row: config.eval.baseline_row or f"as_{kind}" for row, kind in kinds.items()})
    if tab is None:
        return []
    table, summary, verdicts = tab.table, tab.summary, tab.verdicts
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    from experiments import plots  # pylint: disable=import-outside-toplevel

    figures = []
    curves = runs_table.loss_curves_figure(workdir, rows, seeds[0], title=f"seed {seeds[0]}",
                                           loss_label="train cross-entropy (nats / question)")
    figures += [curves] if curves else []
    by_length = {}
    for row in rows:
        runs = [rec for rec in table if rec["row"] == row and rec.get("accuracy_by_length")]
        if runs:
            bins = runs[0]["accuracy_by_length"]
            by_length[row] = []
            for k, b in enumerate(bins):
                values = [r["accuracy_by_length"][k]["accuracy"] for r in runs]
                by_length[row].append({**b, "accuracy": None if None in values else float(np.mean(values))})
    if by_length:
        figures.append(os.path.relpath(plots.metric_by_length(
            by_length, os.path.join(workdir, "accuracy_by_length.png"), metric="accuracy",
            xlabel="context tokens", ylabel="test accuracy % (mean over seeds)",
            title="Cloze accuracy by context length"), workdir))
    for row in rows:
        source = os.path.join(spec.run_dir(workdir, row, seeds[0]), "document_attention.html")
        if os.path.exists(source):
            target = os.path.join(workdir, f"attention_{row}.html")
            with open(source, encoding="utf-8") as f_in, open(target, "w", encoding="utf-8") as f_out:
                f_out.write(f_in.read())
    counts = ", ".join(f"{kind.upper()} train / dev / test {info.get(f'{kind}_train_questions', '?')} / "
                       f"{info.get(f'{kind}_dev_questions', '?')} / {info.get(f'{kind}_test_questions', '?')}"
                       for kind in cloze.ANSWER_TYPES)
    notes = [f"preset: {preset or '-'}; data: CBT-style questions from the King James Bible (20 verses of context, "
             f"a word of verse 21 blanked, 10 candidates from the context; split by book; test books "
             f"{', '.join(info.get('test_books', []))}); {counts}; word vocabulary {info.get('vocab_size', '?')}; "
             f"named entities and common nouns by the corpus heuristic of experiments/data/cloze.py "
             f"({info.get('named_entities', '?')} / {info.get('common_nouns', '?')} words); chance is 10%; rules that "
             "read no query: the candidate most frequent in the context "
             + ", ".join(f"{kind.upper()} {info.get(f'{kind}_test_frequency_accuracy', '?')}%" for kind in
                         cloze.ANSWER_TYPES)
             + "; the one that occurs last "
             + ", ".join(f"{kind.upper()} {info.get(f'{kind}_test_recency_accuracy', '?')}%" for kind in
                         cloze.ANSWER_TYPES),
             f"training: {config.train.num_steps} steps of {config.train.batch_size} questions, Adam "
             f"{config.train.learning_rate:g}, embedding {config.model.embed_dim}, GRU {config.model.hidden_size} per "
             f"direction, the same for every row; test after the last step",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min",
             "Δ and p: against the AS Reader of the same answer kind, per seed, on the same test questions "
             f"(`experiments.stats.paired_accuracy_test`: paired bootstrap CI, {config.eval.significance_samples} "
             "resamples; paired permutation p); union of CIs, largest p. Test questions from neighbouring windows "
             "share context verses, so they are not independent and the p values are optimistic"]
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=COLUMNS, summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading="Paper numbers (CBT, another corpus; compare orderings, not values)")
    return table


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, cloze_data: ClozeData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: a package cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda cd: cd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=cloze_data)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="its questions are built from the King James Bible")
