"""Show, Attend and Tell (Xu et al. 2015, arXiv:1502.03044): soft against hard attention, captioning canvases of
real Fashion-MNIST items.

    python -m experiments.glimpse_captioning                                  # 3 rows x 3 seeds
    python -m experiments.glimpse_captioning --preset=smoke --workdir=/tmp/glimpse_smoke
    python -m experiments.glimpse_captioning --rows=soft,hard --config.seeds=5

Presets: ``smoke`` (1 seed, 30 steps, small canvas sets and encoder: about 1 min with its jit compiles) and
``small`` (the default: 3 seeds x 3 rows, 500 steps of 32 canvases each; 8.1 min measured with ``--jobs=2`` on
the idle 2-core machine, see `experiments/configs/glimpse_captioning.py`). Rows: soft (baseline), hard, gumbel, and
on request soft_no_penalty. Paper: Flickr8k BLEU-4 soft 19.5, hard 21.3 (Xu et al. 2015, Table 1; as a
re-implementation quotes it, not checked against the paper's own text).

Rows, data, presets, the paper's numbers and the claim: `experiments/configs/glimpse_captioning.py`. Flags:
`experiments/cli.py` (--preset, --workdir, --rows, --config.*, --jobs). Each (row, seed) run trains in
``<workdir>/<row>/seed_<n>/`` with orbax checkpoints (resumed when killed; re-reported when finished) and logs
step, caption NLL, canvases/s and ETA.

Task: a 64 x 96 canvas holds 3 items of Fashion-MNIST (`experiments.data.canvases.caption_canvases`; train
canvases from the training split, dev canvases from the first half of the test split, test canvases from the
second half, fixed seeds); its caption is the items' classes left to right, K = 3 tokens (no end token; a start
token feeds the first step). Decoding is greedy.

Model (`GlimpseCaptioner`): `experiments.vision.ConvEncoder` -> annotations [B, L, D]; h_0, c_0 = tanh(f_init(mean
annotation)), one Dense each (the paper's f_init,h and f_init,c); at step t the attention
(`ShowAttendTellAttention`, mode = the row's) reads h_{t-1} and gives z_t; the LSTM (`seq2seq.make_cell`, boxed
with logical axes) reads [E y_{t-1}, z_t]; the deep output of eq. 7, p(y_t) = softmax(L_o tanh(E y_{t-1} + L_h h_t
+ L_z z_t)) (with the tanh of the released code).

Training (`train_run`): soft minimises NLL + lambda * the doubly stochastic penalty (eq. 14); hard maximises the
REINFORCE surrogate of eq. 12 (`reinforce_surrogate`: log p(y|s,a), lambda_r (log p(y|s,a) - b) log p(s|a) and
lambda_e H[s]) with b the moving average of `update_baseline`, kept in the optimiser state so that it is
checkpointed and survives a resume; gumbel minimises the NLL through the straight-through sample. The logged
"loss" is the caption NLL (nats per caption) in every row, so the curves compare.

Outputs in the workdir: results.md / results.jsonl (per (row, seed): test sequence accuracy (whole caption right)
with the paired bootstrap CI and permutation p against soft over the same test canvases, token accuracy, the hard
rows' accuracy when they read the argmax and a sampled location, the mean attention entropy at each decoding step,
params, minutes), claims.jsonl, loss_curves.png (caption NLL and dev sequence accuracy), entropy_by_step.png and,
per run, attention.png (the attention at each step over 3 test canvases, titled with the emitted class; the hard
and gumbel rows outline the receptive field of the most likely location).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
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
from attention_jax.layers import show_attend_tell as sat
from attention_jax.models.seq2seq import make_cell
from experiments import cli
from experiments import results
from experiments import training
from experiments import vision
from experiments.configs import glimpse_captioning as glimpse_config
from experiments.data import canvases as canvas_data
from experiments.data import fashion_mnist
from experiments.training import report, spec
from experiments.training import table as runs_table

EXPERIMENT = training.Experiment(
        name="glimpse_captioning",
        title="Xu et al. 2015 (arXiv:1502.03044): soft vs hard attention, captioning canvases of Fashion-MNIST items",
        get_config=glimpse_config.get_config,
        presets=glimpse_config.PRESETS,
        rows=glimpse_config.ROWS,
        default_rows=glimpse_config.DEFAULT_ROWS,
        default_preset=glimpse_config.DEFAULT_PRESET,
        default_workdir="workdirs/glimpse_captioning",
        default_jobs=2,
)

NUM_CLASSES = len(fashion_mnist.CLASS_NAMES)
START = NUM_CLASSES  # the start token's id; the output vocabulary is the 10 classes
READINGS = ("expected", "argmax", "sampled")
"""What a hard row's attention reads at test time: the expected context, the most likely location, a sample."""


