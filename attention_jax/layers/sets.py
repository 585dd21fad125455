"""Functions on sets: Deep Sets' invariant and equivariant models, and attention pooling over a set.

Zaheer et al. 2017, "Deep Sets", arXiv:1703.06114:

    f(X) = rho( sum_{x in X} phi(x) )                             Theorem 2: every permutation-invariant f
    f_Theta(x) = sigma(Theta x),  Theta = lambda I + gamma 1 1^T  Lemma 3 (§2.3): equivariant iff of this form
    f(x) = sigma(lambda I x + gamma maxpool(x) 1)                 §2.3: the max-pool variation of Lemma 3
    y_i = sigma(x_i Lambda - pool_j(x_j) Gamma + b)               the same with D -> D' channels, Lambda and
                                                                  Gamma [D, D'] (the paper's point-cloud layers)

The sum of Theorem 2 may be replaced by the mean or the max (both also commute with permutations); the
equivariant layer pools with the max (the paper's preferred variation), the mean or the sum (Lemma 3 itself,
gamma 1 1^T x, up to the sign and scale that Gamma absorbs).

Lee et al. 2019, "Set Transformer", arXiv:1810.00825, §3.2:

    Multihead(Q, K, V) = Concat(O_1, ..., O_N) W^O,  O_j = softmax(Q W_j^Q (K W_j^K)^T / sqrt(H)) V W_j^V
    H = LayerNorm(X + Multihead(X, Y, Y)),  MAB(X, Y) = LayerNorm(H + rFF(H))       eqs. 6-7
    PMA_k(Z) = MAB(S, rFF(Z))                                                       eq. 11: k learned seeds S

`AttentionPooling` is the attention core of PMA, Multihead(S, Z, Z) (`mab=False`), or the whole of eq. 11
(`mab=True`); its attention runs through `attention_jax.dot_product_attention`.

Shapes: B batch, S set size (members, padded), D member features, D' or F output features, K seeds, N heads,
H head size. A set is [B, S, D] with a mask [B, S] (True = a member); masked rows may sit anywhere in the order
and may hold NaN or inf: every function selects them away (jnp.where) before any arithmetic, so they reach
no output and no gradient. An empty set (all masked, or S = 0) pools to zeros with zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core import precision
from attention_jax.dot_product.api import dot_product_attention
from attention_jax.dot_product.base import Backend
from attention_jax.layers.multihead import dense_projection

__all__ = ["AGGREGATIONS", "AttentionPooling", "DeepSets", "PermutationEquivariant", "deep_sets_pool",
           "permutation_equivariant", "set_attention_pool"]

AGGREGATIONS = ("sum", "mean", "max")
"""The permutation-invariant poolings over the members of a set."""


def _pool(clean: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
    """The aggregation of clean [B, S, D] (masked rows already zero) over its members; [B, D], 0 for no member.

    Runs in clean's dtype (float32, or float64 for float64 inputs), so float64 gradients stay exact;
    `core.pooling.mean_pool` divides in float32 whatever the input.
    """
    if aggregation == "sum":
        return jnp.sum(clean, axis=1)
    if aggregation == "mean":
        count = jnp.sum(mask, axis=1, keepdims=True).astype(clean.dtype)  # [B, 1]
        return jnp.sum(clean, axis=1) / jnp.maximum(count, 1.0)
    lowest = jnp.finfo(clean.dtype).min  # finite, so an empty set's max and its gradient stay finite
    best = jnp.max(jnp.where(mask[..., None], clean, lowest), axis=1, initial=lowest)  # [B, D]
    return jnp.where(jnp.any(mask, axis=1)[:, None], best, jnp.zeros((), clean.dtype))


def _check_set(name: str, x: Any, mask: Any) -> jax.Array:
    """Checks a set [B, S, D] (floating) and its mask (None or [B, S] bool); returns the mask, all True for None."""
    _checks.rank(name, x, 3)
    _checks.floating(name, x)
    batch, size, _ = jnp.shape(x)
    if mask is None:
        return jnp.ones((batch, size), bool)
    _checks.rank("mask", mask, 2)
    _checks.boolean("mask", mask)
    if tuple(jnp.shape(mask)) != (batch, size):
        raise ValueError(f"mask must be [B, S] = {(batch, size)} for {name} [B, S, D]: "
                         f"mask.shape={tuple(jnp.shape(mask))} {name}.shape={tuple(jnp.shape(x))}")
    return jnp.asarray(mask)


def _check_features(name: str, x: Any) -> None:
    if jnp.shape(x)[-1] == 0:
        raise ValueError(f"{name} need at least one feature, got {name}.shape={tuple(jnp.shape(x))}")


def _check_activation(activation: Any) -> None:
    if activation is not None and not callable(activation):
        raise TypeError(f"activation must be None or a callable, got {activation!r}")


def deep_sets_pool(features: jax.Array, mask: jax.Array | None = None, aggregation: str = "sum") -> jax.Array:
    """The pooling of Deep Sets' invariant model, sum_{x in X} phi(x) (Zaheer et al. 2017, arXiv:1703.06114,
    Theorem 2), or the mean or max of the members.

    Only members are read: masked rows are replaced by zeros (for the max, by the lowest finite value) with
    jnp.where before any arithmetic, so NaN or inf there reaches neither the result nor a gradient. An empty
    set (no member, or S = 0) pools to zeros with zero gradients for every aggregation: the empty sum is 0, and
    the mean and max of an empty set are defined here as 0 too.

    Args:
      features: [B, S, D] floating, phi(x) of each member.
      mask: None (every row a member) or [B, S] bool, True = a member.
      aggregation: "sum" (Theorem 2), "mean" or "max".

    Returns:
      [B, D] in the features' dtype, computed in float32 (float64 for float64 features).

    Raises:
      ValueError: if features are not rank 3, the mask is not [B, S] (both shapes named), or the aggregation is
        not one of `AGGREGATIONS`.
      TypeError: for non-floating features or a non-boolean mask.
    """
    mask = _check_set("features", features, mask)
    _checks.choice("aggregation", aggregation, AGGREGATIONS)
    dtype = precision.compute_dtype(features)
    clean = jnp.where(mask[..., None], jnp.asarray(features, dtype), jnp.zeros((), dtype))  # [B, S, D]
    return _pool(clean, mask, aggregation).astype(jnp.result_type(features))


def permutation_equivariant(
    features: jax.Array,
    mask: jax.Array | None,
    lambda_kernel: jax.Array,
    gamma_kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    pool: str = "max",
    activation: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Deep Sets' permutation-equivariant layer y_i = sigma(x_i Lambda - pool_j(x_j) Gamma + b).

    Zaheer et al. 2017, arXiv:1703.06114, Lemma 3 (Theta = lambda I + gamma 1 1^T) and its max-pool variation
    in §2.3, sigma(lambda I x + gamma maxpool(x) 1), with D -> D' channels: Lambda and Gamma are [D, D']
    matrices and the pooled term is subtracted (so Lambda = Gamma centres each member on the set's max or mean).
    pool_j runs over the members only; masked members are excluded from it and their outputs are exactly 0.
    Permuting the members (with the mask) permutes the outputs.

    Args:
      features: [B, S, D] floating, the members x_i.
      mask: None (every row a member) or [B, S] bool, True = a member.
      lambda_kernel: [D, D'] floating, Lambda (applied to each member).
      gamma_kernel: [D, D'] floating, Gamma (applied to the pooled members).
      bias: None or [D'] floating, b.
      pool: "max" (the paper's variation), "mean" or "sum" (Lemma 3's 1 1^T x).
      activation: sigma, a callable applied elementwise, or None for none.

    Returns:
      [B, S, D'] in the features' dtype, computed in float32 (float64 for float64 features); exactly 0 at masked
      rows. A set with no member gives zeros with zero gradients.

    Raises:
      ValueError: if features are not rank 3, the mask is not [B, S], the kernels are not [D, D'] with the
        features' D and equal shapes, the bias is not [D'] (every shape named), or pool is unknown.
      TypeError: for non-floating features, kernels or bias, a non-boolean mask, or an activation that is not
        callable.
    """
    mask = _check_set("features", features, mask)
    _checks.choice("pool", pool, AGGREGATIONS)
    _check_activation(activation)
    width = jnp.shape(features)[-1]
    for name, kernel in (("lambda_kernel", lambda_kernel), ("gamma_kernel", gamma_kernel)):
        _checks.rank(name, kernel, 2)
        _checks.floating(name, kernel)
        if jnp.shape(kernel)[0] != width:
            raise ValueError(f"{name} must be [D, D'] with the features' D={width}: {name}.shape="
                             f"{tuple(jnp.shape(kernel))} features.shape={tuple(jnp.shape(features))}")
    if jnp.shape(gamma_kernel) != jnp.shape(lambda_kernel):
        raise ValueError(f"gamma_kernel and lambda_kernel must share [D, D']: gamma_kernel.shape="
                         f"{tuple(jnp.shape(gamma_kernel))} lambda_kernel.shape={tuple(jnp.shape(lambda_kernel))}")
    out_width = jnp.shape(lambda_kernel)[1]
    if bias is not None:
        _checks.floating("bias", bias)
        if tuple(jnp.shape(bias)) != (out_width,):
            raise ValueError(f"bias must be [D'] = {(out_width,)}: bias.shape={tuple(jnp.shape(bias))} "
                             f"lambda_kernel.shape={tuple(jnp.shape(lambda_kernel))}")
    dtype = precision.compute_dtype(features)
    clean = jnp.where(mask[..., None], jnp.asarray(features, dtype), jnp.zeros((), dtype))  # [B, S, D]
    pooled = _pool(clean, mask, pool)  # [B, D], 0 for an empty set
    own = jnp.einsum("BSD,DF->BSF", clean, jnp.asarray(lambda_kernel, dtype))  # [B, S, D']
    shared = jnp.einsum("BD,DF->BF", pooled, jnp.asarray(gamma_kernel, dtype))  # [B, D']
    out = own - shared[:, None, :]
    if bias is not None:
        out = out + jnp.asarray(bias, dtype)
    if activation is not None:
        out = activation(out)
    out = jnp.where(mask[..., None], out, jnp.zeros((), out.dtype))
    return out.astype(jnp.result_type(features))


