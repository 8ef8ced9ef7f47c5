"""`easel keys create|list|revoke`: manage the one keys file both protocols read.

The server re-reads the file when it changes, so these commands work on a running server too.
A new key's secret is printed once: Runware keys are stored only as their SHA-256.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from server.keys import (
    ApiKey,
    KeyPolicy,
    KeyProtocol,
    KeySet,
    KeysFileError,
    add_key,
    create_key,
    read_keys_file,
    remove_key,
    write_keys_file,
)
from server.taskstore import TaskStore

KEYS_FILE_NAME = "keys.json"


def default_keys_file(data_dir: Path) -> Path:
    """Where `easel keys` writes and `easel serve` looks when no --keys-file is given."""
    return data_dir / KEYS_FILE_NAME


def add_keys_parser(commands: argparse._SubParsersAction, data_dir_default: str) -> None:
    keys = commands.add_parser("keys", help="create, list or revoke API keys")
    keys.add_argument(
        "--data-dir",
        type=Path,
        default=Path(data_dir_default),
        help="the server's data directory: keys.json and the usage counters (EASEL_DATA_DIR)",
    )
    keys.add_argument(
        "--keys-file",
        type=Path,
        default=os.environ.get("EASEL_KEYS_FILE"),
        help="the keys file (EASEL_KEYS_FILE; default DATA_DIR/keys.json)",
    )
    keys.add_argument(
        "--broker",
        default=os.environ.get("EASEL_BROKER"),
        help="a cluster's Redis, where `list` reads the usage counters (EASEL_BROKER)",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print its secret once")
    create.add_argument("protocol", choices=[p.value for p in KeyProtocol])
    create.add_argument("--name", required=True, help="a unique name, e.g. the client's")
    create.add_argument("--rate", type=float, help="tasks per second it may submit")
    create.add_argument("--burst", type=int, help="tasks at once after a quiet spell")
    create.add_argument("--max-concurrent", type=int, help="tasks queued or running at once")
    create.add_argument("--json", action="store_true", help="print the new key as JSON")
    actions.add_parser("list", help="list the keys, their limits and their usage")
    revoke = actions.add_parser("revoke", help="delete a key")
    revoke.add_argument("key", help="its name, PublicKey, or the key id `list` shows")


def run_keys(args: argparse.Namespace) -> int:
    path = args.keys_file or default_keys_file(args.data_dir)
    try:
        keys = read_keys_file(path) if path.exists() else KeySet(configured=True)
        if args.keys_command == "create":
            return _create(path, keys, args)
        if args.keys_command == "revoke":
            keys, gone = remove_key(keys, args.key)
            write_keys_file(path, keys)
            print(f"revoked {gone.protocol.value} key {gone.name or _key_id(gone)}")
            return 0
        return _list(keys, args)
    except (KeysFileError, ValueError) as error:
        print(f"easel keys: {error}")
        return 2


def _create(path: Path, keys: KeySet, args: argparse.Namespace) -> int:
    for name in ("rate", "burst", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    policy = KeyPolicy(args.rate, args.burst, args.max_concurrent)
    new = create_key(KeyProtocol(args.protocol), args.name, policy)
    write_keys_file(path, add_key(keys, new.key))
    if args.json:
        print(json.dumps({"protocol": args.protocol, "name": args.name, **new.fields}))
        return 0
    print(f"created {args.protocol} key {args.name!r} in {path} ({policy.describe()})")
    for field, value in new.fields.items():
        print(f"  {field}: {value}")
    if new.key.protocol is KeyProtocol.RUNWARE:
        print("  (shown once: the keys file keeps only its SHA-256)")
    return 0


def _list(keys: KeySet, args: argparse.Namespace) -> int:
    store = _usage_store(args)
    print(f"{'PROTOCOL':8} {'NAME':20} {'KEY':22} {'CREATED':16} {'LIMITS':28} USAGE")
    for key in keys.keys:
        created = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created)) if key.created else "-"
        )
        usage = _usage(store, key) if store is not None else "-"
        print(
            f"{key.protocol.value:8} {key.name or '-':20} {_key_id(key):22} {created:16} "
            f"{key.policy.describe():28} {usage}"
        )
    if store is not None:
        store.close()
    return 0


def _key_id(key: ApiKey) -> str:
    """What identifies a key in listings: the PublicKey, or a Runware key's hash prefix."""
    return key.key_id if key.protocol is KeyProtocol.PICPIK else key.key_id[:16]


def _usage(store: TaskStore, key: ApiKey) -> str:
    points = store.usage(key.owner)
    if key.protocol is KeyProtocol.RUNWARE:
        return f"${points / 1_000_000:.4f}"  # Runware usage counts micro-dollars of cost
    return f"{points} credits"


def _usage_store(args: argparse.Namespace) -> TaskStore | None:
    """The task store holding the usage counters, if there is one to read."""
    if args.broker:
        from server.cluster.redis_client import connect
        from server.cluster.redis_tasks import RedisTaskStore

        return RedisTaskStore(connect(args.broker), ttl_s=3600)
    database = args.data_dir / "tasks.sqlite3"
    if not database.exists():
        return None
    from server.taskstore import SqliteTaskStore

    return SqliteTaskStore(database)
