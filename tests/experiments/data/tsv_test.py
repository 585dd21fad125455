"""Tests of experiments/data/tsv.py: a user's parallel text as a TSV file or two line-aligned files."""

from __future__ import annotations

import pytest

from experiments import data


class TestParallelText:

    def test_tsv_and_files(self, tmp_path):
        (tmp_path / "p.tsv").write_text("a  b\tc\n\nd\te\textra\n\t x\n", encoding="utf-8")
        assert data.load_parallel_tsv(tmp_path / "p.tsv") == [("a b", "c"), ("d", "e")]
        (tmp_path / "s.txt").write_text("one\ntwo\n", encoding="utf-8")
        (tmp_path / "t.txt").write_text("eins\nzwei\n", encoding="utf-8")
        pairs = data.get_pairs("", "", f"{tmp_path / 's.txt'},{tmp_path / 't.txt'}")
        assert pairs == [("one", "eins"), ("two", "zwei")]

    def test_missing_data_path_names_path_and_format(self, tmp_path):
        missing = tmp_path / "nope.tsv"
        with pytest.raises(data.DataError) as err:
            data.get_pairs("ding_de_en", tmp_path, str(missing))
        assert str(missing) in str(err.value) and "source<TAB>target" in str(err.value)
        with pytest.raises(data.DataError, match="nope.src"):
            data.get_pairs("", tmp_path, f"{tmp_path / 'nope.src'},{missing}")

    def test_malformed_inputs(self, tmp_path):
        (tmp_path / "bad.tsv").write_text("no tab here\n", encoding="utf-8")
        with pytest.raises(data.DataError, match="line 1 .* has no tab"):
            data.load_parallel_tsv(tmp_path / "bad.tsv")
        (tmp_path / "s").write_text("a\nb\n", encoding="utf-8")
        (tmp_path / "t").write_text("a\n", encoding="utf-8")
        with pytest.raises(data.DataError, match="line-aligned"):
            data.load_parallel_files(tmp_path / "s", tmp_path / "t")
        with pytest.raises(data.DataError, match="unknown corpus 'wmt'"):
            data.get_pairs("wmt", tmp_path)
