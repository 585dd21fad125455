"""Logical axis names: what each parameter and activation axis means, for sharding by rules.

Every Linen module of the library boxes its parameters with `nn.with_logical_partitioning(init, names)` (so
`model.init` returns `nn.LogicallyPartitioned` leaves) and marks its key activations with
`nn.with_logical_constraint(x, names)`. Both name axes, never devices: `attention_jax.sharding.rules_for`
maps the names onto the axes of a mesh. Without active rules (`nn.logical_axis_rules`) and a mesh
(`jax.set_mesh`) the constraints are no-ops, and `apply` unboxes the parameters itself, so a model runs the
same with or without a mesh.

  name        axis                                                           shape letter
  ----------  -------------------------------------------------------------  ------------
  "batch"     the batch of sequences (activations only)                       B
  "length"    positions of a sequence: T or S (activations only)              T, S
  "heads"     query heads (and Weighted Transformer branches)                 N (M)
  "kv_heads"  key/value heads; differs from "heads" under GQA/MQA             K
  "head_dim"  the features of one head                                        H
  "embed"     the model width: the residual stream, embeddings, E of ConvS2S  D (E)
  "mlp"       a hidden width other than D: the FFN inner size, the attention  F, A, C
              hidden size of Bahdanau/Luong, ConvS2S channels, RNN states
  "vocab"     the vocabulary (embedding rows, output logits)                  V

Feature maps [B, H, W, C] (vision layers) name their channels "embed" and a hidden channel width (SE's C / r,
DANet's C / 8) "mlp"; H and W are never sharded. A C -> C map is named ("embed", None), since one mesh axis
cannot shard two axes of the same array.

None marks an axis that is never sharded: a convolution's width, the rows of a position table, the 2k + 1
rows of a Shaw table, a weight over the source length (Luong's location score).

Not annotated: the decode caches (`self.variable("cache", ...)`, e.g. `MultiHeadAttention`'s cached keys and
values [B, S_max, K, H]) and other non-parameter collections. They are created by `init` as plain arrays;
`attention_jax.sharding` replicates them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

BATCH = "batch"
LENGTH = "length"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
EMBED = "embed"
MLP = "mlp"
VOCAB = "vocab"

NAMES: tuple[str, ...] = (BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM, EMBED, MLP, VOCAB)
"""Every logical axis name the library uses; an annotation holds only these and None."""

Names = Sequence[str | None]


class LogicallyPartitioned(nn.LogicallyPartitioned):
    """`nn.LogicallyPartitioned` that skips the sharding constraint while its value's rank differs from its names.

    `nn.DenseGeneral` calls its kernel_init with the *flattened* [Din, N * H] shape and reshapes the boxed
    value to [Din, N, H] afterwards. flax's box constrains the flat value on unboxing whenever logical axis
    rules and a mesh are active, and flax also evaluates the init (for its shape check) inside every `apply`,
    so under a mesh the rank-3 names met a rank-2 value and jax raised. This box unboxes such an intermediate
    value without a constraint; once reshaped, it behaves exactly as flax's.
    """

    def unbox(self, apply_constraint: bool = True) -> Any:
        if len(jax.numpy.shape(self.value)) != len(self.names):
            return self.value
        return super().unbox(apply_constraint)


def partitioned(init: Callable[..., Any], names: Names) -> Callable[..., Any]:
    """`init` whose result is boxed as an `nn.LogicallyPartitioned` with one logical name per axis.

    The same as `nn.with_logical_partitioning(init, names)`, with the box above (a subclass of flax's).

    Args:
      init: a flax initializer (key, shape, dtype) -> array.
      names: one entry of `NAMES` or None per axis of the parameter; len(names) must be its rank.

    Returns:
      the wrapped initializer.

    Raises:
      ValueError: if a name is neither in `NAMES` nor None.
    """
    names = tuple(names)
    unknown = [n for n in names if n is not None and n not in NAMES]
    if unknown:
        raise ValueError(f"unknown logical axis names {unknown} in {names}; use {NAMES} or None")

    @functools.wraps(init)
    def boxed(*args: Any, **kwargs: Any) -> LogicallyPartitioned:
        return LogicallyPartitioned(init(*args, **kwargs), names)

    return boxed


def constrain(x: jax.Array, names: Names) -> jax.Array:
    """`nn.with_logical_constraint(x, names)`: a no-op unless logical axis rules and a mesh are active.

    Args:
      x: an array of rank len(names).
      names: one entry of `NAMES` or None per axis of x.
    """
    return nn.with_logical_constraint(x, tuple(names))


def dense_inits(in_name: str | None, out_name: str | None, *,
                kernel_init: Callable[..., Any] = nn.initializers.lecun_normal(),
                bias_init: Callable[..., Any] = nn.initializers.zeros_init()) -> dict[str, Callable[..., Any]]:
    """kernel_init and bias_init keyword arguments of an `nn.Dense` [Din, Dout], boxed with logical names.

    The initializers default to `nn.Dense`'s own, so the values do not change, only their boxes.

    Args:
      in_name, out_name: the logical names of Din and Dout (`NAMES` or None).
      kernel_init, bias_init: the initializers to box.
    """
    return dict(kernel_init=partitioned(kernel_init, (in_name, out_name)),
                bias_init=partitioned(bias_init, (out_name,)))


def conv_inits(in_name: str | None, out_name: str | None, *, spatial_dims: int = 2,
               kernel_init: Callable[..., Any] = nn.initializers.lecun_normal(),
               bias_init: Callable[..., Any] = nn.initializers.zeros_init()) -> dict[str, Callable[..., Any]]:
    """kernel_init and bias_init keyword arguments of an `nn.Conv` [k_1, ..., k_n, Cin, Cout], boxed with names.

    The window axes are never sharded (None); Cin and Cout are named like a Dense's Din and Dout. The
    initializers default to `nn.Conv`'s own.

    Args:
      in_name, out_name: the logical names of Cin and Cout (`NAMES` or None).
      spatial_dims: n, the number of window axes (2 for an image's H x W).
      kernel_init, bias_init: the initializers to box.
    """
    return dict(kernel_init=partitioned(kernel_init, (None,) * spatial_dims + (in_name, out_name)),
                bias_init=partitioned(bias_init, (out_name,)))


def norm_inits(name: str | None = EMBED) -> dict[str, Callable[..., Any]]:
    """scale_init and bias_init keyword arguments of an `nn.LayerNorm` over one axis named `name`."""
    return dict(scale_init=partitioned(nn.initializers.ones_init(), (name,)),
                bias_init=partitioned(nn.initializers.zeros_init(), (name,)))


def embed_init(init: Callable[..., Any] = nn.linear.default_embed_init,
               names: Names = (VOCAB, EMBED)) -> Callable[..., Any]:
    """The embedding_init of an `nn.Embed` [V, D] (default: `nn.Embed`'s own initializer), boxed with `names`."""
    return partitioned(init, names)
