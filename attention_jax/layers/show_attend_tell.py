"""Show, Attend and Tell's soft and hard attention over image annotation vectors, with their training terms.

Xu et al. 2015, "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention",
arXiv:1502.03044, §4. An image gives L annotation vectors a_i [D] (the locations of a CNN feature map); at
step t the decoder's previous state h_{t-1} [Dh] scores every location and the attention reads a context z_t:

    e_ti = f_att(a_i, h_{t-1}) = w^T tanh(W_a a_i + W_h h_{t-1} + b)    eq. 4 (the MLP of the released code)
    alpha_ti = exp(e_ti) / sum_k exp(e_tk)                              eq. 5

Hard ("stochastic") attention, §4.1: one location is drawn and read,

    s_t ~ Multinoulli_L({alpha_ti})                                     eq. 8
    z_t = sum_i s_ti a_i = a_{s_t}                                      eq. 9
    dL_s/dW ~ (1/N) sum_n [d log p(y | s^n, a)/dW                       eq. 12 (with the baseline b and the
              + lambda_r (log p(y | s^n, a) - b) d log p(s^n | a)/dW     entropy term of the final rule)
              + lambda_e dH[s^n]/dW]
    b_k = 0.9 b_{k-1} + 0.1 log p(y | s_k, a)                           the moving-average baseline

and, with probability 0.5, the expected context replaces the sample (§4.1, "we set the sampled attention
location s to its expected value alpha"). Soft ("deterministic") attention, §4.2, reads the expectation,

    z_t = beta_t sum_i alpha_ti a_i,  beta_t = sigmoid(f_beta(h_{t-1}))  eq. 13 and the gate of §4.2.1
    L_d = -log P(y | x) + lambda sum_i (1 - sum_t alpha_ti)^2          eq. 14: the doubly stochastic penalty

The modern alternative to REINFORCE is the straight-through Gumbel-softmax (Jang et al. 2016,
arXiv:1611.01144): the forward reads exactly one location, the backward is that of the relaxed softmax.

Letters: B batch, L locations (the package's S), D annotation width, Dh decoder state width, A the attention's
hidden width, T caption steps. The sampling itself (`sample_hard`, `gumbel_softmax`) lives in
`attention_jax.core.alignment`.
"""

from __future__ import annotations

import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax.core import alignment
from attention_jax.core import axes
from attention_jax.layers._common import vector_init

__all__ = [
    "DETERMINISTIC_CONTEXTS",
    "MODES",
    "ShowAttendTellAttention",
    "attention_entropy",
    "attention_logits",
    "doubly_stochastic_penalty",
    "expected_context",
    "reinforce_surrogate",
    "show_attend_tell",
    "update_baseline",
]

_F32 = jnp.float32

MODES = ("soft", "hard", "gumbel")
"""The attention modes: soft (§4.2), hard with REINFORCE (§4.1), straight-through Gumbel-softmax."""

DETERMINISTIC_CONTEXTS = ("expected", "argmax")
"""What a hard mode reads when deterministic: the expectation (soft context) or the most likely location."""


def _check_location_mask(mask: Any, annotations: jax.Array) -> None:
    _checks.rank("mask", mask, 2)
    _checks.boolean("mask", mask)
    if tuple(jnp.shape(mask)) != tuple(jnp.shape(annotations)[:2]):
        raise ValueError(f"mask must be [B, L] = {tuple(jnp.shape(annotations)[:2])}, got mask.shape="
                         f"{tuple(jnp.shape(mask))}; annotations.shape={tuple(jnp.shape(annotations))}")


def _check_param(name: str, x: Any, expected: tuple[int, ...], what: str) -> None:
    _checks.array(name, x)
    _checks.floating(name, x)
    if tuple(jnp.shape(x)) != expected:
        raise ValueError(f"{name} must be {what} = {expected}, got {name}.shape={tuple(jnp.shape(x))}")


