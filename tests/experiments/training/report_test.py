"""Tests of the report of a translation experiment (experiments/training/report.py) and of the generated results
page (experiments/results_page.py), on fixture workdirs written here (no training).

The fixture: two rows of the Luong experiment over two seeds; "global_general" translates the test set exactly,
the baseline "no_attention" garbles it. So every p against the baseline is < 0.01, the claim "global_general
beats no_attention" holds, and the numbers in results.jsonl, results.md, claims.jsonl and the results page can
be checked against sacrebleu directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random

import pytest
import sacrebleu

from experiments import results
from experiments import results_page
from experiments import stats
from experiments.luong import EXPERIMENT as LUONG
from experiments.training import report
from experiments.training import spec
from tests.experiments.training.translation_test import tiny_config

BASE, GOOD = "no_attention", "global_general"
SEEDS = (0, 1)
CLAIM = stats.Claim(name="attention beats no attention", better=GOOD, worse=(BASE,), paper="20.9 vs 14.0 BLEU",
                    source="fixture paper, Table 1")
EXP = dataclasses.replace(LUONG, baseline_row=BASE, claims=(CLAIM,),
                          paper={GOOD: {"bleu": 20.9, "ppl": 5.9, "source": "fixture paper, Table 1, row 'global'"}})


def _references(n=60):
    rng = random.Random(1)
    words = "a b c d e f g h i j k l".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 8))) for _ in range(n)]


def _garble(refs, seed):
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < 0.5 else "x" for w in r.split()) for r in refs]


def write_fixture_workdir(workdir: str, config) -> list[str]:
    """test_references.txt and, per (row, seed), test_translations.txt and a done.json with the config's
    fingerprint, as `run_experiment` leaves them."""
    refs = _references()
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    pathlib.Path(workdir, report.REFERENCES_FILE).write_text("\n".join(refs) + "\n")
    for row in (BASE, GOOD):
        for seed in SEEDS:
            hyps = list(refs) if row == GOOD else _garble(refs, seed)
            run_dir = spec.run_dir(workdir, row, seed)
            os.makedirs(run_dir)
            pathlib.Path(run_dir, report.TRANSLATIONS_FILE).write_text("\n".join(hyps) + "\n")
            fp = spec.fingerprint(spec.run_flat(spec.run_config(EXP, config, row, seed)))
            record = {"row": row, "seed": seed, "attention": "luong", "score": "general", "mode": "global",
                      "test_bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                      "test_chrf": sacrebleu.corpus_chrf(hyps, [refs]).score, "test_ppl": 10.0 + seed,
                      "dev_ppl": 11.0, "dev_bleu": None, "steps": 10, "train_minutes": 0.1,
                      "stop_reason": "reached train.num_steps=10", "heatmaps": [], "fingerprint": fp}
            pathlib.Path(run_dir, "done.json").write_text(json.dumps({"fingerprint": fp, "record": record}))
    return refs


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("report") / "luong")
    config = tiny_config(**{"seeds": "0,1", "eval.significance": "bs", "eval.significance_samples": 1000})
    refs = write_fixture_workdir(workdir, config)
    table = report.write_report(EXP, config, workdir, [], {}, preset="smoke", command="python -m experiments.luong",
                                final=True)
    return workdir, config, refs, table


def test_records_carry_seeds_cis_and_p(reported):
    workdir, _, refs, table = reported
    assert [(r["row"], r["seed"]) for r in table] == [(GOOD, 0), (GOOD, 1), (BASE, 0), (BASE, 1)]
    lines = results.read_jsonl(os.path.join(workdir, "results.jsonl"))
    assert [(r["row"], r["seed"]) for r in lines] == [(r["row"], r["seed"]) for r in table]
    for rec in lines:
        low, high = rec["test_bleu_ci"]
        assert low <= rec["test_bleu"] + 1e-6 and rec["test_bleu"] <= high + 1e-6 or rec["row"] == GOOD
        assert rec["baseline_row"] == BASE and "bs:1000" in rec["sacrebleu"]["bleu"]
        if rec["row"] == GOOD:
            assert rec["test_bleu_p"] < 0.01 and rec["test_chrf_p"] < 0.01
            assert rec["paper"]["bleu"] == 20.9
        else:
            assert rec["test_bleu_p"] is None and rec["paper"] is None
    # The CIs are sacrebleu's, through the wrapper.
    direct = stats.paired_translation_test(refs, _garble(refs, 0), {})
    assert lines[2]["test_bleu_ci"] == pytest.approx(list(direct.baseline["bleu"].interval), abs=1e-3)


def test_results_md_has_one_line_per_row_paper_signatures_and_claims(reported):
    workdir, *_ = reported
    text = pathlib.Path(workdir, "results.md").read_text()
    good = next(line for line in text.splitlines() if line.startswith(f"| {GOOD} |"))
    base = next(line for line in text.splitlines() if line.startswith(f"| {BASE} |"))
    assert "<0.001" in good and "20.9 BLEU, 5.9 ppl [1] | 2 | 10 |" in good  # paper, then seeds and steps
    assert "| baseline |" in base and " ± " in base  # two seeds with different scores: mean ± std
    assert "[1] fixture paper, Table 1, row 'global'" in text
    assert "- BLEU: `nrefs:1|bs:1000|seed:12345|" in text and "- chrF: `nrefs:1|bs:1000|" in text
    assert "largest p over seeds" in text and "paired bootstrap resampling (Koehn 2004)" in text
    assert f"| attention beats no attention: {GOOD} > {BASE} on test_bleu | 20.9 vs 14.0 BLEU (fixture paper, " \
           "Table 1) |" in text
    claim_line = next(line for line in text.splitlines() if line.startswith("| attention beats"))
    assert "| yes | <0.001 |" in claim_line


def test_claims_jsonl(reported):
    workdir, *_ = reported
    (claim,) = results.read_jsonl(os.path.join(workdir, "claims.jsonl"))
    assert claim["holds"] is True and claim["p"] < 0.01 and claim["p_seeds"] == 2
    assert claim["command"] == "python -m experiments.luong" and claim["seeds"] == [0, 1]
    assert claim["rows"][GOOD]["mean"] == pytest.approx(100.0) and claim["rows"][BASE]["n"] == 2
    assert claim["rows"][GOOD]["ci"] is not None and claim["workdir"] == os.path.abspath(workdir)
    assert claim["machine"] and claim["data"] == report.data_description(tiny_config().data)


def test_cached_significance_and_intermediate_reports(reported, monkeypatch):
    workdir, config, *_ = reported
    calls = []
    monkeypatch.setattr(stats, "paired_translation_test", lambda *a, **k: calls.append(1))
    again = report.write_report(EXP, config, workdir, [], {}, preset="smoke", command="c", final=True)
    assert not calls and again[0]["test_bleu_p"] < 0.01  # every test came from significance.json
    partial = report.write_report(EXP, config, workdir, [], {}, preset="smoke", command="c")
    assert not calls and "test_bleu_p" not in partial[0]  # intermediate reports skip the tests


def test_titles_name_the_data_used():
    config = tiny_config()
    config.data.corpus = "ding_de_en"
    assert report.full_title(LUONG, config).endswith("data: German->English, Ding dictionary example sentences "
                                                     "(ding_de_en)")
    config.data.corpus = "bible_en_es"
    assert "English->Spanish, KJV -> Reina-Valera 1909" in report.data_description(config.data)
    config.data.data_path = "/data/wmt14.tsv"
    assert report.data_description(config.data) == "the user's parallel text /data/wmt14.tsv (--data_path)"
    assert "Ding" not in report.full_title(LUONG, config)


def test_every_experiment_s_paper_numbers_and_claims_name_its_rows():
    from experiments.bahdanau import EXPERIMENT as BAHDANAU  # pylint: disable=import-outside-toplevel
    from experiments.head_pruning import EXPERIMENT as PRUNING  # pylint: disable=import-outside-toplevel
    from experiments.transformer import EXPERIMENT as TRANSFORMER  # pylint: disable=import-outside-toplevel
    from experiments.cloze import EXPERIMENT as CLOZE  # pylint: disable=import-outside-toplevel
    from experiments.bert import EXPERIMENT as BERT, PRETRAIN  # pylint: disable=import-outside-toplevel
    # pylint: disable-next=import-outside-toplevel
    from experiments import co_attention, deep_sets, few_shot, glimpse_captioning, vision_attention

    issue14 = tuple(m.EXPERIMENT for m in (vision_attention, glimpse_captioning, few_shot, deep_sets, co_attention))
    for exp in (LUONG, BAHDANAU, TRANSFORMER, PRUNING, CLOZE, BERT, PRETRAIN) + issue14:
        assert spec.paper_and_claim_problems(exp) == [], exp.name
    assert PRUNING.default_baseline == "dense" and PRUNING.claim_list and PRUNING.paper_numbers
    broken = dataclasses.replace(LUONG, baseline_row="bogus", claims=(stats.Claim("x", "global_dot", ("nope",)),))
    assert len(spec.paper_and_claim_problems(broken)) == 2


def test_results_page_from_fixture_files(reported, tmp_path):
    workdir, config, *_ = reported
    report.write_report(EXP, config, workdir, [], {}, preset="smoke", command="python -m experiments.luong",
                        final=True)  # the final report's files (another test may have left an intermediate one)
    results_dir = tmp_path / "results"
    new = results_dir / "luong"
    new.mkdir(parents=True)
    for name in ("results.jsonl", "claims.jsonl", "results.md"):
        (new / name).write_text(pathlib.Path(workdir, name).read_text())
    (new / "command.txt").write_text("python -m experiments.luong --config.seeds=0,1\n")
    # A run recorded before seeds and claims: per-row records, no statistics.
    old = results_dir / "old_lm"
    old.mkdir()
    (old / "results.jsonl").write_text(json.dumps({"row": "mem_0", "test_ppl": 84.2}) + "\n")
    (old / "results.md").write_text("# An older language model run\n")
    (results_dir / "empty").mkdir()  # no records: skipped
    output = tmp_path / "README.md"
    text = results_page.write_page(str(results_dir), str(output))
    assert output.read_text() == text
    assert "generated by `python -m experiments.results_page`" in text
    assert "## luong: Luong et al. 2015" in text and "## old_lm: An older language model run" in text
    assert "## empty" not in text
    good = next(line for line in text.splitlines() if line.startswith(f"| {GOOD} |"))
    assert good.startswith(f"| {GOOD} | 2 | 100.00 ± 0.00 |") and "<0.001" in good and "20.9 BLEU" in good
    claim = next(line for line in text.splitlines() if line.startswith("| luong | attention beats"))
    assert "| yes | <0.001 | `python -m experiments.luong` |" in claim and "20.9 vs 14.0 BLEU" in claim
    assert "| mem_0 | 1 | 84.20 |" in text and "(recorded before seeds and significance tests" in text


def test_results_page_builds_from_the_recorded_results():
    text = results_page.build_page(results_page.DEFAULT_RESULTS_DIR)
    for name in ("luong", "bahdanau", "transformer", "head_pruning", "transformer_xl"):
        assert f"## {name}: " in text


def test_results_page_accuracy_and_pooled_seed_records(tmp_path):
    results_dir = tmp_path / "results"
    cls = results_dir / "classification"
    cls.mkdir(parents=True)
    records = [{"row": "cnn_max", "seed": s, "test_accuracy": 50.0 + s, "baseline_row": "cnn_max"} for s in (0, 1)]
    records += [{"row": "han_att", "seed": s, "test_accuracy": 60.0 + 2 * s, "baseline_row": "cnn_max",
                 "test_accuracy_ci": [5.0 + s, 15.0 + s], "test_accuracy_p": 0.01 * (s + 1)} for s in (0, 1)]
    (cls / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pooled = results_dir / "nw"
    pooled.mkdir()
    (pooled / "results.jsonl").write_text(json.dumps({"row": "gaussian", "seeds": [0, 1, 2], "test_mse": 0.4,
                                                      "test_mse_std": 0.05, "mse_difference_ci": [0.1, 0.2]}) + "\n")
    text = results_page.build_page(str(results_dir))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| row | seeds | test accuracy %"))
    assert "Δ accuracy vs cnn_max, 95% CI" in header
    han = next(line for line in lines if line.startswith("| han_att |"))
    # mean ± std over seeds, the union of the CIs, the largest p
    assert han == "| han_att | 2 | 61.00 ± 1.41 | [5.00, 16.00] | 0.020 |"
    assert next(line for line in lines if line.startswith("| cnn_max |")).endswith("| - | baseline |")
    assert "| gaussian | 3 | 0.4 ± 0.05 |" in text and "Seeds: 0, 1, 2" in text
    assert "(recorded before seeds" not in text
