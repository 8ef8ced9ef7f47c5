"""A typed JSON codec for engine jobs, so API replicas can hand them to GPU workers over Celery.

Pickle would let anyone who can write to the broker (Redis) run code on the workers, so jobs
travel as plain JSON. Encoding walks the dataclass fields generically and decoding rebuilds the
exact classes from their type hints: a new field or job class needs no change here. Decoding
trusts nothing: only the classes of `pipelines.jobs.Job` may be named, and an unknown class, an
unknown or missing field, or a value of the wrong type raises JobCodecError. An unknown field is
an error rather than dropped, so a worker older than the API never silently ignores a setting.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import io
import types
import typing
import zlib
from collections.abc import Mapping
from enum import Enum
from functools import cache
from types import MappingProxyType
from typing import Any, get_args, get_origin, get_type_hints

from PIL import Image

from pipelines.jobs import Job

JOB_CLASSES: dict[str, type] = {cls.__name__: cls for cls in get_args(Job)}
# Modes that PNG stores and reads back unchanged; other modes travel as raw bytes (zlib).
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
_MAX_RAW_PIXELS = 1 << 26  # 8192 x 8192: a raw image may not inflate past this (zip bombs)
_RAW_BYTES_PER_PIXEL = 4  # the widest raw-encoded mode (I, F, CMYK, RGBX...)


class JobCodecError(ValueError):
    """A job that cannot be encoded, or data that is not a valid encoded job."""


def encode_job(job: Job) -> dict[str, Any]:
    """The job as JSON-ready data: {"type": class name, "fields": {...}}."""
    name = type(job).__name__
    if JOB_CLASSES.get(name) is not type(job):
        raise JobCodecError(f"cannot encode a {type(job).__qualname__}: not a job class")
    return {"type": name, "fields": _encode(job, name)}


def decode_job(data: Mapping[str, Any]) -> Job:
    """The job `encode_job` encoded (after a JSON round trip); JobCodecError if data is not one."""
    if not isinstance(data, Mapping) or set(data) != {"type", "fields"}:
        raise JobCodecError("an encoded job is an object with exactly the keys 'type' and 'fields'")
    name = data["type"]
    cls = JOB_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise JobCodecError(f"unknown job type {name!r}; expected one of {sorted(JOB_CLASSES)}")
    return _decode_dataclass(data["fields"], cls, name)


def _encode(value: Any, path: str) -> Any:
    if isinstance(value, Enum):  # before str: a StrEnum is a str
        return _encode(value.value, path)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = (f for f in dataclasses.fields(value) if f.init)
        return {f.name: _encode(getattr(value, f.name), f"{path}.{f.name}") for f in fields}
    if isinstance(value, Image.Image):
        return _encode_image(value, path)
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise JobCodecError(f"{path}: mapping keys must be strings")
        return {key: _encode(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise JobCodecError(f"{path}: cannot encode a {type(value).__name__}")


def _encode_image(image: Image.Image, path: str) -> dict[str, Any]:
    """PNG where it is lossless; raw bytes for modes PNG cannot hold (CMYK, I, F...)."""
    palette = image.getpalette()
    if image.mode in _PNG_MODES and (image.mode != "P" or palette):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # fast: jobs are on the request path
        return {"image": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if palette:  # PA: raw bytes would lose the palette
        raise JobCodecError(f"{path}: cannot encode a {image.mode} image losslessly; convert it")
    raw = base64.b64encode(zlib.compress(image.tobytes(), 1)).decode("ascii")
    return {"raw": raw, "mode": image.mode, "size": list(image.size)}


def _decode(value: Any, hint: Any, path: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        for option in options[:-1]:
            with contextlib.suppress(JobCodecError):
                return _decode(value, option, path)
        return _decode(value, options[-1], path)
    if origin is tuple:
        items = _expect(value, list | tuple, path, "an array")
        hints = [args[0]] * len(items) if args[-1:] == (Ellipsis,) else list(args)
        if len(hints) != len(items):
            raise JobCodecError(f"{path}: expected {len(hints)} items, got {len(items)}")
        pairs = enumerate(zip(items, hints, strict=True))
        return tuple(_decode(item, item_hint, f"{path}[{i}]") for i, (item, item_hint) in pairs)
    if origin in (Mapping, dict):
        obj = _expect(value, Mapping, path, "an object")
        decoded = {
            _decode(k, args[0], path): _decode(v, args[1], f"{path}.{k}") for k, v in obj.items()
        }
        return MappingProxyType(decoded) if origin is Mapping else decoded
    if hint is Image.Image:
        return _decode_image(value, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(value, hint, path)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except (ValueError, TypeError):
            choices = [member.value for member in hint]
            raise JobCodecError(f"{path}: {value!r} is not one of {choices}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
        raise JobCodecError(f"{path}: expected {hint.__name__}, got {value!r}")
    raise JobCodecError(f"{path}: unsupported field type {hint!r}")


def _decode_dataclass(value: Any, cls: type, path: str) -> Any:
    obj = _expect(value, Mapping, path, f"a {cls.__name__} object")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(obj) - set(fields)))
    if unknown:
        raise JobCodecError(f"{path}: unknown fields {unknown} for {cls.__name__}")
    missing = [
        name
        for name, f in fields.items()
        if name not in obj and f.default is f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise JobCodecError(f"{path}: missing fields {missing} for {cls.__name__}")
    hints = _type_hints(cls)
    kwargs = {name: _decode(item, hints[name], f"{path}.{name}") for name, item in obj.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # a __post_init__ check
        raise JobCodecError(f"{path}: {error}") from error


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode_image(value: Any, path: str) -> Image.Image:
    obj = _expect(value, Mapping, path, "an encoded image")
    if set(obj) == {"image"}:
        data = _base64(obj["image"], path)
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=["PNG"])
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise JobCodecError(f"{path}: not a valid PNG image: {error}") from error
        return image
    if set(obj) == {"raw", "mode", "size"}:
        width, height = _decode(obj["size"], tuple[int, int], f"{path}.size")
        if not (0 < width and 0 < height and width * height <= _MAX_RAW_PIXELS):
            raise JobCodecError(f"{path}: bad raw image size {width}x{height}")
        data = _base64(obj["raw"], path)
        mode = _decode(obj["mode"], str, f"{path}.mode")
        inflate = zlib.decompressobj()
        try:
            pixels = inflate.decompress(data, _RAW_BYTES_PER_PIXEL * width * height)
            image = Image.frombytes(mode, (width, height), pixels)
        except (ValueError, zlib.error) as error:
            raise JobCodecError(f"{path}: bad raw {mode} image: {error}") from error
        if inflate.unconsumed_tail or not inflate.eof or len(image.tobytes()) != len(pixels):
            raise JobCodecError(f"{path}: raw {mode} image data does not match its size")
        return image
    raise JobCodecError(
        f"{path}: expected {{'image'}} or {{'raw', 'mode', 'size'}}, got {set(obj)}"
    )


def _base64(value: Any, path: str) -> bytes:
    text = _expect(value, str, path, "a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise JobCodecError(f"{path}: bad base64: {error}") from error


def _expect(value: Any, kind: Any, path: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise JobCodecError(f"{path}: expected {what}, got {type(value).__name__}")
    return value
