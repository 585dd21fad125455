"""The Nadaraya-Watson experiment (experiments/nadaraya_watson.py): one seed in-process, and the CLI end to end.

The data is the textbook's synthetic curve (made in the experiment itself), so no corpus is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from experiments import nadaraya_watson as nw_exp
from tests.experiments.training.translation_test import REPO


def test_run_seed_rows_and_orderings():
    result = nw_exp.run_seed(0, steps=400, learning_rate=0.5)
    rows = result["rows"]
    assert set(rows) == set(nw_exp.ROWS)
    for row in rows.values():
        assert np.isfinite(row["test_mse"])
        np.testing.assert_allclose(np.sum(row["weights"], axis=-1), 1.0, atol=1e-5)
    # The chosen bandwidth is the argmin of the recorded leave-one-out sweep, and it beats sigma = 1.
    assert rows["gaussian_loo_cv"]["bandwidth"] == min(result["loo_sweep"], key=result["loo_sweep"].get)
    assert rows["gaussian_loo_cv"]["test_mse"] < rows["gaussian_sigma1"]["test_mse"]
    # Training on its own keys shrinks the bandwidth below the leave-one-out one (d2l §11.2.4).
    assert rows["parametric_self"]["bandwidth"] < rows["parametric_loo"]["bandwidth"]


def test_cli_writes_results_keeps_seeds_and_rejects_bad_flags(tmp_path):
    workdir = str(tmp_path / "nw")
    command = [sys.executable, "-m", "experiments.nadaraya_watson", "--preset=smoke", f"--workdir={workdir}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in open(os.path.join(workdir, "results.jsonl"), encoding="utf-8")]
    assert [r["row"] for r in records] == list(nw_exp.ROWS)
    assert "p_vs_baseline" in records[1] and "p_vs_baseline" not in records[0]
    for name in ("results.md", "predictions.png", "bandwidth_sweep.png", "heatmap_parametric_loo.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "kept from" in again.stderr
    bad = subprocess.run(command + ["--seeds=0"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error:") and "--seeds" in bad.stderr and "Traceback" not in bad.stderr
