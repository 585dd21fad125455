"""The decoder-only `TransformerLM` through the layer contract suite, plus its own checks: padding and the
future change nothing, packed segments are independent, and every backend computes the same model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from attention_jax.models.lm import TransformerLM
from tests.layers import contract


class TransformerLMContractTest(contract.LayerContract):
    """One causal pass over [B, T] tokens with lengths; the step is one cached token at a time."""

    B, T, V = 2, 6, 13
    LENGTHS = (6, 4)
    SKIP = {"masked_keys": "the keys are projections of token embeddings inside the attention; "
                           "test_padding_changes_nothing perturbs the padded token ids instead",
            "masked_inputs": "its inputs are token ids, which hold no NaN"}

    def make_module(self, decode: bool = False):
        return TransformerLM(vocab_size=self.V, d_model=16, num_heads=4, num_kv_heads=2, num_layers=1, d_ff=16,
                             decode=decode)

    def make_inputs(self, rng):
        return dict(tokens=jnp.asarray(rng.integers(0, self.V, (self.B, self.T)), jnp.int32),
                    lengths=jnp.asarray(self.LENGTHS, jnp.int32))

    def step_init(self, module, variables, inputs):
        decoder = self.make_module(decode=True)
        return nn.unbox(decoder.init(jax.random.key(0), inputs["tokens"])["cache"])

    def step(self, module, variables, inputs, carry, t):
        decoder = self.make_module(decode=True)
        token = jax.lax.dynamic_slice_in_dim(inputs["tokens"], t, 1, axis=1)  # [B, 1]
        logits, mutated = decoder.apply({"params": variables["params"], "cache": carry}, token, mutable=["cache"])
        return mutated["cache"], logits[:, 0]

    def num_steps(self, inputs):
        return self.T

    def step_reference(self, module, variables, inputs):
        return module.apply(variables, inputs["tokens"])

    def bad_inputs(self, inputs):
        tokens = inputs["tokens"]
        return [
            ("tokens of rank 1", {**inputs, "tokens": tokens[0]}, ("tokens", (self.T,))),
            ("lengths of another batch", {**inputs, "lengths": inputs["lengths"][:1]}, ("lengths", (1,))),
            ("segment_ids of another length", {**inputs, "segment_ids": tokens[:, :3]}, ("segment_ids", (self.B, 3))),
        ]

    # -- its own checks ------------------------------------------------------------------------------------

    def _model(self):
        module, inputs, variables = self._setup()
        return module, inputs, variables

    def test_padding_and_future_change_nothing(self):
        module, inputs, variables = self._model()
        tokens, lengths = inputs["tokens"], inputs["lengths"]

        def loss(params, toks):
            logits = module.apply({"params": params}, toks, lengths)
            valid = jnp.arange(self.T)[None, :] < lengths[:, None]
            return jnp.sum(jnp.where(valid[..., None], logits, 0.0) ** 2), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"], tokens)
        changed = tokens.at[1, 4:].set((tokens[1, 4:] + 5) % self.V)  # row 1's padding (length 4)
        (value2, logits2), grads2 = jax.value_and_grad(loss, has_aux=True)(variables["params"], changed)
        np.testing.assert_allclose(logits2[1, :4], logits[1, :4], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value2, value, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, grads2)
        # Causality: changing the last token of row 0 changes no earlier logit, but does change the last one.
        future = tokens.at[0, -1].set((tokens[0, -1] + 1) % self.V)
        logits3 = module.apply(variables, future, lengths)
        np.testing.assert_allclose(logits3[0, :-1], logits[0, :-1], rtol=1e-5, atol=1e-5)
        self.assertGreater(float(jnp.max(jnp.abs(logits3[0, -1] - logits[0, -1]))), 1e-4)

    def test_segments_are_independent(self):
        module, inputs, variables = self._model()
        tokens = inputs["tokens"]
        segments = jnp.asarray([[0, 0, 0, 1, 1, 1]] * self.B, jnp.int32)
        packed = module.apply(variables, tokens, segment_ids=segments)
        first = module.apply(variables, tokens[:, :3])
        np.testing.assert_allclose(packed[:, :3], first, rtol=1e-5, atol=1e-5)
        # The second document's logits differ from its logits in context of the first (RoPE is relative, so
        # alone it matches once shifted: check the segment mask, not the positions).
        alone = module.apply(variables, tokens[:, 3:])
        np.testing.assert_allclose(packed[:, 3:], alone, rtol=1e-4, atol=1e-4)
        unpacked = module.apply(variables, tokens)
        self.assertGreater(float(jnp.max(jnp.abs(unpacked[:, 3:] - alone))), 1e-4)

    def test_backends_agree(self):
        _, inputs, variables = self._model()
        outputs = {}
        for implementation in ("xla", "blockwise"):
            module = TransformerLM(vocab_size=self.V, d_model=16, num_heads=4, num_kv_heads=2, num_layers=1,
                                   d_ff=16, implementation=implementation)
            outputs[implementation] = module.apply(variables, **inputs)
        np.testing.assert_allclose(outputs["blockwise"], outputs["xla"], rtol=1e-5, atol=1e-5)

    def test_decoding_refuses_lengths(self):
        _, inputs, variables = self._model()
        decoder = self.make_module(decode=True)
        cache = nn.unbox(decoder.init(jax.random.key(0), inputs["tokens"])["cache"])
        with self.assertRaisesRegex(ValueError, "no lengths or segment_ids"):
            decoder.apply({"params": variables["params"], "cache": cache}, inputs["tokens"][:, :1],
                          jnp.ones((self.B,), jnp.int32), mutable=["cache"])


if __name__ == "__main__":
    absltest.main()
