"""Parallel text for the translation experiments: corpora, splits, SentencePiece, padded batches.

Two default corpora ship inside Debian packages (see ``shared/DATA.md``); a user's own parallel text
(for example WMT'14) is read from a TSV file or two aligned files instead:

* ``ding_de_en``: German->English sentence pairs from the Ding dictionary (``trans-de-en``):
  about 18.7k pairs, 8 English words on average.
* ``bible_en_es``: English->Spanish verse pairs, King James Version -> Reina-Valera 1909
  (``sword-text-kjv`` + ``sword-text-sparv``): about 30.8k pairs, 25.6 English words on average
  (median 24, 3% over 50), for Bahdanau et al.'s BLEU-by-length analysis (arXiv:1409.0473, Fig. 2).
  The Reina-Valera divides some chapters differently; those are re-aligned by length (`load_sword`).

One module per idea; this package re-exports their public names, so ``from experiments import data`` and
``data.prepare(...)`` read the same as before:

  base.py       `DataError`, the `Pair` type, whitespace and word counts, `dedupe`.
  download.py   `obtain_debian_package`: ``apt-get download`` + ``dpkg-deb -x`` once into the cache folder.
  ding.py       the Ding dictionary's line format and its sentence pairs (`load_ding`).
  sword.py      SWORD zText modules: KJV versification, `read_ztext`, `osis_to_text`, `load_sword`.
  align.py      `align_by_length`: Gale & Church sentence alignment (re-aligns shifted Bible verses).
  tsv.py        the user's parallel text (`load_parallel_tsv`, `load_parallel_files`; `ParallelText` counts the
                dropped lines by reason) and the pair caches.
  corpora.py    `get_pairs`: a corpus (downloaded, parsed and cached once) or ``--data_path``.
  splits.py     `split_pairs` by a hash of the source sentence, `subsample`.
  tokenizer.py  `Tokenizer` and `load_or_train_tokenizer` (SentencePiece BPE; pad=0, unk=1, bos=2, eos=3).
  dataset.py    `Example`, `Dataset` and `prepare`, the whole pipeline (steps in its docstring).
  batching.py   `batches`: fixed-size padded batches in a few bucket lengths.
  fashion_mnist.py  the Fashion-MNIST images of the vision experiments (``dataset-fashion-mnist``): `load`,
                `read_idx` (checked gzip IDX), `split_by_class`; not re-exported here.

Lengths: S = source tokens, T = target tokens + 1 (BOS or EOS), B = batch size.
"""

from experiments.data.align import CHAR_VARIANCE
from experiments.data.align import align_by_length
from experiments.data.base import DataError
from experiments.data.base import Pair
from experiments.data.base import dedupe
from experiments.data.base import normalize_whitespace
from experiments.data.base import num_words
from experiments.data.batching import batches
from experiments.data.batching import check_buckets
from experiments.data.batching import padded_length
from experiments.data.corpora import CORPORA
from experiments.data.corpora import get_pairs
from experiments.data.dataset import Dataset
from experiments.data.dataset import Example
from experiments.data.dataset import prepare
from experiments.data.ding import DING_FILE
from experiments.data.ding import DING_PACKAGE
from experiments.data.ding import is_sentence
from experiments.data.ding import load_ding
from experiments.data.ding import parse_ding_line
from experiments.data.ding import strip_annotations
from experiments.data.download import DEFAULT_DATA_DIR
from experiments.data.download import obtain_debian_package
from experiments.data.download import resolve_data_dir
from experiments.data.splits import split_key
from experiments.data.splits import split_pairs
from experiments.data.splits import subsample
from experiments.data.sword import KJV_BOOKS
from experiments.data.sword import KJV_PACKAGE
from experiments.data.sword import RV_PACKAGE
from experiments.data.sword import SWORD_ZTEXT_DIR
from experiments.data.sword import find_ztext_module
from experiments.data.sword import kjv_num_records
from experiments.data.sword import kjv_verse_records
from experiments.data.sword import kjv_verses
from experiments.data.sword import load_sword
from experiments.data.sword import osis_to_text
from experiments.data.sword import read_ztext
from experiments.data.tokenizer import BOS_ID
from experiments.data.tokenizer import EOS_ID
from experiments.data.tokenizer import PAD_ID
from experiments.data.tokenizer import UNK_ID
from experiments.data.tokenizer import Tokenizer
from experiments.data.tokenizer import load_or_train_tokenizer
from experiments.data.tokenizer import strip_special_ids
from experiments.data.tsv import DATA_PATH_FORMAT
from experiments.data.tsv import DROP_REASONS
from experiments.data.tsv import ParallelText
from experiments.data.tsv import load_parallel_files
from experiments.data.tsv import load_parallel_tsv
from experiments.data.tsv import read_parallel_tsv
from experiments.data.tsv import write_parallel_tsv

__all__ = [
    "BOS_ID", "CHAR_VARIANCE", "CORPORA", "DATA_PATH_FORMAT", "DEFAULT_DATA_DIR", "DING_FILE", "DING_PACKAGE",
    "DROP_REASONS", "DataError", "Dataset", "EOS_ID", "Example", "KJV_BOOKS", "KJV_PACKAGE", "PAD_ID", "Pair",
    "ParallelText", "RV_PACKAGE", "SWORD_ZTEXT_DIR", "Tokenizer", "UNK_ID", "align_by_length", "batches",
    "check_buckets", "dedupe", "find_ztext_module", "get_pairs", "is_sentence", "kjv_num_records", "kjv_verse_records",
    "kjv_verses",
    "load_ding", "load_or_train_tokenizer", "load_parallel_files", "load_parallel_tsv", "load_sword",
    "normalize_whitespace", "num_words", "obtain_debian_package", "osis_to_text", "padded_length", "parse_ding_line",
    "prepare", "read_parallel_tsv", "read_ztext", "resolve_data_dir", "split_key", "split_pairs", "strip_annotations",
    "strip_special_ids", "subsample", "write_parallel_tsv",
]
