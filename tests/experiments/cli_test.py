"""Tests of experiments/cli.py's user-facing plumbing: --help, the sparse-evaluation warning, and where a
--data_path run keeps its tokenizer (translation and language-model experiments)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from experiments import cli
from experiments import configs
from experiments import data
from experiments import lm
from experiments import training
from experiments.configs import transformer_xl as txl_config
from experiments.luong import EXPERIMENT as LUONG

REPO = str(pathlib.Path(__file__).resolve().parents[2])
LUONG_DOC_FIRST_LINE = "Luong et al. 2015 (arXiv:1508.04025)"


def _train(num_steps: int, eval_every: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"num_steps": num_steps, "eval_every": eval_every})


class TestHelp:

    def test_help_shows_usage_experiment_flags_and_config_fields(self):
        proc = subprocess.run([sys.executable, "-m", "experiments.luong", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
        text = proc.stdout
        assert text.startswith(LUONG_DOC_FIRST_LINE), text[:200]
        assert "python -m experiments.luong --preset=smoke --workdir=/tmp/luong_smoke" in text  # the usage examples
        for flag in cli.EXPERIMENT_FLAGS:
            assert f"\n  --{flag}:" in text, flag
        base = LUONG.get_config()
        for path in configs.flatten(base):
            if path != "experiment":
                assert path.rsplit(".", 1)[-1] in text, path
        assert "- data: " in text and "skip_malformed" in text
        # Only the experiment's flags: not absl's, jax's or orbax's, and no YAML dump of the config's default.
        assert "--verbosity" not in text and "--jax_" not in text and "orbax" not in text
        assert "\n  --jobs:" in text  # the translation experiments' worker processes
        assert "!!python/tuple" not in text and len(text.splitlines()) < 60


class TestSparseEvaluation:

    def test_warns_once_per_budget_with_the_fix(self, monkeypatch):
        logged = []
        monkeypatch.setattr(cli.logging, "warning", lambda fmt, *args: logged.append(fmt % args))
        lines = cli.warn_sparse_evaluation({"a": _train(1400, 500), "b": _train(1400, 500), "c": _train(1000, 200),
                                            "d": _train(30, 40), "e": _train(0, 10), "f": _train(100, 0)})
        assert lines == logged == [
            "rows a, b will evaluate dev perplexity only 2 times in 1400 steps (train.eval_every=500), too few "
            "points for a curve; fix: pass --config.train.eval_every=280",
            "row d will evaluate dev perplexity only 0 times in 30 steps (train.eval_every=40), too few points for "
            "a curve; fix: pass --config.train.eval_every=6"]

    def test_counts_the_evaluation_after_the_last_step(self):
        assert cli.warn_sparse_evaluation({"lm": _train(1000, 250)}, at_end=True) == [
            "row lm will evaluate dev perplexity only 4 times in 1000 steps (train.eval_every=250), too few points "
            "for a curve; fix: pass --config.train.eval_every=200"]
        assert not cli.warn_sparse_evaluation({"lm": _train(1001, 250)}, at_end=True)  # 4 + the last step


class TestDataPathTokenizer:

    def test_translation_run_keeps_the_tokenizer_in_the_workdir(self, tmp_path, monkeypatch):
        seen = []

        def prepare(data_config, cache_dir=None):
            seen.append(cache_dir)
            raise data.DataError("stop before training")

        monkeypatch.setattr(data, "prepare", prepare)
        config = cli.build_config(LUONG, "smoke", {"data.data_path": str(tmp_path / "mine.tsv")})
        for kwargs in ({}, {"cache_dir": str(tmp_path / "explicit")}):
            with pytest.raises(data.DataError, match="stop before training"):
                training.run_experiment(LUONG, config, ["global_dot"], str(tmp_path / "run"), **kwargs)
        config.data.data_path = ""
        with pytest.raises(data.DataError):
            training.run_experiment(LUONG, config, ["global_dot"], str(tmp_path / "corpus_run"))
        assert seen == [str(tmp_path / "run" / "tokenizers"), str(tmp_path / "explicit"), None]

    def test_language_model_tokenizer_goes_to_the_given_dir(self, tmp_path):
        text = "\n".join(f"line {k} of the user's own text, word{k % 7} and word{k % 11}" for k in range(60))
        (tmp_path / "mine.txt").write_text(text + "\n", encoding="utf-8")
        config = txl_config.get_config()
        config.data.data_path, config.data.data_dir, config.data.vocab_size = str(tmp_path / "mine.txt"), "", 40
        workdir = str(tmp_path / "run")
        assert lm.tokenizer_dir(config.data, workdir) == os.path.join(workdir, "tokenizers")
        lm_data = lm.prepare_stream(config.data, lm.tokenizer_dir(config.data, workdir))
        assert lm_data.tokenizer.path.parent == tmp_path / "run" / "tokenizers" and lm_data.tokenizer.path.is_file()
        config.data.data_path = ""
        assert lm.tokenizer_dir(config.data, workdir) is None
