"""How a config states a field's valid values: a `Rule` is a test and the same in words, for the message.

The fields' rules sit beside their defaults (`smallbig_jax.config.RULES` for the recipe, `smallbig_jax.data.config`
for the data options); `config.check_config` checks them all in one place. No JAX: a config loads without it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

DTYPES = ("float32", "bfloat16", "float16")  # names of the compute, parameter and input dtypes a config may ask for


@dataclasses.dataclass(frozen=True)
class Rule:
    """A field's valid values: `valid(value)` and the same in words for the message."""

    valid: Callable[[Any], bool]
    expected: str


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(v)


def integer(low: int, high: int | None = None) -> Rule:
    """An integer >= `low` (and <= `high`)."""
    words = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Rule(lambda v: _is_int(v) and v >= low and (high is None or v <= high), words)


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite real in the interval; `low_open`/`high_open` exclude the bounds."""
    above = (lambda v: v > low) if low_open else (lambda v: v >= low)
    below = (lambda v: True) if high is None else (lambda v: v < high) if high_open else (lambda v: v <= high)
    words = f"a number {'>' if low_open else '>='} {low}"
    if high is not None:
        words = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(lambda v: _is_number(v) and above(v) and below(v), words)


def one_of(*choices: Any) -> Rule:
    """One of `choices` (never a bool standing for 0 or 1)."""
    return Rule(lambda v: not isinstance(v, bool) and v in choices, "one of " + ", ".join(map(repr, choices)))


BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
SCALES = Rule(
    lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_number(s) and 0 < s <= 1 for s in v),
    "a non-empty list of numbers in (0, 1]",
)
