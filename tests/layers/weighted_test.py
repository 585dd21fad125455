"""Tests for attention_jax/weighted.py: Weighted Transformer branched attention (arXiv:1711.02132 §3) and the
simplex projection (Duchi et al. 2008; arXiv:1309.1541).

Tiny sizes (B=2, T=4, S=5, D=6, M=3, H=4, F=7) so the file runs in seconds on one CPU core.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax.layers.weighted import WeightedBranchAttention, project_branch_weights, project_to_simplex

B, T, S, D, M, H, F = 2, 4, 5, 6, 3, 4, 7
ATOL = 1e-5


def _raises(*fragments, error=ValueError):
    """pytest.raises that also checks every fragment (a value or shape) appears in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(error, match=pattern)


# ----------------------------------------------------------------------------------------------------------
# float64 numpy references.


def _np_simplex(x):
    """Projection by bisection on theta in sum_m max(x_m - theta, 0) = 1 (independent of the sort algorithm)."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    for row, v in enumerate(flat):
        lo, hi = v.min() - 1.0, v.max()
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if np.maximum(v - mid, 0.0).sum() > 1.0:
                lo = mid
            else:
                hi = mid
        out[row] = np.maximum(v - 0.5 * (lo + hi), 0.0)
    return out.reshape(x.shape)


def _np_softmax_attention(q, k, v, mask):
    """q [B,T,M,H], k/v [B,S,M,H], mask [B|1,M|1,T,S] bool or None -> [B,T,M,H]; eq. 1 of arXiv:1706.03762."""
    logits = np.einsum("btmh,bsmh->bmts", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    logits = logits - logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("bmts,bsmh->btmh", w, v)


def _np_branch_paths(params, xq, xkv, mask=None):
    """Per-branch FFN_i(kappa_i head_i W^{O_i}) [B, T, M, D] in float64, arXiv:1711.02132 §3."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    xq, xkv = np.asarray(xq, np.float64), np.asarray(xkv, np.float64)

    def proj(name, x):
        return np.einsum("bsd,dmh->bsmh", x, p[name]["kernel"]) + p[name]["bias"]

    heads = _np_softmax_attention(proj("query", xq), proj("key", xkv), proj("value", xkv), mask)
    paths = []
    for i in range(M):
        head_bar = heads[:, :, i] @ p["out_kernel"][i] * p["kappa"][i]  # [B, T, D]
        inner = np.maximum(head_bar @ p["ffn_in_kernel"][i] + p["ffn_in_bias"][i], 0.0)
        paths.append(inner @ p["ffn_out_kernel"][i] + p["ffn_out_bias"][i])
    return np.stack(paths, axis=2)


def _np_branched_attention(params, xq, xkv, mask=None):
    """sum_i alpha_i FFN_i(head_i_bar) [B, T, D] in float64."""
    alpha = np.asarray(params["params"]["alpha"], np.float64)
    return np.einsum("btmd,m->btd", _np_branch_paths(params, xq, xkv, mask), alpha)


# ----------------------------------------------------------------------------------------------------------
# Fixtures.


def _module(**kwargs):
    # Non-zero biases so the reference checks every parameter.
    return WeightedBranchAttention(num_branches=M, head_dim=H, d_ff=F, bias_init=nn.initializers.normal(0.3), **kwargs)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(B, T, D)).astype(np.float32)),
            jnp.asarray(rng.normal(size=(B, S, D)).astype(np.float32)))


def _params(module, xq, xkv, seed=0, kappa=None, alpha=None):
    params = nn.unbox(module.init(jax.random.PRNGKey(seed), xq, xkv))
    rng = np.random.default_rng(seed + 100)
    inner = dict(params["params"])
    # Non-uniform simplex points, so every branch weight matters.
    inner["kappa"] = jnp.asarray(rng.dirichlet(np.ones(M)) if kappa is None else kappa, jnp.float32)
    inner["alpha"] = jnp.asarray(rng.dirichlet(np.ones(M)) if alpha is None else alpha, jnp.float32)
    return {"params": inner}


# ----------------------------------------------------------------------------------------------------------
# project_to_simplex.


