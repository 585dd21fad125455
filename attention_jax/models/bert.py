"""BERT: a bidirectional Transformer encoder, its pre-training heads and fine-tuning heads.

Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
arXiv:1810.04805.

  - `BertEncoder`: the input representation of §3 / Fig. 2 (token + learned position + segment embeddings,
    then LayerNorm and dropout), L Transformer encoder layers (`transformer.EncoderLayer`: post-LN as in the
    paper, or pre-LN with a final LayerNorm; the FFN with the exact GELU, §A.2) and the pooler
    tanh(h_[CLS] W + b) that gives the aggregate representation C of §3 (its form is the released code's).
  - `BertForPretraining`: the masked-LM head (§3.1 "Task #1"; Dense + GELU + LayerNorm, then logits against the
    token embedding matrix itself plus a bias, as in the released code) and the next-sentence head (§3.1
    "Task #2"; a 2-way Dense on C).
  - `BertClassifier` (sequence classification on C, §4.1) and `BertTokenClassifier` (a label per token, the
    NER set-up of §5.3 / Fig. 4(d); §4.3 in the paper's first version). Their encoder is the submodule "bert",
    as in `BertForPretraining`, so a pre-trained params["bert"] drops into them unchanged.
  - `mlm_mask` (the 15% / 80-10-10 corruption of §3.1 and §A.1) and `mlm_loss_and_accuracy`.

Padding: right padding with `pad_id`. A row's length is its number of non-pad tokens; keys at t >= length are
masked in every self-attention (`EncoderLayer(lengths=...)`), so padded positions change no real position and
no pooled vector. Outputs at padded positions are finite but meaningless.

Parameters and the released checkpoints. Parameter names follow the standard BERT layout closely enough for a
converter of the TF checkpoints of google-research/bert (HF's names differ only in their prefixes). In
`BertForPretraining` (a `BertClassifier` holds the same "bert" subtree beside "classifier"):

    released (TF)                                      here (params[...])                  note
    bert/embeddings/word_embeddings                    bert/token_embeddings/embedding     [V, D]
    bert/embeddings/position_embeddings                bert/position_embeddings/table      [512, D]
    bert/embeddings/token_type_embeddings              bert/token_type_embeddings/embedding
    bert/embeddings/LayerNorm/{gamma,beta}             bert/embeddings_norm/{scale,bias}
    bert/encoder/layer_i/attention/self/{query,key,value}/kernel, bias
                                                       bert/layers_i/self_attention/{query,key,value}/kernel,
                                                       bias                                [D, D] -> [D, N, H]
    bert/encoder/layer_i/attention/output/dense        bert/layers_i/self_attention/out    [D, D] -> [N, H, D]
    bert/encoder/layer_i/attention/output/LayerNorm    bert/layers_i/attention_block/norm
    bert/encoder/layer_i/intermediate/dense            bert/layers_i/ffn/inner             [D, F]
    bert/encoder/layer_i/output/dense                  bert/layers_i/ffn/outer             [F, D]
    bert/encoder/layer_i/output/LayerNorm              bert/layers_i/ffn_block/norm
    bert/pooler/dense                                  bert/pooler
    cls/predictions/transform/dense                    mlm_transform
    cls/predictions/transform/LayerNorm                mlm_norm
    cls/predictions/output_bias                        mlm_bias                            [V]
    cls/seq_relationship/output_weights, output_bias   nsp/kernel, nsp/bias                [2, D] -> [D, 2]

The released model's LayerNorms use epsilon 1e-12, flax's 1e-6 here; converted weights then give outputs that
differ by about 1e-6 relative. Initialisation: the embeddings, the pooler and the heads start from the
released code's truncated normal of stddev 0.02 (initializer_range); the encoder layers keep
`MultiHeadAttention`'s and `FeedForward`'s own initialisers (LeCun normal).

Logical axes (`attention_jax.core.axes`): token embeddings ("vocab", "embed"), position and segment tables
(None, "embed"), the D x D pooler and MLM transform ("embed", "mlp") (column-parallel, so no mesh axis is used
twice), the NSP and classifier kernels ("embed", None), the MLM bias ("vocab",).

Letters: B batch, T length, D = hidden_size, N heads, H = D // N, F = intermediate_size, V vocabulary, P masked
positions per row, C classes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core.positional import LearnedPositions
from attention_jax.models.transformer import NORMS, EncoderLayer

Array = jax.Array

__all__ = [
    "BertClassifier",
    "BertEncoder",
    "BertForPretraining",
    "BertTokenClassifier",
    "mlm_loss_and_accuracy",
    "mlm_mask",
]

# The released code's initializer_range: a normal of stddev 0.02 truncated at two standard deviations.
_INIT = nn.initializers.truncated_normal(stddev=0.02)


# ----------------------------------------------------------------------------------------------------------
# The encoder.


class _BertConfig(nn.Module):
    """The encoder's attributes, shared by `BertEncoder` and the models that hold one as "bert"."""

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    norm: str = "post"
    pad_id: int = 0
    implementation: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.int_at_least("vocab_size", self.vocab_size, 2)
        for name in ("hidden_size", "num_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.int_at_least("num_layers", self.num_layers, 0)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        _checks.rate("dropout_rate", self.dropout_rate)
        _checks.rate("attention_dropout_rate", self.attention_dropout_rate)
        _checks.choice("norm", self.norm, NORMS)
        pad_id = _checks.int_at_least("pad_id", self.pad_id, 0)
        if pad_id >= self.vocab_size:
            raise ValueError(f"pad_id={pad_id} must be < vocab_size={self.vocab_size}")
        super().__post_init__()

    def _encoder_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ENCODER_FIELDS}

    def _check_inputs(self, tokens: Any, token_type_ids: Any) -> None:
        _checks.tokens("tokens", tokens, 2)
        length = tokens.shape[1]
        if length == 0:
            raise ValueError(f"tokens must hold at least one position (the [CLS] token), got {tokens.shape=}")
        if length > self.max_position_embeddings:
            raise ValueError(f"tokens has T={length} positions, more than max_position_embeddings="
                             f"{self.max_position_embeddings}: {tokens.shape=}")
        if token_type_ids is not None:
            _checks.tokens("token_type_ids", token_type_ids, 2)
            if tuple(token_type_ids.shape) != tuple(tokens.shape):
                raise ValueError(f"token_type_ids must have the shape of tokens: {token_type_ids.shape=} "
                                 f"{tokens.shape=}")


