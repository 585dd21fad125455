"""SentencePiece tokenizers (BPE, or whole words) with the special ids pad=0, unk=1, bos=2, eos=3, cached by their
training text; extra symbols such as BERT's [CLS] / [SEP] / [MASK] take the ids that follow (4, 5, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import hashlib
import io
import os
import pathlib
import tempfile
import time
from typing import Any

from absl import logging

from experiments.data.base import normalize_whitespace

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3


def strip_special_ids(ids: Iterable[int]) -> list[int]:
    """Cuts a decoded id sequence at the first EOS and drops PAD and BOS."""
    kept = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            kept.append(i)
    return kept


class Tokenizer:
    """A SentencePiece model with the ids pad=0, unk=1, bos=2, eos=3.

    ``encode`` returns the pieces of a text without BOS/EOS; ``decode`` stops at the first EOS and
    ignores pad and BOS, so it reads a decoder's output directly. Pickles as its model bytes.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes, path: str | os.PathLike[str] | None = None):
        import sentencepiece as spm  # pylint: disable=g-import-not-at-top

        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.path = pathlib.Path(path) if path is not None else None
        specials = (self.processor.pad_id(), self.processor.unk_id(), self.processor.bos_id(),
                    self.processor.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"SentencePiece model has special ids (pad, unk, bos, eos) = {specials}, "
                             f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")

    @property
    def vocab_size(self) -> int:
        """V: the number of ids, special ones included (may be below the requested size)."""
        return int(self.processor.get_piece_size())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        return list(self.processor.encode(text, out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, cut at the first EOS, with pad and BOS ignored."""
        return self.processor.decode(strip_special_ids(ids))

    def id_to_piece(self, i: int) -> str:
        """The subword string of id ``i`` (``<pad>``, ``<unk>``, ``<s>``, ``</s>`` for the special ids)."""
        return self.processor.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece (a user-defined symbol such as ``"[MASK]"``, or ``"▁word"``); unk_id if unknown."""
        return int(self.processor.piece_to_id(piece))

    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self.processor.serialized_model_proto(), "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"], state["path"])


_SPM_SETTINGS = dict(model_type="bpe", character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID,
                     eos_id=EOS_ID, normalization_rule_name="identity", minloglevel=2)


MODEL_TYPES = ("bpe", "word")


def _train_sentencepiece(texts: Sequence[str], vocab_size: int, *, hard_vocab_limit: bool = True,
                         extra: dict[str, Any] | None = None) -> bytes:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   hard_vocab_limit=hard_vocab_limit, num_threads=max(1, min(8, os.cpu_count() or 1)),
                                   **{**_SPM_SETTINGS, **(extra or {})})
    return model.getvalue()


def load_or_train_tokenizer(texts: Sequence[str], model_dir: str | os.PathLike[str], vocab_size: int, *,
                            model_type: str = "bpe", user_defined_symbols: Sequence[str] = ()) -> Tokenizer:
    """A joint SentencePiece model of ``texts``, read from ``model_dir`` if trained before.

    The model file is ``model_dir/spm_<model_type>_<vocab_size>_<hash>.model``, the hash covering the texts
    and the settings, so a different training split or vocabulary trains a new model. When the texts
    are too small for ``vocab_size`` (SentencePiece refuses), training is repeated with
    ``hard_vocab_limit=False``, which gives a smaller vocabulary; `Tokenizer.vocab_size` says which.

    Args:
      texts: training sentences (for translation, the sources and the targets of the train split).
      model_dir: cache folder for models (``~`` is expanded).
      vocab_size: requested vocabulary size V, special ids included (>= 5).
      model_type: "bpe" (subwords) or "word" (every whitespace-separated word one piece, the most frequent
        ``vocab_size`` of them; the cloze readers point at whole words).
      user_defined_symbols: pieces that are never split, with the first ids after the four special ones (BPE: 4,
        5, ... in this order; the word model also gives each a "▁"-prefixed twin), e.g. ``("[CLS]", "[SEP]",
        "[MASK]")``. Look them up with `Tokenizer.piece_to_id`.

    Returns:
      The tokenizer.

    Raises:
      ValueError: if ``texts`` is empty, ``vocab_size`` < 5 or ``model_type`` is unknown.
    """
    if vocab_size < 5:
        raise ValueError(f"vocab_size must be >= 5 (4 special ids + 1 piece), got {vocab_size=}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    texts = [normalize_whitespace(t) for t in texts]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("cannot train a tokenizer on no text")
    extra: dict[str, Any] = {}
    if model_type != "bpe":
        extra["model_type"] = model_type
    if user_defined_symbols:
        extra["user_defined_symbols"] = list(user_defined_symbols)
    digest = hashlib.sha256()
    # The BPE models trained before these options keep their hash (and cached file).
    digest.update(repr(sorted({**_SPM_SETTINGS, **extra}.items())).encode())
    digest.update(str(vocab_size).encode())
    for t in texts:
        digest.update(t.encode("utf-8") + b"\n")
    path = pathlib.Path(model_dir).expanduser() / f"spm_{model_type}_{vocab_size}_{digest.hexdigest()[:16]}.model"
    if path.is_file():
        logging.info("Tokenizer: using the cached SentencePiece model %s", path)
        return Tokenizer(path.read_bytes(), path)
    start = time.perf_counter()
    try:
        proto = _train_sentencepiece(texts, vocab_size, extra=extra)
    except RuntimeError as e:
        if "Vocabulary size" not in str(e):
            raise
        logging.warning("Tokenizer: %d sentences are too few for %d pieces (%s); training with "
                        "hard_vocab_limit=False instead", len(texts), vocab_size, str(e).split("] ")[-1])
        proto = _train_sentencepiece(texts, vocab_size, hard_vocab_limit=False, extra=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(proto)
    os.replace(f.name, path)
    tokenizer = Tokenizer(proto, path)
    logging.info("Tokenizer: trained a %d-piece %s SentencePiece model on %d sentences in %.1f s; saved %s",
                 tokenizer.vocab_size, model_type, len(texts), time.perf_counter() - start, path)
    return tokenizer
