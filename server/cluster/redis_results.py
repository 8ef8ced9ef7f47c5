"""Result images in Redis, so any API replica serves what any GPU worker produced.

One hash per image, ``{ns}:image:{image_id}`` with fields ``data`` (the file bytes),
``format`` (an ImageFormat value) and ``owner`` (the key that made it): one key means the bytes
and their format are written and expire together (the TTL is the retention time), and read()
is a single HMGET. Ids that are not image ids are refused before Redis is asked, like
FileResultStore refuses them before the disk.
The client must return bytes (redis-py's default).
"""

from __future__ import annotations

import redis
from PIL.Image import Image
from redis.typing import EncodableT, FieldT

from server.cluster.redis_client import reply_bytes, reply_text, ttl_ms
from server.results import PNG, Encoding, ImageFormat, encode, is_image_id, new_image_id


class RedisResultStore:
    def __init__(self, client: redis.Redis, ttl_s: float, namespace: str = "easel") -> None:
        self._client = client
        self._ttl_ms = ttl_ms(ttl_s)
        self._namespace = namespace

    def key(self, image_id: str) -> str:
        return f"{self._namespace}:image:{image_id}"

    def save(self, image: Image, encoding: Encoding = PNG, owner: str = "") -> str:
        """Encode and store one image (call off the event loop); its new id."""
        return self.save_bytes(encode(image, encoding), encoding.format, owner)

    def save_bytes(self, data: bytes, image_format: ImageFormat, owner: str = "") -> str:
        image_id = new_image_id()
        fields: dict[FieldT, EncodableT] = {
            "data": data,
            "format": image_format.value,
            "owner": owner,
        }
        # MULTI/EXEC: no reader ever sees the image without its expiry.
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(image_id), mapping=fields)
            pipe.pexpire(self.key(image_id), self._ttl_ms)
            pipe.execute()
        return image_id

    def read(self, image_id: str) -> tuple[bytes, ImageFormat] | None:
        if not is_image_id(image_id):
            return None
        data, image_format = self._client.hmget(self.key(image_id), ["data", "format"])
        if data is None or image_format is None:  # never stored, or expired
            return None
        return reply_bytes(data), ImageFormat(reply_text(image_format))

    def format_of(self, image_id: str) -> ImageFormat | None:
        if not is_image_id(image_id):
            return None
        image_format = self._client.hget(self.key(image_id), "format")
        return None if image_format is None else ImageFormat(reply_text(image_format))

    def owner_of(self, image_id: str) -> str | None:
        if not is_image_id(image_id):
            return None
        image_format, owner = self._client.hmget(self.key(image_id), ["format", "owner"])
        if image_format is None:
            return None
        return reply_text(owner) if owner is not None else ""

    def delete(self, image_id: str) -> None:
        if is_image_id(image_id):
            self._client.delete(self.key(image_id))
