"""One training step of the base Transformer (arXiv:1706.03762), JAX against a PyTorch twin, in tokens/s.

    python -m experiments.benchmarks.transformer_step                 # preset base, both frameworks
    python -m experiments.benchmarks.transformer_step --preset=tiny --steps=2 --skip_torch
    python -m experiments.benchmarks.transformer_step --batch_size=64 --output_json=/tmp/step.json

Both sides build the same encoder-decoder: post-LN, one embedding table shared by the source, the target and
the output projection (scaled by sqrt(D) on the way in, §3.4), sinusoidal positions (§3.5), the paper's
dropout P_drop on the embedding sums and on every residual branch (§5.4; none on the attention weights or
inside the FFN), label-smoothed cross-entropy (§5.4) and Adam (beta1 0.9, beta2 0.98, eps 1e-9) on the
inverse-square-root schedule (§5.3).

* JAX: `attention_jax.models.transformer.Transformer` with `label_smoothed_cross_entropy` and `transformer_schedule`,
  one `jax.jit` step (forward, backward, optax Adam) with the parameters and the optimizer state donated.
* PyTorch: `torch.nn.Transformer` (batch_first, post-LN, ReLU) in eager mode with an `nn.Embedding`
  whose weight is the output projection, `nn.CrossEntropyLoss(label_smoothing=..., ignore_index=0)` and
  `torch.optim.Adam` with `LambdaLR`. The encoder and decoder stacks are passed to `nn.Transformer` as
  `custom_encoder`/`custom_decoder` with `norm=None`: `nn.Transformer` otherwise appends a final LayerNorm
  to each stack, which the post-LN paper model has not (4 x D parameters more). `nn.Transformer` also puts
  its one dropout rate on the attention weights and inside the FFN; those two sites are set to 0 to match
  the paper and the JAX model (attention_dropout_rate = relu_dropout_rate = 0).

Every batch is full (no padding, source lengths = S), with tokens drawn uniformly from [4, V). A step's
throughput counts target tokens, B x T. Each framework first runs one step (the compile, JAX, or the first
step, PyTorch, is reported apart) and `--warmup` untimed steps; then `--steps` steps of each are timed one
by one, alternating between the frameworks (`--nointerleave`: JAX's steps, then PyTorch's), so that on a
shared machine both see the same load. JAX waits with `jax.block_until_ready` on the loss and the
parameters after each step, PyTorch with `loss.item()`. The table gives the median step time with p10/p90,
and tokens/s at the median.

Threads: PyTorch runs on `torch.set_num_threads(--threads)` (default os.cpu_count()). XLA:CPU has no
such switch at run time: it runs its intra-op work on a thread pool sized to the machine's cores, and only
one thread can be asked for, through XLA_FLAGS before the backend starts; `--threads=1` does that for both
frameworks (`XLA_ONE_THREAD`). The printed host line says which XLA threading was in force.

Results on a quiet machine (the same machine with nothing else running, load average < 1; 2026-11-21):

    python -m experiments.benchmarks.transformer_step             # 49.7 s wall
    JAX 844.6 ms/step, 606 target tokens/s; PyTorch (2 threads) 1162.9 ms/step, 440 tokens/s: ratio 1.38x
    python -m experiments.benchmarks.transformer_step --threads=1  # 52.7 s wall
    JAX 741.1 ms/step, 691 target tokens/s; PyTorch (1 thread) 1832.4 ms/step, 279 tokens/s: ratio 2.47x

Results (this project's development machine: Linux x86_64, 2 CPUs (AMD EPYC), shared with other jobs at a
load average of 5-7 during these runs; jax 0.10.2 on cpu, flax 0.12.8, optax 0.2.8; torch 2.15.0+cu132, the
PyPI wheel, run on the CPU; preset base: D=512, N=8, 6+6 layers, d_ff=2048, V=8192, B=16, S=T=32, dropout
0.1, label smoothing 0.1, 10 timed steps after 2 warm-up steps, interleaved; 48,332,800 parameters on both
sides, an exact match):

    python -m experiments.benchmarks.transformer_step             # 232.6 s wall (torch's steps dominate)

| framework | version | params | compile / first step s | median step ms | p10 ms | p90 ms | target tokens/s | loss first -> last |
|---|---|---:|---:|---:|---:|---:|---:|---|
| JAX | jax 0.10.2 (cpu) | 48,332,800 | 8.50 | 1322.7 | 1259.6 | 1439.7 | 387 | 9.506 -> 9.446 |
| PyTorch | torch 2.15.0+cu132 (cpu, 2 threads) | 48,332,800 | 15.51 | 15049.4 | 14958.4 | 15117.5 | 34 | 9.593 -> 9.534 |

ratio JAX/PyTorch: 11.38x. That number says more about the machine than about the frameworks: on these two
shared cores, PyTorch's OpenMP/MKL on 2 threads collapses (a torch-only check, same process, alternating:
14.2 s and 13.2 s per step on 2 threads against 2.0 s and 1.9 s on 1 thread), while XLA's work-stealing pool
loses little (1.32 s on 2 threads here, 1.42 s on 1). The like-for-like number is both single-threaded:

    python -m experiments.benchmarks.transformer_step --threads=1  # 69.3 s wall

| framework | version | params | compile / first step s | median step ms | p10 ms | p90 ms | target tokens/s | loss first -> last |
|---|---|---:|---:|---:|---:|---:|---:|---|
| JAX | jax 0.10.2 (cpu) | 48,332,800 | 9.84 | 1421.8 | 1306.8 | 1583.7 | 360 | 9.506 -> 9.446 |
| PyTorch | torch 2.15.0+cu132 (cpu, 1 threads) | 48,332,800 | 2.25 | 1842.0 | 1791.4 | 2001.3 | 278 | 9.593 -> 9.534 |

ratio JAX/PyTorch: 1.30x (1.36x in an earlier 6-step run). JAX pays a one-off ~9 s compile instead.
The dropout PRNG costs nothing measurable: threefry2x32, rbg and unsafe_rbg, timed interleaved in one
process, gave medians of 1322, 1345 and 1361 ms (`--prng`). Both losses start about 0.5 above ln(8192) =
9.01 (unit-variance logits at initialisation) and fall slowly: these are the first dozen steps of the
warm-up schedule (lr < 3e-6).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import numpy as np

# XLA:CPU's switch to one intra-op thread; it has none for other counts (it uses every core).
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
XLA_TRACEME = "--xla_cpu_enable_xprof_traceme=true"  # XLA:CPU reports each thunk to jax.profiler
FIRST_TOKEN = 4  # ids 0..3 are pad, unk, bos, eos; random tokens never use them.

PRESETS: dict[str, dict[str, Any]] = {
        # The paper's base model; batch and lengths sized for a ~2-3 minute run on a 2-core CPU.
        "base": dict(d_model=512, num_heads=8, num_layers=6, d_ff=2048, dropout=0.1, label_smoothing=0.1,
                     batch_size=16, src_len=32, tgt_len=32, vocab_size=8192, steps=10, warmup=2),
        # A smoke size for the tests: seconds, not minutes.
        "tiny": dict(d_model=32, num_heads=4, num_layers=1, d_ff=64, dropout=0.1, label_smoothing=0.1,
                     batch_size=4, src_len=8, tgt_len=8, vocab_size=64, steps=3, warmup=1),
}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's flags (only when it runs as a script, so that importing it defines none)."""
    flags.DEFINE_enum("preset", "base", sorted(PRESETS), "size preset; any size flag below overrides it")
    flags.DEFINE_integer("d_model", None, "D, the model width (preset base: 512)")
    flags.DEFINE_integer("num_heads", None, "N, attention heads (base: 8)")
    flags.DEFINE_integer("num_layers", None, "encoder layers = decoder layers (base: 6)")
    flags.DEFINE_integer("d_ff", None, "feed-forward inner width (base: 2048)")
    flags.DEFINE_integer("batch_size", None, "B, sentences per step (base: 16)")
    flags.DEFINE_integer("src_len", None, "S, source tokens per sentence (base: 32)")
    flags.DEFINE_integer("tgt_len", None, "T, target tokens per sentence (base: 32)")
    flags.DEFINE_integer("vocab_size", None, "V, shared vocabulary (base: 8192)")
    flags.DEFINE_float("dropout", None, "dropout rate at every site (base: 0.1)")
    flags.DEFINE_float("label_smoothing", None, "label smoothing epsilon (base: 0.1)")
    flags.DEFINE_integer("steps", None, "timed steps per framework (base: 10)")
    flags.DEFINE_integer("warmup", None, "untimed steps after the compile / first step (base: 2)")
    flags.DEFINE_integer("threads", None, "torch.set_num_threads (default: os.cpu_count()); 1 also makes "
                         "XLA:CPU single-threaded")
    flags.DEFINE_integer("seed", 0, "seed of the data and of both models' initialisations")
    flags.DEFINE_string("output_json", "", "also write the config and the results to this JSON file")
    flags.DEFINE_bool("skip_torch", False, "time JAX alone")
    flags.DEFINE_bool("interleave", True, "alternate the two frameworks' timed steps, so that both see the same load "
                      "on a shared machine (--nointerleave: all JAX steps, then all PyTorch steps)")
    flags.DEFINE_enum("prng", "threefry2x32", ["threefry2x32", "rbg", "unsafe_rbg"],
                      "jax_default_prng_impl for the JAX side's dropout masks")
    flags.DEFINE_string("profile_dir", "", "after timing, trace 3 more JAX steps with jax.profiler into this "
                        "folder (a Perfetto trace) and print the XLA ops that take the most time per step")
    flags.DEFINE_integer("profile_top", 25, "how many ops the --profile_dir table lists")


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration, the same for both frameworks."""

    d_model: int
    num_heads: int
    num_layers: int
    d_ff: int
    dropout: float
    label_smoothing: float
    batch_size: int
    src_len: int
    tgt_len: int
    vocab_size: int
    steps: int
    warmup: int
    threads: int
    seed: int = 0
    lr_warmup_steps: int = 4000  # the paper's schedule warm-up (§5.3)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.tgt_len


@dataclasses.dataclass
class Result:
    """The timings of one framework."""

    framework: str
    version: str
    params: int
    setup_s: float  # JAX: trace + compile; PyTorch: the first step.
    step_s: list[float]
    losses: list[float]
    tokens_per_step: int

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.step_s), q))

    @property
    def median_s(self) -> float:
        return self.percentile(50)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.median_s

    def to_json(self) -> dict[str, Any]:
        return dict(framework=self.framework, version=self.version, params=self.params, setup_s=self.setup_s,
                    median_step_s=self.median_s, p10_step_s=self.percentile(10), p90_step_s=self.percentile(90),
                    tokens_per_s=self.tokens_per_s, step_s=self.step_s, first_loss=self.losses[0],
                    last_loss=self.losses[-1])


def config_from_flags() -> Config:
    """The preset, with every size flag that was given applied on top."""
    values = dict(PRESETS[FLAGS.preset])
    for name in values:
        if getattr(FLAGS, name) is not None:
            values[name] = getattr(FLAGS, name)
    threads = FLAGS.threads if FLAGS.threads is not None else (os.cpu_count() or 1)
    config = Config(**values, threads=threads, seed=FLAGS.seed)
    if config.d_model % config.num_heads:
        raise app.UsageError(f"--d_model must be a multiple of --num_heads: {config.d_model=} {config.num_heads=}")
    for name in ("d_model", "num_heads", "num_layers", "d_ff", "batch_size", "src_len", "tgt_len", "steps"):
        if getattr(config, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(config, name)}")
    if config.vocab_size <= FIRST_TOKEN:
        raise app.UsageError(f"--vocab_size must be > {FIRST_TOKEN}, got {config.vocab_size}")
    if not 0.0 <= config.dropout < 1.0 or not 0.0 <= config.label_smoothing < 1.0:
        raise app.UsageError(f"--dropout and --label_smoothing must be in [0, 1): {config.dropout=} "
                             f"{config.label_smoothing=}")
    return config


def make_batches(config: Config, count: int = 4) -> list[dict[str, np.ndarray]]:
    """`count` full batches of random tokens in [4, V), shared by both frameworks.

    Returns:
      dicts with src [B, S], tgt_in [B, T] and labels [B, T], int32 (labels = tgt_in shifted by one).
    """
    rng = np.random.default_rng(config.seed)
    batches = []
    for _ in range(count):
        src = rng.integers(FIRST_TOKEN, config.vocab_size, (config.batch_size, config.src_len), dtype=np.int32)
        tgt = rng.integers(FIRST_TOKEN, config.vocab_size, (config.batch_size, config.tgt_len + 1), dtype=np.int32)
        batches.append(dict(src=src, tgt_in=tgt[:, :-1].copy(), labels=tgt[:, 1:].copy()))
    return batches


def inverse_sqrt_lr(step: int, d_model: int, warmup_steps: int) -> float:
    """lr = D^-0.5 min(s^-0.5, s w^-1.5) with s = step + 1 (arXiv:1706.03762, eq. 3)."""
    s = step + 1
    return d_model ** -0.5 * min(s ** -0.5, s * warmup_steps ** -1.5)


@dataclasses.dataclass
class Runner:
    """A framework's prepared training step: run_step(i) trains on batch i and returns the loss."""

    framework: str
    version: str
    params: int
    run_step: Callable[[int], float]
    compile_s: float | None = None  # JAX only: trace + compile, timed apart from any step.


