"""The one key store both protocols share: PICPIK key pairs and Runware API keys, each with its
own limits, kept in one JSON file that `easel keys create|list|revoke` edits.

Format (JSON; written by `easel keys`, readable and editable by hand):
    {"picpik": [{"public_key": "...", "private_key": "...", "name": "...", "created": 0,
                 "rate_per_s": 2.0, "burst": 10, "max_concurrent": 8}],
     "runware": [{"api_key_sha256": "<hex>", "name": "...", "created": 0, ...}]}
A Runware key is a bearer secret, so the file keeps only its SHA-256 (a hand-written plaintext
"api_key" is accepted too). A PICPIK private key must stay in clear: the request signature is a
hash over the body and that key, so the server needs it to check one. The limits are optional;
absent or null means unlimited.

The server re-reads the file when it changes (checked at most once a second), so a revoked key
stops working within a second without a restart. With no keys file at all the server runs open
(loopback only, unless --insecure); a keys file with no keys in it lets nobody in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 1.0
RUNWARE_OWNER_PREFIX = "runware:"


class KeysFileError(ValueError):
    pass


class KeyProtocol(StrEnum):
    PICPIK = "picpik"
    RUNWARE = "runware"


@dataclass(frozen=True)
class KeyPolicy:
    """What one key may do. None: unlimited."""

    rate_per_s: float | None = None  # tasks submitted per second, sustained
    burst: int | None = None  # tasks submitted at once after a quiet spell; None: see bucket_size
    max_concurrent: int | None = None  # tasks queued or running at the same time

    @property
    def bucket_size(self) -> float:
        """The token bucket's capacity: `burst`, else one second's worth (at least 1)."""
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, self.rate_per_s or 1.0)

    def describe(self) -> str:
        parts = []
        if self.rate_per_s is not None:
            parts.append(f"{self.rate_per_s:g}/s burst {self.bucket_size:g}")
        if self.max_concurrent is not None:
            parts.append(f"{self.max_concurrent} concurrent")
        return ", ".join(parts) or "unlimited"


UNLIMITED = KeyPolicy()


@dataclass(frozen=True)
class ApiKey:
    """One key as the file holds it (never the Runware secret itself)."""

    protocol: KeyProtocol
    name: str
    # PICPIK: the PublicKey. Runware: the SHA-256 hex digest of the API key.
    key_id: str
    private_key: str = ""  # PICPIK only: what signatures are checked with
    created: float = 0.0
    policy: KeyPolicy = UNLIMITED

    @property
    def owner(self) -> str:
        """The owner id task records keep: the PublicKey, or a Runware key's short hash."""
        if self.protocol is KeyProtocol.PICPIK:
            return self.key_id
        return RUNWARE_OWNER_PREFIX + self.key_id[:16]

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "created": self.created}
        if self.protocol is KeyProtocol.PICPIK:
            entry = {"public_key": self.key_id, "private_key": self.private_key, **entry}
        else:
            entry = {"api_key_sha256": self.key_id, **entry}
        for name in ("rate_per_s", "burst", "max_concurrent"):
            value = getattr(self.policy, name)
            if value is not None:
                entry[name] = value
        return entry


def runware_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_picpik_pair() -> tuple[str, str]:
    """A fresh (PublicKey, PrivateKey)."""
    return "pk_" + secrets.token_hex(10), secrets.token_urlsafe(32)


