"""Boolean attention masks (True = attend, the jax.nn convention) and the mask spec of dot-product attention.

  padding_mask, broadcast_key_mask   padding masks of the classic attentions, and their broadcasting.
  AttentionMask                      the one mask spec of `attention_jax.dot_product_attention`: causality, a
                                     local window, query/key lengths, segment ids and a dense mask, checked
                                     once against the call's inputs. Every backend (xla, blockwise, cudnn, the
                                     flash kernels) and `attention_jax.kernels.attention_weights` takes it.
  check_attention_inputs             the query/key/value checks of those functions, run by `bind`, and
  attention_scale                    their logit scale (1 / sqrt(H) by default).
  empty_attention                    the result of a call with no (query, key) pair (B, N, T or S is 0).

The spec sits in core, below `attention_jax.dot_product`, because the Pallas kernels, which sit below
dot_product too, take it as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks
from attention_jax.core import alignment

__all__ = [
    "AttentionInputs",
    "AttentionMask",
    "as_attention_mask",
    "attention_scale",
    "broadcast_key_mask",
    "check_attention_inputs",
    "check_lengths",
    "empty_attention",
    "padding_mask",
    "window_bounds",
]


def padding_mask(lengths: jax.Array, max_len: int) -> jax.Array:
    """Marks the valid (unpadded) positions of right-padded sequences.

    Args:
      lengths: [B] integer, the number of valid positions of each sequence.
      max_len: the padded length S.

    Returns:
      mask: [B, S] bool, True where position < lengths[b].

    Raises:
      ValueError: if `lengths` is not rank 1 or `max_len` is negative.
      TypeError: if `lengths` is not integer.
    """
    _checks.rank("lengths", lengths, 1)
    _checks.integer("lengths", lengths)
    max_len = _checks.positive_int("max_len", max_len, allow_zero=True)
    return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]


def broadcast_key_mask(mask: jax.Array | None, batch: int, num_queries: int, num_keys: int) -> jax.Array | None:
    """Checks a key mask and brings it to [B, T, S].

    Args:
      mask: None, [B, S] bool (a padding mask shared by every query) or [B, T, S] bool.
      batch: B.
      num_queries: T.
      num_keys: S.

    Returns:
      None, or mask: [B, T, S] bool.

    Raises:
      ValueError: if the mask shape is neither [B, S] nor [B, T, S].
      TypeError: if the mask is not boolean.
    """
    if mask is None:
        return None
    _checks.boolean("mask", mask)
    if jnp.shape(mask) == (batch, num_keys):
        return jnp.broadcast_to(mask[:, None, :], (batch, num_queries, num_keys))
    if jnp.shape(mask) == (batch, num_queries, num_keys):
        return mask
    raise ValueError(
        f"mask must have shape [B, S]={(batch, num_keys)} or [B, T, S]={(batch, num_queries, num_keys)}, "
        f"got {jnp.shape(mask)}"
    )


# ------------------------------------------------------------------------------------------------------------
# The inputs of dot-product attention.


class AttentionInputs(NamedTuple):
    """The sizes of a checked dot-product attention call (letters of the package legend)."""

    batch: int  # B
    num_queries: int  # T
    heads: int  # N
    head_dim: int  # H
    num_keys: int  # S
    kv_heads: int  # K


def _require_array(name: str, x: Any) -> None:
    """TypeError unless `x` is array-like with a shape and a dtype (jax or numpy array, tracer, ShapeDtypeStruct)."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        shown = repr(x)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise TypeError(f"{name} must be a jax or numpy array, got {type(x).__name__} {shown}")


