"""Tests of experiments/translate.py: translating with a trained row of a workdir.

One tiny Luong row is trained once (the copy-and-reverse pairs of the training tests, written to a --data_path TSV
so the real SentencePiece pipeline runs and the tokenizer lands in <workdir>/tokenizers). Checks: the command
reproduces the test translations `evaluate_row` wrote (same beam settings, empty lines kept), stdin and
--heatmaps, --allow_unfinished, data.json's tokenizer and the seed_<s> layout, max_source_len read off the
checkpoint, and one-sentence errors with exit code 2.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

from absl import flags
import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import cli
from experiments import data
from experiments import training
from experiments import translate
from experiments.luong import EXPERIMENT as LUONG
from experiments.transformer import EXPERIMENT as TRANSFORMER
from tests.experiments.training.translation_test import WordTokenizer
from tests.experiments.training.translation_test import tiny_config
from tests.experiments.training.translation_test import tiny_dataset

REPO = str(pathlib.Path(__file__).resolve().parents[2])
ROW = "global_general"


def run_main(*args: str) -> None:
    """``python -m experiments.translate ARGS`` in this process, with fresh flags."""
    fv = flags.FlagValues()
    translate.define_flags(fv)
    translate.main(translate.parse_flags(["translate", *args], fv), fv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, config, test sources) of one finished row, trained 6 steps on a --data_path TSV."""
    root = tmp_path_factory.mktemp("translate")
    ds = tiny_dataset()
    tsv = root / "pairs.tsv"
    data.write_parallel_tsv([(ex.src_text, ex.tgt_text) for ex in ds.train + ds.dev + ds.test], tsv)
    config = tiny_config(**{
            "data.data_path": str(tsv), "data.data_dir": str(root / "cache"), "data.vocab_size": 30,
            "data.max_words": 0, "data.dev_size": 12, "data.test_size": 12, "train.num_steps": 6,
            "train.log_every": 3, "train.eval_every": 0, "train.checkpoint_every": 3, "eval.num_heatmaps": 0,
            "eval.dev_bleu": False})
    workdir = str(root / "workdir")
    training.run_experiment(LUONG, config, [ROW], workdir, command="test")
    sources = [ex.src_text for ex in data.prepare(config.data, os.path.join(workdir, "tokenizers")).test]
    return workdir, config, sources


def evaluated(workdir: str) -> list[str]:
    """The test translations `evaluate_row` wrote for ROW."""
    path = os.path.join(translate.find_run(workdir, ROW).path, "test_translations.txt")
    return pathlib.Path(path).read_text(encoding="utf-8").splitlines()


def test_translations_equal_evaluation(trained, tmp_path):
    workdir, _, sources = trained
    expected = evaluated(workdir)
    assert len(expected) == len(sources) == 12 and any(expected)
    lines = sources[:3] + [""] + ["  " + s.replace(" ", "   ") + " " for s in sources[3:]]  # blank, odd spacing
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_main(f"--workdir={workdir}", f"--row={ROW}", f"--input={tmp_path / 'in.txt'}",
             f"--output={tmp_path / 'out' / 'en.txt'}")
    got = (tmp_path / "out" / "en.txt").read_text(encoding="utf-8").split("\n")
    assert got[-1] == "" and got[:-1] == expected[:3] + [""] + expected[3:]


def test_stdin_and_heatmaps(trained, tmp_path, monkeypatch, capsys):
    workdir, _, sources = trained
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{sources[0]}\n\n{sources[5]}"))  # no final line end
    run_main(f"--workdir={workdir}", f"--row={ROW}", f"--heatmaps={tmp_path / 'maps'}")
    expected = evaluated(workdir)
    assert capsys.readouterr().out == f"{expected[0]}\n\n{expected[5]}\n"
    maps = sorted(os.listdir(tmp_path / "maps"))
    assert maps == ["line_0001.png", "line_0003.png"]  # none for the empty line
    assert all(os.path.getsize(tmp_path / "maps" / m) > 1000 for m in maps)


def test_unfinished_row_needs_allow_unfinished(trained, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(trained[0], workdir)
    run_dir = translate.find_run(workdir, ROW).path
    os.remove(os.path.join(run_dir, "done.json"))
    shutil.rmtree(os.path.join(run_dir, "checkpoints", "6"))  # killed after step 3's checkpoint
    with pytest.raises(training.ConfigError, match="has not finished training .* step 3 "):
        translate.load(workdir, ROW)
    translator = translate.load(workdir, ROW, allow_unfinished=True)
    assert translator.step == 3
    # Step 3's parameters are not the finished row's (step 6), so this is not the finished row reloaded.
    final = translate.load(trained[0], ROW)
    assert final.step == 6
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(translator.params),
                                                        jax.tree.leaves(final.params)))


