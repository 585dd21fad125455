"""Packaging: the public import surface and what importing the library pulls in."""

import os
import subprocess
import sys
import tempfile

import pytest

import attention_jax as aj

_EXPERIMENT_ONLY = ("ml_collections", "orbax", "sentencepiece", "sacrebleu", "matplotlib", "experiments")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code: str, cwd: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


_CHECK_IMPORTS = f"""
import sys
import attention_jax as aj
from attention_jax import kernels
import attention_jax.kernels
assert kernels.__name__ == "attention_jax.kernels", kernels.__name__
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {_EXPERIMENT_ONLY!r})
assert not loaded, f"import attention_jax pulled in experiment-only modules: {{loaded}}"
print(aj.__file__)
"""


def test_import_needs_no_experiment_dependencies_from_the_source_tree():
    result = _run_python(_CHECK_IMPORTS, cwd=_REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_import_from_another_directory():
    """From any directory: through the install if there is one, else through the checkout on PYTHONPATH."""
    with tempfile.TemporaryDirectory() as elsewhere:
        installed = _run_python("import attention_jax", cwd=elsewhere).returncode == 0
        result = _run_python(_CHECK_IMPORTS, cwd=elsewhere, pythonpath=None if installed else _REPO_ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", [
    "attend", "attend_from_logits", "weighted_context", "masked_softmax", "local_alignment", "local_m_position",
    "local_p_position", "window_mask", "gaussian_window", "padding_mask", "compute_score", "dot_score",
    "scaled_dot_score", "general_score", "concat_score", "additive_score", "location_score", "cosine_score",
    "BahdanauAttention", "LuongAttention", "Encoder", "Seq2Seq", "greedy_decode", "beam_search",
    "masked_softmax_with_lse", "dot_product_attention", "register_backend", "supports", "MultiHeadAttention",
    "rel_shift", "causal_memory_mask", "relative_attention", "update_memory", "relative_encodings",
    "RelativeMultiHeadAttention", "Aaren", "aaren_scan", "aaren_step", "aaren_init",
    "GatedMultiHeadAttention", "hard_concrete_sample", "hard_concrete_deterministic", "expected_l0", "kept_heads",
    "prune_heads", "WeightedBranchAttention", "project_to_simplex", "project_branch_weights",
    "sinusoidal_positions", "sinusoidal_at", "LearnedPositions", "relative_position_ids", "shaw_logits",
    "shaw_values", "complex_word_order_embedding", "ComplexOrderEmbedding", "apply_rope", "alibi_slopes", "alibi_bias",
])
def test_public_api_is_reexported(name):
    assert callable(getattr(aj, name))
