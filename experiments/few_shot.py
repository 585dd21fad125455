"""Prototypical networks (Snell et al. 2017, arXiv:1703.05175) against the Cross Attention Network (Hou et al.
2019, arXiv:1910.07677), 5-way 1-shot and 5-shot, on novel Fashion-MNIST classes.

    python -m experiments.few_shot                                        # 4 rows x 3 seeds, ~10 min
    python -m experiments.few_shot --preset=smoke --workdir=/tmp/few_shot_smoke
    python -m experiments.few_shot --rows=protonet_5shot,can_5shot --config.seeds=5
    python -m experiments.few_shot --config.data.train_classes='(5,6,7,8,9)' --config.data.test_classes='(0,1,2,3,4)'

Rows, data, presets, paper numbers and claims: `experiments/configs/few_shot.py`. Flags: `experiments/cli.py`
(--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains one episode per step in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (resumed when killed; re-reported when finished) and logs
step, loss, images/s and ETA.

The models (one `FewShotNet`, the same `experiments.vision.ConvEncoder` for every row):

* protonet: the encoder's 7 x 7 map averaged to a vector; `attention_jax.layers.few_shot.prototypes` (class
  means) and `prototypical_logits` (-||q - c_k||^2); trained by the episode's cross-entropy.
* can: the class feature map P_k is the mean of the class's K support maps; every (P_k, query map Q) pair goes
  through `attention_jax.layers.few_shot.CrossAttentionModule` (correlation layer + meta-fusion, P' = P (1 + A^p),
  Q' = Q (1 + A^q)); both outputs are averaged over positions and scored by ``cosine_scale`` x cosine (Hou et al.
  §3). Training minimises L = lambda L_nn + L_global: L_nn the episode's cross-entropy of those logits, L_global
  a 1x1 classifier of Q' (paired with its own class) over the meta-train classes, its cross-entropy averaged
  over the map's positions, lambda = 0.5. The weight and the position-wise global classifier follow the
  authors' released code (fewshot-CAN, train.py: ``loss1 + 0.5 * loss2`` with loss1 the global loss); the
  paper's printed total-loss equation was not reachable here to check. Deviations from that code: its
  nearest-neighbour loss classifies every query position during training (here: the pooled query, as at test
  time); no transductive inference (the paper's CAN+T); GroupNorm, not BatchNorm, in the encoder.

Outputs in the workdir: results.md / results.jsonl (per (row, seed): the meta-test accuracy, mean over the
episodes, with its 95% interval 1.96 x std / sqrt(episodes); the paired bootstrap CI and permutation p of each
CAN row against the prototypical row of its shot count over the same test queries; dev accuracy, params,
episodes, minutes), claims.jsonl, loss_curves.png (the episode cross-entropy L_nn and dev accuracy by step) and,
from each can row's seed-0 run, ``<row>/seed_0/attention_overlays.png``: A^p over the class's (mean) support
image and A^q over the query, for a few (class, query) pairs of the first test episode.
"""

from __future__ import annotations

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
from attention_jax.layers.few_shot import CrossAttentionModule, prototypes, prototypical_logits
from experiments import cli
from experiments import results
from experiments import training
from experiments import vision
from experiments.configs import few_shot as fs_config
from experiments.data import fashion_mnist
from experiments.training import report
from experiments.training import table as runs_table

FLAGS = flags.FLAGS
KINDS = ("protonet", "can")
IMAGE_SIZE = fashion_mnist.IMAGE_SIZE

EXPERIMENT = training.Experiment(
        name="few_shot",
        title="Snell et al. 2017 (arXiv:1703.05175) vs Hou et al. 2019 (arXiv:1910.07677): prototypical network vs "
              "Cross Attention Network, 5-way 1- / 5-shot on novel Fashion-MNIST classes",
        get_config=fs_config.get_config,
        presets=fs_config.PRESETS,
        rows=fs_config.ROWS,
        default_rows=fs_config.DEFAULT_ROWS,
        default_preset=fs_config.DEFAULT_PRESET,
        default_workdir="workdirs/few_shot",
        default_jobs=2,
)


