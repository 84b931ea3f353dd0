"""Conversation state in Redis: deduplication, per-conversation inboxes, locks and progress.

A conversation is the pair (gateway number, person's number), keyed by an opaque id so that phone
numbers never appear in queue names, job descriptions or logs. Keys (all under ``smsgw:``)::

    seen:{MessageSid}        dedupe marker: "pending" until a drain job is queued, then "queued" ("skipped":
                             a sender no reply can reach)
    signature:{hash}         the MessageSid a webhook signature was first accepted with (re-cut replays)
    numbers                  set of the gateway's own numbers: every To of a signed inbound text (expires
                             DEDUPE_TTL_SECONDS after the last inbound text)
    conv:{cid}               hash: gateway, person, messaging_service_sid, chat_id, agent_id, ...
    inbox:{cid}              list of inbound messages (JSON), oldest first; the head stays until done
    lock:{cid}               token of the one drain job working on the conversation (expires)
    msg:{MessageSid}         hash: progress of one inbound message (reply parts, what was sent)
    sent:{twilio sid}        hash: one outbound SMS and its delivery status
    recent:{cid}             list of the conversation's latest outbound SMS sids
    active                   set of conversation ids whose inbox may hold messages (for crash recovery)
    dead:{MessageSid}        an inbound message that was given up, kept for a replay
    rate:{cid}:{window}      messages forwarded to the agent in the current rate-limit window
    notice:{kind}:{cid}      marker: a notice of this kind was sent recently (MMS, rate limit)
    chats:{cid}              set of the UponAI chat ids the conversation has had (to find its records on erase)

Retention: every key that holds a number or words expires. The conversation's own keys (conv, inbox,
recent, chats) get DATA_RETENTION_DAYS again on each write, so they go that long after the last
activity; per-message records (msg, sent, dead) expire at most that long after they were written.
``erase`` removes a conversation at once (see ``workers.admin_ops.erase_conversation``).

Order comes from the inbox: the webhook appends under a Lua script, and only the lock holder reads
the head, handles it, then removes it. The lock is released only when the inbox is empty (atomically),
so a message pushed while the holder is finishing is never left without a drainer.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline

from core.model import InboundMessage

PREFIX = "smsgw"
PROGRESS_TTL_SECONDS = 14 * 24 * 3600
DEFAULT_RETENTION_SECONDS = 30 * 24 * 3600
RECENT_SENT_KEPT = 20

# ARGV[12..] holds the commands that queue the drain job (each as its word count, then its words); they
# run only for a message not queued before, in the same atomic step that records it, and only when no
# drain job of the conversation is already waiting in the queue (``drain_pending``).
# KEYS[5] maps the webhook's signature to its message: a signed form re-cut into another message (text
# moved between a value and the next name signs the same) carries the same signature with another sid.
# KEYS[6] is the set of the gateway's numbers (every To of a signed inbound, kept while texts keep coming
# in: it expires DEDUPE_TTL_SECONDS after the last one, like every key): texts from them, or from
# senders the web found unanswerable (ARGV[11] = '1'), are recorded as seen and never queued.
_ACCEPT = """
local signed = redis.call('GET', KEYS[5])
if signed and signed ~= ARGV[8] then return 3 end
local state = redis.call('GET', KEYS[1])
if state == 'queued' or state == 'skipped' then return 0 end
if not signed then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[2]) end
if not state then
  redis.call('SADD', KEYS[6], ARGV[9])
  redis.call('EXPIRE', KEYS[6], ARGV[2])
  if ARGV[11] == '1' or redis.call('SISMEMBER', KEYS[6], ARGV[10]) == 1 then
    redis.call('SET', KEYS[1], 'skipped', 'EX', ARGV[2])
    return 4
  end
end
local result = 2
if state ~= 'pending' then
  result = 1
  redis.call('SET', KEYS[1], 'pending', 'EX', ARGV[2])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[7])
  redis.call('HSET', KEYS[3], 'gateway', ARGV[3], 'person', ARGV[4], 'last_inbound_at', ARGV[5])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'messaging_service_sid', ARGV[6]) end
end
local i = 12
if i <= #ARGV then
  -- A drain job that is queued and has not started yet will take this message too: no second job.
  if redis.call('HEXISTS', KEYS[3], 'drain_pending') == 1 then i = #ARGV + 1 end
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + n))
    i = i + n + 1
  end
  redis.call('SET', KEYS[1], 'queued', 'KEEPTTL')
