"""Per-head gates with the Hard Concrete distribution, and pruning of the heads they close.

Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, the Rest Can
Be Pruned", arXiv:1905.09418, §4: each head's output is multiplied by a gate g_h before the output projection,
and a relaxed L0 penalty drives gates to exactly 0. The gates follow the Hard Concrete distribution of
Louizos et al. 2018, "Learning Sparse Neural Networks through L0 Regularization", arXiv:1712.01312, §4
(eq. 10-12):

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),
    s_bar = s (zeta - gamma) + gamma,  g = min(1, max(0, s_bar)),
    L0 = sum_h P(g_h > 0) = sum_h sigmoid(log_alpha_h - beta log(-gamma / zeta)),

and at test time g = min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma)). Defaults beta = 2/3,
gamma = -0.1, zeta = 1.1 (arXiv:1712.01312 §4).

Shape letters as in the package docstring; N = heads.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks
from attention_jax.core import axes
from attention_jax.layers.multihead import MultiHeadAttention

__all__ = [
    "GatedMultiHeadAttention",
    "kept_heads",
    "expected_l0",
    "hard_concrete_deterministic",
    "hard_concrete_sample",
    "prune_heads",
]

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1


def _check_stretch(beta: float | None, gamma: float, zeta: float) -> None:
    if beta is not None:
        _checks.positive_real("beta", beta)
    if isinstance(gamma, bool) or isinstance(zeta, bool) or not isinstance(gamma, numbers.Real) \
            or not isinstance(zeta, numbers.Real) or not (gamma < 0 and zeta > 1):
        raise ValueError(f"the stretch needs gamma < 0 < 1 < zeta, got {gamma=} {zeta=}")


def _check_log_alpha(log_alpha: Any) -> None:
    _checks.rank("log_alpha", log_alpha, 1)
    _checks.floating("log_alpha", log_alpha)


def hard_concrete_sample(
    log_alpha: jax.Array, rng: jax.Array, *, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA
) -> jax.Array:
    """Draws one Hard Concrete gate per head (arXiv:1712.01312 §4, eq. 10; arXiv:1905.09418 §4).

    Args:
      log_alpha: [N] floating, the location log(alpha) of each gate.
      rng: a PRNG key for u ~ U(0, 1).
      beta: the temperature, > 0.
      gamma: the stretch's lower end, < 0.
      zeta: the stretch's upper end, > 1.

    Returns:
      gates: [N] float32 in [0, 1]; exact 0s and 1s occur with positive probability. Differentiable in
      log_alpha (reparameterised), with zero gradient where the gate is clipped.

    Raises:
      ValueError: if log_alpha is not rank 1, or beta, gamma, zeta are out of range.
      TypeError: if log_alpha is not floating.
    """
    _check_log_alpha(log_alpha)
    _check_stretch(beta, gamma, zeta)
    log_alpha = jnp.asarray(log_alpha, jnp.float32)  # [N]
    # Keep u off {0, 1} so the logistic noise stays finite.
    tiny = jnp.finfo(jnp.float32).tiny
    u = jax.random.uniform(rng, log_alpha.shape, jnp.float32, minval=tiny, maxval=1.0)  # [N]
    u = jnp.minimum(u, 1.0 - jnp.finfo(jnp.float32).epsneg)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / beta)  # [N]
    return jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def hard_concrete_deterministic(log_alpha: jax.Array, *, gamma: float = GAMMA, zeta: float = ZETA) -> jax.Array:
    """The test-time gate, min(1, max(0, sigmoid(log_alpha)(zeta - gamma) + gamma)) (arXiv:1712.01312 §4).

    Args:
      log_alpha: [N] floating.
      gamma: the stretch's lower end, < 0.
      zeta: the stretch's upper end, > 1.

    Returns:
      gates: [N] float32 in [0, 1].

    Raises:
      ValueError: if log_alpha is not rank 1, or gamma, zeta are out of range.
      TypeError: if log_alpha is not floating.
    """
    _check_log_alpha(log_alpha)
    _check_stretch(None, gamma, zeta)
    s = jax.nn.sigmoid(jnp.asarray(log_alpha, jnp.float32))  # [N]
    return jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def expected_l0(
    log_alpha: jax.Array, *, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA
) -> jax.Array:
    """The expected number of open gates, sum_h sigmoid(log_alpha_h - beta log(-gamma/zeta)) (arXiv:1712.01312 eq. 12).

    Each term is P(g_h > 0) under `hard_concrete_sample` with the same beta, gamma, zeta.

    Args:
      log_alpha: [N] floating.
      beta: the temperature, > 0.
      gamma: the stretch's lower end, < 0.
      zeta: the stretch's upper end, > 1.

    Returns:
      l0: [] float32.

    Raises:
      ValueError: if log_alpha is not rank 1, or beta, gamma, zeta are out of range.
      TypeError: if log_alpha is not floating.
    """
    _check_log_alpha(log_alpha)
    _check_stretch(beta, gamma, zeta)
    shift = beta * math.log(-gamma / zeta)
    return jnp.sum(jax.nn.sigmoid(jnp.asarray(log_alpha, jnp.float32) - shift))


def kept_heads(
    log_alpha: Any, *, gamma: float = GAMMA, zeta: float = ZETA, threshold: float = 0.0
) -> np.ndarray:
    """The keep mask of the heads whose test-time gate is open: hard_concrete_deterministic(log_alpha) > threshold.

    True marks a head to keep; the closed (prunable) heads are its complement. The result is a concrete
    numpy array, since it fixes the shapes that `prune_heads` returns.

    Args:
      log_alpha: [N] floating, concrete (not traced).
      gamma: the stretch's lower end, < 0.
      zeta: the stretch's upper end, > 1.
      threshold: a head is kept when its gate exceeds this; 0 keeps every head that is not exactly closed.

    Returns:
      keep: [N] numpy bool.

    Raises:
      ValueError: if log_alpha is not rank 1, or gamma, zeta are out of range.
      TypeError: if log_alpha is not floating.
    """
    return np.asarray(hard_concrete_deterministic(log_alpha, gamma=gamma, zeta=zeta) > threshold)


def prune_heads(params: Mapping[str, Any], keep: Any) -> tuple[dict[str, Any], int]:
    """Slices the kept heads out of gated (or plain) multi-head attention parameters (arXiv:1905.09418 §4).

    The result drops 'log_alpha' and keeps only the heads with keep[h] = True in 'query', 'key', 'value'
    (kernels [D, N, H] -> [D, N', H], biases [N, H] -> [N', H]) and in the 'out' kernel ([N, H, D_out] ->
    [N', H, D_out]; its bias [D_out] is unchanged). A closed head's gate is exactly 0, so the pruned module
    computes the same output as the gated one evaluated deterministically. Build it as

        small = MultiHeadAttention(num_heads=kept, head_dim=H, out_features=D_out)
        small.apply({"params": new_params}, x)

    where H and D_out are the gated module's head dim and output features (pass head_dim explicitly, since
    D // kept is generally not H). Only num_kv_heads == num_heads parameters are supported.

    Args:
      params: the module's parameter dict, either {"query": ..., "key": ..., ...} or {"params": {...}}
        (the result then has the same nesting).
      keep: [N] bool, concrete (e.g. from `kept_heads`); True = keep the head.

    Returns:
      (new_params, kept): new_params with N' = kept heads, and kept = the number of True entries (int).

    Raises:
      ValueError: if params lack a projection, keep's shape is not [N] for the params' N, the key/value head
        count differs from N, or keep keeps no head.
      TypeError: if keep is not boolean.
    """
    if "params" in params and "query" not in params:
        inner, kept = prune_heads(params["params"], keep)
        return {**params, "params": inner}, kept
    missing = [name for name in ("query", "key", "value", "out") if name not in params]
    if missing:
        raise ValueError(f"params lack the projections {missing}; got keys {sorted(params)}")
    keep = np.asarray(keep)
    _checks.boolean("keep", keep)
    query_kernel = params["query"]["kernel"]  # [D, N, H]
    heads = jnp.shape(query_kernel)[1]
    if keep.shape != (heads,):
        raise ValueError(f"keep must have shape [N]=({heads},), got {keep.shape=} with {jnp.shape(query_kernel)=}")
    for name in ("key", "value"):
        if jnp.shape(params[name]["kernel"])[1] != heads:
            raise ValueError(
                f"prune_heads needs num_kv_heads == num_heads; got {name} kernel shape "
                f"{jnp.shape(params[name]['kernel'])} and query kernel shape {jnp.shape(query_kernel)}"
            )
    kept = int(keep.sum())
    if kept == 0:
        raise ValueError(f"keep closes every head (keep.shape={keep.shape}); an attention needs at least one")
    index = np.flatnonzero(keep)

    new = {name: value for name, value in params.items() if name not in ("log_alpha", "query", "key", "value", "out")}
    for name in ("query", "key", "value"):
        proj = dict(params[name])
        proj["kernel"] = jnp.take(proj["kernel"], index, axis=1)  # [D, N', H]
        if "bias" in proj:
            proj["bias"] = jnp.take(proj["bias"], index, axis=0)  # [N', H]
        new[name] = proj
    out = dict(params["out"])
    out["kernel"] = jnp.take(out["kernel"], index, axis=0)  # [N', H, D_out]
    new["out"] = out
    return new, kept


class GatedMultiHeadAttention(MultiHeadAttention):
    """Multi-head attention with a Hard Concrete gate per head (arXiv:1905.09418 §4, arXiv:1712.01312 §4).

    MultiHead(Q, K, V) = Concat(g_1 head_1, ..., g_N head_N) W^O. A `MultiHeadAttention` (same projections,
    "query" [Dq, N, H], "key"/"value" [Dkv, N, H], "out" [N, H, D_out], so its parameters load here and back)
    whose gates come from the extra parameter "log_alpha" [N], the gates' locations, through its `head_gates`
    argument. When training (deterministic=False) each call draws fresh gates with the "gates" rng; otherwise it
    uses the test-time gate. Every call also returns the expected-L0 penalty of the gates.

    Only num_kv_heads == num_heads is supported: under grouped-query attention a closed query head does not
    free its shared key/value head, so pruning would not be a per-head slice. The key/value cache and relative
    positions of `MultiHeadAttention` are not available here (decode and positions must keep their defaults).

    Attributes: those of `MultiHeadAttention`, plus
      log_alpha_init: initialiser of "log_alpha" [N]; constant 3 starts every test-time gate fully open.
      beta, gamma, zeta: the Hard Concrete temperature and stretch.

    Raises:
      ValueError: at construction, for N not a positive int, num_kv_heads other than None or N, decode or
        positions set, or bad beta, gamma, zeta (and whatever `MultiHeadAttention` rejects).
    """

    log_alpha_init: Callable[..., Any] = nn.initializers.constant(3.0)
    beta: float = BETA
    gamma: float = GAMMA
    zeta: float = ZETA

    def __post_init__(self):
        _checks.int_at_least("num_heads", self.num_heads, 1)
        if self.num_kv_heads is not None and self.num_kv_heads != self.num_heads:
            raise ValueError(
                f"GatedMultiHeadAttention supports only num_kv_heads == num_heads; got "
                f"num_kv_heads K={self.num_kv_heads!r}, num_heads N={self.num_heads}"
            )
        if self.decode or self.positions is not None:
            raise ValueError(f"GatedMultiHeadAttention supports neither decode nor positions; got "
                             f"decode={self.decode!r}, positions={self.positions!r}")
        _check_stretch(self.beta, self.gamma, self.zeta)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        inputs_kv: jax.Array | None = None,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        deterministic: bool | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Gated multi-head attention from `inputs_q` to `inputs_k`/`inputs_v` (or itself), arXiv:1905.09418 §4.

        Args:
          inputs_q: [B, T, Dq] floating.
          inputs_k: [B, S, Dk] floating, or None for self-attention (S = T).
          inputs_v: [B, S, Dv] floating, or None for inputs_k.
          inputs_kv: [B, S, Dkv] floating, keys' and values' input (flax's older keyword); not with inputs_k.
          mask: None or [B or 1, N or 1, T, S] bool, True = attend.
          is_causal: a bool; key s is masked for query t when s > t.
          deterministic: a bool: if True use the test-time gates (and no dropout); else sample them with the
            "gates" rng. None takes the attribute (True when that is None too).

        Returns:
          (output, l0_penalty): output [B, T, D_out] in the compute dtype; l0_penalty [] float32, the
          expected number of open gates (`expected_l0` of "log_alpha").

        Raises:
          ValueError: for inputs that are not rank 3, batch sizes that differ, Dq not a multiple of N without
            head_dim, or a mask shape that does not fit.
          TypeError: for inputs that are not floating arrays, a non-boolean mask, or flags that are not bools.
        """
        deterministic = self._deterministic(deterministic)
        log_alpha = self.param("log_alpha", axes.partitioned(self.log_alpha_init, (axes.HEADS,)), (self.num_heads,),
                               self.param_dtype)  # [N]
        kw = dict(gamma=self.gamma, zeta=self.zeta)
        if deterministic:
            gates = hard_concrete_deterministic(log_alpha, **kw)  # [N]
        else:
            gates = hard_concrete_sample(log_alpha, self.make_rng("gates"), beta=self.beta, **kw)  # [N]
        output = super().__call__(
            inputs_q, inputs_k, inputs_v, inputs_kv=inputs_kv, mask=mask, is_causal=is_causal,
            deterministic=None if self.deterministic is not None else deterministic,  # merged above already
            head_gates=gates)  # [B, T, D_out]
        return output, expected_l0(log_alpha, beta=self.beta, **kw)
