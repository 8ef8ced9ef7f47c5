"""The Redis task and result stores against a real redis-server.

The store contracts run over both implementations (SQLite and Redis tasks, files and Redis
images), so the front ends see the same behaviour on one machine and scaled out. The Redis-only
tests cover what scale-out adds: key expiry, several replicas on one Redis, and racing workers.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from server.cluster.redis_results import RedisResultStore
from server.cluster.redis_tasks import RedisTaskStore
from server.results import Encoding, FileResultStore, ImageFormat, ResultStore, encode
from server.taskstore import SqliteTaskStore, TaskRecord, TaskStatus
from server.taskstore.base import TaskExists, TaskStore, interrupt_unfinished
from tests.redis_server import RedisServer

TTL_S = 3600.0


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def tasks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "sqlite":
        store: TaskStore = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    else:
        store = RedisTaskStore(request.getfixturevalue("client"), TTL_S)
    yield store
    store.close()


@pytest.fixture(params=["files", "redis"])
def images(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    if request.param == "files":
        return FileResultStore(tmp_path / "results")
    return RedisResultStore(request.getfixturevalue("client"), TTL_S)


def _record(task_id: str, owner: str = "k", created_at: float = 0.0) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        protocol="picpik",
        action="GenerateImages",
        owner=owner,
        created_at=created_at,
        seeds=[5, 6],
        cost=3,
        params={"width": 64, "prompt": "a cat"},
    )


# --- task store contract: SQLite and Redis ---------------------------------------------------


def test_lifecycle(tasks: TaskStore) -> None:
    before = time.time()
    tasks.create(_record("t1"))
    created = tasks.get("t1")
    assert created is not None
    assert (created.status, created.progress, created.owner, created.cost) == (
        TaskStatus.QUEUED,
        0.0,
        "k",
        3,
    )
    assert (created.protocol, created.action) == ("picpik", "GenerateImages")
    assert created.seeds == [5, 6]
    assert created.params == {"width": 64, "prompt": "a cat"}
    assert before <= created.created_at == created.updated_at <= time.time()

    tasks.mark_running("t1")
    tasks.set_progress("t1", 0.5)
    running = tasks.get("t1")
    assert (running.status, running.progress) == (TaskStatus.RUNNING, 0.5)
    assert running.updated_at >= created.updated_at

    outputs = {"nsfw": [False, True], "translation": {"source_language": "de", "prompt": "a"}}
    assert tasks.finish("t1", ["img-a", "img-b"], ["caption"], outputs) is True
    finished = tasks.get("t1")
    assert finished.status is TaskStatus.FINISHED
    assert (finished.progress, finished.image_ids, finished.texts, finished.outputs) == (
        1.0,
        ["img-a", "img-b"],
        ["caption"],
        outputs,
    )
    assert finished.created_at == created.created_at
    assert tasks.get("missing") is None


def test_create_keeps_a_given_created_at(tasks: TaskStore) -> None:
    tasks.create(_record("t", created_at=1234.5))
    record = tasks.get("t")
    assert record.created_at == 1234.5
    assert record.updated_at > 1234.5


def test_create_refuses_a_known_id(tasks: TaskStore) -> None:
    tasks.create(_record("t", owner="first"))
    with pytest.raises(TaskExists):
        tasks.create(_record("t", owner="second"))
    assert tasks.get("t").owner == "first"


def test_progress_never_moves_an_ended_task(tasks: TaskStore) -> None:
    tasks.create(_record("t"))
    assert tasks.fail("t", "cancelled", "stop") is True
    tasks.mark_running("t")
    tasks.set_progress("t", 0.3)
    record = tasks.get("t")
    assert (record.status, record.progress, record.error_code) == (
        TaskStatus.ERROR,
        0.0,
        "cancelled",
    )


def test_progress_only_while_running(tasks: TaskStore) -> None:
    tasks.create(_record("t"))
    tasks.set_progress("t", 0.4)
    assert tasks.get("t").progress == 0.0
    tasks.finish("t", ["img"], [])
    tasks.mark_running("t")
    assert tasks.get("t").status is TaskStatus.FINISHED


def test_finish_and_fail_end_queued_and_running_tasks(tasks: TaskStore) -> None:
    tasks.create(_record("queued"))
    tasks.create(_record("running"))
    tasks.mark_running("running")
    assert tasks.finish("queued", ["img"], []) is True
    assert tasks.fail("running", "invalid_input", "bad") is True
    assert tasks.get("queued").status is TaskStatus.FINISHED
    assert tasks.get("running").status is TaskStatus.ERROR
    assert tasks.finish("missing", [], []) is False
    assert tasks.fail("missing", "x", "y") is False


def test_finish_after_fail_changes_nothing(tasks: TaskStore) -> None:
    tasks.create(_record("t"))
    assert tasks.fail("t", "cancelled", "stop") is True
    assert tasks.finish("t", ["img"], ["text"]) is False
    record = tasks.get("t")
    assert (record.status, record.error_code, record.error_message) == (
        TaskStatus.ERROR,
        "cancelled",
        "stop",
    )
    assert (record.image_ids, record.texts, record.progress) == ([], [], 0.0)


def test_fail_after_finish_changes_nothing(tasks: TaskStore) -> None:
    tasks.create(_record("t"))
    assert tasks.finish("t", ["img"], []) is True
    assert tasks.fail("t", "cancelled", "stop") is False
    assert tasks.finish("t", ["other"], []) is False
    record = tasks.get("t")
    assert (record.status, record.image_ids, record.error_code) == (
        TaskStatus.FINISHED,
        ["img"],
        "",
    )


def test_fail_delivery_flips_finished_to_error(tasks: TaskStore) -> None:
    tasks.create(_record("t"))
    tasks.finish("t", ["img"], [])
    tasks.fail_delivery("t", "delivery_failed", "upload refused")
    record = tasks.get("t")
    assert (record.status, record.error_code, record.error_message) == (
        TaskStatus.ERROR,
        "delivery_failed",
        "upload refused",
    )
    tasks.fail_delivery("missing", "delivery_failed", "nothing")
    assert tasks.get("missing") is None


def test_requeue_moves_only_unfinished_tasks_back_to_queued(tasks: TaskStore) -> None:
    for task_id in ("running", "queued", "done"):
        tasks.create(_record(task_id))
    tasks.mark_running("running")
    tasks.set_progress("running", 0.5)
    tasks.finish("done", ["img"], [])
    assert tasks.requeue("running") is True and tasks.requeue("queued") is True
    assert tasks.requeue("done") is False and tasks.requeue("missing") is False
    assert (tasks.get("running").status, tasks.get("running").progress) == (TaskStatus.QUEUED, 0)
    assert tasks.get("done").status is TaskStatus.FINISHED
    assert [r.task_id for r in tasks.unfinished()] == ["running", "queued"]
    assert tasks.get("missing") is None  # requeue never creates a record


def test_unfinished_and_interrupt(tasks: TaskStore) -> None:
    # Created out of order: unfinished() lists oldest first.
    for task_id, owner, created_at in (("a", "x", 300.0), ("b", "y", 100.0), ("c", "x", 200.0)):
        tasks.create(_record(task_id, owner, created_at))
    tasks.create(_record("d", "x", 50.0))
    tasks.mark_running("a")
    tasks.finish("c", [], [])
    assert [r.task_id for r in tasks.unfinished()] == ["d", "b", "a"]
    assert [r.task_id for r in tasks.unfinished("x")] == ["d", "a"]
    assert tasks.unfinished("nobody") == []
    assert sorted(interrupt_unfinished(tasks, "interrupted", "restart")) == ["a", "b", "d"]
    assert tasks.unfinished() == []
    assert (tasks.get("a").status, tasks.get("a").error_message) == (TaskStatus.ERROR, "restart")
    assert tasks.get("c").status is TaskStatus.FINISHED


def test_delete_removes_the_record_and_its_index_entry(tasks: TaskStore) -> None:
    tasks.create(_record("a"))
    tasks.create(_record("b"))
    tasks.delete("a")
    tasks.delete("missing")
    assert tasks.get("a") is None
    assert [r.task_id for r in tasks.unfinished()] == ["b"]


def test_usage_accumulates_per_owner(tasks: TaskStore) -> None:
    tasks.add_usage("x", 3)
    tasks.add_usage("x", 4)
    tasks.add_usage("y", 1)
    assert (tasks.usage("x"), tasks.usage("y"), tasks.usage("z")) == (7, 1, 0)


# --- result store contract: files and Redis --------------------------------------------------


def _image_bytes(image_format: ImageFormat) -> bytes:
    image = Image.new("RGB", (8, 6), (200, 30, 90))
    return encode(image, Encoding(format=image_format))


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_image_round_trip(images: ResultStore, image_format: ImageFormat) -> None:
    data = _image_bytes(image_format)
    image_id = images.save_bytes(data, image_format)
    other = images.save_bytes(b"other", ImageFormat.PNG)
    assert image_id != other
    assert images.read(image_id) == (data, image_format)
    assert images.format_of(image_id) is image_format
    images.delete(image_id)
    assert images.read(image_id) is None
    assert images.format_of(image_id) is None
    assert images.read(other) == (b"other", ImageFormat.PNG)


def test_save_encodes_the_image(images: ResultStore) -> None:
    image_id = images.save(Image.new("RGBA", (8, 6), (1, 2, 3, 4)), Encoding(ImageFormat.JPEG))
    data, image_format = images.read(image_id)
    assert image_format is ImageFormat.JPEG
    decoded = Image.open(io.BytesIO(data))
    assert (decoded.format, decoded.size, decoded.mode) == ("JPEG", (8, 6), "RGB")


@pytest.mark.parametrize("bad_id", ["", "not-an-id", "../tasks.sqlite3", "*", "easel:task:t"])
def test_bad_image_ids_are_refused(images: ResultStore, bad_id: str) -> None:
    assert images.read(bad_id) is None
    assert images.format_of(bad_id) is None
    images.delete(bad_id)


def test_unknown_image_id(images: ResultStore) -> None:
    unknown = "0123abcd-0000-4000-8000-00000000beef"
    assert (images.read(unknown), images.format_of(unknown)) == (None, None)
    images.delete(unknown)


# --- Redis only ------------------------------------------------------------------------------


def test_key_layout_and_namespaces(client: redis.Redis) -> None:
    store = RedisTaskStore(client, TTL_S, namespace="one")
    other = RedisTaskStore(client, TTL_S, namespace="two")
    store.create(_record("t"))
    store.add_usage("x", 2)
    assert client.hget("one:task:t", "status") == b"queued"
    assert client.zrange("one:tasks:unfinished", 0, -1) == [b"t"]
    assert client.get("one:usage:x") == b"2"
    assert client.ttl("one:usage:x") == -1  # usage is kept for good
    assert (other.get("t"), other.unfinished(), other.usage("x")) == (None, [], 0)
    other.create(_record("t"))  # the same id in another namespace is another task

    image_id = RedisResultStore(client, TTL_S, namespace="one").save_bytes(b"x", ImageFormat.PNG)
    assert client.hget(f"one:image:{image_id}", "data") == b"x"
    assert RedisResultStore(client, TTL_S, namespace="two").read(image_id) is None


def test_record_ttl_is_set_at_create_and_kept_by_updates(client: redis.Redis) -> None:
    store = RedisTaskStore(client, 100.0)
    store.create(_record("t"))
    assert 99_000 < client.pttl("easel:task:t") <= 100_000
    client.pexpire("easel:task:t", 50_000)  # as if 50 s had passed
    store.mark_running("t")
    store.set_progress("t", 0.5)
    store.count_attempt("t")
    store.finish("t", ["img"], [])
    store.fail_delivery("t", "delivery_failed", "x")
    assert 0 < client.pttl("easel:task:t") <= 50_000
    assert store.expired(time.time() + 1e9) == []  # Redis sweeps records itself


def test_expired_records_leave_the_unfinished_index(client: redis.Redis) -> None:
    store = RedisTaskStore(client, 0.2)
    store.create(_record("gone"))
    RedisTaskStore(client, TTL_S).create(_record("kept"))
    time.sleep(0.3)
    assert store.get("gone") is None
    assert [r.task_id for r in store.unfinished()] == ["kept"]
    assert client.zrange("easel:tasks:unfinished", 0, -1) == [b"kept"]
    # Updates to an expired task do not bring its key back without a TTL.
    store.mark_running("gone")
    assert store.fail("gone", "x", "y") is False
    store.fail_delivery("gone", "x", "y")
    assert store.count_attempt("gone") == 0
    assert client.exists("easel:task:gone") == 0


def test_image_ttl(client: redis.Redis) -> None:
    images = RedisResultStore(client, 100.0)
    image_id = images.save_bytes(b"data", ImageFormat.WEBP)
    assert 99_000 < client.pttl(f"easel:image:{image_id}") <= 100_000
    short = RedisResultStore(client, 0.1).save_bytes(b"data", ImageFormat.PNG)
    time.sleep(0.2)
    assert (images.read(short), images.format_of(short)) == (None, None)
    assert images.read(image_id) == (b"data", ImageFormat.WEBP)


def test_bad_image_ids_never_reach_redis(client: redis.Redis) -> None:
    client.hset("easel:image:not-an-id", mapping={"data": b"secret", "format": "png"})
    images = RedisResultStore(client, TTL_S)
    assert (images.read("not-an-id"), images.format_of("not-an-id")) == (None, None)
    images.delete("not-an-id")
    assert client.exists("easel:image:not-an-id") == 1


def test_attempts_are_counted_outside_the_record(client: redis.Redis) -> None:
    store = RedisTaskStore(client, TTL_S)
    store.create(_record("t"))
    assert store.attempts("t") == 0
    assert [store.count_attempt("t") for _ in range(3)] == [1, 2, 3]
    assert store.attempts("t") == 3
    assert store.get("t").task_id == "t"  # the extra field does not leak into TaskRecord
    assert (store.count_attempt("missing"), store.attempts("missing")) == (0, 0)


def test_two_replicas_share_tasks_and_images(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    replica_a = RedisTaskStore(redis_server.client(), TTL_S)
    replica_b = RedisTaskStore(redis_server.client(), TTL_S)
    replica_a.create(_record("t"))
    with pytest.raises(TaskExists):
        replica_b.create(_record("t"))
    replica_b.mark_running("t")
    replica_b.set_progress("t", 0.25)
    assert (replica_a.get("t").status, replica_a.get("t").progress) == (TaskStatus.RUNNING, 0.25)
    assert [r.task_id for r in replica_a.unfinished()] == ["t"]
    assert replica_a.finish("t", ["img"], []) is True
    assert replica_b.fail("t", "cancelled", "late") is False
    assert replica_b.get("t").image_ids == ["img"]
    assert replica_b.unfinished() == []
    replica_a.add_usage("x", 2)
    replica_b.add_usage("x", 3)
    assert replica_a.usage("x") == 5

    image_id = RedisResultStore(redis_server.client(), TTL_S).save_bytes(b"png", ImageFormat.PNG)
    assert RedisResultStore(redis_server.client(), TTL_S).read(image_id) == (
        b"png",
        ImageFormat.PNG,
    )
    replica_a.close()
    replica_b.close()


def test_a_task_ends_once_under_racing_workers(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    RedisTaskStore(client, TTL_S).create(_record("t"))
    workers = [RedisTaskStore(redis_server.client(), TTL_S) for _ in range(8)]
    start = threading.Barrier(len(workers))
    outcomes: dict[int, bool] = {}

    def end(number: int, store: RedisTaskStore) -> None:
        start.wait()
        if number % 2:
            outcomes[number] = store.fail("t", "worker_lost", f"worker {number}")
        else:
            outcomes[number] = store.finish("t", [f"img-{number}"], [])

    threads = [threading.Thread(target=end, args=item) for item in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [number for number, ended in outcomes.items() if ended]
    assert len(outcomes) == 8 and len(winners) == 1
    record = RedisTaskStore(client, TTL_S).get("t")
    if winners[0] % 2:
        assert (record.status, record.error_message) == (TaskStatus.ERROR, f"worker {winners[0]}")
    else:
        assert (record.status, record.image_ids) == (TaskStatus.FINISHED, [f"img-{winners[0]}"])
    for store in workers:
        store.close()
