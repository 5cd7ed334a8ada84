"""argparse `type=` helpers: a flag's value is checked where it enters, and argparse reports a bad one as
`argument --flag: <why>` with exit code 2. Each helper's name is what `--help` and the error show."""

import argparse
import math


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _ranged(kind, allowed, description: str):
    def parse(text: str):
        value = _number(kind, text)
        if not allowed(value):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value
    parse.__name__ = description  # argparse names the type in some messages
    return parse


positive_int = _ranged(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _ranged(int, lambda v: v >= 0, "an integer >= 0")
seed = _ranged(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
non_negative_float = _ranged(float, lambda v: v >= 0, "a finite number >= 0")
probability = _ranged(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
unit_interval = _ranged(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
