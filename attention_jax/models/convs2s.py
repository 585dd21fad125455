"""Convolutional sequence to sequence learning with multi-step attention (ConvS2S).

Gehring et al. 2017, "Convolutional Sequence to Sequence Learning", arXiv:1705.03122.

* Embeddings (§3.1): e_j = w_j + p_j, a token embedding plus a learned absolute position embedding, for the
  source and (as g_i) for the target.
* Convolutional blocks (§3.2): a 1-D convolution of width k maps C channels to 2C, and the gated linear unit
  GLU([A; B]) = A ⊗ σ(B) brings them back to C. A residual connection adds the block input, and the sum is
  scaled by sqrt(0.5) (§3.4). Encoder convolutions are 'SAME' (a token sees k // 2 neighbours on each side);
  decoder convolutions are causal (k - 1 zeros on the left, none on the right).
* Multi-step attention (§3.3, eqs. 1-2): every decoder layer l attends on its own. Its query is the layer's
  GLU output projected to the embedding size and added to the target embedding,
  d_i^l = W_d^l h_i^l + b_d^l + g_i; a_ij^l = softmax_j(d_i^l · z_j^u) over the encoder outputs z^u, and the
  conditional input c_i^l = sum_j a_ij^l (z_j^u + e_j) takes the encoder outputs plus the source embeddings as
  values. c_i^l is projected back to C channels and added to h_i^l, scaled by sqrt(0.5) (§3.4).
* Scaling (§3.4): c_i is a weighted sum of m vectors, so it is multiplied by m sqrt(1/m) (m = the number of valid
  source positions of the sentence) to undo the variance the averaging removes, assuming uniform weights.

Shape letters follow the package legend (B, T, S, D, V), plus E the embedding size (D of the attention), C the
convolution channels (the paper's hidden size) and W the kernel width k.

The teacher-forced pass (`ConvS2S.__call__`) and one-token decoding (`ConvS2S.decode_step`, which keeps the last
k - 1 inputs of every decoder convolution in its state) call the same layers with the same parameters, so the two
agree to float32 rounding. `ConvS2S` implements the decoding protocol of `attention_jax.models.decoding`
(`init_decode`, `decode_next`), so `decoding.prepare` turns it into the step function the decoders consume.

Not reproduced from the paper: the gradient scaling of the encoder output by 1/(2 * #attention layers) (§3.4) and
weight normalisation (§3.5); the weight initialisation of §3.5 is followed for the convolutions (N(0, sqrt(4p/n_l)),
p the retain probability of dropout) and lecun-normal (N(0, sqrt(1/n_l))) is used for the linear layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes, masks
from attention_jax.layers.multistep import MultiStepAttention
from attention_jax.models import decoding

Array = jax.Array
PyTree = Any

_F32 = jnp.float32
_SQRT_HALF = math.sqrt(0.5)


# ----------------------------------------------------------------------------------------------
# Pure functions.
# ----------------------------------------------------------------------------------------------


def glu(x: Array) -> Array:
    """Gated linear unit GLU([A; B]) = A ⊗ σ(B) over the last axis (arXiv:1705.03122, §3.2).

    Args:
      x: [..., 2C] floating; A is the first half of the last axis, B the second.

    Returns:
      [..., C] in the dtype of x.

    Raises:
      TypeError: if x is not floating.
      ValueError: if x is a scalar or its last axis has odd size.
    """
    _checks.floating("x", x)
    if jnp.ndim(x) == 0 or jnp.shape(x)[-1] % 2:
        raise ValueError(f"glu needs an even-sized last axis, got shape {jnp.shape(x)}")
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)


def _windows(x: Array, kernel_size: int, left: int, right: int) -> Array:
    """[B, T, C] -> [B, T, W, C]: for each t the inputs t - left .. t + right, zero-padded at the ends."""
    length = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    return jnp.stack([padded[:, j:j + length] for j in range(kernel_size)], axis=2)


# ----------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------


class GLUConv(nn.Module):
    """A 1-D convolution to 2C channels followed by a GLU (arXiv:1705.03122, §3.2), without the residual.

    Kernel [W, C_in, 2C] initialised N(0, sqrt(4 p / (W C_in))), p = 1 - dropout_rate (§3.5); bias zeros.

    Attributes:
      in_features: C_in.
      features: C, the output channels (the convolution itself has 2C).
      kernel_size: W = k >= 1.
      retain: p, the dropout retain probability used by the initialisation.
      param_dtype: dtype of the parameters.
    """

    in_features: int
    features: int
    kernel_size: int
    retain: float = 1.0
    param_dtype: Any = jnp.float32

    def setup(self):
        std = math.sqrt(4.0 * self.retain / (self.kernel_size * self.in_features))
        # [W, C_in, 2C]: the width is never sharded; C_in and the 2C outputs are both conv channels ("mlp"
        # names only one axis of an array, so the input side stays whole).
        self.kernel = self.param("kernel", axes.partitioned(nn.initializers.normal(std), (None, None, axes.MLP)),
                                 (self.kernel_size, self.in_features, 2 * self.features), self.param_dtype)
        self.bias = self.param("bias", axes.partitioned(nn.initializers.zeros, (axes.MLP,)), (2 * self.features,),
                               self.param_dtype)

    def __call__(self, x: Array, causal: bool) -> Array:
        """Convolves a whole sequence.

        Args:
          x: [B, T, C_in] floating.
          causal: True pads W - 1 zeros on the left (decoder); False pads (W - 1) // 2 left and W // 2 right
            ('SAME', encoder).

        Returns:
          [B, T, C] float32.
        """
        w = self.kernel_size
        left, right = (w - 1, 0) if causal else ((w - 1) // 2, w // 2)
        windows = _windows(x.astype(_F32), w, left, right)  # [B,T,W,C_in]
        return self.step(windows)

    def step(self, window: Array) -> Array:
        """Applies the convolution to explicit windows.

        Args:
          window: [..., W, C_in] floating, the W inputs that one output position sees, oldest first.

        Returns:
          [..., C] float32.
        """
        out = jnp.einsum("...WC,WCO->...O", window.astype(_F32), self.kernel.astype(_F32)) + self.bias  # [...,2C]
        return glu(out.astype(_F32))


class ConvS2S(nn.Module):
    """The ConvS2S encoder-decoder (Gehring et al. 2017, arXiv:1705.03122), with `Seq2Seq`'s interface.

    Encoder: e = embed(src) + pos(0..S-1) (§3.1) -> Dense(C) -> ``num_encoder_layers`` blocks
    x <- (GLU(conv_SAME(x)) + x) sqrt(0.5) (§3.2, §3.4; padded positions are zeroed before every convolution so
    padding never leaks into valid ones) -> Dense(E) = z. Memory values are z + e (§3.3).

    Decoder: g = embed(tgt_in) + pos(0..T-1) -> Dense(C) -> ``num_decoder_layers`` layers
    h = GLU(causal_conv(x)); c = MultiStepAttention(h, g, z, z + e) (eqs. 1-2, own W_d^l, b_d^l per layer);
    h <- (h + Dense_C(c)) sqrt(0.5); x <- (h + x) sqrt(0.5) -> Dense(E) -> Dense(V) = logits.

    Dropout (``train=True``, rng "dropout", §3.5): on the embeddings, on the input of every convolution and on
    the decoder output before the vocabulary projection.

    Memory (`encode`): dict ``encoder_out`` z [B,S,E] f32, ``encoder_in`` z + e [B,S,E] f32 (both zero at padded
    positions), ``mask`` [B,S] bool, ``lengths`` [B] int32. State (`init_state`): dict ``conv``, a tuple over
    decoder layers of the last W - 1 inputs of that layer's convolution, [B,W-1,C] f32 (zeros at the start,
    which is the causal left padding). Every leaf has the batch as leading axis (`attention_jax.models.decoding`).

    Attributes:
      vocab_size: V (one joint vocabulary).
      embed_dim: E.
      hidden_size: C, the convolution channels.
      num_encoder_layers, num_decoder_layers: >= 1.
      kernel_size: W = k >= 1.
      dropout_rate: in [0, 1).
      max_len: number of learned positions; S and T must not exceed it.
      scale_context: the m sqrt(1/m) scaling of §3.4 in every attention.
      param_dtype: dtype of the parameters.

    Raises (at construction):
      ValueError: sizes that are not positive ints, a dropout rate outside [0, 1).
    """

    vocab_size: int
    embed_dim: int = 256
    hidden_size: int = 256
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    kernel_size: int = 3
    dropout_rate: float = 0.0
    max_len: int = 256
    scale_context: bool = True
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for what in ("vocab_size", "embed_dim", "hidden_size", "num_encoder_layers", "num_decoder_layers",
                     "kernel_size", "max_len"):
            _checks.int_at_least(what, getattr(self, what), 1)
        _checks.rate("dropout_rate", self.dropout_rate)
        _checks.flag("scale_context", self.scale_context)
        super().__post_init__()

    def setup(self):
        e, c, dt = self.embed_dim, self.hidden_size, self.param_dtype
        normal = nn.initializers.normal(0.1)  # §3.5
        word_init, pos_init = axes.embed_init(normal), axes.embed_init(normal, (None, axes.EMBED))
        retain = 1.0 - self.dropout_rate
        self.src_embed = nn.Embed(self.vocab_size, e, embedding_init=word_init, param_dtype=dt)
        self.src_pos = nn.Embed(self.max_len, e, embedding_init=pos_init, param_dtype=dt)
        self.tgt_embed = nn.Embed(self.vocab_size, e, embedding_init=word_init, param_dtype=dt)
        self.tgt_pos = nn.Embed(self.max_len, e, embedding_init=pos_init, param_dtype=dt)
        # E is the embedding width ("embed"), C the convolution channels ("mlp").
        to_c, to_e = axes.dense_inits(axes.EMBED, axes.MLP), axes.dense_inits(axes.MLP, axes.EMBED)
        self.enc_in = nn.Dense(c, param_dtype=dt, **to_c)
        self.enc_convs = [GLUConv(c, c, self.kernel_size, retain, dt) for _ in range(self.num_encoder_layers)]
        self.enc_out = nn.Dense(e, param_dtype=dt, **to_e)
        self.dec_in = nn.Dense(c, param_dtype=dt, **to_c)
        self.dec_convs = [GLUConv(c, c, self.kernel_size, retain, dt) for _ in range(self.num_decoder_layers)]
        self.attention = [MultiStepAttention(self.scale_context, dt) for _ in range(self.num_decoder_layers)]
        self.attn_out = [nn.Dense(c, param_dtype=dt, **to_c) for _ in range(self.num_decoder_layers)]
        self.dec_out = nn.Dense(e, param_dtype=dt, **to_e)
        self.logits_proj = nn.Dense(self.vocab_size, param_dtype=dt, **axes.dense_inits(axes.EMBED, axes.VOCAB))
        self.dropout = nn.Dropout(self.dropout_rate)

    def _check_length(self, what: str, length: int) -> None:
        if length > self.max_len:
            raise ValueError(f"{what} length {length} exceeds max_len={self.max_len} (the learned positions)")

    def encode(self, src: Array, src_lengths: Array, train: bool = False) -> dict[str, Array]:
        """Runs the convolutional encoder once per sentence.

        Args:
          src: [B, S] int32 source tokens; anything beyond src_lengths is ignored.
          src_lengths: [B] int32.
          train: enables dropout.

        Returns:
          memory: dict ``encoder_out`` [B,S,E] f32, ``encoder_in`` [B,S,E] f32, ``mask`` [B,S] bool,
          ``lengths`` [B] int32.

        Raises:
          ValueError: src not 2-D, src_lengths not [B], S > max_len.
          TypeError: non-integer src or src_lengths, or a train flag that is not a bool.
        """
        _checks.flag("train", train)
        _checks.tokens("src", src, 2)
        _checks.tokens("src_lengths", src_lengths, 1)
        if src_lengths.shape[0] != src.shape[0]:
            raise ValueError(f"src and src_lengths batch differ: {src.shape=} {src_lengths.shape=}")
        batch, length = src.shape
        self._check_length("source", length)
        lengths = src_lengths.astype(jnp.int32)
        mask = masks.padding_mask(lengths, length)  # [B,S]
        keep = mask[..., None]  # [B,S,1]
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        emb = (self.src_embed(src) + self.src_pos(positions)).astype(_F32)  # e, [B,S,E]
        emb = jnp.where(keep, emb, 0.0)
        x = self.enc_in(self.dropout(emb, deterministic=not train))  # [B,S,C]
        for conv in self.enc_convs:
            block_in = jnp.where(keep, x, 0.0)
            x = (conv(self.dropout(block_in, deterministic=not train), causal=False) + block_in) * _SQRT_HALF
        z = jnp.where(keep, self.enc_out(x).astype(_F32), 0.0)  # [B,S,E]
        return {"encoder_out": z, "encoder_in": z + emb, "mask": mask, "lengths": lengths}

    def init_state(self, memory: Mapping[str, Array]) -> dict[str, Any]:
        """Empty convolution buffers: the causal left padding.

        Args:
          memory: the output of `encode`.

        Returns:
          state: dict ``conv``, a tuple over decoder layers of zeros [B, W-1, C] float32.
        """
        batch = memory["mask"].shape[0]
        shape = (batch, self.kernel_size - 1, self.hidden_size)
        return {"conv": tuple(jnp.zeros(shape, _F32) for _ in range(self.num_decoder_layers))}

    def _decode(self, g: Array, memory: Mapping[str, Array], conv_fn: Callable[[int, Array], Array],
                train: bool) -> tuple[Array, Array]:
        """The decoder layers on [B, T, E] target embeddings; conv_fn(l, x) runs layer l's GLU convolution."""
        x = self.dec_in(self.dropout(g, deterministic=not train))  # [B,T,C]
        weights = None
        for l in range(self.num_decoder_layers):
            h = conv_fn(l, self.dropout(x, deterministic=not train))  # h_i^l, [B,T,C]
            h = axes.constrain(h, (axes.BATCH, axes.LENGTH, axes.MLP))
            c, weights = self.attention[l](h, g, memory["encoder_out"], memory["encoder_in"], memory["mask"])
            h = (h + self.attn_out[l](c)) * _SQRT_HALF
            x = (h + x) * _SQRT_HALF
        out = self.dropout(self.dec_out(x), deterministic=not train)  # [B,T,E]
        logits = axes.constrain(self.logits_proj(out).astype(_F32), (axes.BATCH, axes.LENGTH, axes.VOCAB))
        return logits, weights  # [B, T, V], [B, T, S]

    def decode_step(self, memory: Mapping[str, Array], state: Mapping[str, Any], tokens: Array, t: Array,
                    train: bool = False) -> tuple[Array, dict[str, Any], Array]:
        """One decoder step: feeds y_{t-1} (at position t) and predicts y_t.

        Args:
          memory: the output of `encode` (possibly tiled along the batch axis).
          state: the output of `init_state` or of the previous `decode_step`.
          tokens: [B] int32 previous target tokens (bos at t = 0).
          t: [] int32, the position (0-based) of `tokens`; must be < max_len (a traced t is not checked, and
            positions past the table give NaN).
          train: enables dropout.

        Returns:
          logits: [B, V] float32.
          state: the next state, same structure, shapes and dtypes.
          weights: [B, S] float32, the last decoder layer's attention weights.

        Raises:
          ValueError: tokens not [B] with memory's B, a state of the wrong structure, a concrete t outside
            [0, max_len).
          TypeError: non-integer tokens.
        """
        _checks.tokens("tokens", tokens, 1)
        batch = memory["mask"].shape[0]
        if tokens.shape[0] != batch:
            raise ValueError(f"tokens and memory batch differ: {tokens.shape=} {memory['mask'].shape=}")
        buffers = tuple(state["conv"])
        want = (batch, self.kernel_size - 1, self.hidden_size)
        if len(buffers) != self.num_decoder_layers or any(b.shape != want for b in buffers):
            raise ValueError(f"state['conv'] must hold {self.num_decoder_layers} buffers of shape {want}, got "
                             f"{[b.shape for b in buffers]}")
        try:
            step = int(t)
        except (jax.errors.ConcretizationTypeError, TypeError):
            step = None  # traced: checked by the caller (decoding's max_len)
        if step is not None and not 0 <= step < self.max_len:
            raise ValueError(f"t must be in [0, max_len={self.max_len}), got {step}")
        position = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (batch,))
        g = (self.tgt_embed(tokens) + self.tgt_pos(position)).astype(_F32)[:, None, :]  # [B,1,E]
        new_buffers = []

        def conv_fn(l: int, x: Array) -> Array:
            window = jnp.concatenate([buffers[l], x.astype(_F32)], axis=1)  # [B,W,C], oldest first
            new_buffers.append(window[:, 1:])
            return self.dec_convs[l].step(window)[:, None, :]  # [B,1,C]

        logits, weights = self._decode(g, memory, conv_fn, train)
        new_state = dict(state)
        new_state["conv"] = tuple(new_buffers)
        return logits[:, 0], new_state, weights[:, 0]

    # -- the decoding protocol (`attention_jax.models.decoding.Decodable`) -------------------------------

    @nn.nowrap
    def init_decode(self, variables: PyTree, src: Array, src_lengths: Array, *,
                    max_len: int) -> tuple[dict[str, Array], dict[str, Any]]:
        """`encode` and `init_state` in inference mode, on the unbound module (`decoding.Decodable`).

        Args:
          variables: the model's variables ({"params": ...}).
          src: [B, S] int32 source tokens.
          src_lengths: [B] int32.
          max_len: L, the number of steps to decode: an int in [1, self.max_len], since step t reads the
            learned target position t (a traced t cannot be checked in `decode_step`, so it is checked here).

        Returns:
          (memory, state): see `encode` and `init_state`.

        Raises:
          ValueError: bad source shapes (see `encode`), max_len not an int in [1, self.max_len].
          TypeError: non-integer src or src_lengths.
        """
        _checks.int_at_least("max_len", max_len, 1)
        if max_len > self.max_len:
            raise ValueError(f"max_len={max_len} decoding steps exceed the model's max_len={self.max_len} learned "
                             "target positions")
        memory = self.apply(variables, src, src_lengths, method=ConvS2S.encode)
        return memory, self.apply(variables, memory, method=ConvS2S.init_state)

    @nn.nowrap
    def decode_next(self, variables: PyTree, memory: Mapping[str, Array], state: Mapping[str, Any], tokens: Array,
                    t: Array) -> tuple[Array, dict[str, Any], Array]:
        """`decode_step` in inference mode, on the unbound module (`decoding.Decodable`).

        Returns:
          (logits [B, V] float32, state, weights [B, S] float32); see `decode_step` for the arguments.
        """
        return self.apply(variables, memory, state, tokens, t, method=ConvS2S.decode_step)

    def __call__(self, src: Array, src_lengths: Array, tgt_in: Array, train: bool = False) -> tuple[Array, Array]:
        """Teacher-forced pass over the whole target at once (the decoder is causal, §3.2).

        Args:
          src: [B, S] int32 source tokens.
          src_lengths: [B] int32 source lengths.
          tgt_in: [B, T] int32 decoder inputs (bos followed by the target).
          train: enables dropout (needs the "dropout" rng).

        Returns:
          logits: [B, T, V] float32.
          weights: [B, T, S] float32, the last decoder layer's attention weights.

        Raises:
          ValueError: tokens not 2-D, batch sizes that differ, S or T > max_len.
          TypeError: non-integer tokens or lengths, or a train flag that is not a bool.
        """
        _checks.flag("train", train)
        _checks.tokens("src", src, 2)
        _checks.tokens("tgt_in", tgt_in, 2)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt_in batch differ: {src.shape=} {tgt_in.shape=}")
        batch, length = tgt_in.shape
        self._check_length("target", length)
        memory = self.encode(src, src_lengths, train)
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        g = (self.tgt_embed(tgt_in) + self.tgt_pos(positions)).astype(_F32)  # [B,T,E]

        def conv_fn(l: int, x: Array) -> Array:
            return self.dec_convs[l](x, causal=True)

        return self._decode(g, memory, conv_fn, train)


def make_step_fn(model: ConvS2S, variables: PyTree) -> decoding.StepFn:
    """The `attention_jax.models.decoding` step function of a `ConvS2S`: ``ConvS2S.decode_next`` bound to variables.

    A thin wrapper kept for existing callers; `attention_jax.models.decoding.prepare` gives the step function
    together with the memory and state for any decodable model.

    Args:
      model: the module.
      variables: its variables ({"params": ...}).

    Returns:
      step_fn(memory, state, tokens [B'] int32, t [] int32) -> (logits [B',V] f32, state, weights [B',S] f32),
      i.e. `ConvS2S.decode_step` in inference mode.
    """
    return decoding.bind(model, variables)
