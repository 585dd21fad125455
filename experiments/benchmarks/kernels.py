"""Attention kernel benchmark: `python -m experiments.benchmarks.kernels` (GPU and CPU modes).

GPU (one command, from the repository root, on e.g. an H100 with jax 0.11 + CUDA):

    python -m experiments.benchmarks.kernels --mode=gpu

  (`--mode` defaults to `gpu` when `jax.default_backend() == "gpu"`, else `cpu`.) Subsets: `--head_dims=128
  --seq_lens=4096,8192 --causal=true --impls=flash,cudnn`; a quick check: `--preset=smoke`. Without a GPU,
  `--mode=gpu` exits with status 2 and one line on stderr.

  What is measured: bf16 self-attention (T = S), layout [B, S, N, H], for H in {64, 128}, S in {512, ..., 16k},
  causal in {False, True}; B * S = `--tokens` (16384, so B = 16384 / S, at least 1) and N = 16 for H = 128,
  N = 32 for H = 64 (`--num_heads` overrides), i.e. N * H = 2048 as in the FlashAttention-2 benchmarks.
  Implementations, side by side in one run; each is optional and a failure (import, lowering, compile,
  shared memory, out of memory, an unsupported case) becomes "n/a (reason)" in its cell:
    flash          attention_jax.kernels.flash.flash_attention(kernel=None): the Triton-lowered kernels on a GPU
    flash_mgpu     the same with kernel="mosaic_gpu": the Hopper forward in Mosaic GPU, the Triton backward
    xla            jax.nn.dot_product_attention(implementation="xla")
    cudnn          jax.nn.dot_product_attention(implementation="cudnn")
    pallas_triton  jax.experimental.pallas.ops.gpu.attention.mha (segment_ids=None, sm_scale=1/sqrt(H))
    pallas_mgpu    jax.experimental.pallas.ops.gpu.attention_mgpu.attention with a TuningConfig (block_q=64,
                   the first of block_kv 256/128/64 that compiles, max_concurrent_steps=2; backward blocks 64);
                   its backward raises NotImplementedError for causal, reported as n/a. Its shared-memory
                   staging is float16: if bf16 does not lower, it is timed on float16 inputs (cells marked
                   "f16"; same shapes and FLOPs). This kernel applies no
                   1/sqrt(H) scale (its reference does not either); the FLOP count is the same.
  Passes: `fwd` = jit(f)(q, k, v); `fwd+bwd` = jit(out, vjp(dout)) of jax.vjp(f, q, k, v) with a random
  cotangent dout; `bwd` = time(fwd+bwd) - time(fwd) (derived, not timed alone).

  FLOPs (the FlashAttention convention, matmuls only): fwd = 4 * B * S * S * N * H, halved when causal;
  bwd = 2.5 * fwd; fwd+bwd = 3.5 * fwd. TFLOP/s = flops / seconds / 1e12. The speedup column is
  time(cudnn) / time(flash) per pass (> 1: the project kernel is faster).

  Timing: JAX exposes no CUDA events API. The default `--timer=cupti` uses jax's own kernel profiler
  (`jax.experimental.mosaic.gpu.profiler.measure`, the one jax's attention_mgpu benchmark uses): CUPTI records
  device-side start/end timestamps of every kernel the jitted function launches, and one iteration's time is
  the sum of its kernel durations (host dispatch and inter-kernel gaps excluded). Each function is compiled,
  run twice (warm-up), then measured over `--iters` (>= 10) iterations; the median is reported. Where CUPTI is
  unavailable or fails, or with `--timer=wall`, each of the `--iters` calls is timed with `time.perf_counter`
  around the call and `jax.block_until_ready` (host wall clock, dispatch included; negligible at these sizes)
  and the median is reported; such cells carry a `*`.

CPU (`--mode=cpu`): `attention_jax.dot_product.blockwise.blockwise_attention(block_k=--block_k)` against
  `attention_jax.dot_product_attention(implementation="xla")`, forward + backward: jit(jax.grad(sum(f(q, k, v)),
  argnums=(0, 1, 2))), B = 1, N = 8, H = 64, float32, S = T in `--seq_lens` (1k ... 32k). Each (impl, S) runs in
  a fresh child process (`--mode=cpu_child`) so its memory is its own:
    * peak RSS: the child's `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end (compile and run included);
      "RSS delta" subtracts the same value taken after imports and input creation (before compiling);
    * compiled temp: `jax.jit(g).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes`;
    * time: median of `--cpu_iters` timed calls after one warm-up (default 5 for S <= 4k, 3 for S <= 16k, else 2).
  Memory guard: after compiling and before running anything, the child estimates the program's memory as
  2 * (temp + arguments + outputs) from memory_analysis, and for xla at least 10 * B * N * S^2 * 4 bytes (on
  XLA:CPU the measured peak RSS growth was ~1.8x memory_analysis' total, ~9 score-sized f32 arrays for xla at
  S = 2k and 4k; so with N = 8 xla at S = 8k needs ~20 GiB and is skipped under the default limit); when that
  exceeds min(`--memory_limit_gib`, MemAvailable) it reports "skipped: needs X GiB > Y GiB available" and runs
  nothing. A child past `--child_timeout_s` is killed and reported, as is a child killed by a signal.
  `--preset=smoke`: S in {256, 512}, N = 2, 2 iterations (well under a minute on 2 cores).

Output (both modes): the device, jax version and command, then a Markdown table on stdout and in `--out`
(default `experiments/benchmarks/results/kernels_<mode>.md`, beside this file), and one JSON object per
measurement in the `.jsonl` next to it.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

GPU_IMPLS = ("flash", "flash_mgpu", "xla", "cudnn", "pallas_triton", "pallas_mgpu")
CPU_IMPLS = ("blockwise", "xla")
GPU_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
CPU_SEQ_LENS = (1024, 2048, 4096, 8192, 16384, 32768)
CHILD_MARKER = "KERNEL_BENCHMARK_RESULT "
GIB = 2.0 ** 30
RSS_SAFETY = 2.0  # cpu memory guard: estimate = RSS_SAFETY * (temp + arguments + outputs) ...
XLA_SCORE_COPIES = 10  # ... and, for xla, at least this many float32 [B, N, T, S] arrays
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The repository root, put on the children's PYTHONPATH so that `-m experiments.benchmarks.kernels` resolves
# from any working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def define_flags() -> None:
    """Defines this script's flags (only when it runs as a script, so that importing it defines none)."""
    flags.DEFINE_enum("mode", None, ["gpu", "cpu", "cpu_child"],
                      "gpu or cpu; default gpu when jax.default_backend() == 'gpu', else cpu. cpu_child is internal.")
    flags.DEFINE_enum("preset", "full", ["full", "smoke"], "smoke: tiny sizes for a quick check.")
    flags.DEFINE_string("out", None, "Markdown output; default experiments/benchmarks/results/kernels_<mode>.md. "
                        "The .jsonl goes next to it.")
    flags.DEFINE_list("seq_lens", None, "S = T values; default 512..16384 (gpu), 1024..32768 (cpu).")
    # GPU mode.
    flags.DEFINE_list("head_dims", ["64", "128"], "gpu: head dims H.")
    flags.DEFINE_list("causal", ["false", "true"], "gpu: causal values.")
    flags.DEFINE_list("impls", None, "gpu: implementations (default all): flash, flash_mgpu, xla, cudnn, "
                      "pallas_triton, pallas_mgpu. cpu: blockwise, xla.")
    flags.DEFINE_list("passes", ["fwd", "fwd+bwd"], "gpu: passes to time (bwd is derived when both run).")
    flags.DEFINE_integer("tokens", 16384, "gpu: B * S; B = max(1, tokens // S).")
    flags.DEFINE_integer("num_heads", None, "N; default gpu: 2048 // H (16 for H=128, 32 for H=64); cpu: 8 "
                         "(smoke: 2).")
    flags.DEFINE_integer("iters", 10, "gpu: timed iterations per cell (median reported).")
    flags.DEFINE_integer("warmup", 2, "gpu: untimed runs after compiling.")
    flags.DEFINE_enum("timer", "cupti", ["cupti", "wall"], "gpu: CUPTI kernel timestamps (fallback wall) or wall.")
    # CPU mode.
    flags.DEFINE_integer("block_k", 512, "cpu: blockwise_attention key chunk.")
    flags.DEFINE_integer("batch", 1, "cpu: B.")
    flags.DEFINE_integer("head_dim", 64, "cpu: H.")
    flags.DEFINE_integer("cpu_iters", None, "cpu: timed iterations after one warm-up; default 5 (S <= 4k), "
                         "3 (S <= 16k), 2 (larger); smoke: 2.")
    flags.DEFINE_float("memory_limit_gib", 20.0, "cpu: skip a config whose estimated memory exceeds this (or "
                       "MemAvailable, if smaller).")
    flags.DEFINE_float("child_timeout_s", 3600.0, "cpu: wall-clock limit per child process.")
    # cpu_child (internal).
    flags.DEFINE_string("child_impl", None, "cpu_child: blockwise or xla.")
    flags.DEFINE_integer("child_seq_len", None, "cpu_child: S.")


