"""Experiment scripts reproducing the attention papers' ablations on real corpora (absl + ml_collections)."""

from experiments import devices as _devices

# Before anything imports jax: a run with mesh flags gets that many simulated CPU devices (experiments/devices.py).
_devices.simulate_devices_from_argv()