def time_runners(runners: Sequence[Runner], config: Config, *, interleave: bool) -> list[Result]:
    """Runs each framework's first step, `warmup` untimed steps, then `steps` timed steps.

    With `interleave`, the timed steps alternate between the frameworks (step i of each, in turn), so that
    both see the same load when the machine is shared; otherwise each framework runs all its steps in turn.
    The setup time reported is the compile time for JAX and the first step for PyTorch.
    """
    losses = {r.framework: [] for r in runners}
    times = {r.framework: [] for r in runners}
    setup = {}

    def timed(runner: Runner, i: int) -> float:
        start = time.perf_counter()
        losses[runner.framework].append(runner.run_step(i))
        return time.perf_counter() - start

    def warm(runner: Runner) -> None:
        first = timed(runner, 0)
        setup[runner.framework] = runner.compile_s if runner.compile_s is not None else first
        for i in range(config.warmup):
            timed(runner, 1 + i)

    offset = 1 + config.warmup
    if interleave:
        for runner in runners:
            warm(runner)
        for i in range(config.steps):
            for runner in runners:
                times[runner.framework].append(timed(runner, offset + i))
    else:
        for runner in runners:
            warm(runner)
            for i in range(config.steps):
                times[runner.framework].append(timed(runner, offset + i))
    return [Result(r.framework, r.version, r.params, setup[r.framework], times[r.framework], losses[r.framework],
                   config.tokens_per_step) for r in runners]


