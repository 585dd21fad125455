"""COSNet's co-attention between two feature maps: each position of one map attends over every position of the other.

Lu, Wang, Ma, Shen, Shao & Porikli 2019, "See More, Know More: Unsupervised Video Object Segmentation with
Co-Attention Siamese Networks", CVPR 2019, §3.2; extended as "Zero-Shot Video Object Segmentation with
Co-Attention Siamese Networks" (TPAMI), arXiv:2001.06810. The paper stores a map as V in R^{C x (WH)}, one column
per position; here a map is F [B, H, W, C], flattened row-major to [B, S, C] (one row per position, S = H W), so
V_a = F_a^T. With S_a and S_b the positions of the two maps (they may differ in size, not in C):

    S = V_b^T W V_a,  S[i, j] = F_b[i] W F_a[j]^T        affinity [S_b, S_a], W a learned C x C matrix  (eq. 2)
    S^c = softmax(S), each column over i                 [S_b, S_a]: for position j of a, a distribution over b
    S^r = softmax(S^T), each column over j               [S_a, S_b]: for position i of b, a distribution over a
                                                                                                        (eq. 6)
    Z_a = V_b S^c:  Z_a[j] = sum_i S^c[i, j] F_b[i]      [S_a, C]: a's positions summarise b
    Z_b = V_a S^r:  Z_b[i] = sum_j S^r[j, i] F_a[j]      [S_b, C]: b's positions summarise a
    f_g(Z) = sigmoid(Z w_f + b_f)                        gate [S], a 1 x 1 convolution to one channel   (eq. 7)
    X_a = [Z_a * f_g(Z_a); F_a],  X_b likewise           [S, 2C]: gated summary, then the map itself     (eq. 8)

(The equation numbers follow the CVPR paper as this project cites it; they could not be checked against the
paper's text, so read them as names of the steps above. The subscripted S_a, S_b count positions, the package's
letter for a number of locations; the bare S is the paper's affinity.) The paper's W variants, all taken by
`co_attention` through `w`:

  vanilla      W a full learned C x C matrix (the released code's `linear_e`, without bias);
  symmetric    W = P^T D P with D diagonal (the paper asks P to be orthogonal; `CoAttention` learns P freely and
               does not enforce orthogonality, so its W is symmetric but not necessarily an eigendecomposition);
  channel-wise W = D diagonal, S = V_b^T D V_a: `w` of shape [C] holds D's diagonal.

One gate (w_f, b_f) is shared by both maps, as in the released code; the paper's gate has a bias b_f, which the
released code leaves out; here it is kept.

Padded pixels: optional masks [B, H, W] (True = a real pixel) take padded positions out of both softmaxes.
Padded pixels are selected away (jnp.where) before any arithmetic, so NaN or inf stored there reaches neither
an output nor a gradient; every output is exactly 0 at a padded pixel. A position whose other map has no real
pixel (an empty map included) gets a zero summary Z, hence zero outputs in its Z half, with zero gradients.

Softmaxes and the affinity are computed in float32 (float64 for float64 inputs); the outputs take the inputs'
dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core import precision

__all__ = ["CoAttention", "VARIANTS", "co_attention", "co_attention_fusion"]

VARIANTS = ("vanilla", "symmetric", "channel")
"""`CoAttention`'s variants of W: a full matrix, P^T D P, or a diagonal D."""


