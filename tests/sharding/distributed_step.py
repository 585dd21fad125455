"""One data-parallel training step of a small Transformer, shared by the two-process `jax.distributed` test
(`distributed_test.py`) and its workers (`distributed_worker.py`).

The model, its parameters, the global batch and the optimiser are the same, bit for bit, in every process
that builds them, so the single-process step and the two-process step start from the same state.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attention_jax.models.transformer import Transformer, label_smoothed_cross_entropy

GLOBAL_BATCH = 4
SOURCE_LEN = 6
TARGET_LEN = 5
VOCAB = 23


def build():
    """(model, params, batch, optimizer, rng): a 1+1-layer Transformer with GQA and a fixed global batch."""
    model = Transformer(vocab_size=VOCAB, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32, num_encoder_layers=1,
                        num_decoder_layers=1, dropout_rate=0.0, max_len=16)
    data = np.random.default_rng(0)
    batch = {
        "src": data.integers(1, VOCAB, (GLOBAL_BATCH, SOURCE_LEN)).astype(np.int32),
        "src_lengths": np.array([6, 4, 5, 2], np.int32),
        "tgt_in": data.integers(1, VOCAB, (GLOBAL_BATCH, TARGET_LEN)).astype(np.int32),
        "tgt_out": data.integers(1, VOCAB, (GLOBAL_BATCH, TARGET_LEN)).astype(np.int32),
        "tgt_mask": np.array([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0], [1] * 2 + [0] * 3], bool),
    }
    rng = jax.random.key(0)
    variables = jax.jit(lambda r: model.init(r, batch["src"], batch["src_lengths"], batch["tgt_in"]))(rng)
    params = nn.meta.unbox(variables["params"])
    # Plain SGD: the update is the gradient itself, so equal parameters mean equal gradients. (Adam divides by
    # the gradient's own size, which turns the float32 noise of a gradient that is zero in exact arithmetic,
    # such as a key bias's, into updates of the full learning rate.)
    optimizer = optax.sgd(1.0)
    return model, params, batch, optimizer, rng


def make_step(model, optimizer):
    """The un-jitted step (params, opt_state, batch) -> (params, opt_state, loss): the mean token NLL over the
    GLOBAL batch, so the data-parallel step must equal the single-device one."""

    def loss_fn(params, batch):
        logits, _ = model.apply({"params": params}, batch["src"], batch["src_lengths"], batch["tgt_in"])
        total, count = label_smoothed_cross_entropy(logits, batch["tgt_out"], batch["tgt_mask"], smoothing=0.0)
        return total / jnp.maximum(count, 1.0)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def flat(params) -> dict[str, np.ndarray]:
    """The parameter tree as {path: numpy array} (for saving and comparing)."""
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
