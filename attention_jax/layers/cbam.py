"""CBAM, the Convolutional Block Attention Module: channel attention, then spatial attention, on a feature map.

Woo, Park, Lee & Kweon 2018, "CBAM: Convolutional Block Attention Module", arXiv:1807.06521, §3. For a feature
map F [B, H, W, C] (NHWC):

    F' = M_c(F) * F,   F'' = M_s(F') * F'                                          eq. 1
    M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))                            eq. 2: M_c [B, C]
           = sigmoid(W_1 relu(W_0 F^c_avg) + W_1 relu(W_0 F^c_max))
    M_s(F) = sigmoid(f^{k x k}([AvgPool(F); MaxPool(F)]))                          eq. 3: M_s [B, H, W]
           = sigmoid(f^{k x k}([F^s_avg; F^s_max]))

In eq. 2 the pools run over H and W, and ONE MLP (W_0: C -> C / r, ReLU, W_1: C / r -> C, shared weights) maps
both pooled vectors; here the two descriptors are stacked [B, 2, C] and go through that MLP in a single call.
As in the released code each layer of the MLP has a bias (so b_1 enters both terms). In eq. 3 the pools run
over the channels; the average map is channel 0 and the max map channel 1 of the 2-channel input of a k x k
convolution (k = 7 in the paper) with one output, stride 1 and 'SAME' zero padding.

Deviation from the released code: its spatial branch is conv (no bias) + BatchNorm; here it is a conv with a
bias and no BatchNorm (the paper's eq. 3, which has neither), so the layer needs no batch statistics. Its
channel pool also stacks [max; avg]; here the order is the paper's [avg; max].

Padded images: an optional mask [B, H, W] (True = a real pixel). Padded pixels are selected away (jnp.where)
before any arithmetic, so NaN or inf stored there reaches neither an output nor a gradient: both spatial pools
of eq. 2 run over the real pixels only (an average over them, a max over them), the channel pools of eq. 3 are
0 at padded pixels (as the convolution's zero padding is), and M_s and the outputs are exactly 0 there. An image
padded at its bottom and right therefore gives, at its real pixels, exactly the outputs of the cropped image. An
image with no real pixel (H W = 0 included) gets M_c = 0 and M_s = 0: zero outputs and gradients, never NaN.

The maps are computed in float32 (float64 for float64 inputs); the outputs take the input dtype.
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
from attention_jax.layers import squeeze_excitation as se

__all__ = ["CBAM", "CBAMChannelAttention", "CBAMSpatialAttention", "cbam", "cbam_channel_attention",
           "cbam_spatial_attention"]


def cbam_channel_attention(inputs: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
                           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Woo et al. 2018 (arXiv:1807.06521), §3, eq. 2 and eq. 1's F' = M_c(F) * F: channel attention.

    M_c = sigmoid(MLP(avg) + MLP(max)) with one MLP, relu(v w1 + b1) w2 + b2, applied to both pooled vectors.

    Args:
      inputs: [B, H, W, C] floating, the feature map F.
      w1: [C, R] floating, W_0 (input-major); R = C / r hidden units.
      b1: [R] floating, W_0's bias.
      w2: [R, C] floating, W_1 (input-major).
      b2: [C] floating, W_1's bias.
      mask: None, or [B, H, W] bool, True = a real pixel; both pools run over the real pixels only.

    Returns:
      outputs: [B, H, W, C] in the inputs' dtype, F' = M_c * F; exactly 0 at padded pixels.
      channel_map: [B, C] float32 (float64 for float64 inputs), M_c in (0, 1); all 0 for an image with no
        real pixel.

    Raises:
      ValueError: if inputs are not rank 4, the mask is not [B, H, W], or the weights are not [C, R], [R],
        [R, C], [C] (the message names the shapes).
      TypeError: for non-floating inputs or weights, or a non-boolean mask.
    """
    clean, mask = pooling.masked_feature_map(inputs, mask)
    se.check_channel_mlp(clean.shape[-1], w1, b1, w2, b2)
    avg, best, alive = se.masked_spatial_pools(clean, mask, with_max=True)  # [B, C] each
    logits = se.channel_mlp(jnp.stack([avg, best], axis=1), w1, b1, w2, b2)  # [B, 2, C]: the shared MLP
    channel_map = jax.nn.sigmoid(jnp.sum(logits, axis=1))  # [B, C]
    channel_map = jnp.where(alive[:, None], channel_map, jnp.zeros((), channel_map.dtype))
    outputs = clean.astype(channel_map.dtype) * channel_map[:, None, None, :]  # [B, H, W, C]
    return outputs.astype(clean.dtype), channel_map


