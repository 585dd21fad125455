"""Deep Sets' sum of digits from images (Zaheer et al. 2017, arXiv:1703.06114, §4.1.1, Fig. 2) on Fashion-MNIST.

    python -m experiments.deep_sets                                   # 4 rows x 3 seeds
    python -m experiments.deep_sets --preset=smoke --workdir=/tmp/deep_sets_smoke
    python -m experiments.deep_sets --rows=deep_sets,gru --config.eval.test_sizes='(5,10,200)'

The task: a set of Fashion-MNIST item images; the target is the sum of their class labels (0..9), a scalar that
every row regresses with the L1 loss, as the authors' code does (`experiments/configs/deep_sets.py`). Training
sets hold 1 to 10 train-split images (sizes uniform; each batch drawn from a numpy generator seeded by (seed,
epoch, batch), so a resumed run draws the same batches), padded to 10 with a mask; a batch's real images are
packed into `item_budget` slots, so the encoder does not run on the padding. The test sets hold 5, 10, 20, 50
and 100 distinct test-split images (``eval.test_sizes``), ``eval.test_sets`` (500) per size, drawn once from a
fixed seed: the same sets for every row and seed. The dev sets (for the curves) come from 2,000 held-out train
images. Training: Adam with a cosine decay, ``train.num_steps`` steps, the same for every row.

Rows (`experiments/configs/deep_sets.py`): one per-item encoder phi (`experiments.vision.ConvEncoder`, global
mean pool, Dense) shared by every row, then the row's aggregator and a scalar output: ``deep_sets``
(`attention_jax.layers.sets.DeepSets`, sum), ``attention_pooling`` (`sets.AttentionPooling`, PMA's attention
with one seed, then rho), ``gru`` and ``lstm`` (flax cells over the items in their given order; the state after
the last real item -> rho); every row's output is multiplied by ``model.output_scale`` (5). The mask reaches
every aggregator: DeepSets and AttentionPooling take it, the recurrent rows stop at each set's length (real items
come first; the set builders guarantee it).

What the paper reports: Fig. 2 (right) plots exact-sum accuracy against the number of images, no table: Deep
Sets stays accurate on sets larger than any seen in training, GRU and LSTM fall towards 0.

Metrics per row and test size: accuracy (the rounded prediction equals the true sum, %), MAE of the sum, and MAE
divided by the set size (error per item). Why the claims use the error per item: even a good classifier gets a
Fashion-MNIST item right only about 90% of the time, and a shirt read as a T-shirt is off by 6, so a sum over
100 items is almost never exact; accuracy at size 100 is about 0 for every row (our small models reach about 11%
exact sums already at size 5) and then orders nothing. The error per item stays comparable across sizes (a model
that adds up per-item estimates keeps it flat or falling, as their noise partly cancels; one whose state
saturates, like a recurrent one, sees it grow with the size), so it separates the rows at every size. Accuracy
stays in the table and figure.

Claims (claims.jsonl; the metric is the error per item, lower is better): Deep Sets beats GRU and LSTM at the
largest test size (paired bootstrap CI and permutation p over the same test sets, every seed), and GRU's and
LSTM's error per item grows from the smallest to the largest size (rows "gru @ 5" and "gru @ 100"; unpaired
permutation p, as the sets differ).

Expected: attention_pooling's softmax weights sum to 1 over the members, so it pools a weighted mean and cannot
see how many items a set has; it must guess the count, and its error grows with the set size as the recurrent
rows' does. That is the point of the row (a set model that is permutation invariant but not a sum), not a bug.

Flags: `experiments/cli.py` (--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (resumed when killed; re-reported when finished) and logs
step, L1 loss, items/s and ETA. Presets (`experiments/configs/deep_sets.py`; wall times on the idle 2-core
machine with --jobs=2): ``smoke`` (one seed, 30 steps, sizes 2 / 5 / 10: about 40 s, estimated) and ``small``
(default; 4 rows x 3 seeds, 800 steps each: 5.5 min, measured).

Outputs in the workdir: results.md / results.jsonl (per (row, seed): per size the accuracy, MAE and MAE per
item; at the largest size the paired bootstrap CI and permutation p of accuracy and of error per item against
deep_sets over the same test sets), claims.jsonl, loss_curves.png (training L1 loss, dev accuracy and dev error
per item), accuracy_by_size.png and item_mae_by_size.png (one line per row, mean over seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
from typing import Any

from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attention_jax.core import axes
from attention_jax.layers.sets import AttentionPooling, DeepSets
from experiments import cli
from experiments import results
from experiments import stats
from experiments import training
from experiments import vision
from experiments.configs import deep_sets as sets_config
from experiments.data import fashion_mnist
from experiments.training import report
from experiments.training import table as runs_table

FLAGS = flags.FLAGS

EXPERIMENT = training.Experiment(
        name="deep_sets",
        title="Zaheer et al. 2017 (arXiv:1703.06114), §4.1.1 / Fig. 2: the sum of a set's labels from its images "
              "(Fashion-MNIST)",
        get_config=sets_config.get_config,
        presets=sets_config.PRESETS,
        rows=sets_config.ROWS,
        default_rows=sets_config.DEFAULT_ROWS,
        default_preset=sets_config.DEFAULT_PRESET,
        default_workdir="workdirs/deep_sets",
        default_jobs=2,
)

# Fashion-MNIST's split sizes, for the checks before any data is read.
TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000


# ----------------------------------------------------------------------------------------------------------------
# The sets.


def train_sets(num_images: int, batch_size: int, min_size: int, max_size: int, rng: np.random.Generator
               ) -> np.ndarray:
    """One training batch of sets: item indices [batch_size, max_size], -1 after each set's last item.

    Sizes are uniform in [min_size, max_size]; items are drawn uniformly (with replacement: a set may, rarely,
    hold one image twice, and its target counts it twice). Real items come first.
    """
    sizes = rng.integers(min_size, max_size + 1, size=batch_size)  # [B]
    index = rng.integers(0, num_images, size=(batch_size, max_size))  # [B, S]
    return np.where(np.arange(max_size)[None, :] < sizes[:, None], index, -1)


def item_budget(batch_size: int, min_size: int, max_size: int) -> int:
    """K, the images a packed training batch holds: the mean item count of B sets plus 4 standard deviations
    (at most B * max_size), so a batch that overflows it (redrawn by `packed_batch`) is rare (< 1e-4)."""
    width = max_size - min_size + 1
    mean, var = (min_size + max_size) / 2, (width * width - 1) / 12
    return int(min(batch_size * max_size, np.ceil(batch_size * mean + 4 * np.sqrt(batch_size * var))))


def packed_batch(num_images: int, batch_size: int, min_size: int, max_size: int, budget: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`train_sets` packed into ``budget`` image slots (batches holding more items are drawn again).

    Returns:
      index: [B, S] item indices, -1 = padding (for the targets and the mask).
      items: [budget] the real items' indices in row-major order of ``index``, then -1.
      slots: [budget] int32, each item's place in the flattened [B * S]; B * S for padding.
    """
    while True:
        index = train_sets(num_images, batch_size, min_size, max_size, rng)
        flat = np.flatnonzero(index.reshape(-1) >= 0)  # [n] real slots
        if flat.size <= budget:
            break
    items = np.full((budget,), -1, np.int64)
    slots = np.full((budget,), batch_size * max_size, np.int32)
    items[:flat.size] = index.reshape(-1)[flat]
    slots[:flat.size] = flat
    return index, items, slots


