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
from attention_jax.layers._common import check_qkv, vector_init

Array = jax.Array

__all__ = ["LUONG_MODES", "LUONG_SCORES", "LuongAttention", "check_luong_options"]

LUONG_SCORES = ("dot", "general", "concat", "location")
LUONG_MODES = ("global", "local_m", "local_p")


def check_luong_options(score: Any, mode: Any, window: Any, max_source_len: Any) -> None:
    _checks.choice("Luong score", score, LUONG_SCORES)
    _checks.choice("Luong attention mode", mode, LUONG_MODES)
    _checks.int_at_least("window (D, Luong §3.2)", window, 0)
    _checks.int_at_least("max_source_len", max_source_len, 0)
    if mode == "local_p" and window < 1:
        raise ValueError(f"mode='local_p' needs window >= 1 (its Gaussian has sigma = window / 2), got {window!r}")
    if score == "location" and max_source_len < 1:
        raise ValueError(
            "score='location' needs max_source_len >= 1 (the size of W_a's output), "
            f"got {max_source_len!r}"
        )


class LuongAttention(nn.Module):
    """Global and local attention of Luong et al. 2015 (arXiv:1508.04025, §3.1-3.2, eqs. 7-10).

    Scores (eq. 8): ``dot`` h_t^T h_s, ``general`` h_t^T W_a h_s, ``concat`` v_a^T tanh(W_a [h_t; h_s]),
    ``location`` (W_a h_t)[:S]. Modes: ``global`` (softmax over all valid source positions),
    ``local_m`` (window [t - D, t + D], p_t = t), ``local_p`` (p_t = S_b sigmoid(v_p^T tanh(W_p h_t)),
    eq. 9, with the Gaussian factor of eq. 10). The math is `attention_jax.core.context.attend`.

    Attributes:
        score: one of ``LUONG_SCORES``.
        mode: one of ``LUONG_MODES``.
        window: D, the half width of the local window (Luong used 10); ignored by ``global``.
        features: A, the hidden size of ``concat`` and of local-p's W_p; 0 means the key size Dk.
        max_source_len: S_max, the output size of W_a for ``location`` (keys longer than that are an
            error); unused otherwise.
        param_dtype: dtype of the parameters.

    Raises (at construction):
        ValueError: unknown score or mode, window not an int >= 0, location without max_source_len.
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
    ) -> tuple[Array, Array]:
        """Attends from decoder hidden states h_t to source states h_s.

        Args:
            query: [B, T, Dq] current top-layer decoder states h_t.
            key: [B, S, Dk] source hidden states h_s.
            value: [B, S, Dv] or None (then value = key).
            mask: [B, S] or [B, T, S] bool, True = valid source position, or None. A [B, S] mask also gives
                local-p its true source lengths S_b.
            query_positions: [B, T] int target positions t for local-m (default arange(T)); needed when
                decoding one step at a time.

        Returns:
            context: [B, T, Dv] in value's dtype.
            weights: [B, T, S] float32; exactly 0 on masked or out-of-window positions.

        Raises:
            ValueError: mismatched shapes; ``dot`` with Dq != Dk; ``location`` with S > max_source_len.
        """
        check_qkv(query, key, value, mask)
        dq, dk, num_keys = query.shape[-1], key.shape[-1], key.shape[1]
        a = self.features or dk
        lecun = nn.initializers.lecun_normal()
        params: dict[str, Array] = {}
        if self.score == "dot" and dq != dk:
            raise ValueError(f"score='dot' needs equal query and key sizes: {query.shape=} {key.shape=}")
        if self.score == "general":
            params["w_a"] = self.param("w_a", lecun, (dq, dk), self.param_dtype)
        elif self.score == "concat":
            params["w_a"] = self.param("w_a", lecun, (dq + dk, a), self.param_dtype)
            params["v_a"] = self.param("v_a", vector_init(a), (a,), self.param_dtype)
        elif self.score == "location":
            if num_keys > self.max_source_len:
                raise ValueError(
                    f"score='location' supports at most max_source_len={self.max_source_len} source "
                    f"positions, got {key.shape=}"
                )
            params["w_a"] = self.param("w_a", lecun, (dq, self.max_source_len), self.param_dtype)
        if self.mode == "local_p":
            params["w_p"] = self.param("w_p", lecun, (dq, a), self.param_dtype)
            params["v_p"] = self.param("v_p", vector_init(a), (a,), self.param_dtype)
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
