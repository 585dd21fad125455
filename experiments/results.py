"""Results files of an experiment workdir: results.jsonl (one JSON record per run) and results.md.

A translation run record (one per (row, seed)) holds: row, seed, the descriptive columns (attention, score,
mode, ...), dev_ppl, test_ppl, dev_bleu, test_bleu, test_chrf, steps, train_minutes, stop_reason, fingerprint
(hash of the run's config), for experiments that report it bleu_by_length (a list of {"bucket", "lo", "hi",
"n", "bleu"}), and, added when the table is reported, the statistics: test_bleu_ci / test_chrf_ci ([low, high]
95% bootstrap interval), test_bleu_p / test_chrf_p (paired p against the baseline row of the same seed),
baseline_row, paper (the paper's numbers for the row) and the sacrebleu signatures.

results.md has one line per row (`summarize`: the mean +- sample standard deviation over seeds of every
number, and the number of seeds) and whatever sections the caller adds (claims, notes). Experiments with one
record per row and no seeds (the language models) use the same `write`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import datetime
import json
import os
from typing import Any

COLUMNS = (
    ("row", "row"),
    ("attention", "attention"),
    ("score", "score"),
    ("mode", "mode"),
    ("dev ppl", "dev_ppl"),
    ("test ppl", "test_ppl"),
    ("dev BLEU", "dev_bleu"),
    ("test BLEU", "test_bleu"),
    ("steps", "steps"),
    ("train minutes", "train_minutes"),
)


# Left-aligned (text) columns; every other column is right-aligned.
TEXT_COLUMNS = ("row", "attention", "score", "mode", "norm", "positions", "description", "paper", "model", "pooling")


def statistics_columns(columns: Sequence[tuple[str, str]], *, baseline: str = "", significance: bool = True,
                       paper: bool = False) -> tuple[tuple[str, str], ...]:
    """``columns`` with the statistics: after "test BLEU" its 95% CI, the p-value against ``baseline`` (when
    ``significance``), test chrF and, when ``paper``, the paper's number (column "paper"); the number of seeds
    before "steps" (or last)."""
    extra = []
    if significance:
        extra.append(("test BLEU 95% CI", "test_bleu_ci"))
        if baseline:
            extra.append((f"p vs {baseline}", "test_bleu_p"))
    extra.append(("test chrF", "test_chrf"))
    if paper:
        extra.append(("paper", "paper"))
    out: list[tuple[str, str]] = []
    seeds = [("seeds", "n_seeds")]
    for header, key in columns:
        if key == "steps":
            out.extend(seeds)
            seeds = []
        out.append((header, key))
        if key == "test_bleu":
            out.extend(extra)
            extra = []
    return tuple(out + extra + seeds)


def describe_model(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The attention / score / mode columns of a row from its model config."""
    attention = model_config["attention"]
    if attention == "none":
        return {"attention": "none", "score": "-", "mode": "-"}
    if attention == "bahdanau":
        return {"attention": "bahdanau", "score": "additive", "mode": "global"}
    return {"attention": attention, "score": model_config["score"], "mode": model_config["mode"]}


# Keys whose spread over seeds is always shown (mean +- std), even when it is 0.
MEASURED_SUFFIXES = ("ppl", "bleu", "chrf", "loss", "accuracy", "map")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(key: str, value: float) -> str:
    if key.endswith("map"):
        return f"{value:.4f}"  # mean average precision, a fraction
    if key.endswith(("ppl", "bleu", "chrf", "loss", "accuracy")):
        return f"{value:.2f}"
    if key == "train_minutes":
        return f"{value:.1f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return str(value)


def seeds_holding_note(verdict: Mapping[str, Any]) -> str:
    """" (2 of 3 seeds)" when a claim's ordering holds in only some of its (pair, seed) comparisons ("(4 of 24
    comparisons)" for a claim against several rows), else ""."""
    agree, pairs = (verdict.get("seeds_holding") or [0, 0])[:2]
    unit = "seeds" if len(verdict.get("worse") or ()) <= 1 else "comparisons"
    return f" ({agree} of {pairs} {unit})" if pairs > 1 and agree not in (0, pairs) else ""


