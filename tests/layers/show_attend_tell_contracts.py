"""ShowAttendTellAttention (Xu et al. 2015, arXiv:1502.03044) through the layer contract suite.

One class per configuration: soft attention with and without the beta gate, hard attention (REINFORCE, with the
paper's expected-context coin) and straight-through Gumbel-softmax, both sampling with a fixed key (an input, so
jit and eager draw the same locations). Collected through the import line at the end of
tests/layers/contract_test.py; this file's name does not end in _test, so pytest does not collect it twice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.layers.show_attend_tell import ShowAttendTellAttention
from tests.layers import contract
from tests.layers.contract import Poison

# The wildcard import in contract_test.py must bring the test classes only, never this file's sizes (B, D, ...).
__all__ = ["ShowAttendTellGumbelContractTest", "ShowAttendTellHardContractTest", "ShowAttendTellSoftContractTest",
           "ShowAttendTellSoftNoGateContractTest"]

B, L, D, DH, A = 2, 6, 5, 4, 3
# Row 0 sees every location; row 1 only the first 3 (locations 3.. are padding).
LOCATION_LENGTHS = np.array([L, 3], np.int32)


class _ShowAttendTell(contract.LayerContract):
    """Called as (annotations [B, L, D], state [B, Dh], mask [B, L]); the annotations are the keys and values."""

    MODE = "soft"
    GATE = True
    SKIP = {"masked_inputs": "its keys and values are its raw inputs (the annotations), which "
                             "test_masked_never_leak_keys poisons",
            "step": "ShowAttendTellAttention is one decoder step's attention: the caller's LSTM owns the state "
                    "h_{t-1} and passes it in, so there is nothing of its own to step"}

    def make_module(self):
        deterministic = None if self.MODE == "soft" else False  # an attribute: the suite passes arrays only
        return ShowAttendTellAttention(hidden=A, mode=self.MODE, gate=self.GATE, deterministic=deterministic)

    def make_inputs(self, rng):
        inputs = dict(annotations=jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32),
                      state=jnp.asarray(rng.standard_normal((B, DH)), jnp.float32),
                      mask=jnp.asarray(np.arange(L)[None, :] < LOCATION_LENGTHS[:, None]))
        if self.MODE != "soft":
            inputs["rng"] = jax.random.PRNGKey(int(rng.integers(1 << 30)))
        return inputs

    def masked_keys(self, inputs):
        return [Poison("annotations", ~inputs["mask"][..., None])]

    def bad_inputs(self, inputs):
        x, h, mask = inputs["annotations"], inputs["state"], inputs["mask"]
        return [
            ("annotations of rank 2", {**inputs, "annotations": x[:, 0]}, ("annotations", (B, D))),
            ("state of another batch", {**inputs, "state": h[:1]}, ("state", (1, DH), (B, L, D))),
            ("mask of another length", {**inputs, "mask": mask[:, :-1]}, ("mask", (B, L - 1), (B, L, D))),
        ]


class ShowAttendTellSoftContractTest(_ShowAttendTell):
    pass


class ShowAttendTellSoftNoGateContractTest(_ShowAttendTell):
    GATE = False


class ShowAttendTellHardContractTest(_ShowAttendTell):
    MODE = "hard"


class ShowAttendTellGumbelContractTest(_ShowAttendTell):
    MODE = "gumbel"
