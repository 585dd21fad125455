"""Multi-head scaled dot-product attention in the jax.nn layout, and its table of backends.

softmax(Q K^T * scale + bias) V, Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762, eq. 1.
Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245) and multi-query attention (Shazeer 2019,
arXiv:1911.02150) share each key/value head among G = N // K query heads; the query is reshaped to
[B, T, K, G, H] and keys and values are never repeated.

`dot_product_attention` takes jax.nn's arguments under jax.nn's names, checks them once, packs them into an
`AttentionCall` whose mask is one `AttentionMask` (every mask source still separate, so a kernel can build its
masks tile by tile and skip dead tiles) and hands it to a backend. The built-in backends form a fixed table,
defined here, where the operation is: "xla" (`xla.XlaBackend`), "blockwise" (`blockwise.BlockwiseBackend`),
"flash" (`flash.FlashBackend`, the adapter to `attention_jax.kernels`), "cudnn" (`cudnn.CudnnBackend`), and the
sequence-parallel "ring" (`ring.RingBackend`) and "ulysses" (`ulysses.UlyssesBackend`), which are never in
`auto_order`.
`register_backend` adds names and never replaces a built-in. With `implementation=None` the backends are
tried in `auto_order` (per platform; see its docstring) and the first whose `supports` accepts the call runs;
the choice and the reasons for skipping the others are logged once.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attention_jax import _checks
from attention_jax.core import alignment, masks
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.base import (
    EMPTY_ROW_LSE,
    AttentionCall,
    Backend,
    BackendOutput,
    DotProductAttentionOutput,
    FunctionBackend,
    check_bias,
    weights_from_lse,
)
from attention_jax.dot_product.blockwise import BlockwiseBackend
from attention_jax.dot_product.cudnn import CudnnBackend
from attention_jax.dot_product.flash import FlashBackend
from attention_jax.dot_product.ring import RingBackend
from attention_jax.dot_product.ulysses import UlyssesBackend
from attention_jax.dot_product.xla import XlaBackend
from attention_jax.kernels import platform as device_platform

__all__ = [
    "EMPTY_ROW_LSE",
    "AttentionCall",
    "Backend",
    "DotProductAttentionOutput",
    "auto_order",
    "dot_product_attention",
    "register_backend",
    "registered_backends",
    "supports",
    "weights_from_lse",
]

# The built-in backends, by name: fixed here, where the operation is defined.
BUILTIN_BACKENDS: types.MappingProxyType = types.MappingProxyType({
    "xla": XlaBackend(),
    "blockwise": BlockwiseBackend(),
    "flash": FlashBackend(),
    "cudnn": CudnnBackend(),
    # Sequence-parallel (never in auto_order; callers name them): shard_map over the ambient mesh's "seq" axis.
    "ring": RingBackend(),
    "ulysses": UlyssesBackend(),
})
# Backends added with `register_backend`, in registration order.
_REGISTERED: dict[str, Backend] = {}
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


def register_backend(name: str, backend: Backend | Callable[[AttentionCall], BackendOutput],
                     supports_fn: Callable[[AttentionCall], tuple[bool, str]] | None = None) -> None:
    """Adds a backend to the table under `name` (re-registering one of your own names replaces it).

    Args:
      name: the value callers pass as `implementation`.
      backend: a `Backend` object, or a function fn(call: AttentionCall) -> (output, weights or None, lse or
        None) (see `Backend.__call__`).
      supports_fn: with a function: supports_fn(call) -> (ok, reason), reason '' when ok; it never raises.
        None with a `Backend` object (its `supports` is used).

    Raises:
      ValueError: if `name` is not a non-empty string or is a built-in's name ("xla", "blockwise", "flash",
        "cudnn", "ring", "ulysses": those are never replaced; register the variant under a new name, or pass
        the object as `implementation=`), or the backend/supports_fn are not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if name in BUILTIN_BACKENDS:
        raise ValueError(f"{name!r} is a built-in backend and cannot be replaced; register it under another name "
                         f"or pass the backend object as implementation=")
    if isinstance(backend, Backend):
        if supports_fn is not None:
            raise ValueError(f"backend {name!r} is a Backend object; it brings its own supports, got {supports_fn!r}")
        _REGISTERED[name] = backend
        return
    if not callable(backend) or not callable(supports_fn):
        raise ValueError(f"backend {name!r} needs callable fn and supports_fn, got {backend!r} and {supports_fn!r}")
    _REGISTERED[name] = FunctionBackend(backend, supports_fn, name)