_ENCODER_FIELDS = tuple(f.name for f in dataclasses.fields(_BertConfig) if f.name not in ("parent", "name"))


class BertEncoder(_BertConfig):
    """The BERT encoder: embeddings, L Transformer encoder layers and the pooler (arXiv:1810.04805, §3, Fig. 2).

    E = LayerNorm(token_embedding[x_t] + position_embedding[t] + segment_embedding[s_t]), dropout; then L
    encoder layers (post-LN LayerNorm(x + Dropout(Sublayer(x))) as in the paper, or pre-LN with a final
    LayerNorm), each with self-attention over the non-padded keys and the FFN GELU(x W_1 + b_1) W_2 + b_2
    (§A.2: "a gelu activation ... rather than the standard relu"). The pooled output is tanh(h_0 W + b) at the
    first position ([CLS]), the aggregate representation C of §3.

    Attributes:
      vocab_size: V.
      hidden_size: D (768 in BERT-base, 1024 in BERT-large).
      num_layers: L (12 / 24).
      num_heads: N (12 / 16); must divide D.
      intermediate_size: F, the FFN's inner width (4D in the paper).
      max_position_embeddings: rows of the learned position table; the longest T (512 in the paper).
      type_vocab_size: rows of the segment table (2: sentence A and B).
      dropout_rate: dropout on the embeddings and every residual branch (0.1, §A.2).
      attention_dropout_rate: dropout on the attention weights (0.1 in the released code).
      norm: "post" (the paper) or "pre" (Xiong et al. 2020, arXiv:2002.04745; adds "final_norm").
      pad_id: the padding id; rows are right-padded with it.
      implementation: the `dot_product_attention` backend of every self-attention (None chooses).
      dtype: the compute dtype (None infers it); param_dtype: the parameter dtype.

    Parameters: "token_embeddings" (nn.Embed), "position_embeddings" (`LearnedPositions`),
    "token_type_embeddings" (nn.Embed), "embeddings_norm", "layers_0" .. "layers_{L-1}" (`EncoderLayer`),
    "final_norm" (pre-LN only), "pooler" (Dense D -> D); see the module docstring for the released names.

    Raises:
      ValueError: at construction, for sizes that are not positive ints, N not dividing D, dropout rates outside
        [0, 1), an unknown norm, or pad_id outside [0, V).
    """

    def setup(self):
        d = self.hidden_size
        self.token_embeddings = nn.Embed(self.vocab_size, d, embedding_init=axes.embed_init(_INIT),
                                         param_dtype=self.param_dtype)
        self.position_embeddings = LearnedPositions(self.max_position_embeddings, d, embedding_init=_INIT,
                                                    param_dtype=self.param_dtype)
        self.token_type_embeddings = nn.Embed(self.type_vocab_size, d,
                                              embedding_init=axes.embed_init(_INIT, (None, axes.EMBED)),
                                              param_dtype=self.param_dtype)
        self.embeddings_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, **axes.norm_inits())
        self.embeddings_dropout = nn.Dropout(self.dropout_rate)
        self.layers = [EncoderLayer(num_heads=self.num_heads, d_ff=self.intermediate_size,
                                    dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                                    norm=self.norm, implementation=self.implementation, dtype=self.dtype,
                                    param_dtype=self.param_dtype, activation="gelu")
                       for _ in range(self.num_layers)]
        if self.norm == "pre":
            self.final_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, **axes.norm_inits())
        self.pooler = nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype,
                               **axes.dense_inits(axes.EMBED, axes.MLP, kernel_init=_INIT))

    def __call__(self, tokens: Array, token_type_ids: Array | None = None,
                 train: bool = False) -> tuple[Array, Array]:
        """Encodes right-padded token sequences (arXiv:1810.04805, §3, Fig. 2).

        Args:
          tokens: [B, T] integer ids in [0, V), [CLS] first, right-padded with pad_id; 1 <= T <=
            max_position_embeddings.
          token_type_ids: None (all 0: sentence A) or [B, T] integer segment ids in [0, type_vocab_size).
          train: enables dropout (rng "dropout").

        Returns:
          (sequence [B, T, D], pooled [B, D]), both in the compute dtype: the last layer's hidden states (after
          the final LayerNorm with norm="pre") and tanh(sequence[:, 0] W + b).

        Raises:
          ValueError: if tokens is not rank 2, T is 0 or exceeds max_position_embeddings, or token_type_ids'
            shape differs from tokens'.
          TypeError: for non-integer tokens or token_type_ids, or a train flag that is not a bool.
        """
        _checks.flag("train", train)
        self._check_inputs(tokens, token_type_ids)
        batch, length = tokens.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = (self.token_embeddings(tokens) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))  # [B, T, D]
        x = self.embeddings_norm(x)
        x = axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        x = self.embeddings_dropout(x, deterministic=not train)
        lengths = jnp.sum(tokens != self.pad_id, axis=1, dtype=jnp.int32)  # [B]; right padding
        for layer in self.layers:
            x = layer(x, lengths, train)
        if self.norm == "pre":
            x = self.final_norm(x)
        pooled = jnp.tanh(self.pooler(x[:, 0]))  # [B, D], from the [CLS] position
        return x, pooled

    def attend_embeddings(self, x: Array) -> Array:
        """x E^T against the token embedding matrix E [V, D]: the tied output projection of the MLM head.

        Args:
          x: [..., D] floating.

        Returns:
          [..., V] float32 (computed in float32).

        Raises:
          ValueError: if the last axis of x is not D.
          TypeError: if x is not floating.
        """
        _checks.floating("x", x)
        if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != self.hidden_size:
            raise ValueError(f"x must end in hidden_size={self.hidden_size} features, got {jnp.shape(x)=}")
        return self.token_embeddings.attend(x.astype(jnp.float32)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# Pre-training and fine-tuning heads.


class BertForPretraining(_BertConfig):
    """BERT with its two pre-training heads, masked LM and next-sentence prediction (arXiv:1810.04805, §3.1).

    MLM (§3.1 "Task #1"; the transform and the tying are the released code's): at each predicted position,
    h = LayerNorm(GELU(x W_t + b_t)) and logits = h E^T + b_V, with E the encoder's own token embedding matrix
    (no separate output matrix: the gradient of the MLM loss reaches E through both ends). NSP (§3.1
    "Task #2"): logits = C W_nsp + b over {0: IsNext, 1: NotNext} (the released label order), C the pooled
    [CLS] vector.

    Attributes: those of `BertEncoder`, which this model builds as the submodule "bert".

    Parameters: "bert" (a `BertEncoder` tree), "mlm_transform" (Dense D -> D), "mlm_norm", "mlm_bias" [V],
    "nsp" (Dense D -> 2).
    """

    def setup(self):
        self.bert = BertEncoder(**self._encoder_kwargs())
        d = self.hidden_size
        self.mlm_transform = nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype,
                                      **axes.dense_inits(axes.EMBED, axes.MLP, kernel_init=_INIT))
        self.mlm_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, **axes.norm_inits())
        self.mlm_bias = self.param("mlm_bias", axes.partitioned(nn.initializers.zeros_init(), (axes.VOCAB,)),
                                   (self.vocab_size,), self.param_dtype)
        self.nsp = nn.Dense(2, dtype=self.dtype, param_dtype=self.param_dtype,
                            **axes.dense_inits(axes.EMBED, None, kernel_init=_INIT))

    def __call__(self, tokens: Array, token_type_ids: Array | None = None, masked_positions: Array | None = None,
                 train: bool = False) -> tuple[Array, Array]:
        """MLM logits at the masked positions (or everywhere) and NSP logits.

        Args:
          tokens: [B, T] integer, the corrupted inputs (e.g. `mlm_mask`'s), see `BertEncoder.__call__`.
          token_type_ids: None or [B, T] integer segment ids (sentence A = 0, B = 1).
          masked_positions: None, or [B, P] integer positions in [0, T) to predict (padded entries may hold any
            valid position, e.g. 0, and get weight 0 in the loss). A position outside [-T, T) gives NaN logits
            (it cannot be checked under jit).
          train: enables dropout (rng "dropout").

        Returns:
          (mlm_logits [B, P, V] float32 ([B, T, V] when masked_positions is None), nsp_logits [B, 2] float32).

        Raises:
          ValueError: for the shapes `BertEncoder` rejects, or masked_positions not [B', P] with B' = B.
          TypeError: for non-integer tokens, token_type_ids or masked_positions, or a train flag not a bool.
        """
        _checks.flag("train", train)
        self._check_inputs(tokens, token_type_ids)
        if masked_positions is not None:
            _checks.tokens("masked_positions", masked_positions, 2)
            if masked_positions.shape[0] != tokens.shape[0]:
                raise ValueError(f"masked_positions and tokens differ in batch: {masked_positions.shape=} "
                                 f"{tokens.shape=}")
        sequence, pooled = self.bert(tokens, token_type_ids, train)  # [B, T, D], [B, D]
        h = sequence
        if masked_positions is not None:
            index = jnp.asarray(masked_positions, jnp.int32)[..., None]  # [B, P, 1]
            h = jnp.take_along_axis(sequence, index, axis=1, mode="fill")  # [B, P, D]
        h = self.mlm_norm(jax.nn.gelu(self.mlm_transform(h), approximate=False))  # [B, P, D]
        logits = self.bert.attend_embeddings(h) + self.mlm_bias.astype(jnp.float32)  # [B, P, V]
        logits = axes.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
        return logits, self.nsp(pooled).astype(jnp.float32)


