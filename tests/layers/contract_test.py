"""Every attention layer of attention_jax.layers through the layer contract suite (tests/layers/contract.py).

One small subclass per layer configuration: BahdanauAttention (plain and with cached projected keys),
LuongAttention (every mode x every score), MultiHeadAttention (self, cross, GQA, RoPE, ALiBi, Shaw,
d_k != d_v), RelativeMultiHeadAttention, MultiStepAttention, WeightedBranchAttention, GatedMultiHeadAttention,
Aaren, the pooling attentions (FeedForwardAttention in both forms, StructuredSelfAttention), NadarayaWatson and
the classifiers (HierarchicalAttentionNetwork, TextCNN, BiLSTMClassifier). Tiny sizes (B=2, T=5, S=6, D=8) keep the file fast; the
encoder-decoder models are in tests/models/contract_test.py.
"""

from __future__ import annotations

import unittest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from attention_jax.layers import aaren as aaren_lib
from attention_jax.layers import luong as luong_lib
from attention_jax.layers.abcnn import ABCNN
from attention_jax.layers.bahdanau import BahdanauAttention
from attention_jax.layers.coda import CoDAAttention
from attention_jax.layers.dual_attention import DualAttentionEncoder
from attention_jax.layers.feedforward import FeedForwardAttention
from attention_jax.layers.head_gates import GatedMultiHeadAttention
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.layers.multistep import MultiStepAttention
from attention_jax.layers.nadaraya_watson import NadarayaWatson
from attention_jax.layers.reader import AttentionOverAttention, AttentionSum
from attention_jax.layers.relative import RelativeMultiHeadAttention
from attention_jax.layers.structured import StructuredSelfAttention
from attention_jax.models.han import HierarchicalAttentionNetwork
from attention_jax.models.text_classifiers import (BiLSTMClassifier, DAttnClassifier, TextCNN, TransformerClassifier,
                                                   wide_conv_mask)
from attention_jax.layers.weighted import WeightedBranchAttention
from tests.layers import contract
from tests.layers.contract import Poison

B, T, S, D = 2, 5, 6, 8
# Row 0 sees every key; row 1 only the first 3 (keys 3.. are padding).
KEY_LENGTHS = np.array([S, 3], np.int32)


