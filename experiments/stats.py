"""Statistics of the experiments: paired significance tests, confidence intervals, and the claims a table tests.

Nothing here implements a test itself; these are thin, deterministic wrappers around the libraries:

* Translation (BLEU, chrF): sacrebleu's paired tests, `sacrebleu.significance.PairedTest`, between a baseline
  system and one or more systems on the same references (`paired_translation_test`, cached by `TranslationTester`):

  - ``"bs"``: paired bootstrap resampling (Koehn 2004, "Statistical Significance Tests for Machine Translation
    Evaluation", EMNLP; sacrebleu replicates Moses' ``bootstrap-hypothesis-difference-significance.pl``). Test
    sentences are resampled with replacement ``n_samples`` times, the same resample for both systems; p is the
    share of resamples whose centred score difference exceeds the observed one.
  - ``"ar"``: paired approximate randomisation (Riezler & Maxwell 2005, "On Some Pitfalls in Automatic
    Evaluation and Significance Testing for MT", ACL workshop; sacrebleu follows MultEval, Clark et al. 2011):
    each sentence's pair of outputs is swapped between the systems at random, ``n_samples`` times.

  Both give each system's 95% confidence interval from bootstrap resamples of its test sentences (sacrebleu's
  ``estimate_ci``: the bootstrap mean +- half the width of the 2.5%-97.5% percentile range). The resampling
  seed is fixed (sacrebleu's ``SACREBLEU_SEED``, set for the call; default 12345), so results are repeatable.
  One correction on top: sacrebleu counts resamples with a difference strictly greater than the observed one,
  so two systems with the same score (e.g. identical outputs) would get p = 1/(n+1); with no observed
  difference there is nothing to test, and the wrappers report p = 1.

* Accuracy (or any per-example 0/1 correctness): `paired_accuracy_test` on two correctness vectors over the
  same test examples: the 95% CI of the accuracy difference from `scipy.stats.bootstrap` with paired resampling
  (Koehn 2004's paired bootstrap, percentile interval) and the p-value from `scipy.stats.permutation_test` with
  ``permutation_type="samples"`` (paired approximate randomisation, Riezler & Maxwell 2005).

* Claims: a `Claim` names the ordering a paper reports ("attention beats no attention on BLEU"); `claim_verdict`
  decides it from the per-(row, seed) records: it holds when the better row's mean beats every worse row's mean
  (by more than ``-margin``), and its p-value is the largest paired p between them over pairs and seeds (every
  seed must be significant).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

TESTS = ("bs", "ar")
TEST_NAMES = {"bs": "paired bootstrap resampling (Koehn 2004)",
              "ar": "paired approximate randomisation (Riezler & Maxwell 2005)"}
METRICS = ("bleu", "chrf")
DEFAULT_SEED = 12345  # sacrebleu's own default SACREBLEU_SEED
CI_SAMPLES = 1000  # bootstrap resamples of the confidence intervals


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One system's corpus score, its bootstrap 95% CI and its paired p-value against the baseline.

    Attributes:
      score: corpus score in [0, 100].
      mean: mean over the bootstrap resamples (None when no CI was computed).
      ci: half-width of the 95% interval around ``mean`` (None when no CI was computed).
      p_value: paired p against the baseline; None for the baseline itself.
    """

    score: float
    mean: float | None = None
    ci: float | None = None
    p_value: float | None = None

    @property
    def interval(self) -> tuple[float, float] | None:
        """(low, high) of the 95% confidence interval, or None."""
        if self.mean is None or self.ci is None:
            return None
        return (self.mean - self.ci, self.mean + self.ci)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """What `paired_translation_test` returns.

    Attributes:
      signatures: metric ("bleu", "chrf") -> sacrebleu's signature string, test and seed included.
      baseline: metric -> the baseline's `MetricResult` (p_value None).
      systems: system name -> metric -> `MetricResult` with the p-value against the baseline.
    """

    signatures: dict[str, str]
    baseline: dict[str, MetricResult]
    systems: dict[str, dict[str, MetricResult]]


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF  # pylint: disable=import-outside-toplevel

    if name == "bleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    raise ValueError(f"unknown metric {name!r}; use one of {METRICS}")


