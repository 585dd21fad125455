"""The document-classification table: which attention pools a text best (`experiments.classification`).

Every row classifies the same documents, tokenised the same way, for the same number of steps with the same
optimiser; only the model between the embeddings and the softmax differs:

  cnn_max, cnn_attention, cnn_kmax, cnn_chunk_max      `TextCNN` (Kim 2014, arXiv:1408.5882) with max-over-time
                                                       pooling, feed-forward attention pooling, order-preserving
                                                       k-max pooling or chunk-max pooling
  lstm_last, lstm_mean, lstm_attention                 `BiLSTMClassifier` sentence vectors: last states, mean,
                                                       feed-forward attention (Raffel & Ellis 2015)
  lstm_structured, lstm_structured_penalty             Lin et al. 2017's structured self-attention (r hops),
                                                       without and with the ||AA^T - I||_F^2 penalty
  han_att, han_ave, han_max                            `HierarchicalAttentionNetwork` (Yang et al. 2016): HN-ATT,
                                                       HN-AVE, HN-MAX, on the same tokens split by sentence
  transformer_softmax, _sparsemax, _entmax15           `TransformerClassifier`, 2 pre-LN layers, with softmax,
                                                       sparsemax or 1.5-entmax self-attention
  transformer_coda                                     the same with compositional de-attention (Tay et al. 2019)
  dattn                                                `DAttnClassifier` (Seo et al. 2017): local + global
                                                       attention CNNs

Data (default): the Debian ``fortunes`` files, labelled by topic file (40 classes, 11,596 train / 2,800 test
entries, split by a hash of the text; 10% of train held out as dev). It is the one corpus of shared/DATA.md
with labels AND punctuated, multi-sentence text, which the hierarchical rows need: R8, R52 and 20 Newsgroups
ship lower-cased with punctuation stripped, and the rotten-tomatoes snippets are one sentence each. Those are
options (``--config.data.corpus=r8|r52|20news|rotten_tomatoes``); on the unpunctuated ones the sentence view is
rows of W tokens. Sentences come from pysbd; tokens from a SentencePiece BPE model of the train split; every
model sees the first ``data.max_tokens`` tokens of a document.

Presets (2-core CPU machine; wall times are with ``--jobs=2``, measured in WORKSPACE.md):

* ``smoke``: 1,200 train / 300 dev / 300 test documents, 1,000 pieces, 60 steps, one seed, one row of each
  family (``PRESET_ROWS``); ``--rows=all`` runs every row but ``bert`` (which runs alone, with its encoder).
  Plumbing only (about two minutes).
* ``small`` (default): every document, 3 seeds of every row, ``train.num_steps`` (300) steps of 64 documents:
  35.9 min for the 51 runs.

Reported: test accuracy (%) as the mean +- sample std over seeds; per seed, the paired bootstrap CI of the
accuracy difference to the baseline row and its permutation p (`experiments.stats.paired_accuracy_test`, the
largest p over seeds in the table); the claims below.
"""

from __future__ import annotations

import ml_collections

from experiments import configs
from experiments.stats import Claim

ROWS = {
    "cnn_max": {"model.family": "textcnn", "model.pooling": "max"},
    "cnn_attention": {"model.family": "textcnn", "model.pooling": "attention"},
    "cnn_kmax": {"model.family": "textcnn", "model.pooling": "kmax"},
    "cnn_chunk_max": {"model.family": "textcnn", "model.pooling": "chunk_max"},
    "lstm_last": {"model.family": "bilstm", "model.pooling": "last"},
    "lstm_mean": {"model.family": "bilstm", "model.pooling": "mean"},
    "lstm_attention": {"model.family": "bilstm", "model.pooling": "attention"},
    "lstm_structured": {"model.family": "bilstm", "model.pooling": "structured", "model.penalty": 0.0},
    "lstm_structured_penalty": {"model.family": "bilstm", "model.pooling": "structured", "model.penalty": 1.0},
    "han_att": {"model.family": "han", "model.pooling": "attention"},
    "han_ave": {"model.family": "han", "model.pooling": "mean"},
    "han_max": {"model.family": "han", "model.pooling": "max"},
    "transformer_softmax": {"model.family": "transformer", "model.attention": "softmax"},
    "transformer_sparsemax": {"model.family": "transformer", "model.attention": "sparsemax"},
    "transformer_entmax15": {"model.family": "transformer", "model.attention": "entmax15"},
    "transformer_coda": {"model.family": "transformer", "model.attention": "coda"},
    "dattn": {"model.family": "dattn"},
    # Not in the default table: the penalty at a tenth of Lin's coefficient (--rows=lstm_structured_penalty_0.1).
    "lstm_structured_penalty_0.1": {"model.family": "bilstm", "model.pooling": "structured", "model.penalty": 0.1},
    # Not in the default table: fine-tuning a BERT encoder saved by `experiments.bert` (--rows=bert
    # --config.model.bert_encoder=workdirs/bert/pretrain/nsp/seed_0/encoder); [CLS] document [SEP] in the encoder's
    # own vocabulary, cut to the length it was pretrained on.
    "bert": {"model.family": "bert", "train.learning_rate": 2e-4},
}
EXTRA_ROWS = ("lstm_structured_penalty_0.1", "bert")
DEFAULT_ROWS = tuple(row for row in ROWS if row not in EXTRA_ROWS)
# One row of each model family, plus the baseline: every code path in about two minutes.
PRESET_ROWS = {"smoke": ("cnn_max", "cnn_attention", "lstm_structured_penalty", "han_att", "transformer_entmax15",
                         "dattn")}
BASELINE_ROW = "cnn_max"
DEFAULT_PRESET = "small"

