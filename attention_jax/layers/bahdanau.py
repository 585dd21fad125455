"""Additive attention of RNNsearch (Bahdanau et al. 2015, arXiv:1409.0473, eqs. 5-6 and A.1.2) as a Linen layer.

The math is `attention_jax.core.scores.additive_score` and `attention_jax.core.context.attend`; the module owns
W_a, U_a and v_a and caches U_a h_j once per sentence (`project_keys`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import context as context_lib
from attention_jax.core import masks
from attention_jax.core import scores
from attention_jax.core import axes
from attention_jax.layers._common import Kernel, vector_init

Array = jax.Array

__all__ = ["BahdanauAttention"]


class BahdanauAttention(nn.Module):
    """Additive attention of RNNsearch (Bahdanau et al., arXiv:1409.0473, eqs. 5-6 and A.1.2).

    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j), alpha_ij = softmax_j(e_ij), c_i = sum_j alpha_ij h_j.
    Parameters: ``w_q/kernel`` = W_a [Dq, A], ``w_k/kernel`` = U_a [Dk, A], ``v`` = v_a [A] (the core's
    ``SCORE_PARAMS["additive"]`` names). No biases, as in the paper.

    U_a h_j does not depend on the decoder step, so a decoder should compute it once per sentence with
    `project_keys` (given the mask, so padding never enters it) and pass it back as ``projected_keys`` at every
    step (appendix A.1.2 suggests exactly this). Without ``projected_keys`` the call goes through the core `attention_jax.core.context.attend`.

    Attributes:
        features: A, the attention hidden size (n' in the paper).
        param_dtype: dtype of the parameters.
    """

    features: int
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.int_at_least("BahdanauAttention.features", self.features, 1)
        super().__post_init__()

    def setup(self):
        self.w_q = Kernel(self.features, self.param_dtype)
        self.w_k = Kernel(self.features, self.param_dtype)
        self.v = self.param("v", axes.partitioned(vector_init(self.features), (axes.MLP,)), (self.features,),
                            self.param_dtype)

    def project_keys(self, key: Array, mask: Array | None = None) -> Array:
        """U_a h_j for every source position, to be reused at every decoder step.

        Args:
            key: [B, S, Dk] floating encoder annotations, Dk >= 1.
            mask: None, or the [B, S] or [B, T, S] bool mask of the later calls. Source positions that no query
                may attend are zeroed before the projection, so NaN or inf stored there reaches neither the
                projection nor the gradient of U_a.

        Returns:
            [B, S, A] in float32.

        Raises:
            ValueError: if key is not rank 3, Dk = 0, or the mask shape does not fit.
            TypeError: if key is not a floating array or the mask is not boolean.
        """
        _checks.rank("key", key, 3)
        _checks.floating("key", key)
        if key.shape[-1] == 0:
            raise ValueError(f"key needs at least one feature, got {key.shape=}")
        if mask is not None:
            _checks.rank("mask", mask, (2, 3))
            num_queries = 1 if jnp.ndim(mask) == 2 else jnp.shape(mask)[1]
            valid = masks.broadcast_key_mask(mask, key.shape[0], num_queries, key.shape[1])  # [B, T, S]
            (key,) = context_lib.zero_unattended_keys(valid, key)
        w_k = self.w_k(key.shape[-1])
        projected = jnp.einsum("BSD,DA->BSA", key.astype(jnp.float32), w_k.astype(jnp.float32))  # [B, S, A]
        return axes.constrain(projected, (axes.BATCH, axes.LENGTH, axes.MLP))

    def __call__(
        self,
        query: Array,
        key: Array,
        value: Array | None = None,
        mask: Array | None = None,
        projected_keys: Array | None = None,
    ) -> tuple[Array, Array]:
        """Attends from decoder states to encoder annotations.

        Masked source positions (even NaN, in key, value or projected_keys) and queries with no valid position
        reach neither the output nor any gradient; such a query gets zero weights and a zero context. S = 0
        gives a zero context and empty weights; T = 0 empty outputs.

        Args:
            query: [B, T, Dq] floating, the previous decoder states s_{i-1}.
            key: [B, S, Dk] floating, the annotations h_j.
            value: [B, S, Dv] floating, or None (then value = key).
            mask: [B, S] or [B, T, S] bool, True = valid source position, or None.
            projected_keys: [B, S, A] floating, the output of `project_keys(key)`, or None.

        Returns:
            context: [B, T, Dv] in value's dtype (eq. 5).
            weights: [B, T, S] float32 (eq. 6); exactly 0 where mask is False.

        Raises:
            ValueError: on mismatched shapes (batch, ranks, mask, projected_keys) or a zero feature size.
            TypeError: for inputs that are not floating arrays, or a non-boolean mask.
        """
        value = context_lib.check_attend_inputs(query, key, value, mask)
        w_q = self.w_q(query.shape[-1])
        if projected_keys is None:
            params = {"w_q": w_q, "w_k": self.w_k(key.shape[-1]), "v": self.v}
            return context_lib.attend(query, key, value, mask, score="additive", params=params)
        _checks.floating("projected_keys", projected_keys)
        _checks.shape("projected_keys", projected_keys, key.shape[:2] + (self.features,))
        batch, num_queries, num_keys = query.shape[0], query.shape[1], key.shape[1]
        valid = masks.broadcast_key_mask(mask, batch, num_queries, num_keys)
        # Zero the dead rows before the score: tanh'(NaN) * 0 would reach d query and d W_a otherwise.
        query, projected_keys, value = context_lib.zero_unattended(valid, query, projected_keys, value)
        projected_query = jnp.einsum("BTD,DA->BTA", query.astype(jnp.float32), w_q.astype(jnp.float32))
        logits = scores.additive_score_projected(projected_query, projected_keys, self.v)  # [B,T,S]
        return context_lib.attend_from_logits(logits, value, mask)
