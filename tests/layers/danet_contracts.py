"""DANet's dual attention (arXiv:1809.02983) through the layer contract suite (tests/layers/contract.py).

PositionAttention (on the default and the blockwise backend), ChannelAttention (the paper's energy and the
released code's) and DualAttention (summed, and with the fusion convolutions). Every configuration runs on padded
images [B, H, W, C] with a pixel mask: image 0 is all real, image 1 real in its top-left 2 x 3 only. The poison
goes into the feature map at the padded pixels, which are the PAM's masked keys and which the CAM's A A^T must
never read. Reached from tests/layers/contract_test.py by a wildcard import; this file's name does not end in
_test so pytest collects the classes once.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax.layers.danet import ChannelAttention, DualAttention, PositionAttention
from tests.layers import contract
from tests.layers.contract import Poison

__all__ = ["DANetChannelAttentionContractTest", "DANetChannelAttentionReleasedContractTest",
           "DANetDualAttentionContractTest", "DANetDualAttentionFusionContractTest",
           "DANetPositionAttentionBlockwiseContractTest", "DANetPositionAttentionContractTest"]

_B, _H, _W, _C = 2, 3, 4, 8
_MASK = np.ones((_B, _H, _W), bool)
_MASK[1, 2:, :] = _MASK[1, :, 3:] = False


class _DANet(contract.LayerContract):
    """Hooks shared by DANet's modules: inputs [B, H, W, C] with a pixel mask, attention maps returned too."""

    SKIP = {"masked_inputs": "the layer's keys are its raw inputs (the feature map's pixels), which "
                             "test_masked_never_leak_keys poisons at the padded pixels",
            "step": "a feature-map attention has no decoding step: it reads the whole map at once"}

    def make_inputs(self, rng):
        return dict(inputs=jnp.asarray(rng.standard_normal((_B, _H, _W, _C)), jnp.float32), mask=jnp.asarray(_MASK))

    def apply(self, module, variables, inputs):
        # The maps are outputs too, so every check covers them (return_weights is a static Python bool).
        return module.apply(variables, **inputs, return_weights=True)

    def masked_keys(self, inputs):
        return [Poison("inputs", ~inputs["mask"][..., None])]

    def bad_inputs(self, inputs):
        x, mask = inputs["inputs"], inputs["mask"]
        return [("inputs of rank 3", {**inputs, "inputs": x[..., 0]}, ("inputs", (_B, _H, _W))),
                ("inputs of rank 5", {**inputs, "inputs": x[None]}, ("inputs", (1, _B, _H, _W, _C))),
                ("no channel", {**inputs, "inputs": x[..., :0]}, ("C >= 1", (_B, _H, _W, 0))),
                ("mask of another width", {**inputs, "mask": mask[:, :, 1:]}, ("mask", (_B, _H, _W - 1))),
                ("mask of another batch", {**inputs, "mask": mask[:1]}, ("mask", (1, _H, _W), (_B, _H, _W, _C)))]


class _Reduced(_DANet):
    """A module with the PAM's C -> C // r convolutions: fewer channels than r are rejected too."""

    def bad_inputs(self, inputs):
        few = {**inputs, "inputs": inputs["inputs"][..., :2]}  # C = 2 < reduction = 4
        return super().bad_inputs(inputs) + [("fewer channels than the reduction", few, ("reduction", "C = 2"))]


class DANetPositionAttentionContractTest(_Reduced):
    """The position attention module, r = 4 (R = 2, the values in G = 4 heads), automatic backend."""

    def make_module(self):
        return PositionAttention(reduction=4)


class DANetPositionAttentionBlockwiseContractTest(_Reduced):
    """The position attention module, r = 3 (R = 2), on the blockwise backend."""

    def make_module(self):
        return PositionAttention(reduction=3, implementation="blockwise")


class DANetChannelAttentionContractTest(_DANet):
    """The channel attention module, the paper's eq. 3."""

    def make_module(self):
        return ChannelAttention()


class DANetChannelAttentionReleasedContractTest(_DANet):
    """The channel attention module, the released code's softmax(max - energy)."""

    def make_module(self):
        return ChannelAttention(energy="released")


class DANetDualAttentionContractTest(_Reduced):
    """PAM + CAM summed, r = 4."""

    def make_module(self):
        return DualAttention(reduction=4)


class DANetDualAttentionFusionContractTest(_Reduced):
    """PAM + CAM, each through a 3 x 3 fusion convolution before the sum (§3.4); the released energy."""

    def make_module(self):
        return DualAttention(reduction=4, energy="released", fusion_kernel_size=3)
