"""Few-shot classification: the Cross Attention Network's cross attention module and the prototypical baseline.

Hou, Chang, Ma, Shan & Chen 2019, "Cross Attention Network for Few-shot Classification", NeurIPS 2019,
arXiv:1910.07677, §3.2 (the Cross Attention Module, CAM). A class feature P and a query feature Q, each
[B, H, W, C] (one (class, query) pair per batch row; m = H W positions, flattened row-major to [m, C]):

    R^p[i, j] = cos(P_i, Q_j) = (P_i / ||P_i||)^T (Q_j / ||Q_j||)     correlation layer, [m, m]         (eq. 1)
    R^q = (R^p)^T                                                        [m, m]
    w^p = W_2 relu(W_1 GAP(R^p) + b_1) + b_2                            meta-fusion kernel, [m]           (eq. 2)
    A^p_i = exp(e_i / tau) / sum_k exp(e_k / tau),  e_i = mean_j(w^p_j R^p[i, j])   over P's positions   (eq. 3)
    P' = P * (1 + A^p),  Q' = Q * (1 + A^q)                              residual attention                (eq. 4)

GAP(R^p) averages R^p's rows: a vector over the m query positions, which the meta-learner (W_1: m -> m / r,
W_2: m / r -> m, r the reduction ratio) maps to the kernel w^p that weights the query positions; R^p_i is row i
(the correlations of class position i with every query position), so A^p is a distribution over P's positions.
A^q is the same with R^q: w^q weights the class positions, A^q is a distribution over Q's positions. One
meta-learner serves both directions, so P and Q must have the same m (here: the same [H, W, C]).

Checked against the authors' released code (fewshot-CAN, torchFewShot/models/cam.py), whose choices this
module follows: the fused score e_i is a mean over positions, (w^T R_i) / m, where eq. 3 as printed has the
sum w^T R_i, and tau = 0.025 was chosen for that mean; the l2 normalisation divides by max(||x||, 1e-12).
Deviation: the released meta-learner's first 1 x 1 convolution is followed by BatchNorm, left out here (the
paper's eq. 2 has none); both layers here carry a bias. The equation numbers follow the paper as this project
cites it; they could not be checked against its text.

No mask: the meta-learner's weights are tied to the m positions of a fixed-size map, so there is no padded
position to exclude; every position is real. A zero feature vector has cosine 0 with everything (no NaN).

Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning", arXiv:1703.05175, §2.2:

    c_k = 1 / |S_k| sum_{(x_i, y_i) in S_k} f(x_i)                     class prototype                   (eq. 1)
    p(y = k | x) = exp(-d(f(x), c_k)) / sum_k' exp(-d(f(x), c_k'))     with d the squared Euclidean distance
                                                                                                          (eq. 2)

`prototypes` takes the embedded support f(x_i); `prototypical_logits` returns -d, whose softmax is eq. 2.

Everything is computed in float32 (float64 for float64 inputs); features and prototypes come back in the
inputs' dtype, attention maps and logits in the compute dtype.
"""

from __future__ import annotations

import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core import precision

__all__ = ["CrossAttentionModule", "correlation", "cross_attention_module", "meta_fusion_attention",
           "prototypes", "prototypical_logits"]

NORM_EPS = 1e-12
"""The floor of ||x|| in the cosine of eq. 1, as the released code's F.normalize."""


def _check_pair(class_feat: Any, query_feat: Any) -> None:
    for name, x in (("class_feat", class_feat), ("query_feat", query_feat)):
        _checks.rank(name, x, 4)
        _checks.floating(name, x)
    if jnp.shape(class_feat) != jnp.shape(query_feat):
        raise ValueError(f"class_feat and query_feat must both be [B, H, W, C] with the same shape (one "
                         f"meta-learner serves both directions): class_feat.shape={tuple(jnp.shape(class_feat))} "
                         f"query_feat.shape={tuple(jnp.shape(query_feat))}")


def _unit_rows(x: jax.Array) -> jax.Array:
    """x / max(||x||, NORM_EPS) over the last axis; a zero row stays zero with zero gradients."""
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, jnp.asarray(NORM_EPS ** 2, x.dtype)))


