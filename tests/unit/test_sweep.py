"""Results and task records are swept after the retention time; newer and unfinished stay."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from server.app import Services, sweep_expired
from server.keys import KeyStore
from server.outbound import Outbound, OutboundPolicy
from server.results import FileResultStore
from server.settings import Settings
from server.taskstore import SqliteTaskStore, TaskRecord


def test_sweep_expired(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    results = FileResultStore(tmp_path / "results")
    services = Services(
        Settings(data_dir=tmp_path, retention_hours=1.0),
        engine=None,  # type: ignore[arg-type]  # sweeping never touches the engine
        store=store,
        results=results,
        dispatcher=None,  # type: ignore[arg-type]  # ... nor the dispatcher
        keys=KeyStore(),
        outbound=Outbound(OutboundPolicy()),
    )
    old, fresh = time.time() - 2 * 3600, time.time()
    images = {name: results.save(Image.new("RGB", (8, 8))) for name in ("old", "fresh")}
    for task_id, created in (("old", old), ("fresh", fresh), ("old-running", old)):
        store.create(TaskRecord(task_id, "picpik", "GenerateImages", "", created_at=created))
    store.finish("old", [images["old"]], [])
    store.finish("fresh", [images["fresh"]], [])

    assert sweep_expired(services) == 1
    assert store.get("old") is None
    assert results.path(images["old"]) is None
    assert store.get("fresh") is not None
    assert results.path(images["fresh"]) is not None
    assert store.get("old-running") is not None  # never swept while it may still finish


def test_result_ids_cannot_name_other_paths(tmp_path: Path) -> None:
    results = FileResultStore(tmp_path / "results")
    (tmp_path / "secret.png").write_bytes(b"x")
    for bad in ("../secret", "..%2Fsecret", "", "0" * 31, "Z" * 32, "/etc/passwd"):
        assert results.path(bad) is None
