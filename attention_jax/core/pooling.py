"""Pooling a sequence of feature vectors over time: the baselines attention pooling is measured against.

  sum_pool, mean_pool, max_pool   one vector per sequence.
  kmax_pool, dynamic_k            the k largest values of each feature in their original order (Kalchbrenner
                                  et al. 2014, arXiv:1404.2188, §3.3 and eq. 3 for the dynamic k).
  chunk_max_pool                  the maximum of each feature within C contiguous chunks of the sequence
                                  (chunk-max pooling; a relative of Chen et al. 2015's dynamic multi-pooling,
                                  ACL P15-1017, which splits at argument positions instead).
  stochastic_pool                 Zeiler & Fergus 2013 (arXiv:1301.3557), §3: within each window, sample one
                                  position with probability proportional to its activation when training, and
                                  weight every position by that probability at test time.

Every function takes inputs [B, T, D] and an optional mask [B, T] (True = a real position), and never lets a
masked position reach the output or the gradients, even when it holds NaN. A sequence (or a chunk or window)
with no valid position pools to zeros, with zero gradients; T = 0 is such a sequence.

The same for feature maps [B, H, W, C] with an optional pixel mask [B, H, W], over non-overlapping wh x ww
windows (stride = window; the last row and column of windows partial when the window does not divide the map):

  max_pool_2d, avg_pool_2d        the maximum / the mean over each window's real pixels.
  stochastic_pool_2d              Zeiler & Fergus 2013 (arXiv:1301.3557), §3, over 2-D windows (the paper's
                                  own setting).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks
from attention_jax.core import precision

__all__ = ["avg_pool_2d", "chunk_max_pool", "dynamic_k", "kmax_pool", "masked_feature_map", "masked_sequence",
           "max_pool", "max_pool_2d", "mean_pool", "mean_weights", "stochastic_pool", "stochastic_pool_2d",
           "sum_pool"]


def masked_sequence(inputs: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Checks a padded sequence and zeroes its masked positions: what every pooling does first.

    Args:
      inputs: [B, T, D] floating.
      mask: None or [B, T] bool, True = a real position.

    Returns:
      (inputs with masked positions set to 0, so NaN stored there reaches nothing; the mask, all True for None).

    Raises:
      ValueError: if inputs are not rank 3 or the mask is not [B, T].
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    _checks.rank("inputs", inputs, 3)
    _checks.floating("inputs", inputs)
    inputs = jnp.asarray(inputs)
    batch, length, _ = inputs.shape
    if mask is None:
        return inputs, jnp.ones((batch, length), bool)
    _checks.boolean("mask", mask)
    if jnp.shape(mask) != (batch, length):
        raise ValueError(f"mask must be [B, T] = {(batch, length)} for inputs [B, T, D], got {jnp.shape(mask)=} "
                         f"{inputs.shape=}")
    mask = jnp.asarray(mask)
    return jnp.where(mask[:, :, None], inputs, jnp.zeros((), inputs.dtype)), mask


def sum_pool(inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The sum over valid positions.

    Args:
      inputs: [B, T, D] floating.
      mask: None or [B, T] bool, True = a real position.

    Returns:
      [B, D] in the inputs' dtype; zeros for a sequence with no valid position.

    Raises:
      ValueError: if inputs are not rank 3 or the mask is not [B, T].
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    inputs, _ = masked_sequence(inputs, mask)
    return jnp.sum(inputs, axis=1)


def mean_pool(inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The mean over valid positions (HAN's HN-AVE, Yang et al. 2016, N16-1174, Table 2).

    Args:
      inputs: [B, T, D] floating.
      mask: None or [B, T] bool, True = a real position.

    Returns:
      [B, D] in the inputs' dtype; zeros (and zero gradients) for a sequence with no valid position.

    Raises:
      ValueError: if inputs are not rank 3 or the mask is not [B, T].
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    inputs, mask = masked_sequence(inputs, mask)
    count = jnp.sum(mask, axis=1, keepdims=True).astype(jnp.float32)  # [B, 1]
    total = jnp.sum(inputs.astype(jnp.float32), axis=1)
    return (total / jnp.maximum(count, 1.0)).astype(inputs.dtype)


def mean_weights(mask: jax.Array) -> jax.Array:
    """The weights `mean_pool` gives each position, as attention would: 1 / L at the L valid positions.

    Args:
      mask: [B, T] bool, True = a real position.

    Returns:
      [B, T] float32; all zeros for a sequence with no valid position.

    Raises:
      ValueError: if the mask is not rank 2.
      TypeError: if the mask is not boolean.
    """
    _checks.rank("mask", mask, 2)
    _checks.boolean("mask", mask)
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(jnp.float32)
    return jnp.where(mask, 1.0 / count, 0.0)


def max_pool(inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The maximum of each feature over valid positions (max-over-time pooling, Collobert et al. 2011).

    Args:
      inputs: [B, T, D] floating.
      mask: None or [B, T] bool, True = a real position.

    Returns:
      [B, D] in the inputs' dtype; zeros (and zero gradients) for a sequence with no valid position.

    Raises:
      ValueError: if inputs are not rank 3 or the mask is not [B, T].
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    inputs, mask = masked_sequence(inputs, mask)
    if inputs.shape[1] == 0:
        return jnp.zeros((inputs.shape[0], inputs.shape[2]), inputs.dtype)
    lowest = jnp.finfo(inputs.dtype).min
    best = jnp.max(jnp.where(mask[:, :, None], inputs, lowest), axis=1)
    return jnp.where(jnp.any(mask, axis=1)[:, None], best, jnp.zeros((), inputs.dtype))


def dynamic_k(layer: int, num_layers: int, length: int, k_top: int) -> int:
    """Kalchbrenner et al. 2014 (arXiv:1404.2188), eq. 3: k_l = max(k_top, ceil((L - l) / L * s)).

    Args:
      layer: l, the convolutional layer (1-based) whose output is pooled; l = L is the top layer.
      num_layers: L, the number of convolutional layers.
      length: s, the sentence length.
      k_top: the fixed k of the top layer.

    Returns:
      k_l, a Python int.

    Raises:
      ValueError: unless 1 <= layer <= num_layers, k_top >= 1 and length >= 0.
    """
    num_layers = _checks.int_at_least("num_layers", num_layers, 1)
    layer = _checks.int_at_least("layer", layer, 1)
    if layer > num_layers:
        raise ValueError(f"layer must be in 1..num_layers={num_layers}, got {layer}")
    length = _checks.int_at_least("length", length, 0)
    k_top = _checks.int_at_least("k_top", k_top, 1)
    return max(k_top, math.ceil((num_layers - layer) / num_layers * length))


def kmax_pool(inputs: jax.Array, k: int, mask: jax.Array | None = None) -> jax.Array:
    """The k largest values of each feature, kept in the order in which they occur in the sequence.

    Kalchbrenner et al. 2014 (arXiv:1404.2188), §3.3: "the order of the values ... corresponds to their
    original order in the input". The positions of the top k are sorted before the gather; sorting the values
    instead (what many ports do) loses that order. Ties go to the earlier position.

    Args:
      inputs: [B, T, D] floating.
      k: a Python int >= 1 (use `dynamic_k` for eq. 3's k_l).
      mask: None or [B, T] bool, True = a real position.

    Returns:
      [B, k, D] in the inputs' dtype. When a sequence has fewer than k valid positions (k > T included), its
      valid values come first and the remaining slots are zeros.

    Raises:
      ValueError: if inputs are not rank 3, the mask is not [B, T] or k < 1.
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    k = _checks.int_at_least("k", k, 1)
    inputs, mask = masked_sequence(inputs, mask)
    batch, length, features = inputs.shape
    if length < k:  # pad with invalid positions so that top_k has k candidates
        inputs = jnp.pad(inputs, ((0, 0), (0, k - length), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, k - length)))
        length = k
    by_feature = jnp.swapaxes(inputs, 1, 2)  # [B, D, T]
    valid = jnp.broadcast_to(mask[:, None, :], by_feature.shape)
    ranked = jnp.where(valid, by_feature.astype(jnp.float32), -jnp.inf)
    _, index = jax.lax.top_k(ranked, k)  # [B, D, k]
    chosen_valid = jnp.take_along_axis(valid, index, axis=-1)
    order = jnp.argsort(jnp.where(chosen_valid, index, length + index), axis=-1)  # valid ones first, by position
    index = jnp.take_along_axis(index, order, axis=-1)
    chosen_valid = jnp.take_along_axis(chosen_valid, order, axis=-1)
    values = jnp.take_along_axis(by_feature, index, axis=-1)
    values = jnp.where(chosen_valid, values, jnp.zeros((), inputs.dtype))
    return jnp.swapaxes(values, 1, 2)  # [B, k, D]


