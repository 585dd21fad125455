"""Sentence alignment by length (Gale & Church 1993): pairs verses that two Bible translations divide differently."""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import numpy as np
from scipy import special as scipy_special

# Gale & Church (1993), "A Program for Aligning Sentences in Bilingual Corpora", Computational
# Linguistics 19(1): -log prior of each bead (source sentences, target sentences). Verses are nearly
# always 1-1 here; the rest absorbs the places where the two Bibles divide verses differently.
_NEG_LOG_PRIOR = {(1, 1): -math.log(0.95), (1, 0): -math.log(0.003), (0, 1): -math.log(0.003),
                  (2, 1): -math.log(0.015), (1, 2): -math.log(0.015), (2, 2): -math.log(0.003)}
_NEG_LOG_PRIOR_MANY = -math.log(0.001)  # k-1 and 1-k beads, 3 <= k <= max_merge
# Extra cost of a 1-1 bead joining sentences with different keys (verse references), when keys are
# given: the verse numbers agree almost everywhere, and length alone can be fooled by runs of
# verses of similar length (it shifted Job 20 by one verse without this).
_KEY_MISMATCH_COST = 1.5
# k-1 and 1-k beads (k >= 3) are only tried while |delta| of the merge stays below this.
_MAX_MERGE_DELTA = 4.0
# Variance of the length difference per character. Gale & Church's 6.8 is for sentences of
# European parliament text; on the 1-1 KJV / Reina-Valera verses it is 1.7.
CHAR_VARIANCE = 2.0


def _neg_log_length_prob(ls: np.ndarray, lt: np.ndarray, ratio: float,
                         char_variance: float) -> tuple[np.ndarray, np.ndarray]:
    """Gale & Church's -log P(|delta|) and the signed delta, for ls source and lt target characters."""
    ls, lt = np.asarray(ls, np.float64), np.asarray(lt, np.float64)
    mean = (ls + lt / ratio) / 2
    delta = (lt - ratio * ls) / np.sqrt(char_variance * np.maximum(mean, 1e-9))
    delta = np.where(mean > 0, delta, 0.0)
    return -(math.log(2.0) + scipy_special.log_ndtr(-np.abs(delta))), delta


