"""Tests of experiments/data/dataset.py: prepare from a TSV file and from a Ding fixture, and its errors."""

from __future__ import annotations

import types

import pytest

from experiments import data
from tests.experiments.data.fixtures import synthetic_pairs
from tests.experiments.data.fixtures import write_ding


def _config(**overrides):
    fields = dict(corpus="ding_de_en", data_dir="", data_path="", max_words=10, vocab_size=80, dev_size=40,
                  test_size=40, max_train=0, buckets=(8, 16))
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


class TestPrepare:

    def test_prepare_from_tsv(self, tmp_path):
        pairs = synthetic_pairs(600, max_words=14)
        data.write_parallel_tsv(pairs, tmp_path / "p.tsv")
        config = _config(data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv"))
        ds = data.prepare(config, tmp_path / "tok")
        kept = [p for p in pairs if data.num_words(p[0]) <= 10 and data.num_words(p[1]) <= 10]
        assert ds.info["pairs"] == 600 and ds.info["pairs_within_max_words"] == len(kept)
        assert sum(ds.info["split_pairs"].values()) == len(kept)
        assert len(ds.dev) == ds.info["split_pairs"]["dev"] and len(ds.test) == ds.info["split_pairs"]["test"]
        assert ds.tokenizer.vocab_size == 80 and list((tmp_path / "tok").glob("spm_bpe_80_*.model"))
        assert all(len(e.src_ids) <= 16 and len(e.tgt_ids) + 1 <= 16 for e in ds.train)
        for ex in ds.train[:20] + ds.test[:20]:
            assert ds.tokenizer.decode(ex.tgt_ids) == ex.tgt_text and (ex.src_text, ex.tgt_text) in kept
        train_sources = {data.split_key(e.src_text) for e in ds.train}
        assert not train_sources & {data.split_key(e.src_text) for e in ds.test}
        again = data.prepare(config, tmp_path / "tok")
        assert again.train == ds.train and again.tokenizer.path == ds.tokenizer.path

    def test_max_train_and_dict_config(self, tmp_path):
        data.write_parallel_tsv(synthetic_pairs(300), tmp_path / "p.tsv")
        config = vars(_config(data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv"), max_train=50,
                              dev_size=20, test_size=20, max_words=0, buckets=(64,)))
        ds = data.prepare(config)
        assert len(ds.train) == 50 and ds.tokenizer.path.parent == tmp_path / "tokenizers"

    def test_prepare_ding_fixture(self, tmp_path):
        write_ding(tmp_path / "trans-de-en" / "extracted" / data.DING_FILE)
        ds = data.prepare(_config(data_dir=str(tmp_path), dev_size=1, test_size=1, vocab_size=60, buckets=(64,)),
                          tmp_path)
        assert len(ds.train) + len(ds.dev) + len(ds.test) == 7 and ds.info["source"] == "ding_de_en"

    def test_errors(self, tmp_path):
        with pytest.raises(data.DataError, match="nope.tsv"):
            data.prepare(_config(data_path=str(tmp_path / "nope.tsv")))
        data.write_parallel_tsv(synthetic_pairs(30), tmp_path / "p.tsv")
        with pytest.raises(data.DataError, match="too few"):
            data.prepare(_config(data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv")))
