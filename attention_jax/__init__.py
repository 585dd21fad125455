"""attention_jax: attention mechanisms as pure JAX functions and Flax Linen modules.

    import attention_jax as aj
    context, weights = aj.attend(query, key, value, mask, score="general", params={"w_a": w_a})

Every attention here is score -> alignment -> context: `scores` maps queries and keys to logits, `alignment`
turns logits into weights (global softmax, local windows), `context` takes the weighted sum of values.

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

from attention_jax import (
    aaren,
    alignment,
    context,
    convs2s,
    decoding,
    dot_product,
    head_gates,
    masks,
    multihead,
    positional,
    scores,
    seq2seq,
    transformer,
    transformer_xl,
    weighted,
)
from attention_jax.aaren import Aaren, AarenState, aaren_init, aaren_scan, aaren_step
from attention_jax.alignment import (
    gaussian_window,
    local_alignment,
    local_m_position,
    local_p_position,
    masked_softmax,
    masked_softmax_with_lse,
    window_mask,
)
from attention_jax.context import attend, attend_from_logits, weighted_context
from attention_jax.convs2s import ConvS2S, GLUConv, MultiStepAttention, glu, multistep_attention
from attention_jax.decoding import beam_search, greedy_decode
from attention_jax.dot_product import DotProductAttentionOutput, dot_product_attention, register_backend, supports
from attention_jax.masks import broadcast_key_mask, padding_mask
from attention_jax.head_gates import (
    GatedMultiHeadAttention,
    expected_l0,
    hard_concrete_deterministic,
    hard_concrete_sample,
    kept_heads,
    prune_heads,
)
from attention_jax.multihead import RELATIVE_POSITIONS, MultiHeadAttention
from attention_jax.transformer import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    Transformer,
    label_smoothed_cross_entropy,
    transformer_schedule,
)
from attention_jax.weighted import WeightedBranchAttention, project_branch_weights, project_to_simplex
from attention_jax.transformer_xl import (
    RelativeMultiHeadAttention,
    TransformerXLLM,
    TransformerXLLayer,
    causal_memory_mask,
    rel_shift,
    relative_attention,
    relative_encodings,
    update_memory,
)
from attention_jax.positional import (
    ComplexOrderEmbedding,
    LearnedPositions,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    complex_word_order_embedding,
    relative_position_ids,
    shaw_logits,
    shaw_values,
    sinusoidal_at,
    sinusoidal_positions,
)
from attention_jax.scores import (
    SCORE_PARAMS,
    additive_score,
    additive_score_projected,
    compute_score,
    concat_score,
    cosine_score,
    dot_score,
    general_score,
    location_score,
    scaled_dot_score,
)
from attention_jax.seq2seq import BahdanauAttention, Encoder, LuongAttention, Seq2Seq, make_step_fn


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
from attention_jax import kernels  # noqa: E402

__version__ = "0.1.0"