def _check_map(name: str, x: Any, mask_name: str, mask: Any | None) -> tuple[jax.Array, jax.Array]:
    """Checks a map [B, H, W, C] and its optional mask [B, H, W]; returns (map with padded pixels 0, mask)."""
    _checks.rank(name, x, 4)
    _checks.floating(name, x)
    x = jnp.asarray(x)
    if mask is None:
        return x, jnp.ones(x.shape[:3], bool)
    _checks.array(mask_name, mask)
    if tuple(jnp.shape(mask)) != x.shape[:3]:
        raise ValueError(f"{mask_name} must be [B, H, W] = {x.shape[:3]} for {name} [B, H, W, C], got "
                         f"{mask_name}.shape={tuple(jnp.shape(mask))} {name}.shape={x.shape}")
    _checks.boolean(mask_name, mask)
    mask = jnp.asarray(mask)
    return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype)), mask


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis where `mask` holds, in the logits' dtype; an all-masked row gives zeros.

    Like `attention_jax.core.alignment.masked_softmax`, but without its cast to float32, so float64 inputs
    keep float64 (for float64 gradient checks).
    """
    if logits.shape[-1] == 0:
        return jnp.zeros(logits.shape, logits.dtype)
    floor = jnp.finfo(logits.dtype).min  # finite: an all-masked row must not give (-inf) - (-inf)
    logits = jnp.where(mask, logits, floor)
    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    unnormalised = jnp.where(mask, jnp.exp(logits - row_max), jnp.zeros((), logits.dtype))
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    return unnormalised / jnp.where(total > 0, total, jnp.ones((), total.dtype))


def co_attention(feat_a: jax.Array, feat_b: jax.Array, w: jax.Array, mask_a: jax.Array | None = None,
                 mask_b: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lu et al. 2019 (COSNet, CVPR 2019 §3.2; arXiv:2001.06810), eqs. 2 and 6: the co-attention summaries.

    Z_a = V_b softmax_col(S) and Z_b = V_a softmax_col(S^T) for the affinity S = V_b^T W V_a (see the module
    docstring): every position of a attends over the real positions of b, and vice versa. Swapping a and b with
    a symmetric W swaps Z_a and Z_b and transposes S.

    Args:
      feat_a: [B, H_a, W_a, C] floating, F_a.
      feat_b: [B, H_b, W_b, C] floating, F_b (its H, W may differ from a's, its B and C may not).
      w: [C, C] floating, W (the vanilla or symmetric co-attention), or [C] floating, the diagonal of D
        (channel-wise co-attention).
      mask_a: None, or [B, H_a, W_a] bool, True = a real pixel of a.
      mask_b: None, or [B, H_b, W_b] bool, True = a real pixel of b.

    Returns:
      z_a: [B, H_a, W_a, C] in feat_a's dtype: the summary of b seen from each position of a; 0 at padded
        pixels of a, and everywhere in a row whose b has no real pixel.
      z_b: [B, H_b, W_b, C] in feat_b's dtype: the summary of a seen from each position of b; likewise.
      affinity: [B, S_b, S_a] float32 (float64 for float64 inputs), S with S_a = H_a W_a and S_b = H_b W_b
        flattened row-major; 0 where either position is padded.

    Raises:
      ValueError: if a map is not rank 4, B or C differ between the maps, w is neither [C, C] nor [C], or a
        mask is not its map's [B, H, W] (the message names the shapes).
      TypeError: for non-floating maps or w, or a non-boolean mask.
    """
    clean_a, mask_a = _check_map("feat_a", feat_a, "mask_a", mask_a)
    clean_b, mask_b = _check_map("feat_b", feat_b, "mask_b", mask_b)
    _checks.same_batch(feat_a=clean_a, feat_b=clean_b)
    channels = clean_a.shape[-1]
    if clean_b.shape[-1] != channels:
        raise ValueError(f"feat_a and feat_b must have the same channels C: feat_a.shape={clean_a.shape} "
                         f"feat_b.shape={clean_b.shape}")
    _checks.floating("w", w)
    if jnp.shape(w) not in ((channels, channels), (channels,)):
        raise ValueError(f"w must be [C, C] (vanilla or symmetric W) or [C] (channel-wise D) with C={channels}, "
                         f"got w.shape={tuple(jnp.shape(w))}; feat_a.shape={clean_a.shape}")
    dtype = precision.compute_dtype(clean_a, clean_b)
    batch = clean_a.shape[0]
    fa = clean_a.reshape(batch, -1, channels).astype(dtype)  # [B, S_a, C]
    fb = clean_b.reshape(batch, -1, channels).astype(dtype)  # [B, S_b, C]
    live_a, live_b = mask_a.reshape(batch, -1), mask_b.reshape(batch, -1)  # [B, S_a], [B, S_b]
    w = jnp.asarray(w).astype(dtype)
    if w.ndim == 2:
        affinity = jnp.einsum("BIC,CD,BJD->BIJ", fb, w, fa)  # [B, S_b, S_a], eq. 2
    else:
        affinity = jnp.einsum("BIC,C,BJC->BIJ", fb, w, fa)  # [B, S_b, S_a], channel-wise
    pairs = live_b[:, :, None] & live_a[:, None, :]  # [B, S_b, S_a]
    affinity = jnp.where(pairs, affinity, jnp.zeros((), dtype))
    over_b = _masked_softmax(jnp.swapaxes(affinity, 1, 2), jnp.swapaxes(pairs, 1, 2))  # [B, S_a, S_b]: (S^c)^T
    over_a = _masked_softmax(affinity, pairs)  # [B, S_b, S_a]: (S^r)^T
    z_a = jnp.einsum("BJI,BIC->BJC", over_b, fb)  # [B, S_a, C], Z_a = V_b S^c
    z_b = jnp.einsum("BIJ,BJC->BIC", over_a, fa)  # [B, S_b, C], Z_b = V_a S^r
    return (z_a.reshape(clean_a.shape).astype(clean_a.dtype), z_b.reshape(clean_b.shape).astype(clean_b.dtype),
            affinity)


