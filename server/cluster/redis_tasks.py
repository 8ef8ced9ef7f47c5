"""Redis task store: the task records every API replica and GPU worker share.

Same semantics as the SQLite store (server.taskstore.sqlite), so the front ends cannot tell them
apart; what differs is that many processes on many machines write at once. Key layout, all under
one namespace so several deployments can share a Redis:

- ``{ns}:task:{task_id}``   a hash per record: scalar fields as strings, lists and params as JSON,
  plus ``attempts`` (how many times workers picked the job up; not part of TaskRecord). The key
  expires ``ttl_s`` after create (the retention time); later updates never touch the expiry.
- ``{ns}:tasks:unfinished`` a sorted set of queued/running task ids scored by created_at.
- ``{ns}:usage:{owner}``    an integer counter per owner, kept for good (no expiry).

Each conditional transition (mark_running, set_progress, finish, fail) is one Lua script, so the
check of the current status and the write are atomic across processes: a task ends once,
whichever worker or replica gets there first. The client must return bytes (redis-py's default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.typing import EncodableT

from server.cluster.redis_client import reply_text, ttl_ms
from server.taskstore.base import TaskExists, TaskRecord, TaskStatus

# Fails when the key exists; otherwise writes the whole record, its expiry and its index entry in
# one step, so no other process can see a record without its TTL.
# KEYS: record, unfinished index. ARGV: ttl ms, created_at, task id, "1" when the record is
# unfinished, then field, value pairs.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""

# Writes the fields only when the record exists and its status is one of the allowed ones (any
# status when none is given); returns 1 when it wrote. A missing record is never created, so an
# update cannot bring back an expired key without its TTL. HSET keeps the key's expiry.
# KEYS: record, unfinished index. ARGV: task id, "1" when the new status ends the task (drop it
# from the index), n = how many statuses are allowed, the n statuses, then field, value pairs.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local allowed = tonumber(ARGV[3])
local ok = allowed == 0
for i = 4, 3 + allowed do
  if ARGV[i] == status then ok = true end
end
if not ok then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + allowed))
if ARGV[2] == '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""

# Counts one more pick-up of a job; 0 for a missing record (nothing is created).
# KEYS: record.
_COUNT_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# Drops index entries whose record has expired, checked again here so an id created again
# meanwhile keeps its entry. KEYS: index, then one record per ARGV task id.
_PRUNE = """
local removed = 0
for i, task_id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], task_id)
  end
