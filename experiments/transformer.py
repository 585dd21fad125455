"""Vaswani et al. 2017 (arXiv:1706.03762), Table 3: variations on the Transformer, German->English.

    python -m experiments.transformer                       # preset small, all rows, workdir workdirs/transformer
    python -m experiments.transformer --preset=smoke --workdir=/tmp/transformer_smoke
    python -m experiments.transformer --rows=base,A_heads1,rope --config.train.num_steps=2000

Rows, presets, wall times and numbers: `experiments/configs/transformer.py`. Flags: `experiments/cli.py`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from experiments import cli
from experiments import training
from experiments.configs import transformer as transformer_config

COLUMNS = (
    ("row", "row"),
    ("N", "num_heads"),
    ("d_k", "head_dim"),
    ("layers", "layers"),
    ("d_model", "d_model"),
    ("d_ff", "d_ff"),
    ("P_drop", "dropout_rate"),
    ("eps_ls", "label_smoothing"),
    ("positions", "positions"),
    ("norm", "norm"),
    ("params", "params"),
    ("dev ppl", "dev_ppl"),
    ("test ppl", "test_ppl"),
    ("test BLEU", "test_bleu"),
    ("steps", "steps"),
    ("train minutes", "train_minutes"),
)


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`Transformer` keyword arguments from the ``model`` section (0 means None for head_dim, num_kv_heads;
    "auto" means None for implementation)."""
    kwargs = dict(model_config.to_dict())
    for name in ("head_dim", "num_kv_heads"):
        kwargs[name] = kwargs.get(name) or None
    if kwargs.get("implementation") == "auto":
        kwargs["implementation"] = None
    return kwargs


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, max_source_len: int):
    """The row's `attention_jax.models.transformer.Transformer` (max_len grows to the longest padded source)."""
    from attention_jax.models.transformer import Transformer  # pylint: disable=import-outside-toplevel

    kwargs = model_kwargs(model_config)
    kwargs["max_len"] = max(int(kwargs["max_len"]), int(max_source_len))
    return Transformer(vocab_size=int(vocab_size), **kwargs)


def describe(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The Table 3 columns of a row from its config."""
    m = cfg.model
    return {"label_smoothing": cfg.train.label_smoothing, "num_heads": m.num_heads, "head_dim": m.head_dim or m.d_model // m.num_heads,
            "layers": f"{m.num_encoder_layers}+{m.num_decoder_layers}", "d_model": m.d_model, "d_ff": m.d_ff,
            "dropout_rate": m.dropout_rate, "positions": m.positions, "norm": m.norm}


IMPLEMENTATIONS = ("auto", "xla", "blockwise", "flash", "cudnn", "ring", "ulysses")
SEQUENCE_PARALLEL = ("ring", "ulysses")  # need a mesh with seq > 1 (--config.mesh.seq)


def _check_implementation(m: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when the named backend cannot run this model's attention calls here (e.g. "flash"
    without a GPU/TPU, "cudnn" in float32), before any data is read."""
    import jax  # pylint: disable=import-outside-toplevel
    from attention_jax.dot_product import api as dot_product  # pylint: disable=import-outside-toplevel

    head_dim = m.head_dim or m.d_model // m.num_heads
    query = jax.ShapeDtypeStruct((1, 8, m.num_heads, head_dim), jnp.dtype(m.get("dtype") or jnp.float32))
    kv = jax.ShapeDtypeStruct((1, 8, m.num_kv_heads or m.num_heads, head_dim), query.dtype)
    ok, reason = dot_product.supports(m.implementation, query, kv, kv, is_causal=True,
                                      key_value_seq_lengths=jnp.ones((1,), jnp.int32))
    if not ok:
        raise training.ConfigError(f"--config.model.implementation={m.implementation} cannot run here ({reason}); "
                                   f"fix: use auto or xla")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Model and training checks of a row; `Transformer` itself checks the rest when it is built.

    Raises:
      training.ConfigError: naming the field and the fix.
    """
    from attention_jax.models import transformer  # pylint: disable=import-outside-toplevel

    m, t = cfg.model, cfg.train
    for path, value, choices in (("model.norm", m.norm, transformer.NORMS),
                                 ("model.positions", m.positions, transformer.POSITIONS),
                                 ("model.head_gates", m.head_gates, transformer.HEAD_GATES),
                                 ("model.implementation", m.implementation, IMPLEMENTATIONS),
                                 ("train.schedule", t.schedule, training.SCHEDULES)):
        cli._choice(path, value, choices)  # pylint: disable=protected-access
    for path, value in (("model.dropout_rate", m.dropout_rate), ("train.label_smoothing", t.label_smoothing)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise training.ConfigError(f"--config.{path}={value!r} is not valid; fix: use a value in [0, 1)")
    if isinstance(t.warmup_steps, bool) or not isinstance(t.warmup_steps, int) or t.warmup_steps < 1:
        raise training.ConfigError(f"--config.train.warmup_steps={t.warmup_steps!r} is not valid; fix: use an int >= 1")
    if m.implementation in SEQUENCE_PARALLEL:
        if cfg.mesh.seq < 2:
            raise training.ConfigError(f"--config.model.implementation={m.implementation} splits the sequence over "
                                       "the mesh's seq axis; fix: add --config.mesh.seq=2 (or more)")
    elif m.implementation != "auto":
        _check_implementation(m)
    shards = cfg.mesh.data * cfg.mesh.fsdp
    if t.batch_size % shards:
        raise training.ConfigError(f"--config.train.batch_size={t.batch_size} must be a multiple of mesh.data * "
                                   f"mesh.fsdp = {shards}; fix: change one of them")
    if m.max_len < cfg.eval.max_decode_len:
        raise training.ConfigError(f"--config.model.max_len={m.max_len} is shorter than --config.eval.max_decode_len="
                                   f"{cfg.eval.max_decode_len}; fix: raise model.max_len or lower eval.max_decode_len")


EXPERIMENT = training.Experiment(
        name="transformer",
        title="Vaswani et al. 2017 (arXiv:1706.03762), Table 3: Transformer variations, German->English (Ding)",
        get_config=transformer_config.get_config,
        presets=transformer_config.PRESETS,
        rows=transformer_config.ROWS,
        default_rows=transformer_config.DEFAULT_ROWS,
        default_preset=transformer_config.DEFAULT_PRESET,
        default_workdir="workdirs/transformer",
        custom_row=transformer_config.CUSTOM_ROW,
        bleu_by_length=True,
        build_model=build_model,
        describe_model=describe,
        columns=COLUMNS,
        validate_model=validate,
        preset_rows=transformer_config.PRESET_ROWS,
)

if __name__ == "__main__":
    cli.run(EXPERIMENT)
