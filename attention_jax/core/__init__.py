"""The math of attention, one idea per module: score -> alignment -> context.

  scores.py      one registry of score functions (name -> function and parameter shapes): dot, scaled dot,
                 general, concat, additive, location, cosine.
  alignment.py   logits -> weights: the masked softmax with its lse, `normalize` (softmax or a sparse
                 normaliser by name), local-m / local-p windows, hard sampling (`sample_hard`) and the
                 straight-through Gumbel-softmax (`gumbel_softmax`).
  sparse.py      sparse normalisers: sparsemax, 1.5-entmax (exact) and alpha-entmax (bisection), custom JVPs.
  context.py     weights -> context, and `attend`, the whole pipeline for the classic (Bahdanau, Luong)
                 attentions.
  masks.py       padding masks and their broadcasting.
  positional.py  sinusoidal, learned, RoPE, ALiBi, Shaw and complex-order position encodings.
  precision.py   `compute_dtype`: the math runs in float32 (float64 for float64 inputs).
  pooling.py     sum / mean / max, order-preserving k-max, chunk-max and stochastic pooling over time, and
                 max / average / stochastic pooling of [B, H, W, C] maps over non-overlapping windows.

Nothing here imports another layer of the package (import-linter contract in setup.cfg).
"""