class BertClassifier(_BertConfig):
    """Sequence (pair) classification on the pooled [CLS] vector C (arXiv:1810.04805, §4.1).

    logits = Dropout(C) W + b, W [D, C]; "bert" is a `BertEncoder`, so a pre-trained
    `BertForPretraining` params["bert"] loads into it unchanged.

    Attributes: those of `BertEncoder`, plus (keyword-only)
      num_classes: C.
      classifier_dropout: dropout on C before the classifier (0.1).

    Parameters: "bert", "classifier" (Dense D -> C).

    Raises:
      ValueError: at construction, see `BertEncoder`; or num_classes < 1, classifier_dropout outside [0, 1).
    """

    num_classes: int = dataclasses.field(kw_only=True)
    classifier_dropout: float = dataclasses.field(default=0.1, kw_only=True)

    def __post_init__(self):
        _checks.int_at_least("num_classes", self.num_classes, 1)
        _checks.rate("classifier_dropout", self.classifier_dropout)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: Array, token_type_ids: Array | None = None, train: bool = False) -> Array:
        """Classifies each row.

        Args:
          tokens, token_type_ids, train: see `BertEncoder.__call__`.

        Returns:
          logits [B, C] float32.

        Raises:
          ValueError, TypeError: see `BertEncoder.__call__`.
        """
        _, pooled = BertEncoder(**self._encoder_kwargs(), name="bert")(tokens, token_type_ids, train)  # [B, D]
        pooled = nn.Dropout(self.classifier_dropout)(pooled, deterministic=not train)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier",
                        **axes.dense_inits(axes.EMBED, None, kernel_init=_INIT))(pooled).astype(jnp.float32)


