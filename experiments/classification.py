"""Document classification with attention pooling: TextCNN, BiLSTM, HAN, sparse and CoDA Transformers, D-Attn.

    python -m experiments.classification                                    # the table: 17 rows x 3 seeds
    python -m experiments.classification --preset=smoke --workdir=/tmp/cls_smoke
    python -m experiments.classification --rows=han_att,han_ave,han_max --config.seeds=5
    python -m experiments.classification --config.data.corpus=rotten_tomatoes --rows=cnn_max,cnn_attention
    python -m experiments.classification --data_path=my_labelled.tsv        # lines "label<TAB>text"

Rows, data, presets and the claims tested: `experiments/configs/classification.py`. Flags: `experiments/cli.py`
(--preset, --workdir, --rows, --data_path, --config.*, --jobs). Each (row, seed) run trains in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (a killed run resumes; a finished one is only re-reported)
and logs step, loss, documents/s and ETA.

Outputs in the workdir: results.md and results.jsonl (one record per (row, seed): test accuracy, its paired
bootstrap CI and permutation p against the baseline row, dev accuracy, steps, minutes), claims.jsonl,
loss_curves.png (training loss and dev accuracy by step), accuracy_by_length.png, attention_sparsity.png (the
share of exactly-zero self-attention weights of the softmax / sparsemax / entmax rows) and attention_<row>.html
(test documents as coloured text: word and sentence weights, HAN's Fig. 5).
"""

from __future__ import annotations

import json
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

from attention_jax.models.bert import BertClassifier
from attention_jax.models.han import HierarchicalAttentionNetwork
from attention_jax.models import text_classifiers as tc
from experiments import cli
from experiments import results
from experiments import training
from experiments.configs import classification as cls_config
from experiments.data import classification as labelled
from experiments.data import documents as docs
from experiments.training import report, spec
from experiments.training import table as runs_table

FLAGS = flags.FLAGS
FAMILIES = ("textcnn", "bilstm", "han", "transformer", "dattn", "bert")
POOLINGS = {"textcnn": tc.CNN_POOLINGS, "bilstm": tc.RNN_POOLINGS, "han": ("attention", "mean", "max")}
LENGTH_BINS = (16, 32, 64, 128)

EXPERIMENT = training.Experiment(
        name="classification",
        title="Document classification by attention pooling (TextCNN, BiLSTM, HAN, sparse / CoDA Transformers, "
              "D-Attn)",
        get_config=cls_config.get_config,
        presets=cls_config.PRESETS,
        rows=cls_config.ROWS,
        default_rows=cls_config.DEFAULT_ROWS,
        preset_rows=cls_config.PRESET_ROWS,
        default_preset=cls_config.DEFAULT_PRESET,
        default_workdir="workdirs/classification",
        default_jobs=2,
)

DATA_PATH_HELP = ("your own labelled text instead of --config.data.corpus: a UTF-8 TSV file of 'label<TAB>text' "
                  "lines (split into train / test by a hash of the text)")


class BertDocumentClassifier(nn.Module):
    """`BertClassifier` over ``[CLS] document [SEP]``, built from a saved encoder's sizes (`experiments.bert`).

    Attributes:
      encoder: the `BertEncoder` attributes (`experiments.bert.encoder_kwargs`).
      num_classes: C.
      cls_id, sep_id: the encoder vocabulary's [CLS] and [SEP] ids.
      dropout_rate: the classifier's dropout.
      max_len: documents are cut to max_len - 2 tokens (the pretraining length: later positions are untrained).
    """

    encoder: Any
    num_classes: int
    cls_id: int
    sep_id: int
    dropout_rate: float = 0.1
    max_len: int = 64

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        """tokens [B, T] int32 (0-padded) -> (logits [B, C] float32, {})."""
        tokens = tokens[:, :self.max_len - 2]
        b = tokens.shape[0]
        lengths = jnp.sum(tokens != docs.PAD_ID, axis=1)  # [B]
        x = jnp.concatenate([jnp.full((b, 1), self.cls_id, tokens.dtype), tokens, jnp.zeros((b, 1), tokens.dtype)],
                            axis=1)  # [B, T + 2]
        x = x.at[jnp.arange(b), lengths + 1].set(self.sep_id)
        logits = BertClassifier(**dict(self.encoder), num_classes=self.num_classes,
                                classifier_dropout=self.dropout_rate, name="classifier")(x, train=train)
        return logits, {}