def new_runware_key() -> str:
    """A fresh Runware API key: 32 characters, as Runware's own are."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class KeySet:
    """An immutable snapshot of the keys; lookups compare in constant time over all keys."""

    keys: tuple[ApiKey, ...] = ()
    configured: bool = False  # False: no keys file, the server runs open

    @property
    def open(self) -> bool:
        return not self.configured

    def picpik_key(self, public_key: str) -> ApiKey | None:
        found = None
        for key in self.keys:
            if key.protocol is KeyProtocol.PICPIK and hmac.compare_digest(
                key.key_id.encode(), public_key.encode()
            ):
                found = key
        return found

    def runware_key(self, api_key: str) -> ApiKey | None:
        digest = runware_key_hash(api_key).encode()
        found = None
        for key in self.keys:
            if key.protocol is KeyProtocol.RUNWARE and hmac.compare_digest(
                key.key_id.encode(), digest
            ):
                found = key
        return found

    def by_owner(self, owner: str) -> ApiKey | None:
        return next((key for key in self.keys if key.owner == owner), None)

    def to_json(self) -> dict[str, Any]:
        return {
            protocol.value: [k.to_json() for k in self.keys if k.protocol is protocol]
            for protocol in KeyProtocol
        }


def parse_keys(data: Any, source: str = "keys file") -> tuple[ApiKey, ...]:
    """The keys of a keys file's JSON; KeysFileError names the bad entry."""
    if not isinstance(data, dict):
        raise KeysFileError(f"{source}: expected a JSON object with 'picpik' / 'runware' lists")
    keys: list[ApiKey] = []
    for protocol in KeyProtocol:
        entries = data.get(protocol.value, [])
        if not isinstance(entries, list):
            raise KeysFileError(f"{source}: '{protocol.value}' must be a list")
        for i, entry in enumerate(entries):
            where = f"{source}: {protocol.value}[{i}]"
            if not isinstance(entry, dict):
                raise KeysFileError(f"{where} must be an object")
            keys.append(_parse_entry(protocol, entry, where))
    names = [k.name for k in keys if k.name]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise KeysFileError(f"{source}: key names must be unique: {sorted(duplicated)}")
    return tuple(keys)


def _parse_entry(protocol: KeyProtocol, entry: dict[str, Any], where: str) -> ApiKey:
    if protocol is KeyProtocol.PICPIK:
        public, private = entry.get("public_key"), entry.get("private_key")
        if not (isinstance(public, str) and public and isinstance(private, str) and private):
            raise KeysFileError(f"{where} needs public_key and private_key")
        key_id = public
    else:
        private = ""
        digest, plain = entry.get("api_key_sha256"), entry.get("api_key")
        if isinstance(digest, str) and len(digest) == 64:
            key_id = digest.lower()
        elif isinstance(plain, str) and plain:
            key_id = runware_key_hash(plain)
        else:
            raise KeysFileError(f"{where} needs api_key_sha256 (or api_key)")
    name = entry.get("name") or ""
    created = entry.get("created") or 0.0
    if not isinstance(name, str) or not isinstance(created, int | float):
        raise KeysFileError(f"{where}: name must be a string and created a number")
    return ApiKey(protocol, name, key_id, private, float(created), _parse_policy(entry, where))


