"""server/outbound.py: SSRF-safe outbound HTTP, against real local servers on 127.0.0.1.

Loopback is what a test can bind, so it stands for every non-public address: refused by default,
reachable once allowed. Ranges a test cannot bind (10/8, 169.254/16...) are refused before any
connection is made, and their classification is checked directly. Hostnames come from a fake
resolver, which also shows that each hop is resolved exactly once and dialled at the checked IP.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest

from server.outbound import (
    GuardedBackend,
    Outbound,
    OutboundError,
    OutboundPolicy,
    address_problem,
    system_resolve,
)

LOOPBACK = OutboundPolicy.from_strings(["127.0.0.0/8"])
GZIP_BOMB = gzip.compress(bytes(16 * 1024 * 1024), compresslevel=9)


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """certifi's CA bundle, loaded once: loading it per Outbound costs ~0.1 s on a busy box."""
    return httpcore.default_ssl_context()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    httpd: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: Server  # set per server class

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> Seen:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(self.command, self.path, dict(self.headers), self.rfile.read(length))
        self.server_state.seen.append(seen)
        return seen

    def _route(self) -> None:
        self._record()
        url = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        state = self.server_state
        if parts[0] == "ok":
            self._send(200, b"hello world")
        elif parts[0] == "host":
            self._send(200, self.headers["Host"].encode())
        elif parts[0] == "bytes":
            self._send(200, b"x" * int(parts[1]))
        elif parts[0] == "status":
            self._send(int(parts[1]))
        elif parts[0] == "redirect":
            self._send(int(query.get("code", "302")), headers={"Location": query["to"]})
        elif parts[0] == "loop":
            self._send(302, headers={"Location": "/loop"})
        elif parts[0] == "declared-huge":  # says 1 GB, sends a little, then holds the line
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            state.stop.wait(5)
        elif parts[0] == "chunked":  # no Content-Length: only the running count can stop it
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(int(parts[1])):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "slow":
            state.stop.wait(5)
            self._send(200, b"late")
        elif parts[0] == "drip":  # slow loris: headers at once, then a byte now and then
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                if state.stop.wait(0.05):
                    break
                self.wfile.write(b"z")
                self.wfile.flush()
        elif parts[0] == "gzip":  # a bomb: 16 MiB of zeros in a few KiB, sent compressed anyway
            self._send(200, GZIP_BOMB, {"Content-Encoding": "gzip"})
        elif parts[0] in ("upload", "hook"):
            self._send(204)
        else:
            self._send(404)

    do_GET = do_PUT = do_POST = _route


