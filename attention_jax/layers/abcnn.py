"""Attention-based CNNs for sentence pairs: BCNN and ABCNN-1, -2, -3.

Yin, Schütze, Xiang & Zhou 2016, "ABCNN: Attention-Based Convolutional Neural Network for Modeling Sentence
Pairs", TACL, arXiv:1512.05193, §3 (BCNN) and §4 (ABCNN). Restated in the row-major layout used here (a
sentence is [s, d], one row per word), with the paper's definitions (its equation numbers could not be
checked here, so none are cited):

    wide convolution   c_j = tanh(W [x_{j-w+1}; ...; x_j] + b), j = 1 .. s + w - 1 (zero columns outside)
    w-ap               p_j = (1/w) sum_{k=j}^{j+w-1} c_k, j = 1 .. s: back to s rows, so blocks stack
    all-ap             the mean of all rows: one vector per sentence per layer, for the output layer; a
                       block's all-ap is taken over its pooled rows (after w-ap or ABCNN-2's pooling)
    attention matrix   A_ij = match-score(F_0[i], F_1[j]) = 1 / (1 + ||F_0[i] - F_1[j]||), Euclidean
    ABCNN-1            F_{0,a} = A W_0, F_{1,a} = A^T W_1 (W: [s_max, d]), stacked with F_{i,r} as a second
                       input channel of the convolution (here: concatenated features, the same thing for a
                       filter that spans the whole width d)
    ABCNN-2            A on the convolution outputs; a_0 = row sums, a_1 = column sums; the w-window pooling
                       weighted by them: p_j = sum_{k=j}^{j+w-1} a_k c_k
    ABCNN-3            both, in every block.

Where all-ap is taken: the paper reports one-block ABCNN-2 apart from one-block BCNN, so the attention pooling
of the last block must reach the output. Here every block's all-ap is the mean of its pooled rows. Taken over
the raw convolution rows instead (as some public ports do), a one-block ABCNN-2 computes exactly BCNN's
output and a one-block ABCNN-3 exactly ABCNN-1's: the last block's attention pooling feeds nothing.

The Euclidean distance has no gradient at 0 (two identical rows): `match_score` computes
sqrt(||x - y||^2 + eps), eps = 1e-6 by default, so identical rows give a finite gradient. The output layer is
logistic regression over the cosine similarities of the two sentences' all-ap vectors at every layer (the
input layer and each block), as the authors' code does; the all-ap vectors themselves are returned too.

Masks: rows beyond a sentence's length are padding. They are zeroed before every product, get A = 0 (so
they add nothing to the attention sums or to F_a), and are left out of every pooling; a sentence with no
word gives zero vectors and cosine 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes, pooling
from attention_jax.core.masks import check_lengths

__all__ = ["ABCNN", "ABCNN_VARIANTS", "match_score", "window_pool"]

ABCNN_VARIANTS = ("bcnn", "abcnn1", "abcnn2", "abcnn3")

_F32 = jnp.float32


def match_score(x0: jax.Array, x1: jax.Array, mask0: jax.Array | None = None, mask1: jax.Array | None = None,
                *, eps: float = 1e-6) -> jax.Array:
    """The attention matrix A_ij = 1 / (1 + sqrt(||x0_i - x1_j||^2 + eps)) (Yin et al. 2016, §4).

    Args:
      x0: [B, S0, D] floating, sentence 0's rows.
      x1: [B, S1, D] floating, sentence 1's rows.
      mask0: None or [B, S0] bool, True = a real row.
      mask1: None or [B, S1] bool.
      eps: > 0, keeps the gradient finite where two rows coincide.

    Returns:
      [B, S0, S1] float32 in (0, 1], exactly 0 where either row is padding.

    Raises:
      ValueError: if the inputs are not rank 3 or disagree on B or D, a mask does not fit, or eps <= 0.
      TypeError: for non-floating inputs or non-boolean masks.
    """
    x0, mask0 = pooling.masked_sequence(x0, mask0)
    x1, mask1 = pooling.masked_sequence(x1, mask1)
    if x0.shape[0] != x1.shape[0] or x0.shape[2] != x1.shape[2]:
        raise ValueError(f"x0 [B, S0, D] and x1 [B, S1, D] must agree on B and D, got {x0.shape=} {x1.shape=}")
    eps = _checks.positive_real("eps", eps)
    a, b = x0.astype(_F32), x1.astype(_F32)
    squared = (jnp.sum(a * a, -1)[:, :, None] + jnp.sum(b * b, -1)[:, None, :]
               - 2.0 * jnp.einsum("BSD,BTD->BST", a, b))
    distance = jnp.sqrt(jnp.maximum(squared, 0.0) + eps)
    valid = mask0[:, :, None] & mask1[:, None, :]
    return jnp.where(valid, 1.0 / (1.0 + distance), 0.0)


def window_pool(conv: jax.Array, weights: jax.Array, width: int, lengths: jax.Array) -> jax.Array:
    """p_j = sum_{k=j}^{j+w-1} weights_k conv_k for j < length, else 0: w-ap (weights 1/w) and ABCNN-2's pooling.

    Args:
      conv: [B, S + w - 1, D] floating, the wide-convolution outputs.
      weights: [B, S + w - 1] floating, the per-row weights (0 at rows to leave out).
      width: w >= 1.
      lengths: [B] integer, the sentence lengths (<= S).

    Returns:
      [B, S, D] float32.

    Raises:
      ValueError: if the shapes do not fit (named in the message) or width < 1.
      TypeError: for non-floating conv or weights.
    """
    width = _checks.int_at_least("width", width, 1)
    _checks.rank("conv", conv, 3)
    _checks.floating("conv", conv)
    _checks.floating("weights", weights)
    batch, rows, _ = conv.shape
    if jnp.shape(weights) != (batch, rows) or rows < width - 1:
        raise ValueError(f"weights must be [B, S + w - 1] = {(batch, rows)} (w={width}), got {jnp.shape(weights)}")
    length = rows - width + 1
    check_lengths("lengths", lengths, batch)
    weighted = weights.astype(_F32)[..., None] * conv.astype(_F32)
    pooled = sum(weighted[:, k:k + length] for k in range(width))  # [B, S, D]
    valid = jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]
    return jnp.where(valid[..., None], pooled, 0.0)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine [B], 0 where either vector is 0 (with a finite gradient there)."""
    na, nb = jnp.sum(a * a, -1), jnp.sum(b * b, -1)
    alive = (na > 0) & (nb > 0)
    denom = jnp.sqrt(jnp.where(alive, na * nb, 1.0))
    return jnp.where(alive, jnp.sum(a * b, -1) / denom, 0.0)


