"""BERT (Devlin et al. 2018, arXiv:1810.04805): MLM + NSP pretraining on real English text, then fine-tuning on
document classification against the same encoder trained from scratch, at several label budgets, with and without
NSP (Table 5's ablation).

    python -m experiments.bert                                     # pretrain nsp + no_nsp, then 18 rows x 3 seeds
    python -m experiments.bert --preset=smoke --workdir=/tmp/bert_smoke
    python -m experiments.bert --rows=rt_100_scratch,rt_100_nsp --config.seeds=5

Rows, data, presets and claims: `experiments/configs/bert.py`; the pretraining documents and pairs:
`experiments/data/pretraining.py`; the classification corpora: `experiments/data/classification.py`. Flags:
`experiments/cli.py` (--preset, --workdir, --rows, --config.*, --jobs).

Phase 1 trains the pretraining rows the fine-tuning rows need (``<workdir>/pretrain/<nsp|no_nsp>/seed_0``, orbax
checkpoints, resumed when killed), logging step, loss, pieces/s and ETA, and measures MLM and NSP accuracy on
held-out documents. Each finished run saves its encoder with orbax in ``encoder/`` (`save_encoder`; `load_encoder`
reads it back, with the SentencePiece model and the sizes beside it), which ``--config.train.encoder_dir`` (here)
and ``--config.model.bert_encoder`` (`experiments.classification`) load. Phase 2 fine-tunes every (row, seed) in
``<workdir>/<row>/seed_<n>``.

Outputs: pretrain/results.md (held-out MLM / NSP accuracy per pretraining row) and pretrain/curves.png (training
loss, held-out MLM loss and accuracy, NSP accuracy by step); results.md / results.jsonl (test accuracy per
fine-tuning (row, seed), with the paired bootstrap CI and permutation p against the scratch row of the same dataset
and budget), claims.jsonl, accuracy_by_budget.png and loss_curves.png.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
from typing import Any

from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attention_jax.models.bert import BertClassifier, BertForPretraining, mlm_loss_and_accuracy, mlm_mask
from experiments import cli
from experiments import data
from experiments import results
from experiments import stats
from experiments import training
from experiments.configs import bert as bert_config
from experiments.data import classification as corpora
from experiments.data import pretraining
from experiments.data.tokenizer import Tokenizer, load_or_train_tokenizer
from experiments.training import report, spec
from experiments.training import table as runs_table

FLAGS = flags.FLAGS

EXPERIMENT = training.Experiment(
        name="bert",
        title="Devlin et al. 2018 (arXiv:1810.04805): a small BERT pretrained with MLM + NSP on the KJV and fortunes, "
              "fine-tuned on R8 and rotten tomatoes against the same encoder from scratch",
        get_config=bert_config.get_config,
        presets=bert_config.PRESETS,
        rows=bert_config.ROWS,
        default_rows=bert_config.DEFAULT_ROWS,
        default_preset=bert_config.DEFAULT_PRESET,
        default_workdir="workdirs/bert",
        default_jobs=2,
        preset_rows=bert_config.PRESET_ROWS,
)


def _pretrain_base_config() -> ml_collections.ConfigDict:
    """The pretraining table's base config (defined here, so the fine-tuning claims of configs/bert.py are not
    the pretraining table's)."""
    return pretrain_config(bert_config.get_config())


PRETRAIN = training.Experiment(
        name="bert", title="BERT pretraining (arXiv:1810.04805, §3.1): MLM + NSP against MLM only",
        get_config=_pretrain_base_config, presets={}, rows=bert_config.PRETRAIN_ROWS,
        default_rows=tuple(bert_config.PRETRAIN_ROWS), default_preset="small", default_workdir="workdirs/bert/pretrain",
        paper={"nsp": {"text": "-", "source": "-"}}, claims=(), baseline_row="nsp")
PRETRAIN_SECTIONS = ("experiment", "seed", "seeds", "model", "pretrain", "eval")


# ----------------------------------------------------------------------------------------------
# Saving and loading the encoder
# ----------------------------------------------------------------------------------------------


