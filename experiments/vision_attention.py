"""SE, CBAM, DANet, pooling kinds and size-free heads in a small ResNet on Fashion-MNIST (issue 14's vision ablation).

    python -m experiments.vision_attention                                   # 10 rows x 3 seeds
    python -m experiments.vision_attention --preset=smoke --workdir=/tmp/vision_attention_smoke
    python -m experiments.vision_attention --rows=none,se,cbam --config.seeds=5

Rows, presets, paper numbers and claims: `experiments/configs/vision_attention.py`. Flags: `experiments/cli.py`
(--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains in ``<workdir>/<row>/seed_<n>/``
with orbax checkpoints (resumed when killed; re-reported when finished) and logs step, loss, images/s and ETA.

Model (`SmallResNet`): a 3x3 stem conv, then one basic residual block per stage (conv-GN-ReLU-conv-GN, the
attention module on that residual branch before the addition, as the SE and CBAM papers place it, then ReLU of
the sum; a 1x1 conv-GN shortcut where the width changes), a 2x2 pool of the row's kind between stages
(`attention_jax.core.pooling`), DANet's `DualAttention` once on the last stage's map, and a head: global average
pool, `SpatialPyramidPooling` or `PyramidAttentionPooling`, then Dense(10). GroupNorm, not BatchNorm, so the
model has no batch statistics; every parameter is boxed with logical axis names.

Presets: ``smoke`` (every row, one seed, 20 steps: plumbing), ``small`` (the default: 10 rows x 3 seeds of 400
steps of 64 images, 22 min with --jobs=2 on the idle 2-core machine) and ``long`` (1,400 steps, about 65 min,
estimated); the config module says what each holds and how the times were measured.

Outputs in the workdir: results.md / results.jsonl (per (row, seed): test error at 28x28 and at the other test
sizes, the paired bootstrap CI and permutation p of test accuracy against ``none`` over the same test images,
train error on a fixed 10,000-image training subset and the train-test gap, params, minutes), claims.jsonl,
loss_curves.png (training loss and dev accuracy by step), and in the seed-0 run directories of the cbam and danet
rows cbam_spatial_maps.png (CBAM's spatial map M_s of every block over 4 test images) and danet_position_maps.png
(DANet's position-attention row of two query cells, the centre one first).
"""

from __future__ import annotations

import dataclasses
import functools
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
from attention_jax.core import pooling
from attention_jax.layers.cbam import CBAM
from attention_jax.layers.danet import DualAttention
from attention_jax.layers.pyramid import PyramidAttentionPooling, SpatialPyramidPooling
from attention_jax.layers.squeeze_excitation import SqueezeExcitation
from experiments import cli
from experiments import results
from experiments import training
from experiments import vision
from experiments.configs import vision_attention as va_config
from experiments.data import fashion_mnist
from experiments.training import report, spec
from experiments.training import table as runs_table

FLAGS = flags.FLAGS

ATTENTIONS = ("none", "se", "cbam_channel", "cbam", "danet")
POOLS = ("max", "avg", "stochastic")
HEADS = ("gap", "spp", "pyramid_attention")
NATIVE_SIZE = fashion_mnist.IMAGE_SIZE  # 28
MIN_SIZE = 8
NUM_CLASSES = len(fashion_mnist.CLASS_NAMES)
CBAM_FIGURE = "cbam_spatial_maps.png"
DANET_FIGURE = "danet_position_maps.png"

EXPERIMENT = training.Experiment(
        name="vision_attention",
        title="SE / CBAM / DANet attention, pooling kinds and pyramid heads in a small ResNet on Fashion-MNIST "
              "(Hu 2017, Woo 2018, Fu 2019, He 2014, Zeiler & Fergus 2013)",
        get_config=va_config.get_config,
        presets=va_config.PRESETS,
        rows=va_config.ROWS,
        default_rows=va_config.DEFAULT_ROWS,
        default_preset=va_config.DEFAULT_PRESET,
        default_workdir="workdirs/vision_attention",
        default_jobs=2,
)


