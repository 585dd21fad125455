"""A user's own parallel text (for example WMT'14): a ``source<TAB>target`` TSV file or two line-aligned files.

The pair caches of the packaged corpora use the same TSV format (`write_parallel_tsv`).

What a line of a TSV file becomes:

* ``source<TAB>target``: a pair (whitespace normalised).
* more than one tab: the first two columns are the pair and the rest is ignored (files such as
  manythings.org's Tatoeba exports carry an attribution column); counted as ``extra_columns``, not dropped.
* blank (nothing but whitespace): dropped, counted as ``blank``.
* an empty source or target side: dropped, counted as ``empty_source`` / ``empty_target``.
* no tab: malformed. It stops the run with a `DataError` naming the line, unless ``skip_malformed`` is set;
  then it is dropped and counted as ``no_tab``.

The readers log one summary line, e.g. ``read 998 pairs from 'my.tsv'; dropped 3 lines: 1 blank,
2 empty source``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import os
import pathlib
import tempfile

from absl import logging

from experiments.data.base import DataError
from experiments.data.base import Pair
from experiments.data.base import normalize_whitespace

DATA_PATH_FORMAT = ("a UTF-8 TSV file with one 'source<TAB>target' pair per line, or two line-aligned "
                    "files given as --data_path=SOURCE_FILE,TARGET_FILE")

# Why an input line gave no pair: key -> the words of the summary line, in the order it names them.
DROP_REASONS = {
    "blank": "blank",
    "empty_source": "empty source",
    "empty_target": "empty target",
    "no_tab": "without a tab",
    "duplicate": "duplicate",
}

_SHOWN_LINE_NUMBERS = 5


class ParallelText(list):
    """(source, target) pairs (a list, so it compares equal to a list of the same pairs) and what was dropped.

    Attributes:
      dropped: reason (a key of `DROP_REASONS`) -> number of input lines dropped for it; only non-zero counts.
      extra_columns: lines whose columns after the second were ignored.
    """

    def __init__(self, pairs: Iterable[Pair] = (), dropped: Mapping[str, int] | None = None,
                 extra_columns: int = 0):
        super().__init__(pairs)
        self.dropped = {k: int(n) for k, n in (dropped or {}).items() if n}
        self.extra_columns = int(extra_columns)

    @property
    def num_dropped(self) -> int:
        """Input lines that gave no pair."""
        return sum(self.dropped.values())

    def describe_dropped(self) -> str:
        """``dropped M lines: a blank, b empty source, ...`` (or ``dropped no lines``)."""
        if not self.dropped:
            return "dropped no lines"
        reasons = ", ".join(f"{self.dropped[k]} {words}" for k, words in DROP_REASONS.items() if k in self.dropped)
        return f"dropped {_lines(self.num_dropped)}: {reasons}"

    def summary(self, source: str) -> str:
        """One line: ``read N pairs from SOURCE; dropped M lines: a blank, b empty source, ...``."""
        text = f"read {len(self)} pairs from {source}; {self.describe_dropped()}"
        if self.extra_columns:
            text += f"; {_lines(self.extra_columns)} had more than two columns (only the first two were used)"
        return text


def _lines(n: int) -> str:
    return f"{n} line{'' if n == 1 else 's'}"


def _missing_data_path(path: pathlib.Path) -> DataError:
    return DataError(f"--data_path file {str(path)!r} does not exist; pass {DATA_PATH_FORMAT}.")


def _read_lines(path: pathlib.Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise _missing_data_path(path) from None
    except IsADirectoryError:
        raise DataError(f"--data_path {str(path)!r} is a directory; pass {DATA_PATH_FORMAT}.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"--data_path file {str(path)!r} is not UTF-8 ({e.reason} at byte {e.start}); "
                        f"convert it, e.g. with iconv -t UTF-8.") from None


def _count_pair(src: str, tgt: str, pairs: list[Pair], dropped: dict[str, int]) -> None:
    """Appends the normalised pair, or counts why it is dropped (blank, empty source, empty target)."""
    src, tgt = normalize_whitespace(src), normalize_whitespace(tgt)
    reason = "blank" if not (src or tgt) else "empty_source" if not src else "empty_target" if not tgt else ""
    if reason:
        dropped[reason] = dropped.get(reason, 0) + 1
    else:
        pairs.append((src, tgt))


def read_parallel_tsv(path: str | os.PathLike[str], *, skip_malformed: bool = False) -> ParallelText:
    """Reads ``source<TAB>target`` lines and counts the lines it drops, by reason (the rules in the module docstring).

    Args:
      path: a UTF-8 text file.
      skip_malformed: drop lines without a tab (counted as ``no_tab``) instead of raising.

    Returns:
      The pairs with normalised whitespace, in file order, with their drop counts. Nothing is logged.

    Raises:
      DataError: if the file is missing or not UTF-8, or (without ``skip_malformed``) a non-blank line has
        no tab; the message names the first such line, how many there are, and the fix.
    """
    path = pathlib.Path(path).expanduser()
    pairs: list[Pair] = []
    dropped: dict[str, int] = {}
    no_tab: list[int] = []
    extra_columns = 0
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            dropped["blank"] = dropped.get("blank", 0) + 1
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            no_tab.append(number)
            continue
        extra_columns += len(fields) > 2
        _count_pair(fields[0], fields[1], pairs, dropped)
    if no_tab and not skip_malformed:
        shown = ", ".join(map(str, no_tab[:_SHOWN_LINE_NUMBERS])) + (", ..." if len(no_tab) > _SHOWN_LINE_NUMBERS
                                                                     else "")
        more, them = (f" ({len(no_tab)} lines lack one: {shown})", "those lines") if len(no_tab) > 1 else ("", "it")
        raise DataError(f"line {no_tab[0]} of {str(path)!r} has no tab{more}; each line must be 'source<TAB>target', "
                        f"so fix or delete {them}, or pass --config.data.skip_malformed=true to skip lines without a "
                        "tab (they are counted in the log).")
    dropped["no_tab"] = len(no_tab)
    return ParallelText(pairs, dropped, extra_columns)


def load_parallel_tsv(path: str | os.PathLike[str], *, skip_malformed: bool = False) -> ParallelText:
    """`read_parallel_tsv`, then one summary log line of the pairs read and the lines dropped by reason.

    Args:
      path: a UTF-8 text file of ``source<TAB>target`` lines.
      skip_malformed: drop lines without a tab (counted) instead of raising.

    Returns:
      (source, target) pairs with normalised whitespace, in file order (a `ParallelText`, a list).

    Raises:
      DataError: if the file is missing or not UTF-8, or (without ``skip_malformed``) a non-blank line has no tab.
    """
    pairs = read_parallel_tsv(path, skip_malformed=skip_malformed)
    log = logging.warning if pairs.dropped.get("no_tab") else logging.info
    log("%s", pairs.summary(repr(str(pathlib.Path(path).expanduser()))))
    return pairs


def load_parallel_files(src_path: str | os.PathLike[str], tgt_path: str | os.PathLike[str]) -> ParallelText:
    """Reads two line-aligned files: line i of ``src_path`` translates line i of ``tgt_path``.

    Lines blank on both sides, or on one side, are dropped and counted (``blank``, ``empty_source``,
    ``empty_target``); one summary line is logged. There are no malformed lines to skip here: a
    line-count mismatch means the files are not aligned, and that always stops the run.

    Returns:
      (source, target) pairs with normalised whitespace (a `ParallelText`, a list).

    Raises:
      DataError: if a file is missing or not UTF-8, or the two line counts differ.
    """
    src_path, tgt_path = pathlib.Path(src_path).expanduser(), pathlib.Path(tgt_path).expanduser()
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(f"{str(src_path)!r} has {len(src_lines)} lines but {str(tgt_path)!r} has {len(tgt_lines)}; "
                        f"the two files must be line-aligned translations.")
    pairs: list[Pair] = []
    dropped: dict[str, int] = {}
    for src, tgt in zip(src_lines, tgt_lines):
        _count_pair(src, tgt, pairs, dropped)
    text = ParallelText(pairs, dropped)
    logging.info("%s", text.summary(f"{str(src_path)!r} + {str(tgt_path)!r}"))
    return text


def write_parallel_tsv(pairs: Iterable[Pair], path: str | os.PathLike[str]) -> None:
    """Writes pairs as ``source<TAB>target`` lines, atomically (a temp file renamed into place)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=path.name,
                                     suffix=".tmp", delete=False) as f:
        for src, tgt in pairs:
            f.write(f"{normalize_whitespace(src)}\t{normalize_whitespace(tgt)}\n")
    os.replace(f.name, path)
