"""COSNet's co-attention (Lu et al. 2019, CVPR; arXiv:2001.06810) against a plain siamese network on canvas pairs.

    python -m experiments.co_attention                            # siamese and cosnet x 3 seeds ("small")
    python -m experiments.co_attention --preset=smoke --workdir=/tmp/co_attention_smoke
    python -m experiments.co_attention --rows=siamese,cosnet,cosnet_ungated   # adds the ungated row
    python -m experiments.co_attention --rows=all --config.seeds=5   # also the symmetric and channel-wise W

Rows, data, presets, paper numbers and claims: `experiments/configs/co_attention.py`; the task:
`experiments/data/shared_item.py` (canvases A and B of 3 real Fashion-MNIST items that share exactly one class).
Flags: `experiments/cli.py` (--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (resumed when killed; re-reported when finished) and logs step,
loss, pairs/s and ETA.

Paper numbers: the COSNet ablation's siamese-baseline numbers (DAVIS-16) were not found from this machine, so the
claims (co-attention beats the plain siamese network) carry no number and say "unchecked"; see the config.

The model (`PairNet`): one `experiments.vision.ConvEncoder` over both canvases (siamese weights) gives maps
F_a, F_b [B, 4, 12, C]; the co-attention rows replace them by `CoAttention`'s X_a = [Z_a * f_g(Z_a); F_a] and X_b
(2C channels), the siamese row keeps them. Then the same two heads for every row:

* class: g_a, g_b = the maps' global max pools (``model.pooling=mean`` for means); [g_a, g_b, g_a * g_b,
  |g_a - g_b|] -> MLP -> 10 logits;
* slot: per position i of B, [x_b(i), x_b(i) * g_a] -> MLP -> a score s(i); slot k's logit is the log-sum-exp
  of s over the positions whose receptive-field centre lies in B's k-th item box (the boxes are given, like
  proposals; which one holds the shared class is what the head must find).

Loss: the two cross-entropies, summed. Outputs in the workdir: results.md / results.jsonl (per (row, seed): test
class and slot accuracy, each with the paired bootstrap CI and permutation p against siamese on the same test
pairs), claims.jsonl, loss_curves.png (training loss, dev class and slot accuracy) and, per co-attention row,
``<row>/seed_<n>/attention_overlays.png`` (for test pairs: the co-attention weights from the centre of the shared
item in A over B, and back; linked in results.md for the first seed).

Timing: the default table (2 rows x 3 seeds, ``--jobs=2``) took 7.6 min on the idle 2-core machine
(2026-12-04), building the pairs included. A training step of 32 pairs on the 32 x 96 canvas costs about 0.23
CPU seconds (siamese and cosnet alike). Building the pairs the first time takes about a minute
(`experiments.data.canvases.place_items` rejection-samples the places); they are cached in
``<data_dir>/shared_item/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attention_jax.core import axes
from attention_jax.layers.co_attention import VARIANTS, CoAttention
from experiments import cli
from experiments import results
from experiments import training
from experiments import vision
from experiments.configs import co_attention as co_config
from experiments.data import canvases
from experiments.data import fashion_mnist
from experiments.data import shared_item
from experiments.training import report, spec
from experiments.training import table as runs_table

CO_ATTENTION = ("none", "gated", "ungated")
POOLINGS = ("max", "mean")
MAX_POOLS = 4  # stride 16: every 28-pixel item box still holds a position's centre
OVERLAYS_FILE = "attention_overlays.png"
_CACHE_VERSION = 2

EXPERIMENT = training.Experiment(
        name="co_attention",
        title="Lu et al. 2019 (COSNet, arXiv:2001.06810): co-attention vs a plain siamese network on Fashion-MNIST "
              "canvas pairs sharing one item",
        get_config=co_config.get_config,
        presets=co_config.PRESETS,
        rows=co_config.ROWS,
        default_rows=co_config.DEFAULT_ROWS,
        preset_rows=co_config.PRESET_ROWS,
        default_preset=co_config.DEFAULT_PRESET,
        default_workdir="workdirs/co_attention",
        default_jobs=2,
)


def _mlp(x: jax.Array, hidden: int, out: int, name: str) -> jax.Array:
    x = nn.relu(nn.Dense(hidden, **axes.dense_inits(axes.EMBED, axes.MLP), name=f"{name}_hidden")(x))
    return nn.Dense(out, **axes.dense_inits(axes.MLP, None), name=f"{name}_out")(x)


class PairNet(nn.Module):
    """Siamese encoder, optional co-attention, class and slot heads (see the module docstring).

    Attributes:
      co_attention: "none" (the plain siamese network), "gated" or "ungated".
      variant: `CoAttention`'s W ("vanilla", "symmetric", "channel").
      features, pool: the `ConvEncoder`'s block widths and pools.
      hidden: the heads' hidden width.
      pooling: the global pooling of each map, "max" (did an item of this kind occur anywhere?) or "mean".
      num_classes: the class head's outputs.
    """

    co_attention: str = "gated"
    variant: str = "vanilla"
    features: tuple[int, ...] = (16, 32, 32, 32)
    pool: tuple[bool, ...] = (True, True, True, False)
    hidden: int = 64
    pooling: str = "max"
    num_classes: int = len(fashion_mnist.CLASS_NAMES)

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array, slot_masks: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
        """Class and slot logits of a batch of pairs.

        Args:
          a, b: [B, H, W, 1] float canvases.
          slot_masks: [B, K, h, w] bool, which positions of B's map belong to each of B's K item boxes.

        Returns:
          (class logits [B, num_classes], slot logits [B, K], affinity [B, S_b, S_a] float32 or None without
          co-attention).
        """
        if a.shape != b.shape:
            raise ValueError(f"canvases A and B must have one shape: {a.shape=} {b.shape=}")
        maps = vision.ConvEncoder(self.features, self.pool, name="encoder")(jnp.concatenate([a, b], axis=0))
        fa, fb = jnp.split(maps, 2, axis=0)  # [B, h, w, C] each, one encoder for both canvases
        affinity = None
        if self.co_attention != "none":
            fa, fb, affinity = CoAttention(gated=self.co_attention == "gated", variant=self.variant,
                                           name="co_attention")(fa, fb, return_affinity=True)  # [B, h, w, 2C]
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        pool = jnp.max if self.pooling == "max" else jnp.mean
        ga, gb = pool(fa, axis=(1, 2)), pool(fb, axis=(1, 2))  # [B, C']
        class_logits = _mlp(jnp.concatenate([ga, gb, ga * gb, jnp.abs(ga - gb)], axis=-1), self.hidden,
                            self.num_classes, "class")
        local = jnp.concatenate([fb, fb * ga[:, None, None, :]], axis=-1)  # [B, h, w, 2C']
        scores = _mlp(local, self.hidden, 1, "slot")[..., 0].astype(jnp.float32)  # [B, h, w]
        if slot_masks.shape[2:] != scores.shape[1:]:
            raise ValueError(f"slot_masks must be [B, K, h, w] with B's map size {scores.shape[1:]}, got "
                             f"{slot_masks.shape}")
        floor = jnp.finfo(jnp.float32).min
        masked = jnp.where(slot_masks, scores[:, None], floor)  # [B, K, h, w]
        slot_logits = jax.nn.logsumexp(masked.reshape(masked.shape[:2] + (-1,)), axis=-1)  # [B, K]
        return class_logits, slot_logits, affinity


def map_size(height: int, width: int, pool: tuple[bool, ...]) -> tuple[int, int, int]:
    """(h, w, stride) of the encoder's map for an H x W canvas (each 2x2 max pool floors)."""
    h, w, stride = int(height), int(width), 1
    for down in pool:
        if down:
            h, w, stride = h // 2, w // 2, stride * 2
    return h, w, stride


