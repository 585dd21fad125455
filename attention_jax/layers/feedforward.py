"""Feed-forward attention: pool a sequence into one vector with weights computed from each position alone.

Raffel & Ellis 2015, "Feed-Forward Networks with Attention Can Solve Some Long-Term Memory Problems",
arXiv:1512.08756, §1.1-1.2: the context c = sum_t alpha_t h_t (eq. 1), alpha_t = exp(e_t) / sum_k exp(e_k)
(eq. 2), where e_t = a(h_t) depends on h_t only (no decoder state); their experiments use
a(h_t) = tanh(w^T h_t + b), a scalar per position.

The same pooling with a(h_t) = u^T tanh(W h_t + b) is the word and sentence attention of hierarchical
attention networks (Yang et al. 2016, NAACL N16-1174, eqs. 5-7 and 8-10, where u is the "context vector" u_w
or u_s) and the attention pooling of text CNNs and RNNs. `FeedForwardAttention(hidden_dim=None)` is Raffel &
Ellis' form; `hidden_dim=A` is Yang's.

`attention_pool` is the pure function (logits -> weights -> context) that both share, with the normaliser
of `attention_jax.core.alignment` (softmax, sparsemax, 1.5-entmax).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment, axes, pooling

__all__ = ["FeedForwardAttention", "attention_pool", "check_pool_inputs"]

_F32 = jnp.float32


def check_pool_inputs(inputs: Any, mask: Any) -> tuple[jax.Array, jax.Array]:
    """`pooling.masked_sequence` (inputs [B, T, D] floating, mask None or [B, T] bool), plus D >= 1.

    Returns:
      (inputs with masked positions zeroed, the mask [B, T], all True for None).

    Raises:
      ValueError: if inputs are not rank 3, D = 0, or the mask is not [B, T].
      TypeError: if inputs are not floating or the mask is not boolean.
    """
    _checks.rank("inputs", inputs, 3)
    _checks.floating("inputs", inputs)
    if inputs.shape[-1] == 0:
        raise ValueError(f"inputs need at least one feature, got {inputs.shape=}")
    return pooling.masked_sequence(inputs, mask)


def _pool(clean: jax.Array, logits: jax.Array, mask: jax.Array, normalizer: str) -> tuple[jax.Array, jax.Array]:
    """Eqs. 1-2 on checked inputs whose masked positions are already zero."""
    weights = alignment.normalize(logits, mask, normalizer)  # [B, T]
    context = jnp.einsum("BT,BTD->BD", weights, clean.astype(_F32))
    return context.astype(clean.dtype), weights


def attention_pool(
    inputs: jax.Array, logits: jax.Array, mask: jax.Array | None = None, *, normalizer: str = "softmax"
) -> tuple[jax.Array, jax.Array]:
    """Weights from per-position logits, then the weighted sum of the inputs (Raffel & Ellis eqs. 1-2).

    Masked positions (even NaN in `inputs` or `logits`) reach neither the context nor any gradient; a sequence
    with no valid position (T = 0 included) pools to a zero context with zero weights.

    Args:
      inputs: [B, T, D] floating, the states h_t.
      logits: [B, T] floating, e_t.
      mask: None or [B, T] bool, True = a real position.
      normalizer: a name in `alignment.NORMALIZERS`.

    Returns:
      context: [B, D] in the inputs' dtype.
      weights: [B, T] float32, summing to 1 over the valid positions.

    Raises:
      ValueError: for shapes that do not fit (named in the message) or an unknown normalizer.
      TypeError: for non-floating inputs or logits, or a non-boolean mask.
    """
    clean, mask = check_pool_inputs(inputs, mask)
    _checks.floating("logits", logits)
    if jnp.shape(logits) != clean.shape[:2]:
        raise ValueError(f"logits must be [B, T] = {clean.shape[:2]}, got {jnp.shape(logits)=} {clean.shape=}")
    _checks.choice("normalizer", normalizer, alignment.NORMALIZERS)
    return _pool(clean, logits, mask, normalizer)


class FeedForwardAttention(nn.Module):
    """Attention pooling with e_t = a(h_t): Raffel & Ellis 2015 (arXiv:1512.08756) or Yang et al. 2016's form.

    hidden_dim=None: e_t = tanh(w^T h_t + b) (Raffel & Ellis' experiments, §2); parameters "w" [D] and "b" [].
    hidden_dim=A: e_t = u^T tanh(W h_t + b) (Yang et al. 2016, N16-1174, eqs. 5-6); parameters "W" [D, A],
    "b" [A] and the context vector "u" [A].

    Attributes:
      hidden_dim: None, or A >= 1.
      normalizer: a name in `alignment.NORMALIZERS`.
      kernel_init: the initialiser of w / W and u.
      dtype: the compute dtype of the projection; None infers it from the inputs and params.
      param_dtype: the parameter dtype, float32 by default.
    """

    hidden_dim: int | None = None
    normalizer: str = "softmax"
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _check_config(self) -> None:
        if self.hidden_dim is not None:
            _checks.int_at_least("hidden_dim", self.hidden_dim, 1)
        _checks.choice("normalizer", self.normalizer, alignment.NORMALIZERS)

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Pools each sequence into one vector.

        Args:
          inputs: [B, T, D] floating, the states h_t.
          mask: None or [B, T] bool, True = a real position.

        Returns:
          context: [B, D] in the inputs' dtype; zeros for a sequence with no valid position.
          weights: [B, T] float32, exactly 0 at masked positions.

        Raises:
          ValueError: if inputs are not [B, T, D] with D >= 1, the mask is not [B, T], or the attributes are bad.
          TypeError: for non-floating inputs or a non-boolean mask.
        """
        self._check_config()
        clean, mask = check_pool_inputs(inputs, mask)
        features = clean.shape[-1]
        vector_init = lambda key, shape, dtype: self.kernel_init(key, shape + (1,), dtype)[..., 0]  # a [n, 1] kernel
        if self.hidden_dim is None:
            w = self.param("w", axes.partitioned(vector_init, (axes.EMBED,)), (features,), self.param_dtype)
            b = self.param("b", axes.partitioned(nn.initializers.zeros_init(), ()), (), self.param_dtype)
            logits = jnp.tanh(jnp.einsum("BTD,D->BT", clean.astype(_F32), w.astype(_F32)) + b)  # [B, T]
        else:
            hidden = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="W",
                              **axes.dense_inits(axes.EMBED, axes.MLP, kernel_init=self.kernel_init))(clean)
            hidden = axes.constrain(jnp.tanh(hidden.astype(_F32)), (axes.BATCH, axes.LENGTH, axes.MLP))  # [B,T,A]
            u = self.param("u", axes.partitioned(vector_init, (axes.MLP,)), (self.hidden_dim,), self.param_dtype)
            logits = jnp.einsum("BTA,A->BT", hidden, u.astype(_F32))  # [B, T]
        return _pool(clean, logits, mask, self.normalizer)