def fixed_sets(num_images: int, size: int, count: int, seed: int) -> np.ndarray:
    """``count`` sets of ``size`` distinct items of [0, num_images): [count, size], the same for a given (seed, size).

    Raises:
      ValueError: if ``size`` exceeds ``num_images``.
    """
    if size > num_images:
        raise ValueError(f"sets of {size} distinct items need at least {size} images, got {num_images}")
    rng = np.random.default_rng([int(seed), int(size)])
    return np.stack([rng.choice(num_images, size=size, replace=False) for _ in range(count)]).astype(np.int64)


def set_sums(labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The targets: per set, the sum of its items' labels (index -1 = padding, counted as 0); [N] float32."""
    return np.where(index >= 0, np.asarray(labels)[np.maximum(index, 0)], 0).sum(axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# The model.


class ItemEncoder(nn.Module):
    """phi of one image: `vision.ConvEncoder`, global mean pool, Dense + ReLU; [N, 28, 28, 1] -> [N, embed_dim]."""

    conv_features: Sequence[int]
    embed_dim: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = vision.ConvEncoder(features=tuple(self.conv_features), name="conv")(images)  # [N, H', W', C]
        x = jnp.mean(x, axis=(1, 2))  # [N, C]
        return nn.relu(nn.Dense(self.embed_dim, name="proj", **axes.dense_inits(axes.EMBED, None))(x))


class SetSummer(nn.Module):
    """The per-item encoder, then one aggregator over the set's items, then a scalar: the predicted sum.

    Attributes:
      aggregator: "deep_sets", "attention_pooling", "gru" or "lstm".
      conv_features, embed_dim: the item encoder.
      hidden: the aggregator's width.
      num_heads: attention_pooling's heads (hidden must be a multiple).
      output_scale: the output layer's value is multiplied by it (the same for every row): a label is 0..9, so
        with about 5 a unit of the network's output is about one item, and the sums' scale is reached in a
        few steps rather than hundreds.
    """

    aggregator: str
    conv_features: Sequence[int] = (8, 16)
    embed_dim: int = 32
    hidden: int = 64
    num_heads: int = 4
    output_scale: float = 1.0

    def setup(self):
        if self.aggregator not in sets_config.AGGREGATORS:
            raise ValueError(f"aggregator must be one of {sets_config.AGGREGATORS}, got {self.aggregator!r}")
        self.encoder = ItemEncoder(tuple(self.conv_features), self.embed_dim)
        if self.aggregator == "deep_sets":
            # phi's last layer, the sum, and a linear rho: the sum of per-item estimates (authors' code).
            self.deep_sets = DeepSets(phi_features=(self.hidden,), rho_features=(1,))
            return
        if self.aggregator == "attention_pooling":
            self.member = nn.Dense(self.hidden, **axes.dense_inits(axes.EMBED, axes.MLP))
            self.pool = AttentionPooling(num_heads=self.num_heads, num_seeds=1)
        else:
            cell_kwargs = dict(kernel_init=axes.partitioned(nn.initializers.lecun_normal(), (axes.EMBED, axes.MLP)),
                               recurrent_kernel_init=axes.partitioned(nn.initializers.orthogonal(), (None, axes.MLP)),
                               bias_init=axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)))
            cell = nn.GRUCell(self.hidden, **cell_kwargs) if self.aggregator == "gru" else (
                nn.OptimizedLSTMCell(self.hidden, **cell_kwargs))
            self.rnn = nn.RNN(cell)
        self.rho_hidden = nn.Dense(self.hidden, **axes.dense_inits(None, axes.MLP))
        self.rho_out = nn.Dense(1, **axes.dense_inits(axes.MLP, None))

    def encode(self, images: jax.Array) -> jax.Array:
        """phi: images [N, 28, 28, 1] float -> item features [N, embed_dim]."""
        return self.encoder(images)

    def aggregate(self, features: jax.Array, mask: jax.Array) -> jax.Array:
        """Item features [B, S, E] with mask [B, S] (True = a real item, real items first) -> sums [B]."""
        features = jnp.where(mask[..., None], features, jnp.zeros((), features.dtype))
        if self.aggregator == "deep_sets":
            return self.output_scale * self.deep_sets(features, mask)[:, 0]
        if self.aggregator == "attention_pooling":
            members = nn.relu(self.member(features))  # [B, S, hidden]
            pooled, _ = self.pool(members, mask)  # [B, 1, hidden]
            summary = pooled[:, 0]
        else:
            lengths = jnp.sum(mask, axis=1).astype(jnp.int32)  # [B]
            carry, _ = self.rnn(features, seq_lengths=lengths, return_carry=True)
            summary = carry[1] if self.aggregator == "lstm" else carry  # LSTM carry = (c, h)
        return self.output_scale * self.rho_out(nn.relu(self.rho_hidden(summary)))[:, 0]

    def __call__(self, images: jax.Array, slots: jax.Array, mask: jax.Array) -> jax.Array:
        """Packed sets -> predicted sums [B].

        Args:
          images: [K, 28, 28, 1] float, the batch's real items (and padding) in one flat array, so the encoder
            runs on K images rather than on every padded slot of [B, S].
          slots: [K] int, where each image goes in the flattened [B * S] sets; B * S (past the end) for padding.
          mask: [B, S] bool, True = a real item (real items first).
        """
        batch, size = mask.shape
        features = self.encode(images)  # [K, E]
        sets = jnp.zeros((batch * size, features.shape[-1]), features.dtype)
        sets = sets.at[slots].set(features, mode="drop")  # padding (slot B * S) dropped
        return self.aggregate(sets.reshape(batch, size, -1), mask)