def _on_simplex(w, atol=1e-5):
    w = np.asarray(w)
    return bool(np.all(w >= 0.0) and np.allclose(w.sum(-1), 1.0, atol=atol))


@pytest.mark.parametrize("shape", [(1,), (5,), (4, 3), (2, 3, 8)])
def test_project_to_simplex_matches_float64_reference(shape):
    x = np.random.default_rng(1).normal(scale=2.0, size=shape).astype(np.float32)
    got = project_to_simplex(jnp.asarray(x))
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _np_simplex(x), atol=ATOL)
    assert _on_simplex(got)


def test_project_to_simplex_is_the_closest_point():
    rng = np.random.default_rng(2)
    x = rng.normal(scale=1.5, size=(20, 4))
    got = np.asarray(project_to_simplex(jnp.asarray(x, jnp.float32)), np.float64)
    assert _on_simplex(got)
    best = np.linalg.norm(got - x, axis=-1)  # [20]
    # Random simplex points, including points on faces and vertices, are never closer.
    candidates = np.concatenate([rng.dirichlet(np.ones(4), size=2000), rng.dirichlet(np.full(4, 0.1), size=2000),
                                 np.eye(4)])  # [P, 4]
    dists = np.linalg.norm(candidates[None] - x[:, None], axis=-1)  # [20, P]
    assert np.all(dists >= best[:, None] - 1e-5)


def test_project_to_simplex_is_idempotent_and_fixes_simplex_points():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(scale=3.0, size=(6, 5)), jnp.float32)
    once = project_to_simplex(x)
    np.testing.assert_allclose(np.asarray(project_to_simplex(once)), np.asarray(once), atol=ATOL)
    on = jnp.asarray(np.concatenate([rng.dirichlet(np.ones(5), size=4), np.eye(5)[:2]]), jnp.float32)
    np.testing.assert_allclose(np.asarray(project_to_simplex(on)), np.asarray(on), atol=ATOL)


def test_project_to_simplex_under_jit_and_grad():
    x = jnp.asarray([[0.3, -1.0, 2.0], [0.1, 0.2, 0.3]], jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(project_to_simplex)(x)), _np_simplex(x), atol=ATOL)
    # The projection is piecewise linear: its sum is constant 1, so d(sum)/dx = 0.
    grad = jax.grad(lambda v: project_to_simplex(v).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=ATOL)


def test_project_to_simplex_rejects_bad_inputs():
    with _raises("shape", "()"):
        project_to_simplex(jnp.float32(1.0))
    with _raises("shape", "(3, 0)"):
        project_to_simplex(jnp.zeros((3, 0)))
    with _raises("floating", error=TypeError):
        project_to_simplex(jnp.ones((3,), jnp.int32))


# ----------------------------------------------------------------------------------------------------------
# project_branch_weights.


def test_project_branch_weights_after_adam_step():
    module = _module()
    xq, xkv = _inputs()
    params = nn.unbox(module.init(jax.random.PRNGKey(0), xq, xkv))
    opt = optax.adam(0.5)
    state = opt.init(params)

    # A loss that pushes kappa and alpha off the simplex (their sums grow) as well as moving the other params.
    def loss(p):
        out = module.apply(p, xq, xkv)
        return -jnp.sum(p["params"]["kappa"] * jnp.arange(1.0, M + 1)) - jnp.sum(p["params"]["alpha"]) + jnp.mean(out**2)

    updates, state = opt.update(jax.grad(loss)(params), state, params)
    stepped = optax.apply_updates(params, updates)
    for name in ("kappa", "alpha"):
        assert not _on_simplex(stepped["params"][name]), name
    projected = project_branch_weights(stepped)
    assert jax.tree_util.tree_structure(projected) == jax.tree_util.tree_structure(stepped)
    for name in ("kappa", "alpha"):
        assert _on_simplex(projected["params"][name]), name
        np.testing.assert_allclose(np.asarray(projected["params"][name]),
                                   _np_simplex(stepped["params"][name]), atol=ATOL)
    # Every other leaf is untouched.
    for name in ("query", "out_kernel", "ffn_in_bias"):
        same = jax.tree_util.tree_map(np.array_equal, projected["params"][name], stepped["params"][name])
        assert all(jax.tree_util.tree_leaves(same)), name