def co_attention_fusion(z: jax.Array, feat: jax.Array, gate_kernel: jax.Array | None = None,
                        gate_bias: jax.Array | None = None, mask: jax.Array | None = None
                        ) -> tuple[jax.Array, jax.Array]:
    """Lu et al. 2019 (COSNet, CVPR 2019 §3.2; arXiv:2001.06810), eqs. 7-8: [Z * sigmoid(Z w_f + b_f); F].

    Args:
      z: [B, H, W, C] floating, a co-attention summary (`co_attention`'s z_a or z_b).
      feat: [B, H, W, C] floating, the map it belongs to (F_a or F_b).
      gate_kernel: [C] floating, w_f (the 1 x 1 convolution to one channel), or None for no gate (f_g = 1).
      gate_bias: [] floating, b_f; None for no bias (the released code's gate). Needs gate_kernel.
      mask: None, or [B, H, W] bool, True = a real pixel.

    Returns:
      fused: [B, H, W, 2C] in feat's dtype, the gated summary then the map; exactly 0 at padded pixels.
      gate: [B, H, W] float32 (float64 for float64 inputs), f_g(Z) in (0, 1); 1 without a gate; 0 at padded
        pixels.

    Raises:
      ValueError: if z or feat is not rank 4, their shapes differ, gate_kernel is not [C], gate_bias is not a
        scalar or comes without gate_kernel, or the mask is not [B, H, W] (the message names the shapes).
      TypeError: for non-floating z, feat or gate weights, or a non-boolean mask.
    """
    clean, mask = _check_map("feat", feat, "mask", mask)
    _checks.rank("z", z, 4)
    _checks.floating("z", z)
    if tuple(jnp.shape(z)) != clean.shape:
        raise ValueError(f"z must have feat's shape [B, H, W, C]: z.shape={tuple(jnp.shape(z))} "
                         f"feat.shape={clean.shape}")
    dtype = precision.compute_dtype(clean, z)
    z = jnp.where(mask[..., None], jnp.asarray(z), jnp.zeros((), jnp.result_type(z))).astype(dtype)
    if gate_kernel is None:
        if gate_bias is not None:
            raise ValueError(f"gate_bias needs a gate_kernel: gate_bias.shape={tuple(jnp.shape(gate_bias))}")
        gate = jnp.ones(mask.shape, dtype)
    else:
        _checks.floating("gate_kernel", gate_kernel)
        if tuple(jnp.shape(gate_kernel)) != (clean.shape[-1],):
            raise ValueError(f"gate_kernel must be [C] with C={clean.shape[-1]}, got "
                             f"gate_kernel.shape={tuple(jnp.shape(gate_kernel))}; feat.shape={clean.shape}")
        logits = jnp.einsum("BHWC,C->BHW", z, jnp.asarray(gate_kernel).astype(dtype))  # [B, H, W]
        if gate_bias is not None:
            _checks.floating("gate_bias", gate_bias)
            if jnp.shape(gate_bias) != ():
                raise ValueError(f"gate_bias must be a scalar, got gate_bias.shape={tuple(jnp.shape(gate_bias))}")
            logits = logits + jnp.asarray(gate_bias).astype(dtype)
        gate = jax.nn.sigmoid(logits)  # [B, H, W], eq. 7
    gate = jnp.where(mask, gate, jnp.zeros((), dtype))
    gated = (z * gate[..., None]).astype(clean.dtype)  # [B, H, W, C]
    return jnp.concatenate([gated, clean], axis=-1), gate  # [B, H, W, 2C], eq. 8