# -- model ---------------------------------------------------------------------------------------------------------


def _conv(features: int, kernel: int, name: str) -> nn.Conv:
    # No bias: a GroupNorm with its own bias follows every convolution.
    return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=False,
                   **axes.conv_inits(axes.EMBED, axes.EMBED), name=name)


def _norm(features: int, groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, features), **axes.norm_inits(axes.EMBED), name=name)


class BasicBlock(nn.Module):
    """A post-activation basic residual block with an optional attention module on its residual branch.

    y = GN(conv3x3(ReLU(GN(conv3x3(x))))); y = attention(y); out = ReLU(shortcut(x) + y), with shortcut the
    identity, or conv1x1-GN where the width changes. Attention: "se" (`SqueezeExcitation`), "cbam_channel" /
    "cbam" (`CBAM` without / with its spatial branch), anything else none (DANet sits outside the blocks).

    Call: x [B, H, W, Cin] -> ([B, H, W, features], maps), maps {"spatial": CBAM's M_s [B, H, W]} when
    ``return_maps`` and the block has CBAM's spatial attention, else {}.
    """

    features: int
    attention: str = "none"
    groups: int = 8
    reduction: int = 4
    cbam_kernel: int = 7

    @nn.compact
    def __call__(self, x: jax.Array, return_maps: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        y = nn.relu(_norm(self.features, self.groups, "norm1")(_conv(self.features, 3, "conv1")(x)))
        y = _norm(self.features, self.groups, "norm2")(_conv(self.features, 3, "conv2")(y))
        maps: dict[str, jax.Array] = {}
        if self.attention == "se":
            y = SqueezeExcitation(self.reduction, name="se")(y)
        elif self.attention in ("cbam", "cbam_channel"):
            y, weights = CBAM(self.reduction, self.cbam_kernel, spatial=self.attention == "cbam", name="cbam")(
                y, return_weights=True)
            if return_maps and "spatial" in weights:
                maps["spatial"] = weights["spatial"]
        shortcut = x
        if x.shape[-1] != self.features:
            shortcut = _norm(self.features, self.groups, "shortcut_norm")(_conv(self.features, 1, "shortcut")(x))
        return nn.relu(shortcut + y), maps


def pool_2x2(x: jax.Array, kind: str, *, train: bool, rng: jax.Array | None) -> jax.Array:
    """The 2x2 (stride 2) downsampling between stages: max, average or stochastic (sampled only when training)."""
    if kind == "max":
        return pooling.max_pool_2d(x, 2)
    if kind == "avg":
        return pooling.avg_pool_2d(x, 2)
    if kind == "stochastic":
        return pooling.stochastic_pool_2d(x, 2, deterministic=not train, rng=rng if train else None)
    raise ValueError(f"unknown pool kind {kind!r}; use one of {POOLS}")


class SmallResNet(nn.Module):
    """Stem conv, one `BasicBlock` per width with a 2x2 pool between stages, optional DANet, then a head.

    Attributes:
      widths: the stages' channels (16, 32, 64).
      attention: "none", "se", "cbam_channel", "cbam" (in every block) or "danet" (once, on the last map).
      pool: "max", "avg" or "stochastic" (Zeiler & Fergus 2013; draws from the "pool" rng while training).
      head: "gap" (global average pool), "spp" (`SpatialPyramidPooling`) or "pyramid_attention"
        (`PyramidAttentionPooling`), each followed by Dense(num_classes).
      levels: pyramid levels of the spp / pyramid_attention heads.

    Call: images [B, H, W, 1] float (any H, W whose last map is at least max(levels) wide) -> (logits
    [B, num_classes] float32, maps): maps, when ``return_maps``, holds "spatial" (a list of CBAM's M_s per block,
    cbam only) and "position" (DANet's [B, S, S] position attention, danet only).
    """

    widths: tuple[int, ...] = (16, 32, 64)
    attention: str = "none"
    pool: str = "max"
    head: str = "gap"
    groups: int = 8
    reduction: int = 4
    cbam_kernel: int = 7
    danet_reduction: int = 8
    levels: tuple[int, ...] = (1, 2, 4)
    pyramid_hidden: int = 32
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, return_maps: bool = False
                 ) -> tuple[jax.Array, dict[str, Any]]:
        if images.ndim != 4:
            raise ValueError(f"SmallResNet takes NHWC images [B, H, W, C], got shape {images.shape}")
        block_attention = self.attention if self.attention != "danet" else "none"
        x = nn.relu(_norm(self.widths[0], self.groups, "stem_norm")(_conv(self.widths[0], 3, "stem")(images)))
        maps: dict[str, Any] = {}
        for i, width in enumerate(self.widths):
            if i > 0:
                rng = self.make_rng("pool") if train and self.pool == "stochastic" else None
                x = pool_2x2(x, self.pool, train=train, rng=rng)
            x, block_maps = BasicBlock(int(width), block_attention, self.groups, self.reduction, self.cbam_kernel,
                                       name=f"stage{i}")(x, return_maps)
            if "spatial" in block_maps:
                maps.setdefault("spatial", []).append(block_maps["spatial"])
        if self.attention == "danet":
            x, weights = DualAttention(self.danet_reduction, name="danet")(x, return_weights=True)
            if return_maps:
                maps["position"] = weights["position"]
        if self.head == "gap":
            features = jnp.mean(x, axis=(1, 2))
        elif self.head == "spp":
            features = SpatialPyramidPooling(tuple(self.levels), name="spp")(x)
        else:
            features = PyramidAttentionPooling(tuple(self.levels), self.pyramid_hidden, name="pyramid")(x)
        logits = nn.Dense(self.num_classes, **axes.dense_inits(axes.EMBED, None), name="classifier")(features)
        return logits.astype(jnp.float32), maps