def align_by_length(src_lengths: Sequence[int], tgt_lengths: Sequence[int], *,
                    src_keys: Sequence[Any] | None = None, tgt_keys: Sequence[Any] | None = None, band: int = 10,
                    char_variance: float = CHAR_VARIANCE, max_merge: int = 10) -> list[tuple[int, int, int, int]]:
    """Aligns two sequences of sentences by their character lengths (Gale & Church 1993).

    A dynamic programme over beads of 1-1, 1-0, 0-1, 2-2, k-1 and 1-k sentences (k <= ``max_merge``)
    minimises the sum of -log P(bead) - log P(|delta|), where delta = (l_t - c l_s) /
    sqrt(s^2 (l_s + l_t / c) / 2), c is the overall length ratio, s^2 = ``char_variance`` and
    P(|delta|) the two-sided normal tail. With keys (verse references), a 1-1 bead of sentences
    whose keys differ costs a further 1.5, so length evidence must be clear to shift the
    alignment away from the numbering. Only cells within ``band`` sentences of the diagonal
    j = i m / n are visited (the band doubles until a path exists), so the cost is linear in n.

    Args:
      src_lengths: [n] character lengths of the source sentences, in order.
      tgt_lengths: [m] character lengths of the target sentences, in order.
      src_keys: optional [n] labels of the source sentences (e.g. "Gen.1.1").
      tgt_keys: optional [m] labels of the target sentences; given together with ``src_keys``.
      band: half-width of the visited band around the diagonal, in sentences (>= 1).
      char_variance: s^2, variance of the length difference per character (> 0).
      max_merge: the largest k of a k-1 or 1-k bead (>= 2).

    Returns:
      Beads (i0, i1, j0, j1) in order, covering both sequences: source sentences i0:i1 align with
      target sentences j0:j1 (one of the two ranges is empty for a 1-0 or 0-1 bead).

    Raises:
      ValueError: for a negative length, keys of the wrong length, band < 1, char_variance <= 0 or
        max_merge < 2.
    """
    n, m = len(src_lengths), len(tgt_lengths)
    if (src_keys is None) != (tgt_keys is None) or (
            src_keys is not None and (len(src_keys) != n or len(tgt_keys) != m)):
        raise ValueError(f"src_keys and tgt_keys must both be given, with {n} and {m} entries")
    if band < 1 or char_variance <= 0 or max_merge < 2:
        raise ValueError(f"need band >= 1, char_variance > 0, max_merge >= 2; "
                         f"got {band=} {char_variance=} {max_merge=}")
    if any(x < 0 for x in src_lengths) or any(x < 0 for x in tgt_lengths):
        raise ValueError("sentence lengths must be non-negative")
    if n == 0 or m == 0:
        return [(i, i + 1, 0, 0) for i in range(n)] + [(n, n, j, j + 1) for j in range(m)]
    ratio = max(sum(tgt_lengths), 1) / max(sum(src_lengths), 1)
    src_cum = np.concatenate([[0], np.cumsum(src_lengths)]).astype(np.int64)  # [n + 1]
    tgt_cum = np.concatenate([[0], np.cumsum(tgt_lengths)]).astype(np.int64)  # [m + 1]
    inf = float("inf")
    while True:
        width = 2 * band + 1
        rows = np.arange(n + 1)
        lows = np.clip((rows * m) // n - band, 0, max(0, m + 1 - width))  # [n + 1] first j of each row
        cols = lows[:, None] + np.arange(width)[None, :]  # [n + 1, width] the j of each cell
        valid = cols <= m

        def span(cum: np.ndarray, end: np.ndarray, size: int) -> np.ndarray:
            """Characters of the ``size`` sentences ending before ``end`` (-1 where there are fewer)."""
            start = end - size
            ok = start >= 0
            return np.where(ok, cum[np.clip(end, 0, len(cum) - 1)] - cum[np.clip(start, 0, None)], -1)

        ends_i = np.broadcast_to(rows[:, None], cols.shape)
        step_cost = {}  # bead -> [n + 1, width] cost of the bead ending at the cell (inf if impossible)
        for (di, dj), prior in _NEG_LOG_PRIOR.items():
            ls, lt = span(src_cum, ends_i, di), span(tgt_cum, np.minimum(cols, m), dj)
            cost, _ = _neg_log_length_prob(np.maximum(ls, 0), np.maximum(lt, 0), ratio, char_variance)
            cost = np.where((ls >= 0) & (lt >= 0) & valid, cost + prior, inf)
            if (di, dj) == (1, 1) and src_keys is not None:
                src_k = np.array([None] + list(src_keys), dtype=object)[ends_i]
                tgt_k = np.array([None] + list(tgt_keys), dtype=object)[np.minimum(cols, m)]
                cost = np.where(src_k != tgt_k, cost + _KEY_MISMATCH_COST, cost)
            step_cost[(di, dj)] = cost.tolist()
        # Cells where a 3-1 or 1-3 bead is not hopeless; only there are longer merges tried.
        _, d31 = _neg_log_length_prob(np.maximum(span(src_cum, ends_i, 3), 0),
                                      np.maximum(span(tgt_cum, np.minimum(cols, m), 1), 0), ratio, char_variance)
        _, d13 = _neg_log_length_prob(np.maximum(span(src_cum, ends_i, 1), 0),
                                      np.maximum(span(tgt_cum, np.minimum(cols, m), 3), 0), ratio, char_variance)
        try_many = ((d31 > -_MAX_MERGE_DELTA) | (d13 < _MAX_MERGE_DELTA)).tolist()
        lows_l = lows.tolist()
        src_cum_l, tgt_cum_l = src_cum.tolist(), tgt_cum.tolist()

        def many_cost(ls: int, lt: int) -> tuple[float, float]:
            delta = (lt - ratio * ls) / math.sqrt(char_variance * max((ls + lt / ratio) / 2, 1e-9))
            tail = math.erfc(abs(delta) / math.sqrt(2.0))
            return (-math.log(tail) if tail > 0 else 0.5 * delta * delta) + _NEG_LOG_PRIOR_MANY, delta

        costs: list[list[float]] = []
        backs: list[list[tuple[int, int]]] = []
        for i in range(n + 1):
            lo = lows_l[i]
            row_cost = [inf] * width
            row_back = [(0, 0)] * width
            costs.append(row_cost)
            backs.append(row_back)
            for c in range(width):
                j = lo + c
                if j > m:
                    break
                if i == 0 and j == 0:
                    row_cost[0] = 0.0
                    continue
                best, arg = inf, (0, 0)
                for bead, table in step_cost.items():
                    step = table[i][c]
                    if step == inf:
                        continue
                    pi, pj = i - bead[0], j - bead[1]
                    pc = pj - lows_l[pi]
                    if 0 <= pc < width:
                        total = (row_cost if pi == i else costs[pi])[pc] + step
                        if total < best:
                            best, arg = total, bead
                if try_many[i][c]:
                    for k in range(3, max_merge + 1):  # k-1 beads, while the k sources can still fit
                        if k > i or j < 1:
                            break
                        step, delta = many_cost(src_cum_l[i] - src_cum_l[i - k], tgt_cum_l[j] - tgt_cum_l[j - 1])
                        if delta < -_MAX_MERGE_DELTA:
                            break
                        pc = j - 1 - lows_l[i - k]
                        if 0 <= pc < width and costs[i - k][pc] + step < best:
                            best, arg = costs[i - k][pc] + step, (k, 1)
                    for k in range(3, max_merge + 1):  # 1-k beads
                        if k > j or i < 1:
                            break
                        step, delta = many_cost(src_cum_l[i] - src_cum_l[i - 1], tgt_cum_l[j] - tgt_cum_l[j - k])
                        if delta > _MAX_MERGE_DELTA:
                            break
                        pc = j - k - lows_l[i - 1]
                        if 0 <= pc < width and costs[i - 1][pc] + step < best:
                            best, arg = costs[i - 1][pc] + step, (1, k)
                row_cost[c] = best
                row_back[c] = arg
        end = m - lows_l[n]
        if 0 <= end < width and costs[n][end] < inf:
            break
        band *= 2
    beads = []
    i, j = n, m
    while i or j:
        di, dj = backs[i][j - lows_l[i]]
        beads.append((i - di, i, j - dj, j))
        i, j = i - di, j - dj
    return beads[::-1]
