"""Argument checks shared by the public functions.

Every check runs on static shapes and dtypes, so it costs nothing under jit and fires before any compute.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np


_SCALARS = (bool, int, float, complex, np.generic)


def array(name: str, x: Any) -> None:
    """Raises TypeError unless `x` is an array (jax, numpy, a tracer: anything with shape and dtype) or a scalar.

    A Python list or tuple is rejected here, with the argument's name, instead of failing deep inside jax.
    """
    if isinstance(x, _SCALARS) or (hasattr(x, "shape") and hasattr(x, "dtype")):
        return
    raise TypeError(f"{name} must be an array (jax.Array or numpy.ndarray), got {type(x).__name__}: {x!r:.80}")


def rank(name: str, x: Any, expected: int | tuple[int, ...]) -> None:
    """Raises TypeError unless `x` is an array, ValueError unless it has one of the expected ranks."""
    array(name, x)
    ranks = (expected,) if isinstance(expected, int) else expected
    if jnp.ndim(x) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have rank {want}, got shape {jnp.shape(x)}")


def floating(name: str, x: Any) -> None:
    """Raises TypeError unless `x` has a floating dtype."""
    array(name, x)
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {jnp.result_type(x)}")


def boolean(name: str, x: Any) -> None:
    """Raises TypeError unless `x` is boolean (masks are never cast silently)."""
    array(name, x)
    if jnp.result_type(x) != jnp.bool_:
        raise TypeError(f"{name} must be boolean (True = attend), got dtype {jnp.result_type(x)}")


def integer(name: str, x: Any) -> None:
    """Raises TypeError unless `x` has an integer dtype."""
    array(name, x)
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise TypeError(f"{name} must be integer, got dtype {jnp.result_type(x)}")


def same_batch(**arrays: Any) -> None:
    """Raises ValueError unless all arrays share their leading (batch) dimension."""
    for name, a in arrays.items():
        array(name, a)
    sizes = {name: jnp.shape(a)[0] for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        shapes = " ".join(f"{name}.shape={jnp.shape(a)}" for name, a in arrays.items())
        raise ValueError(f"batch sizes differ: {shapes}")


def shape(name: str, x: Any, expected: tuple[int | None, ...]) -> None:
    """Raises TypeError unless `x` is an array, ValueError unless `x.shape` matches `expected` (None = any)."""
    array(name, x)
    got = jnp.shape(x)
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        want = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {want}, got {got}")


def positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    """Returns `value` as int, raising ValueError unless it is a (non-negative | positive) integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def attention_inputs(inputs_q: Any, inputs_kv: Any | None) -> Any:
    """Checks a module's [B, T, Dq] queries and [B, S, Dkv] keys/values; returns inputs_kv (inputs_q if None).

    Raises ValueError for ranks other than 3 or differing batch sizes, TypeError for non-floating inputs.
    """
    rank("inputs_q", inputs_q, 3)
    floating("inputs_q", inputs_q)
    if inputs_kv is None:
        return inputs_q
    rank("inputs_kv", inputs_kv, 3)
    floating("inputs_kv", inputs_kv)
    same_batch(inputs_q=inputs_q, inputs_kv=inputs_kv)
    return inputs_kv


def choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises ValueError unless `value` is one of the string `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices are {choices}")


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """Returns `value` as int, raising ValueError unless it is a Python/numpy integer (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def rate(name: str, value: Any) -> float:
    """Returns `value` as float, raising ValueError unless it is a real number (not bool) in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def positive_real(name: str, value: Any, allow_zero: bool = False) -> float:
    """Returns `value` as float, raising ValueError unless it is a real number (not bool) > 0 (>= 0 with allow_zero)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a real number {bound}, got {value!r}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """Returns `value`, raising TypeError unless it is a real bool (Python or numpy), never a string or int."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def tokens(name: str, x: Any, ndim: int) -> None:
    """Raises ValueError unless `x` is an array of rank `ndim`, TypeError unless its dtype is integer."""
    array(name, x)
    if not hasattr(x, "shape") or len(x.shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {getattr(x, 'shape', None)}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
