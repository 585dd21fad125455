"""Transformer-XL: the language model over segments with cached per-layer memories.

Dai et al. 2019, "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context", arXiv:1901.02860.
The relative attention itself is `attention_jax.layers.relative`.

  - `update_memory`: the segment-level recurrence of §3.2, the next memory without gradient.
  - `TransformerXLLayer`: relative attention + position-wise FFN with residuals and LayerNorm (post-LN, or pre-LN).
  - `TransformerXLLM`: the language model: scaled embeddings, a stack of layers with per-layer memories, output
    projection tied to the embedding; returns logits and the next memories (§3.2).

Letters (beyond the package legend): M = memory length, L = M + T = key length (the package's S).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.layers.relative import RelativeMultiHeadAttention, causal_memory_mask

_F32 = jnp.float32

__all__ = ["TransformerXLLM", "TransformerXLLayer", "update_memory"]


def update_memory(memory: jax.Array | None, hidden: jax.Array, mem_len: int) -> jax.Array:
    """The next segment's memory: the last mem_len rows of [memory; hidden], without gradient (arXiv:1901.02860, §3.2).

    Implements m_{tau+1} = SG([m_tau ; h_tau]) truncated to the most recent mem_len positions. When fewer than
    mem_len rows exist (early segments) all M + T rows are kept.

    Args:
      memory: None or [B, M, D] floating, the current memory (None means M = 0).
      hidden: [B, T, D] floating, this segment's hidden states (the layer's input).
      mem_len: a Python int >= 0.

    Returns:
      [B, min(mem_len, M + T), D] in the dtype of the concatenation, under jax.lax.stop_gradient.

    Raises:
      ValueError: for wrong ranks, B or D that differ, or mem_len not a non-negative int.
      TypeError: for non-floating inputs.
    """
    _checks.rank("hidden", hidden, 3)
    _checks.floating("hidden", hidden)
    mem_len = _checks.positive_int("mem_len", mem_len, allow_zero=True)
    if memory is not None:
        _checks.rank("memory", memory, 3)
        _checks.floating("memory", memory)
        if jnp.shape(memory)[0] != jnp.shape(hidden)[0] or jnp.shape(memory)[2] != jnp.shape(hidden)[2]:
            raise ValueError(f"memory and hidden disagree on B or D: {jnp.shape(memory)=} {jnp.shape(hidden)=}")
        hidden = jnp.concatenate([memory, hidden], axis=1)  # [B, M + T, D]
    total = jnp.shape(hidden)[1]
    keep = min(mem_len, total)
    return jax.lax.stop_gradient(hidden[:, total - keep:])


def _as_memory_list(memories: Any, num_layers: int, batch: int, features: int) -> list[jax.Array | None]:
    """Checks the per-layer memories of `TransformerXLLM` and returns them as a list (None -> Nones)."""
    if memories is None:
        return [None] * num_layers
    if not isinstance(memories, (list, tuple)):
        raise TypeError(f"memories must be None or a list of {num_layers} arrays [B, M, D], got {type(memories)}")
    if len(memories) != num_layers:
        raise ValueError(f"memories must hold one [B, M, D] array per layer: {len(memories)=} {num_layers=}")
    shapes = set()
    for layer, memory in enumerate(memories):
        _checks.rank(f"memories[{layer}]", memory, 3)
        _checks.floating(f"memories[{layer}]", memory)
        shapes.add(tuple(jnp.shape(memory)))
    if len(shapes) != 1:
        raise ValueError(f"every layer's memory must have the same shape [B, M, D], got {sorted(shapes)}")
    (mb, _, md), = shapes
    if (mb, md) != (batch, features):
        raise ValueError(f"memories must be [B, M, D] with B={batch}, D={features}: got {(mb, _, md)}")
    return list(memories)


class TransformerXLLayer(nn.Module):
    """One Transformer-XL block: relative attention over [memory; segment] and a position-wise FFN (arXiv:1901.02860).

    Post-LN, as in the paper (§3.3, the equations at the end of the section and appendix's "Transformer-XL"
    computation):

        a = LayerNorm(h + Dropout(RelAttn(h, [SG(m); h])))
        out = LayerNorm(a + Dropout(W_2 Dropout(ReLU(W_1 a + b_1)) + b_2))

    With ``pre_norm`` the LayerNorms move in front of each sub-layer (h + Attn(LN(h), LN(m)), then
    a + FFN(LN(a))); the caller adds a final LayerNorm (`TransformerXLLM` does).

    Attributes:
      num_heads: N.
      head_dim: H.
      d_inner: the FFN's hidden width (the paper's d_inner; 4 * D is usual).
      dropout_rate: dropout on the attention output, the FFN hidden layer and the FFN output.
      pre_norm: LayerNorm before each sub-layer instead of after the residual.
      param_dtype: the parameter dtype.

    Raises:
      ValueError: at construction, for sizes that are not ints >= 1 or a dropout rate outside [0, 1).
      TypeError: at construction, if pre_norm is not a bool.
    """

    num_heads: int
    head_dim: int
    d_inner: int
    dropout_rate: float = 0.0
    pre_norm: bool = False
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("num_heads", "head_dim", "d_inner"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.rate("dropout_rate", self.dropout_rate)
        _checks.flag("pre_norm", self.pre_norm)
        super().__post_init__()

    @nn.compact
    def __call__(self, h: jax.Array, memory: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        """Runs the block on one segment.

        Args:
          h: [B, T, D] floating, this segment's input hidden states.
          memory: None or [B, M, D] floating, this layer's memory (cached inputs of earlier segments); it gets no
            gradient.
          train: enables dropout (needs a "dropout" rng).

        Returns:
          [B, T, D] in h's dtype.

        Raises:
          ValueError: for wrong ranks, or memory and h that disagree on B or D.
          TypeError: for non-floating inputs, or a train flag that is not a bool.
        """
        _checks.flag("train", train)
        _checks.rank("h", h, 3)
        _checks.floating("h", h)
        d_inner = self.d_inner
        features = jnp.shape(h)[-1]
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        attention = RelativeMultiHeadAttention(self.num_heads, self.head_dim, causal=True,
                                               param_dtype=self.param_dtype, name="attention")
        attn_norm = nn.LayerNorm(param_dtype=self.param_dtype, name="attention_norm", **axes.norm_inits())
        ffn_norm = nn.LayerNorm(param_dtype=self.param_dtype, name="ffn_norm", **axes.norm_inits())

        def ffn(x: jax.Array) -> jax.Array:
            y = nn.Dense(d_inner, param_dtype=self.param_dtype, name="ffn_in",
                         **axes.dense_inits(axes.EMBED, axes.MLP))(x)  # [B, T, d_inner]
            y = drop(nn.relu(axes.constrain(y, (axes.BATCH, axes.LENGTH, axes.MLP))))
            return nn.Dense(features, param_dtype=self.param_dtype, name="ffn_out",
                            **axes.dense_inits(axes.MLP, axes.EMBED))(y)  # [B, T, D]

        if self.pre_norm:
            normed_memory = None if memory is None else attn_norm(jax.lax.stop_gradient(memory))
            a = h + drop(attention(attn_norm(h), normed_memory))  # [B, T, D]
            out = a + drop(ffn(ffn_norm(a)))  # [B, T, D]
        else:
            a = attn_norm(h + drop(attention(h, memory)))  # [B, T, D]
            out = ffn_norm(a + drop(ffn(a)))  # [B, T, D]
        return axes.constrain(out.astype(h.dtype), (axes.BATCH, axes.LENGTH, axes.EMBED))


class TransformerXLLM(nn.Module):
    """Transformer-XL language model with segment-level recurrence (Dai et al. 2019, arXiv:1901.02860, §3.2-3.3).

    tokens -> embedding * sqrt(D) -> dropout -> num_layers `TransformerXLLayer` blocks (each attending to its own
    memory) -> (final LayerNorm if pre_norm) -> dropout -> logits through the tied embedding matrix.

    Recurrence (§3.2): the memory of layer l for the next segment is SG([m^l; h^l]) truncated to the last mem_len
    positions, where h^l is the *input* of layer l on this segment (h^0 = the scaled embeddings), computed by
    `update_memory`. The parameters do not depend on M, so a model trained with one memory length can be evaluated
    with a longer one (§4, the "attention length" of the evaluation): pass ``mem_len=`` to `__call__`.

    Attributes:
      vocab_size: V.
      num_layers: the number of blocks.
      num_heads: N.
      head_dim: H.
      d_model: D.
      d_inner: FFN width.
      mem_len: the memory length the returned memories keep (training's M).
      dropout_rate: dropout on the embeddings, inside each block and before the output projection.
      pre_norm: pre-LayerNorm blocks plus a final LayerNorm (the paper's blocks are post-LN).
      param_dtype: the parameter dtype.

    Raises:
      ValueError: at construction, for sizes that are not ints >= 1 (mem_len >= 0) or a dropout rate outside
        [0, 1).
      TypeError: at construction, if pre_norm is not a bool.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    d_model: int
    d_inner: int
    mem_len: int
    dropout_rate: float = 0.0
    pre_norm: bool = False
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "num_heads", "head_dim", "d_model", "d_inner"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.int_at_least("mem_len", self.mem_len, 0)
        _checks.rate("dropout_rate", self.dropout_rate)
        _checks.flag("pre_norm", self.pre_norm)
        super().__post_init__()

    def init_memories(self, batch: int, mem_len: int | None = None, dtype: Any = jnp.float32) -> list[jax.Array]:
        """Zero memories, one [B, M, D] array per layer (the reference TF code starts from zeros too).

        A zero memory is attended like any other (its keys are W_k 0 = 0, so only the position terms score it);
        pass ``memories=None`` instead for a segment with no context at all. Fixed-shape zeros keep one jit trace.

        Args:
          batch: B >= 1.
          mem_len: M >= 0; None means the ``mem_len`` attribute.
          dtype: the memories' dtype.

        Returns:
          A list of num_layers zero arrays [B, M, D].

        Raises:
          ValueError: if batch < 1 or M < 0.
        """
        batch = _checks.positive_int("batch", batch)
        mem_len = _checks.positive_int("mem_len", self.mem_len if mem_len is None else mem_len, allow_zero=True)
        return [jnp.zeros((batch, mem_len, self.d_model), dtype) for _ in range(self.num_layers)]

    @nn.compact
    def __call__(self, tokens: jax.Array, memories: Any = None, train: bool = False,
                 mem_len: int | None = None) -> tuple[jax.Array, list[jax.Array]]:
        """Scores one segment given the memories of the earlier ones.

        Args:
          tokens: [B, T] int32 (any integer dtype) token ids in [0, V).
          memories: None (no context) or a list of num_layers arrays [B, M, D] floating, all of one shape, e.g.
            the ``new_memories`` of the previous segment or `init_memories`.
          train: enables dropout (needs a "dropout" rng).
          mem_len: the length of the returned memories; None means the ``mem_len`` attribute. Evaluating with a
            longer memory than training only changes this.

        Returns:
          (logits [B, T, V] float32, new_memories: list of num_layers arrays [B, min(mem_len, M + T), D] float32,
          under stop_gradient).

        Raises:
          ValueError: for tokens not of rank 2, memories of the wrong count or shape, or bad sizes.
          TypeError: for non-integer tokens, memories that are not a list or not floating.
        """
        _checks.flag("train", train)
        _checks.rank("tokens", tokens, 2)
        _checks.integer("tokens", tokens)
        mem_len = _checks.positive_int("mem_len", self.mem_len if mem_len is None else mem_len, allow_zero=True)
        batch = jnp.shape(tokens)[0]
        memories = _as_memory_list(memories, self.num_layers, batch, self.d_model)
        embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=axes.embed_init(nn.initializers.normal(0.02)),
                         param_dtype=self.param_dtype, name="embed")
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = embed(tokens) * jnp.asarray(math.sqrt(self.d_model), self.param_dtype)  # [B, T, D]
        x = drop(axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED)))
        new_memories = []
        for layer, memory in enumerate(memories):
            new_memories.append(update_memory(memory, x.astype(_F32), mem_len))  # [B, min(mem_len, M + T), D]
            x = TransformerXLLayer(self.num_heads, self.head_dim, self.d_inner, dropout_rate=self.dropout_rate,
                                   pre_norm=self.pre_norm, param_dtype=self.param_dtype,
                                   name=f"layer_{layer}")(x, memory, train=train)  # [B, T, D]
        if self.pre_norm:
            x = nn.LayerNorm(param_dtype=self.param_dtype, name="final_norm", **axes.norm_inits())(x)
        x = drop(x)
        logits = embed.attend(x.astype(self.param_dtype)).astype(_F32)  # [B, T, V], tied output projection
        return axes.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB)), new_memories
