"""The key store: file format, lookups, live reloading, and `easel keys create|list|revoke`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from server.cli import main
from server.keys import (
    ApiKey,
    KeyPolicy,
    KeyProtocol,
    KeySet,
    KeysFileError,
    KeyStore,
    add_key,
    create_key,
    parse_keys,
    read_keys_file,
    remove_key,
    runware_key_hash,
    write_keys_file,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data))
    return path


def test_both_protocols_and_their_limits_are_read() -> None:
    keys = parse_keys(
        {
            "picpik": [{"public_key": "pub", "private_key": "priv", "name": "shop", "burst": 3}],
            "runware": [
                {"api_key": "plain-key", "name": "a", "rate_per_s": 0.5, "max_concurrent": 2},
                {"api_key_sha256": runware_key_hash("hashed-key"), "name": "b"},
            ],
        }
    )
    shop, a, b = keys
    assert (shop.protocol, shop.key_id, shop.private_key) == (KeyProtocol.PICPIK, "pub", "priv")
    assert shop.policy == KeyPolicy(burst=3)
    assert a.policy == KeyPolicy(rate_per_s=0.5, max_concurrent=2)
    assert a.key_id == runware_key_hash("plain-key")  # a plaintext key is kept as its hash
    assert b.policy == KeyPolicy()
    store = KeySet(keys, configured=True)
    assert store.picpik_key("pub") is shop and store.picpik_key("pu") is None
    assert store.runware_key("plain-key") is a and store.runware_key("hashed-key") is b
    assert store.runware_key("hashed-key ") is None and store.runware_key("") is None
    assert store.by_owner(a.owner) is a and store.by_owner("pub") is shop
    assert a.owner.startswith("runware:") and a.owner != b.owner


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"picpik": {}}, "'picpik' must be a list"),
        ({"picpik": [{"public_key": "p"}]}, "picpik[0] needs public_key and private_key"),
        ({"runware": [{"api_key": ""}]}, "runware[0] needs api_key_sha256"),
        ({"runware": [{"api_key": "k", "rate_per_s": -1}]}, "rate_per_s must be positive"),
        ({"runware": [{"api_key": "k", "rate_per_s": "fast"}]}, "rate_per_s must be a number"),
        ({"runware": [{"api_key": "k", "max_concurrent": 1.5}]}, "must be a whole number"),
        ({"runware": [{"api_key": "k", "burst": 0}]}, "burst must be at least 1"),
        (
            {"runware": [{"api_key": "k", "name": "x"}, {"api_key": "l", "name": "x"}]},
            "names must be unique",
        ),
    ],
)
def test_bad_keys_files_name_the_entry(data: object, message: str) -> None:
    with pytest.raises(KeysFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_keys(data)


def test_written_file_is_private_and_keeps_no_runware_secret(tmp_path: Path) -> None:
    new_picpik = create_key(KeyProtocol.PICPIK, "p", KeyPolicy(rate_per_s=2.0))
    new_runware = create_key(KeyProtocol.RUNWARE, "r", KeyPolicy(max_concurrent=4))
    keys = add_key(add_key(KeySet(configured=True), new_picpik.key), new_runware.key)
    path = tmp_path / "sub" / "keys.json"
    write_keys_file(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert new_runware.secret not in text and runware_key_hash(new_runware.secret) in text
    assert new_picpik.secret in text  # signatures need the PICPIK private key
    again = read_keys_file(path)
    assert again.keys == keys.keys
    assert again.runware_key(new_runware.secret) == new_runware.key
    assert len(new_runware.secret) == 32


def test_the_store_follows_its_file(tmp_path: Path) -> None:
    clock = Clock()
    path = _file(tmp_path, {"runware": [{"api_key": "one", "name": "one"}]})
    store = KeyStore(read_keys_file(path), path, clock)
    assert store.runware_key("one") is not None
    _file(tmp_path, {"runware": [{"api_key": "two", "name": "two", "max_concurrent": 1}]})
    assert store.runware_key("one") is not None  # checked at most once a second
    clock.now += 1.5
    assert store.runware_key("one") is None
    two = store.runware_key("two")
    assert two is not None and store.policy(two.owner).max_concurrent == 1
    path.write_text("{broken")
    clock.now += 1.5
    assert store.runware_key("two") is not None  # a broken file keeps the last good keys
    _file(tmp_path, {})
    clock.now += 1.5
    assert store.runware_key("two") is None
    assert not store.open  # a keys file with no keys lets nobody in: it never runs open


def test_an_open_store_has_no_keys_and_unlimited_policy() -> None:
    store = KeyStore.load(None)
    assert store.open and store.runware_key("x") is None
    assert store.policy("") == KeyPolicy()
    assert store.policy("", KeyPolicy(rate_per_s=1.0)).rate_per_s == 1.0


def test_remove_by_name_public_key_or_hash_prefix() -> None:
    picpik = ApiKey(KeyProtocol.PICPIK, "shop", "pub", "priv")
    runware = ApiKey(KeyProtocol.RUNWARE, "bot", runware_key_hash("secret"))
    keys = KeySet((picpik, runware), configured=True)
    assert remove_key(keys, "shop")[1] is picpik
    assert remove_key(keys, "pub")[1] is picpik
    assert remove_key(keys, runware.key_id[:10])[1] is runware
    left, gone = remove_key(keys, "bot")
    assert gone is runware and left.keys == (picpik,) and left.configured
    with pytest.raises(KeysFileError, match="no key matches"):
        remove_key(keys, "nobody")
    with pytest.raises(KeysFileError, match="exists already"):
        add_key(keys, ApiKey(KeyProtocol.RUNWARE, "bot", runware_key_hash("other")))


def test_keys_command_creates_lists_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["keys", "--data-dir", str(tmp_path)]
    assert main([*data, "create", "runware", "--name", "bot", "--rate", "2", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert main([*data, "create", "picpik", "--name", "shop", "--max-concurrent", "3"]) == 0
    out = capsys.readouterr().out
    assert "PublicKey: pk_" in out and "PrivateKey: " in out
    store = KeyStore.load(tmp_path / "keys.json")
    bot = store.runware_key(created["apiKey"])
    assert bot is not None and bot.name == "bot" and bot.policy.rate_per_s == 2.0
    assert main([*data, "create", "runware", "--name", "bot"]) == 2  # names are unique
    assert "exists already" in capsys.readouterr().out
    assert main([*data, "list"]) == 0
    listing = capsys.readouterr().out
    assert "bot" in listing and "2/s burst 2" in listing and "3 concurrent" in listing
    assert created["apiKey"] not in listing
    assert main([*data, "revoke", "bot"]) == 0
    assert KeyStore.load(tmp_path / "keys.json").runware_key(created["apiKey"]) is None
    assert main([*data, "revoke", "bot"]) == 2
