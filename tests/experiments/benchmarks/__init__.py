"""Tests of experiments/benchmarks/: each script end to end on a tiny preset."""