@contextlib.contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    """Sets SACREBLEU_SEED (read by PairedTest) for the block and keeps sacrebleu's INFO lines out of the log."""
    old = os.environ.get("SACREBLEU_SEED")
    logger = logging.getLogger("sacrebleu")
    old_level = logger.level
    os.environ["SACREBLEU_SEED"] = str(seed)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_translation_test(references: Sequence[str], baseline: Sequence[str],
                            systems: Mapping[str, Sequence[str]], *, test: str = "bs", n_samples: int = 1000,
                            seed: int = DEFAULT_SEED, metrics: Sequence[str] = METRICS) -> PairedResult:
    """Paired significance of each system against the baseline on BLEU and chrF, by sacrebleu's `PairedTest`.

    Args:
      references: N reference sentences (one reference per sentence).
      baseline: N hypotheses of the baseline system.
      systems: name -> N hypotheses; may be empty (then only the baseline's score and CI are computed).
      test: "bs" (paired bootstrap resampling, Koehn 2004) or "ar" (paired approximate randomisation,
        Riezler & Maxwell 2005).
      n_samples: bootstrap resamples ("bs") or randomisation trials ("ar"); the CIs of "ar" use `CI_SAMPLES`.
      seed: the resampling seed (>= 1: sacrebleu treats 0 as "unseeded").
      metrics: any of "bleu", "chrf".

    Returns:
      A `PairedResult`. A system whose score equals the baseline's gets p = 1 (see the module docstring).

    Raises:
      ValueError: unknown test or metric, a seed < 1, n_samples < 1, no references, or a hypothesis list whose
        length differs from the references'.
    """
    from sacrebleu.significance import PairedTest  # pylint: disable=import-outside-toplevel

    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r}; use one of {TESTS}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed must be an int >= 1 (sacrebleu does not seed 0), got {seed=}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples=}")
    if not references:
        raise ValueError("no references to score against")
    for name, hyps in [("baseline", baseline), *systems.items()]:
        if len(hyps) != len(references):
            raise ValueError(f"system {name!r} has {len(hyps)} hypotheses for {len(references)} references")
    named = {m: _metric(m) for m in metrics}
    with _sacrebleu_seed(seed):
        paired = PairedTest([("__baseline__", list(baseline))] + [(n, list(h)) for n, h in systems.items()],
                            named, [list(references)], test_type=test, n_samples=n_samples,
                            n_ar_confidence=CI_SAMPLES if test == "ar" else -1, n_jobs=1)
        signatures, scores = paired()
    # PairedTest keys its output by the metric's score name ("BLEU", "chrF2"), in the order of ``named``.
    by_metric = dict(zip(named, [k for k in scores if k != "System"]))
    sig_by_metric = dict(zip(named, signatures.values()))
    names = scores["System"]

    def result(raw, base_score: float | None) -> MetricResult:
        p = raw.p_value
        if base_score is not None and raw.score == base_score:
            p = 1.0  # no observed difference: nothing to attribute to chance
        return MetricResult(score=float(raw.score), mean=None if raw.mean is None else float(raw.mean),
                            ci=None if raw.ci is None else float(raw.ci), p_value=None if p is None else float(p))

    base = {m: result(scores[k][0], None) for m, k in by_metric.items()}
    out: dict[str, dict[str, MetricResult]] = {}
    for i, name in enumerate(names[1:], start=1):
        out[name] = {m: result(scores[k][i], base[m].score) for m, k in by_metric.items()}
    return PairedResult(signatures={m: str(s) for m, s in sig_by_metric.items()}, baseline=base, systems=out)


