"""BCNN and ABCNN-1/-2/-3 (Yin et al. 2016, arXiv:1512.05193) on KJV / World English Bible paraphrase pairs.

    python -m experiments.sentence_pairs                                   # 6 rows x 3 seeds
    python -m experiments.sentence_pairs --preset=smoke --workdir=/tmp/pairs_smoke
    python -m experiments.sentence_pairs --rows=bcnn,abcnn3 --config.seeds=5

Rows, data, presets and claims: `experiments/configs/sentence_pairs.py`; the task: `experiments/data/paraphrase.py`.
Flags: `experiments/cli.py` (--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (resumed when killed; re-reported when finished) and logs step,
loss, pairs/s and ETA.

Outputs in the workdir: results.md / results.jsonl (per (row, seed): test MAP and pair accuracy, each with the
paired bootstrap CI and permutation p against BCNN over the same test questions / pairs), claims.jsonl,
loss_curves.png (training loss and dev accuracy) and heatmaps/ (ABCNN's input attention matrix A for test pairs).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attention_jax.layers.abcnn import ABCNN, ABCNN_VARIANTS
from experiments import cli
from experiments import results
from experiments import training
from experiments.configs import sentence_pairs as pairs_config
from experiments.data import paraphrase
from experiments.data.tokenizer import load_or_train_tokenizer
from experiments.training import report
from experiments.training import table as runs_table

FLAGS = flags.FLAGS

EXPERIMENT = training.Experiment(
        name="sentence_pairs",
        title="Yin et al. 2016 (arXiv:1512.05193): BCNN vs ABCNN-1/-2/-3 on KJV / WEB verse paraphrases",
        get_config=pairs_config.get_config,
        presets=pairs_config.PRESETS,
        rows=pairs_config.ROWS,
        default_rows=pairs_config.DEFAULT_ROWS,
        default_preset=pairs_config.DEFAULT_PRESET,
        default_workdir="workdirs/sentence_pairs",
        default_jobs=2,
)


class PairScorer(nn.Module):
    """Word embeddings shared by both sentences, then `ABCNN` (its logistic regression gives one logit)."""

    vocab_size: int
    embed_dim: int
    variant: str
    num_blocks: int
    width: int
    features: int
    max_len: int

    @nn.compact
    def __call__(self, tokens0: jax.Array, tokens1: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
        lengths0 = jnp.sum(tokens0 != 0, axis=1).astype(jnp.int32)
        lengths1 = jnp.sum(tokens1 != 0, axis=1).astype(jnp.int32)
        logits, aux = ABCNN(variant=self.variant, num_blocks=self.num_blocks, width=self.width,
                            features=self.features, max_len=self.max_len, name="abcnn")(
            embed(tokens0), embed(tokens1), lengths0, lengths1)
        return logits[:, 0], aux


@dataclasses.dataclass
class EncodedPairs:
    """Token ids of one split: pairs [N, L] x 2 with labels [N], and questions (their candidates flattened)."""

    s0: np.ndarray
    s1: np.ndarray
    labels: np.ndarray
    q0: np.ndarray  # [Q', L]: the question verse repeated per candidate
    q1: np.ndarray  # [Q', L]: the candidates
    q_index: np.ndarray  # [Q'] which question a candidate belongs to
    q_correct: np.ndarray  # [Q'] 1 for the right candidate
    texts: list[tuple[str, str, int]]


@dataclasses.dataclass
class PairData:
    tokenizer: Any
    train: EncodedPairs
    dev: EncodedPairs
    test: EncodedPairs
    info: dict[str, Any]


def _encode(tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    out = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)[:max_len]
        out[i, :len(ids)] = ids
    return out


def prepare(config: ml_collections.ConfigDict, verses: list[paraphrase.AlignedVerse] | None = None) -> PairData:
    """Aligned verses (default: `paraphrase.load_aligned`) -> the three splits, tokenised with a BPE model of the
    training verses (cached in ``<data.data_dir>/tokenizers``).

    Raises:
      experiments.data.DataError: a package cannot be obtained.
    """
    d = config.data
    verses = paraphrase.load_aligned(d.data_dir) if verses is None else verses
    splits = paraphrase.build_pairs(verses, dev_fraction=d.dev_fraction, test_fraction=d.test_fraction)
    if d.max_train:
        splits["train"].pairs = splits["train"].pairs[:d.max_train]
    if d.max_test:
        for name in ("dev", "test"):
            splits[name].pairs = splits[name].pairs[:d.max_test]
            splits[name].questions = splits[name].questions[:max(1, d.max_test // 2)]
    root = os.path.expanduser(d.data_dir)
    tokenizer = load_or_train_tokenizer([t for a, b, _ in splits["train"].pairs for t in (a, b)],
                                        os.path.join(root, "tokenizers"), d.vocab_size)
    out = {}
    for name, split in splits.items():
        flat = [(q, c, k, int(j == right)) for k, (q, candidates, right) in enumerate(split.questions)
                for j, c in enumerate(candidates)]
        out[name] = EncodedPairs(
            s0=_encode(tokenizer, [a for a, _, _ in split.pairs], d.max_len),
            s1=_encode(tokenizer, [b for _, b, _ in split.pairs], d.max_len),
            labels=np.asarray([y for _, _, y in split.pairs], np.int32),
            q0=_encode(tokenizer, [q for q, _, _, _ in flat], d.max_len),
            q1=_encode(tokenizer, [c for _, c, _, _ in flat], d.max_len),
            q_index=np.asarray([k for _, _, k, _ in flat], np.int32),
            q_correct=np.asarray([y for _, _, _, y in flat], np.int32), texts=split.pairs)
    overlap = [paraphrase.word_overlap(v.kjv, v.web) for v in verses]
    info = {"corpus": "KJV / WEB New Testament verse pairs", "aligned_verses": len(verses),
            "mean_aligned_overlap": float(np.mean(overlap)),
            "vocab_size": tokenizer.vocab_size, "tokenizer": str(tokenizer.path),
            **{f"{name}_pairs": len(s.pairs) for name, s in splits.items()},
            **{f"{name}_questions": len(s.questions) for name, s in splits.items()},
            "cut_verses": int(sum(len(tokenizer.encode(a)) > d.max_len for a, _, _ in splits["test"].pairs))}
    return PairData(tokenizer, out["train"], out["dev"], out["test"], info)


def build_model(m: ml_collections.ConfigDict, vocab_size: int, max_len: int) -> PairScorer:
    return PairScorer(vocab_size=int(vocab_size), embed_dim=m.embed_dim, variant=m.variant, num_blocks=m.num_blocks,
                      width=m.width, features=m.features, max_len=int(max_len))


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval

    cli.int_at_least("data.vocab_size", d.vocab_size, 8)
    cli.int_at_least("data.max_len", d.max_len, 1)
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
    cli.int_at_least("eval.num_heatmaps", e.num_heatmaps, 0)
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    for row in rows:
        m = training.row_config(EXPERIMENT, config, row).model
        if m.variant not in ABCNN_VARIANTS:
            raise training.ConfigError(f"row {row}: model.variant={m.variant!r} is not valid; fix: use one of "
                                       f"{', '.join(ABCNN_VARIANTS)}")
        try:
            ABCNN(variant=m.variant, num_blocks=m.num_blocks, width=m.width, features=m.features, max_len=d.max_len)
            cli.int_at_least("model.embed_dim", m.embed_dim, 1)
        except (ValueError, TypeError) as err:
            raise training.ConfigError(f"row {row}: {' '.join(str(err).split())}; fix: change that --config.model "
                                       "field") from None


def _batches(s0, s1, labels, batch_size: int, *, shuffle: bool, seed: int = 0):
    n = labels.shape[0]
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        fill = batch_size - len(idx)
        index = np.concatenate([idx, np.full((fill,), -1, np.int64)])
        safe, real = np.maximum(index, 0), index >= 0
        yield {"tokens0": np.where(real[:, None], s0[safe], 0).astype(np.int32),
               "tokens1": np.where(real[:, None], s1[safe], 0).astype(np.int32),
               "labels": np.where(real, labels[safe], 0).astype(np.float32),
               "weights": real.astype(np.float32)}, index


def _scores(predict, params, s0, s1, batch_size: int) -> np.ndarray:
    out = np.zeros((s0.shape[0],), np.float64)
    for batch, index in _batches(s0, s1, np.zeros((s0.shape[0],), np.int32), batch_size, shuffle=False):
        real = index >= 0
        out[index[real]] = np.asarray(predict(params, batch["tokens0"], batch["tokens1"]))[real]
    return out


def average_precisions(scores: np.ndarray, q_index: np.ndarray, q_correct: np.ndarray) -> np.ndarray:
    """Per question, the average precision of its candidates ranked by score (one correct: 1 / its rank; ties
    count against it)."""
    out = np.zeros((int(q_index.max()) + 1 if q_index.size else 0,), np.float64)
    for k in range(out.shape[0]):
        sel = q_index == k
        s, y = scores[sel], q_correct[sel]
        right = s[y == 1]
        if right.size:
            out[k] = 1.0 / (1 + int(np.sum(s[y == 0] >= right[0])))
    return out


def train_run(cfg: ml_collections.ConfigDict, pd: PairData, run_dir: str, label: str, after_s: Any = None,
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and evaluates it; returns its record fields."""
    m, t = cfg.model, cfg.train
    model = build_model(m, pd.tokenizer.vocab_size, cfg.data.max_len)
    optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm else optax.identity(),
                            optax.adam(t.learning_rate))
    params = model.init(jax.random.key(int(cfg.seed)), pd.train.s0[:2], pd.train.s1[:2])["params"]
    opt_state = optimizer.init(params)

    def loss_fn(p, batch):
        logits, _ = model.apply({"params": p}, batch["tokens0"], batch["tokens1"])
        losses = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
        return jnp.sum(losses * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0), (
            jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"]))

    @jax.jit
    def step(p, o, carry, batch, rng):
        del rng
        (_, (loss_sum, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, carry, loss_sum, weight

    @jax.jit
    def predict(p, tokens0, tokens1):
        return model.apply({"params": p}, tokens0, tokens1)[0]

    def epoch_batches(epoch: int):
        for batch, _ in _batches(pd.train.s0, pd.train.s1, pd.train.labels, int(t.batch_size), shuffle=True,
                                 seed=int(cfg.seed) * 100003 + epoch):
            # Throughput counts both verses' real (unpadded) tokens.
            yield batch, float(np.count_nonzero(batch["tokens0"]) + np.count_nonzero(batch["tokens1"]))

    def evaluate(p) -> dict[str, float]:
        s = _scores(predict, p, pd.dev.s0, pd.dev.s1, int(cfg.eval.batch_size))
        return {"dev_accuracy": 100.0 * float(np.mean((s > 0) == (pd.dev.labels == 1)))}

    steps_per_epoch = -(-pd.train.labels.shape[0] // int(t.batch_size))
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(0), evaluate=evaluate if t.eval_every else None,
                                  eval_at_end=True, steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  perplexity=False)
    batch_size = int(cfg.eval.batch_size)
    pair_scores = _scores(predict, outcome.params, pd.test.s0, pd.test.s1, batch_size)
    correct = ((pair_scores > 0) == (pd.test.labels == 1)).astype(np.float64)
    ap = average_precisions(_scores(predict, outcome.params, pd.test.q0, pd.test.q1, batch_size), pd.test.q_index,
                            pd.test.q_correct)
    runs_table.write_scores(run_dir, {"test_accuracy": correct.tolist(), "test_map": ap.tolist()})
    dev = evaluate(outcome.params)
    _heatmaps(model, outcome.params, pd, run_dir, int(cfg.eval.num_heatmaps))
    fields = {"test_map": float(ap.mean()), "test_accuracy": 100.0 * float(correct.mean()),
              "dev_accuracy": dev["dev_accuracy"], "test_questions": int(ap.shape[0]),
              "test_pairs": int(correct.shape[0]),
              "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)),
              "steps": outcome.steps, "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
              "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason}
    logging.info("[%s] test MAP %.4f, pair accuracy %.2f%% after %d steps, %.1f min", label, fields["test_map"],
                 fields["test_accuracy"], fields["steps"], fields["train_minutes"])
    return fields


def _heatmaps(model, params, pd: PairData, run_dir: str, count: int) -> None:
    """ABCNN's first-block input attention A for the first ``count`` paraphrase test pairs (ABCNN-1 / -3 only)."""
    if count == 0 or model.variant not in ("abcnn1", "abcnn3"):
        return
    from experiments import plots  # pylint: disable=import-outside-toplevel

    positives = np.flatnonzero(pd.test.labels == 1)[:count]
    _, aux = model.apply({"params": params}, pd.test.s0[positives], pd.test.s1[positives])
    attention = np.asarray(aux["attention"][0]["input"])
    for j, i in enumerate(positives):
        n0, n1 = int(np.sum(pd.test.s0[i] != 0)), int(np.sum(pd.test.s1[i] != 0))
        words0 = [pd.tokenizer.id_to_piece(x) for x in pd.test.s0[i, :n0]]
        words1 = [pd.tokenizer.id_to_piece(x) for x in pd.test.s1[i, :n1]]
        plots.attention_heatmap(attention[j, :n0, :n1].T, words0, words1,
                                os.path.join(run_dir, f"attention_test{int(i)}.png"),
                                title=f"ABCNN input attention A (test pair {int(i)})", xlabel="KJV verse",
                                ylabel="WEB verse")


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"model": m.variant, "blocks": m.num_blocks}


COLUMNS = (("row", "row"), ("model", "model"), ("blocks", "blocks"), ("test MAP", "test_map"),
           ("Δ MAP vs baseline, 95% CI", "test_map_ci"), ("p", "test_map_p"),
           ("test pair accuracy %", "test_accuracy"),
           ("Δ accuracy, 95% CI", "test_accuracy_ci"), ("p (accuracy)", "test_accuracy_p"),
           ("dev accuracy %", "dev_accuracy"), ("paper", "paper"), ("seeds", "n_seeds"), ("params", "params"),
           ("steps", "steps"), ("train minutes", "train_minutes"))


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and loss_curves.png; returns the records in table order."""
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records,
                              metrics={"test_accuracy": 100.0, "test_map": 1.0})
    if tab is None:
        return []
    table, summary, baseline, verdicts = tab.table, tab.summary, tab.baseline, tab.verdicts
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    curves = runs_table.loss_curves_figure(workdir, rows, seeds[0], title=f"seed {seeds[0]}",
                                           loss_label="train binary cross-entropy (nats / candidate answer)")
    figures = [curves] if curves else []
    notes = [f"preset: {preset or '-'}; data: {info.get('aligned_verses', '?')} of 7,957 KJV New Testament verses "
             f"matched to their WEB verse; pairs train / dev / test {info.get('train_pairs', '?')} / "
             f"{info.get('dev_pairs', '?')} / {info.get('test_pairs', '?')} (half paraphrases, half the most "
             f"word-sharing verse within 4 places), test questions {info.get('test_questions', '?')} (up to 9 "
             "candidates each; MAP = MRR); split by "
             f"chapter; SentencePiece BPE {info.get('vocab_size', '?')} pieces, verses cut at "
             f"{config.data.max_len} tokens",
             f"training: {config.train.num_steps} steps of {config.train.batch_size} pairs, Adam "
             f"{config.train.learning_rate:g}, the same for every row; test after the last step",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min"]
    if baseline:
        notes.append(f"Δ and p: against {baseline} per seed on the same test questions (MAP: per-question average "
                     f"precision) and pairs (accuracy), `experiments.stats.paired_accuracy_test` (paired bootstrap CI, "
                     f"{config.eval.significance_samples} resamples; paired permutation p); union of CIs, largest p")
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=COLUMNS, summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading="Paper numbers (WikiQA, another task; compare orderings, not values)")
    return table


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, pair_data: PairData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: a package cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda pd: pd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=pair_data)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run, data_path="its pairs are built from the two Bibles")