class GlimpseCaptioner(nn.Module):
    """Conv encoder, f_init, and an LSTM decoder with Show-Attend-Tell attention and the deep output (eq. 7).

    Attributes:
      steps: K, the caption length.
      features, pool: the `ConvEncoder`'s blocks.
      embed_dim, hidden, attention_hidden: m (embedding and deep-output width), the LSTM width, A.
      mode, gate, expected_context_prob, temperature: as `ShowAttendTellAttention`.
      reading: what the hard modes read when not sampling (`READINGS`); "sampled" draws (with no expected-context
        coin) even at test time.

    Call: (images [B, H, W, 1], targets [B, K] int or None, *, train) -> (logits [B, K, 10], aux) with aux
    "alpha" [B, K, L], "log_prob" [B, K] (log alpha_s of the read location, 0 for soft / expected reads),
    "tokens" [B, K] (the fed-back or predicted tokens) and "map_shape" (h, w). With targets the decoder is
    teacher-forced, without it greedy. Sampling takes the "sample" rng.
    """

    steps: int = 3
    features: tuple[int, ...] = (16, 32, 64)
    pool: tuple[bool, ...] = (True, True, False)
    embed_dim: int = 32
    hidden: int = 128
    attention_hidden: int = 64
    mode: str = "soft"
    gate: bool = True
    expected_context_prob: float = 0.5
    temperature: float = 1.0
    reading: str = "expected"

    @nn.compact
    def __call__(self, images: jax.Array, targets: jax.Array | None = None, *, train: bool = False
                 ) -> tuple[jax.Array, dict[str, Any]]:
        if self.reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {self.reading!r}")
        fmap = vision.ConvEncoder(tuple(self.features), tuple(self.pool), name="encoder")(images)  # [B, h, w, D]
        batch, height, width, _ = fmap.shape
        # The caption's order is spatial, and a convolution barely knows where it is: each annotation vector also
        # carries its cell's (x, y) in [-1, 1] (CoordConv, Liu et al. 2018, arXiv:1807.03247), so f_att can look for
        # "the next item to the right" and a hard read tells the decoder where it looked.
        ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij")
        coords = jnp.broadcast_to(jnp.stack([xs, ys], -1).astype(fmap.dtype), (batch, height, width, 2))
        fmap = jnp.concatenate([fmap, coords], axis=-1)  # [B, h, w, D + 2]
        annotations = axes.constrain(fmap.reshape(batch, height * width, -1), (axes.BATCH, axes.LENGTH, axes.EMBED))
        mean = jnp.mean(annotations, axis=1)  # [B, D]
        h = jnp.tanh(nn.Dense(self.hidden, name="init_h", **axes.dense_inits(axes.EMBED, axes.MLP))(mean))
        c = jnp.tanh(nn.Dense(self.hidden, name="init_c", **axes.dense_inits(axes.EMBED, axes.MLP))(mean))
        embed = nn.Embed(NUM_CLASSES + 1, self.embed_dim, embedding_init=axes.embed_init(), name="embed")
        cell = make_cell("lstm", self.hidden, name="lstm")
        sampling = self.mode != "soft" and (train or self.reading == "sampled")
        attend = sat.ShowAttendTellAttention(
            hidden=self.attention_hidden, mode=self.mode, gate=self.gate,
            expected_context_prob=self.expected_context_prob if train else 0.0, temperature=self.temperature,
            deterministic_context="argmax" if self.reading == "argmax" else "expected", name="attention")
        out_h = nn.Dense(self.embed_dim, name="out_h", **axes.dense_inits(axes.MLP, axes.EMBED))
        out_z = nn.Dense(self.embed_dim, name="out_z", use_bias=False,  # D -> m: one axis named, as a C -> C map
                         kernel_init=axes.partitioned(nn.linear.default_kernel_init, (axes.EMBED, None)))
        out = nn.Dense(NUM_CLASSES, name="out", **axes.dense_inits(axes.EMBED, axes.VOCAB))
        prev = jnp.full((batch,), START, jnp.int32)
        logits, alphas, log_probs, tokens = [], [], [], []
        carry = (c, h)
        for t in range(self.steps):
            if self.mode == "soft":
                context, alpha = attend(annotations, carry[1])
                log_prob = jnp.zeros((batch,), jnp.float32)
            else:
                context, alpha, _, log_prob = attend(annotations, carry[1], deterministic=not sampling)
            e = embed(prev)  # [B, m]
            carry, h_t = cell(carry, jnp.concatenate([e, context.astype(e.dtype)], axis=-1))
            logit = out(jnp.tanh(e + out_h(h_t) + out_z(context)))  # [B, 10], eq. 7
            prev = targets[:, t].astype(jnp.int32) if targets is not None else jnp.argmax(logit, -1).astype(jnp.int32)
            logits.append(logit)
            alphas.append(alpha)
            log_probs.append(log_prob)
            tokens.append(prev)
        aux = {"alpha": jnp.stack(alphas, 1), "log_prob": jnp.stack(log_probs, 1), "tokens": jnp.stack(tokens, 1),
               "map_shape": (height, width)}
        return jnp.stack(logits, 1).astype(jnp.float32), aux


def build_model(m: ml_collections.ConfigDict, steps: int, reading: str | None = None) -> GlimpseCaptioner:
    return GlimpseCaptioner(steps=int(steps), features=tuple(m.features), pool=tuple(m.pool), embed_dim=m.embed_dim,
                            hidden=m.hidden, attention_hidden=m.attention_hidden, mode=m.mode, gate=m.gate,
                            expected_context_prob=m.expected_context_prob, temperature=m.temperature,
                            reading=reading or m.deterministic_context)


