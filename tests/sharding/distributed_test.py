"""Two CPU processes joined by `jax.distributed` run one data-parallel train step that equals the step of a
single process (the multi-host path, on one machine: coordinator on 127.0.0.1, a free port, bounded time)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.multidevice import device_env
from tests.sharding import distributed_step

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_step(tmp_path, num_processes: int = 2):
    out = tmp_path / "step.npz"
    port = _free_port()
    env = device_env(1)  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, "-m", "tests.sharding.distributed_worker", f"--process_id={i}",
                               f"--num_processes={num_processes}", f"--port={port}", f"--out={out}"],
                              cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL)
             for i in range(num_processes)]
    logs = []
    try:
        for proc in procs:
            stdout, _ = proc.communicate(timeout=_TIMEOUT_S)
            logs.append(stdout)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the {num_processes} jax.distributed processes did not finish within {_TIMEOUT_S} s")
    for i, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"process {i} exited with {proc.returncode}:\n{log[-4000:]}"
    return dict(np.load(out))


def _single_process_step():
    model, params, batch, optimizer, _ = distributed_step.build()
    step = jax.jit(distributed_step.make_step(model, optimizer))
    params, _, loss = step(params, optimizer.init(params), batch)
    return {"loss": np.asarray(loss), **distributed_step.flat(params)}


def test_two_processes_equal_one(tmp_path):
    two = _two_process_step(tmp_path)
    one = _single_process_step()
    assert sorted(two) == sorted(one)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-6, atol=1e-6)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # The step did something: the parameters moved.
    model, params, *_ = distributed_step.build()
    moved = max(float(np.max(np.abs(one[k] - v))) for k, v in distributed_step.flat(params).items())
    assert moved > 1e-3