class BertTokenClassifier(BertClassifier):
    """A label per token (tagging, e.g. NER: arXiv:1810.04805, §5.3, Fig. 4(d); §4.3 of the first version).

    logits_t = Dropout(h_t) W + b on every final hidden state h_t. Attributes and parameters: those of
    `BertClassifier`. Outputs at padded positions are meaningless; mask them in the loss.
    """

    @nn.compact
    def __call__(self, tokens: Array, token_type_ids: Array | None = None, train: bool = False) -> Array:
        """Classifies each token.

        Args:
          tokens, token_type_ids, train: see `BertEncoder.__call__`.

        Returns:
          logits [B, T, C] float32.

        Raises:
          ValueError, TypeError: see `BertEncoder.__call__`.
        """
        sequence, _ = BertEncoder(**self._encoder_kwargs(), name="bert")(tokens, token_type_ids, train)  # [B,T,D]
        sequence = nn.Dropout(self.classifier_dropout)(sequence, deterministic=not train)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier",
                          **axes.dense_inits(axes.EMBED, None, kernel_init=_INIT))(sequence)  # [B, T, C]
        return axes.constrain(logits.astype(jnp.float32), (axes.BATCH, axes.LENGTH, None))


# ----------------------------------------------------------------------------------------------------------
# Masked-LM data and loss.


