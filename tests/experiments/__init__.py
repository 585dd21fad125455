"""Tests of experiments/: one folder per package folder (data/, benchmarks/), one file per module."""
