"""A loopback HTTP file server for download tests: Range requests, ETag / If-Range, redirects,
and connections cut after N bytes (a dropped download), with every request recorded."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Served:
    """What the server serves and what it was asked; tests change it between requests."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> extra headers
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location (a 302)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent, then dropped
    ignore_range: set[str] = field(default_factory=set)  # paths answered 200 to range requests
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.requests if p == path]


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: Served

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = self.path
        self.served.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
        extra = self.served.headers.get(path, {})
        if path in self.served.redirects:
            self._answer(302, b"", {"Location": self.served.redirects[path], **extra})
            return
        body = self.served.files.get(path)
        if body is None:
            self._answer(404, b"not found", {})
            return
        tag = etag(body)
        status, start = 200, 0
        match = RANGE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if match and path not in self.served.ignore_range and if_range in (None, tag):
            start = int(match.group(1))
            if start >= len(body):
                self._answer(416, b"", {"Content-Range": f"bytes */{len(body)}", **extra})
                return
            status = 206
            extra = {**extra, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        cut = self.served.cut_after.pop(path, None)
        self._answer(status, body[start:], {"ETag": tag, "Accept-Ranges": "bytes", **extra}, cut)

    def _answer(
        self, status: int, body: bytes, headers: dict[str, str], cut: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def file_server(served: Served) -> Iterator[str]:
    """Serve on 127.0.0.1 in a thread; yields the base URL."""
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
