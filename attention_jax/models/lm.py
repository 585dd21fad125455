"""A decoder-only causal Transformer language model: the long-context model of the sequence-parallel runs.

The stack is the Transformer decoder of Vaswani et al. 2017 (arXiv:1706.03762, §3.1) without cross-attention,
as in GPT (Radford et al. 2018): token embeddings (scaled by sqrt(D), shared with the output projection,
§3.4), then L pre-LN blocks (Xiong et al. 2020, arXiv:2002.04745)

    x = x + SelfAttention(LayerNorm(x))   causal, RoPE positions (Su et al. 2021, arXiv:2104.09864)
    x = x + FFN(LayerNorm(x))             FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (§3.3, eq. 2)

and a final LayerNorm. The self-attention is `attention_jax.layers.MultiHeadAttention` with the model's
`implementation`, so the same parameters run on one device (xla, blockwise, flash) or with the sequence split
over a mesh axis (`RingBackend`, `UlyssesBackend`): RoPE and the causal mask use global positions, which is
what lets a ring of devices hold one sequence between them. Parameters and the residual stream carry the
logical axis names of `attention_jax.core.axes`.

Decoding: `TransformerLM(decode=True)` keeps `MultiHeadAttention`'s key/value caches; initialise them with a
[B, T_max] batch and feed one token per `apply(..., mutable=["cache"])` call.

Letters: B batch, T length, D = d_model, N heads, K key/value heads, H head dim, F = d_ff, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.models.transformer import FeedForward

Array = jax.Array

__all__ = ["TransformerLM"]


class _Block(nn.Module):
    """One pre-LN decoder block: causal self-attention, then the FFN, each in a residual branch."""

    num_heads: int
    num_kv_heads: int | None
    head_dim: int | None
    d_ff: int
    implementation: Any
    decode: bool
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None, segment_ids: Array | None) -> Array:
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="attention_norm",
                         **axes.norm_inits())(x)
        h = MultiHeadAttention(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                               positions="rope", implementation=self.implementation, decode=self.decode,
                               dtype=self.dtype, param_dtype=self.param_dtype, name="attention")(
            h, is_causal=True, key_lengths=lengths, segment_ids=segment_ids)  # [B, T, D]
        x = axes.constrain(x + h, (axes.BATCH, axes.LENGTH, axes.EMBED))
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ffn_norm", **axes.norm_inits())(x)
        h = FeedForward(self.d_ff, dtype=self.dtype, param_dtype=self.param_dtype, name="ffn")(h)
        return axes.constrain(x + h, (axes.BATCH, axes.LENGTH, axes.EMBED))  # [B, T, D]


class TransformerLM(nn.Module):
    """A causal Transformer language model, logits[b, t] = p(token t+1 | tokens <= t) (see the module docstring).

    Attributes:
      vocab_size: V.
      d_model: D.
      num_heads: N.
      num_layers: L, the number of blocks.
      d_ff: F, the FFN width.
      head_dim: H; None means D // N.
      num_kv_heads: K for grouped-query attention; None means N.
      implementation: the `dot_product_attention` backend of every self-attention: None, a name ("xla",
        "blockwise", "flash", "ring", "ulysses", ...) or a `Backend` object (e.g. `RingBackend(mesh=mesh)`).
      decode: keep key/value caches for one-token steps.
      dtype: the compute dtype (None: float32 from the parameters); logits are float32.
      param_dtype: the parameter dtype.

    Raises:
      ValueError: at construction, if V, D, N, L or F is not a positive int (MultiHeadAttention checks N, K
        and H when it is built).
    """

    vocab_size: int
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 512
    head_dim: int | None = None
    num_kv_heads: int | None = None
    implementation: Any = None
    decode: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.flag("decode", self.decode)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: Array, lengths: Array | None = None, segment_ids: Array | None = None) -> Array:
        """Next-token logits of every position.

        Args:
          tokens: [B, T] integer ids in [0, V). When decoding, [B, 1]: the next token of each row.
          lengths: None or [B] integer: positions t >= lengths[b] are padding (their keys are masked; their
            logits are computed but meaningless). Not when decoding.
          segment_ids: None or [B, T] integer: packed documents; a token attends only within its segment.
            Not when decoding.

        Returns:
          logits [B, T, V] float32.

        Raises:
          ValueError: if tokens is not [B, T], lengths is not [B], segment_ids is not [B, T], or lengths or
            segment ids are given when decoding.
          TypeError: if tokens, lengths or segment ids are not integer arrays.
        """
        _checks.tokens("tokens", tokens, 2)
        batch, length = tokens.shape
        if lengths is not None:
            _checks.integer("lengths", lengths)
            _checks.shape("lengths", lengths, (batch,))
        if segment_ids is not None:
            _checks.integer("segment_ids", segment_ids)
            _checks.shape("segment_ids", segment_ids, (batch, length))
        if self.decode and (lengths is not None or segment_ids is not None):
            raise ValueError("a decoding TransformerLM takes one token per row and no lengths or segment_ids")
        embed = nn.Embed(self.vocab_size, self.d_model, param_dtype=self.param_dtype, name="embed",
                         embedding_init=axes.embed_init(nn.initializers.normal(stddev=self.d_model ** -0.5)))
        x = embed(tokens) * jnp.sqrt(jnp.float32(self.d_model))  # [B, T, D]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        for i in range(self.num_layers):
            x = _Block(self.num_heads, self.num_kv_heads, self.head_dim, self.d_ff, self.implementation,
                       self.decode, self.dtype, self.param_dtype, name=f"block_{i}")(x, lengths, segment_ids)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm", **axes.norm_inits())(x)
        logits = embed.attend(x.astype(jnp.float32))  # [B, T, V] float32 (tied output projection, §3.4)
        return axes.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