def _real(name: str, value: Any, low: float, high: float | None = None) -> float:
    """value as float, raising ValueError unless a real number (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            value >= low and (high is None or value <= high)):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a real number in {bounds}, got {value!r}")
    return float(value)


def _valid(annotations: jax.Array, mask: jax.Array | None) -> jax.Array:
    """[B, L] bool, the mask or all True."""
    if mask is None:
        return jnp.ones(jnp.shape(annotations)[:2], bool)
    return jnp.asarray(mask)


def attention_logits(
    annotations: jax.Array,
    state: jax.Array,
    w_a: jax.Array,
    b_a: jax.Array,
    w_h: jax.Array,
    w_att: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """The attention model f_att of Xu et al. 2015 (arXiv:1502.03044, eq. 4): e_i = w^T tanh(W_a a_i + W_h h + b).

    An MLP with one tanh layer, as in the released code (the paper leaves f_att open). Masked locations are
    zeroed before the projection, so NaN or inf stored there reaches neither the logits nor any gradient; the
    state of a row with no valid location is zeroed too. Masked logits are finite but meaningless: normalise
    them with the same mask.

    Args:
      annotations: [B, L, D] floating, the annotation vectors a_i.
      state: [B, Dh] floating, the decoder's previous hidden state h_{t-1}.
      w_a: [D, A] floating, W_a.
      b_a: [A] floating, b.
      w_h: [Dh, A] floating, W_h.
      w_att: [A] floating, w.
      mask: None or [B, L] bool, True = a real location.

    Returns:
      logits: [B, L] float32, e_ti.

    Raises:
      ValueError: if annotations is not rank 3, state not rank 2, their batch sizes differ, a weight does not
        fit (the message names the shapes), or the mask is not [B, L].
      TypeError: for non-floating inputs or weights, or a non-boolean mask.
    """
    _checks.rank("annotations", annotations, 3)
    _checks.floating("annotations", annotations)
    _checks.rank("state", state, 2)
    _checks.floating("state", state)
    if jnp.shape(state)[0] != jnp.shape(annotations)[0]:
        raise ValueError(f"state must be [B, Dh] for annotations [B, L, D]: state.shape={tuple(jnp.shape(state))} "
                         f"annotations.shape={tuple(jnp.shape(annotations))}")
    if mask is not None:
        _check_location_mask(mask, annotations)
    _checks.rank("w_a", w_a, 2)
    hidden = jnp.shape(w_a)[1]
    _check_param("w_a", w_a, (jnp.shape(annotations)[2], hidden), "[D, A]")
    _check_param("b_a", b_a, (hidden,), "[A]")
    _check_param("w_h", w_h, (jnp.shape(state)[1], hidden), "[Dh, A]")
    _check_param("w_att", w_att, (hidden,), "[A]")
    valid = _valid(annotations, mask)  # [B, L]
    alive = jnp.any(valid, axis=1)  # [B]
    annotations = jnp.where(valid[..., None], jnp.asarray(annotations).astype(_F32), 0.0)  # [B, L, D]
    state = jnp.where(alive[:, None], jnp.asarray(state).astype(_F32), 0.0)  # [B, Dh]
    projected = jnp.einsum("BLD,DA->BLA", annotations, jnp.asarray(w_a, _F32)) + jnp.asarray(b_a, _F32)
    projected = projected + jnp.einsum("BH,HA->BA", state, jnp.asarray(w_h, _F32))[:, None, :]  # [B, L, A]
    return jnp.einsum("BLA,A->BL", jnp.tanh(projected), jnp.asarray(w_att, _F32))


def expected_context(annotations: jax.Array, weights: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """sum_i weights_i a_i: the soft context of Xu et al. 2015 (arXiv:1502.03044, eq. 13), or a_s for a one-hot.

    With the attention weights alpha it is E_{p(s|a)}[z] (eq. 13); with a one-hot s it reads one location
    (eq. 9). Masked locations are selected away first, so NaN there reaches neither the context nor a gradient.

    Args:
      annotations: [B, L, D] floating.
      weights: [B, L] floating, alpha or a one-hot s.
      mask: None or [B, L] bool, True = a real location.

    Returns:
      context: [B, D] float32.

    Raises:
      ValueError: if annotations is not rank 3 or weights / mask is not [B, L] (the message names the shapes).
      TypeError: for non-floating annotations or weights, or a non-boolean mask.
    """
    _checks.rank("annotations", annotations, 3)
    _checks.floating("annotations", annotations)
    _check_param("weights", weights, tuple(jnp.shape(annotations)[:2]), "[B, L]")
    if mask is not None:
        _check_location_mask(mask, annotations)
    valid = _valid(annotations, mask)
    annotations = jnp.where(valid[..., None], jnp.asarray(annotations).astype(_F32), 0.0)  # [B, L, D]
    weights = jnp.where(valid, jnp.asarray(weights).astype(_F32), 0.0)  # [B, L]
    return jnp.einsum("BL,BLD->BD", weights, annotations)


def attention_entropy(alpha: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The entropy H = -sum_i alpha_i log alpha_i of the multinoulli over locations (the H[s] of eq. 12).

    Xu et al. 2015, arXiv:1502.03044, §4.1: the entropy term lambda_e dH[s]/dW of the learning rule. Zero
    weights (and masked locations, whatever they hold) contribute 0, with zero gradient.

    Args:
      alpha: [..., L] floating, rows of the simplex.
      mask: None or bool of exactly alpha's shape, True = a real location.

    Returns:
      entropy: [...] float32 (sum over the steps of a caption for the H of a whole sequence of choices).

    Raises:
      ValueError: if alpha is a scalar or the mask shape differs.
      TypeError: if alpha is not floating or the mask is not boolean.
    """
    _checks.floating("alpha", alpha)
    if jnp.ndim(alpha) < 1:
        raise ValueError(f"alpha must have shape [..., L], got {jnp.shape(alpha)}")
    alpha = jnp.asarray(alpha).astype(_F32)
    positive = alpha > 0
    if mask is not None:
        _checks.boolean("mask", mask)
        if jnp.shape(mask) != jnp.shape(alpha):
            raise ValueError(f"mask and alpha shapes differ: {jnp.shape(mask)=} {alpha.shape=}")
        positive = positive & jnp.asarray(mask)
    safe = jnp.where(positive, alpha, 1.0)
    return -jnp.sum(jnp.where(positive, safe * jnp.log(safe), 0.0), axis=-1)


