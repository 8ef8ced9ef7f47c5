"""Client JSON (PICPIK bodies, Runware bodies and WebSocket messages) parsed one way.

Two things Python's json.loads lets through would otherwise surface deep inside the server:

- nesting deeper than the parser's recursion limit raises RecursionError, not ValueError;
- a lone surrogate escape ("\\ud800") is legal JSON but gives a str that no UTF-8 encoder
  takes, so storing, hashing, logging or answering with it (an error item echoes the taskUUID)
  fails long after parsing. Such code points become U+FFFD, the replacement character, as a
  JavaScript client's own UTF-8 encoder writes them (and so as it signs them).

Both were found by fuzzing (tests/fuzz).
"""

from __future__ import annotations

import json
import re
from typing import Any

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a literal prefix: a fast scan
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins the valid pairs


def loads(raw: str | bytes, **options: Any) -> Any:
    """raw as JSON (json.loads options pass through); ValueError when it is not JSON, nesting
    too deep included. Lone surrogates are replaced (see the module's docstring)."""
    text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, **options)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    return _replace_lone_surrogates(value) if _may_hold_surrogates(text) else value


def _may_hold_surrogates(text: str) -> bool:
    """Whether a string parsed from text can hold a lone surrogate: an escaped one, or (text
    decoded from bytes "surrogatepass", as json.loads does) a literal one, only in non-ASCII
    text. A large ASCII body (base64 images) costs one fast scan."""
    return not text.isascii() or _ESCAPED_SURROGATE.search(text) is not None


def _clean(text: str) -> str:
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


def _replace_lone_surrogates(value: Any) -> Any:
    """value with every string (keys included) cleaned, in place; iterative, since the parser
    accepts nesting deeper than a recursive walk could follow."""
    if isinstance(value, str):
        return _clean(value)
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = _clean(item)
                elif isinstance(item, list | dict):
                    pending.append(item)
        elif isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, item in items:
                if isinstance(item, str):
                    item = _clean(item)
                elif isinstance(item, list | dict):
                    pending.append(item)
                node[_clean(key)] = item
    return value
