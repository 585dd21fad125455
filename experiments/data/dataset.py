"""`prepare`: the tokenizer and the encoded train / dev / test splits of a translation experiment.

The pipeline:

1. `experiments.data.corpora.get_pairs`: download and unpack the packages once, parse them and cache the pairs
   as ``<data_dir>/<corpus>.pairs.v<N>.tsv`` (or read the user's ``data_path``).
2. Keep pairs with at most ``max_words`` whitespace words on both sides; this holds for every
   split, so dev and test never contain longer pairs either.
3. `experiments.data.splits.split_pairs`: train/dev/test by a SHA-256 hash of the normalised source sentence,
   so a source sentence that occurs in several pairs never crosses splits; dev and test get ``dev_size`` and
   ``test_size`` pairs (up to one source's repeats more); ``test_min_per_bin`` > 0 then tops the test set up
   from train until every source-length bin of ``test_bins`` holds that many pairs.
4. ``max_train``: optionally keep a fixed, hash-chosen subset of the training pairs.
5. `experiments.data.tokenizer.load_or_train_tokenizer`: one joint BPE SentencePiece model over the training
   sources and targets, with pad=0, unk=1, bos=2, eos=3, cached by a hash of its training text.
6. Encode; training examples longer than the last bucket boundary (source tokens, or target tokens
   + 1) are dropped; dev and test keep every example (`experiments.data.batching.batches` pads those beyond the
   last boundary in steps of the last bucket's width, `experiments.data.batching.padded_length`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os
import pathlib
import time
from typing import Any

from absl import logging
import numpy as np

from experiments.data.base import DataError
from experiments.data.base import Pair
from experiments.data.base import num_words
from experiments.data.batching import check_buckets
from experiments.data.corpora import get_pairs
from experiments.data.download import resolve_data_dir
from experiments.data.splits import split_pairs
from experiments.data.splits import subsample
from experiments.data.tokenizer import Tokenizer
from experiments.data.tokenizer import load_or_train_tokenizer


@dataclasses.dataclass(frozen=True)
class Example:
    """One translation pair: token ids (no BOS/EOS) and the original texts."""

    src_ids: tuple[int, ...]
    tgt_ids: tuple[int, ...]
    src_text: str
    tgt_text: str


@dataclasses.dataclass
class Dataset:
    """Tokenizer and encoded splits from `prepare`; ``info`` records where the data came from and counts."""

    tokenizer: Tokenizer
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _encode(tokenizer: Tokenizer, pairs: Sequence[Pair]) -> list[Example]:
    return [Example(tuple(tokenizer.encode(s)), tuple(tokenizer.encode(t)), s, t) for s, t in pairs]


def _word_stats(texts: Sequence[str]) -> dict[str, float]:
    lengths = np.array([num_words(t) for t in texts]) if texts else np.zeros(1)
    return {"mean": round(float(lengths.mean()), 2), "median": float(np.median(lengths)), "max": int(lengths.max())}


def prepare(data_config: Any, cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Builds the tokenizer and the encoded train/dev/test splits (the pipeline in the module docstring).

    Args:
      data_config: ConfigDict (or mapping) with ``corpus``, ``data_dir``, ``data_path``,
        ``max_words`` (0: no limit), ``vocab_size``, ``dev_size``, ``test_size``, ``max_train``
        (0: all), ``buckets`` (token-length boundaries) and, optionally, ``test_min_per_bin`` and
        ``test_bins`` (the length-stratified top-up of the test set, `split_pairs`).
      cache_dir: folder for SentencePiece models; None or "" means ``<data_dir>/tokenizers``.

    Returns:
      The Dataset; ``info`` holds the source, pair counts per stage, word-length statistics and
      the vocabulary size. Examples keep the split's pair order.

    Raises:
      DataError: if the data cannot be obtained or read, or a split would be empty.
      ValueError: for malformed buckets or sizes.
    """
    start = time.perf_counter()
    corpus = str(_field(data_config, "corpus", "") or "")
    data_path = str(_field(data_config, "data_path", "") or "")
    data_dir = resolve_data_dir(_field(data_config, "data_dir", ""))
    max_words = int(_field(data_config, "max_words", 0) or 0)
    vocab_size = int(_field(data_config, "vocab_size", 8000))
    dev_size = int(_field(data_config, "dev_size", 1000))
    test_size = int(_field(data_config, "test_size", 1000))
    max_train = int(_field(data_config, "max_train", 0) or 0)
    test_min_per_bin = int(_field(data_config, "test_min_per_bin", 0) or 0)
    test_bins = tuple(int(x) for x in (_field(data_config, "test_bins", ()) or ()))
    buckets = check_buckets(_field(data_config, "buckets", (16, 32, 64)))

    pairs = get_pairs(corpus, data_dir, data_path, skip_malformed=bool(_field(data_config, "skip_malformed", False)))
    kept = [p for p in pairs if max_words <= 0 or (num_words(p[0]) <= max_words and num_words(p[1]) <= max_words)]
    if dev_size + test_size >= len(kept):
        within = f" have at most {max_words} words" if max_words > 0 else " are available"
        raise DataError(f"only {len(kept)} pairs{within}, too few for {dev_size} dev + {test_size} test pairs and a "
                        f"train split; lower data.dev_size/data.test_size or raise data.max_words.")
    try:
        splits = split_pairs(kept, dev_size, test_size, test_min_per_bin=test_min_per_bin, test_bins=test_bins)
    except ValueError as err:
        raise DataError(f"{err}; lower data.test_min_per_bin or data.dev_size, or use more data.") from err
    train_pairs = subsample(splits["train"], max_train)
    texts = [s for s, _ in train_pairs] + [t for _, t in train_pairs]
    model_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else data_dir / "tokenizers"
    tokenizer = load_or_train_tokenizer(texts, model_dir, vocab_size)

    limit = buckets[-1]
    train = [e for e in _encode(tokenizer, train_pairs) if len(e.src_ids) <= limit and len(e.tgt_ids) + 1 <= limit]
    dev, test = _encode(tokenizer, splits["dev"]), _encode(tokenizer, splits["test"])
    for name, split, wanted in (("train", train, 1), ("dev", dev, dev_size), ("test", test, test_size)):
        if wanted > 0 and not split:
            knob = "max_train" if name == "train" else f"{name}_size"
            raise DataError(f"the {name} split is empty; raise data.{knob} or data.buckets, or use more data.")
    info = {
        "source": data_path or corpus,
        "pairs": len(pairs),
        "pairs_within_max_words": len(kept),
        "split_pairs": {k: len(v) for k, v in splits.items()},
        "train_after_max_train": len(train_pairs),
        "train_dropped_over_last_bucket": len(train_pairs) - len(train),
        "examples": {"train": len(train), "dev": len(dev), "test": len(test)},
        "source_words": _word_stats([s for s, _ in kept]),
        "target_words": _word_stats([t for _, t in kept]),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": str(tokenizer.path),
        "seconds": round(time.perf_counter() - start, 2),
    }
    logging.info("Data %s: %d pairs, %d within %d words -> train %d / dev %d / test %d examples, vocabulary %d "
                 "(%.1f s)", info["source"], len(pairs), len(kept), max_words, len(train), len(dev), len(test),
                 tokenizer.vocab_size, info["seconds"])
    return Dataset(tokenizer=tokenizer, train=train, dev=dev, test=test, info=info)