def doubly_stochastic_penalty(
    alphas: jax.Array,
    location_mask: jax.Array | None = None,
    time_mask: jax.Array | None = None,
    lam: float = 1.0,
) -> jax.Array:
    """The doubly stochastic regulariser of Xu et al. 2015 (arXiv:1502.03044, eq. 14): lam sum_i (1 - sum_t alpha_ti)^2.

    It asks every location to receive, over the caption, a total attention of about 1 (§4.2.1). Padded caption
    steps (time_mask False) add nothing to sum_t, and padded locations (location_mask False) are left out of
    sum_i; what they hold (NaN included) reaches neither the penalty nor its gradient.

    Args:
      alphas: [B, T, L] floating, the attention weights of every step.
      location_mask: None or [B, L] bool, True = a real location.
      time_mask: None or [B, T] bool, True = a real caption step.
      lam: lambda >= 0.

    Returns:
      penalty: [B] float32, one per caption (average it over the batch for the loss of eq. 14).

    Raises:
      ValueError: if alphas is not rank 3, a mask is not [B, L] / [B, T] (the message names the shapes), or
        lam < 0.
      TypeError: if alphas is not floating or a mask is not boolean.
    """
    _checks.rank("alphas", alphas, 3)
    _checks.floating("alphas", alphas)
    batch, steps, locations = jnp.shape(alphas)
    lam = _real("lam", lam, 0.0)
    valid = jnp.ones((batch, steps, locations), bool)
    for name, m, shape, what, expand in (("location_mask", location_mask, (batch, locations), "[B, L]", 1),
                                         ("time_mask", time_mask, (batch, steps), "[B, T]", 2)):
        if m is None:
            continue
        _checks.rank(name, m, 2)
        _checks.boolean(name, m)
        if tuple(jnp.shape(m)) != shape:
            raise ValueError(f"{name} must be {what} = {shape}, got {name}.shape={tuple(jnp.shape(m))}; "
                             f"alphas.shape={tuple(jnp.shape(alphas))}")
        valid = valid & jnp.expand_dims(jnp.asarray(m), expand)
    totals = jnp.sum(jnp.where(valid, jnp.asarray(alphas).astype(_F32), 0.0), axis=1)  # [B, L], sum over t
    real = jnp.ones((batch, locations), bool) if location_mask is None else jnp.asarray(location_mask)
    return lam * jnp.sum(jnp.where(real, jnp.square(1.0 - totals), 0.0), axis=1)


