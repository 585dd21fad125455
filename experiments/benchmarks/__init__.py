"""Benchmarks, one absl main each; results/ holds the tables they measured.

  transformer_step.py  one training step of the base Transformer, JAX against PyTorch (tokens/s).
  kernels.py           the attention backends: TFLOP/s against cuDNN and jax's Pallas kernels on a GPU;
                       time and peak memory of blockwise against xla on the CPU.
"""