def save_encoder(directory: str, encoder_params: Any, tokenizer: Tokenizer, model: ml_collections.ConfigDict,
                 pretrain: dict[str, Any]) -> None:
    """Writes the encoder's parameters (plain arrays, orbax), its SentencePiece model and its sizes into
    ``directory``."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "params"), jax.device_get(encoder_params))
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(tokenizer.processor.serialized_model_proto())
    with open(os.path.join(directory, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump({"model": model.to_dict(), "vocab_size": tokenizer.vocab_size, "pretrain": pretrain}, f, indent=2,
                  sort_keys=True)


def load_encoder(directory: str, target: Any | None = None) -> tuple[Any, Tokenizer, dict[str, Any]]:
    """(encoder parameters, tokenizer, {"model": sizes, "vocab_size", "pretrain"}) saved by `save_encoder`.

    Args:
      directory: the ``encoder`` folder of a finished pretraining run.
      target: parameters of the same tree (e.g. a fresh ``params["bert"]``) to restore into; None: as saved.

    Raises:
      experiments.data.DataError: if the folder is not a saved encoder.
    """
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    directory = os.path.abspath(os.path.expanduser(directory))
    meta_path = os.path.join(directory, "encoder.json")
    if not os.path.exists(meta_path):
        raise data.DataError(f"{directory!r} holds no saved BERT encoder (no encoder.json); fix: pass the encoder/ "
                             "folder of a finished pretraining run, e.g. workdirs/bert/pretrain/nsp/seed_0/encoder")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(directory, "tokenizer.model"), "rb") as f:
        tokenizer = Tokenizer(f.read(), os.path.join(directory, "tokenizer.model"))
    checkpointer = ocp.StandardCheckpointer()
    params = checkpointer.restore(os.path.join(directory, "params"), target)
    return params, tokenizer, meta


def encoder_kwargs(m: Any, vocab_size: int) -> dict[str, Any]:
    """`BertEncoder` attributes from a ``model`` config section (a ConfigDict or a dict)."""
    return dict(vocab_size=int(vocab_size), hidden_size=int(m["hidden_size"]), num_layers=int(m["num_layers"]),
                num_heads=int(m["num_heads"]), intermediate_size=int(m["intermediate_size"]),
                max_position_embeddings=int(m["max_position_embeddings"]), dropout_rate=float(m["dropout_rate"]),
                attention_dropout_rate=float(m["attention_dropout_rate"]), norm=str(m["norm"]))


# ----------------------------------------------------------------------------------------------
# Phase 1: pretraining
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainData:
    tokenizer: Tokenizer
    train: list[list[list[int]]]  # per document, per sentence, piece ids
    groups: list[str]
    held_out: pretraining.Instances
    info: dict[str, Any]


def pretrain_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The sections a pretraining run depends on (so fine-tuning settings never invalidate a finished encoder)."""
    c = ml_collections.ConfigDict({k: config[k] for k in PRETRAIN_SECTIONS})
    c.seeds = ""
    c.seed = 0
    c.eval = ml_collections.ConfigDict({"significance": "none", "significance_samples": 1000, "baseline_row": ""})
    c.train = ml_collections.ConfigDict()  # the harness reads train.init_from; pretraining's fields are in pretrain
    return c


def load_tokenizer_and_documents(p: ml_collections.ConfigDict, documents: list[pretraining.Document] | None = None,
                                 ) -> tuple[Tokenizer, list[pretraining.Document], list[pretraining.Document]]:
    """The pretraining vocabulary (SentencePiece BPE of the training documents, with [CLS] [SEP] [MASK]) and the
    (train, held-out) documents; ``documents`` replaces the corpora (tests).

    Raises:
      experiments.data.DataError: data that cannot be obtained.
    """
    docs = documents if documents is not None else pretraining.load_documents(
        tuple(s for s in p.sources.split(",") if s), p.data_dir)
    train, held = pretraining.split_documents(docs, p.held_out_fraction)
    if p.max_documents:  # a hash-ordered sample, so every source is in it
        train = sorted(train, key=lambda d: pretraining.doc_rank("bert-sample", d.name))[:p.max_documents]
        held = sorted(held, key=lambda d: pretraining.doc_rank("bert-sample", d.name))[:max(2, p.max_documents // 10)]
    root = os.path.expanduser(p.data_dir)
    tokenizer = load_or_train_tokenizer([s for d in train for s in d.sentences], os.path.join(root, "tokenizers"),
                                        p.vocab_size, user_defined_symbols=pretraining.SPECIAL_SYMBOLS)
    return tokenizer, train, held


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    ids = {name: tokenizer.piece_to_id(name) for name in pretraining.SPECIAL_SYMBOLS}
    if len(set(ids.values()) | {tokenizer.unk_id}) != len(ids) + 1:
        raise data.DataError(f"the SentencePiece model lacks the BERT symbols {ids}; fix: delete it and rerun")
    return ids


def prepare_pretraining(config: ml_collections.ConfigDict,
                        documents: list[pretraining.Document] | None = None) -> PretrainData:
    """The tokenizer, the encoded training documents and the fixed held-out pairs (``documents``: tests)."""
    p = config.pretrain
    tokenizer, train, held = load_tokenizer_and_documents(p, documents)
    ids = special_ids(tokenizer)

    def encode(docs):
        return [[tokenizer.encode(s) for s in d.sentences] for d in docs]

    held_out = pretraining.nsp_instances(encode(held), max_tokens=p.max_tokens, cls_id=ids["[CLS]"],
                                         sep_id=ids["[SEP]"], seed=12345, groups=[d.name.split("/")[0] for d in held])
    keep = min(p.eval_instances, held_out.is_next.shape[0])
    held_out = pretraining.Instances(held_out.tokens[:keep], held_out.token_type_ids[:keep], held_out.is_next[:keep],
                                     held_out.same_group[:keep])
    piece, floor = unigram_rule_accuracy(encode(train), held_out.tokens, _never_ids(tokenizer), p.mask_rate)
    info = {"train_documents": len(train), "held_out_documents": len(held), "held_out_pairs": keep,
            "unigram_rule_piece": tokenizer.id_to_piece(piece) if piece >= 0 else "",
            "unigram_rule_mlm_accuracy": round(floor, 2),
            "train_sentences": sum(len(d.sentences) for d in train), "vocab_size": tokenizer.vocab_size,
            "tokenizer": str(tokenizer.path), "sources": p.sources}
    return PretrainData(tokenizer, encode(train), [d.name.split("/")[0] for d in train], held_out, info)


def unigram_rule_accuracy(train: list[list[list[int]]], tokens: np.ndarray, never: set[int],
                          mask_rate: float) -> tuple[int, float]:
    """The MLM floor: the expected held-out accuracy, in %, of always predicting the most frequent training piece.

    Each row of ``tokens`` predicts k = min(max(1, round(mask_rate * n)), ceil(mask_rate * T)) of its n eligible
    positions (`mlm_mask`'s rule), chosen uniformly, so the rule's expected accuracy is the k-weighted mean of each
    row's share of that piece among its eligible positions.

    Args:
      train: per document, per sentence, piece ids (the training documents).
      tokens: [N, T] int, the held-out pairs.
      never: the ids `mlm_mask` never chooses (padding, [CLS], [SEP], [MASK], ...).
      mask_rate: the share of eligible positions predicted.

    Returns:
      (the piece id, the expected accuracy in %); (-1, 0.0) when there is nothing to predict.
    """
    counts = np.bincount(np.asarray([i for d in train for s in d for i in s if i not in never], np.int64))
    eligible = ~np.isin(tokens, np.asarray(sorted(never), np.int64))
    n = eligible.sum(axis=1)
    if counts.size == 0 or not n.any():
        return -1, 0.0
    piece = int(np.argmax(counts))
    k = np.where(n > 0, np.minimum(np.maximum(1, np.round(np.float32(mask_rate) * n)),
                                   max(1, math.ceil(mask_rate * tokens.shape[1]))), 0)
    share = ((tokens == piece) & eligible).sum(axis=1) / np.maximum(n, 1)
    return piece, float(100.0 * np.sum(k * share) / np.sum(k))


def _schedule(peak: float, steps: int, warmup_fraction: float) -> optax.Schedule:
    """Linear warm-up then linear decay to 0 (§A.2)."""
    warm = max(1, int(round(warmup_fraction * steps)))
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm),
                                 optax.linear_schedule(peak, 0.0, max(1, steps - warm))], [warm])


