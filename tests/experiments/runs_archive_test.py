"""experiments/runs_archive.py: finished runs go into the archive without checkpoints, and come back."""

import os
import shutil
import tempfile

from absl.testing import absltest

from experiments import runs_archive


def _write(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class RunsArchiveTest(absltest.TestCase):

    def _tempdir(self):
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        return path

    def test_archive_and_restore_keep_finished_runs_only(self):
        workdir = self._tempdir()
        for run in ("global_dot/seed_0", "global_dot/seed_1"):
            for name in runs_archive.RUN_FILES:
                _write(os.path.join(workdir, run, name), run + name)
            _write(os.path.join(workdir, run, "checkpoints", "100", "state"), "big")
        _write(os.path.join(workdir, "local_m/seed_0/metrics.jsonl"))  # unfinished: no done.json
        _write(os.path.join(workdir, "test_references.txt"), "refs")
        _write(os.path.join(workdir, "heatmaps", "a.png"))
        archive = self._tempdir()
        self.assertEqual(runs_archive.copy_runs(workdir, archive), ["global_dot/seed_0", "global_dot/seed_1"])
        self.assertFalse(os.path.exists(os.path.join(archive, "global_dot/seed_0/checkpoints")))
        self.assertFalse(os.path.exists(os.path.join(archive, "local_m")))
        self.assertFalse(os.path.exists(os.path.join(archive, "heatmaps")))
        fresh = os.path.join(self._tempdir(), "workdir")
        self.assertEqual(runs_archive.copy_runs(archive, fresh), ["global_dot/seed_0", "global_dot/seed_1"])
        with open(os.path.join(fresh, "global_dot/seed_1/done.json"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "global_dot/seed_1done.json")
        with open(os.path.join(fresh, "test_references.txt"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "refs")
        self.assertEqual(runs_archive.finished_runs(os.path.join(fresh, "missing")), [])

    def test_importing_defines_no_flags(self):
        from absl import flags
        from experiments import results_page  # defines its own --results_dir
        self.assertNotIn("archive_root", flags.FLAGS)
        self.assertIn("results_dir", flags.FLAGS)
        del results_page


if __name__ == "__main__":
    absltest.main()