def correlation(class_feat: jax.Array, query_feat: jax.Array) -> jax.Array:
    """Hou et al. 2019 (arXiv:1910.07677), §3.2, eq. 1: R^p[i, j] = cos(P_i, Q_j), the correlation layer.

    R^q = (R^p)^T is `correlation(query_feat, class_feat)`.

    Args:
      class_feat: [B, H, W, C] floating, P.
      query_feat: [B, H, W, C] floating, Q (the same shape).

    Returns:
      r: [B, m, m] float32 (float64 for float64 inputs), m = H W flattened row-major; rows index P's positions,
        columns Q's. Entries lie in [-1, 1]; a zero feature vector correlates 0 with everything.

    Raises:
      ValueError: if a feature map is not rank 4 or the shapes differ (the message names both).
      TypeError: for non-floating feature maps.
    """
    _check_pair(class_feat, query_feat)
    dtype = precision.compute_dtype(class_feat, query_feat)
    batch, channels = jnp.shape(class_feat)[0], jnp.shape(class_feat)[-1]
    p = _unit_rows(jnp.asarray(class_feat).reshape(batch, -1, channels).astype(dtype))  # [B, m, C]
    q = _unit_rows(jnp.asarray(query_feat).reshape(batch, -1, channels).astype(dtype))  # [B, m, C]
    return jnp.einsum("BIC,BJC->BIJ", p, q)  # [B, m, m]


def _check_meta_learner(m: int, w1: Any, b1: Any, w2: Any, b2: Any) -> None:
    for name, value, rank in (("w1", w1, 2), ("b1", b1, 1), ("w2", w2, 2), ("b2", b2, 1)):
        _checks.rank(name, value, rank)
        _checks.floating(name, value)
    hidden = jnp.shape(w1)[1]
    want = {"w1": (m, hidden), "b1": (hidden,), "w2": (hidden, m), "b2": (m,)}
    got = {"w1": jnp.shape(w1), "b1": jnp.shape(b1), "w2": jnp.shape(w2), "b2": jnp.shape(b2)}
    if any(tuple(got[k]) != want[k] for k in want):
        shapes = " ".join(f"{k}.shape={tuple(v)}" for k, v in got.items())
        raise ValueError(f"the meta-learner's weights must be w1 [m, m/r], b1 [m/r], w2 [m/r, m], b2 [m] with "
                         f"m={m} (H W of the feature maps), got {shapes}")


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a real number > 0, got {temperature!r}")
    return float(temperature)


def meta_fusion_attention(r: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
                          temperature: float = 0.025) -> jax.Array:
    """Hou et al. 2019 (arXiv:1910.07677), §3.2, eqs. 2-3: the meta-fusion layer's attention over R's rows.

    w = W_2 relu(W_1 mean_i(R_i) + b_1) + b_2, then A_i = softmax_i(mean_j(w_j R[i, j]) / tau): the mean, not
    the printed sum, as in the released code (see the module docstring).

    Args:
      r: [B, m, m] floating, a correlation map: R^p (rows = P's positions) or R^q = (R^p)^T.
      w1: [m, m/r] floating, W_1 (input-major, like a Dense kernel).
      b1: [m/r] floating.
      w2: [m/r, m] floating, W_2 (input-major).
      b2: [m] floating.
      temperature: tau > 0.

    Returns:
      attention: [B, m] float32 (float64 for float64 inputs), A over R's rows; each row sums to 1 (all 0 when
        m = 0).

    Raises:
      ValueError: if r is not [B, m, m], the weights do not fit m (the message names the shapes), or the
        temperature is not a real number > 0.
      TypeError: for a non-floating r or weight.
    """
    _checks.rank("r", r, 3)
    _checks.floating("r", r)
    m = jnp.shape(r)[1]
    if jnp.shape(r)[2] != m:
        raise ValueError(f"r must be a square correlation map [B, m, m], got r.shape={tuple(jnp.shape(r))}")
    _check_meta_learner(m, w1, b1, w2, b2)
    temperature = _check_temperature(temperature)
    dtype = precision.compute_dtype(r)
    r = jnp.asarray(r).astype(dtype)
    w1, b1, w2, b2 = (jnp.asarray(x).astype(dtype) for x in (w1, b1, w2, b2))
    if m == 0:
        return jnp.zeros(r.shape[:2], dtype)
    pooled = jnp.mean(r, axis=1)  # [B, m]: GAP over the rows, one value per column position
    hidden = jax.nn.relu(pooled @ w1 + b1)  # [B, m/r]
    kernel = hidden @ w2 + b2  # [B, m], eq. 2
    fused = jnp.einsum("BIJ,BJ->BI", r, kernel) / m  # [B, m]: mean_j w_j R[i, j]
    return jax.nn.softmax(fused / temperature, axis=-1)  # [B, m], eq. 3