def _bert_encoder(m: ml_collections.ConfigDict) -> tuple[dict[str, Any], int]:
    """(the `BertEncoder` attributes, the pretraining length) of the saved encoder ``m.bert_encoder``."""
    from experiments import bert  # pylint: disable=import-outside-toplevel

    with open(os.path.join(os.path.expanduser(m.bert_encoder), "encoder.json"), encoding="utf-8") as f:
        meta = json.load(f)
    kwargs = bert.encoder_kwargs(meta["model"], meta["vocab_size"])
    return kwargs, int(meta["pretrain"].get("max_tokens", kwargs["max_position_embeddings"]))


def build_model(m: ml_collections.ConfigDict, vocab_size: int, num_classes: int, max_len: int,
                special: tuple[int, int] = (4, 5)):
    """The flax module of a row's ``model`` config (``special``: the [CLS] and [SEP] ids of the bert family)."""
    common = dict(vocab_size=int(vocab_size), num_classes=int(num_classes), dropout_rate=float(m.dropout_rate))
    if m.family == "bert":
        encoder, length = _bert_encoder(m) if m.bert_encoder else ({"vocab_size": int(vocab_size)}, 64)
        return BertDocumentClassifier(encoder=encoder, num_classes=int(num_classes), cls_id=special[0],
                                      sep_id=special[1], dropout_rate=float(m.dropout_rate), max_len=length)
    if m.family == "textcnn":
        return tc.TextCNN(**common, embed_dim=m.embed_dim, filter_widths=tuple(m.filter_widths),
                          num_filters=m.num_filters, pooling=m.pooling, attention_dim=m.attention_dim or None,
                          k=m.k, num_chunks=m.num_chunks, normalizer=m.normalizer)
    if m.family == "bilstm":
        return tc.BiLSTMClassifier(**common, embed_dim=m.embed_dim, hidden_size=m.hidden_size, pooling=m.pooling,
                                   attention_dim=m.attention_dim or None, hops=m.hops, normalizer=m.normalizer)
    if m.family == "han":
        return HierarchicalAttentionNetwork(**common, embed_dim=m.embed_dim, hidden_size=m.hidden_size,
                                            attention_dim=m.attention_dim, pooling=m.pooling,
                                            normalizer=m.normalizer)
    if m.family == "transformer":
        return tc.TransformerClassifier(**common, d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff,
                                        num_layers=m.num_layers, attention=m.attention, coda_gate=m.coda_gate)
    return tc.DAttnClassifier(**common, max_len=int(max_len), embed_dim=m.embed_dim, window=m.window,
                              local_features=m.local_features, global_widths=tuple(m.global_widths),
                              global_features=m.global_features, global_scores=m.global_scores,
                              hidden_dim=m.hidden_dim)


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    if d.get("data_path") and not os.path.isfile(os.path.expanduser(d.data_path)):
        raise training.ConfigError(f"the data path file {d.data_path!r} does not exist; fix: point --data_path at a "
                                   "TSV file of 'label<TAB>text' lines, or leave it empty to use --config.data.corpus")
    if not d.get("data_path") and d.corpus not in labelled.CORPORA:
        raise training.ConfigError(f"--config.data.corpus={d.corpus!r} is not valid; fix: use one of "
                                   f"{', '.join(labelled.CORPORA)}")
    if d.sentences not in ("", *docs.SENTENCE_MODES):
        raise training.ConfigError(f"--config.data.sentences={d.sentences!r} is not valid; fix: use pysbd, none or "
                                   "leave it empty")
    for name in ("vocab_size", "max_tokens", "max_sentences", "sentence_tokens"):
        cli.int_at_least(f"data.{name}", d[name], 8 if name == "vocab_size" else 1)
    for name in ("max_train", "max_test"):
        cli.int_at_least(f"data.{name}", d[name], 0)
    for name in ("dev_fraction", "test_fraction"):
        if not 0.0 < d[name] < 0.5:
            raise training.ConfigError(f"--config.data.{name}={d[name]!r} is not valid; fix: use a fraction in "
                                       "(0, 0.5)")
    buckets = tuple(d.buckets) if isinstance(d.buckets, (tuple, list)) else (d.buckets,)
    if (not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets)
            or list(buckets) != sorted(set(buckets)) or buckets[-1] < d.max_tokens):
        raise training.ConfigError(f"--config.data.buckets={d.buckets!r} is not valid; fix: use strictly increasing "
                                   f"ints ending at >= data.max_tokens={d.max_tokens}, e.g. '(32,64,128)'")
    cli.int_at_least("train.batch_size", t.batch_size, 1)
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.grad_clip_norm < 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and grad_clip_norm, max_minutes >= 0 "
                                   f"(got {t.learning_rate}, {t.grad_clip_norm}, {t.max_minutes}); fix: change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.num_documents", e.num_documents, 0)
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs (paired "
                                   "bootstrap CI and permutation p) or none")
    for row in rows:
        m = training.row_config(EXPERIMENT, config, row).model
        if (m.family == "bert") != bool(m.bert_encoder):
            raise training.ConfigError(
                f"row {row}: the bert row needs --config.model.bert_encoder and the other rows must leave it empty "
                "(one invocation has one vocabulary); fix: run --rows=bert --config.model.bert_encoder=<the encoder/ "
                "folder of an experiments.bert pretraining run> on its own")
        if m.bert_encoder and not os.path.exists(os.path.join(os.path.expanduser(m.bert_encoder), "encoder.json")):
            raise training.ConfigError(f"--config.model.bert_encoder={m.bert_encoder!r} holds no saved encoder; fix: "
                                       "pass the encoder/ folder of a finished experiments.bert pretraining run")
        if m.family not in FAMILIES:
            raise training.ConfigError(f"row {row}: --config.model.family={m.family!r} is not valid; fix: use one of "
                                       f"{', '.join(FAMILIES)}")
        if m.family in POOLINGS and m.pooling not in POOLINGS[m.family]:
            raise training.ConfigError(f"row {row}: model.pooling={m.pooling!r} is not a {m.family} pooling; fix: use "
                                       f"one of {', '.join(POOLINGS[m.family])}")
        if m.penalty < 0:
            raise training.ConfigError(f"row {row}: model.penalty={m.penalty!r} must be >= 0; fix: change it")
        try:  # the modules check their own fields (sizes, rates, choices) in __post_init__
            build_model(m, 16, 2, d.max_tokens)
        except (ValueError, TypeError) as err:
            raise training.ConfigError(f"row {row}: {' '.join(str(err).split())}; fix: change that --config.model "
                                       "field") from None


