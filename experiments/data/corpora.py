"""The parallel text of a named corpus (downloaded, parsed and cached once) or of the user's ``--data_path``.

* ``ding_de_en``: German->English sentence pairs of the Ding dictionary (`experiments.data.ding`).
* ``bible_en_es``: English->Spanish verse pairs, KJV -> Reina-Valera 1909 (`experiments.data.sword`).

Parsed pairs are cached as ``<data_dir>/<corpus>.pairs.v<N>.tsv``; N changes when a parser changes.
"""

from __future__ import annotations

import os
import time

from absl import logging

from experiments.data import ding
from experiments.data import sword
from experiments.data import tsv
from experiments.data.base import DataError
from experiments.data.base import dedupe
from experiments.data.download import obtain_debian_package
from experiments.data.download import resolve_data_dir

CORPORA = ("ding_de_en", "bible_en_es")

# Bump when a parser changes, so stale pair caches are not reused.
_PARSER_VERSION = 2


def get_pairs(corpus: str, data_dir: str | os.PathLike[str] | None, data_path: str = "", *,
              skip_malformed: bool = False) -> tsv.ParallelText:
    """The parallel text of a corpus, or of the user's own files.

    Args:
      corpus: ``"ding_de_en"`` or ``"bible_en_es"``; ignored when ``data_path`` is given.
      data_dir: cache folder for packages and parsed pairs ("" or None: ``~/.cache/attention_jax``).
      data_path: "" to use ``corpus``; else a TSV file (``source<TAB>target``) or
        ``"SOURCE_FILE,TARGET_FILE"`` (two line-aligned files).
      skip_malformed: skip (and count) the lines of a ``data_path`` TSV file that have no tab instead of
        raising (``config.data.skip_malformed``); no effect on two aligned files or on a corpus.

    Returns:
      (source, target) pairs without duplicates: (German, English) for ``ding_de_en``, (English,
      Spanish) for ``bible_en_es``. A `tsv.ParallelText` (a list): for ``data_path`` its ``dropped``
      counts the input lines dropped by reason (`tsv.DROP_REASONS`, duplicates included), and one log
      line summarises them.

    Raises:
      DataError: for an unknown corpus, a missing ``data_path``, a TSV line without a tab (unless
        ``skip_malformed``), or a package that cannot be obtained.
    """
    if data_path:
        parts = [p.strip() for p in data_path.split(",")]
        if len(parts) == 1:
            pairs = tsv.load_parallel_tsv(parts[0], skip_malformed=skip_malformed)
        elif len(parts) == 2 and all(parts):
            pairs = tsv.load_parallel_files(parts[0], parts[1])
        else:
            raise DataError(f"--data_path={data_path!r} names {len(parts)} files; pass {tsv.DATA_PATH_FORMAT}.")
        kept = dedupe(pairs)
        unique = tsv.ParallelText(kept, {**pairs.dropped, "duplicate": len(pairs) - len(kept)}, pairs.extra_columns)
        if not unique:
            raise DataError(f"--data_path={data_path!r} holds no pairs ({pairs.describe_dropped()}); pass "
                            f"{tsv.DATA_PATH_FORMAT}.")
        logging.info("--data_path=%s: %d pairs after removing %d duplicate pairs", data_path, len(unique),
                     len(pairs) - len(unique))
        return unique
    if corpus not in CORPORA:
        raise DataError(f"unknown corpus {corpus!r}; set --config.data.corpus to one of {', '.join(CORPORA)}, or "
                        f"pass --data_path with your own parallel text.")
    root = resolve_data_dir(data_dir)
    cache = root / f"{corpus}.pairs.v{_PARSER_VERSION}.tsv"
    if cache.is_file():
        pairs = tsv.read_parallel_tsv(cache)
        logging.info("Read %d %s pairs from the cache %s", len(pairs), corpus, cache)
        return pairs
    start = time.perf_counter()
    if corpus == "ding_de_en":
        source = obtain_debian_package(ding.DING_PACKAGE, root) / ding.DING_FILE
        pairs = ding.load_ding(source)
    else:
        kjv = sword.find_ztext_module(obtain_debian_package(sword.KJV_PACKAGE, root), sword.KJV_PACKAGE)
        rv = sword.find_ztext_module(obtain_debian_package(sword.RV_PACKAGE, root), sword.RV_PACKAGE)
        source = f"{kjv} + {rv}"
        pairs = dedupe(sword.load_sword(kjv, rv))
    tsv.write_parallel_tsv(pairs, cache)
    logging.info("Parsed %d %s pairs from %s in %.1f s; cached them in %s", len(pairs), corpus, source,
                 time.perf_counter() - start, cache)
    return tsv.ParallelText(pairs)
