"""Argument types and help formatting for ``pagedkv simulate``.

Every type refuses nonsense at parse time with a message that names the flag (argparse adds
``argument --flag:``) and says what was expected, so ``--capacity 1.5``, ``--capacity ,`` or
``--limit -3`` end in one line and exit status 2 rather than a run with a silently changed value.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.costmodel import LinearCostModel

#: argparse (before Python 3.13) takes ``-5,0.1,0.2`` for an unknown option and says only
#: "expected one argument"; with this, anything that starts like a number is a value, so the
#: value's own check can say what is wrong with it.
NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


def _integer(text: str) -> int:
    """An integer, written plainly or as a whole float (``4096``, ``1e3``); ``1.5`` is refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not math.isfinite(value) or not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer ``>= low``."""

    def parse(text: str) -> int:
        value = _integer(text.strip())
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def int_list(text: str) -> tuple[int, ...]:
    """A non-empty comma-separated list of positive integers."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    values = tuple(_integer(x) for x in parts)
    bad = [v for v in values if v <= 0]
    if bad:
        raise argparse.ArgumentTypeError(f"values must be positive, got {', '.join(map(str, bad))}")
    return values


def float_in(
    low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Callable[[str], float]:
    """A finite float between ``low`` and ``high`` (each bound included unless ``open_*``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if open_low else value < low
        too_high = value >= high if open_high else value > high
        if not math.isfinite(value) or too_low or too_high:
            span = f"{'>' if open_low else '>='} {low:g}"
            if math.isfinite(high):
                span += f" and {'<' if open_high else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def word_list(
    known: Sequence[str] | None = None, what: str = "value"
) -> Callable[[str], tuple[str, ...]]:
    """A non-empty comma-separated list of words (lower-cased), each in ``known`` if given."""

    def parse(text: str) -> tuple[str, ...]:
        words = tuple(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
        if not words:
            choices = f" ({', '.join(known)})" if known else ""
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {what}s{choices}, got {text!r}"
            )
        unknown = [w for w in words if known is not None and w not in known]
        if unknown and known is not None:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
            )
        return words

    parse.__name__ = f"{what} list"
    return parse


def cost_model(text: str) -> LinearCostModel:
    """``BASE,PREFILL,DECODE`` in milliseconds, each >= 0, or a ``.json`` file from
    ``pagedkv profile``."""
    try:
        return LinearCostModel.parse(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def show_default(value: Any) -> str | None:
    """How ``--help`` writes a default (None: not shown)."""
    if value is None or value is False or value is argparse.SUPPRESS:
        return None
    if isinstance(value, LinearCostModel):
        return f"{value.base_ms:g},{value.prefill_ms_per_token:g},{value.decode_ms_per_seq:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else None
    return f"{value:g}" if isinstance(value, float) else str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and ends every option's help with its default, unless the
    help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = show_default(action.default)
        if shown is None or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"
