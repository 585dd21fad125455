"""Every model of attention_jax.models through the layer contract suite (tests/layers/contract.py).

The encoder-decoders (Seq2Seq with no attention, Bahdanau and Luong attention; Transformer; ConvS2S) subclass
`ModelContract`: their step check runs the decoding protocol (`decoding.prepare` and `decode_next`) against the
teacher-forced pass, and `test_greedy_decode_through_protocol` decodes through it. The Transformer-XL language
model subclasses `LayerContract`, its step being the segment recurrence. Tiny sizes keep the file fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from attention_jax.models.bert import BertClassifier, BertEncoder
from attention_jax.models.convs2s import ConvS2S
from attention_jax.models.reader import AttentionOverAttentionReader, AttentionSumReader
from attention_jax.models.seq2seq import Seq2Seq
from attention_jax.models.transformer import Transformer
from attention_jax.models.transformer_xl import TransformerXLLM
from tests.layers import contract
from tests.layers.contract import Poison


class _Seq2Seq(contract.ModelContract):
    ATTENTION = "luong"
    EXTRA: dict = {}

    def make_module(self):
        return Seq2Seq(vocab_size=self.V, embed_dim=8, hidden_size=8, attention=self.ATTENTION, **self.EXTRA)

    def masked_keys(self, inputs):
        # The memory the decoder's attention reads: annotations (its keys and values) and, for Bahdanau, the
        # U_a h_j that `encode` caches, at padded source positions.
        dead = self.padded(inputs)[..., None]
        sites = [Poison(module="", method="encode", index="annotations", dead=dead)]
        if self.ATTENTION == "bahdanau":
            sites.append(Poison(module="", method="encode", index="projected_keys", dead=dead))
        return sites

    def masked_inputs(self, inputs):
        # What `encode` derives the memory from: the encoder's annotations, before U_a h_j is computed.
        return [Poison(module="encoder", index=0, dead=self.padded(inputs)[..., None])]


class Seq2SeqNoneContractTest(_Seq2Seq):
    """RNNencdec (Cho et al. 2014, arXiv:1406.1078)."""

    ATTENTION = "none"
    SKIP = {"masked_keys": "RNNencdec has no attention: its decoder reads the summary, never the annotations "
                           "(its weights are zeros)",
            "masked_inputs": "RNNencdec has no attention: its decoder reads the summary, never the annotations"}


class Seq2SeqBahdanauContractTest(_Seq2Seq):
    """RNNsearch (Bahdanau et al. 2014, arXiv:1409.0473), bidirectional GRU encoder."""

    ATTENTION = "bahdanau"
    EXTRA = dict(cell="gru", bidirectional=True)
    SKIP = {}


class Seq2SeqLuongContractTest(_Seq2Seq):
    """Luong et al. 2015 (arXiv:1508.04025), general score, input feeding."""

    ATTENTION = "luong"
    SKIP = {}


class TransformerContractTest(contract.ModelContract):
    """The Transformer (arXiv:1706.03762): one encoder and one decoder layer, shared embeddings."""

    SKIP = {}

    def make_module(self):
        return Transformer(vocab_size=self.V, d_model=8, num_heads=2, d_ff=16, num_encoder_layers=1,
                           num_decoder_layers=1, dropout_rate=0.0, max_len=16)

    def masked_keys(self, inputs):
        # The projected keys and values at padded source positions: of the encoder self-attention and of every
        # decoder layer's cross-attention.
        dead = self.padded(inputs)[:, :, None, None]
        return [Poison(module=f"{layers}_*/{attention}/{kv}", dead=dead)
                for layers, attention in (("encoder_layers", "self_attention"), ("decoder_layers", "cross_attention"))
                for kv in ("key", "value")]

    def masked_inputs(self, inputs):
        # The memory: the encoder output the cross-attentions project into keys and values.
        return [Poison(module="", method="encode", index="encoded", dead=self.padded(inputs)[..., None])]


class ConvS2SContractTest(contract.ModelContract):
    """ConvS2S (arXiv:1705.03122): multi-step attention in each of two decoder layers."""

    SKIP = {"masked_inputs": "the multi-step attentions read the memory as it is (no projection of it), so "
                             "test_masked_never_leak_keys already poisons their inputs"}

    def make_module(self):
        return ConvS2S(vocab_size=self.V, embed_dim=6, hidden_size=7, num_decoder_layers=2, max_len=8)

    def masked_keys(self, inputs):
        # The memory every multi-step attention reads: z (keys) and z + e (values) at padded source positions.
        dead = self.padded(inputs)[..., None]
        return [Poison(module="", method="encode", index=name, dead=dead) for name in ("encoder_out", "encoder_in")]

    def test_max_len_beyond_the_position_table_is_rejected(self):
        from attention_jax.models import decoding  # pylint: disable=import-outside-toplevel

        module, inputs, variables = self._setup()
        with contract._raises(ValueError, "max_len=9", "max_len=8"):
            decoding.prepare(module, variables, inputs["src"], inputs["src_lengths"], max_len=9)


# ----------------------------------------------------------------------------------------------------------
# Transformer-XL: a causal language model over segments with memories.


class TransformerXLLMContractTest(contract.LayerContract):
    """The Transformer-XL LM (arXiv:1901.02860) on one segment with fixed-size memories of earlier segments."""

    B, T, M, D, V = 2, 5, 3, 8, 11
    STEP_FIXED_SHAPES = False
    STEP_RETRACE_REASON = ("the step is a one-token segment whose memory of every earlier token grows by one "
                           "position per step; the fixed-size memories of training run through the forward "
                           "retrace check")
    SKIP = {"masked_keys": "a causal language model without padding masks no key for every query: a future key is "
                           "its own position's key, so its row is live (causality is checked by the step equality)",
            "masked_inputs": "its inputs are token ids and memories that every query attends; nothing is masked"}

    def make_module(self):
        return TransformerXLLM(vocab_size=self.V, num_layers=2, num_heads=2, head_dim=4, d_model=self.D, d_inner=16,
                               mem_len=self.M)

    def make_inputs(self, rng):
        tokens = jnp.asarray(rng.integers(0, self.V, (self.B, self.T)), jnp.int32)
        memories = [jnp.asarray(rng.standard_normal((self.B, self.M, self.D)), jnp.float32) for _ in range(2)]
        return dict(tokens=tokens, memories=memories)

    def step_init(self, module, variables, inputs):
        return None  # no memory before the first token

    def step(self, module, variables, inputs, carry, t):
        tokens = inputs["tokens"]
        logits, memories = module.apply(variables, tokens[:, t:t + 1], memories=carry, mem_len=tokens.shape[1])
        return memories, logits[:, 0]

    def num_steps(self, inputs):
        return 3  # one trace per step, so a few positions suffice

    def step_reference(self, module, variables, inputs):
        return module.apply(variables, inputs["tokens"])[0]

    def bad_inputs(self, inputs):
        tokens, memories = inputs["tokens"], inputs["memories"]
        wide = jnp.zeros((self.B, self.M, self.D + 1), jnp.float32)
        return [
            ("tokens of rank 1", {**inputs, "tokens": tokens[0]}, ("tokens", (self.T,))),
            ("memories of another width", {**inputs, "memories": [wide, wide]}, ("memories", (self.B, self.M, self.D + 1))),
            ("memories of another batch", {**inputs, "memories": [m[:1] for m in memories]},
             ("memories", (1, self.M, self.D))),
        ]


# ----------------------------------------------------------------------------------------------------------
# BERT: a bidirectional encoder over right-padded token ids (0 = padding).


class BertEncoderContractTest(contract.LayerContract):
    """The BERT encoder (arXiv:1810.04805): two post-LN GELU layers; row 1 has 3 real tokens of 6."""

    B, T, V = 2, 6, 13
    LENGTHS = (6, 3)
    SKIP = {"step": "BERT is a bidirectional encoder: no decoding step",
            "masked_inputs": "its inputs are token ids, which hold no NaN, and padding is where tokens == pad_id; "
                             "bert_test.py checks that a padded row equals the same row unpadded"}

    def make_module(self):
        return BertEncoder(vocab_size=self.V, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                           max_position_embeddings=8, dropout_rate=0.0, attention_dropout_rate=0.0)

    def make_inputs(self, rng):
        tokens = rng.integers(1, self.V, (self.B, self.T)).astype(np.int32)
        types = np.broadcast_to(np.arange(self.T) >= 3, (self.B, self.T)).astype(np.int32)
        for b, n in enumerate(self.LENGTHS):
            tokens[b, n:] = 0
        return dict(tokens=jnp.asarray(tokens), token_type_ids=jnp.asarray(types))

    def masked_keys(self, inputs):
        # The projected keys and values of every layer's self-attention at padded positions.
        dead = (inputs["tokens"] == 0)[:, :, None, None]
        return [Poison(module=f"layers_*/self_attention/{kv}", dead=dead) for kv in ("key", "value")]

    def bad_inputs(self, inputs):
        tokens, types = inputs["tokens"], inputs["token_type_ids"]
        long = jnp.ones((self.B, 9), jnp.int32)
        return [("tokens of rank 1", {**inputs, "tokens": tokens[0]}, ("tokens", (self.T,))),
                ("token_type_ids of another shape", {**inputs, "token_type_ids": types[:, :-1]},
                 ((self.B, self.T - 1), (self.B, self.T))),
                ("more positions than the table", {"tokens": long, "token_type_ids": long},
                 ("max_position_embeddings=8", (self.B, 9)))]


class BertClassifierContractTest(BertEncoderContractTest):
    """BERT fine-tuned for sequence classification (arXiv:1810.04805, §4.1): logits on the pooled [CLS]."""

    def make_module(self):
        return BertClassifier(vocab_size=self.V, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                              max_position_embeddings=8, dropout_rate=0.0, attention_dropout_rate=0.0, num_classes=3,
                              classifier_dropout=0.0)

    def masked_keys(self, inputs):
        dead = (inputs["tokens"] == 0)[:, :, None, None]
        return [Poison(module=f"bert/layers_*/self_attention/{kv}", dead=dead) for kv in ("key", "value")]


# ----------------------------------------------------------------------------------------------------------
# The cloze readers: token ids of a document, a query and candidates (0 = padding) -> candidate probabilities.


class _Reader(contract.LayerContract):
    """A document of 6 tokens (row 1: 4), a query of 4 (row 0: 2), 3 candidates (row 1: 2, then a 0)."""

    B, S, T, V = 2, 6, 4, 11
    SKIP = {"step": "a reader reads the whole document: there is no decoding step"}

    def make_inputs(self, rng):
        document = rng.integers(1, self.V, (self.B, self.S)).astype(np.int32)
        document[1, 4:] = 0
        query = rng.integers(1, self.V, (self.B, self.T)).astype(np.int32)
        query[0, 2:] = 0
        candidates = np.stack([document[0, :3], [document[1, 0], document[1, 3], 0]]).astype(np.int32)
        return dict(document=jnp.asarray(document), query=jnp.asarray(query), candidates=jnp.asarray(candidates))

    def _padded(self, inputs):
        return (inputs["document"] == 0)[..., None], (inputs["query"] == 0)[..., None]

    def masked_inputs(self, inputs):
        # NaN in the embeddings of padded tokens (document and query share one embedding call).
        document, query = self._padded(inputs)
        return [Poison(module="embed", dead=jnp.concatenate([document, query], axis=1))]

    def bad_inputs(self, inputs):
        document, query, candidates = inputs["document"], inputs["query"], inputs["candidates"]
        return [("document of rank 1", {**inputs, "document": document.reshape(-1)}, ("document", (self.B * self.S,))),
                ("query of another batch", {**inputs, "query": query[:1]}, ("query", (1, self.T))),
                ("candidates of rank 3", {**inputs, "candidates": candidates[..., None]},
                 ("candidates", (self.B, 3, 1)))]


class AttentionSumReaderContractTest(_Reader):
    """The Attention Sum Reader (arXiv:1603.01547): separate document and query BiGRUs."""

    def make_module(self):
        return AttentionSumReader(vocab_size=self.V, embed_dim=4, hidden_size=3)

    def masked_keys(self, inputs):
        # The contextual embeddings f_i(d) the attention reads, at padded document tokens.
        return [Poison(module="", method="encode", index="document", dead=self._padded(inputs)[0])]


class AttentionOverAttentionReaderContractTest(_Reader):
    """The Attention-over-Attention Reader (arXiv:1607.04423): one BiGRU shared by document and query."""

    def make_module(self):
        return AttentionOverAttentionReader(vocab_size=self.V, embed_dim=4, hidden_size=3)

    def masked_keys(self, inputs):
        # h_doc and h_query, which M = h_doc h_query^T pairs, at padded tokens.
        document, query = self._padded(inputs)
        return [Poison(module="", method="encode", index="document", dead=document),
                Poison(module="", method="encode", index="query", dead=query)]


if __name__ == "__main__":
    absltest.main()
