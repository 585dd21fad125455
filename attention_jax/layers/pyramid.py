"""Spatial pyramid pooling and pyramid attention pooling: a feature map of any size to one fixed-length vector.

He, Zhang, Ren & Sun 2014, "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
arXiv:1406.4729, §2.3. For a feature map x [B, H, W, C] and pyramid levels n_1, ..., n_L (e.g. 1, 2, 4):

    level n splits H and W into n bins each: n x n spatial bins
    y_{n, i, j} = max_{p in bin (i, j)} x_p                          [C] per bin ("avg": the mean instead)
    y = [y_{n_1, 0, 0}; ...; y_{n_L, n_L - 1, n_L - 1}]               [C sum_l n_l^2], fixed for any H, W

Bins. Bin i of n over a side of length a covers [floor(i a / n), floor((i + 1) a / n)): an exact partition of
the side (consecutive, never overlapping, every pixel in exactly one bin), bins of floor(a / n) or ceil(a / n)
pixels, all non-empty exactly when a >= n. A level with n > H or n > W raises ValueError. Deviation from the
paper: §2.3 builds level n as a sliding-window pooling with window ceil(a / n) and stride floor(a / n), which
gives floor((a - ceil(a / n)) / floor(a / n)) + 1 windows: 5 for a = 11, n = 4, and 3 for a = 11, n = 3 but
leaving pixel 10 uncovered. The partition above always gives n bins that cover the side, so the output length
is C sum n^2 for every input size. (It differs from PyTorch's AdaptiveMaxPool2d, whose bins
[floor(i a / n), ceil((i + 1) a / n)) may overlap by one pixel.)

Output order: level, then bin row-major (i over H, then j over W), then channel: entry
offset(n) + (i n + j) C + c, offset(n) = C sum_{levels before n} n'^2. (The paper's Caffe code flattens each
level channel-major instead; any fixed order serves the fully connected layer that follows.)

Pyramid attention pooling. Zhu, Wang, Xie & Zheng 2018, "Attention-based Pyramid Aggregation Network for
Visual Place Recognition" (APANet), arXiv:1808.00288: spatial pyramid pooling whose regional features are
weighted by a learned attention block. The paper's own text (the layers of its attention block, and how the
weighted regional features are combined and whitened) could not be read here, so its equations are not
transcribed; this file implements a clearly defined form in its spirit, softmax attention pooling inside each
pyramid bin with one scorer per level l (W_l [C, A], b_l [A], v_l [A, 1]):

    e_l(p) = v_l^T tanh(W_l^T x_p + b_l)                             the score of pixel p at level l
    a_l(p) = exp e_l(p) / sum_{q in bin(p)} exp e_l(q)                softmax over the real pixels of p's bin
    y_{l, i, j} = sum_{p in bin (i, j)} a_l(p) x_p                     [C] per bin
    y = [y_{l, i, j}] in the order above                              [C sum_l n_l^2]

With one pixel per bin (or equal scores) it reduces to average pooling: the attention chooses the weights.

Masks. An optional mask [B, H, W] (True = a real pixel) removes pixels from their bins: the bins stay laid on
the full H x W grid (static shapes, so any size works under jit), masked pixels are selected away before any
arithmetic (NaN or inf stored there reaches no output and no gradient), a bin's max, mean and softmax run over
its real pixels only, and a bin with no real pixel pools to zeros with zero gradients, never NaN. To pool a
padded image as its crop, crop it first: the bins follow the array's size, not the mask's extent.

Pooling and softmaxes run in float32 (float64 for float64 inputs); the pooled vectors take the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes, pooling
from attention_jax.core import precision

__all__ = ["PyramidAttentionPooling", "SpatialPyramidPooling", "pyramid_attention_pool", "pyramid_bins",
           "pyramid_size", "spatial_pyramid_pool", "tanh_scores"]

MODES = ("max", "avg")
"""The pooling of each bin `spatial_pyramid_pool` takes."""


def pyramid_bins(size: int, n: int) -> tuple[tuple[int, int], ...]:
    """The n bins of a side of `size` pixels: bin i is [floor(i size / n), floor((i + 1) size / n)).

    An exact partition of range(size) into n consecutive, non-overlapping bins of floor(size / n) or
    ceil(size / n) pixels (He et al. 2014, arXiv:1406.4729, §2.3, with the partition of this module's docstring
    in place of the paper's window / stride recipe).

    Args:
      size: the side's length in pixels, a Python int >= n.
      n: the number of bins, a Python int >= 1.

    Returns:
      n pairs (start, stop), Python ints, start < stop; the first starts at 0, each starts where the previous
      stops, and the last stops at size.

    Raises:
      ValueError: if n < 1, size < 0, or size < n (some bin would be empty; the message names both).
    """
    n = _checks.int_at_least("n", n, 1)
    size = _checks.int_at_least("size", size, 0)
    if size < n:
        raise ValueError(f"a side of {size} pixels cannot be split into n = {n} non-empty bins: need size >= n")
    return tuple(((i * size) // n, ((i + 1) * size) // n) for i in range(n))


def _check_levels(levels: Any) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"levels must be a non-empty sequence of ints >= 1 (e.g. (1, 2, 4)), got {levels!r}")
    return tuple(_checks.int_at_least(f"levels[{i}]", n, 1) for i, n in enumerate(levels))


def pyramid_size(levels: Sequence[int], channels: int) -> int:
    """The length C sum_l n_l^2 of the pyramid vector of a map with `channels` channels.

    Raises:
      ValueError: if levels is not a non-empty sequence of ints >= 1 or channels < 0.
    """
    return _checks.int_at_least("channels", channels, 0) * sum(n * n for n in _check_levels(levels))


def _feature_map(inputs: Any, mask: Any, levels: Any) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """The checked map (masked pixels zeroed), its mask and levels; every level must fit H and W."""
    levels = _check_levels(levels)
    inputs, mask = pooling.masked_feature_map(inputs, mask)
    _, height, width, _ = inputs.shape
    too_fine = [n for n in levels if n > height or n > width]
    if too_fine:
        raise ValueError(f"pyramid levels {too_fine} have more bins than the map has rows or columns: H = {height}, "
                         f"W = {width}, levels = {levels} (inputs.shape={inputs.shape}); every level n needs "
                         f"n <= H and n <= W so that no bin is empty")
    return inputs, mask, levels


def _bins(levels: tuple[int, ...], height: int, width: int):
    """(level index, row slice, column slice) of every bin, in the output order: level, then bins row-major."""
    for index, n in enumerate(levels):
        for r0, r1 in pyramid_bins(height, n):
            for c0, c1 in pyramid_bins(width, n):
                yield index, slice(r0, r1), slice(c0, c1)


def spatial_pyramid_pool(inputs: jax.Array, levels: Sequence[int] = (1, 2, 4), *, mode: str = "max",
                         mask: jax.Array | None = None) -> jax.Array:
    """He et al. 2014 (arXiv:1406.4729), §2.3: spatial pyramid pooling to a vector of fixed length.

    Each level n splits the map into n x n bins (`pyramid_bins` on H and on W) and pools each bin; the bins'
    vectors are concatenated level by level, bins row-major, channels last (see the module docstring).

    Args:
      inputs: [B, H, W, C] floating, any H, W >= max(levels).
      levels: the pyramid levels n_l, a non-empty sequence of Python ints >= 1 (static).
      mode: "max" (the paper's) or "avg", the pooling within each bin.
      mask: None or [B, H, W] bool, True = a real pixel; a bin pools over its real pixels only.

    Returns:
      [B, C sum_l n_l^2] in the inputs' dtype; the C entries of a bin with no real pixel are 0.

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], levels are not ints >= 1, some level
        n > H or n > W (the message names H, W and the levels), or mode is unknown.
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    _checks.choice("mode", mode, MODES)
    inputs, mask, levels = _feature_map(inputs, mask, levels)
    batch, height, width, channels = inputs.shape
    dtype = precision.compute_dtype(inputs)
    pooled = []
    for _, rows, cols in _bins(levels, height, width):
        x = inputs[:, rows, cols]  # [B, h, w, C]
        size = x.shape[1] * x.shape[2]
        x, m = x.reshape(batch, size, channels), mask[:, rows, cols].reshape(batch, size)
        if mode == "max":
            pooled.append(pooling.max_pool(x, m))  # [B, C]; exact, in the inputs' dtype
        else:
            count = jnp.sum(m, axis=1, keepdims=True).astype(dtype)  # [B, 1]
            pooled.append((jnp.sum(x.astype(dtype), axis=1) / jnp.maximum(count, 1.0)).astype(inputs.dtype))
    return jnp.concatenate(pooled, axis=-1)


def tanh_scores(inputs: jax.Array, w: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
    """The additive score of every pixel, e(p) = v^T tanh(W^T x_p + b): one level's scorer.

    The score of Bahdanau et al. (arXiv:1409.0473) without a query, as feed-forward attention pooling scores
    positions; here it scores the pixels of a feature map for `pyramid_attention_pool` (APANet,
    arXiv:1808.00288, in the form of this module's docstring).

    Args:
      inputs: [B, H, W, C] floating.
      w: [C, A] floating, W.
      b: [A] floating, b.
      v: [A, 1] floating, v.

    Returns:
      [B, H, W] float32 (float64 when any argument is float64).

    Raises:
      ValueError: if inputs are not rank 4 or w, b, v are not [C, A], [A], [A, 1] (the message names them).
      TypeError: for a non-floating argument.
    """
    for name, value, rank in (("inputs", inputs, 4), ("w", w, 2), ("b", b, 1), ("v", v, 2)):
        _checks.rank(name, value, rank)
        _checks.floating(name, value)
    channels, hidden = jnp.shape(inputs)[-1], jnp.shape(w)[-1]
    got = (tuple(jnp.shape(w)), tuple(jnp.shape(b)), tuple(jnp.shape(v)))
    if got != ((channels, hidden), (hidden,), (hidden, 1)):
        raise ValueError(f"the scorer must be w [C, A], b [A], v [A, 1] for inputs with C = {channels}: got "
                         f"w.shape={got[0]} b.shape={got[1]} v.shape={got[2]} inputs.shape={tuple(jnp.shape(inputs))}")
    dtype = precision.compute_dtype(inputs, w, b, v)
    hidden_units = jnp.tanh(jnp.einsum("BHWC,CA->BHWA", jnp.asarray(inputs, dtype), jnp.asarray(w, dtype))
                            + jnp.asarray(b, dtype))  # [B, H, W, A]
    return jnp.einsum("BHWA,A->BHW", hidden_units, jnp.asarray(v, dtype)[:, 0])


def _bin_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to mask; all zeros (and zero gradients) for a row with no True."""
    live = jnp.any(mask, axis=-1, keepdims=True)
    top = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    top = jax.lax.stop_gradient(jnp.where(live, top, 0.0))
    unnormalised = jnp.where(mask, jnp.exp(jnp.where(mask, logits, top) - top), 0.0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    return unnormalised / jnp.where(live, total, 1.0)


def pyramid_attention_pool(inputs: jax.Array, logits: jax.Array, levels: Sequence[int] = (1, 2, 4), *,
                           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Softmax attention pooling inside each spatial-pyramid bin, one score map per level (APANet's form).

    Zhu et al. 2018 (arXiv:1808.00288), in the form of this module's docstring: level l's weights a_l are the
    softmax of its scores e_l over the real pixels of each bin, and bin (i, j) pools sum_p a_l(p) x_p. The
    bins are `spatial_pyramid_pool`'s (He et al. 2014, arXiv:1406.4729, §2.3) and so is the output order.

    Args:
      inputs: [B, H, W, C] floating, any H, W >= max(levels).
      logits: [B, L, H, W] floating, e_l(p): the score of every pixel under each level's scorer (e.g. from
        `tanh_scores`); L = len(levels). Scores at masked pixels are never read.
      levels: the pyramid levels n_l, a non-empty sequence of Python ints >= 1 (static).
      mask: None or [B, H, W] bool, True = a real pixel.

    Returns:
      pooled: [B, C sum_l n_l^2] in the inputs' dtype; the C entries of a bin with no real pixel are 0.
      weights: [B, L, H, W] float32 (float64 for float64 inputs or logits), a_l(p): summing to 1 over the real
        pixels of each bin (each pixel is in exactly one bin per level), exactly 0 at masked pixels.

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], logits are not [B, L, H, W] for these
        inputs and levels, levels are not ints >= 1, or some level n > H or n > W (the messages name them).
      TypeError: for non-floating inputs or logits, or a non-boolean mask.
    """
    inputs, mask, levels = _feature_map(inputs, mask, levels)
    batch, height, width, channels = inputs.shape
    _checks.rank("logits", logits, 4)
    _checks.floating("logits", logits)
    expected = (batch, len(levels), height, width)
    if tuple(jnp.shape(logits)) != expected:
        raise ValueError(f"logits must be [B, L, H, W] = {expected} (one score map per level of {levels}) for "
                         f"inputs.shape={inputs.shape}, got logits.shape={tuple(jnp.shape(logits))}")
    dtype = jnp.promote_types(precision.compute_dtype(inputs), jnp.result_type(logits))
    x = inputs.astype(dtype)
    logits = jnp.where(mask[:, None], jnp.asarray(logits, dtype), 0.0)  # NaN at masked pixels reaches nothing
    pooled, weights = [], jnp.zeros(expected, dtype)
    for level, rows, cols in _bins(levels, height, width):
        xb = x[:, rows, cols]  # [B, h, w, C]
        h, w = xb.shape[1:3]
        a = _bin_softmax(logits[:, level, rows, cols].reshape(batch, h * w),
                         mask[:, rows, cols].reshape(batch, h * w))  # [B, h w]
        pooled.append(jnp.einsum("BK,BKC->BC", a, xb.reshape(batch, h * w, channels)))
        weights = weights.at[:, level, rows, cols].set(a.reshape(batch, h, w))
    return jnp.concatenate(pooled, axis=-1).astype(inputs.dtype), weights


class SpatialPyramidPooling(nn.Module):
    """He et al. 2014's spatial pyramid pooling (arXiv:1406.4729, §2.3); no parameters.

    Attributes:
      levels: the pyramid levels n_l (default (1, 2, 4)); the output has C sum_l n_l^2 features.
      mode: "max" (the paper's) or "avg".
    """

    levels: Sequence[int] = (1, 2, 4)
    mode: str = "max"

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """`spatial_pyramid_pool`: inputs [B, H, W, C], mask None or [B, H, W] -> [B, C sum_l n_l^2].

        Raises:
          ValueError, TypeError: as `spatial_pyramid_pool`.
        """
        return spatial_pyramid_pool(inputs, tuple(self.levels), mode=self.mode, mask=mask)


class PyramidAttentionPooling(nn.Module):
    """Attention pooling inside spatial-pyramid bins, one tanh scorer per level (APANet, arXiv:1808.00288).

    The form of this module's docstring: level l scores every pixel with e_l = v_l^T tanh(W_l^T x + b_l)
    (`tanh_scores`) and pools each of its bins with the softmax of those scores (`pyramid_attention_pool`).

    Attributes:
      levels: the pyramid levels n_l (default (1, 2, 4)); the output has C sum_l n_l^2 features.
      hidden: A, the width of each scorer's tanh layer (default 128).
      kernel_init: the initializer of W_l and v_l (default lecun_normal, as nn.Dense's).
      param_dtype: the parameters' dtype.

    Parameters, for each level index l (0, 1, ...): w_l [C, A] ("embed", "mlp"), b_l [A] ("mlp",) and
    v_l [A, 1] ("mlp", None).
    """

    levels: Sequence[int] = (1, 2, 4)
    hidden: int = 128
    kernel_init: Any = nn.initializers.lecun_normal()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Scores every pixel at every level, then `pyramid_attention_pool`.

        Args:
          inputs: [B, H, W, C] floating, H, W >= max(levels).
          mask: None or [B, H, W] bool, True = a real pixel.
          return_weights: also return the weights a_l [B, L, H, W].

        Returns:
          pooled [B, C sum_l n_l^2] in the inputs' dtype, or (pooled, weights [B, L, H, W] float32) when
          return_weights.

        Raises:
          ValueError: as `pyramid_attention_pool`, or if hidden is not an int >= 1.
          TypeError: as `pyramid_attention_pool`, or if return_weights is not a bool.
        """
        return_weights = _checks.flag("return_weights", return_weights)
        hidden = _checks.int_at_least("hidden", self.hidden, 1)
        clean, mask, levels = _feature_map(inputs, mask, self.levels)  # masked pixels zeroed before scoring
        channels = clean.shape[-1]
        logits = []
        for l in range(len(levels)):
            w = self.param(f"w_{l}", axes.partitioned(self.kernel_init, (axes.EMBED, axes.MLP)), (channels, hidden),
                           self.param_dtype)
            b = self.param(f"b_{l}", axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)), (hidden,),
                           self.param_dtype)
            v = self.param(f"v_{l}", axes.partitioned(self.kernel_init, (axes.MLP, None)), (hidden, 1),
                           self.param_dtype)
            logits.append(tanh_scores(clean, w, b, v))  # [B, H, W]
        pooled, weights = pyramid_attention_pool(clean, jnp.stack(logits, axis=1), levels, mask=mask)
        return (pooled, weights) if return_weights else pooled