# ----------------------------------------------------------------------------------------------------------
# Shared helpers.

def attention_flops(batch: int, seq_q: int, seq_k: int, num_heads: int, head_dim: int, causal: bool,
                    pass_: str = "fwd") -> float:
    """Matmul FLOPs: fwd = 4 B T S N H (halved when causal), bwd = 2.5 fwd, fwd+bwd = 3.5 fwd."""
    fwd = 4.0 * batch * seq_q * seq_k * num_heads * head_dim
    if causal:
        fwd /= 2.0
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[pass_]
    return fwd * factor


def tflops(flops: float, seconds: float | None) -> float | None:
    return None if not seconds else flops / seconds / 1e12


def _short(exc: BaseException, limit: int = 140) -> str:
    message = str(exc)
    if not message:  # e.g. a bare assert: name where it was raised
        frames = traceback.extract_tb(exc.__traceback__)
        message = f"at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "no message"
    text = f"{type(exc).__name__}: {message}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _command() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), "-m",
                                            "experiments.benchmarks.kernels", *sys.argv[1:]])


def _out_paths(mode: str) -> tuple[str, str]:
    md = FLAGS.out or os.path.join(RESULTS_DIR, f"kernels_{mode}.md")
    return md, os.path.splitext(md)[0] + ".jsonl"


