"""Boolean attention masks. True means "attend": the jax.nn convention."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import _checks


def padding_mask(lengths: jax.Array, max_len: int) -> jax.Array:
    """Marks the valid (unpadded) positions of right-padded sequences.

    Args:
      lengths: [B] integer, the number of valid positions of each sequence.
      max_len: the padded length S.

    Returns:
      mask: [B, S] bool, True where position < lengths[b].

    Raises:
      ValueError: if `lengths` is not rank 1 or `max_len` is negative.
      TypeError: if `lengths` is not integer.
    """
    _checks.rank("lengths", lengths, 1)
    _checks.integer("lengths", lengths)
    max_len = _checks.positive_int("max_len", max_len, allow_zero=True)
    return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]


def broadcast_key_mask(mask: jax.Array | None, batch: int, num_queries: int, num_keys: int) -> jax.Array | None:
    """Checks a key mask and brings it to [B, T, S].

    Args:
      mask: None, [B, S] bool (a padding mask shared by every query) or [B, T, S] bool.
      batch: B.
      num_queries: T.
      num_keys: S.

    Returns:
      None, or mask: [B, T, S] bool.

    Raises:
      ValueError: if the mask shape is neither [B, S] nor [B, T, S].
      TypeError: if the mask is not boolean.
    """
    if mask is None:
        return None
    _checks.boolean("mask", mask)
    if jnp.shape(mask) == (batch, num_keys):
        return jnp.broadcast_to(mask[:, None, :], (batch, num_queries, num_keys))
    if jnp.shape(mask) == (batch, num_queries, num_keys):
        return mask
    raise ValueError(
        f"mask must have shape [B, S]={(batch, num_keys)} or [B, T, S]={(batch, num_queries, num_keys)}, "
        f"got {jnp.shape(mask)}"
    )
