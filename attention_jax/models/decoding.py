"""Greedy and beam-search decoding over one step-function protocol that every model implements.

The protocol has two levels.

1. A model implements `Decodable`: two methods, called on the unbound Linen module with its variables,

       memory, state = model.init_decode(variables, src [B, S] int, src_lengths [B] int, max_len=L)
       logits [B', V] f32, state, aux = model.decode_next(variables, memory, state, tokens [B'] int32, t [] int32)

   `init_decode` encodes a batch once and returns the memory the decoder reads and its initial state, sized
   for up to L steps (a Transformer's key/value caches); `decode_next` feeds the previous tokens (bos at
   t = 0) and predicts the token at index t. Every leaf of memory, state and aux has the batch as leading
   axis, so the decoders below can tile the rows for a beam and reorder the state by beam parent. Feeding a
   target prefix token by token through `decode_next` equals the model's teacher-forced pass.
   `attention_jax.models.seq2seq.Seq2Seq`, `attention_jax.models.convs2s.ConvS2S` and
   `attention_jax.models.transformer.Transformer` implement it.

2. `prepare(model, variables, src, src_lengths, max_len=L)` turns any `Decodable` into
   ``(step_fn, memory, state)``: a `StepFn`,

       step_fn(memory, state, tokens [B'] int32, t [] int32) -> (logits [B', V] float32, state, aux),

   which `greedy_decode` and `beam_search` consume (`bind(model, variables)` gives the step function alone).
   Any function of that signature works, model or not.

Both decoders are pure and jittable (``batch_size``, ``bos_id``, ``eos_id``, ``beam_size``, ``max_len``
and ``length_penalty`` must be static). They run a ``lax.while_loop`` of at most ``max_len`` steps that
stops early once every sentence has finished. Tokens after EOS are ``PAD_ID`` = 0.

    step_fn, memory, state = decoding.prepare(model, {"params": params}, src, src_lengths, max_len=L)
    tokens, weights = decoding.greedy_decode(step_fn, memory, state, batch_size=B, bos_id=1, eos_id=2,
                                             max_len=L)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from attention_jax import _checks

Array = jax.Array
PyTree = Any

__all__ = ["PAD_ID", "Decodable", "StepFn", "beam_search", "bind", "greedy_decode", "prepare"]


@runtime_checkable
class StepFn(Protocol):
    """One decoding step: ``step_fn(memory, state, tokens, t) -> (logits, state, aux)``.

    Args:
      memory: pytree, leaves [B', ...], passed unchanged to every step (e.g. the encoder outputs).
      state: pytree, leaves [B', ...], the decoder state before this step.
      tokens: [B'] int32, the previous outputs (bos at t = 0).
      t: [] int32, the index of the token being predicted.

    Returns:
      logits: [B', V] floating (unnormalised); state: the next state, of the input's structure, shapes and
      dtypes; aux: pytree, leaves [B', ...], anything per step to collect (e.g. attention weights [B', S]).
    """

    def __call__(self, memory: PyTree, state: PyTree, tokens: Array, t: Array) -> tuple[Array, PyTree, PyTree]:
        ...


@runtime_checkable
class Decodable(Protocol):
    """A model that decodes one token at a time (see the module docstring). Methods take the variables.

    Implementations are Linen modules whose two methods are marked `flax.linen.nowrap`, so they run on the
    unbound module: ``model.init_decode(variables, ...)``, as one calls ``model.apply(variables, ...)``.
    """

    def init_decode(self, variables: PyTree, src: Array, src_lengths: Array, *,
                    max_len: int) -> tuple[PyTree, PyTree]:
        """Encodes src [B, S] (lengths [B]) once: (memory, initial state) for up to max_len steps."""
        ...

    def decode_next(self, variables: PyTree, memory: PyTree, state: PyTree, tokens: Array,
                    t: Array) -> tuple[Array, PyTree, PyTree]:
        """Feeds tokens [B'] at index t: (logits [B', V] float32, next state, aux)."""
        ...


PAD_ID = 0


def _check_leading(what: str, tree: PyTree, batch: int) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = jnp.shape(leaf)
        if len(shape) == 0 or shape[0] != batch:
            raise ValueError(
                f"every {what} leaf needs the batch ({batch}) as leading axis, got "
                f"{what}{jax.tree_util.keystr(path)}.shape={shape}"
            )


def _check_step(step_fn: StepFn, memory: PyTree, state: PyTree, batch: int) -> tuple[int, PyTree]:
    """Traces step_fn once abstractly; returns V and the abstract aux, and checks the state round-trips."""
    tokens = jax.ShapeDtypeStruct((batch,), jnp.int32)
    t = jax.ShapeDtypeStruct((), jnp.int32)
    logits, new_state, aux = jax.eval_shape(step_fn, memory, state, tokens, t)
    if len(logits.shape) != 2 or logits.shape[0] != batch:
        raise ValueError(f"step_fn must return logits [B, V] with B={batch}, got {logits.shape}")
    old = [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(state)]
    new = [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(new_state)]
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(new_state) or old != new:
        raise ValueError(f"step_fn must return a state of the input's structure, shapes and dtypes: {old} -> {new}")
    return logits.shape[1], aux


def prepare(model: Decodable, variables: PyTree, src: Array, src_lengths: Array, *,
            max_len: int) -> tuple[StepFn, PyTree, PyTree]:
    """Encodes a batch with any `Decodable` model and returns what the decoders take.

    Args:
      model: the unbound Linen module (a `Seq2Seq`, `ConvS2S`, `Transformer`, or any `Decodable`).
      variables: its variables, ``{"params": ...}``.
      src: [B, S] integer source tokens (anything beyond src_lengths is ignored).
      src_lengths: [B] integer, 0 <= src_lengths <= S.
      max_len: L, a Python int >= 1, the most steps the caller will decode (it sizes the state's caches).

    Returns:
      (step_fn, memory, state): step_fn(memory, state, tokens [B'] int32, t [] int32) -> (logits [B', V]
      float32, state, aux) is ``model.decode_next`` with the variables bound; memory and state have leaves
      [B, ...]. Pass them to `greedy_decode` or `beam_search`.

    Raises:
      TypeError: if model does not implement `Decodable` (the message names the missing methods).
      ValueError: if max_len is not an int >= 1, or whatever the model's `init_decode` rejects (bad token
        shapes or dtypes, max_len beyond the model's positions).
    """
    _check_decodable(model)
    max_len = _checks.int_at_least("max_len", max_len, 1)
    memory, state = model.init_decode(variables, src, src_lengths, max_len=max_len)
    return bind(model, variables), memory, state


def bind(model: Decodable, variables: PyTree) -> StepFn:
    """``model.decode_next`` with the variables bound: the model's `StepFn` (a plain function, so jax.jit and
    chex.assert_max_traces take it).

    Args:
      model: a `Decodable` (unbound Linen module).
      variables: its variables, ``{"params": ...}``.

    Returns:
      step_fn(memory, state, tokens [B'] int32, t [] int32) -> (logits [B', V] float32, state, aux).

    Raises:
      TypeError: if model does not implement `Decodable`.
    """
    _check_decodable(model)

    def step_fn(memory: PyTree, state: PyTree, tokens: Array, t: Array) -> tuple[Array, PyTree, PyTree]:
        return model.decode_next(variables, memory, state, tokens, t)

    return step_fn


def _check_decodable(model: Any) -> None:
    if not isinstance(model, Decodable):
        missing = [name for name in ("init_decode", "decode_next") if not callable(getattr(model, name, None))]
        raise TypeError(f"{type(model).__name__} is not decodable: it lacks {missing} (see "
                        "attention_jax.models.decoding.Decodable)")


def _where_rows(rows: Array, new: Array, old: Array) -> Array:
    """new where rows[b] else old, for arrays with leading batch axis."""
    return jnp.where(rows.reshape(rows.shape + (1,) * (new.ndim - 1)), new, old)


def greedy_decode(
    step_fn: StepFn,
    memory: PyTree,
    state: PyTree,
    *,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    max_len: int,
) -> tuple[Array, PyTree]:
    """Greedy decoding: y_t = argmax_y p(y | y_<t, x), until EOS or max_len tokens.

    Once a row emits EOS its state stops changing, its later tokens are ``PAD_ID`` and its later aux are
    zeros. The loop stops as soon as every row has finished.

    Args:
      step_fn: a `StepFn`, e.g. from `prepare`.
      memory: pytree, leaves [B, ...] (e.g. the encoder outputs), passed unchanged to every step.
      state: pytree, leaves [B, ...], the initial decoder state.
      batch_size: B.
      bos_id: the token fed at t = 0.
      eos_id: the end-of-sentence token (kept in the output).
      max_len: L, the maximum number of generated tokens, EOS included.

    Returns:
      tokens: [B, L] int32.
      aux: step_fn's aux with every leaf stacked on axis 1, [B, L, ...] (e.g. attention weights [B, L, S]).

    Raises:
      ValueError: non-integer or out-of-range sizes, leaves without the batch as leading axis, a step_fn
        whose logits are not [B, V] or whose state changes structure.
    """
    batch = _checks.int_at_least("batch_size", batch_size, 1)
    max_len = _checks.int_at_least("max_len", max_len, 1)
    bos_id = _checks.int_at_least("bos_id", bos_id, 0)
    eos_id = _checks.int_at_least("eos_id", eos_id, 0)
    _check_leading("memory", memory, batch)
    _check_leading("state", state, batch)
    _, aux_shape = _check_step(step_fn, memory, state, batch)
    _check_leading("aux", aux_shape, batch)

    out = jnp.zeros((max_len, batch), jnp.int32)  # [L, B]
    aux_out = jax.tree_util.tree_map(lambda s: jnp.zeros((max_len,) + s.shape, s.dtype), aux_shape)  # [L, B, ...]

    def cond(carry):
        t, _, _, finished, _, _ = carry
        return (t < max_len) & ~jnp.all(finished)

    def body(carry):
        t, state, prev, finished, out, aux_out = carry
        logits, new_state, aux = step_fn(memory, state, prev, t)
        active = ~finished
        best = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]
        token = jnp.where(active, best, PAD_ID)
        state = jax.tree_util.tree_map(lambda n, o: _where_rows(active, n, o), new_state, state)
        aux = jax.tree_util.tree_map(lambda a: _where_rows(active, a, jnp.zeros_like(a)), aux)
        out = out.at[t].set(token)
        aux_out = jax.tree_util.tree_map(lambda buf, a: buf.at[t].set(a.astype(buf.dtype)), aux_out, aux)
        finished = finished | (active & (best == eos_id))
        return t + 1, state, token, finished, out, aux_out

    carry = (
        jnp.int32(0),
        state,
        jnp.full((batch,), bos_id, jnp.int32),
        jnp.zeros((batch,), bool),
        out,
        aux_out,
    )
    *_, out, aux_out = jax.lax.while_loop(cond, body, carry)
    return out.T, jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), aux_out)


def beam_search(
    step_fn: StepFn,
    memory: PyTree,
    state: PyTree,
    *,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    max_len: int,
    length_penalty: float = 1.0,
) -> tuple[Array, Array]:
    """Beam search with length-normalised final scores.

    The shrinking beam used to decode RNNsearch (Bahdanau et al., arXiv:1409.0473, §4.2) and the sequence to
    sequence LSTM (Sutskever et al., arXiv:1409.3215, §3.2: a hypothesis that emits EOS leaves the beam). Each sentence keeps K = beam_size hypothesis slots. At step t every live
    hypothesis is extended by every token and the K - F best extensions by total log-probability survive, F
    being the number of hypotheses already finished. Those ending in EOS are finished (and keep their slot
    for good); the others stay live. A sentence is done when all K slots are finished; the search stops when
    every sentence is done or after max_len steps, when live hypotheses become candidates too. Candidates
    are ranked by

        score = sum_t log p(y_t | y_<t, x) / length ** length_penalty,

    length being the number of generated tokens including EOS (max_len for unfinished ones). With K = 1 this
    is exactly `greedy_decode`. length_penalty = 0 ranks by total log-probability, 1 by the per-token mean.

    Memory and state are tiled to B * K rows once (row b * K + k is beam k of sentence b); the memory is
    never reordered (the beams of a sentence share it), the state is gathered by beam parent every step.

    Args:
      step_fn: a `StepFn`, e.g. from `prepare`; it sees B * K rows.
      memory: pytree, leaves [B, ...].
      state: pytree, leaves [B, ...], the initial decoder state.
      batch_size: B.
      bos_id: the token fed at t = 0.
      eos_id: the end-of-sentence token (kept in the output).
      beam_size: K >= 1.
      max_len: L, the maximum number of generated tokens, EOS included.
      length_penalty: alpha >= 0 in length ** alpha.

    Returns:
      tokens: [B, K, L] int32, best first; ``PAD_ID`` after EOS.
      scores: [B, K] float32, the normalised scores, descending; -inf for empty slots (only when fewer than
        K distinct hypotheses exist, e.g. V < K).

    Raises:
      ValueError: non-integer or out-of-range sizes, a negative length_penalty, leaves without the batch
        as leading axis, a step_fn whose logits are not [B * K, V] or whose state changes structure.
    """
    batch = _checks.int_at_least("batch_size", batch_size, 1)
    k = _checks.int_at_least("beam_size", beam_size, 1)
    max_len = _checks.int_at_least("max_len", max_len, 1)
    bos_id = _checks.int_at_least("bos_id", bos_id, 0)
    eos_id = _checks.int_at_least("eos_id", eos_id, 0)
    _checks.positive_real("length_penalty", length_penalty, allow_zero=True)
    _check_leading("memory", memory, batch)
    _check_leading("state", state, batch)

    tile = lambda x: jnp.repeat(x, k, axis=0)  # [B, ...] -> [B*K, ...], beams of a sentence adjacent
    memory = jax.tree_util.tree_map(tile, memory)
    state = jax.tree_util.tree_map(tile, state)
    vocab, _ = _check_step(step_fn, memory, state, batch * k)
    neg_inf = jnp.float32(-jnp.inf)
    slot = jnp.arange(k)[None, :]  # [1, K]

    def normalise(logp, length):
        return logp / jnp.asarray(length, jnp.float32) ** jnp.float32(length_penalty)

    def cond(carry):
        t, _, _, alive_logp, *_ = carry
        return (t < max_len) & jnp.any(alive_logp > neg_inf)

    def body(carry):
        t, state, last, alive_logp, alive_seq, fin_score, fin_seq, num_fin = carry
        logits, new_state, _ = step_fn(memory, state, last.reshape(batch * k), t)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
        total = (alive_logp[:, :, None] + logp).reshape(batch, k * vocab)  # [B, K*V]
        top_logp, top_idx = jax.lax.top_k(total, k)  # [B, K], descending
        parent, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        keep = (slot < (k - num_fin)[:, None]) & (top_logp > neg_inf)  # the K - F best survive
        seq = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1)  # [B, K, L]
        seq = seq.at[:, :, t].set(token)
        ended = keep & (token == eos_id)
        live = keep & (token != eos_id)
        # Finished pool: at most K hypotheses ever finish per sentence, so the top K of 2K keeps all.
        new_score = jnp.where(ended, normalise(top_logp, t + 1), neg_inf)
        pool_score = jnp.concatenate([fin_score, new_score], axis=1)  # [B, 2K]
        pool_seq = jnp.concatenate([fin_seq, seq], axis=1)  # [B, 2K, L]
        fin_score, pick = jax.lax.top_k(pool_score, k)
        fin_seq = jnp.take_along_axis(pool_seq, pick[:, :, None], axis=1)
        num_fin = num_fin + jnp.sum(ended, axis=1, dtype=jnp.int32)
        alive_logp = jnp.where(live, top_logp, neg_inf)
        alive_seq = jnp.where(live[:, :, None], seq, PAD_ID)
        last = jnp.where(live, token, PAD_ID)
        rows = (jnp.arange(batch)[:, None] * k + parent).reshape(batch * k)  # [B*K] parent rows
        state = jax.tree_util.tree_map(lambda x: x[rows], new_state)
        return t + 1, state, last, alive_logp, alive_seq, fin_score, fin_seq, num_fin

    carry = (
        jnp.int32(0),
        state,
        jnp.full((batch, k), bos_id, jnp.int32),
        jnp.broadcast_to(jnp.where(slot == 0, 0.0, neg_inf), (batch, k)).astype(jnp.float32),  # one root
        jnp.zeros((batch, k, max_len), jnp.int32),
        jnp.full((batch, k), neg_inf),
        jnp.zeros((batch, k, max_len), jnp.int32),
        jnp.zeros((batch,), jnp.int32),
    )
    t, _, _, alive_logp, alive_seq, fin_score, fin_seq, _ = jax.lax.while_loop(cond, body, carry)
    # Hypotheses still live after max_len steps compete with the finished ones (length max_len).
    alive_score = jnp.where(alive_logp > neg_inf, normalise(alive_logp, t), neg_inf)
    scores, pick = jax.lax.top_k(jnp.concatenate([fin_score, alive_score], axis=1), k)
    tokens = jnp.take_along_axis(jnp.concatenate([fin_seq, alive_seq], axis=1), pick[:, :, None], axis=1)
    return tokens, scores
