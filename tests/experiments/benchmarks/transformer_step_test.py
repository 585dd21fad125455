"""Tests of experiments/benchmarks/transformer_step.py: the tiny preset runs end to end and reports tokens/s.

`run` is called in-process with the default PRNG (threefry), so it changes no process-wide JAX state; only the
flag check runs the script in a subprocess. PyTorch is optional: without it, JAX is timed alone.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from experiments.benchmarks import transformer_step

REPO = str(pathlib.Path(__file__).resolve().parents[3])
HAS_TORCH = importlib.util.find_spec("torch") is not None


TINY = transformer_step.Config(**{**transformer_step.PRESETS["tiny"], "steps": 2, "warmup": 0}, threads=2)


def test_tiny_run_prints_table_and_json(tmp_path, capsys):
    skip_torch = not HAS_TORCH  # with the PyTorch twin when torch is installed, JAX alone otherwise
    out = tmp_path / "step.json"
    record = transformer_step.run(TINY, skip_torch=skip_torch, output_json=str(out))
    stdout = capsys.readouterr().out
    assert "config: D=32" in stdout and "| JAX |" in stdout and "target tokens/s" in stdout
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    results = record["results"]
    assert [r["framework"] for r in results] == (["JAX"] if skip_torch else ["JAX", "PyTorch"])
    for result in results:
        assert result["tokens_per_s"] > 0 and result["params"] > 0
        assert len(result["step_s"]) == 2
    if skip_torch:
        assert record["ratio_jax_over_torch"] is None
    else:
        assert "ratio JAX/PyTorch" in stdout and record["ratio_jax_over_torch"] > 0
        # The same architecture on both sides: post-LN without final norms, tied embeddings, biases everywhere.
        assert results[0]["params"] == results[1]["params"]


def test_bad_flags_are_usage_errors(tmp_path):
    proc = subprocess.run(
            [sys.executable, "-m", "experiments.benchmarks.transformer_step", "--preset=tiny", "--d_model=30",
             "--num_heads=4", "--skip_torch"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--d_model must be a multiple of --num_heads" in proc.stderr


def test_presets_match_the_paper_base():
    base = transformer_step.PRESETS["base"]
    assert (base["d_model"], base["num_heads"], base["num_layers"], base["d_ff"]) == (512, 8, 6, 2048)
    assert base["dropout"] == 0.1 and base["label_smoothing"] == 0.1


def test_inverse_sqrt_lr_matches_the_library_schedule():
    from attention_jax.models.transformer import transformer_schedule

    schedule = transformer_schedule(512, 4000)
    for step in (0, 10, 3999, 4000, 10000):
        assert transformer_step.inverse_sqrt_lr(step, 512, 4000) == pytest.approx(float(schedule(step)), rel=1e-6)


def test_profile_lists_the_step_s_xla_ops(tmp_path):
    # A subprocess: XLA:CPU reports its thunks to the profiler only when the flag is set before it starts.
    out = subprocess.run([sys.executable, "-m", "experiments.benchmarks.transformer_step", "--preset=tiny",
                          "--steps=1", "--warmup=0", "--skip_torch", f"--profile_dir={tmp_path / 'trace'}",
                          "--profile_top=3", f"--output_json={tmp_path / 'step.json'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "JAX step profile" in out and "| XLA op (thunk) | ms / step |" in out
    profile = json.loads((tmp_path / "step.json").read_text())["profile"]
    kinds = [p for p in profile if p["op"].startswith("all ")]
    assert kinds and len(profile) == len(kinds) + 3
    assert all(p["ms_per_step"] > 0 and p["calls_per_step"] >= 1 for p in profile)
    assert list((tmp_path / "trace").rglob("*.trace.json.gz"))  # the trace stays for Perfetto