@dataclasses.dataclass
class CanvasData:
    """The three splits of canvases (`canvases.Canvases`) and their description."""

    train: canvas_data.Canvases
    dev: canvas_data.Canvases
    test: canvas_data.Canvases
    info: dict[str, Any]


def make_canvases(splits: dict[str, fashion_mnist.Split], d: ml_collections.ConfigDict) -> CanvasData:
    """Train canvases from ``splits["train"]``; dev / test canvases from the first / second half of
    ``splits["test"]`` (so no test item is seen in dev); seeds fixed by ``d.canvas_seed``.

    Raises:
      ValueError: if the items cannot be placed on the canvas (`canvases.place_items`).
    """
    test = splits["test"]
    half = len(test.labels) // 2
    dev_items = fashion_mnist.Split(test.images[:half], test.labels[:half])
    test_items = fashion_mnist.Split(test.images[half:], test.labels[half:])
    kw = dict(height=int(d.height), width=int(d.width), min_dx=int(d.min_dx))
    seed = int(d.canvas_seed) * 3
    out = {name: canvas_data.caption_canvases(items, int(size), int(d.num_items), seed=seed + k, **kw)
           for k, (name, items, size) in enumerate((("train", splits["train"], d.train_size),
                                                    ("dev", dev_items, d.dev_size),
                                                    ("test", test_items, d.test_size)))}
    info = {"corpus": "Fashion-MNIST canvases", "items": int(d.num_items), "canvas": [int(d.height), int(d.width)],
            **{f"{name}_canvases": int(c.labels.shape[0]) for name, c in out.items()},
            "item_pools": {"train": int(len(splits["train"].labels)), "dev": half, "test": len(test.labels) - half}}
    return CanvasData(out["train"], out["dev"], out["test"], info)


CACHE_VERSION = 1
_FIELDS = ("images", "labels", "tops", "lefts", "sources")


def cache_path(d: ml_collections.ConfigDict) -> str:
    """``<data_dir>/glimpse_canvases/<parameters>.npz``: where the canvases of ``d`` are kept once drawn."""
    key = (f"v{CACHE_VERSION}_k{d.num_items}_{d.height}x{d.width}_dx{d.min_dx}_n{d.train_size}-{d.dev_size}-"
           f"{d.test_size}_s{d.canvas_seed}")
    return os.path.join(os.path.expanduser(d.data_dir), "glimpse_canvases", key + ".npz")


def prepare(config: ml_collections.ConfigDict) -> CanvasData:
    """The canvases of ``config.data`` from the real Fashion-MNIST (`fashion_mnist.load`), drawn once and then read
    from `cache_path` (drawing costs about 1 ms per canvas).

    Raises:
      experiments.data.DataError: the package cannot be obtained.
      training.ConfigError: the items cannot be placed on the canvas.
    """
    d = config.data
    path = cache_path(d)
    if os.path.exists(path):
        with np.load(path) as saved:
            splits = {name: canvas_data.Canvases(*(saved[f"{name}_{f}"] for f in _FIELDS))
                      for name in ("train", "dev", "test")}
            info = json.loads(str(saved["info"]))
        return CanvasData(splits["train"], splits["dev"], splits["test"], info)
    try:
        cd = make_canvases(fashion_mnist.load(d.data_dir), d)
    except ValueError as err:
        raise training.ConfigError(f"{' '.join(str(err).split())}; fix: lower --config.data.num_items or enlarge "
                                   "--config.data.height / width") from None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    arrays = {f"{name}_{f}": getattr(getattr(cd, name), f) for name in ("train", "dev", "test") for f in _FIELDS}
    np.savez_compressed(tmp, info=json.dumps(cd.info), **arrays)
    os.replace(tmp, path)
    return cd