def _normal(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _valid(lengths: np.ndarray, length: int) -> jax.Array:
    """[B, length] bool, True below each row's length."""
    return jnp.asarray(np.arange(length)[None, :] < np.asarray(lengths)[:, None])


NO_STEP_ROWS = ("{name} has no decoding step of its own: every query row is computed independently, and the "
                "model that decodes with it ({model}) runs the step check in tests/models/contract_test.py")


# ----------------------------------------------------------------------------------------------------------
# Bahdanau and Luong: keys and values are the layer's inputs.


class _KeyInputs(contract.LayerContract):
    """Layers called as (query [B, T, Dq], key [B, S, Dk], value [B, S, Dv], mask [B, S])."""

    DQ = DK = 6
    DV = 3
    MODEL = "Seq2Seq"
    SKIP = {"masked_inputs": "its keys and values are its raw inputs, which test_masked_never_leak_keys poisons"}

    def setUp(self):
        self.SKIP = {**self.SKIP, "step": NO_STEP_ROWS.format(name=type(self).__name__, model=self.MODEL)}
        super().setUp()

    def make_inputs(self, rng):
        return dict(query=_normal(rng, B, T, self.DQ), key=_normal(rng, B, S, self.DK),
                    value=_normal(rng, B, S, self.DV), mask=_valid(KEY_LENGTHS, S))

    def masked_keys(self, inputs):
        dead = ~inputs["mask"][..., None]  # [B, S, 1]
        return [Poison("key", dead), Poison("value", dead)]

    def bad_inputs(self, inputs):
        q, k, v, mask = inputs["query"], inputs["key"], inputs["value"], inputs["mask"]
        return [
            ("query of rank 2", {**inputs, "query": q[:, 0]}, ("query", (B, self.DQ))),
            ("mask of another length", {**inputs, "mask": mask[:, :-1]}, ("mask", (B, S - 1))),
            ("value of another length", {**inputs, "value": v[:, :-1]}, ("value", (B, S - 1, self.DV))),
            ("key of another batch", {**inputs, "key": k[:1], "value": v[:1], "mask": mask[:1]},
             ("key", (1, S, self.DK))),
        ]


class BahdanauAttentionContractTest(_KeyInputs):
    def make_module(self):
        return BahdanauAttention(features=5)


class BahdanauProjectedKeysContractTest(BahdanauAttentionContractTest):
    """The decoder's path: U_a h_j computed once by `project_keys` and passed back as projected_keys."""

    def apply(self, module, variables, inputs):
        def call(m, query, key, value, mask):
            return m(query, key, value, mask, projected_keys=m.project_keys(key, mask))

        return module.apply(variables, **inputs, method=call)


class _Luong(_KeyInputs):
    SCORE = "general"
    MODE = "global"

    def make_module(self):
        return luong_lib.LuongAttention(score=self.SCORE, mode=self.MODE, window=2, features=5, max_source_len=S)

    def make_inputs(self, rng):
        inputs = super().make_inputs(rng)
        if self.MODE == "local_m":
            # Decoding positions t (as Seq2Seq passes them), so windows [t - 2, t + 2] reach into the padding.
            inputs["query_positions"] = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        return inputs


# One class per (mode, score): LuongGlobalDotContractTest, ..., LuongLocalPLocationContractTest.
for _mode in luong_lib.LUONG_MODES:
    for _score in luong_lib.LUONG_SCORES:
        _name = f"Luong{_mode.title().replace('_', '')}{_score.title()}ContractTest"
        globals()[_name] = type(_name, (_Luong,), {"SCORE": _score, "MODE": _mode, "__module__": __name__})
del _mode, _score, _name


# ----------------------------------------------------------------------------------------------------------
# MultiHeadAttention and its variants: keys and values are projections of the inputs.


def _kv_sites(dead: jax.Array, prefix: str = "") -> list[Poison]:
    """The "key" and "value" projections [B, S, K, H] at dead [B, S] positions."""
    dead = dead[:, :, None, None]
    return [Poison(module=prefix + "key", dead=dead), Poison(module=prefix + "value", dead=dead)]


class MultiHeadSelfAttentionContractTest(contract.LayerContract):
    """Self-attention over padded sequences (key_lengths), with a key/value cache for decoding."""

    NUM_HEADS = 2
    NUM_KV_HEADS = None
    POSITIONS = None
    QK_HEAD_DIM = None
    SKIP = {"masked_inputs": "in self-attention a masked key position is also a live query row, so its raw input "
                             "must stay finite; test_masked_never_leak_keys poisons the projected keys and values"}

    def make_module(self):
        return MultiHeadAttention(num_heads=self.NUM_HEADS, num_kv_heads=self.NUM_KV_HEADS, positions=self.POSITIONS,
                                  qk_head_dim=self.QK_HEAD_DIM, shaw_max_distance=2,
                                  bias_init=nn.initializers.normal(0.3))

    def make_inputs(self, rng):
        return dict(inputs_q=_normal(rng, B, T, D), key_lengths=jnp.asarray([T, 3], jnp.int32))

    def masked_keys(self, inputs):
        return _kv_sites(~_valid(np.asarray(inputs["key_lengths"]), T))

    def step_init(self, module, variables, inputs):
        x = inputs["inputs_q"]
        cache = jax.eval_shape(lambda: module.clone(decode=True).init(jax.random.PRNGKey(0), x)["cache"])
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)

    def step(self, module, variables, inputs, carry, t):
        x_t = jax.lax.dynamic_slice_in_dim(inputs["inputs_q"], t, 1, axis=1)  # [B, 1, D]
        out, updated = module.clone(decode=True).apply({"params": variables["params"], "cache": carry}, x_t,
                                                       mutable=["cache"])
        return updated["cache"], out[:, 0]

    def num_steps(self, inputs):
        return inputs["inputs_q"].shape[1]

    def step_reference(self, module, variables, inputs):
        return module.apply(variables, inputs["inputs_q"], is_causal=True)

    def bad_inputs(self, inputs):
        x, lengths = inputs["inputs_q"], inputs["key_lengths"]
        return [
            ("inputs_q of rank 2", {**inputs, "inputs_q": x[:, 0]}, ("inputs_q", (B, D))),
            ("key_lengths of another batch", {**inputs, "key_lengths": jnp.concatenate([lengths, lengths])},
             ("key_lengths", (2 * B,))),
            ("mask of another key length", {**inputs, "mask": jnp.ones((B, 1, T, T + 1), bool)},
             ("mask", (B, 1, T, T + 1))),
        ]


class MultiHeadGQAContractTest(MultiHeadSelfAttentionContractTest):
    NUM_HEADS = 4
    NUM_KV_HEADS = 2


class MultiHeadRopeContractTest(MultiHeadSelfAttentionContractTest):
    POSITIONS = "rope"


class MultiHeadAlibiContractTest(MultiHeadSelfAttentionContractTest):
    POSITIONS = "alibi"


class MultiHeadShawContractTest(MultiHeadSelfAttentionContractTest):
    POSITIONS = "shaw"


class MultiHeadQKHeadDimContractTest(MultiHeadSelfAttentionContractTest):
    """d_k = 2 < d_v = 4 (arXiv:1706.03762 Table 3 row B): q and k are zero-padded to d_v for the backend."""

    QK_HEAD_DIM = 2


