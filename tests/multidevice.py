"""Runs a test file on simulated CPU devices, in a fresh Python process.

`--xla_force_host_platform_device_count` only takes effect if it is set before jax starts, and the suite's
own processes have started jax long before, so every multi-device test file (named `*_devices.py`, which
the suite does not collect by itself) runs in a subprocess of its own: `run_on_devices(path)` starts
`python -m pytest path` there with the flag set and fails, with the tail of that run's output, unless it
passed at least one test. A device file skips itself when it finds fewer devices than it needs, so it can
also be run by hand:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest -q tests/dot_product/ring_devices.py
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

DEVICES = 8
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def device_env(devices: int = DEVICES) -> dict[str, str]:
    """The environment of a child process that sees `devices` simulated CPU devices."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    root = str(_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_on_devices(path: str | os.PathLike, *, devices: int = DEVICES, timeout: float = 900.0,
                   args: tuple[str, ...] = ()) -> str:
    """Runs the pytest file `path` in a child process with `devices` CPU devices; returns its output.

    Raises:
      AssertionError: if the child failed, timed out, or passed no test (everything skipped or nothing
        collected), with the tail of its output.
    """
    path = pathlib.Path(path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), *args]
    try:
        proc = subprocess.run(cmd, env=device_env(devices), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=_ROOT)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"")
        out = out.decode() if isinstance(out, bytes) else out
        raise AssertionError(f"{path} did not finish within {timeout:.0f} s on {devices} devices:\n{out[-6000:]}")
    out = proc.stdout + proc.stderr
    passed = re.search(r"(\d+) passed", out)
    assert proc.returncode == 0 and passed and int(passed.group(1)) > 0, (
        f"{path} on {devices} simulated devices: exit code {proc.returncode}\n{out[-8000:]}")
    return out