def _write_outputs(mode: str, markdown: str, records: list[dict]) -> None:
    md_path, jsonl_path = _out_paths(mode)
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(markdown)
    with open(jsonl_path, "w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    print(f"\nwrote {md_path} and {jsonl_path}")


def _header(mode: str, device: str) -> list[str]:
    import jax
    return [f"# Attention kernel benchmark ({mode})", "",
            f"- device: {device}",
            f"- jax {jax.__version__}, python {platform.python_version()}, {platform.machine()}",
            f"- command: `{_command()}`",
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}", ""]


def _int_list(values, default) -> list[int]:
    return [int(v) for v in values] if values else list(default)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "t"):
        return True
    if text.lower() in ("0", "false", "no", "f"):
        return False
    raise app.UsageError(f"not a boolean: {text!r}")


# ----------------------------------------------------------------------------------------------------------
# GPU mode.

def _gpu_builders() -> dict[str, Callable[[int, bool], Callable]]:
    """name -> build(head_dim, causal) returning f(q, k, v) -> out; imports happen inside (may raise)."""

    def flash(kernel):
        def build(head_dim, causal):
            from attention_jax.core.masks import AttentionMask
            from attention_jax.kernels.flash import flash_attention
            return functools.partial(flash_attention, mask=AttentionMask(is_causal=causal), kernel=kernel)
        return build

    def nn(implementation):
        def build(head_dim, causal):
            import jax
            return functools.partial(jax.nn.dot_product_attention, is_causal=causal,
                                     implementation=implementation)
        return build

    def pallas_triton(head_dim, causal):
        from jax.experimental.pallas.ops.gpu import attention as pallas_attention
        scale = 1.0 / math.sqrt(head_dim)
        return lambda q, k, v: pallas_attention.mha(q, k, v, None, sm_scale=scale, causal=causal)

    def pallas_mgpu(head_dim, causal):
        from jax.experimental.pallas.ops.gpu import attention_mgpu
        # Candidates in the order of attention_mgpu.main's search; `_GpuCase` keeps the first that compiles.
        configs = [attention_mgpu.TuningConfig(block_q=64, block_kv=block_kv, max_concurrent_steps=2,
                                               causal=causal, block_q_dkv=64, block_kv_dkv=64, block_q_dq=64,
                                               block_kv_dq=64)
                   for block_kv in (256, 128, 64)]
        return [functools.partial(attention_mgpu.attention, config=c) for c in configs]

    pallas_mgpu.float16_fallback = True

    return {"flash": flash(None), "flash_mgpu": flash("mosaic_gpu"), "xla": nn("xla"), "cudnn": nn("cudnn"),
            "pallas_triton": pallas_triton, "pallas_mgpu": pallas_mgpu}