class MultiHeadQKHeadDimRopeContractTest(MultiHeadSelfAttentionContractTest):
    """d_k = 6 > d_v = 4 with RoPE on the queries and keys: v is zero-padded and the output sliced back."""

    QK_HEAD_DIM = 6
    POSITIONS = "rope"


class MultiHeadCrossAttentionContractTest(contract.LayerContract):
    """Cross-attention from [B, T, D] queries to padded [B, S, Dkv] inputs (key_lengths)."""

    SKIP = {"step": "decode=True is self-attention only; the cached decoder with cross-attention is stepped "
                    "through Transformer.decode_next in tests/models/contract_test.py"}

    def make_module(self):
        return MultiHeadAttention(num_heads=2, bias_init=nn.initializers.normal(0.3))

    def make_inputs(self, rng):
        return dict(inputs_q=_normal(rng, B, T, D), inputs_kv=_normal(rng, B, S, D + 2),
                    key_lengths=jnp.asarray(KEY_LENGTHS))

    def masked_keys(self, inputs):
        return _kv_sites(~_valid(KEY_LENGTHS, S))

    def masked_inputs(self, inputs):
        return [Poison("inputs_kv", ~_valid(KEY_LENGTHS, S)[..., None])]

    def bad_inputs(self, inputs):
        kv = inputs["inputs_kv"]
        return [
            ("inputs_kv of another batch", {**inputs, "inputs_kv": kv[:1]}, ("inputs_kv", (1, S, D + 2))),
            ("inputs_kv of rank 2", {**inputs, "inputs_kv": kv[:, 0]}, ("inputs_kv", (B, D + 2))),
            ("mask of another key length", {**inputs, "mask": jnp.ones((B, 1, T, S - 1), bool)},
             ("mask", (B, 1, T, S - 1))),
        ]


class CoDAAttentionContractTest(MultiHeadCrossAttentionContractTest):
    """CoDA cross-attention from [B, T, D] queries to padded [B, S, Dkv] inputs (key_lengths): the inputs, bad
    inputs and masked raw inputs of the multi-head cross-attention contract, plus F_N's key projection."""

    SKIP = {"step": "CoDA's centred gate takes means over every valid (query, key) pair, so a query's weights "
                    "depend on the other queries: there is no step that equals the full pass"}

    def make_module(self):
        return CoDAAttention(num_heads=2, head_dim=3, key_chunk_size=4, bias_init=nn.initializers.normal(0.3))

    def masked_keys(self, inputs):
        dead = ~_valid(KEY_LENGTHS, S)
        return super().masked_keys(inputs) + [Poison(module="dissimilarity_key", dead=dead[:, :, None, None])]


# ----------------------------------------------------------------------------------------------------------
# Transformer-XL's relative attention over [memory; segment].

M = 3  # memory length


class RelativeMultiHeadAttentionContractTest(contract.LayerContract):
    """Relative attention with a memory whose first two slots are padding in batch row 1 (masked for all queries)."""

    STEP_FIXED_SHAPES = False
    STEP_RETRACE_REASON = ("one token per step attends to a memory of every earlier token, which grows by one "
                           "position per step (segment-level recurrence)")

    def make_module(self):
        return RelativeMultiHeadAttention(num_heads=2, head_dim=4)

    def _dead_memory(self) -> np.ndarray:
        dead = np.zeros((B, M), bool)
        dead[1, :2] = True
        return dead

    def make_inputs(self, rng):
        keep = np.concatenate([~self._dead_memory(), np.ones((B, T), bool)], axis=1)  # [B, M + T]
        mask = np.broadcast_to(keep[:, None, None, :], (B, 1, T, M + T))
        return dict(h=_normal(rng, B, T, D), memory=_normal(rng, B, M, D), mask=jnp.asarray(mask))

    def masked_keys(self, inputs):
        dead = np.concatenate([self._dead_memory(), np.zeros((B, T), bool)], axis=1)  # [B, M + T]
        return _kv_sites(jnp.asarray(dead))

    def masked_inputs(self, inputs):
        return [Poison("memory", jnp.asarray(self._dead_memory())[..., None])]

    def step_init(self, module, variables, inputs):
        return None

    def step(self, module, variables, inputs, carry, t):
        h = inputs["h"]
        out = module.apply(variables, h[:, t:t + 1], memory=h[:, :t] if t else None)
        return carry, out[:, 0]

    def num_steps(self, inputs):
        return 3  # one trace per step, so a few positions suffice

    def step_reference(self, module, variables, inputs):
        return module.apply(variables, inputs["h"])

    def bad_inputs(self, inputs):
        h, memory = inputs["h"], inputs["memory"]
        return [
            ("h of rank 2", {**inputs, "h": h[:, 0]}, ("h", (B, D))),
            ("memory of another width", {**inputs, "memory": jnp.zeros((B, M, D + 1))}, ("memory", (B, M, D + 1))),
            ("mask without the memory", {**inputs, "mask": inputs["mask"][..., M:]}, ("mask", (B, 1, T, T))),
        ]


