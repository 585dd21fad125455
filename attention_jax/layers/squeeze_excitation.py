"""Squeeze-and-Excitation: channel gates computed from a global summary of a feature map.

Hu, Shen, Albanie, Sun & Wu 2017, "Squeeze-and-Excitation Networks", arXiv:1709.01507, §3. For a feature map
U [B, H, W, C] (NHWC; the paper's u_c is channel c):

    z_c = F_sq(u_c) = 1 / (H W) sum_{i=1}^{H} sum_{j=1}^{W} u_c(i, j)       eq. 2: squeeze, z [B, C]
    s = F_ex(z, W) = sigmoid(W_2 relu(W_1 z))                               eq. 3: excitation, s [B, C]
    x~_c = F_scale(u_c, s_c) = s_c u_c                                      eq. 4: scale, broadcast over H, W

with W_1: C -> C / r (the reduction ratio r) and W_2: C / r -> C. As in the released networks, both fully
connected layers carry a bias: s = sigmoid(relu(z W_1 + b_1) W_2 + b_2), with W_1 [C, R], W_2 [R, C] stored
input-major as an `nn.Dense` kernel. The hidden width is R = C // r (floor); `SqueezeExcitation` requires
1 <= r <= C, so R >= 1.

Padded images: an optional mask [B, H, W] (True = a real pixel) makes eq. 2 average over the real pixels only;
padded pixels are selected away (jnp.where) before any arithmetic, so NaN or inf stored there reaches neither
an output nor a gradient, and the outputs are exactly 0 there. An image with no real pixel (H W = 0 included)
gets channel weights 0, hence zero outputs and zero gradients, never NaN. An image padded at its bottom and
right gives, at its real pixels, exactly the outputs of the cropped image.

The gates are computed in float32 (float64 for float64 inputs); the outputs take the input dtype.

The helpers `check_channel_mlp`, `channel_mlp` and `masked_spatial_pools` are shared with
`attention_jax.layers.cbam`, whose channel attention is SE's excitation applied to two pooled vectors.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core import pooling
from attention_jax.core import precision

__all__ = ["SqueezeExcitation", "hidden_width", "squeeze_excitation"]


def check_channel_mlp(channels: int, w1: Any, b1: Any, w2: Any, b2: Any) -> None:
    """Checks the weights of a C -> R -> C MLP: w1 [C, R], b1 [R], w2 [R, C], b2 [C], all floating.

    Raises:
      ValueError: if a shape does not fit (the message names every weight's shape and C).
      TypeError: for a non-floating weight.
    """
    for name, value, rank in (("w1", w1, 2), ("b1", b1, 1), ("w2", w2, 2), ("b2", b2, 1)):
        _checks.rank(name, value, rank)
        _checks.floating(name, value)
    hidden = jnp.shape(w1)[1]
    want = {"w1": (channels, hidden), "b1": (hidden,), "w2": (hidden, channels), "b2": (channels,)}
    got = {"w1": jnp.shape(w1), "b1": jnp.shape(b1), "w2": jnp.shape(w2), "b2": jnp.shape(b2)}
    if any(tuple(got[k]) != want[k] for k in want):
        shapes = " ".join(f"{k}.shape={tuple(v)}" for k, v in got.items())
        raise ValueError(f"the MLP weights must be w1 [C, R], b1 [R], w2 [R, C], b2 [C] with C={channels} "
                         f"(the inputs' channels), got {shapes}")


def channel_mlp(z: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array) -> jax.Array:
    """relu(z W_1 + b_1) W_2 + b_2 (SE's eq. 3 before the sigmoid; CBAM's MLP), in z's dtype.

    Args:
      z: [..., C] floating (pooled descriptors).
      w1, b1, w2, b2: [C, R], [R], [R, C], [C] floating (checked by `check_channel_mlp`), cast to z's dtype.

    Returns:
      [..., C] logits in z's dtype.
    """
    dtype = z.dtype
    hidden = jax.nn.relu(jnp.einsum("...C,CR->...R", z, w1.astype(dtype)) + b1.astype(dtype))  # [..., R]
    return jnp.einsum("...R,RC->...C", hidden, w2.astype(dtype)) + b2.astype(dtype)  # [..., C]


def masked_spatial_pools(clean: jax.Array, mask: jax.Array, with_max: bool) -> tuple[jax.Array, jax.Array | None,
                                                                                           jax.Array]:
    """Average (and max) of each channel over the real pixels of each image, in the compute dtype.

    Args:
      clean: [B, H, W, C] floating, padded pixels already 0 (`core.pooling.masked_feature_map`).
      mask: [B, H, W] bool, True = a real pixel.
      with_max: whether to compute the max pool as well.

    Returns:
      (avg [B, C], max [B, C] or None, alive [B] bool: whether the image has a real pixel). For an image with
      no real pixel, avg and max are 0.
    """
    dtype = precision.compute_dtype(clean)
    x = clean.astype(dtype)
    count = jnp.sum(mask, axis=(1, 2)).astype(dtype)  # [B]
    alive = count > 0  # [B]
    avg = jnp.sum(x, axis=(1, 2)) / jnp.maximum(count, 1.0)[:, None]  # [B, C]
    if not with_max:
        return avg, None, alive
    if x.shape[1] * x.shape[2] == 0:  # no pixel at all: a max over nothing
        return avg, jnp.zeros_like(avg), alive
    # -inf at padded pixels: a constant, so no gradient reaches them.
    lowest = jnp.where(mask[..., None], x, -jnp.inf)  # [B, H, W, C]
    best = jnp.where(alive[:, None], jnp.max(lowest, axis=(1, 2)), jnp.zeros((), dtype))  # [B, C]
    return avg, best, alive


def squeeze_excitation(inputs: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
                       mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Hu et al. 2017 (arXiv:1709.01507), §3, eqs. 2-4: x~ = U * sigmoid(W_2 relu(W_1 mean_{H,W}(U))).

    Args:
      inputs: [B, H, W, C] floating, the feature map U.
      w1: [C, R] floating, W_1 (input-major); R = C / r hidden units.
      b1: [R] floating, W_1's bias.
      w2: [R, C] floating, W_2 (input-major).
      b2: [C] floating, W_2's bias.
      mask: None, or [B, H, W] bool, True = a real pixel. The squeeze averages over the real pixels only.

    Returns:
      outputs: [B, H, W, C] in the inputs' dtype, s_c u_c; exactly 0 at padded pixels.
      channel_weights: [B, C] float32 (float64 for float64 inputs), s in (0, 1); all 0 for an image with no
        real pixel.

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], or the weights are not [C, R], [R],
        [R, C], [C] (the message names the shapes).
      TypeError: for non-floating inputs or weights, or a non-boolean mask.
    """
    clean, mask = pooling.masked_feature_map(inputs, mask)
    check_channel_mlp(clean.shape[-1], w1, b1, w2, b2)
    z, _, alive = masked_spatial_pools(clean, mask, with_max=False)  # [B, C], eq. 2
    s = jax.nn.sigmoid(channel_mlp(z, w1, b1, w2, b2))  # [B, C], eq. 3
    s = jnp.where(alive[:, None], s, jnp.zeros((), s.dtype))
    outputs = clean.astype(s.dtype) * s[:, None, None, :]  # [B, H, W, C], eq. 4
    return outputs.astype(clean.dtype), s


def hidden_width(channels: int, reduction: Any) -> int:
    """R = C // r, the excitation's hidden width; raises ValueError unless r is an int with 1 <= r <= C."""
    reduction = _checks.int_at_least("reduction", reduction, 1)
    if reduction > channels:
        raise ValueError(f"reduction must be <= C = {channels} (the inputs' channels) so that C // reduction >= 1, "
                         f"got reduction={reduction}")
    return channels // reduction


def channel_mlp_params(module: nn.Module, channels: int, reduction: int, param_dtype: Any
                       ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Creates w1 [C, R] ("embed", "mlp"), b1 [R] ("mlp",), w2 [R, C] ("mlp", "embed"), b2 [C] ("embed",) on
    `module` (inside its compact method), with `nn.Dense`'s initialisers; R = `hidden_width(C, reduction)`."""
    hidden = hidden_width(channels, reduction)
    first = axes.dense_inits(axes.EMBED, axes.MLP)
    second = axes.dense_inits(axes.MLP, axes.EMBED)
    w1 = module.param("w1", first["kernel_init"], (channels, hidden), param_dtype)
    b1 = module.param("b1", first["bias_init"], (hidden,), param_dtype)
    w2 = module.param("w2", second["kernel_init"], (hidden, channels), param_dtype)
    b2 = module.param("b2", second["bias_init"], (channels,), param_dtype)
    return w1, b1, w2, b2


class SqueezeExcitation(nn.Module):
    """Hu et al. 2017's SE block (arXiv:1709.01507, §3, eqs. 2-4) on NHWC feature maps.

    Attributes:
      reduction: r, the reduction ratio; the hidden width is C // r. Must satisfy 1 <= r <= C.
      param_dtype: the parameters' dtype.

    Parameters: w1 [C, R] ("embed", "mlp"), b1 [R] ("mlp",), w2 [R, C] ("mlp", "embed"), b2 [C] ("embed",).
    """

    reduction: int = 16
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`squeeze_excitation` with this module's weights.

        Args:
          inputs: [B, H, W, C] floating.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the channel weights s [B, C].

        Returns:
          outputs [B, H, W, C] in the inputs' dtype, or (outputs, channel_weights [B, C] float32) when
          return_weights.

        Raises:
          ValueError: as `squeeze_excitation`, or if the reduction is not an int in [1, C].
          TypeError: as `squeeze_excitation`, or if return_weights is not a bool.
        """
        return_weights = _checks.flag("return_weights", return_weights)
        _checks.rank("inputs", inputs, 4)
        params = channel_mlp_params(self, jnp.shape(inputs)[-1], self.reduction, self.param_dtype)
        outputs, weights = squeeze_excitation(inputs, *params, mask=mask)
        return (outputs, weights) if return_weights else outputs