def _real_in(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise ValueError(f"{name} must be a real number in [{low}, {high}], got {value!r}")
    return float(value)


def mlm_mask(rng: Array, tokens: Array, *, vocab_size: int, mask_id: int, special_ids: Iterable[int],
             mask_rate: float = 0.15, mask_token_rate: float = 0.8, random_token_rate: float = 0.1,
             max_predictions: int | None = None) -> tuple[Array, Array, Array]:
    """Masked-LM corruption: choose 15% of the tokens of each row, then 80% [MASK], 10% random, 10% kept.

    arXiv:1810.04805, §3.1 "Task #1: Masked LM" and §A.1. Eligible positions are those whose token is neither
    in `special_ids` nor `mask_id`: pass the padding, [CLS], [SEP] (and [UNK], ...) ids as `special_ids`, and
    they are never chosen. Each row chooses k = min(max(1, round(mask_rate * n)), P) of its n eligible
    positions (k = 0 when n = 0) uniformly without replacement (round half to even, computed in float32).
    Each chosen token independently becomes mask_id with probability mask_token_rate, a random id with
    probability random_token_rate, and stays itself otherwise. The random id is drawn uniformly from the ids
    of [0, vocab_size) that are neither in `special_ids` nor `mask_id` (so it may equal the original token,
    as in the paper).

    Differences from the released create_pretraining_data.py: there k = round(mask_rate * len(tokens)) counts
    [CLS] and [SEP] too, and the random id is drawn from the whole vocabulary, special tokens included.

    Jittable: vocab_size, mask_id, special_ids, the rates and max_predictions are static Python values.

    Args:
      rng: a PRNG key.
      tokens: [B, T] integer, the original sequences, padded with an id in special_ids.
      vocab_size: V.
      mask_id: the [MASK] id, in [0, V).
      special_ids: ints in [0, V) never chosen nor drawn as random replacements (pad, [CLS], [SEP], ...).
      mask_rate: the share of eligible tokens to predict, in (0, 1] (0.15).
      mask_token_rate: the share of chosen tokens replaced by mask_id (0.8).
      random_token_rate: the share replaced by a random non-special id (0.1); the rates sum to at most 1.
      max_predictions: P, the most predictions per row and the width of the outputs; None means
        ceil(mask_rate * T).

    Returns:
      inputs: [B, T] int32, the corrupted tokens (tokens everywhere but the chosen positions).
      positions: [B, P] int32, the chosen positions in increasing order, then zeros.
      weights: [B, P] float32, 1 at the first k entries of each row, 0 after.
      The targets are jnp.take_along_axis(tokens, positions, axis=1).

    Raises:
      ValueError: if tokens is not rank 2, V < 2, mask_id or a special id lies outside [0, V), a rate lies
        outside its range or the two replacement rates sum above 1, max_predictions < 1, or random
        replacements are asked for but every id is special.
      TypeError: for non-integer tokens or special ids that are not ints (e.g. traced arrays).
    """
    _checks.tokens("tokens", tokens, 2)
    vocab_size = _checks.int_at_least("vocab_size", vocab_size, 2)
    mask_id = _checks.int_at_least("mask_id", mask_id, 0)
    if mask_id >= vocab_size:
        raise ValueError(f"mask_id={mask_id} must be < vocab_size={vocab_size}")
    special = set()
    for i in special_ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"special_ids must be Python ints, got {i!r} of type {type(i).__name__}")
        if not 0 <= i < vocab_size:
            raise ValueError(f"special id {i} must lie in [0, vocab_size={vocab_size})")
        special.add(int(i))
    special.add(mask_id)
    mask_rate = _real_in("mask_rate", mask_rate, 0.0, 1.0)
    if mask_rate == 0.0:
        raise ValueError("mask_rate must be > 0, got 0.0")
    mask_token_rate = _real_in("mask_token_rate", mask_token_rate, 0.0, 1.0)
    random_token_rate = _real_in("random_token_rate", random_token_rate, 0.0, 1.0)
    if mask_token_rate + random_token_rate > 1.0 + 1e-9:
        raise ValueError(f"mask_token_rate={mask_token_rate} + random_token_rate={random_token_rate} exceeds 1")
    batch, length = tokens.shape
    if max_predictions is None:
        max_predictions = max(1, math.ceil(mask_rate * length))
    max_predictions = _checks.int_at_least("max_predictions", max_predictions, 1)
    allowed = np.array([i for i in range(vocab_size) if i not in special], np.int32)  # random replacements
    if allowed.size == 0 and random_token_rate > 0:
        raise ValueError(f"random_token_rate={random_token_rate} > 0 but every id of vocab_size={vocab_size} is "
                         f"special: {sorted(special)}")

    tokens = jnp.asarray(tokens, jnp.int32)
    pick_key, action_key, random_key = jax.random.split(rng, 3)
    eligible = jnp.ones((batch, length), bool)
    for i in sorted(special):
        eligible &= tokens != i
    num_eligible = jnp.sum(eligible, axis=1, dtype=jnp.int32)  # [B]
    wanted = jnp.round(jnp.float32(mask_rate) * num_eligible.astype(jnp.float32)).astype(jnp.int32)
    count = jnp.where(num_eligible > 0, jnp.clip(wanted, 1, max_predictions), 0)  # [B]

    # A uniform draw without replacement: the k largest of i.i.d. uniform keys over the eligible positions.
    width = min(max_predictions, length)
    keys = jnp.where(eligible, jax.random.uniform(pick_key, (batch, length)), -1.0)  # [B, T]
    _, picked = jax.lax.top_k(keys, width)  # [B, width]
    slot = jnp.arange(max_predictions)[None, :]  # [1, P]
    picked = jnp.pad(picked, ((0, 0), (0, max_predictions - width)))  # [B, P]
    valid = slot < count[:, None]  # [B, P]
    positions = jnp.sort(jnp.where(valid, picked, length), axis=1)  # chosen ones first, in order
    valid = positions < length
    positions = jnp.where(valid, positions, 0).astype(jnp.int32)

    u = jax.random.uniform(action_key, (batch, max_predictions))
    original = jnp.take_along_axis(tokens, positions, axis=1)  # [B, P]
    if allowed.size:
        random_ids = jnp.asarray(allowed)[jax.random.randint(random_key, (batch, max_predictions), 0, allowed.size)]
    else:
        random_ids = original
    replaced = jnp.where(u < mask_token_rate, mask_id,
                         jnp.where(u < mask_token_rate + random_token_rate, random_ids, original))
    rows = jnp.arange(batch)[:, None]
    inputs = tokens.at[rows, jnp.where(valid, positions, length)].set(replaced, mode="drop")
    return inputs, positions, valid.astype(jnp.float32)


