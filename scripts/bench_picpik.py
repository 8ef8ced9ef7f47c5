"""Closed-loop PICPIK benchmark: N clients submit GenerateImages, poll until Finished, download.

Reports images/s and the p50 / p95 latency from submission to downloaded images. Run it against
a running server, e.g. `make serve` in one shell and, in another:

    python scripts/bench_picpik.py --url http://127.0.0.1:7860 --tasks 20 --concurrency 1

Only the standard library is needed, so it runs from any Python.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def one_task(url: str, params: dict) -> tuple[float, int]:
    started = time.perf_counter()
    reply = post(url, {"Action": "GenerateImages", **params})
    if reply["RetCode"] != 0:
        raise RuntimeError(reply)
    while True:
        detail = post(url, {"Action": "ListTasksDetails", "TaskUIDList": [reply["TaskUID"]]})
        task = detail["TaskDetailList"][0]
        if task["Status"] == "Error":
            raise RuntimeError(task)
        if task["Status"] == "Finished":
            break
        time.sleep(0.02)
    for image_url in task["ImgList"]:
        with urllib.request.urlopen(image_url, timeout=60) as response:
            response.read()
    return time.perf_counter() - started, len(task["ImgList"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--model", default="PICPIK General")
    args = parser.parse_args()
    params = {
        "PositivePrompts": ["a cat on the sofa"],
        "Width": args.size,
        "Height": args.size,
        "BatchSize": args.batch,
        "MainModel": {"ModelCode": args.model, "InferenceParams": {"Steps": args.steps}},
    }
    one_task(args.url, params)  # warm-up: loads the model
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda _: one_task(args.url, params), range(args.tasks)))
    elapsed = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in results)
    images = sum(count for _, count in results)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    print(
        f"{args.tasks} tasks x {args.batch} image(s) {args.size}x{args.size}, {args.steps} steps, "
        f"concurrency {args.concurrency}: {images / elapsed:.2f} images/s, "
        f"latency p50 {statistics.median(latencies):.2f}s p95 {p95:.2f}s"
    )


if __name__ == "__main__":
    main()
