"""Packaging: the public import surface and what importing the library pulls in."""

import importlib
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


# Where each public name lives after the layered layout (issue 9): the home module of every name the flat
# package used to export. The top level re-exports a curated subset (`attention_jax.__all__`).
_HOMES = {
    "core.context": ["attend", "attend_from_logits", "weighted_context"],
    "core.alignment": ["masked_softmax", "masked_softmax_with_lse", "local_alignment", "local_m_position",
                       "local_p_position", "window_mask", "gaussian_window", "normalize"],
    "core.sparse": ["sparsemax", "entmax15", "entmax"],
    "core.pooling": ["sum_pool", "mean_pool", "max_pool", "kmax_pool", "dynamic_k", "chunk_max_pool",
                     "stochastic_pool"],
    "core.masks": ["padding_mask", "broadcast_key_mask"],
    "core.scores": ["compute_score", "dot_score", "scaled_dot_score", "general_score", "concat_score",
                    "additive_score", "location_score", "cosine_score"],
    "core.positional": ["sinusoidal_positions", "sinusoidal_at", "LearnedPositions", "relative_position_ids",
                        "shaw_logits", "shaw_values", "complex_word_order_embedding", "ComplexOrderEmbedding",
                        "apply_rope", "alibi_slopes", "alibi_bias"],
    "dot_product": ["dot_product_attention", "register_backend", "supports", "blockwise_attention"],
    "layers.bahdanau": ["BahdanauAttention"],
    "layers.luong": ["LuongAttention"],
    "layers.multihead": ["MultiHeadAttention"],
    "layers.relative": ["rel_shift", "causal_memory_mask", "relative_attention", "relative_encodings",
                        "RelativeMultiHeadAttention"],
    "layers.multistep": ["multistep_attention", "MultiStepAttention"],
    "layers.aaren": ["Aaren", "aaren_scan", "aaren_step", "aaren_init"],
    "layers.head_gates": ["GatedMultiHeadAttention", "hard_concrete_sample", "hard_concrete_deterministic",
                          "expected_l0", "kept_heads", "prune_heads"],
    "layers.weighted": ["WeightedBranchAttention", "project_to_simplex", "project_branch_weights"],
    "models.seq2seq": ["Encoder", "Seq2Seq"],
    "models.decoding": ["greedy_decode", "beam_search"],
    "models.transformer_xl": ["update_memory", "TransformerXLLM"],
    "models.transformer": ["Transformer"],
    "models.convs2s": ["ConvS2S"],
}


@pytest.mark.parametrize("home,name", [(home, name) for home, names in _HOMES.items() for name in names])
def test_public_name_lives_in_its_subpackage(home, name):
    module = importlib.import_module(f"attention_jax.{home}")
    assert callable(getattr(module, name))
    if name in aj.__all__:  # a curated top-level name is the very same object
        assert getattr(aj, name) is getattr(module, name)


def test_top_level_api_is_curated():
    assert len(aj.__all__) <= 40, aj.__all__
    for name in aj.__all__:
        assert hasattr(aj, name), name
    public = {name for name in vars(aj) if not name.startswith("_")}
    assert public - {"annotations"} <= set(aj.__all__) | {"kernels"}, sorted(public - set(aj.__all__))


_CHECK_NO_PALLAS = """
import sys
import attention_jax
loaded = sorted(m for m in sys.modules if m.startswith("jax.experimental.pallas")
                or m in ("attention_jax.kernels.forward", "attention_jax.kernels.backward", "attention_jax.kernels.flash"))
print(loaded)
assert not loaded, loaded
from attention_jax.kernels import flash_attention  # the kernels load on first use
assert "jax.experimental.pallas" in sys.modules
"""


def test_import_loads_no_pallas():
    result = _run_python(_CHECK_NO_PALLAS, cwd=_REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold():
    """The layers contract of setup.cfg (core <- dot_product <- layers <- models; kernels below dot_product)."""
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    command = [lint] if os.path.exists(lint) else [sys.executable, "-m", "importlinter.cli"]
    result = subprocess.run(command + ["--config", os.path.join(_REPO_ROOT, "setup.cfg")], cwd=_REPO_ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout, result.stdout
