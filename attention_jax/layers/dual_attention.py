"""D-Attn: dual local and global attention feeding CNNs, for review text.

Seo, Huang, Yang & Liu 2017, "Interpretable Convolutional Neural Networks with Dual Local and Global Attention
for Review Rating Prediction", RecSys 2017 (doi:10.1145/3109859.3109890), §3. Not to be confused with DANet's
dual position + channel attention (vision). Restated here (the paper's text and equation numbers could not be
checked here; the form below is the one three independent public ports agree on):

    local module   s_L(t) = sigmoid(<W_L, X[t - (w-1)/2 .. t + (w-1)/2]> + b_L)   a window-scored word gate
                   x^L_t = s_L(t) x_t, then a CNN of filter length 1 (n_L filters), tanh, max over time
    global module  s_G = sigmoid(<W_G, X> + b_G), one score from the whole (padded) document, W_G [T_max, d]
                   x^G_t = s_G x_t, then CNNs of widths 2, 3, 4 (n_G filters each), tanh, max over time
    output         z = [z_L; z_G2; z_G3; z_G4], of size n_L + 3 n_G

The paper feeds z through two dense layers to a user (or item) vector and predicts a rating as their inner
product; `DualAttentionEncoder` stops at z, so a classifier or a rating model can sit on top. With
`global_scores="word"` the global module scores every word from the whole document instead
(s_G(t) = sigmoid(<W_G[t], x_t> + b_G), a per-position gate, the other reading of the paper's figure).

Padding: words beyond a document's length are zeroed first, take part in no window score (their embeddings
are zero), get zero gates, and are left out of every max-over-time (the convolutions are narrow windows whose
outputs are valid when they cover only real words, wide enough to keep one output for short documents).
A document with no word gives zero features.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes, pooling
from attention_jax.core.masks import check_lengths

__all__ = ["DualAttentionEncoder", "GLOBAL_SCORES", "local_attention_scores"]

GLOBAL_SCORES = ("document", "word")

_F32 = jnp.float32


def local_attention_scores(inputs: jax.Array, kernel: jax.Array, bias: jax.Array,
                           mask: jax.Array | None = None) -> jax.Array:
    """s_L(t) = sigmoid(<W_L, X[t - (w-1)/2 .. t + (w-1)/2]> + b_L), zero at padded words (Seo et al. 2017).

    Args:
      inputs: [B, T, D] floating, the word embeddings.
      kernel: [w, D] floating, W_L, w odd.
      bias: [] floating, b_L.
      mask: None or [B, T] bool, True = a real word.

    Returns:
      [B, T] float32 in (0, 1), exactly 0 at padded words.

    Raises:
      ValueError: if the shapes do not fit (named in the message) or w is even.
      TypeError: for non-floating inputs or kernel, or a non-boolean mask.
    """
    inputs, mask = pooling.masked_sequence(inputs, mask)
    _checks.rank("kernel", kernel, 2)
    _checks.floating("kernel", kernel)
    width, dim = jnp.shape(kernel)
    if dim != inputs.shape[-1] or width % 2 == 0:
        raise ValueError(f"kernel must be [w, D] with w odd and D={inputs.shape[-1]}, got {jnp.shape(kernel)}")
    half = width // 2
    padded = jnp.pad(inputs.astype(_F32), ((0, 0), (half, half), (0, 0)))
    length = inputs.shape[1]
    logits = sum(jnp.einsum("BTD,D->BT", padded[:, k:k + length], kernel[k].astype(_F32)) for k in range(width))
    return jnp.where(mask, jax.nn.sigmoid(logits + jnp.asarray(bias, _F32)), 0.0)


def _conv_max(x: jax.Array, mask: jax.Array, width: int, features: int, name: str) -> jax.Array:
    """tanh(conv_w(x)) max over the windows that cover only real words ([B, F]; zeros when none); called inside
    a compact method, whose module owns the convolution `name`."""
    length = x.shape[1]
    pad = max(width - length, 0)  # a document shorter than the filter still gets one window (zero-padded)
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
    conv = nn.Conv(features, (width,), padding="VALID", name=name,
                   kernel_init=axes.partitioned(nn.linear.default_kernel_init, (None, axes.EMBED, axes.MLP)),
                   bias_init=axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
    out = jnp.tanh(conv(x))  # [B, T' - w + 1, F]
    count = jnp.sum(mask, axis=1)
    starts = jnp.arange(out.shape[1])[None, :]
    # A window is valid if it lies within the document, or is the first window of a document shorter than w.
    valid = (starts + width <= count[:, None]) | ((starts == 0) & (count > 0)[:, None])
    return pooling.max_pool(out, valid)


class DualAttentionEncoder(nn.Module):
    """The local and global attention modules of D-Attn and their CNNs (Seo et al. 2017, §3).

    Parameters: "local_score" (kernel [w, D], bias []), "local_conv" (width 1, n_L filters), "global_score"
    (kernel [T_max, D], bias []), "global_conv_h" for each width h (n_G filters).

    Attributes:
      max_len: T_max, the longest document the global score takes (W_G has one row per position).
      window: w, the local window (odd; the paper's ports use 5).
      local_features: n_L (200 in the ports).
      global_widths: the global CNN widths (2, 3, 4).
      global_features: n_G per width (100 in the ports).
      global_scores: "document" (one gate per document) or "word" (one per position).
    """

    max_len: int
    window: int = 5
    local_features: int = 200
    global_widths: Sequence[int] = (2, 3, 4)
    global_features: int = 100
    global_scores: str = "document"

    def __post_init__(self):
        for name in ("max_len", "window", "local_features", "global_features"):
            _checks.int_at_least(name, getattr(self, name), 1)
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd (a window centred on each word), got {self.window}")
        if not self.global_widths:
            raise ValueError("global_widths must name at least one width, got ()")
        for width in self.global_widths:
            _checks.int_at_least("global_widths entries", width, 1)
        _checks.choice("global_scores", self.global_scores, GLOBAL_SCORES)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: jax.Array, lengths: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Encodes padded documents.

        Args:
          inputs: [B, T, D] floating, word embeddings (T <= max_len).
          lengths: [B] integer, the document lengths; words beyond are padding.

        Returns:
          features: [B, n_L + len(global_widths) n_G] float32, z.
          aux: {"local_scores": [B, T] float32 s_L, "global_scores": [B, 1] (document) or [B, T] (word)
            float32 s_G; both 0 at padded words}.

        Raises:
          ValueError: if inputs are not rank 3, T > max_len, or the lengths do not fit.
          TypeError: for non-floating inputs or non-integer lengths.
        """
        _checks.rank("inputs", inputs, 3)
        batch, length, dim = inputs.shape
        if length > self.max_len:
            raise ValueError(f"the global score's W_G has max_len={self.max_len} rows; got documents of {length} "
                             f"words (raise max_len or cut the documents)")
        check_lengths("lengths", lengths, batch)
        mask = jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]
        x, mask = pooling.masked_sequence(inputs, mask)
        x = x.astype(_F32)
        scalar = axes.partitioned(nn.initializers.zeros_init(), ())
        local_kernel = self.param("local_score_kernel", axes.partitioned(nn.linear.default_kernel_init,
                                                                         (None, axes.EMBED)), (self.window, dim))
        local_bias = self.param("local_score_bias", scalar, ())
        s_local = local_attention_scores(x, local_kernel, local_bias, mask)  # [B, T]
        z_local = _conv_max(s_local[..., None] * x, mask, 1, self.local_features, "local_conv")

        global_kernel = self.param("global_score_kernel", axes.partitioned(nn.linear.default_kernel_init,
                                                                           (None, axes.EMBED)), (self.max_len, dim))
        global_bias = self.param("global_score_bias", scalar, ())
        per_word = jnp.einsum("BTD,TD->BT", x, global_kernel[:length])  # zero at padded words
        if self.global_scores == "document":
            s_global = jax.nn.sigmoid(jnp.sum(per_word, axis=1, keepdims=True) + global_bias)  # [B, 1]
            s_global = jnp.where(jnp.any(mask, axis=1, keepdims=True), s_global, 0.0)
        else:
            s_global = jnp.where(mask, jax.nn.sigmoid(per_word + global_bias), 0.0)  # [B, T]
        gated = s_global[..., None] * x
        z_global = [_conv_max(gated, mask, h, self.global_features, f"global_conv_{h}")
                    for h in self.global_widths]
        features = jnp.concatenate([z_local, *z_global], axis=-1)
        return features, {"local_scores": s_local, "global_scores": s_global}