class CoAttention(nn.Module):
    """COSNet's co-attention (Lu et al. 2019, CVPR 2019 §3.2; arXiv:2001.06810, eqs. 2, 6-8) on NHWC maps.

    Attributes:
      gated: apply the gate f_g of eq. 7 (shared by both maps); False concatenates [Z; F] ungated.
      variant: "vanilla" (W a full C x C matrix), "symmetric" (W = P^T D P, P not forced orthogonal) or
        "channel" (W = D diagonal).
      param_dtype: the parameters' dtype.

    Parameters: vanilla: w [C, C] ("embed", None); symmetric: p [C, C] ("embed", None) and d [C] (None,), the
    diagonal of D on P's output side; channel: d [C] ("embed",). Gated: gate_kernel [C] ("embed",) and
    gate_bias [] (). W and P use `nn.Dense`'s kernel initialiser (lecun normal), D starts at ones (so the
    channel-wise affinity starts as the dot product), the gate at lecun normal and 0.
    """

    gated: bool = True
    variant: str = "vanilla"
    param_dtype: Any = jnp.float32

    def _w(self, channels: int) -> jax.Array:
        kernel_init = nn.initializers.lecun_normal()
        ones = nn.initializers.ones_init()
        if self.variant == "vanilla":
            return self.param("w", axes.partitioned(kernel_init, (axes.EMBED, None)), (channels, channels),
                              self.param_dtype)
        if self.variant == "channel":
            return self.param("d", axes.partitioned(ones, (axes.EMBED,)), (channels,), self.param_dtype)
        p = self.param("p", axes.partitioned(kernel_init, (axes.EMBED, None)), (channels, channels),
                       self.param_dtype)  # [C_in, C_out]: P^T, stored input-major like a Dense kernel
        d = self.param("d", axes.partitioned(ones, (None,)), (channels,), self.param_dtype)
        return jnp.einsum("CK,K,DK->CD", p, d, p)  # [C, C] = P^T D P, symmetric

    @nn.compact
    def __call__(self, feat_a: jax.Array, feat_b: jax.Array, mask_a: jax.Array | None = None,
                 mask_b: jax.Array | None = None, return_affinity: bool = False
                 ) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
        """`co_attention` then `co_attention_fusion` for each map, with this module's weights.

        Args:
          feat_a: [B, H_a, W_a, C] floating.
          feat_b: [B, H_b, W_b, C] floating.
          mask_a, mask_b: None, or [B, H_a, W_a] / [B, H_b, W_b] bool, True = a real pixel.
          return_affinity: also return the affinity S [B, S_b, S_a].

        Returns:
          (out_a [B, H_a, W_a, 2C], out_b [B, H_b, W_b, 2C]) in the inputs' dtypes, X_a = [Z_a * f_g; F_a] and
          X_b; with return_affinity, also affinity [B, S_b, S_a] float32 (S_a = H_a W_a, S_b = H_b W_b).

        Raises:
          ValueError: as `co_attention`, or for an unknown variant.
          TypeError: as `co_attention`, or if gated or return_affinity is not a bool.
        """
        _checks.choice("variant", self.variant, VARIANTS)
        gated = _checks.flag("gated", self.gated)
        return_affinity = _checks.flag("return_affinity", return_affinity)
        _checks.rank("feat_a", feat_a, 4)
        channels = jnp.shape(feat_a)[-1]
        w = self._w(channels)
        z_a, z_b, affinity = co_attention(feat_a, feat_b, w, mask_a, mask_b)
        if gated:
            kernel_init = nn.initializers.normal(stddev=max(channels, 1) ** -0.5)  # lecun normal of a [C, 1] kernel
            gate_kernel = self.param("gate_kernel", axes.partitioned(kernel_init, (axes.EMBED,)), (channels,),
                                     self.param_dtype)
            gate_bias = self.param("gate_bias", axes.partitioned(nn.initializers.zeros_init(), ()), (),
                                   self.param_dtype)
        else:
            gate_kernel = gate_bias = None
        out_a, _ = co_attention_fusion(z_a, feat_a, gate_kernel, gate_bias, mask_a)
        out_b, _ = co_attention_fusion(z_b, feat_b, gate_kernel, gate_bias, mask_b)
        return (out_a, out_b, affinity) if return_affinity else (out_a, out_b)
