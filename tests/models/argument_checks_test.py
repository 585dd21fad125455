"""The models' construction and call checks go through attention_jax._checks (issue 9): flags must be bools,
sizes ints, rates in [0, 1) and choices known, and every error names the offending argument and value."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax.models import convs2s, seq2seq, transformer, transformer_xl


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


_SEQ2SEQ = dict(vocab_size=11, embed_dim=4, hidden_size=4, attention="bahdanau")
_TRANSFORMER = dict(vocab_size=11, d_model=8, num_heads=2, d_ff=16, num_encoder_layers=1, num_decoder_layers=1,
                    max_len=8)
_CONVS2S = dict(vocab_size=11, embed_dim=4, hidden_size=4, num_encoder_layers=1, num_decoder_layers=1, max_len=8)
_TXL = dict(vocab_size=11, num_layers=1, num_heads=2, head_dim=2, d_model=4, d_inner=8, mem_len=2)


class ConstructionTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("seq2seq_bidirectional", seq2seq.Seq2Seq, _SEQ2SEQ, "bidirectional", "yes"),
        ("seq2seq_input_feeding", seq2seq.Seq2Seq, _SEQ2SEQ, "input_feeding", 0),
        ("encoder_bidirectional", seq2seq.Encoder, dict(vocab_size=11, embed_dim=4, hidden_size=4), "bidirectional",
         "no"),
        ("transformer_share_embeddings", transformer.Transformer, _TRANSFORMER, "share_embeddings", "True"),
        ("transformer_decode", transformer.Transformer, _TRANSFORMER, "decode", 1),
        ("convs2s_scale_context", convs2s.ConvS2S, _CONVS2S, "scale_context", "yes"),
        ("txl_pre_norm", transformer_xl.TransformerXLLM, _TXL, "pre_norm", 1),
        ("txl_layer_pre_norm", transformer_xl.TransformerXLLayer, dict(num_heads=2, head_dim=2, d_inner=8),
         "pre_norm", "no"),
    )
    def test_flags_must_be_bools(self, cls, kwargs, name, bad):
        with _raises(TypeError, name, repr(bad)):
            cls(**kwargs, **{name: bad})

    @parameterized.named_parameters(
        ("transformer_rate", transformer.Transformer, _TRANSFORMER, "dropout_rate", 1.5),
        ("transformer_rate_bool", transformer.Transformer, _TRANSFORMER, "relu_dropout_rate", True),
        ("transformer_norm", transformer.Transformer, _TRANSFORMER, "norm", "middle"),
        ("transformer_positions", transformer.Transformer, _TRANSFORMER, "positions", "absolute"),
        ("txl_rate", transformer_xl.TransformerXLLM, _TXL, "dropout_rate", -0.1),
        ("txl_mem_len", transformer_xl.TransformerXLLM, _TXL, "mem_len", -1),
        ("txl_heads", transformer_xl.TransformerXLLM, _TXL, "num_heads", 0),
        ("txl_layer_d_inner", transformer_xl.TransformerXLLayer, dict(num_heads=2, head_dim=2, d_inner=8), "d_inner",
         2.0),
    )
    def test_values_out_of_range(self, cls, kwargs, name, bad):
        with _raises(ValueError, name, repr(bad)):
            cls(**{**kwargs, name: bad})

    def test_label_smoothing_rate(self):
        logits, labels = jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32)
        with _raises(ValueError, "smoothing", "1.0"):
            transformer.label_smoothed_cross_entropy(logits, labels, smoothing=1.0)


class CallTest(parameterized.TestCase):

    def test_train_must_be_a_bool(self):
        # A string train flag used to be truthy (dropout on) or, negated, silently deterministic.
        src, lengths, tgt = jnp.ones((2, 3), jnp.int32), jnp.array([3, 2]), jnp.ones((2, 4), jnp.int32)
        for module, args in ((seq2seq.Seq2Seq(**_SEQ2SEQ), (src, lengths, tgt)),
                             (transformer.Transformer(**_TRANSFORMER), (src, lengths, tgt)),
                             (convs2s.ConvS2S(**_CONVS2S), (src, lengths, tgt)),
                             (transformer_xl.TransformerXLLM(**_TXL), (src,))):
            with _raises(TypeError, "train", "'no'"):
                module.init(jax.random.key(0), *args, train="no")

    def test_lists_are_rejected_by_name(self):
        src, lengths, tgt = np.ones((2, 3), np.int32), np.array([3, 2]), np.ones((2, 4), np.int32)
        for module in (seq2seq.Seq2Seq(**_SEQ2SEQ), transformer.Transformer(**_TRANSFORMER),
                       convs2s.ConvS2S(**_CONVS2S)):
            with _raises(TypeError, "src", "list"):
                module.init(jax.random.key(0), src.tolist(), lengths, tgt)
            with _raises(TypeError, "tgt_in", "list"):
                module.init(jax.random.key(0), src, lengths, tgt.tolist())
        with _raises(TypeError, "tokens", "list"):
            transformer_xl.TransformerXLLM(**_TXL).init(jax.random.key(0), src.tolist())

    def test_encoder_lengths(self):
        encoder = seq2seq.Encoder(vocab_size=11, embed_dim=4, hidden_size=4)
        tokens = jnp.ones((2, 3), jnp.int32)
        with _raises(TypeError, "lengths", "list"):
            encoder.init(jax.random.key(0), tokens, [3, 2])
        with _raises(TypeError, "lengths", "float32"):
            encoder.init(jax.random.key(0), tokens, jnp.array([3.0, 2.0]))


if __name__ == "__main__":
    absltest.main()
