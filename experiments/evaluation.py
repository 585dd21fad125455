"""Evaluation shared by the translation experiments: perplexity, decoding, BLEU, alignments.

* Perplexity: exp of the label-masked cross-entropy per target token (EOS included, padding and
  filler rows excluded), as reported by Luong et al. 2015 (arXiv:1508.04025, Table 4).
* Decoding: beam search (or greedy for beam size 1) through `attention_jax.models.decoding`, one jit
  compile per source bucket; hypotheses are detokenised with the SentencePiece tokenizer.
* BLEU: sacrebleu corpus BLEU (13a tokenisation) against the raw reference sentences, overall and
  per source-length bucket (Bahdanau et al. 2014, arXiv:1409.0473, Fig. 2); chrF (Popovic 2015, sacrebleu's
  chrF2) beside it. `metric_signatures` gives sacrebleu's signature strings of both, printed under each table.
* Alignments: the [T, S] attention weights of the decoded translation (teacher-forced on the
  hypothesis, which equals the weights seen while decoding it), for heatmaps like Bahdanau Fig. 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sacrebleu

from experiments import data

PAD_ID, UNK_ID, BOS_ID, EOS_ID = data.PAD_ID, data.UNK_ID, data.BOS_ID, data.EOS_ID
_SPECIAL_PIECES = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>"}
_BATCH_KEYS = ("src", "src_lengths", "tgt_in", "tgt_out", "tgt_mask")


def model_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keeps the arrays a model step reads (drops "index", which only the host needs)."""
    return {k: batch[k] for k in _BATCH_KEYS}


def token_nll(model, params, batch, *, train: bool, rngs=None):
    """Label-masked cross-entropy of one padded batch.

    Args:
      model: a `Seq2Seq`-like flax module; ``model.apply(variables, src, src_lengths, tgt_in,
        train=...)`` returns (logits [B, T, V] float32, weights [B, T, S] float32).
      params: the model parameters.
      batch: src [B, S] int32, src_lengths [B] int32, tgt_in / tgt_out [B, T] int32,
        tgt_mask [B, T] float32 (1 for real target tokens, EOS included).
      train: passed to the model (dropout on/off).
      rngs: flax rngs for dropout when ``train`` is True.

    Returns:
      (nll [B] float32 summed over target tokens, tokens [B] float32, weights [B, T, S] float32).
    """
    logits, weights = model.apply({"params": params}, batch["src"], batch["src_lengths"], batch["tgt_in"],
                                  train=train, rngs=rngs)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["tgt_out"])  # [B,T]
    mask = batch["tgt_mask"].astype(jnp.float32)
    return (nll * mask).sum(axis=-1), mask.sum(axis=-1), weights


def make_forward(model) -> Callable:
    """Returns a jitted ``forward(params, batch) -> (nll [B], tokens [B], weights [B, T, S])``."""
    return jax.jit(functools.partial(token_nll, model, train=False))


def perplexity(forward: Callable, params, examples: Sequence[Any], *, batch_size: int,
               buckets: Sequence[int]) -> dict[str, float]:
    """Per-token perplexity of ``examples`` (Luong 2015, Table 4 "Ppl").

    Args:
      forward: from `make_forward`.
      params: model parameters.
      examples: `experiments.data.Example` list.
      batch_size: rows per evaluation batch (fixed, so one compile per bucket shape).
      buckets: token-length bucket boundaries, as in training.

    Returns:
      {"ppl": exp(nll), "nll": mean nll per token, "tokens": number of target tokens}.

    Raises:
      ValueError: if ``examples`` holds no target token.
    """
    total, count = 0.0, 0.0
    for batch in data.batches(examples, batch_size, tuple(buckets), shuffle=False, seed=0, epoch=0):
        nll, tokens, _ = forward(params, model_batch(batch))
        total += float(np.sum(nll))
        count += float(np.sum(tokens))
    if count == 0:
        raise ValueError(f"no target tokens in {len(examples)} evaluation examples")
    mean = total / count
    return {"ppl": float(math.exp(min(mean, 50.0))), "nll": mean, "tokens": int(count)}


def decoding_setup(model, params, src, src_lengths, max_len: int):
    """Encodes a batch and returns (memory, state, step_fn) for `attention_jax.models.decoding`.

    Every translation model (`Seq2Seq`, `ConvS2S`, `Transformer`) implements the one decoding protocol,
    `attention_jax.models.decoding.Decodable`; `decoding.prepare` sizes the state for ``max_len`` steps.
    """
    from attention_jax.models import decoding  # pylint: disable=import-outside-toplevel

    step_fn, memory, state = decoding.prepare(model, {"params": params}, src, src_lengths, max_len=max_len)
    return memory, state, step_fn