def slot_masks(boxes: np.ndarray, h: int, w: int, stride: int) -> np.ndarray:
    """[N, K, 4] boxes (top, left, height, width) -> [N, K, h, w] bool: the map positions whose receptive-field
    centre (stride * index + (stride - 1) / 2) lies inside each box."""
    ys = stride * np.arange(h) + (stride - 1) / 2  # [h]
    xs = stride * np.arange(w) + (stride - 1) / 2  # [w]
    top, left, bh, bw = (boxes[..., i, None].astype(np.float64) for i in range(4))  # [N, K, 1] each
    in_y = (ys >= top) & (ys < top + bh)  # [N, K, h]
    in_x = (xs >= left) & (xs < left + bw)  # [N, K, w]
    return in_y[..., :, None] & in_x[..., None, :]


@dataclasses.dataclass
class PairData:
    """The three sets of pairs and what the report says about them."""

    train: shared_item.Pairs
    dev: shared_item.Pairs
    test: shared_item.Pairs
    info: dict[str, Any]


def _pairs_key(d: ml_collections.ConfigDict) -> str:
    fields = {k: d[k] for k in ("num_items", "height", "width", "min_dx", "train_pairs", "dev_pairs", "test_pairs",
                                "seed")}
    text = json.dumps({"version": _CACHE_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_pairs(path: str, sets: dict[str, shared_item.Pairs]) -> None:
    arrays = {f"{name}/{field.name}": getattr(p, field.name) for name, p in sets.items()
              for field in dataclasses.fields(p)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a --jobs worker never reads half a file


def _load_pairs(path: str) -> dict[str, shared_item.Pairs] | None:
    try:
        with np.load(path) as saved:
            return {name: shared_item.Pairs(**{f.name: saved[f"{name}/{f.name}"]
                                              for f in dataclasses.fields(shared_item.Pairs)})
                    for name in ("train", "dev", "test")}
    except (OSError, KeyError, ValueError) as err:
        logging.warning("rebuilding the pairs: %s is unreadable (%s)", path, err)
        return None


def build_pairs(d: ml_collections.ConfigDict, splits: dict[str, fashion_mnist.Split]) -> dict[str, shared_item.Pairs]:
    """Train pairs from the train split; dev and test pairs from two disjoint halves of the test split."""
    half = np.random.default_rng(1234).permutation(len(splits["test"].labels))
    cut = len(half) // 2
    dev_split = fashion_mnist.Split(splits["test"].images[half[:cut]], splits["test"].labels[half[:cut]])
    test_split = fashion_mnist.Split(splits["test"].images[half[cut:]], splits["test"].labels[half[cut:]])
    kw = dict(items=int(d.num_items), height=int(d.height), width=int(d.width), min_dx=int(d.min_dx))
    return {"train": shared_item.shared_item_pairs(splits["train"], int(d.train_pairs), seed=int(d.seed), **kw),
            "dev": shared_item.shared_item_pairs(dev_split, int(d.dev_pairs), seed=int(d.seed) + 1, **kw),
            "test": shared_item.shared_item_pairs(test_split, int(d.test_pairs), seed=int(d.seed) + 2, **kw)}


def prepare(config: ml_collections.ConfigDict, splits: dict[str, fashion_mnist.Split] | None = None) -> PairData:
    """The train / dev / test pairs: from ``splits`` (tests) or the real Fashion-MNIST (cached once built).

    Raises:
      experiments.data.DataError: Fashion-MNIST cannot be obtained.
    """
    d = config.data
    sets = None
    path = os.path.join(os.path.expanduser(d.data_dir), "shared_item", f"pairs_{_pairs_key(d)}.npz")
    cached = splits is None and bool(d.cache)
    if cached and os.path.exists(path):
        sets = _load_pairs(path)
    if sets is None:
        sets = build_pairs(d, fashion_mnist.load(d.data_dir) if splits is None else splits)
        if cached:
            _save_pairs(path, sets)
    info = {"source": "Fashion-MNIST" if splits is None else "given splits", "items": int(d.num_items),
            "canvas": [int(d.height), int(d.width)], **{f"{k}_pairs": len(p) for k, p in sets.items()},
            "test_slot_counts": np.bincount(sets["test"].slot_b, minlength=int(d.num_items)).tolist(),
            "test_class_counts": np.bincount(sets["test"].shared_class, minlength=10).tolist(),
            "cache": path if cached else ""}
    return PairData(sets["train"], sets["dev"], sets["test"], info)


def build_model(m: ml_collections.ConfigDict) -> PairNet:
    return PairNet(co_attention=m.co_attention, variant=m.variant, features=tuple(int(x) for x in m.features),
                   pool=tuple(bool(x) for x in m.pool), hidden=int(m.hidden), pooling=m.pooling)


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    cli.int_at_least("data.num_items", d.num_items, 1)
    if d.num_items > 5:
        raise training.ConfigError(f"--config.data.num_items={d.num_items} needs {2 * d.num_items - 1} distinct "
                                   "classes, more than Fashion-MNIST's 10; fix: use at most 5 items")
    cli.int_at_least("data.height", d.height, shared_item.IMAGE_SIZE)
    cli.int_at_least("data.width", d.width, shared_item.IMAGE_SIZE)
    cli.int_at_least("data.min_dx", d.min_dx, 1)
    for name in ("train_pairs", "dev_pairs", "test_pairs"):
        cli.int_at_least(f"data.{name}", d[name], 2)
    cli.int_at_least("data.seed", d.seed, 0)
    try:
        probe = np.zeros((d.num_items, shared_item.IMAGE_SIZE, shared_item.IMAGE_SIZE), np.uint8)
        canvases.place_items(probe, d.height, d.width, np.random.default_rng(0), min_dx=d.min_dx)
    except ValueError as err:
        raise training.ConfigError(f"--config.data.height={d.height} x width={d.width} cannot hold {d.num_items} "
                                   f"items ({' '.join(str(err).split())}); fix: enlarge the canvas") from None
    cli.int_at_least("train.batch_size", t.batch_size, 1)
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.grad_clip_norm < 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and grad_clip_norm, max_minutes >= 0; "
                                   "fix: change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.num_overlays", e.num_overlays, 0)
    if e.num_overlays > d.test_pairs:
        raise training.ConfigError(f"--config.eval.num_overlays={e.num_overlays} exceeds the {d.test_pairs} test "
                                   "pairs; fix: lower it")
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    for row in rows:
        m = training.row_config(EXPERIMENT, config, row).model
        if m.co_attention not in CO_ATTENTION:
            raise training.ConfigError(f"row {row}: --config.model.co_attention={m.co_attention!r} is not valid; fix: "
                                       f"use one of {', '.join(CO_ATTENTION)}")
        if m.variant not in VARIANTS:
            raise training.ConfigError(f"row {row}: --config.model.variant={m.variant!r} is not valid; fix: use one "
                                       f"of {', '.join(VARIANTS)}")
        features, pool = tuple(m.features), tuple(m.pool)
        if not features or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features):
            raise training.ConfigError(f"row {row}: --config.model.features={features!r} is not valid; fix: use a "
                                       "tuple of positive ints, e.g. '(16,32,32,32)'")
        if len(pool) != len(features) or any(not isinstance(p, bool) for p in pool):
            raise training.ConfigError(f"row {row}: --config.model.pool={pool!r} must hold one bool per block of "
                                       f"features={features!r}; fix: pass as many True/False as blocks")
        if sum(pool) > MAX_POOLS:
            raise training.ConfigError(f"row {row}: --config.model.pool={pool!r} pools {sum(pool)} times; fix: pool at "
                                       f"most {MAX_POOLS} times, so that every item box holds a map position")
        h, w, _ = map_size(d.height, d.width, pool)
        if h < 1 or w < 1:
            raise training.ConfigError(f"row {row}: the {d.height} x {d.width} canvas pools to nothing; fix: pool "
                                       "less or enlarge the canvas")
        cli.int_at_least("model.hidden", m.hidden, 1)
        if m.pooling not in POOLINGS:
            raise training.ConfigError(f"row {row}: --config.model.pooling={m.pooling!r} is not valid; fix: use one "
                                       f"of {', '.join(POOLINGS)}")


def _batch(pairs: shared_item.Pairs, index: np.ndarray, weights: np.ndarray, size: tuple[int, int, int]
           ) -> dict[str, np.ndarray]:
    h, w, stride = size
    return {"a": vision.to_float(vision.take(pairs.a, index)), "b": vision.to_float(vision.take(pairs.b, index)),
            "masks": slot_masks(vision.take(pairs.boxes_b, index), h, w, stride),
            "classes": vision.take(pairs.shared_class, index).astype(np.int32),
            "slots": vision.take(pairs.slot_b, index).astype(np.int32), "weights": weights}


def _predict_all(predict, params, pairs: shared_item.Pairs, batch_size: int, size) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and slot of every pair, in order."""
    classes = np.zeros((len(pairs),), np.int64)
    slots = np.zeros((len(pairs),), np.int64)
    for index, weights in vision.index_batches(len(pairs), batch_size, shuffle=False):
        batch = _batch(pairs, index, weights, size)
        class_logits, slot_logits, _ = predict(params, batch["a"], batch["b"], batch["masks"])
        real = index >= 0
        classes[index[real]] = np.argmax(np.asarray(class_logits), -1)[real]
        slots[index[real]] = np.argmax(np.asarray(slot_logits), -1)[real]
    return classes, slots


def train_run(cfg: ml_collections.ConfigDict, pd: PairData, run_dir: str, label: str, after_s: Any = None
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and evaluates it; returns its record fields."""
    m, t, d = cfg.model, cfg.train, cfg.data
    model = build_model(m)
    size = map_size(d.height, d.width, tuple(m.pool))
    optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm else optax.identity(),
                            optax.adam(t.learning_rate))
    first = _batch(pd.train, np.arange(2), np.ones((2,), np.float32), size)
    # jitted: one compile instead of dozens of eagerly dispatched ops (3x faster on the CPU)
    params = jax.jit(model.init)(jax.random.key(int(cfg.seed)), first["a"], first["b"], first["masks"])["params"]
    opt_state = optimizer.init(params)

    def loss_fn(p, batch):
        class_logits, slot_logits, _ = model.apply({"params": p}, batch["a"], batch["b"], batch["masks"])
        losses = (optax.softmax_cross_entropy_with_integer_labels(class_logits, batch["classes"])
                  + optax.softmax_cross_entropy_with_integer_labels(slot_logits, batch["slots"]))
        return jnp.sum(losses * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0), (
            jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"]))

    @jax.jit
    def step(p, o, carry, batch, rng):
        del rng
        (_, (loss_sum, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, carry, loss_sum, weight

    @jax.jit
    def predict(p, a, b, masks):
        return model.apply({"params": p}, a, b, masks)

    def epoch_batches(epoch: int):
        for index, weights in vision.index_batches(len(pd.train), int(t.batch_size), shuffle=True,
                                                   seed=int(cfg.seed) * 100003 + epoch):
            yield _batch(pd.train, index, weights, size), float(weights.sum())  # throughput in pairs

    eval_batch = int(cfg.eval.batch_size)

    def evaluate(p) -> dict[str, float]:
        classes, slots = _predict_all(predict, p, pd.dev, eval_batch, size)
        return {"dev_accuracy": 100.0 * float(np.mean(classes == pd.dev.shared_class)),
                "dev_slot_accuracy": 100.0 * float(np.mean(slots == pd.dev.slot_b))}

    steps_per_epoch = -(-len(pd.train) // int(t.batch_size))
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(0), evaluate=evaluate if t.eval_every else None,
                                  eval_at_end=True, steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  unit="pairs", perplexity=False)
    classes, slots = _predict_all(predict, outcome.params, pd.test, eval_batch, size)
    class_ok = (classes == pd.test.shared_class).astype(np.float64)
    slot_ok = (slots == pd.test.slot_b).astype(np.float64)
    runs_table.write_scores(run_dir, {"test_accuracy": class_ok.tolist(), "test_slot_accuracy": slot_ok.tolist()})
    dev = evaluate(outcome.params)
    if m.co_attention != "none" and cfg.eval.num_overlays:
        _overlays(predict, outcome.params, pd.test, int(cfg.eval.num_overlays), eval_batch, size,
                  os.path.join(run_dir, OVERLAYS_FILE), f"{label}: co-attention weights")
    fields = {"test_accuracy": 100.0 * float(class_ok.mean()), "test_slot_accuracy": 100.0 * float(slot_ok.mean()),
              **dev, "test_pairs": len(pd.test), "params": vision.param_count(outcome.params),
              "steps": outcome.steps, "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
              "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason}
    logging.info("[%s] test class accuracy %.2f%%, slot accuracy %.2f%% after %d steps, %.1f min", label,
                 fields["test_accuracy"], fields["test_slot_accuracy"], fields["steps"], fields["train_minutes"])
    return fields


def _centre_index(box: np.ndarray, size: tuple[int, int, int]) -> int:
    """The flat map position (row-major) whose cell holds the centre of a box (top, left, height, width)."""
    h, w, stride = size
    r = min(int((box[0] + box[2] / 2) // stride), h - 1)
    c = min(int((box[1] + box[3] / 2) // stride), w - 1)
    return r * w + c


def attention_from_centres(affinity: np.ndarray, pairs: shared_item.Pairs, rows: np.ndarray,
                           size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The co-attention weights from each pair's shared item centre in A over B, and from B's over A.

    Args:
      affinity: [N, S_b, S_a] the layer's affinity S of the pairs ``rows``.
      pairs: the pairs.
      rows: [N] their indices in ``pairs``.
      size: (h, w, stride) of the map.

    Returns:
      (a_to_b [N, h, w]: the softmax over B's positions of S[:, j_a], j_a the cell of the shared item's centre
      in A; b_to_a [N, h, w]: the softmax over A's positions of S[i_b, :]), each summing to 1, the weights the
      layer's summaries Z_a and Z_b use there.
    """
    h, w, _ = size
    a_to_b, b_to_a = [], []
    for n, i in enumerate(rows):
        j_a = _centre_index(pairs.boxes_a[i, pairs.slot_a[i]], size)
        i_b = _centre_index(pairs.boxes_b[i, pairs.slot_b[i]], size)
        col = affinity[n, :, j_a].astype(np.float64)  # over B
        row = affinity[n, i_b, :].astype(np.float64)  # over A
        a_to_b.append(np.exp(col - col.max()) / np.exp(col - col.max()).sum())
        b_to_a.append(np.exp(row - row.max()) / np.exp(row - row.max()).sum())
    return np.stack(a_to_b).reshape(-1, h, w), np.stack(b_to_a).reshape(-1, h, w)


def _overlays(predict, params, pairs: shared_item.Pairs, count: int, batch_size: int, size, path: str,
              title: str) -> None:
    """attention_overlays.png: per test pair, B under the weights from A's shared item centre, then A under the
    weights from B's, the shared item outlined."""
    from experiments import plots  # pylint: disable=import-outside-toplevel

    rows = np.arange(count)
    index = np.concatenate([rows, np.full((max(batch_size - count, 0),), -1, np.int64)])[:max(batch_size, count)]
    batch = _batch(pairs, index, (index >= 0).astype(np.float32), size)
    _, _, affinity = predict(params, batch["a"], batch["b"], batch["masks"])
    a_to_b, b_to_a = attention_from_centres(np.asarray(affinity)[:count], pairs, rows, size)
    images, maps, boxes, titles = [], [], [], []
    names = fashion_mnist.CLASS_NAMES
    for n, i in enumerate(rows):
        cls = names[int(pairs.shared_class[i])]
        images += [pairs.b[i], pairs.a[i]]
        maps += [a_to_b[n][None], b_to_a[n][None]]
        boxes += [pairs.boxes_b[i, pairs.slot_b[i]][None], pairs.boxes_a[i, pairs.slot_a[i]][None]]
        titles += [f"pair {i}: B, from the {cls} in A", f"pair {i}: A, from the {cls} in B"]
    plots.attention_overlays(np.stack(images), np.stack(maps), path, row_titles=titles,
                             column_titles=["co-attention weights"], title=title, boxes=np.stack(boxes))


def _curves_figure(workdir: str, rows: list[str], seed: int) -> str | None:
    """loss_curves.png: training loss, dev class and dev slot accuracy against step for one seed's runs."""
    return runs_table.loss_curves_figure(
        workdir, rows, seed, title=f"seed {seed}",
        panels=(("loss", "train loss (class + slot cross-entropy, nats / pair)"),
                ("dev_accuracy", "dev class accuracy %"), ("dev_slot_accuracy", "dev slot accuracy %")))


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"co_attention": m.co_attention, "W": m.variant if m.co_attention != "none" else "-"}


COLUMNS = (("row", "row"), ("co-attention", "co_attention"), ("W", "W"),
           ("test class accuracy %", "test_accuracy"), ("Δ class vs baseline, 95% CI", "test_accuracy_ci"),
           ("p (class)", "test_accuracy_p"), ("test slot accuracy %", "test_slot_accuracy"),
           ("Δ slot, 95% CI", "test_slot_accuracy_ci"), ("p (slot)", "test_slot_accuracy_p"),
           ("dev class accuracy %", "dev_accuracy"), ("paper", "paper"), ("seeds", "n_seeds"), ("params", "params"),
           ("steps", "steps"), ("train minutes", "train_minutes"))


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and loss_curves.png; returns the records in table order."""
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records,
                              metrics={"test_accuracy": 100.0, "test_slot_accuracy": 100.0})
    if tab is None:
        return []
    table, summary, baseline, verdicts = tab.table, tab.summary, tab.baseline, tab.verdicts
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    curves = _curves_figure(workdir, rows, seeds[0])
    figures: list[Any] = [curves] if curves else []
    for row in rows:
        overlay = os.path.join(spec.run_dir(workdir, row, seeds[0]), OVERLAYS_FILE)
        if os.path.exists(overlay):
            figures.append((os.path.relpath(overlay, workdir),
                            f"{row}, seed {seeds[0]}: for test pairs, the co-attention weights from the centre of the "
                            "shared item in A over B, then from B's over A (the shared item outlined)"))
    d, t = config.data, config.train
    notes = [f"preset: {preset or '-'}; data: {info.get('source', '?')} canvases of {d.num_items} items on "
             f"{d.height} x {d.width}, pairs sharing exactly one class (two different images of it): train "
             f"{info.get('train_pairs', '?')} (train split) / dev {info.get('dev_pairs', '?')} / test "
             f"{info.get('test_pairs', '?')} (two disjoint halves of the test split), pair seed {d.seed}; chance: "
             f"10% class, {100 / d.num_items:.0f}% slot (test slots {info.get('test_slot_counts', '?')})",
             f"training: {t.num_steps} steps of {t.batch_size} pairs, Adam {t.learning_rate:g}, clip "
             f"{t.grad_clip_norm:g}, loss = class + slot cross-entropy, the same for every row; test after the last "
             "step",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min"]
    if baseline:
        notes.append(f"Δ and p: against {baseline} per seed on the same test pairs, "
                     f"`experiments.stats.paired_accuracy_test` (paired bootstrap CI, "
                     f"{config.eval.significance_samples} resamples; paired permutation p); union of CIs, largest p")
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=COLUMNS, summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading=("Paper numbers (DAVIS-16 video segmentation, another task; compare orderings, not "
                                     "values)"))
    return table


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, pair_data: PairData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: Fashion-MNIST cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda pd: pd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=pair_data)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="its pairs are built from Fashion-MNIST, see --config.data.*")