def _device_memory_bytes() -> int | None:
    import jax
    try:
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("bytes_limit")
    except Exception:  # noqa: BLE001
        return None


def _compile(fn: Callable, args) -> Any:
    """jit + lower + compile; raises MemoryError when the compiled temp memory cannot fit the device."""
    import jax
    compiled = jax.jit(fn).lower(*args).compile()
    limit = _device_memory_bytes()
    try:
        analysis = compiled.memory_analysis()
        need = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    except Exception:  # noqa: BLE001
        need = None
    if limit and need and need > limit:
        raise MemoryError(f"needs {need / GIB:.1f} GiB > {limit / GIB:.1f} GiB device memory")
    return compiled


def _time_gpu(compiled, args) -> tuple[float, str]:
    """Median seconds of one call, and the timer used ("cupti" or "wall")."""
    import jax
    for _ in range(FLAGS.warmup):
        jax.block_until_ready(compiled(*args))
    iters = max(1, FLAGS.iters)
    if FLAGS.timer == "cupti":
        try:
            from jax.experimental.mosaic.gpu import profiler
            _, ms = profiler.measure(compiled, iterations=iters)(*args)
            if ms is not None:
                ms = ms if isinstance(ms, list) else [ms]
                return float(np.median(ms)) / 1e3, "cupti"
        except Exception:  # noqa: BLE001  (no CUPTI, or a CUPTI subscriber already attached: fall back)
            pass
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), "wall"


def _fwd_bwd(fn):
    import jax

    def fwd_bwd(q, k, v, d_out):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(d_out)
    return fwd_bwd


def _measure_gpu_impl(build, head_dim, causal, args, passes) -> dict[str, dict]:
    """{pass: {"seconds", "timer"} or {"error"}} for one implementation and one shape."""
    q, k, v, d_out = args
    results: dict[str, dict] = {}
    try:
        candidates = build(head_dim, causal)
    except Exception as exc:  # noqa: BLE001
        return {p: {"error": _short(exc)} for p in passes}
    candidates = candidates if isinstance(candidates, list) else [candidates]
    fwd_compiled, fn, error, dtype = None, None, None, "bfloat16"
    # attention_mgpu stages q/k/v through float16 shared memory; if bf16 does not lower, time it on float16
    # inputs (same shapes and FLOPs), marked "f16" in its cells.
    dtypes = ("bfloat16", "float16") if getattr(build, "float16_fallback", False) else ("bfloat16",)
    for dtype in dtypes:
        if dtype != "bfloat16":
            args = tuple(a.astype(dtype) for a in args)
            q, k, v, d_out = args
        for candidate in candidates:  # the first candidate whose forward compiles
            try:
                fwd_compiled = _compile(candidate, (q, k, v))
                fn = candidate
                break
            except Exception as exc:  # noqa: BLE001
                error = error or exc  # keep the first (bf16) reason
        if fn is not None:
            break
    if fn is None:
        return {p: {"error": _short(error)} for p in passes}
    for pass_ in passes:
        try:
            if pass_ == "fwd":
                seconds, timer = _time_gpu(fwd_compiled, (q, k, v))
            else:
                seconds, timer = _time_gpu(_compile(_fwd_bwd(fn), args), args)
            results[pass_] = {"seconds": seconds, "timer": timer, "dtype": dtype}
        except Exception as exc:  # noqa: BLE001
            results[pass_] = {"error": _short(exc)}
    return results


