"""Vaswani et al. 2017 (arXiv:1706.03762), Table 3: variations on the Transformer, German->English.

    python -m experiments.transformer                       # preset small, all rows, workdir workdirs/transformer
    python -m experiments.transformer --preset=smoke --workdir=/tmp/transformer_smoke
    python -m experiments.transformer --rows=base,A_heads1,rope --config.train.num_steps=2000
    python -m experiments.transformer --rows=base,B_dk4,RNNsearch,ConvS2S   # d_k alone; the other families

A row picks its model family with ``model.family``: the Transformer (every Table 3 row), RNNsearch
(`attention_jax.models.seq2seq.Seq2Seq`, bidirectional GRU + Bahdanau attention, ``model.rnnsearch.*``) or
ConvS2S (`attention_jax.models.convs2s.ConvS2S`, ``model.convs2s.*``); all three decode through
`experiments.evaluation.make_decoder` (the `attention_jax.models.decoding` protocol).

Rows, presets, wall times and numbers: `experiments/configs/transformer.py`. Flags: `experiments/cli.py`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from experiments import cli
from experiments import training
from experiments.configs import transformer as transformer_config

FAMILIES = ("transformer", "rnnsearch", "convs2s")
FAMILY_NAMES = {"transformer": "Transformer", "rnnsearch": "RNNsearch", "convs2s": "ConvS2S"}
# The sub-sections of the model config that belong to one family each (not Transformer keyword arguments).
_FAMILY_SECTIONS = ("rnnsearch", "convs2s")

COLUMNS = (
    ("row", "row"),
    ("model", "family"),
    ("N", "num_heads"),
    ("d_k", "qk_head_dim"),
    ("d_v", "head_dim"),
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


def family(model_config: ml_collections.ConfigDict) -> str:
    """The row's model family, ``model.family`` ("transformer" for configs written before it existed)."""
    return str(model_config.get("family", "transformer"))


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`Transformer` keyword arguments from the ``model`` section (0 means None for head_dim, qk_head_dim and
    num_kv_heads; "auto" means None for implementation; ``family`` and the other families' sub-sections are
    dropped)."""
    kwargs = {k: v for k, v in model_config.to_dict().items() if k != "family" and k not in _FAMILY_SECTIONS}
    for name in ("head_dim", "qk_head_dim", "num_kv_heads"):
        kwargs[name] = kwargs.get(name) or None
    if kwargs.get("implementation") == "auto":
        kwargs["implementation"] = None
    return kwargs


def rnnsearch_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`Seq2Seq` keyword arguments of RNNsearch (arXiv:1409.0473): a bidirectional GRU encoder, a GRU decoder
    and the additive attention, with the sizes of ``model.rnnsearch``."""
    r = model_config.rnnsearch
    return dict(embed_dim=int(r.embed_dim), hidden_size=int(r.hidden_size), num_layers=int(r.num_layers),
                attention_features=int(r.attention_features), dropout_rate=float(r.dropout_rate), cell="gru",
                bidirectional=True, attention="bahdanau", input_feeding=False)


def convs2s_kwargs(model_config: ml_collections.ConfigDict, max_source_len: int) -> dict[str, Any]:
    """`ConvS2S` keyword arguments from ``model.convs2s``; its learned positions cover ``model.max_len`` and the
    longest padded source."""
    c = model_config.convs2s
    return dict(embed_dim=int(c.embed_dim), hidden_size=int(c.hidden_size),
                num_encoder_layers=int(c.num_encoder_layers), num_decoder_layers=int(c.num_decoder_layers),
                kernel_size=int(c.kernel_size), dropout_rate=float(c.dropout_rate),
                max_len=max(int(model_config.max_len), int(max_source_len)))


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, max_source_len: int):
    """The row's model: a `Transformer` (max_len grows to the longest padded source), an RNNsearch `Seq2Seq` or a
    `ConvS2S`, by ``model.family``.

    Raises:
      ValueError: an unknown family, or sizes the model rejects (raised by the model itself).
    """
    kind = family(model_config)
    if kind == "rnnsearch":
        from attention_jax.models.seq2seq import Seq2Seq  # pylint: disable=import-outside-toplevel

        return Seq2Seq(vocab_size=int(vocab_size), max_source_len=int(max_source_len), **rnnsearch_kwargs(model_config))
    if kind == "convs2s":
        from attention_jax.models.convs2s import ConvS2S  # pylint: disable=import-outside-toplevel

        return ConvS2S(vocab_size=int(vocab_size), **convs2s_kwargs(model_config, max_source_len))
    if kind != "transformer":
        raise ValueError(f"model.family={kind!r} is not one of {FAMILIES}")
    from attention_jax.models.transformer import Transformer  # pylint: disable=import-outside-toplevel

    kwargs = model_kwargs(model_config)
    kwargs["max_len"] = max(int(kwargs["max_len"]), int(max_source_len))
    return Transformer(vocab_size=int(vocab_size), **kwargs)


