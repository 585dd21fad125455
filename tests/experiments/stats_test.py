"""Tests of experiments/stats.py on toy cases whose answer is known.

* Translation: a system compared with an identical copy of the baseline gets p = 1; a system that reproduces
  the references gets p < 0.01 against a noisy baseline, with either of sacrebleu's paired tests; scores equal
  sacrebleu's own corpus scores; results are repeatable; the cache answers without recomputing.
* Accuracy: identical correctness vectors give a zero difference and p = 1; 90% vs 50% correct gives p < 0.01
  and a CI around 0.4.
* Claims: the verdict and its p-value on fixture records.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu

from experiments import results
from experiments import stats

WORDS = "the a cat dog sat on mat ran fast slow big red house tree".split()


def toy_corpus(n=120, keep=0.6, seed=0):
    """References, a noisy system (each word kept with probability ``keep``) and a second noisy system."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))) for _ in range(n)]

    def noisy():
        return [" ".join(w if rng.random() < keep else rng.choice(WORDS) for w in r.split()) for r in refs]

    return refs, noisy(), noisy()


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_identical_systems_p_1_and_clearly_better_p_below_001(test):
    refs, noisy, _ = toy_corpus()
    result = stats.paired_translation_test(refs, noisy, {"same": list(noisy), "perfect": list(refs)}, test=test,
                                           n_samples=500)
    for metric in ("bleu", "chrf"):
        assert result.systems["same"][metric].p_value == 1.0
        assert result.systems["perfect"][metric].p_value < 0.01
        assert result.baseline[metric].p_value is None
    assert result.baseline["bleu"].score == pytest.approx(sacrebleu.corpus_bleu(noisy, [refs]).score)
    assert result.baseline["chrf"].score == pytest.approx(sacrebleu.corpus_chrf(noisy, [refs]).score)
    low, high = result.baseline["bleu"].interval
    assert low < result.baseline["bleu"].score < high  # the score lies inside its bootstrap interval
    assert f"{test}:500" in result.signatures["bleu"] and "seed:12345" in result.signatures["chrf"]


def test_similar_systems_are_not_significant_and_runs_repeat():
    refs, a, b = toy_corpus()
    first = stats.paired_translation_test(refs, a, {"b": b}, n_samples=300)
    again = stats.paired_translation_test(refs, a, {"b": b}, n_samples=300)
    assert first == again  # fixed seed: the same resamples
    assert first.systems["b"]["bleu"].p_value > 0.05  # same noise level: no real difference


def test_bad_arguments():
    refs, a, _ = toy_corpus(n=10)
    with pytest.raises(ValueError, match="hypotheses"):
        stats.paired_translation_test(refs, a[:-1], {})
    with pytest.raises(ValueError, match="paired test"):
        stats.paired_translation_test(refs, a, {}, test="t")
    with pytest.raises(ValueError, match="seed"):
        stats.paired_translation_test(refs, a, {}, seed=0)


def test_tester_caches_by_content(tmp_path, monkeypatch):
    refs, a, b = toy_corpus(n=60)
    path = str(tmp_path / "sig.json")
    tester = stats.TranslationTester(refs, n_samples=200, cache_path=path)
    first = tester.compare(a, {"b": b})
    tester.save()
    calls = []
    original = stats.paired_translation_test
    monkeypatch.setattr(stats, "paired_translation_test", lambda *x, **k: calls.append(1) or original(*x, **k))
    again = stats.TranslationTester(refs, n_samples=200, cache_path=path)
    assert again.compare(a, {"renamed": b})["renamed"] == first["b"]  # keyed by the outputs, not the name
    assert again.interval(a)["bleu"].score == pytest.approx(sacrebleu.corpus_bleu(a, [refs]).score)
    assert not calls
    again.compare(a, {"new": refs})  # new outputs are tested
    assert calls == [1]


def test_accuracy_identical_and_clearly_better():
    same = stats.paired_accuracy_test([1, 0, 1, 1] * 25, [1, 0, 1, 1] * 25)
    assert same.difference == 0.0 and same.p_value == 1.0 and same.ci == (0.0, 0.0)
    better = stats.paired_accuracy_test([1] * 90 + [0] * 10, [1] * 50 + [0] * 50, n_resamples=2000)
    assert better.difference == pytest.approx(0.4) and better.p_value < 0.01
    assert better.ci[0] < 0.4 < better.ci[1] and better.ci[0] > 0.2
    assert (better.accuracy, better.baseline_accuracy, better.n) == (0.9, 0.5, 100)
    with pytest.raises(ValueError, match="same length"):
        stats.paired_accuracy_test([1, 0], [1, 0, 1])


