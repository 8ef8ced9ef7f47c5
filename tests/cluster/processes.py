"""A whole cluster as real processes: redis-server, `easel serve --broker`, `easel worker`."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.e2e.server_process import EaselProcess, ServerProcess
from tests.redis_server import RedisServer

# Short timings so a killed worker's job comes back within seconds (production: hours).
FAST_RECOVERY = (
    "--visibility-timeout",
    "6",
    "--restore-interval",
    "1",
    "--heartbeat",
    "0.5",
)


def process_data_dir(root: Path, name: str, demo_root: Path) -> Path:
    """A process's own data directory sharing the demo model built once for the session."""
    data_dir = root / name
    data_dir.mkdir(parents=True)
    (data_dir / "demo").symlink_to(demo_root, target_is_directory=True)
    return data_dir


class WorkerProcess(EaselProcess):
    def __init__(self, data_dir: Path, broker_url: str, name: str, *extra_args: str) -> None:
        self.name = f"{name}@test"
        self.client = redis.Redis.from_url(broker_url)
        args = [
            sys.executable,
            "-m",
            "server.cli",
            "worker",
            "--broker",
            broker_url,
            "--data-dir",
            str(data_dir),
            "--devices",
            "cpu",
            "--name",
            self.name,
            *extra_args,
        ]
        super().__init__(args, data_dir.parent / f"{name}.log")

    def ready(self) -> bool:
        return self.beat() is not None

    def beat(self) -> dict | None:
        """Its latest heartbeat (queues, models, engine stats), None when it is not alive."""
        raw = self.client.hget("easel:workers", self.name)
        beat = None if raw is None else json.loads(raw)
        return beat if beat is not None and time.time() - beat["at"] < 10 else None

    def kill(self) -> None:
        """kill -9: no shutdown, no acknowledgement, no goodbye."""
        self.stop(signal.SIGKILL)


class Cluster:
    """Redis, API replicas and workers; stopped in reverse order."""

    def __init__(
        self, root: Path, demo_root: Path, *common_args: str, persistent_redis: bool = False
    ) -> None:
        self.root = root
        self.demo_root = demo_root
        self.common_args = common_args  # for every replica and worker, e.g. --models-dir
        self.redis = RedisServer(root / "redis", persistent=persistent_redis)
        self.apis: list[ServerProcess] = []
        self.workers: list[WorkerProcess] = []

    def start(self, apis: int = 2, workers: int = 2) -> Cluster:
        self.redis.start()
        for i in range(apis):
            data_dir = process_data_dir(self.root, f"api{i}", self.demo_root)
            server = ServerProcess(data_dir, "--broker", self.redis.url, *self.common_args)
            self.apis.append(server.start())
        for i in range(workers):
            self.add_worker(f"worker{i}")
        return self

    @contextlib.contextmanager
    def running(self, apis: int = 2, workers: int = 2) -> Iterator[Cluster]:
        """Started, and stopped on the way out; the logs are printed if it does not come up."""
        try:
            self.start(apis, workers)
        except BaseException:
            print(self.logs())
            self.stop()
            raise
        try:
            yield self
        finally:
            self.stop()

    def add_worker(self, name: str, *args: str) -> WorkerProcess:
        data_dir = process_data_dir(self.root, name, self.demo_root)
        worker = WorkerProcess(
            data_dir, self.redis.url, name, *FAST_RECOVERY, *self.common_args, *args
        )
        self.workers.append(worker.start())
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for api in self.apis:
            api.stop()
        self.redis.stop()

    def logs(self) -> str:
        parts = [f"--- {w.name}\n{w.log()[-4000:]}" for w in self.workers]
        parts += [f"--- api {a.port}\n{a.log()[-4000:]}" for a in self.apis]
        return "\n".join(parts)