def _never_ids(tokenizer: Tokenizer) -> set[int]:
    """The ids `mlm_mask` never chooses nor draws: padding, unknown, BOS / EOS and the BERT symbols."""
    return {i for i in (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id,
                        *special_ids(tokenizer).values()) if i >= 0}


def _mask_fn(tokenizer: Tokenizer, p: ml_collections.ConfigDict):
    ids = special_ids(tokenizer)
    never = tuple(sorted(_never_ids(tokenizer) - {ids["[MASK]"]}))
    return functools.partial(mlm_mask, vocab_size=tokenizer.vocab_size, mask_id=ids["[MASK]"], special_ids=never,
                             mask_rate=float(p.mask_rate))


def pretrain_run(cfg: ml_collections.ConfigDict, pd: PretrainData, run_dir: str, label: str, after_s: Any = None,
                 ) -> dict[str, Any]:
    """Pretrains (or resumes) one encoder, measures it on the held-out documents and saves it; returns the record."""
    p = cfg.pretrain
    model = BertForPretraining(**{**encoder_kwargs(cfg.model, pd.tokenizer.vocab_size),
                                  "dropout_rate": float(p.dropout_rate), "attention_dropout_rate": float(p.dropout_rate)})
    mask = _mask_fn(pd.tokenizer, p)
    nsp_weight = 1.0 if p.nsp else 0.0
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(_schedule(p.learning_rate, p.num_steps, p.warmup_fraction),
                                        weight_decay=p.weight_decay))
    example = jnp.asarray(pd.held_out.tokens[:2])
    params = model.init(jax.random.key(int(cfg.seed)), example, jnp.asarray(pd.held_out.token_type_ids[:2]))["params"]
    opt_state = optimizer.init(params)

    def losses(prm, batch, rng, train):
        mask_rng, dropout_rng = jax.random.split(rng)
        inputs, positions, weights = mask(mask_rng, batch["tokens"])
        mlm_logits, nsp_logits = model.apply({"params": prm}, inputs, batch["token_type_ids"], positions, train=train,
                                             rngs={"dropout": dropout_rng})
        targets = jnp.take_along_axis(batch["tokens"], positions, axis=1)
        mlm_loss, mlm_accuracy = mlm_loss_and_accuracy(mlm_logits, targets, weights)
        nsp_labels = 1 - batch["is_next"]  # the released label order: 0 = IsNext, 1 = NotNext
        nsp_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(nsp_logits, nsp_labels))
        nsp_correct = (jnp.argmax(nsp_logits, -1) == nsp_labels).astype(jnp.float32)
        return mlm_loss + nsp_weight * nsp_loss, (mlm_loss, mlm_accuracy, nsp_loss, nsp_correct)

    @jax.jit
    def step(prm, o, carry, batch, rng):
        (loss, _), grads = jax.value_and_grad(losses, has_aux=True)(prm, batch, rng, True)
        updates, o = optimizer.update(grads, o, prm)
        return optax.apply_updates(prm, updates), o, carry, loss, jnp.float32(1.0)

    @jax.jit
    def measure(prm, batch, rng):
        return losses(prm, batch, rng, False)[1]

    ids = special_ids(pd.tokenizer)

    def epoch_batches(epoch: int):
        inst = pretraining.nsp_instances(pd.train, max_tokens=p.max_tokens, cls_id=ids["[CLS]"], sep_id=ids["[SEP]"],
                                         seed=epoch, groups=pd.groups)
        order = np.random.default_rng(epoch).permutation(inst.is_next.shape[0])
        for start in range(0, order.shape[0] - p.batch_size + 1, p.batch_size):
            idx = order[start:start + p.batch_size]
            yield ({"tokens": inst.tokens[idx], "token_type_ids": inst.token_type_ids[idx],
                    "is_next": inst.is_next[idx]}, float(np.count_nonzero(inst.tokens[idx])))

    def evaluate(prm) -> dict[str, float]:
        h, n = pd.held_out, pd.held_out.is_next.shape[0]
        sums = np.zeros(3)
        correct = np.zeros((n,))
        b = int(cfg.eval.get("batch_size", 128))
        for start in range(0, n, b):
            sl = slice(start, min(n, start + b))
            batch = {"tokens": jnp.asarray(h.tokens[sl]), "token_type_ids": jnp.asarray(h.token_type_ids[sl]),
                     "is_next": jnp.asarray(h.is_next[sl])}
            mlm_loss, mlm_acc, nsp_loss, nsp_correct = measure(prm, batch, jax.random.key(start))
            k = sl.stop - sl.start
            sums += k * np.asarray([mlm_loss, mlm_acc, nsp_loss])
            correct[sl] = np.asarray(nsp_correct)
        same = h.same_group  # is-next pairs, and random B from the same corpus
        return {"held_out_mlm_loss": float(sums[0] / n), "held_out_mlm_accuracy": 100.0 * float(sums[1] / n),
                "held_out_nsp_loss": float(sums[2] / n), "held_out_nsp_accuracy": 100.0 * float(correct.mean()),
                "held_out_nsp_accuracy_same_corpus": 100.0 * float(correct[same].mean()) if same.any() else None,
                "held_out_nsp_accuracy_other_corpus": 100.0 * float(correct[~same].mean()) if (~same).any() else None}

    t = ml_collections.ConfigDict({"num_steps": p.num_steps, "max_minutes": 0.0, "log_every": p.log_every,
                                   "eval_every": p.eval_every, "checkpoint_every": p.checkpoint_every})
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(int(cfg.seed) + 7), evaluate=evaluate, eval_at_end=True,
                                  label=label, after_s=after_s)
    final = evaluate(outcome.params)
    save_encoder(os.path.join(run_dir, "encoder"), nn.unbox(outcome.params["bert"]), pd.tokenizer, cfg.model,
                 {"nsp": bool(p.nsp), "steps": outcome.steps, "max_tokens": int(p.max_tokens), **pd.info})
    fields = {**final, "unigram_rule_mlm_accuracy": pd.info.get("unigram_rule_mlm_accuracy"),
              "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)),
              "steps": outcome.steps, "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason,
              "encoder_dir": os.path.abspath(os.path.join(run_dir, "encoder"))}
    logging.info("[%s] held-out MLM accuracy %.2f%%, NSP accuracy %.2f%% after %d steps, %.1f min", label,
                 fields["held_out_mlm_accuracy"], fields["held_out_nsp_accuracy"], fields["steps"],
                 fields["train_minutes"])
    return fields


