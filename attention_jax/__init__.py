"""attention_jax: attention mechanisms as pure JAX functions and Flax Linen modules.

    import attention_jax as aj
    context, weights = aj.attend(query, key, value, mask, score="general", params={"w_a": w_a})

The package is layered, and imports run one way only (an import-linter contract in setup.cfg):

    core         the math: scores (one registry), alignment (masked softmax, sparse normalisers, local windows),
                 context, masks, positional encodings, pooling. Every classic attention is score -> alignment ->
                 context.
    kernels      the Pallas flash-attention kernels (loaded on first use; `import attention_jax` loads no Pallas).
    dot_product  one operation, `dot_product_attention`, with its backends: xla, blockwise, flash, cudnn, and
                 the sequence-parallel ring (`RingBackend`) and ulysses (`UlyssesBackend`).
    layers       one mechanism per file, a pure function plus a thin Linen module.
    models       whole models (seq2seq, Transformer, Transformer-XL, ConvS2S) and decoding.

This module re-exports the names most code needs; everything else lives in the subpackages.

Shape letters, used in every docstring and einsum:
    B  batch                 T  query (target) length      S  key (source) length
    N  query heads           K  key/value heads            G  N // K
    H  head dim              D  model (feature) dim        A  attention hidden size
    V  vocabulary size

Conventions: masks are boolean with True = attend; logits and softmax are float32 whatever the input dtype;
a query whose keys are all masked gets zero weights, a zero context and zero gradients.
"""

from __future__ import annotations

import importlib.util as _importlib_util
import os as _os
import sys as _sys

def _bind_source_tree_kernels() -> None:
    """Makes `attention_jax.kernels` importable when running from a source checkout.

    An install maps the top-level kernels/ folder to attention_jax.kernels (setup.cfg, package_dir). A checkout
    on sys.path (python -m ..., pytest from the repo root) shadows the install, and its attention_jax/ has no
    kernels/ inside, so the sibling folder is bound under the same name here.
    """
    name = __name__ + ".kernels"
    if name in _sys.modules or _importlib_util.find_spec(name) is not None:
        return
    folder = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    init = _os.path.join(folder, "__init__.py")
    if not _os.path.isfile(init):
        return
    spec = _importlib_util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)


_bind_source_tree_kernels()

from attention_jax import core, dot_product, kernels, layers, models  # noqa: E402
from attention_jax.core.alignment import EMPTY_ROW_LSE, masked_softmax
from attention_jax.core.context import attend, attend_from_logits, weighted_context
from attention_jax.core.masks import padding_mask
from attention_jax.core.scores import SCORE_PARAMS, compute_score
from attention_jax.core.sparse import entmax, entmax15, sparsemax
from attention_jax.dot_product import (
    AttentionMask,
    DotProductAttentionOutput,
    RingBackend,
    UlyssesBackend,
    blockwise_attention,
    dot_product_attention,
    register_backend,
    supports,
)
from attention_jax.layers.aaren import Aaren
from attention_jax.layers.bahdanau import BahdanauAttention
from attention_jax.layers.head_gates import GatedMultiHeadAttention
from attention_jax.layers.luong import LuongAttention
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.layers.multistep import MultiStepAttention
from attention_jax.layers.relative import RelativeMultiHeadAttention
from attention_jax.layers.weighted import WeightedBranchAttention
from attention_jax.models.convs2s import ConvS2S
from attention_jax.models.decoding import beam_search, greedy_decode
from attention_jax.models.seq2seq import Seq2Seq
from attention_jax.models.transformer import Transformer
from attention_jax.models.transformer_xl import TransformerXLLM

__all__ = [
    "EMPTY_ROW_LSE",
    "SCORE_PARAMS",
    "Aaren",
    "AttentionMask",
    "BahdanauAttention",
    "ConvS2S",
    "DotProductAttentionOutput",
    "GatedMultiHeadAttention",
    "LuongAttention",
    "MultiHeadAttention",
    "MultiStepAttention",
    "RelativeMultiHeadAttention",
    "RingBackend",
    "Seq2Seq",
    "Transformer",
    "TransformerXLLM",
    "UlyssesBackend",
    "WeightedBranchAttention",
    "attend",
    "attend_from_logits",
    "beam_search",
    "blockwise_attention",
    "compute_score",
    "core",
    "dot_product",
    "dot_product_attention",
    "greedy_decode",
    "kernels",
    "layers",
    "entmax",
    "entmax15",
    "masked_softmax",
    "models",
    "padding_mask",
    "register_backend",
    "sparsemax",
    "supports",
    "weighted_context",
]

__version__ = "0.1.0"

# Above the models: meshes, logical-axis rules, sharded init and train steps (`aj.sharding.make_mesh`, ...).
from attention_jax import sharding  # noqa: E402

__all__ += ["sharding"]
