"""Recurrent encoder-decoder models with and without attention, as Flax Linen modules.

Three decoders share one interface (`Seq2Seq`):

* ``attention="none"``: RNNencdec, Cho et al. 2014 (arXiv:1406.1078, eqs. 2-4 style): a fixed
  summary c of the source initialises the decoder and conditions every step and every prediction.
* ``attention="bahdanau"``: RNNsearch, Bahdanau et al. 2015 (arXiv:1409.0473, §3.1 and appendix
  A.2.2): the previous decoder state s_{i-1} queries the source annotations with the additive score
  (eq. 6); the context c_i is fed into the recurrent cell and into the output layer.
* ``attention="luong"``: Luong et al. 2015 (arXiv:1508.04025): the current top hidden state h_t queries
  the source with one of the scores of eq. 8 (global, local-m or local-p, §3.1-3.2), the attentional
  hidden state h~_t = tanh(W_c [c_t; h_t]) (eq. 5) predicts the next word (eq. 6) and is fed to the
  next step's input (input feeding, §3.3).

The attention math lives in the core modules (`scores`, `alignment`, `context`); the modules here
only own the parameters. Shapes use the package legend: B batch, T target (query) length, S source
(key) length, V vocabulary, E embedding size, H decoder hidden size, He encoder output size
(H, or 2H when bidirectional), A attention hidden size.

Decoding one token at a time (`Seq2Seq.decode_step`) calls the very same cell module, with the same
parameters, as the teacher-forced pass (`Seq2Seq.__call__`, an `nn.scan` over that cell), so the two
agree to float32 rounding. `Seq2Seq` implements the decoding protocol of `attention_jax.models.decoding`
(`init_decode`, `decode_next`), so `decoding.prepare` turns a model and its variables into the step function
that `decoding.greedy_decode` / `beam_search` consume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes, masks
from attention_jax.layers.bahdanau import BahdanauAttention
from attention_jax.layers.luong import LUONG_MODES, LUONG_SCORES, LuongAttention, check_luong_options
from attention_jax.models import decoding

Array = jax.Array
PyTree = Any

ATTENTIONS = ("none", "bahdanau", "luong")
CELLS = ("lstm", "gru")


# ----------------------------------------------------------------------------------------------
# Encoder.
# ----------------------------------------------------------------------------------------------


def make_cell(cell: str, features: int, name: str | None = None) -> nn.RNNCellBase:
    """An LSTM or GRU cell with flax's default initializers, boxed with logical axes.

    Input kernels [Din, H] and recurrent kernels [H, H] shard their output (the state, "mlp") only: Din is the
    embedding, an input-fed context or a lower layer's state, so it is not named.
    """
    inits = dict(kernel_init=axes.partitioned(nn.linear.default_kernel_init, (None, axes.MLP)),
                 recurrent_kernel_init=axes.partitioned(nn.initializers.orthogonal(), (None, axes.MLP)),
                 bias_init=axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
    if cell == "lstm":
        return nn.LSTMCell(features, name=name, **inits)
    return nn.GRUCell(features, name=name, **inits)


def _hidden(carry: PyTree, cell: str) -> Array:
    """The output half h of a cell carry (LSTMCell's carry is (c, h), GRUCell's is h)."""
    return carry[1] if cell == "lstm" else carry


class Encoder(nn.Module):
    """Embedding + a stack of (bi)directional GRU/LSTM layers over padded source sentences.

    Padding-aware: each direction runs over the first ``lengths[b]`` tokens only (flax ``nn.RNN`` with
    ``seq_lengths``; the backward direction starts at the last real token), outputs at padded positions
    are zeroed, and nothing at a valid position depends on the padding. Dropout (rate
    ``dropout_rate``, only when ``train``) is applied between layers. This is the bidirectional
    annotation encoder of Bahdanau et al. (arXiv:1409.0473, §3.2) when ``bidirectional=True`` and the
    stacked encoder of Luong et al. (arXiv:1508.04025, §2) otherwise.

    Attributes:
        vocab_size: V.
        embed_dim: E.
        hidden_size: H per direction; the output size He is H or 2H (bidirectional).
        num_layers: number of stacked recurrent layers (>= 1).
        cell: "lstm" or "gru".
        bidirectional: concatenate a forward and a backward RNN in every layer.
        dropout_rate: dropout between layers.

    Raises (at construction):
        ValueError: cell not in ``CELLS``, non-positive sizes, dropout_rate outside [0, 1).
    """

    vocab_size: int
    embed_dim: int
    hidden_size: int
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    dropout_rate: float = 0.0

    def __post_init__(self):
        _checks.choice("cell", self.cell, CELLS)
        _checks.int_at_least("vocab_size", self.vocab_size, 1)
        _checks.int_at_least("embed_dim", self.embed_dim, 1)
        _checks.int_at_least("hidden_size", self.hidden_size, 1)
        _checks.int_at_least("num_layers", self.num_layers, 1)
        _checks.rate("dropout_rate", self.dropout_rate)
        _checks.flag("bidirectional", self.bidirectional)
        super().__post_init__()

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=axes.embed_init())
        layers = []
        for _ in range(self.num_layers):
            if self.bidirectional:
                layers.append(
                    nn.Bidirectional(
                        nn.RNN(make_cell(self.cell, self.hidden_size)),
                        nn.RNN(make_cell(self.cell, self.hidden_size)),
                        return_carry=True,
                    )
                )
            else:
                layers.append(nn.RNN(make_cell(self.cell, self.hidden_size), return_carry=True))
        self.layers = layers
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, tokens: Array, lengths: Array, train: bool = False) -> tuple[Array, Array]:
        """Encodes a batch of padded token sequences.

        Args:
            tokens: [B, S] int32 source tokens, padded at the end.
            lengths: [B] int32 true lengths (0 <= lengths <= S).
            train: enables dropout (needs the "dropout" rng).

        Returns:
            outputs: [B, S, He] float32 top-layer states (forward || backward), zeros at padded positions.
            summary: [B, He] float32 final state of the top layer: the forward state after the last real
                token, concatenated with the backward state after the first token when bidirectional. Rows
                with length 0 get zeros.

        Raises:
            ValueError / TypeError: tokens not [B, S] integer, lengths not a [B] integer array, train not a bool.
        """
        _checks.flag("train", train)
        _checks.tokens("tokens", tokens, 2)
        _checks.integer("lengths", lengths)
        if lengths.shape != tokens.shape[:1]:
            raise ValueError(f"lengths must be [B]: {tokens.shape=} {getattr(lengths, 'shape', None)=}")
        lengths = lengths.astype(jnp.int32)
        valid = masks.padding_mask(lengths, tokens.shape[1])  # [B,S]
        x = self.embed(tokens).astype(jnp.float32)  # [B,S,E]
        carry = None
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x, deterministic=not train)
            carry, x = layer(x, seq_lengths=lengths)
            x = jnp.where(valid[..., None], x, 0.0)  # [B,S,He]
        if self.bidirectional:
            forward, backward = carry
            summary = jnp.concatenate([_hidden(forward, self.cell), _hidden(backward, self.cell)], -1)
        else:
            summary = _hidden(carry, self.cell)
        # nn.RNN picks the carry at index length-1; for empty rows that wraps to the last (padding) step.
        summary = jnp.where((lengths > 0)[:, None], summary, 0.0)
        return x, summary


# ----------------------------------------------------------------------------------------------
# Decoder step cell.
# ----------------------------------------------------------------------------------------------


class DecoderCell(nn.Module):
    """One decoder time step for the three `Seq2Seq` variants (see `Seq2Seq` for the equations).

    The teacher-forced pass scans this module over the target and `Seq2Seq.decode_step` calls it once,
    so both use the same parameters (the path ``decoder``).
    """

    vocab_size: int
    embed_dim: int
    hidden_size: int
    num_layers: int
    cell: str
    dropout_rate: float
    attention: str
    score: str
    mode: str
    window: int
    input_feeding: bool
    max_source_len: int
    attention_features: int

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=axes.embed_init())
        self.rnn = [make_cell(self.cell, self.hidden_size) for _ in range(self.num_layers)]
        self.dropout = nn.Dropout(self.dropout_rate)
        if self.attention == "bahdanau":
            self.attn = BahdanauAttention(self.attention_features or self.hidden_size)
        elif self.attention == "luong":
            self.attn = LuongAttention(
                score=self.score,
                mode=self.mode,
                window=self.window,
                features=self.attention_features,
                max_source_len=self.max_source_len,
            )
            self.w_c = nn.Dense(self.hidden_size, use_bias=False, **axes.dense_inits(None, axes.MLP))  # eq. 5
        if self.attention in ("none", "bahdanau"):
            self.readout = nn.Dense(self.hidden_size, **axes.dense_inits(None, axes.MLP))  # the deep output's tanh
        self.w_out = nn.Dense(self.vocab_size, **axes.dense_inits(axes.MLP, axes.VOCAB))  # W_s eq. 6 / W_o A.2.2

    @property
    def projects_keys(self) -> bool:
        """Whether the attention's key-side projection is computed once per sentence (`project_keys`)."""
        return self.attention == "bahdanau" or (self.attention == "luong" and self.score == "concat"
                                                and self.mode == "global")

    def project_keys(self, annotations: Array, mask: Array) -> Array:
        """The key-side projection, [B, S, A] float32, computed once per sentence in `encode`.

        U_a h_j of the Bahdanau attention, or W_a[H:] h_s of Luong's global ``concat`` score.
        """
        if self.attention == "bahdanau":
            return self.attn.project_keys(annotations, mask)
        return self.attn.project_keys(self.hidden_size, annotations, mask)

    def _run_stack(self, carries: tuple, x: Array, train: bool) -> tuple[tuple, Array]:
        new = []
        for i, (cell, carry) in enumerate(zip(self.rnn, carries)):
            if i > 0:
                x = self.dropout(x, deterministic=not train)
            carry, x = cell(carry, x)
            new.append(carry)
        return tuple(new), x

    def __call__(
        self, memory: Mapping[str, Array], state: Mapping[str, Any], tokens: Array, t: Array, train: bool
    ) -> tuple[Array, dict, Array]:
        """One step; see `Seq2Seq.decode_step` (same arguments and returns) for shapes and dtypes."""
        out, new_state, weights = self.step(memory, state, tokens, t, train)
        return self.project(out), new_state, weights

    def project(self, out: Array) -> Array:
        """Logits from the output vectors of `step`: W_s h~_t (eq. 6) or W_o of the deep output (A.2.2).

        Args:
            out: [..., H] float32.

        Returns:
            logits: [..., V] float32.
        """
        logits = self.w_out(out).astype(jnp.float32)
        names = (axes.BATCH, axes.VOCAB) if out.ndim == 2 else (axes.BATCH, axes.LENGTH, axes.VOCAB)
        return axes.constrain(logits, names) if out.ndim in (2, 3) else logits

    def step(
        self, memory: Mapping[str, Array], state: Mapping[str, Any], tokens: Array, t: Array, train: bool
    ) -> tuple[Array, dict, Array]:
        """One step up to the output vector (h~_t after dropout), without the vocabulary projection.

        The teacher-forced pass scans this over the target and projects every step's vector at once
        (`project`), one [B T, H] x [H, V] matmul instead of T small ones; decoding calls `__call__`.

        Returns:
            out: [B, H] float32; state: the next state; weights: [B, S] float32.
        """
        emb = self.embed(tokens).astype(jnp.float32)  # [B,E]
        keys, mask = memory["annotations"], memory["mask"]  # [B,S,He], [B,S]
        batch, num_keys = mask.shape
        new_state = dict(state)
        if self.attention == "none":
            c = memory["summary"]  # [B,He]
            rnn, s = self._run_stack(state["rnn"], jnp.concatenate([emb, c], -1), train)
            weights = jnp.zeros((batch, num_keys), jnp.float32)
            out = jnp.tanh(self.readout(jnp.concatenate([s, emb, c], -1)))
        elif self.attention == "bahdanau":
            s_prev = _hidden(state["rnn"][-1], self.cell)  # [B,H]
            c, w = self.attn(s_prev[:, None, :], keys, keys, mask, projected_keys=memory["projected_keys"])
            c, weights = c[:, 0], w[:, 0]  # [B,He], [B,S]
            rnn, s = self._run_stack(state["rnn"], jnp.concatenate([emb, c], -1), train)
            out = jnp.tanh(self.readout(jnp.concatenate([s, c, emb], -1)))
        else:
            x = jnp.concatenate([emb, state["feed"]], -1) if self.input_feeding else emb
            rnn, h = self._run_stack(state["rnn"], x, train)  # h: [B,H]
            positions = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (batch, 1))
            c, w = self.attn(h[:, None, :], keys, keys, mask, query_positions=positions,
                             projected_keys=memory.get("projected_keys"))
            c, weights = c[:, 0], w[:, 0]
            out = jnp.tanh(self.w_c(jnp.concatenate([c, h], -1)))  # h~_t, eq. 5
            if self.input_feeding:
                new_state["feed"] = out
        new_state["rnn"] = rnn
        out = self.dropout(out, deterministic=not train)
        return out, new_state, weights.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    """Recurrent encoder-decoder: RNNencdec, RNNsearch or Luong attention (one joint vocabulary).

    Encoder: `Encoder` (embedding, ``num_layers`` (bi)directional ``cell`` layers). Its summary s (the
    top layer's final state, both directions when bidirectional) initialises every decoder layer
    through a learned projection: [h_0^l (, c_0^l for LSTM)] = tanh(W_init s + b_init), like
    s_0 = tanh(W_s h_1) of Bahdanau (A.2.2) and h'_0 = tanh(V' c) of Cho et al. (arXiv:1406.1078, appendix A.1).

    Decoder variants (E(y) the target embedding, stacked cells of size H):

    * ``"none"`` (Cho et al. 2014, eqs. 2-4 style): c = summary; h_t = f(h_{t-1}, [E(y_{t-1}); c]);
      p(y_t) = softmax(W_o tanh(W_r [h_t; E(y_{t-1}); c] + b_r)). Weights are zeros.
    * ``"bahdanau"`` (arXiv:1409.0473 §3.1, A.2.2): c_i = attention(s_{i-1}, annotations) (eqs. 5-6,
      U_a h_j computed once in `encode`); s_i = f(s_{i-1}, [E(y_{i-1}); c_i]);
      p(y_i) = softmax(W_o tanh(W_r [s_i; c_i; E(y_{i-1})] + b_r)) -- a one-layer tanh "deep output"
      in place of the paper's maxout layer. With several layers the query is the top layer's state.
    * ``"luong"`` (arXiv:1508.04025): h_t = stack(h_{t-1}, [E(y_{t-1}); h~_{t-1}]) (input feeding §3.3,
      h~_0 = 0; off with ``input_feeding=False``); c_t = LuongAttention(h_t) (§3.1-3.2);
      h~_t = tanh(W_c [c_t; h_t]) (eq. 5); p(y_t) = softmax(W_s h~_t + b_s) (eq. 6).

    Dropout (rate ``dropout_rate``, ``train=True`` only, rng "dropout"): between stacked layers in the
    encoder and decoder and on the vector fed to the vocabulary projection.

    Memory (from `encode`): dict ``annotations`` [B,S,He] f32, ``mask`` [B,S] bool, ``lengths`` [B]
    int32, ``summary`` [B,He] f32, plus ``projected_keys`` [B,S,A] f32 for "bahdanau" and global "concat".
    State (from `init_state`): dict ``rnn``: tuple over layers of the cell carry (LSTM: (c [B,H],
    h [B,H]); GRU: h [B,H]), plus ``feed`` = h~_{t-1} [B,H] for "luong" with input feeding.
    Every leaf has the batch as leading axis, so `attention_jax.models.decoding` can tile and reorder them.

    Attributes:
        vocab_size, embed_dim, hidden_size, num_layers, cell, bidirectional, dropout_rate: see `Encoder`
            (the decoder uses the same cell type, hidden_size and num_layers).
        attention: one of ``ATTENTIONS``.
        score, mode, window, max_source_len: `LuongAttention` options (validated for "luong" only).
        input_feeding: Luong's input feeding (§3.3).
        attention_features: A for Bahdanau (0 -> hidden_size) and for Luong concat/local-p (0 -> He).

    Raises (at construction):
        ValueError: unknown attention, cell, Luong score or mode, bad window or sizes, and
            ``attention="luong", score="dot", bidirectional=True`` (the dot score needs He == H).
    """

    vocab_size: int
    embed_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    dropout_rate: float = 0.0
    attention: str = "luong"
    score: str = "general"
    mode: str = "global"
    window: int = 10
    input_feeding: bool = True
    max_source_len: int = 0
    attention_features: int = 0

    def __post_init__(self):
        _checks.choice("attention", self.attention, ATTENTIONS)
        _checks.choice("cell", self.cell, CELLS)
        for what in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            _checks.int_at_least(what, getattr(self, what), 1)
        _checks.int_at_least("attention_features", self.attention_features, 0)
        _checks.rate("dropout_rate", self.dropout_rate)
        for what in ("bidirectional", "input_feeding"):
            _checks.flag(what, getattr(self, what))
        if self.attention == "luong":
            check_luong_options(self.score, self.mode, self.window, self.max_source_len)
            if self.score == "dot" and self.bidirectional:
                raise ValueError(
                    "score='dot' needs encoder and decoder states of the same size, but "
                    f"bidirectional=True gives He = 2 * hidden_size = {2 * self.hidden_size}; use score='general' or a "
                    "unidirectional encoder"
                )
        super().__post_init__()

    def setup(self):
        self.encoder = Encoder(
            self.vocab_size,
            self.embed_dim,
            self.hidden_size,
            self.num_layers,
            self.cell,
            self.bidirectional,
            self.dropout_rate,
        )
        parts = 2 if self.cell == "lstm" else 1
        self.bridge = nn.Dense(self.num_layers * parts * self.hidden_size, **axes.dense_inits(None, axes.MLP))
        self.decoder = DecoderCell(
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            cell=self.cell,
            dropout_rate=self.dropout_rate,
            attention=self.attention,
            score=self.score,
            mode=self.mode,
            window=self.window,
            input_feeding=self.input_feeding,
            max_source_len=self.max_source_len,
            attention_features=self.attention_features,
        )

    def encode(self, src: Array, src_lengths: Array, train: bool = False) -> dict[str, Array]:
        """Runs the encoder once per sentence.

        Args:
            src: [B, S] int32 source tokens (padded with anything beyond src_lengths).
            src_lengths: [B] int32.
            train: enables dropout.

        Returns:
            memory: dict ``annotations`` [B,S,He] f32, ``mask`` [B,S] bool, ``lengths`` [B] int32,
            ``summary`` [B,He] f32 and, for "bahdanau" and Luong's global "concat", ``projected_keys`` [B,S,A] f32.

        Raises:
            ValueError / TypeError: bad shapes or dtypes (see `Encoder`).
        """
        annotations, summary = self.encoder(src, src_lengths, train)
        lengths = src_lengths.astype(jnp.int32)
        mask = masks.padding_mask(lengths, src.shape[1])  # [B,S]
        memory = {
            "annotations": annotations,
            "mask": mask,
            "lengths": lengths,
            "summary": summary,
        }
        if self.decoder.projects_keys:
            memory["projected_keys"] = self.decoder.project_keys(annotations, mask)
        return memory

    def init_state(self, memory: Mapping[str, Array]) -> dict[str, Any]:
        """Initial decoder state from the encoder summary: tanh(W_init summary + b_init).

        Args:
            memory: the output of `encode`.

        Returns:
            state: dict ``rnn`` (tuple over layers of the carry; LSTM (c, h), GRU h, each [B,H] f32) and,
            for "luong" with input feeding, ``feed`` [B,H] zeros.
        """
        summary = memory["summary"]
        batch, h = summary.shape[0], self.hidden_size
        parts = 2 if self.cell == "lstm" else 1
        init = jnp.tanh(self.bridge(summary)).reshape(batch, self.num_layers, parts, h)
        if self.cell == "lstm":
            rnn = tuple((init[:, l, 0], init[:, l, 1]) for l in range(self.num_layers))
        else:
            rnn = tuple(init[:, l, 0] for l in range(self.num_layers))
        state: dict[str, Any] = {"rnn": rnn}
        if self.attention == "luong" and self.input_feeding:
            state["feed"] = jnp.zeros((batch, h), jnp.float32)
        return state

    def decode_step(
        self,
        memory: Mapping[str, Array],
        state: Mapping[str, Any],
        tokens: Array,
        t: Array,
        train: bool = False,
    ) -> tuple[Array, dict[str, Any], Array]:
        """One decoder step: feeds y_{t-1} and predicts y_t.

        Args:
            memory: the output of `encode` (possibly tiled along the batch axis).
            state: the output of `init_state` or of the previous `decode_step`.
            tokens: [B] int32 previous target tokens (bos at t = 0).
            t: [] int32 index of the token being predicted (0-based); local-m uses it as p_t.
            train: enables dropout.

        Returns:
            logits: [B, V] float32 (unnormalised).
            state: the next state, same structure as the input state.
            weights: [B, S] float32 attention weights of this step (zeros for "none").

        Raises:
            ValueError / TypeError: tokens not [B] integer.
        """
        _checks.tokens("tokens", tokens, 1)
        return self.decoder(memory, state, tokens, t, train)

    # -- the decoding protocol (`attention_jax.models.decoding.Decodable`) -------------------------------

    @nn.nowrap
    def init_decode(self, variables: PyTree, src: Array, src_lengths: Array, *,
                    max_len: int) -> tuple[dict[str, Array], dict[str, Any]]:
        """`encode` and `init_state` in inference mode, on the unbound module (`decoding.Decodable`).

        Args:
            variables: the model's variables ({"params": ...}).
            src: [B, S] int32 source tokens.
            src_lengths: [B] int32.
            max_len: the number of steps to decode, an int >= 1 (the recurrent state does not depend on it).

        Returns:
            (memory, state): see `encode` and `init_state`.

        Raises:
            ValueError / TypeError: bad shapes or dtypes (see `encode`), max_len not an int >= 1.
        """
        _checks.int_at_least("max_len", max_len, 1)
        memory = self.apply(variables, src, src_lengths, method=Seq2Seq.encode)
        return memory, self.apply(variables, memory, method=Seq2Seq.init_state)

    @nn.nowrap
    def decode_next(self, variables: PyTree, memory: Mapping[str, Array], state: Mapping[str, Any], tokens: Array,
                    t: Array) -> tuple[Array, dict[str, Any], Array]:
        """`decode_step` in inference mode, on the unbound module (`decoding.Decodable`).

        Returns:
            (logits [B, V] float32, state, weights [B, S] float32); see `decode_step` for the arguments.
        """
        return self.apply(variables, memory, state, tokens, t, method=Seq2Seq.decode_step)

    def __call__(
        self, src: Array, src_lengths: Array, tgt_in: Array, train: bool = False
    ) -> tuple[Array, Array]:
        """Teacher-forced pass: `encode`, `init_state`, then `decode_step`'s cell scanned over tgt_in.

        Args:
            src: [B, S] int32 source tokens.
            src_lengths: [B] int32 source lengths.
            tgt_in: [B, T] int32 decoder inputs (bos followed by the target).
            train: enables dropout (needs the "dropout" rng).

        Returns:
            logits: [B, T, V] float32.
            weights: [B, T, S] float32 attention weights (zeros for "none").

        Raises:
            ValueError / TypeError: tokens not 2-D integer arrays, batch sizes that differ, lengths not [B].
        """
        _checks.tokens("src", src, 2)
        _checks.tokens("tgt_in", tgt_in, 2)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt_in batch differ: {src.shape=} {tgt_in.shape=}")
        memory = self.encode(src, src_lengths, train)
        state = self.init_state(memory)

        def body(cell, carry, memory, xs):
            tokens, t = xs
            out, carry, weights = cell.step(memory, carry, tokens, t, train)
            return carry, (out, weights)

        scan = nn.scan(
            body,
            variable_broadcast="params",
            variable_axes={"intermediates": 0},  # values sown per step (local-p's p_t) stack over time
            split_rngs={"params": False, "dropout": True},
            in_axes=(nn.broadcast, 0),
            out_axes=0,
        )
        steps = jnp.arange(tgt_in.shape[1], dtype=jnp.int32)
        _, (outs, weights) = scan(self.decoder, state, memory, (tgt_in.T, steps))  # [T,B,H], [T,B,S]
        # The vocabulary projection of every step at once (the scan above carries only the recurrence).
        logits = self.decoder.project(jnp.swapaxes(outs, 0, 1))  # [B,T,V]
        return logits, jnp.swapaxes(weights, 0, 1)


def make_step_fn(model: Seq2Seq, variables: PyTree) -> decoding.StepFn:
    """The `attention_jax.models.decoding` step function of a `Seq2Seq`: ``Seq2Seq.decode_next`` bound to variables.

    A thin wrapper kept for existing callers; `attention_jax.models.decoding.prepare` gives the step function
    together with the memory and state for any decodable model.

    Args:
        model: the module.
        variables: its variables ({"params": ...}).

    Returns:
        step_fn(memory, state, tokens [B'] int32, t [] int32) -> (logits [B',V] f32, state,
        weights [B',S] f32), i.e. `Seq2Seq.decode_step` in inference mode.
    """
    return decoding.bind(model, variables)