def check_attention_inputs(query: Any, key: Any, value: Any | None = None) -> AttentionInputs:
    """Checks query [B, T, N, H], key [B, S, K, H] and value [B, S, K, H] of dot-product attention.

    Args:
      query: [B, T, N, H] floating.
      key: [B, S, K, H] floating; K divides N.
      value: None (for `attention_weights`, which needs no values) or [B, S, K, H] floating, key's shape.

    Returns:
      The sizes (B, T, N, H, S, K).

    Raises:
      TypeError: for an argument that is not an array (a Python list, say) or not floating.
      ValueError: for ranks other than 4; B, S, K or H that differ between query, key and value; N % K != 0;
        H = 0 (no head dim: the default scale 1 / sqrt(H) is undefined).
    """
    named = (("query", query), ("key", key)) + ((("value", value),) if value is not None else ())
    for name, x in named:
        _require_array(name, x)
        _checks.rank(name, x, 4)
        _checks.floating(name, x)
    batch, num_queries, heads, head_dim = (int(d) for d in jnp.shape(query))
    if value is not None and jnp.shape(key) != jnp.shape(value):
        raise ValueError(f"key and value shapes differ: {jnp.shape(key)=} {jnp.shape(value)=}")
    kb, num_keys, kv_heads, kh = (int(d) for d in jnp.shape(key))
    if kb != batch:
        raise ValueError(f"batch sizes differ: {jnp.shape(query)=} {jnp.shape(key)=}")
    if kh != head_dim:
        raise ValueError(f"query and key head dims differ: {jnp.shape(query)=} {jnp.shape(key)=}")
    if head_dim == 0:
        raise ValueError(f"the head dim H must be >= 1, got H=0: {jnp.shape(query)=} {jnp.shape(key)=}")
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(
            f"query heads N={heads} must be a multiple of key/value heads K={kv_heads}: "
            f"{jnp.shape(query)=} {jnp.shape(key)=}"
        )
    return AttentionInputs(batch, num_queries, heads, head_dim, num_keys, kv_heads)


def attention_scale(scale: Any, head_dim: int) -> float:
    """The logit scale of a call: `scale` as a Python float, or 1 / sqrt(H) when None.

    Raises:
      ValueError: for a scale that is not a finite real number (a bool, a string, an array, NaN).
    """
    if scale is None:
        return 1.0 / float(np.sqrt(head_dim))
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not np.isfinite(scale):
        raise ValueError(f"scale must be a finite Python float or None, got {scale!r}")
    return float(scale)


def check_lengths(name: str, lengths: Any, batch: int) -> None:
    """Checks sequence lengths: a [B] integer array (what `AttentionMask` checks its lengths with).

    Raises:
      TypeError: for a non-array (a Python list, say) or a non-integer dtype, naming `name`.
      ValueError: for a shape other than (B,), naming `name`, the shape and B.
    """
    _require_array(name, lengths)
    _checks.integer(name, lengths)
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"{name} must have shape [B]=({batch},), got {name}.shape={tuple(lengths.shape)}")


def _signature(*arrays: Any) -> tuple | None:
    """((shape, dtype) of each array, None for a missing one), or None when one of them is not array-like."""
    sig = []
    for x in arrays:
        if x is None:
            sig.append(None)
        elif hasattr(x, "shape") and hasattr(x, "dtype"):
            sig.append((tuple(int(d) for d in x.shape), np.dtype(x.dtype)))
        else:
            return None
    return tuple(sig)


