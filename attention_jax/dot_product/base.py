"""What every backend of `dot_product_attention` shares: the checked call, the backend interface and the
bias check.

A call is checked once, by `attention_jax.dot_product.api`, and packed into an `AttentionCall` whose `mask`
is an `attention_jax.core.masks.AttentionMask` bound to the call's inputs. A backend receives it as it is and
checks nothing again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment
from attention_jax.core.masks import AttentionMask

__all__ = [
    "EMPTY_ROW_LSE",
    "AttentionCall",
    "Backend",
    "BackendOutput",
    "DotProductAttentionOutput",
    "FunctionBackend",
    "check_bias",
    "weights_from_lse",
]

_F32 = jnp.float32
# The log-sum-exp reported for a query row with no valid key. Finite, so it never makes NaN downstream, and
# so small that exp(EMPTY_ROW_LSE - x) is 0 for any real row when partial results are merged.
EMPTY_ROW_LSE = alignment.EMPTY_ROW_LSE


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
      query: [B, T, N, H]; key, value: [B, S, K, H] (floating; or `jax.ShapeDtypeStruct`s inside `supports`).
      bias: None or [B|1, N|1, T, S] floating.
      mask: the `AttentionMask`, bound to (query, key, value): every mask source, still separate.
      scale: the logit scale (a Python float).
      dropout_rate: a Python float in [0, 1). dropout_rng: a PRNG key or None.
      return_weights, return_lse: what the caller asked for besides the output.
      normalizer: the name of the function that turns logits into weights, one of
        `attention_jax.core.alignment.NORMALIZERS`; only backends whose `normalizers` list it may run the call.
    """

    query: Any
    key: Any
    value: Any
    bias: Any
    mask: AttentionMask
    scale: float
    dropout_rate: float = 0.0
    dropout_rng: Any = None
    return_weights: bool = False
    return_lse: bool = False
    normalizer: str = "softmax"


# (output [B, T, N, H] query dtype, weights [B, N, T, S] float32 or None, lse [B, N, T] float32 or None).
BackendOutput = tuple[jax.Array, "jax.Array | None", "jax.Array | None"]


class Backend:
    """A backend of `dot_product_attention`: subclasses are frozen dataclasses whose fields are its options.

    A backend object is hashable and compares by value, so it can be a Flax module attribute or a static
    argument of `jax.jit`. `implementation=` takes a backend object or the name of one in the table
    (`attention_jax.dot_product.registered_backends()`).
    """

    name: str = ""
    # The normalisers (alignment.NORMALIZERS) this backend computes, and why it computes no other.
    normalizers: ClassVar[tuple[str, ...]] = ("softmax",)
    softmax_only_reason: ClassVar[str] = "computes the softmax only"

    def __call__(self, call: AttentionCall) -> BackendOutput:
        """Runs the checked call. Must return weights when call.return_weights and lse when call.return_lse,
        and give rows with no valid key a zero output, zero weights and EMPTY_ROW_LSE."""
        raise NotImplementedError

    def normalizer_reason(self, call: AttentionCall) -> str:
        """'' when this backend computes `call.normalizer`, else the sentence that says why it does not."""
        if call.normalizer in self.normalizers:
            return ""
        return (f"normalizer={call.normalizer!r}: {self.name or type(self).__name__} {self.softmax_only_reason}; "
                f"implementation='xla' takes every normalizer")

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        """(ok, reason): whether this backend can run the call; reason is '' when ok. Cheap, never raises.

        `call`'s arrays may be `jax.ShapeDtypeStruct`s: read only shapes, dtypes and the mask's structure."""
        del call
        return True, ""


@dataclasses.dataclass(frozen=True)
class FunctionBackend(Backend):
    """A backend from two functions (`register_backend(name, fn, supports_fn)`).

    Attributes:
      fn: fn(call: AttentionCall) -> (output, weights or None, lse or None).
      supports_fn: supports_fn(call) -> (ok, reason).
      name: its name in the table.
    """

    fn: Callable[[AttentionCall], BackendOutput]
    supports_fn: Callable[[AttentionCall], tuple[bool, str]]
    name: str = ""

    def __call__(self, call: AttentionCall) -> BackendOutput:
        return self.fn(call)

    def supports(self, call: AttentionCall) -> tuple[bool, str]:
        return self.supports_fn(call)


def check_bias(bias: Any, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
    """Checks a bias: None or a floating [B|1, N|1, T, S] array.

    Raises:
      TypeError: for a bias that is not an array or not floating.
      ValueError: for a shape that is not [B or 1, N or 1, T, S], naming it and B, N, T, S.
    """
    if bias is None:
        return
    if not (hasattr(bias, "shape") and hasattr(bias, "dtype")):
        raise TypeError(f"bias must be a jax or numpy array, got {type(bias).__name__}")
    _checks.floating("bias", bias)
    shape = tuple(bias.shape)
    if not (len(shape) == 4 and shape[0] in (1, batch) and shape[1] in (1, heads)
            and shape[2:] == (num_queries, num_keys)):
        raise ValueError(
            f"bias must have shape [B or 1, N or 1, T, S] with B={batch} N={heads} T={num_queries} S={num_keys}, "
            f"got bias.shape={shape}"
        )


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
    mask = call.mask.dense_mask()
    if mask is not None:
        valid = valid & mask
    return jnp.where(valid, jnp.exp(jnp.where(valid, logits, 0.0) - lse), 0.0)
