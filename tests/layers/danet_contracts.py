"""DANet's dual attention (arXiv:1809.02983) through the layer contract suite (tests/layers/contract.py).

PositionAttention (on the default and the blockwise backend), ChannelAttention (the paper's energy and the
released code's) and DualAttention (summed, and with the fusion convolutions). Every configuration runs on padded
images [B, H, W, C] with a pixel mask: image 0 is all real, image 1 real in its top-left 2 x 3 only. The poison
goes into the feature map at the padded pixels, which are the PAM's masked keys and which the CAM's A A^T must
never read. Reached from tests/layers/contract_test.py by a wildcard import; this file's name does not end in
_test so pytest collects the classes once.
"""

from __future__ import annotations

from attention_jax.layers.danet import ChannelAttention, DualAttention, PositionAttention
from tests.layers.channel_contracts import _B, _ChannelMLP, _FeatureMap, _H, _W

__all__ = ["DANetChannelAttentionContractTest", "DANetChannelAttentionReleasedContractTest",
           "DANetDualAttentionContractTest", "DANetDualAttentionFusionContractTest",
           "DANetPositionAttentionBlockwiseContractTest", "DANetPositionAttentionContractTest"]

class _DANet(_FeatureMap):
    """The feature-map hooks (inputs [B, H, W, C] with a pixel mask, maps returned too); C = 0 is rejected."""

    def bad_inputs(self, inputs):
        empty = {**inputs, "inputs": inputs["inputs"][..., :0]}
        return super().bad_inputs(inputs) + [("no channel", empty, ("C >= 1", (_B, _H, _W, 0)))]


class _Reduced(_DANet, _ChannelMLP):
    """A module with the PAM's C -> C // r convolutions: fewer channels than r are rejected too (`_ChannelMLP`'s
    check, reached through the method order _Reduced -> _DANet -> _ChannelMLP -> _FeatureMap)."""


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
