"""One conversation: its hash, the chats it has had, opt-out, the loop breaker, and the lock of its one worker.

A conversation is the pair (gateway number, person's number), keyed by an opaque id so that phone
numbers never appear in queue names, job descriptions or logs. Keys (under ``smsgw:``)::

    conv:{cid}               hash: gateway, person, messaging_service_sid, chat_id, agent_id, chat_started_at,
                             last_inbound_at, last_outbound_at, last_activity_at, drain_pending (a drain job
                             waits in the queue, since), retry_at, retry_token, opted_out, empty_turns, loop_streak,
                             loop_breaker_until, loop_held, idle_check_due_at, ...
    chats:{cid}              set of the UponAI chat ids the conversation has had (to find its records on erase)
    lock:{cid}               token of the one job working on the conversation (expires)

Order comes from the inbox: only the lock holder reads the head, handles it, then removes it. The lock
is released only when the inbox is empty (atomically), so a message pushed while the holder is
finishing is never left without a drainer.

The lock stays a few small scripts rather than redis-py's ``redis.lock.Lock``: its tokens carry meaning
that other holders read (``drain:``, ``admin:``, ``idle:`` prefixes, see ``workers.locking``), it is taken,
refreshed and released by token from different threads and jobs (``Lock`` keeps its token in the object,
thread-local by default, and has no "confirm I hold it" acquire), and the drain's release must check the
inbox is empty and leave the active set in the same atomic step, which ``Lock.release`` cannot.
"""

from __future__ import annotations

import time
from typing import Any

from core.state.keys import StateBase, key, text, text_hash

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

_FORGET_CHAT = """
if redis.call('HGET', KEYS[1], 'chat_id') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'chat_id', 'agent_id', 'chat_started_at')
return 1
"""


class Conversations(StateBase):
    """The conversation's hash and lock."""

    SCRIPTS = {"_release_if_idle": _RELEASE_IF_IDLE, "_release": _RELEASE, "_refresh": _REFRESH,
               "_forget_chat": _FORGET_CHAT}

    # -- the lock -----------------------------------------------------------------------------------

    def acquire_lock(self, cid: str, token: str, ttl_seconds: float) -> bool:
        """Take the conversation's lock (or confirm we already hold it)."""
        name = key("lock", cid)
        if self.redis.set(name, token, nx=True, px=int(ttl_seconds * 1000)):
            return True
        return self._refresh(keys=[name], args=[token, int(ttl_seconds * 1000)]) == 1

    def refresh_lock(self, cid: str, token: str, ttl_seconds: float) -> bool:
        return self._refresh(keys=[key("lock", cid)], args=[token, int(ttl_seconds * 1000)]) == 1

    def release_lock(self, cid: str, token: str) -> None:
        self._release(keys=[key("lock", cid)], args=[token])

    def release_if_idle(self, cid: str, token: str) -> bool:
        """Release the lock if the inbox is empty; False means more messages arrived meanwhile."""
        result = self._release_if_idle(keys=[key("inbox", cid), key("lock", cid), key("active")], args=[token, cid])
        return int(result) != 0

    def lock_holder(self, cid: str) -> str | None:
        return text(self.redis.get(key("lock", cid)))

    # -- the conversation's hash --------------------------------------------------------------------

    def conversation(self, cid: str) -> dict[str, str]:
        return text_hash(self.redis.hgetall(key("conv", cid)))

    def set_chat(self, cid: str, chat_id: str, agent_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(key("conv", cid), mapping={
                "chat_id": chat_id, "agent_id": agent_id, "chat_started_at": f"{time.time():.3f}"})
            pipe.sadd(key("chats", cid), chat_id)
            self._keep(key("conv", cid), key("chats", cid), pipe=pipe)
            pipe.execute()

    def forget_chat(self, cid: str, chat_id: str) -> bool:
        """Drop the stored chat id if it is still ``chat_id``."""
        # One script, not WATCH/MULTI: a text accepted meanwhile writes the same hash, and must not fail this.
        return self._forget_chat(keys=[key("conv", cid)], args=[chat_id]) == 1

    def touch(self, cid: str, **fields: Any) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(key("conv", cid), mapping={k: str(v) for k, v in fields.items()})
            self._keep(key("conv", cid), key("recent", cid), key("chats", cid), pipe=pipe)
            pipe.execute()

    def note_empty_turn(self, cid: str) -> None:
        """Count an agent turn that had no text (shown in the conversation view)."""
        name = key("conv", cid)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(name, "empty_turns", 1)
            pipe.hset(name, "last_empty_turn_at", f"{time.time():.3f}")
            self._keep(name, pipe=pipe)  # the conversation's hash expires like every key holding a number
            pipe.execute()

    def clear_retry(self, cid: str) -> None:
        """The conversation's scheduled retry has started: its backoff is over."""
        self.redis.hdel(key("conv", cid), "retry_at", "retry_token")

    @staticmethod
    def mark_drain_pending(cid: str, pipe) -> None:
        """On ``pipe``: a drain job of the conversation now waits in the queue (cleared when one starts)."""
        pipe.hset(key("conv", cid), "drain_pending", f"{time.time():.3f}")

    def clear_drain_pending(self, cid: str) -> None:
        """A drain job has started: texts arriving from now on need a job of their own."""
        self.redis.hdel(key("conv", cid), "drain_pending")

    def set_opted_out(self, cid: str, opted_out: bool) -> None:
        name = key("conv", cid)
        if opted_out:
            with self.redis.pipeline() as pipe:
                pipe.hset(name, mapping={"opted_out": "1", "opted_out_at": f"{time.time():.3f}"})
                self._keep(name, pipe=pipe)
                pipe.execute()
        else:
            self.redis.hdel(name, "opted_out", "opted_out_at")

    # -- loop breaker: a conversation that answers faster than a person types -------------------------

    def count_quick_text(self, cid: str, quick: bool) -> int:
        """Count one more text that came right after our reply (``quick``), or start over; returns the run."""
        name = key("conv", cid)
        if not quick:
            self.redis.hdel(name, "loop_streak")
            return 0
        return int(self.redis.hincrby(name, "loop_streak", 1))

    def open_loop_breaker(self, cid: str, until: float) -> None:
        self.redis.hset(key("conv", cid), mapping={"loop_breaker_until": f"{until:.3f}",
                                                   "loop_breaker_at": f"{time.time():.3f}", "loop_streak": "0"})

    def count_held(self, cid: str) -> None:
        """One more text kept but not forwarded while the breaker is open."""
        self.redis.hincrby(key("conv", cid), "loop_held", 1)

    def close_loop_breaker(self, cid: str) -> None:
        self.redis.hdel(key("conv", cid), "loop_breaker_until", "loop_streak")

    def chats(self, cid: str) -> set[str]:
        """Every UponAI chat id the conversation has had."""
        return {text(c) for c in self.redis.smembers(key("chats", cid))}