def build_model(m: ml_collections.ConfigDict) -> SmallResNet:
    return SmallResNet(widths=tuple(int(w) for w in m.widths), attention=m.attention, pool=m.pool, head=m.head,
                       groups=int(m.groups), reduction=int(m.reduction), cbam_kernel=int(m.cbam_kernel),
                       danet_reduction=int(m.danet_reduction), levels=tuple(int(n) for n in m.levels),
                       pyramid_hidden=int(m.pyramid_hidden))


def last_map_side(size: int, stages: int) -> int:
    """The side of the last stage's map for a size x size input: ceil(size / 2) once per pool (stages - 1)."""
    for _ in range(stages - 1):
        size = -(-size // 2)
    return size


# -- data ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VisionData:
    """The images of one table: uint8 [N, 28, 28] with int32 labels [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    dev_images: np.ndarray
    dev_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_eval_index: np.ndarray  # [E] a fixed subset of the training images (train error)
    info: dict[str, Any]


def prepare(config: ml_collections.ConfigDict, splits: dict[str, fashion_mnist.Split] | None = None) -> VisionData:
    """Fashion-MNIST (or ``splits``) -> a dev set held out of train (a fixed permutation), the rest for training,
    the test set, and a fixed training subset for the train error.

    Raises:
      experiments.data.DataError: the images cannot be obtained.
      training.ConfigError: too few training images for the dev set.
    """
    d = config.data
    splits = fashion_mnist.load(d.data_dir) if splits is None else splits
    train, test = splits["train"], splits["test"]
    if train.labels.shape[0] <= d.dev_size:
        raise training.ConfigError(f"--config.data.dev_size={d.dev_size} leaves no training image of "
                                   f"{train.labels.shape[0]}; fix: lower it")
    order = np.random.default_rng(12345).permutation(train.labels.shape[0])
    dev_index, train_index = order[:d.dev_size], order[d.dev_size:]
    if d.max_train:
        train_index = train_index[:d.max_train]
    test_images, test_labels = test.images, test.labels
    if d.max_test:
        test_images, test_labels = test_images[:d.max_test], test_labels[:d.max_test]
    n_train = train_index.shape[0]
    train_eval_index = np.sort(np.random.default_rng(54321).permutation(n_train)[:min(d.train_eval_size, n_train)])
    info = {"train_images": int(n_train), "dev_images": int(dev_index.shape[0]),
            "test_images": int(test_labels.shape[0]), "train_eval_images": int(train_eval_index.shape[0]),
            "test_class_counts": np.bincount(test_labels, minlength=NUM_CLASSES).tolist()}
    return VisionData(train.images[train_index], train.labels[train_index], train.images[dev_index],
                      train.labels[dev_index], test_images, test_labels, train_eval_index, info)


@functools.partial(jax.jit, static_argnums=1)
def _resize(images: jax.Array, size: int) -> jax.Array:
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), method="linear")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Float images [B, H, W, C] -> [B, size, size, C] by `jax.image.resize` (bilinear, antialiased when
    shrinking); returned unchanged when already that size."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.asarray(_resize(jnp.asarray(images), int(size)))


def batch_sizes(num_batches: int, sizes: tuple[int, ...], seed: int, epoch: int) -> np.ndarray:
    """The input size of every batch of one epoch, drawn uniformly from ``sizes`` (He et al. 2014's multi-size
    training, one size per batch); fixed by (seed, epoch), so a resumed run sees the same sizes."""
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    return np.asarray(sizes, np.int64)[rng.integers(0, len(sizes), size=num_batches)]


def image_batch(images: np.ndarray, index: np.ndarray, size: int = NATIVE_SIZE) -> np.ndarray:
    """uint8 images at ``index`` (-1: a zero padding row) -> standardised float [B, size, size, 1]."""
    return resize_images(vision.to_float(vision.take(images, index)), size)


# -- validation ----------------------------------------------------------------------------------------------------


def _sizes(path: str, values: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if ((not values and not allow_empty) or any(isinstance(v, bool) or not isinstance(v, int) or v < MIN_SIZE
                                                 for v in values) or list(values) != sorted(set(values))):
        raise training.ConfigError(f"--config.{path}={values!r} is not valid; fix: use a strictly increasing tuple of "
                                   f"image sizes >= {MIN_SIZE}, e.g. --config.{path}='(24,28,32)'")
    return values


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    for name in ("max_train", "max_test"):
        cli.int_at_least(f"data.{name}", d[name], 0)
    cli.int_at_least("data.dev_size", d.dev_size, 1)
    cli.int_at_least("data.train_eval_size", d.train_eval_size, 1)
    cli.int_at_least("train.batch_size", t.batch_size, 1)
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.grad_clip_norm < 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and grad_clip_norm, max_minutes >= 0; "
                                   "fix: change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    _sizes("train.sizes", t.sizes)
    other = _sizes("eval.other_sizes", e.other_sizes, allow_empty=True)
    if NATIVE_SIZE in other:
        raise training.ConfigError(f"--config.eval.other_sizes={other!r} repeats {NATIVE_SIZE}, which is always "
                                   "tested; fix: leave it out")
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.other_sizes_images", e.other_sizes_images, 0)
    cli.int_at_least("eval.num_maps", e.num_maps, 0)
    if e.num_maps > 16:
        raise training.ConfigError(f"--config.eval.num_maps={e.num_maps} is too many rows for a figure; fix: use at "
                                   "most 16")
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    for row in rows:
        m, rt = training.row_config(EXPERIMENT, config, row).model, training.row_config(EXPERIMENT, config, row).train
        for path, value, choices in (("attention", m.attention, ATTENTIONS), ("pool", m.pool, POOLS),
                                     ("head", m.head, HEADS)):
            if value not in choices:
                raise training.ConfigError(f"row {row}: --config.model.{path}={value!r} is not valid; fix: use one of "
                                           f"{', '.join(choices)}")
        widths = tuple(m.widths) if isinstance(m.widths, (tuple, list)) else (m.widths,)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise training.ConfigError(f"--config.model.widths={widths!r} is not valid; fix: use a tuple of positive "
                                       "ints, e.g. '(16,32,64)'")
        cli.int_at_least("model.groups", m.groups, 1)
        bad = [w for w in widths if w % min(m.groups, w)]
        if bad:
            raise training.ConfigError(f"--config.model.groups={m.groups} does not divide width {bad[0]} of "
                                       f"{widths!r}; fix: use a divisor of every width, e.g. 8")
        for name in ("reduction", "cbam_kernel", "danet_reduction", "pyramid_hidden"):
            cli.int_at_least(f"model.{name}", m[name], 1)
        if m.attention in ("se", "cbam", "cbam_channel") and m.reduction > min(widths):
            raise training.ConfigError(f"row {row}: --config.model.reduction={m.reduction} exceeds the narrowest width "
                                       f"{min(widths)}; fix: use at most {min(widths)}")
        if m.attention == "danet" and m.danet_reduction > widths[-1]:
            raise training.ConfigError(f"row {row}: --config.model.danet_reduction={m.danet_reduction} exceeds the "
                                       f"last width {widths[-1]}; fix: use at most {widths[-1]}")
        levels = tuple(m.levels) if isinstance(m.levels, (tuple, list)) else (m.levels,)
        if (not levels or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in levels)
                or list(levels) != sorted(set(levels))):
            raise training.ConfigError(f"--config.model.levels={levels!r} is not valid; fix: use a strictly increasing "
                                       "tuple of ints >= 1, e.g. '(1,2,4)'")
        if m.head != "gap":
            used = (NATIVE_SIZE, *other, *(tuple(rt.sizes) if rt.multi_size else ()))
            small = min(used)
            if last_map_side(small, len(widths)) < max(levels):
                raise training.ConfigError(
                    f"row {row}: a {small}x{small} image leaves a {last_map_side(small, len(widths))}-pixel last map, "
                    f"smaller than pyramid level {max(levels)}; fix: raise the smallest of train.sizes / "
                    f"eval.other_sizes or lower --config.model.levels")


# -- training ------------------------------------------------------------------------------------------------------


def _predict_labels(predict, params, images: np.ndarray, size: int, batch_size: int) -> np.ndarray:
    """The predicted labels of uint8 images [N, 28, 28] resized to ``size``, in batches of min(batch_size, N)."""
    out = np.zeros((images.shape[0],), np.int32)
    for index, weights in vision.index_batches(images.shape[0], max(1, min(batch_size, images.shape[0])),
                                               shuffle=False):
        real = weights > 0
        out[index[real]] = np.asarray(predict(params, image_batch(images, index, size)))[real]
    return out


@dataclasses.dataclass(frozen=True)
class Functions:
    """The jitted functions of one model and optimiser: init (key -> boxed params), step (the `train_loop` step),
    predict (params, images -> labels) and maps (params, images -> (logits, attention maps))."""

    optimizer: Any
    init: Any
    step: Any
    predict: Any
    maps: Any


@functools.lru_cache(maxsize=4)
def functions(model: SmallResNet, learning_rate: float, grad_clip_norm: float, num_steps: int) -> Functions:
    """`Functions` of ``model`` with Adam (cosine-decayed over ``num_steps``; constant for 0) after gradient
    clipping; cached, so the other seeds of a row that a worker trains reuse its traces and compiles.

    (XLA's backend optimisation level 0 would halve the compile times, but on the CPU it gave NaN gradients in
    the spp and cbam models where the default level gives finite ones, so it is not offered.)
    """
    schedule = (optax.cosine_decay_schedule(learning_rate, num_steps) if num_steps
                else optax.constant_schedule(learning_rate))
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm) if grad_clip_norm else optax.identity(),
                            optax.adam(schedule))
    example = jnp.zeros((2, NATIVE_SIZE, NATIVE_SIZE, 1), jnp.float32)

    def loss_fn(p, batch, rng):
        logits, _ = model.apply({"params": p}, batch["images"], train=True, rngs={"pool": rng})
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        total = jnp.sum(losses * batch["weights"])
        return total / jnp.maximum(jnp.sum(batch["weights"]), 1.0), (total, jnp.sum(batch["weights"]))

    @jax.jit
    def step(p, o, carry, batch, rng):
        (_, (loss_sum, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, rng)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, carry, loss_sum, weight

    @jax.jit
    def predict(p, images):
        return jnp.argmax(model.apply({"params": p}, images)[0], axis=-1)

    return Functions(optimizer=optimizer, init=jax.jit(lambda key: model.init(key, example)), step=step,
                     predict=predict,
                     maps=jax.jit(lambda p, images: model.apply({"params": p}, images, return_maps=True)))


def train_run(cfg: ml_collections.ConfigDict, vd: VisionData, run_dir: str, label: str, after_s: Any = None,
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and evaluates it; returns its record fields."""
    m, t, e = cfg.model, cfg.train, cfg.eval
    model = build_model(m)
    fns = functions(model, float(t.learning_rate), float(t.grad_clip_norm), int(t.num_steps))
    # The init key is an "rbg" key: XLA's CPU compiler takes about 3x longer over threefry's hash for the ~50
    # initialisers (7-9 s vs 3 s per model here), paid once per row (the persistent cache serves the others).
    params = nn.unbox(fns.init(jax.random.key(int(cfg.seed), impl="rbg"))["params"])
    opt_state = fns.optimizer.init(params)
    step_rng = jax.random.fold_in(jax.random.key(int(cfg.seed)), 1)
    predict = fns.predict

    batch_size = int(t.batch_size)
    n = vd.train_labels.shape[0]
    steps_per_epoch = -(-n // batch_size)
    sizes = tuple(int(s) for s in t.sizes) if t.multi_size else (NATIVE_SIZE,)

    def epoch_batches(epoch: int):
        drawn = batch_sizes(steps_per_epoch, sizes, int(cfg.seed), epoch)
        for k, (index, weights) in enumerate(vision.index_batches(n, batch_size, shuffle=True,
                                                                  seed=int(cfg.seed) * 100003 + epoch)):
            batch = {"images": image_batch(vd.train_images, index, int(drawn[k])),
                     "labels": vision.take(vd.train_labels, index).astype(np.int32), "weights": weights}
            yield batch, float(weights.sum())  # throughput counts images

    eval_batch = int(e.batch_size)

    def evaluate(p) -> dict[str, float]:
        predicted = _predict_labels(predict, p, vd.dev_images, NATIVE_SIZE, eval_batch)
        return {"dev_accuracy": 100.0 * float(np.mean(predicted == vd.dev_labels))}

    outcome = training.train_loop(fns.step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=step_rng, evaluate=evaluate if t.eval_every else None, eval_at_end=True,
                                  steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  unit="images", perplexity=False)
    params = outcome.params
    correct = (_predict_labels(predict, params, vd.test_images, NATIVE_SIZE, eval_batch)
               == vd.test_labels).astype(np.float64)
    runs_table.write_scores(run_dir, {"test_accuracy": correct.tolist()})
    train_images = vd.train_images[vd.train_eval_index]
    train_error = 100.0 * float(np.mean(_predict_labels(predict, params, train_images, NATIVE_SIZE, eval_batch)
                                        != vd.train_labels[vd.train_eval_index]))
    test_error = 100.0 * (1.0 - float(correct.mean()))
    fields = {"test_accuracy": 100.0 * float(correct.mean()), "test_error": test_error,
              "train_error": train_error, "train_test_gap": test_error - train_error}
    count = int(e.other_sizes_images) or vd.test_labels.shape[0]
    for size in e.other_sizes:
        predicted = _predict_labels(predict, params, vd.test_images[:count], int(size), eval_batch)
        fields[f"test_error_{int(size)}"] = 100.0 * float(np.mean(predicted != vd.test_labels[:count]))
    dev = outcome.last_eval if outcome.last_eval and "dev_accuracy" in outcome.last_eval else evaluate(params)
    fields.update({"dev_accuracy": dev["dev_accuracy"], "test_images": int(correct.shape[0]),
                   "other_sizes_images": min(count, int(correct.shape[0])),
                   "train_sizes": "/".join(map(str, sizes)), "params": vision.param_count(params),
                   "steps": outcome.steps, "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
                   "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason})
    if int(cfg.seed) == 0 and e.num_maps:
        attention_figures(model, fns.maps, params, vd, run_dir, int(e.num_maps))
    logging.info("[%s] test error %.2f%% (train %.2f%%) after %d steps, %.1f min", label, test_error, train_error,
                 fields["steps"], fields["train_minutes"])
    return fields


# -- figures -------------------------------------------------------------------------------------------------------


def figure_images(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` test images, the first of each class in label order, then the next ones."""
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(NUM_CLASSES) if np.any(labels == c)]
    rest = [i for i in range(labels.shape[0]) if i not in set(first)]
    return np.asarray((first + rest)[:count], np.int64)


def query_rows(position: np.ndarray, side_h: int, side_w: int, queries: tuple[tuple[int, int], ...]) -> np.ndarray:
    """DANet's position attention [N, S, S] (S = h w, row j = query j's weights over the keys) -> the rows of
    the given (i, j) query cells as maps [N, Q, h, w]."""
    rows = [position[:, i * side_w + j, :].reshape(-1, side_h, side_w) for i, j in queries]
    return np.stack(rows, axis=1)


def attention_figures(model: SmallResNet, maps_fn, params, vd: VisionData, run_dir: str, count: int) -> list[str]:
    """CBAM's spatial maps (every block) or DANet's position-attention rows over ``count`` test images, written
    into ``run_dir``; returns the paths (none for the other rows). ``maps_fn``: `Functions.maps` of ``model``."""
    if model.attention not in ("cbam", "danet"):
        return []
    from experiments import plots  # pylint: disable=import-outside-toplevel (matplotlib only here)

    index = figure_images(vd.test_labels, count)
    images = vd.test_images[index]
    logits, maps = maps_fn(params, image_batch(vd.test_images, index))
    predicted = np.asarray(jnp.argmax(logits, axis=-1))
    names = fashion_mnist.CLASS_NAMES
    row_titles = [f"{names[int(vd.test_labels[i])]} (pred. {names[int(p)]})" for i, p in zip(index, predicted)]
    if model.attention == "cbam":
        panels = []
        for spatial in maps["spatial"]:  # [N, h, w] per block, blown up to 28 x 28 by nearest neighbour
            spatial = np.asarray(spatial)
            rows = np.arange(NATIVE_SIZE) * spatial.shape[1] // NATIVE_SIZE
            cols = np.arange(NATIVE_SIZE) * spatial.shape[2] // NATIVE_SIZE
            panels.append(spatial[:, rows][:, :, cols])
        sides = [np.asarray(s).shape[1] for s in maps["spatial"]]
        path = os.path.join(run_dir, CBAM_FIGURE)
        plots.attention_overlays(images, np.stack(panels, axis=1), path, row_titles=row_titles,
                                 column_titles=[f"block {k + 1} M_s ({s}x{s})" for k, s in enumerate(sides)],
                                 title="CBAM spatial attention M_s per block (test images)")
        return [path]
    position = np.asarray(maps["position"])
    side = int(round(position.shape[1] ** 0.5))
    queries = ((side // 2, side // 2), (side // 4, side // 4))
    cell = NATIVE_SIZE / side
    box = [[round(i * cell), round(j * cell), round(cell), round(cell)] for i, j in queries]  # top, left, h, w
    boxes = np.asarray([box] * len(index))
    path = os.path.join(run_dir, DANET_FIGURE)
    plots.attention_overlays(images, query_rows(position, side, side, queries), path, row_titles=row_titles,
                             column_titles=[f"query cell ({i}, {j}) of {side}x{side}" for i, j in queries],
                             title="DANet position attention: one query's row over the keys (box: the query)",
                             boxes=boxes)
    return [path]


# -- report --------------------------------------------------------------------------------------------------------


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"attention": m.attention, "pooling": m.pool, "head": m.head}


def columns(other_sizes: tuple[int, ...]) -> tuple[tuple[str, str], ...]:
    """results.md's columns, with one test-error column per other test size."""
    return (("row", "row"), ("attention", "attention"), ("pooling", "pooling"), ("head", "head"),
            ("train sizes", "train_sizes"), (f"test error % ({NATIVE_SIZE})", "test_error"),
            ("Δ accuracy vs baseline, 95% CI", "test_accuracy_ci"), ("p", "test_accuracy_p"),
            *((f"test error % ({s})", f"test_error_{s}") for s in other_sizes),
            ("train error %", "train_error"), ("train-test gap", "train_test_gap"), ("paper", "paper"),
            ("seeds", "n_seeds"), ("params", "params"), ("steps", "steps"), ("train minutes", "train_minutes"))


def _figure_links(workdir: str, seeds: tuple[int, ...]) -> list[tuple[str, str]]:
    out = []
    for row, name, caption in (("cbam", CBAM_FIGURE, "CBAM's spatial attention M_s of each block (test images)"),
                               ("danet", DANET_FIGURE, "DANet's position attention: the weights of one query cell "
                                                       "(boxed) over all positions of the last map")):
        for seed in (0, *seeds):
            path = os.path.join(spec.run_dir(workdir, row, seed), name)
            if os.path.exists(path):
                out.append((os.path.relpath(path, workdir), f"{caption}, {row} seed {seed}"))
                break
    return out


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and loss_curves.png; returns the records in table order."""
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records)
    if tab is None:
        return []
    table, summary, baseline, verdicts = tab.table, tab.summary, tab.baseline, tab.verdicts
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    curves = runs_table.loss_curves_figure(workdir, rows, seeds[0], title=f"seed {seeds[0]}",
                                           loss_label="train cross-entropy (nats / image)")
    figures: list[Any] = ([curves] if curves else []) + _figure_links(workdir, seeds)
    t = config.train
    other = tuple(int(s) for s in config.eval.other_sizes)
    notes = [f"preset: {preset or '-'}; data: Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747), "
             f"{info.get('train_images', '?')} training images, {info.get('dev_images', '?')} held out for the dev "
             f"curve, {info.get('test_images', '?')} test images; train error on a fixed subset of "
             f"{info.get('train_eval_images', '?')} training images (at {NATIVE_SIZE}x{NATIVE_SIZE}); train-test "
             "gap = test error - train error (points)",
             f"test sizes: {NATIVE_SIZE} (the data's; every test image) and "
             f"{', '.join(map(str, other)) or 'none other'} (the first {table[0].get('other_sizes_images', '?')} "
             "test images, resized by jax.image.resize, bilinear); multi-size rows resize each training batch to a "
             f"size drawn from {tuple(t.sizes)} (He et al. 2014); the others train at {NATIVE_SIZE}",
             f"training: {t.num_steps} steps of {t.batch_size} images, Adam {t.learning_rate:g} cosine-decayed to 0, "
             f"gradient clip {t.grad_clip_norm:g}, the same for every row; widths {tuple(config.model.widths)}, "
             f"GroupNorm; SE / CBAM reduction {config.model.reduction} (the papers' 16 is too coarse at width 16)",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min"]
    if baseline:
        notes.append(f"Δ and p: test accuracy against {baseline} per seed on the same test images, "
                     f"`experiments.stats.paired_accuracy_test` (paired bootstrap CI, "
                     f"{config.eval.significance_samples} resamples; paired permutation p); union of CIs, largest p; "
                     "the train-test gap claim has no paired test (p '-')")
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=columns(other), summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading="Paper numbers (ImageNet / CIFAR-10 with far larger models; compare orderings, "
                                   "not values)")
    return table


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, vision_data: VisionData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: the images cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda vd: vd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=vision_data)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="it reads the Fashion-MNIST images from the cache")