# ----------------------------------------------------------------------------------------------------------
# ConvS2S multi-step attention: the memory is the input.


class MultiStepAttentionContractTest(contract.LayerContract):
    C, E = 7, 6
    SKIP = {"masked_inputs": "its keys and values (encoder_out, encoder_in) are its raw inputs, which "
                             "test_masked_never_leak_keys poisons",
            "step": NO_STEP_ROWS.format(name="MultiStepAttention", model="ConvS2S")}

    def make_module(self):
        return MultiStepAttention()

    def make_inputs(self, rng):
        return dict(decoder_state=_normal(rng, B, T, self.C), target_embedding=_normal(rng, B, T, self.E),
                    encoder_out=_normal(rng, B, S, self.E), encoder_in=_normal(rng, B, S, self.E),
                    mask=_valid(KEY_LENGTHS, S))

    def masked_keys(self, inputs):
        dead = ~inputs["mask"][..., None]
        return [Poison("encoder_out", dead), Poison("encoder_in", dead)]

    def bad_inputs(self, inputs):
        return [
            ("decoder_state of rank 2", {**inputs, "decoder_state": inputs["decoder_state"][:, 0]},
             ("decoder_state", (B, self.C))),
            ("encoder_in of another length", {**inputs, "encoder_in": inputs["encoder_in"][:, :-1]},
             ("encoder_in", (B, S - 1, self.E))),
            ("mask of another length", {**inputs, "mask": inputs["mask"][:, :-1]}, ("mask", (B, S - 1))),
        ]


# ----------------------------------------------------------------------------------------------------------
# Weighted Transformer branches and gated heads: dense masks.


def _dense_key_mask() -> jax.Array:
    """[B, 1, T, S] bool: the padded keys of KEY_LENGTHS masked for every query."""
    return jnp.broadcast_to(_valid(KEY_LENGTHS, S)[:, None, None, :], (B, 1, T, S))


class _DenseMaskCross(contract.LayerContract):
    """Cross-attention layers called as (inputs_q [B, T, D], inputs_kv [B, S, D], mask [B, 1, T, S])."""

    def make_inputs(self, rng):
        return dict(inputs_q=_normal(rng, B, T, D), inputs_kv=_normal(rng, B, S, D), mask=_dense_key_mask())

    def masked_keys(self, inputs):
        return _kv_sites(~_valid(KEY_LENGTHS, S))

    def masked_inputs(self, inputs):
        return [Poison("inputs_kv", ~_valid(KEY_LENGTHS, S)[..., None])]

    def bad_inputs(self, inputs):
        x = inputs["inputs_q"]
        return [
            ("inputs_q of rank 2", {**inputs, "inputs_q": x[:, 0]}, ("inputs_q", (B, D))),
            ("mask of another key length", {**inputs, "mask": jnp.ones((B, 1, T, S + 1), bool)},
             ("mask", (B, 1, T, S + 1))),
        ]


class WeightedBranchAttentionContractTest(_DenseMaskCross):
    SKIP = {"step": "WeightedBranchAttention keeps no key/value cache, so it has no decoding step"}

    def make_module(self):
        return WeightedBranchAttention(num_branches=2, head_dim=4, d_ff=8)


class GatedMultiHeadAttentionContractTest(_DenseMaskCross):
    SKIP = {"step": "GatedMultiHeadAttention rejects decode=True at construction, so it has no decoding step"}

    def make_module(self):
        return GatedMultiHeadAttention(num_heads=2, bias_init=nn.initializers.normal(0.3))


# ----------------------------------------------------------------------------------------------------------
# Aaren: a learned query over every prefix, with an O(1) step.


