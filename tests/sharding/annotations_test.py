"""Every Linen module of the library boxes each parameter with logical axis names; the rules and meshes.

Covers every `nn.Module` class defined in attention_jax.layers.*, attention_jax.models.* and
attention_jax.core.positional: through the contract suites (each subclass there builds its module with
`make_module`) and the factories below for the building blocks the contracts only reach inside a model.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import attention_jax as aj
from attention_jax import layers, models, sharding
from attention_jax.core import axes
from attention_jax.core.positional import ComplexOrderEmbedding, LearnedPositions
from attention_jax.layers import _common
from attention_jax.layers.luong import LuongAttention
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.models.bert import BertForPretraining, BertTokenClassifier
from attention_jax.models.convs2s import GLUConv
from attention_jax.models.seq2seq import Seq2Seq
from attention_jax.models.transformer import DecoderLayer, EncoderLayer, FeedForward, Transformer
from attention_jax.models.transformer_xl import TransformerXLLayer
from tests.layers import contract
from tests.layers import contract_test as layer_contracts
from tests.models import contract_test as model_contracts
from tests.models import lm_test as lm_contracts

B, T, D = 2, 4, 8
_x = jnp.ones((B, T, D), jnp.float32)
_tokens = jnp.ones((B, T), jnp.int32)
_lengths = jnp.array([T, 2], jnp.int32)


class _KernelHolder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x @ _common.Kernel(3, name="w")(x.shape[-1])


# name -> (module, init args); variants that the contract suites do not build.
FACTORIES = {
    "EncoderLayer": (EncoderLayer(num_heads=2, d_ff=16, head_gates=True), (_x, _lengths)),
    "DecoderLayer": (DecoderLayer(num_heads=2, d_ff=16, num_kv_heads=1, positions="shaw", shaw_max_distance=2),
                     (_x, _x, _lengths)),
    "FeedForward": (FeedForward(d_ff=16), (_x,)),
    "TransformerXLLayer": (TransformerXLLayer(2, 4, 16, pre_norm=True), (_x,)),
    "GLUConv": (GLUConv(D, 5, 3), (_x, True)),
    "Kernel": (_KernelHolder(), (_x,)),
    "LearnedPositions": (LearnedPositions(8, D), (_tokens,)),
    "ComplexOrderEmbedding": (ComplexOrderEmbedding(11, D), (_tokens, _tokens)),
    "Transformer/pre_learned_untied_gates": (
        Transformer(vocab_size=11, d_model=D, num_heads=2, d_ff=16, num_encoder_layers=1, num_decoder_layers=1,
                    norm="pre", positions="learned", share_embeddings=False, head_gates="all", max_len=8),
        (_tokens, _lengths, _tokens)),
    "Seq2Seq/gru_bidirectional_luong_local_p": (
        Seq2Seq(vocab_size=11, embed_dim=6, hidden_size=5, attention="luong", score="concat", mode="local_p",
                cell="gru", bidirectional=True, num_layers=2, attention_features=3),
        (_tokens, _lengths, _tokens)),
    "LuongAttention/location": (LuongAttention(score="location", max_source_len=T), (_x, _x)),
    "MultiHeadAttention/normalize_qk": (MultiHeadAttention(num_heads=2, normalize_qk=True), (_x,)),
    "BertForPretraining/pre": (BertForPretraining(vocab_size=11, hidden_size=D, num_layers=1, num_heads=2,
                                                  intermediate_size=16, max_position_embeddings=T, norm="pre"),
                               (_tokens, _tokens)),
    "BertTokenClassifier": (BertTokenClassifier(vocab_size=11, hidden_size=D, num_layers=1, num_heads=2,
                                                intermediate_size=16, max_position_embeddings=T, num_classes=3),
                            (_tokens,)),
}

# Classes reached only inside a model, with the model whose contract and factory cover them.
INSIDE = {"Encoder": "Seq2Seq", "DecoderCell": "Seq2Seq", "_Sublayer": "Transformer", "_Layer": "EncoderLayer",
          "_Block": "TransformerLM", "BiGRU": "HierarchicalAttentionNetwork",
          "_ClassifierBlock": "TransformerClassifier", "_BertConfig": "BertEncoder"}


def _contract_classes():
    out = []
    for module in (layer_contracts, model_contracts, lm_contracts):
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, contract.LayerContract) and value.__test__:
                out.append(value)
    return out


CONTRACTS = [c for c in _contract_classes() if not c.__name__.startswith("Contract")]


def _library_module_classes():
    classes = {}
    for package in (layers, models):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__:
                    classes[name] = value
    for name in ("LearnedPositions", "ComplexOrderEmbedding"):
        classes[name] = getattr(aj.core.positional, name)
    return classes


def _params(module, args):
    arrays = [a for a in args if isinstance(a, jax.Array)]
    statics = [a for a in args if not isinstance(a, jax.Array)]

    def init(rng):
        return module.init(rng, *arrays, *statics)  # the Python flags (GLUConv's causal) come last

    return dict(jax.eval_shape(init, jax.random.PRNGKey(0))).get("params", {})


class AnnotationsTest(parameterized.TestCase):

    @parameterized.named_parameters(*[(name.replace("/", "_"), name) for name in FACTORIES])
    def test_factory_params_have_logical_axes(self, name):
        module, args = FACTORIES[name]
        params = _params(module, args)
        self.assertNotEmpty(jax.tree_util.tree_leaves(params))
        self.assertEqual(sharding.annotation_errors(params), [])

    @parameterized.named_parameters(*[(c.__name__, c) for c in CONTRACTS])
    def test_contract_module_params_have_logical_axes(self, case):
        instance = case("test_params_have_logical_axes")
        module = instance.make_module()
        inputs = instance.make_inputs(np.random.default_rng(0))
        params = dict(jax.eval_shape(lambda r: module.init(r, **inputs), jax.random.PRNGKey(0))).get("params", {})
        self.assertEqual(sharding.annotation_errors(params), [])

    def test_every_module_class_is_covered(self):
        covered = {type(c("test_params_have_logical_axes").make_module()).__name__ for c in CONTRACTS}
        covered |= {name.split("/")[0] for name in FACTORIES} | set(INSIDE)
        missing = sorted(set(_library_module_classes()) - covered)
        self.assertEqual(missing, [], "module classes with no annotation check: add a factory or a contract")

    def test_multihead_names(self):
        params = _params(MultiHeadAttention(num_heads=4, num_kv_heads=2, head_dim=2), (_x,))
        names = jax.tree_util.tree_map(lambda b: b.names, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        self.assertEqual(names["query"]["kernel"], ("embed", "heads", "head_dim"))
        self.assertEqual(names["key"]["kernel"], ("embed", "kv_heads", "head_dim"))
        self.assertEqual(names["value"]["kernel"], ("embed", "kv_heads", "head_dim"))
        self.assertEqual(names["out"]["kernel"], ("heads", "head_dim", "embed"))
        ffn = jax.tree_util.tree_map(lambda b: b.names, _params(FeedForward(d_ff=16), (_x,)),
                                     is_leaf=lambda x: isinstance(x, nn.Partitioned))
        self.assertEqual((ffn["inner"]["kernel"], ffn["outer"]["kernel"]), (("embed", "mlp"), ("mlp", "embed")))

    def test_apply_takes_boxed_and_unboxed_params(self):
        module = MultiHeadAttention(num_heads=2)
        variables = module.init(jax.random.PRNGKey(0), _x)
        self.assertIsInstance(variables["params"]["query"]["kernel"], nn.LogicallyPartitioned)
        out_boxed = module.apply(variables, _x)
        out_plain = module.apply(nn.unbox(variables), _x)
        self.assertTrue(bool(jnp.all(out_boxed == out_plain)))

    def test_annotation_errors_catch_bad_boxes(self):
        params = {"a": jnp.ones((2, 3)), "b": nn.LogicallyPartitioned(jnp.ones((2, 3)), ("embed",)),
                  "c": nn.LogicallyPartitioned(jnp.ones((2,)), ("nonsense",))}
        errors = sharding.annotation_errors(params)
        self.assertLen(errors, 3)
        self.assertIn("['a']", errors[0])

    def test_partitioned_rejects_unknown_names(self):
        with self.assertRaisesRegex(ValueError, "unknown logical axis names"):
            axes.partitioned(nn.initializers.zeros_init(), ("embed", "channels"))


class FakeMesh:
    """Just the shape and axis names that rules_for reads (no devices needed)."""

    def __init__(self, **sizes):
        self.shape = {name: sizes.get(name, 1) for name in sharding.MESH_AXES}
        self.axis_names = tuple(self.shape)


def _rule(rules, name):
    return dict(rules)[name]


class RulesTest(parameterized.TestCase):

    def test_gqa_kv_heads_replicated_when_model_does_not_divide_them(self):
        rules = sharding.rules_for(FakeMesh(model=4), num_kv_heads=2)
        self.assertEqual(_rule(rules, "heads"), "model")
        self.assertIsNone(_rule(rules, "kv_heads"))

    def test_gqa_kv_heads_sharded_when_model_divides_them(self):
        rules = sharding.rules_for(FakeMesh(model=2), num_kv_heads=2)
        self.assertEqual(_rule(rules, "kv_heads"), "model")
        self.assertEqual(_rule(sharding.rules_for(FakeMesh(model=4)), "kv_heads"), "model")  # None: K = N

    def test_styles_combine_by_mesh_axes_of_size_above_one(self):
        dp = sharding.rules_for(FakeMesh(data=8))
        self.assertEqual(_rule(dp, "batch"), "data")
        self.assertIsNone(_rule(dp, "embed"))
        self.assertIsNone(_rule(dp, "heads"))
        fs = sharding.rules_for(FakeMesh(data=2, fsdp=4))
        self.assertEqual(_rule(fs, "batch"), ("data", "fsdp"))
        self.assertEqual(_rule(fs, "embed"), "fsdp")
        sp = sharding.rules_for(FakeMesh(data=2, seq=4))
        self.assertEqual(_rule(sp, "length"), "seq")
        self.assertEqual({name for name, _ in sharding.rules_for(FakeMesh())}, set(axes.NAMES))

    def test_activations_and_params_under_fsdp_never_reuse_an_axis(self):
        rules = sharding.rules_for(FakeMesh(data=2, fsdp=2, model=2))
        activation = sharding.mesh_axes(("batch", "length", "embed"), rules)
        self.assertEqual(tuple(activation), (("data", "fsdp"), None, None))
        table = sharding.mesh_axes(("vocab", "embed"), rules)
        self.assertEqual(tuple(table), ("model", "fsdp"))

    def test_check_rules_rejects_repeats_and_unknown_axes(self):
        mesh = FakeMesh(model=2)
        with self.assertRaisesRegex(ValueError, "more than one rule"):
            sharding.check_rules((("heads", "model"), ("heads", None)), mesh)
        with self.assertRaisesRegex(ValueError, "twice"):
            sharding.check_rules((("batch", ("data", "data")),), mesh)
        with self.assertRaisesRegex(ValueError, "lacks"):
            sharding.check_rules((("batch", "pipeline"),), mesh)

    def test_make_mesh_errors_name_the_sizes(self):
        with self.assertRaisesRegex(ValueError, r"data=2 \* fsdp=1 \* model=4 \* seq=1 needs 8 devices.*"
                                                r"xla_force_host_platform_device_count=8"):
            sharding.make_mesh(data=2, model=4, devices=jax.devices()[:1])
        with self.assertRaisesRegex(ValueError, "model"):
            sharding.make_mesh(model=0)

    def test_make_train_step_rejects_unboxed_params(self):
        mesh = sharding.make_mesh(devices=jax.devices()[:1])
        with self.assertRaisesRegex(ValueError, "no logical axis names"):
            sharding.make_train_step(lambda p, b, r: (0.0, {}), optax.sgd(0.1), mesh, sharding.rules_for(mesh),
                                     {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)})

    def test_single_device_step_runs_with_the_rules(self):
        """On a 1-device mesh the sharded step runs and equals a plain step (the constraints are in place)."""
        model = MultiHeadAttention(num_heads=2)
        mesh = sharding.make_mesh(devices=jax.devices()[:1])
        rules = sharding.rules_for(mesh)
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), _x)["params"]
        params = sharding.sharded_init(model, mesh, rules, jax.random.PRNGKey(0), _x)["params"]

        def loss_fn(p, batch, rng):
            del rng
            return jnp.mean(model.apply({"params": p}, batch["x"]) ** 2), {}

        step = sharding.make_train_step(loss_fn, optax.sgd(0.1), mesh, rules, abstract)
        new, _, metrics = step(params, step.init_opt_state(params), {"x": _x}, jax.random.PRNGKey(1))
        plain = nn.unbox(model.init(jax.random.PRNGKey(0), _x))["params"]
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, {"x": _x}, None)[0])(plain)
        self.assertAlmostEqual(float(metrics["loss"]), float(loss), places=6)
        want = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, plain, grads)
        for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(want)):
            self.assertLess(float(jnp.max(jnp.abs(a - b))), 1e-6)

    def test_make_mesh_on_one_device(self):
        mesh = sharding.make_mesh(devices=jax.devices()[:1])
        self.assertEqual(mesh.axis_names, sharding.MESH_AXES)
        self.assertEqual(tuple(mesh.shape.values()), (1, 1, 1, 1))


if __name__ == "__main__":
    absltest.main()