def build_model(m: ml_collections.ConfigDict) -> SetSummer:
    return SetSummer(aggregator=m.aggregator, conv_features=tuple(int(f) for f in m.conv_features),
                     embed_dim=int(m.embed_dim), hidden=int(m.hidden), num_heads=int(m.num_heads),
                     output_scale=float(m.output_scale))


# ----------------------------------------------------------------------------------------------------------------
# Data and checks.


@dataclasses.dataclass
class SetData:
    """The images the sets draw from, and the fixed dev and test sets (item indices into dev / test)."""

    train: fashion_mnist.Split
    dev: fashion_mnist.Split
    test: fashion_mnist.Split  # the test pool
    dev_sets: np.ndarray  # [dev_sets, max_train_size]
    test_sets: dict[int, np.ndarray]  # size -> [test_sets, size]
    info: dict[str, Any]


def prepare(config: ml_collections.ConfigDict, splits: dict[str, fashion_mnist.Split] | None = None) -> SetData:
    """Fashion-MNIST (default: `fashion_mnist.load`) -> train / dev images and the fixed dev and test sets.

    Raises:
      experiments.data.DataError: the package cannot be obtained.
      training.ConfigError: the splits are too small for the configured dev / test sets.
    """
    d, e = config.data, config.eval
    splits = fashion_mnist.load(d.data_dir) if splits is None else splits
    full, test = splits["train"], splits["test"]
    n_dev = int(d.dev_images)
    if full.labels.shape[0] - n_dev < 1:
        raise training.ConfigError(f"data.dev_images={n_dev} leaves no training image of {full.labels.shape[0]}; fix: "
                                   "lower --config.data.dev_images")
    train = fashion_mnist.Split(full.images[:-n_dev or None], full.labels[:-n_dev or None])
    dev = fashion_mnist.Split(full.images[full.labels.shape[0] - n_dev:], full.labels[full.labels.shape[0] - n_dev:])
    if d.max_train_images:
        train = fashion_mnist.Split(train.images[:d.max_train_images], train.labels[:d.max_train_images])
    pool = int(e.test_pool) or test.labels.shape[0]
    test = fashion_mnist.Split(test.images[:pool], test.labels[:pool])
    sizes = tuple(int(s) for s in e.test_sizes)
    if max(sizes) > test.labels.shape[0] or (e.dev_sets and d.max_train_size > dev.labels.shape[0]):
        raise training.ConfigError(f"sets of {max(sizes)} distinct test images (or {d.max_train_size} dev images) do "
                                   f"not fit in {test.labels.shape[0]} test / {dev.labels.shape[0]} dev images; fix: "
                                   "raise --config.eval.test_pool / --config.data.dev_images or lower the sizes")
    dev_sets = (fixed_sets(dev.labels.shape[0], int(d.max_train_size), int(e.dev_sets), int(e.test_seed) + 1)
                if e.dev_sets else np.zeros((0, int(d.max_train_size)), np.int64))
    test_sets = {s: fixed_sets(test.labels.shape[0], s, int(e.test_sets), int(e.test_seed)) for s in sizes}
    info = {"dataset": "Fashion-MNIST", "train_images": int(train.labels.shape[0]),
            "dev_images": int(dev.labels.shape[0]), "test_pool": int(test.labels.shape[0]),
            "dev_sets": int(dev_sets.shape[0]), "test_sets_per_size": int(e.test_sets), "test_sizes": list(sizes),
            "train_sizes": [int(d.min_train_size), int(d.max_train_size)],
            **{f"mean_test_sum_{s}": float(set_sums(test.labels, idx).mean()) for s, idx in test_sets.items()}}
    return SetData(train, dev, test, dev_sets, test_sets, info)


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    cli.int_at_least("data.min_train_size", d.min_train_size, 1)
    cli.int_at_least("data.max_train_size", d.max_train_size, d.min_train_size)
    cli.int_at_least("data.dev_images", d.dev_images, 0)
    cli.int_at_least("data.max_train_images", d.max_train_images, 0)
    if d.dev_images >= TRAIN_IMAGES:
        raise training.ConfigError(f"--config.data.dev_images={d.dev_images} leaves no Fashion-MNIST training image "
                                   f"of {TRAIN_IMAGES}; fix: use fewer (2000 is usual)")
    sizes = e.test_sizes
    if (not isinstance(sizes, (tuple, list)) or not sizes
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
            or list(sizes) != sorted(set(sizes))):
        raise training.ConfigError(f"--config.eval.test_sizes={sizes!r} is not valid; fix: use a strictly increasing "
                                   "tuple of positive ints, e.g. --config.eval.test_sizes='(5,10,20,50,100)'")
    cli.int_at_least("eval.test_sets", e.test_sets, 2)
    cli.int_at_least("eval.test_seed", e.test_seed, 0)
    cli.int_at_least("eval.test_pool", e.test_pool, 0)
    cli.int_at_least("eval.dev_sets", e.dev_sets, 0)
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    pool = e.test_pool or TEST_IMAGES
    if max(sizes) > min(pool, TEST_IMAGES):
        raise training.ConfigError(f"--config.eval.test_sizes reaches {max(sizes)} items, more than the {pool} test "
                                   "images a set draws from without repeats; fix: lower the sizes or raise "
                                   "--config.eval.test_pool (at most 10000)")
    if e.dev_sets and d.dev_images < d.max_train_size:
        raise training.ConfigError(f"--config.data.dev_images={d.dev_images} is fewer than a dev set's "
                                   f"{d.max_train_size} items; fix: raise it or pass --config.eval.dev_sets=0")
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    cli.int_at_least("train.batch_size", t.batch_size, 1)
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.grad_clip_norm < 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and grad_clip_norm, max_minutes >= 0; "
                                   "fix: change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    for row in rows:
        m = training.row_config(EXPERIMENT, config, row).model
        if m.aggregator not in sets_config.AGGREGATORS:
            raise training.ConfigError(f"row {row}: model.aggregator={m.aggregator!r} is not valid; fix: use one of "
                                       f"{', '.join(sets_config.AGGREGATORS)}")
        features = m.conv_features
        if (not isinstance(features, (tuple, list)) or not features
                or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 or f % min(8, f) for f in features)):
            raise training.ConfigError(f"--config.model.conv_features={features!r} is not valid; fix: use a tuple of "
                                       "channel counts, each below 8 or a multiple of 8 (GroupNorm), e.g. '(16,32)'")
        for name in ("embed_dim", "hidden", "num_heads"):
            cli.int_at_least(f"model.{name}", m[name], 1)
        if not m.output_scale > 0:
            raise training.ConfigError(f"--config.model.output_scale={m.output_scale!r} is not valid; fix: use a "
                                       "number > 0 (5 is usual)")
        if m.aggregator == "attention_pooling" and m.hidden % m.num_heads:
            raise training.ConfigError(f"--config.model.hidden={m.hidden} is not a multiple of model.num_heads="
                                       f"{m.num_heads}; fix: change one of them")


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation.