end
return result
"""

_RELEASE_IF_IDLE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
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


_FORGET_CHAT = """
if redis.call('HGET', KEYS[1], 'chat_id') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'chat_id', 'agent_id', 'chat_started_at')
return 1
"""


@dataclass(frozen=True)
class Progress:
    """What has been done for one inbound message so far."""

    reply_parts: list[str] | None
    turn_chat_id: str | None
    attempts: int
    parts: dict[str, str]


class ConversationStore:
    """Every Redis read and write of conversation state goes through here."""

    def __init__(self, redis: Redis, *, dedupe_ttl_seconds: int = 7 * 24 * 3600,
                 retention_seconds: int = DEFAULT_RETENTION_SECONDS):
        self.redis = redis
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self.retention_seconds = retention_seconds
        self.progress_ttl_seconds = min(PROGRESS_TTL_SECONDS, retention_seconds)
        self._accept = redis.register_script(_ACCEPT)
        self._release_if_idle = redis.register_script(_RELEASE_IF_IDLE)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._pop_head = redis.register_script(_POP_HEAD)
        self._record_status = redis.register_script(_RECORD_STATUS)
        self._forget_chat = redis.register_script(_FORGET_CHAT)

    @staticmethod
    def key(*parts: str) -> str:
        return ":".join((PREFIX, *parts))

    # -- web side ---------------------------------------------------------------------------------

    def accept(self, message: InboundMessage, *, then: Callable[[Pipeline], object] | None = None,
               signature: str = "", skip: bool = False) -> str:
        """Record an inbound message once. Returns "new", "duplicate", "unqueued" (seen before, no job yet),
        "replay" (``signature`` was used by another message) or "skipped" (a sender no reply can reach:
        ``skip``, or one of the gateway's own numbers; recorded as seen, never queued).

        ``then(pipeline)`` queues the drain job on a pipeline that is never sent: its commands are run by
        the same Lua script, only when the message is not queued yet. One round trip, nothing re-queued
        for a repeat, and no message recorded without its job.
        """
        cid = message.conversation_id
        signed = hashlib.sha256(signature.encode()).hexdigest()[:32] if signature else f"sid-{message.sid}"
        keys = [self.key("seen", message.sid), self.key("inbox", cid), self.key("conv", cid), self.key("active"),
                self.key("signature", signed), self.key("numbers")]
        args = [message.to_json(), self.dedupe_ttl_seconds, message.to, message.from_,
                f"{message.received_at:.3f}", message.messaging_service_sid, cid, message.sid,
                bare_address(message.to), bare_address(message.from_), "1" if skip else "0"]
        if then is not None:
            recorder = self.redis.pipeline(transaction=False)
            then(recorder)
            for command, _options in recorder.command_stack:
                if command[0] in ("MULTI", "EXEC"):
                    continue
                args += [len(command), *command]
            recorder.reset()
        outcomes = {1: "new", 0: "duplicate", 2: "unqueued", 3: "replay", 4: "skipped"}
        outcome = outcomes[int(self._accept(keys=keys, args=args))]
        if outcome == "new":
            self._keep(keys[1], keys[2])
        return outcome

    def _keep(self, *keys: str, pipe: Pipeline | None = None) -> None:
        """Give the conversation's keys the full retention period again (counted from this activity)."""
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        for key in keys:
            target.expire(key, self.retention_seconds)
        if pipe is None:
            target.execute()

    def gateway_numbers(self) -> list[str]:
        """Every number that has been the To of a signed inbound text (bare, without a channel prefix)."""
        return sorted(_text(n) for n in self.redis.smembers(self.key("numbers")))

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
        result = self._release_if_idle(keys=[self.key("inbox", cid), self.key("lock", cid), self.key("active")],
                                       args=[token, cid])
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
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key("conv", cid), mapping={
                "chat_id": chat_id, "agent_id": agent_id, "chat_started_at": f"{time.time():.3f}"})
            pipe.sadd(self.key("chats", cid), chat_id)
            self._keep(self.key("conv", cid), self.key("chats", cid), pipe=pipe)
            pipe.execute()

    def forget_chat(self, cid: str, chat_id: str) -> bool:
        """Drop the stored chat id if it is still ``chat_id``."""
        # One script, not WATCH/MULTI: a text accepted meanwhile writes the same hash, and must not fail this.
        return self._forget_chat(keys=[self.key("conv", cid)], args=[chat_id]) == 1

    def touch(self, cid: str, **fields: Any) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key("conv", cid), mapping={k: str(v) for k, v in fields.items()})
            self._keep(self.key("conv", cid), self.key("recent", cid), self.key("chats", cid), pipe=pipe)
            pipe.execute()

    def note_empty_turn(self, cid: str) -> None:
        """Count an agent turn that had no text (shown in the conversation view)."""
        key = self.key("conv", cid)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "empty_turns", 1)
            pipe.hset(key, "last_empty_turn_at", f"{time.time():.3f}")
            self._keep(key, pipe=pipe)  # the conversation's hash expires like every key holding a number
            pipe.execute()

    def clear_retry(self, cid: str) -> None:
        """The conversation's scheduled retry has started: its backoff is over."""
        self.redis.hdel(self.key("conv", cid), "retry_at", "retry_token")

    def clear_drain_pending(self, cid: str) -> None:
        """A drain job has started: texts arriving from now on need a job of their own."""
        self.redis.hdel(self.key("conv", cid), "drain_pending")

    def set_opted_out(self, cid: str, opted_out: bool) -> None:
        key = self.key("conv", cid)
        if opted_out:
            with self.redis.pipeline() as pipe:
                pipe.hset(key, mapping={"opted_out": "1", "opted_out_at": f"{time.time():.3f}"})
                self._keep(key, pipe=pipe)
                pipe.execute()
        else:
            self.redis.hdel(key, "opted_out", "opted_out_at")

    # -- loop breaker: a conversation that answers faster than a person types -------------------------

    def count_quick_text(self, cid: str, quick: bool) -> int:
        """Count one more text that came right after our reply (``quick``), or start over; returns the run."""
        key = self.key("conv", cid)
        if not quick:
            self.redis.hdel(key, "loop_streak")
            return 0
        return int(self.redis.hincrby(key, "loop_streak", 1))

    def open_loop_breaker(self, cid: str, until: float) -> None:
        self.redis.hset(self.key("conv", cid), mapping={"loop_breaker_until": f"{until:.3f}",
                                                        "loop_breaker_at": f"{time.time():.3f}", "loop_streak": "0"})

    def count_held(self, cid: str) -> None:
        """One more text kept but not forwarded while the breaker is open."""
        self.redis.hincrby(self.key("conv", cid), "loop_held", 1)

    def close_loop_breaker(self, cid: str) -> None:
        self.redis.hdel(self.key("conv", cid), "loop_breaker_until", "loop_streak")

    def active_conversations(self) -> list[str]:
        return sorted(_text(c) for c in self.redis.smembers(self.key("active")))

    def forget_active(self, cid: str) -> None:
        self.redis.srem(self.key("active"), cid)

    def claim_idle_check(self, cid: str, due_at: float) -> bool:
        """Note that an idle check is scheduled; False if one is scheduled already (and not long overdue)."""
        key = self.key("conv", cid)
        current = _text(self.redis.hget(key, "idle_check_due_at"))
        if current is not None and float(current) > time.time() - 300:
            return False
        self.redis.hset(key, "idle_check_due_at", f"{due_at:.3f}")
        return True

    def clear_idle_check(self, cid: str) -> None:
        self.redis.hdel(self.key("conv", cid), "idle_check_due_at")

    def count_forwarded(self, cid: str, window_seconds: int) -> int:
        """Count one more message forwarded to the agent in this rate-limit window."""
        window = int(time.time() // window_seconds)
        key = self.key("rate", cid, str(window))
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, window_seconds + 60)
            return int(pipe.execute()[0])

    def claim_notice(self, kind: str, cid: str, interval_seconds: int) -> bool:
        """True at most once per ``interval_seconds`` for this kind of notice and conversation."""
        if interval_seconds <= 0:
            return True
        return bool(self.redis.set(self.key("notice", kind, cid), "1", nx=True, ex=interval_seconds))

    def keep_dead_letter(self, message: InboundMessage) -> None:
        self.redis.set(self.key("dead", message.sid), message.to_json(), ex=self.progress_ttl_seconds)

    def restore_dead_letters(self, sids: list[str]) -> list[str]:
        """Put given-up messages back at the head of their inboxes, oldest first; returns their conversations."""
        cids = []
        for sid in reversed(sids):
            raw = self.redis.get(self.key("dead", sid))
            if raw is None:
                continue
            message = InboundMessage.from_json(raw)
            cid = message.conversation_id
            with self.redis.pipeline() as pipe:
                pipe.lpush(self.key("inbox", cid), _text(raw))
                self._keep(self.key("inbox", cid), pipe=pipe)
                pipe.sadd(self.key("active"), cid)
                pipe.hdel(self.key("msg", sid), "attempts")
                pipe.delete(self.key("dead", sid))
                pipe.execute()
            cids.append(cid)
        return cids

    # -- erasing a person on request --------------------------------------------------------------

    def erase(self, cid: str) -> int:
        """Delete every key of the conversation that holds the person's number or words; returns how many.

        Per-message records are not keyed by conversation, so they are found by one SCAN of the gateway's
        keys: sent SMS by their conversation id, given-up messages by their numbers, progress records by
        their message sid or the chat they were answered in, outbound starts and their Idempotency-Key
        records by their operation id. An opt-out is kept (without the number): see the README.
        The caller holds the conversation's lock.
        """
        state = self.conversation(cid)
        chats = {_text(c) for c in self.redis.smembers(self.key("chats", cid))}
        sids = {InboundMessage.from_json(raw).sid for raw in self.redis.lrange(self.key("inbox", cid), 0, -1)}
        doomed = {self.key(kind, cid) for kind in ("conv", "inbox", "recent", "chats")}
        doomed.update(_text(k) for k in self.redis.scan_iter(match=self.key("rate", cid, "*"), count=1000))
        doomed.update(_text(k) for k in self.redis.scan_iter(match=self.key("notice", "*", cid), count=1000))
        sent = set()
        for key in self._scan("sent"):
            found = self.redis.hmget(key, "conversation_id", "inbound_sid")
            if _text(found[0]) == cid:
                doomed.add(key)
                sent.add(key.rpartition(":")[2])
                if found[1]:
                    sids.add(_text(found[1]))
        for key in self._scan("dead"):
            raw = self.redis.get(key)
            if raw is not None and InboundMessage.from_json(raw).conversation_id == cid:
                doomed.add(key)
                sids.add(key.rpartition(":")[2])
        ops = set()
        for key in self._scan("outbound"):
            op_id = key.rpartition(":")[2]
            result = json.loads(self.redis.hget(key, "result") or "{}")
            if op_id in sids or result.get("conversation_id") == cid or _text(self.redis.hget(key, "chat_id")) in chats:
                doomed.add(key)
                ops.add(op_id)
        sids |= ops
        for key in self._scan("msg"):
            record = {_text(k): _text(v) for k, v in self.redis.hgetall(key).items()}
            if (key.rpartition(":")[2] in sids or record.get("turn_chat_id") in chats
                    or any(k.startswith("part:") and v in sent for k, v in record.items())):
                doomed.add(key)
        for key in self._scan("idem"):
            if json.loads(self.redis.get(key) or "{}").get("op_id") in ops:
                doomed.add(key)
        with self.redis.pipeline() as pipe:
            for key in doomed:
                pipe.delete(key)
            pipe.srem(self.key("active"), cid)
            if state.get("opted_out") == "1":
                # Carriers require STOP to be honoured: keep only that fact, under the opaque id.
                pipe.hset(self.key("conv", cid),
                          mapping={"opted_out": "1", "opted_out_at": state.get("opted_out_at", "")})
                self._keep(self.key("conv", cid), pipe=pipe)
            removed = sum(pipe.execute()[:len(doomed)])
        if state.get("opted_out") == "1" and set(state) <= {"opted_out", "opted_out_at"}:
            removed -= 1  # only the opt-out was there, and it is kept
        return removed

    def _scan(self, kind: str):
        for key in self.redis.scan_iter(match=self.key(kind, "*"), count=1000):
            yield _text(key)

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
            pipe.expire(key, self.progress_ttl_seconds)
            pipe.execute()

    def decision(self, message_sid: str, name: str) -> bool | None:
        value = _text(self.redis.hget(self.key("msg", message_sid), f"decision:{name}"))
        return None if value is None else value == "1"

    def record_decision(self, message_sid: str, name: str, value: bool) -> bool:
        """Store a yes/no for the message unless one is stored; return the stored one."""
        key = self.key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, f"decision:{name}", "1" if value else "0")
            pipe.hget(key, f"decision:{name}")
            pipe.expire(key, self.progress_ttl_seconds)
            return _text(pipe.execute()[1]) == "1"

    def mark_turn_started(self, message_sid: str, chat_id: str) -> None:
        self._set_progress(message_sid, {"turn_chat_id": chat_id})

    def record_reply(self, message_sid: str, parts: list[str]) -> None:
        self._set_progress(message_sid, {"reply": json.dumps(parts, ensure_ascii=False)})

    def count_attempt(self, message_sid: str) -> int:
        key = self.key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.expire(key, self.progress_ttl_seconds)
            return int(pipe.execute()[0])

    def claim_part(self, message_sid: str, part: str, claimed_at: float | None = None) -> bool:
        """Claim the right to send one part (``sending:<claimed_at>``); False if it was sent (or attempted) already."""
        key = self.key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, f"part:{part}", f"sending:{time.time() if claimed_at is None else claimed_at:.3f}")
            pipe.expire(key, self.progress_ttl_seconds)
            return bool(pipe.execute()[0])

    def release_part(self, message_sid: str, part: str) -> None:
        """Give a claim back after a failure that certainly sent nothing."""
        self.redis.hdel(self.key("msg", message_sid), f"part:{part}")

    def settle_part(self, message_sid: str, part: str, outcome: str) -> None:
        """Record a claimed part's state: a Twilio sid, ``sending:<ts>``, ``uncertain:<ts>`` or ``failed:<code>``."""
        self._set_progress(message_sid, {f"part:{part}": outcome})

    # -- outbound messages ------------------------------------------------------------------------

    def record_sent(self, cid: str, twilio_sid: str, **fields: Any) -> None:
        key = self.key("sent", twilio_sid)
        recent = self.key("recent", cid)
        mapping = {"conversation_id": cid, "sent_at": f"{time.time():.3f}",
                   **{k: str(v) for k, v in fields.items() if v is not None}}
        mapping["status_rank"] = str(STATUS_RANK.get(mapping.get("status", "queued"), 0))
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.progress_ttl_seconds)
            pipe.lpush(recent, twilio_sid)
            pipe.ltrim(recent, 0, RECENT_SENT_KEPT - 1)
            pipe.hset(self.key("conv", cid), "last_outbound_at", f"{time.time():.3f}")
            self._keep(recent, self.key("conv", cid), pipe=pipe)
            pipe.execute()

    def record_status(self, twilio_sid: str, status: str, error_code: str = "") -> str | None:
        """Record a delivery status callback; returns the conversation id, or None for a sid we never sent.

        Statuses only move forward (a late ``sent`` does not overwrite ``delivered``); error 21610 (the
        person replied STOP) marks the conversation opted out.
        """
        rank = STATUS_RANK.get(status.lower(), 1)
        result = self._record_status(keys=[self.key("sent", twilio_sid)],
                                     args=[status, rank, f"{time.time():.3f}", error_code])
        cid = _text(result)
        if cid and error_code == "21610":
            self.set_opted_out(cid, True)
        return cid

    def recent_sent(self, cid: str) -> list[dict[str, str]]:
        sids = [_text(s) for s in self.redis.lrange(self.key("recent", cid), 0, -1)]
        with self.redis.pipeline() as pipe:
            for sid in sids:
                pipe.hgetall(self.key("sent", sid))
            rows = pipe.execute()
        return [{"sid": sid, **{_text(k): _text(v) for k, v in row.items()}}
                for sid, row in zip(sids, rows, strict=True)]


CHANNEL_ADDRESS = re.compile(r"([a-z][a-z0-9-]*):(.+)")  # whatsapp:+1..., messenger:1234..., rcs:...


def bare_address(address: str) -> str:
    """``whatsapp:+1415...`` -> ``+1415...``: one number on any channel."""
    match = CHANNEL_ADDRESS.fullmatch(address)
    return match[2] if match else address


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value
