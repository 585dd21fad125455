"""DANet's dual attention on NHWC feature maps: a position attention and a channel attention, in parallel.

Fu, Liu, Tian, Li, Bao, Fang & Lu 2019, "Dual Attention Network for Scene Segmentation", arXiv:1809.02983,
§3.2-3.3. For a local feature map A [B, H, W, C] with its S = H W positions flattened (the paper's N):

  Position attention module (PAM), §3.2, with three 1 x 1 convolutions B, C: C -> R = C / 8 and D: C -> C,

    s_ji = exp(B_i . C_j) / sum_{i=1}^{S} exp(B_i . C_j)                  eq. 1: s [S, S], row j over i
    E_j = gamma sum_{i=1}^{S} s_ji D_i + A_j                              eq. 2: gamma a scalar, 0 at init

  Channel attention module (CAM), §3.3, with A reshaped to [S, C] and no convolution,

    x_ji = exp(A_i . A_j) / sum_{i=1}^{C} exp(A_i . A_j)                  eq. 3: x [C, C], A_i channel i's map
    E_j = beta sum_{i=1}^{C} x_ji A_i + A_j                               eq. 4: beta a scalar, 0 at init

Naming of eq. 1: the paper reads B at the attended position i and C at the output position j; the released
code (PAM_Module) reads its "query" convolution at j and its "key" convolution at i. Both are free 1 x 1
convolutions of the same shape, so the two readings are one family of functions with the two parameter sets
renamed. Here wq/bq is the convolution read at the output position j (the paper's C) and wk/bk the one read at
the attended positions i (the paper's B): s_ji = softmax_i(q_j . k_i), a softmax over keys as in every other
attention of the library. DANet does not scale the logits (no 1 / sqrt(R)).

The PAM runs through `attention_jax.dot_product.dot_product_attention` (scale = 1), so the blockwise and flash
backends can serve large maps (`implementation=`). That API takes keys and values of one shape [B, S, K, H],
and here the values are C wide while the keys are R wide; so the values are split into G = ceil(C / R) heads of
R channels (zero-padded when R does not divide C), and the query and key are shared by all G heads. The head
dim stays R (the flash kernel takes H <= 256), at the price of computing the [S, S] logits G times (G = 8 for
the paper's R = C / 8): twice the minimal flops, as the value sum costs as much again.

The released code's channel attention computes softmax(max_i(energy) - energy) instead of eq. 3's
softmax(energy) (CAM_Module). A softmax does not change when a constant is added to its row, so that is
softmax(-energy): it weights the channels *least* similar to channel j most. `channel_attention` takes
`energy="paper"` (eq. 3, the default: it is the equation the paper states and analyses, and the form the other
attentions of the library share) or `energy="released"` (the code, for reproducing the released numbers).

Fusion, §3.4: the paper transforms each module's output by a convolution and sums the two. `DualAttention`
sums the two outputs; with `fusion_kernel_size=k` it first applies a k x k convolution (C -> C, "SAME" zero
padding, with bias) to each, as the paper does. The released head also wraps each module in 3 x 3 conv-BN-ReLU
layers and ends in dropout and a 1 x 1 classifier; those belong to the segmentation model around this layer.

Padded images: an optional mask [B, H, W] (True = a real pixel). Padded pixels are selected away (jnp.where)
before any arithmetic, so NaN or inf stored there reaches neither an output nor a gradient. The PAM masks the
padded positions as keys (segment ids through `dot_product_attention`, which every backend takes) and the CAM
forms A A^T over the real pixels only; both return exactly 0 at padded pixels. An image with no real pixel
(S = 0 included) gives zeros and zero gradients, never NaN. An image padded at its bottom and right gives, at
its real pixels, exactly the outputs of the cropped image (with `fusion_kernel_size` too, as "SAME" padding
also reads zeros beyond the crop).

Logits and softmaxes run in float32 (float64 for float64 inputs in the CAM; the PAM's attention is float32 as
`dot_product_attention` computes it); outputs take the input dtype.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core import pooling
from attention_jax.core import precision
from attention_jax.dot_product import dot_product_attention

__all__ = ["ENERGIES", "ChannelAttention", "DualAttention", "PositionAttention", "channel_attention",
           "position_attention"]

ENERGIES = ("paper", "released")
"""The channel attention's `energy`: "paper" (eq. 3, softmax(A A^T)) or "released" (softmax(max - A A^T))."""