PRETRAIN_COLUMNS = (("row", "row"), ("held-out MLM accuracy %", "held_out_mlm_accuracy"),
                    ("MLM, most-frequent-piece rule %", "unigram_rule_mlm_accuracy"),
                    ("held-out MLM loss", "held_out_mlm_loss"), ("held-out NSP accuracy %", "held_out_nsp_accuracy"),
                    ("NSP, is-next or random B from the same corpus %", "held_out_nsp_accuracy_same_corpus"),
                    ("NSP, random B from the other corpus %", "held_out_nsp_accuracy_other_corpus"),
                    ("params", "params"), ("steps", "steps"), ("train minutes", "train_minutes"))


def write_pretrain_report(config, workdir: str, rows, seeds, records, *, command: str, wall_s: float):
    table = [dict(records[(row, seed)]) for row in rows for seed in seeds if (row, seed) in records]
    if not table:
        return []
    from experiments import plots  # pylint: disable=import-outside-toplevel

    metrics = {row: results.read_jsonl(os.path.join(spec.run_dir(workdir, row, seeds[0]), "metrics.jsonl"))
               for row in rows}
    figure = plots.metric_curves(
        {row: recs for row, recs in metrics.items() if recs}, os.path.join(workdir, "curves.png"),
        panels=(("loss", "training loss (MLM + NSP, or MLM)"), ("held_out_mlm_loss", "held-out MLM loss"),
                ("held_out_mlm_accuracy", "held-out MLM accuracy %"),
                ("held_out_nsp_accuracy", "held-out NSP accuracy %")),
        title="BERT pretraining, held-out documents")
    p = config.pretrain
    info = table[0]
    notes = [f"data: {p.sources} documents (KJV chapters, multi-sentence fortunes), 5% of them held out; pairs of "
             f"{p.max_tokens} pieces, {p.batch_size} a step, {p.num_steps} steps, AdamW {p.learning_rate:g} with "
             f"warm-up and linear decay, dropout {p.dropout_rate:g}; encoder {config.model.num_layers} layers x "
             f"{config.model.hidden_size}, {config.model.num_heads} heads, FFN {config.model.intermediate_size}, "
             f"{config.model.norm}-LN",
             "held-out: MLM on the same 15% / 80-10-10 masking (fixed key), NSP on held-out pairs (about half "
             "random); the no_nsp row never trains its NSP head, so its NSP accuracy is chance by design",
             "the MLM floor: always predicting the most frequent training piece scores the 'most-frequent-piece "
             "rule' column (its expectation over the masking, `unigram_rule_accuracy`); an MLM that learned context "
             "must clear it",
             f"machine: {report.machine_description()}; wall time of this invocation: {wall_s / 60:.1f} min"]
    del info
    results.write(workdir, table, title=PRETRAIN.title, command=command, notes=notes,
                  figures=[os.path.relpath(figure, workdir)], columns=PRETRAIN_COLUMNS,
                  summary=results.summarize(table), sections=[])
    return table


