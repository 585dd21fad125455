"""Fixed-size padded batches of encoded pairs, grouped into a few bucket lengths (teacher-forcing inputs included).

Lengths: S = source tokens, T = target tokens + 1 (BOS or EOS), B = batch size.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
import math
from typing import TYPE_CHECKING

import numpy as np

from experiments.data.tokenizer import BOS_ID
from experiments.data.tokenizer import EOS_ID
from experiments.data.tokenizer import PAD_ID

if TYPE_CHECKING:
    from experiments.data.dataset import Example


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Validates bucket boundaries: a non-empty, strictly increasing tuple of positive ints.

    Raises:
      ValueError: naming ``buckets`` if it is not.
    """
    try:
        out = tuple(int(b) for b in buckets)
    except (TypeError, ValueError):
        raise ValueError(f"buckets must be a sequence of ints, got {buckets=}") from None
    if not out or out[0] < 1 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"buckets must be positive and strictly increasing, got {buckets=}")
    return out


def padded_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket boundary >= ``length``; beyond the last boundary L, L plus the next multiple of the
    last step (L minus the boundary before it; L itself when there is one boundary).

    The step keeps the rare longer dev or test example close to its length: with Luong's buckets
    (..., 80, 96), a 97-token target pads to 112, not 192, so it still fits a model's 128 learned positions.
    """
    for b in buckets:
        if length <= b:
            return int(b)
    last = int(buckets[-1])
    step = last - int(buckets[-2]) if len(buckets) > 1 else last
    return last + step * math.ceil((length - last) / step)


def batches(examples: Sequence[Example], batch_size: int, buckets: Sequence[int], *, shuffle: bool,
            seed: int = 0, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Groups examples by length into fixed-size padded batches (teacher forcing inputs included).

    Each example's bucket is the padded length (`padded_length`) of max(S, T), with S its source
    tokens and T = target tokens + 1. Within a bucket the examples are taken in order (or shuffled),
    cut into full batches; the remainders of all buckets are pooled, in bucket order, into more
    batches, and only the very last batch is topped up with filler rows (index -1, lengths 0,
    all-zero mask). With ``shuffle`` the batch order is shuffled too; the permutations come from
    numpy's generator seeded with (seed, epoch), so an epoch is the same on every run. Every
    example appears exactly once per pass.

    Args:
      examples: the examples (`prepare`'s train, dev or test list).
      batch_size: B, rows per batch (>= 1).
      buckets: increasing token-length boundaries; S and T of a batch are each padded to the
        smallest boundary that fits its longest row (beyond the last one, `padded_length`'s steps).
      shuffle: shuffle within buckets and the batch order (training) or keep a fixed order (eval).
      seed: non-negative int.
      epoch: non-negative int.

    Yields:
      Dicts of numpy arrays: ``src`` [B, S] int32 (pad 0), ``src_lengths`` [B] int32, ``tgt_in``
      [B, T] int32 (BOS, y_1 .. y_n, pad), ``tgt_out`` [B, T] int32 (y_1 .. y_n, EOS, pad),
      ``tgt_mask`` [B, T] float32 (1 on the n + 1 real positions), ``index`` [B] int32 (position in
      ``examples``, -1 for filler rows).

    Raises:
      ValueError: for batch_size < 1, malformed buckets, or a negative seed or epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size=}")
    buckets = check_buckets(buckets)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed=} {epoch=}")
    if not examples:
        return
    rng = np.random.default_rng([int(seed), int(epoch)])
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for k, ex in enumerate(examples):
        groups[padded_length(max(len(ex.src_ids), len(ex.tgt_ids) + 1), buckets)].append(k)
    full: list[list[int]] = []
    rest: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        if shuffle:
            members = [members[k] for k in rng.permutation(len(members))]
        cut = len(members) - len(members) % batch_size
        full.extend(members[k:k + batch_size] for k in range(0, cut, batch_size))
        rest.extend(members[cut:])
    full.extend(rest[k:k + batch_size] for k in range(0, len(rest), batch_size))
    order = rng.permutation(len(full)) if shuffle else range(len(full))
    for b in order:
        yield _make_batch(examples, full[b], batch_size, buckets)


def _make_batch(examples: Sequence[Example], rows: Sequence[int], batch_size: int,
                buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    chosen = [examples[k] for k in rows]
    s = padded_length(max(len(e.src_ids) for e in chosen), buckets)
    t = padded_length(max(len(e.tgt_ids) + 1 for e in chosen), buckets)
    src = np.full((batch_size, s), PAD_ID, np.int32)  # [B, S]
    tgt_in = np.full((batch_size, t), PAD_ID, np.int32)  # [B, T]
    tgt_out = np.full((batch_size, t), PAD_ID, np.int32)  # [B, T]
    tgt_mask = np.zeros((batch_size, t), np.float32)  # [B, T]
    src_lengths = np.zeros((batch_size,), np.int32)  # [B]
    index = np.full((batch_size,), -1, np.int32)  # [B]
    for row, (k, ex) in enumerate(zip(rows, chosen)):
        n = len(ex.tgt_ids)
        src[row, :len(ex.src_ids)] = ex.src_ids
        src_lengths[row] = len(ex.src_ids)
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1:n + 1] = ex.tgt_ids
        tgt_out[row, :n] = ex.tgt_ids
        tgt_out[row, n] = EOS_ID
        tgt_mask[row, :n + 1] = 1.0
        index[row] = k
    return {"src": src, "src_lengths": src_lengths, "tgt_in": tgt_in, "tgt_out": tgt_out, "tgt_mask": tgt_mask,
            "index": index}
