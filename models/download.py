"""A resumable, hashed HTTP download into a partial file: the transport of `easel models pull`.

Model files are gigabytes and home connections drop, so a download is written to a partial file
that outlives the process: the next attempt (a retry, or the same command run again) asks for the
rest with `Range: bytes=N-` and appends. A sidecar JSON next to the partial file remembers which
URL it came from and the server's validator (ETag / Last-Modified), sent as `If-Range`, so a file
that changed on the server starts over instead of being spliced from two versions. The sha256 is
computed while the bytes arrive (the partial part is hashed once when a run resumes), so
verification costs no second read of a multi-gigabyte file.

HTTP answers to a range request: 206 appends; 200 means the server ignored the range or the file
changed, so the download starts over; 416 means there is nothing left to send, which is success
when the partial file already has the whole size, else a fresh start.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import httpx

CHUNK_BYTES = 1 << 20
HEAD_BYTES = 16  # the start of a file handed to `check_head` before the rest is fetched
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Headers that publish a file's sha256: Hugging Face puts an LFS file's sha256 in X-Linked-Etag
# (on the redirect from huggingface.co to its CDN), quoted like an ETag.
DIGEST_HEADERS: tuple[str, ...] = ("x-linked-etag",)
CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
TIMEOUT = httpx.Timeout(30.0, read=120.0)


class DownloadError(Exception):
    """A download that cannot go on; the message says why and what to do."""


class DownloadReporter(Protocol):
    """Where progress goes (a progress bar on a terminal; nothing in tests)."""

    def note(self, message: str) -> None: ...

    def start(self, total: int | None, done: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    received: int  # bytes fetched by this run (the rest was on disk already)
    resumed_from: int  # bytes an earlier run had fetched, which this one kept
    seconds: float  # time spent receiving
    published_sha256: str | None  # what the server says the file's sha256 is, if it says
    filename: str | None  # the name the server gives it (Content-Disposition), if any


@dataclass
class _State:
    """What one run knows across its attempts."""

    hasher: hashlib._Hash
    hashed: int = 0  # bytes of the partial file the hasher has seen
    received: int = 0
    seconds: float = 0.0
    published: str | None = None
    filename: str | None = None
    resumed_from: int | None = None  # where the first answer of the run started


HeadCheck = Callable[[bytes], None]
ResponseCheck = Callable[[httpx.Response], None]


def meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def discard(part: Path) -> None:
    """Remove a partial file and its sidecar."""
    part.unlink(missing_ok=True)
    meta_path(part).unlink(missing_ok=True)


def download(
    url: str,
    part: Path,
    *,
    client: httpx.Client,
    reporter: DownloadReporter,
    headers: Mapping[str, str] | None = None,
    check_response: ResponseCheck | None = None,
    check_head: HeadCheck | None = None,
    retries: int = 3,
    backoff_s: float = 2.0,
) -> Downloaded:
    """url into part (resuming what is there), retried on dropped connections.

    check_response sees each response's headers before its body is read; check_head sees the
    file's first HEAD_BYTES bytes as soon as they arrive: either may raise (any exception, which
    goes through) to stop early, e.g. for a refused file type. A dropped connection keeps the
    partial file for the next run.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    _forget_other_url(part, url)
    state = _State(hashlib.sha256())
    for attempt in range(retries + 1):
        try:
            try:
                _attempt(
                    url, part, client, reporter, headers or {}, state, check_response, check_head
                )
            finally:
                reporter.finish()
            break
        except (httpx.TransportError, _Incomplete) as error:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(_interrupted(url, have, error)) from None
            reporter.note(f"connection lost at {describe_size(have)} ({_reason(error)}); resuming")
            time.sleep(backoff_s * (attempt + 1))
    size = part.stat().st_size
    _catch_up(part, state, size)
    return Downloaded(
        part,
        size,
        state.hasher.hexdigest(),
        state.received,
        state.resumed_from or 0,
        state.seconds,
        state.published,
        state.filename,
    )


class _Incomplete(Exception):
    """The body ended before the length the server announced."""


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


def _interrupted(url: str, have: int, error: Exception) -> str:
    if isinstance(error, httpx.ConnectError) and not have:
        return f"cannot reach {httpx.URL(url).host}: {_reason(error)}"
    return (
        f"download interrupted at {describe_size(have)} ({_reason(error)}); run the same "
        "command again to resume"
    )


def _attempt(
    url: str,
    part: Path,
    client: httpx.Client,
    reporter: DownloadReporter,
    base_headers: Mapping[str, str],
    state: _State,
    check_response: ResponseCheck | None,
    check_head: HeadCheck | None,
) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **base_headers}  # byte offsets are file offsets
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _validator(part)
        if validator:
            headers["If-Range"] = validator
    with client.stream("GET", url, headers=headers) as response:
        _remember_published(response, state)
        if response.status_code != 416 or not have:
            _take(url, response, part, have, reporter, state, check_response, check_head)
            return
        # 416 to `bytes=have-`: nothing left to send, or the file is now shorter than that
        if _content_range(response.headers.get("content-range", ""))[2] == have:
            state.resumed_from = have if state.resumed_from is None else state.resumed_from
            return  # the partial file held the whole file already
    reporter.note("the server cannot resume this partial file: starting over")
    _restart(part, state)
    _attempt(url, part, client, reporter, base_headers, state, check_response, check_head)


