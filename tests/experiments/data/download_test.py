"""Tests of experiments/data/download.py: apt-get download and dpkg-deb -x (faked), the cache, the messages."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from experiments import data


def _fake_run(calls, *, download_rc=0, stderr=""):
    def run(cmd, cwd=None, capture_output=False, text=False, check=False):
        calls.append(cmd)
        assert capture_output and not check
        if cmd[:2] == ["apt-get", "download"]:
            if download_rc == 0:
                (pathlib.Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").write_bytes(b"deb")
            return subprocess.CompletedProcess(cmd, download_rc, "", stderr)
        if cmd[:2] == ["dpkg-deb", "-x"]:
            target = pathlib.Path(cmd[3]) / "usr/share/doc"
            target.mkdir(parents=True)
            (target / "README").write_text("x")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise AssertionError(cmd)
    return run


class TestObtainPackage:

    @pytest.fixture(autouse=True)
    def _tools(self, monkeypatch):
        monkeypatch.setattr(data.download.shutil, "which", lambda tool: f"/usr/bin/{tool}")

    def test_download_extract_then_cache(self, tmp_path, monkeypatch):
        calls = []
        monkeypatch.setattr(data.download.subprocess, "run", _fake_run(calls))
        root = data.obtain_debian_package("trans-de-en", tmp_path)
        assert root == tmp_path / "trans-de-en" / "extracted" and (root / "usr/share/doc/README").is_file()
        assert [c[:2] for c in calls] == [["apt-get", "download"], ["dpkg-deb", "-x"]]
        assert data.obtain_debian_package("trans-de-en", tmp_path) == root
        assert len(calls) == 2  # the second call asked nobody

    def test_apt_get_failure_message(self, tmp_path, monkeypatch):
        calls = []
        monkeypatch.setattr(data.download.subprocess, "run", _fake_run(
            calls, download_rc=100, stderr="Reading package lists...\nE: Unable to locate package trans-de-en\n"))
        with pytest.raises(data.DataError) as err:
            data.obtain_debian_package("trans-de-en", tmp_path)
        message = str(err.value)
        assert "'trans-de-en' could not be downloaded (apt-get: Unable to locate package trans-de-en)" in message
        assert "sudo apt-get update" in message and "--data_path" in message

    def test_missing_tools(self, tmp_path, monkeypatch):
        monkeypatch.setattr(data.download.shutil, "which", lambda tool: None if tool == "apt-get" else "/usr/bin/x")
        with pytest.raises(data.DataError, match="apt-get is not installed"):
            data.obtain_debian_package("trans-de-en", tmp_path)
