"""Experiment scripts reproducing the attention papers' ablations on real corpora (absl + ml_collections)."""