def _take(
    url: str,
    response: httpx.Response,
    part: Path,
    have: int,
    reporter: DownloadReporter,
    state: _State,
    check_response: ResponseCheck | None,
    check_head: HeadCheck | None,
) -> None:
    """Write one response's body into the partial file (appended for a 206)."""
    if response.status_code not in (200, 206):
        status = f"HTTP {response.status_code} {response.reason_phrase}"
        raise DownloadError(f"{_short(url)}: {status}")
    if check_response is not None:
        check_response(response)
    start = _start_offset(response, have)
    if start == 0 and have:
        reporter.note("the server sent the whole file again: starting over")
        _restart(part, state)
    _save_validator(part, url, response)
    state.resumed_from = start if state.resumed_from is None else state.resumed_from
    _catch_up(part, state, start)
    length = _int(response.headers.get("content-length"))
    total = start + length if length is not None else None
    reporter.start(total, start)
    _receive(response, part, start, state, reporter, check_head)
    if total is not None and part.stat().st_size < total:
        raise _Incomplete(f"{part.stat().st_size} of {total} bytes arrived")


def _receive(
    response: httpx.Response,
    part: Path,
    start: int,
    state: _State,
    reporter: DownloadReporter,
    check_head: HeadCheck | None,
) -> None:
    head = b"" if start == 0 and check_head is not None else None
    began = time.monotonic()
    try:
        with part.open("r+b" if part.exists() else "wb") as f:
            f.seek(start)
            f.truncate()
            for chunk in response.iter_bytes():  # as they arrive: a drop loses nothing read
                if head is not None and check_head is not None:
                    head += chunk[: HEAD_BYTES - len(head)]
                    if len(head) >= HEAD_BYTES:
                        check_head(head)
                        head = None
                f.write(chunk)
                state.hasher.update(chunk)
                state.hashed += len(chunk)
                state.received += len(chunk)
                reporter.advance(len(chunk))
        if head is not None and check_head is not None:
            check_head(head)  # a file shorter than HEAD_BYTES
    finally:
        state.seconds += time.monotonic() - began


def _start_offset(response: httpx.Response, have: int) -> int:
    """Where the body goes in the file: `have` for a 206 that continues it, 0 for a 200."""
    if response.status_code == 200:
        return 0
    first, _, _ = _content_range(response.headers.get("content-range", ""))
    if first != have:
        raise DownloadError(
            f"{_short(str(response.url))}: asked for bytes from {have}, the server sent "
            f"Content-Range {response.headers.get('content-range')!r}"
        )
    return have


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    match = CONTENT_RANGE.match(value.strip())
    if match is None:
        return None, None, None
    first, last, total = match.groups()
    return _int(first), _int(last), _int(total)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _restart(part: Path, state: _State) -> None:
    """Empty the partial file and the hash: the next bytes start the file again."""
    part.write_bytes(b"")
    state.hasher, state.hashed = hashlib.sha256(), 0


def _catch_up(part: Path, state: _State, size: int) -> None:
    """Make the hasher cover the partial file's first `size` bytes (a resumed run's start)."""
    if state.hashed == size:
        return
    state.hasher, state.hashed = hashlib.sha256(), 0
    with part.open("rb") as f:
        while state.hashed < size:
            block = f.read(min(CHUNK_BYTES * 8, size - state.hashed))
            if not block:
                break
            state.hasher.update(block)
            state.hashed += len(block)


def _remember_published(response: httpx.Response, state: _State) -> None:
    """The sha256 any hop of the redirect chain publishes, and the file's name if given."""
    for hop in (*response.history, response):
        for header in DIGEST_HEADERS:
            digest = hop.headers.get(header, "").strip().strip('"').lower()
            if SHA256_HEX.match(digest):
                state.published = digest
    name = content_disposition_name(response.headers.get("content-disposition", ""))
    if name:
        state.filename = name


def content_disposition_name(value: str) -> str | None:
    """The file name a Content-Disposition header gives (RFC 6266, filename* preferred)."""
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    name = message.get_filename()
    if not name:
        return None
    return Path(unquote(name).replace("\\", "/")).name or None


# --- the sidecar: which URL a partial file is from, and its validator ---------------------------


def _forget_other_url(part: Path, url: str) -> None:
    """A partial file from another URL (or of unknown origin) is not resumed."""
    if not part.exists():
        return
    try:
        meta = json.loads(meta_path(part).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("url") != url:
        discard(part)


def _validator(part: Path) -> str | None:
    try:
        meta = json.loads(meta_path(part).read_text())
    except (OSError, ValueError):
        return None
    value = meta.get("validator") if isinstance(meta, dict) else None
    return value if isinstance(value, str) and value else None


def _save_validator(part: Path, url: str, response: httpx.Response) -> None:
    """A strong ETag, else Last-Modified: what If-Range may carry (weak ETags may not)."""
    etag = response.headers.get("etag", "")
    validator = etag if etag and not etag.startswith("W/") else None
    validator = validator or response.headers.get("last-modified")
    meta_path(part).write_text(json.dumps({"url": url, "validator": validator}))


def _short(url: str) -> str:
    """A URL without its query string, which may hold signed tokens."""
    return url.split("?", 1)[0]


# --- figures for people --------------------------------------------------------------------------

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def describe_size(count: float) -> str:
    for unit in _UNITS:
        if abs(count) < 1024 or unit == _UNITS[-1]:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def describe_speed(count: int, seconds: float) -> str:
    return f"{describe_size(count / seconds)}/s" if seconds > 0 else "-"