class AarenContractTest(contract.LayerContract):
    NUM_HEADS, HEAD_DIM = 2, 4

    def make_module(self):
        return aaren_lib.Aaren(num_heads=self.NUM_HEADS, head_dim=self.HEAD_DIM)

    def _mask(self) -> jax.Array:
        mask = np.ones((B, S), bool)
        mask[0, 1] = False  # a hole in the middle
        mask[1, 3:] = False  # trailing padding
        return jnp.asarray(mask)

    def make_inputs(self, rng):
        return dict(x=_normal(rng, B, S, D), mask=self._mask())

    def masked_keys(self, inputs):
        return _kv_sites(~inputs["mask"])

    def masked_inputs(self, inputs):
        # The query is a learned token, so a masked position's input is only ever a key and a value.
        return [Poison("x", ~inputs["mask"][..., None])]

    def step_init(self, module, variables, inputs):
        return aaren_lib.aaren_init(B, self.NUM_HEADS, self.HEAD_DIM)

    def step(self, module, variables, inputs, carry, t):
        x_t = jax.lax.dynamic_index_in_dim(inputs["x"], t, axis=1, keepdims=False)  # [B, D]
        valid_t = jax.lax.dynamic_index_in_dim(inputs["mask"], t, axis=1, keepdims=False)  # [B]
        return module.apply(variables, carry, x_t, valid_t, method=aaren_lib.Aaren.step)

    def num_steps(self, inputs):
        return inputs["x"].shape[1]

    def step_reference(self, module, variables, inputs):
        return self.apply(module, variables, inputs)

    def bad_inputs(self, inputs):
        return [
            ("x of rank 2", {**inputs, "x": inputs["x"][:, 0]}, ("x", (B, D))),
            ("mask of another length", {**inputs, "mask": inputs["mask"][:, :-1]}, ("mask", (B, S - 1))),
        ]


# ----------------------------------------------------------------------------------------------------------
# Attention pooling: one vector (or R) per sequence, from the sequence itself.

NO_STEP_POOL = ("{name} pools a whole sequence into one summary, with no query that advances by steps, so it has "
                "no decoding step")


class _Pooling(contract.LayerContract):
    """Layers called as (inputs [B, T, D], mask [B, T]); their keys and values are the inputs."""

    SKIP = {"masked_inputs": "its keys and values are its raw inputs, which test_masked_never_leak_keys poisons"}

    def setUp(self):
        self.SKIP = {**self.SKIP, "step": NO_STEP_POOL.format(name=type(self).__name__)}
        super().setUp()

    def make_inputs(self, rng):
        return dict(inputs=_normal(rng, B, S, D), mask=_valid(KEY_LENGTHS, S))

    def masked_keys(self, inputs):
        return [Poison("inputs", ~inputs["mask"][..., None])]

    def bad_inputs(self, inputs):
        x, mask = inputs["inputs"], inputs["mask"]
        return [
            ("inputs of rank 2", {**inputs, "inputs": x[:, 0]}, ("inputs", (B, D))),
            ("mask of another length", {**inputs, "mask": mask[:, :-1]}, ("mask", (B, S - 1))),
            ("mask of another batch", {**inputs, "mask": mask[:1]}, ("mask", (1, S))),
        ]


class FeedForwardAttentionContractTest(_Pooling):
    def make_module(self):
        return FeedForwardAttention()


class FeedForwardAttentionContextVectorContractTest(_Pooling):
    def make_module(self):
        return FeedForwardAttention(hidden_dim=4, normalizer="sparsemax")


class StructuredSelfAttentionContractTest(_Pooling):
    def make_module(self):
        return StructuredSelfAttention(hops=3, hidden_dim=4, normalizer="entmax15")


class NadarayaWatsonContractTest(contract.LayerContract):
    """Parametric Nadaraya-Watson: queries [B, T, F] attend to (keys [B, S, F], values [B, S, Dv])."""

    SKIP = {"masked_inputs": "its keys and values are its raw inputs, which test_masked_never_leak_keys poisons",
            "step": "NadarayaWatson predicts every query independently from fixed (key, value) pairs: there is "
                    "no state to step"}

    def make_module(self):
        return NadarayaWatson(kernel="epanechnikov", init_bandwidth=3.0)

    def make_inputs(self, rng):
        return dict(queries=_normal(rng, B, T, 2), keys=_normal(rng, B, S, 2), values=_normal(rng, B, S, 3),
                    mask=_valid(KEY_LENGTHS, S))

    def masked_keys(self, inputs):
        dead = ~inputs["mask"][..., None]
        return [Poison("keys", dead), Poison("values", dead)]

    def bad_inputs(self, inputs):
        return [
            ("values of another length", {**inputs, "values": inputs["values"][:, :-1]}, ("values", (B, S - 1, 3))),
            ("queries of another width", {**inputs, "queries": inputs["queries"][..., :1]}, ("queries", (B, T, 1))),
            ("mask of another length", {**inputs, "mask": inputs["mask"][:, :-1]}, ("mask", (B, S - 1))),
        ]