# ----------------------------------------------------------------------------------------------------------
# WeightedBranchAttention.


def test_init_shapes_and_uniform_branch_weights():
    module = _module()
    xq, xkv = _inputs()
    params = nn.unbox(module.init(jax.random.PRNGKey(0), xq, xkv)["params"])
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes["query"]["kernel"] == (D, M, H)
    assert shapes["out_kernel"] == (M, H, D)
    assert shapes["ffn_in_kernel"] == (M, D, F) and shapes["ffn_out_kernel"] == (M, F, D)
    for name in ("kappa", "alpha"):
        np.testing.assert_allclose(np.asarray(params[name]), np.full(M, 1.0 / M), atol=1e-7)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("masking", ["none", "mask", "causal_self"])
def test_matches_float64_branched_attention(jit, masking):
    module = _module()
    xq, xkv = _inputs(seed=4)
    params = _params(module, xq, xkv)
    mask, is_causal, kv = None, False, xkv
    if masking == "mask":
        rng = np.random.default_rng(5)
        mask_np = rng.random((B, M, T, S)) < 0.6
        mask_np[..., 0] = True  # no empty rows, so the reference softmax is defined
        mask = jnp.asarray(mask_np)
    elif masking == "causal_self":
        is_causal, kv = True, None
    apply = (lambda p, q, k, m: module.apply(p, q, k, m, is_causal=is_causal))
    if jit:
        apply = jax.jit(apply)
    got = apply(params, xq, kv, mask)
    assert got.shape == (B, T, D) and got.dtype == jnp.float32
    if masking == "causal_self":
        ref_mask = np.tril(np.ones((T, T), bool))[None, None]
        want = _np_branched_attention(params, xq, xq, ref_mask)
    else:
        want = _np_branched_attention(params, xq, xkv, None if mask is None else np.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("branch", range(M))
def test_one_hot_weights_give_that_branch_alone(branch):
    module = _module()
    xq, xkv = _inputs(seed=6)
    one_hot = np.eye(M)[branch]
    params = _params(module, xq, xkv, kappa=one_hot, alpha=one_hot)
    got = module.apply(params, xq, xkv)
    want = _np_branch_paths(params, xq, xkv)[:, :, branch]  # [B, T, D]
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=1e-5)

    # Changing every other branch's parameters changes nothing.
    others = np.arange(M) != branch
    rng = np.random.default_rng(7)

    def scramble(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith("kappa") or name.endswith("alpha"):
            return leaf
        axis = 1 if name.startswith(("query", "key", "value")) and name.endswith("kernel") else 0
        noise = jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype)
        keep = jnp.asarray(others).reshape((-1,) + (1,) * (leaf.ndim - 1 - axis))
        return jnp.where(keep, noise, leaf)

    scrambled = {"params": jax.tree_util.tree_map_with_path(scramble, params["params"])}
    assert not np.allclose(np.asarray(scrambled["params"]["out_kernel"]), np.asarray(params["params"]["out_kernel"]))
    np.testing.assert_allclose(np.asarray(module.apply(scrambled, xq, xkv)), np.asarray(got), atol=ATOL)


