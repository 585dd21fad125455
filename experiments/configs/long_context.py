"""Long-context language modelling with sequence parallelism: `python -m experiments.long_context`.

A decoder-only Transformer LM (`attention_jax.models.TransformerLM`: pre-LN, RoPE, causal) trained on the KJV
Bible as one token stream cut into segments of T tokens, with the sequence split over the mesh's "seq" axis
and ring attention (`RingBackend`, Liu et al. 2023, arXiv:2310.01889) in every layer. The point is the memory:
with P devices on the ring each device holds T / P positions of every activation, so T = 32k fits where one
device would need P times more. Besides training, the run compiles the same train step for every degree in
``eval.memory_degrees`` (P = 1 is the single-device blockwise step) and tabulates the per-device memory XLA
assigns to each (`compiled.memory_analysis()`: arguments + outputs + temporaries of one device's program).

    python -m experiments.long_context --preset=smoke --workdir=/tmp/long_smoke   # T = 2048 on 4 devices
    python -m experiments.long_context                                            # T = 32768 on 8 devices

On a CPU the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=<mesh size>, set by
`experiments/__init__.py` from the --config.mesh.* flags, or from the preset's mesh when no flag is given). They
share the host's cores, so the step time says nothing about scaling; the memory table is the result.
"""

from __future__ import annotations

import ml_collections

from experiments import configs

DEFAULT_PRESET = "small"
ROW = "ring_lm"
IMPLEMENTATIONS = ("ring", "ulysses", "blockwise", "xla")


def get_config() -> ml_collections.ConfigDict:
    """The base config (field types fixed here, so --config.* overrides are type-checked)."""
    config = ml_collections.ConfigDict()
    config.experiment = "long_context"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.corpus = "kjv"
    config.data.data_dir = configs.DEFAULT_CACHE_DIR
    config.data.data_path = ""  # a plain UTF-8 text file replaces the corpus.
    config.data.vocab_size = 2000
    config.data.valid_fraction = 0.05
    config.data.test_fraction = 0.03

    config.model = ml_collections.ConfigDict()
    config.model.num_layers = 2
    config.model.num_heads = 8
    config.model.num_kv_heads = 0  # 0 means num_heads.
    config.model.d_model = 64
    config.model.d_ff = 256
    config.model.implementation = "ring"  # one of IMPLEMENTATIONS; ring and ulysses need mesh.seq > 1.

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 1
    config.train.segment_len = 32768  # T
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 2
    config.train.min_lr_ratio = 0.1
    config.train.grad_clip_norm = 1.0
    config.train.num_steps = 6
    config.train.max_minutes = 0.0  # 0: no time limit.
    config.train.log_every = 1
    config.train.eval_every = 0
    config.train.checkpoint_every = 2

    config.eval = ml_collections.ConfigDict()
    config.eval.memory_degrees = (1, 2, 4, 8)  # P of the per-device memory table (compiled, not run).

    config.mesh = configs.mesh_config()
    config.mesh.seq = 8
    return config


PRESETS = {
    "smoke": {"train.segment_len": 2048, "train.num_steps": 4, "train.checkpoint_every": 2, "mesh.seq": 4,
              "eval.memory_degrees": (1, 2, 4)},
    "small": {},
}
