"""Tests of experiments/plots.py: the loss curves show every dev evaluation, even one or two per row."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import plots


def _figure(monkeypatch, metrics):
    """Runs loss_curves and returns the figure it would have saved."""
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    plots.loss_curves(metrics, "unused.png")
    return saved[0]


class TestLossCurves:

    def test_sparse_dev_points_are_markers_with_a_note(self, monkeypatch):
        train = [{"step": s, "loss": 5.0 - s / 100} for s in range(10, 110, 10)]
        metrics = {"a": train + [{"step": 100, "dev_ppl": 40.0}],
                   "b": [{"step": 50, "dev_ppl": 60.0}, {"step": 100, "dev_ppl": 45.0}]}
        _, ax_ppl = _figure(monkeypatch, metrics).axes
        lines = {line.get_label(): line for line in ax_ppl.get_lines()}
        assert list(lines["a"].get_xdata()) == [100] and list(lines["b"].get_xdata()) == [50, 100]
        assert all(line.get_marker() not in (None, "", "None") and line.get_markersize() >= 6
                   for line in lines.values())
        assert "sparsest row has 1 dev evaluation;" in ax_ppl.get_title()

    def test_no_note_with_enough_evaluations(self, monkeypatch):
        metrics = {"a": [{"step": s, "dev_ppl": 100.0 / s} for s in range(1, 6)]}
        _, ax_ppl = _figure(monkeypatch, metrics).axes
        assert len(ax_ppl.get_lines()[0].get_xdata()) == 5 and ax_ppl.get_title() == ""


class TestAttentionText:

    def test_words_are_escaped_and_shaded_by_relative_weight(self, tmp_path):
        doc = {"sentences": [["a", "<b>"], ["c"]], "word_weights": [[0.2, 0.4], [-0.1]],
               "sentence_weights": [0.9, 0.1], "caption": "label & prediction"}
        path = plots.attention_text_html([doc], str(tmp_path / "doc.html"), title="HAN")
        text = open(path, encoding="utf-8").read()
        assert "&lt;b&gt;" in text and "<b>" not in text and "label &amp; prediction" in text
        assert "rgba(40,90,220,0.500)" in text and "rgba(40,90,220,1.000)" in text  # 0.2 and 0.4 of the peak 0.4
        assert "rgba(230,120,0,0.250)" in text  # a negative (CoDA) weight in the other colour
        assert "rgba(220,40,40,1.000)" in text and "rgba(220,40,40,0.111)" in text  # sentence shades

    def test_sparsity_bars(self, monkeypatch):
        saved = []
        monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
        plots.weight_sparsity({"softmax": 0.0, "sparsemax": 0.62}, "unused.png")
        heights = [bar.get_height() for bar in saved[0].axes[0].patches]
        assert heights == [0.0, 62.0]

    def test_attention_overlays(self, monkeypatch):
        saved = []
        monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
        images = np.zeros((2, 8, 12), np.uint8)
        maps = np.random.default_rng(0).random((2, 3, 2, 3)).astype(np.float32)
        boxes = np.tile(np.array([1, 2, 4, 4]), (2, 3, 1))
        plots.attention_overlays(images, maps, "unused.png", column_titles=["a", "b", "c"], row_titles=["x", "y"],
                                 boxes=boxes)
        axes = saved[0].axes
        assert len(axes) == 2 * 4 and axes[1].get_title() == "a" and axes[4].get_title() == "y"
        # The map is stretched over the whole image, whatever its own size.
        assert axes[1].images[1].get_extent() == [-0.5, 11.5, 7.5, -0.5]
        assert len(axes[1].patches) == 1 and len(axes[0].patches) == 0
        with pytest.raises(ValueError, match="same N"):
            plots.attention_overlays(images, maps[:1], "unused.png")
        with pytest.raises(ValueError, match="column_titles"):
            plots.attention_overlays(images, maps, "unused.png", column_titles=["a"])
