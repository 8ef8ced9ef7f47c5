"""PICPIK request signatures: SHA-1 over the sorted, flattened request plus the private key.

The rendering rules are the official signing tool's (see shared/protocols/picpik.md): keys in
code-point order at every level, bools as true/false, integral floats as integers, lists and
objects concatenated without separators, null and "" as nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal
from typing import Any


def render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return format(Decimal(repr(value)), "f")  # never scientific notation
    if isinstance(value, list | tuple):
        return "".join(render(item) for item in value)
    if isinstance(value, dict):
        return "".join(str(key) + render(value[key]) for key in sorted(value))
    return str(value)


def string_to_sign(request: dict[str, Any], private_key: str) -> str:
    fields = {key: value for key, value in request.items() if key != "Signature"}
    return render(fields) + private_key


def sign(request: dict[str, Any], private_key: str) -> str:
    return hashlib.sha1(string_to_sign(request, private_key).encode("utf-8")).hexdigest()


def verify(request: dict[str, Any], private_key: str) -> bool:
    given = request.get("Signature")
    if not isinstance(given, str):
        return False
    # Bytes, not str: compare_digest refuses non-ASCII strings (a client may send any text).
    expected = sign(request, private_key).encode()
    return hmac.compare_digest(expected, given.lower().encode("utf-8", "replace"))