# ----------------------------------------------------------------------------------------------------------------
# Episodes


@dataclasses.dataclass(frozen=True)
class Episodes:
    """E episodes of N-way K-shot classification with Q queries per class, as indices into one image pool.

    Attributes:
      support: [E, N, K] int64 pool indices; support[e, n] are the K shots of the episode's class n.
      query: [E, N Q] int64 pool indices, class-major: query[e, n Q + j] belongs to class n.
      classes: [E, N] int32, the original label of each episode class.
    """

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray

    @property
    def query_labels(self) -> np.ndarray:
        """[N Q] int32: the episode class (0..N-1) of each query, the same in every episode."""
        way = self.support.shape[1]
        return np.repeat(np.arange(way, dtype=np.int32), self.query.shape[1] // way)


def sample_episodes(labels: np.ndarray, classes: tuple[int, ...], *, way: int, shot: int, queries: int, count: int,
                    seed: Any) -> Episodes:
    """``count`` episodes: ``way`` of ``classes`` (in random order), each with ``queries`` query and ``shot``
    support images of its own, all distinct.

    Per episode and class, one permutation of the class's images gives the queries (its first ``queries``) and
    then the shots, and the draws do not depend on ``shot``: the same seed gives the same queries and classes
    for every shot count, and the 1-shot support is the first shot of the 5-shot support.

    Args:
      labels: [P] the pool's labels.
      classes: the labels episodes draw from (at least ``way``).
      way, shot, queries: N, K, Q.
      count: E.
      seed: anything `np.random.default_rng` takes.

    Raises:
      ValueError: if there are fewer than ``way`` classes or a class has fewer than ``shot + queries`` images.
    """
    labels = np.asarray(labels)
    if len(classes) < way:
        raise ValueError(f"{way}-way episodes need at least {way} classes, got {classes}")
    pools = [np.flatnonzero(labels == c) for c in classes]
    small = [(c, len(p)) for c, p in zip(classes, pools) if len(p) < shot + queries]
    if small:
        raise ValueError(f"class {small[0][0]} has {small[0][1]} images, fewer than shot + queries = "
                         f"{shot + queries}")
    rng = np.random.default_rng(seed)
    support = np.empty((count, way, shot), np.int64)
    query = np.empty((count, way, queries), np.int64)
    chosen = np.empty((count, way), np.int32)
    for e in range(count):
        picked = rng.permutation(len(classes))[:way]
        for n, ci in enumerate(picked):
            order = pools[ci][rng.permutation(len(pools[ci]))]
            query[e, n] = order[:queries]
            support[e, n] = order[queries:queries + shot]
        chosen[e] = np.asarray(classes, np.int32)[picked]
    return Episodes(support, query.reshape(count, way * queries), chosen)


@dataclasses.dataclass
class FewShotData:
    """The three image pools: meta-train (train split, train classes), dev (test split, train classes) and
    meta-test (test split, test classes)."""

    train: fashion_mnist.Split
    dev: fashion_mnist.Split
    test: fashion_mnist.Split
    train_classes: tuple[int, ...]
    test_classes: tuple[int, ...]
    info: dict[str, Any]


def _first_per_class(split: fashion_mnist.Split, classes: tuple[int, ...], limit: int) -> fashion_mnist.Split:
    """The split's images of ``classes``, at most the first ``limit`` of each (0: all), in their original order."""
    part = fashion_mnist.split_by_class(split, classes)
    if limit <= 0:
        return part
    keep = np.zeros(part.labels.shape, bool)
    for c in classes:
        keep[np.flatnonzero(part.labels == c)[:limit]] = True
    return fashion_mnist.Split(part.images[keep], part.labels[keep])


def prepare(config: ml_collections.ConfigDict, splits: dict[str, fashion_mnist.Split] | None = None) -> FewShotData:
    """The meta-train, dev and meta-test pools from Fashion-MNIST (default: `fashion_mnist.load`).

    Raises:
      experiments.data.DataError: the package cannot be obtained or is damaged.
    """
    d = config.data
    splits = fashion_mnist.load(d.data_dir) if splits is None else splits
    train_classes, test_classes = tuple(int(c) for c in d.train_classes), tuple(int(c) for c in d.test_classes)
    train = _first_per_class(splits["train"], train_classes, int(d.max_train_per_class))
    dev = _first_per_class(splits["test"], train_classes, int(d.dev_per_class))
    test = _first_per_class(splits["test"], test_classes, int(d.max_test_per_class))
    names = fashion_mnist.CLASS_NAMES
    info = {"corpus": "Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747)",
            "train_classes": [names[c] for c in train_classes], "test_classes": [names[c] for c in test_classes],
            "train_images": int(train.labels.shape[0]), "dev_images": int(dev.labels.shape[0]),
            "test_images": int(test.labels.shape[0])}
    return FewShotData(train, dev, test, train_classes, test_classes, info)


# ----------------------------------------------------------------------------------------------------------------
# Model


def _unit(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis (a zero vector stays zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


class FewShotNet(nn.Module):
    """A Conv-4-style encoder and a prototypical or CAN head.

    Methods: ``embed(images [B, 28, 28, 1]) -> maps [B, h, w, C]``; ``head(support_maps [N, K, h, w, C],
    query_maps [T, h, w, C]) -> (logits [T, N], aux)``; ``__call__(support [N, K, 28, 28, 1], query [T, 28, 28,
    1], global_labels [T]) -> (logits [T, N], aux)``, where aux holds for CAN the attention maps
    (``class_attention`` / ``query_attention`` [T, N, h, w]) and, from ``__call__``, ``global_logits`` [T, h, w,
    G] of the attended query map paired with its own class (``query_labels``).
    """

    kind: str
    features: tuple[int, ...]
    pool: tuple[bool, ...]
    groups: int = 8
    reduction: int = 6
    temperature: float = 0.025
    cosine_scale: float = 7.0
    num_global: int = 5

    def setup(self):
        self.encoder = vision.ConvEncoder(features=self.features, pool=self.pool, groups=self.groups)
        if self.kind == "can":
            self.cam = CrossAttentionModule(reduction=self.reduction, temperature=self.temperature)
            self.classifier = nn.Dense(self.num_global, **axes.dense_inits(axes.EMBED, None))

    def embed(self, images: jax.Array) -> jax.Array:
        return self.encoder(images)

    def head(self, support_maps: jax.Array, query_maps: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        way, shot, h, w, c = support_maps.shape
        t = query_maps.shape[0]
        if self.kind == "protonet":
            protos = prototypes(jnp.mean(support_maps, axis=(2, 3)))  # [N, C]: eq. 1 on pooled embeddings
            return prototypical_logits(jnp.mean(query_maps, axis=(1, 2)), protos), {}  # [T, N]
        class_maps = prototypes(support_maps.reshape(way, shot, h * w * c)).reshape(way, h, w, c)  # [N, h, w, C]
        p = jnp.broadcast_to(class_maps[None], (t, way, h, w, c)).reshape(t * way, h, w, c)  # pair (t, n)
        q = jnp.broadcast_to(query_maps[:, None], (t, way, h, w, c)).reshape(t * way, h, w, c)
        p_out, q_out, a_p, a_q = self.cam(p, q, return_attention=True)  # [T N, h, w, C] x 2, [T N, h, w] x 2
        score = jnp.sum(_unit(jnp.mean(p_out, axis=(1, 2))) * _unit(jnp.mean(q_out, axis=(1, 2))), axis=-1)
        logits = self.cosine_scale * score.reshape(t, way)  # [T, N]
        return logits, {"query_out": q_out.reshape(t, way, h, w, c), "class_attention": a_p.reshape(t, way, h, w),
                        "query_attention": a_q.reshape(t, way, h, w)}

    def __call__(self, support: jax.Array, query: jax.Array, query_labels: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        way, shot = support.shape[:2]
        maps = self.embed(jnp.concatenate([support.reshape((way * shot,) + support.shape[2:]), query]))
        logits, aux = self.head(maps[:way * shot].reshape((way, shot) + maps.shape[1:]), maps[way * shot:])
        if self.kind == "can":
            own = jnp.take_along_axis(aux["query_out"], query_labels[:, None, None, None, None], axis=1)[:, 0]
            aux["global_logits"] = self.classifier(own)  # [T, h, w, G], the paper's global classifier
        return logits, aux


def build_model(m: ml_collections.ConfigDict, num_global: int) -> FewShotNet:
    return FewShotNet(kind=m.kind, features=tuple(int(f) for f in m.features), pool=tuple(bool(p) for p in m.pool),
                      groups=int(m.groups), reduction=int(m.reduction), temperature=float(m.temperature),
                      cosine_scale=float(m.cosine_scale), num_global=int(num_global))


def map_side(m: ml_collections.ConfigDict) -> int:
    """The side of the encoder's square output map for 28 x 28 images."""
    side = IMAGE_SIZE
    for down in (tuple(m.pool) or (True,) * len(m.features)):
        side = side // 2 if down else side
    return side


# ----------------------------------------------------------------------------------------------------------------
# Checks


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    for name in ("train_classes", "test_classes"):
        value = d[name]
        if (not isinstance(value, (tuple, list)) or len(set(value)) != len(value)
                or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 10 for c in value)):
            raise training.ConfigError(f"--config.data.{name}={value!r} is not valid; fix: use distinct Fashion-MNIST "
                                       f"labels in [0, 10), e.g. --config.data.{name}='(0,1,2,3,4)'")
    overlap = sorted(set(d.train_classes) & set(d.test_classes))
    if overlap:
        raise training.ConfigError(f"classes {overlap} are both meta-train and meta-test classes; fix: make "
                                   "--config.data.train_classes and --config.data.test_classes disjoint")
    cli.int_at_least("data.way", d.way, 2)
    for name in ("train_classes", "test_classes"):
        if len(d[name]) < d.way:
            raise training.ConfigError(f"--config.data.{name} has {len(d[name])} classes, fewer than data.way="
                                       f"{d.way}; fix: list at least {d.way} classes or lower data.way")
    cli.int_at_least("data.queries", d.queries, 1)
    shots = []
    for row in rows:
        cfg = training.row_config(EXPERIMENT, config, row)
        cli.int_at_least("data.shot", cfg.data.shot, 1)
        shots.append(int(cfg.data.shot))
    cli.int_at_least("train.queries", config.train.queries, 1)
    need = max(shots, default=1) + max(int(d.queries), int(config.train.queries))
    for name in ("max_train_per_class", "max_test_per_class", "dev_per_class"):
        cli.int_at_least(f"data.{name}", d[name], 0)
        if 0 < d[name] < need:
            raise training.ConfigError(f"--config.data.{name}={d[name]} leaves fewer images per class than shot + "
                                       f"queries = {need}; fix: use 0 (all) or at least {need}")
    if d.dev_per_class == 0:
        raise training.ConfigError("--config.data.dev_per_class=0 leaves no dev images; fix: use at least "
                                   f"{need} (100 is the default)")
    cli.int_at_least("train.num_steps", t.num_steps, 0)
    cli.int_at_least("train.episodes_per_epoch", t.episodes_per_epoch, 1)
    for name in ("log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and train.max_minutes >= 0; fix: "
                                   "change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    cli.int_at_least("eval.test_episodes", e.test_episodes, 2)
    cli.int_at_least("eval.dev_episodes", e.dev_episodes, 1)
    cli.int_at_least("eval.episode_seed", e.episode_seed, 0)
    cli.int_at_least("eval.episodes_per_batch", e.episodes_per_batch, 1)
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.num_overlays", e.num_overlays, 0)
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    for row in rows:
        m = training.row_config(EXPERIMENT, config, row).model
        _validate_model(row, m)


def _validate_model(row: str, m: ml_collections.ConfigDict) -> None:
    if m.kind not in KINDS:
        raise training.ConfigError(f"row {row}: model.kind={m.kind!r} is not valid; fix: use one of {', '.join(KINDS)}")
    features, pool = tuple(m.features), tuple(m.pool)
    if not features or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features):
        raise training.ConfigError(f"--config.model.features={features!r} is not valid; fix: use a tuple of positive "
                                   "ints, e.g. '(64,64,64,64)'")
    if pool and len(pool) != len(features):
        raise training.ConfigError(f"--config.model.pool has {len(pool)} entries for {len(features)} blocks; fix: "
                                   "give one bool per block (or () to pool after every block)")
    cli.int_at_least("model.groups", m.groups, 1)
    bad = [f for f in features if f % min(m.groups, f)]
    if bad:
        raise training.ConfigError(f"--config.model.groups={m.groups} does not divide block width {bad[0]}; fix: use "
                                   "a group count that divides every width in model.features")
    side = map_side(m)
    if side < 1:
        raise training.ConfigError("--config.model.pool pools 28 x 28 images away to nothing; fix: pool after at "
                                   "most 4 blocks")
    if m.kind == "can":
        cli.int_at_least("model.reduction", m.reduction, 1)
        if m.reduction > side * side:
            raise training.ConfigError(f"--config.model.reduction={m.reduction} exceeds the map's {side * side} "
                                       f"positions ({side} x {side}); fix: use a reduction <= {side * side}")
        for name in ("temperature", "cosine_scale"):
            if isinstance(m[name], bool) or not m[name] > 0:
                raise training.ConfigError(f"--config.model.{name}={m[name]!r} is not valid; fix: use a number > 0")
        for name in ("nn_loss_weight", "global_loss_weight"):
            if isinstance(m[name], bool) or not m[name] >= 0:
                raise training.ConfigError(f"--config.model.{name}={m[name]!r} is not valid; fix: use a number >= 0")
        if m.nn_loss_weight == 0 and m.global_loss_weight == 0:
            raise training.ConfigError("model.nn_loss_weight and model.global_loss_weight are both 0, so CAN would not "
                                       "train; fix: set --config.model.nn_loss_weight=0.5")


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


def _episode_batch(pool: fashion_mnist.Split, episodes: Episodes, e: int, global_index: dict[int, int]
                   ) -> dict[str, np.ndarray]:
    """Episode ``e`` as float images: support [N, K, 28, 28, 1], query [N Q, 28, 28, 1] and labels [N Q]."""
    labels = episodes.query_labels
    return {"support": vision.to_float(pool.images[episodes.support[e]]),
            "query": vision.to_float(pool.images[episodes.query[e]]), "labels": labels,
            "global_labels": np.asarray([global_index[int(c)] for c in episodes.classes[e][labels]], np.int32)}


@dataclasses.dataclass(frozen=True)
class EvalFns:
    """The jitted evaluation functions of one model, shared by its evaluators (one compile per shape)."""

    embed: Any  # (params, images [B, 28, 28, 1]) -> maps [B, h, w, C]
    heads: Any  # (params, support maps [E, N, K, h, w, C], query maps [E, T, h, w, C]) -> logits [E, T, N]

    @classmethod
    def of(cls, model: FewShotNet) -> EvalFns:
        def heads(p, support_maps, query_maps):
            return jax.vmap(lambda s, q: model.apply({"params": p}, s, q, method=FewShotNet.head)[0])(
                support_maps, query_maps)

        return cls(jax.jit(lambda p, x: model.apply({"params": p}, x, method=FewShotNet.embed)), jax.jit(heads))


class EpisodeEvaluator:
    """Scores fixed episodes of one image pool: the pool is embedded once, then every episode's head runs on the
    stored maps (``eval.episodes_per_batch`` episodes per jitted call)."""

    def __init__(self, fns: EvalFns, pool: fashion_mnist.Split, episodes: Episodes, *, batch_size: int,
                 episodes_per_batch: int):
        self.pool, self.episodes = pool, episodes
        self.batch_size, self.per_batch = batch_size, episodes_per_batch
        self._embed, self._heads = fns.embed, fns.heads

    def maps(self, params) -> np.ndarray:
        """[P, h, w, C] float32 maps of the whole pool."""
        out = []
        for index, _ in vision.index_batches(self.pool.labels.shape[0], self.batch_size, shuffle=False):
            images = vision.to_float(vision.take(self.pool.images, index))
            out.append(np.asarray(self._embed(params, images))[index >= 0])
        return np.concatenate(out)

    def correct(self, params) -> np.ndarray:
        """[E, N Q] float64: 1 where the query's highest logit is its own class."""
        maps = self.maps(params)
        ep = self.episodes
        count, labels = ep.query.shape[0], ep.query_labels
        out = np.zeros(ep.query.shape, np.float64)
        for start in range(0, count, self.per_batch):
            idx = np.arange(start, start + self.per_batch)
            idx = np.minimum(idx, count - 1)  # the last batch repeats its final episode (dropped below)
            logits = np.asarray(self._heads(params, maps[ep.support[idx]], maps[ep.query[idx]]))  # [E', T, N]
            real = idx[:min(self.per_batch, count - start)]
            out[real] = (np.argmax(logits[:len(real)], axis=-1) == labels).astype(np.float64)
        return out


def train_run(cfg: ml_collections.ConfigDict, fd: FewShotData, run_dir: str, label: str, after_s: Any = None,
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and scores it on the fixed test episodes; returns its record fields."""
    m, t, d, e = cfg.model, cfg.train, cfg.data, cfg.eval
    way, shot, queries = int(d.way), int(d.shot), int(d.queries)
    train_queries = int(t.queries)
    global_index = {c: i for i, c in enumerate(fd.train_classes)}
    model = build_model(m, len(fd.train_classes))
    optimizer = optax.adam(t.learning_rate)
    first = _episode_batch(fd.train, sample_episodes(fd.train.labels, fd.train_classes, way=way, shot=shot,
                                                     queries=train_queries, count=1, seed=0), 0, global_index)
    # One jitted init: eager init compiles every initializer op on its own (seconds on a small CPU).
    params = jax.jit(model.init)(jax.random.key(int(cfg.seed)), first["support"], first["query"],
                                 first["labels"])["params"]
    opt_state = optimizer.init(params)
    nn_weight = float(m.nn_loss_weight) if m.kind == "can" else 1.0
    global_weight = float(m.global_loss_weight) if m.kind == "can" else 0.0

    def loss_fn(p, batch):
        logits, aux = model.apply({"params": p}, batch["support"], batch["query"], batch["labels"])
        episode = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])  # [T]
        total = nn_weight * jnp.mean(episode)
        if global_weight:
            g = aux["global_logits"]  # [T, h, w, G]
            labels = jnp.broadcast_to(batch["global_labels"][:, None, None], g.shape[:3])
            total = total + global_weight * jnp.mean(optax.softmax_cross_entropy_with_integer_labels(g, labels))
        return total, jnp.sum(episode)

    @jax.jit
    def step(p, o, carry, batch, rng):
        del rng
        (_, episode_sum), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        updates, o = optimizer.update(grads, o, p)
        # The logged loss is the episode cross-entropy L_nn, comparable between the rows.
        queries = jnp.asarray(batch["labels"].shape[0], jnp.float32)
        return optax.apply_updates(p, updates), o, carry, episode_sum, queries

    per_epoch = int(t.episodes_per_epoch)

    def epoch_batches(epoch: int):
        episodes = sample_episodes(fd.train.labels, fd.train_classes, way=way, shot=shot, queries=train_queries,
                                   count=per_epoch, seed=(int(cfg.seed), epoch))
        for i in range(per_epoch):  # throughput counts images
            yield _episode_batch(fd.train, episodes, i, global_index), float(way * (shot + train_queries))

    evaluator_args = dict(batch_size=int(e.batch_size), episodes_per_batch=int(e.episodes_per_batch))
    fns = EvalFns.of(model)
    dev_eval = EpisodeEvaluator(fns, fd.dev, sample_episodes(
        fd.dev.labels, fd.train_classes, way=way, shot=shot, queries=queries, count=int(e.dev_episodes),
        seed=int(e.episode_seed) + 1), **evaluator_args)

    def evaluate(p) -> dict[str, float]:
        return {"dev_accuracy": 100.0 * float(dev_eval.correct(p).mean())}

    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=jax.random.key(0), evaluate=evaluate if t.eval_every else None,
                                  eval_at_end=True, steps_per_epoch=per_epoch, label=label, after_s=after_s,
                                  unit="images", perplexity=False)
    test_episodes = sample_episodes(fd.test.labels, fd.test_classes, way=way, shot=shot, queries=queries,
                                    count=int(e.test_episodes), seed=int(e.episode_seed))
    correct = EpisodeEvaluator(fns, fd.test, test_episodes, **evaluator_args).correct(outcome.params)  # [E, N Q]
    runs_table.write_scores(run_dir, {"test_accuracy": correct.reshape(-1).tolist()})
    per_episode = 100.0 * correct.mean(axis=1)
    dev = outcome.last_eval or evaluate(outcome.params)
    if m.kind == "can" and int(cfg.seed) == 0 and int(e.num_overlays):
        _overlays(model, outcome.params, fd, test_episodes, run_dir, int(e.num_overlays), label)
    fields = {"shot": shot, "test_accuracy": float(per_episode.mean()),
              "test_ci95": float(1.96 * per_episode.std() / np.sqrt(per_episode.shape[0])),
              "dev_accuracy": float(dev["dev_accuracy"]), "test_episodes": int(correct.shape[0]),
              "test_queries": int(correct.size), "params": vision.param_count(outcome.params),
              "steps": outcome.steps, "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason}
    logging.info("[%s] meta-test accuracy %.2f%% +- %.2f over %d episodes after %d episodes of training, %.1f min",
                 label, fields["test_accuracy"], fields["test_ci95"], fields["test_episodes"], fields["steps"],
                 fields["train_minutes"])
    return fields


def overlay_pairs(way: int, queries: int, count: int) -> list[tuple[int, int]]:
    """(query index, episode class) pairs to draw: queries of successive classes, each with its own class and
    then with the next class (a wrong one)."""
    pairs = []
    for k in range(count):
        cls = (k // 2) % way
        pairs.append((cls * queries + (k // (2 * way)), cls if k % 2 == 0 else (cls + 1) % way))
    return pairs


def _overlays(model: FewShotNet, params, fd: FewShotData, episodes: Episodes, run_dir: str, count: int,
              label: str) -> None:
    """attention_overlays.png: A^p over the class's mean support image, A^q over the query, for ``count`` pairs
    of the first test episode."""
    from experiments import plots  # pylint: disable=import-outside-toplevel

    way, shot = episodes.support.shape[1:]
    queries = episodes.query.shape[1] // way
    batch = _episode_batch(fd.test, episodes, 0, {c: 0 for c in fd.test_classes})

    @jax.jit
    def episode(p, support, query):
        maps = model.apply({"params": p}, support, method=FewShotNet.embed)
        logits, aux = model.apply({"params": p}, maps.reshape((way, shot) + maps.shape[1:]),
                                  model.apply({"params": p}, query, method=FewShotNet.embed), method=FewShotNet.head)
        return jax.nn.softmax(logits, axis=-1), aux

    probs, aux = episode(params, batch["support"].reshape((way * shot, IMAGE_SIZE, IMAGE_SIZE, 1)), batch["query"])
    probs = np.asarray(probs)
    a_p, a_q = np.asarray(aux["class_attention"]), np.asarray(aux["query_attention"])
    names = fashion_mnist.CLASS_NAMES
    images, heat, titles = [], [], []
    for qi, n in overlay_pairs(way, queries, min(count, 2 * way * queries)):
        true = qi // queries
        cls_name, q_name = names[int(episodes.classes[0, n])], names[int(episodes.classes[0, true])]
        images.append(fd.test.images[episodes.support[0, n]].astype(np.float32).mean(axis=0))
        heat.append(a_p[qi, n][None])
        titles.append(f"class: {cls_name}\n({'its shot' if shot == 1 else f'mean of {shot} shots'}), A^p")
        images.append(fd.test.images[episodes.query[0, qi]].astype(np.float32))
        heat.append(a_q[qi, n][None])
        titles.append(f"query: {q_name}\nvs {cls_name}, A^q, p={probs[qi, n]:.2f}")
    plots.attention_overlays(np.stack(images), np.stack(heat), os.path.join(run_dir, "attention_overlays.png"),
                             row_titles=titles, title=f"{label}: CAN cross attention, test episode 0")


# ----------------------------------------------------------------------------------------------------------------
# Report


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"model": "CAN" if m.kind == "can" else "ProtoNet"}


COLUMNS = (("row", "row"), ("model", "model"), ("shot", "shot"), ("meta-test accuracy %", "test_accuracy"),
           ("± 95% CI over episodes", "test_ci95"), ("Δ vs ProtoNet (same shot), 95% CI", "test_accuracy_ci"),
           ("p", "test_accuracy_p"), ("dev accuracy %", "dev_accuracy"), ("paper", "paper"), ("seeds", "n_seeds"),
           ("params", "params"), ("episodes trained", "steps"), ("train minutes", "train_minutes"))


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl and loss_curves.png; returns the records in table order."""
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records, baselines=fs_config.BASELINES)
    if tab is None:
        return []
    table, summary, verdicts = tab.table, tab.summary, tab.verdicts
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    curves = runs_table.loss_curves_figure(workdir, rows, seeds[0], title=f"seed {seeds[0]}: episode cross-entropy "
                                           "L_nn (left), dev accuracy (right)",
                                           loss_label="train episode cross-entropy (nats / query image)")
    figures: list = [curves] if curves else []
    for row in rows:
        path = os.path.join(row, "seed_0", "attention_overlays.png")
        if os.path.exists(os.path.join(workdir, path)):
            figures.append((path, f"{row}: CAN's A^p over the class image and A^q over the query (seed 0)"))
    d, t, e = config.data, config.train, config.eval
    notes = [f"preset: {preset or '-'}; data: Fashion-MNIST; meta-train classes "
             f"{', '.join(info.get('train_classes', []))} ({info.get('train_images', '?')} train-split images); "
             f"meta-test classes {', '.join(info.get('test_classes', []))} ({info.get('test_images', '?')} "
             f"test-split images); dev: {info.get('dev_images', '?')} test-split images of the meta-train classes",
             f"episodes: {d.way}-way, K-shot (the row's), {d.queries} queries per class; test: "
             f"{e.test_episodes} episodes from seed {e.episode_seed}, the same for every row and seed of a shot "
             f"count (the 1- and 5-shot tables share their queries); dev: {e.dev_episodes} episodes",
             f"training: {t.num_steps} episodes (one per step), Adam {t.learning_rate:g}, the same for every row; "
             f"encoder {tuple(config.model.features)} with pools {tuple(config.model.pool)}; CAN: reduction "
             f"{config.model.reduction}, tau {config.model.temperature:g}, cosine scale {config.model.cosine_scale:g}, "
             f"L = {config.model.nn_loss_weight:g} L_nn + {config.model.global_loss_weight:g} L_global; the loss "
             "curves show L_nn only (CAN's L_global is left out so the rows compare)",
             "accuracy: per seed the mean over test episodes and ± 1.96 x std over episodes / sqrt(episodes); the "
             "table gives mean ± std over seeds of both; params include CAN's global classifier (used in training "
             "only)",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min"]
    if config.eval.significance == "bs":
        notes.append("Δ and p: each CAN row against the prototypical row of its shot count, per seed, over the same "
                     "test queries (`experiments.stats.paired_accuracy_test`: paired bootstrap CI, "
                     f"{e.significance_samples} resamples; paired permutation p; queries treated as independent, "
                     "though they share episodes); union of the seeds' CIs, largest p")
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=COLUMNS, summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading="Paper numbers (miniImageNet with other backbones; compare orderings, not values)")
    return table


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, data: FewShotData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: Fashion-MNIST cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda fd: fd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=data)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="Fashion-MNIST comes from its Debian package")
