"""Mesh runs of the experiments: simulated devices from the command line, the mesh from the config, and the
multi-process environment (experiments/devices.py, experiments/training/distributed.py)."""

from __future__ import annotations

import sys

import jax
import pytest

from experiments import configs
from experiments import devices
from experiments.configs import long_context as long_context_config
from experiments.training import distributed
from experiments.training.spec import ConfigError


def test_mesh_size_from_argv():
    assert devices.mesh_size_from_argv(["x"]) == 1
    assert devices.mesh_size_from_argv(["x", "--config.mesh.data=2", "--config.mesh.seq=4", "--preset=smoke"]) == 8
    assert devices.mesh_size_from_argv(["x", "--config.mesh.model=3", "--config.mesh.model=2"]) == 2  # last wins
    assert devices.mesh_size_from_argv(["x", "--config.mesh.data=two"]) == 1  # left to the flag parser


def test_simulate_devices_only_before_jax_and_not_over_the_users_flags(monkeypatch):
    env: dict[str, str] = {}
    # jax is imported in this process, so nothing is set.
    assert devices.simulate_devices_from_argv(["x", "--config.mesh.data=2"], env) is None
    assert env == {}
    monkeypatch.delitem(sys.modules, "jax")  # as in a fresh process, before `import jax`
    assert devices.simulate_devices_from_argv(["x", "--config.mesh.data=2", "--config.mesh.seq=2"], env) == 4
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    kept = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    assert devices.simulate_devices_from_argv(["x", "--config.mesh.data=2"], kept) is None
    assert kept["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    multi = {"JAX_COORDINATOR_ADDRESS": "host0:1234"}
    assert devices.simulate_devices_from_argv(["x", "--config.mesh.data=2"], multi) is None
    assert "XLA_FLAGS" not in multi
    assert devices.simulate_devices_from_argv(["x"], {}, at_least=8) == 8


def _config(**mesh):
    config = configs.base_config()
    for axis, size in mesh.items():
        config.mesh[axis] = size
    return config


def test_mesh_from_config():
    assert distributed.mesh_from_config(_config()) is None
    assert distributed.describe(None).startswith("one ")
    with pytest.raises(ConfigError, match=r"mesh.seq=0 is not valid"):
        distributed.mesh_from_config(_config(seq=0))
    needed = 2 * jax.device_count()
    with pytest.raises(ConfigError, match=rf"needs {needed} devices but jax sees {jax.device_count()}"):
        distributed.mesh_from_config(_config(data=2, model=jax.device_count()))
    assert distributed.rules_for(None) == ()
    with distributed.activate(None, ()):
        pass


def test_initialize_from_env_needs_all_three_variables():
    assert distributed.initialize_from_env({}) is False
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        distributed.initialize_from_env({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2"})


def test_long_context_config_checks():
    from experiments import long_context  # pylint: disable=import-outside-toplevel

    config = long_context_config.get_config()
    configs.apply_preset(config, long_context_config.PRESETS, "smoke")
    config.eval.memory_degrees = (jax.device_count() + 1,)
    with pytest.raises(ConfigError, match=rf"the run needs \d+ devices but jax sees {jax.device_count()}"):
        long_context.validate(config)
    config.eval.memory_degrees = (1,)
    config.mesh.seq = 1
    with pytest.raises(ConfigError, match="needs a sequence axis"):
        long_context.validate(config)
    config.model.implementation = "blockwise"
    config.train.segment_len = 7
    with pytest.raises(ConfigError, match="segment_len=7 must be a multiple of 2"):
        long_context.validate(config)
    config.train.segment_len = 64
    config.mesh.model = 2
    with pytest.raises(ConfigError, match="only --config.mesh.seq and --config.mesh.data"):
        long_context.validate(config)
