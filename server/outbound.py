"""Outbound HTTP for client-given URLs: image inputs, `uploadEndpoint` PUTs and webhook POSTs.

A client-given URL is an SSRF hazard: without care the server would fetch its own metadata
service (169.254.169.254), an admin page on 127.0.0.1 or anything on the operator's LAN for
whoever sends a request. So every hop of every request is checked here:

- only http and https, with a host and a valid port;
- the host is resolved once per hop, off the event loop (on lookup threads of its own), and
  every address it resolves to must be public (not loopback, private, link-local, multicast,
  reserved, unspecified, carrier-grade NAT, nor one of the internal endpoints listed in
  _REFUSED_NETWORKS; IPv4 inside IPv6 is judged as the IPv4) unless it lies in a network the
  operator allowed (`--allow-url-net`). Numeric host spellings (2130706433, 0x7f.1, 127.1) are
  names to the URL parser and addresses to the resolver: the resolved address is what is judged;
- the connection then goes to exactly that checked address. There is no second DNS lookup, so a
  name that answers a public address to the check and a private one to the connect (DNS
  rebinding) gains nothing. The URL's hostname still goes into the Host header, TLS SNI and the
  certificate check, so HTTPS to a virtual host works as usual;
- redirects are followed by hand, each new location checked like the first;
- bodies are cut at `max_bytes`, each call has one overall deadline, and proxy settings from the
  environment are never consulted (a proxy would do the resolving, bypassing the check).

The check sits in the network backend of an httpcore connection pool, the one place every TCP
connection is opened: no code path reaches the network around it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the addresses it resolves to, as strings; raises socket.gaierror."""

