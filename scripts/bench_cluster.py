"""Benchmark the cluster's cost: a task's latency through Redis + Celery vs one server, and
throughput with cross-task batching in a worker.

    python scripts/bench_cluster.py --tasks 20 --concurrency 16 --steps 6

Starts its own redis-server, one `easel serve` (single machine), then one `easel serve
--broker` replica and --workers `easel worker`s, all on the demo model, on this machine's
devices. Two phases per setup:
1. sequential: one PICPIK GenerateImages at a time (64x64, one image), polled to the end; the
   latency difference between the setups is what the cluster adds per task (publish, delivery,
   Redis writes, the replica's watcher);
2. concurrent: --concurrency client threads send --tasks each; images/s and the workers' mean
   batch (from GET /engine/stats).
Run it on an idle machine; CPU figures only show overheads, not GPU throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.demo import ensure_demo_set
from tests.cluster.processes import Cluster, process_data_dir
from tests.e2e.server_process import ServerProcess
from tests.picpik_client import PicpikClient


def request(steps: int, seed: int) -> dict[str, Any]:
    model = {"ModelCode": "easel-demo", "InferenceParams": {"Steps": steps}}
    return dict(MainModel=model, PositivePrompts=["a boat"], Width=64, Height=64, Seed=seed)


def sequential(url: str, tasks: int, steps: int) -> list[float]:
    client = PicpikClient(httpx.Client(base_url=url, timeout=120))
    client.generate(**request(steps, 0))  # warm-up: loads the model
    latencies = []
    for i in range(tasks):
        started = time.perf_counter()
        detail = client.generate(**request(steps, i))
        assert detail["Status"] == "Finished", detail
        latencies.append(time.perf_counter() - started)
    return latencies


def concurrent(urls: list[str], clients: int, tasks: int, steps: int) -> float:
    """Images per second with `clients` threads each sending `tasks` one after another."""

    def work(index: int) -> None:
        client = PicpikClient(httpx.Client(base_url=urls[index % len(urls)], timeout=300))
        for i in range(tasks):
            assert client.generate(**request(steps, index * 1000 + i))["Status"] == "Finished"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * tasks / (time.perf_counter() - started)


def mean_batch(url: str) -> float:
    stats = httpx.get(url + "/engine/stats", timeout=10).json()
    snapshots = [w["stats"] for w in stats["workers"].values()] if "workers" in stats else [stats]
    images = sum(s["forward_images"] for s in snapshots)
    passes = sum(s["forward_passes"] for s in snapshots)
    return images / passes if passes else 0.0


def summary(name: str, latencies: list[float], rate: float, batch: float) -> str:
    ms = sorted(1000 * x for x in latencies)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"| {name} | {statistics.mean(ms):.0f} | {statistics.median(ms):.0f} | {p95:.0f} "
        f"| {rate:.2f} | {batch:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="sequential tasks per setup")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--per-client", type=int, default=4, help="tasks per client thread")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easel-bench-cluster-") as tmp:
        root = Path(tmp)
        demo = root / "demo-root"
        ensure_demo_set(demo)  # the whole set: the processes share it, none builds it
        rows = []
        with ServerProcess(process_data_dir(root, "single", demo)) as single:
            latencies = sequential(single.url, args.tasks, args.steps)
            rate = concurrent([single.url], args.concurrency, args.per_client, args.steps)
            rows.append(summary("one server", latencies, rate, mean_batch(single.url)))
        with Cluster(root / "cluster", demo).running(apis=1, workers=args.workers) as cluster:
            url = cluster.apis[0].url
            latencies = sequential(url, args.tasks, args.steps)
            rate = concurrent([url], args.concurrency, args.per_client, args.steps)
            time.sleep(1.5)  # the workers' next heartbeats carry their statistics
            name = f"cluster: 1 replica, {args.workers} worker(s)"
            rows.append(summary(name, latencies, rate, mean_batch(url)))
    print(f"{args.steps} steps, 64x64, sequential tasks: {args.tasks}, ", end="")
    print(f"concurrent: {args.concurrency} clients x {args.per_client} tasks")
    print("| setup | mean ms | p50 ms | p95 ms | concurrent img/s | mean batch |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
