"""Multi-head scaled dot-product attention in the jax.nn layout, with a backend registry.

softmax(Q K^T * scale + bias) V, Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762, eq. 1.
Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245) and multi-query attention (Shazeer 2019,
arXiv:1911.02150) share each key/value head among G = N // K query heads; the query is reshaped to
[B, T, K, G, H] and keys and values are never repeated.

A call is checked once and packed into an `AttentionCall`; a backend receives it with every mask source
(an explicit mask, causality, a local window, lengths, segment ids) still separate, so a kernel can build
its masks tile by tile and skip dead tiles, while the "xla" backend folds them into one boolean
[B or 1, N or 1, T, S] mask (`AttentionCall.combined_mask`). Backends plug in with `register_backend`:
"xla" lives here, "blockwise", "flash" and "cudnn" in `attention_jax.dot_product.backends`. With
`implementation=None` the backends are tried in `auto_order` (per platform; see its docstring) and the
first whose `supports` accepts the call runs; the choice and the reasons for skipping the others are logged
once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attention_jax import _checks
from attention_jax.core import alignment

_F32 = jnp.float32
# The log-sum-exp reported for a query row with no valid key. Finite, so it never makes NaN downstream, and
# so small that exp(EMPTY_ROW_LSE - x) is 0 for any real row when partial results are merged.
EMPTY_ROW_LSE = alignment.EMPTY_ROW_LSE

__all__ = [
    "EMPTY_ROW_LSE",
    "AttentionCall",
    "DotProductAttentionOutput",
    "auto_order",
    "dot_product_attention",
    "register_backend",
    "registered_backends",
    "supports",
    "weights_from_lse",
]


class DotProductAttentionOutput(NamedTuple):
    """What `dot_product_attention` returns when `return_weights` or `return_lse` is set.

    Attributes:
      output: [B, T, N, H] in the query dtype.
      weights: [B, N, T, S] float32, the weights applied to the values (after dropout), or None if not asked.
      lse: [B, N, T] float32, log sum_s exp(logits) over the valid keys of the scaled, biased logits, before
        dropout; `EMPTY_ROW_LSE` for a row with no valid key. None if not asked.
    """

    output: jax.Array
    weights: jax.Array | None
    lse: jax.Array | None


class AttentionCall(NamedTuple):
    """One checked `dot_product_attention` call, as a backend receives it.

    Attributes:
      query: [B, T, N, H]; key, value: [B, S, K, H] (floating).
      bias: None or [B|1, N|1, T, S] floating. mask: None or [B|1, N|1, T, S] bool (the user's dense mask only).
      scale: the logit scale (a Python float).
      is_causal: top-left causal mask. window: None or (left, right) with int >= 0 or None entries.
      query_lengths, key_lengths: None or [B] integer.
      segments: None or (q_segment_ids [B, T], kv_segment_ids [B, S]) integers.
      dropout_rate: a Python float in [0, 1). dropout_rng: a PRNG key or None.
      return_weights, return_lse: what the caller asked for besides the output.
    """

    query: Any
    key: Any
    value: Any
    bias: Any = None
    mask: Any = None
    scale: float = 1.0
    is_causal: bool = False
    window: tuple[int | None, int | None] | None = None
    query_lengths: Any = None
    key_lengths: Any = None
    segments: tuple[Any, Any] | None = None
    dropout_rate: float = 0.0
    dropout_rng: Any = None
    return_weights: bool = False
    return_lse: bool = False

    def combined_mask(self) -> jax.Array | None:
        """Every mask source folded into one bool [B or 1, N or 1, T, S] (True = attend), or None."""
        return _combined_mask(self.mask, self.query.shape[1], self.key.shape[1], self.is_causal, self.window,
                              self.query_lengths, self.key_lengths, self.segments)


# A backend: fn(call: AttentionCall) -> (output [B,T,N,H] query dtype, weights [B,N,T,S] float32 or None,
#   lse [B,N,T] float32 or None). It must return weights when call.return_weights and lse when
#   call.return_lse, and give rows with no valid key a zero output, zero weights and EMPTY_ROW_LSE.
BackendFn = Callable[[AttentionCall], tuple[jax.Array, "jax.Array | None", "jax.Array | None"]]
# supports_fn(call: AttentionCall) -> (ok, reason); reason is '' when ok. It must be cheap and never raise.
SupportsFn = Callable[[AttentionCall], tuple[bool, str]]

_BACKENDS: dict[str, tuple[BackendFn, SupportsFn]] = {}
_LOGGED_CHOICES: set[tuple[str, tuple[str, ...]]] = set()
# The order implementation=None tries the built-in backends in, per platform. cuDNN goes first on GPUs (the
# vendor kernel); otherwise xla's dense [B, N, T, S] logits win while they are small. Past _DENSE_BYTES_LIMIT
# the O(S)-memory path moves ahead of xla: "blockwise" on the CPU, the "flash" kernel on GPUs and TPUs. The
# compiled kernels have not been timed on hardware in this project (WORKSPACE.md), so they are not preferred
# to xla for small calls; name implementation="flash" to use them there.
_AUTO_ORDER = {
    "gpu": ("cudnn", "xla", "flash", "blockwise"),
    "tpu": ("xla", "flash", "blockwise"),
    "cpu": ("xla", "blockwise"),
}
_LARGE_CALL_FIRST = {"gpu": "flash", "tpu": "flash", "cpu": "blockwise"}
_DENSE_BYTES_LIMIT = 2 << 30


def register_backend(name: str, fn: BackendFn, supports_fn: SupportsFn) -> None:
    """Registers (or replaces) an attention backend under `name`.

    Args:
      name: the value callers pass as `implementation`, e.g. "blockwise", "flash", "cudnn".
      fn: the backend, fn(call: AttentionCall) -> (output, weights or None, lse or None); see `BackendFn`.
      supports_fn: supports_fn(call: AttentionCall) -> (bool, reason), reason '' when True; never raises.

    Raises:
      ValueError: if `name` is not a non-empty string or fn/supports_fn are not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if not callable(fn) or not callable(supports_fn):
        raise ValueError(f"backend {name!r} needs callable fn and supports_fn, got {fn!r} and {supports_fn!r}")
    _BACKENDS[name] = (fn, supports_fn)


def registered_backends() -> tuple[str, ...]:
    """The registered backend names, in registration order."""
    return tuple(_BACKENDS)


def _platform() -> str:
    platform = jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def auto_order(call: AttentionCall | None = None) -> tuple[str, ...]:
    """The order `implementation=None` tries the registered backends in, for this platform and call.

    Built-in backends come in `_AUTO_ORDER`'s order for the default platform: GPU cudnn, xla, flash,
    blockwise; TPU xla, flash, blockwise; CPU xla, blockwise. Once the call's float32 [B, N, T, S] logits would
    exceed 2 GiB, the O(S)-memory backend moves just ahead of xla (blockwise on the CPU, flash on GPU/TPU).
    Backends registered under other names follow, in registration order.
    """
    platform = _platform() if _platform() in _AUTO_ORDER else "cpu"
    order = list(_AUTO_ORDER[platform])
    if call is not None:
        batch, num_queries, heads, _ = call.query.shape
        if 4 * batch * heads * num_queries * call.key.shape[1] > _DENSE_BYTES_LIMIT:
            large = _LARGE_CALL_FIRST[platform]
            order.remove(large)
            order.insert(order.index("xla"), large)
    known = [name for name in order if name in _BACKENDS]
    return tuple(known + [name for name in _BACKENDS if name not in known])


def _make_call(query, key, value, kwargs) -> AttentionCall:
    """Checks the arguments and packs them (raises as `dot_product_attention` documents)."""
    kwargs = dict(kwargs)
    bias, mask = kwargs.pop("bias", None), kwargs.pop("mask", None)
    _, _, head_dim, segments, window = _check_attention_args(
        query, key, value, bias, mask, kwargs.get("query_lengths"), kwargs.get("key_lengths"),
        kwargs.get("segment_ids"), kwargs.get("local_window"))
    dropout_rate = kwargs.get("dropout_rate", 0.0)
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be a Python float in [0, 1), got {dropout_rate!r}")
    if dropout_rate > 0.0 and kwargs.get("dropout_rng") is None:
        raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
    scale = kwargs.get("scale")
    scale = 1.0 / float(np.sqrt(head_dim)) if scale is None else scale
    return AttentionCall(
        query, key, value, bias, mask, scale, bool(kwargs.get("is_causal", False)), window,
        kwargs.get("query_lengths"), kwargs.get("key_lengths"), segments, float(dropout_rate),
        kwargs.get("dropout_rng"), bool(kwargs.get("return_weights", False)), bool(kwargs.get("return_lse", False)),
    )


def supports(implementation: str, query: Any, key: Any, value: Any, **kwargs: Any) -> tuple[bool, str]:
    """Whether backend `implementation` can run this call.

    Args:
      implementation: a backend name.
      query: [B, T, N, H] floating (or anything with .shape and .dtype, e.g. jax.ShapeDtypeStruct).
      key: [B, S, K, H] floating.
      value: [B, S, K, H] floating.
      **kwargs: the keyword arguments that would go to `dot_product_attention` (bias, mask, scale, ...).

    Returns:
      (ok, reason): reason is '' when ok, else says why not (an unknown name, arguments that
      `dot_product_attention` would reject, or what the backend lacks).
    """
    if implementation not in _BACKENDS:
        return False, f"unknown implementation {implementation!r}; registered: {list(_BACKENDS)}"
    try:
        call = _make_call(query, key, value, kwargs)
    except (ValueError, TypeError) as err:
        return False, f"invalid arguments: {err}"
    return _BACKENDS[implementation][1](call)


def _choose_backend(implementation: str | None, call: AttentionCall) -> BackendFn:
    if implementation is not None:
        if implementation not in _BACKENDS:
            raise ValueError(f"unknown implementation {implementation!r}; choose one of {list(_BACKENDS)} or None")
        ok, reason = _BACKENDS[implementation][1](call)
        if not ok:
            raise ValueError(f"implementation {implementation!r} cannot run this call: {reason}")
        return _BACKENDS[implementation][0]
    reasons = []
    for name in auto_order(call):
        fn, supports_fn = _BACKENDS[name]
        ok, reason = supports_fn(call)
        if ok:
            logged = (name, tuple(reasons))
            if logged not in _LOGGED_CHOICES:
                _LOGGED_CHOICES.add(logged)
                skipped = f" (skipped {'; '.join(reasons)})" if reasons else ""
                logging.info("dot_product_attention: implementation=None picked %r%s", name, skipped)
            return fn
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no registered implementation supports this call: {reasons}")


def weights_from_lse(call: AttentionCall, lse: jax.Array) -> jax.Array:
    """The full [B, N, T, S] float32 weights of `call`, exp(logits - lse) on the valid pairs, from its lse.

    For backends that never build the weights (blockwise, flash) when a caller asks for them anyway.
    """
    query, key = call.query, call.key
    batch, num_queries, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    q = query.astype(_F32).reshape(batch, num_queries, kv_heads, groups, head_dim)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key.astype(_F32)) * jnp.asarray(call.scale, _F32)
    logits = logits.reshape(batch, heads, num_queries, key.shape[1])  # [B, N, T, S]
    if call.bias is not None:
        logits = logits + call.bias.astype(_F32)
    lse = jax.lax.stop_gradient(lse)[..., None]  # [B, N, T, 1]
    valid = lse != EMPTY_ROW_LSE
    mask = call.combined_mask()
    if mask is not None:
        valid = valid & mask
    return jnp.where(valid, jnp.exp(jnp.where(valid, logits, 0.0) - lse), 0.0)


