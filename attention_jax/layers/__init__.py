"""Attention layers, one mechanism per file: a pure function plus a thin Flax Linen module that owns the parameters.

  bahdanau.py    additive attention of RNNsearch (arXiv:1409.0473).
  luong.py       global, local-m and local-p attention (arXiv:1508.04025).
  multihead.py   multi-head (grouped-query) attention with a KV cache and RoPE / ALiBi / Shaw positions.
  relative.py    Transformer-XL relative attention over a memory (arXiv:1901.02860).
  multistep.py   ConvS2S multi-step attention (arXiv:1705.03122).
  weighted.py    Weighted Transformer branch attention (arXiv:1711.02132).
  head_gates.py  Hard Concrete head gates for pruning (arXiv:1905.09418).
  aaren.py       attention as a prefix-scan RNN (arXiv:2405.13956).
  feedforward.py feed-forward attention pooling (arXiv:1512.08756) and Yang et al.'s context-vector form.
  structured.py  structured self-attention, r hops with the ||AA^T - I|| penalty (arXiv:1703.03130).
  nadaraya_watson.py  Nadaraya-Watson kernel regression as attention, with a learned bandwidth.
  abcnn.py       BCNN and ABCNN-1/-2/-3 for sentence pairs (arXiv:1512.05193).
  dual_attention.py  D-Attn's local and global attention modules for review text (RecSys 2017).
  coda.py        compositional de-attention, quasi-attention weights in (-1, 1) (arXiv:1910.01086).
  reader.py      the cloze readers' attention sum and pointer sum (arXiv:1603.01547) and attention over attention
                 (arXiv:1607.04423).
  squeeze_excitation.py  Squeeze-and-Excitation channel gates for [B, H, W, C] maps (arXiv:1709.01507).
  cbam.py        CBAM: channel attention (one MLP over average- and max-pooled vectors) then spatial attention
                 (arXiv:1807.06521).
  danet.py       DANet's position and channel attention modules and their sum (arXiv:1809.02983).
  pyramid.py     spatial pyramid pooling (arXiv:1406.4729) and pyramid attention pooling (APANet, arXiv:1808.00288).
  co_attention.py  COSNet co-attention between two feature maps, with its gate (CVPR 2019; arXiv:2001.06810).
  few_shot.py    CAN's cross attention module (arXiv:1910.07677) and prototypical-network prototypes and logits
                 (arXiv:1703.05175).
  sets.py        Deep Sets' invariant model and permutation-equivariant layer (arXiv:1703.06114), and attention
                 pooling over a set (Set Transformer's PMA, arXiv:1810.00825).
  show_attend_tell.py  Show, Attend and Tell's soft and hard attention: the doubly stochastic penalty, the
                 REINFORCE surrogate with its moving-average baseline, and Gumbel straight-through
                 (arXiv:1502.03044).

Layers import `attention_jax.core` and `attention_jax.dot_product`, never `attention_jax.models`.
"""