end
return removed
"""

_UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING)
_JSON_FIELDS = ("seeds", "image_ids", "texts", "outputs", "params")
# How each stored string becomes a TaskRecord field; fields not named here are plain strings.
_DECODERS: dict[str, Callable[[str], Any]] = {
    "status": TaskStatus,
    "progress": float,
    "created_at": float,
    "updated_at": float,
    "cost": int,
    **{name: json.loads for name in _JSON_FIELDS},
}
_RECORD_FIELDS = tuple(TaskRecord.__dataclass_fields__)


class RedisTaskStore:
    """TaskStore over Redis. Records expire with retention, so expired() is always empty."""

    def __init__(self, client: redis.Redis, ttl_s: float, namespace: str = "easel") -> None:
        self._client = client
        self._ttl_ms = ttl_ms(ttl_s)
        self._namespace = namespace
        self._index = f"{namespace}:tasks:unfinished"
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._count_attempt = client.register_script(_COUNT_ATTEMPT)
        self._prune = client.register_script(_PRUNE)

    def key(self, task_id: str) -> str:
        return f"{self._namespace}:task:{task_id}"

    def create(self, record: TaskRecord) -> None:
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        pairs = [item for pair in _fields(record).items() for item in pair]
        unfinished = "1" if record.status in _UNFINISHED else "0"
        args: list[EncodableT] = [
            self._ttl_ms,
            repr(record.created_at),
            record.task_id,
            unfinished,
            *pairs,
        ]
        if not self._create(keys=[self.key(record.task_id), self._index], args=args):
            raise TaskExists(f"task {record.task_id!r} exists already")

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self._client.hgetall(self.key(task_id))
        return _record(raw) if raw else None

    def mark_running(self, task_id: str) -> None:
        self._move(task_id, (TaskStatus.QUEUED,), {"status": TaskStatus.RUNNING.value})

    def set_progress(self, task_id: str, progress: float) -> None:
        self._move(task_id, (TaskStatus.RUNNING,), {"progress": repr(float(progress))})

    def finish(
        self,
        task_id: str,
        image_ids: list[str],
        texts: list[str],
        outputs: dict[str, Any] | None = None,
    ) -> bool:
        values = {
            "status": TaskStatus.FINISHED.value,
            "progress": "1.0",
            "image_ids": json.dumps(image_ids),
            "texts": json.dumps(texts),
            "outputs": json.dumps(outputs or {}),
        }
        return self._move(task_id, _UNFINISHED, values)

    def fail(self, task_id: str, error_code: str, error_message: str) -> bool:
        return self._move(task_id, _UNFINISHED, _error(error_code, error_message))

    def requeue(self, task_id: str) -> bool:
        values = {"status": TaskStatus.QUEUED.value, "progress": "0.0"}
        return self._move(task_id, _UNFINISHED, values)

    def fail_delivery(self, task_id: str, error_code: str, error_message: str) -> None:
        self._move(task_id, (), _error(error_code, error_message))

    def _move(self, task_id: str, allowed: tuple[TaskStatus, ...], values: dict[str, str]) -> bool:
        """Write values when the task's status is one of allowed (any status: empty); whether it
        wrote. updated_at comes along; a new ended status also drops the task from the index."""
        values = {**values, "updated_at": repr(time.time())}
        ends = "status" in values and TaskStatus(values["status"]).ended
        pairs = [item for pair in values.items() for item in pair]
        args = [task_id, "1" if ends else "0", len(allowed), *(s.value for s in allowed), *pairs]
        return bool(self._transition(keys=[self.key(task_id), self._index], args=args))

    def delete(self, task_id: str) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(task_id))
            pipe.zrem(self._index, task_id)
            pipe.execute()

    def unfinished(self, owner: str | None = None) -> list[TaskRecord]:
        """Queued and running tasks, oldest first; index entries of expired records are pruned."""
        ids = [reply_text(raw) for raw in self._client.zrange(self._index, 0, -1)]
        if not ids:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self.key(task_id))
            raws = pipe.execute()
        gone = [task_id for task_id, raw in zip(ids, raws, strict=True) if not raw]
        if gone:
            self._prune(keys=[self._index, *(self.key(i) for i in gone)], args=gone)
        # A task may have ended between the index read and the record read: leave it out.
        records = [_record(raw) for raw in raws if raw]
        return [
            r for r in records if r.status in _UNFINISHED and (owner is None or r.owner == owner)
        ]

    def expired(self, before: float) -> list[TaskRecord]:
        """Always empty: each record key carries the retention time as its TTL, and Redis
        deletes it itself (result images too), so there is nothing left to sweep."""
        return []

    def add_usage(self, owner: str, points: int) -> None:
        self._client.incrby(self._usage_key(owner), points)

    def usage(self, owner: str) -> int:
        value = self._client.get(self._usage_key(owner))
        return int(value) if value is not None else 0

    def _usage_key(self, owner: str) -> str:
        return f"{self._namespace}:usage:{owner}"

    def count_attempt(self, task_id: str) -> int:
        """Count one more pick-up of the task's job by a worker; the new count (0: no such task).

        Workers use it to give up on a job that keeps killing them instead of retrying forever.
        """
        return int(self._count_attempt(keys=[self.key(task_id)]))

    def attempts(self, task_id: str) -> int:
        value = self._client.hget(self.key(task_id), "attempts")
        return int(value) if value is not None else 0

    def close(self) -> None:
        self._client.connection_pool.close()


def _error(error_code: str, error_message: str) -> dict[str, str]:
    return {
        "status": TaskStatus.ERROR.value,
        "error_code": error_code,
        "error_message": error_message,
    }


def _fields(record: TaskRecord) -> dict[str, str]:
    """The record as hash fields: JSON for lists and params, repr for floats, str otherwise."""
    fields: dict[str, str] = {}
    for name in _RECORD_FIELDS:
        value = getattr(record, name)
        if name in _JSON_FIELDS:
            fields[name] = json.dumps(value)
        elif isinstance(value, TaskStatus):
            fields[name] = value.value
        elif isinstance(value, float):
            fields[name] = repr(value)
        else:
            fields[name] = str(value)
    return fields


def _record(raw: Mapping[bytes | str, bytes | str]) -> TaskRecord:
    text = {reply_text(key): reply_text(value) for key, value in raw.items()}
    values = {name: _DECODERS.get(name, str)(text[name]) for name in _RECORD_FIELDS if name in text}
    return TaskRecord(**values)
