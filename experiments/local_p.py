"""Where local-p's windows go during training: the predicted centres p_t against the diagonal.

Luong et al. 2015 (arXiv:1508.04025), eq. (9): local-p predicts the centre of its window,
p_t = S * sigmoid(v_p^T tanh(W_p h_t)), from the decoder state h_t, and weights the window by a Gaussian
around it (eq. 10, sigma = D / 2). Its only training signal is the gradient of the loss through that
Gaussian, which is non-zero only for the 2D + 1 keys inside the window. This module measures what the
model does with it:

* `positions`: p_t for every target step of some sentences (teacher-forced; `LuongAttention` sows them).
* `diagnostics`: how far p_t sits from the diagonal p*_t = (t + 1/2) S / T, in units of the source length,
  and how much p_t moves along a sentence (a window parked at S / 2 has spread 0).
* `gradient_norms`: the gradient norms that reach W_p and v_p, beside those of the other parameters.
* `figure`: p_t / S against t / T for a few dev sentences at several training steps, with the diagonal.

The Luong experiment (`experiments.luong`) records the diagnostics at every dev evaluation of its local-p
rows and draws the figure; WORKSPACE.md reports what they show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data
from experiments import evaluation


@dataclasses.dataclass
class Trajectory:
    """The window centres of one sentence.

    Attributes:
      index: the example's position in its split.
      position: [T] float32, p_t for the T target steps (the target tokens plus EOS).
      source_length: S, the source tokens.
    """

    index: int
    position: np.ndarray
    source_length: int

    @property
    def diagonal(self) -> np.ndarray:
        """[T] float32, the monotone alignment p*_t = (t + 1/2) S / T."""
        steps = len(self.position)
        return (np.arange(steps, dtype=np.float32) + 0.5) * self.source_length / max(steps, 1)


def _sown_positions(intermediates: Mapping[str, Any]) -> jax.Array:
    """The [T, B, 1] "position" that `LuongAttention` sows inside the decoder scan, as [B, T]."""
    found = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]
             if any(getattr(k, "key", None) == "position" for k in path)]
    if len(found) != 1:
        raise ValueError(f"expected one sown 'position' (a local-p model), found {len(found)}")
    return jnp.swapaxes(found[0][..., 0], 0, 1)


@functools.lru_cache(maxsize=8)
def _position_fn(model):
    def run(params, src, src_lengths, tgt_in):
        _, inter = model.apply({"params": params}, src, src_lengths, tgt_in, train=False,
                               mutable=["intermediates"])
        return _sown_positions(inter)

    return jax.jit(run)


def positions(model, params, examples: Sequence[Any], *, buckets: Sequence[int], batch_size: int,
              limit: int = 64) -> list[Trajectory]:
    """p_t of the first ``limit`` examples, teacher-forced on their references.

    Args:
      model: a local-p `attention_jax.models.seq2seq.Seq2Seq` (mode "local_p").
      params: its parameters.
      examples: `experiments.data.Example` list (e.g. the dev split).
      buckets: the token-length buckets of training (so the batch shapes are already compiled).
      batch_size: rows per batch.
      limit: how many examples.

    Returns:
      One `Trajectory` per example, in order.

    Raises:
      ValueError: if the model sows no local-p position.
    """
    chosen = list(examples[:limit])
    run = _position_fn(model)
    out: dict[int, Trajectory] = {}
    for batch in data.batches(chosen, batch_size, tuple(buckets), shuffle=False, seed=0, epoch=0):
        pos = np.asarray(run(params, batch["src"], batch["src_lengths"], batch["tgt_in"]))
        steps = np.asarray(batch["tgt_mask"]).sum(axis=1).astype(int)
        for row, k in enumerate(batch["index"]):
            if k >= 0:
                out[int(k)] = Trajectory(index=int(k), position=pos[row, :steps[row]],
                                         source_length=int(batch["src_lengths"][row]))
    return [out[k] for k in sorted(out)]


def diagnostics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Summaries of where the windows sit, each in units of the source length S.

    Returns:
      {"p_diag_error": mean |p_t - p*_t| / S, "p_spread": mean over sentences of std_t(p_t / S),
       "p_mean": mean p_t / S, "p_corr": mean over sentences of the correlation of p_t with t}.
      A window parked in the middle gives p_mean 0.5, spread 0 and correlation 0 (or NaN, reported as 0);
      a window that follows the diagonal gives error near 0 and correlation near 1.
    """
    errors, spreads, means, corrs = [], [], [], []
    for tr in trajectories:
        if tr.source_length == 0 or len(tr.position) == 0:
            continue
        rel = tr.position / tr.source_length
        errors.append(np.mean(np.abs(tr.position - tr.diagonal)) / tr.source_length)
        spreads.append(np.std(rel))
        means.append(np.mean(rel))
        if len(rel) > 2 and np.std(rel) > 1e-6:
            corrs.append(np.corrcoef(rel, np.arange(len(rel)))[0, 1])
        else:
            corrs.append(0.0)
    if not errors:
        return {"p_diag_error": float("nan"), "p_spread": float("nan"), "p_mean": float("nan"), "p_corr": float("nan")}
    return {"p_diag_error": float(np.mean(errors)), "p_spread": float(np.mean(spreads)),
            "p_mean": float(np.mean(means)), "p_corr": float(np.mean(corrs))}


def gradient_norms(model, params, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Global norms of the loss gradient: W_p and v_p against the rest (per parameter, root mean square).

    Args:
      model: a local-p `Seq2Seq`.
      params: its parameters.
      batch: one training batch of `experiments.data.batches`.

    Returns:
      {"rms_grad_w_p", "rms_grad_v_p", "rms_grad_other"}: the root-mean-square gradient entry of each group.
    """
    def loss(p):
        nll, tokens, _ = evaluation.token_nll(model, p, evaluation.model_batch(batch), train=False)
        return jnp.sum(nll) / jnp.maximum(jnp.sum(tokens), 1.0)

    grads = jax.grad(loss)(params)
    groups: dict[str, list[np.ndarray]] = {"w_p": [], "v_p": [], "other": []}
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = getattr(path[-1], "key", "")
        groups[name if name in ("w_p", "v_p") else "other"].append(np.asarray(leaf).ravel())
    return {f"rms_grad_{k}": float(np.sqrt(np.mean(np.square(np.concatenate(v))))) if v else float("nan")
            for k, v in groups.items()}


def figure(snapshots: Mapping[int, Sequence[Trajectory]], path: str, *, title: str = "", sentences: int = 3) -> str:
    """p_t / S against (t + 1/2) / T for the first ``sentences`` trajectories, one panel per training step.

    Args:
      snapshots: training step -> trajectories (the same sentences at every step).
      path: PNG path (written).
      title: figure title.
      sentences: how many sentences to draw per panel.

    Returns:
      ``path``.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    steps = sorted(snapshots)
    fig, axes = plt.subplots(1, max(len(steps), 1), figsize=(3.2 * max(len(steps), 1), 3.2), sharey=True,
                             squeeze=False)
    for ax, step in zip(axes[0], steps):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="diagonal")
        for tr in list(snapshots[step])[:sentences]:
            t = (np.arange(len(tr.position)) + 0.5) / max(len(tr.position), 1)
            ax.plot(t, tr.position / max(tr.source_length, 1), marker=".", linewidth=1,
                    label=f"dev {tr.index} (S={tr.source_length})")
        stats = diagnostics(snapshots[step])
        ax.set_title(f"step {step}: |p-p*|/S={stats['p_diag_error']:.2f}", fontsize=9)
        ax.set_xlabel("target position (t + 1/2) / T")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("window centre p_t / S")
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