def format_p(p: float | None) -> str:
    """A p-value for a table: "-" for None, "<0.001" below that, else 3 decimals."""
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cell(key: str, value: Any, spread: Mapping[str, float] | None = None) -> str:
    if value is None:
        return "-"
    if key.endswith("_ci"):
        digits = 3 if key.endswith("map_ci") else 2  # MAP is a fraction, the others are points
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return f"[{value[0]:.{digits}f}, {value[1]:.{digits}f}]"
        return "-"
    if key.endswith("_p") and _is_number(value):
        return format_p(value)
    if _is_number(value):
        text = _number(key, value)
        std = (spread or {}).get(key)
        if std is not None and (std > 0 or key.endswith(MEASURED_SUFFIXES)):
            if key.endswith("map"):
                text += f" ± {std:.4f}"
            elif key.endswith(MEASURED_SUFFIXES) or key == "train_minutes":
                text += f" ± {std:.2f}"
            else:
                text += f" ± {std:.2g}"
        return text
    return str(value).replace("|", "/")


def markdown_table(records: Sequence[Mapping[str, Any]],
                   columns: Sequence[tuple[str, str]] | None = None) -> str:
    """The main results table (one line per row) in GitHub Markdown; ``columns`` defaults to COLUMNS.

    A record from `summarize` shows its numbers as mean ± std over seeds.
    """
    columns = COLUMNS if columns is None else columns
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" if k in TEXT_COLUMNS else "---:" for _, k in columns) + "|"]
    for rec in records:
        spread = rec.get("_spread")
        lines.append("| " + " | ".join(_cell(k, rec.get(k), spread) for _, k in columns) + " |")
    return "\n".join(lines)


def _same(values: Sequence[Any]) -> bool:
    first = json.dumps(values[0], sort_keys=True, default=str)
    return all(json.dumps(v, sort_keys=True, default=str) == first for v in values[1:])


