"""Suite-wide settings, applied before any test touches a device.

The tests run tiny shapes, so XLA's compile time dominates their run time. LLVM's optimisation passes are
skipped (`--xla_backend_optimization_level=0`): about a quarter off the suite's wall time, measured on
tests/models/contract_test.py (87 s -> 66 s), with the same numerics (XLA's own HLO passes still run, and
without fast-math LLVM does not reassociate floating point). XLA reads XLA_FLAGS when its CPU client starts,
on first use, so setting it here takes effect even after `import jax`; child processes (the `*_devices.py`
files, the jax.distributed workers) inherit it. A value the user set is kept.
"""

import os

_FLAG = "--xla_backend_optimization_level"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=0".strip()