_SCHEMES = ("http", "https")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# PUT/POST follow only the redirects that keep the method and body; after a 301/302/303 the
# body would be dropped (or the request turned into a GET), which must not pass as delivered.
_BODY_REDIRECTS = frozenset({307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Why an address is not public, first match wins (127.0.0.1 is also "private" to ipaddress).
_NON_PUBLIC: tuple[tuple[str, str], ...] = (
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_unspecified", "unspecified"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)
# Ranges refused although Python's ipaddress calls (some of) them global, whatever its version:
# internal endpoints at addresses outside the private ranges.
_REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    # Shared address space: carrier-grade NAT, and Alibaba Cloud's metadata (100.100.100.200).
    (ipaddress.IPv4Network("100.64.0.0/10"), "carrier-grade NAT"),
    # IETF protocol assignments: Oracle Cloud's metadata (192.0.0.192), NAT64 discovery...
    (ipaddress.IPv4Network("192.0.0.0/24"), "special-purpose"),
    # Azure's WireServer: reachable from every Azure VM, serves the VM's platform secrets.
    (ipaddress.IPv4Network("168.63.129.16/32"), "cloud platform"),
    # Local-use NAT64 (RFC 8215): a site's own translator, whatever IPv4 it maps to.
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "local NAT64"),
    # Deprecated site-local IPv6, still routed inside some networks.
    (ipaddress.IPv6Network("fec0::/10"), "site-local"),
)
_USER_AGENT = b"easel"
_MAX_CONNECTIONS = 32
_MAX_PORT = 65535
_DNS_THREADS = 8


class OutboundError(ValueError):
    """A URL that may not or could not be used; the message completes "<field> ...".

    E.g. "is not an http(s) URL", "answered HTTP 404": the caller prefixes the field name.
    """


def parse_network(text: str) -> IPNetwork:
    """A CIDR network or single address as the operator writes it ("10.0.0.0/8", "::1")."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP network or address (write it like 10.0.0.0/8 or 192.168.1.7)"
        ) from None


@dataclass(frozen=True)
class OutboundPolicy:
    allow: tuple[IPNetwork, ...] = ()  # non-public networks that may be reached anyway
    max_bytes: int = 40 * 1024 * 1024
    timeout_s: float = 20.0  # one deadline for the whole call, redirects included
    max_redirects: int = 3

    @classmethod
    def from_strings(cls, nets: Iterable[str], **kw: Any) -> OutboundPolicy:
        """The policy from `--allow-url-net` values; ValueError names a malformed one."""
        return cls(allow=tuple(parse_network(net) for net in nets), **kw)


def _judged(address: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses that decide where `address` really leads: an IPv4-mapped IPv6 address or
    one of the well-known NAT64 prefix is its IPv4 (the translator forwards to that IPv4, and
    RFC 6052 keeps the prefix for global IPv4 only, so IPv6-only hosts behind DNS64 still reach
    public servers); a 6to4 address is judged both as itself and as the IPv4 it carries."""
    if isinstance(address, ipaddress.IPv4Address):
        return (address,)
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address in _NAT64:
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address.sixtofour is not None:
        return (address.sixtofour, address)
    return (address,)


def _non_public_kind(address: IPAddress) -> str | None:
    for network, kind in _REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return kind
    for attribute, kind in _NON_PUBLIC:
        if getattr(address, attribute):
            return kind
    return None if address.is_global else "non-public"


def address_problem(address: IPAddress, allow: Iterable[IPNetwork] = ()) -> str | None:
    """Why `address` may not be connected to ("private", "loopback"...), None when it may.

    Allowed networks win over every other rule: the operator listed them on purpose.
    """
    judged = _judged(address)
    allow = tuple(allow)
    if any(candidate in network for candidate in judged for network in allow):
        return None
    for candidate in judged:
        kind = _non_public_kind(candidate)
        if kind is not None:
            return kind
    return None


@functools.cache
def _dns_executor() -> ThreadPoolExecutor:
    """The threads lookups block on: their own, so a slow name server (one a client picked for
    its URL's host) delays other lookups only, never the default executor's work that the whole
    server shares (image decoding, result files)."""
    return ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="easel-dns")


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, in its order (getaddrinfo blocks: it runs
    on the lookup threads)."""
    lookup = functools.partial(
        socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    infos = await asyncio.get_running_loop().run_in_executor(_dns_executor(), lookup)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    host: str, port: int, allow: tuple[IPNetwork, ...], resolve: Resolver
) -> list[str]:
    """The addresses to connect to for `host`, resolved once; OutboundError unless every one of
    them passes (a name with one private address among public ones could still be steered)."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [host]
    else:
        try:
            found = await resolve(host, port)
        except (socket.gaierror, UnicodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise OutboundError(f"names a host that does not resolve ({reason})") from None
        if not found:
            raise OutboundError("names a host that resolves to no address")
    targets: list[str] = []
    for text in found:
        address = ipaddress.ip_address(text)
        kind = address_problem(address, allow)
        if kind is not None:
            raise OutboundError(
                f"resolves to {text}, a {kind} address (allow it with --allow-url-net)"
            )
        # A mapped address is dialled as the IPv4 it stands for (the one that was judged).
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        targets.append(str(mapped) if mapped is not None else text)
    return targets


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check in `connect_tcp`.

    httpcore hands the URL's hostname to `connect_tcp` and later the same hostname to
    `start_tls` as `server_hostname`; only the TCP connect is redirected to the checked IP,
    so SNI and certificate verification still see the hostname.
    """

    def __init__(
        self,
        allow: tuple[IPNetwork, ...],
        resolve: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = allow
        self._resolve = resolve
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        targets = await checked_addresses(host, port, self._allow, self._resolve)
        failure: Exception | None = None
        for target in targets:
            try:
                return await self._inner.connect_tcp(
                    target,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as error:
                failure = error
        assert failure is not None  # targets is never empty
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundError("may not use a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _size(count: int) -> str:
    for unit, name in ((1024 * 1024, "MiB"), (1024, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count} bytes"


def _shown(url: httpx.URL) -> str:
    """The URL for messages, without query and credentials (presigned URLs carry secrets)."""
    path = url.raw_path.split(b"?", 1)[0].decode("ascii")
    return f"{url.scheme}://{url.netloc.decode('ascii')}{path}"


def parse_url(url: str | httpx.URL) -> httpx.URL:
    """`url` parsed; OutboundError when it could never be fetched: not http(s), no host, a port
    out of range, a malformed international host name. No DNS: front ends may check a URL this
    way as its request arrives, long before it is used (addresses are checked at connect)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        host = parsed.host  # decodes an IDNA host: a malformed one fails here, not mid-call
    except (httpx.InvalidURL, TypeError, UnicodeError) as error:
        raise OutboundError(f"is not a valid URL ({error})") from None
    if parsed.scheme not in _SCHEMES:
        raise OutboundError("is not an http(s) URL")
    if not host:
        raise OutboundError("is an http(s) URL without a host")
    if parsed.port is not None and not 0 < parsed.port <= _MAX_PORT:
        raise OutboundError(f"is not a valid URL (port {parsed.port} is out of range)")
    return parsed


def _header(response: httpcore.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value
    return None


def _port(url: httpx.URL) -> int:
    return url.port if url.port is not None else (443 if url.scheme == "https" else 80)


@dataclass(frozen=True)
class _Request:
    method: str
    body: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]
    read_body: bool


class Outbound:
    """One connection pool for the server's outbound requests, every connection checked.

    `resolver` and `ssl_context` exist for tests (a fake DNS, a private CA); the server uses the
    system resolver and certifi's CA bundle.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = policy
        # httpcore never reads HTTP(S)_PROXY / NO_PROXY, so no proxy can bypass the check.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context if ssl_context is not None else httpcore.default_ssl_context(),
            max_connections=_MAX_CONNECTIONS,
            http1=True,
            http2=False,
            retries=0,
            network_backend=GuardedBackend(policy.allow, resolver or system_resolve),
        )

    async def fetch(self, url: str) -> bytes:
        """GET `url` and return its body, at most `max_bytes`."""
        request = _Request("GET", None, (), read_body=True)
        return await self._call(url, request)

    async def put(self, url: str, body: bytes, content_type: str) -> None:
        """PUT `body` to `url` (a client's uploadEndpoint); any 2xx is success."""
        headers = ((b"Content-Type", content_type.encode("latin-1")),)
        await self._call(url, _Request("PUT", bytes(body), headers, read_body=False))

    async def post_json(self, url: str, payload: Any) -> None:
        """POST `payload` as JSON to `url` (a webhook); any 2xx is success."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = ((b"Content-Type", b"application/json"),)
        await self._call(url, _Request("POST", body, headers, read_body=False))

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _call(self, url: str, request: _Request) -> bytes:
        target = parse_url(url)
        try:
            async with asyncio.timeout(self._policy.timeout_s):
                return await self._follow(target, request)
        except TimeoutError:
            raise OutboundError(f"timed out after {self._policy.timeout_s:g} s") from None
        except OutboundError:
            raise
        except Exception as error:
            # One no rule here foresaw (a library's own): still the field's error, never a
            # failed request; logged so that it gets a rule.
            log.warning("%s %s failed", request.method, _shown(target), exc_info=True)
            raise OutboundError(f"could not be reached ({type(error).__name__})") from None

    async def _follow(self, target: httpx.URL, request: _Request) -> bytes:
        redirects = _REDIRECTS if request.method == "GET" else _BODY_REDIRECTS
        for hop in range(self._policy.max_redirects + 1):
            try:
                if hop:
                    target = parse_url(target)
                location, body = await self._exchange(target, request, redirects)
            except OutboundError as error:
                if not hop:
                    raise
                raise OutboundError(f"redirects to {_shown(target)}, which {error}") from None
            if location is None:
                return body
            target = location
        raise OutboundError(f"redirects more than {self._policy.max_redirects} times")

    async def _exchange(
        self, target: httpx.URL, request: _Request, redirects: frozenset[int]
    ) -> tuple[httpx.URL | None, bytes]:
        """One hop: (the redirect location, b"") or (None, the body)."""
        core_url = httpcore.URL(
            scheme=target.scheme.encode("ascii"),
            host=target.raw_host,
            port=_port(target),
            target=target.raw_path,
        )
        headers = [
            # httpcore would write an IPv6 host without brackets; netloc has them (and the
            # port when it is not the default), but never the userinfo.
            (b"Host", target.netloc),
            (b"User-Agent", _USER_AGENT),
            (b"Accept", b"*/*"),
            # identity: what arrives is what is counted against max_bytes (no gzip bombs).
            (b"Accept-Encoding", b"identity"),
            *request.headers,
        ]
        try:
            async with self._pool.stream(
                request.method, core_url, headers=headers, content=request.body
            ) as response:
                status = response.status
                if status in redirects:
                    location = _header(response, b"location")
                    if location is None:
                        raise OutboundError(f"answered HTTP {status} without a Location")
                    try:
                        return target.join(location.decode("latin-1")), b""
                    except httpx.InvalidURL as error:
                        raise OutboundError(f"redirects to an invalid URL ({error})") from None
                if not 200 <= status < 300:
                    raise OutboundError(f"answered HTTP {status}")
                if not request.read_body:
                    return None, b""
                return None, await self._read(response)
        except httpcore.ConnectError as error:
            reason = str(error) or "connection failed"
            raise OutboundError(f"could not be reached ({reason})") from None
        except httpcore.TimeoutException:
            raise OutboundError(f"timed out after {self._policy.timeout_s:g} s") from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as error:
            reason = str(error) or type(error).__name__
            raise OutboundError(f"failed mid-transfer ({reason})") from None

    async def _read(self, response: httpcore.Response) -> bytes:
        limit = self._policy.max_bytes
        too_large = OutboundError(f"is larger than {_size(limit)}")
        declared = _header(response, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)
