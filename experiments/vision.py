"""Pieces shared by the image experiments of issue 14: image scaling, a small conv encoder, padded batches.

* `to_float`: Fashion-MNIST's uint8 pixels to standardised float32 NHWC maps (one channel).
* `ConvEncoder`: conv 3x3 -> GroupNorm -> ReLU blocks, each but the last optionally followed by a 2x2 max pool,
  with logically named parameters (channels "embed", as every feature map of the library), so it shards like
  the layers it feeds.
* `index_batches`: one epoch of fixed-size index batches, the last one padded with -1 and zero weights, so a
  jitted step sees one shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.core import axes

# The mean and standard deviation of Fashion-MNIST's 60,000 training pixels, scaled to [0, 1].
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images [..., H, W] -> float32 [..., H, W, 1], standardised with the training-set statistics.

    Raises:
      TypeError: if the images are not uint8 (already scaled images would be scaled twice).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 pixels in [0, 255], got dtype {images.dtype}")
    return ((images.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD)[..., None]


class ConvBlock(nn.Module):
    """conv 3x3 (SAME) -> GroupNorm -> ReLU on [B, H, W, Cin] -> [B, H, W, features]."""

    features: int
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # A C -> C map names its input channels only: one mesh axis cannot shard two axes of one array.
        x = nn.Conv(self.features, (3, 3), padding="SAME", **axes.conv_inits(axes.EMBED, None), name="conv")(x)
        x = nn.GroupNorm(num_groups=min(self.groups, self.features), **axes.norm_inits(axes.EMBED), name="norm")(x)
        return nn.relu(x)


class ConvEncoder(nn.Module):
    """`ConvBlock`s of the given widths; a 2x2 max pool follows block i where ``pool[i]``.

    Attributes:
      features: channels of each block.
      pool: per block, whether a 2x2 max pool (stride 2) follows it; () pools after every block.
      groups: GroupNorm groups (at most the block's channels).

    Call: images [B, H, W, 1] float -> feature map [B, H', W', features[-1]] in the input dtype.
    """

    features: Sequence[int] = (32, 64)
    pool: Sequence[bool] = ()
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ConvEncoder takes NHWC images [B, H, W, C], got shape {x.shape}")
        pool = tuple(self.pool) or (True,) * len(self.features)
        if len(pool) != len(self.features):
            raise ValueError(f"pool has {len(pool)} entries for {len(self.features)} blocks")
        for i, (width, down) in enumerate(zip(self.features, pool)):
            x = ConvBlock(int(width), self.groups, name=f"block{i}")(x)
            if down:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return x


def index_batches(n: int, batch_size: int, *, shuffle: bool, seed: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over ``n`` examples in batches of exactly ``batch_size``.

    Yields:
      (index [batch_size] int64, -1 past the end; weights [batch_size] float32, 1 for real rows).
    """
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        index = np.concatenate([idx, np.full((batch_size - len(idx),), -1, np.int64)])
        yield index, (index >= 0).astype(np.float32)


def take(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]`` with rows of index -1 filled with zeros (the padding of `index_batches`)."""
    out = np.asarray(array)[np.maximum(index, 0)]
    real = (index >= 0).reshape((-1,) + (1,) * (out.ndim - 1))
    return np.where(real, out, np.zeros((), out.dtype))


def param_count(params) -> int:
    """The number of scalars in a parameter tree."""
    return sum(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(params))
