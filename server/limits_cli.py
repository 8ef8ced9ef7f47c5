"""`easel serve` options for the request limits (server/limits.py), each also an EASEL_* variable.

One table row per option: the flag, the Limits field it sets, how its text is read. Sizes are in
MiB; pixel counts are millions of pixels or WIDTHxHEIGHT ("4096x4096"). A flag left out keeps
the Limits default.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from server.limits import MIB, Limits

N = TypeVar("N", int, float)

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _positive(text: str, parse: Callable[[str], N], what: str) -> N:
    """The flag's text read by `parse`, which must give a positive number; the flag's error
    names what was expected otherwise."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _mib(text: str) -> int:
    return max(1, round(_positive(text, float, "a size in MiB") * MIB))


def _pixel_count(text: str) -> int:
    """WIDTHxHEIGHT, or millions of pixels; ValueError for anything else."""
    match = _SIZE.match(text)
    if match is not None:
        return int(match.group(1)) * int(match.group(2))
    return round(float(text) * 1_000_000)


def _pixels(text: str) -> int:
    return _positive(text, _pixel_count, "a number of megapixels or a size like 4096x4096")


def _count(text: str) -> int:
    return _positive(text, int, "a whole number")


def _rate(text: str) -> float:
    return _positive(text, float, "a number")


@dataclass(frozen=True)
class LimitOption:
    flag: str
    field: str  # the Limits field it sets
    parse: Callable[[str], int | float]
    default: str  # the Limits default, as the flag would be written
    help: str

    @property
    def env(self) -> str:
        return "EASEL_" + self.flag.removeprefix("--").replace("-", "_").upper()

    @property
    def dest(self) -> str:
        return "limit_" + self.field


def _mib_text(count: int) -> str:
    return f"{count / MIB:g}"


_DEFAULTS = Limits()
LIMIT_OPTIONS: tuple[LimitOption, ...] = (
    LimitOption(
        "--max-body-mb",
        "max_body_bytes",
        _mib,
        _mib_text(_DEFAULTS.max_body_bytes),
        "largest HTTP request body (PICPIK POST /, Runware POST /v1)",
    ),
    LimitOption(
        "--max-image-mb",
        "max_image_bytes",
        _mib,
        _mib_text(_DEFAULTS.max_image_bytes),
        "largest image file sent inline (its base64 may be 4/3 of it) or fetched from a URL",
    ),
    LimitOption(
        "--max-image-megapixels",
        "max_image_pixels",
        _pixels,
        "4096x4096, 16.8",
        "largest decoded input image, in megapixels or as WIDTHxHEIGHT (decompression bombs "
        "stop here; Pillow itself refuses above about 179 megapixels)",
    ),
    LimitOption(
        "--max-request-megapixels",
        "max_request_pixels",
        _pixels,
        "33.6: 32 images of 1024x1024",
        "width x height x images of one generation request (PICPIK BatchSize, Runware "
        "numberResults), and an upscale's output, in megapixels or as WIDTHxHEIGHT",
    ),
    LimitOption(
        "--max-prompt-chars",
        "max_prompt_chars",
        _count,
        str(_DEFAULTS.max_prompt_chars),
        "longest prompt (each positive or negative prompt, promptEnhance / caption prompts)",
    ),
    LimitOption(
        "--ws-max-frame-mb",
        "ws_max_frame_bytes",
        _mib,
        _mib_text(_DEFAULTS.ws_max_frame_bytes),
        "largest Runware WebSocket message: a larger one is answered with payloadTooLarge, one "
        "over 1.25 times this (at least 1 MiB more) closes the socket (1009)",
    ),
    LimitOption(
        "--ws-messages-per-s",
        "ws_messages_per_s",
        _rate,
        f"{_DEFAULTS.ws_messages_per_s:g}",
        "messages (tasks) per second one WebSocket may send; more are refused with "
        "tooManyMessages, pings are always answered",
    ),
    LimitOption(
        "--ws-burst",
        "ws_burst",
        _count,
        str(_DEFAULTS.ws_burst),
        "messages one WebSocket may send at once above its rate",
    ),
)


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("request limits")
    for option in LIMIT_OPTIONS:
        group.add_argument(
            option.flag,
            dest=option.dest,
            type=option.parse,
            # A string default goes through `type` too: a bad variable is reported like a flag.
            default=os.environ.get(option.env),
            metavar="N",
            help=f"{option.help} ({option.env}; default {option.default})",
        )


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The Limits the options set; the defaults for the others (and for commands without
    these options)."""
    given = {
        option.field: getattr(args, option.dest)
        for option in LIMIT_OPTIONS
        if getattr(args, option.dest, None) is not None
    }
    return Limits(**given)
