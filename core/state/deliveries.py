"""What was done for each inbound message: its progress and decisions, the SMS sent, their statuses, dead letters.

Keys (under ``smsgw:``)::

    msg:{MessageSid}         hash: progress of one inbound message: reply (JSON parts), turn_chat_id, attempts,
                             decision:{name}, part:{part} (a Twilio sid, sending:<ts>, uncertain:<ts>, failed:<code>)
    sent:{twilio sid}        hash: one outbound SMS (conversation_id, inbound_sid, ...) and its delivery status
    recent:{cid}             list of the conversation's latest outbound SMS sids
    dead:{MessageSid}        an inbound message that was given up, kept for a replay
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis.client import Pipeline

from core.model import InboundMessage
from core.state.keys import StateBase, key, text, text_hash

RECENT_SENT_KEPT = 20

STATUS_RANK = {"accepted": 0, "scheduled": 0, "queued": 0, "sending": 1, "sent": 2, "receiving": 2, "received": 2,
               "delivered": 3, "undelivered": 3, "failed": 3, "canceled": 3, "read": 4}

_RECORD_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local current = redis.call('HGET', KEYS[1], 'status_rank')
if (not current) or tonumber(current) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'status_rank', ARGV[2], 'status_at', ARGV[3])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error_code', ARGV[4]) end
end
return redis.call('HGET', KEYS[1], 'conversation_id')
"""


@dataclass(frozen=True)
class Progress:
    """What has been done for one inbound message so far."""

    reply_parts: list[str] | None
    turn_chat_id: str | None
    attempts: int
    parts: dict[str, str]
    decisions: dict[str, bool] = field(default_factory=dict)  # yes/no taken for the message, by name


