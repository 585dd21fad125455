"""Sharded init and train steps on 8 simulated CPU devices equal the single-device ones (run by partition_test.py).

Run by hand: XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest -q tests/sharding/partition_devices.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

from attention_jax import sharding
from attention_jax.models.transformer import Transformer

if jax.device_count() < 8:
    pytest.skip(f"needs 8 devices, found {jax.device_count()}", allow_module_level=True)

B, S, T, V = 8, 4, 4, 16
TOL = 1e-5
MODEL = Transformer(vocab_size=V, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32, num_encoder_layers=1,
                    num_decoder_layers=1, dropout_rate=0.0, max_len=8, share_embeddings=False)
OPTIMIZER = optax.sgd(0.5, momentum=0.9)  # param-shaped state (the momentum) plus nothing else


def _batch():
    rng = np.random.default_rng(0)
    return dict(src=jnp.asarray(rng.integers(3, V, (B, S)), jnp.int32),
                src_lengths=jnp.asarray(rng.integers(1, S + 1, (B,)), jnp.int32),
                tgt_in=jnp.asarray(rng.integers(3, V, (B, T)), jnp.int32),
                tgt_out=jnp.asarray(rng.integers(3, V, (B, T)), jnp.int32))


def loss_fn(params, batch, rng):
    del rng
    logits, _ = MODEL.apply({"params": params}, batch["src"], batch["src_lengths"], batch["tgt_in"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tgt_out"]).mean()
    return loss, {"logit_norm": jnp.sqrt(jnp.sum(logits ** 2))}


def _init_args(batch):
    return batch["src"], batch["src_lengths"], batch["tgt_in"]


def _reference():
    """The single-device init, loss and step."""
    batch, rng = _batch(), jax.random.PRNGKey(0)
    variables = nn.unbox(MODEL.init(rng, *_init_args(batch)))
    params = variables["params"]
    opt_state = OPTIMIZER.init(params)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return variables, loss, optax.apply_updates(params, updates), opt_state


REFERENCE = _reference()

MESHES = {
    "dp": dict(data=8),
    "fsdp": dict(fsdp=8),
    "dp_fsdp": dict(data=2, fsdp=4),
    "tp": dict(fsdp=2, model=4),  # FSDP x TP; K = 2 kv heads on a model axis of 4: kv_heads replicated
    "dp_tp": dict(data=4, model=2),  # K = 2 on 2: kv_heads sharded
}


def _close(actual, expected, what, tol=TOL):
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol,
                                   err_msg=f"{what} at {jax.tree_util.keystr(path)}")


def _run(sizes):
    mesh = sharding.make_mesh(**sizes)
    rules = sharding.rules_for(mesh, num_kv_heads=MODEL.num_kv_heads)
    batch, rng = _batch(), jax.random.PRNGKey(0)
    variables = sharding.sharded_init(MODEL, mesh, rules, rng, *_init_args(batch))
    abstract = jax.eval_shape(MODEL.init, rng, *_init_args(batch))["params"]
    step = sharding.make_train_step(loss_fn, OPTIMIZER, mesh, rules, abstract,
                                    batch_axes=lambda path, leaf: ("batch",))
    params = variables["params"]
    new_params, opt_state, metrics = step(params, step.init_opt_state(params), batch, rng)
    return variables, new_params, opt_state, metrics


class PartitionTest(parameterized.TestCase):

    _cache: dict[str, tuple] = {}

    def _result(self, name):
        if name not in self._cache:
            PartitionTest._cache[name] = _run(MESHES[name])
        return self._cache[name]

    @parameterized.named_parameters(*[(n, n) for n in ("dp", "fsdp", "dp_fsdp", "tp", "dp_tp")])
    def test_step_equals_single_device(self, name):
        variables, new_params, opt_state, metrics = self._result(name)
        ref_variables, ref_loss, ref_params, ref_state = REFERENCE
        _close(variables, ref_variables, f"{name}: sharded_init")
        np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), rtol=TOL, atol=TOL)
        _close(new_params, ref_params, f"{name}: updated params")
        _close(opt_state, ref_state, f"{name}: optimizer state")

    def test_tensor_parallel_shards_heads_mlp_vocab(self):
        _, params, opt_state, _ = self._result("tp")  # fsdp=2 x model=4: D over fsdp, N, F, V over model
        inner = params["decoder_layers_0"]["ffn"]["inner"]["kernel"]  # [D, F]
        self.assertEqual(tuple(inner.sharding.spec), ("fsdp", "model"))
        self.assertEqual(inner.addressable_shards[0].data.shape, (16 // 2, 32 // 4))
        query = params["encoder_layers_0"]["self_attention"]["query"]["kernel"]  # [D, N, H]
        self.assertEqual(query.addressable_shards[0].data.shape, (16 // 2, 4 // 4, 4))
        key = params["encoder_layers_0"]["self_attention"]["key"]["kernel"]  # [D, K, H], K = 2 on model = 4
        self.assertEqual(tuple(key.sharding.spec), ("fsdp", None, None))
        self.assertEqual(key.addressable_shards[0].data.shape, (16 // 2, 2, 4))
        proj = params["output_proj"]["kernel"]  # [D, V]
        self.assertEqual(proj.addressable_shards[0].data.shape, (16 // 2, V // 4))
        momentum = opt_state[0].trace["decoder_layers_0"]["ffn"]["inner"]["kernel"]
        self.assertEqual(momentum.sharding, inner.sharding)

    def test_kv_heads_sharded_when_model_divides_them(self):
        _, params, _, _ = self._result("dp_tp")
        key = params["encoder_layers_0"]["self_attention"]["key"]["kernel"]  # [D, K, H], K = 2 on model = 2
        self.assertEqual(key.addressable_shards[0].data.shape, (16, 1, 4))

    def test_fsdp_shards_the_model_width(self):
        variables, params, _, _ = self._result("fsdp")
        table = params["embed"]["embedding"]  # [V, D]
        self.assertEqual(tuple(table.sharding.spec), (None, "fsdp"))
        self.assertEqual(table.addressable_shards[0].data.shape, (V, 16 // 8))

    def test_positive_control_a_perturbed_reference_fails(self):
        _, new_params, _, _ = self._result("dp_tp")
        _, _, ref_params, _ = REFERENCE
        leaves, treedef = jax.tree_util.tree_flatten(ref_params)
        leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].add(1e-3)
        with self.assertRaises(AssertionError):
            _close(new_params, jax.tree_util.tree_unflatten(treedef, leaves), "perturbed")

    def test_conflicting_rules_are_rejected(self):
        mesh = sharding.make_mesh(data=2, model=4)
        with self.assertRaisesRegex(ValueError, "more than one rule"):
            sharding.check_rules((("batch", "data"), ("batch", "model")), mesh)
        with self.assertRaisesRegex(ValueError, "twice"):
            sharding.check_rules((("batch", ("model", "model")),), mesh)


if __name__ == "__main__":
    absltest.main()