def validate(config: ml_collections.ConfigDict, rows: list[str]) -> None:
    """Checks every value the runs will use, before any data or compute.

    Raises:
      training.ConfigError: naming the bad value and the fix.
    """
    d, t, e = config.data, config.train, config.eval
    cli.int_at_least("data.num_items", d.num_items, 1)
    cli.int_at_least("data.height", d.height, fashion_mnist.IMAGE_SIZE)
    cli.int_at_least("data.width", d.width, fashion_mnist.IMAGE_SIZE)
    cli.int_at_least("data.min_dx", d.min_dx, 1)
    cli.int_at_least("data.train_size", d.train_size, 1)
    cli.int_at_least("data.dev_size", d.dev_size, 1)
    cli.int_at_least("data.test_size", d.test_size, 2)
    cli.int_at_least("data.canvas_seed", d.canvas_seed, 0)
    # Non-overlapping 28 x 28 squares: at most floor(H / 28) * floor(W / 28) of them fit.
    if d.num_items > (d.height // fashion_mnist.IMAGE_SIZE) * (d.width // fashion_mnist.IMAGE_SIZE):
        raise training.ConfigError(f"--config.data.num_items={d.num_items} items of 28 x 28 cannot fit a {d.height} x "
                                   f"{d.width} canvas; fix: use fewer items or a larger canvas")
    cli.int_at_least("train.batch_size", t.batch_size, 1)
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        cli.int_at_least(f"train.{name}", t[name], 0)
    if not t.learning_rate > 0 or t.grad_clip_norm < 0 or t.max_minutes < 0:
        raise training.ConfigError("--config.train.learning_rate must be > 0 and grad_clip_norm, max_minutes >= 0; "
                                   "fix: change them")
    if t.num_steps == 0 and t.max_minutes == 0:
        raise training.ConfigError("train.num_steps and train.max_minutes are both 0, so training would never stop; "
                                   "fix: set --config.train.num_steps")
    for name in ("lambda_r", "lambda_e"):
        if not t[name] >= 0:
            raise training.ConfigError(f"--config.train.{name}={t[name]!r} is not valid; fix: use a weight >= 0")
    if not 0.0 <= t.baseline_decay <= 1.0:
        raise training.ConfigError(f"--config.train.baseline_decay={t.baseline_decay!r} is not valid; fix: use a "
                                   "value in [0, 1] (0.9 in the paper)")
    cli.int_at_least("eval.batch_size", e.batch_size, 1)
    cli.int_at_least("eval.num_overlays", e.num_overlays, 0)
    if e.significance not in ("bs", "none"):
        raise training.ConfigError(f"--config.eval.significance={e.significance!r} is not valid; fix: use bs or none")
    for row in rows:
        cfg = training.row_config(EXPERIMENT, config, row)
        m = cfg.model
        if m.mode not in sat.MODES:
            raise training.ConfigError(f"row {row}: model.mode={m.mode!r} is not valid; fix: use one of "
                                       f"{', '.join(sat.MODES)}")
        if m.deterministic_context not in sat.DETERMINISTIC_CONTEXTS:
            raise training.ConfigError(f"--config.model.deterministic_context={m.deterministic_context!r} is not "
                                       f"valid; fix: use one of {', '.join(sat.DETERMINISTIC_CONTEXTS)}")
        if not cfg.train.doubly_stochastic >= 0:
            raise training.ConfigError(f"row {row}: train.doubly_stochastic={cfg.train.doubly_stochastic!r} is not "
                                       "valid; fix: use a lambda >= 0")
        features, pool = tuple(m.features), tuple(m.pool)
        if (not features or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features)
                or len(pool) != len(features)):
            raise training.ConfigError(f"row {row}: model.features={features} and model.pool={pool} must be positive "
                                       "ints and bools of the same length; fix: e.g. "
                                       "--config.model.features='(8,32,64)' --config.model.pool='(True,True,False)'")
        for name in ("embed_dim", "hidden", "attention_hidden"):
            cli.int_at_least(f"model.{name}", m[name], 1)
        try:
            sat.ShowAttendTellAttention(hidden=m.attention_hidden, mode=m.mode, gate=m.gate,
                                        expected_context_prob=m.expected_context_prob, temperature=m.temperature)
        except (ValueError, TypeError) as err:
            raise training.ConfigError(f"row {row}: {' '.join(str(err).split())}; fix: change that --config.model "
                                       "field") from None


# ----------------------------------------------------------------------------------------------
# Training and evaluation.
# ----------------------------------------------------------------------------------------------


def _batch(c: canvas_data.Canvases, index: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    return {"images": vision.to_float(vision.take(c.images, index)), "labels": vision.take(c.labels, index),
            "weights": weights}


def caption_loss(model: GlimpseCaptioner, params, batch, rng, baseline, t: ml_collections.ConfigDict):
    """The row's training objective (mean over real rows) and (NLL sum, weight, mean log p(y|s,a)).

    soft / gumbel: NLL + lambda * doubly stochastic penalty; hard: minus the REINFORCE surrogate of eq. 12.
    """
    logits, aux = model.apply({"params": params}, batch["images"], batch["labels"], train=True,
                              rngs={"sample": rng})
    log_p = jax.nn.log_softmax(logits, axis=-1)  # [B, K, 10]
    log_likelihood = jnp.sum(jnp.take_along_axis(log_p, batch["labels"][..., None], -1)[..., 0], axis=1)  # [B]
    w = batch["weights"]
    objective = -log_likelihood
    if model.mode == "hard":
        entropy = jnp.sum(sat.attention_entropy(aux["alpha"]), axis=1)  # [B], H[s] summed over the steps
        objective = -sat.reinforce_surrogate(jnp.sum(aux["log_prob"], axis=1), log_likelihood, baseline, entropy,
                                             lambda_r=float(t.lambda_r), lambda_e=float(t.lambda_e))
    if t.doubly_stochastic > 0:
        objective = objective + sat.doubly_stochastic_penalty(aux["alpha"], lam=float(t.doubly_stochastic))
    weight = jnp.sum(w)
    loss = jnp.sum(objective * w) / jnp.maximum(weight, 1.0)
    return loss, (jnp.sum(-log_likelihood * w), weight, jnp.sum(log_likelihood * w) / jnp.maximum(weight, 1.0))


def make_train_step(model: GlimpseCaptioner, optimizer, t: ml_collections.ConfigDict):
    """The jitted step: opt_state is {"optax": ..., "baseline": b}, so the moving-average baseline is checkpointed."""

    @jax.jit
    def step(params, opt_state, carry, batch, rng):
        (_, (nll_sum, weight, mean_ll)), grads = jax.value_and_grad(caption_loss, argnums=1, has_aux=True)(
            model, params, batch, rng, opt_state["baseline"], t)
        updates, inner = optimizer.update(grads, opt_state["optax"], params)
        baseline = opt_state["baseline"]
        if model.mode == "hard":
            baseline = sat.update_baseline(baseline, mean_ll, decay=float(t.baseline_decay))
        return optax.apply_updates(params, updates), {"optax": inner, "baseline": baseline}, carry, nll_sum, weight

    return step


# The jitted functions are cached per process by the configs they depend on, so a worker that trains several
# seeds of a row (or several rows: the parameters' shapes do not depend on the mode) compiles each once.


def _without_mode(model_json: str) -> str:
    return json.dumps({**json.loads(model_json), "mode": "soft"}, sort_keys=True)


def _model(model_json: str, steps: int, reading: str | None = None) -> GlimpseCaptioner:
    return build_model(ml_collections.ConfigDict(json.loads(model_json)), steps, reading)


@functools.lru_cache(maxsize=None)
def _init_fn(model_json: str, steps: int):
    model = _model(model_json, steps)
    return jax.jit(lambda rng, images, labels: model.init({"params": rng, "sample": rng}, images, labels, train=True))


@functools.lru_cache(maxsize=None)
def _step_fn(model_json: str, train_json: str, steps: int):
    t = ml_collections.ConfigDict(json.loads(train_json))
    optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm else optax.identity(),
                            optax.adam(t.learning_rate))
    return make_train_step(_model(model_json, steps), optimizer, t), optimizer