def registered_backends() -> tuple[str, ...]:
    """The backend names: the built-ins, then the registered ones in registration order."""
    return tuple(BUILTIN_BACKENDS) + tuple(_REGISTERED)


def _lookup(name: str) -> Backend | None:
    return BUILTIN_BACKENDS.get(name) or _REGISTERED.get(name)


def auto_order(call: AttentionCall | None = None, *, platform: str | None = None) -> tuple[str, ...]:
    """The order `implementation=None` tries the backends in, for a platform and a call.

    Built-in backends come in `_AUTO_ORDER`'s order for the platform: GPU cudnn, xla, flash, blockwise; TPU
    xla, flash, blockwise; CPU (and any other) xla, blockwise (flash and cudnn cannot run there). Once the
    call's float32 [B, N, T, S] logits would exceed 2 GiB, the O(S)-memory backend moves just ahead of xla
    (blockwise on the CPU, flash on GPU/TPU). Registered backends follow, in registration order.

    Args:
      call: None, or the call (only its shapes are read).
      platform: "cpu", "gpu" or "tpu"; None means `attention_jax.kernels.platform()`.
    """
    platform = device_platform() if platform is None else platform
    platform = platform if platform in _AUTO_ORDER else "cpu"
    order = list(_AUTO_ORDER[platform])
    if call is not None:
        batch, num_queries, heads, _ = call.query.shape
        if 4 * batch * heads * num_queries * call.key.shape[1] > _DENSE_BYTES_LIMIT:
            large = _LARGE_CALL_FIRST[platform]
            order.remove(large)
            order.insert(order.index("xla"), large)
    known = [name for name in order if _lookup(name) is not None]
    return tuple(known + [name for name in _REGISTERED if name not in known])


def _mask_spec(mask: Any, sources: dict[str, Any]) -> AttentionMask:
    """The call's one `AttentionMask`: `mask` itself when it is one (then no other source may be given)."""
    if isinstance(mask, AttentionMask):
        given = [name for name, value in sources.items()
                 if value is not None and not (isinstance(value, (bool, np.bool_)) and not value)]
        if given:
            raise ValueError(f"mask is an AttentionMask, so give every mask source inside it, not as keywords; "
                             f"got {given}")
        return mask
    return AttentionMask(mask, **sources)


def _make_call(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False, query_seq_lengths=None,
               key_value_seq_lengths=None, local_window_size=None, segment_ids=None, dropout_rate=0.0,
               dropout_rng=None, return_weights=False, return_lse=False, normalizer="softmax") -> AttentionCall:
    """Checks the arguments once and packs them (raises as `dot_product_attention` documents)."""
    _checks.choice("normalizer", normalizer, alignment.NORMALIZERS)
    if normalizer != "softmax" and _checks.flag("return_lse", return_lse):
        raise ValueError(f"return_lse needs normalizer='softmax': the log-sum-exp is the softmax's normaliser, "
                         f"{normalizer!r} has none")
    spec = _mask_spec(mask, dict(
        is_causal=is_causal, query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
        segment_ids=segment_ids, local_window_size=local_window_size))
    spec = spec.bind(query, key, value)
    check_bias(bias, *spec.shape)
    dropout_rate = _checks.rate("dropout_rate", dropout_rate)
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
    return AttentionCall(
        query, key, value, bias, spec, masks.attention_scale(scale, query.shape[-1]), dropout_rate, dropout_rng,
        _checks.flag("return_weights", return_weights), _checks.flag("return_lse", return_lse), normalizer)