# Segment ids of the PAM's mask: real pixels share id 0; a padded query (id 1) and a padded key (id 2) meet
# nothing, so padded queries get empty rows (zeros) and padded keys no weight.
_REAL, _PADDED_QUERY, _PADDED_KEY = 0, 1, 2


def _check_feature_map(inputs: Any, mask: Any | None) -> tuple[jax.Array, jax.Array]:
    """`core.pooling.masked_feature_map` (inputs [B, H, W, C], mask [B, H, W]), plus C >= 1.

    Raises:
      ValueError: if inputs are not rank 4, have no channel, or the mask is not [B, H, W] (naming both shapes).
      TypeError: for non-floating inputs or a non-boolean mask.
    """
    clean, mask = pooling.masked_feature_map(inputs, mask)
    if clean.shape[3] < 1:
        raise ValueError(f"inputs need C >= 1 channels, got inputs.shape={clean.shape}")
    return clean, mask


def _check_scalar(name: str, value: Any) -> None:
    _checks.array(name, value)
    _checks.floating(name, value)
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar (shape ()), got {name}.shape={tuple(jnp.shape(value))}")


def _check_projections(channels: int, wq: Any, bq: Any, wk: Any, bk: Any, wv: Any, bv: Any) -> int:
    """Checks wq, wk [C, R], bq, bk [R], wv [C, C], bv [C] (R >= 1), all floating; returns R.

    Raises:
      ValueError: naming every weight's shape and C, if one does not fit or R = 0.
      TypeError: for a non-floating weight.
    """
    named = (("wq", wq, 2), ("bq", bq, 1), ("wk", wk, 2), ("bk", bk, 1), ("wv", wv, 2), ("bv", bv, 1))
    for name, value, rank in named:
        _checks.rank(name, value, rank)
        _checks.floating(name, value)
    width = jnp.shape(wq)[1]
    want = {"wq": (channels, width), "bq": (width,), "wk": (channels, width), "bk": (width,),
            "wv": (channels, channels), "bv": (channels,)}
    got = {name: tuple(jnp.shape(value)) for name, value, _ in named}
    if width < 1 or any(got[name] != want[name] for name in want):
        shapes = " ".join(f"{name}.shape={shape}" for name, shape in got.items())
        raise ValueError(f"the PAM weights must be wq, wk [C, R], bq, bk [R], wv [C, C], bv [C] with C={channels} "
                         f"(the inputs' channels) and R >= 1, got {shapes}")
    return int(width)