def test_data_json_tokenizer_and_seed_folders(trained, tmp_path, monkeypatch):
    """The layout with seeds (workdir/row/seed_<s>/) and the tokenizer named by data.json, without the data."""
    workdir = str(tmp_path / "w")
    shutil.copytree(trained[0], workdir)
    row_dir = os.path.join(workdir, training.row_dir_name(ROW))
    shutil.move(translate.find_run(workdir, ROW).path, str(tmp_path / "seed_3"))  # either layout -> seed_3 only
    shutil.rmtree(row_dir, ignore_errors=True)
    os.makedirs(row_dir)
    shutil.move(str(tmp_path / "seed_3"), os.path.join(row_dir, "seed_3"))
    (tokenizer,) = pathlib.Path(workdir, "tokenizers").glob("*.model")

    def no_data(*args, **kwargs):
        raise AssertionError("data.json names the tokenizer, so the data must not be rebuilt")

    def name_in_data_json(path):
        with open(os.path.join(workdir, "data.json"), "w", encoding="utf-8") as f:
            json.dump({"source": "pairs.tsv", "tokenizer": str(path)}, f)

    monkeypatch.setattr(data, "prepare", no_data)
    name_in_data_json(tmp_path / "gone" / tokenizer.name)  # a moved workdir: the same file in <workdir>/tokenizers
    translator = translate.load(workdir, ROW)
    assert (translator.seed, translator.step, str(translator.tokenizer.path)) == (3, 6, str(tokenizer))
    moved = tmp_path / "elsewhere.model"
    shutil.move(str(tokenizer), moved)
    name_in_data_json(moved)
    assert str(translate.load(workdir, ROW).tokenizer.path) == str(moved)
    with pytest.raises(training.ConfigError, match="has no seed 1; fix: pass --seed as one of 3"):
        translate.find_run(workdir, ROW, seed=1)


def _fake_run(path: pathlib.Path, *, finished: bool, row: str = ROW, checkpoint: bool = True) -> None:
    """A run directory without parameters: enough for everything up to reading the checkpoint."""
    path.mkdir(parents=True)
    if checkpoint:
        (path / "checkpoints" / "4" / "state").mkdir(parents=True)
        (path / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()  # a save in progress is no checkpoint
    (path / "row_config.json").write_text(json.dumps({"seed": 0, "experiment": "luong"}))
    if finished:
        (path / "done.json").write_text(json.dumps({"fingerprint": "x", "record": {"row": row, "steps": 4}}))


@pytest.fixture
def fake_workdir(tmp_path):
    """A workdir of fake runs (no training): finished rows old_done and seeds (seed 2), unfinished running."""
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "luong", "row_configs": {}}))
    _fake_run(tmp_path / "old_done", finished=True, row="old_done")
    _fake_run(tmp_path / "seeds" / "seed_0", finished=False, row="seeds")
    _fake_run(tmp_path / "seeds" / "seed_2", finished=True, row="seeds")
    _fake_run(tmp_path / "seeds" / "seed_1", finished=False, row="seeds")
    _fake_run(tmp_path / "running", finished=False, row="running")
    _fake_run(tmp_path / "lost" / "seed_0", finished=True, row="lost", checkpoint=False)
    (tmp_path / "heatmaps").mkdir()
    return str(tmp_path)


def test_find_run_layouts(fake_workdir):
    assert translate.finished_rows(fake_workdir) == ["lost", "old_done", "seeds"]
    run = translate.find_run(fake_workdir, "seeds")
    assert (run.seed, run.finished) == (2, True)  # the lowest finished seed
    run = translate.find_run(fake_workdir, "seeds", seed=1)
    assert (run.seed, run.finished, os.path.basename(run.path)) == (1, False, "seed_1")
    assert translate.checkpoint_step(run, allow_unfinished=True) == 4
    run = translate.find_run(fake_workdir, "old_done", seed=0)
    assert (run.seed, run.finished, translate.checkpoint_step(run)) == (None, True, 4)
    with pytest.raises(training.ConfigError, match="trained with seed 0 only"):
        translate.find_run(fake_workdir, "old_done", seed=1)
    with pytest.raises(training.ConfigError, match="has no seed 5; fix: pass --seed as one of 0, 1, 2"):
        translate.find_run(fake_workdir, "seeds", seed=5)
    with pytest.raises(training.ConfigError, match="no trained row 'heatmaps'; fix: .* lost, old_done, seeds$"):
        translate.find_run(fake_workdir, "heatmaps")


def test_heatmaps_of_a_model_without_attention_is_a_note(capsys, tmp_path):
    no_attention = types.SimpleNamespace(row="no_attention", has_attention=False)
    assert translate.write_heatmaps(no_attention, [], [], str(tmp_path / "maps"), batch_size=4) == []
    (note,) = capsys.readouterr().err.strip().splitlines()
    assert note.startswith("note: row 'no_attention' has no attention") and not os.path.exists(tmp_path / "maps")