def cross_attention_module(class_feat: jax.Array, query_feat: jax.Array, w1: jax.Array, b1: jax.Array,
                           w2: jax.Array, b2: jax.Array, temperature: float = 0.025
                           ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Hou et al. 2019 (arXiv:1910.07677), §3.2, eqs. 1-4: P' = P (1 + A^p), Q' = Q (1 + A^q).

    Args:
      class_feat: [B, H, W, C] floating, P (a class feature: a support image's or a class mean).
      query_feat: [B, H, W, C] floating, Q (the query sample's feature, paired row by row with P).
      w1, b1, w2, b2: the meta-learner shared by both directions: [m, m/r], [m/r], [m/r, m], [m] floating,
        m = H W.
      temperature: tau > 0 (the paper's 0.025).

    Returns:
      class_out: [B, H, W, C] in class_feat's dtype, P'.
      query_out: [B, H, W, C] in query_feat's dtype, Q'.
      class_attention: [B, H, W] float32 (float64 for float64 inputs), A^p; sums to 1 over H, W.
      query_attention: [B, H, W] float32 (float64 for float64 inputs), A^q; sums to 1 over H, W.

    Raises:
      ValueError: if a map is not rank 4, the maps' shapes differ, the weights do not fit m = H W (the message
        names the shapes), or the temperature is not a real number > 0.
      TypeError: for non-floating maps or weights.
    """
    _check_pair(class_feat, query_feat)
    r_p = correlation(class_feat, query_feat)  # [B, m, m], eq. 1
    a_p = meta_fusion_attention(r_p, w1, b1, w2, b2, temperature)  # [B, m], eqs. 2-3
    a_q = meta_fusion_attention(jnp.swapaxes(r_p, 1, 2), w1, b1, w2, b2, temperature)  # [B, m], on R^q
    map_shape = jnp.shape(class_feat)[:3]
    a_p, a_q = a_p.reshape(map_shape), a_q.reshape(map_shape)  # [B, H, W]
    class_feat, query_feat = jnp.asarray(class_feat), jnp.asarray(query_feat)
    class_out = class_feat.astype(a_p.dtype) * (1.0 + a_p[..., None])  # [B, H, W, C], eq. 4
    query_out = query_feat.astype(a_q.dtype) * (1.0 + a_q[..., None])
    return class_out.astype(class_feat.dtype), query_out.astype(query_feat.dtype), a_p, a_q


class CrossAttentionModule(nn.Module):
    """Hou et al. 2019's Cross Attention Module (arXiv:1910.07677, §3.2, eqs. 1-4) on NHWC (class, query) pairs.

    Attributes:
      reduction: r, the meta-learner's reduction ratio; its hidden width is m // r with m = H W (the paper's
        6 x 6 maps and r = 6 give 6). Must satisfy 1 <= r <= m.
      temperature: tau > 0 of eq. 3.
      param_dtype: the parameters' dtype.

    Parameters: w1 [m, m/r] (None, "mlp"), b1 [m/r] ("mlp",), w2 [m/r, m] ("mlp", None), b2 [m] (None,), with
    `nn.Dense`'s initialisers. The m axes are spatial positions, never sharded. The sizes depend on H W, so a
    module's parameters fit one map size.
    """

    reduction: int = 6
    temperature: float = 0.025
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, class_feat: jax.Array, query_feat: jax.Array, return_attention: bool = False
                 ) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """`cross_attention_module` with this module's meta-learner.

        Args:
          class_feat: [B, H, W, C] floating, P.
          query_feat: [B, H, W, C] floating, Q.
          return_attention: also return A^p and A^q [B, H, W].

        Returns:
          (class_out, query_out) [B, H, W, C] in the inputs' dtypes; with return_attention, also
          (class_attention, query_attention) [B, H, W] float32.

        Raises:
          ValueError: as `cross_attention_module`, or if the reduction is not an int in [1, H W].
          TypeError: as `cross_attention_module`, or if return_attention is not a bool.
        """
        return_attention = _checks.flag("return_attention", return_attention)
        _check_pair(class_feat, query_feat)
        reduction = _checks.int_at_least("reduction", self.reduction, 1)
        m = jnp.shape(class_feat)[1] * jnp.shape(class_feat)[2]
        if reduction > m:
            raise ValueError(f"reduction must be <= m = H W = {m} so that m // reduction >= 1, got "
                             f"reduction={reduction}; class_feat.shape={tuple(jnp.shape(class_feat))}")
        hidden = m // reduction
        first = axes.dense_inits(None, axes.MLP)
        second = axes.dense_inits(axes.MLP, None)
        w1 = self.param("w1", first["kernel_init"], (m, hidden), self.param_dtype)
        b1 = self.param("b1", first["bias_init"], (hidden,), self.param_dtype)
        w2 = self.param("w2", second["kernel_init"], (hidden, m), self.param_dtype)
        b2 = self.param("b2", second["bias_init"], (m,), self.param_dtype)
        outputs = cross_attention_module(class_feat, query_feat, w1, b1, w2, b2, self.temperature)
        return outputs if return_attention else outputs[:2]


def prototypes(support: jax.Array, labels: jax.Array | None = None, num_classes: int | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    """Snell et al. 2017 (arXiv:1703.05175), eq. 1: c_k, the mean of the embedded support examples of class k.

    Two layouts:
      episode (labels None): support [N, K, D] (or [B, N, K, D]), K shots of each of N classes; c = mean over K.
      labelled: support [B, S, D] with labels [B, S] and num_classes N; c_k = mean of the rows labelled k.
        A label outside [0, N) belongs to no class.

    Masked examples (mask False) are selected away before any arithmetic: NaN or inf stored there reaches
    neither a prototype nor a gradient. A class with no unmasked example gets a zero prototype with zero
    gradients, never NaN (mask its logits with `prototypical_logits`' class_mask).

    Args:
      support: floating, the embedded support f(x_i): [N, K, D] / [B, N, K, D] (episode) or [B, S, D]
        (labelled).
      labels: None (episode), or [B, S] integer class ids.
      num_classes: N, required with labels (a Python int >= 0); must be None in the episode layout.
      mask: None, or bool of support's shape without D (True = a real example).

    Returns:
      prototypes: [N, D] / [B, N, D] (episode) or [B, N, D] (labelled), in support's dtype.

    Raises:
      ValueError: if support has a rank other than 3 (or 4 in the episode layout), labels are not [B, S], the
        mask does not have support's shape without D (the message names the shapes), or num_classes is missing
        with labels, given without them, or not an int >= 0.
      TypeError: for a non-floating support, non-integer labels or a non-boolean mask.
    """
    _checks.floating("support", support)
    support = jnp.asarray(support)
    if labels is None:
        if num_classes is not None:
            raise ValueError(f"num_classes is read from support [N, K, D] in the episode layout; pass labels "
                             f"[B, S] with it, got num_classes={num_classes!r} support.shape={support.shape}")
        _checks.rank("support", support, (3, 4))
    else:
        _checks.rank("support", support, 3)
        _checks.integer("labels", labels)
        if tuple(jnp.shape(labels)) != support.shape[:2]:
            raise ValueError(f"labels must be [B, S] = {support.shape[:2]} for support [B, S, D], got "
                             f"labels.shape={tuple(jnp.shape(labels))} support.shape={support.shape}")
        if num_classes is None:
            raise ValueError(f"num_classes is required with labels: labels.shape={tuple(jnp.shape(labels))}")
        num_classes = _checks.positive_int("num_classes", num_classes, allow_zero=True)
    if mask is None:
        mask = jnp.ones(support.shape[:-1], bool)
    else:
        _checks.array("mask", mask)
        if tuple(jnp.shape(mask)) != support.shape[:-1]:
            raise ValueError(f"mask must be support's shape without D, {support.shape[:-1]}, got "
                             f"mask.shape={tuple(jnp.shape(mask))} support.shape={support.shape}")
        _checks.boolean("mask", mask)
        mask = jnp.asarray(mask)
    dtype = precision.compute_dtype(support)
    clean = jnp.where(mask[..., None], support.astype(dtype), jnp.zeros((), dtype))
    if labels is None:
        counts = jnp.sum(mask, axis=-1, dtype=dtype)  # [..., N]
        sums = jnp.sum(clean, axis=-2)  # [..., N, D]
    else:
        member = (jnp.asarray(labels)[..., None] == jnp.arange(num_classes)) & mask[..., None]  # [B, S, N]
        counts = jnp.sum(member, axis=1, dtype=dtype)  # [B, N]
        sums = jnp.einsum("BSN,BSD->BND", member.astype(dtype), clean)  # [B, N, D]
    return (sums / jnp.maximum(counts, 1.0)[..., None]).astype(support.dtype)


def prototypical_logits(queries: jax.Array, protos: jax.Array, class_mask: jax.Array | None = None) -> jax.Array:
    """Snell et al. 2017 (arXiv:1703.05175), eq. 2: logits -||f(x) - c_k||^2, whose softmax is p(y = k | x).

    The distance is summed from the differences themselves (no |x|^2 - 2 x.c + |c|^2 expansion), so it is
    exact for near-equal points and never negative.

    Args:
      queries: [B, T, D] (or [T, D]) floating, the embedded queries f(x).
      protos: [B, N, D] (or [N, D]) floating, the prototypes c_k (`prototypes`).
      class_mask: None, or [B, N] (or [N]) bool, True = a real class. A masked prototype is selected away
        before use (NaN there reaches no output and no gradient) and its logit is the lowest finite value of
        the compute dtype, so a softmax gives it probability 0.

    Returns:
      logits: [B, T, N] (or [T, N]) float32 (float64 for float64 inputs); the argmax is the nearest prototype.

    Raises:
      ValueError: if queries and protos are not both rank 3 (or both rank 2), their B or D differ, or the class
        mask is not [B, N] / [N] (the message names the shapes).
      TypeError: for non-floating queries or prototypes, or a non-boolean class mask.
    """
    _checks.rank("queries", queries, (2, 3))
    _checks.floating("queries", queries)
    _checks.rank("protos", protos, jnp.ndim(queries))
    _checks.floating("protos", protos)
    q_shape, p_shape = tuple(jnp.shape(queries)), tuple(jnp.shape(protos))
    if q_shape[:-2] != p_shape[:-2] or q_shape[-1] != p_shape[-1]:
        raise ValueError(f"queries [B, T, D] and protos [B, N, D] must share B and D: queries.shape={q_shape} "
                         f"protos.shape={p_shape}")
    dtype = precision.compute_dtype(queries, protos)
    protos = jnp.asarray(protos).astype(dtype)
    if class_mask is not None:
        _checks.array("class_mask", class_mask)
        if tuple(jnp.shape(class_mask)) != p_shape[:-1]:
            raise ValueError(f"class_mask must be protos' shape without D, {p_shape[:-1]}, got "
                             f"class_mask.shape={tuple(jnp.shape(class_mask))} protos.shape={p_shape}")
        _checks.boolean("class_mask", class_mask)
        class_mask = jnp.asarray(class_mask)
        protos = jnp.where(class_mask[..., None], protos, jnp.zeros((), dtype))
    diff = jnp.asarray(queries).astype(dtype)[..., :, None, :] - protos[..., None, :, :]  # [..., T, N, D]
    logits = -jnp.sum(diff * diff, axis=-1)  # [..., T, N], -d of eq. 2
    if class_mask is not None:
        logits = jnp.where(class_mask[..., None, :], logits, jnp.finfo(dtype).min)
    return logits