def set_attention_pool(
    queries: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    mask: jax.Array | None = None,
    *,
    implementation: str | Backend | None = None,
) -> tuple[jax.Array, jax.Array]:
    """K learned queries (seeds) attend over the members of each set: the attention of PMA's Multihead(S, Z, Z).

    Lee et al. 2019, arXiv:1810.00825, §3.2 (eq. 11's attention, per head softmax(Q K^T / sqrt(H)) V), computed
    by `attention_jax.dot_product_attention` with the mask [B, 1, K, S]. Members may sit anywhere in the order;
    masked keys and values are replaced by zeros (jnp.where) before the attention, so NaN there reaches nothing.
    Permuting the members (with the mask) leaves the pooled vectors unchanged and permutes the weights. A set
    with no member (S = 0 included) pools to zeros with zero weights and zero gradients.

    Args:
      queries: [K, N, H] floating, the projected seeds shared by every set, or [B, K, N, H] per set.
      keys: [B, S, N, H] floating, the projected members.
      values: [B, S, N, H] floating.
      mask: None (every row a member) or [B, S] bool, True = a member.
      implementation: a `dot_product_attention` backend name or object, or None to let it choose.

    Returns:
      pooled: [B, K, N, H] in the queries' dtype (softmax in float32).
      weights: [B, N, K, S] float32, summing to 1 over the members of a non-empty set; exactly 0 at masked rows.

    Raises:
      ValueError: if the ranks are wrong, keys and values differ in shape, the queries' N or H (or B) differ
        from the keys', or the mask is not [B, S] (every shape named); whatever `dot_product_attention` raises.
      TypeError: for non-floating queries, keys or values, or a non-boolean mask.
    """
    _checks.rank("queries", queries, (3, 4))
    _checks.floating("queries", queries)
    for name, x in (("keys", keys), ("values", values)):
        _checks.rank(name, x, 4)
        _checks.floating(name, x)
    if jnp.shape(values) != jnp.shape(keys):
        raise ValueError(f"keys and values must share [B, S, N, H]: keys.shape={tuple(jnp.shape(keys))} "
                         f"values.shape={tuple(jnp.shape(values))}")
    batch, size, heads, head_dim = jnp.shape(keys)
    q_shape = tuple(jnp.shape(queries))
    if q_shape[-2:] != (heads, head_dim) or (len(q_shape) == 4 and q_shape[0] != batch):
        raise ValueError(f"queries must be [K, N, H] or [B, K, N, H] with the keys' B, N, H: queries.shape={q_shape} "
                         f"keys.shape={tuple(jnp.shape(keys))}")
    if mask is None:
        mask = jnp.ones((batch, size), bool)
    else:
        _checks.rank("mask", mask, 2)
        _checks.boolean("mask", mask)
        if tuple(jnp.shape(mask)) != (batch, size):
            raise ValueError(f"mask must be [B, S] = {(batch, size)} for keys [B, S, N, H]: "
                             f"mask.shape={tuple(jnp.shape(mask))} keys.shape={tuple(jnp.shape(keys))}")
        mask = jnp.asarray(mask)
    num_seeds = q_shape[-3]
    queries = jnp.broadcast_to(jnp.asarray(queries), (batch, num_seeds, heads, head_dim))  # [B, K, N, H]
    member = mask[:, :, None, None]
    keys = jnp.where(member, jnp.asarray(keys), jnp.zeros((), jnp.result_type(keys)))  # [B, S, N, H]
    values = jnp.where(member, jnp.asarray(values), jnp.zeros((), jnp.result_type(values)))
    pair_mask = jnp.broadcast_to(mask[:, None, None, :], (batch, 1, num_seeds, size))  # [B, 1, K, S]
    result = dot_product_attention(queries, keys, values, mask=pair_mask, implementation=implementation,
                                   return_weights=True)
    return result.output, result.weights