@functools.lru_cache(maxsize=None)
def _predict_fn(model_json: str, steps: int, reading: str):
    model = _model(model_json, steps, reading)

    @jax.jit
    def predict(params, images, rng):
        _, aux = model.apply({"params": params}, images, train=False, rngs={"sample": rng})
        return aux["tokens"], aux["alpha"]

    return predict


def decode(predict, params, c: canvas_data.Canvases, batch_size: int, rng=None) -> dict[str, np.ndarray]:
    """Greedy captions of every canvas: "tokens" [N, K] and "alpha" [N, K, L] (numpy)."""
    n = c.labels.shape[0]
    tokens, alphas = np.zeros(c.labels.shape, np.int32), None
    for k, (index, weights) in enumerate(vision.index_batches(n, batch_size, shuffle=False)):
        batch = _batch(c, index, weights)
        key = jax.random.fold_in(rng, k) if rng is not None else jax.random.key(0)
        out_tokens, alpha = jax.device_get(predict(params, batch["images"], key))
        real = index >= 0
        if alphas is None:
            alphas = np.zeros((n,) + alpha.shape[1:], np.float32)
        tokens[index[real]] = out_tokens[real]
        alphas[index[real]] = alpha[real]
    return {"tokens": tokens, "alpha": alphas}


def caption_scores(tokens: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per canvas: whether the whole caption is right (0/1) and the fraction of right tokens."""
    right = np.asarray(tokens) == np.asarray(labels)
    return np.all(right, axis=1).astype(np.float64), np.mean(right, axis=1).astype(np.float64)


def mean_entropy_by_step(alpha: np.ndarray) -> list[float]:
    """The mean attention entropy (nats) at each decoding step over the canvases, alpha [N, K, L]."""
    return [float(x) for x in np.mean(np.asarray(sat.attention_entropy(jnp.asarray(alpha))), axis=0)]


def train_run(cfg: ml_collections.ConfigDict, cd: CanvasData, run_dir: str, label: str, after_s: Any = None,
              ) -> dict[str, Any]:
    """Trains (or resumes) one (row, seed) and evaluates it; returns its record fields."""
    m, t = cfg.model, cfg.train
    steps = int(cfg.data.num_items)
    model_json, train_json = m.to_json(sort_keys=True), t.to_json(sort_keys=True)
    init_rng, step_rng = jax.random.split(jax.random.key(int(cfg.seed)))
    example = vision.to_float(cd.train.images[:2])
    # The model boxes its parameters with logical axis names; the train state holds the plain arrays.
    params = nn.meta.unbox(_init_fn(_without_mode(model_json), steps)(init_rng, example, cd.train.labels[:2])["params"])
    step, optimizer = _step_fn(model_json, train_json, steps)
    opt_state = {"optax": optimizer.init(params), "baseline": jnp.zeros((), jnp.float32)}
    batch_size = int(t.batch_size)
    readings = ["expected", "argmax", "sampled"] if m.mode != "soft" else ["expected"]
    main_reading = m.deterministic_context if m.mode != "soft" else "expected"
    predictors = {r: _predict_fn(model_json, steps, r) for r in readings}

    def epoch_batches(epoch: int):
        for index, weights in vision.index_batches(cd.train.labels.shape[0], batch_size, shuffle=True,
                                                   seed=int(cfg.seed) * 100003 + epoch):
            yield _batch(cd.train, index, weights), float(weights.sum())

    eval_bs = int(cfg.eval.batch_size)

    def evaluate(p) -> dict[str, float]:
        out = decode(predictors[main_reading], p, cd.dev, eval_bs)
        seq, tok = caption_scores(out["tokens"], cd.dev.labels)
        return {"dev_accuracy": 100.0 * float(seq.mean()), "dev_token_accuracy": 100.0 * float(tok.mean())}

    steps_per_epoch = -(-cd.train.labels.shape[0] // batch_size)
    outcome = training.train_loop(step, params, opt_state, epoch_batches, train_config=t, run_dir=run_dir,
                                  rng=step_rng, evaluate=evaluate if t.eval_every else None, eval_at_end=True,
                                  steps_per_epoch=steps_per_epoch, label=label, after_s=after_s,
                                  unit="canvases", perplexity=False)
    fields: dict[str, Any] = {}
    test_rng = jax.random.key(10_007 + int(cfg.seed))
    decoded = {}
    for reading in readings:
        decoded[reading] = decode(predictors[reading], outcome.params, cd.test, eval_bs, rng=test_rng)
        seq, tok = caption_scores(decoded[reading]["tokens"], cd.test.labels)
        if reading == main_reading:
            runs_table.write_scores(run_dir, {"test_seq_accuracy": seq.tolist(), "test_token_accuracy": tok.tolist()})
            fields["test_seq_accuracy"] = 100.0 * float(seq.mean())
            fields["test_token_accuracy"] = 100.0 * float(tok.mean())
        if m.mode != "soft":
            fields[f"test_{reading}_seq_accuracy"] = 100.0 * float(seq.mean())
    main = decoded[main_reading]
    entropy = mean_entropy_by_step(main["alpha"])
    for k, value in enumerate(entropy):
        fields[f"test_entropy_step{k + 1}"] = value
    dev = outcome.last_eval if outcome.last_eval and "dev_accuracy" in outcome.last_eval else evaluate(outcome.params)
    field = receptive_field(tuple(m.features), tuple(m.pool))
    map_shape = (cd.test.images.shape[1] // field[1], cd.test.images.shape[2] // field[1])
    overlay = _overlays(cd, main, map_shape, run_dir, int(cfg.eval.num_overlays),
                        field=field if m.mode != "soft" else None,
                        title=f"{label}: attention at each step ({main_reading} context)")
    fields.update({"test_canvases": int(cd.test.labels.shape[0]), "dev_accuracy": dev["dev_accuracy"],
                   "reading": main_reading if m.mode != "soft" else "-", "locations": int(np.prod(map_shape)),
                   "params": vision.param_count(outcome.params), "steps": outcome.steps,
                   "epochs": round(outcome.steps / max(steps_per_epoch, 1), 2),
                   "train_minutes": round(outcome.minutes, 2), "stop_reason": outcome.stop_reason,
                   "final_baseline": float(outcome.opt_state["baseline"])})
    if overlay:
        fields["overlay"] = overlay
    logging.info("[%s] test sequence accuracy %.2f%%, token accuracy %.2f%% after %d steps, %.1f min", label,
                 fields["test_seq_accuracy"], fields["test_token_accuracy"], fields["steps"],
                 fields["train_minutes"])
    return fields


def receptive_field(features: tuple[int, ...], pool: tuple[bool, ...]) -> tuple[int, int]:
    """(size, stride) in pixels of one cell of the `ConvEncoder` map: 3 x 3 convolutions, 2 x 2 pools of stride 2."""
    size, stride = 1, 1
    for down in tuple(pool) or (True,) * len(features):
        size += 2 * stride
        if down:
            size += stride
            stride *= 2
    return size, stride


def _overlays(cd: CanvasData, decoded: dict[str, np.ndarray], map_shape: tuple[int, int], run_dir: str, count: int,
              *, field: tuple[int, int] | None, title: str) -> str | None:
    """attention.png: the first ``count`` test canvases, one column per decoding step (the emitted class above),
    with the receptive field of the most likely location outlined when ``field`` (its size and stride) is given."""
    if count == 0:
        return None
    from experiments import plots  # pylint: disable=import-outside-toplevel

    n = min(count, cd.test.labels.shape[0])
    h, w = map_shape
    alpha = decoded["alpha"][:n]  # [n, K, L]
    k = alpha.shape[1]
    maps = alpha.reshape(n, k, h, w)
    names = fashion_mnist.CLASS_NAMES
    titles = [f"{t + 1}: {names[int(decoded['tokens'][i, t])]}" for i in range(n) for t in range(k)]
    rows = ["true: " + ", ".join(names[int(y)] for y in cd.test.labels[i]) for i in range(n)]
    rects = None
    if field is not None:
        size, stride = field
        start = (stride - 1) / 2 - (size - 1) / 2  # the first pixel that cell (0, 0) sees
        best = np.argmax(alpha, axis=-1)  # [n, K]
        rects = np.stack([start + (best // w) * stride, start + (best % w) * stride, np.full(best.shape, size),
                          np.full(best.shape, size)], axis=-1)
    path = os.path.join(run_dir, "attention.png")
    plots.attention_overlays(cd.test.images[:n], maps, path, column_titles=titles, row_titles=rows, title=title,
                             boxes=rects)
    return "attention.png"


# ----------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------


def _describe(m: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"mode": m.mode}


def columns(steps: int) -> tuple[tuple[str, str], ...]:
    """results.md's columns, with one attention-entropy column per decoding step."""
    return (("row", "row"), ("mode", "mode"), ("test seq acc %", "test_seq_accuracy"),
            ("Δ seq acc vs baseline, 95% CI", "test_seq_accuracy_ci"), ("p", "test_seq_accuracy_p"),
            ("test token acc %", "test_token_accuracy"), ("reads at test", "reading"),
            ("seq acc %, argmax read", "test_argmax_seq_accuracy"),
            ("seq acc %, sampled read", "test_sampled_seq_accuracy"),
            *((f"H step {k + 1} (nats)", f"test_entropy_step{k + 1}") for k in range(steps)),
            ("dev seq acc %", "dev_accuracy"), ("paper", "paper"), ("seeds", "n_seeds"), ("params", "params"),
            ("steps", "steps"), ("train minutes", "train_minutes"))


def _findings(summary: list[dict[str, Any]], steps: int, locations: int) -> list[str]:
    """What the table shows, in numbers: each row against soft, where the attention looks, and why."""
    by_row = {s["row"]: s for s in summary}
    out = []
    soft = by_row.get("soft")
    uniform = math.log(locations) if locations else 0.0

    def entropy(rec):
        values = [rec.get(f"test_entropy_step{k + 1}") for k in range(steps)]
        return None if any(v is None for v in values) else float(np.mean(values))

    for row in ("hard", "gumbel", "soft_no_penalty"):
        other = by_row.get(row)
        if not soft or not other or other.get("test_seq_accuracy") is None or soft.get("test_seq_accuracy") is None:
            continue
        diff = other["test_seq_accuracy"] - soft["test_seq_accuracy"]
        order = f"{abs(diff):.2f} points {'above' if diff > 0 else 'below'}" if diff else "level with"
        text = (f"{row} is {order} soft in sequence accuracy ({other['test_seq_accuracy']:.2f}% vs "
                f"{soft['test_seq_accuracy']:.2f}%, largest paired p over seeds "
                f"{results.format_p(other.get('test_seq_accuracy_p'))})")
        alt = [f"{name} {other[key]:.2f}%" for name, key in (("the argmax location", "test_argmax_seq_accuracy"),
                                                             ("a sampled location", "test_sampled_seq_accuracy"))
               if other.get(key) is not None]
        if alt:
            text += "; reading " + " and ".join(alt)
        out.append(text)

    def cells(rec):
        values = [rec.get(f"test_entropy_step{k + 1}") for k in range(steps)]
        return ", ".join("-" if v is None else f"{v:.2f}" for v in values)

    parts = [f"{rec['row']} {cells(rec)}" for rec in summary]
    if parts and uniform:
        out.append(f"mean attention entropy at steps 1..{steps} (nats; uniform over the {locations} locations = "
                   f"{uniform:.2f}): " + "; ".join(parts))
    hard = by_row.get("hard")
    if soft and hard and entropy(soft) is not None and entropy(hard) is not None:
        h_hard, h_soft = entropy(hard), entropy(soft)
        if h_hard > 0.9 * uniform:
            where = (f"hard's attention stayed close to uniform (mean entropy {h_hard:.2f} of {uniform:.2f} nats; "
                     f"soft {h_soft:.2f}): REINFORCE has barely shaped it in this budget, so its sampled reads land on "
                     "near-random cells, and the sampled half of its training contexts were mostly noise")
        else:
            where = (f"hard's attention is {'sharper' if h_hard < h_soft else 'more diffuse'} than soft's (mean "
                     f"entropy {h_hard:.2f} vs {h_soft:.2f} nats)")
        if hard.get("test_seq_accuracy") is not None and soft.get("test_seq_accuracy") is not None:
            if hard["test_seq_accuracy"] <= soft["test_seq_accuracy"]:
                where += (". Unlike the paper: here the encoder is trained from scratch for a few hundred steps, and "
                          "hard attention learns where to look only from one sampled location per step (a "
                          "high-variance gradient), while soft attention gets the exact gradient of every location "
                          "and can average a whole item (28 px) over the cells it spans instead of one cell's "
                          "receptive field")
            else:
                where += ", and hard beats soft as in the paper"
        out.append(where)
    return out


def write_report(config: ml_collections.ConfigDict, workdir: str, rows: list[str], seeds: tuple[int, ...],
                 records: dict[tuple[str, int], dict[str, Any]], *, preset: str, command: str,
                 wall_s: float) -> list[dict[str, Any]]:
    """results.md, results.jsonl, claims.jsonl, loss_curves.png and entropy_by_step.png; returns the records."""
    steps = int(config.data.num_items)
    tab = runs_table.tabulate(EXPERIMENT, config, workdir, rows, seeds, records,
                              metrics={"test_seq_accuracy": 100.0})
    if tab is None:
        return []
    table, summary, baseline, verdicts = tab.table, tab.summary, tab.baseline, tab.verdicts
    runs_table.write_claims(workdir, verdicts, exp=EXPERIMENT, command=command, seeds=seeds, wall_s=wall_s)
    info = runs_table.read_data_info(workdir)
    pools = info.get("item_pools") or {}
    figures: list[Any] = []
    curves = runs_table.loss_curves_figure(workdir, rows, seeds[0], title=f"seed {seeds[0]}: caption NLL (nats per "
                                           "caption) and dev sequence accuracy",
                                           loss_label="train caption NLL (nats / caption)")
    if curves:
        figures.append((curves, "training caption NLL (every row; soft's penalty and hard's REINFORCE terms are "
                                "left out) and dev sequence accuracy (%)"))
    entropy_fig = _entropy_figure(summary, steps, workdir)
    if entropy_fig:
        figures.append((entropy_fig, "mean attention entropy of the test canvases at each decoding step, mean over "
                                     "seeds"))
    for row in rows:
        rec = records.get((row, seeds[0]))
        if rec and rec.get("overlay"):
            box = "; box: the receptive field of the most likely location" if rec.get("mode") != "soft" else ""
            figures.append((os.path.join(spec.row_dir_name(row), f"seed_{seeds[0]}", rec["overlay"]),
                            f"{row}, seed {seeds[0]}: attention at each step over test canvases (title: the emitted "
                            f"class){box}"))
    locations = int(table[0].get("locations") or 0)
    t = config.train
    penalties = ", ".join(f"{row} {training.row_config(EXPERIMENT, config, row).train.doubly_stochastic:g}"
                          for row in rows)
    notes = [f"preset: {preset or '-'}; data: {info.get('train_canvases', '?')} train canvases from the 60,000 "
             f"Fashion-MNIST training images, {info.get('dev_canvases', '?')} dev / {info.get('test_canvases', '?')} "
             f"test canvases from the first {pools.get('dev', '?')} / last {pools.get('test', '?')} of the 10,000 "
             f"test images; {steps} items on a {config.data.height} x "
             f"{config.data.width} canvas, caption = their classes left to right (chance: "
             f"{100 * 0.1 ** steps:.2g}% sequence, 10% token accuracy)",
             f"model: ConvEncoder {tuple(config.model.features)} -> {locations} annotation vectors, LSTM "
             f"{config.model.hidden}, attention MLP {config.model.attention_hidden}, beta gate, deep output (eq. 7); "
             "greedy decoding; hard / gumbel read the "
             f"{config.model.deterministic_context} context at test (the released sampler's default)",
             f"training: {t.num_steps} steps of {t.batch_size} canvases, Adam {t.learning_rate:g}, clip "
             f"{t.grad_clip_norm:g}; lambda of eq. 14: {penalties}; hard: lambda_r = {t.lambda_r:g}, lambda_e = "
             f"{t.lambda_e:g}, baseline decay {t.baseline_decay:g}, expected context with probability "
             f"{config.model.expected_context_prob:g} per canvas; test after the last step",
             f"seeds: {', '.join(map(str, seeds))}; machine: {report.machine_description()}; wall time of this "
             f"invocation: {wall_s / 60:.1f} min"]
    if baseline:
        notes.append(f"Δ and p: against {baseline} per seed on the same test canvases (whole caption right or not), "
                     f"`experiments.stats.paired_accuracy_test` (paired bootstrap CI, "
                     f"{config.eval.significance_samples} resamples; paired permutation p); union of CIs, largest p")
    notes += [f"finding: {line}" for line in _findings(summary, steps, locations)]
    results.write(workdir, table, title=EXPERIMENT.title, command=command, notes=notes, figures=figures,
                  columns=columns(steps), summary=summary, sections=[report.claims_section(verdicts)],
                  footnotes=tab.footnotes,
                  footnote_heading=("Paper numbers (Flickr8k photographs and BLEU-4, another task and metric; compare "
                                     "orderings, not values)"))
    return table


def _entropy_figure(summary: list[dict[str, Any]], steps: int, workdir: str) -> str | None:
    from experiments import plots  # pylint: disable=import-outside-toplevel

    buckets = {s["row"]: [{"bucket": f"step {k + 1}", "n": s.get("test_canvases", 0),
                           "entropy": s.get(f"test_entropy_step{k + 1}")} for k in range(steps)] for s in summary}
    if not any(p["entropy"] is not None for points in buckets.values() for p in points):
        return None
    plots.metric_by_length(buckets, os.path.join(workdir, "entropy_by_step.png"), metric="entropy",
                           xlabel="decoding step (test canvases)", ylabel="mean attention entropy (nats)",
                           title="attention entropy by decoding step")
    return "entropy_by_step.png"


def run(config: ml_collections.ConfigDict, rows: list[str], workdir: str, *, preset: str = "", command: str = "",
        jobs: int = 1, worker_command=(), worker=None, canvas_data_: CanvasData | None = None) -> list[dict[str, Any]]:
    """Trains every (row, seed) not yet finished and writes the report; returns the records.

    Raises:
      training.ConfigError: bad seeds, a checkpoint of another config, a failed worker.
      experiments.data.DataError: Fashion-MNIST cannot be obtained.
    """

    def report_fn(seeds, records, wall_s):
        return write_report(config, workdir, rows, seeds, records, preset=preset, command=command, wall_s=wall_s)

    return runs_table.run_table(EXPERIMENT, config, rows, workdir, load_data=lambda: prepare(config),
                                train_run=train_run, report_fn=report_fn, data_files=lambda cd: cd.info,
                                describe=_describe, preset=preset, command=command, jobs=jobs,
                                worker_command=worker_command, worker=worker, data=canvas_data_)


if __name__ == "__main__":
    cli.run_table(EXPERIMENT, validate_fn=validate, run_fn=run,
                  data_path="its canvases are built from Fashion-MNIST")