def make_decoder(model, *, beam_size: int, length_penalty: float = 1.0) -> Callable:
    """Returns a jitted ``decode(params, src [B,S], src_lengths [B], max_len) -> tokens [B, L] int32``.

    Beam size 1 uses greedy decoding; otherwise beam search returns the best-scoring beam (score =
    sum log p / len**length_penalty). Tokens after EOS are PAD_ID.

    Raises:
      ValueError: if ``beam_size`` < 1.
    """
    from attention_jax.models import decoding  # pylint: disable=import-outside-toplevel

    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size=}")

    def decode(params, src, src_lengths, max_len):
        memory, state, step_fn = decoding_setup(model, params, src, src_lengths, max_len)
        batch_size = src.shape[0]
        if beam_size == 1:
            tokens, _ = decoding.greedy_decode(step_fn, memory, state, batch_size=batch_size, bos_id=BOS_ID,
                                               eos_id=EOS_ID, max_len=max_len)
            return tokens
        tokens, _ = decoding.beam_search(step_fn, memory, state, batch_size=batch_size, bos_id=BOS_ID,
                                         eos_id=EOS_ID, beam_size=beam_size, max_len=max_len,
                                         length_penalty=length_penalty)
        return tokens[:, 0]

    return jax.jit(decode, static_argnames=("max_len",))


def decode_len(src_bucket: int, *, ratio: float, extra: int, max_len: int) -> int:
    """Maximum number of decoding steps for a source bucket of ``src_bucket`` tokens."""
    return max(1, min(int(max_len), int(math.ceil(ratio * src_bucket)) + int(extra)))


def translate(decoder: Callable, params, examples: Sequence[Any], *, batch_size: int, buckets: Sequence[int],
              max_len_fn: Callable[[int], int]) -> list[list[int]]:
    """Decodes every example's source.

    Args:
      decoder: from `make_decoder`.
      params: model parameters.
      examples: `experiments.data.Example` list.
      batch_size: rows per decoding batch.
      buckets: token-length bucket boundaries (the source is padded to one of them).
      max_len_fn: source bucket S -> maximum number of decoded tokens.

    Returns:
      One id list per example, in order, cut at EOS (BOS/PAD removed).
    """
    hyps: list[list[int] | None] = [None] * len(examples)
    for batch in data.batches(examples, batch_size, tuple(buckets), shuffle=False, seed=0, epoch=0):
        src = batch["src"]
        tokens = np.asarray(decoder(params, src, batch["src_lengths"], max_len=max_len_fn(src.shape[1])))
        for row, index in enumerate(batch["index"]):
            if index >= 0:
                hyps[int(index)] = data.strip_special_ids(tokens[row])
    missing = [i for i, h in enumerate(hyps) if h is None]
    if missing:
        raise ValueError(f"data.batches did not yield examples {missing[:5]} (of {len(missing)} missing)")
    return hyps  # type: ignore[return-value]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (Papineni et al. 2002) with sacrebleu's defaults (13a tokenisation, "exp"
    smoothing, which only matters when an n-gram order has no match) in [0, 100].

    Raises:
      ValueError: if the two lists differ in length.
    """
    return _corpus_score(sacrebleu.corpus_bleu, hypotheses, references)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus chrF (character 6-grams, beta 2: Popovic 2015, "chrF: character n-gram F-score for
    automatic MT evaluation", WMT) in [0, 100].

    Raises:
      ValueError: if the two lists differ in length.
    """
    return _corpus_score(sacrebleu.corpus_chrf, hypotheses, references)