def start_server(tls: ssl.SSLContext | None = None) -> Server:
    handler = type("BoundHandler", (Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
    state = Server(httpd)
    handler.server_state = state
    if tls is not None:

        def record_name(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
            state.server_names.append(name)

        tls.sni_callback = record_name  # type: ignore[assignment]
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state


def stop_server(state: Server) -> None:
    state.stop.set()
    state.httpd.shutdown()
    state.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    state = start_server()
    yield state
    stop_server(state)


class FakeDNS:
    """A resolver answering from a table, counting lookups per host."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return list(self.table[host])


def call(
    policy: OutboundPolicy,
    method: str,
    *args: Any,
    resolver: FakeDNS | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    async def go() -> Any:
        outbound = Outbound(policy, resolver=resolver, ssl_context=ssl_context or shared_tls())
        try:
            return await getattr(outbound, method)(*args)
        finally:
            await outbound.aclose()

    return asyncio.run(go())


def refused(policy: OutboundPolicy, method: str, *args: Any, **kw: Any) -> str:
    with pytest.raises(OutboundError) as caught:
        call(policy, method, *args, **kw)
    return str(caught.value)


# --- address classification -------------------------------------------------------------------

NON_PUBLIC = [
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.100.100.200", "carrier-grade NAT"),  # Alibaba Cloud metadata
    ("192.0.0.192", "special-purpose"),  # Oracle Cloud metadata: "global" to ipaddress
    ("168.63.129.16", "cloud platform"),  # Azure WireServer: a public-looking address
    ("0.1.2.3", "private"),  # "this network"
    ("fd00:ec2::254", "private"),  # AWS metadata over IPv6
    ("fd20:ce::254", "private"),  # GCP metadata over IPv6
    ("fec0::1", "site-local"),  # deprecated, "global" to ipaddress
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged as the IPv4
    ("::ffff:10.0.0.5", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:a00:5::", "private"),  # 6to4 carrying 10.0.0.5
    ("64:ff9b::a00:5", "private"),  # NAT64 carrying 10.0.0.5
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 carrying 169.254.169.254
    ("64:ff9b:1::a00:5", "local NAT64"),  # a site's own translator
    ("::7f00:1", "reserved"),  # deprecated IPv4-compatible ::127.0.0.1
]


@pytest.mark.parametrize(("address", "kind"), NON_PUBLIC)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2001:4860:4860::8888",
        "64:ff9b::808:808",  # NAT64 carrying 8.8.8.8: IPv6-only hosts behind DNS64 still work
        "2002:808:808::",  # 6to4 carrying 8.8.8.8
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "allowed", "passes"),
    [
        ("10.0.0.5", "10.0.0.0/8", True),
        ("10.0.0.5", "10.0.0.6", False),
        ("10.0.0.5", "10.0.0.5", True),  # a single address is a /32
        ("::ffff:127.0.0.1", "127.0.0.0/8", True),  # the mapped IPv4 is what is allowed
        ("::1", "127.0.0.0/8", False),
        ("fd00::7", "fd00::/8", True),
    ],
)
def test_allowed_networks_override(address: str, allowed: str, passes: bool) -> None:
    policy = OutboundPolicy.from_strings([allowed])
    problem = address_problem(ipaddress.ip_address(address), policy.allow)
    assert (problem is None) == passes


def test_policy_parses_networks_and_names_a_bad_one() -> None:
    policy = OutboundPolicy.from_strings([" 10.0.0.0/8", "192.168.1.7", "fd00::/8"], max_bytes=5)
    assert [str(n) for n in policy.allow] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert policy.max_bytes == 5
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP network"):
        OutboundPolicy.from_strings(["10.0.0.0/8", "10.0.0.0/33"])


# --- refusals before any connection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "is not an http(s) URL"),
        ("ftp://127.0.0.1/x", "is not an http(s) URL"),
        ("gopher://127.0.0.1:70/_x", "is not an http(s) URL"),
        ("//127.0.0.1/x", "is not an http(s) URL"),
        ("http:///x", "without a host"),
        ("http://[::1/", "is not a valid URL"),
        ("http://127.0.0.1:99999/", "is not a valid URL (port 99999 is out of range)"),
        ("http://127.0.0.1:0/", "is not a valid URL (port 0 is out of range)"),
        ("http://0177.0.0.1/", "is not a valid URL"),  # octal: the parser refuses it
        ("http://127.0.0.1\x00.example/", "is not a valid URL"),  # NUL
        ("http://xn--/", "is not a valid URL"),  # a malformed IDNA label
        ("http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/", "is not a valid URL"),
        ("http://\uff11\uff12\uff17.0.0.1/", "is not a valid URL"),  # full-width digits
    ],
)
def test_non_http_urls_refused(url: str, message: str) -> None:
    assert message in refused(LOOPBACK, "fetch", url)


@pytest.mark.parametrize(
    ("host", "shown", "kind"),
    [
        ("127.0.0.1", "127.0.0.1", "loopback"),
        ("10.0.0.5", "10.0.0.5", "private"),
        ("169.254.169.254", "169.254.169.254", "link-local"),
        ("[::1]", "::1", "loopback"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "0.0.0.0", "unspecified"),
    ],
)
def test_literal_addresses_refused_by_default(
    server: Server, host: str, shown: str, kind: str
) -> None:
    before = len(server.seen)
    message = refused(OutboundPolicy(), "fetch", server.url("/ok", host=host))
    assert message == f"resolves to {shown}, a {kind} address (allow it with --allow-url-net)"
    assert len(server.seen) == before  # refused before connecting


def test_loopback_reachable_once_allowed(server: Server) -> None:
    async def go() -> bytes:
        outbound = Outbound(LOOPBACK)  # as the server builds it: system DNS, certifi
        try:
            return await outbound.fetch(server.url("/ok"))
        finally:
            await outbound.aclose()

    assert asyncio.run(go()) == b"hello world"


def test_mapped_address_is_dialled_as_its_ipv4(server: Server) -> None:
    url = server.url("/ok", host="[::ffff:127.0.0.1]")
    assert call(LOOPBACK, "fetch", url) == b"hello world"


def test_hostname_resolved_once_dialled_at_checked_ip_and_kept_in_host_header(
    server: Server,
) -> None:
    dns = FakeDNS({"images.example": ["127.0.0.1"]})
    body = call(LOOPBACK, "fetch", server.url("/host", host="images.example"), resolver=dns)
    assert body == f"images.example:{server.port}".encode()
    assert dns.lookups == ["images.example"]


def test_system_resolver(server: Server) -> None:
    """localhost through the real getaddrinfo: loopback, refused until every answer is allowed
    (it may resolve to ::1 too, where nothing listens: the next checked address is tried)."""
    url = server.url("/ok", host="localhost")
    assert "a loopback address" in refused(OutboundPolicy(), "fetch", url)
    both = OutboundPolicy.from_strings(["127.0.0.0/8", "::1"])
    assert call(both, "fetch", url) == b"hello world"


def test_every_resolved_address_must_pass(server: Server) -> None:
    dns = FakeDNS({"mixed.example": ["127.0.0.1", "10.0.0.5"]})
    before = len(server.seen)
    message = refused(LOOPBACK, "fetch", server.url("/ok", host="mixed.example"), resolver=dns)
    assert message.startswith("resolves to 10.0.0.5, a private address")
    assert len(server.seen) == before


def test_unresolvable_host(server: Server) -> None:
    class NoDNS(FakeDNS):
        async def __call__(self, host: str, port: int) -> list[str]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    url = server.url("/ok", host="nowhere.example")
    message = refused(LOOPBACK, "fetch", url, resolver=NoDNS({}))
    assert message == "names a host that does not resolve (Name or service not known)"


def test_proxy_environment_is_ignored(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://10.255.255.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert call(LOOPBACK, "fetch", server.url("/ok")) == b"hello world"


# --- redirects ----------------------------------------------------------------------------------


def test_redirect_followed(server: Server) -> None:
    assert call(LOOPBACK, "fetch", server.url("/redirect?to=/ok&code=301")) == b"hello world"


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://10.0.0.5/x", "which resolves to 10.0.0.5, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "which resolves to 169.254.169.254, a link"),
        ("http://[::1]:{port}/ok", "which resolves to ::1, a loopback address"),
        ("http://127.0.0.2:{port}/ok", "which resolves to 127.0.0.2, a loopback address"),
        ("http://internal.example/", "which resolves to 192.168.0.9, a private address"),
        ("file:///etc/passwd", "which is not an http(s) URL"),
    ],
)
def test_redirect_to_refused_address_refused(server: Server, location: str, reason: str) -> None:
    only_this_host = OutboundPolicy.from_strings(["127.0.0.1"])
    dns = FakeDNS({"internal.example": ["192.168.0.9"]})
    target = location.format(port=server.port)
    url = server.url(f"/redirect?to={target}")
    message = refused(only_this_host, "fetch", url, resolver=dns)
    assert message.startswith(f"redirects to {target.split('?')[0]}, ")
    assert reason in message


def test_each_redirect_hop_resolved_once(server: Server) -> None:
    dns = FakeDNS({"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]})
    hop = server.url("/host", host="b.example")
    body = call(
        LOOPBACK, "fetch", server.url(f"/redirect?to={hop}", host="a.example"), resolver=dns
    )
    assert body == f"b.example:{server.port}".encode()
    assert dns.lookups == ["a.example", "b.example"]


def test_redirect_limit(server: Server) -> None:
    before = len(server.seen)
    assert refused(LOOPBACK, "fetch", server.url("/loop")) == "redirects more than 3 times"
    assert len(server.seen) - before == 4  # the request and three redirects


def test_redirect_message_hides_query(server: Server) -> None:
    url = server.url("/redirect?to=http://10.0.0.5/x%3Fsignature%3Dsecret")
    message = refused(LOOPBACK, "fetch", url)
    assert message.startswith("redirects to http://10.0.0.5/x, which")
    assert "secret" not in message


# --- host spellings, userinfo, international names, lookups ---------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f.1", "127.0.0.1"),  # hex, short form
        ("127.1", "127.0.0.1"),  # short form
        ("0", "0.0.0.0"),
    ],
)
def test_numeric_host_spellings_are_judged_by_the_address_they_resolve_to(
    server: Server, host: str, address: str
) -> None:
    """The URL parser takes these for names, the system resolver for addresses: the resolved
    address is what is judged (and dialled), so they are refused like the address itself."""
    url = server.url("/ok", host=host)
    before = len(server.seen)
    assert f"resolves to {address}, a " in refused(OutboundPolicy(), "fetch", url)
    assert len(server.seen) == before
    if address == "127.0.0.1":  # they really lead to the local server once loopback is allowed
        assert call(LOOPBACK, "fetch", url) == b"hello world"


def test_userinfo_neither_hides_the_host_nor_is_sent(server: Server) -> None:
    tricked = server.url("/ok", host="images.example@127.0.0.1")
    assert "resolves to 127.0.0.1, a loopback" in refused(OutboundPolicy(), "fetch", tricked)
    dns = FakeDNS({"images.example": ["127.0.0.1"]})
    url = server.url("/host", host="user:secret@images.example")
    assert call(LOOPBACK, "fetch", url, resolver=dns) == f"images.example:{server.port}".encode()
    assert dns.lookups == ["images.example"]
    assert "Authorization" not in server.seen[-1].headers
    message = refused(LOOPBACK, "fetch", server.url("/status/404", host="user:secret@127.0.0.1"))
    assert "secret" not in message


def test_international_names_are_resolved_as_their_a_label(server: Server) -> None:
    dns = FakeDNS({"xn--bcher-kva.example": ["127.0.0.1"]})
    url = server.url("/ok", host="b\u00fccher.example")
    assert "a loopback address" in refused(OutboundPolicy(), "fetch", url, resolver=dns)
    assert dns.lookups == ["xn--bcher-kva.example"]


def test_redirect_to_a_numeric_loopback_spelling_refused(server: Server) -> None:
    only_this_host = OutboundPolicy.from_strings(["127.0.0.1"])
    location = f"http://2130706434:{server.port}/ok"  # 127.0.0.2
    message = refused(only_this_host, "fetch", server.url(f"/redirect?to={location}"))
    assert message.startswith(f"redirects to {location}, which resolves to 127.0.0.2, a loopback")


def test_redirect_to_an_invalid_port_refused(server: Server) -> None:
    message = refused(LOOPBACK, "fetch", server.url("/redirect?to=http://127.0.0.1:99999/"))
    assert message == (
        "redirects to http://127.0.0.1:99999/, which is not a valid URL (port 99999 is out of "
        "range)"
    )


def test_lookups_do_not_use_the_shared_default_executor() -> None:
    """A slow name server (a client picks it by its URL's host) must not tie up the threads
    that image decoding and result files share."""

    class Refusing(ThreadPoolExecutor):
        def submit(self, *args: Any, **kw: Any) -> Any:
            raise AssertionError("a lookup ran on the default executor")

    async def go() -> list[str]:
        asyncio.get_running_loop().set_default_executor(Refusing(1))
        return await system_resolve("localhost", 80)

    assert "127.0.0.1" in asyncio.run(go())


def test_an_unforeseen_error_is_still_an_outbound_error(server: Server) -> None:
    class BrokenDNS(FakeDNS):
        async def __call__(self, host: str, port: int) -> list[str]:
            raise RuntimeError("resolver bug")

    url = server.url("/ok", host="images.example")
    message = refused(LOOPBACK, "fetch", url, resolver=BrokenDNS({}))
    assert message == "could not be reached (RuntimeError)"


# --- size, time, status -----------------------------------------------------------------------


def test_body_up_to_the_cap_passes(server: Server) -> None:
    policy = OutboundPolicy(allow=LOOPBACK.allow, max_bytes=1000)
    assert call(policy, "fetch", server.url("/bytes/1000")) == b"x" * 1000


def test_declared_length_over_the_cap_refused_up_front(server: Server) -> None:
    policy = OutboundPolicy(allow=LOOPBACK.allow, max_bytes=1000, timeout_s=3)
    assert refused(policy, "fetch", server.url("/bytes/1001")) == "is larger than 1000 bytes"
    started = time.monotonic()
    assert refused(policy, "fetch", server.url("/declared-huge")) == "is larger than 1000 bytes"
    assert time.monotonic() - started < 2  # not read until the server gives up


def test_chunked_body_cut_at_the_cap(server: Server) -> None:
    policy = OutboundPolicy(allow=LOOPBACK.allow, max_bytes=4096)
    assert call(policy, "fetch", server.url("/chunked/4")) == b"y" * 4000
    assert refused(policy, "fetch", server.url("/chunked/500")) == "is larger than 4 KiB"
    # The default cap, as the operator reads it.
    default = OutboundPolicy().max_bytes // (1024 * 1024)
    message = refused(LOOPBACK, "fetch", server.url("/declared-huge"))
    assert message == f"is larger than {default} MiB"


def test_dripping_server_times_out(server: Server) -> None:
    """Slow loris: bytes keep coming, too slowly; the one deadline covers the whole body."""
    policy = OutboundPolicy(allow=LOOPBACK.allow, timeout_s=0.5)
    started = time.monotonic()
    assert refused(policy, "fetch", server.url("/drip")) == "timed out after 0.5 s"
    assert time.monotonic() - started < 2


def test_compressed_body_is_neither_asked_for_nor_inflated(server: Server) -> None:
    """A gzip bomb arrives as what it is on the wire (a few KiB, counted against the cap); the
    image decoder then refuses it as not an image."""
    policy = OutboundPolicy(allow=LOOPBACK.allow, max_bytes=len(GZIP_BOMB))
    assert call(policy, "fetch", server.url("/gzip")) == GZIP_BOMB
    assert server.seen[-1].headers["Accept-Encoding"] == "identity"


def test_slow_server_times_out(server: Server) -> None:
    policy = OutboundPolicy(allow=LOOPBACK.allow, timeout_s=0.3)
    started = time.monotonic()
    assert refused(policy, "fetch", server.url("/slow")) == "timed out after 0.3 s"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [404, 500, 403])
def test_http_errors_surface_with_their_status(server: Server, status: int) -> None:
    url = server.url(f"/status/{status}")
    assert refused(LOOPBACK, "fetch", url) == f"answered HTTP {status}"
    assert refused(LOOPBACK, "put", url, b"x", "image/png") == f"answered HTTP {status}"
    assert refused(LOOPBACK, "post_json", url, {}) == f"answered HTTP {status}"


def test_unreachable_port() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert refused(LOOPBACK, "fetch", f"http://127.0.0.1:{port}/").startswith(
        "could not be reached"
    )


# --- PUT and POST --------------------------------------------------------------------------------


def test_put_delivers_the_exact_bytes(server: Server) -> None:
    body = os.urandom(200_000)
    assert call(LOOPBACK, "put", server.url("/upload?sig=1"), body, "image/webp") is None
    seen = server.seen[-1]
    assert (seen.method, seen.path, seen.body) == ("PUT", "/upload?sig=1", body)
    assert seen.headers["Content-Type"] == "image/webp"
    assert seen.headers["Content-Length"] == str(len(body))


def test_post_json_delivers_the_payload(server: Server) -> None:
    payload = {"taskType": "imageInference", "data": [{"imageUUID": "u", "cost": 0.5, "t": "ü"}]}
    assert call(LOOPBACK, "post_json", server.url("/hook"), payload) is None
    seen = server.seen[-1]
    assert (seen.method, seen.path) == ("POST", "/hook")
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == payload


def test_put_follows_307_with_the_body(server: Server) -> None:
    body = b"\x89PNG..."
    url = server.url("/redirect?code=307&to=/upload/moved")
    call(LOOPBACK, "put", url, body, "image/png")
    assert [(s.method, s.path, s.body) for s in server.seen[-2:]] == [
        ("PUT", "/redirect?code=307&to=/upload/moved", body),
        ("PUT", "/upload/moved", body),
    ]


@pytest.mark.parametrize("code", [301, 302, 303])
def test_put_and_post_do_not_follow_body_dropping_redirects(server: Server, code: int) -> None:
    url = server.url(f"/redirect?code={code}&to=/upload")
    before = len(server.seen)
    assert refused(LOOPBACK, "post_json", url, {"a": 1}) == f"answered HTTP {code}"
    assert refused(LOOPBACK, "put", url, b"img", "image/png") == f"answered HTTP {code}"
    assert len(server.seen) - before == 2  # neither went on to /upload


# --- TLS: SNI and certificate use the hostname, TCP goes to the checked IP --------------------


class RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self) -> None:
        self.server_hostname: str | None = None

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.server_hostname = server_hostname
        raise httpcore.ConnectError("stopped after recording the TLS start")

    async def aclose(self) -> None:
        pass


class RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []
        self.stream = RecordingStream()

    async def connect_tcp(self, host: str, port: int, *args: Any, **kw: Any) -> RecordingStream:
        self.dialled.append((host, port))
        return self.stream


def test_tls_hostname_goes_to_sni_while_tcp_dials_the_checked_ip() -> None:
    inner = RecordingBackend()
    dns = FakeDNS({"images.example": ["93.184.215.14"]})  # a public address: allowed by default

    async def go() -> None:
        backend = GuardedBackend((), dns, inner)
        async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            with pytest.raises(httpcore.ConnectError, match="stopped after recording"):
                await pool.request("GET", "https://images.example/cat.png")

    asyncio.run(go())
    assert inner.dialled == [("93.184.215.14", 443)]
    assert inner.stream.server_hostname == "images.example"
    assert dns.lookups == ["images.example"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the real-TLS test needs the openssl command (the unit test above still runs)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-days", "2", "-subj", "/CN=images.example"),
            *("-addext", "subjectAltName=DNS:images.example"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tls_files: tuple[Path, Path]) -> Iterator[Server]:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    state = start_server(context)
    yield state
    stop_server(state)


def test_https_verifies_the_hostname_over_the_checked_ip(
    tls_server: Server, tls_files: tuple[Path, Path]
) -> None:
    trust = ssl.create_default_context(cafile=str(tls_files[0]))
    dns = FakeDNS({"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    url = tls_server.url("/host", host="images.example", scheme="https")
    body = call(LOOPBACK, "fetch", url, resolver=dns, ssl_context=trust)
    assert body == f"images.example:{tls_server.port}".encode()
    assert tls_server.server_names[-1] == "images.example"
    # Same IP, another name: the certificate is checked against the name, not the address.
    other = tls_server.url("/host", host="other.example", scheme="https")
    message = refused(LOOPBACK, "fetch", other, resolver=dns, ssl_context=trust)
    assert message.startswith("could not be reached") and "certificate" in message.lower()
    assert tls_server.server_names[-1] == "other.example"


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_allow_url_net_flag_and_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import build_parser, settings_from_args

    monkeypatch.setenv("EASEL_ALLOW_URL_NETS", "192.168.0.0/16, 10.1.2.3")
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["serve"])).url_allow == (
        "192.168.0.0/16",
        "10.1.2.3/32",
    )
    args = parser.parse_args(["serve", "--allow-url-net", "10.0.0.0/8", "--allow-url-net", "::1"])
    assert settings_from_args(args).url_allow == ("10.0.0.0/8", "::1/128")  # the flag wins
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["serve", "--allow-url-net", "10.0.0.0/33"])
    assert exit_.value.code == 2
    assert "--allow-url-net: '10.0.0.0/33' is not an IP network" in capsys.readouterr().err
    monkeypatch.setenv("EASEL_ALLOW_URL_NETS", "10.0.0.0/8,intranet")
    with pytest.raises(ValueError, match="EASEL_ALLOW_URL_NETS: 'intranet' is not an IP network"):
        settings_from_args(parser.parse_args(["serve"]))
    monkeypatch.delenv("EASEL_ALLOW_URL_NETS")
    assert settings_from_args(parser.parse_args(["serve"])).url_allow == ()
