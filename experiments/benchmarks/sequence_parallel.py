"""Sequence-parallel attention benchmark: ring and Ulysses against single-device blockwise, per-device memory.

    python -m experiments.benchmarks.sequence_parallel                  # S 4k..64k, P 1, 2, 4, 8 (about 30 min)
    python -m experiments.benchmarks.sequence_parallel --preset=smoke   # S 1k, 2k; P 1, 2, 4 (about a minute)

What is measured: causal self-attention (T = S) in float32, layout [B, S, N, H] with B = 1, N = K = 8,
H = 64 (`--num_heads`, `--num_kv_heads`, `--head_dim`), the sequence split over a ("seq",) mesh of P devices:
  blockwise  P = 1 only: `dot_product_attention(implementation=BlockwiseBackend())` on one device, the baseline.
  ring       `RingBackend(mesh=mesh)`: keys and values rotate around the P devices (zig-zag causal balance),
             blockwise inside each hop.
  ulysses    `UlyssesBackend(mesh=mesh)`: all-to-all from sequence- to head-sharded, blockwise on the whole
             sequence with N / P heads, all-to-all back.
Passes: `fwd` = jit(f)(q, k, v) and `fwd+bwd` = jit(grad(sum(f))) w.r.t. q, k and v.

Memory, per device, from XLA's buffer assignment of the compiled (SPMD-partitioned) program:
`compiled.memory_analysis()` gives the argument, output and temporary bytes of ONE device's program; the
table's "peak MiB" is their sum (an upper bound on what the program holds live at once, code excluded). It
needs only a compile, so it is reported for every cell. The inputs are sharded along S, so the argument bytes
alone fall as 1/P; the point of the table is that the temporaries do too.

Time: the median of `--iters` calls after one warm-up, wall clock, for S <= `--time_max_len` only. The P
simulated devices are threads of one 2-core CPU (XLA_FLAGS=--xla_force_host_platform_device_count, set here
before jax starts), so more devices do NOT mean more compute: the times say what the scheme costs on shared
cores, not how it scales on real accelerators.

Output: the device, jax version and command, then a Markdown table on stdout and in `--out` (default
`experiments/benchmarks/results/sequence_parallel.md`), and one JSON object per cell in the .jsonl beside it.
"""

from __future__ import annotations

import os
import re
import sys

# Simulated CPU devices must be configured before jax starts.
_DEVICES = 8
for _arg in sys.argv[1:]:
    _match = re.fullmatch(r"--devices=(\d+)", _arg)
    if _match:
        _DEVICES = int(_match.group(1))
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "") and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_DEVICES}").strip()

import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from attention_jax.dot_product import api  # noqa: E402
from attention_jax.dot_product.blockwise import BlockwiseBackend  # noqa: E402
from attention_jax.dot_product.ring import RingBackend  # noqa: E402
from attention_jax.dot_product.ulysses import UlyssesBackend  # noqa: E402

FLAGS = flags.FLAGS
_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_PRESETS = {
    "full": dict(seq_lens=[4096, 8192, 16384, 32768, 65536], degrees=[1, 2, 4, 8], time_max_len=16384),
    "smoke": dict(seq_lens=[1024, 2048], degrees=[1, 2, 4], time_max_len=2048),
}


def define_flags() -> None:
    """The benchmark's flags (defined only when it runs as a script)."""
    flags.DEFINE_enum("preset", "full", list(_PRESETS), "full: S 4k..64k, P 1..8; smoke: tiny, about a minute.")
    flags.DEFINE_integer("devices", _DEVICES, "simulated CPU devices (read before jax starts).")
    flags.DEFINE_list("seq_lens", None, "S = T values (default: the preset's).")
    flags.DEFINE_list("degrees", None, "sequence-parallel degrees P (default: the preset's).")
    flags.DEFINE_list("impls", ["ring", "ulysses"], "sequence-parallel implementations (P > 1).")
    flags.DEFINE_list("passes", ["fwd", "fwd+bwd"], "fwd and/or fwd+bwd.")
    flags.DEFINE_integer("batch", 1, "B.")
    flags.DEFINE_integer("num_heads", 8, "N.")
    flags.DEFINE_integer("num_kv_heads", 8, "K.")
    flags.DEFINE_integer("head_dim", 64, "H.")
    flags.DEFINE_bool("causal", True, "causal self-attention.")
    flags.DEFINE_integer("block_k", 512, "keys per blockwise chunk (inside every scheme).")
    flags.DEFINE_integer("time_max_len", None, "time cells up to this S; longer ones report memory only.")
    flags.DEFINE_integer("iters", 2, "timed calls per cell after one warm-up (median reported).")
    flags.DEFINE_string("out", None, "Markdown output (default experiments/benchmarks/results/sequence_parallel"
                        "[_smoke].md); the JSON lines go beside it.")


def _backend(impl: str, mesh: Mesh | None, block_k: int):
    inner = BlockwiseBackend(block_k=block_k)
    if impl == "blockwise":
        return inner
    if impl == "ring":
        return RingBackend(mesh=mesh, axis="seq", inner=inner)
    if impl == "ulysses":
        return UlyssesBackend(mesh=mesh, axis="seq", inner=inner)
    raise ValueError(f"unknown implementation {impl!r}; choose ring or ulysses")


def _function(backend, causal: bool, pass_name: str) -> Callable:
    def forward(q, k, v):
        return api.dot_product_attention(q, k, v, is_causal=causal, implementation=backend)

    if pass_name == "fwd":
        return forward
    return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v)), argnums=(0, 1, 2))


