"""Long-context LM with ring attention: T = 32k tokens split over 8 devices, and per-device memory against P.

    python -m experiments.long_context --preset=smoke --workdir=/tmp/long_smoke   # T = 2048 on 4 devices
    python -m experiments.long_context                                            # T = 32768 on 8 devices
    python -m experiments.long_context --config.model.implementation=ulysses --config.mesh.seq=8

What it does, the presets and why: `experiments/configs/long_context.py`. Flags: `experiments/cli.py` (--preset,
--workdir, --data_path, --config.*). Training runs on the shared loop (`experiments/training/loop.py`: logs
with step, loss, tokens/s and ETA; orbax checkpoints; a rerun resumes) with the step of
`attention_jax.sharding.make_train_step`. Outputs in the workdir: results.md, results.jsonl (one record per
memory-table row and one for the training run), metrics.jsonl, loss.png.
"""

from __future__ import annotations

# The experiment compiles for up to 8 sequence-parallel devices: simulate them before jax starts.
from experiments import devices as _devices

_devices.simulate_devices_from_argv(at_least=8)

import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from attention_jax import sharding  # noqa: E402
from attention_jax.dot_product.blockwise import BlockwiseBackend  # noqa: E402
from attention_jax.dot_product.ring import RingBackend  # noqa: E402
from attention_jax.dot_product.ulysses import UlyssesBackend  # noqa: E402
from attention_jax.models.lm import TransformerLM  # noqa: E402
from experiments import cli  # noqa: E402
from experiments import configs  # noqa: E402
from experiments import data  # noqa: E402
from experiments import lm  # noqa: E402
from experiments import plots  # noqa: E402
from experiments import training  # noqa: E402
from experiments.configs import long_context as lc_config  # noqa: E402

FLAGS = flags.FLAGS

EXPERIMENT = training.Experiment(
        name="long_context",
        title="Long-context LM with sequence parallelism (ring attention, arXiv:2310.01889): per-device memory",
        get_config=lc_config.get_config,
        presets=lc_config.PRESETS,
        rows={lc_config.ROW: {}},
        default_rows=(lc_config.ROW,),
        default_preset=lc_config.DEFAULT_PRESET,
        default_workdir="workdirs/long_context",
)

DATA_PATH_HELP = ("a plain UTF-8 text file to model instead of the KJV Bible (one line per sentence or paragraph; "
                  "sets config.data.data_path)")


def _num_kv_heads(m: ml_collections.ConfigDict) -> int:
    return int(m.num_kv_heads) or int(m.num_heads)


def backend(implementation: str, mesh: jax.sharding.Mesh | None):
    """The attention backend of every layer for a mesh (blockwise on one device)."""
    if mesh is None or implementation == "blockwise":
        return BlockwiseBackend()
    if implementation == "ring":
        return RingBackend(mesh=mesh, axis="seq")
    if implementation == "ulysses":
        return UlyssesBackend(mesh=mesh, axis="seq")
    return "xla"


def build_model(cfg: ml_collections.ConfigDict, vocab_size: int, mesh: jax.sharding.Mesh | None) -> TransformerLM:
    m = cfg.model
    return TransformerLM(vocab_size=int(vocab_size), d_model=int(m.d_model), num_heads=int(m.num_heads),
                         num_kv_heads=_num_kv_heads(m), num_layers=int(m.num_layers), d_ff=int(m.d_ff),
                         implementation=backend(m.implementation, mesh))