def reinforce_surrogate(
    log_prob_samples: jax.Array,
    log_likelihood: jax.Array,
    baseline: jax.Array | float = 0.0,
    entropy: jax.Array | None = None,
    lambda_r: float = 1.0,
    lambda_e: float = 0.0,
) -> jax.Array:
    """A surrogate objective whose gradient is the hard attention's learning rule (arXiv:1502.03044, eq. 12).

    Xu et al. 2015, §4.1: for a sample s^n of the locations,

        d/dW [surrogate] = d log p(y | s^n, a)/dW + lambda_r (log p(y | s^n, a) - b) d log p(s^n | a)/dW
                           + lambda_e dH[s^n]/dW,

    the REINFORCE estimator (Williams 1992) with the moving-average baseline b and the entropy term. The
    surrogate is log p(y|s,a) + lambda_r sg(log p(y|s,a) - b) log p(s|a) + lambda_e H, with sg the stop-gradient:
    its value is not L_s, only its gradient is the estimator. Maximise its mean over the N samples (minimise the
    negative). With lambda_r = 1 and any b that does not depend on s, its expected gradient is exactly
    d/dW E_s[log p(y | s, a)] = dL_s/dW (eqs. 10-11).

    Args:
      log_prob_samples: [N] (any shape) floating, log p(s^n | a): the sum over steps of the log-probabilities of
        the sampled locations (the log_prob output of a hard `show_attend_tell`), differentiable.
      log_likelihood: floating, the shape of log_prob_samples, log p(y | s^n, a), differentiable.
      baseline: a scalar or an array of log_prob_samples' shape, b; never differentiated.
      entropy: None or floating of log_prob_samples' shape, H[s^n] (`attention_entropy`), differentiable.
      lambda_r, lambda_e: the weights lambda_r, lambda_e >= 0.

    Returns:
      surrogate: float32 of log_prob_samples' shape.

    Raises:
      ValueError: if the shapes differ (the message names them) or a weight is negative.
      TypeError: for non-floating inputs.
    """
    _checks.floating("log_prob_samples", log_prob_samples)
    _checks.floating("log_likelihood", log_likelihood)
    _checks.floating("baseline", baseline)
    shape = tuple(jnp.shape(log_prob_samples))
    for name, x in (("log_likelihood", log_likelihood), ("entropy", entropy)):
        if x is not None:
            _checks.floating(name, x)
            if tuple(jnp.shape(x)) != shape:
                raise ValueError(f"{name} must have log_prob_samples' shape {shape}, got {name}.shape="
                                 f"{tuple(jnp.shape(x))}")
    if jnp.ndim(baseline) != 0 and tuple(jnp.shape(baseline)) != shape:
        raise ValueError(f"baseline must be a scalar or of log_prob_samples' shape {shape}, got baseline.shape="
                         f"{tuple(jnp.shape(baseline))}")
    lambda_r = _real("lambda_r", lambda_r, 0.0)
    lambda_e = _real("lambda_e", lambda_e, 0.0)
    log_likelihood = jnp.asarray(log_likelihood).astype(_F32)
    advantage = jax.lax.stop_gradient(log_likelihood - jnp.asarray(baseline, _F32))
    surrogate = log_likelihood + lambda_r * advantage * jnp.asarray(log_prob_samples).astype(_F32)
    if entropy is not None:
        surrogate = surrogate + lambda_e * jnp.asarray(entropy).astype(_F32)
    return surrogate


