"""Tests of experiments/data/, one file per module; fixtures.py writes the corpora formats."""