def _ints(name: str, values: Any, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of ints >= 1, got {values!r}")
    if not values and not allow_empty:
        raise ValueError(f"{name} must hold at least one width, got {values!r}")
    return tuple(_checks.int_at_least(f"{name}[{i}]", v, 1) for i, v in enumerate(values))


class DeepSets(nn.Module):
    """Deep Sets' invariant model f(X) = rho(pool_{x in X} phi(x)) (Zaheer et al. 2017, arXiv:1703.06114,
    Theorem 2), phi and rho multilayer perceptrons.

    phi: Dense layers "phi_0", "phi_1", ... of widths `phi_features`, each followed by a ReLU, applied to every
    member; then the pool over the members (`deep_sets_pool`: sum, mean or max); then rho: Dense layers "rho_0",
    ... of widths `rho_features` with a ReLU between them and none after the last, so the output is linear.
    An empty `rho_features` returns the pooled features.

    Logical axes of the kernels (biases take their output name), chosen so that no kernel names one axis twice:
    the first phi layer reads the member features, (EMBED, MLP); the last rho layer writes the output,
    (MLP, None); every other layer maps a hidden width to a hidden width, (None, MLP).

    Empty sets (all masked, or S = 0) pool to 0, so their output is rho(0), which depends on the parameters
    only: finite, with zero gradients with respect to the inputs.

    Attributes:
      phi_features: the widths of phi's layers, at least one.
      rho_features: the widths of rho's layers (may be empty).
      aggregation: "sum" (Theorem 2), "mean" or "max".
      kernel_init, bias_init: the Dense initialisers.
      dtype: the compute dtype of the Dense layers; None infers it.
      param_dtype: the parameter dtype, float32 by default.

    Raises:
      ValueError: at construction, for empty phi_features, widths that are not ints >= 1, or an unknown
        aggregation.
    """

    phi_features: Sequence[int]
    rho_features: Sequence[int] = ()
    aggregation: str = "sum"
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _ints("phi_features", self.phi_features, allow_empty=False)
        _ints("rho_features", self.rho_features, allow_empty=True)
        _checks.choice("aggregation", self.aggregation, AGGREGATIONS)
        super().__post_init__()

    def _dense(self, width: int, names: tuple[str | None, str | None], name: str) -> nn.Dense:
        return nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                        **axes.dense_inits(*names, kernel_init=self.kernel_init, bias_init=self.bias_init))

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Maps each set to one vector.

        Args:
          inputs: [B, S, D] floating, D >= 1, the members.
          mask: None (every row a member) or [B, S] bool, True = a member.

        Returns:
          [B, F] with F = rho_features[-1] (phi_features[-1] when rho is empty), in the compute dtype.

        Raises:
          ValueError: if inputs are not rank 3 with D >= 1 or the mask is not [B, S] (shapes named).
          TypeError: for non-floating inputs or a non-boolean mask.
        """
        mask = _check_set("inputs", inputs, mask)
        _check_features("inputs", inputs)
        phi, rho = tuple(self.phi_features), tuple(self.rho_features)
        names = [(None, axes.MLP)] * (len(phi) + len(rho))
        names[0] = (axes.EMBED, axes.MLP)
        if rho:
            names[-1] = (axes.MLP, None)
        # Members only, before every layer: NaN in a masked row would reach the next kernel's gradient
        # (x^T dy = NaN * 0), even though the pool never reads that row.
        member = mask[..., None]
        h = jnp.where(member, jnp.asarray(inputs), jnp.zeros((), jnp.result_type(inputs)))  # [B, S, D]
        for i, width in enumerate(phi):
            h = nn.relu(self._dense(width, names[i], f"phi_{i}")(h))  # [B, S, F_i]
            h = axes.constrain(jnp.where(member, h, jnp.zeros((), h.dtype)), (axes.BATCH, axes.LENGTH, axes.MLP))
        h = deep_sets_pool(h, mask, self.aggregation)  # [B, F_phi]
        for j, width in enumerate(rho):
            h = self._dense(width, names[len(phi) + j], f"rho_{j}")(h)  # [B, F_j]
            if j < len(rho) - 1:
                h = nn.relu(h)
        return h


class PermutationEquivariant(nn.Module):
    """Deep Sets' permutation-equivariant layer y_i = sigma(x_i Lambda - pool_j(x_j) Gamma + b), D -> D'.

    Zaheer et al. 2017, arXiv:1703.06114, Lemma 3 and its max-pool variation (§2.3); see
    `permutation_equivariant`. Parameters: "lambda" [D, D'] and "gamma" [D, D'], both named (EMBED, None) (a
    map from the member width, which one mesh axis cannot shard twice), and "bias" [D'] (None,) when use_bias.
    Stacking layers keeps equivariance; `deep_sets_pool` on top gives an invariant model.

    Attributes:
      features: D', the output width.
      pool: "max" (the paper's variation), "mean" or "sum".
      activation: sigma (elementwise), or None for a linear layer; tanh by default, as in the paper's point-cloud
        models.
      use_bias: whether to add b.
      kernel_init, bias_init: the initialisers.
      param_dtype: the parameter dtype, float32 by default.

    Raises:
      ValueError: at construction, if features is not an int >= 1 or pool is unknown.
      TypeError: at construction, if activation is neither None nor callable, or use_bias is not a bool.
    """

    features: int
    pool: str = "max"
    activation: Callable[[jax.Array], jax.Array] | None = nn.tanh
    use_bias: bool = True
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.int_at_least("features", self.features, 1)
        _checks.choice("pool", self.pool, AGGREGATIONS)
        _check_activation(self.activation)
        _checks.flag("use_bias", self.use_bias)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Maps each member to D' features that depend on it and on its set.

        Args:
          inputs: [B, S, D] floating, D >= 1, the members.
          mask: None (every row a member) or [B, S] bool, True = a member.

        Returns:
          [B, S, D'] in the inputs' dtype; exactly 0 at masked rows.

        Raises:
          ValueError: if inputs are not rank 3 with D >= 1 or the mask is not [B, S] (shapes named).
          TypeError: for non-floating inputs or a non-boolean mask.
        """
        _check_set("inputs", inputs, mask)
        _check_features("inputs", inputs)
        width = jnp.shape(inputs)[-1]
        kernel_init = axes.partitioned(self.kernel_init, (axes.EMBED, None))
        lam = self.param("lambda", kernel_init, (width, self.features), self.param_dtype)
        gamma = self.param("gamma", kernel_init, (width, self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", axes.partitioned(self.bias_init, (None,)), (self.features,), self.param_dtype)
        return permutation_equivariant(inputs, mask, lam, gamma, bias, pool=self.pool, activation=self.activation)


class AttentionPooling(nn.Module):
    """Attention pooling over a set with K learned seeds: Set Transformer's PMA (Lee et al. 2019,
    arXiv:1810.00825, eq. 11), or its attention core alone.

    mab=False: Multihead(S, Z, Z) (§3.2): the seeds "seeds" [K, D] are projected to queries ("query"), the
    members to keys and values ("key", "value"), N heads attend with `set_attention_pool`, and "out" maps the
    heads back to D.
    mab=True: the whole PMA_K(Z) = MAB(S, rFF(Z)) (eqs. 6-7 and 11): the members first pass a row-wise
    feed-forward layer "member_ff" (Dense D -> D, ReLU); H = LayerNorm_1(S + Multihead(S, rFF(Z), rFF(Z))); the
    output is LayerNorm_2(H + rFF(H)) with rFF = "seed_ff" (Dense D -> D, ReLU).

    Logical axes: "seeds" (None, EMBED); "query" (EMBED, HEADS, HEAD_DIM); "key" and "value" (EMBED, KV_HEADS,
    HEAD_DIM); "out" (HEADS, HEAD_DIM, EMBED); "member_ff" and "seed_ff" (EMBED, None); "norm_1", "norm_2"
    (EMBED,).

    The output of a set with no member (all masked, or S = 0) is 0 with zero gradients, in both modes (eq. 11
    would give a function of the seeds alone; a masked row gives zeros here, as everywhere in the library).

    Attributes:
      num_heads: N.
      num_seeds: K, the number of pooled vectors per set.
      head_dim: H; None means D // N (D must then be a multiple of N).
      mab: False for the attention core, True for the whole PMA block.
      use_bias: whether the projections (and feed-forward layers) have biases.
      implementation: forwarded to `dot_product_attention`.
      kernel_init, bias_init: the projection initialisers; seed_init: the seeds' initialiser.
      dtype: the compute dtype of the projections; None infers it.
      param_dtype: the parameter dtype, float32 by default.

    Raises:
      ValueError: at construction, if num_heads, num_seeds or head_dim is not an int >= 1.
      TypeError: at construction, if mab or use_bias is not a bool.
    """

    num_heads: int = 1
    num_seeds: int = 1
    head_dim: int | None = None
    mab: bool = False
    use_bias: bool = True
    implementation: str | Backend | None = None
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    seed_init: Callable[..., Any] = nn.initializers.normal(stddev=1.0)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.int_at_least("num_heads", self.num_heads, 1)
        _checks.int_at_least("num_seeds", self.num_seeds, 1)
        if self.head_dim is not None:
            _checks.int_at_least("head_dim", self.head_dim, 1)
        _checks.flag("mab", self.mab)
        _checks.flag("use_bias", self.use_bias)
        super().__post_init__()

    _dense = dense_projection

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Pools each set into K vectors.

        Args:
          inputs: [B, S, D] floating, D >= 1, the members Z.
          mask: None (every row a member) or [B, S] bool, True = a member.

        Returns:
          pooled: [B, K, D] in the compute dtype; zeros for a set with no member.
          weights: [B, N, K, S] float32, each seed's attention over the members; exactly 0 at masked rows.

        Raises:
          ValueError: if inputs are not rank 3 with D >= 1, the mask is not [B, S] (shapes named), or D is not a
            multiple of num_heads without head_dim.
          TypeError: for non-floating inputs or a non-boolean mask.
        """
        mask = _check_set("inputs", inputs, mask)
        _check_features("inputs", inputs)
        width = jnp.shape(inputs)[-1]
        if self.head_dim is None and width % self.num_heads:
            raise ValueError(f"without head_dim, the member width D={width} must be a multiple of num_heads "
                             f"N={self.num_heads}: inputs.shape={tuple(jnp.shape(inputs))}")
        head_dim = width // self.num_heads if self.head_dim is None else self.head_dim
        # Members only: NaN in a masked row would reach the projections' gradients (x^T dy = NaN * 0).
        members = jnp.where(mask[..., None], jnp.asarray(inputs), jnp.zeros((), jnp.result_type(inputs)))
        seeds = self.param("seeds", axes.partitioned(self.seed_init, (None, axes.EMBED)), (self.num_seeds, width),
                           self.param_dtype)  # [K, D]
        if self.mab:
            members = nn.relu(self._row_dense(width, "member_ff")(members))  # rFF(Z) [B, S, D]
            # Selected again: the key/value kernels' gradients read these rows too.
            members = jnp.where(mask[..., None], members, jnp.zeros((), members.dtype))
        query = self._dense((self.num_heads, head_dim), -1, "query", (axes.EMBED, axes.HEADS, axes.HEAD_DIM))(
            seeds)  # [K, N, H]
        kv_names = (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM)
        key = self._dense((self.num_heads, head_dim), -1, "key", kv_names)(members)  # [B, S, N, H]
        value = self._dense((self.num_heads, head_dim), -1, "value", kv_names)(members)  # [B, S, N, H]
        key = axes.constrain(key, (axes.BATCH, axes.LENGTH, axes.KV_HEADS, axes.HEAD_DIM))
        value = axes.constrain(value, (axes.BATCH, axes.LENGTH, axes.KV_HEADS, axes.HEAD_DIM))
        context, weights = set_attention_pool(query.astype(key.dtype), key, value, mask,
                                              implementation=self.implementation)  # [B, K, N, H], [B, N, K, S]
        out = self._dense(width, (-2, -1), "out", (axes.HEADS, axes.HEAD_DIM, axes.EMBED))(context)  # [B, K, D]
        if self.mab:
            norm = lambda name: nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name,  # noqa: E731
                                             **axes.norm_inits(axes.EMBED))
            h = norm("norm_1")(seeds[None].astype(out.dtype) + out)  # [B, K, D], MAB's H
            out = norm("norm_2")(h + nn.relu(self._row_dense(width, "seed_ff")(h)))  # MAB(S, rFF(Z)) [B, K, D]
        out = axes.constrain(out, (axes.BATCH, None, axes.EMBED))
        alive = jnp.any(mask, axis=1)  # [B]
        out = jnp.where(alive[:, None, None], out, jnp.zeros((), out.dtype))
        return out, weights

    def _row_dense(self, width: int, name: str) -> nn.Dense:
        """A row-wise D -> D Dense (rFF), named (EMBED, None)."""
        return nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                        **axes.dense_inits(axes.EMBED, None, kernel_init=self.kernel_init, bias_init=self.bias_init))
