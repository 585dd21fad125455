"""Weighted Transformer branched attention, with the simplex projection that keeps its branch weights valid.

Ahmed, Keskar, Socher 2017, "Weighted Transformer Network for Machine Translation", arXiv:1711.02132, §3:

    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
    head_i_bar = head_i W^{O_i} * kappa_i
    BranchedAttention(Q, K, V) = sum_{i=1..M} alpha_i FFN_i(head_i_bar)

with kappa and alpha [M] learned and kept on the probability simplex (sum = 1, entries >= 0). The paper keeps
them there by projecting after every optimiser step; `project_branch_weights` does that on a params tree, using
`project_to_simplex`, the sort-based Euclidean projection (Duchi et al. 2008; Wang & Carreira-Perpinan 2013,
arXiv:1309.1541, Algorithm 1).

The M branches run as M heads of one `dot_product_attention` call (q/k/v [B, T, M, H]); the per-branch W^{O_i}
and FFN_i are stacked parameters indexed by the branch letter M in the einsums below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.core.masks import AttentionMask
from attention_jax.dot_product.api import dot_product_attention
from attention_jax.layers._common import live_rows, zero_dead

__all__ = ["WeightedBranchAttention", "project_branch_weights", "project_to_simplex"]

_F32 = jnp.float32
# The parameter names that `project_branch_weights` projects onto the simplex.
BRANCH_WEIGHT_NAMES = ("kappa", "alpha")


def project_to_simplex(x: jax.Array) -> jax.Array:
    """Euclidean projection of each last-axis vector onto the probability simplex {w : sum w = 1, w >= 0}.

    argmin_w ||w - x||_2 subject to sum_m w_m = 1, w_m >= 0; the solution is w = max(x - theta, 0) with theta
    found from the sorted entries (Duchi, Shalev-Shwartz, Singer, Chandra 2008, "Efficient Projections onto
    the l1-Ball", Fig. 1; Wang & Carreira-Perpinan 2013, arXiv:1309.1541, Algorithm 1). O(M log M) per vector.
    Computed in float32 (or float64 when the input is float64); the result takes the input dtype.

    Args:
      x: [..., M] floating, M >= 1.

    Returns:
      [..., M] in the dtype of x; each last-axis vector is non-negative and sums to 1.

    Raises:
      ValueError: if x is a scalar or M == 0.
      TypeError: if x is not floating point.
    """
    _checks.floating("x", x)
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] == 0:
        raise ValueError(f"x must have shape [..., M] with M >= 1, got {jnp.shape(x)=}")
    x = jnp.asarray(x)
    dtype = x.dtype
    work = x.astype(jnp.promote_types(dtype, _F32))  # [..., M]
    num = work.shape[-1]
    u = -jnp.sort(-work, axis=-1)  # [..., M] descending
    css = jnp.cumsum(u, axis=-1) - 1.0  # [..., M]
    ranks = jnp.arange(1, num + 1, dtype=work.dtype)  # [M]
    # rho = the largest j with u_j - (sum_{r<=j} u_r - 1) / j > 0; j = 1 always qualifies.
    positive = u - css / ranks > 0  # [..., M]
    rho = jnp.sum(positive, axis=-1, keepdims=True)  # [..., 1], count = last qualifying j (the set is a prefix)
    theta = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(work.dtype)  # [..., 1]
    return jnp.maximum(work - theta, 0.0).astype(dtype)


def project_branch_weights(params: Any) -> Any:
    """Projects every 'kappa' and 'alpha' leaf of a params tree onto the simplex (arXiv:1711.02132 §3).

    Meant to run after each optimiser update (e.g. `optax.apply_updates`), as the paper does, so the branch
    weights stay a convex combination. Every other leaf is returned unchanged (the same array object).

    Args:
      params: a pytree (dict, FrozenDict, ...) of arrays; a leaf is projected when the last key of its path
        is 'kappa' or 'alpha'. Such a leaf is [..., M] floating.

    Returns:
      A pytree with the same structure; kappa/alpha leaves [..., M] in their dtype, on the simplex.

    Raises:
      ValueError: if a kappa/alpha leaf is a scalar.
      TypeError: if a kappa/alpha leaf is not floating point.
    """

    def visit(path, leaf):
        last = path[-1] if path else None
        name = getattr(last, "key", getattr(last, "name", None))
        return project_to_simplex(leaf) if name in BRANCH_WEIGHT_NAMES else leaf

    return jax.tree_util.tree_map_with_path(visit, params)


def _uniform(key, shape, dtype=_F32):
    del key
    return jnp.full(shape, 1.0 / shape[-1], dtype)


class WeightedBranchAttention(nn.Module):
    """Branched attention of the Weighted Transformer, sum_i alpha_i FFN_i(kappa_i head_i W^{O_i}).

    Ahmed, Keskar, Socher 2017, arXiv:1711.02132, §3 (the BranchedAttention equations). Parameters:
      query, key, value: `nn.DenseGeneral` [D, M, H] (+ bias [M, H]), W_i^Q, W_i^K, W_i^V of every branch;
      out_kernel: [M, H, D], W^{O_i} (no bias, as in the paper);
      ffn_in_kernel [M, D, F], ffn_in_bias [M, F], ffn_out_kernel [M, F, D], ffn_out_bias [M, D]: FFN_i(x) =
        relu(x W1_i + b1_i) W2_i + b2_i, with F = d_ff;
      kappa [M], alpha [M]: the branch weights, initialised to 1/M. The module uses them as stored; keep them on
        the simplex with `project_branch_weights` after each update.
    The residual connection and layer norm around the block belong to the caller.

    Attributes:
      num_branches: M.
      head_dim: H, the per-branch query/key/value size.
      d_ff: F, the hidden size of each branch's FFN.
      dropout_rate: dropout on the attention weights when `deterministic=False` (rng "dropout").
      dtype: the compute dtype of the projections; None infers it from inputs and params.
      param_dtype: the parameter dtype, float32 by default.
      kernel_init: initialiser of all kernels.
      bias_init: initialiser of all biases.

    Raises:
      ValueError: at construction, if M, H or F is not a positive int, or the dropout rate is not in [0, 1).
    """

    num_branches: int
    head_dim: int
    d_ff: int
    dropout_rate: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()

    def __post_init__(self):
        for name in ("num_branches", "head_dim", "d_ff"):
            _checks.int_at_least(name, getattr(self, name), 1)
        _checks.rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    def _param(self, name, init, shape, names):
        return self.param(name, axes.partitioned(init, names), shape, self.param_dtype)

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array | None = None,
        mask: jax.Array | None = None,
        *,
        is_causal: bool = False,
        deterministic: bool = True,
    ) -> jax.Array:
        """BranchedAttention(Q, K, V) of arXiv:1711.02132 §3 from `inputs_q` to `inputs_kv` (or to itself).

        Args:
          inputs_q: [B, T, D] floating.
          inputs_kv: [B, S, Dkv] floating, or None for self-attention (S = T, Dkv = D).
          mask: None or [B or 1, M or 1, T, S] bool, True = attend (M or 1: per branch or shared).
          is_causal: a bool; key s is masked for query t when s > t (top-left, as in `dot_product_attention`).
          deterministic: a bool; if False and dropout_rate > 0, drop attention weights with the "dropout" rng.

        Returns:
          [B, T, D] in the compute dtype (the inputs' and params' promoted dtype unless `dtype` is set). T = 0
          gives an empty output; S = 0 gives the branches' FFN of zero heads (their biases), as
          `dot_product_attention` returns zeros for S = 0.

        Raises:
          ValueError: for inputs that are not rank 3, batch sizes that differ, a zero feature size, or a mask
            shape that does not fit.
          TypeError: for inputs that are not floating arrays, a non-boolean mask, or flags that are not bools.
        """
        is_causal = _checks.flag("is_causal", is_causal)
        deterministic = _checks.flag("deterministic", deterministic)
        inputs_kv = _checks.attention_inputs(inputs_q, inputs_kv)
        if jnp.shape(inputs_q)[-1] == 0 or jnp.shape(inputs_kv)[-1] == 0:
            raise ValueError(f"inputs need at least one feature: {jnp.shape(inputs_q)=} {jnp.shape(inputs_kv)=}")
        batch, num_queries, features = jnp.shape(inputs_q)
        num_keys = jnp.shape(inputs_kv)[1]
        branches, head_dim, hidden = self.num_branches, self.head_dim, self.d_ff
        # The mask sources checked once, before any projection; dot_product_attention takes the spec as it is.
        spec = AttentionMask(mask, is_causal=is_causal).fit(batch, branches, num_queries, num_keys)

        def dense(name):
            return nn.DenseGeneral(
                features=(branches, head_dim), axis=-1, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=axes.partitioned(self.kernel_init, (axes.EMBED, axes.HEADS, axes.HEAD_DIM)),
                bias_init=axes.partitioned(self.bias_init, (axes.HEADS, axes.HEAD_DIM)), name=name,
            )

        qkv_names = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM)

        # Rows no valid pair uses are zeroed before the projections (NaN there would reach d W as NaN * 0).
        live_q, live_k = live_rows(batch, num_queries, num_keys, mask=mask, is_causal=is_causal)
        query = axes.constrain(dense("query")(zero_dead(inputs_q, live_q)), qkv_names)  # [B, T, M, H]
        key = axes.constrain(dense("key")(zero_dead(inputs_kv, live_k)), qkv_names)  # [B, S, M, H]
        value = axes.constrain(dense("value")(zero_dead(inputs_kv, live_k)), qkv_names)  # [B, S, M, H]

        rate = 0.0 if deterministic else float(self.dropout_rate)
        dropout_rng = self.make_rng("dropout") if rate > 0.0 else None
        heads = dot_product_attention(
            query, key, value, mask=spec, dropout_rate=rate, dropout_rng=dropout_rng
        )  # [B, T, M, H]

        # The branches M play the part of heads (and are sharded like them); each branch's FFN is whole.
        m, h, d, f = axes.HEADS, axes.HEAD_DIM, axes.EMBED, axes.MLP
        w_out = self._param("out_kernel", self.kernel_init, (branches, head_dim, features), (m, h, d))  # [M, H, D]
        w_in = self._param("ffn_in_kernel", self.kernel_init, (branches, features, hidden), (m, d, f))  # [M, D, F]
        b_in = self._param("ffn_in_bias", self.bias_init, (branches, hidden), (m, f))  # [M, F]
        w_ffn = self._param("ffn_out_kernel", self.kernel_init, (branches, hidden, features), (m, f, d))  # [M, F, D]
        b_ffn = self._param("ffn_out_bias", self.bias_init, (branches, features), (m, d))  # [M, D]
        kappa = self._param("kappa", _uniform, (branches,), (m,))  # [M]
        alpha = self._param("alpha", _uniform, (branches,), (m,))  # [M]
        heads, w_out, w_in, b_in, w_ffn, b_ffn, kappa, alpha = nn.dtypes.promote_dtype(
            heads, w_out, w_in, b_in, w_ffn, b_ffn, kappa, alpha, dtype=self.dtype
        )

        head_bar = jnp.einsum("BTMH,MHD->BTMD", heads, w_out) * kappa[:, None]  # [B, T, M, D]
        inner = nn.relu(jnp.einsum("BTMD,MDF->BTMF", head_bar, w_in) + b_in)  # [B, T, M, F]
        branch_out = jnp.einsum("BTMF,MFD->BTMD", inner, w_ffn) + b_ffn  # [B, T, M, D]
        return axes.constrain(jnp.einsum("BTMD,M->BTD", branch_out, alpha), (axes.BATCH, axes.LENGTH, axes.EMBED))
