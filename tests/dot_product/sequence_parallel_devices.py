"""Sequence-parallel backends (ring, ulysses) on 8 simulated CPU devices, against the single-device "xla" one.

Run through `tests/dot_product/sequence_parallel_test.py` (which starts it with `tests.multidevice`), or by hand:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest -q tests/dot_product/sequence_parallel_devices.py

Every case compiles one program, (output, dq, dk, dv) = vjp with a random cotangent, runs it on inputs placed
with a `NamedSharding` along the sequence axis, compares it with the single-device xla backend to 1e-5, and
counts the collectives of that same compiled program (forward + backward). Cases with key lengths put NaN in
the masked keys and values of the sharded call, which must reach nothing. Collectives:
  ring, non-causal or causal without load balancing: 2P - 1 collective-permutes (P - 1 forward, P backward);
  ring, causal zig-zag: 2P + 7 (P - 1 + 4 forward, P + 4 backward);
  ulysses: 4 all-to-alls when T == S (q, k, v stacked in, out back, and their transposes), 6 when T != S;
  never an all-gather when T and S divide by P (a padded call's result is sliced outside the shard_map, and XLA
  all-gathers that uneven array); ring has no all-to-all, ulysses no collective-permute.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices; run through tests/multidevice.py", allow_module_level=True)

from attention_jax.dot_product import (FlashBackend, RingBackend, UlyssesBackend,  # noqa: E402
                                       dot_product_attention)
from attention_jax.kernels.block_sizes import BlockSizes  # noqa: E402
from attention_jax.layers.multihead import MultiHeadAttention  # noqa: E402

TOL = 1e-5
_DEVICES = np.array(jax.devices()[:8])
MESHES = {
    "seq8": Mesh(_DEVICES.reshape(8), ("seq",)),
    "dp2_seq4": Mesh(_DEVICES.reshape(2, 4), ("data", "seq")),
    "tp2_seq4": Mesh(_DEVICES.reshape(2, 4), ("model", "seq")),
}
_SMALL_FLASH = FlashBackend(interpret=True, block_sizes=BlockSizes(16, 16, 16, 16, 16, 16))


def _inputs(seed, b, t, s, n, k, h):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32)
    key = jnp.asarray(rng.standard_normal((b, s, k, h)), jnp.float32)
    value = jnp.asarray(rng.standard_normal((b, s, k, h)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32)
    return q, key, value, ct


def _program(implementation, kw):
    def run(q, k, v, ct):
        out, vjp = jax.vjp(lambda q, k, v: dot_product_attention(q, k, v, implementation=implementation, **kw),
                           q, k, v)
        return (out, *vjp(ct))
    return run


def _count(text):
    ops = ("collective-permute", "all-gather", "all-to-all")
    return {op: len(re.findall(rf"\s{op}(?:-start)?\(", text)) for op in ops}


def _on_mesh(backend, mesh, kw, args):
    """(compiled results, collective counts) of the backend's program, inputs sharded along 'seq' (replicated
    when 'seq' does not divide their length: the backend pads them)."""
    seq, whole = NamedSharding(mesh, PartitionSpec(None, "seq")), NamedSharding(mesh, PartitionSpec())
    args = [jax.device_put(x, seq if x.shape[1] % mesh.shape["seq"] == 0 else whole) for x in args]
    compiled = jax.jit(_program(backend, kw)).lower(*args).compile()
    return compiled(*args), _count(compiled.as_text())


def _reference(kw, args):
    return jax.jit(_program("xla", kw))(*args)


def _close(got, want):
    return all(np.allclose(np.asarray(g), np.asarray(w), atol=TOL, rtol=TOL) for g, w in zip(got, want))


def _mask_kw(b, t, s, seed, *, causal, lengths=False, segments=False, window=None):
    rng = np.random.default_rng(seed + 100)
    kw = {"is_causal": causal}
    if lengths:  # row 1 has no valid query at all: a fully masked row
        kw["key_value_seq_lengths"] = jnp.asarray([s - 3, max(1, s // 3)][:b], jnp.int32)
        kw["query_seq_lengths"] = jnp.asarray([t, 0][:b], jnp.int32)
    if segments:
        kw["segment_ids"] = (jnp.asarray(np.sort(rng.integers(0, 3, (b, t)), axis=1), jnp.int32),
                             jnp.asarray(np.sort(rng.integers(0, 3, (b, s)), axis=1), jnp.int32))
    if window is not None:
        kw["local_window_size"] = window
    return kw


# (id, backend factory, mesh, (B, T, S, N, K, H), mask options)
CASES = [
    ("ring-seq8-causal-lengths-T30", lambda m: RingBackend(mesh=m), "seq8", (2, 30, 30, 4, 2, 8),
     dict(causal=True, lengths=True)),
    ("ring-seq8-noncausal-segments-T28-S36-MQA", lambda m: RingBackend(mesh=m), "seq8", (2, 28, 36, 4, 1, 8),
     dict(causal=False, segments=True)),
    ("ring-seq8-causal-contiguous-segments-lengths", lambda m: RingBackend(mesh=m, load_balance=False), "seq8",
     (2, 32, 32, 4, 4, 8), dict(causal=True, segments=True, lengths=True)),
    ("ring-dp-causal-segments", lambda m: RingBackend(mesh=m), "dp2_seq4", (2, 32, 32, 4, 2, 8),
     dict(causal=True, segments=True)),
    ("ring-tp-causal-lengths-GQA", lambda m: RingBackend(mesh=m), "tp2_seq4", (2, 30, 30, 4, 2, 8),
     dict(causal=True, lengths=True)),
    ("ring-tp-noncausal-MQA-xla-inner", lambda m: RingBackend(mesh=m, inner="xla"), "tp2_seq4",
     (2, 20, 26, 4, 1, 8), dict(causal=False, lengths=True)),
    ("ulysses-seq8-causal-lengths-segments-GQA-T30", lambda m: UlyssesBackend(mesh=m), "seq8", (2, 30, 30, 8, 2, 8),
     dict(causal=True, lengths=True, segments=True)),
    ("ulysses-seq8-noncausal-segments", lambda m: UlyssesBackend(mesh=m), "seq8", (2, 32, 32, 8, 8, 8),
     dict(causal=False, segments=True)),
    ("ulysses-dp-noncausal-T-ne-S-MQA-lengths", lambda m: UlyssesBackend(mesh=m), "dp2_seq4",
     (2, 22, 30, 4, 1, 8), dict(causal=False, lengths=True)),
    ("ulysses-tp-causal-window-segments-GQA", lambda m: UlyssesBackend(mesh=m), "tp2_seq4", (2, 32, 32, 4, 2, 8),
     dict(causal=True, segments=True, window=(5, 0))),
]


def _expected_counts(backend, mesh, kw, t, s):
    size = mesh.shape["seq"]
    if isinstance(backend, RingBackend):
        zigzag = kw["is_causal"] and backend.load_balance
        return {"collective-permute": 2 * size + 7 if zigzag else 2 * size - 1, "all-gather": 0, "all-to-all": 0}
    return {"collective-permute": 0, "all-gather": 0, "all-to-all": 4 if t == s else 6}


def _poison_dead_keys(kw, k, v):
    """k and v with NaN at every key position past ``key_value_seq_lengths`` (unchanged without lengths)."""
    if "key_value_seq_lengths" not in kw:
        return k, v
    lengths = np.asarray(kw["key_value_seq_lengths"])
    dead = np.arange(k.shape[1])[None, :, None, None] >= lengths[:, None, None, None]
    return jnp.where(dead, jnp.nan, k), jnp.where(dead, jnp.nan, v)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_single_device_and_counts_collectives(case):
    """Every case with key lengths also puts NaN in the masked keys and values of the sharded call (the
    reference gets the clean ones): nothing of it may reach the output or the gradients."""
    _, make, mesh_name, (b, t, s, n, k, h), options = case
    mesh = MESHES[mesh_name]
    backend = make(mesh)
    q, key, value, ct = _inputs(len(case[0]), b, t, s, n, k, h)
    kw = _mask_kw(b, t, s, 0, **options)
    got, counts = _on_mesh(backend, mesh, kw, (q, *_poison_dead_keys(kw, key, value), ct))
    want = _reference(kw, (q, key, value, ct))
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert np.all(np.isfinite(np.asarray(g))), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=TOL, rtol=TOL, err_msg=name)
    expected = _expected_counts(backend, mesh, kw, t, s)
    if t % mesh.shape["seq"] or s % mesh.shape["seq"]:
        # Padded calls: slicing the padding off the seq-sharded result leaves an uneven array, which XLA
        # all-gathers outside the shard_map; the ring/all-to-all counts do not change.
        del expected["all-gather"], counts["all-gather"]
    assert counts == expected, counts
    if options.get("lengths"):  # the fully masked query row: zero output, zero dq
        assert not np.any(np.asarray(got[0])[1]) and not np.any(np.asarray(got[1])[1])


def test_ring_forward_has_p_minus_1_permutes_and_zigzag_adds_4():
    mesh = MESHES["seq8"]
    q, k, v, _ = _inputs(0, 1, 32, 32, 4, 2, 8)
    for causal, expected in ((False, 7), (True, 7 + 4)):
        fwd = functools.partial(dot_product_attention, implementation=RingBackend(mesh=mesh), is_causal=causal)
        counts = _count(jax.jit(fwd).lower(q, k, v).compile().as_text())
        assert counts == {"collective-permute": expected, "all-gather": 0, "all-to-all": 0}, (causal, counts)


class _BackwardsRing(RingBackend):
    """Positive control: K/V travel i -> i - 1 while the hops still assume they came from i - h."""

    def _rotation(self, size):
        return tuple((d, (d - 1) % size) for d in range(size))


class _NoZigzagRing(RingBackend):
    """Positive control: the zig-zag masks without the zig-zag reordering."""

    def _zigzag_in(self, x, size, chunk):
        return x

    def _zigzag_out(self, x, size, chunk):
        return x


@pytest.mark.parametrize("control", [_BackwardsRing, _NoZigzagRing], ids=lambda c: c.__name__)
def test_wrong_ring_fails_the_same_check(control):
    mesh = MESHES["dp2_seq4"]
    args = _inputs(1, 2, 32, 32, 4, 2, 8)
    kw = _mask_kw(2, 32, 32, 0, causal=True)
    got, _ = _on_mesh(control(mesh=mesh), mesh, kw, args)
    assert not _close(got, _reference(kw, args))


@pytest.mark.parametrize("make", [lambda m: RingBackend(mesh=m, inner=_SMALL_FLASH),
                                  lambda m: UlyssesBackend(mesh=m, inner=_SMALL_FLASH)], ids=["ring", "ulysses"])
def test_flash_interpreted_inside_shard_map(make):
    mesh = MESHES["dp2_seq4"]
    args = _inputs(3, 2, 32, 32, 4, 2, 16)
    kw = _mask_kw(2, 32, 32, 0, causal=True, lengths=True)
    got, _ = _on_mesh(make(mesh), mesh, kw, args)
    assert _close(got, _reference(kw, args))


def test_multihead_attention_with_ring_on_the_ambient_mesh_equals_single_device():
    mesh = MESHES["dp2_seq4"]
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 32, 16)), jnp.float32)
    lengths = jnp.asarray([32, 19], jnp.int32)
    single = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation="xla")
    params = single.init(jax.random.PRNGKey(0), x, is_causal=True)
    want = single.apply(params, x, is_causal=True, key_lengths=lengths)
    ring = MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation=RingBackend())  # the ambient mesh
    with jax.set_mesh(mesh):
        x_sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "seq")))
        got = jax.jit(lambda p, x: ring.apply(p, x, is_causal=True, key_lengths=lengths))(params, x_sharded)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=TOL)
