"""Debian data packages without root: `apt-get download` and `dpkg-deb -x`, once, into a cache folder.

The corpora ship inside Debian packages (``shared/DATA.md``). `obtain_debian_package` downloads and unpacks one
into ``<data_dir>/<package>/extracted`` and, the next time, returns that folder without asking the registry
again. A failure is one `DataError` sentence naming the fix (``sudo apt-get update`` once, or ``--data_path``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from absl import logging

from experiments.data.base import DataError

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "attention_jax")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    """``data_dir`` with ``~`` expanded; empty or None means ``~/.cache/attention_jax``."""
    return pathlib.Path(os.fspath(data_dir) if data_dir else DEFAULT_DATA_DIR).expanduser()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    line = (errors or lines or ["no output"])[-1]
    return line[2:].strip() if line.startswith("E:") else line


def obtain_debian_package(name: str, cache_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Downloads and unpacks a Debian package without root, once.

    Runs ``apt-get download NAME`` in ``cache_dir/NAME`` and ``dpkg-deb -x`` into
    ``cache_dir/NAME/extracted``; a later call finds the non-empty ``extracted`` folder and returns
    it at once, without asking the registry again.

    Args:
      name: the Debian package name, e.g. ``"trans-de-en"``.
      cache_dir: folder for the downloads (``~`` is expanded).

    Returns:
      The root of the unpacked package (holds ``usr/share/...``).

    Raises:
      DataError: if apt-get or dpkg-deb is not installed, or the download or unpacking fails.
    """
    package_dir = pathlib.Path(cache_dir).expanduser() / name
    extracted = package_dir / "extracted"
    if extracted.is_dir() and any(extracted.iterdir()):
        logging.info("Debian package %s: using the cached copy in %s", name, extracted)
        return extracted
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataError(f"Debian package {name!r} cannot be fetched because {tool} is not installed; run on a "
                            f"Debian/Ubuntu machine, or pass --data_path=FILE.tsv with your own parallel text.")
    package_dir.mkdir(parents=True, exist_ok=True)
    debs = sorted(package_dir.glob(f"{name}_*.deb"))
    if not debs:
        logging.info("Debian package %s: running apt-get download in %s", name, package_dir)
        result = subprocess.run(["apt-get", "download", name], cwd=package_dir, capture_output=True, text=True,
                                check=False)
        debs = sorted(package_dir.glob(f"{name}_*.deb"))
        if result.returncode != 0 or not debs:
            reason = _last_line(result.stderr + "\n" + result.stdout)
            raise DataError(f"Debian package {name!r} could not be downloaded (apt-get: {reason}); run `sudo apt-get "
                            f"update` once and try again, or pass --data_path=FILE.tsv with your own parallel text.")
    staging = package_dir / "extracted.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(staging)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"Debian package file {str(debs[-1])!r} could not be unpacked (dpkg-deb: "
                        f"{_last_line(result.stderr + result.stdout)}); delete it and run again to download it anew.")
    shutil.rmtree(extracted, ignore_errors=True)
    os.replace(staging, extracted)
    logging.info("Debian package %s: unpacked %s into %s", name, debs[-1].name, extracted)
    return extracted
