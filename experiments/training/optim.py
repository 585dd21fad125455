"""The optimisers of the experiments (optax): Adam with global-norm clipping on three learning-rate schedules.

* Translation rows (`make_optimizer`): a constant rate, or the warm-up schedule of Vaswani et al. 2017
  (``train.schedule="rsqrt_warmup"``), and optionally a separate rate for the head gates.
* The language model (`make_lm_optimizer`): linear warm-up, then cosine decay (`warmup_cosine_schedule`).
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import optax

from experiments.training.spec import ConfigError

SCHEDULES = ("constant", "rsqrt_warmup")


def learning_rate(train_config: ml_collections.ConfigDict,
                  model_config: ml_collections.ConfigDict | None = None) -> float | optax.Schedule:
    """The learning rate: ``train.learning_rate``, or with ``train.schedule="rsqrt_warmup"`` the warm-up
    schedule of Vaswani et al. 2017 (arXiv:1706.03762 §5.3, eq. 3) for ``model.d_model`` and
    ``train.warmup_steps``, times ``train.learning_rate``."""
    schedule = train_config.get("schedule", "constant")
    if schedule == "constant":
        return train_config.learning_rate
    if schedule == "rsqrt_warmup":
        from attention_jax.models.transformer import transformer_schedule  # pylint: disable=import-outside-toplevel

        return transformer_schedule(int(model_config.d_model), int(train_config.warmup_steps),
                                    scale=float(train_config.learning_rate))
    raise ConfigError(f"--config.train.schedule={schedule!r} is not valid; fix: use one of {', '.join(SCHEDULES)}")


def make_optimizer(train_config: ml_collections.ConfigDict,
                   model_config: ml_collections.ConfigDict | None = None) -> optax.GradientTransformation:
    """Adam with global-norm gradient clipping (Luong 2015 §4.1 clips at norm 5).

    Optional fields (the Transformer experiment sets them): ``train.schedule`` (see `learning_rate`),
    ``train.adam_b2`` and ``train.adam_eps`` (0.98 and 1e-9 in arXiv:1706.03762 §5.3), and
    ``train.gate_learning_rate`` (> 0: a separate constant Adam learning rate for the head gates'
    "log_alpha" parameters, which must travel several units while the weights are fine-tuned), and
    ``train.position_lr_scale`` (the local-p position predictor W_p, v_p trains at this multiple of the
    learning rate; see the Luong experiment's config for why 0.01).
    """
    parts = []
    if train_config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
    adam = functools.partial(optax.adam, b2=train_config.get("adam_b2", 0.999), eps=train_config.get("adam_eps", 1e-8))
    rate = learning_rate(train_config, model_config)
    gate_lr = float(train_config.get("gate_learning_rate", 0.0))
    position_scale = float(train_config.get("position_lr_scale", 1.0))
    groups = {"weights": adam(rate)}
    if gate_lr > 0:
        groups["gates"] = adam(gate_lr)
    if position_scale != 1.0:
        groups["position"] = adam(_scaled(rate, position_scale))
    if len(groups) == 1:
        parts.append(groups["weights"])
    else:
        def labels(params):
            def label(path, _):
                name = getattr(path[-1], "key", "")
                if "gates" in groups and "log_alpha" in jax.tree_util.keystr(path):
                    return "gates"
                return "position" if "position" in groups and name in POSITION_PARAMS else "weights"

            return jax.tree_util.tree_map_with_path(label, params)

        parts.append(optax.multi_transform(groups, labels))
    return optax.chain(*parts)


# The local-p position predictor of Luong et al. 2015 (eq. 9: p_t = S sigmoid(v_p^T tanh(W_p h_t))), the parameters
# `train.position_lr_scale` applies to.
POSITION_PARAMS = ("w_p", "v_p")


def _scaled(rate: float | optax.Schedule, scale: float) -> float | optax.Schedule:
    return (lambda step: scale * rate(step)) if callable(rate) else scale * rate


def warmup_cosine_schedule(tc: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to ``learning_rate``, then cosine decay to ``learning_rate * min_lr_ratio`` at ``num_steps``
    (constant after warmup when num_steps is 0), as in the paper's released training scripts."""
    peak = float(tc.learning_rate)
    if tc.num_steps <= 0:
        return optax.join_schedules([optax.linear_schedule(0.0, peak, max(tc.warmup_steps, 1)),
                                     optax.constant_schedule(peak)], [max(tc.warmup_steps, 1)])
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps=int(tc.warmup_steps),
                                              decay_steps=max(int(tc.num_steps), int(tc.warmup_steps) + 1),
                                              end_value=peak * float(tc.min_lr_ratio))


def make_lm_optimizer(tc: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping then Adam with the warmup + cosine schedule (the language model)."""
    parts = [optax.clip_by_global_norm(tc.grad_clip_norm)] if tc.grad_clip_norm > 0 else []
    return optax.chain(*parts, optax.adam(warmup_cosine_schedule(tc)))