# ----------------------------------------------------------------------------------------------
# Phase 2: fine-tuning
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LabelledSplit:
    tokens: np.ndarray  # [N, L] int32: [CLS] text [SEP], 0-padded
    labels: np.ndarray  # [N] int32


@dataclasses.dataclass
class FinetuneData:
    tokenizer: Tokenizer
    corpora: dict[str, tuple[LabelledSplit, LabelledSplit, list[str]]]  # name -> (train, test, label names)
    info: dict[str, Any]


def _encode_labelled(tokenizer: Tokenizer, items, labels: list[str], max_len: int) -> LabelledSplit:
    ids = special_ids(tokenizer)
    tokens = np.zeros((len(items), max_len), np.int32)
    for i, (_, text) in enumerate(items):
        pieces = [ids["[CLS]"], *tokenizer.encode(text)[:max_len - 2], ids["[SEP]"]]
        tokens[i, :len(pieces)] = pieces
    index = {name: k for k, name in enumerate(labels)}
    return LabelledSplit(tokens, np.asarray([index[label] for label, _ in items], np.int32))


def prepare_finetuning(config: ml_collections.ConfigDict, datasets: list[str], *,
                       documents: list[pretraining.Document] | None = None,
                       items: dict[str, tuple[list, list]] | None = None) -> FinetuneData:
    """The classification corpora, encoded with the pretraining vocabulary (or a saved encoder's).

    ``documents`` (the pretraining text) and ``items`` (name -> (train, test) lists of (label, text)) replace the
    corpora (tests).

    Raises:
      experiments.data.DataError: data that cannot be obtained.
    """
    d, f = config.data, config.train
    if f.encoder_dir:
        _, tokenizer, _ = load_encoder(f.encoder_dir)
    else:
        tokenizer = load_tokenizer_and_documents(config.pretrain, documents)[0]
    out, info = {}, {"vocab_size": tokenizer.vocab_size}
    for name in datasets:
        train, test = items[name] if items is not None else corpora.load_corpus(name, config.pretrain.data_dir)
        if d.max_test:
            test = test[:d.max_test]
        labels = sorted({label for label, _ in train})
        test = [(label, text) for label, text in test if label in set(labels)]
        out[name] = (_encode_labelled(tokenizer, train, labels, d.max_len),
                     _encode_labelled(tokenizer, test, labels, d.max_len), labels)
        info[f"{name}_train"], info[f"{name}_test"], info[f"{name}_classes"] = len(train), len(test), len(labels)
        info[f"{name}_cut"] = int(np.sum(out[name][1].tokens[:, -1] != 0))
    return FinetuneData(tokenizer, out, info)