@pytest.mark.parametrize("exp, overrides, trained_len, attribute", [
        (LUONG, {"model.score": "location", "model.embed_dim": 8, "model.hidden_size": 8}, 48,
         "max_source_len"),  # W_a has max_source_len outputs
        (TRANSFORMER, {"model.positions": "learned", "model.max_len": 20, "model.d_model": 8, "model.num_heads": 2,
                       "model.d_ff": 8, "model.num_encoder_layers": 1, "model.num_decoder_layers": 1}, 64,
         "max_len"),  # the learned position table has max(max_len, max_source_len) rows
])
def test_max_source_len_is_read_off_the_checkpoint(exp, overrides, trained_len, attribute):
    config = cli.build_config(exp, "smoke", {"data.buckets": (16,), **overrides})
    cfg = training.row_config(exp, config, "custom")
    vocab = WordTokenizer("a b c d e f".split())
    trained_model = exp.make_model(cfg.model, vocab.vocab_size, trained_len)
    src = jax.ShapeDtypeStruct((2, 16), np.int32)
    params = jax.eval_shape(lambda s: nn.unbox(trained_model.init(jax.random.PRNGKey(0), s, s[:, 0], s,
                                                                  train=False)["params"]), src)  # shapes only
    model, length = translate.build_model(exp, cfg, vocab.vocab_size, params)
    assert length == trained_len and getattr(model, attribute) == trained_len
    # A source padded beyond what the model takes is refused, naming its line (a traced call, no compile).
    translator = translate.Translator(row="custom", seed=None, step=0, model=model, params=params, tokenizer=vocab,
                                      config=cfg, max_source_len=length)
    with pytest.raises(training.ConfigError, match="input line 2 has 70 source tokens"):
        translator.translate(["a b", " ".join(["c"] * 70)])
    with pytest.raises(training.ConfigError, match=f"vocabulary {vocab.vocab_size + 1}"):
        translate.build_model(exp, cfg, vocab.vocab_size + 1, params)


@pytest.mark.parametrize("case, args, stdin, message", [
        ("missing_workdir", ["--workdir={w}/nowhere", "--row=old_done"], "a\n",
         "the workdir '{w}/nowhere' does not exist"),
        ("no_config", ["--workdir={w}/old_done", "--row=old_done"], "a\n", "has no config.json"),
        ("lm_workdir", ["--workdir={w}/lm", "--row=old_done"], "a\n", "holds a transformer_xl run, which is not a "
         "translation experiment"),
        ("unknown_row", ["--workdir={w}", "--row=global_dot"], "a\n", "has no trained row 'global_dot'; fix: pass "
         "--row as one of its finished rows: lost, old_done, seeds"),
        ("no_row_flag", ["--workdir={w}"], "a\n", "--row is required"),
        ("unfinished", ["--workdir={w}", "--row=running"], "a\n", "row 'running' has not finished training (its "
         "latest checkpoint is step 4 and it has no done.json); fix: rerun its experiment's command to finish it, or "
         "pass --allow_unfinished"),
        ("unfinished_seed", ["--workdir={w}", "--row=seeds", "--seed=0"], "a\n", "row 'seeds' seed 0 has not finished"),
        ("no_checkpoint", ["--workdir={w}", "--row=lost"], "a\n", "row 'lost' seed 0 has no checkpoint"),
        ("empty_input", ["--workdir={w}", "--row=old_done"], "\n  \n", "stdin holds no sentence to translate"),
        ("missing_input", ["--workdir={w}", "--row=old_done", "--input={w}/none.txt"], "", "the input file "
         "'{w}/none.txt' does not exist"),
        ("bad_beam", ["--workdir={w}", "--row=old_done", "--beam_size=0"], "a\n", "--beam_size=0 is not valid"),
        ("bad_flag", ["--workdir={w}", "--row=old_done", "--beam_size=two"], "a\n", "--beam_size"),
])
def test_errors_are_one_sentence_and_exit_2(case, args, stdin, message, fake_workdir, monkeypatch, capsys):
    (pathlib.Path(fake_workdir) / "lm").mkdir()
    (pathlib.Path(fake_workdir) / "lm" / "config.json").write_text(json.dumps({"experiment": "transformer_xl"}))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        run_main(*(a.format(w=fake_workdir) for a in args))
    assert exit_info.value.code == 2, case
    captured = capsys.readouterr()
    assert not captured.out
    (error,) = captured.err.strip().splitlines()
    assert error.startswith("error: ") and "fix:" in error
    assert message.format(w=fake_workdir) in error


def test_command_line_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.translate", f"--workdir={tmp_path}/nowhere",
                           "--row=global_dot"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not exist" in errors[0], proc.stderr
