"""Tests for attention_jax/_checks.py, the argument checkers every public function shares (issue 9)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from attention_jax import _checks


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


class ChecksTest(parameterized.TestCase):

    @parameterized.parameters(([1.0, 2.0], "list"), ((1, 2), "tuple"), ({"a": 1}, "dict"), ("abc", "str"),
                              (None, "NoneType"))
    def test_array_rejects_non_arrays_by_name(self, bad, type_name):
        with _raises(TypeError, "query", type_name):
            _checks.array("query", bad)
        with _raises(TypeError, "query", type_name):
            _checks.rank("query", bad, 1)
        with _raises(TypeError, "mask", type_name):
            _checks.boolean("mask", bad)

    def test_array_accepts_arrays_scalars_and_tracers(self):
        for good in (np.zeros(2), jnp.zeros(2), np.float32(1.0), 3, 2.5, True, jax.ShapeDtypeStruct((2,), jnp.float32)):
            _checks.array("x", good)
        jax.jit(lambda x: _checks.rank("x", x, 1) or x)(jnp.zeros(3))

    def test_flag(self):
        self.assertIs(_checks.flag("is_causal", np.bool_(True)), True)
        for bad in ("no", 1, 0, None, np.array(True), jnp.array(False)):
            with _raises(TypeError, "is_causal", "must be a bool"):
                _checks.flag("is_causal", bad)

    def test_numbers(self):
        self.assertEqual(_checks.rate("dropout_rate", 0), 0.0)
        self.assertEqual(_checks.int_at_least("num_heads", np.int64(3), 1), 3)
        self.assertEqual(_checks.positive_real("sigma", 2), 2.0)
        self.assertEqual(_checks.positive_real("penalty", 0.0, allow_zero=True), 0.0)
        for bad in (1.0, -0.1, True, "0.1"):
            with _raises(ValueError, "dropout_rate", repr(bad)):
                _checks.rate("dropout_rate", bad)
        for bad in (0, 2.0, True, "3"):
            with _raises(ValueError, "num_heads", repr(bad)):
                _checks.int_at_least("num_heads", bad, 1)
        for bad in (0.0, -1, True, "1"):
            with _raises(ValueError, "sigma", repr(bad)):
                _checks.positive_real("sigma", bad)
        with _raises(ValueError, "penalty", ">= 0", "-1"):
            _checks.positive_real("penalty", -1, allow_zero=True)

    def test_choice_and_tokens(self):
        with _raises(ValueError, "mode", "'soft'", "global"):
            _checks.choice("mode", "soft", ("global", "local_m"))
        with _raises(TypeError, "src", "list"):
            _checks.tokens("src", [[1, 2]], 2)
        with _raises(TypeError, "src", "float32"):
            _checks.tokens("src", jnp.zeros((1, 2)), 2)
        with _raises(ValueError, "src", (2,)):
            _checks.tokens("src", jnp.zeros((2,), jnp.int32), 2)


if __name__ == "__main__":
    absltest.main()
