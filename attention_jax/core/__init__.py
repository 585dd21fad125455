"""The math of attention, one idea per module: score -> alignment -> context.

  scores.py      one registry of score functions (name -> function and parameter shapes): dot, scaled dot,
                 general, concat, additive, location, cosine.
  alignment.py   logits -> weights: the masked softmax with its lse, local-m / local-p windows.
  context.py     weights -> context, and `attend`, the whole pipeline for the classic (Bahdanau, Luong)
                 attentions.
  masks.py       padding masks and their broadcasting.
  positional.py  sinusoidal, learned, RoPE, ALiBi, Shaw and complex-order position encodings.

Nothing here imports another layer of the package (import-linter contract in setup.cfg).
"""