def measure(impl: str, seq_len: int, degree: int, pass_name: str, *, time_it: bool) -> dict[str, Any]:
    """One cell: compile, read the per-device memory, and (if asked) time it."""
    b, n, kh, h = FLAGS.batch, FLAGS.num_heads, FLAGS.num_kv_heads, FLAGS.head_dim
    mesh = Mesh(np.array(jax.devices()[:degree]), ("seq",)) if impl != "blockwise" else None
    backend = _backend(impl, mesh, FLAGS.block_k)
    fn = _function(backend, FLAGS.causal, pass_name)
    sharding = (NamedSharding(mesh, PartitionSpec(None, "seq", None, None)) if mesh is not None
                else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    shapes = [jax.ShapeDtypeStruct((b, seq_len, heads, h), jnp.float32, sharding=sharding) for heads in (n, kh, kh)]
    record: dict[str, Any] = dict(impl=impl, seq_len=seq_len, degree=degree, pass_=pass_name, batch=b, heads=n,
                                  kv_heads=kh, head_dim=h, causal=FLAGS.causal)
    ok, reason = api.supports(backend, *shapes, is_causal=FLAGS.causal)
    if not ok:
        record["error"] = f"unsupported: {reason}"
        return record
    t0 = time.perf_counter()
    try:
        compiled = jax.jit(fn).lower(*shapes).compile()
    except Exception as exc:  # pylint: disable=broad-except
        record["error"] = f"compile failed: {' '.join(str(exc).split())[:160]}"
        return record
    record["compile_s"] = round(time.perf_counter() - t0, 2)
    memory = compiled.memory_analysis()
    for field in ("argument", "output", "temp"):
        record[f"{field}_bytes"] = int(getattr(memory, f"{field}_size_in_bytes"))
    record["peak_bytes"] = record["argument_bytes"] + record["output_bytes"] + record["temp_bytes"]
    if time_it:
        rng = np.random.default_rng(0)
        args = [jax.device_put(rng.standard_normal(s.shape, np.float32), sharding) for s in shapes]
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(FLAGS.iters):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        record["time_s"] = round(statistics.median(times), 4)
    return record


def _mib(x: Any) -> str:
    return "" if x is None else f"{x / 2 ** 20:,.1f}"


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown table of the cells."""
    lines = ["| pass | S | impl | P | peak MiB / device | temp MiB | args MiB | time s | note |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in records:
        time_s = r.get("time_s")
        lines.append(f"| {r['pass_']} | {r['seq_len']:,} | {r['impl']} | {r['degree']} | {_mib(r.get('peak_bytes'))} | "
                     f"{_mib(r.get('temp_bytes'))} | {_mib(r.get('argument_bytes'))} | "
                     f"{'' if time_s is None else f'{time_s:.3f}'} | {r.get('error', '')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    preset = _PRESETS[FLAGS.preset]
    seq_lens = [int(x) for x in FLAGS.seq_lens] if FLAGS.seq_lens else preset["seq_lens"]
    degrees = [int(x) for x in FLAGS.degrees] if FLAGS.degrees else preset["degrees"]
    time_max_len = FLAGS.time_max_len if FLAGS.time_max_len is not None else preset["time_max_len"]
    if max(degrees) > jax.device_count():
        print(f"error: --degrees asks for {max(degrees)} devices but jax sees {jax.device_count()}; fix: pass "
              f"--devices={max(degrees)} (simulated CPU devices)", file=sys.stderr)
        sys.exit(2)
    for name in FLAGS.passes:
        if name not in ("fwd", "fwd+bwd"):
            print(f"error: --passes={name} is not fwd or fwd+bwd; fix: --passes=fwd,fwd+bwd", file=sys.stderr)
            sys.exit(2)
    command = "python -m experiments.benchmarks.sequence_parallel " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    suffix = "" if FLAGS.preset == "full" else f"_{FLAGS.preset}"
    out = FLAGS.out or os.path.join(_RESULTS, f"sequence_parallel{suffix}.md")
    records = []
    start = time.perf_counter()
    for pass_name in FLAGS.passes:
        for seq_len in seq_lens:
            cells = [("blockwise", 1)] if 1 in degrees else []
            cells += [(impl, p) for p in degrees if p > 1 for impl in FLAGS.impls]
            for impl, degree in cells:
                record = measure(impl, seq_len, degree, pass_name, time_it=seq_len <= time_max_len)
                records.append(record)
                print(json.dumps(record), flush=True)
    header = [
        "# Sequence-parallel attention: per-device memory and time",
        "",
        f"Command: `{command}`",
        f"Device: {jax.device_count()} simulated CPU devices ({jax.devices()[0].device_kind}) on a "
        f"{os.cpu_count()}-core host; jax {jax.__version__}; wall time {time.perf_counter() - start:.0f} s.",
        f"Shapes: B={FLAGS.batch} N={FLAGS.num_heads} K={FLAGS.num_kv_heads} H={FLAGS.head_dim} float32, "
        f"causal={FLAGS.causal}, blockwise block_k={FLAGS.block_k}. Peak = arguments + outputs + temporaries of one "
        "device's compiled program (memory_analysis). Times share 2 cores among all devices: they are not scaling.",
        "",
    ]
    markdown = "\n".join(header) + table(records) + "\n"
    print(markdown)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(markdown)
    with open(os.path.splitext(out)[0] + ".jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**r, "command": command, "jax": jax.__version__}) + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