class ABCNN(nn.Module):
    """BCNN and ABCNN-1/-2/-3 over a pair of embedded sentences (Yin et al. 2016, arXiv:1512.05193).

    Parameters per block l: "conv_l" (kernel [w, D_in (x2 with ABCNN-1), F], bias [F]) and, for ABCNN-1 and
    -3, "attention_l" [max_len, D_in] (W_0 = W_1, shared by the two sentences, as the authors' code has it;
    `share_attention_weights=False` gives each sentence its own, "attention_l_0" and "attention_l_1"); then
    "output" (logistic regression over the per-layer cosines).

    Attributes:
      variant: "bcnn", "abcnn1", "abcnn2" or "abcnn3".
      num_blocks: convolution-pooling blocks (the paper: 1 or 2).
      width: the filter width w (the paper uses 4 on WikiQA).
      features: F, filters per convolution (the paper: 50).
      max_len: the longest sentence ABCNN-1's W can take (its rows index words).
      share_attention_weights: one W for both sentences in ABCNN-1 / -3.
      num_classes: outputs of the logistic regression (1: a single logit for a binary task).
      eps: the match score's epsilon.
    """

    variant: str = "abcnn3"
    num_blocks: int = 1
    width: int = 4
    features: int = 50
    max_len: int = 40
    share_attention_weights: bool = True
    num_classes: int = 1
    eps: float = 1e-6
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()

    def __post_init__(self):
        _checks.choice("variant", self.variant, ABCNN_VARIANTS)
        for name in ("num_blocks", "width", "features", "max_len", "num_classes"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.flag("share_attention_weights", self.share_attention_weights)
        _checks.positive_real("eps", self.eps)
        super().__post_init__()

    @nn.compact
    def __call__(self, x0: jax.Array, x1: jax.Array, lengths0: jax.Array, lengths1: jax.Array,
                 ) -> tuple[jax.Array, dict[str, Any]]:
        """Scores sentence pairs.

        Args:
          x0: [B, S0, D] floating, sentence 0's word embeddings (S0 <= max_len for ABCNN-1 / -3).
          x1: [B, S1, D] floating, sentence 1's.
          lengths0: [B] integer, sentence 0's lengths; rows beyond are padding.
          lengths1: [B] integer.

        Returns:
          logits: [B, num_classes] float32.
          aux: {"cosines": [B, num_blocks + 1] float32, the all-ap cosines of every layer; "all_ap": a list of
            (sentence 0 [B, F_l], sentence 1 [B, F_l]) per layer; "attention": a list per block of the
            ABCNN-1 input attention [B, S0, S1] and/or the ABCNN-2 convolution attention
            [B, S0 + w - 1, S1 + w - 1] (dicts with keys "input" and "pooling")}.

        Raises:
          ValueError: for inputs of the wrong rank, batch or width, lengths that do not fit, or (ABCNN-1 / -3) a
            sentence longer than max_len.
          TypeError: for non-floating inputs or non-integer lengths.
        """
        for name, x in (("x0", x0), ("x1", x1)):
            _checks.rank(name, x, 3)
            _checks.floating(name, x)
        if x0.shape[0] != x1.shape[0] or x0.shape[2] != x1.shape[2]:
            raise ValueError(f"x0 [B, S0, D] and x1 [B, S1, D] must agree on B and D, got {x0.shape=} {x1.shape=}")
        batch = x0.shape[0]
        check_lengths("lengths0", lengths0, batch)
        check_lengths("lengths1", lengths1, batch)
        input_attention = self.variant in ("abcnn1", "abcnn3")
        pooling_attention = self.variant in ("abcnn2", "abcnn3")
        if input_attention and max(x0.shape[1], x1.shape[1]) > self.max_len:
            raise ValueError(f"ABCNN-1's W has max_len={self.max_len} rows; got sentences of {x0.shape[1]} and "
                             f"{x1.shape[1]} rows (raise max_len or cut the sentences)")
        w = self.width
        masks = [jnp.arange(x.shape[1])[None, :] < jnp.asarray(n)[:, None] for x, n in ((x0, lengths0), (x1, lengths1))]
        lengths = [jnp.asarray(lengths0), jnp.asarray(lengths1)]
        xs = [pooling.masked_sequence(x, m)[0].astype(_F32) for x, m in zip((x0, x1), masks)]
        all_ap = [tuple(pooling.mean_pool(x, m) for x, m in zip(xs, masks))]
        attention_maps = []
        for block in range(self.num_blocks):
            maps = {}
            if input_attention:
                a = match_score(xs[0], xs[1], masks[0], masks[1], eps=self.eps)  # [B, S0, S1]
                maps["input"] = a
                dim = xs[0].shape[-1]
                init = axes.partitioned(self.kernel_init, (None, axes.EMBED))
                if self.share_attention_weights:
                    w0 = w1 = self.param(f"attention_{block}", init, (self.max_len, dim))
                else:
                    w0 = self.param(f"attention_{block}_0", init, (self.max_len, dim))
                    w1 = self.param(f"attention_{block}_1", init, (self.max_len, dim))
                # F_{0,a} = W_0 A^T in the paper's column layout: W_0's columns (rows here) index sentence 1's words.
                f0 = jnp.einsum("BST,TD->BSD", a, w0[:a.shape[2]])  # [B, S0, D_in]
                f1 = jnp.einsum("BST,SD->BTD", a, w1[:a.shape[1]])  # F_{1,a} = W_1 A: [B, S1, D_in]
                xs = [jnp.concatenate([xs[0], f0], -1), jnp.concatenate([xs[1], f1], -1)]
            conv = nn.Conv(self.features, (w,), padding=[(w - 1, w - 1)], name=f"conv_{block}",
                           kernel_init=axes.partitioned(self.kernel_init, (None, axes.EMBED, axes.MLP)),
                           bias_init=axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
            convs, conv_masks = [], []
            for x, m in zip(xs, masks):
                valid = jnp.arange(x.shape[1] + w - 1)[None, :] < (jnp.sum(m, 1) + w - 1)[:, None]
                valid = valid & (jnp.sum(m, 1) > 0)[:, None]
                convs.append(jnp.where(valid[..., None], jnp.tanh(conv(x)), 0.0))
                conv_masks.append(valid)
            if pooling_attention:
                a = match_score(convs[0], convs[1], conv_masks[0], conv_masks[1], eps=self.eps)
                maps["pooling"] = a
                weights = [jnp.sum(a, axis=2), jnp.sum(a, axis=1)]  # row sums, column sums
            else:
                weights = [m.astype(_F32) / w for m in conv_masks]  # w-ap
            xs = [window_pool(c, wt, w, n) for c, wt, n in zip(convs, weights, lengths)]
            # all-ap over the block's pooled rows, so ABCNN-2's attention pooling reaches the output layer even
            # in the last block (see the module docstring).
            all_ap.append(tuple(pooling.mean_pool(x, m) for x, m in zip(xs, masks)))
            attention_maps.append(maps)
        cosines = jnp.stack([_cosine(a, b) for a, b in all_ap], axis=-1)  # [B, L + 1]
        logits = nn.Dense(self.num_classes, name="output", **axes.dense_inits(None, None))(cosines)
        return logits.astype(_F32), {"cosines": cosines, "all_ap": all_ap, "attention": attention_maps}