def _inputs(family: str, batch: dict[str, Any]) -> jax.Array:
    return batch["sentences"] if family == "han" else batch["tokens"]


def _forward(model, family: str):
    def forward(params, batch, rng=None):
        train = rng is not None
        return model.apply({"params": params}, _inputs(family, batch), train=train,
                           rngs={"dropout": rng} if train else None)
    return forward


def make_train_step(model, family: str, optimizer: optax.GradientTransformation, penalty: float):
    """The jitted step of `training.train_loop`: cross-entropy (+ Lin's penalty) over the real documents."""
    forward = _forward(model, family)

    def loss_fn(params, batch, rng):
        logits, aux = forward(params, batch, rng)
        w = batch["weights"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        total = jnp.sum(ce * w)
        if penalty and aux.get("penalty") is not None:
            total = total + penalty * jnp.sum(aux["penalty"] * w)
        count = jnp.maximum(jnp.sum(w), 1.0)
        return total / count, (jnp.sum(ce * w), jnp.sum(w))

    @jax.jit
    def step(params, opt_state, carry, batch, rng):
        (_, (ce_sum, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, carry, ce_sum, weight

    return step


def _zero_share(weights: list[jax.Array], lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(exactly-zero weights, valid (query, key) pairs) summed over layers, heads and the batch."""
    zeros, pairs = jnp.zeros(()), jnp.zeros(())
    valid = jnp.arange(weights[0].shape[-1])[None, :] < lengths[:, None]  # [B, T]
    pair = (valid[:, None, :, None] & valid[:, None, None, :]).astype(jnp.float32)  # [B, 1, T, T]
    for w in weights:
        zeros = zeros + jnp.sum((w == 0).astype(jnp.float32) * pair)
        pairs = pairs + jnp.sum(pair) * w.shape[1]
    return zeros, pairs


def make_predict(model, family: str):
    """Jitted (params, batch) -> (predicted class [B], cross-entropy [B], zero-weight count, valid pairs)."""
    forward = _forward(model, family)

    @jax.jit
    def predict(params, batch):
        logits, aux = forward(params, batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        if family == "transformer":
            zeros, pairs = _zero_share(aux["weights"], jnp.sum(batch["tokens"] != 0, axis=1))
        else:
            zeros, pairs = jnp.zeros(()), jnp.zeros(())
        return jnp.argmax(logits, axis=-1), ce, zeros, pairs

    return predict


def evaluate_split(predict, params, split: docs.DocumentSplit, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Accuracy (%), mean cross-entropy, per-document predictions and the zero-weight share on one split."""
    predictions = np.full((len(split),), -1, np.int64)
    losses = np.zeros((len(split),), np.float64)
    zeros = pairs = 0.0
    for batch in docs.document_batches(split, int(cfg.eval.batch_size), tuple(cfg.data.buckets), shuffle=False):
        pred, ce, z, p = predict(params, {k: v for k, v in batch.items() if k != "index"})
        real = batch["index"] >= 0
        predictions[batch["index"][real]] = np.asarray(pred)[real]
        losses[batch["index"][real]] = np.asarray(ce)[real]
        zeros, pairs = zeros + float(z), pairs + float(p)
    correct = predictions == split.labels
    return {"accuracy": 100.0 * float(correct.mean()), "loss": float(losses.mean()),
            "predictions": predictions.tolist(), "zero_share": zeros / pairs if pairs else None}


def merge_pieces(pieces: list[str], weights: np.ndarray) -> tuple[list[str], list[float]]:
    """SentencePiece pieces and their weights -> words and word weights (the sum over a word's pieces; a piece
    starting with "\u2581" starts a word)."""
    words: list[str] = []
    merged: list[float] = []
    for piece, weight in zip(pieces, np.asarray(weights, np.float64).tolist()):
        if piece.startswith("\u2581") or not words:
            words.append(piece.lstrip("\u2581"))
            merged.append(weight)
        else:
            words[-1] += piece
            merged[-1] += weight
    return words, merged


def attention_documents(model, family: str, params, split: docs.DocumentSplit, tokenizer, label_names,
                        predictions: list[int], count: int) -> list[dict[str, Any]]:
    """The first ``count`` documents of ``split`` with their word (and sentence) weights, for
    `plots.attention_text_html`;
    [] for a model without per-token weights."""
    if count == 0 or family not in ("han", "bilstm"):
        return []
    if family == "bilstm" and getattr(model, "pooling", "") not in ("attention", "structured"):
        return []
    index = np.arange(min(count, len(split)))
    batch = {"tokens": split.tokens[index], "sentences": split.sentences[index]}
    _, aux = model.apply({"params": params}, _inputs(family, batch), train=False)
    out = []
    for j, i in enumerate(index):
        caption = (f"test document {int(i)}: label {label_names[split.labels[i]]}, predicted "
                   f"{label_names[predictions[i]]}")
        if family == "han":
            rows = split.sentence_lengths[i]
            merged = [merge_pieces([tokenizer.id_to_piece(t) for t in split.sentences[i, r, :n]],
                                   np.asarray(aux["word_weights"][j, r, :n])) for r, n in enumerate(rows)]
            out.append({"sentences": [w for w, _ in merged], "word_weights": [x for _, x in merged],
                        "caption": caption,
                        "sentence_weights": np.asarray(aux["sentence_weights"][j, :len(rows)]).tolist()})
        else:
            weights = aux.get("weights")
            if weights is None:
                return []
            w = np.asarray(weights[j])
            w = w.mean(axis=0) if w.ndim == 2 else w  # structured: the mean over hops
            n = int(split.lengths[i])
            words, word_weights = merge_pieces([tokenizer.id_to_piece(t) for t in split.tokens[i, :n]], w[:n])
            out.append({"sentences": [words], "word_weights": [word_weights], "caption": caption})
    return out


def _accuracy_by_length(correct: np.ndarray, lengths: np.ndarray) -> list[dict[str, Any]]:
    out, lo = [], 1
    for hi in LENGTH_BINS:
        sel = (lengths >= lo) & (lengths <= hi)
        out.append({"bucket": f"{lo}-{hi}", "n": int(sel.sum()),
                    "accuracy": 100.0 * float(correct[sel].mean()) if sel.any() else None})
        lo = hi + 1
    return out


def train_run(cfg: ml_collections.ConfigDict, corpus: docs.Documents, run_dir: str, label: str,
              after_s: Any = None) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and evaluates it; returns its record fields.

    Leaves in ``run_dir``: test_scores.json (whether each test document was classified correctly, for the paired
    tests), test_predictions.json and, for the models with word weights, attention_documents.json.
    """
    m, t = cfg.model, cfg.train
    special = tuple(corpus.tokenizer.piece_to_id(p) for p in ("[CLS]", "[SEP]")) if m.family == "bert" else (4, 5)
    model = build_model(m, corpus.tokenizer.vocab_size, corpus.num_classes, cfg.data.max_tokens, special)
    optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm else optax.identity(),
                            optax.adam(t.learning_rate))
    buckets = tuple(cfg.data.buckets)
    first = next(docs.document_batches(corpus.train, int(t.batch_size), buckets, shuffle=True, seed=0))
    first = {k: v for k, v in first.items() if k != "index"}
    rng = jax.random.key(int(cfg.seed))
    init_rng, dropout_rng, step_rng = jax.random.split(rng, 3)
    params = model.init({"params": init_rng, "dropout": dropout_rng}, _inputs(m.family, first))["params"]
    if m.family == "bert":  # start from the pretrained encoder (a checkpoint in run_dir, if any, still wins)
        from experiments import bert  # pylint: disable=import-outside-toplevel

        params = nn.unbox(params)
        loaded, _, _ = bert.load_encoder(m.bert_encoder, jax.tree.map(np.asarray, params["classifier"]["bert"]))
        params = {**params, "classifier": {**params["classifier"], "bert": loaded}}
    opt_state = optimizer.init(params)
    step = make_train_step(model, m.family, optimizer, float(m.penalty))
    predict = make_predict(model, m.family)

    def epoch_batches(epoch: int):
        for batch in docs.document_batches(corpus.train, int(t.batch_size), buckets, shuffle=True,
                                           seed=int(cfg.seed) * 100003 + epoch):
            # Throughput counts the documents' real (unpadded) tokens.
            yield ({k: v for k, v in batch.items() if k != "index"},
                   float(np.count_nonzero(batch["tokens"] != docs.PAD_ID)))

    def evaluate(p) -> dict[str, float]:
        dev = evaluate_split(predict, p, corpus.dev, cfg)
        return {"dev_accuracy": dev["accuracy"], "dev_loss": dev["loss"]}

    steps_per_epoch = sum(1 for _ in docs.document_batches(corpus.train, int(t.batch_size), buckets, shuffle=False))
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=step_rng, evaluate=evaluate if t.eval_every else None, eval_at_end=True,
                                  steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  perplexity=False)
    test = evaluate_split(predict, outcome.params, corpus.test, cfg)
    dev = evaluate_split(predict, outcome.params, corpus.dev, cfg)
    correct = np.asarray(test["predictions"]) == corpus.test.labels
    with open(os.path.join(run_dir, "test_predictions.json"), "w", encoding="utf-8") as f:
        json.dump({"predictions": test["predictions"], "labels": corpus.test.labels.tolist()}, f)
    runs_table.write_scores(run_dir, {"test_accuracy": correct.astype(float).tolist()})
    fields = {"test_accuracy": test["accuracy"], "dev_accuracy": dev["accuracy"], "test_loss": test["loss"],
              "attention_zero_share": test["zero_share"],
              "accuracy_by_length": _accuracy_by_length(correct, corpus.test.lengths),
              "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(outcome.params)),
              "steps": outcome.steps, "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
              "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason}
    shown = attention_documents(model, m.family, outcome.params, corpus.test, corpus.tokenizer, corpus.label_names,
                                test["predictions"], int(cfg.eval.num_documents))
    if shown:
        with open(os.path.join(run_dir, "attention_documents.json"), "w", encoding="utf-8") as f:
            json.dump(shown, f)
    logging.info("[%s] test accuracy %.2f%% (dev %.2f%%) after %d steps, %.1f min", label, fields["test_accuracy"],
                 fields["dev_accuracy"], fields["steps"], fields["train_minutes"])
    return {**fields, "corpus": corpus.info["corpus"]}


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    if m.family == "transformer":
        what = f"{m.attention} self-attention"
    elif m.family == "dattn":
        what = f"local + global ({m.global_scores}) attention"
    elif m.family == "bert":
        what = "[CLS], pretrained encoder"
    else:
        what = m.pooling + (f", penalty {m.penalty:g}" if m.pooling == "structured" else "")
    return {"model": m.family, "pooling": what}


def _load_corpus(config: ml_collections.ConfigDict) -> docs.Documents:
    d = config.data
    tokenizer = None
    if config.model.get("bert_encoder"):  # the encoder's own vocabulary
        from experiments import bert  # pylint: disable=import-outside-toplevel

        tokenizer = bert.load_encoder(config.model.bert_encoder)[1]
    return docs.prepare_documents(d.corpus, d.data_dir, vocab_size=d.vocab_size, max_tokens=d.max_tokens,
                                  max_sentences=d.max_sentences, sentence_tokens=d.sentence_tokens,
                                  dev_fraction=d.dev_fraction, test_fraction=d.test_fraction,
                                  max_train=d.max_train, max_test=d.max_test, sentences=d.sentences,
                                  data_path=d.get("data_path", ""), tokenizer=tokenizer)


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command: list[str] | tuple = (), worker: tuple[int, int] | None = None,
        corpus: docs.Documents | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished in ``workdir`` and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: the corpus cannot be obtained or read.
    """

    def load() -> docs.Documents:
        loaded = _load_corpus(config)
        logging.info("data: %s", loaded.info)
        return loaded

    def data_files(loaded: docs.Documents) -> dict[str, Any]:
        return {**loaded.info, "label_names": loaded.label_names, "test_labels": loaded.test.labels.tolist(),
                "test_lengths": loaded.test.lengths.tolist()}

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=load, train_run=train_run,
                                report_fn=report_fn, data_files=data_files, describe=_describe, preset=preset,
                                command=command, jobs=jobs, worker_command=worker_command, worker=worker,
                                data=corpus)


COLUMNS = (("row", "row"), ("model", "model"), ("pooling", "pooling"), ("test accuracy %", "test_accuracy"),
           ("Δ vs baseline, 95% CI", "test_accuracy_ci"), ("p", "test_accuracy_p"), ("dev accuracy %", "dev_accuracy"),
           ("paper", "paper"), ("seeds", "n_seeds"), ("params", "params"), ("steps", "steps"),
           ("train minutes", "train_minutes"))


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and the figures; returns the records in table order."""
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records)
    if tab is None:
        return []
    table, summary, baseline, verdicts = tab.table, tab.summary, tab.baseline, tab.verdicts
    info = runs_table.read_data_info(workdir)
    wall_min = wall_s / 60.0
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    figures = _figures(workdir, rows, seeds, table)
    notes = [f"preset: {preset or '-'}; corpus: {info.get('corpus', '?')} ({info.get('classes', '?')} classes; "
             f"{info.get('train', '?')} train / {info.get('dev', '?')} dev / {info.get('test', '?')} test documents; "
             f"sentences: {info.get('sentences', '?')}; SentencePiece BPE vocabulary {info.get('vocab_size', '?')}; "
             f"{info.get('mean_tokens', 0):.1f} tokens per train document on average, "
             f"{info.get('truncated_documents', '?')} cut at {config.data.max_tokens})",
             f"training: {config.train.num_steps} steps of {config.train.batch_size} documents, Adam "
             f"{config.train.learning_rate:g}, clip {config.train.grad_clip_norm:g}, the same for every row; "
             "test accuracy after the last step (no model selection)",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_min:.1f} min (a rerun that only re-reports is short)"]
    if baseline:
        notes.append(f"Δ and p: each row against {baseline} on the same test documents, per seed "
                     f"(`experiments.stats.paired_accuracy_test`: scipy paired bootstrap CI of the accuracy "
                     f"difference in points, {config.eval.significance_samples} resamples, and a paired permutation "
                     "p); the table shows the union of the seeds' CIs and the largest p")
    length_lines = _length_table(summary)
    sections = [report.claims_section(verdicts), length_lines, _sparsity_line(table)]
    results.write(workdir, table, title=f"{EXPERIMENT.title}; data: {info.get('corpus', '?')}", command=command,
                  notes=notes, figures=figures, columns=COLUMNS, summary=summary, sections=sections,
                  footnotes=tab.footnotes,
                  footnote_heading="Paper numbers (other data and models; compare orderings, not values)")
    return table


def _length_table(summary: list[dict[str, Any]]) -> str:
    with_bins = [s for s in summary if s.get("accuracy_by_length")]
    if not with_bins:
        return ""
    labels = [b["bucket"] for b in with_bins[0]["accuracy_by_length"]]
    counts = [str(b["n"]) for b in with_bins[0]["accuracy_by_length"]]
    lines = ["Test accuracy (%) by document length (tokens; first seed):", "",
             "| row | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels),
             "| (documents) | " + " | ".join(counts) + " |"]
    for s in with_bins:
        lines.append(f"| {s['row']} | " + " | ".join("-" if b["accuracy"] is None else f"{b['accuracy']:.1f}"
                                                     for b in s["accuracy_by_length"]) + " |")
    return "\n".join(lines)


def _zero_shares(table: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Row -> the per-seed share of exactly-zero self-attention weights, for the rows whose weights are a
    normaliser's output (CoDA's tanh-sigmoid gates are left out: they are almost never exactly 0)."""
    shares: dict[str, list[float]] = {}
    for rec in table:
        if rec.get("attention_zero_share") is not None and not rec["row"].endswith("coda"):
            shares.setdefault(rec["row"], []).append(float(rec["attention_zero_share"]))
    return shares


def _sparsity_line(table: list[dict[str, Any]]) -> str:
    shares = _zero_shares(table)
    if not shares:
        return ""
    return ("Self-attention weights that are exactly 0 over the valid (query, key) pairs of the test set, mean over "
            "seeds (attention_sparsity.png): " + ", ".join(f"{row} {100 * np.mean(v):.1f}%"
                                                             for row, v in shares.items()) + ".")


def _figures(workdir: str, rows: list[str], seeds: tuple[int, ...], table: list[dict[str, Any]]) -> list[str]:
    from experiments import plots  # pylint: disable=import-outside-toplevel

    first = seeds[0]
    curves = runs_table.loss_curves_figure(workdir, rows, first, title=f"seed {first}")
    paths = [curves] if curves else []
    by_length = {rec["row"]: rec["accuracy_by_length"] for rec in table
                 if rec["seed"] == first and rec.get("accuracy_by_length")}
    if by_length:
        paths.append(os.path.relpath(plots.metric_by_length(by_length, os.path.join(workdir, "accuracy_by_length.png"),
                                                            metric="accuracy", xlabel="document length (tokens)",
                                                            ylabel="test accuracy (%)", title=f"seed {first}"),
                                     workdir))
    sparsity = {row: float(np.mean(v)) for row, v in _zero_shares(table).items()}
    if sparsity:
        paths.append(os.path.relpath(plots.weight_sparsity(sparsity, os.path.join(workdir, "attention_sparsity.png"),
                                                           title="exactly-0 weights (test, seed mean)"), workdir))
    for row in rows:
        shown = os.path.join(spec.run_dir(workdir, row, first), "attention_documents.json")
        if os.path.exists(shown):
            with open(shown, encoding="utf-8") as f:
                documents = json.load(f)
            path = plots.attention_text_html(documents, os.path.join(workdir, f"attention_{row}.html"),
                                             title=f"{row}, seed {first}: word weights (blue) and sentence weights "
                                                   "(red bar)")
            logging.info("wrote %s", path)
    return paths


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path_help=DATA_PATH_HELP, left_out_of_all=("bert",))
