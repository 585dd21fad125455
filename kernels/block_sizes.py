"""Tile sizes of the flash-attention kernels, and the head-dim padding rule.

A `BlockSizes` names one tile per pass: (block_q, block_k) for the forward, (block_q_dkv, block_k_dkv) for the
kernel that accumulates dK and dV over query tiles, and (block_q_dq, block_k_dq) for the kernel that
accumulates dQ over key tiles. `fit` shrinks every tile to the call's lengths, so a short sequence is not
padded to a long tile.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

__all__ = ["BlockSizes", "HEAD_DIMS", "pad_axis", "padded_head_dim", "round_up"]

# The head dims the kernels are written for; any other H <= 256 is zero-padded up to the next one.
HEAD_DIMS = (64, 128, 256)
# Triton's tensor-core dot needs every tile dim >= 16.
MIN_BLOCK = 16


def padded_head_dim(head_dim: int) -> int:
    """The head dim the kernels run at: the smallest of `HEAD_DIMS` that is >= head_dim.

    Zero columns change neither Q K^T nor the kept columns of P V, so padding is exact.

    Raises:
      ValueError: if head_dim is not in 1..256.
    """
    if not isinstance(head_dim, int) or not 1 <= head_dim <= HEAD_DIMS[-1]:
        raise ValueError(f"the flash kernels support head dims 1..{HEAD_DIMS[-1]}, got H={head_dim!r}")
    return next(h for h in HEAD_DIMS if h >= head_dim)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def pad_axis(x, axis: int, size: int):
    """x zero-padded at the end of `axis` up to `size` (x itself when already that long)."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles (rows of queries x rows of keys) of the forward, dK/dV and dQ kernels.

    Attributes:
      block_q, block_k: the forward's query tile and key tile.
      block_q_dkv, block_k_dkv: the dK/dV kernel's tiles; it owns one key tile and loops over query tiles.
      block_q_dq, block_k_dq: the dQ kernel's tiles; it owns one query tile and loops over key tiles.
      num_warps: Triton warps per program; None picks 4 for H <= 64, else 8.
      num_stages: Triton software-pipelining depth.

    Every block is a power of two >= 16 (Triton's tensor-core dot). The Mosaic TPU kernel additionally rounds
    key tiles to the 128-lane width (see `kernels/tpu.py`).
    """

    block_q: int = 128
    block_k: int = 64
    block_q_dkv: int = 64
    block_k_dkv: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 64
    num_warps: int | None = None
    num_stages: int = 2

    def __post_init__(self):
        for field in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq", "block_k_dq"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < MIN_BLOCK or value & (value - 1):
                raise ValueError(f"BlockSizes.{field} must be a power of two >= {MIN_BLOCK}, got {value!r}")
        if self.num_warps is not None and (not isinstance(self.num_warps, int) or self.num_warps < 1):
            raise ValueError(f"BlockSizes.num_warps must be a positive int or None, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"BlockSizes.num_stages must be a positive int, got {self.num_stages!r}")

    @classmethod
    def default(cls, head_dim: int) -> "BlockSizes":
        """Tiles that keep a [block_q, H] query, a [block_k, H] key/value and the f32 accumulators in SRAM.

        H = 256 halves the query tiles so the register/shared-memory footprint matches H = 128.
        """
        if padded_head_dim(head_dim) >= 256:
            return cls(block_q=64, block_k=64, block_q_dkv=32, block_k_dkv=64, block_q_dq=64, block_k_dq=32)
        return cls()

    def fit(self, num_queries: int, num_keys: int) -> "BlockSizes":
        """These tiles, each shrunk to the next power of two >= the length it tiles (and >= 16)."""
        cap_q = max(MIN_BLOCK, _next_power_of_2(num_queries))
        cap_k = max(MIN_BLOCK, _next_power_of_2(num_keys))
        return dataclasses.replace(
            self,
            block_q=min(self.block_q, cap_q), block_k=min(self.block_k, cap_k),
            block_q_dkv=min(self.block_q_dkv, cap_q), block_k_dkv=min(self.block_k_dkv, cap_k),
            block_q_dq=min(self.block_q_dq, cap_q), block_k_dq=min(self.block_k_dq, cap_k),
        )

    def warps(self, head_dim: int) -> int:
        if self.num_warps is not None:
            return self.num_warps
        return 4 if head_dim <= 64 else 8