class HierarchicalAttentionNetworkContractTest(contract.LayerContract):
    """HAN over token ids [B, L, W] (0 = padding): padded words, an empty sentence, a padded sentence."""

    SKIP = {"step": "HierarchicalAttentionNetwork classifies whole documents: there is no decoding step"}

    def make_module(self):
        return HierarchicalAttentionNetwork(vocab_size=11, num_classes=3, embed_dim=4, hidden_size=3,
                                            attention_dim=4)

    def make_inputs(self, rng):
        tokens = rng.integers(1, 11, (B, 4, 5)).astype(np.int32)
        tokens[0, 1, 3:] = 0
        tokens[1, 1] = 0  # an empty sentence between two real ones
        tokens[1, 3] = 0  # a padded sentence
        tokens[1, 2, 2:] = 0
        return dict(tokens=jnp.asarray(tokens))

    def _dead_words(self, inputs):
        tokens = inputs["tokens"]
        return (tokens == 0).reshape(-1, tokens.shape[-1])[..., None]  # [B L, W, 1]

    def masked_keys(self, inputs):
        empty = ~jnp.any(inputs["tokens"] != 0, axis=-1)[..., None]  # [B, L, 1]
        return [Poison(module="word_encoder", dead=self._dead_words(inputs)),
                Poison(module="sentence_encoder", dead=empty)]

    def masked_inputs(self, inputs):
        return [Poison(module="embed", dead=self._dead_words(inputs))]

    def bad_inputs(self, inputs):
        tokens = inputs["tokens"]
        return [("tokens of rank 2", {"tokens": tokens[:, 0]}, ("tokens", (B, 5)))]


class _SentenceClassifier(contract.LayerContract):
    """Classifiers over token ids [B, T] (0 = padding): a full sentence and one of 3 tokens."""

    SKIP = {"step": "a sentence classifier reads the whole sentence: there is no decoding step"}

    def make_inputs(self, rng):
        tokens = rng.integers(1, 11, (B, S)).astype(np.int32)
        tokens[1, 3:] = 0
        return dict(tokens=jnp.asarray(tokens))

    def masked_inputs(self, inputs):
        return [Poison(module="embed", dead=(inputs["tokens"] == 0)[..., None])]

    def bad_inputs(self, inputs):
        return [("tokens of rank 3", {"tokens": inputs["tokens"][..., None]}, ("tokens", (B, S, 1)))]


class TextCNNAttentionContractTest(_SentenceClassifier):
    def make_module(self):
        return TextCNN(vocab_size=11, num_classes=3, embed_dim=4, filter_widths=(2, 4), num_filters=3,
                       pooling="attention", attention_dim=4)

    def masked_keys(self, inputs):
        mask = inputs["tokens"] != 0
        return [Poison(module=f"conv{h}", dead=~wide_conv_mask(mask, h)[..., None]) for h in (2, 4)]


class BiLSTMClassifierStructuredContractTest(_SentenceClassifier):
    def make_module(self):
        return BiLSTMClassifier(vocab_size=11, num_classes=3, embed_dim=4, hidden_size=3, pooling="structured",
                                attention_dim=4, hops=2, mlp_dim=5)

    def masked_keys(self, inputs):
        return [Poison(module="encoder", dead=(inputs["tokens"] == 0)[..., None])]


class DAttnClassifierContractTest(_SentenceClassifier):
    def make_module(self):
        return DAttnClassifier(vocab_size=11, num_classes=3, max_len=S, embed_dim=4, window=3, local_features=2,
                               global_widths=(2,), global_features=2, hidden_dim=5, global_scores="word")

    def masked_keys(self, inputs):  # the gates and the CNNs read the embedded words themselves
        return [Poison(module="embed", dead=(inputs["tokens"] == 0)[..., None])]


class TransformerClassifierEntmaxContractTest(_SentenceClassifier):
    KEYS = ("key", "value")

    def make_module(self):
        return TransformerClassifier(vocab_size=11, num_classes=3, d_model=4, num_heads=2, d_ff=6, num_layers=1,
                                     attention="entmax15")

    def masked_keys(self, inputs):
        dead = (inputs["tokens"] == 0)[:, :, None, None]
        return [Poison(module=f"layer_*/attention/{name}", dead=dead) for name in self.KEYS]


class TransformerClassifierCoDAContractTest(TransformerClassifierEntmaxContractTest):
    KEYS = ("key", "value", "dissimilarity_key")

    def make_module(self):
        return TransformerClassifier(vocab_size=11, num_classes=3, d_model=4, num_heads=2, d_ff=6, num_layers=1,
                                     attention="coda")


class ABCNN3ContractTest(contract.LayerContract):
    """ABCNN-3 over a pair of padded embedded sentences (lengths0, lengths1)."""

    SKIP = {"step": "ABCNN scores a whole sentence pair: there is no decoding step",
            "masked_inputs": "its keys are its raw inputs (the embedded sentences), which masked_keys poisons"}

    def make_module(self):
        return ABCNN(variant="abcnn3", num_blocks=2, width=2, features=3, max_len=S)

    def make_inputs(self, rng):
        return dict(x0=_normal(rng, B, T, D), x1=_normal(rng, B, S, D), lengths0=jnp.array([T, 2], jnp.int32),
                    lengths1=jnp.asarray(KEY_LENGTHS))

    def masked_keys(self, inputs):
        return [Poison("x0", ~_valid(np.array([T, 2]), T)[..., None]),
                Poison("x1", ~_valid(KEY_LENGTHS, S)[..., None])]

    def bad_inputs(self, inputs):
        return [("x1 of another width", {**inputs, "x1": inputs["x1"][..., :-1]}, ("x1", (B, S, D - 1))),
                ("lengths of another batch", {**inputs, "lengths1": inputs["lengths1"][:1]}, ("lengths1",))]