def _encode_all(encode, params, images: np.ndarray, batch_size: int) -> np.ndarray:
    """phi of every image [N, 28, 28] uint8 -> [N, E] float32, in chunks of ``batch_size`` (one compile)."""
    out = []
    for index, _ in vision.index_batches(images.shape[0], batch_size, shuffle=False):
        features = np.asarray(encode(params, vision.to_float(vision.take(images, index))))
        out.append(features[index >= 0])
    return np.concatenate(out)


def _set_scores(aggregate, params, features: np.ndarray, labels: np.ndarray, index: np.ndarray, length: int,
                chunk: int) -> dict[str, np.ndarray]:
    """Per set of ``index`` [N, S] (no padding, S <= length): prediction, target, exact (0/1), absolute error.

    The sets are padded (masked) to [chunk, length], so every test size and the dev sets share one compiled
    aggregate.
    """
    n, size = index.shape
    predictions = np.zeros((n,), np.float64)
    for start in range(0, n, chunk):
        block = np.full((chunk, length), -1, np.int64)
        rows = index[start:start + chunk]
        block[:rows.shape[0], :size] = rows
        mask = block >= 0
        sets = np.where(mask[..., None], features[np.maximum(block, 0)], 0.0).astype(np.float32)
        predictions[start:start + rows.shape[0]] = np.asarray(aggregate(params, sets, mask))[:rows.shape[0]]
    targets = set_sums(labels, index).astype(np.float64)
    return {"prediction": predictions, "target": targets,
            "exact": (np.round(predictions) == targets).astype(np.float64), "abs_error": np.abs(predictions - targets)}


