"""Tests of experiments/benchmarks/kernels.py: FLOP formulas, the CPU smoke preset end to end (subprocesses), the
memory guard, and `--mode=gpu` without a GPU (one clear message, no traceback)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from experiments.benchmarks import kernels as benchmark

REPO = str(pathlib.Path(__file__).resolve().parents[3])


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "experiments.benchmarks.kernels", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_flops_fwd_causal_and_bwd():
    fwd = benchmark.attention_flops(2, 1024, 1024, 16, 128, causal=False)
    assert fwd == 4 * 2 * 1024 * 1024 * 16 * 128
    assert benchmark.attention_flops(2, 1024, 1024, 16, 128, causal=True) == fwd / 2
    assert benchmark.attention_flops(2, 1024, 1024, 16, 128, causal=False, pass_="bwd") == 2.5 * fwd
    assert benchmark.attention_flops(2, 1024, 1024, 16, 128, causal=True, pass_="bwd") == 1.25 * fwd
    assert benchmark.attention_flops(2, 1024, 1024, 16, 128, causal=False, pass_="fwd+bwd") == 3.5 * fwd
    assert benchmark.tflops(2e12, 2.0) == 1.0
    assert benchmark.tflops(1.0, None) is None


def test_cpu_smoke_preset_writes_markdown_and_jsonl(tmp_path):
    out = tmp_path / "results" / "kernels_cpu.md"
    proc = _run("--mode=cpu", "--preset=smoke", f"--out={out}", timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    markdown = out.read_text()
    assert "| S | impl | fwd+bwd s | peak RSS GiB |" in markdown and "blockwise/xla time" in markdown
    assert "| S | impl | fwd+bwd s |" in proc.stdout and "| 512 | blockwise |" in proc.stdout  # also on stdout
    for seq_len in (256, 512):
        for impl in ("blockwise", "xla"):
            assert f"| {seq_len} | {impl} |" in markdown
    records = _jsonl(tmp_path / "results" / "kernels_cpu.jsonl")
    assert [(r["seq_len"], r["impl"]) for r in records] == [
        (256, "blockwise"), (256, "xla"), (512, "blockwise"), (512, "xla")]
    for record in records:
        assert record["status"] == "ok", record
        assert record["num_heads"] == 2 and record["head_dim"] == 64 and record["batch"] == 1
        assert record["seconds"] > 0 and record["peak_rss_bytes"] > 0 and record["temp_bytes"] > 0
        assert record["ratio_blockwise_over_xla"] > 0


def test_memory_guard_skips_configs_over_the_limit(tmp_path):
    out = tmp_path / "guard.md"
    proc = _run("--mode=cpu", "--preset=smoke", "--seq_lens=256", "--memory_limit_gib=0.001", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = _jsonl(tmp_path / "guard.jsonl")
    assert {r["impl"] for r in records} == {"blockwise", "xla"}
    for record in records:
        assert record["status"].startswith("skipped: needs ") and "GiB > 0.001 GiB available" in record["status"]
        assert "seconds" not in record and "peak_rss_bytes" not in record
    assert "skipped: needs" in out.read_text()


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the no-GPU message")
def test_gpu_mode_without_gpu_exits_with_one_message(tmp_path):
    proc = _run("--mode=gpu", f"--out={tmp_path / 'gpu.md'}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "--mode=gpu needs a GPU" in proc.stderr
    assert not (tmp_path / "gpu.md").exists()


def test_unknown_impl_is_a_usage_error(tmp_path):
    proc = _run("--mode=cpu", "--preset=smoke", "--impls=nope", f"--out={tmp_path / 'x.md'}")
    assert proc.returncode != 0 and "unknown --impls" in proc.stderr and "Traceback" not in proc.stderr
