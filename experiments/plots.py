"""Figures of the translation experiments (matplotlib, Agg backend, PNG files).

* `loss_curves`: training loss per row (and dev perplexity at the evaluation points, each one a marker).
* `attention_heatmap`: one alignment matrix with source / target subword labels, like Bahdanau et
  al. 2014 (arXiv:1409.0473), Fig. 3 (source along x, generated target along y, white = weight 1).
* `bleu_by_length`: BLEU against source-sentence length, one line per model, like Bahdanau Fig. 2.
* `bleu_vs_heads`: BLEU against the number of heads a pruned Transformer keeps, like Voita et al. 2019
  (arXiv:1905.09418), Fig. 7.
* `attention_text_html`: documents as coloured text, word (and sentence) weights as background shades, like
  Yang et al. 2016 (N16-1174), Fig. 5: an HTML file (escaped with `html.escape`).
* `weight_sparsity`: the share of exactly-zero attention weights per row (softmax / sparsemax / entmax), a bar
  chart.
* `attention_overlays`: attention maps over the images they attend (CBAM, DANet, Show-Attend-Tell glimpses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import html
import os
from typing import Any

import matplotlib
from matplotlib import patches
from matplotlib import ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_MARKERS = ("o", "s", "^", "v", "D", "x", "*", "P", "h", "<", ">")

# Fewer dev evaluations per row than this get a note in the dev panel (`loss_curves`).
FEW_EVALUATIONS = 5


def loss_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *, title: str = "") -> str:
    """Plots training loss (left) and dev perplexity (right) against step, one line per row.

    Every dev evaluation is drawn as a large marker, so a row evaluated once or twice still shows its
    points; when the sparsest row has fewer than `FEW_EVALUATIONS`, the panel says so and how to get more.

    Args:
      metrics: row name -> metrics.jsonl records; records with "loss" are training points,
        records with "dev_ppl" are evaluation points.
      path: PNG file to write.
      title: figure title.

    Returns:
      ``path``.
    """
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(12, 4.5))
    dev_counts = []
    for k, (row, records) in enumerate(metrics.items()):
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        dev = [(r["step"], r["dev_ppl"]) for r in records if "dev_ppl" in r]
        marker = _MARKERS[k % len(_MARKERS)]
        if train:
            ax_loss.plot(*zip(*train), marker=marker, markersize=3, label=row)
        if dev:
            dev_counts.append(len(dev))
            ax_ppl.plot(*zip(*dev), marker=marker, markersize=7 if len(dev) <= 20 else 4, linewidth=1.2, label=row)
    any_dev = bool(dev_counts)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train cross-entropy (nats / target token)")
    ax_loss.grid(alpha=0.3)
    if ax_loss.get_lines():
        ax_loss.legend(fontsize=7)
    ax_ppl.set_xlabel("step")
    ax_ppl.set_ylabel("dev perplexity")
    ax_ppl.grid(alpha=0.3)
    if any_dev:
        ax_ppl.set_yscale("log")
        for set_formatter in (ax_ppl.yaxis.set_major_formatter, ax_ppl.yaxis.set_minor_formatter):
            set_formatter(ticker.LogFormatter(labelOnlyBase=False))  # 40, 60 rather than 4x10^1, 6x10^1
        if ax_loss.get_lines():  # the evaluations placed within the training steps, not stretched over the panel
            ax_ppl.set_xlim(ax_loss.get_xlim())
        ax_ppl.legend(fontsize=7)
        if min(dev_counts) < FEW_EVALUATIONS:
            few = min(dev_counts)
            ax_ppl.set_title(f"the sparsest row has {few} dev evaluation{'' if few == 1 else 's'}; lower "
                             "--config.train.eval_every for a curve", fontsize=8)
    else:
        ax_ppl.text(0.5, 0.5, "no dev evaluation during training\n(train.eval_every = 0)",
                    ha="center", va="center", transform=ax_ppl.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def attention_heatmap(weights: np.ndarray, source: Sequence[str], target: Sequence[str], path: str, *,
                      title: str = "", xlabel: str = "source", ylabel: str = "generated target") -> str:
    """Draws one alignment matrix (Bahdanau et al. 2014, arXiv:1409.0473, Fig. 3).

    Args:
      weights: [T, S] float32 attention weights; row t is the alignment used to emit target[t].
      source: S source subword labels (x axis, on top).
      target: T target subword labels (y axis).
      path: PNG file to write.
      title: figure title.
      xlabel, ylabel: the axis labels (a translation's source and target by default).

    Returns:
      ``path``.

    Raises:
      ValueError: if the label counts do not match ``weights.shape``.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2 or weights.shape != (len(target), len(source)):
        raise ValueError(f"weights must be [T, S] = [{len(target)}, {len(source)}], got {weights.shape=}")
    t_len, s_len = weights.shape
    cell = 0.28
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 + cell * s_len), max(3.5, 1.6 + cell * t_len)))
    ax.imshow(weights, cmap="gray", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    ax.set_xticks(range(s_len))
    ax.set_xticklabels(source, rotation=90, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(t_len))
    ax.set_yticklabels(target, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9, pad=12)
    fig.tight_layout()
    _save(fig, path)
    return path


def bleu_by_length(buckets: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *, title: str = "") -> str:
    """BLEU against source-sentence length, one line per model (Bahdanau et al. 2014, Fig. 2).

    Args:
      buckets: row name -> `experiments.evaluation.bleu_by_length` output (dicts with "bucket",
        "n" and "bleu"; empty buckets have bleu None and are skipped).
      path: PNG file to write.
      title: figure title.

    Returns:
      ``path``.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: list[str] = []
    for k, (row, points) in enumerate(buckets.items()):
        if not labels:
            labels = [p["bucket"] for p in points]
        xs = [i for i, p in enumerate(points) if p.get("bleu") is not None]
        ys = [points[i]["bleu"] for i in xs]
        style = "--" if "encdec" in row.lower() or "no_attention" in row else "-"
        ax.plot(xs, ys, style, marker=_MARKERS[k % len(_MARKERS)], label=row)
    if labels:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
    ax.set_xlabel("source sentence length (words)")
    ax.set_ylabel("BLEU")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def bleu_vs_heads(points: Sequence[Mapping[str, Any]], path: str, *, total_heads: int, title: str = "") -> str:
    """Test BLEU and test perplexity against the number of attention heads kept, like Voita et al. 2019
    (arXiv:1905.09418), Fig. 7; one marker per row, labelled.

    Args:
      points: dicts with "heads_kept" (int), "test_bleu" and "test_ppl" (float or None) and "label" (the row,
        e.g. its lambda).
      path: PNG file to write.
      total_heads: the heads of the unpruned model (the x axis ends there).
      title: figure title.

    Returns:
      ``path``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "test_bleu", "test BLEU"), (axes[1], "test_ppl", "test perplexity")):
        pts = [p for p in points if p.get(key) is not None]
        for k, p in enumerate(pts):
            ax.plot(p["heads_kept"], p[key], marker=_MARKERS[k % len(_MARKERS)], linestyle="none", label=p["label"])
        ax.set_xlim(0, total_heads + 1)
        ax.set_xlabel(f"encoder self-attention heads kept (of {total_heads})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shade(weight: float, rgb: tuple[int, int, int]) -> str:
    """A CSS background for weight in [0, 1]: transparent at 0, the full colour at 1 (negative: its magnitude)."""
    alpha = min(max(abs(float(weight)), 0.0), 1.0)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def attention_text_html(documents: Sequence[Mapping[str, Any]], path: str, *, title: str = "") -> str:
    """Writes documents as coloured text: each word shaded by its weight, each sentence by its own (HAN Fig. 5).

    Args:
      documents: each {"sentences": [[word, ...], ...], "word_weights": [[w, ...], ...] (same nesting),
        optionally "sentence_weights": [w per sentence], "caption": str}. Weights are shown relative to the
        document's largest (so the strongest word is fully coloured); negative weights (CoDA) in another colour.
      path: the .html file to write.
      title: the page heading.

    Returns:
      path.
    """
    parts = ["<!doctype html><meta charset='utf-8'>",
             "<style>body{font-family:sans-serif;max-width:60em}span.w{padding:0 1px}"
             "div.s{padding:2px 4px;margin:1px 0;border-left:6px solid}</style>"]
    if title:
        parts.append(f"<h1>{html.escape(title)}</h1>")
    for doc in documents:
        word_weights = [np.asarray(w, float) for w in doc["word_weights"]]
        peak = max([float(np.max(np.abs(w))) for w in word_weights if w.size] + [1e-12])
        sentence_weights = doc.get("sentence_weights")
        s_peak = max([abs(float(x)) for x in sentence_weights] + [1e-12]) if sentence_weights is not None else 1.0
        if doc.get("caption"):
            parts.append(f"<h3>{html.escape(str(doc['caption']))}</h3>")
        for i, (words, weights) in enumerate(zip(doc["sentences"], word_weights)):
            border = (_shade(float(sentence_weights[i]) / s_peak, (220, 40, 40)) if sentence_weights is not None
                      else "transparent")
            spans = "".join(
                f"<span class='w' style='background:"
                f"{_shade(w / peak, (40, 90, 220) if w >= 0 else (230, 120, 0))}' title='{w:.3f}'>"
                f"{html.escape(str(word))}</span> " for word, w in zip(words, weights.tolist()))
            parts.append(f"<div class='s' style='border-left-color:{border}'>{spans}</div>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return path


def weight_sparsity(sparsity: Mapping[str, float], path: str, *, title: str = "") -> str:
    """A bar chart of the share of exactly-zero attention weights (among the valid pairs) per row.

    Args:
      sparsity: row -> share in [0, 1].
      path: the .png file.
      title: the figure title.

    Returns:
      path.
    """
    rows = list(sparsity)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.2))
    ax.bar(range(len(rows)), [100.0 * sparsity[r] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(rows, rotation=30, ha="right")
    ax.set_ylabel("exactly-zero weights (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "attention weight sparsity")
    fig.tight_layout()
    _save(fig, path)
    return path


def classification_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *, title: str = "",
                          loss_label: str = "train cross-entropy (nats / document)") -> str:
    """Training loss (left) and dev accuracy (right) against step, one line per row.

    Args:
      metrics: row name -> metrics.jsonl records; records with "loss" are training points, records with
        "dev_accuracy" (in %) evaluation points.
      path: PNG file to write.
      title: figure title.
      loss_label: the loss panel's y-axis label (what the loss is, per what).

    Returns:
      ``path``.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 5))
    for k, (row, records) in enumerate(metrics.items()):
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        dev = [(r["step"], r["dev_accuracy"]) for r in records if "dev_accuracy" in r]
        marker = _MARKERS[k % len(_MARKERS)]
        style = "-" if k < 10 else "--"
        if train:
            ax_loss.plot(*zip(*train), style, marker=marker, markersize=2, linewidth=1, label=row)
        if dev:
            ax_acc.plot(*zip(*dev), style, marker=marker, markersize=5, linewidth=1, label=row)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(loss_label)
    ax_loss.grid(alpha=0.3)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("dev accuracy (%)")
    ax_acc.grid(alpha=0.3)
    if ax_acc.get_lines():
        ax_acc.legend(fontsize=6, ncol=2)
    else:
        ax_acc.text(0.5, 0.5, "no dev evaluation during training\n(train.eval_every = 0)", ha="center", va="center",
                    transform=ax_acc.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def metric_by_length(buckets: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *, metric: str,
                     xlabel: str, ylabel: str, title: str = "") -> str:
    """A metric against input-length bins, one line per row (e.g. test accuracy by document length).

    Args:
      buckets: row name -> bins, each {"bucket": label, "n": count, metric: value or None (empty bin)}.
      path: PNG file to write.
      metric: the key of the value in each bin.
      xlabel, ylabel: axis labels.
      title: figure title.

    Returns:
      ``path``.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    labels: list[str] = []
    for k, (row, points) in enumerate(buckets.items()):
        if not labels:
            labels = [f"{p['bucket']}\n(n={p['n']})" for p in points]
        xs = [i for i, p in enumerate(points) if p.get(metric) is not None]
        ax.plot(xs, [points[i][metric] for i in xs], "-" if k < 10 else "--", marker=_MARKERS[k % len(_MARKERS)],
                label=row)
    if labels:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def metric_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *,
                  panels: Sequence[tuple[str, str]], title: str = "") -> str:
    """One panel per metric against step, one line per row (e.g. BERT's training loss and held-out accuracies).

    Args:
      metrics: row name -> metrics.jsonl records; a record adds a point to every panel whose key it holds.
      path: PNG file to write.
      panels: (record key, y-axis label) per panel, left to right.
      title: figure title.

    Returns:
      ``path``.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for k, (row, records) in enumerate(metrics.items()):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
            if points:
                ax.plot(*zip(*points), "-", marker=_MARKERS[k % len(_MARKERS)], markersize=3, linewidth=1, label=row)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def attention_overlays(images: np.ndarray, maps: np.ndarray, path: str, *, column_titles: Sequence[str] = (),
                       row_titles: Sequence[str] = (), title: str = "", boxes: np.ndarray | None = None) -> str:
    """Attention maps over the images they were computed from: one row per image, one column per map.

    Each row shows the image alone, then the image in grey under each of its maps (drawn with a colour map at
    half opacity, stretched over the whole image, so an h x w map over an H x W image shows its cells at their
    receptive places). Used for CBAM's spatial maps, DANet's position attention and Show-Attend-Tell's glimpses.

    Args:
      images: [N, H, W] uint8 or float greyscale images.
      maps: [N, M, h, w] float attention maps (each map scaled to its own range).
      path: PNG file to write.
      column_titles: M titles of the map columns (e.g. the decoding step and emitted word), or N * M titles,
        one per panel, in row-major order.
      row_titles: N titles of the rows (e.g. the true caption).
      title: figure title.
      boxes: None, or [N, M, 4] int (top, left, height, width) rectangles to outline on the panels (e.g. a
        sampled hard-attention location).

    Returns:
      ``path``.

    Raises:
      ValueError: if images is not [N, H, W], maps not [N, M, h, w] with the same N, or a title count is wrong.
    """
    images, maps = np.asarray(images), np.asarray(maps, np.float32)
    if images.ndim != 3 or maps.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"images must be [N, H, W] and maps [N, M, h, w] with the same N, got {images.shape} and "
                         f"{maps.shape}")
    n, m = maps.shape[:2]
    if column_titles and len(column_titles) not in (m, n * m):
        raise ValueError(f"column_titles has {len(column_titles)} entries for {m} columns of {n} rows")
    if row_titles and len(row_titles) != n:
        raise ValueError(f"row_titles has {len(row_titles)} entries for {n} rows")
    height, width = images.shape[1:]
    panel = 2.0 * max(1.0, width / height) ** 0.5
    fig, axes_grid = plt.subplots(n, m + 1, figsize=(panel * (m + 1), 2.0 * n + 0.6), squeeze=False)
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    for i in range(n):
        axes_grid[i, 0].imshow(images[i], cmap="gray", interpolation="nearest")
        if row_titles:
            axes_grid[i, 0].set_title(str(row_titles[i]), fontsize=7)
        for j in range(m):
            ax = axes_grid[i, j + 1]
            ax.imshow(images[i], cmap="gray", interpolation="nearest", alpha=0.6)
            ax.imshow(maps[i, j], cmap="jet", alpha=0.5, extent=extent, interpolation="bilinear")
            if boxes is not None:
                top, left, h, w = (float(v) for v in boxes[i, j])
                ax.add_patch(patches.Rectangle((left - 0.5, top - 0.5), w, h, fill=False,
                                                edgecolor="white", linewidth=1.2))
            if column_titles:
                text = column_titles[j] if len(column_titles) == m else column_titles[i * m + j]
                ax.set_title(str(text), fontsize=7)
    for ax in axes_grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path