def train_run(cfg: ml_collections.ConfigDict, sd: SetData, run_dir: str, label: str, after_s: Any = None,
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and tests it at every size; returns its record fields."""
    m, t, d, e = cfg.model, cfg.train, cfg.data, cfg.eval
    model = build_model(m)
    # Cosine decay to 5% over train.num_steps (the authors lower the rate on plateaus, ReduceLROnPlateau): a
    # regression of the sum is read to the unit, so the last steps must not jitter. Constant for a time budget.
    rate = (optax.cosine_decay_schedule(t.learning_rate, int(t.num_steps), alpha=0.05) if t.num_steps
            else t.learning_rate)
    optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm else optax.identity(),
                            optax.adam(rate))
    size = int(d.max_train_size)
    example = np.zeros((2 * size, 28, 28, 1), np.float32)
    # One jitted init: un-jitted, flax runs (and compiles) every initializer op by op, seconds per run.
    params = nn.unbox(jax.jit(model.init)(jax.random.key(int(cfg.seed)), example,
                                          np.arange(2 * size, dtype=np.int32), np.ones((2, size), bool))["params"])
    opt_state = optimizer.init(params)

    def loss_fn(p, batch):
        predictions = model.apply({"params": p}, batch["images"], batch["slots"], batch["mask"])
        losses = jnp.abs(predictions - batch["target"])  # L1, as the authors' code ("mae")
        return jnp.mean(losses), jnp.sum(losses)

    @jax.jit
    def step(p, o, carry, batch, rng):
        del rng
        (_, loss_sum), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, carry, loss_sum, jnp.float32(batch["target"].shape[0])

    encode = jax.jit(lambda p, images: model.apply({"params": p}, images, method=SetSummer.encode))
    aggregate = jax.jit(lambda p, f, mask: model.apply({"params": p}, f, mask, method=SetSummer.aggregate))

    batch_size, n_train = int(t.batch_size), sd.train.labels.shape[0]
    mean_size = (int(d.min_train_size) + size) / 2
    steps_per_epoch = max(1, int(n_train // (batch_size * mean_size)))

    budget = item_budget(batch_size, int(d.min_train_size), size)

    def epoch_batches(epoch: int):
        for i in range(steps_per_epoch):
            rng = np.random.default_rng([int(cfg.seed), epoch, i])
            index, items, slots = packed_batch(n_train, batch_size, int(d.min_train_size), size, budget, rng)
            # Throughput counts real items (images), not the padding.
            yield {"images": vision.to_float(vision.take(sd.train.images, items)), "slots": slots,
                   "mask": index >= 0, "target": set_sums(sd.train.labels, index)}, float(np.sum(index >= 0))

    length = max(size, *sd.test_sets)  # sets are padded to this length at evaluation
    chunk = min(1000, max(sd.dev_sets.shape[0], int(e.test_sets)))

    def evaluate(p) -> dict[str, float]:
        features = _encode_all(encode, p, sd.dev.images, int(e.batch_size))
        s = _set_scores(aggregate, p, features, sd.dev.labels, sd.dev_sets, length, chunk)
        return {"dev_accuracy": 100.0 * float(s["exact"].mean()),
                "dev_item_mae": float(np.mean(s["abs_error"]) / size)}

    has_dev = sd.dev_sets.shape[0] > 0
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(0), evaluate=evaluate if has_dev and t.eval_every else None,
                                  eval_at_end=True, steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  unit="items", perplexity=False)
    features = _encode_all(encode, outcome.params, sd.test.images, int(e.batch_size))
    fields: dict[str, Any] = {}
    scores: dict[str, list[float]] = {}
    for n, index in sd.test_sets.items():
        s = _set_scores(aggregate, outcome.params, features, sd.test.labels, index, length, chunk)
        fields[sets_config.accuracy_key(n)] = 100.0 * float(s["exact"].mean())
        fields[sets_config.mae_key(n)] = float(s["abs_error"].mean())
        fields[sets_config.item_mae_key(n)] = float(s["abs_error"].mean()) / n
        scores[sets_config.accuracy_key(n)] = s["exact"].tolist()
        scores[sets_config.item_mae_key(n)] = (s["abs_error"] / n).tolist()
    runs_table.write_scores(run_dir, scores)
    if has_dev:
        fields.update(evaluate(outcome.params))
    largest = max(sd.test_sets)
    fields.update({"test_sizes": sorted(sd.test_sets), "test_sets": int(cfg.eval.test_sets),
                   "params": vision.param_count(outcome.params), "steps": outcome.steps,
                   "epochs": round(outcome.steps / steps_per_epoch, 2), "train_minutes": round(outcome.minutes, 2),
                   "stop_reason": outcome.stop_reason})
    logging.info("[%s] sets of %d: accuracy %.1f%%, MAE %.2f (%.3f per item) after %d steps, %.1f min", label,
                 largest, fields[sets_config.accuracy_key(largest)], fields[sets_config.mae_key(largest)],
                 fields[sets_config.item_mae_key(largest)], fields["steps"], fields["train_minutes"])
    return fields


# ----------------------------------------------------------------------------------------------------------------
# The report.


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"model": m.aggregator}


def columns(sizes: Sequence[int], baseline: str) -> tuple[tuple[str, str], ...]:
    """results.md's columns: accuracy and error per item at every size, then the largest size's statistics."""
    large = max(sizes)
    per_size = [c for n in sizes for c in ((f"acc % @{n}", sets_config.accuracy_key(n)),
                                           (f"MAE/item @{n}", sets_config.item_mae_key(n)))]
    item = sets_config.item_mae_key(large)
    accuracy = sets_config.accuracy_key(large)
    return (("row", "row"), *per_size, (f"MAE @{large}", sets_config.mae_key(large)),
            (f"Δ MAE/item @{large} vs {baseline or 'baseline'}, 95% CI", f"{item}_ci"), ("p", f"{item}_p"),
            (f"Δ acc @{large}, 95% CI", f"{accuracy}_ci"), ("p (acc)", f"{accuracy}_p"),
            ("dev acc %", "dev_accuracy"), ("paper", "paper"), ("seeds", "n_seeds"), ("params", "params"),
            ("steps", "steps"), ("train minutes", "train_minutes"))


def _degradation(table: list[dict[str, Any]], workdir: str, sizes: Sequence[int], n_resamples: int
                 ) -> tuple[list[dict[str, Any]], dict[tuple[str, str, int], float]]:
    """Records of each row at its smallest and largest test size ("gru @ 5"), for `degradation_claims`, and the
    two-sided p of the difference of their errors per item (unpaired permutation test: different sets)."""
    from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel

    small, large = min(sizes), max(sizes)
    records, p_values = [], {}
    for rec in table:
        row, seed = rec["row"], int(rec["seed"])
        for n in (small, large):
            if rec.get(sets_config.item_mae_key(n)) is not None:
                records.append({"row": sets_config.degradation_row(row, n), "seed": seed,
                                "test_item_mae": rec[sets_config.item_mae_key(n)]})
        a = runs_table.read_scores(workdir, row, seed, sets_config.item_mae_key(small))
        b = runs_table.read_scores(workdir, row, seed, sets_config.item_mae_key(large))
        if small < large and a is not None and b is not None and min(a.size, b.size) >= 2:
            test = scipy_stats.permutation_test((a, b), lambda x, y, axis=-1: np.mean(x, axis) - np.mean(y, axis),
                                                permutation_type="independent", vectorized=True,
                                                n_resamples=n_resamples, alternative="two-sided",
                                                rng=np.random.default_rng(seed))
            p_values[(sets_config.degradation_row(row, small), sets_config.degradation_row(row, large), seed)] = (
                float(test.pvalue))
    return records, p_values


def _by_size_figures(table: list[dict[str, Any]], workdir: str, rows: Sequence[str], sizes: Sequence[int],
                     n_sets: int, trained: str) -> list[tuple[str, str]]:
    """accuracy_by_size.png and item_mae_by_size.png: each metric against the test size, one line per row."""
    from experiments import plots  # pylint: disable=import-outside-toplevel

    buckets = {}
    for row in rows:
        mine = [r for r in table if r["row"] == row]
        if not mine:
            continue
        buckets[row] = [{"bucket": str(n), "n": n_sets,
                         "accuracy": stats.mean_std([r.get(sets_config.accuracy_key(n)) for r in mine])[0],
                         "item_mae": stats.mean_std([r.get(sets_config.item_mae_key(n)) for r in mine])[0]}
                        for n in sizes]
    if not buckets:
        return []
    n_seeds = max(len([r for r in table if r["row"] == row]) for row in buckets)
    seeds = f"mean of {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    plots.metric_by_length(buckets, os.path.join(workdir, "accuracy_by_size.png"), metric="accuracy",
                           xlabel=f"test set size (items); trained on sets of {trained}",
                           ylabel="exact-sum accuracy (%)", title=f"Accuracy against set size ({seeds})")
    plots.metric_by_length(buckets, os.path.join(workdir, "item_mae_by_size.png"), metric="item_mae",
                           xlabel=f"test set size (items); trained on sets of {trained}",
                           ylabel="|prediction - sum| / set size", title=f"Error per item against set size ({seeds})")
    return [("accuracy_by_size.png", "Exact-sum accuracy against the test set size (cf. Zaheer et al. 2017, Fig. 2)"),
            ("item_mae_by_size.png", "Mean absolute error per item against the test set size")]


def _curves(workdir: str, rows: Sequence[str], seed: int) -> list[str]:
    """loss_curves.png of one seed: training L1 loss, dev accuracy and dev error per item against step."""
    path = runs_table.loss_curves_figure(
        workdir, rows, seed, title=f"seed {seed}",
        panels=(("loss", "train L1 loss (|prediction - sum|)"), ("dev_accuracy", "dev accuracy (%)"),
                ("dev_item_mae", "dev error per item")))
    return [path] if path else []


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and the figures; returns the records in table order."""
    sizes = tuple(int(s) for s in config.eval.test_sizes)
    large = max(sizes)
    n = int(config.eval.significance_samples)
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records, claims=sets_config.claims_for(sizes),
                              metrics={sets_config.accuracy_key(large): 100.0, sets_config.item_mae_key(large): 1.0})
    if tab is None:
        return []
    table, summary, baseline, verdicts = tab.table, tab.summary, tab.baseline, tab.verdicts
    degradation = sets_config.degradation_claims(sizes)
    if degradation:
        pseudo, pseudo_p = _degradation(table, workdir, sizes, n)
        verdicts += [stats.claim_verdict(c, pseudo, p_values=pseudo_p if config.eval.significance == "bs" else None)
                     for c in degradation]
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    figures: list[Any] = _curves(workdir, rows, seeds[0])
    d, t = config.data, config.train
    figures += _by_size_figures(table, workdir, rows, sizes, int(config.eval.test_sets),
                                f"{d.min_train_size}-{d.max_train_size}")
    notes = [f"preset: {preset or '-'}; data: Fashion-MNIST, {info.get('train_images', '?')} train images (sets of "
             f"{d.min_train_size}-{d.max_train_size}, padded to {d.max_train_size}), {info.get('dev_images', '?')} "
             f"held-out train images for {info.get('dev_sets', '?')} dev sets of {d.max_train_size}; test sets of "
             f"{', '.join(map(str, sizes))} distinct items from {info.get('test_pool', '?')} test images, "
             f"{config.eval.test_sets} per size (seed {config.eval.test_seed}, the same for every row and seed); "
             "target: the sum of the items' class labels (0-9)",
             f"training: {t.num_steps} steps of {t.batch_size} sets, L1 loss, Adam {t.learning_rate:g} with a cosine "
             f"decay, clip {t.grad_clip_norm:g}, the same for every row; item encoder "
             f"ConvEncoder{tuple(config.model.conv_features)} + mean pool + Dense {config.model.embed_dim}, "
             f"aggregator width {config.model.hidden}, output x {config.model.output_scale:g}; test after the last "
             "step",
             "accuracy: the rounded prediction equals the sum; MAE/item: |prediction - sum| / set size. The claims use "
             "MAE/item: exact sums of many Fashion-MNIST items are rarely right for any row (about 90% per-item "
             "accuracy), so accuracy at the largest size may not separate the rows",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min"]
    if baseline:
        notes.append(f"Δ and p at size {large}: against {baseline} per seed on the same test sets (Δ = row - "
                     f"{baseline}; for MAE/item a positive Δ means worse than {baseline}), "
                     f"`experiments.stats.paired_accuracy_test` (paired bootstrap CI, {n} resamples; paired "
                     "permutation p); union of CIs, largest p. Degradation claims: unpaired permutation p between "
                     f"the per-set errors per item at sizes {min(sizes)} and {large}")
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=columns(sizes, baseline), summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading=("Paper (MNIST8m digits; Fig. 2 gives curves, no numbers: compare orderings, not "
                                     "values)"))
    return table


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, set_data: SetData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: the Fashion-MNIST package cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda sd: sd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=set_data)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="its images come from the Fashion-MNIST package")
