"""Global and local (local-m, local-p) attention of Luong et al. 2015 (arXiv:1508.04025, §3.1-3.2) as a Linen layer.

The math is `attention_jax.core.context.attend` with the scores of eq. 8; the module owns their parameters.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import context as context_lib
from attention_jax.core import scores
from attention_jax.core import axes
from attention_jax.core import masks
from attention_jax.layers._common import vector_init

Array = jax.Array

__all__ = ["LUONG_MODES", "LUONG_SCORES", "LuongAttention", "check_luong_options"]

# Both lists come from the core: the score registry and attend's modes.
LUONG_SCORES = scores.LUONG_SCORES  # eq. 8: dot, general, concat, location
LUONG_MODES = context_lib.MODES  # global, local_m, local_p


def check_luong_options(score: Any, mode: Any, window: Any, max_source_len: Any) -> None:
    """Raises ValueError for a score outside `LUONG_SCORES`, an unknown mode, or a window or S_max out of range."""
    _checks.choice("Luong score", score, LUONG_SCORES)
    _checks.choice("Luong attention mode", mode, LUONG_MODES)
    _checks.int_at_least("window (D, Luong §3.2)", window, 0)
    _checks.int_at_least("max_source_len", max_source_len, 0)
    if mode == "local_p" and window < 1:
        raise ValueError(f"mode='local_p' needs window >= 1 (its Gaussian has sigma = window / 2), got {window!r}")
    if "max_keys" in scores.SCORES[score].needs and max_source_len < 1:
        raise ValueError(
            f"score={score!r} needs max_source_len >= 1 (the size of W_a's output), got {max_source_len!r}"
        )


# Logical axes of each score parameter (`attention_jax.core.axes`): Dq / Dq + Dk are the model width; the
# attention hidden size A is "mlp"; Dk of "general" and the source length of "location" are never sharded.
_AXES = {
    ("general", "w_a"): (axes.EMBED, None),
    ("concat", "w_a"): (axes.EMBED, axes.MLP),
    ("concat", "v_a"): (axes.MLP,),
    ("location", "w_a"): (axes.EMBED, None),
    ("additive", "w_q"): (axes.EMBED, axes.MLP),
    ("additive", "w_k"): (axes.EMBED, axes.MLP),
    ("additive", "v"): (axes.MLP,),
}


def _param_axes(score: str, name: str) -> tuple[str | None, ...]:
    """The logical axes of parameter `name` of `score` (local-p's w_p [Dq, A] and v_p [A] included)."""
    if name == "w_p":
        return axes.EMBED, axes.MLP
    if name == "v_p":
        return (axes.MLP,)
    return _AXES[score, name]


class LuongAttention(nn.Module):
    """Global and local attention of Luong et al. 2015 (arXiv:1508.04025, §3.1-3.2, eqs. 7-10).

    Scores (eq. 8, ``LUONG_SCORES``, the eq.-8 entries of the core registry `attention_jax.core.scores.SCORES`):
    ``dot`` h_t^T h_s, ``general`` h_t^T W_a h_s, ``concat`` v_a^T tanh(W_a [h_t; h_s]), ``location``
    (W_a h_t)[:S]. The module creates each score's parameters under the registry's names and shapes
    (`scores.param_shapes`): matrices with lecun-normal, vectors with normal(1 / sqrt(A)). Modes: ``global``
    (softmax over all valid source positions), ``local_m`` (window [t - D, t + D], p_t = t), ``local_p``
    (p_t = S_b sigmoid(v_p^T tanh(W_p h_t)), eq. 9, placed on the span of valid source positions, with the
    Gaussian factor of eq. 10). The math is
    `attention_jax.core.context.attend`.

    Attributes:
        score: one of ``LUONG_SCORES``.
        mode: one of ``LUONG_MODES``.
        window: D, the half width of the local window (Luong used 10); ignored by ``global``.
        features: A, the hidden size of ``concat`` and of local-p's W_p; 0 means the key size Dk.
        max_source_len: S_max, the output size of W_a for ``location`` (keys longer than that are an
            error); unused otherwise.
        param_dtype: dtype of the parameters.

    Raises (at construction):
        ValueError: unknown score or mode, window or features not an int >= 0, location without
            max_source_len.
    """

    score: str = "general"
    mode: str = "global"
    window: int = 10
    features: int = 0
    max_source_len: int = 0
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_luong_options(self.score, self.mode, self.window, self.max_source_len)
        _checks.int_at_least("LuongAttention.features", self.features, 0)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        query: Array,
        key: Array,
        value: Array | None = None,
        mask: Array | None = None,
        query_positions: Array | None = None,
        projected_keys: Array | None = None,
        *,
        keys_only: bool = False,
    ) -> tuple[Array, Array] | Array:
        """Attends from decoder hidden states h_t to source states h_s.

        Masked source positions (even NaN) and queries with no valid position reach neither the output nor any
        gradient (see `attend`). S = 0 gives a zero context and empty weights; T = 0 empty outputs.

        Args:
            query: [B, T, Dq] floating, the current top-layer decoder states h_t.
            key: [B, S, Dk] floating, the source hidden states h_s.
            value: [B, S, Dv] floating, or None (then value = key).
            mask: [B, S] or [B, T, S] bool, True = valid source position, or None. Local-p centres its window
                on each query's span of valid positions (left or right padding alike).
            query_positions: [B, T] int target positions t for local-m (default arange(T)); needed when
                decoding one step at a time. Ignored by the other modes.
            projected_keys: [B, S, A] floating, the output of `project_keys` for these keys, or None. Only for
                the global ``concat`` score, whose key half of W_a [h_t; h_s] does not depend on t: a decoder
                computes it once per sentence instead of once per step (the same logits).
            keys_only: internal to `project_keys` (returns the projected keys and attends nothing).

        Returns:
            context: [B, T, Dv] in value's dtype.
            weights: [B, T, S] float32; exactly 0 on masked or out-of-window positions.
            In mode local_p, when "intermediates" is mutable, the window centres p_t ([B, T] float32, eq. 9) are
            sown as "position".

        Raises:
            ValueError: mismatched shapes or a zero feature size; ``dot`` with Dq != Dk; ``location`` with
                S > max_source_len; ``projected_keys`` for another score or mode than global concat, or of the
                wrong shape.
            TypeError: inputs that are not floating arrays, or a non-boolean mask.
        """
        if (projected_keys is not None or keys_only) and (self.score, self.mode) != ("concat", "global"):
            raise ValueError(f"projected keys exist for score='concat' in mode='global' only, got "
                             f"score={self.score!r} mode={self.mode!r}")
        value = context_lib.check_attend_inputs(query, key, value, mask)
        dq, dk, num_keys = query.shape[-1], key.shape[-1], key.shape[1]
        a = self.features or dk
        spec = scores.SCORES[self.score]
        if spec.same_features and dq != dk:
            raise ValueError(f"score={self.score!r} needs equal query and key sizes: {query.shape=} {key.shape=}")
        if "max_keys" in spec.needs and num_keys > self.max_source_len:
            raise ValueError(
                f"score={self.score!r} supports at most max_source_len={self.max_source_len} source "
                f"positions, got {key.shape=}"
            )
        shapes = scores.param_shapes(self.score, dq, dk, hidden_dim=a, max_keys=self.max_source_len or None)
        if self.mode == "local_p":
            shapes.update(w_p=(dq, a), v_p=(a,))
        params = {
            name: self.param(
                name, axes.partitioned(nn.initializers.lecun_normal() if len(shape) == 2 else vector_init(shape[0]),
                                       _param_axes(self.score, name)), shape, self.param_dtype)
            for name, shape in shapes.items()
        }
        if self.mode == "local_p" and self.is_mutable_collection("intermediates"):
            # Where the windows sit, for studying local-p's learning dynamics: apply with
            # mutable=["intermediates"] to read "position" [B, T] (eq. 9's p_t; the same centres `attend` uses).
            valid = context_lib.valid_keys(mask, None, query.shape[0], query.shape[1], num_keys)
            self.sow("intermediates", "position",
                     context_lib.window_centres(query, valid, num_keys, mode=self.mode, params=params))
        if keys_only:
            # W_a's rows [Dq:] act on h_s (`scores.concat_score`); dead key rows are zeroed first, so NaN stored
            # in padding reaches neither the projection nor the gradient of W_a.
            valid = masks.broadcast_key_mask(mask, query.shape[0], 1, num_keys)
            (key,) = context_lib.zero_unattended_keys(valid, key)
            return axes.constrain(scores.concat_key_half(key, params["w_a"], dq), (axes.BATCH, axes.LENGTH, axes.MLP))
        if projected_keys is not None:
            _checks.floating("projected_keys", projected_keys)
            _checks.shape("projected_keys", projected_keys, tuple(key.shape[:2]) + (a,))
            valid = masks.broadcast_key_mask(mask, query.shape[0], query.shape[1], num_keys)
            # Zero the dead rows before the score: tanh'(NaN) * 0 would reach d query and d W_a otherwise.
            query, projected_keys, value = context_lib.zero_unattended(valid, query, projected_keys, value)
            logits = scores.additive_score_projected(scores.concat_query_half(query, params["w_a"]), projected_keys,
                                                     params["v_a"])
            return context_lib.attend_from_logits(logits, value, mask)
        return context_lib.attend(
            query,
            key,
            value,
            mask,
            score=self.score,
            params=params,
            mode=self.mode,
            window=None if self.mode == "global" else self.window,
            query_positions=query_positions if self.mode == "local_m" else None,
        )

    def project_keys(self, query_features: int, key: Array, mask: Array | None = None) -> Array:
        """The key half of the global ``concat`` score, W_a[Dq:]^T h_s, to reuse at every decoder step.

        Luong et al. 2015 (arXiv:1508.04025), eq. (8) 'concat': v_a^T tanh(W_a [h_t; h_s]) splits into
        W_a[:Dq] h_t + W_a[Dq:] h_s. Pass the result back as ``projected_keys``; the logits are the same as
        without it (the tests check this), at one [B, S, Dk] x [Dk, A] matmul per sentence instead of per step.

        Args:
            query_features: Dq, the size of the queries of the later calls (W_a is [Dq + Dk, A]).
            key: [B, S, Dk] floating, the source states h_s.
            mask: None or [B, S] bool, the mask of the later calls; masked positions are zeroed first.

        Returns:
            [B, S, A] float32.

        Raises:
            ValueError: for another score or mode than global concat, a mask that is not [B, S], or bad shapes.
            TypeError: for a non-floating key or a non-boolean mask.
        """
        query_features = _checks.positive_int("query_features", query_features)
        if mask is not None:
            _checks.shape("mask", mask, tuple(jnp.shape(key)[:2]))
        query = jnp.zeros((jnp.shape(key)[0], 1, query_features), jnp.result_type(key))
        return self(query, key, None, mask, keys_only=True)
