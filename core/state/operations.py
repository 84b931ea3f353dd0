"""Operator operations: outbound starts and the Idempotency-Key records of ``POST /admin/sms``.

Keys (under ``smsgw:``)::

    outbound:{op_id}         hash: chat_id, agent_id, result (JSON) of one outbound start
    idem:{sha256(key)}       JSON: fingerprint, op_id, job_id of the request first sent with an Idempotency-Key
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from redis.client import Pipeline
from redis.exceptions import WatchError

from core.state.keys import StateBase, key, text_hash


class Operations(StateBase):
    """The records of outbound starts and of their idempotency keys."""

    def operation(self, op_id: str) -> dict[str, str]:
        """The outbound start's fields so far (chat_id, agent_id, result)."""
        return text_hash(self.redis.hgetall(key("outbound", op_id)))

    def record_operation(self, op_id: str, **fields: str) -> None:
        name = key("outbound", op_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(name, mapping=fields)
            pipe.expire(name, self.progress_ttl_seconds)
            pipe.execute()

    def operation_result(self, op_id: str) -> dict[str, Any] | None:
        """The stored result of a finished outbound start, or None."""
        raw = self.redis.hget(key("outbound", op_id), "result")
        return json.loads(raw) if raw is not None else None

    @staticmethod
    def idempotency_key(idempotency_key: str) -> str:
        return key("idem", hashlib.sha256(idempotency_key.encode()).hexdigest())

    def idempotency_record(self, name: str) -> bytes | None:
        """The raw record stored under ``name`` (an ``idempotency_key``), or None."""
        return self.redis.get(name)

    def swap_idempotency_record(self, name: str, expected: bytes | None, record: dict[str, Any], ttl_seconds: int,
                                enqueue: Callable[[Pipeline], object]) -> bool:
        """Write the key's record and queue its job (``enqueue(pipeline)``) together, if the record is still
        ``expected``; False if it changed meanwhile."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(name)
                if pipe.get(name) != expected:
                    return False
                pipe.multi()
                if expected is None:
                    pipe.set(name, json.dumps(record), ex=ttl_seconds)
                else:
                    pipe.set(name, json.dumps(record), keepttl=True)
                enqueue(pipe)
                pipe.execute()
                return True
            except WatchError:
                return False