class DualAttentionEncoderContractTest(contract.LayerContract):
    """D-Attn's encoder over padded documents [B, S, D] (lengths)."""

    SKIP = {"step": "D-Attn encodes a whole document: there is no decoding step",
            "masked_inputs": "its keys are its raw inputs (the embedded words), which masked_keys poisons"}

    def make_module(self):
        return DualAttentionEncoder(max_len=S, window=3, local_features=2, global_widths=(2, 3), global_features=2,
                                    global_scores="word")

    def make_inputs(self, rng):
        return dict(inputs=_normal(rng, B, S, D), lengths=jnp.asarray(KEY_LENGTHS))

    def masked_keys(self, inputs):
        return [Poison("inputs", ~_valid(KEY_LENGTHS, S)[..., None])]

    def bad_inputs(self, inputs):
        return [("inputs of rank 2", {**inputs, "inputs": inputs["inputs"][:, 0]}, ("inputs", (B, D))),
                ("lengths of another batch", {**inputs, "lengths": inputs["lengths"][:1]}, ("lengths",))]


# ----------------------------------------------------------------------------------------------------------
# The cloze readers' attentions: a document (and a query) of contextual embeddings, no parameters.

NO_STEP_READER = "a reader reads the whole document: {name} has no decoding step"


class AttentionSumContractTest(contract.LayerContract):
    """Kadlec et al.'s attention sum: document [B, S, D] against one query vector [B, D]."""

    SKIP = {"masked_inputs": "its keys are its raw inputs (the document), which test_masked_never_leak_keys "
                             "poisons",
            "step": NO_STEP_READER.format(name="AttentionSum")}

    def make_module(self):
        return AttentionSum()

    def make_inputs(self, rng):
        return dict(document=_normal(rng, B, S, D), query=_normal(rng, B, D), document_mask=_valid(KEY_LENGTHS, S))

    def masked_keys(self, inputs):
        return [Poison("document", ~inputs["document_mask"][..., None])]

    def bad_inputs(self, inputs):
        return [("query of another batch", {**inputs, "query": inputs["query"][:1]}, ("query", (1, D))),
                ("query of another width", {**inputs, "query": inputs["query"][:, 1:]}, ("query", (B, D - 1))),
                ("mask of another length", {**inputs, "document_mask": inputs["document_mask"][:, 1:]},
                 ("document_mask", (B, S - 1)))]


class AttentionOverAttentionContractTest(contract.LayerContract):
    """Cui et al.'s attention over attention: document [B, S, D] and query [B, T, D], both padded."""

    QUERY_LENGTHS = np.array([2, T], np.int32)
    SKIP = {"masked_inputs": "its keys are its raw inputs (document and query), which "
                             "test_masked_never_leak_keys poisons",
            "step": NO_STEP_READER.format(name="AttentionOverAttention")}

    def make_module(self):
        return AttentionOverAttention()

    def make_inputs(self, rng):
        return dict(document=_normal(rng, B, S, D), query=_normal(rng, B, T, D),
                    document_mask=_valid(KEY_LENGTHS, S), query_mask=_valid(self.QUERY_LENGTHS, T))

    def masked_keys(self, inputs):
        return [Poison("document", ~inputs["document_mask"][..., None]),
                Poison("query", ~inputs["query_mask"][..., None])]

    def bad_inputs(self, inputs):
        return [("query of another width", {**inputs, "query": inputs["query"][..., 1:]}, ("query", (B, T, D - 1))),
                ("query of rank 2", {**inputs, "query": inputs["query"][:, 0]}, ("query", (B, D))),
                ("query_mask of another length", {**inputs, "query_mask": inputs["query_mask"][:, 1:]},
                 ("query_mask", (B, T - 1)))]


# ----------------------------------------------------------------------------------------------------------
# The contract itself: it passes a correct toy layer and fails each deliberately broken one.