def _parse_policy(entry: dict[str, Any], where: str) -> KeyPolicy:
    rate, burst, concurrent = (entry.get(n) for n in ("rate_per_s", "burst", "max_concurrent"))
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
        raise KeysFileError(f"{where}: rate_per_s must be a number")
    if rate is not None and rate <= 0:
        raise KeysFileError(f"{where}: rate_per_s must be positive")
    for name, value in (("burst", burst), ("max_concurrent", concurrent)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise KeysFileError(f"{where}: {name} must be a whole number")
        if value is not None and value < 1:
            raise KeysFileError(f"{where}: {name} must be at least 1")
    return KeyPolicy(None if rate is None else float(rate), burst, concurrent)


def read_keys_file(path: Path) -> KeySet:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeysFileError(
            f"keys file {path} does not exist (create keys with `easel keys create`)"
        ) from None
    except (OSError, ValueError) as error:
        raise KeysFileError(f"cannot read keys file {path}: {error}") from None
    return KeySet(parse_keys(data, str(path)), configured=True)


def write_keys_file(path: Path, keys: KeySet) -> None:
    """Write atomically, readable by the owner only (the file holds PICPIK private keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(keys.to_json(), file, indent=2)
        file.write("\n")
    tmp.replace(path)


class KeyStore:
    """The server's live view of its keys. With a path, the file is re-read when it changes, so
    `easel keys create|revoke` on a running server takes effect within RELOAD_CHECK_S; a file
    that fails to parse keeps the last good keys (and is logged)."""

    def __init__(
        self,
        keys: KeySet | None = None,
        path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys or KeySet()
        self._path = path
        self._clock = clock
        self._checked = clock()
        self._stamp = self._file_stamp()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | None) -> KeyStore:
        """The keys of a keys file (KeysFileError if unreadable), or an open store for None."""
        if path is None:
            return cls()
        return cls(read_keys_file(path), path)

    @classmethod
    def of(cls, picpik: dict[str, str] | None = None, runware: Iterable[str] = ()) -> KeyStore:
        """An in-memory store from plain secrets: {public: private} pairs and Runware keys."""
        keys = [
            ApiKey(KeyProtocol.PICPIK, "", public, private)
            for public, private in (picpik or {}).items()
        ]
        keys += [ApiKey(KeyProtocol.RUNWARE, "", runware_key_hash(key)) for key in runware]
        return cls(KeySet(tuple(keys), configured=True))

    @property
    def current(self) -> KeySet:
        self._refresh()
        return self._keys

    # --- what the front ends ask ---

    @property
    def open(self) -> bool:
        """No keys file: every request is let in, as owner ""."""
        return self._keys.open

    def picpik_key(self, public_key: str) -> ApiKey | None:
        return self.current.picpik_key(public_key)

    def runware_key(self, api_key: str) -> ApiKey | None:
        return self.current.runware_key(api_key)

    def policy(self, owner: str, default: KeyPolicy = UNLIMITED) -> KeyPolicy:
        """The limits of the key that owns `owner`'s tasks; `default` for the open server's
        owner "" (and a key revoked meanwhile)."""
        key = self.current.by_owner(owner) if owner else None
        return key.policy if key is not None else default

    # --- reloading ---

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        if self._path is None or self._clock() - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = self._clock()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._keys = read_keys_file(self._path)
            except KeysFileError as error:
                log.error("keeping the previous keys: %s", error)
                return
            log.info("keys file reloaded: %d key(s)", len(self._keys.keys))


# --- what `easel keys` does to a file ---


def add_key(keys: KeySet, key: ApiKey) -> KeySet:
    if key.name and any(k.name == key.name for k in keys.keys):
        raise KeysFileError(f"a key named {key.name!r} exists already")
    return replace(keys, keys=(*keys.keys, key), configured=True)


def remove_key(keys: KeySet, ident: str) -> tuple[KeySet, ApiKey]:
    """Drop the key named `ident`, or whose PublicKey / Runware key id (hash prefix of at least
    8 characters) it is; KeysFileError when none or several match."""
    matches = [
        k
        for k in keys.keys
        if ident in (k.name, k.key_id, k.owner)
        or (len(ident) >= 8 and k.protocol is KeyProtocol.RUNWARE and k.key_id.startswith(ident))
    ]
    if not matches:
        raise KeysFileError(f"no key matches {ident!r}")
    if len(matches) > 1:
        raise KeysFileError(f"{len(matches)} keys match {ident!r}: name one by its name")
    gone = matches[0]
    return replace(keys, keys=tuple(k for k in keys.keys if k is not gone)), gone


@dataclass(frozen=True)
class NewKey:
    """What `easel keys create` prints once: the secret is not stored for Runware keys."""

    key: ApiKey
    secret: str  # PICPIK: the PrivateKey; Runware: the API key
    fields: dict[str, str] = field(default_factory=dict)


def create_key(
    protocol: KeyProtocol, name: str, policy: KeyPolicy = UNLIMITED, now: float | None = None
) -> NewKey:
    created = float(int(time.time() if now is None else now))  # whole seconds, as written
    if protocol is KeyProtocol.PICPIK:
        public, private = new_picpik_pair()
        key = ApiKey(protocol, name, public, private, created, policy)
        return NewKey(key, private, {"PublicKey": public, "PrivateKey": private})
    api_key = new_runware_key()
    key = ApiKey(protocol, name, runware_key_hash(api_key), "", created, policy)
    return NewKey(key, api_key, {"apiKey": api_key})