def _cell(entry: dict | None, flops: float) -> str:
    if entry is None:
        return ""
    if "error" in entry:
        return f"n/a ({entry['error']})"
    mark = ("*" if entry.get("timer") == "wall" else "") + (" f16" if entry.get("dtype") == "float16" else "")
    return f"{tflops(flops, entry['seconds']):.4g} ({entry['seconds'] * 1e3:.4g} ms){mark}"


def run_gpu() -> int:
    import jax
    import jax.numpy as jnp

    if jax.default_backend() != "gpu":
        print(f"experiments.benchmarks.kernels --mode=gpu needs a GPU, but jax's default backend is "
              f"'{jax.default_backend()}' (devices: {jax.devices()}). Use --mode=cpu here.", file=sys.stderr)
        return 2
    smoke = FLAGS.preset == "smoke"
    seq_lens = _int_list(FLAGS.seq_lens, (512, 1024) if smoke else GPU_SEQ_LENS)
    head_dims = _int_list(FLAGS.head_dims if not (smoke and not FLAGS["head_dims"].present) else ["64"], ())
    causals = [_bool(c) for c in FLAGS.causal]
    builders = _gpu_builders()
    impls = FLAGS.impls or list(GPU_IMPLS)
    unknown = sorted(set(impls) - set(builders))
    if unknown:
        raise app.UsageError(f"unknown --impls {unknown}; choose from {list(GPU_IMPLS)}")
    passes = [p for p in FLAGS.passes]
    if not set(passes) <= {"fwd", "fwd+bwd"}:
        raise app.UsageError("--passes takes fwd and/or fwd+bwd")
    if smoke and not FLAGS["iters"].present:
        FLAGS.iters = 3
    if FLAGS.iters < 10 and not smoke:
        print(f"warning: --iters={FLAGS.iters} < 10", file=sys.stderr)

    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {len(jax.devices())} visible)"
    try:
        from attention_jax.kernels.flash import default_kernel
        resolved = default_kernel()
    except Exception as exc:  # noqa: BLE001
        resolved = f"n/a ({_short(exc)})"
    lines = _header("gpu", device) + [
        f"- bfloat16, T = S, B = max(1, {FLAGS.tokens} // S), N = {FLAGS.num_heads or '2048 // H'}; "
        f"flash = flash_attention(kernel=None) -> {resolved!r} here; flash_mgpu = kernel='mosaic_gpu' "
        f"(its backward is the Triton one)", ""]
    print("\n".join(lines), flush=True)
    records, rows = [], []
    table_passes = passes + (["bwd"] if {"fwd", "fwd+bwd"} <= set(passes) else [])
    rng = np.random.default_rng(0)
    for head_dim in head_dims:
        num_heads = FLAGS.num_heads or max(1, 2048 // head_dim)
        for seq_len in seq_lens:
            batch = max(1, FLAGS.tokens // seq_len)
            shape = (batch, seq_len, num_heads, head_dim)
            args = tuple(jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype=jnp.bfloat16)
                         for _ in range(4))
            for causal in causals:
                results = {}
                for impl in impls:
                    t0 = time.perf_counter()
                    results[impl] = _measure_gpu_impl(builders[impl], head_dim, causal, args, passes)
                    if {"fwd", "fwd+bwd", "bwd"} <= set(table_passes) and all(
                            "seconds" in results[impl].get(p, {}) for p in ("fwd", "fwd+bwd")):
                        fwd, both = results[impl]["fwd"], results[impl]["fwd+bwd"]
                        if both["seconds"] > fwd["seconds"]:
                            results[impl]["bwd"] = {"seconds": both["seconds"] - fwd["seconds"],
                                                    "dtype": both.get("dtype"),
                                                    "timer": both["timer"] if both["timer"] == fwd["timer"]
                                                    else "wall"}
                        else:
                            results[impl]["bwd"] = {"error": "time(fwd+bwd) <= time(fwd)"}
                    elif "bwd" in table_passes:
                        err = next((results[impl][p]["error"] for p in ("fwd+bwd", "fwd")
                                    if "error" in results[impl].get(p, {})), "not timed")
                        results[impl]["bwd"] = {"error": err}
                    print(f"H={head_dim} S={seq_len} causal={causal} {impl}: "
                          + ", ".join(f"{p}=" + _cell(results[impl].get(p), attention_flops(
                              batch, seq_len, seq_len, num_heads, head_dim, causal, p)) for p in table_passes)
                          + f"  [{time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
                for pass_ in table_passes:
                    flops = attention_flops(batch, seq_len, seq_len, num_heads, head_dim, causal, pass_)
                    cells = [_cell(results[i].get(pass_), flops) for i in impls]
                    f_entry = results.get("flash", {}).get(pass_, {})
                    c_entry = results.get("cudnn", {}).get(pass_, {})
                    speedup = (f"{c_entry['seconds'] / f_entry['seconds']:.2f}x"
                               if "seconds" in f_entry and "seconds" in c_entry and f_entry["seconds"] > 0
                               else "n/a")
                    rows.append([str(head_dim), str(seq_len), str(batch), str(num_heads), str(causal), pass_,
                                 *cells, speedup])
                    for impl in impls:
                        entry = results[impl].get(pass_, {})
                        records.append({
                            "mode": "gpu", "device": jax.devices()[0].device_kind, "jax": jax.__version__,
                            "impl": impl, "pass": pass_, "head_dim": head_dim, "seq_len": seq_len,
                            "batch": batch, "num_heads": num_heads, "causal": causal, "dtype": entry.get("dtype", "bfloat16"),
                            "flops": flops, "seconds": entry.get("seconds"),
                            "tflops": tflops(flops, entry.get("seconds")), "timer": entry.get("timer"),
                            "error": entry.get("error"),
                            "derived": pass_ == "bwd"})
            del args
    header = ["H", "S", "B", "N", "causal", "pass", *[f"{i} TFLOP/s (ms)" for i in impls], "flash vs cudnn"]
    table = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"] + [f"| {' | '.join(r)} |" for r in rows]
    notes = ["", "TFLOP/s = flops / median seconds / 1e12; fwd flops = 4 B S^2 N H (halved when causal), "
             "bwd = 2.5 fwd, fwd+bwd = 3.5 fwd; bwd time = time(fwd+bwd) - time(fwd). "
             "Timer: CUPTI kernel time (sum of kernel durations per iteration), median of "
             f"{FLAGS.iters} after {FLAGS.warmup} warm-up runs; `*` = wall clock (block_until_ready); "
             "`f16` = float16 inputs (pallas_mgpu when bf16 does not lower). "
             "'flash vs cudnn' = time(cudnn) / time(flash).", ""]
    markdown = "\n".join(lines + table + notes)
    print("\n".join(table + notes))
    _write_outputs("gpu", markdown, records)
    return 0


# ----------------------------------------------------------------------------------------------------------
# CPU mode.

def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_settings() -> dict:
    smoke = FLAGS.preset == "smoke"
    return {
        "seq_lens": _int_list(FLAGS.seq_lens, (256, 512) if smoke else CPU_SEQ_LENS),
        "num_heads": FLAGS.num_heads or (2 if smoke else 8),
        "block_k": FLAGS.block_k if (FLAGS["block_k"].present or not smoke) else 128,
        "impls": FLAGS.impls or list(CPU_IMPLS),
    }


def _cpu_iters(seq_len: int) -> int:
    if FLAGS.cpu_iters:
        return FLAGS.cpu_iters
    if FLAGS.preset == "smoke":
        return 2
    return 5 if seq_len <= 4096 else 3 if seq_len <= 16384 else 2


def run_cpu_child() -> int:
    """One (impl, S): compile, check memory, warm up, time; prints one marked JSON line."""
    import jax
    import jax.numpy as jnp

    from attention_jax import dot_product_attention
    from attention_jax.dot_product.blockwise import blockwise_attention

    impl, seq_len = FLAGS.child_impl, FLAGS.child_seq_len
    batch, num_heads, head_dim = FLAGS.batch, FLAGS.num_heads, FLAGS.head_dim
    result: dict[str, Any] = {"impl": impl, "seq_len": seq_len, "batch": batch, "num_heads": num_heads,
                              "head_dim": head_dim, "block_k": FLAGS.block_k if impl == "blockwise" else None}
    if impl == "blockwise":
        attend = functools.partial(blockwise_attention, block_k=FLAGS.block_k)
    elif impl == "xla":
        attend = functools.partial(dot_product_attention, implementation="xla")
    else:
        raise app.UsageError(f"unknown --child_impl {impl!r}")

    def loss(q, k, v):
        return jnp.sum(attend(q, k, v))

    grad = jax.grad(loss, argnums=(0, 1, 2))
    rng = np.random.default_rng(0)
    shape = (batch, seq_len, num_heads, head_dim)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(3))
    jax.block_until_ready((q, k, v))
    result["baseline_rss_bytes"] = _rss_bytes()

    compiled = jax.jit(grad).lower(q, k, v).compile()
    estimate = 0
    try:
        analysis = compiled.memory_analysis()
        result["temp_bytes"] = int(analysis.temp_size_in_bytes)
        estimate = int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                       + analysis.output_size_in_bytes)
    except Exception as exc:  # noqa: BLE001
        result["temp_bytes"] = None
        result["memory_analysis_error"] = _short(exc)
    # Measured on XLA:CPU (jax 0.10, S = 2k/4k): peak RSS growth is ~1.8x memory_analysis' total, and for xla
    # ~9 float32 [B, N, T, S] arrays; the estimate takes the larger of the two with some margin.
    estimate = RSS_SAFETY * estimate
    if impl == "xla":
        estimate = max(estimate, XLA_SCORE_COPIES * batch * num_heads * seq_len * seq_len * 4)
    estimate = int(estimate)
    result["estimate_bytes"] = estimate
    available = FLAGS.memory_limit_gib * GIB
    mem_available = _mem_available_bytes()
    if mem_available is not None:
        available = min(available, mem_available)
    result["available_bytes"] = int(available)
    if estimate > available:
        result["status"] = f"skipped: needs {estimate / GIB:.3g} GiB > {available / GIB:.3g} GiB available"
        print(CHILD_MARKER + json.dumps(result), flush=True)
        return 0

    jax.block_until_ready(compiled(q, k, v))  # warm-up
    times = []
    for _ in range(_cpu_iters(seq_len)):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - start)
    result.update(status="ok", seconds=float(np.median(times)), times=times, peak_rss_bytes=_rss_bytes())
    result["rss_delta_bytes"] = result["peak_rss_bytes"] - result["baseline_rss_bytes"]
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0