def text_hash(lines: Sequence[str]) -> str:
    """A short stable hash of a list of sentences (keys the significance cache)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:20]


class TranslationTester:
    """`paired_translation_test` with a JSON cache, so reports after every row recompute nothing.

    Entries are keyed by the test, its sample count and seed, the sacrebleu version and the hashes of the
    references and of the hypotheses, so a retrained row (new outputs) is tested again.

    Args:
      references: the N test references.
      test: "bs" or "ar".
      n_samples: resamples or trials.
      seed: the resampling seed (>= 1).
      cache_path: a JSON file (created), or None for no cache.
    """

    def __init__(self, references: Sequence[str], *, test: str = "bs", n_samples: int = 1000,
                 seed: int = DEFAULT_SEED, cache_path: str | None = None):
        import sacrebleu  # pylint: disable=import-outside-toplevel

        if test not in TESTS:
            raise ValueError(f"unknown paired test {test!r}; use one of {TESTS}")
        self.references = list(references)
        self.test, self.n_samples, self.seed = test, int(n_samples), int(seed)
        self.cache_path = cache_path
        self._prefix = f"{test}:{self.n_samples}:{self.seed}:{sacrebleu.__version__}:{text_hash(self.references)}"
        self._cache: dict[str, Any] = {}
        if cache_path and os.path.exists(cache_path):
            try:
                with open(cache_path, encoding="utf-8") as f:
                    self._cache = json.load(f)
            except (OSError, json.JSONDecodeError):
                self._cache = {}
        self._dirty = False

    @property
    def signatures(self) -> dict[str, str]:
        """metric -> sacrebleu signature of this test (computed once on the references themselves)."""
        key = f"{self._prefix}:signatures"
        if key not in self._cache:
            self._run(self.references, {})
        return dict(self._cache[key])

    def interval(self, hypotheses: Sequence[str]) -> dict[str, MetricResult]:
        """metric -> score and 95% CI of one system (p_value None)."""
        key = f"{self._prefix}:ci:{text_hash(hypotheses)}"
        if key not in self._cache:
            self._run(hypotheses, {})
        return {m: MetricResult(**v) for m, v in self._cache[key].items()}

    def compare(self, baseline: Sequence[str], systems: Mapping[str, Sequence[str]]) -> dict[str, dict[str, MetricResult]]:
        """name -> metric -> `MetricResult`: the system's score and CI (as `interval`) and its p against ``baseline``.

        Pairs already in the cache are not recomputed; the others run in one `PairedTest`.
        """
        base_hash = text_hash(baseline)
        keys = {name: f"{self._prefix}:pair:{base_hash}:{text_hash(hyps)}" for name, hyps in systems.items()}
        todo = {name: hyps for name, hyps in systems.items() if keys[name] not in self._cache}
        if todo:
            self._run(baseline, todo)
        out = {}
        for name, hyps in systems.items():
            ci = self.interval(hyps)
            out[name] = {m: dataclasses.replace(r, p_value=self._cache[keys[name]][m]) for m, r in ci.items()}
        return out

    def _run(self, baseline: Sequence[str], systems: Mapping[str, Sequence[str]]) -> None:
        # Aliases, so that two systems with the same name cannot collide inside PairedTest.
        renamed = {f"s{i}": hyps for i, hyps in enumerate(systems.values())}
        result = paired_translation_test(self.references, baseline, renamed, test=self.test,
                                         n_samples=self.n_samples, seed=self.seed)
        self._cache[f"{self._prefix}:signatures"] = result.signatures
        base_hash = text_hash(baseline)
        self._cache[f"{self._prefix}:ci:{base_hash}"] = {m: r.to_json() for m, r in result.baseline.items()}
        for alias, hyps in renamed.items():
            per_metric = result.systems[alias]
            self._cache[f"{self._prefix}:pair:{base_hash}:{text_hash(hyps)}"] = {m: r.p_value
                                                                                 for m, r in per_metric.items()}
            if self.test == "bs":
                # The bootstrap draws the same resamples for every system, so a system's interval here equals
                # the one it gets alone; "ar" draws its CI resamples after the swaps, so those are computed alone.
                self._cache[f"{self._prefix}:ci:{text_hash(hyps)}"] = {
                        m: dataclasses.replace(r, p_value=None).to_json() for m, r in per_metric.items()}
        self._dirty = True

    def save(self) -> None:
        """Writes the cache file (if there is one and something changed)."""
        if not self.cache_path or not self._dirty:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        tmp = self.cache_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._cache, f, sort_keys=True)
        os.replace(tmp, self.cache_path)
        self._dirty = False


@dataclasses.dataclass(frozen=True)
class AccuracyComparison:
    """What `paired_accuracy_test` returns.

    Attributes:
      accuracy: the system's accuracy in [0, 1].
      baseline_accuracy: the baseline's accuracy in [0, 1].
      difference: accuracy - baseline_accuracy.
      ci: (low, high) 95% paired-bootstrap interval of the difference.
      p_value: two-sided paired approximate-randomisation p of the difference.
      n: number of test examples.
    """

    accuracy: float
    baseline_accuracy: float
    difference: float
    ci: tuple[float, float]
    p_value: float
    n: int


def paired_accuracy_test(correct: Sequence[bool] | np.ndarray, baseline_correct: Sequence[bool] | np.ndarray, *,
                         n_resamples: int = 9999, seed: int = 0,
                         confidence_level: float = 0.95) -> AccuracyComparison:
    """Accuracy difference of two systems on the same test examples, its paired-bootstrap CI and its p-value.

    Args:
      correct: [N] bool (or 0/1): whether the system got example i right.
      baseline_correct: [N] bool (or 0/1): the same for the baseline.
      n_resamples: bootstrap resamples and randomisation trials (scipy uses the exact test when 2**N is fewer).
      seed: seed of both resamplings (numpy Generator).
      confidence_level: of the interval.

    Returns:
      An `AccuracyComparison`: CI by `scipy.stats.bootstrap` (paired, percentile; Koehn 2004), p by
      `scipy.stats.permutation_test` (``permutation_type="samples"``: each example's pair of outcomes is
      swapped at random; Riezler & Maxwell 2005).

    Raises:
      ValueError: if the vectors are not 1-D, differ in length, or hold fewer than 2 examples.
    """
    from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel

    x = np.asarray(correct, dtype=np.float64)
    y = np.asarray(baseline_correct, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"need two 1-D correctness vectors of the same length >= 2, got {x.shape=} {y.shape=}")

    def difference(a, b, axis=-1):
        return np.mean(a, axis=axis) - np.mean(b, axis=axis)

    observed = float(difference(x, y))
    boot = scipy_stats.bootstrap((x, y), difference, paired=True, vectorized=True, n_resamples=n_resamples,
                                 confidence_level=confidence_level, method="percentile",
                                 rng=np.random.default_rng(seed))
    perm = scipy_stats.permutation_test((x, y), difference, permutation_type="samples", vectorized=True,
                                        n_resamples=n_resamples, alternative="two-sided",
                                        rng=np.random.default_rng(seed))
    return AccuracyComparison(accuracy=float(x.mean()), baseline_accuracy=float(y.mean()), difference=observed,
                              ci=(float(boot.confidence_interval.low), float(boot.confidence_interval.high)),
                              p_value=float(perm.pvalue), n=int(x.shape[0]))


LOWER_IS_BETTER_SUFFIXES = ("ppl", "loss", "nll")


@dataclasses.dataclass(frozen=True)
class Claim:
    """An ordering a paper reports, tested on the rows of one experiment.

    Attributes:
      name: short statement, e.g. "attention beats no attention".
      better: the row that should come out ahead.
      worse: the rows it should beat.
      metric: a record key ("test_bleu", "test_chrf", "test_ppl", "heads_kept", ...); significance is tested
        for test_bleu and test_chrf.
      paper: the paper's numbers behind the claim, e.g. "Table 4: 20.9 vs 14.0 BLEU".
      source: citation (paper, arXiv id, table / section).
      higher_is_better: None infers it from the metric (perplexity, loss, nll: lower is better).
      margin: the claim holds when the better row beats each worse row by more than -margin (0: strictly
        better; 0.5 with BLEU: "at most 0.5 BLEU worse", for claims that something costs little).
    """

    name: str
    better: str
    worse: tuple[str, ...]
    metric: str = "test_bleu"
    paper: str = ""
    source: str = ""
    higher_is_better: bool | None = None
    margin: float = 0.0

    @property
    def higher(self) -> bool:
        """Whether a larger value of the metric is better."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        return not self.metric.endswith(LOWER_IS_BETTER_SUFFIXES)

    @property
    def rows(self) -> tuple[str, ...]:
        return (self.better, *self.worse)

    def beats(self, better_value: float, worse_value: float) -> bool:
        """Whether ``better_value`` beats ``worse_value`` by more than -margin in the metric's direction."""
        gain = better_value - worse_value if self.higher else worse_value - better_value
        return gain > -self.margin

    def describe(self) -> str:
        """The claim as a sentence: "global_general > no_attention on test_bleu"."""
        op = ">" if self.higher else "<"
        margin = f" (within {self.margin:g})" if self.margin else ""
        return f"{self.better} {op} {', '.join(self.worse)} on {self.metric}{margin}"


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation (ddof=1; 0 for one value), n) of the non-None values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0), len(xs)