def _width(tokens: np.ndarray, multiple: int = 32) -> int:
    longest = int(np.max(np.sum(tokens != 0, axis=1), initial=1))
    return min(tokens.shape[1], -(-longest // multiple) * multiple)


def finetune_run(cfg: ml_collections.ConfigDict, fd: FinetuneData, run_dir: str, label: str, after_s: Any = None, *,
                 workdir: str) -> dict[str, Any]:
    """Fine-tunes (or resumes) one (row, seed) and tests it; returns its record fields."""
    d, f = cfg.data, cfg.train
    train, test, labels = fd.corpora[d.dataset]
    model = BertClassifier(**encoder_kwargs(cfg.model, fd.tokenizer.vocab_size), num_classes=len(labels))
    rng = np.random.default_rng(int(cfg.seed) * 7919 + 17)
    subset = rng.permutation(train.labels.shape[0])
    if d.budget:
        subset = subset[:d.budget]
    params = nn.unbox(model.init(jax.random.key(int(cfg.seed)), jnp.asarray(train.tokens[:2]))["params"])
    encoder_dir = ""
    if f.init != "scratch":
        encoder_dir = f.encoder_dir or os.path.join(spec.run_dir(os.path.join(workdir, "pretrain"), f.init, 0),
                                                    "encoder")
        loaded, _, _ = load_encoder(encoder_dir, jax.tree.map(np.asarray, params["bert"]))
        params = {**params, "bert": loaded}
    num_steps = max(int(f.num_steps), int(np.ceil(f.min_epochs * subset.shape[0] / int(f.batch_size))))
    optimizer = optax.adamw(_schedule(f.learning_rate, num_steps, f.warmup_fraction), weight_decay=0.01)
    opt_state = optimizer.init(params)

    def loss_fn(prm, batch, step_rng):
        logits = model.apply({"params": prm}, batch["tokens"], train=True, rngs={"dropout": step_rng})
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))

    @jax.jit
    def step(prm, o, carry, batch, step_rng):
        loss, grads = jax.value_and_grad(loss_fn)(prm, batch, step_rng)
        updates, o = optimizer.update(grads, o, prm)
        return optax.apply_updates(prm, updates), o, carry, loss * batch["labels"].shape[0], \
            jnp.float32(batch["labels"].shape[0])

    @jax.jit
    def predict(prm, tokens):
        return jnp.argmax(model.apply({"params": prm}, tokens), -1)

    def epoch_batches(epoch: int):
        order = subset[np.random.default_rng(int(cfg.seed) * 100003 + epoch).permutation(subset.shape[0])]
        b = int(f.batch_size)
        for start in range(0, order.shape[0], b):
            idx = order[start:start + b]
            if idx.shape[0] < b:  # a full batch: wrap around the (small) subset
                idx = np.concatenate([idx, order[:b - idx.shape[0]]])[:b]
                if idx.shape[0] < b:
                    idx = np.resize(order, b)
            tokens = train.tokens[idx]
            yield {"tokens": tokens[:, :_width(tokens)], "labels": train.labels[idx]}, float(np.count_nonzero(tokens))

    t = ml_collections.ConfigDict({"num_steps": num_steps, "max_minutes": 0.0, "log_every": f.log_every,
                                   "eval_every": 0, "checkpoint_every": max(num_steps // 2, 1)})
    steps_per_epoch = -(-subset.shape[0] // int(f.batch_size))
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(int(cfg.seed) + 1), steps_per_epoch=steps_per_epoch, label=label,
                                  after_s=after_s, perplexity=False)
    predictions = np.zeros(test.labels.shape, np.int32)
    b = int(cfg.eval.batch_size)
    order = np.argsort(np.sum(test.tokens != 0, axis=1))  # similar lengths together: few padded widths
    for start in range(0, order.shape[0], b):
        idx = order[start:start + b]
        tokens = test.tokens[idx]
        predictions[idx] = np.asarray(predict(outcome.params, jnp.asarray(tokens[:, :_width(tokens, 64)])))
    correct = (predictions == test.labels).astype(np.float64)
    runs_table.write_scores(run_dir, {"test_accuracy": correct.tolist()})
    fields = {"test_accuracy": 100.0 * float(correct.mean()), "test_examples": int(correct.shape[0]),
              "train_examples": int(subset.shape[0]), "encoder_dir": encoder_dir,
              "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)),
              "steps": outcome.steps, "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
              "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason}
    logging.info("[%s] test accuracy %.2f%% after %d steps on %d labels, %.1f min", label, fields["test_accuracy"],
                 fields["steps"], fields["train_examples"], fields["train_minutes"])
    return fields


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    del m
    return {}


def _group(config: ml_collections.ConfigDict, row: str) -> tuple[str, int, str]:
    rc = training.row_config(EXPERIMENT, config, row)
    return rc.data.dataset, int(rc.data.budget), rc.train.init


COLUMNS = (("row", "row"), ("dataset", "dataset"), ("labels", "train_examples"), ("init", "init"),
           ("test accuracy %", "test_accuracy"), ("Δ vs scratch, 95% CI", "test_accuracy_ci"),
           ("p", "test_accuracy_p"), ("seeds", "n_seeds"), ("steps", "steps"), ("epochs", "epochs"),
           ("train minutes", "train_minutes"))


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str, wall_s: float,
                 pretrain_table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and the figures; returns the records in table order."""
    table = [dict(records[(row, seed)]) for row in rows for seed in seeds if (row, seed) in records]
    if not table:
        logging.warning("no finished run in %s to report", workdir)
        return []
    for rec in table:
        rec["dataset"], _, rec["init"] = _group(config, rec["row"])
    claims = [c for c in EXPERIMENT.claim_list if c.better in rows and all(w in rows for w in c.worse)]
    claim_p: dict = {}
    if config.eval.significance == "bs":
        scratch = {_group(config, r)[:2]: r for r in rows if _group(config, r)[2] == "scratch"}
        claim_p = runs_table.add_grouped_significance(  # each row against the scratch row of its dataset and budget
            table, workdir, metric="test_accuracy",
            baselines={r: scratch[_group(config, r)[:2]] for r in rows if _group(config, r)[:2] in scratch},
            n_resamples=int(config.eval.significance_samples), claims=claims)
    for rec in table:
        rec["title"] = EXPERIMENT.title
    summary = results.summarize(table)
    for line in summary:
        if _group(config, line["row"])[2] == "scratch":
            line["test_accuracy_p"] = "baseline"
    verdicts = [stats.claim_verdict(c, table, p_values=claim_p) for c in claims]
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    from experiments import plots  # pylint: disable=import-outside-toplevel

    figures = []
    for dataset in sorted({rec["dataset"] for rec in table}):
        lines = {}
        for init in bert_config.INITS:
            points = []
            for b_name, budget in bert_config.BUDGETS.items():
                runs = [rec for rec in table if _group(config, rec["row"]) == (dataset, budget, init)]
                points.append({"bucket": b_name, "n": runs[0]["train_examples"] if runs else 0,
                               "accuracy": float(np.mean([r["test_accuracy"] for r in runs])) if runs else None})
            if any(pt["accuracy"] is not None for pt in points):
                lines[init] = points
        if lines:
            figures.append(os.path.relpath(plots.metric_by_length(
                lines, os.path.join(workdir, f"accuracy_by_budget_{dataset}.png"), metric="accuracy",
                xlabel="training labels", ylabel="test accuracy % (mean over seeds)",
                title=f"{dataset}: fine-tuning from scratch or from a pretrained encoder"), workdir))
    curves = runs_table.loss_curves_figure(workdir, rows, seeds[0], title=f"fine-tuning, seed {seeds[0]}",
                                           loss_label="train cross-entropy (nats / example)")
    figures += [curves] if curves else []
    info = runs_table.read_data_info(workdir)
    d, f, m = config.data, config.train, config.model
    pre = "; ".join(f"{r['row']}: held-out MLM accuracy {r['held_out_mlm_accuracy']:.2f}%, NSP accuracy "
                    f"{r['held_out_nsp_accuracy']:.2f}% after {r['steps']} steps ({r['train_minutes']:.1f} min)"
                    for r in pretrain_table)
    notes = [f"preset: {preset or '-'}; encoder: {m.num_layers} layers x {m.hidden_size}, {m.num_heads} heads, FFN "
             f"{m.intermediate_size}, {m.norm}-LN, GELU; vocabulary: SentencePiece BPE {info.get('vocab_size', '?')} "
             f"pieces of the pretraining text",
             f"pretraining (pretrain/results.md): {pre or 'none in this table'}",
             f"fine-tuning: [CLS] text [SEP] cut at {d.max_len} pieces, {f.num_steps} steps of {f.batch_size} (or "
             f"{f.min_epochs:g} epoch of the labelled subset if longer), AdamW "
             f"{f.learning_rate:g} with warm-up and linear decay, dropout {m.dropout_rate}, the same for every row; "
             "the labelled subset is drawn per seed; R8 "
             f"{info.get('r8_train', '?')} train / {info.get('r8_test', '?')} test, rotten tomatoes "
             f"{info.get('rotten_tomatoes_train', '?')} / {info.get('rotten_tomatoes_test', '?')}",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min",
             "Δ and p: against the scratch row of the same dataset and budget, per seed, on the same test examples "
             f"(`experiments.stats.paired_accuracy_test`, {config.eval.significance_samples} resamples); union of "
             "CIs, largest p"]
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=COLUMNS, summary=summary, sections=[report.claims_section(verdicts)])
    return table


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _pretrain_rows(config: ml_collections.ConfigDict, rows: list[str]) -> list[str]:
    if config.train.encoder_dir:
        return []
    needed = {_group(config, row)[2] for row in rows} - {"scratch"}
    return [r for r in bert_config.PRETRAIN_ROWS if r in needed]


def pretraining_done(config: ml_collections.ConfigDict, rows: list[str], workdir: str) -> bool:
    """Whether every pretraining run the rows need has finished (a worker then fine-tunes, else it pretrains)."""
    pre = pretrain_config(config)
    for row in _pretrain_rows(config, rows):
        fp = spec.fingerprint(spec.run_flat(spec.run_config(PRETRAIN, pre, row, 0)))
        if spec.done_record(spec.run_dir(os.path.join(workdir, "pretrain"), row, 0), fp) is None:
            return False
    return True


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, pretrain_data: PretrainData | None = None,
        finetune_data: FinetuneData | None = None) -> list[dict[str, Any]]:
    """Pretrains the encoders the rows need, fine-tunes every (row, seed) not yet finished and writes the reports.

    ``pretrain_data`` / ``finetune_data`` replace the corpora (tests).

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: a package cannot be obtained.
    """
    pre_rows = _pretrain_rows(config, rows)
    pre_workdir = os.path.join(workdir, "pretrain")
    pre = pretrain_config(config)
    if worker is not None and not pretraining_done(config, rows, workdir):
        return runs_table.run_table(PRETRAIN, pre, pre_rows, pre_workdir, load_data=lambda: prepare_pretraining(pre),
                                    train_run=pretrain_run, report_fn=lambda *a: [], preset=preset, command=command,
                                    jobs=jobs, worker_command=worker_command, worker=worker, data=pretrain_data)
    pretrain_table: list[dict[str, Any]] = []
    if pre_rows and worker is None:
        pretrain_table = runs_table.run_table(
            PRETRAIN, pre, pre_rows, pre_workdir, load_data=lambda: prepare_pretraining(pre), train_run=pretrain_run,
            report_fn=lambda seeds, records, wall_s: write_pretrain_report(pre, pre_workdir, pre_rows, seeds, records,
                                                                           command=command, wall_s=wall_s),
            data_files=lambda pd: pd.info, preset=preset, command=command, jobs=jobs, worker_command=worker_command,
            data=pretrain_data)
    datasets = sorted({_group(config, row)[0] for row in rows})

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s,
                            pretrain_table=pretrain_table)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir,
                                load_data=lambda: prepare_finetuning(config, datasets),
                                train_run=functools.partial(finetune_run, workdir=workdir), report_fn=report_fn,
                                data_files=lambda fd: fd.info, describe=_describe, preset=preset, command=command,
                                jobs=jobs, worker_command=worker_command, worker=worker, data=finetune_data)


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    p, d, f, m = config.pretrain, config.data, config.train, config.model

    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
        cli.int_at_least(f"model.{name}", m[name], 1)
    if m.hidden_size % m.num_heads:
        raise training.ConfigError(f"--config.model.hidden_size={m.hidden_size} is not a multiple of num_heads="
                                   f"{m.num_heads}; fix: change one of them")
    if m.norm not in ("post", "pre"):
        raise training.ConfigError(f"--config.model.norm={m.norm!r} is not valid; fix: use post or pre")
    for path, value in (("model.dropout_rate", m.dropout_rate), ("model.attention_dropout_rate",
                                                                  m.attention_dropout_rate),
                        ("pretrain.dropout_rate", p.dropout_rate)):
        if not 0 <= value < 1:
            raise training.ConfigError(f"--config.{path}={value} must be in [0, 1); fix: change it")
    cli.int_at_least("pretrain.vocab_size", p.vocab_size, 16)
    cli.int_at_least("pretrain.max_tokens", p.max_tokens, 8)
    for name in ("batch_size", "num_steps"):
        cli.int_at_least(f"pretrain.{name}", p[name], 1)
        cli.int_at_least(f"train.{name}", f[name], 1)
    for name in ("max_documents", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"pretrain.{name}", p[name], 0)
    cli.int_at_least("pretrain.eval_instances", p.eval_instances, 2)
    cli.int_at_least("data.max_len", d.max_len, 8)
    cli.int_at_least("model.max_position_embeddings", m.max_position_embeddings, max(p.max_tokens, d.max_len))
    cli.int_at_least("data.max_test", d.max_test, 0)
    cli.int_at_least("train.log_every", f.log_every, 1)
    if not f.min_epochs >= 0:
        raise training.ConfigError(f"--config.train.min_epochs={f.min_epochs} must be >= 0; fix: change it")
    unknown = [s for s in p.sources.split(",") if s not in pretraining.SOURCES]
    if unknown or not p.sources:
        raise training.ConfigError(f"--config.pretrain.sources={p.sources!r} is not valid; fix: a comma-separated "
                                   f"subset of {', '.join(pretraining.SOURCES)}")
    if not 0 < p.held_out_fraction <= 0.5 or not 0 < p.mask_rate < 1:
        raise training.ConfigError("--config.pretrain.held_out_fraction must be in (0, 0.5] and mask_rate in (0, 1); "
                                   "fix: change them")
    if not p.learning_rate > 0 or not f.learning_rate > 0:
        raise training.ConfigError("the learning rates must be > 0; fix: change --config.pretrain.learning_rate / "
                                   "--config.train.learning_rate")
    for row in rows:
        rc = training.row_config(EXPERIMENT, config, row)
        rd, rf = rc.data, rc.train
        if rd.dataset not in bert_config.DATASETS.values():
            raise training.ConfigError(f"row {row}: data.dataset={rd.dataset!r} is not valid; fix: use one of "
                                       f"{', '.join(bert_config.DATASETS.values())}")
        if rf.init not in bert_config.INITS:
            raise training.ConfigError(f"row {row}: train.init={rf.init!r} is not valid; fix: use one of "
                                       f"{', '.join(bert_config.INITS)}")
        cli.int_at_least("data.budget", rd.budget, 0)
    if f.encoder_dir and not os.path.exists(os.path.join(os.path.expanduser(f.encoder_dir), "encoder.json")):
        raise training.ConfigError(f"--config.train.encoder_dir={f.encoder_dir!r} holds no saved encoder; fix: pass "
                                   "the encoder/ folder of a finished pretraining run")


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="its documents are the KJV chapters and the fortunes")
