"""Tests for attention_jax/masks.py: padding masks, True = valid position (jax.nn convention)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

import attention_jax as aj
from attention_jax.core import masks
from tests import reference as ref


class PaddingMaskTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        ([3, 0, 5], 5),
        ([1, 2], 4),
        ([7], 7),
    )
    def test_matches_reference(self, lengths, max_len):
        fn = self.variant(lambda l: masks.padding_mask(l, max_len))
        got = fn(jnp.asarray(lengths, jnp.int32))
        chex.assert_shape(got, (len(lengths), max_len))
        self.assertEqual(got.dtype, jnp.bool_)
        np.testing.assert_array_equal(np.asarray(got), ref.padding_mask(lengths, max_len))

    def test_explicit_values(self):
        got = masks.padding_mask(jnp.asarray([2, 0, 4]), 4)
        np.testing.assert_array_equal(
            np.asarray(got),
            [[True, True, False, False],
             [False, False, False, False],
             [True, True, True, True]])

    def test_counts_equal_lengths(self):
        lengths = np.array([0, 1, 6, 3])
        got = masks.padding_mask(jnp.asarray(lengths), 6)
        np.testing.assert_array_equal(np.asarray(got).sum(-1), lengths)

    def test_package_reexport(self):
        self.assertIs(aj.padding_mask, masks.padding_mask)

    def test_wrong_rank_raises(self):
        lengths = jnp.asarray([[1, 2]])
        with pytest.raises((ValueError, TypeError), match=r"\(1, 2\)"):
            masks.padding_mask(lengths, 3)


if __name__ == "__main__":
    absltest.main()