class Deliveries(StateBase):
    """Per-message progress, the sent log and dead letters."""

    SCRIPTS = {"_record_status": _RECORD_STATUS}

    # -- progress of one inbound message ----------------------------------------------------------

    def progress(self, message_sid: str) -> Progress:
        data = text_hash(self.redis.hgetall(key("msg", message_sid)))
        reply = data.get("reply")
        return Progress(
            reply_parts=json.loads(reply) if reply is not None else None,
            turn_chat_id=data.get("turn_chat_id"),
            attempts=int(data.get("attempts", 0)),
            parts={k[5:]: v for k, v in data.items() if k.startswith("part:")},
            decisions={k[9:]: v == "1" for k, v in data.items() if k.startswith("decision:")},
        )

    def _set_progress(self, message_sid: str, mapping: dict[str, str], pipe: Pipeline | None = None) -> None:
        name = key("msg", message_sid)
        target = pipe if pipe is not None else self.redis.pipeline()
        target.hset(name, mapping=mapping)
        target.expire(name, self.progress_ttl_seconds)
        if pipe is None:
            target.execute()

    def decision(self, message_sid: str, name: str) -> bool | None:
        value = text(self.redis.hget(key("msg", message_sid), f"decision:{name}"))
        return None if value is None else value == "1"

    def record_decision(self, message_sid: str, name: str, value: bool) -> bool:
        """Store a yes/no for the message unless one is stored; return the stored one."""
        record = key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(record, f"decision:{name}", "1" if value else "0")
            pipe.hget(record, f"decision:{name}")
            pipe.expire(record, self.progress_ttl_seconds)
            return text(pipe.execute()[1]) == "1"

    def mark_turn_started(self, message_sid: str, chat_id: str) -> None:
        self._set_progress(message_sid, {"turn_chat_id": chat_id})

    def record_reply(self, message_sid: str, parts: list[str], *, claim: str | None = None,
                     claimed_at: float | None = None) -> bool:
        """Record the reply's parts; ``claim`` also claims that part in the same step (see ``claim_part``).

        Returns whether ``claim`` was claimed (False without one).
        """
        name = key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hset(name, "reply", json.dumps(parts, ensure_ascii=False))
            if claim is not None:
                pipe.hsetnx(name, f"part:{claim}", f"sending:{time.time() if claimed_at is None else claimed_at:.3f}")
            pipe.expire(name, self.progress_ttl_seconds)
            replies = pipe.execute()
        return claim is not None and bool(replies[1])

    def count_attempt(self, message_sid: str) -> int:
        name = key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(name, "attempts", 1)
            pipe.expire(name, self.progress_ttl_seconds)
            return int(pipe.execute()[0])

    def claim_part(self, message_sid: str, part: str, claimed_at: float | None = None) -> bool:
        """Claim the right to send one part (``sending:<claimed_at>``); False if it was sent (or attempted) already."""
        name = key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(name, f"part:{part}", f"sending:{time.time() if claimed_at is None else claimed_at:.3f}")
            pipe.expire(name, self.progress_ttl_seconds)
            return bool(pipe.execute()[0])

    def release_part(self, message_sid: str, part: str) -> None:
        """Give a claim back after a failure that certainly sent nothing."""
        self.redis.hdel(key("msg", message_sid), f"part:{part}")

    def settle_part(self, message_sid: str, part: str, outcome: str) -> None:
        """Record a claimed part's state: a Twilio sid, ``sending:<ts>``, ``uncertain:<ts>`` or ``failed:<code>``."""
        self._set_progress(message_sid, {f"part:{part}": outcome})

    # -- outbound messages ------------------------------------------------------------------------

    def record_sent(self, cid: str, twilio_sid: str, *, settles: tuple[str, str] | None = None,
                    **fields: Any) -> None:
        """Record one outbound SMS; ``settles`` = (message sid, part) also settles that part in the same step."""
        name = key("sent", twilio_sid)
        recent = key("recent", cid)
        mapping = {"conversation_id": cid, "sent_at": f"{time.time():.3f}",
                   **{k: str(v) for k, v in fields.items() if v is not None}}
        mapping["status_rank"] = str(STATUS_RANK.get(mapping.get("status", "queued"), 0))
        with self.redis.pipeline() as pipe:
            pipe.hset(name, mapping=mapping)
            pipe.expire(name, self.progress_ttl_seconds)
            pipe.lpush(recent, twilio_sid)
            pipe.ltrim(recent, 0, RECENT_SENT_KEPT - 1)
            pipe.hset(key("conv", cid), "last_outbound_at", f"{time.time():.3f}")
            self._keep(recent, key("conv", cid), pipe=pipe)
            if settles is not None:
                self._set_progress(settles[0], {f"part:{settles[1]}": twilio_sid}, pipe=pipe)
            pipe.execute()

    def record_status(self, twilio_sid: str, status: str, error_code: str = "") -> str | None:
        """Record a delivery status callback; returns the conversation id, or None for a sid we never sent.

        Statuses only move forward (a late ``sent`` does not overwrite ``delivered``); error 21610 (the
        person replied STOP) marks the conversation opted out.
        """
        rank = STATUS_RANK.get(status.lower(), 1)
        result = self._record_status(keys=[key("sent", twilio_sid)],
                                     args=[status, rank, f"{time.time():.3f}", error_code])
        cid = text(result)
        if cid and error_code == "21610":
            self.set_opted_out(cid, True)
        return cid

    def recent_sent(self, cid: str) -> list[dict[str, str]]:
        sids = [text(s) for s in self.redis.lrange(key("recent", cid), 0, -1)]
        with self.redis.pipeline() as pipe:
            for sid in sids:
                pipe.hgetall(key("sent", sid))
            rows = pipe.execute()
        return [{"sid": sid, **text_hash(row)} for sid, row in zip(sids, rows, strict=True)]

    # -- dead letters -------------------------------------------------------------------------------

    def keep_dead_letter(self, message: InboundMessage) -> None:
        self.redis.set(key("dead", message.sid), message.to_json(), ex=self.progress_ttl_seconds)

    def has_dead_letter(self, message_sid: str) -> bool:
        """True while the given-up message ``message_sid`` is kept for a replay (it expires, or is erased)."""
        return bool(self.redis.exists(key("dead", message_sid)))

    def restore_dead_letters(self, sids: list[str]) -> list[str]:
        """Put given-up messages back at the head of their inboxes, oldest first; returns their conversations."""
        cids = []
        for sid in reversed(sids):
            raw = self.redis.get(key("dead", sid))
            if raw is None:
                continue
            message = InboundMessage.from_json(raw)
            cid = message.conversation_id
            with self.redis.pipeline() as pipe:
                pipe.lpush(key("inbox", cid), text(raw))
                self._keep(key("inbox", cid), pipe=pipe)
                pipe.sadd(key("active"), cid)
                pipe.hdel(key("msg", sid), "attempts")
                pipe.delete(key("dead", sid))
                pipe.execute()
            cids.append(cid)
        return cids