def update_baseline(baseline: jax.Array | float, log_likelihood: jax.Array, decay: float = 0.9) -> jax.Array:
    """The moving-average baseline of Xu et al. 2015 (arXiv:1502.03044, §4.1): b_k = 0.9 b_{k-1} + 0.1 log p(y|s_k, a).

    The minibatch's mean log-likelihood stands for log p(y | s_k, a), as in the released code. An empty
    minibatch leaves b unchanged. No gradient flows through the result.

    Args:
      baseline: a floating scalar, b_{k-1}.
      log_likelihood: floating, any shape, the minibatch's log p(y | s, a).
      decay: in [0, 1], the weight of the old baseline (0.9 in the paper).

    Returns:
      baseline: a float32 scalar, b_k.

    Raises:
      ValueError: if baseline is not a scalar or decay is outside [0, 1].
      TypeError: for non-floating inputs.
    """
    _checks.floating("baseline", baseline)
    _checks.floating("log_likelihood", log_likelihood)
    if jnp.ndim(baseline) != 0:
        raise ValueError(f"baseline must be a scalar, got shape {jnp.shape(baseline)}")
    decay = _real("decay", decay, 0.0, 1.0)
    baseline = jnp.asarray(baseline, _F32)
    if jnp.size(log_likelihood) == 0:
        return jax.lax.stop_gradient(baseline)
    mean = jnp.mean(jnp.asarray(log_likelihood).astype(_F32))
    return jax.lax.stop_gradient(decay * baseline + (1.0 - decay) * mean)


