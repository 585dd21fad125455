"""Tests for attention_jax/scores.py against float64 transcriptions of the paper equations.

Luong et al. 2015 (arXiv:1508.04025) eq. 8; Bahdanau et al. 2014 (arXiv:1409.0473) A.1.2;
Vaswani et al. 2017 (arXiv:1706.03762) eq. 1; Graves et al. 2014 (arXiv:1410.5401) eq. 6.
"""

import re

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

import attention_jax as aj
from attention_jax.core import scores
from tests import reference as ref

B, T, S = 2, 3, 5
DQ, DK = 4, 6  # Different on purpose: catches a swapped query/key projection.
A = 5
S_MAX = 7
ALL_SCORES = tuple(scores.SCORES)  # the registry; test_score_params_table pins its names


def _dims(name):
    # dot, scaled_dot and cosine need equal query/key feature sizes.
    return (DQ, DQ) if scores.SCORES[name].same_features else (DQ, DK)


def _inputs(name, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    dq, dk = _dims(name)
    query = rng.standard_normal((B, T, dq)).astype(dtype)
    key = rng.standard_normal((B, S, dk)).astype(dtype)
    params = ref.random_params(rng, name, dq, dk, hidden_dim=A, max_keys=S_MAX, dtype=dtype)
    return query, key, params


def _direct(name):
    """The score function itself, as f(query, key, params) with params a dict (a pytree for jit)."""
    if name == "dot":
        return lambda q, k, p: scores.dot_score(q, k)
    if name == "scaled_dot":
        return lambda q, k, p: scores.scaled_dot_score(q, k)
    if name == "general":
        return lambda q, k, p: scores.general_score(q, k, p["w_a"])
    if name == "concat":
        return lambda q, k, p: scores.concat_score(q, k, p["w_a"], p["v_a"])
    if name == "additive":
        return lambda q, k, p: scores.additive_score(q, k, p["w_q"], p["w_k"], p["v"])
    if name == "location":
        return lambda q, k, p: scores.location_score(q, p["w_a"], k.shape[1])
    if name == "cosine":
        return lambda q, k, p: scores.cosine_score(q, k)
    raise AssertionError(name)


_NAMED = [dict(testcase_name=n, name=n) for n in ALL_SCORES]
_NAMED_WITH_KEY = [d for d in _NAMED if d["name"] != "location"]  # location_score takes no key.


class ScoresMatchReferenceTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*_NAMED)
    def test_float32_matches_reference(self, name):
        query, key, params = _inputs(name)
        got = self.variant(_direct(name))(jnp.asarray(query), jnp.asarray(key), params)
        chex.assert_shape(got, (B, T, S))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.compute_score(name, query, key, params), "float32")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*_NAMED)
    def test_compute_score_matches_reference(self, name):
        query, key, params = _inputs(name, seed=1)
        fn = lambda q, k, p: scores.compute_score(name, q, k, p)
        got = self.variant(fn)(jnp.asarray(query), jnp.asarray(key), params)
        chex.assert_shape(got, (B, T, S))
        self.assertEqual(got.dtype, jnp.float32)
        ref.assert_close(got, ref.compute_score(name, query, key, params), "float32")

    @parameterized.named_parameters(*_NAMED)
    def test_bfloat16_inputs_give_float32_logits(self, name):
        query, key, params = _inputs(name, seed=2)
        q16, k16 = jnp.asarray(query, jnp.bfloat16), jnp.asarray(key, jnp.bfloat16)
        p16 = {n: jnp.asarray(w, jnp.bfloat16) for n, w in params.items()}
        got = _direct(name)(q16, k16, p16)
        self.assertEqual(got.dtype, jnp.float32)
        # The reference sees exactly the bfloat16-rounded inputs.
        want = ref.compute_score(name, np.asarray(q16), np.asarray(k16), {n: np.asarray(w) for n, w in p16.items()})
        ref.assert_close(got, want, "bfloat16")