# ------------------------------------------------------------------------------------------------------------
# JAX: the library's model.


def prepare_jax(config: Config, batches: Sequence[dict[str, np.ndarray]]) -> Runner:
    """Builds and compiles the jitted training step of `attention_jax.models.transformer.Transformer`."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from attention_jax.models import transformer

    model = transformer.Transformer(
            vocab_size=config.vocab_size, d_model=config.d_model, num_heads=config.num_heads,
            num_encoder_layers=config.num_layers, num_decoder_layers=config.num_layers, d_ff=config.d_ff,
            dropout_rate=config.dropout, norm="post", positions="sinusoidal", share_embeddings=True,
            max_len=max(config.src_len, config.tgt_len))
    device_batches = [
            dict(src=jnp.asarray(b["src"]), tgt_in=jnp.asarray(b["tgt_in"]), labels=jnp.asarray(b["labels"]),
                 src_lengths=jnp.full((config.batch_size,), config.src_len, jnp.int32))
            for b in batches]
    first = device_batches[0]
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    params = jax.jit(functools.partial(model.init, train=False))(
            init_key, first["src"], first["src_lengths"], first["tgt_in"])["params"]
    params = nn.unbox(params)  # plain arrays: the model boxes them with logical axis names
    optimizer = optax.adam(transformer.transformer_schedule(config.d_model, config.lr_warmup_steps),
                           b1=0.9, b2=0.98, eps=1e-9)
    opt_state = optimizer.init(params)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    def loss_fn(params, batch, rng):
        logits, _ = model.apply({"params": params}, batch["src"], batch["src_lengths"], batch["tgt_in"],
                                train=True, rngs={"dropout": rng})
        mask = (batch["labels"] != 0).astype(jnp.float32)
        loss_sum, count = transformer.label_smoothed_cross_entropy(logits, batch["labels"], mask,
                                                                   smoothing=config.label_smoothing)
        return loss_sum / jnp.maximum(count, 1.0)

    # Donating params and opt_state lets XLA update them in place.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch, step):
        rng = jax.random.fold_in(dropout_key, step)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    compiled = train_step.lower(params, opt_state, first, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start

    state = [params, opt_state]
    steps = [jnp.int32(i) for i in range(1 + config.warmup + config.steps)]

    def run_step(i: int) -> float:
        state[0], state[1], loss = compiled(state[0], state[1], device_batches[i % len(device_batches)], steps[i % len(steps)])
        jax.block_until_ready((loss, state[0]))
        return float(loss)

    return Runner("JAX", f"jax {jax.__version__} ({jax.default_backend()})", num_params, run_step, compile_s)


# ------------------------------------------------------------------------------------------------------------
# PyTorch: the twin on torch.nn.Transformer.


def _torch_model(config: Config):
    """The PyTorch twin (built inside a function so that this module imports without torch)."""
    import torch
    from torch import nn

    class TorchTransformer(nn.Module):
        """Post-LN encoder-decoder on `nn.Transformer` with one tied embedding and sinusoidal positions."""

        def __init__(self):
            super().__init__()
            d, n, f, p, layers = config.d_model, config.num_heads, config.d_ff, config.dropout, config.num_layers
            self.embed = nn.Embedding(config.vocab_size, d)
            nn.init.normal_(self.embed.weight, std=d ** -0.5)
            self.dropout = nn.Dropout(p)
            encoder_layer = nn.TransformerEncoderLayer(d, n, f, p, batch_first=True, norm_first=False)
            decoder_layer = nn.TransformerDecoderLayer(d, n, f, p, batch_first=True, norm_first=False)
            # The paper drops only residual branches and embeddings: no dropout on the attention weights or
            # inside the FFN (the stacks deep-copy these layers, settings included).
            for layer in (encoder_layer, decoder_layer):
                layer.dropout.p = 0.0
                layer.self_attn.dropout = 0.0
            decoder_layer.multihead_attn.dropout = 0.0
            encoder = nn.TransformerEncoder(encoder_layer, layers, norm=None, enable_nested_tensor=False)
            decoder = nn.TransformerDecoder(decoder_layer, layers, norm=None)
            self.transformer = nn.Transformer(d, n, layers, layers, f, p, batch_first=True, custom_encoder=encoder,
                                              custom_decoder=decoder)
            length = max(config.src_len, config.tgt_len)
            position = torch.arange(length, dtype=torch.float32)[:, None]
            inv_freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
            table = torch.zeros(length, d)
            table[:, 0::2] = torch.sin(position * inv_freq)
            table[:, 1::2] = torch.cos(position * inv_freq)
            self.register_buffer("positions", table, persistent=False)
            self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(config.tgt_len),
                                 persistent=False)

        def embed_tokens(self, tokens):
            x = self.embed(tokens) * (config.d_model ** 0.5) + self.positions[: tokens.shape[1]]
            return self.dropout(x)

        def forward(self, src, tgt_in):
            hidden = self.transformer(self.embed_tokens(src), self.embed_tokens(tgt_in), tgt_mask=self.causal,
                                      tgt_is_causal=True)  # [B, T, D]
            return hidden @ self.embed.weight.T  # [B, T, V]

    return TorchTransformer()


def prepare_torch(config: Config, batches: Sequence[dict[str, np.ndarray]]) -> Runner:
    """Builds the eager PyTorch training step of the twin."""
    import torch

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = _torch_model(config)
    model.train()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: inverse_sqrt_lr(step, config.d_model, config.lr_warmup_steps))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, ignore_index=0)
    torch_batches = [{k: torch.from_numpy(v).long() for k, v in b.items()} for b in batches]

    def run_step(i: int) -> float:
        batch = torch_batches[i % len(torch_batches)]
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch["src"], batch["tgt_in"])
        loss = criterion(logits.reshape(-1, config.vocab_size), batch["labels"].reshape(-1))
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    return Runner("PyTorch", f"torch {torch.__version__} (cpu, {torch.get_num_threads()} threads)", num_params,
                  run_step)


# ------------------------------------------------------------------------------------------------------------
# Report.


def format_config(config: Config) -> str:
    c = config
    return (f"config: D={c.d_model} N={c.num_heads} layers={c.num_layers}+{c.num_layers} d_ff={c.d_ff} "
            f"V={c.vocab_size} B={c.batch_size} S={c.src_len} T={c.tgt_len} dropout={c.dropout} "
            f"label_smoothing={c.label_smoothing} steps={c.steps} warmup={c.warmup} threads={c.threads}; "
            f"{c.tokens_per_step} target tokens/step")


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table, one row per framework."""
    lines = ["| framework | version | params | compile / first step s | median step ms | p10 ms | p90 ms | "
             "target tokens/s | loss first -> last |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.framework} | {r.version} | {r.params:,} | {r.setup_s:.2f} | {1e3 * r.median_s:.1f} | "
                     f"{1e3 * r.percentile(10):.1f} | {1e3 * r.percentile(90):.1f} | {r.tokens_per_s:,.0f} | "
                     f"{r.losses[0]:.3f} -> {r.losses[-1]:.3f} |")
    return "\n".join(lines)


