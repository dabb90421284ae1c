"""argparse types for command-line values, checked with the library's own validators so the
command line and the Python API refuse the same values with the same words."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pdprune.functional import check_sparsity, check_tau

__all__ = ["fraction_of_steps", "positive_int", "settle_fraction", "sparsity", "tau"]


def _checked(check: Callable[[float], float], text: str) -> float:
    try:
        return check(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def sparsity(text: str) -> float:
    return _checked(check_sparsity, text)


def tau(text: str) -> float:
    return _checked(check_tau, text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def fraction_of_steps(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"must be a fraction of the steps between 0 and 0.9, got {text}")
    return value


def settle_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a fraction of the steps after the ramp in (0, 1], got {text}"
        )
    return value