class ScoreSemanticsTest(parameterized.TestCase):

    def test_scaled_dot_default_scale_is_inverse_sqrt_dim(self):
        query, key, _ = _inputs("dot", seed=3)
        got = scores.scaled_dot_score(jnp.asarray(query), jnp.asarray(key))
        ref.assert_close(got, ref.dot_score(query, key) / np.sqrt(DQ))

    def test_scaled_dot_explicit_scale(self):
        query, key, _ = _inputs("dot", seed=4)
        got = scores.scaled_dot_score(jnp.asarray(query), jnp.asarray(key), scale=0.3)
        ref.assert_close(got, ref.dot_score(query, key) * 0.3)

    def test_general_with_identity_is_dot(self):
        query, key, _ = _inputs("dot", seed=5)
        got = scores.general_score(jnp.asarray(query), jnp.asarray(key), jnp.eye(DQ))
        ref.assert_close(got, ref.dot_score(query, key))

    def test_concat_puts_query_first(self):
        # With the key rows of W_a zeroed, the score depends only on the query: v^T tanh(W_q h_t).
        query, key, params = _inputs("concat", seed=6)
        w_a = params["w_a"].copy()
        w_a[DQ:] = 0.0
        got = scores.concat_score(jnp.asarray(query), jnp.asarray(key), jnp.asarray(w_a), jnp.asarray(params["v_a"]))
        want = np.tanh(query.astype(np.float64) @ w_a[:DQ].astype(np.float64)) @ params["v_a"].astype(np.float64)
        ref.assert_close(got, np.broadcast_to(want[:, :, None], (B, T, S)))

    def test_location_ignores_key_and_truncates_to_num_keys(self):
        query, _, params = _inputs("location", seed=7)
        for num_keys in (1, 4, S_MAX):
            got = scores.location_score(jnp.asarray(query), jnp.asarray(params["w_a"]), num_keys)
            chex.assert_shape(got, (B, T, num_keys))
            want = query.astype(np.float64) @ params["w_a"].astype(np.float64)
            ref.assert_close(got, want[:, :, :num_keys])

    def test_cosine_is_scale_invariant_and_bounded(self):
        query, key, _ = _inputs("cosine", seed=8)
        got = scores.cosine_score(jnp.asarray(query), jnp.asarray(key))
        scaled = scores.cosine_score(jnp.asarray(query) * 7.0, jnp.asarray(key) * 0.01)
        ref.assert_close(scaled, got, "float32")
        self.assertLessEqual(float(jnp.max(jnp.abs(got))), 1.0 + 1e-6)
        # Identical vectors have similarity 1.
        same = scores.cosine_score(jnp.asarray(query), jnp.asarray(query))
        ref.assert_close(jnp.diagonal(same, axis1=1, axis2=2), np.ones((B, T)))

    def test_cosine_zero_vector_is_finite(self):
        query, key, _ = _inputs("cosine", seed=9)
        query[0, 1] = 0.0
        key[1, 2] = 0.0
        got = np.asarray(scores.cosine_score(jnp.asarray(query), jnp.asarray(key)))
        self.assertTrue(np.all(np.isfinite(got)), got)
        np.testing.assert_array_equal(got[0, 1], 0.0)
        np.testing.assert_array_equal(got[1, :, 2], 0.0)

    def test_score_params_table(self):
        self.assertEqual(
            {n: tuple(p) for n, p in scores.SCORE_PARAMS.items()},
            {"dot": (), "general": ("w_a",), "concat": ("w_a", "v_a"), "additive": ("w_q", "w_k", "v"),
             "location": ("w_a",), "scaled_dot": (), "cosine": ()})

    def test_registry_functions_are_the_public_scores(self):
        for name, fn in (("dot", scores.dot_score), ("scaled_dot", scores.scaled_dot_score),
                         ("general", scores.general_score), ("concat", scores.concat_score),
                         ("additive", scores.additive_score), ("cosine", scores.cosine_score)):
            self.assertIs(scores.SCORES[name].fn, fn, name)
        self.assertEqual(dict(scores.SCORE_PARAMS), {n: s.params for n, s in scores.SCORES.items()})
        self.assertEqual(scores.LUONG_SCORES, ("dot", "general", "concat", "location"))  # Luong eq. 8
        self.assertEqual({n for n, s in scores.SCORES.items() if s.same_features}, {"dot", "scaled_dot", "cosine"})

    @parameterized.named_parameters(*_NAMED)
    def test_param_shapes_match_the_reference_parameters(self, name):
        # tests/reference.random_params lists every score's parameter shapes independently of the registry.
        dq, dk = _dims(name)
        want = ref.random_params(np.random.default_rng(0), name, dq, dk, hidden_dim=A, max_keys=S_MAX)
        got = scores.param_shapes(name, dq, dk, hidden_dim=A, max_keys=S_MAX)
        self.assertEqual(got, {n: w.shape for n, w in want.items()})
        self.assertEqual(tuple(got), scores.SCORES[name].params)

    @parameterized.named_parameters(*_NAMED)
    def test_params_built_from_param_shapes_compute_the_reference(self, name):
        dq, dk = _dims(name)
        rng = np.random.default_rng(3)
        shapes = scores.param_shapes(name, dq, dk, hidden_dim=A, max_keys=S_MAX)
        params = {n: rng.standard_normal(shape).astype(np.float32) for n, shape in shapes.items()}
        query = rng.standard_normal((B, T, dq)).astype(np.float32)
        key = rng.standard_normal((B, S, dk)).astype(np.float32)
        got = scores.compute_score(name, jnp.asarray(query), jnp.asarray(key), params)
        ref.assert_close(got, ref.compute_score(name, query, key, params))

    def test_param_shapes_errors_name_the_problem(self):
        with _raises(ValueError, "bogus"):
            scores.param_shapes("bogus", DQ, DK)
        with _raises(ValueError, "hidden_dim"):
            scores.param_shapes("concat", DQ, DK)
        with _raises(ValueError, "max_keys"):
            scores.param_shapes("location", DQ, DK, hidden_dim=A)
        with _raises(ValueError, "query_dim=4", "key_dim=6"):
            scores.param_shapes("dot", DQ, DK)
        with _raises(ValueError, "query_dim", "0"):
            scores.param_shapes("general", 0, DK)
        with _raises(ValueError, "hidden_dim", "True"):
            scores.param_shapes("additive", DQ, DK, hidden_dim=True)
        self.assertEqual(scores.param_shapes("dot", DQ, DQ), {})

    def test_package_reexports(self):
        for name in ("dot_score", "scaled_dot_score", "general_score", "concat_score", "additive_score",
                     "location_score", "cosine_score", "compute_score", "SCORE_PARAMS"):
            self.assertIs(getattr(aj.core.scores, name), getattr(scores, name), name)