# ----------------------------------------------------------------------------------------------------------
# Checks and the combined mask.


def _check_pair_mask_shape(name: str, x: Any, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
    shape = jnp.shape(x)
    ok = len(shape) == 4 and shape[0] in (1, batch) and shape[1] in (1, heads) and shape[2:] == (num_queries, num_keys)
    if not ok:
        raise ValueError(
            f"{name} must have shape [B or 1, N or 1, T, S] with B={batch} N={heads} T={num_queries} S={num_keys}, "
            f"got {name}.shape={shape}"
        )


def _check_bias_and_mask(bias: Any, mask: Any, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
    """bias (floating) and mask (bool), each None or [B or 1, N or 1, T, S]; raises TypeError / ValueError."""
    if bias is not None:
        _checks.floating("bias", bias)
        _check_pair_mask_shape("bias", bias, batch, heads, num_queries, num_keys)
    if mask is not None:
        _checks.boolean("mask", mask)
        _check_pair_mask_shape("mask", mask, batch, heads, num_queries, num_keys)


def _check_lengths(name: str, lengths: Any, batch: int) -> None:
    _checks.integer(name, lengths)
    if jnp.shape(lengths) != (batch,):
        raise ValueError(f"{name} must have shape [B]=({batch},), got {name}.shape={jnp.shape(lengths)}")


def _segment_pair(segment_ids: Any, batch: int, num_queries: int, num_keys: int) -> tuple[Any, Any]:
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise ValueError(f"segment_ids must be a pair (q [B, T], kv [B, S]), got {len(segment_ids)} items")
        q_seg, kv_seg = segment_ids
    else:
        if num_queries != num_keys:
            raise ValueError(
                f"a single segment_ids array needs T == S, got T={num_queries} S={num_keys}; pass (q_ids, kv_ids)"
            )
        q_seg = kv_seg = segment_ids
    for name, ids, length in (("q_segment_ids", q_seg, num_queries), ("kv_segment_ids", kv_seg, num_keys)):
        _checks.integer(name, ids)
        if jnp.shape(ids) != (batch, length):
            raise ValueError(f"{name} must have shape {(batch, length)}, got {name}.shape={jnp.shape(ids)}")
    return q_seg, kv_seg


def _window_sides(local_window: Any) -> tuple[int | None, int | None]:
    if not isinstance(local_window, (tuple, list)) or len(local_window) != 2:
        raise ValueError(f"local_window must be a pair (left, right) of ints >= 0 or None, got {local_window!r}")
    sides = []
    for side_name, side in zip(("left", "right"), local_window):
        sides.append(None if side is None else _checks.positive_int(f"local_window {side_name}", side, allow_zero=True))
    return sides[0], sides[1]


def _and(a: jax.Array | None, b: jax.Array) -> jax.Array:
    return b if a is None else jnp.logical_and(a, b)


def _check_attention_args(query, key, value, bias, mask, query_lengths, key_lengths, segment_ids, local_window):
    """The input checks shared by `dot_product_attention` and `attention_jax.dot_product.blockwise.blockwise_attention`.

    Returns:
      (T, S, H, segments (q_ids, kv_ids) or None, window (left, right) or None).

    Raises:
      ValueError, TypeError: as documented by `dot_product_attention`.
    """
    for name, x in (("query", query), ("key", key), ("value", value)):
        _checks.rank(name, x, 4)
        _checks.floating(name, x)
    batch, num_queries, heads, head_dim = jnp.shape(query)
    if jnp.shape(key) != jnp.shape(value):
        raise ValueError(f"key and value shapes differ: {jnp.shape(key)=} {jnp.shape(value)=}")
    kb, num_keys, kv_heads, kh = jnp.shape(key)
    if kb != batch:
        raise ValueError(f"batch sizes differ: {jnp.shape(query)=} {jnp.shape(key)=}")
    if kh != head_dim:
        raise ValueError(f"query and key head dims differ: {jnp.shape(query)=} {jnp.shape(key)=}")
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(
            f"query heads N={heads} must be a multiple of key/value heads K={kv_heads}: "
            f"{jnp.shape(query)=} {jnp.shape(key)=}"
        )
    _check_bias_and_mask(bias, mask, batch, heads, num_queries, num_keys)
    if query_lengths is not None:
        _check_lengths("query_lengths", query_lengths, batch)
    if key_lengths is not None:
        _check_lengths("key_lengths", key_lengths, batch)
    segments = None if segment_ids is None else _segment_pair(segment_ids, batch, num_queries, num_keys)
    window = None if local_window is None else _window_sides(local_window)
    return num_queries, num_keys, head_dim, segments, window


def _position_mask(q_pos: jax.Array, k_pos: jax.Array, is_causal: bool, window) -> jax.Array | None:
    """[T, C] bool from query positions [T] and key positions [C] (causal and local window, top-left
    aligned), or None when neither applies."""
    allowed = None
    if is_causal:
        allowed = _and(allowed, k_pos[None, :] <= q_pos[:, None])
    if window is not None:
        left, right = window
        if left is not None:
            allowed = _and(allowed, k_pos[None, :] >= q_pos[:, None] - left)
        if right is not None:
            allowed = _and(allowed, k_pos[None, :] <= q_pos[:, None] + right)
    return allowed


def _combined_mask(mask, num_queries, num_keys, is_causal, window, query_lengths, key_lengths, segments):
    """Folds every mask source into one bool [B or 1, N or 1, T, S], or None when nothing masks."""
    combined = mask
    positions = _position_mask(jnp.arange(num_queries), jnp.arange(num_keys), is_causal, window)  # [T, S]
    if positions is not None:
        combined = _and(combined, positions[None, None])  # [1, 1, T, S]
    if query_lengths is not None:
        valid_q = jnp.arange(num_queries)[None, :] < jnp.asarray(query_lengths)[:, None]  # [B, T]
        combined = _and(combined, valid_q[:, None, :, None])  # [B, 1, T, 1]
    if key_lengths is not None:
        valid_k = jnp.arange(num_keys)[None, :] < jnp.asarray(key_lengths)[:, None]  # [B, S]
        combined = _and(combined, valid_k[:, None, None, :])  # [B, 1, 1, S]
    if segments is not None:
        q_seg, kv_seg = segments
        same = jnp.asarray(q_seg)[:, :, None] == jnp.asarray(kv_seg)[:, None, :]  # [B, T, S]
        combined = _and(combined, same[:, None])  # [B, 1, T, S]
    if combined is not None and combined.shape[2:] != (num_queries, num_keys):
        combined = jnp.broadcast_to(combined, combined.shape[:2] + (num_queries, num_keys))
    return combined


# ----------------------------------------------------------------------------------------------------------
# The XLA backend.


def _xla_attention(query, key, value, bias, mask, *, scale, dropout_rate, dropout_rng):
    """Eq. 1 with einsums; see `BackendFn`. Rows with no valid key give zeros and EMPTY_ROW_LSE."""
    batch, num_queries, heads, head_dim = query.shape
    num_keys, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads

    def grouped(x):  # [B|1, N|1, T, S] -> [B|1, K|1, G|1, T, S]
        b, n = x.shape[:2]
        return x[:, :, None] if n == 1 else x.reshape(b, kv_heads, groups, num_queries, num_keys)

    if mask is not None:
        # Zero the query rows and key/value rows that nothing attends to: their weights are 0, but 0 * NaN
        # (padding) would still leak into the output and into the gradients of the valid rows.
        live_q = jnp.any(mask, axis=(1, 3))  # [B|1, T]
        live_k = jnp.any(mask, axis=(1, 2))  # [B|1, S]
        query = jnp.where(live_q[:, :, None, None], query, jnp.zeros((), query.dtype))
        key = jnp.where(live_k[:, :, None, None], key, jnp.zeros((), key.dtype))
        value = jnp.where(live_k[:, :, None, None], value, jnp.zeros((), value.dtype))

    q = query.astype(_F32).reshape(batch, num_queries, kv_heads, groups, head_dim)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key.astype(_F32)) * jnp.asarray(scale, _F32)  # [B, K, G, T, S]
    if bias is not None:
        logits = logits + grouped(bias.astype(_F32))
    full = None if mask is None else jnp.broadcast_to(grouped(mask), logits.shape)  # [B, K, G, T, S]
    weights, lse = alignment.masked_softmax_with_lse(logits, full)  # [B, K, G, T, S], [B, K, G, T]
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", weights, value.astype(_F32))  # [B, T, K, G, H]
    out = out.reshape(batch, num_queries, heads, value.shape[-1]).astype(query.dtype)
    weights = weights.reshape(batch, heads, num_queries, num_keys)  # [B, N, T, S]
    lse = lse.reshape(batch, heads, num_queries)  # [B, N, T]
    return out, weights, lse


def _xla_backend(call: AttentionCall):
    return _xla_attention(call.query, call.key, call.value, call.bias, call.combined_mask(), scale=call.scale,
                          dropout_rate=call.dropout_rate, dropout_rng=call.dropout_rng)


def _xla_supports(call: AttentionCall) -> tuple[bool, str]:
    del call
    return True, ""


register_backend("xla", _xla_backend, _xla_supports)


# ----------------------------------------------------------------------------------------------------------
# The public entry point.


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_lengths: jax.Array | None = None,
    key_lengths: jax.Array | None = None,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
    local_window: tuple[int | None, int | None] | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    return_weights: bool = False,
    return_lse: bool = False,
    implementation: str | None = None,
) -> jax.Array | DotProductAttentionOutput:
    """Scaled dot-product attention, softmax(Q K^T * scale + bias) V, over N query and K key/value heads.

    Vaswani et al. 2017, arXiv:1706.03762, eq. 1; grouped-query attention (K < N, N % K == 0), Ainslie et al.
    2023, arXiv:2305.13245; multi-query attention (K = 1), Shazeer 2019, arXiv:1911.02150. Same layout and
    mask conventions as `jax.nn.dot_product_attention`.

    Logits, softmax and the value sum run in float32 whatever the input dtype; the output takes the query
    dtype. All masks are combined into one bool [B or 1, N or 1, T, S] (True = attend). A query row with no
    valid key gets zero weights, a zero output, zero gradients and lse = `EMPTY_ROW_LSE` (finfo(float32).min),
    never NaN. Keys, values and queries that no valid pair uses never reach the output or the gradients of the
    valid rows, even when they hold NaN.

    Position alignment (as in jax.nn): query t and key s are both counted from 0, so with `is_causal` query t
    sees keys s <= t for any T and S ("top-left" alignment). When T < S this is NOT the KV-cache alignment in
    which the last query sees the last key; pass an explicit `mask` for that. `local_window` uses the same
    positions.

    Args:
      query: [B, T, N, H] floating.
      key: [B, S, K, H] floating, K divides N.
      value: [B, S, K, H] floating.
      bias: None or [B or 1, N or 1, T, S] floating, added to the scaled logits (in float32).
      mask: None or [B or 1, N or 1, T, S] bool, True = attend.
      scale: the logit scale; default 1 / sqrt(H).
      is_causal: mask keys s > t (top-left alignment, see above).
      query_lengths: None or [B] integer; queries t >= query_lengths[b] are fully masked (zero output).
      key_lengths: None or [B] integer; keys s >= key_lengths[b] are masked.
      segment_ids: None, a pair (q_segment_ids [B, T] integer, kv_segment_ids [B, S] integer), or one [B, T]
        integer array when T == S. Query t sees key s only when their ids are equal (packed sequences).
      local_window: None or (left, right), each an int >= 0 or None (unbounded): query t sees keys s with
        t - left <= s <= t + right.
      dropout_rate: a Python float in [0, 1); inverted dropout on the weights (kept weights scaled by
        1 / (1 - rate)).
      dropout_rng: a PRNG key [2] uint32 (or typed key), required when dropout_rate > 0.
      return_weights: also return the weights.
      return_lse: also return the log-sum-exp.
      implementation: None, "xla", "blockwise", "flash", "cudnn", or another registered name. None tries the
        backends in `auto_order()` (GPU: cudnn, xla, flash, blockwise; TPU: xla, flash, blockwise; CPU: xla,
        blockwise; once the [B, N, T, S] float32 logits would pass 2 GiB, flash (GPU/TPU) or blockwise (CPU)
        goes ahead of xla) and runs the first whose `supports` accepts the call, logging the choice and the
        skipped backends' reasons once.
        "xla" materialises the logits and supports everything; "blockwise" (`blockwise_attention`) is O(S)
        memory on any device, no dropout; "flash" is the Pallas kernel (`attention_jax.kernels.flash_attention`:
        GPU/TPU, or any device inside `attention_jax.kernels.interpret_mode()`; no bias, dense mask or
        dropout); "cudnn" is `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPU, bf16/f16, no
        segment ids, lse or dropout).

    Returns:
      output: [B, T, N, H] in the query dtype, when neither return_weights nor return_lse is set. Otherwise a
      `DotProductAttentionOutput(output, weights, lse)`: weights [B, N, T, S] float32, the weights applied to
      the values (after dropout); lse [B, N, T] float32, the log-sum-exp of the scaled, biased, masked logits
      before dropout. A field not asked for is None.

    Raises:
      ValueError: for wrong ranks; B, S, K or H that differ between query, key and value; N % K != 0; mask,
        bias, lengths or segment id shapes that do not fit; a bad local window or dropout rate; dropout without
        an rng; an unknown implementation or one that does not support the call.
      TypeError: for non-floating query/key/value/bias, a non-boolean mask, or non-integer lengths or ids.
    """
    kwargs = dict(
        bias=bias, mask=mask, scale=scale, is_causal=is_causal, query_lengths=query_lengths,
        key_lengths=key_lengths, segment_ids=segment_ids, local_window=local_window,
        dropout_rate=dropout_rate, dropout_rng=dropout_rng, return_weights=return_weights, return_lse=return_lse,
    )
    call = _make_call(query, key, value, kwargs)
    backend = _choose_backend(implementation, call)
    output, weights, lse = backend(call)
    if not (return_weights or return_lse):
        return output
    return DotProductAttentionOutput(output, weights if return_weights else None, lse if return_lse else None)