def show_attend_tell(
    annotations: jax.Array,
    state: jax.Array,
    w_a: jax.Array,
    b_a: jax.Array,
    w_h: jax.Array,
    w_att: jax.Array,
    mask: jax.Array | None = None,
    *,
    w_beta: jax.Array | None = None,
    b_beta: jax.Array | None = None,
    mode: str = "soft",
    deterministic: bool | None = None,
    rng: jax.Array | None = None,
    expected_context_prob: float = 0.5,
    temperature: float = 1.0,
    deterministic_context: str = "expected",
) -> tuple[jax.Array, ...]:
    """One step of Show, Attend and Tell's attention (Xu et al. 2015, arXiv:1502.03044, §4): alpha and z_t.

    alpha = softmax_i(f_att(a_i, h_{t-1})) (eqs. 4-5, `attention_logits`) over the valid locations, then the
    context by mode:

      "soft" (§4.2): z = sum_i alpha_i a_i (eq. 13).
      "hard" (§4.1): s ~ Multinoulli(alpha) (eq. 8, `alignment.sample_hard`), z = a_s (eq. 9); the context
        carries no gradient to alpha, which learns through log_prob and `reinforce_surrogate`. With probability
        expected_context_prob (0.5 in the paper) a row reads the expected context instead and gets log_prob 0,
        so the REINFORCE term skips it and it learns through the soft path.
      "gumbel": s = the straight-through Gumbel-softmax one-hot of the logits (`alignment.gumbel_softmax`,
        arXiv:1611.01144), z = sum_i s_i a_i: exactly a_s forward, the relaxed softmax's gradient backward.

    With deterministic=True the hard modes draw nothing: they read the expected context (log_prob 0) or, with
    deterministic_context="argmax", the most likely location. With w_beta the context is gated,
    z <- beta z with beta = sigmoid(h_{t-1} w_beta + b_beta) (§4.2.1), in every mode.

    Masked locations (NaN or inf included) reach no output and no gradient and are never drawn; a row with no
    valid location (L = 0 included) gets alpha 0, a zero context and sample, log_prob 0 and zero gradients.

    Args:
      annotations: [B, L, D] floating, the annotation vectors a_i.
      state: [B, Dh] floating, h_{t-1}.
      w_a, b_a, w_h, w_att: [D, A], [A], [Dh, A], [A] floating, the weights of `attention_logits`.
      mask: None or [B, L] bool, True = a real location.
      w_beta, b_beta: None (no gate), or [Dh, 1] and [1] floating, f_beta.
      mode: one of `MODES`.
      deterministic: a bool, required by the hard modes (ignored by "soft").
      rng: a PRNG key; required by the hard modes when not deterministic.
      expected_context_prob: in [0, 1], "hard" only: the chance a row reads the expected context.
      temperature: tau > 0 of the Gumbel-softmax ("gumbel" only).
      deterministic_context: one of `DETERMINISTIC_CONTEXTS`.

    Returns:
      "soft": (context [B, D] in annotations' dtype, alpha [B, L] float32).
      "hard" and "gumbel": (context, alpha, sample [B, L] float32, the one-hot location drawn (the argmax when
        deterministic; still the draw where a row read the expectation), zero for a row with no valid location;
        log_prob [B] float32, log alpha_s of the location the context read, 0 where it read the expectation).

    Raises:
      ValueError: for bad shapes (as `attention_logits`; the message names them), a gate given halfway or of
        the wrong shape, an unknown mode, a hard mode without deterministic, or without rng while sampling,
        expected_context_prob outside [0, 1] or temperature <= 0.
      TypeError: for non-floating inputs or weights, a non-boolean mask, a non-bool deterministic or a bad rng.
    """
    _checks.choice("mode", mode, MODES)
    _checks.choice("deterministic_context", deterministic_context, DETERMINISTIC_CONTEXTS)
    expected_context_prob = _real("expected_context_prob", expected_context_prob, 0.0, 1.0)
    temperature = _checks.positive_real("temperature", temperature)
    logits = attention_logits(annotations, state, w_a, b_a, w_h, w_att, mask)  # [B, L]
    if (w_beta is None) != (b_beta is None):
        raise ValueError("the gate needs both w_beta and b_beta, or neither")
    if w_beta is not None:
        _check_param("w_beta", w_beta, (jnp.shape(state)[1], 1), "[Dh, 1]")
        _check_param("b_beta", b_beta, (1,), "[1]")
    sampling = False
    if mode != "soft":
        if deterministic is None:
            raise ValueError(f"mode={mode!r} needs deterministic=True (no sampling) or False (training)")
        sampling = not _checks.flag("deterministic", deterministic)
        if sampling and rng is None:
            raise ValueError(f"mode={mode!r} with deterministic=False needs rng, a PRNG key")
    valid = _valid(annotations, mask)  # [B, L]
    alive = jnp.any(valid, axis=1)  # [B]
    alpha, lse = alignment.masked_softmax_with_lse(logits, valid)  # [B, L], [B]
    log_alpha = logits - lse[:, None]  # [B, L]; finite, read only at the chosen valid location
    soft = expected_context(annotations, alpha, valid)  # [B, D]
    outputs: tuple[jax.Array, ...]
    if mode == "soft":
        context = soft
        outputs = ()
    else:
        if not sampling:
            index = jnp.where(alive, jnp.argmax(jnp.where(valid, logits, -jnp.inf), axis=1), -1)
            sample = jax.nn.one_hot(index, logits.shape[1], dtype=_F32)  # [B, L]
            read_sample = jnp.full(alive.shape, deterministic_context == "argmax")  # [B]
        elif mode == "hard":
            sample_key, coin_key = jax.random.split(rng)
            sample, _ = alignment.sample_hard(sample_key, alpha, valid)  # [B, L], no gradient
            read_sample = ~jax.random.bernoulli(coin_key, expected_context_prob, alive.shape)  # [B]
        else:
            sample = alignment.gumbel_softmax(rng, logits, valid, temperature=temperature, hard=True)
            read_sample = jnp.ones(alive.shape, bool)
        chosen = jax.lax.stop_gradient(sample) > 0  # [B, L]
        log_prob = jnp.sum(jnp.where(chosen, log_alpha, 0.0), axis=1)  # [B]
        log_prob = jnp.where(read_sample & alive, log_prob, 0.0)
        context = jnp.where(read_sample[:, None], expected_context(annotations, sample, valid), soft)
        outputs = (sample, log_prob)
    if w_beta is not None:
        live_state = jnp.where(alive[:, None], jnp.asarray(state).astype(_F32), 0.0)  # [B, Dh]
        beta = jax.nn.sigmoid(live_state @ jnp.asarray(w_beta, _F32) + jnp.asarray(b_beta, _F32))  # [B, 1]
        context = beta * context
    context = context.astype(jnp.result_type(annotations))
    return (context, alpha) + outputs


