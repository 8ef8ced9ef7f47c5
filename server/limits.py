"""Request limits: what one request may ask of the server, each refused with a clear error in
the protocol's own format before any work is queued.

One frozen Limits travels in Settings; every check reads it from there, and each limit has a
`easel serve` flag and an EASEL_* variable (docs/reliability.md lists them). The defaults below
are the CLI's too: the option table (server/options.py) reads them, so after changing one run
`python scripts/readme_options.py` to update README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # An HTTP request body (PICPIK POST /, Runware POST /v1), counted as it streams in.
    max_body_bytes: int = 64 * MIB
    # One image file (PNG, JPEG...) sent inline or fetched from a URL: the file's bytes, so
    # its base64 text (or data URI) may be 4/3 of this.
    max_image_bytes: int = 32 * MIB
    # Width x height of one decoded input image: PNG/JPEG "decompression bombs" stop here.
    max_image_pixels: int = 4096 * 4096
    # Width x height x images of one generation request (PICPIK BatchSize, Runware
    # numberResults), and the output of an upscale: 32 images of 1024x1024, 8 of 2048x2048.
    # It lets every documented maximum of the protocols at 1024x1024 through (Runware's 20
    # results, PICPIK's BatchSize 16).
    max_request_pixels: int = 32 * 1024 * 1024
    # Characters of one prompt (positive or negative), after any style template.
    max_prompt_chars: int = 3000
    # One WebSocket message (Runware sockets carry base64 images inline).
    ws_max_frame_bytes: int = 64 * MIB
    # Messages per second one WebSocket may send (pings included), with this burst.
    ws_messages_per_s: float = 50.0
    ws_burst: int = 100

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"the limit {name} must be positive, not {value!r}")

    @property
    def ws_hard_cap_bytes(self) -> int:
        """uvicorn's ws_max_size. A frame up to this is read and answered with a
        payloadTooLarge error frame (the socket stays open); a larger one makes uvicorn close
        the socket with 1009 (message too big) without reading it whole, so the headroom is
        what one oversized frame may cost in memory."""
        return self.ws_max_frame_bytes + max(self.ws_max_frame_bytes // 4, MIB)

    def prompt_problem(self, text: str) -> str | None:
        """Why a prompt is refused, to follow its field's name; None when it may pass."""
        if len(text) <= self.max_prompt_chars:
            return None
        return (
            f"is {len(text)} characters long, more than this server's limit of "
            f"{self.max_prompt_chars}"
        )

    def pixels_problem(self, width: int, height: int, images: int = 1) -> str | None:
        """Why width x height x images is refused, to follow the fields' names; None when the
        request stays within max_request_pixels."""
        total = width * height * images
        if total <= self.max_request_pixels:
            return None
        many = f" x {images} images" if images != 1 else ""
        return (
            f"{width}x{height}{many} is {total} pixels, more than this server's limit of "
            f"{self.max_request_pixels} per request"
        )


def describe_bytes(count: int) -> str:
    """A byte count as people read it in a message: "32 MiB", "1.5 KiB", "300 bytes"."""
    for unit, name in ((MIB, "MiB"), (1024, "KiB")):
        if count >= unit:
            amount = f"{count // unit}" if count % unit == 0 else f"{count / unit:.1f}"
            return f"{amount} {name}"
    return f"{count} bytes"