def empty_attention(query: Any, value: Any, *, lse_layout: str = "BNT") -> tuple[jax.Array, jax.Array]:
    """The result of an attention call with no (query, key) pair at all: B, N, T or S is 0.

    Every backend returns this, so they agree: there is nothing to normalise, so each of the T query rows is a
    row with no valid key (a zero output, lse = `EMPTY_ROW_LSE`, zero weights and zero gradients).

    Args:
      query: [B, T, N, H] floating.
      value: [B, S, K, H] floating.
      lse_layout: "BNT" (this package) or "BTN" (jax.nn's residual).

    Returns:
      (output [B, T, N, H] zeros in the query dtype, lse [B, N, T] (or [B, T, N]) float32 of EMPTY_ROW_LSE).
    """
    batch, num_queries, heads, _ = jnp.shape(query)
    output = jnp.zeros((batch, num_queries, heads, jnp.shape(value)[-1]), query.dtype)
    lse_shape = (batch, heads, num_queries) if lse_layout == "BNT" else (batch, num_queries, heads)
    return output, jnp.full(lse_shape, alignment.EMPTY_ROW_LSE, jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# The mask spec.


Window = tuple[int | None, int | None]


def window_bounds(is_causal: bool, window: Window | None) -> tuple[int | None, int | None]:
    """(left, right): query t sees keys t - left <= s <= t + right (None = unbounded), causality folded in.

    Causality is the window's right side clipped to 0, so tile loops and chunk masks need only these two bounds.
    """
    left = None if window is None else window[0]
    right = None if window is None else window[1]
    if is_causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def _window(local_window_size: Any) -> Window | None:
    """jax.nn's local_window_size (None, an int, or (left, right)), with None sides for unbounded."""
    if local_window_size is None:
        return None
    if isinstance(local_window_size, (int, np.integer)) and not isinstance(local_window_size, bool):
        side = _checks.positive_int("local_window_size", local_window_size, allow_zero=True)
        return side, side
    if not isinstance(local_window_size, (tuple, list)) or len(local_window_size) != 2:
        raise ValueError(
            f"local_window_size must be an int >= 0 or a pair (left, right) of ints >= 0 or None, "
            f"got {local_window_size!r}"
        )
    left, right = (None if side is None else _checks.positive_int(f"local_window_size {name}", side, allow_zero=True)
                   for name, side in zip(("left", "right"), local_window_size))
    return left, right


def _segments(segment_ids: Any) -> tuple[Any, Any]:
    """(q_ids, kv_ids) from None, one array (T == S) or a pair of arrays."""
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        if not all(hasattr(x, "shape") for x in segment_ids):
            raise TypeError(f"segment_ids must be an integer array or a pair (q [B, T], kv [B, S]) of integer "
                            f"arrays, got a {type(segment_ids).__name__} of non-arrays")
        if len(segment_ids) != 2:
            raise ValueError(f"segment_ids must be a pair (q [B, T], kv [B, S]), got {len(segment_ids)} arrays")
        return segment_ids[0], segment_ids[1]
    return segment_ids, segment_ids


_ARRAYS = ("dense", "query_seq_lengths", "key_value_seq_lengths", "q_segment_ids", "kv_segment_ids")
_STATIC = ("is_causal", "local_window_size", "shape", "bound_to")


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class AttentionMask:
    """Which (query, key) pairs attend: the one mask spec of dot-product attention.

    Holds every mask source of a call separately, so a backend can build only what it needs: the "xla" backend
    folds them into one dense bool [B|1, N|1, T, S] (`dense_mask`); blockwise builds each key chunk's mask from
    positions (`mask_for`); the flash kernels tile the causal/window bounds (`window_bounds`) and fold lengths
    into segment ids, never building a [T, S] array. Modelled on tokamax's attention `Mask` (causal flag plus
    start/end bounds plus a bool mask); this one speaks jax.nn's keywords.

    A pytree: the arrays are leaves; `is_causal`, `local_window_size`, `shape` and `bound_to` are static (aux
    data), so a spec can cross `jax.jit` as an argument and its static part selects the compiled program.

    Alignment is top-left, as in `jax.nn.dot_product_attention`: query t and key s both count from 0, so with
    `is_causal` query t sees keys s <= t for any T and S (not the KV-cache alignment where the last query sees
    the last key; pass a dense mask for that), and the window uses the same positions.

    Checks run twice at most per spec and never per backend: the constructor checks each source on its own
    (types, dtypes, ranks, window values), and `bind` checks the inputs and that every source fits them. A
    spec bound to inputs of the same shapes and dtypes is returned as it is by `bind`, so a call that goes
    through `dot_product_attention`, a backend and `flash_attention` is checked once.

    Attributes:
      dense: None or [B|1, N|1, T, S] bool, True = attend (the `mask` of jax.nn).
      query_seq_lengths: None or [B] integer; queries t >= query_seq_lengths[b] see no key (zero output).
      key_value_seq_lengths: None or [B] integer; keys s >= key_value_seq_lengths[b] are masked.
      q_segment_ids: None or [B, T] integer; kv_segment_ids: None or [B, S] integer (both or neither): query t
        sees key s only when their ids are equal (packed sequences).
      is_causal: keys s > t are masked (top-left).
      local_window_size: None or (left, right), each an int >= 0 or None (unbounded): query t sees keys
        t - left <= s <= t + right.
      shape: None, or (B, N, T, S) once the sources were checked to fit those sizes (`fit`, `bind`).
      bound_to: None, or the (shape, dtype) of the query, key and value `bind` checked.
    """

    dense: Any
    query_seq_lengths: Any
    key_value_seq_lengths: Any
    q_segment_ids: Any
    kv_segment_ids: Any
    is_causal: bool
    local_window_size: Window | None
    shape: tuple[int, int, int, int] | None
    bound_to: tuple | None

    def __init__(
        self,
        mask: Any = None,
        *,
        is_causal: bool = False,
        query_seq_lengths: Any = None,
        key_value_seq_lengths: Any = None,
        segment_ids: Any = None,
        local_window_size: int | tuple[int | None, int | None] | None = None,
    ):
        """Checks each mask source on its own (the fit to the inputs is checked by `bind`).

        Args:
          mask: None or [B|1, N|1, T, S] bool, True = attend (jax.nn's `mask`).
          is_causal: a bool; mask keys s > t (top-left).
          query_seq_lengths: None or [B] integer array.
          key_value_seq_lengths: None or [B] integer array.
          segment_ids: None, a pair (q_segment_ids [B, T], kv_segment_ids [B, S]) of integer arrays, or one
            [B, T] integer array when T == S.
          local_window_size: None, an int w >= 0 (the window (w, w), as in jax.nn), or (left, right) with
            each side an int >= 0 or None (unbounded).

        Raises:
          TypeError: a source that is not an array (a Python list, say), a non-boolean mask, non-integer
            lengths or ids, an `is_causal` that is not a bool.
          ValueError: wrong ranks, segment_ids that are not one array or a pair, a bad window.
        """
        is_causal = _checks.flag("is_causal", is_causal)
        window = _window(local_window_size)
        q_ids, kv_ids = _segments(segment_ids)
        for name, x, ndim, check in (
            ("mask", mask, 4, _checks.boolean),
            ("query_seq_lengths", query_seq_lengths, 1, _checks.integer),
            ("key_value_seq_lengths", key_value_seq_lengths, 1, _checks.integer),
            ("q_segment_ids", q_ids, 2, _checks.integer),
            ("kv_segment_ids", kv_ids, 2, _checks.integer),
        ):
            if x is not None:
                _require_array(name, x)
                check(name, x)
                if len(x.shape) != ndim:
                    raise ValueError(f"{name} must have rank {ndim}, got {name}.shape={tuple(x.shape)}")
        self._set(dense=mask, query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
                  q_segment_ids=q_ids, kv_segment_ids=kv_ids, is_causal=is_causal, local_window_size=window,
                  shape=None, bound_to=None)

    def _set(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _replace(self, **changes) -> "AttentionMask":
        """A copy with `changes`, without re-running the constructor's checks (the callers checked)."""
        new = object.__new__(AttentionMask)
        new._set(**{name: getattr(self, name) for name in _ARRAYS + _STATIC})
        new._set(**changes)
        return new

    # --------------------------------------------------------------------------------------------------------
    # Checking against the inputs.

    def fit(self, batch: int, heads: int, num_queries: int, num_keys: int) -> "AttentionMask":
        """This spec checked to fit B, N, T, S (a no-op when it already was).

        For a caller that knows the sizes before it has the inputs (e.g. a layer, before its projections).

        Raises:
          ValueError: naming the source whose shape does not fit, and B, N, T, S.
        """
        shape = (int(batch), int(heads), int(num_queries), int(num_keys))
        if self.shape == shape:
            return self
        _check_fit(self, shape)
        return self._replace(shape=shape, bound_to=None)

    def bind(self, query: Any, key: Any, value: Any | None = None) -> "AttentionMask":
        """This spec checked against the inputs of a call; returned as it is when it already was.

        Args:
          query: [B, T, N, H] floating; key, value: [B, S, K, H] floating (value may be None). Anything with
            .shape and .dtype works, e.g. `jax.ShapeDtypeStruct`.

        Returns:
          The spec with `shape` = (B, N, T, S) and `bound_to` set.

        Raises:
          TypeError, ValueError: as `check_attention_inputs` documents, and for a source that does not fit.
        """
        sig = _signature(query, key, value)
        if sig is not None and sig == self.bound_to:
            return self
        dims = check_attention_inputs(query, key, value)
        shape = (dims.batch, dims.heads, dims.num_queries, dims.num_keys)
        if self.shape != shape:
            _check_fit(self, shape)
        return self._replace(shape=shape, bound_to=sig)

    def _sizes(self) -> tuple[int, int, int, int]:
        if self.shape is None:
            raise ValueError("this AttentionMask is not bound to inputs yet; call bind(query, key, value) first")
        return self.shape

    # --------------------------------------------------------------------------------------------------------
    # Views.

    @property
    def num_queries(self) -> int:
        """T (a bound spec only)."""
        return self._sizes()[2]

    @property
    def num_keys(self) -> int:
        """S (a bound spec only)."""
        return self._sizes()[3]

    @property
    def is_empty(self) -> bool:
        """Whether the call has no (query, key) pair at all: B, N, T or S is 0 (a bound spec only)."""
        return 0 in self._sizes()

    @property
    def has_segments(self) -> bool:
        return self.q_segment_ids is not None

    @property
    def masks_nothing(self) -> bool:
        """Whether no source masks anything (every pair attends)."""
        return (not self.is_causal and self.local_window_size is None
                and all(getattr(self, name) is None for name in _ARRAYS))

    def window_bounds(self) -> tuple[int | None, int | None]:
        """(left, right) with causality folded in; see the module function `window_bounds`."""
        return window_bounds(self.is_causal, self.local_window_size)

    def position_mask(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array | None:
        """bool [Tq, Sk] from the causal and window bounds at query positions [Tq] and key positions [Sk], or
        None when neither applies."""
        left, right = self.window_bounds()
        allowed = None
        if right is not None:
            allowed = _and(allowed, k_pos[None, :] <= q_pos[:, None] + right)
        if left is not None:
            allowed = _and(allowed, k_pos[None, :] >= q_pos[:, None] - left)
        return allowed

    def mask_for(self, q_pos: jax.Array | None = None, k_pos: jax.Array | None = None, *, batch: Any = None,
                 head: Any = None) -> jax.Array | None:
        """Every source folded into one bool [B|1, N|1, Tq, Sk] (True = attend), or None when nothing masks.

        Args:
          q_pos: None (all T queries) or [Tq] integer query positions; positions outside [0, T) are masked.
          k_pos: None (all S keys) or [Sk] integer key positions, e.g. one chunk of keys; positions outside
            [0, S) (tile padding) are masked.
          batch: None (every batch row) or a scalar integer b: the result is [1, N|1, Tq, Sk] for row b.
          head: None (every head) or a scalar integer n: the dense source is taken at head n (size 1 there).

        Only the dense source and the segment ids are gathered at the positions; the causal, window and length
        parts are computed from the positions, so a chunk of keys never costs a [T, S] array.
        """
        num_queries, num_keys = self.num_queries, self.num_keys
        qp = jnp.arange(num_queries) if q_pos is None else jnp.asarray(q_pos)
        kp = jnp.arange(num_keys) if k_pos is None else jnp.asarray(k_pos)
        combined = None
        pos = self.position_mask(qp, kp)  # [Tq, Sk]
        if pos is not None:
            combined = pos[None, None]
        if q_pos is not None:
            combined = _and(combined, ((qp >= 0) & (qp < num_queries))[None, None, :, None])
        if k_pos is not None:
            combined = _and(combined, ((kp >= 0) & (kp < num_keys))[None, None, None, :])

        def rows(x):  # [B, ...] -> [B|1, ...]
            return x if batch is None else jnp.asarray(x)[batch][None]

        if self.query_seq_lengths is not None:
            lengths = rows(jnp.asarray(self.query_seq_lengths))  # [B']
            combined = _and(combined, (qp[None, :] < lengths[:, None])[:, None, :, None])
        if self.key_value_seq_lengths is not None:
            lengths = rows(jnp.asarray(self.key_value_seq_lengths))  # [B']
            combined = _and(combined, (kp[None, :] < lengths[:, None])[:, None, None, :])
        if self.q_segment_ids is not None:
            q_ids = rows(jnp.asarray(self.q_segment_ids))  # [B', T]
            kv_ids = rows(jnp.asarray(self.kv_segment_ids))  # [B', S]
            if q_pos is not None:
                q_ids = jnp.take(q_ids, qp, axis=1, mode="clip")  # [B', Tq]
            if k_pos is not None:
                kv_ids = jnp.take(kv_ids, kp, axis=1, mode="clip")  # [B', Sk]
            combined = _and(combined, (q_ids[:, :, None] == kv_ids[:, None, :])[:, None])  # [B', 1, Tq, Sk]
        if self.dense is not None:
            dense = jnp.asarray(self.dense)  # [B|1, N|1, T, S]
            if batch is not None:
                dense = dense[batch if dense.shape[0] > 1 else 0][None]
            if head is not None:
                dense = dense[:, head if dense.shape[1] > 1 else 0][:, None]
            if q_pos is not None:
                dense = jnp.take(dense, qp, axis=2, mode="clip")
            if k_pos is not None:
                dense = jnp.take(dense, kp, axis=3, mode="clip")
            combined = _and(combined, dense)
        if combined is not None and combined.shape[2:] != (qp.shape[0], kp.shape[0]):
            combined = jnp.broadcast_to(combined, combined.shape[:2] + (qp.shape[0], kp.shape[0]))
        return combined

    def dense_mask(self) -> jax.Array | None:
        """Every source folded into one bool [B|1, N|1, T, S] (True = attend), or None when nothing masks."""
        return self.mask_for()


def _and(a: jax.Array | None, b: jax.Array) -> jax.Array:
    return b if a is None else jnp.logical_and(a, b)


def _check_fit(spec: AttentionMask, shape: tuple[int, int, int, int]) -> None:
    """Raises ValueError unless every source of `spec` fits (B, N, T, S)."""
    batch, heads, num_queries, num_keys = shape
    if spec.dense is not None:
        got = tuple(spec.dense.shape)
        if not (got[0] in (1, batch) and got[1] in (1, heads) and got[2:] == (num_queries, num_keys)):
            raise ValueError(
                f"mask must have shape [B or 1, N or 1, T, S] with B={batch} N={heads} T={num_queries} "
                f"S={num_keys}, got mask.shape={got}"
            )
    for name in ("query_seq_lengths", "key_value_seq_lengths"):
        if getattr(spec, name) is not None:
            check_lengths(name, getattr(spec, name), batch)
    if spec.q_segment_ids is not None:
        if spec.q_segment_ids is spec.kv_segment_ids and num_queries != num_keys:
            raise ValueError(
                f"a single segment_ids array needs T == S, got T={num_queries} S={num_keys}; pass (q_ids, kv_ids)"
            )
        for name, ids, length in (("q_segment_ids", spec.q_segment_ids, num_queries),
                                  ("kv_segment_ids", spec.kv_segment_ids, num_keys)):
            if tuple(ids.shape) != (batch, length):
                raise ValueError(f"{name} must have shape {(batch, length)} (B={batch} T={num_queries} "
                                 f"S={num_keys}), got {name}.shape={tuple(ids.shape)}")


def as_attention_mask(mask: Any) -> AttentionMask:
    """An `AttentionMask` from None (nothing masked), a bool array (jax.nn's dense `mask`) or a spec (as is)."""
    if isinstance(mask, AttentionMask):
        return mask
    return AttentionMask(mask)


def _flatten(spec: AttentionMask):
    children = tuple(getattr(spec, name) for name in _ARRAYS)
    return children, tuple(getattr(spec, name) for name in _STATIC)


def _unflatten(aux, children) -> AttentionMask:
    # Not through __init__: under a transformation the leaves may be tracers or placeholders.
    spec = object.__new__(AttentionMask)
    spec._set(**dict(zip(_ARRAYS, children)), **dict(zip(_STATIC, aux)))
    return spec


jax.tree_util.register_pytree_node(AttentionMask, _flatten, _unflatten)
