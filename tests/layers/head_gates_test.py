"""Tests for attention_jax/head_gates.py: Hard Concrete head gates (arXiv:1905.09418 §4, arXiv:1712.01312 §4).

Tiny sizes (D=8, N=4, H=3, T, S <= 6) so the file runs in seconds on one CPU core.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.layers.head_gates import (
    GatedMultiHeadAttention,
    kept_heads,
    expected_l0,
    hard_concrete_deterministic,
    hard_concrete_sample,
    prune_heads,
)
from attention_jax.layers.multihead import MultiHeadAttention

B, T, S, D, N, H, D_OUT = 2, 5, 6, 8, 4, 3, 7
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
LOG_ALPHA = np.array([-3.0, -0.5, 0.0, 0.7, 2.5], np.float32)


def _raises(*fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(ValueError, match=pattern)


def _np_expected_l0(log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
    x = np.asarray(log_alpha, np.float64) - beta * np.log(-gamma / zeta)
    return np.sum(1.0 / (1.0 + np.exp(-x)))


def _np_deterministic(log_alpha, gamma=GAMMA, zeta=ZETA):
    s = 1.0 / (1.0 + np.exp(-np.asarray(log_alpha, np.float64)))
    return np.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    xq = rng.normal(size=(B, T, D)).astype(np.float32)
    xkv = rng.normal(size=(B, S, D)).astype(np.float32)
    return jnp.asarray(xq), jnp.asarray(xkv)


def _gated_params(log_alpha, seed=0):
    module = GatedMultiHeadAttention(num_heads=N, head_dim=H, out_features=D_OUT, bias_init=nn.initializers.normal(0.3))
    xq, xkv = _inputs()
    params = nn.unbox(module.init(jax.random.PRNGKey(seed), xq, xkv)["params"])
    params = {**params, "log_alpha": jnp.asarray(log_alpha, jnp.float32)}
    return module, params


# --- pure functions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,gamma,zeta", [(BETA, GAMMA, ZETA), (0.5, -0.2, 1.3)])
def test_expected_l0_matches_float64_formula(beta, gamma, zeta):
    got = expected_l0(jnp.asarray(LOG_ALPHA), beta=beta, gamma=gamma, zeta=zeta)
    chex.assert_shape(got, ())
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_expected_l0(LOG_ALPHA, beta, gamma, zeta), rtol=1e-5, atol=1e-5)


def test_expected_l0_matches_monte_carlo_probability_open():
    num_samples = 40_000
    keys = jax.random.split(jax.random.PRNGKey(0), num_samples)
    gates = jax.vmap(lambda k: hard_concrete_sample(jnp.asarray(LOG_ALPHA), k))(keys)  # [M, N]
    p_open = np.mean(np.asarray(gates) > 0, axis=0)  # [N]
    x = LOG_ALPHA.astype(np.float64) - BETA * np.log(-GAMMA / ZETA)
    per_head = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(p_open, per_head, atol=0.02)
    np.testing.assert_allclose(float(expected_l0(jnp.asarray(LOG_ALPHA))), p_open.sum(), atol=0.02 * len(LOG_ALPHA))


def test_samples_in_unit_interval_with_exact_zeros_and_ones():
    log_alpha = jnp.array([-8.0, 0.0, 8.0], jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), 2000)
    gates = np.asarray(jax.vmap(lambda k: hard_concrete_sample(log_alpha, k))(keys))  # [M, 3]
    assert gates.dtype == np.float32
    assert np.all((gates >= 0.0) & (gates <= 1.0))
    assert np.mean(gates[:, 0] == 0.0) > 0.9
    assert np.mean(gates[:, 2] == 1.0) > 0.9
    middle = gates[:, 1]
    assert np.any(middle == 0.0) and np.any(middle == 1.0) and np.any((middle > 0) & (middle < 1))


def test_deterministic_gate_formula():
    got = hard_concrete_deterministic(jnp.asarray(LOG_ALPHA))
    chex.assert_shape(got, (len(LOG_ALPHA),))
    np.testing.assert_allclose(got, _np_deterministic(LOG_ALPHA), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(kept_heads(jnp.asarray(LOG_ALPHA)), _np_deterministic(LOG_ALPHA) > 0)
    assert kept_heads(jnp.asarray(LOG_ALPHA)).tolist() == [False, True, True, True, True]


def test_l0_and_sample_gradients_finite():
    grad = jax.grad(lambda la: expected_l0(la))(jnp.asarray(LOG_ALPHA))
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) > 0)
    x = LOG_ALPHA.astype(np.float64) - BETA * np.log(-GAMMA / ZETA)
    sig = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(grad, sig * (1 - sig), rtol=1e-5, atol=1e-6)
    g_sample = jax.grad(lambda la: hard_concrete_sample(la, jax.random.PRNGKey(3)).sum())(jnp.asarray(LOG_ALPHA))
    assert np.all(np.isfinite(g_sample))


def test_pure_functions_reject_bad_inputs():
    with _raises("log_alpha", "rank 1", "(2, 2)"):
        expected_l0(jnp.zeros((2, 2)))
    with _raises("log_alpha", "(2, 2)"):
        hard_concrete_sample(jnp.zeros((2, 2)), jax.random.PRNGKey(0))
    with _raises("log_alpha", "()"):
        hard_concrete_deterministic(jnp.zeros(()))
    with _raises("beta", "-1"):
        expected_l0(jnp.zeros(3), beta=-1.0)
    with _raises("gamma", "zeta"):
        hard_concrete_deterministic(jnp.zeros(3), gamma=0.1)


# --- module ---------------------------------------------------------------------------------------------------


def test_all_gates_open_equals_multihead_attention():
    module, params = _gated_params(jnp.full((N,), 20.0))
    chex.assert_shape(params["log_alpha"], (N,))
    chex.assert_shape(params["query"]["kernel"], (D, N, H))
    chex.assert_shape(params["out"]["kernel"], (N, H, D_OUT))
    xq, xkv = _inputs(1)
    mask = jnp.asarray(np.random.default_rng(2).random((B, 1, T, S)) > 0.3)
    out, l0 = module.apply({"params": params}, xq, xkv, mask=mask)
    chex.assert_shape(out, (B, T, D_OUT))
    chex.assert_shape(l0, ())
    np.testing.assert_allclose(l0, N, atol=1e-5)

    plain = MultiHeadAttention(num_heads=N, head_dim=H, out_features=D_OUT)
    plain_params = {k: v for k, v in params.items() if k != "log_alpha"}
    ref = plain.apply({"params": plain_params}, xq, xkv, mask=mask)
    chex.assert_trees_all_close(out, ref, atol=1e-5)

    out_c, _ = module.apply({"params": params}, xq, is_causal=True)
    ref_c = plain.apply({"params": plain_params}, xq, is_causal=True)
    chex.assert_trees_all_close(out_c, ref_c, atol=1e-5)


def test_pruned_module_matches_gated_with_kept_heads():
    log_alpha = jnp.array([20.0, -20.0, 20.0, -20.0], jnp.float32)
    module, params = _gated_params(log_alpha, seed=3)
    xq, xkv = _inputs(4)
    out, _ = module.apply({"params": params}, xq, xkv)

    keep = kept_heads(params["log_alpha"])
    np.testing.assert_array_equal(keep, [True, False, True, False])
    new_params, kept = prune_heads(params, keep)
    assert kept == 2
    assert "log_alpha" not in new_params
    chex.assert_shape(new_params["query"]["kernel"], (D, 2, H))
    chex.assert_shape(new_params["key"]["bias"], (2, H))
    chex.assert_shape(new_params["out"]["kernel"], (2, H, D_OUT))
    small = MultiHeadAttention(num_heads=kept, head_dim=H, out_features=D_OUT)
    ref = small.apply({"params": new_params}, xq, xkv)
    chex.assert_trees_all_close(out, ref, atol=1e-5)

    # Nested {"params": ...} input keeps its nesting.
    nested, kept2 = prune_heads({"params": params}, keep)
    assert kept2 == 2 and set(nested) == {"params"}

    # Closing heads must change the output (otherwise the test above proves nothing).
    all_open = {**params, "log_alpha": jnp.full((N,), 20.0)}
    out_open, _ = module.apply({"params": all_open}, xq, xkv)
    assert not np.allclose(out_open, out, atol=1e-3)


def test_stochastic_gates_use_gates_rng_and_vary():
    module, params = _gated_params(jnp.zeros((N,)))
    xq, _ = _inputs()
    out_a, l0 = module.apply({"params": params}, xq, deterministic=False, rngs={"gates": jax.random.PRNGKey(0)})
    out_b, _ = module.apply({"params": params}, xq, deterministic=False, rngs={"gates": jax.random.PRNGKey(1)})
    assert not np.allclose(out_a, out_b)
    np.testing.assert_allclose(l0, _np_expected_l0(np.zeros(N)), rtol=1e-5)

    def loss(p):
        out, l0 = module.apply({"params": p}, xq, deterministic=False, rngs={"gates": jax.random.PRNGKey(0)})
        return jnp.sum(out**2) + l0

    grads = jax.grad(loss)(params)
    assert np.all(np.isfinite(grads["log_alpha"])) and np.any(np.asarray(grads["log_alpha"]) != 0)


def test_module_and_prune_reject_bad_inputs():
    with _raises("num_kv_heads", "K=2", "N=4"):
        GatedMultiHeadAttention(num_heads=4, num_kv_heads=2)
    module, params = _gated_params(jnp.zeros((N,)))
    xq, xkv = _inputs()
    with _raises("inputs_q", "rank 3", "(5, 8)"):
        module.apply({"params": params}, xq[0])
    with _raises("mask", "T=5", "S=6", "(2, 1, 5, 5)"):
        module.apply({"params": params}, xq, xkv, mask=jnp.ones((B, 1, T, T), bool))
    with _raises("batch sizes differ", "(2, 5, 8)", "(1, 6, 8)"):
        module.apply({"params": params}, xq, xkv[:1])
    with _raises("keep", "(4,)", "(3,)"):
        prune_heads(params, np.ones(3, bool))
    with _raises("keep closes every head"):
        prune_heads(params, np.zeros(N, bool))
    with pytest.raises(TypeError, match="keep"):
        prune_heads(params, np.ones(N, np.int32))
    gqa = MultiHeadAttention(num_heads=4, num_kv_heads=2, head_dim=H).init(jax.random.PRNGKey(0), xq)["params"]
    gqa = nn.unbox(gqa)
    with _raises("num_kv_heads == num_heads", "(8, 2, 3)", "(8, 4, 3)"):
        prune_heads(gqa, np.ones(4, bool))


@pytest.mark.parametrize("name,bad", [("is_causal", "no"), ("deterministic", "True")])
def test_gated_call_flags_must_be_bools(name, bad):
    module, params = _gated_params(LOG_ALPHA[:N])
    xq, xkv = _inputs(7)
    with pytest.raises(TypeError, match=f"{name} must be a bool, got {bad!r}"):
        module.apply({"params": params}, xq, xkv, **{name: bad})


def test_gated_deterministic_attribute_and_empty_sequences():
    module, params = _gated_params(LOG_ALPHA[:N])
    xq, xkv = _inputs(8)
    det = GatedMultiHeadAttention(num_heads=N, head_dim=H, out_features=D_OUT, deterministic=True)
    np.testing.assert_allclose(det.apply({"params": params}, xq, xkv)[0], module.apply({"params": params}, xq, xkv)[0],
                               atol=1e-6)
    with _raises("deterministic", "attribute"):
        det.apply({"params": params}, xq, xkv, deterministic=False)
    for num_queries, num_keys in ((0, S), (T, 0)):
        out, l0 = module.apply({"params": params}, xq[:, :num_queries], xkv[:, :num_keys])
        assert out.shape == (B, num_queries, D_OUT)
        np.testing.assert_allclose(out, np.broadcast_to(params["out"]["bias"], out.shape), atol=1e-6)
        np.testing.assert_allclose(l0, _np_expected_l0(LOG_ALPHA[:N]), rtol=1e-5)
