"""Tests of experiments/data/tokenizer.py: SentencePiece training, special ids, caching by content."""

from __future__ import annotations

import pickle

from absl import logging as absl_logging
import pytest

from experiments import data
from tests.experiments.data.fixtures import synthetic_pairs


@pytest.fixture(scope="module")
def tokenizer_texts():
    return [t for pair in synthetic_pairs(400) for t in pair] + ["Grüße aus Köln, señor!"]


class TestTokenizer:

    def test_round_trip_special_ids_and_quiet(self, tmp_path, tokenizer_texts, capfd):
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.WARNING)  # only SentencePiece's own output is under test
        try:
            capfd.readouterr()
            tok = data.load_or_train_tokenizer(tokenizer_texts, tmp_path, 120)
            out, err = capfd.readouterr()
        finally:
            absl_logging.set_verbosity(verbosity)
        assert out == "" and err == ""
        assert tok.vocab_size == 120
        assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
        for text in tokenizer_texts[:50] + ["Grüße aus Köln, señor!"]:
            ids = tok.encode(text)
            assert ids and min(ids) >= 4 and tok.decode(ids) == text
        assert pickle.loads(pickle.dumps(tok)).encode("Grüße aus Köln") == tok.encode("Grüße aus Köln")
        ids = tok.encode("alpha beta")
        assert tok.decode([data.BOS_ID, *ids, data.EOS_ID, *tok.encode("gamma"), data.PAD_ID]) == "alpha beta"

    def test_cached_by_content(self, tmp_path, tokenizer_texts, monkeypatch):
        first = data.load_or_train_tokenizer(tokenizer_texts, tmp_path, 100)
        def boom(*args, **kwargs):
            raise AssertionError("should be cached")

        monkeypatch.setattr(data.tokenizer, "_train_sentencepiece", boom)
        again = data.load_or_train_tokenizer(tokenizer_texts, tmp_path, 100)
        assert again.path == first.path and again.encode("alpha zeta") == first.encode("alpha zeta")
        with pytest.raises(AssertionError, match="cached"):
            data.load_or_train_tokenizer(tokenizer_texts[:-1], tmp_path, 100)

    def test_vocab_too_large_falls_back(self, tmp_path):
        tok = data.load_or_train_tokenizer(["tiny text", "more tiny text"], tmp_path, 5000)
        assert 5 <= tok.vocab_size < 5000
        assert tok.decode(tok.encode("tiny text")) == "tiny text"

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="vocab_size"):
            data.load_or_train_tokenizer(["a"], tmp_path, 4)
        with pytest.raises(ValueError, match="no text"):
            data.load_or_train_tokenizer([" "], tmp_path, 100)


def test_word_model_and_user_symbols(tmp_path):
    texts = ["the cat sat on the mat", "a dog sat on a log", "XXXXX sat"] * 5
    tok = data.load_or_train_tokenizer(texts, tmp_path, 40, model_type="word",
                                       user_defined_symbols=("[CLS]", "[SEP]"))
    ids = [tok.piece_to_id(p) for p in ("[CLS]", "[SEP]")]
    assert len(set(ids)) == 2 and min(ids) == 4 and tok.unk_id not in ids
    assert [tok.id_to_piece(i) for i in tok.encode("the cat sat")] == ["▁the", "▁cat", "▁sat"]  # whole words
    bpe = data.load_or_train_tokenizer(texts, tmp_path, 40)
    assert bpe.path != tok.path and bpe.path.name.startswith("spm_bpe_")
    assert [data.load_or_train_tokenizer(texts, tmp_path, 60, user_defined_symbols=("[CLS]", "[SEP]")).piece_to_id(p)
            for p in ("[CLS]", "[SEP]")] == [4, 5]
    with pytest.raises(ValueError, match="model_type"):
        data.load_or_train_tokenizer(texts, tmp_path, 40, model_type="char")
