"""A user's own parallel text (for example WMT'14): a ``source<TAB>target`` TSV file or two line-aligned files.

The pair caches of the packaged corpora use the same TSV format (`write_parallel_tsv`).
"""

from __future__ import annotations

from collections.abc import Iterable
import os
import pathlib
import tempfile

from experiments.data.base import DataError
from experiments.data.base import Pair
from experiments.data.base import normalize_whitespace

DATA_PATH_FORMAT = ("a UTF-8 TSV file with one 'source<TAB>target' pair per line, or two line-aligned "
                    "files given as --data_path=SOURCE_FILE,TARGET_FILE")


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


def load_parallel_tsv(path: str | os.PathLike[str]) -> list[Pair]:
    """Reads ``source<TAB>target`` lines (further columns ignored; blank lines skipped).

    Args:
      path: a UTF-8 text file.

    Returns:
      (source, target) pairs with normalised whitespace, in file order; pairs with an empty side are
      dropped.

    Raises:
      DataError: if the file is missing, not UTF-8, or a non-blank line has no tab.
    """
    path = pathlib.Path(path).expanduser()
    pairs = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"line {number} of {str(path)!r} has no tab; each line must be 'source<TAB>target'.")
        src, tgt = normalize_whitespace(fields[0]), normalize_whitespace(fields[1])
        if src and tgt:
            pairs.append((src, tgt))
    return pairs


def load_parallel_files(src_path: str | os.PathLike[str], tgt_path: str | os.PathLike[str]) -> list[Pair]:
    """Reads two line-aligned files: line i of ``src_path`` translates line i of ``tgt_path``.

    Returns:
      (source, target) pairs with normalised whitespace; pairs with an empty side are dropped.

    Raises:
      DataError: if a file is missing or not UTF-8, or the two line counts differ.
    """
    src_path, tgt_path = pathlib.Path(src_path).expanduser(), pathlib.Path(tgt_path).expanduser()
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(f"{str(src_path)!r} has {len(src_lines)} lines but {str(tgt_path)!r} has {len(tgt_lines)}; "
                        f"the two files must be line-aligned translations.")
    pairs = []
    for src, tgt in zip(src_lines, tgt_lines):
        src, tgt = normalize_whitespace(src), normalize_whitespace(tgt)
        if src and tgt:
            pairs.append((src, tgt))
    return pairs


def write_parallel_tsv(pairs: Iterable[Pair], path: str | os.PathLike[str]) -> None:
    """Writes pairs as ``source<TAB>target`` lines, atomically (a temp file renamed into place)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=path.name,
                                     suffix=".tmp", delete=False) as f:
        for src, tgt in pairs:
            f.write(f"{normalize_whitespace(src)}\t{normalize_whitespace(tgt)}\n")
    os.replace(f.name, path)