def _mean_buckets(runs: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """BLEU by length averaged over seeds, bucket by bucket (the buckets are the same for every seed)."""
    out = []
    for i, bucket in enumerate(runs[0]):
        values = [r[i]["bleu"] for r in runs if i < len(r) and r[i].get("bleu") is not None]
        out.append({**bucket, "bleu": sum(values) / len(values) if values else None})
    return out


def _union(intervals: Sequence[Any]) -> list[float] | None:
    known = [iv for iv in intervals if isinstance(iv, (list, tuple)) and len(iv) == 2]
    if not known:
        return None
    return [min(iv[0] for iv in known), max(iv[1] for iv in known)]


def paper_cell(entry: Mapping[str, Any] | None, footnotes: dict[str, int]) -> str | None:
    """The "paper" column: "19.0 BLEU, 5.9 ppl [1]" from a config module's PAPER entry ({"bleu", "ppl", "text",
    "source"}); registers its source in ``footnotes`` (source -> number, in order of first use)."""
    if not entry:
        return None
    parts = []
    if entry.get("bleu") is not None:
        parts.append(f"{entry['bleu']:g} BLEU")
    if entry.get("ppl") is not None:
        parts.append(f"{entry['ppl']:g} ppl")
    if entry.get("text"):
        parts.append(str(entry["text"]))
    text = ", ".join(parts) or "-"
    source = entry.get("source")
    if source:
        footnotes.setdefault(str(source), len(footnotes) + 1)
        text += f" [{footnotes[str(source)]}]"
    return text


def summarize(records: Sequence[Mapping[str, Any]], tested: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One summary per row (in order of first appearance) from per-(row, seed) records.

    The statistics of BLEU, chrF, accuracies, MAP and the metrics named in ``tested`` combine conservatively:
    the 95% CIs (``*_ci``) become the union of the seeds' intervals, the p-values (``*_p``) the largest over
    seeds (None unless every seed has one). Other numbers
    become their mean over the row's records, with the sample standard deviation (ddof=1) in
    ``"_spread"[key]`` when there are several; other values are kept when every seed agrees, else listed
    (", "-joined; lists and dicts: the first record's); bleu_by_length is averaged bucket by bucket. Adds
    "n_seeds" and "seeds".

    Returns:
      A list of dicts with the records' keys plus n_seeds, seeds and _spread.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(str(rec.get("row")), []).append(rec)
    out = []
    for row, recs in groups.items():
        keys = list(dict.fromkeys(k for r in recs for k in r))
        summary: dict[str, Any] = {}
        spread: dict[str, float] = {}
        for key in keys:
            present = [r[key] for r in recs if r.get(key) is not None]
            if not present:
                summary[key] = None
            elif key.endswith(("bleu_ci", "chrf_ci", "accuracy_ci", "map_ci", *(f"{t}_ci" for t in tested))):
                summary[key] = _union(present)
            elif key.endswith(("bleu_p", "chrf_p", "accuracy_p", "map_p", *(f"{t}_p" for t in tested))):
                numbers = [v for v in present if _is_number(v)]
                summary[key] = max(numbers) if numbers and len(numbers) == len(recs) else None
            elif key == "bleu_by_length" and len(present) > 1:
                summary[key] = _mean_buckets(present)
            elif all(_is_number(v) for v in present) and key != "seed":
                if len(present) == 1:
                    summary[key] = present[0]
                else:
                    mean = sum(present) / len(present)
                    var = sum((v - mean) ** 2 for v in present) / (len(present) - 1)
                    summary[key] = present[0] if _same(present) else mean
                    spread[key] = var ** 0.5
            elif _same(present):
                summary[key] = present[0]
            elif isinstance(present[0], (list, dict)):
                summary[key] = present[0]  # e.g. heatmap paths: the first seed's
            else:
                summary[key] = ", ".join(dict.fromkeys(str(v) for v in present))
        summary["row"] = row
        summary["seeds"] = sorted(int(r.get("seed", 0) or 0) for r in recs)
        summary["n_seeds"] = len(recs)
        summary["_spread"] = spread
        out.append(summary)
    return out


def bleu_by_length_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Test BLEU per source-length bucket, one line per row (empty string if no record has it)."""
    with_buckets = [r for r in records if r.get("bleu_by_length")]
    if not with_buckets:
        return ""
    labels = [b["bucket"] for b in with_buckets[0]["bleu_by_length"]]
    counts = [str(b["n"]) for b in with_buckets[0]["bleu_by_length"]]
    lines = ["| row | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels),
             "| (sentences) | " + " | ".join(counts) + " |"]
    for rec in with_buckets:
        cells = ["-" if b["bleu"] is None else f"{b['bleu']:.2f}" for b in rec["bleu_by_length"]]
        lines.append(f"| {rec['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(workdir: str, records: Sequence[Mapping[str, Any]], *, title: str, command: str,
          notes: Sequence[str] = (), figures: Sequence[str | tuple[str, str]] = (), length_table: bool = False,
          columns: Sequence[tuple[str, str]] | None = None, summary: Sequence[Mapping[str, Any]] | None = None,
          sections: Sequence[str] = (), footnotes: Mapping[str, int] | None = None,
          footnote_heading: str = "Paper numbers") -> str:
    """Writes results.jsonl and results.md in ``workdir`` and returns the Markdown text.

    Args:
      workdir: experiment directory.
      records: run records (see module docstring), in table order; one JSON line each in results.jsonl.
      title: Markdown heading.
      command: the command line that produced the run.
      notes: extra bullet lines (data sizes, preset, ...).
      figures: PNG paths relative to ``workdir`` to link, or (path, caption) pairs.
      length_table: whether to add the BLEU-by-source-length table.
      columns: (header, record key) pairs of the main table; None means COLUMNS.
      summary: the table's lines (e.g. `summarize` of the records); None tabulates ``records`` themselves.
      sections: Markdown blocks placed after the tables (claims, the statistics' notes, ...).
      footnotes: source -> number, as `paper_cell` registers them; listed last, under ``footnote_heading``.
      footnote_heading: the footnotes' heading, e.g. "Paper numbers (ImageNet; compare orderings, not values)".

    Returns:
      The content of results.md.
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.jsonl"), "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    lines = records if summary is None else summary
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"# {title}", "", f"Command: `{command}` ({stamp})", ""]
    parts += [f"- {n}" for n in notes]
    if notes:
        parts.append("")
    parts += [markdown_table(lines, columns), ""]
    if length_table:
        table = bleu_by_length_table(lines)
        if table:
            parts += ["Test BLEU by source sentence length (words):", "", table, ""]
    for section in sections:
        parts += [section.rstrip(), ""]
    for fig in figures:
        path, caption = (fig, "") if isinstance(fig, str) else fig
        parts.append(f"![{os.path.splitext(os.path.basename(path))[0]}]({path})")
        if caption:
            parts += ["", f"*{caption}*", ""]
    text = "\n".join(parts).rstrip() + "\n"
    if footnotes:
        text += (f"\n{footnote_heading}:\n\n" + "\n".join(f"- [{n}] {source}" for source, n in footnotes.items())
                 + "\n")
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a JSON-lines file; a missing file gives [] and a torn last line is ignored."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