def _resolve(implementation: Any) -> Backend | None:
    """None, a Backend, or the Backend a name stands for; raises for anything else."""
    if implementation is None or isinstance(implementation, Backend):
        return implementation
    if isinstance(implementation, str):
        backend = _lookup(implementation)
        if backend is None:
            raise ValueError(f"unknown implementation {implementation!r}; choose one of "
                             f"{list(registered_backends())}, a Backend object, or None")
        return backend
    raise TypeError(f"implementation must be None, a backend name or a Backend object, got {implementation!r}")


def supports(implementation: str | Backend, query: Any, key: Any, value: Any, **kwargs: Any) -> tuple[bool, str]:
    """Whether backend `implementation` can run this call.

    Args:
      implementation: a backend name or a `Backend` object.
      query: [B, T, N, H] floating (or anything with .shape and .dtype, e.g. jax.ShapeDtypeStruct).
      key: [B, S, K, H] floating.
      value: [B, S, K, H] floating.
      **kwargs: the keyword arguments that would go to `dot_product_attention` (bias, mask, scale, is_causal,
        ...).

    Returns:
      (ok, reason): reason is '' when ok, else says why not (an unknown name, arguments that
      `dot_product_attention` would reject, or what the backend lacks).
    """
    try:
        backend = _resolve(implementation)
    except (ValueError, TypeError) as err:
        return False, str(err)
    if backend is None:
        return False, "supports needs a backend name or object, got None"
    try:
        call = _make_call(query, key, value, **kwargs)
    except (ValueError, TypeError) as err:
        return False, f"invalid arguments: {err}"
    return _backend_supports(backend, call)


def _backend_supports(backend: Backend, call: AttentionCall) -> tuple[bool, str]:
    """backend.supports(call), after the normalizer check every backend shares (a registered function too)."""
    reason = backend.normalizer_reason(call)
    return (False, reason) if reason else backend.supports(call)