def _corpus_score(metric, hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """``metric(hypotheses, [references]).score`` (one reference per sentence); 0 for no sentence."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)=} differs from {len(references)=}")
    if not hypotheses:
        return 0.0
    return float(metric(list(hypotheses), [list(references)]).score)


def metric_signatures() -> dict[str, str]:
    """sacrebleu's signature strings of `corpus_bleu` and `corpus_chrf` ({"bleu": ..., "chrf": ...}): the
    settings and version that make a score reproducible."""
    from sacrebleu.metrics import BLEU, CHRF  # pylint: disable=import-outside-toplevel

    out = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric.corpus_score(["a"], [["a"]])  # the signature names the reference count, known after one call
        out[name] = str(metric.get_signature())
    return out


def length_bucket_labels(bins: Sequence[int]) -> list[tuple[int, int | None, str]]:
    """Source-length buckets from bin edges: (lo, hi or None, label), e.g. edges (10, 20) ->
    (1, 10, "1-10"), (11, 20, "11-20"), (21, None, "21+")."""
    out, lo = [], 1
    for edge in bins:
        out.append((lo, int(edge), f"{lo}-{int(edge)}"))
        lo = int(edge) + 1
    out.append((lo, None, f"{lo}+"))
    return out


def bleu_by_length(hypotheses: Sequence[str], references: Sequence[str], source_words: Sequence[int],
                   bins: Sequence[int]) -> list[dict[str, Any]]:
    """Corpus BLEU per source-sentence length bucket (Bahdanau et al. 2014, arXiv:1409.0473, Fig. 2).

    Args:
      hypotheses: detokenised translations.
      references: reference translations, same length.
      source_words: number of words of each source sentence.
      bins: increasing bucket edges in words; the last bucket is open-ended.

    Returns:
      One dict per bucket: {"bucket": label, "lo", "hi" (None for the open one), "n", "bleu"
      (None when the bucket is empty)}.

    Raises:
      ValueError: if the three sequences differ in length or ``bins`` is not increasing.
    """
    if not len(hypotheses) == len(references) == len(source_words):
        raise ValueError(f"{len(hypotheses)=}, {len(references)=} and {len(source_words)=} differ")
    if list(bins) != sorted(set(bins)):
        raise ValueError(f"length bins must be strictly increasing, got {bins=}")
    out = []
    for lo, hi, label in length_bucket_labels(bins):
        idx = [i for i, n in enumerate(source_words) if n >= lo and (hi is None or n <= hi)]
        bleu = corpus_bleu([hypotheses[i] for i in idx], [references[i] for i in idx]) if idx else None
        out.append({"bucket": label, "lo": lo, "hi": hi, "n": len(idx), "bleu": bleu})
    return out


def pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Subword labels for token ids (SentencePiece pieces; special ids as <s>, </s>, <pad>)."""
    lookup = getattr(tokenizer, "id_to_piece", None)
    if lookup is None:
        for name in ("sp", "processor", "_sp", "_processor", "model"):
            proc = getattr(tokenizer, name, None)
            if proc is not None and hasattr(proc, "id_to_piece"):
                lookup = proc.id_to_piece
                break
    out = []
    for i in ids:
        i = int(i)
        if i in _SPECIAL_PIECES:
            out.append(_SPECIAL_PIECES[i])
        elif lookup is not None:
            out.append(str(lookup(i)))
        else:
            out.append(tokenizer.decode([i]))
    return out


def _with_target(example, tgt_ids: list[int]):
    """A copy of ``example`` whose target ids are ``tgt_ids`` (dataclass or namedtuple)."""
    if dataclasses.is_dataclass(example):
        return dataclasses.replace(example, tgt_ids=list(tgt_ids))
    return example._replace(tgt_ids=list(tgt_ids))


@dataclasses.dataclass
class Alignment:
    """Attention weights of one translated sentence, for a heatmap.

    Attributes:
      index: the example's position in its split.
      weights: [T, S] float32; row t is the alignment used to emit target token t.
      source: S subword labels of the source.
      target: T subword labels of the emitted tokens (the hypothesis plus </s>).
    """

    index: int
    weights: np.ndarray
    source: list[str]
    target: list[str]


def alignments(forward: Callable, params, examples: Sequence[Any], hypotheses: Sequence[list[int]],
               tokenizer, *, indices: Sequence[int], batch_size: int, buckets: Sequence[int]) -> list[Alignment]:
    """Attention weights of the decoded translations of ``examples[indices]``.

    The hypothesis is fed back teacher-forced (BOS + y), so row t holds the alignment the decoder
    used when it emitted y_t, as in Bahdanau et al. 2014 (arXiv:1409.0473), Fig. 3. Reuses the
    evaluation batch shapes, so no new compile is needed.

    Returns:
      One `Alignment` per index, in the order of ``indices``.
    """
    chosen = [_with_target(examples[i], hypotheses[i]) for i in indices]
    out: dict[int, Alignment] = {}
    for batch in data.batches(chosen, batch_size, tuple(buckets), shuffle=False, seed=0, epoch=0):
        _, tokens, weights = forward(params, model_batch(batch))
        weights, tokens = np.asarray(weights), np.asarray(tokens)
        for row, k in enumerate(batch["index"]):
            if k < 0:
                continue
            s_len = int(batch["src_lengths"][row])
            t_len = int(tokens[row])
            src_ids = batch["src"][row, :s_len]
            tgt_ids = batch["tgt_out"][row, :t_len]
            out[int(k)] = Alignment(index=int(indices[int(k)]), weights=weights[row, :t_len, :s_len],
                                    source=pieces(tokenizer, src_ids), target=pieces(tokenizer, tgt_ids))
    return [out[k] for k in range(len(chosen)) if k in out]


def pick_heatmap_examples(examples: Sequence[Any], count: int, max_tokens: int) -> list[int]:
    """Indices of ``count`` test examples spread over the split whose source has 4..max_tokens tokens."""
    fit = [i for i, ex in enumerate(examples) if 4 <= len(ex.src_ids) <= max_tokens]
    if count <= 0 or not fit:
        return []
    if len(fit) <= count:
        return fit
    step = len(fit) / count
    return [fit[int(k * step)] for k in range(count)]