def chunk_max_pool(inputs: jax.Array, num_chunks: int, mask: jax.Array | None = None) -> jax.Array:
    """The maximum of each feature within each of C contiguous chunks of the valid positions.

    Chunk-max pooling: the valid positions of each sequence, in order, are split into C chunks of nearly equal
    size (position r of L valid ones goes to chunk floor(r C / L)), so the pooled vector keeps coarse order.
    Chen et al. 2015 (ACL P15-1017, §3.2, dynamic multi-pooling) split at argument positions; chunk-max
    pooling splits evenly, as text-CNN surveys describe it.

    Args:
      inputs: [B, T, D] floating.
      num_chunks: C, a Python int >= 1.
      mask: None or [B, T] bool, True = a real position.

    Returns:
      [B, C, D] in the inputs' dtype; a chunk with no position (when L < C, or L = 0) pools to zeros.

    Raises:
      ValueError: if inputs are not rank 3, the mask is not [B, T] or num_chunks < 1.
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    num_chunks = _checks.int_at_least("num_chunks", num_chunks, 1)
    inputs, mask = masked_sequence(inputs, mask)
    count = jnp.sum(mask, axis=1, keepdims=True)  # [B, 1]
    rank = jnp.cumsum(mask, axis=1) - 1  # [B, T], rank among the valid positions
    chunk = (rank * num_chunks) // jnp.maximum(count, 1)  # [B, T]
    member = mask[:, :, None] & (chunk[:, :, None] == jnp.arange(num_chunks))  # [B, T, C]
    lowest = jnp.finfo(inputs.dtype).min
    spread = jnp.where(member[..., None], inputs[:, :, None, :], lowest)  # [B, T, C, D]
    best = jnp.max(spread, axis=1, initial=lowest)  # [B, C, D]
    return jnp.where(jnp.any(member, axis=1)[..., None], best, jnp.zeros((), inputs.dtype))


def stochastic_pool(
    inputs: jax.Array,
    window: int,
    mask: jax.Array | None = None,
    *,
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Stochastic pooling over non-overlapping windows of `window` positions (Zeiler & Fergus 2013, §3).

    In each window R and feature, p_i = a_i / sum_{j in R} a_j. Training (`deterministic=False`) samples one
    position l from the multinomial p and outputs a_l; test time outputs the probability-weighted sum
    sum_i p_i a_i, the expectation of the training output. Activations must be non-negative (e.g. after a
    ReLU): negative values are treated as zero probability, and a window whose valid activations are all zero
    pools to 0 (never 0/0), with zero gradients.

    Args:
      inputs: [B, T, D] floating, non-negative.
      window: the window (and stride) size, a Python int >= 1; the last window may be partial.
      mask: None or [B, T] bool, True = a real position.
      deterministic: True for the test-time weighting, False to sample.
      rng: a PRNG key, required when deterministic is False.

    Returns:
      [B, ceil(T / window), D] in the inputs' dtype.

    Raises:
      ValueError: if inputs are not rank 3, the mask is not [B, T], window < 1, or sampling has no rng.
      TypeError: if inputs are not floating, the mask is not boolean, or deterministic is not a bool.
    """
    window = _checks.int_at_least("window", window, 1)
    deterministic = _checks.flag("deterministic", deterministic)
    if not deterministic and rng is None:
        raise ValueError("stochastic_pool with deterministic=False samples positions: pass rng=a PRNG key")
    inputs, mask = masked_sequence(inputs, mask)
    batch, length, features = inputs.shape
    regions = -(-length // window)
    pad = regions * window - length
    x = jnp.pad(inputs, ((0, 0), (0, pad), (0, 0))).reshape(batch, regions, window, features)
    valid = jnp.pad(mask, ((0, 0), (0, pad))).reshape(batch, regions, window, 1)
    weight = jnp.where(valid, jnp.maximum(x.astype(jnp.float32), 0.0), 0.0)  # [B, R, W, D]
    total = jnp.sum(weight, axis=2, keepdims=True)  # [B, R, 1, D]
    alive = total > 0
    probs = weight / jnp.where(alive, total, 1.0)
    if deterministic:
        pooled = jnp.sum(probs * x.astype(jnp.float32), axis=2)
        return jnp.where(alive[:, :, 0], pooled, 0.0).astype(inputs.dtype)
    logits = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    logits = jnp.where(alive, logits, 0.0)  # an all-zero window samples anything; its output is zeroed below
    choice = jax.random.categorical(rng, jnp.swapaxes(logits, 2, 3), axis=-1)  # [B, R, D]
    picked = jnp.take_along_axis(x, choice[:, :, None, :], axis=2)[:, :, 0]  # [B, R, D]
    return jnp.where(alive[:, :, 0], picked, jnp.zeros((), inputs.dtype))


# -- 2-D pooling over the H, W of feature maps [B, H, W, C] -------------------------------------------------------


def _window_pair(window: Any) -> tuple[int, int]:
    """(wh, ww) from an int or a pair of ints, each >= 1."""
    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise ValueError(f"window must be an int or a pair (wh, ww) of ints >= 1, got {window!r}")
        return _checks.int_at_least("window[0]", window[0], 1), _checks.int_at_least("window[1]", window[1], 1)
    size = _checks.int_at_least("window", window, 1)
    return size, size


def masked_feature_map(inputs: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Checks a feature map and its pixel mask and zeroes the masked pixels: what every 2-D pooling does first.

    Args:
      inputs: [B, H, W, C] floating.
      mask: None or [B, H, W] bool, True = a real pixel.

    Returns:
      (inputs with masked pixels set to 0, so NaN stored there reaches nothing; the mask, all True for None).

    Raises:
      ValueError: if inputs are not rank 4 or the mask is not [B, H, W] (the message names both shapes).
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    _checks.rank("inputs", inputs, 4)
    _checks.floating("inputs", inputs)
    inputs = jnp.asarray(inputs)
    if mask is None:
        return inputs, jnp.ones(inputs.shape[:3], bool)
    _checks.array("mask", mask)
    if tuple(jnp.shape(mask)) != inputs.shape[:3]:
        raise ValueError(f"mask must be [B, H, W] = {inputs.shape[:3]} for inputs [B, H, W, C], got "
                         f"mask.shape={tuple(jnp.shape(mask))} inputs.shape={inputs.shape}")
    _checks.boolean("mask", mask)
    mask = jnp.asarray(mask)
    return jnp.where(mask[..., None], inputs, jnp.zeros((), inputs.dtype)), mask


def _windows_2d(inputs: jax.Array, window: Any, mask: jax.Array | None, *,
                fill: float = 0.0) -> tuple[jax.Array, jax.Array | None]:
    """The non-overlapping windows of a feature map, the last row and column of windows padded with dead pixels.

    With no mask, nothing is masked and no mask array is built: XLA's CPU compiler spends seconds
    constant-folding reductions over a large all-True mask, so the maskless pools never make one.

    Returns:
      x: [B, Rh, Rw, K, C], Rh = ceil(H / wh), Rw = ceil(W / ww), K = wh ww, pixels row-major in their window;
        0 at masked pixels and ``fill`` at padding pixels.
      valid: [B, Rh, Rw, K] bool, True at the real pixels; None when ``mask`` is None (every pixel is real and
        every window holds at least one).
    """
    wh, ww = _window_pair(window)
    if mask is None:
        _checks.rank("inputs", inputs, 4)
        _checks.floating("inputs", inputs)
        inputs = jnp.asarray(inputs)
    else:
        inputs, mask = masked_feature_map(inputs, mask)
    batch, height, width, channels = inputs.shape
    rows, cols = -(-height // wh), -(-width // ww)
    pad = ((0, 0), (0, rows * wh - height), (0, cols * ww - width))
    x = jnp.pad(inputs, pad + ((0, 0),), constant_values=fill).reshape(batch, rows, wh, cols, ww, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, wh * ww, channels)
    if mask is None:
        return x, None
    valid = jnp.pad(mask, pad).reshape(batch, rows, wh, cols, ww).transpose(0, 1, 3, 2, 4)
    return x, valid.reshape(batch, rows, cols, wh * ww)


def _window_counts(height: int, width: int, wh: int, ww: int) -> np.ndarray:
    """[Rh, Rw, 1] float: how many real pixels each window of an unmasked H x W map holds (a static constant)."""
    rows = np.minimum(wh, height - wh * np.arange(-(-height // wh)))
    cols = np.minimum(ww, width - ww * np.arange(-(-width // ww)))
    return (rows[:, None] * cols[None, :])[..., None].astype(np.float64)


def max_pool_2d(inputs: jax.Array, window: int | tuple[int, int], mask: jax.Array | None = None) -> jax.Array:
    """The maximum of each channel over non-overlapping wh x ww windows (stride = window) of a feature map.

    Windows tile the map from the top-left; the last row (column) of windows is partial when wh (ww) does not
    divide H (W), and pools over the pixels it has, as `stochastic_pool`'s last window does. Masked pixels
    never reach the output or the gradients; a window with no real pixel pools to 0 with zero gradients. Ties
    share the gradient, as `jnp.max`'s do.

    Args:
      inputs: [B, H, W, C] floating.
      window: wh = ww, a Python int >= 1, or a pair (wh, ww).
      mask: None or [B, H, W] bool, True = a real pixel.

    Returns:
      [B, ceil(H / wh), ceil(W / ww), C] in the inputs' dtype.

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], or the window is not an int or a pair
        of ints >= 1.
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    if mask is None:  # padding is -inf, and every window has a real pixel
        x, _ = _windows_2d(inputs, window, None, fill=-np.inf)
        return jnp.max(x, axis=3)
    x, valid = _windows_2d(inputs, window, mask)
    batch, rows, cols, size, channels = x.shape
    pooled = max_pool(x.reshape(batch * rows * cols, size, channels), valid.reshape(batch * rows * cols, size))
    return pooled.reshape(batch, rows, cols, channels)


def avg_pool_2d(inputs: jax.Array, window: int | tuple[int, int], mask: jax.Array | None = None) -> jax.Array:
    """The mean of each channel over the real pixels of non-overlapping wh x ww windows (stride = window).

    A partial window at the bottom or right edge, or one with masked pixels, averages over its real pixels
    only (not over wh ww): padding never dilutes the mean. A window with no real pixel pools to 0 with zero
    gradients. Sums run in float32 (float64 for float64 inputs).

    Args:
      inputs: [B, H, W, C] floating.
      window: wh = ww, a Python int >= 1, or a pair (wh, ww).
      mask: None or [B, H, W] bool, True = a real pixel.

    Returns:
      [B, ceil(H / wh), ceil(W / ww), C] in the inputs' dtype.

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], or the window is not an int or a pair
        of ints >= 1.
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    x, valid = _windows_2d(inputs, window, mask)
    dtype = precision.compute_dtype(x)
    if valid is None:
        wh, ww = _window_pair(window)
        count = jnp.asarray(_window_counts(inputs.shape[1], inputs.shape[2], wh, ww), dtype)  # [Rh, Rw, 1]
    else:
        count = jnp.sum(valid, axis=3).astype(dtype)[..., None]  # [B, Rh, Rw, 1]
    total = jnp.sum(x.astype(dtype), axis=3)  # [B, Rh, Rw, C]
    return (total / jnp.maximum(count, 1.0)).astype(x.dtype)


def stochastic_pool_2d(
    inputs: jax.Array,
    window: int | tuple[int, int],
    mask: jax.Array | None = None,
    *,
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Stochastic pooling over non-overlapping wh x ww windows of a feature map (Zeiler & Fergus 2013, §3).

    arXiv:1301.3557, §3: in each window R_j and channel, p_i = a_i / sum_{k in R_j} a_k. Training
    (`deterministic=False`) samples one location l from the multinomial p and outputs s_j = a_l; test time
    outputs the probability-weighted sum s_j = sum_{i in R_j} p_i a_i (the paper's "probabilistic weighting"),
    the expectation of the training output. (The paper's equation numbers were not checked here.) Activations
    must be non-negative (after a ReLU, as in the paper): negative values get probability 0. A window whose
    real activations are all zero pools to 0 (never 0 / 0), with zero gradients. Windows tile the map from the
    top-left, the last row / column partial as in `max_pool_2d`; masked pixels never reach the output or the
    gradients. The weighting runs in float32 (float64 for float64 inputs).

    Args:
      inputs: [B, H, W, C] floating, non-negative.
      window: wh = ww, a Python int >= 1, or a pair (wh, ww).
      mask: None or [B, H, W] bool, True = a real pixel.
      deterministic: True for the test-time weighting, False to sample.
      rng: a PRNG key, required when deterministic is False; each (image, window, channel) draws on its own.

    Returns:
      [B, ceil(H / wh), ceil(W / ww), C] in the inputs' dtype; when sampling, each entry is exactly one of its
      window's real activations (or 0 for a window with no positive one).

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], the window is not an int or a pair of
        ints >= 1, or sampling has no rng.
      TypeError: if inputs are not floating, the mask is not boolean, or deterministic is not a bool.
    """
    deterministic = _checks.flag("deterministic", deterministic)
    if not deterministic and rng is None:
        raise ValueError("stochastic_pool_2d with deterministic=False samples locations: pass rng=a PRNG key")
    x, valid = _windows_2d(inputs, window, mask)
    dtype = precision.compute_dtype(x)
    weight = jnp.maximum(x.astype(dtype), 0.0)  # [B, Rh, Rw, K, C]; padding pixels hold 0
    if valid is not None:
        weight = jnp.where(valid[..., None], weight, 0.0)
    total = jnp.sum(weight, axis=3, keepdims=True)  # [B, Rh, Rw, 1, C]
    alive = total > 0
    probs = weight / jnp.where(alive, total, 1.0)  # p_i
    if deterministic:  # sum_i p_i a_i
        pooled = jnp.sum(probs * x.astype(dtype), axis=3)
        return jnp.where(alive[:, :, :, 0], pooled, 0.0).astype(x.dtype)
    logits = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    logits = jnp.where(alive, logits, 0.0)  # a dead window samples anything; its output is zeroed below
    choice = jax.random.categorical(rng, jnp.moveaxis(logits, 3, -1), axis=-1)  # [B, Rh, Rw, C], l ~ p
    picked = jnp.take_along_axis(x, choice[:, :, :, None, :], axis=3)[:, :, :, 0]  # [B, Rh, Rw, C]
    return jnp.where(alive[:, :, :, 0], picked, jnp.zeros((), x.dtype))