def _run_child(impl: str, seq_len: int, settings: dict) -> dict:
    cmd = [sys.executable, "-m", "experiments.benchmarks.kernels", "--mode=cpu_child", f"--child_impl={impl}",
           f"--child_seq_len={seq_len}", f"--batch={FLAGS.batch}", f"--num_heads={settings['num_heads']}",
           f"--head_dim={FLAGS.head_dim}", f"--block_k={settings['block_k']}",
           f"--cpu_iters={_cpu_iters(seq_len)}", f"--memory_limit_gib={FLAGS.memory_limit_gib}"]
    base = {"impl": impl, "seq_len": seq_len, "batch": FLAGS.batch, "num_heads": settings["num_heads"],
            "head_dim": FLAGS.head_dim}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FLAGS.child_timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"timeout after {FLAGS.child_timeout_s:g} s (child killed)"}
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return {**json.loads(line[len(CHILD_MARKER):]), "child_wall_s": wall}
    if proc.returncode < 0:
        status = f"killed by signal {-proc.returncode}" + (" (OOM killer?)" if proc.returncode == -9 else "")
    else:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        status = f"failed (exit {proc.returncode}): {tail[:160]}"
    return {**base, "status": status, "child_wall_s": wall}


def _gib(value) -> str:
    return "—" if value is None else f"{value / GIB:.3f}"


