"""Tests of experiments/data/tsv.py: a user's parallel text as a TSV file or two line-aligned files."""

from __future__ import annotations

import types

import pytest

from experiments import data
from experiments.data import tsv
from tests.experiments.data.fixtures import synthetic_pairs


@pytest.fixture
def logged(monkeypatch):
    """The messages tsv.py logs, at info or warning level."""
    lines = []
    for level in ("info", "warning"):
        monkeypatch.setattr(tsv.logging, level, lambda fmt, *args, _level=level: lines.append((_level, fmt % args)))
    return lines


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


class TestDroppedLines:
    # Lines: 1 a pair; 2 empty and 3, 6 whitespace and tabs only (blank); 4 empty source; 5 empty target;
    # 7 three columns (a pair, the third column ignored); 8 a pair.
    TSV = "Hallo Welt\thello world\n\n \t \n\tonly target\nonly source\t\n  \t\t\nein\tone\tCC-BY #12\nzwei\ttwo\n"

    def test_counts_by_reason_and_one_summary_line(self, tmp_path, logged):
        path = tmp_path / "p.tsv"
        path.write_text(self.TSV, encoding="utf-8")
        pairs = data.load_parallel_tsv(path)
        assert pairs == [("Hallo Welt", "hello world"), ("ein", "one"), ("zwei", "two")]
        assert pairs.dropped == {"blank": 3, "empty_source": 1, "empty_target": 1}
        assert pairs.num_dropped == 5 and pairs.extra_columns == 1
        assert logged == [("info", f"read 3 pairs from {str(path)!r}; dropped 5 lines: 3 blank, 1 empty source, "
                                   "1 empty target; 1 line had more than two columns (only the first two were used)")]

    def test_no_tab_stops_with_line_numbers_and_fix(self, tmp_path):
        lines = ["a\tA", "no tab one", "b\tB"] + [f"bad {k}" for k in range(6)]
        (tmp_path / "p.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(data.DataError) as err:
            data.load_parallel_tsv(tmp_path / "p.tsv")
        message = str(err.value)
        path = str(tmp_path / "p.tsv")
        assert message.startswith(f"line 2 of {path!r} has no tab (7 lines lack one: 2, 4, 5, 6, 7, ...); ")
        assert "--config.data.skip_malformed=true" in message

    def test_skip_malformed_counts_them(self, tmp_path, logged):
        (tmp_path / "p.tsv").write_text("a\tA\nno tab\n\nb\tB\nstill none\n", encoding="utf-8")
        pairs = data.load_parallel_tsv(tmp_path / "p.tsv", skip_malformed=True)
        assert pairs == [("a", "A"), ("b", "B")] and pairs.dropped == {"blank": 1, "no_tab": 2}
        assert logged == [("warning", f"read 2 pairs from {str(tmp_path / 'p.tsv')!r}; dropped 3 lines: 1 blank, "
                                      "2 without a tab")]

    def test_two_files_count_empty_sides(self, tmp_path, logged):
        (tmp_path / "s").write_text("one\n\n\nfour\n", encoding="utf-8")
        (tmp_path / "t").write_text("eins\nzwei\n\n \n", encoding="utf-8")
        pairs = data.load_parallel_files(tmp_path / "s", tmp_path / "t")
        assert pairs == [("one", "eins")]
        assert pairs.dropped == {"empty_source": 1, "blank": 1, "empty_target": 1}
        assert len(logged) == 1 and logged[0][1].endswith("dropped 3 lines: 1 blank, 1 empty source, 1 empty target")

    def test_get_pairs_threads_the_flag_and_counts_duplicates(self, tmp_path, logged):
        (tmp_path / "p.tsv").write_text("a\tA\nbroken\na\tA\n\tB\n", encoding="utf-8")
        with pytest.raises(data.DataError, match="line 2 .* has no tab; each line must be"):
            data.get_pairs("", tmp_path, str(tmp_path / "p.tsv"))
        pairs = data.get_pairs("", tmp_path, str(tmp_path / "p.tsv"), skip_malformed=True)
        assert pairs == [("a", "A")]
        assert pairs.dropped == {"no_tab": 1, "empty_source": 1, "duplicate": 1}
        (tmp_path / "empty.tsv").write_text("\n\t\n", encoding="utf-8")
        with pytest.raises(data.DataError, match=r"holds no pairs \(dropped 2 lines: 2 blank\)"):
            data.get_pairs("", tmp_path, str(tmp_path / "empty.tsv"))

    def test_prepare_reads_skip_malformed_from_the_config(self, tmp_path):
        pairs = synthetic_pairs(120)
        text = "".join(f"{s}\t{t}\n" for s, t in pairs[:60]) + "a line without its tab\n"
        (tmp_path / "p.tsv").write_text(text + "".join(f"{s}\t{t}\n" for s, t in pairs[60:]), encoding="utf-8")
        config = dict(corpus="", data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv"), max_words=0,
                      vocab_size=80, dev_size=10, test_size=10, max_train=0, buckets=(64,))
        with pytest.raises(data.DataError, match="line 61 .* has no tab"):
            data.prepare(types.SimpleNamespace(**config), tmp_path / "tok")
        ds = data.prepare(types.SimpleNamespace(**config, skip_malformed=True), tmp_path / "tok")
        assert len(ds.train) + len(ds.dev) + len(ds.test) == 120
