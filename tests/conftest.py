"""Shared fixtures: the demo set built once per session, engines and in-process apps over it.

Nothing here downloads: the demo model is built from code, like the server builds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_root() -> Path:
    """The demo set (every demo model: tests/demo_set.py), built once per session."""
    from tests.demo_set import shared_demo_root

    return shared_demo_root()


@pytest.fixture(scope="session")
def demo_dir(demo_root: Path) -> Path:
    from models.demo import DEMO_CODE

    return demo_root / DEMO_CODE


def demo_app(
    demo_dir: Path, data_dir: Path, *, max_queue: int = 64, keys=None, **settings
) -> FastAPI:
    """A FastAPI app (not started) over an engine that serves the demo model on the CPU;
    `settings` are extra server Settings fields (e.g. url_allow)."""
    from models.catalogue import Catalogue
    from models.demo import demo_spec
    from pipelines.engine import Engine, EngineConfig
    from server.app import build_app
    from server.settings import Settings

    config = EngineConfig(max_queue=max_queue, devices=["cpu"], cache_dir=data_dir / "cache")
    engine = Engine(Catalogue([demo_spec(demo_dir)]), config)
    return build_app(Settings(data_dir=data_dir, **settings), engine, keys)


@pytest.fixture()
def make_client(demo_dir: Path, tmp_path: Path) -> Iterator:
    """make_client(max_queue=..., keys=...) -> a started TestClient over the demo model."""
    from fastapi.testclient import TestClient

    clients: list[TestClient] = []

    def make(*, max_queue: int = 64, keys=None, **settings) -> TestClient:
        data_dir = tmp_path / f"data{len(clients)}"
        app = demo_app(demo_dir, data_dir, max_queue=max_queue, keys=keys, **settings)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
