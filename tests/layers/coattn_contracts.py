"""Layer contracts (tests/layers/contract.py) of COSNet's `CoAttention` and CAN's `CrossAttentionModule`.

Not collected on its own (the name does not end in _test): tests/layers/contract_test.py imports these classes.
The prototypical network's `prototypes` and `prototypical_logits` are pure functions with no module, tested in
tests/layers/few_shot_test.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax.layers.co_attention import CoAttention
from attention_jax.layers.few_shot import CrossAttentionModule
from tests.layers import contract
from tests.layers.contract import Poison

__all__ = ["CoAttentionChannelUngatedContractTest", "CoAttentionContractTest", "CoAttentionSymmetricContractTest",
           "CrossAttentionModuleContractTest"]

_B, _HA, _WA, _HB, _WB, _C = 2, 3, 2, 2, 3, 4
# Row 0: every pixel real; row 1: holes in both maps.
_MASK_A = np.array([[[1, 1], [1, 1], [1, 1]], [[1, 0], [1, 1], [0, 0]]], bool)
_MASK_B = np.array([[[1, 1, 1], [1, 1, 1]], [[0, 1, 1], [1, 0, 0]]], bool)


def _normal(rng: np.random.Generator, *shape: int) -> jnp.ndarray:
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


class CoAttentionContractTest(contract.LayerContract):
    """COSNet's co-attention, vanilla W, gated: two padded maps of different sizes, affinity returned too."""

    SKIP = {"masked_inputs": "its keys are its raw inputs (the two feature maps), which "
                             "test_masked_never_leak_keys poisons at the padded pixels",
            "step": "co-attention relates two whole feature maps: there is no decoding step"}
    VARIANT, GATED = "vanilla", True

    def make_module(self):
        return CoAttention(variant=self.VARIANT, gated=self.GATED)

    def make_inputs(self, rng):
        return dict(feat_a=_normal(rng, _B, _HA, _WA, _C), feat_b=_normal(rng, _B, _HB, _WB, _C),
                    mask_a=jnp.asarray(_MASK_A), mask_b=jnp.asarray(_MASK_B))

    def apply(self, module, variables, inputs):
        # The affinity is an output too, so every check covers it (return_affinity, a static Python bool, stays
        # out of the traced inputs).
        return module.apply(variables, **inputs, return_affinity=True)

    def masked_keys(self, inputs):
        return [Poison("feat_a", ~inputs["mask_a"][..., None]), Poison("feat_b", ~inputs["mask_b"][..., None])]

    def bad_inputs(self, inputs):
        fa, fb = inputs["feat_a"], inputs["feat_b"]
        return [("feat_b of another batch", {**inputs, "feat_b": fb[:1]}, ("feat_b", (1, _HB, _WB, _C))),
                ("feat_b of other channels", {**inputs, "feat_b": fb[..., 1:]}, ("channels", (_B, _HB, _WB, _C - 1))),
                ("feat_a of rank 3", {**inputs, "feat_a": fa[:, 0]}, ("feat_a", (_B, _WA, _C))),
                ("mask_a of another size", {**inputs, "mask_a": inputs["mask_a"][:, 1:]},
                 ("mask_a", (_B, _HA - 1, _WA))),
                ("mask_b of another size", {**inputs, "mask_b": inputs["mask_b"][..., 1:]},
                 ("mask_b", (_B, _HB, _WB - 1)))]


class CoAttentionSymmetricContractTest(CoAttentionContractTest):
    """W = P^T D P."""

    VARIANT = "symmetric"


class CoAttentionChannelUngatedContractTest(CoAttentionContractTest):
    """Channel-wise W = D, without the gate: [Z; F]."""

    VARIANT, GATED = "channel", False


class CrossAttentionModuleContractTest(contract.LayerContract):
    """CAN's cross attention module on (class, query) pairs of 2 x 3 maps (m = 6, r = 2)."""

    SKIP = {"masked_keys": "CAN's maps have no mask: the meta-learner is tied to the m positions of a "
                           "fixed-size map, and every position is real",
            "masked_inputs": "CAN's maps have no mask: every position is real",
            "step": "the cross attention module relates two whole feature maps: there is no decoding step"}

    def make_module(self):
        return CrossAttentionModule(reduction=2, temperature=0.025)

    def make_inputs(self, rng):
        return dict(class_feat=_normal(rng, _B, _HB, _WB, _C), query_feat=_normal(rng, _B, _HB, _WB, _C))

    def apply(self, module, variables, inputs):
        # The attention maps are outputs too, so every check covers them.
        return module.apply(variables, **inputs, return_attention=True)

    def bad_inputs(self, inputs):
        p, q = inputs["class_feat"], inputs["query_feat"]
        return [("query_feat of another size", {**inputs, "query_feat": q[:, :, 1:]},
                 ("query_feat", (_B, _HB, _WB - 1, _C))),
                ("query_feat of other channels", {**inputs, "query_feat": q[..., 1:]},
                 ("query_feat", (_B, _HB, _WB, _C - 1))),
                ("class_feat of rank 3", {**inputs, "class_feat": p[..., 0]}, ("class_feat", (_B, _HB, _WB)))]