_HAN = "Yang et al. 2016 (NAACL, N16-1174), Table 2, Yelp 2015 column"
_LIN = "Lin et al. 2017 (arXiv:1703.03130), the penalization-term comparison on Yelp"
PAPER = {
    "cnn_max": {"text": "76.1 (MR, CNN-rand)", "accuracy": 76.1, "source": "Kim 2014 (arXiv:1408.5882), Table 2"},
    "han_att": {"text": "71.0 (Yelp'15)", "accuracy": 71.0, "source": _HAN},
    "han_ave": {"text": "69.9 (Yelp'15)", "accuracy": 69.9, "source": _HAN},
    "han_max": {"text": "70.1 (Yelp'15)", "accuracy": 70.1, "source": _HAN},
    "lstm_structured": {"text": "61.7 (Yelp)", "accuracy": 61.7, "source": _LIN},
    "lstm_structured_penalty": {"text": "64.2 (Yelp)", "accuracy": 64.2, "source": _LIN},
}

CLAIMS = (
    Claim("HN-ATT beats HN-AVE and HN-MAX", "han_att", ("han_ave", "han_max"), metric="test_accuracy",
          paper="Yelp'15: HN-ATT 71.0 vs HN-AVE 69.9, HN-MAX 70.1", source=_HAN),
    Claim("HN-MAX sits above HN-AVE", "han_max", ("han_ave",), metric="test_accuracy",
          paper="Yelp'15: 70.1 vs 69.9 (Yelp'13: 66.9 vs 67.0, the other way)", source=_HAN),
    Claim("the penalty helps structured self-attention", "lstm_structured_penalty", ("lstm_structured",),
          metric="test_accuracy", paper="Yelp: 61.7 without, 64.2 with", source=_LIN),
    Claim("attention pooling beats last-state and mean pooling", "lstm_attention", ("lstm_last", "lstm_mean"),
          metric="test_accuracy", paper="the premise of attention pooling (no single table)",
          source="Raffel & Ellis 2015 (arXiv:1512.08756); Yang et al. 2016; Lin et al. 2017"),
    Claim("attention pooling beats max pooling in a CNN", "cnn_attention", ("cnn_max",), metric="test_accuracy",
          paper="the issue's TextCNN variant (no paper number)", source="Kim 2014 (arXiv:1408.5882), eq. 2 replaced"),
)

PRESETS = {
    "smoke": {"data.max_train": 1200, "data.max_test": 300, "data.vocab_size": 1000, "train.num_steps": 60,
              "train.log_every": 10, "train.eval_every": 30, "train.checkpoint_every": 30, "seeds": ""},
    "small": {"seeds": "3"},
}


def get_config() -> ml_collections.ConfigDict:
    """The base config (the ``small`` preset's values unless it overrides them)."""
    c = ml_collections.ConfigDict()
    c.experiment = "classification"
    c.seed = 0
    c.seeds = ""  # "" one run with seed; "3" seeds 0, 1, 2; "0,4" those seeds

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "fortunes"
    c.data.data_dir = configs.DEFAULT_CACHE_DIR
    c.data.data_path = ""  # a TSV file of "label<TAB>text" lines replaces the corpus (--data_path)
    c.data.sentences = ""  # "" the corpus' default: pysbd, or none for the unpunctuated corpora
    c.data.vocab_size = 8000
    c.data.max_tokens = 128  # T: every model sees a document's first T tokens
    c.data.max_sentences = 8  # L: sentence rows of the hierarchical view
    c.data.sentence_tokens = 32  # W: tokens per row
    c.data.dev_fraction = 0.1
    c.data.test_fraction = 0.2
    c.data.max_train = 0  # 0: all
    c.data.max_test = 0  # 0: all (dev and test)
    c.data.buckets = (32, 64, 128)

    c.model = ml_collections.ConfigDict()
    c.model.family = "textcnn"  # textcnn | bilstm | han | transformer | dattn
    c.model.pooling = "max"
    c.model.normalizer = "softmax"
    c.model.embed_dim = 128
    c.model.dropout_rate = 0.3
    c.model.attention_dim = 64  # feed-forward attention's A (TextCNN, BiLSTM, HAN) and Lin's d_a
    c.model.num_filters = 64  # TextCNN, per width
    c.model.filter_widths = (3, 4, 5)
    c.model.k = 2
    c.model.num_chunks = 3
    c.model.hidden_size = 64  # BiLSTM / BiGRU per direction
    c.model.hops = 4  # Lin's r
    c.model.penalty = 0.0  # Lin's penalty coefficient (the loss adds penalty * mean ||AA^T - I||_F^2)
    c.model.d_model = 64  # Transformer
    c.model.num_heads = 4
    c.model.d_ff = 128
    c.model.num_layers = 2
    c.model.attention = "softmax"
    c.model.coda_gate = "centred"
    c.model.window = 5  # D-Attn
    c.model.local_features = 64
    c.model.global_widths = (2, 3, 4)
    c.model.global_features = 32
    c.model.global_scores = "document"
    c.model.hidden_dim = 128
    c.model.bert_encoder = ""  # the encoder/ folder of a finished experiments.bert pretraining run (the bert row)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.grad_clip_norm = 5.0
    c.train.num_steps = 300  # about 1.8 epochs of the 10,455 fortunes: sized to the 40-minute budget
    c.train.max_minutes = 0.0
    c.train.log_every = 50
    c.train.eval_every = 100
    c.train.checkpoint_every = 100

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 128
    c.eval.significance = "bs"  # "bs": paired bootstrap CI + permutation p per seed; "none"
    c.eval.significance_samples = 2000
    c.eval.baseline_row = ""
    c.eval.num_documents = 6  # test documents rendered as coloured text

    c.mesh = configs.mesh_config()
    return c