def mlm_loss_and_accuracy(mlm_logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
    """The weighted mean cross-entropy and accuracy of the masked-LM predictions (arXiv:1810.04805, §3.1).

    loss = sum_i w_i (-log softmax(logits_i)[y_i]) / sum_i w_i, accuracy = sum_i w_i [argmax logits_i = y_i] /
    sum_i w_i; both 0 when the weights sum to 0. Entries with weight 0 are left out entirely (their logits may
    even be NaN).

    Args:
      mlm_logits: [B, P, V] floating (computed in float32).
      targets: [B, P] integer in [0, V), e.g. jnp.take_along_axis(tokens, positions, axis=1).
      weights: [B, P] floating or bool, `mlm_mask`'s weights.

    Returns:
      (loss [] float32, accuracy [] float32).

    Raises:
      ValueError: if mlm_logits is not rank 3 or targets / weights differ from its first two axes.
      TypeError: for non-floating logits or non-integer targets.
    """
    _checks.rank("mlm_logits", mlm_logits, 3)
    _checks.floating("mlm_logits", mlm_logits)
    _checks.integer("targets", targets)
    expected = tuple(jnp.shape(mlm_logits)[:2])
    for name, x in (("targets", targets), ("weights", weights)):
        _checks.array(name, x)
        if tuple(jnp.shape(x)) != expected:
            raise ValueError(f"{name} must have shape {expected} (mlm_logits' first axes), got {jnp.shape(x)}; "
                             f"{jnp.shape(mlm_logits)=}")
    weights = jnp.asarray(weights).astype(jnp.float32)
    live = weights != 0
    logits = jnp.where(live[..., None], mlm_logits.astype(jnp.float32), 0.0)  # [B, P, V]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(targets, jnp.int32))  # [B, P]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    total = jnp.sum(weights)
    denominator = jnp.where(total != 0, total, 1.0)
    loss = jnp.sum(jnp.where(live, weights * losses, 0.0)) / denominator
    return loss, jnp.sum(weights * correct) / denominator
