"""The set layers of attention_jax/layers/sets.py through the layer contract suite.

One class per configuration: DeepSets (Zaheer et al. 2017, arXiv:1703.06114, Theorem 2) with sum and max pooling,
the permutation-equivariant layer (Lemma 3, §2.3) with max and mean pooling, and AttentionPooling (Set
Transformer's PMA, arXiv:1810.00825, eq. 11) as the attention core and as the whole MAB block. Every module is
called as (inputs [B, S, D], mask [B, S]); the members are not a prefix (holes in the middle) and one set is
empty. Collected through the import line at the end of tests/layers/contract_test.py; this file's name does not
end in _test, so pytest does not collect it twice.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax.layers.sets import AttentionPooling, DeepSets, PermutationEquivariant
from tests.layers import contract
from tests.layers.contract import Poison

# The wildcard import in contract_test.py must bring the test classes only, never this file's sizes (B, D, ...).
__all__ = ["SetsAttentionPoolingContractTest", "SetsAttentionPoolingPMAContractTest", "SetsDeepSetsMaxContractTest",
           "SetsDeepSetsSumContractTest", "SetsPermutationEquivariantMaxContractTest",
           "SetsPermutationEquivariantMeanContractTest"]

B, S, D = 3, 5, 4
# Row 0: members 0, 2, 3; row 1: members 1 and 4; row 2: an empty set.
MEMBERS = np.array([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]], bool)

NO_STEP = "{name} maps a whole set at once: a set has no order to step through, so there is no decoding step"


class _SetLayer(contract.LayerContract):
    """Called as (inputs [B, S, D], mask [B, S]); masked_inputs poisons the raw inputs at non-members."""

    def setUp(self):
        self.SKIP = {**self.SKIP, "step": NO_STEP.format(name=type(self.make_module()).__name__)}
        super().setUp()

    def make_inputs(self, rng):
        return dict(inputs=jnp.asarray(rng.standard_normal((B, S, D)), jnp.float32), mask=jnp.asarray(MEMBERS))

    def dead(self, inputs):
        """[B, S, 1] bool: the non-members."""
        return ~inputs["mask"][..., None]

    def masked_inputs(self, inputs):
        return [Poison("inputs", self.dead(inputs))]

    def bad_inputs(self, inputs):
        x, mask = inputs["inputs"], inputs["mask"]
        return [
            ("inputs of rank 2", {**inputs, "inputs": x[:, 0]}, ("inputs", (B, D))),
            ("mask of another length", {**inputs, "mask": mask[:, :-1]}, ("mask", (B, S - 1), (B, S, D))),
            ("mask of another batch", {**inputs, "mask": mask[:1]}, ("mask", (1, S), (B, S, D))),
            ("inputs without features", {**inputs, "inputs": x[..., :0]}, ("inputs", (B, S, 0))),
        ]


class _DeepSets(_SetLayer):
    """masked_keys: phi(x) at non-members, what the pool reads."""

    AGGREGATION = "sum"

    def make_module(self):
        return DeepSets(phi_features=(6, 3), rho_features=(4, 2), aggregation=self.AGGREGATION)

    def masked_keys(self, inputs):
        return [Poison(module="phi_*", dead=self.dead(inputs))]


class SetsDeepSetsSumContractTest(_DeepSets):
    AGGREGATION = "sum"


class SetsDeepSetsMaxContractTest(_DeepSets):
    AGGREGATION = "max"


class _PermutationEquivariant(_SetLayer):
    POOL = "max"
    SKIP = {"masked_keys": "PermutationEquivariant has no submodule: the pool and Lambda read the raw members, "
                           "which test_masked_never_leak_inputs poisons"}

    def make_module(self):
        return PermutationEquivariant(features=3, pool=self.POOL)


class SetsPermutationEquivariantMaxContractTest(_PermutationEquivariant):
    POOL = "max"


class SetsPermutationEquivariantMeanContractTest(_PermutationEquivariant):
    POOL = "mean"


class _AttentionPooling(_SetLayer):
    """masked_keys: the projected keys and values [B, S, N, H] at non-members, what the attention reads."""

    def masked_keys(self, inputs):
        dead = self.dead(inputs)[..., None]  # [B, S, 1, 1]
        return [Poison(module="key", dead=dead), Poison(module="value", dead=dead)]


class SetsAttentionPoolingContractTest(_AttentionPooling):
    def make_module(self):
        return AttentionPooling(num_heads=2, num_seeds=3)


class SetsAttentionPoolingPMAContractTest(_AttentionPooling):
    def make_module(self):
        return AttentionPooling(num_heads=2, num_seeds=2, head_dim=3, mab=True)

    def masked_keys(self, inputs):
        return super().masked_keys(inputs) + [Poison(module="member_ff", dead=self.dead(inputs))]
