"""The key store both protocols share, read from the keys file.

Format (JSON):
    {"picpik": [{"public_key": "...", "private_key": "...", "name": "optional"}],
     "runware": [{"api_key": "...", "name": "optional"}]}
With no keys file the store is empty and the server runs open (loopback only, unless --insecure).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path


class KeysFileError(ValueError):
    pass


@dataclass(frozen=True)
class KeyStore:
    picpik: dict[str, str] = field(default_factory=dict)  # public key -> private key
    runware: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.picpik and not self.runware

    def picpik_private_key(self, public_key: str) -> str | None:
        """The private key of a public key; compares in constant time over all keys."""
        found = None
        for known, private in self.picpik.items():
            if hmac.compare_digest(known.encode(), public_key.encode()):
                found = private
        return found

    def runware_owner(self, api_key: str) -> str | None:
        """The owner id of a Runware API key (never the key itself), or None if unknown;
        compares in constant time over all keys."""
        found = False
        for known in self.runware:
            if hmac.compare_digest(known.encode(), api_key.encode()):
                found = True
        if not found:
            return None
        return "runware:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path | None) -> KeyStore:
        if path is None:
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise KeysFileError(f"cannot read keys file {path}: {error}") from None
        if not isinstance(data, dict):
            raise KeysFileError(f"{path}: expected a JSON object with 'picpik' / 'runware' lists")
        picpik: dict[str, str] = {}
        for i, entry in enumerate(data.get("picpik", [])):
            pub, priv = (
                (entry.get("public_key"), entry.get("private_key"))
                if isinstance(entry, dict)
                else (None, None)
            )
            if not (isinstance(pub, str) and pub and isinstance(priv, str) and priv):
                raise KeysFileError(f"{path}: picpik[{i}] needs public_key and private_key")
            picpik[pub] = priv
        runware = set()
        for i, entry in enumerate(data.get("runware", [])):
            key = entry.get("api_key") if isinstance(entry, dict) else None
            if not (isinstance(key, str) and key):
                raise KeysFileError(f"{path}: runware[{i}] needs api_key")
            runware.add(key)
        return cls(picpik=picpik, runware=frozenset(runware))
