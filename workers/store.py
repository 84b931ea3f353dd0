"""Conversation state in Redis: deduplication, per-conversation inboxes, locks and progress.

A conversation is the pair (gateway number, person's number), keyed by an opaque id so that phone
numbers never appear in queue names, job descriptions or logs. Keys (all under ``smsgw:``)::

    seen:{MessageSid}        dedupe marker: "pending" until a drain job is queued, then "queued"
    conv:{cid}               hash: gateway, person, messaging_service_sid, chat_id, agent_id, ...
    inbox:{cid}              list of inbound messages (JSON), oldest first; the head stays until done
    lock:{cid}               token of the one drain job working on the conversation (expires)
    msg:{MessageSid}         hash: progress of one inbound message (reply parts, what was sent)
    sent:{twilio sid}        hash: one outbound SMS and its delivery status
    recent:{cid}             list of the conversation's latest outbound SMS sids

Order comes from the inbox: the webhook appends under a Lua script, and only the lock holder reads
the head, handles it, then removes it. The lock is released only when the inbox is empty (atomically),
so a message pushed while the holder is finishing is never left without a drainer.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

PREFIX = "smsgw"
PROGRESS_TTL_SECONDS = 14 * 24 * 3600
RECENT_SENT_KEPT = 20

_ACCEPT = """
local state = redis.call('GET', KEYS[1])
if state == 'queued' then return 0 end
if state == 'pending' then return 2 end
redis.call('SET', KEYS[1], 'pending', 'EX', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'gateway', ARGV[3], 'person', ARGV[4], 'last_inbound_at', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'messaging_service_sid', ARGV[6]) end
return 1
"""

_RELEASE_IF_IDLE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_POP_HEAD = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) return 1 end
return 0
"""


def connect_redis(url: str, *, for_web: bool = False) -> Redis:
    """A Redis client with explicit timeouts.

    The web gives up after one quick reconnect, so it can answer 503 within a second or two while
    Redis is away; workers ride out a short restart with a few backed-off reconnects.
    """
    if for_web:
        return Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 1))
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=30,
                          retry=Retry(ExponentialBackoff(cap=2, base=0.1), 5))


def conversation_id(gateway_number: str, person_number: str) -> str:
    """Opaque, stable id of the conversation between a gateway number and a person."""
    digest = hashlib.sha256(f"{gateway_number}|{person_number}".encode()).hexdigest()
    return digest[:24]