def _check_conv(kernel: Any, bias: Any) -> None:
    _checks.rank("kernel", kernel, 4)
    _checks.floating("kernel", kernel)
    _checks.rank("bias", bias, 1)
    _checks.floating("bias", bias)
    k = jnp.shape(kernel)
    if k[0] < 1 or k[1] < 1 or k[2:] != (2, 1) or tuple(jnp.shape(bias)) != (1,):
        raise ValueError(f"the spatial convolution must be kernel [kh, kw, 2, 1] (2 input maps [avg; max], 1 "
                         f"output) and bias [1], got kernel.shape={tuple(k)} bias.shape={tuple(jnp.shape(bias))}")


def cbam_spatial_attention(inputs: jax.Array, kernel: jax.Array, bias: jax.Array,
                           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Woo et al. 2018 (arXiv:1807.06521), §3, eq. 3 and eq. 1's F'' = M_s(F') * F': spatial attention.

    M_s = sigmoid(conv([mean_c(F); max_c(F)]) + bias), a 'SAME' zero-padded stride-1 convolution whose input
    channel 0 is the channel mean and channel 1 the channel max.

    Args:
      inputs: [B, H, W, C] floating with C >= 1, the feature map (F' in CBAM).
      kernel: [kh, kw, 2, 1] floating (HWIO), the convolution f; input channel 0 reads the average map.
      bias: [1] floating, the convolution's bias.
      mask: None, or [B, H, W] bool, True = a real pixel; both channel pools are 0 at padded pixels.

    Returns:
      outputs: [B, H, W, C] in the inputs' dtype, M_s * F; exactly 0 at padded pixels.
      spatial_map: [B, H, W] float32 (float64 for float64 inputs), M_s in (0, 1) at real pixels, exactly 0 at
        padded ones.

    Raises:
      ValueError: if inputs are not rank 4 or have no channel, the mask is not [B, H, W], or kernel / bias are
        not [kh, kw, 2, 1] / [1] (the message names the shapes).
      TypeError: for non-floating inputs, kernel or bias, or a non-boolean mask.
    """
    clean, mask = pooling.masked_feature_map(inputs, mask)
    if clean.shape[-1] == 0:
        raise ValueError(f"inputs must have C >= 1 channels for the channel pools, got inputs.shape={clean.shape}")
    _check_conv(kernel, bias)
    dtype = precision.compute_dtype(clean)
    x = clean.astype(dtype)
    if x.shape[1] * x.shape[2] == 0:  # no pixel: nothing to convolve
        return clean, jnp.zeros(x.shape[:3], dtype)
    # [B, H, W, 2]: [avg; max]; both 0 at padded pixels, whose channels are all 0 in x.
    pooled = jnp.stack([jnp.mean(x, axis=-1), jnp.max(x, axis=-1)], axis=-1)
    logits = jax.lax.conv_general_dilated(pooled, kernel.astype(dtype), window_strides=(1, 1), padding="SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [B, H, W, 1]
    spatial_map = jax.nn.sigmoid(logits[..., 0] + bias.astype(dtype)[0])  # [B, H, W]
    spatial_map = jnp.where(mask, spatial_map, jnp.zeros((), dtype))
    outputs = x * spatial_map[..., None]  # [B, H, W, C]
    return outputs.astype(clean.dtype), spatial_map


def cbam(inputs: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
         kernel: jax.Array | None = None, bias: jax.Array | None = None,
         mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Woo et al. 2018 (arXiv:1807.06521), §3, eq. 1: channel attention, then spatial attention on its output.

    Args:
      inputs: [B, H, W, C] floating, F.
      w1, b1, w2, b2: [C, R], [R], [R, C], [C] floating, the shared MLP of `cbam_channel_attention`.
      kernel: [kh, kw, 2, 1] floating, the spatial convolution, or None for the channel-only ablation.
      bias: [1] floating, its bias (None exactly when kernel is None).
      mask: None, or [B, H, W] bool, True = a real pixel.

    Returns:
      outputs: [B, H, W, C] in the inputs' dtype, F'' (F' when kernel is None); exactly 0 at padded pixels.
      channel_map: [B, C] float32 (float64 for float64 inputs), M_c.
      spatial_map: [B, H, W] of the same dtype, M_s(F'), or None when kernel is None.

    Raises:
      ValueError: as `cbam_channel_attention` and `cbam_spatial_attention`, or if only one of kernel and bias
        is given.
      TypeError: as those functions.
    """
    if (kernel is None) != (bias is None):
        raise ValueError(f"give both kernel and bias, or neither: kernel is {'None' if kernel is None else 'set'}, "
                         f"bias is {'None' if bias is None else 'set'}")
    outputs, channel_map = cbam_channel_attention(inputs, w1, b1, w2, b2, mask=mask)
    if kernel is None:
        return outputs, channel_map, None
    outputs, spatial_map = cbam_spatial_attention(outputs, kernel, bias, mask=mask)
    return outputs, channel_map, spatial_map


class CBAMChannelAttention(nn.Module):
    """CBAM's channel attention (Woo et al. 2018, arXiv:1807.06521, §3, eq. 2), one MLP shared by both pools.

    Attributes:
      reduction: r; the MLP's hidden width is C // r. Must satisfy 1 <= r <= C.
      param_dtype: the parameters' dtype.

    Parameters: w1 [C, R] ("embed", "mlp"), b1 [R] ("mlp",), w2 [R, C] ("mlp", "embed"), b2 [C] ("embed",): the
    single MLP, stored once.
    """

    reduction: int = 16
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`cbam_channel_attention` with this module's MLP.

        Args:
          inputs: [B, H, W, C] floating.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the channel map M_c [B, C].

        Returns:
          outputs [B, H, W, C] in the inputs' dtype, or (outputs, channel_map [B, C] float32) when
          return_weights.

        Raises:
          ValueError: as `cbam_channel_attention`, or if the reduction is not an int in [1, C].
          TypeError: as `cbam_channel_attention`, or if return_weights is not a bool.
        """
        return_weights = _checks.flag("return_weights", return_weights)
        _checks.rank("inputs", inputs, 4)
        params = se.channel_mlp_params(self, jnp.shape(inputs)[-1], self.reduction, self.param_dtype)
        outputs, channel_map = cbam_channel_attention(inputs, *params, mask=mask)
        return (outputs, channel_map) if return_weights else outputs


class CBAMSpatialAttention(nn.Module):
    """CBAM's spatial attention (Woo et al. 2018, arXiv:1807.06521, §3, eq. 3): a k x k conv over [avg; max].

    Attributes:
      kernel_size: k, the convolution's height and width (7 in the paper).
      param_dtype: the parameters' dtype.

    Parameters: kernel [k, k, 2, 1] and bias [1], every axis unnamed (None): none of them is a channel width.
    """

    kernel_size: int = 7
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`cbam_spatial_attention` with this module's convolution.

        Args:
          inputs: [B, H, W, C] floating.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the spatial map M_s [B, H, W].

        Returns:
          outputs [B, H, W, C] in the inputs' dtype, or (outputs, spatial_map [B, H, W] float32) when
          return_weights.

        Raises:
          ValueError: as `cbam_spatial_attention`, or if kernel_size is not an int >= 1.
          TypeError: as `cbam_spatial_attention`, or if return_weights is not a bool.
        """
        return_weights = _checks.flag("return_weights", return_weights)
        k = _checks.int_at_least("kernel_size", self.kernel_size, 1)
        inits = axes.conv_inits(None, None)
        kernel = self.param("kernel", inits["kernel_init"], (k, k, 2, 1), self.param_dtype)
        bias = self.param("bias", inits["bias_init"], (1,), self.param_dtype)
        outputs, spatial_map = cbam_spatial_attention(inputs, kernel, bias, mask=mask)
        return (outputs, spatial_map) if return_weights else outputs


class CBAM(nn.Module):
    """Woo et al. 2018's CBAM (arXiv:1807.06521, §3, eq. 1): `CBAMChannelAttention`, then `CBAMSpatialAttention`.

    Attributes:
      reduction: r of the channel attention's MLP (1 <= r <= C).
      kernel_size: k of the spatial attention's convolution.
      spatial: False for the channel-only ablation (no spatial attention, no "spatial" parameters).
      param_dtype: the parameters' dtype.

    Parameters: "channel" (w1, b1, w2, b2 as `CBAMChannelAttention`) and, when spatial, "spatial" (kernel,
    bias as `CBAMSpatialAttention`).
    """

    reduction: int = 16
    kernel_size: int = 7
    spatial: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """F'' = M_s(F') * F' with F' = M_c(F) * F (F' alone when not spatial).

        Args:
          inputs: [B, H, W, C] floating, F.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the attention maps.

        Returns:
          outputs [B, H, W, C] in the inputs' dtype, or (outputs, maps) when return_weights, maps a dict with
          "channel": M_c [B, C] float32 and, when spatial, "spatial": M_s [B, H, W] float32 (for plotting).

        Raises:
          ValueError: as `cbam`, or for a reduction outside [1, C] or a kernel_size below 1.
          TypeError: as `cbam`, or if spatial or return_weights is not a bool.
        """
        return_weights = _checks.flag("return_weights", return_weights)
        spatial = _checks.flag("spatial", self.spatial)
        outputs, channel_map = CBAMChannelAttention(self.reduction, self.param_dtype, name="channel")(
            inputs, mask, return_weights=True)
        maps = {"channel": channel_map}
        if spatial:
            outputs, maps["spatial"] = CBAMSpatialAttention(self.kernel_size, self.param_dtype, name="spatial")(
                outputs, mask, return_weights=True)
        return (outputs, maps) if return_weights else outputs
