"""Results files of an experiment workdir: results.jsonl (one JSON record per row) and results.md.

A row record holds: row, attention, score, mode, dev_ppl, test_ppl, dev_bleu, test_bleu, steps,
train_minutes, stop_reason, fingerprint (hash of the row's config), and for experiments that
report it, bleu_by_length (a list of {"bucket", "lo", "hi", "n", "bleu"}).
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
TEXT_COLUMNS = ("row", "attention", "score", "mode", "norm", "positions", "description")


def describe_model(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The attention / score / mode columns of a row from its model config."""
    attention = model_config["attention"]
    if attention == "none":
        return {"attention": "none", "score": "-", "mode": "-"}
    if attention == "bahdanau":
        return {"attention": "bahdanau", "score": "additive", "mode": "global"}
    return {"attention": attention, "score": model_config["score"], "mode": model_config["mode"]}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("ppl"):
        return f"{value:.2f}"
    if key.endswith("bleu"):
        return f"{value:.2f}"
    if key == "train_minutes":
        return f"{value:.1f}"
    return str(value)


def markdown_table(records: Sequence[Mapping[str, Any]],
                   columns: Sequence[tuple[str, str]] | None = None) -> str:
    """The main results table (one line per row) in GitHub Markdown; ``columns`` defaults to COLUMNS."""
    columns = COLUMNS if columns is None else columns
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" if k in TEXT_COLUMNS else "---:" for _, k in columns) + "|"]
    for rec in records:
        lines.append("| " + " | ".join(_cell(k, rec.get(k)) for _, k in columns) + " |")
    return "\n".join(lines)


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
          notes: Sequence[str] = (), figures: Sequence[str] = (), length_table: bool = False,
          columns: Sequence[tuple[str, str]] | None = None) -> str:
    """Writes results.jsonl and results.md in ``workdir`` and returns the Markdown text.

    Args:
      workdir: experiment directory.
      records: row records (see module docstring), in table order.
      title: Markdown heading.
      command: the command line that produced the run.
      notes: extra bullet lines (data sizes, preset, ...).
      figures: PNG paths relative to ``workdir`` to link.
      length_table: whether to add the BLEU-by-source-length table.
      columns: (header, record key) pairs of the main table; None means COLUMNS.

    Returns:
      The content of results.md.
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.jsonl"), "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"# {title}", "", f"Command: `{command}` ({stamp})", ""]
    parts += [f"- {n}" for n in notes]
    if notes:
        parts.append("")
    parts += [markdown_table(records, columns), ""]
    if length_table:
        table = bleu_by_length_table(records)
        if table:
            parts += ["Test BLEU by source sentence length (words):", "", table, ""]
    for fig in figures:
        parts.append(f"![{os.path.splitext(os.path.basename(fig))[0]}]({fig})")
    text = "\n".join(parts).rstrip() + "\n"
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
