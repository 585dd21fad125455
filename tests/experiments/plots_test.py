"""Tests of experiments/plots.py: the loss curves show every dev evaluation, even one or two per row."""

from __future__ import annotations

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