def test_accuracy_exact_small_case():
    # 5 examples where only the system is right, 0 where only the baseline is: the exact two-sided
    # randomisation test gives p = 2 / 2**5 (the all-system and all-baseline assignments of the 5 discordant pairs).
    result = stats.paired_accuracy_test([1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1])
    assert result.p_value == pytest.approx(2 / 32)


def fixture_records():
    # Row "attn" beats row "plain" on every seed; "other" is worse than "plain".
    return [{"row": "plain", "seed": 0, "test_bleu": 10.0, "test_ppl": 20.0},
            {"row": "plain", "seed": 1, "test_bleu": 12.0, "test_ppl": 22.0},
            {"row": "attn", "seed": 0, "test_bleu": 15.0, "test_ppl": 15.0},
            {"row": "attn", "seed": 1, "test_bleu": 17.0, "test_ppl": 16.0},
            {"row": "other", "seed": 0, "test_bleu": 8.0, "test_ppl": 30.0}]


def test_claim_verdict_on_fixture_records():
    records = fixture_records()
    claim = stats.Claim(name="attention helps", better="attn", worse=("plain", "other"), paper="20.9 vs 14.0")
    verdict = stats.claim_verdict(claim, records, p_values={("attn", "plain", 0): 0.002, ("attn", "plain", 1): 0.03,
                                                              ("attn", "other", 0): 0.001})
    assert verdict["holds"] is True and verdict["p"] == 0.03 and verdict["p_seeds"] == 3  # the largest p
    assert verdict["rows"]["attn"]["mean"] == 16.0
    assert verdict["rows"]["attn"]["std"] == pytest.approx(np.std([15.0, 17.0], ddof=1))
    assert verdict["rows"]["other"]["n"] == 1 and verdict["missing"] == []
    # Perplexity: lower is better, inferred from the metric name.
    assert stats.claim_verdict(stats.Claim("ppl", "attn", ("plain",), metric="test_ppl"), records)["holds"] is True
    assert stats.claim_verdict(stats.Claim("rev", "plain", ("attn",)), records)["holds"] is False
    # A margin: "plain is at most 6 BLEU worse than attn" holds, "at most 4" does not.
    assert stats.claim_verdict(stats.Claim("close", "plain", ("attn",), margin=6.0), records)["holds"] is True
    assert stats.claim_verdict(stats.Claim("close", "plain", ("attn",), margin=4.0), records)["holds"] is False
    missing = stats.claim_verdict(stats.Claim("x", "attn", ("absent",)), records)
    assert missing["holds"] is None and missing["missing"] == ["absent"] and missing["p"] is None


def test_claim_verdict_counts_seeds_that_disagree():
    records = [{"row": "feed", "seed": 0, "test_bleu": 12.1}, {"row": "plain", "seed": 0, "test_bleu": 11.5},
               {"row": "feed", "seed": 1, "test_bleu": 13.5}, {"row": "plain", "seed": 1, "test_bleu": 15.4},
               {"row": "feed", "seed": 2, "test_bleu": 10.4}, {"row": "plain", "seed": 2, "test_bleu": 8.9}]
    claim = stats.Claim("feeding helps", "feed", ("plain",))
    p = {("feed", "plain", 0): 0.008, ("feed", "plain", 1): 0.001, ("feed", "plain", 2): 0.002}
    verdict = stats.claim_verdict(claim, records, p_values=p)
    # The means order them the claimed way (12.0 > 11.93), but seed 1 reverses it, so its small p is no support.
    assert verdict["holds"] is True and verdict["seeds_holding"] == [2, 3] and verdict["p"] == 1.0
    assert results.seeds_holding_note(verdict) == " (2 of 3 seeds)"
    agreeing = stats.claim_verdict(claim, [r for r in records if r["seed"] != 1], p_values=p)
    assert agreeing["p"] == 0.008 and agreeing["seeds_holding"] == [2, 2]
    assert results.seeds_holding_note(agreeing) == ""
