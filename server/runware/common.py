"""What the Runware modules share: the caller, result items, the preprocessor vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

PROTOCOL = "runware"


@dataclass
class Reply:
    """What one task produced: data items, or error items (both carry its taskUUID)."""

    data: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def json_object(value: Any) -> dict[str, Any]:
    """A task's nested JSON object (settings, inputs); {} for anything else (absent, null...)."""
    return value if isinstance(value, dict) else {}


Push = Callable[[Reply], None]  # sends a frame to the client later, unasked (WebSocket only)


@dataclass(frozen=True)
class Caller:
    owner: str  # the API key's owner id; "" when the server runs open
    base_url: str  # where result URLs point
    # Set on a WebSocket: an async task's progress and final items are pushed through it.
    push: Push | None = None


# Runware's preProcessorType names -> easel's preprocessor codes (A1111's). The engine's own
# codes are accepted too (the legacy protocol sends A1111 names such as depth_midas).
PREPROCESSORS: MappingProxyType[str, str] = MappingProxyType(
    {
        "canny": "canny",
        "depth": "depth_midas",
        "mlsd": "mlsd",
        "normalbae": "normal_bae",
        "openpose": "openpose",
        "lineart": "lineart",
        "lineart_anime": "lineart_anime",
        "lineart-anime": "lineart_anime",
        "shuffle": "shuffle",
        "scribble": "scribble_hed",
        "softedge": "softedge_hed",
    }
)
# Runware types easel has no preprocessor for, and why.
UNSUPPORTED_PREPROCESSORS: MappingProxyType[str, str] = MappingProxyType(
    {
        "tile": "the tile preprocessor is not available in easel yet",
        "seg": "segmentation preprocessors (OneFormer / UniFormer) are not available in easel yet",
    }
)
OPENPOSE_WITH_HANDS_AND_FACE = "openpose_full"