def make_mesh(seq: int, data_size: int = 1) -> jax.sharding.Mesh | None:
    """A (data, fsdp, model, seq) mesh over the first data * seq devices, or None for one device."""
    if seq * data_size == 1:
        return None
    return sharding.make_mesh(data=data_size, seq=seq, devices=jax.devices()[:seq * data_size])


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the fields the model and data do not check themselves.

    Raises:
      training.ConfigError: naming the field and the fix.
    """
    m, t, e = config.model, config.train, config.eval
    cli._choice("model.implementation", m.implementation, lc_config.IMPLEMENTATIONS)  # pylint: disable=protected-access
    for path, value, minimum in (("model.num_layers", m.num_layers, 1), ("model.num_heads", m.num_heads, 1),
                                 ("model.d_model", m.d_model, 1), ("model.d_ff", m.d_ff, 1),
                                 ("model.num_kv_heads", m.num_kv_heads, 0), ("train.batch_size", t.batch_size, 1),
                                 ("train.segment_len", t.segment_len, 2), ("train.warmup_steps", t.warmup_steps, 1),
                                 ("train.num_steps", t.num_steps, 0), ("train.log_every", t.log_every, 1),
                                 ("train.checkpoint_every", t.checkpoint_every, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise training.ConfigError(f"--config.{path}={value!r} is not valid; fix: use an int >= {minimum}")
    if m.d_model % m.num_heads or m.num_heads % _num_kv_heads(m):
        raise training.ConfigError(f"--config.model.d_model={m.d_model} must be a multiple of num_heads="
                                   f"{m.num_heads}, and num_heads of num_kv_heads={m.num_kv_heads}; fix: change them")
    sizes = training.distributed.mesh_sizes(config)
    if sizes["model"] > 1 or sizes["fsdp"] > 1:
        raise training.ConfigError("this experiment shards the sequence (and optionally the batch): fix: use only "
                                   "--config.mesh.seq and --config.mesh.data")
    needed = sizes["seq"] * sizes["data"]
    degrees = tuple(e.memory_degrees) if isinstance(e.memory_degrees, (tuple, list)) else (e.memory_degrees,)
    if any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in degrees):
        raise training.ConfigError(f"--config.eval.memory_degrees={e.memory_degrees!r} is not valid; fix: use a "
                                   "tuple of ints >= 1, e.g. '(1,2,4,8)'")
    most = max([needed, *degrees])
    if most > jax.device_count():
        raise training.ConfigError(f"the run needs {most} devices but jax sees {jax.device_count()}; fix: on a CPU "
                                   f"set XLA_FLAGS=--xla_force_host_platform_device_count={most} before starting, "
                                   "or lower --config.mesh.seq / --config.eval.memory_degrees")
    if m.implementation in ("ring", "ulysses") and sizes["seq"] < 2:
        raise training.ConfigError(f"--config.model.implementation={m.implementation} needs a sequence axis; fix: "
                                   "set --config.mesh.seq >= 2, or use implementation=blockwise on one device")
    if t.segment_len % (2 * max(sizes["seq"], 1)):
        raise training.ConfigError(f"--config.train.segment_len={t.segment_len} must be a multiple of 2 * mesh.seq = "
                                   f"{2 * sizes['seq']} (the zig-zag chunks of causal ring attention); fix: change it")
    if t.batch_size % sizes["data"]:
        raise training.ConfigError(f"--config.train.batch_size={t.batch_size} must be a multiple of mesh.data="
                                   f"{sizes['data']}; fix: change one of them")


def loss_fn(model: TransformerLM):
    """(params, batch, rng) -> (mean next-token NLL, {"nll_sum", "tokens"}) over the valid positions."""

    def fn(params, batch, rng):
        del rng  # no dropout
        logits = model.apply({"params": params}, batch["tokens"], batch["lengths"])  # [B, T, V] float32
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])  # [B, T]
        valid = jnp.arange(nll.shape[1])[None, :] < batch["lengths"][:, None]
        total = jnp.sum(jnp.where(valid, nll, 0.0))
        count = jnp.sum(valid).astype(jnp.float32)
        return total / jnp.maximum(count, 1.0), {"nll_sum": total, "tokens": count}

    return fn


def _batch_axes(path, leaf):
    del path
    return ("batch", "length")[:leaf.ndim]


def make_step(model, optimizer, mesh, abstract_params):
    """The sharded train step on `mesh` (one device when mesh is None: a 1-device mesh keeps one code path)."""
    mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])
    rules = sharding.rules_for(mesh)
    return sharding.make_train_step(loss_fn(model), optimizer, mesh, rules, abstract_params, batch_axes=_batch_axes)


def abstract_batch(batch: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"tokens": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "targets": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "lengths": jax.ShapeDtypeStruct((batch,), jnp.int32)}


def memory_row(config: ml_collections.ConfigDict, vocab_size: int, degree: int) -> dict[str, Any]:
    """Compiles (does not run) the train step with the sequence over `degree` devices; its per-device memory."""
    t = config.train
    mesh = make_mesh(degree)
    model = build_model(config, vocab_size, mesh)
    tokens = jax.ShapeDtypeStruct((int(t.batch_size), int(t.segment_len)), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
    step = make_step(model, training.make_lm_optimizer(t), mesh, abstract)
    plain = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.meta.unbox(abstract),
                         step.param_shardings)
    opt_state = jax.eval_shape(step.optimizer.init, plain)
    opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt_state,
                             step.opt_state_shardings)
    batch = abstract_batch(int(t.batch_size), int(t.segment_len))
    t0 = time.monotonic()
    with jax.set_mesh(step.mesh):
        compiled = step.compiled(batch).lower(plain, opt_state, batch, jax.random.key(0)).compile()
    memory = compiled.memory_analysis()
    argument, output, temp = (int(getattr(memory, f"{f}_size_in_bytes")) for f in ("argument", "output", "temp"))
    return {"row": f"P={degree}", "degree": degree, "implementation": "blockwise" if mesh is None else
            config.model.implementation, "segment_len": int(t.segment_len), "argument_bytes": argument,
            "output_bytes": output, "temp_bytes": temp, "peak_bytes": argument + output + temp,
            "compile_s": round(time.monotonic() - t0, 1)}


def segments(ids: np.ndarray, batch: int, length: int):
    """Epoch batches: B contiguous streams cut into segments of T inputs and their next-token targets."""
    streams = lm.as_streams(ids, batch)  # [B, n]
    steps = (streams.shape[1] - 1) // length
    for k in range(steps):
        sl = slice(k * length, (k + 1) * length)
        yield {"tokens": streams[:, sl], "targets": streams[:, k * length + 1:(k + 1) * length + 1],
               "lengths": np.full((batch,), length, np.int32)}


def valid_batch(ids: np.ndarray, batch: int, length: int) -> dict[str, np.ndarray]:
    """The first B * T + 1 valid tokens as B rows (the last row padded, lengths marking it, when short)."""
    tokens = np.zeros((batch, length), np.int32)
    targets = np.zeros((batch, length), np.int32)
    lengths = np.zeros((batch,), np.int32)
    for b in range(batch):
        chunk = ids[b * length:(b + 1) * length + 1]
        n = max(0, len(chunk) - 1)
        tokens[b, :n], targets[b, :n], lengths[b] = chunk[:n], chunk[1:n + 1], n
    return {"tokens": tokens, "targets": targets, "lengths": lengths}


def _mib(x: int) -> str:
    return f"{x / 2 ** 20:,.1f}"


def run(config: ml_collections.ConfigDict, workdir: str, *, preset: str = "", command: str = "") -> list[dict]:
    """Trains (or resumes) the ring-attention LM, tabulates per-device memory by P and writes the report."""
    training.quiet_orbax_logging()
    started = time.monotonic()
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"experiment": EXPERIMENT.name, "preset": preset, "config": config.to_dict()}, f, indent=2,
                  sort_keys=True, default=list)
    if command:
        with open(os.path.join(workdir, "command.txt"), "w", encoding="utf-8") as f:
            f.write(command + "\n")
    flat = configs.flatten(config)
    training.check_resumable(EXPERIMENT, lc_config.ROW, flat, workdir)
    t, sizes = config.train, training.distributed.mesh_sizes(config)
    batch, length = int(t.batch_size), int(t.segment_len)
    lm_data = lm.prepare_stream(config.data, lm.tokenizer_dir(config.data, workdir))
    vocab = lm_data.tokenizer.vocab_size
    logging.info("data %s: %d / %d tokens (train / valid), vocabulary %d", lm_data.source, len(lm_data.train.ids),
                 len(lm_data.valid.ids), vocab)
    if len(lm_data.train.ids) < batch * length + 1:
        raise training.ConfigError(f"the train split has {len(lm_data.train.ids)} tokens, fewer than one batch of "
                                   f"{batch} x {length}; fix: lower --config.train.segment_len or batch_size")

    records = []
    for degree in config.eval.memory_degrees:
        row = memory_row(config, vocab, int(degree))
        records.append(row)
        logging.info("memory P=%d (%s): %s MiB per device (temp %s MiB), compiled in %.1f s", degree,
                     row["implementation"], _mib(row["peak_bytes"]), _mib(row["temp_bytes"]), row["compile_s"])

    mesh = make_mesh(sizes["seq"], sizes["data"])
    model = build_model(config, vocab, mesh)
    optimizer = training.make_lm_optimizer(t)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    example = jnp.zeros((batch, length), jnp.int32)
    abstract = jax.eval_shape(model.init, init_rng, example)["params"]
    step = make_step(model, optimizer, mesh, abstract)
    params = sharding.sharded_init(model, step.mesh, step.rules, init_rng, example)["params"]
    opt_state = step.init_opt_state(params)
    logging.info("training on %s: %s, T=%d, B=%d", training.distributed.describe(mesh), config.model.implementation,
                 length, batch)

    def step_fn(params, opt_state, carry, batch_, rng):
        params, opt_state, metrics = step(params, opt_state, batch_, rng)
        return params, opt_state, carry, metrics["nll_sum"], metrics["tokens"]

    def epoch_batches(epoch: int):
        del epoch
        for b in segments(lm_data.train.ids, batch, length):
            yield b, float(batch * length)

    valid = valid_batch(lm_data.valid.ids, batch, length)
    evaluate_step = jax.jit(lambda p, b: loss_fn(model)(p, b, None)[1])

    def valid_perplexity(params) -> dict[str, float]:
        with jax.set_mesh(step.mesh):
            metrics = evaluate_step(params, valid)
        nll = float(metrics["nll_sum"]) / max(float(metrics["tokens"]), 1.0)
        return {"dev_ppl": math.exp(min(nll, 50.0))}

    outcome = training.train_loop(step_fn, params, opt_state, epoch_batches, train_config=t, run_dir=workdir,
                                  rng=step_rng, evaluate=valid_perplexity, eval_at_end=True, label=lc_config.ROW)
    train_record = {"row": lc_config.ROW, "implementation": config.model.implementation, "mesh": sizes,
                    "segment_len": length, "batch_size": batch, "steps": outcome.steps,
                    "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason,
                    "dev_ppl": outcome.last_eval["dev_ppl"] if outcome.last_eval else None,
                    "valid_tokens": int(valid["lengths"].sum()), "seed": config.seed,
                    "machine": training.machine_description()}
    records.append(train_record)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    figure = os.path.join(workdir, "loss.png")
    plots.loss_curves({lc_config.ROW: metrics}, figure,
                      title=f"T={length}, {config.model.implementation} on {training.distributed.describe(mesh)}")
    wall = (time.monotonic() - started) / 60
    lines = [f"# {EXPERIMENT.title}", "", f"Command: `{command}`", "",
             f"Machine: {training.machine_description()}; jax {jax.__version__}; {jax.device_count()} "
             f"{jax.default_backend()} devices; wall time {wall:.1f} min.", "",
             "## Per-device memory of one train step against the sequence-parallel degree P", "",
             f"T = {length} tokens, B = {batch}, model {config.model.num_layers} layers, D={config.model.d_model}, "
             f"N={config.model.num_heads}; P = 1 is blockwise attention on one device, P > 1 is "
             f"{config.model.implementation} over P devices. Memory from XLA's buffer assignment of the compiled "
             "step (compiled.memory_analysis(): arguments + outputs + temporaries of one device).", "",
             "| P | attention | peak MiB / device | temp MiB | args MiB | peak x P / peak(P=1) |",
             "|---:|---|---:|---:|---:|---:|"]
    base = next((r["peak_bytes"] for r in records if r.get("degree") == 1), None)
    for r in records:
        if "degree" in r:
            ratio = "" if base is None else f"{r['peak_bytes'] * r['degree'] / base:.2f}"
            lines.append(f"| {r['degree']} | {r['implementation']} | {_mib(r['peak_bytes'])} | {_mib(r['temp_bytes'])}"
                         f" | {_mib(r['argument_bytes'])} | {ratio} |")
    lines += ["", "## Training", "",
              f"{outcome.steps} steps of T={length} on {training.distributed.describe(mesh)} in "
              f"{outcome.minutes:.1f} min ({outcome.stop_reason}); final valid ppl "
              f"{train_record['dev_ppl'] if train_record['dev_ppl'] is None else round(train_record['dev_ppl'], 1)} "
              f"on the first {train_record['valid_tokens']} valid tokens. Loss per step: metrics.jsonl; "
              f"curve: loss.png. Seed {config.seed}. The simulated devices share the host's cores: the time is not "
              "a scaling result.", ""]
    text = "\n".join(lines)
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(workdir, "results.jsonl"), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(text, flush=True)
    return records


def main(argv: list[str]) -> None:
    """Builds the config from the flags, validates it and runs the experiment."""
    if len(argv) > 1:
        cli.fail(f"unexpected positional argument {argv[1]!r}; fix: pass options as --flag=value (see --help)")
    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.INFO)
    try:
        cli.parse_rows(EXPERIMENT, FLAGS.rows)
        overrides = dict(config_flags.get_override_values(FLAGS["config"]))
        if FLAGS.data_path:
            overrides["data.data_path"] = FLAGS.data_path
        config = cli.build_config(EXPERIMENT, FLAGS.preset, overrides)
        validate(config)
        cli.warn_sparse_evaluation({lc_config.ROW: config.train}, what="valid perplexity", at_end=True)
        training.enable_compilation_cache()
        run(config, FLAGS.workdir, preset=FLAGS.preset, command=cli.command_line(EXPERIMENT, sys.argv))
    except (training.ConfigError, data.DataError) as err:
        cli.fail(str(err))
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume {FLAGS.workdir} from its last checkpoint",
              file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    cli.define_flags(EXPERIMENT, data_path_help=DATA_PATH_HELP)
    app.run(main, flags_parser=functools.partial(cli._parse_flags, EXPERIMENT))  # pylint: disable=protected-access