def describe(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The Table 3 columns of a row from its config; the Transformer-only ones are None ("-") on other families."""
    m, kind = cfg.model, family(cfg.model)
    common = {"family": FAMILY_NAMES.get(kind, kind), "label_smoothing": cfg.train.label_smoothing}
    if kind == "rnnsearch":
        layers = int(m.rnnsearch.num_layers)
        return {**common, "layers": f"{layers}+{layers}", "dropout_rate": m.rnnsearch.dropout_rate}
    if kind == "convs2s":
        return {**common, "layers": f"{m.convs2s.num_encoder_layers}+{m.convs2s.num_decoder_layers}",
                "dropout_rate": m.convs2s.dropout_rate}
    d_v = m.head_dim or m.d_model // m.num_heads
    return {**common, "num_heads": m.num_heads, "qk_head_dim": m.get("qk_head_dim", 0) or d_v, "head_dim": d_v,
            "layers": f"{m.num_encoder_layers}+{m.num_decoder_layers}", "d_model": m.d_model, "d_ff": m.d_ff,
            "dropout_rate": m.dropout_rate, "positions": m.positions, "norm": m.norm}


IMPLEMENTATIONS = ("auto", "xla", "blockwise", "flash", "cudnn", "ring", "ulysses")
SEQUENCE_PARALLEL = ("ring", "ulysses")  # need a mesh with seq > 1 (--config.mesh.seq)


def _check_implementation(m: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when the named backend cannot run this model's attention calls here (e.g. "flash"
    without a GPU/TPU, "cudnn" in float32), before any data is read."""
    import jax  # pylint: disable=import-outside-toplevel
    from attention_jax.dot_product import api as dot_product  # pylint: disable=import-outside-toplevel

    d_v = m.head_dim or m.d_model // m.num_heads
    head_dim = max(d_v, m.qk_head_dim or d_v)  # MultiHeadAttention pads q, k (or v) to the larger of d_k, d_v
    query = jax.ShapeDtypeStruct((1, 8, m.num_heads, head_dim), jnp.dtype(m.get("dtype") or jnp.float32))
    kv = jax.ShapeDtypeStruct((1, 8, m.num_kv_heads or m.num_heads, head_dim), query.dtype)
    ok, reason = dot_product.supports(m.implementation, query, kv, kv, is_causal=True,
                                      key_value_seq_lengths=jnp.ones((1,), jnp.int32))
    if not ok:
        raise training.ConfigError(f"--config.model.implementation={m.implementation} cannot run here ({reason}); "
                                   f"fix: use auto or xla")


def _check_rate(path: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise training.ConfigError(f"--config.{path}={value!r} is not valid; fix: use a value in [0, 1)")


def _check_sizes(section: str, values: ml_collections.ConfigDict, names: tuple[str, ...]) -> None:
    for name in names:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise training.ConfigError(f"--config.model.{section}.{name}={value!r} is not valid; fix: use an int >= 1")


def _validate_family(cfg: ml_collections.ConfigDict) -> None:
    """The checks of the RNNsearch and ConvS2S rows (their models check the rest when they are built)."""
    m = cfg.model
    if family(m) == "rnnsearch":
        _check_sizes("rnnsearch", m.rnnsearch, ("embed_dim", "hidden_size", "attention_features", "num_layers"))
        _check_rate("model.rnnsearch.dropout_rate", m.rnnsearch.dropout_rate)
    else:
        _check_sizes("convs2s", m.convs2s, ("embed_dim", "hidden_size", "num_encoder_layers", "num_decoder_layers",
                                            "kernel_size"))
        _check_rate("model.convs2s.dropout_rate", m.convs2s.dropout_rate)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Model and training checks of a row, per model family; the models check the rest when they are built.

    The Transformer fields of ``model`` (implementation, head_gates, positions, ...) are ignored by the RNNsearch
    and ConvS2S rows, so one command line can set them for every row.

    Raises:
      training.ConfigError: naming the field and the fix.
    """
    from attention_jax.models import transformer  # pylint: disable=import-outside-toplevel

    m, t = cfg.model, cfg.train
    cli._choice("model.family", family(m), FAMILIES)  # pylint: disable=protected-access
    for path, value, choices in (("model.norm", m.norm, transformer.NORMS),
                                 ("model.positions", m.positions, transformer.POSITIONS),
                                 ("model.head_gates", m.head_gates, transformer.HEAD_GATES),
                                 ("model.implementation", m.implementation, IMPLEMENTATIONS),
                                 ("train.schedule", t.schedule, training.SCHEDULES)):
        cli._choice(path, value, choices)  # pylint: disable=protected-access
    for path, value in (("model.dropout_rate", m.dropout_rate), ("train.label_smoothing", t.label_smoothing)):
        _check_rate(path, value)
    if isinstance(t.warmup_steps, bool) or not isinstance(t.warmup_steps, int) or t.warmup_steps < 1:
        raise training.ConfigError(f"--config.train.warmup_steps={t.warmup_steps!r} is not valid; fix: use an int >= 1")
    if family(m) != "transformer":
        _validate_family(cfg)  # the Transformer-only fields (implementation, head_gates, ...) do not apply
    elif m.implementation in SEQUENCE_PARALLEL:
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
        title="Vaswani et al. 2017 (arXiv:1706.03762), Table 3: Transformer variations",  # + the data used
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
        default_jobs=2,  # two runs at once, one thread each: the table's ~90 minutes on the 2-core machine
)

if __name__ == "__main__":
    cli.run(EXPERIMENT)
