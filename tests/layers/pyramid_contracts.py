"""The pyramid poolings through the layer contract suite (tests/layers/contract.py).

SpatialPyramidPooling (He et al. 2014, arXiv:1406.4729, §2.3) with max and with average bins, and
PyramidAttentionPooling (APANet, arXiv:1808.00288, in the form attention_jax/layers/pyramid.py documents), on
padded maps [B, H, W, C] = [2, 5, 6, 3] with a pixel mask: image 0 all real, image 1 real in its top-left 2 x 3
only, so at level 2 three of its four bins have no real pixel. The poison goes into the map at the padded
pixels, which no bin may read. Reached from tests/layers/contract_test.py by a wildcard import; this file's name
does not end in _test so pytest collects the classes once.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax.layers.pyramid import PyramidAttentionPooling, SpatialPyramidPooling
from tests.layers import contract
from tests.layers.contract import Poison

__all__ = ["PyramidAttentionPoolingContractTest", "PyramidSpatialAvgContractTest", "PyramidSpatialMaxContractTest"]

_B, _H, _W, _C = 2, 5, 6, 3
_LEVELS = (1, 2, 3)
_MASK = np.ones((_B, _H, _W), bool)
_MASK[1, 2:, :] = _MASK[1, :, 3:] = False


class _Pyramid(contract.LayerContract):
    """Hooks shared by the pyramid poolings: a padded feature map, poisoned at its padded pixels."""

    SKIP = {"masked_inputs": "the layer's keys are its raw inputs (the map's pixels, which the bins pool), which "
                             "test_masked_never_leak_keys poisons at the padded pixels",
            "step": "a pyramid pooling reads the whole map at once: there is no decoding step"}

    def make_inputs(self, rng):
        return dict(inputs=jnp.asarray(rng.standard_normal((_B, _H, _W, _C)), jnp.float32), mask=jnp.asarray(_MASK))

    def masked_keys(self, inputs):
        return [Poison("inputs", ~inputs["mask"][..., None])]

    def bad_inputs(self, inputs):
        x, mask = inputs["inputs"], inputs["mask"]
        return [("inputs of rank 3", {**inputs, "inputs": x[..., 0]}, ("inputs", (_B, _H, _W))),
                ("mask of another width", {**inputs, "mask": mask[:, :, 1:]}, ("mask", (_B, _H, _W - 1))),
                ("mask of another batch", {**inputs, "mask": mask[:1]}, ("mask", (1, _H, _W), (_B, _H, _W, _C))),
                ("a map with fewer rows than a level's bins", {"inputs": x[:, :2], "mask": mask[:, :2]},
                 ("H = 2", f"W = {_W}", "[3]"))]


class PyramidSpatialMaxContractTest(_Pyramid):
    """He et al.'s spatial pyramid pooling, max in each bin, levels (1, 2, 3)."""

    def make_module(self):
        return SpatialPyramidPooling(levels=_LEVELS, mode="max")


class PyramidSpatialAvgContractTest(_Pyramid):
    """Spatial pyramid pooling with the mean of each bin's real pixels."""

    def make_module(self):
        return SpatialPyramidPooling(levels=_LEVELS, mode="avg")


class PyramidAttentionPoolingContractTest(_Pyramid):
    """Softmax attention inside each bin, one tanh scorer (A = 4) per level; the weights are outputs too."""

    def make_module(self):
        return PyramidAttentionPooling(levels=_LEVELS, hidden=4)

    def apply(self, module, variables, inputs):
        return module.apply(variables, **inputs, return_weights=True)