def test_dropout_is_off_when_deterministic_and_changes_output_otherwise():
    module = _module(dropout_rate=0.5)
    xq, xkv = _inputs()
    params = _params(module, xq, xkv)
    a = module.apply(params, xq, xkv)
    np.testing.assert_allclose(np.asarray(a), _np_branched_attention(params, xq, xkv), atol=ATOL, rtol=1e-5)
    dropped = module.apply(params, xq, xkv, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(np.asarray(dropped), np.asarray(a))


def test_rejects_bad_inputs_naming_shapes():
    module = _module()
    xq, xkv = _inputs()
    params = _params(module, xq, xkv)
    with _raises("inputs_q", "rank 3", "(2, 4)"):
        module.apply(params, jnp.zeros((B, T)), xkv)
    with _raises("inputs_kv", "rank 3", "(2, 5)"):
        module.apply(params, xq, jnp.zeros((B, S)))
    with _raises("batch", "(2, 4, 6)", "(3, 5, 6)"):
        module.apply(params, xq, jnp.zeros((3, S, D)))
    with _raises("mask.shape=(2, 3, 4, 4)", f"S={S}"):
        module.apply(params, xq, xkv, jnp.ones((B, M, T, T), bool))
    with _raises("mask.shape=(2, 2, 4, 5)"):
        module.apply(params, xq, xkv, jnp.ones((B, 2, T, S), bool))
    with _raises("boolean", error=TypeError):
        module.apply(params, xq, xkv, jnp.ones((B, 1, T, S), jnp.float32))
    with _raises("floating", error=TypeError):
        module.apply(params, jnp.zeros((B, T, D), jnp.int32), xkv)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [(dict(num_branches=0, head_dim=H, d_ff=F), "num_branches"), (dict(num_branches=M, head_dim=-1, d_ff=F), "head_dim"),
     (dict(num_branches=M, head_dim=H, d_ff=0), "d_ff"), (dict(num_branches=M, head_dim=H, d_ff=F, dropout_rate=1.0),
                                                          "dropout_rate")],
)
def test_rejects_bad_attributes(kwargs, fragment):
    with _raises(fragment):
        WeightedBranchAttention(**kwargs)


@pytest.mark.parametrize("name,bad", [("is_causal", "no"), ("is_causal", 1), ("deterministic", "False")])
def test_call_flags_must_be_bools(name, bad):
    # Before the fix, is_causal="no" was truthy and silently causal.
    module = _module()
    xq, xkv = _inputs(40)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), xq, xkv))
    with _raises(name, repr(bad), error=TypeError):
        module.apply(params, xq, xkv, **{name: bad})


def test_lists_and_zero_features_are_named():
    module = _module()
    xq, xkv = _inputs(41)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), xq, xkv))
    with _raises("inputs_q", "list", error=TypeError):
        module.apply(params, np.asarray(xq).tolist(), xkv)
    with _raises("mask", "list", error=TypeError):
        module.apply(params, xq, xkv, np.ones((B, 1, T, S), bool).tolist())
    with _raises("feature", (B, S, 0)):
        module.init(jax.random.PRNGKey(0), xq, jnp.zeros((B, S, 0)))


@pytest.mark.parametrize("num_queries,num_keys", [(0, S), (T, 0), (0, 0)])
def test_empty_sequences(num_queries, num_keys):
    # T = 0: an empty output. S = 0: every branch sees a zero head (dot_product_attention's zeros for S = 0), so
    # the output is sum_i alpha_i FFN_i(0) = sum_i alpha_i (relu(b1_i) W2_i + b2_i).
    module = _module()
    xq, xkv = _inputs(42)
    params = _params(module, xq, xkv)
    xq, xkv = xq[:, :num_queries], xkv[:, :num_keys]
    out = module.apply(params, xq, xkv)
    assert out.shape == (B, num_queries, D)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    ffn_of_zero = np.einsum("mf,mfd->md", np.maximum(p["ffn_in_bias"], 0.0), p["ffn_out_kernel"]) + p["ffn_out_bias"]
    np.testing.assert_allclose(out, np.broadcast_to(p["alpha"] @ ffn_of_zero, out.shape), atol=ATOL)
    grads = jax.grad(lambda p: jnp.sum(module.apply(p, xq, xkv) ** 2))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))

def test_nan_in_masked_input_rows_reaches_no_gradient():
    # Before the fix d W_k = x^T d k = NaN * 0 on the masked rows of inputs_kv.
    module = _module()
    xq, xkv = _inputs(43)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), xq, xkv))
    mask = jnp.asarray(np.arange(S)[None, None, None, :] < np.array([S, 2])[:, None, None, None])  # [B, 1, 1, S]
    mask = jnp.broadcast_to(mask, (B, 1, T, S))
    poisoned = np.asarray(xkv).copy()
    poisoned[1, 2:] = np.nan
    grad = jax.value_and_grad(lambda p, kv: jnp.sum(module.apply(p, xq, kv, mask) ** 2), argnums=(0, 1))
    got, want = grad(params, jnp.asarray(poisoned)), grad(params, xkv)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(got))
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