def _project(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """A 1 x 1 convolution: x [B, S, C] @ w [C, F] + b [F] -> [B, S, F], in x's dtype."""
    return jnp.einsum("BSC,CF->BSF", x, w.astype(x.dtype)) + b.astype(x.dtype)


def position_attention(
    inputs: jax.Array, wq: jax.Array, bq: jax.Array, wk: jax.Array, bk: jax.Array, wv: jax.Array, bv: jax.Array,
    gamma: jax.Array, *, mask: jax.Array | None = None, implementation: Any = None, return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DANet's position attention module (Fu et al. 2019, arXiv:1809.02983, §3.2, eqs. 1-2).

    E_j = gamma sum_i softmax_i(q_j . k_i) v_i + A_j over the S = H W positions, with q = A wq + bq, k = A wk +
    bk (the paper's C and B; see the module docstring) and v = A wv + bv (the paper's D), through
    `dot_product_attention` with scale 1. Padded pixels are never read (NaN there reaches no output and no
    gradient) and are 0 in the outputs; an image with no real pixel gives zeros.

    Args:
      inputs: [B, H, W, C] floating, the feature map A; C >= 1.
      wq: [C, R] floating, the 1 x 1 convolution read at the output position (R = C / 8 in the paper).
      bq: [R] floating, its bias.
      wk: [C, R] floating, the 1 x 1 convolution read at the attended positions.
      bk: [R] floating, its bias.
      wv: [C, C] floating, the value convolution D.
      bv: [C] floating, its bias.
      gamma: [] floating, the scale of the attended features (learned, 0 at init).
      mask: None, or [B, H, W] bool, True = a real pixel.
      implementation: the `dot_product_attention` backend: None (automatic), a name ("xla", "blockwise",
        "flash", "cudnn", ...) or a `Backend` object.
      return_weights: also return the attention map.

    Returns:
      outputs: [B, H, W, C] in the inputs' dtype, E; exactly 0 at padded pixels.
      weights (when return_weights): [B, S, S] float32, s with row j (output position, row-major over H, W)
        over i; 0 at padded keys and in the rows of padded pixels.

    Raises:
      ValueError: if inputs are not rank 4 or have C = 0, a weight does not fit C (or R = 0), gamma is not a
        scalar, or the mask is not [B, H, W] (the message names the shapes); or as `dot_product_attention` for
        an implementation that cannot run the call.
      TypeError: for non-floating inputs, weights or gamma, a non-boolean mask, or a non-bool return_weights.
    """
    return_weights = _checks.flag("return_weights", return_weights)
    masked = mask is not None
    clean, mask = _check_feature_map(inputs, mask)
    batch, height, width, channels = clean.shape
    reduced = _check_projections(channels, wq, bq, wk, bk, wv, bv)
    _check_scalar("gamma", gamma)
    dtype = precision.compute_dtype(clean)
    positions = height * width
    a = clean.reshape(batch, positions, channels).astype(dtype)  # [B, S, C]
    q = _project(a, jnp.asarray(wq), jnp.asarray(bq))  # [B, S, R]
    k = _project(a, jnp.asarray(wk), jnp.asarray(bk))  # [B, S, R]
    v = _project(a, jnp.asarray(wv), jnp.asarray(bv))  # [B, S, C]
    # The API wants keys and values of one shape: G heads of R value channels share the query and the key.
    groups = math.ceil(channels / reduced)
    v = jnp.pad(v, ((0, 0), (0, 0), (0, groups * reduced - channels)))  # [B, S, G R]
    v = v.reshape(batch, positions, groups, reduced)  # [B, S, G, R]
    q = jnp.broadcast_to(q[:, :, None, :], v.shape)  # [B, S, G, R]
    k = jnp.broadcast_to(k[:, :, None, :], v.shape)  # [B, S, G, R]
    segments = None
    if masked:
        real = mask.reshape(batch, positions)  # [B, S]
        segments = (jnp.where(real, _REAL, _PADDED_QUERY).astype(jnp.int32),
                    jnp.where(real, _REAL, _PADDED_KEY).astype(jnp.int32))
    attention_dtype = clean.dtype  # one dtype for q, k, v (the flash kernel's bf16 stays bf16)
    result = dot_product_attention(q.astype(attention_dtype), k.astype(attention_dtype), v.astype(attention_dtype),
                                   scale=1.0, segment_ids=segments, implementation=implementation,
                                   return_weights=return_weights)
    attended, weights = (result.output, result.weights) if return_weights else (result, None)
    attended = attended.astype(dtype).reshape(batch, positions, groups * reduced)[..., :channels]  # [B, S, C]
    outputs = jnp.asarray(gamma).astype(dtype) * attended + a  # [B, S, C], eq. 2
    outputs = outputs.reshape(clean.shape)
    outputs = jnp.where(mask[..., None], outputs, jnp.zeros((), dtype)).astype(clean.dtype)
    if not return_weights:
        return outputs
    return outputs, weights[:, 0]  # every head holds the same [S, S] map


def channel_attention(inputs: jax.Array, beta: jax.Array, *, mask: jax.Array | None = None, energy: str = "paper",
                      return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DANet's channel attention module (Fu et al. 2019, arXiv:1809.02983, §3.3, eqs. 3-4).

    E_j = beta sum_i x_ji A_i + A_j with x_ji = softmax_i(A_i . A_j) ("paper", eq. 3) or
    softmax_i(max_k(A_k . A_j) - A_i . A_j) ("released", the released CAM_Module: softmax of the negated
    energy, which favours dissimilar channels). The channel maps' dot products A_i . A_j run over the real
    pixels only; padded pixels are never read and are 0 in the outputs. An image with no real pixel has zero
    energy (uniform weights) and zero outputs.

    Args:
      inputs: [B, H, W, C] floating, the feature map A; C >= 1.
      beta: [] floating, the scale of the attended features (learned, 0 at init).
      mask: None, or [B, H, W] bool, True = a real pixel.
      energy: "paper" (the default) or "released"; see `ENERGIES` and the module docstring.
      return_weights: also return the channel attention map.

    Returns:
      outputs: [B, H, W, C] in the inputs' dtype, E; exactly 0 at padded pixels.
      weights (when return_weights): [B, C, C] float32 (float64 for float64 inputs), x with row j over i.

    Raises:
      ValueError: if inputs are not rank 4 or have C = 0, beta is not a scalar, the mask is not [B, H, W]
        (the message names the shapes), or energy is unknown.
      TypeError: for non-floating inputs or beta, a non-boolean mask, or a non-bool return_weights.
    """
    return_weights = _checks.flag("return_weights", return_weights)
    _checks.choice("energy", energy, ENERGIES)
    clean, mask = _check_feature_map(inputs, mask)
    _check_scalar("beta", beta)
    batch, height, width, channels = clean.shape
    dtype = precision.compute_dtype(clean)
    a = clean.reshape(batch, height * width, channels).astype(dtype)  # [B, S, C], padded pixels 0
    logits = jnp.einsum("BSj,BSi->Bji", a, a)  # [B, C, C], A_j . A_i over the real pixels
    if energy == "released":
        logits = jnp.max(logits, axis=-1, keepdims=True) - logits  # [B, C, C]
    weights = jax.nn.softmax(logits, axis=-1)  # [B, C, C], eq. 3: row j over i
    attended = jnp.einsum("Bji,BSi->BSj", weights, a)  # [B, S, C]
    outputs = jnp.asarray(beta).astype(dtype) * attended + a  # [B, S, C], eq. 4
    outputs = outputs.reshape(clean.shape)
    outputs = jnp.where(mask[..., None], outputs, jnp.zeros((), dtype)).astype(clean.dtype)
    return (outputs, weights) if return_weights else outputs


def _check_reduction(reduction: Any, inputs: Any) -> int:
    """R = C // reduction for inputs [B, H, W, C]; raises ValueError unless 1 <= reduction <= C."""
    _checks.rank("inputs", inputs, 4)
    channels = jnp.shape(inputs)[3]
    if channels < 1:
        raise ValueError(f"inputs need C >= 1 channels, got inputs.shape={tuple(jnp.shape(inputs))}")
    r = _checks.int_at_least("reduction", reduction, 1)
    if r > channels:
        raise ValueError(f"reduction must be in [1, C] so that R = C // reduction >= 1: reduction={r}, "
                         f"C = {channels}, inputs.shape={tuple(jnp.shape(inputs))}")
    return channels // r


class PositionAttention(nn.Module):
    """DANet's position attention module (Fu et al. 2019, arXiv:1809.02983, §3.2, eqs. 1-2).

    Attributes:
      reduction: r; the query/key width is R = C // r (8 in the paper). Must satisfy 1 <= r <= C.
      implementation: the `dot_product_attention` backend (None, a name or a `Backend` object), so the
        blockwise or flash backend can serve large maps.
      param_dtype: the parameters' dtype.

    Parameters: query_kernel, key_kernel [C, R] ("embed", "mlp"); query_bias, key_bias [R] ("mlp",);
    value_kernel [C, C] ("embed", None); value_bias [C] (None,); gamma [] (), initialised to 0, so a fresh
    module returns its inputs (0 at padded pixels).
    """

    reduction: int = 8
    implementation: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`position_attention` with this module's convolutions.

        Args:
          inputs: [B, H, W, C] floating.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the attention map [B, S, S] float32 (S = H W).

        Returns:
          outputs [B, H, W, C] in the inputs' dtype, or (outputs, weights) when return_weights.

        Raises:
          ValueError: as `position_attention`, or if the reduction is not an int in [1, C].
          TypeError: as `position_attention`.
        """
        reduced = _check_reduction(self.reduction, inputs)
        channels = jnp.shape(inputs)[3]
        qk = axes.dense_inits(axes.EMBED, axes.MLP)
        vv = axes.dense_inits(axes.EMBED, None)
        wq = self.param("query_kernel", qk["kernel_init"], (channels, reduced), self.param_dtype)
        bq = self.param("query_bias", qk["bias_init"], (reduced,), self.param_dtype)
        wk = self.param("key_kernel", qk["kernel_init"], (channels, reduced), self.param_dtype)
        bk = self.param("key_bias", qk["bias_init"], (reduced,), self.param_dtype)
        wv = self.param("value_kernel", vv["kernel_init"], (channels, channels), self.param_dtype)
        bv = self.param("value_bias", vv["bias_init"], (channels,), self.param_dtype)
        gamma = self.param("gamma", axes.partitioned(nn.initializers.zeros_init(), ()), (), self.param_dtype)
        return position_attention(inputs, wq, bq, wk, bk, wv, bv, gamma, mask=mask,
                                  implementation=self.implementation, return_weights=return_weights)


class ChannelAttention(nn.Module):
    """DANet's channel attention module (Fu et al. 2019, arXiv:1809.02983, §3.3, eqs. 3-4).

    Attributes:
      energy: "paper" (eq. 3, the default) or "released" (the released code's softmax(max - energy)).
      param_dtype: the parameters' dtype.

    Parameters: beta [] (), initialised to 0, so a fresh module returns its inputs (0 at padded pixels).
    """

    energy: str = "paper"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`channel_attention` with this module's beta.

        Args:
          inputs: [B, H, W, C] floating.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the channel map [B, C, C] float32.

        Returns:
          outputs [B, H, W, C] in the inputs' dtype, or (outputs, weights) when return_weights.

        Raises:
          ValueError, TypeError: as `channel_attention`.
        """
        _checks.choice("energy", self.energy, ENERGIES)
        beta = self.param("beta", axes.partitioned(nn.initializers.zeros_init(), ()), (), self.param_dtype)
        return channel_attention(inputs, beta, mask=mask, energy=self.energy, return_weights=return_weights)


class DualAttention(nn.Module):
    """DANet's dual attention (Fu et al. 2019, arXiv:1809.02983, §3.2-3.4): PAM and CAM on the same map, summed.

    outputs = f_p(PAM(A)) + f_c(CAM(A)), where f_p, f_c are the identity, or with `fusion_kernel_size=k` a
    k x k convolution C -> C ("SAME", with bias) each, as the paper's §3.4 fusion. With the identity, a fresh
    module returns 2 A (each branch is the identity at gamma = beta = 0). Padded pixels are 0 before and after
    the fusion convolutions, so they never reach a real pixel's output.

    Attributes:
      reduction: r of the PAM (1 <= r <= C).
      energy: the CAM's energy, "paper" or "released".
      implementation: the PAM's `dot_product_attention` backend.
      fusion_kernel_size: None (sum the two outputs) or k >= 1 (a k x k convolution on each before the sum).
      param_dtype: the parameters' dtype.

    Parameters: "position" (as `PositionAttention`), "channel" (as `ChannelAttention`) and, with
    fusion_kernel_size, "position_fusion" and "channel_fusion", each kernel [k, k, C, C] (None, None, "embed",
    None) and bias [C] (None,).
    """

    reduction: int = 8
    energy: str = "paper"
    implementation: Any = None
    fusion_kernel_size: int | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 return_weights: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """The sum of the (fused) position and channel attentions of `inputs`.

        Args:
          inputs: [B, H, W, C] floating.
          mask: None, or [B, H, W] bool, True = a real pixel.
          return_weights: also return the maps.

        Returns:
          outputs [B, H, W, C] in the inputs' dtype (0 at padded pixels), or (outputs, maps) when
          return_weights, maps a dict with "position": [B, S, S] and "channel": [B, C, C], float32.

        Raises:
          ValueError: as `position_attention` and `channel_attention`, or for a fusion_kernel_size that is not
            None or an int >= 1.
          TypeError: as `position_attention` and `channel_attention`.
        """
        return_weights = _checks.flag("return_weights", return_weights)
        k = None if self.fusion_kernel_size is None else _checks.int_at_least(
            "fusion_kernel_size", self.fusion_kernel_size, 1)
        position = PositionAttention(self.reduction, self.implementation, self.param_dtype, name="position")(
            inputs, mask, return_weights=return_weights)
        channel = ChannelAttention(self.energy, self.param_dtype, name="channel")(
            inputs, mask, return_weights=return_weights)
        maps = {}
        if return_weights:  # else the PAM's [S, S] map is never formed (the blockwise / flash backends)
            (position, maps["position"]), (channel, maps["channel"]) = position, channel
        if k is not None:
            real = jnp.ones(jnp.shape(inputs)[:3], bool) if mask is None else jnp.asarray(mask)
            position = self._fuse(position, real, k, "position_fusion")
            channel = self._fuse(channel, real, k, "channel_fusion")
        outputs = position + channel
        return (outputs, maps) if return_weights else outputs

    def _fuse(self, x: jax.Array, real: jax.Array, k: int, name: str) -> jax.Array:
        """A k x k convolution C -> C of x [B, H, W, C] (0 at padded pixels), 0 again at padded pixels."""
        channels = x.shape[3]
        conv = nn.Conv(channels, (k, k), padding="SAME", param_dtype=self.param_dtype, name=name,
                       **axes.conv_inits(axes.EMBED, None))
        y = conv(x).astype(x.dtype)  # [B, H, W, C]
        return jnp.where(real[..., None], y, jnp.zeros((), x.dtype))
