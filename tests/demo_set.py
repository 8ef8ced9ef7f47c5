"""The demo set (models/demo) built once per test session and shared by every server and engine.

A fresh data directory builds the demo set on first start (a few seconds); the suite starts many
servers and engines, so their data directories link `demo/` to this one build instead. Tests of
the build itself start on a data directory of their own.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path


@cache
def shared_demo_root() -> Path:
    """The session's demo set (built on first call, removed when the test process ends)."""
    from models.demo import ensure_demo_set

    root = Path(tempfile.mkdtemp(prefix="easel-demo-set-"))
    atexit.register(shutil.rmtree, root, True)
    return ensure_demo_set(root)


def link_demo_set(data_dir: Path) -> Path:
    """data_dir/demo -> the shared demo set, unless data_dir has a demo folder already; returns
    data_dir."""
    demo = data_dir / "demo"
    if not demo.exists() and not demo.is_symlink():
        data_dir.mkdir(parents=True, exist_ok=True)
        demo.symlink_to(shared_demo_root(), target_is_directory=True)
    return data_dir