def claim_verdict(claim: Claim, records: Sequence[Mapping[str, Any]],
                  p_values: Mapping[tuple[str, str, int], float | None] | None = None,
                  intervals: Mapping[str, Sequence[float] | None] | None = None) -> dict[str, Any]:
    """Decides a claim from per-(row, seed) records.

    Args:
      claim: the claim.
      records: result records with "row", "seed" and the claim's metric (rows not in the claim are ignored).
      p_values: (better row, worse row, seed) -> paired p of the claim's metric, or None where untested.
      intervals: row -> (low, high) 95% CI of the metric, to copy into the verdict.

    Returns:
      A dict: name, better, worse, metric, paper, source, margin, higher_is_better, "rows": {row: {"mean", "std",
      "n", "seeds", "ci"}}, "holds" (True / False, or None when a row has no value), "missing" (rows without a
      value), "p" (the largest paired p over worse rows and shared seeds, where a seed whose values order the
      pair the other way counts as p = 1: a test that the reverse ordering is significant is no evidence for
      the claim; None when none was tested), "p_seeds" (how many (pair, seed) tests it covers) and
      "seeds_holding" ([k, n]: in k of the n (worse row, seed) pairs the better row beats the worse one).
    """
    rows: dict[str, dict[str, Any]] = {}
    for row in claim.rows:
        mine = [r for r in records if r.get("row") == row and r.get(claim.metric) is not None]
        mean, std, n = mean_std([r[claim.metric] for r in mine])
        rows[row] = {"mean": mean, "std": std, "n": n, "seeds": sorted(int(r.get("seed", 0)) for r in mine),
                     "ci": None if not intervals or intervals.get(row) is None else list(intervals[row])}
    missing = [row for row, s in rows.items() if s["mean"] is None]
    holds = None if missing else all(claim.beats(rows[claim.better]["mean"], rows[w]["mean"]) for w in claim.worse)
    value = {(r.get("row"), int(r.get("seed", 0))): float(r[claim.metric]) for r in records
             if r.get("row") in claim.rows and r.get(claim.metric) is not None}
    ps, agree, pairs = [], 0, 0
    for w in claim.worse:
        for seed in sorted(set(rows[claim.better]["seeds"]) & set(rows[w]["seeds"])):
            same_way = claim.beats(value[(claim.better, seed)], value[(w, seed)])
            pairs += 1
            agree += int(same_way)
            p = (p_values or {}).get((claim.better, w, seed))
            if p is not None:
                ps.append(float(p) if same_way else 1.0)
    return {"name": claim.name, "better": claim.better, "worse": list(claim.worse), "metric": claim.metric,
            "paper": claim.paper, "source": claim.source, "margin": claim.margin, "higher_is_better": claim.higher,
            "statement": claim.describe(), "rows": rows, "holds": holds, "missing": missing,
            "p": max(ps) if ps else None, "p_seeds": len(ps), "seeds_holding": [agree, pairs]}


def format_p(p: float | None) -> str:
    """A p-value for a table: "-" for None, "<0.001" below that, else 3 decimals."""
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def describe_test(test: str, n_samples: int, seed: int = DEFAULT_SEED) -> str:
    """One sentence naming the test behind p and the CI, for the notes under a table."""
    if test not in TESTS:
        return "no significance test (eval.significance=none)"
    what = f"{n_samples} resamples" if test == "bs" else f"{n_samples} trials"
    return (f"p: sacrebleu's {TEST_NAMES[test]} against the baseline row on the same test sentences ({what}, "
            f"seed {seed}); 95% CI: sacrebleu's bootstrap interval over test sentences (bootstrap mean +- half "
            f"the 2.5-97.5 percentile range, {n_samples if test == 'bs' else CI_SAMPLES} resamples)")
