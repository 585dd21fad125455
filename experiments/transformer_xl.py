"""Dai et al. 2019 (arXiv:1901.02860): a Transformer-XL language model, test perplexity by memory length.

    python -m experiments.transformer_xl --preset=smoke --workdir=/tmp/txl_smoke
    python -m experiments.transformer_xl --preset=small --workdir=experiments/results/transformer_xl
    python -m experiments.transformer_xl --data_path=my_text.txt --config.eval.mem_lens='(0,64,256)'

Presets, wall times and numbers: `experiments/configs/transformer_xl.py`. Flags: `experiments/cli.py` (the same
--preset / --workdir / --data_path / --config.* conventions; --rows only accepts the one row, transformer_xl).
The language-model code: `experiments/lm.py` (its training runs on `experiments/training/loop.py`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from attention_jax.models.transformer_xl import TransformerXLLM
from experiments import cli
from experiments import configs
from experiments import data
from experiments import lm
from experiments import training
from experiments.configs import transformer_xl as txl_config

FLAGS = flags.FLAGS

EXPERIMENT = training.Experiment(
        name="transformer_xl",
        title="Dai et al. 2019 (arXiv:1901.02860): Transformer-XL LM, test perplexity by evaluation memory length",
        get_config=txl_config.get_config,
        presets=txl_config.PRESETS,
        rows={txl_config.ROW: {}},
        default_rows=(txl_config.ROW,),
        default_preset=txl_config.DEFAULT_PRESET,
        default_workdir="workdirs/transformer_xl",
)

DATA_PATH_HELP = ("a plain UTF-8 text file to model instead of the KJV Bible (one line per sentence or paragraph; "
                  "sets config.data.data_path)")


def build_model(cfg: ml_collections.ConfigDict, vocab_size: int) -> TransformerXLLM:
    """The `TransformerXLLM` of a config."""
    m = cfg.model
    return TransformerXLLM(vocab_size=int(vocab_size), num_layers=m.num_layers, num_heads=m.num_heads,
                           head_dim=m.head_dim, d_model=m.d_model, d_inner=m.d_inner, mem_len=int(cfg.train.mem_len),
                           dropout_rate=float(m.dropout_rate), pre_norm=bool(m.pre_norm))


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every value the run will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, m, t, e = config.data, config.model, config.train, config.eval
    if d.data_path and not os.path.isfile(os.path.expanduser(d.data_path)):
        raise training.ConfigError(f"the data path file {d.data_path!r} does not exist; fix: point --data_path at a "
                                   "plain UTF-8 text file, or leave it empty to use the KJV Bible")
    if not d.data_path and d.corpus != "kjv":
        raise training.ConfigError(f"--config.data.corpus={d.corpus!r} is not valid; fix: use kjv or pass --data_path")
    cli.int_at_least("data.vocab_size", d.vocab_size, 8)
    for name in ("valid_fraction", "test_fraction"):
        if not 0.0 < d[name] < 0.5:
            raise training.ConfigError(f"--config.data.{name}={d[name]!r} is not valid; fix: use a fraction in "
                                       "(0, 0.5)")
    for name in ("num_layers", "num_heads", "head_dim", "d_model", "d_inner"):
        cli.int_at_least(f"model.{name}", m[name], 1)
    if not 0.0 <= m.dropout_rate < 1.0:
        raise training.ConfigError(f"--config.model.dropout_rate={m.dropout_rate!r} is not valid; fix: use a rate in "
                                   "[0, 1)")
    for name in ("batch_size", "segment_len"):
        cli.int_at_least(f"train.{name}", t[name], 1)
    for name in ("mem_len", "warmup_steps", "num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0:
        raise training.ConfigError(f"--config.train.learning_rate={t.learning_rate!r} is not valid; fix: use a number "
                                   "> 0, e.g. 1e-3")
    if t.grad_clip_norm < 0 or t.max_minutes < 0 or not 0 <= t.min_lr_ratio <= 1:
        raise training.ConfigError("--config.train.grad_clip_norm and max_minutes must be >= 0 and min_lr_ratio in "
                                   f"[0, 1] (got {t.grad_clip_norm}, {t.max_minutes}, {t.min_lr_ratio}); fix: change "
                                   "them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps or --config.train.max_minutes")
    shards = config.mesh.data * config.mesh.fsdp
    if t.batch_size % shards or e.batch_size < 1:
        raise training.ConfigError(f"--config.train.batch_size={t.batch_size} must be a multiple of mesh.data * "
                                   f"mesh.fsdp = {shards}; fix: change one of them")
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.max_tokens", e.max_tokens, 0)
    cli.int_at_least("eval.valid_max_tokens", e.valid_max_tokens, 0)
    mems = tuple(e.mem_lens) if isinstance(e.mem_lens, (tuple, list)) else (e.mem_lens,)
    if (not mems or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in mems)
            or list(mems) != sorted(set(mems))):
        raise training.ConfigError(f"--config.eval.mem_lens={e.mem_lens!r} is not valid; fix: use a strictly "
                                   "increasing tuple of ints >= 0, e.g. --config.eval.mem_lens='(0,64,128,256)'")


def run(config: ml_collections.ConfigDict, workdir: str, *, preset: str = "", command: str = "") -> list[dict]:
    """Trains (or resumes), evaluates by memory length and writes the report; returns the results records.

    A workdir whose done.json holds this config's fingerprint is not retrained, only re-reported.

    Raises:
      training.ConfigError: a checkpoint from another config, or a corpus too short for the sizes.
      experiments.data.DataError: the corpus cannot be obtained or read.
    """
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
    fp = training.fingerprint(flat)
    done = training.done_record(workdir, fp)
    if done is not None:
        logging.info("already finished with this config (%s); re-reporting it", os.path.join(workdir, "done.json"))
        records, notes, wall_min = done["records"], done["notes"], done.get("wall_min")
    else:
        training.check_resumable(EXPERIMENT, txl_config.ROW, flat, workdir)
        t0 = time.monotonic()
        lm_data = lm.prepare_stream(config.data, lm.tokenizer_dir(config.data, workdir))
        logging.info("data %s: %d / %d / %d tokens (train / valid / test), vocabulary %d (%.1f s)", lm_data.source,
                     len(lm_data.train.ids), len(lm_data.valid.ids), len(lm_data.test.ids),
                     lm_data.tokenizer.vocab_size, time.monotonic() - t0)
        with open(os.path.join(workdir, "row_config.json"), "w", encoding="utf-8") as f:
            json.dump(flat, f, indent=2, sort_keys=True)
        model = build_model(config, lm_data.tokenizer.vocab_size)
        outcome = lm.train_lm(model, config, lm_data, workdir)
        seg = int(config.train.segment_len)
        records = []
        for mem_len in config.eval.mem_lens:
            t_eval = time.monotonic()
            scores = lm.evaluate_stream(model, outcome.params, lm_data.test.ids, batch=int(config.eval.batch_size),
                                        segment_len=seg, mem_len=int(mem_len), max_tokens=int(config.eval.max_tokens))
            if not scores["tokens"]:
                raise training.ConfigError(f"the test split ({len(lm_data.test.ids)} tokens) is too short for "
                                           f"{config.eval.batch_size} streams of one {seg}-token segment; fix: lower "
                                           "--config.eval.batch_size or raise --config.data.test_fraction")
            bits = scores["nll"] / 0.6931471805599453
            records.append({"row": f"mem_{mem_len}", "attention": "transformer_xl", "score": "relative",
                            "mode": f"M={mem_len}", "mem_len": int(mem_len), "segment_len": seg,
                            "train_mem_len": int(config.train.mem_len), "dev_ppl": None,
                            "test_ppl": scores["ppl"], "test_nll": scores["nll"], "test_bits_per_token": bits,
                            "test_bpc": bits / lm_data.test.chars_per_token, "test_tokens": scores["tokens"],
                            "steps": outcome.steps, "train_minutes": round(outcome.minutes, 2),
                            "epochs": outcome.epochs, "stop_reason": outcome.stop_reason,
                            "final_valid_ppl": outcome.last_valid_ppl, "seed": config.seed,
                            "machine": training.machine_description(), "fingerprint": fp})
            logging.info("test M=%d: ppl %.2f, %.4f bpc over %d tokens (%.1f s)", mem_len, scores["ppl"],
                         records[-1]["test_bpc"], scores["tokens"], time.monotonic() - t_eval)
        tok = lm_data.tokenizer.vocab_size
        notes = [f"preset: {preset or '-'}; corpus: {lm_data.source}; SentencePiece BPE vocabulary {tok}; "
                 f"tokens train / valid / test: {len(lm_data.train.ids)} / {len(lm_data.valid.ids)} / "
                 f"{len(lm_data.test.ids)} (contiguous line ranges; test starts at: {lm_data.test.first_line[:60]!r})",
                 f"model: {config.model.num_layers} layers, D={config.model.d_model}, {config.model.num_heads} heads "
                 f"x {config.model.head_dim}, d_inner {config.model.d_inner}, dropout {config.model.dropout_rate}, "
                 f"{'pre' if config.model.pre_norm else 'post'}-LN; training T={seg}, M={config.train.mem_len}, "
                 f"{config.train.batch_size} streams",
                 f"training: {outcome.steps} steps ({outcome.epochs} epochs, {outcome.minutes:.1f} min), stop: "
                 f"{outcome.stop_reason}; final valid ppl (M={config.train.mem_len}): "
                 f"{outcome.last_valid_ppl if outcome.last_valid_ppl is None else round(outcome.last_valid_ppl, 2)}",
                 f"evaluation: the first {records[0]['test_tokens']} test tokens as {config.eval.batch_size} "
                 "contiguous streams, segments of T, memories from zeros; bpc = bits per token / "
                 f"{lm_data.test.chars_per_token:.3f} characters per token; 'dev ppl' is not computed per M",
                 f"seed: {config.seed}; machine: {training.machine_description()}"]
        wall_min = round((time.monotonic() - started) / 60, 2)
        with open(os.path.join(workdir, "done.json"), "w", encoding="utf-8") as f:
            json.dump({"fingerprint": fp, "record": {"records": records, "notes": notes, "wall_min": wall_min}}, f,
                      indent=2, sort_keys=True)
    wall = "unknown" if wall_min is None else f"{wall_min:.1f} min"
    notes = list(notes) + [f"wall time of the invocation that trained and evaluated (data, compiles, training, "
                           f"evaluation): {wall}" + ("" if done is None else "; this invocation only re-reported")]
    text = lm.write_report(workdir, records, title=EXPERIMENT.title, command=command, notes=notes,
                           train_mem_len=int(config.train.mem_len))
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
        cli.warn_sparse_evaluation({txl_config.ROW: config.train}, what="valid perplexity", at_end=True)
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