def run_cpu() -> int:
    import jax

    settings = _cpu_settings()
    unknown = sorted(set(settings["impls"]) - set(CPU_IMPLS))
    if unknown:
        raise app.UsageError(f"unknown --impls {unknown} for --mode=cpu; choose from {list(CPU_IMPLS)}")
    device = f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, " \
             f"{os.cpu_count()} cores)"
    lines = _header("cpu", device) + [
        f"- B={FLAGS.batch}, N={settings['num_heads']}, H={FLAGS.head_dim}, float32, T=S, "
        f"blockwise block_k={settings['block_k']}; forward+backward = jit(grad(sum(attention(q, k, v))))",
        f"- memory limit {FLAGS.memory_limit_gib:g} GiB, child timeout {FLAGS.child_timeout_s:g} s", ""]
    print("\n".join(lines), flush=True)
    records, rows = [], []
    for seq_len in settings["seq_lens"]:
        by_impl = {}
        for impl in settings["impls"]:
            record = _run_child(impl, seq_len, settings)
            record.update(mode="cpu", jax=jax.__version__, dtype="float32", iters=_cpu_iters(seq_len))
            by_impl[impl] = record
            seconds = record.get("seconds")
            print(f"S={seq_len} {impl}: {record['status']}"
                  + (f", {seconds:.4f} s, peak RSS {_gib(record.get('peak_rss_bytes'))} GiB" if seconds else ""),
                  file=sys.stderr, flush=True)
        ratio = None
        if by_impl.get("blockwise", {}).get("seconds") and by_impl.get("xla", {}).get("seconds"):
            ratio = by_impl["blockwise"]["seconds"] / by_impl["xla"]["seconds"]
        for impl, record in by_impl.items():
            record["ratio_blockwise_over_xla"] = ratio
            records.append(record)
            seconds = record.get("seconds")
            rows.append([str(seq_len), impl, "—" if seconds is None else f"{seconds:.4f}",
                         _gib(record.get("peak_rss_bytes")), _gib(record.get("rss_delta_bytes")),
                         _gib(record.get("temp_bytes")),
                         f"{ratio:.2f}" if ratio is not None and impl == "blockwise" else "—", record["status"]])
    header = ["S", "impl", "fwd+bwd s", "peak RSS GiB", "RSS delta GiB", "compiled temp GiB",
              "blockwise/xla time", "status"]
    table = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"] + [f"| {' | '.join(r)} |" for r in rows]
    notes = ["", "fwd+bwd s: median after one warm-up; peak RSS: the child's ru_maxrss (compile included); RSS "
             "delta: minus ru_maxrss after imports and input creation; compiled temp: memory_analysis()."
             "temp_size_in_bytes.", ""]
    print("\n".join(table + notes))
    _write_outputs("cpu", "\n".join(lines + table + notes), records)
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mode = FLAGS.mode
    if mode is None:
        import jax
        mode = "gpu" if jax.default_backend() == "gpu" else "cpu"
    if mode == "gpu":
        return run_gpu()
    if mode == "cpu":
        return run_cpu()
    if FLAGS.child_impl is None or FLAGS.child_seq_len is None or FLAGS.num_heads is None:
        raise app.UsageError("--mode=cpu_child needs --child_impl, --child_seq_len and --num_heads")
    return run_cpu_child()


if __name__ == "__main__":
    define_flags()
    app.run(main)