def _choose_backend(implementation: Any, call: AttentionCall) -> Backend:
    backend = _resolve(implementation)
    if backend is not None:
        ok, reason = _backend_supports(backend, call)
        if not ok:
            raise ValueError(f"implementation {implementation!r} cannot run this call: {reason}")
        return backend
    reasons = []
    for name in auto_order(call):
        backend = _lookup(name)
        ok, reason = _backend_supports(backend, call)
        if ok:
            logged = (name, tuple(reasons))
            if logged not in _LOGGED_CHOICES:
                _LOGGED_CHOICES.add(logged)
                skipped = f" (skipped {'; '.join(reasons)})" if reasons else ""
                logging.info("dot_product_attention: implementation=None picked %r%s", name, skipped)
            return backend
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no registered implementation supports this call: {reasons}")


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | AttentionMask | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    local_window_size: int | tuple[int | None, int | None] | None = None,
    implementation: str | Backend | None = None,
    return_residual: bool = False,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    return_weights: bool = False,
    return_lse: bool = False,
    normalizer: str = "softmax",
) -> jax.Array | tuple[jax.Array, jax.Array] | DotProductAttentionOutput:
    """Scaled dot-product attention, softmax(Q K^T * scale + bias) V, over N query and K key/value heads.

    Vaswani et al. 2017, arXiv:1706.03762, eq. 1; grouped-query attention (K < N, N % K == 0), Ainslie et al.
    2023, arXiv:2305.13245; multi-query attention (K = 1), Shazeer 2019, arXiv:1911.02150.

    A drop-in for `jax.nn.dot_product_attention`: the same positional arguments and keyword names with the same
    meanings (`scale`, `is_causal`, `query_seq_lengths`, `key_value_seq_lengths`, `local_window_size`,
    `implementation`, `return_residual`), so `from attention_jax import dot_product_attention` can replace the
    jax.nn import. The extras are keywords of their own: `segment_ids`, dropout, `return_weights`, `return_lse`,
    more backends, and `mask=` also taking an `AttentionMask`. Two deliberate differences: inputs must be 4-D
    (no unbatched [T, N, H] form), and a query row with no valid key gets a zero output, zero weights, zero
    gradients and lse = `EMPTY_ROW_LSE` (finfo(float32).min), never NaN, whereas jax.nn averages the values of
    such a row. Keys, values and queries that no valid pair uses never reach the output or the gradients of
    the valid rows, even when they hold NaN. Logits, softmax and the value sum run in float32 whatever the
    input dtype; the output takes the query dtype.

    Empty inputs: when T, S, B or N is 0 there is no (query, key) pair, and every backend returns the same
    thing: an output [B, T, N, H] of zeros (every query row is a row with no valid key), weights [B, N, T, S]
    of zeros, lse [B, N, T] of `EMPTY_ROW_LSE`, and zero gradients. H = 0 raises a ValueError.

    Position alignment (as in jax.nn): query t and key s are both counted from 0, so with `is_causal` query t
    sees keys s <= t for any T and S ("top-left" alignment). When T < S this is NOT the KV-cache alignment in
    which the last query sees the last key; pass an explicit `mask` for that. `local_window_size` uses the same
    positions.

    Args:
      query: [B, T, N, H] floating.
      key: [B, S, K, H] floating, K divides N.
      value: [B, S, K, H] floating.
      bias: None or [B or 1, N or 1, T, S] floating, added to the scaled logits (in float32).
      mask: None, a [B or 1, N or 1, T, S] bool array (True = attend), or an
        `attention_jax.core.masks.AttentionMask` holding every mask source (then none of is_causal,
        query_seq_lengths, key_value_seq_lengths, segment_ids, local_window_size may be given here).
      scale: a Python float, the logit scale; default 1 / sqrt(H).
      is_causal: a bool; mask keys s > t (top-left alignment, see above).
      query_seq_lengths: None or [B] integer; queries t >= query_seq_lengths[b] are fully masked (zero output).
      key_value_seq_lengths: None or [B] integer; keys s >= key_value_seq_lengths[b] are masked.
      local_window_size: None, an int w >= 0 (the window (w, w)), or (left, right), each an int >= 0 or None
        (unbounded): query t sees keys s with t - left <= s <= t + right.
      implementation: None, a backend name ("xla", "blockwise", "flash", "cudnn", "ring", "ulysses" or a
        registered one) or a `Backend` object with its options (e.g. `FlashBackend(interpret=True)`,
        `BlockwiseBackend(block_k=256)`, `RingBackend(mesh=mesh, inner="xla")`).
        None tries the backends in `auto_order()` (GPU: cudnn, xla, flash, blockwise; TPU: xla, flash,
        blockwise; CPU: xla, blockwise; once the [B, N, T, S] float32 logits would pass 2 GiB, flash
        (GPU/TPU) or blockwise (CPU) goes ahead of xla) and runs the first whose `supports` accepts the call,
        logging the choice and the skipped backends' reasons once.
        "xla" materialises the logits and supports everything; "blockwise" (`blockwise_attention`) is O(S)
        memory on any device, no dropout; "flash" is the Pallas kernel (`attention_jax.kernels.flash_attention`:
        compiled on GPU/TPU, interpreted anywhere with `FlashBackend(interpret=True)`; no bias, dense mask or
        dropout); "cudnn" is `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPU, bf16/f16, no
        segment ids, lse or dropout). Sequence parallel, over a mesh axis (never picked by None; name them):
        "ring" (`RingBackend(mesh=None, axis="seq", inner="blockwise", load_balance=True)`: K/V rotate around
        the axis with ppermute, zig-zag load balancing for causal calls; no bias, dense mask, window or
        dropout; causal needs T == S) and "ulysses" (`UlyssesBackend(...)`: all_to_all from sequence to head
        sharding and back; the axis size must divide N; no bias, dense mask or dropout). Both take the ambient
        mesh (`jax.set_mesh`) unless given `mesh=`, and a per-device `inner` backend.
      return_residual: a bool (jax.nn's); return (output, lse [B, T, N] float32). Not with return_weights or
        return_lse.
      segment_ids: None, a pair (q_segment_ids [B, T] integer, kv_segment_ids [B, S] integer), or one [B, T]
        integer array when T == S. Query t sees key s only when their ids are equal (packed sequences).
      dropout_rate: a Python float in [0, 1); inverted dropout on the weights (kept weights scaled by
        1 / (1 - rate)).
      dropout_rng: a PRNG key [2] uint32 (or typed key), required when dropout_rate > 0.
      return_weights: a bool; also return the weights.
      return_lse: a bool; also return the log-sum-exp (softmax only).
      normalizer: "softmax" (eq. 1), or a sparse normaliser that gives keys exactly zero weight: "sparsemax"
        (Martins & Astudillo 2016, arXiv:1602.02068) or "entmax15" (Peters et al. 2019, arXiv:1905.05702,
        alpha = 1.5); the names are `attention_jax.core.alignment.NORMALIZERS`. Only "xla" computes the sparse
        ones (each row's threshold needs all its logits at once); the other backends' `supports` say so, and
        None picks "xla". Rows with no valid key still give zeros.

    Returns:
      output: [B, T, N, H] in the query dtype, when no return_* flag is set. With `return_residual`, jax.nn's
      (output, lse [B, T, N] float32). With `return_weights` or `return_lse`, a
      `DotProductAttentionOutput(output, weights, lse)`: weights [B, N, T, S] float32, the weights applied to
      the values (after dropout); lse [B, N, T] float32, the log-sum-exp of the scaled, biased, masked logits
      before dropout. A field not asked for is None.

    Raises:
      ValueError: for wrong ranks; B, S, K or H that differ between query, key and value; N % K != 0; H = 0;
        mask, bias, lengths or segment id shapes that do not fit; a bad local window, scale or dropout rate;
        dropout without an rng; mask sources given both in an AttentionMask and as keywords; return_residual
        with return_weights/return_lse; an unknown normalizer, or return_lse/return_residual with one other
        than the softmax; an unknown implementation or one that does not support the call.
      TypeError: for arguments that are not arrays (e.g. Python lists), non-floating query/key/value/bias, a
        non-boolean mask, non-integer lengths or ids, flags that are not bools, or an implementation that is
        neither a name, a Backend nor None.
    """
    return_residual = _checks.flag("return_residual", return_residual)
    call = _make_call(
        query, key, value, bias, mask, scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size, segment_ids=segment_ids,
        dropout_rate=dropout_rate, dropout_rng=dropout_rng, return_weights=return_weights, return_lse=return_lse,
        normalizer=normalizer)
    if return_residual and normalizer != "softmax":
        raise ValueError(f"return_residual returns the softmax's lse; normalizer={normalizer!r} has none")
    if return_residual and (call.return_weights or call.return_lse):
        raise ValueError("return_residual (jax.nn's) cannot be combined with return_weights or return_lse")
    if return_residual:
        call = call._replace(return_lse=True)
    backend = _choose_backend(implementation, call)
    if call.mask.is_empty:
        # No (query, key) pair: the same zeros on every backend (see the docstring), no kernel launched.
        output, lse = masks.empty_attention(query, value)
        weights = jnp.zeros(call.mask.shape, jnp.float32)
    else:
        output, weights, lse = backend(call)
    if return_residual:
        return output, jnp.transpose(lse, (0, 2, 1))
    if not (call.return_weights or call.return_lse):
        return output
    return DotProductAttentionOutput(output, weights if call.return_weights else None,
                                     lse if call.return_lse else None)