class ShowAttendTellAttention(nn.Module):
    """Show, Attend and Tell's attention over annotation vectors (Xu et al. 2015, arXiv:1502.03044, §4).

    The parameters of `show_attend_tell`: ``w_a`` [D, A] (embed, mlp), ``b_a`` [A] (mlp), ``w_h`` [Dh, A]
    (None, mlp), ``w_att`` [A] (mlp), and with the gate ``w_beta`` [Dh, 1] (mlp, None) and ``b_beta`` [1]
    (None). Dh is named once per array: in w_h the hidden A carries "mlp".

    Attributes:
      hidden: A, the width of the attention MLP.
      mode: one of `MODES`: "soft" (§4.2), "hard" (§4.1, REINFORCE) or "gumbel" (straight-through).
      gate: whether to gate the context with beta = sigmoid(f_beta(h_{t-1})) (§4.2.1).
      expected_context_prob: "hard" only: the chance a row reads the expected context while training (0.5).
      temperature: the Gumbel-softmax tau ("gumbel" only).
      deterministic_context: what the hard modes read when deterministic (`DETERMINISTIC_CONTEXTS`).
      deterministic: the hard modes' default for the call's ``deterministic`` (flax's `nn.merge_param`: give it
        here or at the call, not both); None = give it at the call.
      param_dtype: the parameters' dtype.
    """

    hidden: int
    mode: str = "soft"
    gate: bool = True
    expected_context_prob: float = 0.5
    temperature: float = 1.0
    deterministic_context: str = "expected"
    deterministic: bool | None = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.int_at_least("ShowAttendTellAttention.hidden", self.hidden, 1)
        _checks.choice("mode", self.mode, MODES)
        _checks.flag("gate", self.gate)
        _real("expected_context_prob", self.expected_context_prob, 0.0, 1.0)
        _checks.positive_real("temperature", self.temperature)
        _checks.choice("deterministic_context", self.deterministic_context, DETERMINISTIC_CONTEXTS)
        if self.deterministic is not None:
            _checks.flag("deterministic", self.deterministic)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        annotations: jax.Array,
        state: jax.Array,
        mask: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, ...]:
        """`show_attend_tell` with this module's parameters.

        Args:
          annotations: [B, L, D] floating.
          state: [B, Dh] floating.
          mask: None or [B, L] bool, True = a real location.
          deterministic: a bool, required by the hard modes here or as the attribute: True draws nothing.
          rng: a PRNG key for the draw; None takes ``self.make_rng("sample")`` when sampling.

        Returns:
          "soft": (context [B, D], alpha [B, L]); the hard modes add (sample [B, L], log_prob [B]).

        Raises:
          ValueError, TypeError: as `show_attend_tell`; ValueError also when a hard mode gets deterministic
            both as the attribute and at the call, or neither.
        """
        _checks.rank("annotations", annotations, 3)
        _checks.rank("state", state, 2)
        dim, state_dim = jnp.shape(annotations)[2], jnp.shape(state)[1]
        lecun = nn.initializers.lecun_normal()
        w_a = self.param("w_a", axes.partitioned(lecun, (axes.EMBED, axes.MLP)), (dim, self.hidden),
                         self.param_dtype)
        b_a = self.param("b_a", axes.partitioned(nn.initializers.zeros_init(), (axes.MLP,)), (self.hidden,),
                         self.param_dtype)
        w_h = self.param("w_h", axes.partitioned(lecun, (None, axes.MLP)), (state_dim, self.hidden),
                         self.param_dtype)
        w_att = self.param("w_att", axes.partitioned(vector_init(self.hidden), (axes.MLP,)), (self.hidden,),
                           self.param_dtype)
        gate = {}
        if self.gate:
            gate["w_beta"] = self.param("w_beta", axes.partitioned(lecun, (axes.MLP, None)), (state_dim, 1),
                                        self.param_dtype)
            gate["b_beta"] = self.param("b_beta", axes.partitioned(nn.initializers.zeros_init(), (None,)), (1,),
                                        self.param_dtype)
        if self.mode != "soft":
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            if not deterministic and rng is None:
                rng = self.make_rng("sample")
        return show_attend_tell(annotations, state, w_a, b_a, w_h, w_att, mask, **gate, mode=self.mode,
                                deterministic=deterministic, rng=rng,
                                expected_context_prob=self.expected_context_prob, temperature=self.temperature,
                                deterministic_context=self.deterministic_context)
