"""How the text of an option (its flag or its EASEL_* variable) becomes its value.

Each function takes the text and returns the value the option table (server/options.py) puts in
Settings, Limits or ClusterConfig; a bad text raises argparse.ArgumentTypeError, which argparse
reports as `argument --flag: <message>`. Sizes are in MiB; pixel counts are millions of pixels
or WIDTHxHEIGHT ("4096x4096").
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import TypeVar

from server.limits import MIB
from server.outbound import parse_network

N = TypeVar("N", int, float)

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def comma_list(text: str) -> tuple[str, ...]:
    """ "cuda:0, cuda:1" -> ("cuda:0", "cuda:1"); blanks dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def preload(text: str) -> tuple[str, ...]:
    """--preload: "none" loads nothing, "default" is the catalogue's default checkpoint ("")."""
    names = comma_list(text)
    if [name.lower() for name in names] in ([], ["none"]):
        return ()
    return tuple("" if name.lower() == "default" else name for name in names)


def optional_count(text: str) -> int | None:
    """A whole number, where 0 means "none given" (the engine's own choice)."""
    return int(text) or None


def url_network(text: str) -> str:
    """A CIDR network or single address, written back in CIDR form ("10.1.2.3/32")."""
    try:
        return str(parse_network(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str, parse: Callable[[str], N], what: str) -> N:
    """The text read by `parse`, which must give a positive number; the error names what was
    expected otherwise."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def mib(text: str) -> int:
    """A size in MiB ("1.5") -> bytes."""
    return max(1, round(_positive(text, float, "a size in MiB") * MIB))


def _pixel_count(text: str) -> int:
    """WIDTHxHEIGHT, or millions of pixels; ValueError for anything else."""
    match = _SIZE.match(text)
    if match is not None:
        return int(match.group(1)) * int(match.group(2))
    return round(float(text) * 1_000_000)


def pixels(text: str) -> int:
    return _positive(text, _pixel_count, "a number of megapixels or a size like 4096x4096")


def count(text: str) -> int:
    return _positive(text, int, "a whole number")


def rate(text: str) -> float:
    return _positive(text, float, "a number")


# --- defaults written back as the flags take them (--help, README) ---


def mib_text(size: int) -> str:
    return f"{size / MIB:g}"


def pixels_text(total: int) -> str:
    """16777216 -> "4096x4096 (16.8 megapixels)"; a count that is no square -> "33.6
    megapixels"."""
    side = math.isqrt(total)
    megapixels = f"{total / 1_000_000:.1f} megapixels"
    return f"{side}x{side} ({megapixels})" if side * side == total else megapixels
