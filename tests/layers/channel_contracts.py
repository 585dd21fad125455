"""The channel / spatial attentions on NHWC feature maps through the layer contract suite (tests/layers/contract.py).

SqueezeExcitation (arXiv:1709.01507) and CBAM (arXiv:1807.06521): its channel attention, its spatial attention,
the whole block and its channel-only ablation. Every configuration runs on padded images [B, H, W, C] with a
pixel mask: image 0 is all real, image 1 real in its top-left 2 x 3 only. The poison goes into the feature map at
the padded pixels, which every pool and the spatial convolution must never read. Reached from
tests/layers/contract_test.py by a wildcard import; this file's name does not end in _test so pytest collects
the classes once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.layers.cbam import CBAM, CBAMChannelAttention, CBAMSpatialAttention
from attention_jax.layers.squeeze_excitation import SqueezeExcitation
from tests.layers import contract
from tests.layers.contract import Poison

__all__ = ["CBAMChannelAttentionContractTest", "CBAMChannelOnlyContractTest", "CBAMContractTest",
           "CBAMSpatialAttentionContractTest", "SqueezeExcitationContractTest"]

_B, _H, _W, _C = 2, 3, 4, 8
_MASK = np.ones((_B, _H, _W), bool)
_MASK[1, 2:, :] = _MASK[1, :, 3:] = False


class _FeatureMap(contract.LayerContract):
    """Hooks shared by the feature-map layers: inputs [B, H, W, C] with a pixel mask, maps returned too."""

    SKIP = {"masked_inputs": "the layer's keys are its raw inputs (the feature map's pixels, which every pool "
                             "reads), which test_masked_never_leak_keys poisons at the padded pixels",
            "step": "a feature-map attention has no decoding step: it reads the whole map at once"}

    def make_inputs(self, rng):
        return dict(inputs=jnp.asarray(rng.standard_normal((_B, _H, _W, _C)), jnp.float32), mask=jnp.asarray(_MASK))

    def apply(self, module, variables, inputs):
        # The attention maps are outputs too: every check covers them (return_weights is a static Python bool,
        # so it stays out of the traced inputs).
        return module.apply(variables, **inputs, return_weights=True)

    def masked_keys(self, inputs):
        return [Poison("inputs", ~inputs["mask"][..., None])]

    def bad_inputs(self, inputs):
        x, mask = inputs["inputs"], inputs["mask"]
        return [("inputs of rank 3", {**inputs, "inputs": x[..., 0]}, ("inputs", (_B, _H, _W))),
                ("inputs of rank 5", {**inputs, "inputs": x[None]}, ("inputs", (1, _B, _H, _W, _C))),
                ("mask of another width", {**inputs, "mask": mask[:, :, 1:]}, ("mask", (_B, _H, _W - 1))),
                ("mask of another batch", {**inputs, "mask": mask[:1]}, ("mask", (1, _H, _W), (_B, _H, _W, _C)))]


class _ChannelMLP(_FeatureMap):
    """A layer with a C -> C // r -> C MLP: inputs with fewer channels than r are rejected too."""

    def bad_inputs(self, inputs):
        few = {**inputs, "inputs": inputs["inputs"][..., :2]}  # C = 2 < reduction = 4
        return super().bad_inputs(inputs) + [("fewer channels than the reduction", few, ("reduction", "C = 2"))]


class SqueezeExcitationContractTest(_ChannelMLP):
    """Hu et al.'s SE block, r = 4 (2 hidden units)."""

    def make_module(self):
        return SqueezeExcitation(reduction=4)


class CBAMChannelAttentionContractTest(_ChannelMLP):
    """CBAM's channel attention alone, r = 4."""

    def make_module(self):
        return CBAMChannelAttention(reduction=4)


class CBAMSpatialAttentionContractTest(_FeatureMap):
    """CBAM's spatial attention alone, the paper's 7 x 7 kernel (wider than the map)."""

    def make_module(self):
        return CBAMSpatialAttention()

    def bad_inputs(self, inputs):
        none = {**inputs, "inputs": inputs["inputs"][..., :0]}
        return super().bad_inputs(inputs) + [("no channel", none, ("C >= 1", (_B, _H, _W, 0)))]


class CBAMContractTest(_ChannelMLP):
    """The whole CBAM block, r = 4, k = 3."""

    def make_module(self):
        return CBAM(reduction=4, kernel_size=3)


class CBAMChannelOnlyContractTest(_ChannelMLP):
    """CBAM's channel-only ablation (spatial=False)."""

    def make_module(self):
        return CBAM(reduction=4, spatial=False)

    def test_has_no_spatial_parameters(self):
        module, inputs, _ = self._setup()
        params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), **inputs))["params"]
        self.assertEqual(sorted(params), ["channel"])