class ScoreGradientTest(parameterized.TestCase):

    @parameterized.named_parameters(*_NAMED)
    def test_check_grads(self, name):
        query, key, params = _inputs(name, seed=10)
        fn = _direct(name)
        args = (jnp.asarray(query), jnp.asarray(key), {n: jnp.asarray(w) for n, w in params.items()})
        # float32 finite differences: eps large enough to beat rounding, loose tolerance.
        jtu.check_grads(fn, args, order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)


def _raises(exc_types, *fragments):
    """pytest.raises that also checks every fragment (a shape or value) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


_BAD = (ValueError, TypeError)


class ScoreErrorsTest(parameterized.TestCase):

    @parameterized.named_parameters(*_NAMED_WITH_KEY)
    def test_batch_mismatch(self, name):
        query, key, params = _inputs(name, seed=11)
        key = np.concatenate([key, key[:1]], axis=0)  # B + 1
        with _raises(_BAD, query.shape, key.shape):
            _direct(name)(jnp.asarray(query), jnp.asarray(key), params)

    @parameterized.named_parameters(*_NAMED)
    def test_query_wrong_rank(self, name):
        query, key, params = _inputs(name, seed=12)
        query = query[0]  # [T, D]
        with _raises(_BAD, query.shape):
            _direct(name)(jnp.asarray(query), jnp.asarray(key), params)

    @parameterized.named_parameters(*_NAMED_WITH_KEY)
    def test_key_wrong_rank(self, name):
        query, key, params = _inputs(name, seed=13)
        key = key[0]  # [S, D]
        with _raises(_BAD, key.shape):
            _direct(name)(jnp.asarray(query), jnp.asarray(key), params)

    @parameterized.parameters("dot", "scaled_dot", "cosine")
    def test_feature_dim_mismatch(self, name):
        query = jnp.zeros((B, T, 4))
        key = jnp.ones((B, S, 6))
        with _raises(_BAD, query.shape, key.shape):
            _direct(name)(query, key, {})

    def test_general_weight_shape(self):
        query, key, _ = _inputs("general")
        w_a = jnp.zeros((DQ, DK + 1))
        with _raises(_BAD, w_a.shape):
            scores.general_score(jnp.asarray(query), jnp.asarray(key), w_a)

    def test_concat_weight_shapes(self):
        query, key, params = _inputs("concat")
        bad_w = jnp.zeros((DQ + DK + 1, A))
        with _raises(_BAD, bad_w.shape):
            scores.concat_score(jnp.asarray(query), jnp.asarray(key), bad_w, jnp.asarray(params["v_a"]))
        bad_v = jnp.zeros((A + 1,))
        with _raises(_BAD, bad_v.shape):
            scores.concat_score(jnp.asarray(query), jnp.asarray(key), jnp.asarray(params["w_a"]), bad_v)

    def test_additive_weight_shapes(self):
        query, key, params = _inputs("additive")
        p = {n: jnp.asarray(w) for n, w in params.items()}
        bad_wk = jnp.zeros((DK, A + 1))
        with _raises(_BAD, bad_wk.shape):
            scores.additive_score(jnp.asarray(query), jnp.asarray(key), p["w_q"], bad_wk, p["v"])
        bad_wq = jnp.zeros((DQ + 1, A))
        with _raises(_BAD, bad_wq.shape):
            scores.additive_score(jnp.asarray(query), jnp.asarray(key), bad_wq, p["w_k"], p["v"])

    def test_location_num_keys_above_max(self):
        query, _, params = _inputs("location")
        with _raises(ValueError, S_MAX + 2, S_MAX):
            scores.location_score(jnp.asarray(query), jnp.asarray(params["w_a"]), S_MAX + 2)

    def test_compute_score_location_too_many_keys(self):
        query, _, params = _inputs("location")
        key = jnp.zeros((B, S_MAX + 1, DK))
        with _raises(ValueError, S_MAX + 1):
            scores.compute_score("location", jnp.asarray(query), key, params)

    def test_compute_score_unknown_name(self):
        query, key, _ = _inputs("dot")
        with _raises(ValueError, "bogus"):
            scores.compute_score("bogus", jnp.asarray(query), jnp.asarray(key), {})

    @parameterized.parameters(("general", "w_a"), ("concat", "v_a"), ("additive", "w_k"), ("location", "w_a"))
    def test_compute_score_missing_params(self, name, missing):
        query, key, params = _inputs(name)
        del params[missing]
        with _raises(ValueError, missing):
            scores.compute_score(name, jnp.asarray(query), jnp.asarray(key), params)

    def test_compute_score_params_none(self):
        query, key, _ = _inputs("general")
        with _raises(ValueError, "w_a"):
            scores.compute_score("general", jnp.asarray(query), jnp.asarray(key), None)

    @parameterized.named_parameters(*_NAMED)
    def test_python_lists_are_rejected_by_name(self, name):
        query, key, params = _inputs(name)
        with _raises(TypeError, "query", "list"):
            scores.compute_score(name, query.tolist(), jnp.asarray(key), params)
        with _raises(TypeError, "key", "list"):
            scores.compute_score(name, jnp.asarray(query), key.tolist(), params)
        for param in params:
            bad = {**params, param: params[param].tolist()}
            with _raises(TypeError, param, "list"):
                scores.compute_score(name, jnp.asarray(query), jnp.asarray(key), bad)

    def test_params_must_be_a_mapping(self):
        query, key, params = _inputs("general")
        with _raises(TypeError, "params", "list"):
            scores.compute_score("general", jnp.asarray(query), jnp.asarray(key), [params["w_a"]])

    @parameterized.named_parameters(*_NAMED)
    def test_zero_features_raise_value_error_naming_shapes(self, name):
        query = jnp.zeros((B, T, 0))
        key = jnp.zeros((B, S, 0))
        with _raises(ValueError, query.shape, key.shape):
            scores.compute_score(name, query, key, {p: jnp.zeros((1,)) for p in scores.SCORES[name].params})

    def test_scaled_dot_zero_features_is_a_value_error_not_zero_division(self):
        with _raises(ValueError, (B, T, 0)):
            scores.scaled_dot_score(jnp.zeros((B, T, 0)), jnp.zeros((B, S, 0)))


if __name__ == "__main__":
    absltest.main()