def profile_ops(run_step: Callable[[int], float], trace_dir: str, *, steps: int = 3, first: int = 0,
                top: int = 25) -> list[tuple[str, float, int]]:
    """Traces ``steps`` JAX steps with `jax.profiler` and sums the time of each XLA op (thunk) per step.

    XLA:CPU reports its thunks to the profiler only with ``--xla_cpu_enable_xprof_traceme=true`` in XLA_FLAGS
    (set before the backend starts: `main` does it when --profile_dir is given). The trace is also left in
    ``trace_dir`` for Perfetto (ui.perfetto.dev) or TensorBoard's profile plugin.

    Returns:
      (op name, milliseconds per step, calls per step): first the six most expensive kinds of op ("all
      ynn_fusion*": every op of that name with its number stripped), then the ``top`` most expensive ops; the
      executor's own spans (the whole program, waits) are left out.
    """
    import collections
    import glob
    import gzip
    import re

    import jax

    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for i in range(first, first + steps):
            run_step(i)
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not paths:
        return []
    with gzip.open(paths[-1], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        name = str(event.get("name", ""))
        if event.get("ph") != "X" or "dur" not in event or name.startswith(("$", "Thunk", "Pjit", "Slinky")):
            continue
        total[name] += float(event["dur"])
        calls[name] += 1
    kinds = collections.Counter()
    for name, micros in total.items():
        kinds[re.sub(r"[._]\d+$", "", name)] += micros
    ranked = [(name, micros / 1000.0 / steps, calls[name] // steps) for name, micros in total.most_common(top)]
    by_kind = [(f"all {kind}*", micros / 1000.0 / steps, sum(c for n, c in calls.items()
                                                              if re.sub(r"[._]\d+$", "", n) == kind) // steps)
               for kind, micros in kinds.most_common(6)]
    return by_kind + ranked


def format_profile(ops: Sequence[tuple[str, float, int]], step_ms: float | None) -> str:
    """The --profile_dir table: op, ms per step, share of the median step, calls per step."""
    lines = ["| XLA op (thunk) | ms / step | share of the step | calls / step |", "|---|---:|---:|---:|"]
    for name, ms, count in ops:
        share = f"{100 * ms / step_ms:.1f}%" if step_ms else "-"
        lines.append(f"| {name} | {ms:.1f} | {share} | {count} |")
    return "\n".join(lines)


def run(config: Config, *, skip_torch: bool, interleave: bool = True, output_json: str = "",
        prng: str = "threefry2x32", profile_dir: str = "", profile_top: int = 25) -> dict[str, Any]:
    """Times both frameworks, prints the config, the table and the ratio (and, with ``profile_dir``, the JAX
    step's most expensive XLA ops); returns the JSON record."""
    import jax

    jax.config.update("jax_default_prng_impl", prng)
    wall_start = time.perf_counter()
    print(format_config(config), flush=True)
    xla_flags = os.environ.get("XLA_FLAGS", "")
    xla_threads = "1 thread" if "xla_cpu_multi_thread_eigen=false" in xla_flags else f"{os.cpu_count()} threads"
    print(f"host: {platform.machine()}, {os.cpu_count()} CPUs; XLA:CPU intra-op pool: {xla_threads} "
          f"(XLA_FLAGS={xla_flags!r}); jax_default_prng_impl={prng}", flush=True)
    batches = make_batches(config)
    runners = [prepare_jax(config, batches)]
    torch_note = ""
    if not skip_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_note = ("PyTorch is not installed, so JAX was timed alone; install it with "
                          "`pip install -e '.[bench]'` (or `pip install torch`) to time the twin.")
        else:
            runners.append(prepare_torch(config, batches))
    results = time_runners(runners, config, interleave=interleave)
    print(format_table(results), flush=True)
    ratio = None
    if len(results) == 2:
        ratio = results[0].tokens_per_s / results[1].tokens_per_s
        diff = results[0].params - results[1].params
        print(f"parameters: JAX {results[0].params:,}, PyTorch {results[1].params:,} (difference {diff:+,})")
        print(f"ratio JAX/PyTorch (target tokens/s at the median step): {ratio:.2f}x", flush=True)
    if torch_note:
        print(torch_note, flush=True)
    profile = None
    if profile_dir:
        ops = profile_ops(runners[0].run_step, profile_dir, first=1, top=profile_top)
        profile = [{"op": name, "ms_per_step": ms, "calls_per_step": count} for name, ms, count in ops]
        print(f"JAX step profile ({profile_dir}; 3 traced steps; the ops run on XLA's intra-op threads, so "
              "their times can add up to more than the step):", flush=True)
        print(format_profile(ops, 1000.0 * results[0].median_s), flush=True)
    wall_s = time.perf_counter() - wall_start
    print(f"wall time: {wall_s:.1f} s", flush=True)
    record = dict(config=dataclasses.asdict(config), prng=prng, interleave=interleave,
                  results=[r.to_json() for r in results], ratio_jax_over_torch=ratio, wall_s=wall_s, profile=profile,
                  command=" ".join(sys.argv))
    if output_json:
        with open(output_json, "w") as f:
            json.dump(record, f, indent=2)
    return record


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.threads == 1:
        # Read when the XLA backend starts, which is later (jax is imported in `run`).
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    if FLAGS.profile_dir and "xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_TRACEME).strip()
    run(config_from_flags(), skip_torch=FLAGS.skip_torch, interleave=FLAGS.interleave, output_json=FLAGS.output_json,
        prng=FLAGS.prng, profile_dir=FLAGS.profile_dir, profile_top=FLAGS.profile_top)


if __name__ == "__main__":
    define_flags()
    app.run(main)