@dataclass(frozen=True)
class InboundMessage:
    """One inbound SMS/MMS as the webhook accepted it."""

    sid: str
    from_: str
    to: str
    body: str = ""
    account_sid: str = ""
    messaging_service_sid: str = ""
    num_media: int = 0
    media_types: tuple[str, ...] = ()
    opt_out_type: str = ""
    received_at: float = field(default_factory=time.time)

    @property
    def conversation_id(self) -> str:
        return conversation_id(self.to, self.from_)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> InboundMessage:
        data = json.loads(raw)
        data["media_types"] = tuple(data.get("media_types") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Progress:
    """What has been done for one inbound message so far."""

    reply_parts: list[str] | None
    turn_chat_id: str | None
    attempts: int
    parts: dict[str, str]


class ConversationStore:
    """Every Redis read and write of conversation state goes through here."""

    def __init__(self, redis: Redis, *, dedupe_ttl_seconds: int = 7 * 24 * 3600):
        self.redis = redis
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self._accept = redis.register_script(_ACCEPT)
        self._release_if_idle = redis.register_script(_RELEASE_IF_IDLE)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._pop_head = redis.register_script(_POP_HEAD)

    @staticmethod
    def key(*parts: str) -> str:
        return ":".join((PREFIX, *parts))

    # -- web side ---------------------------------------------------------------------------------

    def accept(self, message: InboundMessage) -> str:
        """Record an inbound message once. Returns "new", "duplicate" or "unqueued" (seen, no job yet)."""
        cid = message.conversation_id
        result = self._accept(
            keys=[self.key("seen", message.sid), self.key("inbox", cid), self.key("conv", cid)],
            args=[message.to_json(), self.dedupe_ttl_seconds, message.to, message.from_,
                  f"{message.received_at:.3f}", message.messaging_service_sid],
        )
        return {1: "new", 0: "duplicate", 2: "unqueued"}[int(result)]

    def mark_queued(self, message_sid: str, pipeline=None) -> None:
        (pipeline or self.redis).set(self.key("seen", message_sid), "queued", xx=True, keepttl=True)

    # -- the drain lock ---------------------------------------------------------------------------

    def acquire_lock(self, cid: str, token: str, ttl_seconds: float) -> bool:
        """Take the conversation's lock (or confirm we already hold it)."""
        key = self.key("lock", cid)
        if self.redis.set(key, token, nx=True, px=int(ttl_seconds * 1000)):
            return True
        return self._refresh(keys=[key], args=[token, int(ttl_seconds * 1000)]) == 1

    def refresh_lock(self, cid: str, token: str, ttl_seconds: float) -> bool:
        return self._refresh(keys=[self.key("lock", cid)], args=[token, int(ttl_seconds * 1000)]) == 1

    def release_lock(self, cid: str, token: str) -> None:
        self._release(keys=[self.key("lock", cid)], args=[token])

    def release_if_idle(self, cid: str, token: str) -> bool:
        """Release the lock if the inbox is empty; False means more messages arrived meanwhile."""
        result = self._release_if_idle(keys=[self.key("inbox", cid), self.key("lock", cid)], args=[token])
        return int(result) != 0

    def lock_holder(self, cid: str) -> str | None:
        return _text(self.redis.get(self.key("lock", cid)))

    # -- inbox ------------------------------------------------------------------------------------

    def peek(self, cid: str) -> tuple[str, InboundMessage] | None:
        raw = self.redis.lindex(self.key("inbox", cid), 0)
        if raw is None:
            return None
        raw = _text(raw)
        return raw, InboundMessage.from_json(raw)

    def pop(self, cid: str, raw: str) -> bool:
        """Remove the inbox head if it is still ``raw``."""
        return self._pop_head(keys=[self.key("inbox", cid)], args=[raw]) == 1

    def inbox_length(self, cid: str) -> int:
        return int(self.redis.llen(self.key("inbox", cid)))

    # -- conversation -----------------------------------------------------------------------------

    def conversation(self, cid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.redis.hgetall(self.key("conv", cid)).items()}

    def set_chat(self, cid: str, chat_id: str, agent_id: str) -> None:
        self.redis.hset(self.key("conv", cid), mapping={
            "chat_id": chat_id, "agent_id": agent_id, "chat_started_at": f"{time.time():.3f}"})

    def forget_chat(self, cid: str, chat_id: str) -> bool:
        """Drop the stored chat id if it is still ``chat_id``."""
        key = self.key("conv", cid)
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            if _text(pipe.hget(key, "chat_id")) != chat_id:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.hdel(key, "chat_id", "agent_id", "chat_started_at")
            pipe.execute()
        return True

    def touch(self, cid: str, **fields: Any) -> None:
        self.redis.hset(self.key("conv", cid), mapping={k: str(v) for k, v in fields.items()})

    # -- progress of one inbound message ----------------------------------------------------------

    def progress(self, message_sid: str) -> Progress:
        data = {_text(k): _text(v) for k, v in self.redis.hgetall(self.key("msg", message_sid)).items()}
        reply = data.get("reply")
        return Progress(
            reply_parts=json.loads(reply) if reply is not None else None,
            turn_chat_id=data.get("turn_chat_id"),
            attempts=int(data.get("attempts", 0)),
            parts={k[5:]: v for k, v in data.items() if k.startswith("part:")},
        )

    def _set_progress(self, message_sid: str, mapping: dict[str, str]) -> None:
        key = self.key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, PROGRESS_TTL_SECONDS)
            pipe.execute()

    def mark_turn_started(self, message_sid: str, chat_id: str) -> None:
        self._set_progress(message_sid, {"turn_chat_id": chat_id})

    def record_reply(self, message_sid: str, parts: list[str]) -> None:
        self._set_progress(message_sid, {"reply": json.dumps(parts, ensure_ascii=False)})

    def count_attempt(self, message_sid: str) -> int:
        key = self.key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.expire(key, PROGRESS_TTL_SECONDS)
            return int(pipe.execute()[0])

    def claim_part(self, message_sid: str, part: str) -> bool:
        """Claim the right to send one part; False if it was sent (or attempted) already."""
        key = self.key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, f"part:{part}", "sending")
            pipe.expire(key, PROGRESS_TTL_SECONDS)
            return bool(pipe.execute()[0])

    def release_part(self, message_sid: str, part: str) -> None:
        """Give a claim back after a failure that certainly sent nothing."""
        self.redis.hdel(self.key("msg", message_sid), f"part:{part}")

    def settle_part(self, message_sid: str, part: str, outcome: str) -> None:
        """Record how a claimed part ended: a Twilio sid, ``uncertain`` or ``failed:<code>``."""
        self._set_progress(message_sid, {f"part:{part}": outcome})

    # -- outbound messages ------------------------------------------------------------------------

    def record_sent(self, cid: str, twilio_sid: str, **fields: Any) -> None:
        key = self.key("sent", twilio_sid)
        recent = self.key("recent", cid)
        mapping = {"conversation_id": cid, "sent_at": f"{time.time():.3f}",
                   **{k: str(v) for k, v in fields.items() if v is not None}}
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, PROGRESS_TTL_SECONDS)
            pipe.lpush(recent, twilio_sid)
            pipe.ltrim(recent, 0, RECENT_SENT_KEPT - 1)
            pipe.hset(self.key("conv", cid), "last_outbound_at", f"{time.time():.3f}")
            pipe.execute()

    def record_status(self, twilio_sid: str, status: str, error_code: str = "") -> bool:
        """Record a delivery status callback; False (and nothing stored) for a sid we never sent."""
        key = self.key("sent", twilio_sid)
        if not self.redis.exists(key):
            return False
        mapping = {"status": status, "status_at": f"{time.time():.3f}"}
        if error_code:
            mapping["error_code"] = error_code
        self.redis.hset(key, mapping=mapping)
        return True

    def recent_sent(self, cid: str) -> list[dict[str, str]]:
        sids = [_text(s) for s in self.redis.lrange(self.key("recent", cid), 0, -1)]
        with self.redis.pipeline() as pipe:
            for sid in sids:
                pipe.hgetall(self.key("sent", sid))
            rows = pipe.execute()
        return [{"sid": sid, **{_text(k): _text(v) for k, v in row.items()}}
                for sid, row in zip(sids, rows, strict=True)]


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value
