"""Suite-wide settings, applied before any test touches a device.

The tests run tiny shapes, so XLA's compile time dominates their run time. Two XLA:CPU flags cut it, with the
same numerics up to float32 rounding order (every test compares with tolerances, or one configuration with
itself):

* `--xla_backend_optimization_level=0` skips LLVM's optimisation passes (XLA's own HLO passes still run, and
  without fast-math LLVM does not reassociate floating point): tests/models/contract_test.py 87 s -> 66 s.
* `--xla_cpu_use_fusion_emitters=false` emits fusions with the older elemental IR emitters instead of the
  MLIR fusion emitters, which take longer to compile: tests/core/alignment_test.py, scores_test.py and
  tests/layers/luong_test.py, one process, alternated twice: 54.3 / 54.7 s with them, 35.5 / 32.9 s without.

XLA reads XLA_FLAGS when its CPU client starts, on first use, so setting it here takes effect even after
`import jax`; child processes (the `*_devices.py` files, the jax.distributed workers, the experiment CLIs)
inherit it. A flag the user set is kept. XLA aborts on a flag it does not know, so the fusion-emitter flag is
only set for the jaxlib releases it was checked with (0.10); other releases run the suite without it, slower.
"""

import importlib.metadata
import os


def _jaxlib_minor() -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ()


_FLAGS = [("--xla_backend_optimization_level", "0")]
if _jaxlib_minor() == (0, 10):
    _FLAGS.append(("--xla_cpu_use_fusion_emitters", "false"))
for _flag, _value in _FLAGS:
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()
