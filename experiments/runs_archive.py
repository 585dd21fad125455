"""Keeps the finished (row, seed) runs of an experiment's workdir in the repository, and puts them back.

    python -m experiments.runs_archive --workdir=workdirs/luong --name=luong            # workdir -> archive
    python -m experiments.runs_archive --workdir=workdirs/luong --name=luong --restore  # archive -> workdir

A finished run is ``<workdir>/<row>/seed_<s>/done.json`` (its record and config fingerprint) with its
metrics.jsonl, row_config.json and test_translations.txt (translation) or its per-document test scores and
predictions (classification, sentence pairs): about 110 kB, against tens of MB of checkpoints. The
archive, ``experiments/results/<name>/runs/``, holds those files and the workdir's test_references.txt and
data.json, which is what `experiments.training.translation.run_experiment` needs to count a run as done and
report it (the significance tests re-score the translations). Restored into a workdir, the same command that
made the runs skips them ("already finished with this config") and trains only the rest, so a table can be
finished across machines that keep nothing but the repository. Checkpoints are not archived: an unfinished run
restarts from step 0.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app
from absl import flags

from experiments.training import report

# The last three exist only for the tables they belong to: translations (test_translations.txt), and
# classification and sentence pairs (test_scores.json, test_predictions.json, attention_documents.json).
RUN_FILES = ("done.json", "metrics.jsonl", "row_config.json", report.TRANSLATIONS_FILE, "test_scores.json",
             "test_predictions.json", "attention_documents.json")
WORKDIR_FILES = (report.REFERENCES_FILE, "data.json")
DEFAULT_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs (importing this module defines none, so it can sit
    beside other absl mains such as `experiments.results_page` in one process)."""
    flags.DEFINE_string("workdir", None, "The experiment's workdir.")
    flags.DEFINE_string("name", None, "The archive's folder under --archive_root (e.g. luong).")
    flags.DEFINE_string("archive_root", DEFAULT_RESULTS_DIR, "Where the archives live.")
    flags.DEFINE_bool("restore", False, "Copy the archive into --workdir instead of the workdir into the archive.")


def finished_runs(workdir: str) -> list[str]:
    """The run directories (relative to workdir, "<row>/seed_<s>") that hold a done.json."""
    out = []
    for row in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        row_dir = os.path.join(workdir, row)
        if not os.path.isdir(row_dir):
            continue
        for seed in sorted(os.listdir(row_dir)):
            if seed.startswith("seed_") and os.path.exists(os.path.join(row_dir, seed, "done.json")):
                out.append(os.path.join(row, seed))
    return out


def copy_runs(source: str, target: str) -> list[str]:
    """Copies every finished run's small files, and the workdir files, from source to target; returns the runs."""
    runs = finished_runs(source)
    for run in runs:
        os.makedirs(os.path.join(target, run), exist_ok=True)
        for name in RUN_FILES:
            path = os.path.join(source, run, name)
            if os.path.exists(path):
                shutil.copy2(path, os.path.join(target, run, name))
    for name in WORKDIR_FILES:
        path = os.path.join(source, name)
        if os.path.exists(path):
            shutil.copy2(path, os.path.join(target, name))
    return runs


def main(argv):
    if len(argv) > 1:
        sys.exit(f"runs_archive takes no positional arguments, got {argv[1:]}; pass --workdir and --name")
    if not FLAGS.workdir or not FLAGS.name:
        sys.exit("runs_archive needs --workdir=<the experiment's workdir> and --name=<the archive, e.g. luong>")
    archive = os.path.join(FLAGS.archive_root, FLAGS.name, "runs")
    source, target = (archive, FLAGS.workdir) if FLAGS.restore else (FLAGS.workdir, archive)
    if not finished_runs(source):
        sys.exit(f"no finished run (a <row>/seed_<s>/done.json) under {source}; "
                 + ("archive one first" if FLAGS.restore else "check --workdir"))
    runs = copy_runs(source, target)
    print(f"copied {len(runs)} finished runs from {source} to {target}: {', '.join(runs)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
