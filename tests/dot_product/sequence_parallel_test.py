"""Tests for attention_jax/dot_product/ring.py and ulysses.py.

The multi-device cases live in `sequence_parallel_devices.py` and run here in a child process on 8 simulated
CPU devices (`tests.multidevice.run_on_devices`). This process checks what needs one device: `supports`
reasons, bad options, and a 1-device mesh against the "xla" backend.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, Mesh

from attention_jax.dot_product import (FlashBackend, RingBackend, UlyssesBackend, dot_product_attention,
                                       registered_backends, supports)
from attention_jax.dot_product.api import auto_order
from tests import multidevice

_HERE = pathlib.Path(__file__).resolve().parent
B, T, N, K, H = 2, 16, 4, 2, 8
_MESH8 = AbstractMesh((8,), ("seq",))


def _qkv(t=T, s=T, n=N, k=K, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((B, t, n, H)), jnp.float32),
            jnp.asarray(rng.standard_normal((B, s, k, H)), jnp.float32),
            jnp.asarray(rng.standard_normal((B, s, k, H)), jnp.float32))


def test_device_file_passes_on_8_simulated_devices():
    multidevice.run_on_devices(_HERE / "sequence_parallel_devices.py")


def test_named_in_the_table_never_in_auto_order():
    assert {"ring", "ulysses"} <= set(registered_backends())
    for platform in ("cpu", "gpu", "tpu"):
        assert not {"ring", "ulysses"} & set(auto_order(platform=platform))


@pytest.mark.parametrize("implementation,kwargs,fragment", [
    (RingBackend(), {}, "no mesh"),
    (UlyssesBackend(), {}, "no mesh"),
    (RingBackend(mesh=AbstractMesh((8,), ("data",))), {}, "'seq' is not an axis"),
    (RingBackend(mesh=_MESH8), {"bias": jnp.zeros((1, 1, T, T))}, "no bias"),
    (RingBackend(mesh=_MESH8), {"mask": jnp.ones((1, 1, T, T), bool)}, "no dense mask"),
    (RingBackend(mesh=_MESH8), {"local_window_size": 3}, "no local_window_size"),
    (RingBackend(mesh=_MESH8), {"dropout_rate": 0.1, "dropout_rng": jax.random.PRNGKey(0)}, "dropout"),
    (UlyssesBackend(mesh=_MESH8), {"bias": jnp.zeros((1, 1, T, T))}, "no bias"),
    (UlyssesBackend(mesh=_MESH8), {}, "P=8 must divide N=4"),
    (RingBackend(mesh=_MESH8, inner="nope"), {}, "inner must be one of"),
    (RingBackend(mesh=_MESH8, inner=RingBackend()), {}, "single-device backend"),
    (RingBackend(mesh=_MESH8, inner=FlashBackend()), {}, "Pallas kernels need a GPU or TPU"),
])
def test_supports_gives_clear_reasons(implementation, kwargs, fragment):
    q, k, v = _qkv()
    ok, reason = supports(implementation, q, k, v, **kwargs)
    assert not ok and fragment in reason, reason


def test_ring_causal_needs_equal_lengths():
    q, k, v = _qkv(t=16, s=24)
    ok, reason = supports(RingBackend(mesh=_MESH8), q, k, v, is_causal=True)
    assert not ok and "T == S" in reason and "T=16 S=24" in reason
    assert supports(RingBackend(mesh=_MESH8), q, k, v)[0]  # non-causal takes T != S
    assert supports(UlyssesBackend(mesh=_MESH8), *_qkv(n=8), is_causal=True, local_window_size=2)[0]


def test_running_an_unsupported_call_raises_with_the_reason():
    with pytest.raises(ValueError, match="no mesh"):
        dot_product_attention(*_qkv(), implementation="ring")


def test_bad_options_raise_at_construction():
    with pytest.raises(TypeError):
        RingBackend(load_balance="yes")
    with pytest.raises(ValueError, match="batch_axes"):
        UlyssesBackend(batch_axes="data")


@pytest.mark.parametrize("backend", [RingBackend, UlyssesBackend])
@pytest.mark.parametrize("causal", [False, True])
def test_one_device_mesh_equals_xla(backend, causal):
    mesh = Mesh(np.array(jax.devices()[:1]), ("seq",))
    q, k, v = _qkv(t=13, s=13, seed=1)
    kw = dict(is_causal=causal, key_value_seq_lengths=jnp.asarray([13, 5]),
              segment_ids=jnp.asarray(np.tile(np.arange(13) // 7, (2, 1)), jnp.int32))
    ct = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

    def run(implementation):
        out, vjp = jax.vjp(lambda *a: dot_product_attention(*a, implementation=implementation, **kw), q, k, v)
        return (out, *vjp(ct))

    for got, want in zip(jax.jit(lambda: run(backend(mesh=mesh)))(), jax.jit(lambda: run("xla"))()):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_return_lse_and_weights_match_xla_on_one_device():
    mesh = Mesh(np.array(jax.devices()[:1]), ("seq",))
    q, k, v = _qkv(seed=3)
    want = dot_product_attention(q, k, v, is_causal=True, implementation="xla", return_weights=True,
                                 return_lse=True)
    got = dot_product_attention(q, k, v, is_causal=True, implementation=RingBackend(mesh=mesh),
                                return_weights=True, return_lse=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5)