class _ToyAttention(nn.Module):
    """One-head dot-product attention over (query [B, T, D], key, value [B, S, D], mask [B, S]), with defects."""

    leak: bool = False  # mask the logits but leave NaN keys and values in place (0 * NaN reaches the output)
    check_shapes: bool = True
    annotate: bool = True  # box the parameter with logical axis names

    @nn.compact
    def __call__(self, query, key, value, mask, temperature=1.0):
        if self.check_shapes and mask.shape != key.shape[:2]:
            raise ValueError(f"mask must be [B, S]: {mask.shape=} {key.shape=}")
        init = nn.initializers.lecun_normal()
        if self.annotate:
            init = nn.with_logical_partitioning(init, ("embed", None))
        w = self.param("w", init, (query.shape[-1], key.shape[-1]))
        if not self.leak:
            key = jnp.where(mask[..., None], key, 0.0)
            value = jnp.where(mask[..., None], value, 0.0)
        logits = jnp.einsum("BTD,DE,BSE->BTS", query, w, key) / temperature
        weights = jax.nn.softmax(jnp.where(mask[:, None, :], logits, -1e30), axis=-1)
        return jnp.einsum("BTS,BSD->BTD", weights, value)


class _ToyContract(contract.LayerContract):
    LEAK = False
    CHECK_SHAPES = True
    STATIC_TEMPERATURE = False  # a Python float drawn per call: every new value retraces
    STEP_SHIFT = 0  # step t reads query row t + STEP_SHIFT
    SKIP = {"masked_inputs": "keys and values are the inputs"}

    ANNOTATE = True

    def make_module(self):
        return _ToyAttention(leak=self.LEAK, check_shapes=self.CHECK_SHAPES, annotate=self.ANNOTATE)

    def make_inputs(self, rng):
        inputs = dict(query=_normal(rng, B, T, D), key=_normal(rng, B, S, D), value=_normal(rng, B, S, D),
                      mask=_valid(KEY_LENGTHS, S))
        if self.STATIC_TEMPERATURE:
            inputs["temperature"] = float(rng.uniform(1.0, 2.0))
        return inputs

    def masked_keys(self, inputs):
        dead = ~inputs["mask"][..., None]
        return [Poison("key", dead), Poison("value", dead)]

    def step_init(self, module, variables, inputs):
        return None

    def step(self, module, variables, inputs, carry, t):
        row = jnp.minimum(t + self.STEP_SHIFT, T - 1)
        query_t = jax.lax.dynamic_slice_in_dim(inputs["query"], row, 1, axis=1)
        return carry, module.apply(variables, **{**inputs, "query": query_t})[:, 0]

    def num_steps(self, inputs):
        return T

    def step_reference(self, module, variables, inputs):
        return self.apply(module, variables, inputs)

    def bad_inputs(self, inputs):
        return [("mask of another length", {**inputs, "mask": inputs["mask"][:, :-1]}, ("mask", (B, S - 1)))]


class _LeakyToy(_ToyContract):
    LEAK = True


class _RetracingToy(_ToyContract):
    STATIC_TEMPERATURE = True


class _MisSteppingToy(_ToyContract):
    STEP_SHIFT = 1


class _UncheckedToy(_ToyContract):
    CHECK_SHAPES = False


class _UnannotatedToy(_ToyContract):
    ANNOTATE = False


class ContractSelfTest(absltest.TestCase):
    """Each check of the contract can fail: it passes a correct layer and catches the defect it is about."""

    CHECKS = ("test_jit_equals_eager", "test_masked_never_leak_keys", "test_no_retrace_per_step",
              "test_step_equals_full_pass", "test_bad_shapes_raise_value_error", "test_params_have_logical_axes")

    def _failed(self, case_cls) -> set[str]:
        failed = set()
        for name in self.CHECKS:
            result = unittest.TestResult()
            case_cls(name).run(result)
            self.assertEmpty(result.skipped, f"{case_cls.__name__}.{name} skipped")
            if result.failures or result.errors:
                failed.add(name)
        return failed

    def test_a_correct_layer_passes(self):
        self.assertEqual(self._failed(_ToyContract), set())

    def test_each_defect_fails_its_check(self):
        for case_cls, check in ((_LeakyToy, "test_masked_never_leak_keys"), (_RetracingToy, "test_no_retrace_per_step"),
                                (_MisSteppingToy, "test_step_equals_full_pass"),
                                (_UncheckedToy, "test_bad_shapes_raise_value_error"),
                                (_UnannotatedToy, "test_params_have_logical_axes")):
            with self.subTest(case_cls.__name__):
                self.assertIn(check, self._failed(case_cls))


# The vision, set and hard-attention layers keep their contract classes beside their own tests (each file has
# an __all__, so only the classes come in).
# pylint: disable=wildcard-import,unused-wildcard-import,wrong-import-position
from tests.layers.show_attend_tell_contracts import *  # noqa: E402,F401,F403
from tests.layers.sets_contracts import *  # noqa: E402,F401,F403
from tests.layers.channel_contracts import *  # noqa: E402,F401,F403
from tests.layers.coattn_contracts import *  # noqa: E402,F401,F403
from tests.layers.danet_contracts import *  # noqa: E402,F401,F403
from tests.layers.pyramid_contracts import *  # noqa: E402,F401,F403

if __name__ == "__main__":
    absltest.main()
