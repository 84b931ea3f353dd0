"""One conversation: its hash, the chats it has had, opt-out, the loop breaker, and the lock of its one worker.

A conversation is the pair (gateway number, person's number), keyed by an opaque id so that phone
numbers never appear in queue names, job descriptions or logs. Keys (under ``smsgw:``)::

    conv:{cid}               hash: gateway, person, messaging_service_sid, chat_id, agent_id, chat_started_at,
                             last_inbound_at, last_outbound_at, last_activity_at, retry_at, retry_token,
                             opted_out, empty_turns, loop_streak,
                             loop_breaker_until, loop_held, handoff, away_heard (see
                             ``core.state.handoff``), ...
    chats:{cid}              set of the UponAI chat ids the conversation has had (to find its records on erase)
    lock:{cid}               token of the one job working on the conversation (expires)
    erasing:{cid}            token of an erase waiting for the lock (expires): no drain starts or goes on meanwhile

Order comes from the inbox: only the lock holder reads the head, handles it, then removes it. The lock
is released only when the inbox is empty (atomically), so a message pushed while the holder is
finishing is never left without a drainer.

The lock stays a few small scripts rather than redis-py's ``redis.lock.Lock``: its tokens carry meaning
that other holders read (``drain:``, ``admin:``, ``idle:`` prefixes, see ``workers.locking``), it is taken,
refreshed and released by token from different threads and jobs (``Lock`` keeps its token in the object,
thread-local by default, and has no "confirm I hold it" acquire), and the drain's release must check the
inbox is empty in the same atomic step, which ``Lock.release`` cannot.

A drain job starts with one step (``start_drain``: the lock, the hash, the waiting texts) and ends each
turn (or text handled alone) with one (``finish_texts``: its texts removed, the next waiting ones, or the
lock released); the loop breaker's verdict on a text is also one step
(``loop_verdict``, which remembers it in the message's progress hash ``msg:{MessageSid}``, see
``core.state.deliveries``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline

from core.model import InboundMessage
from core.state.keys import StateBase, key, text, text_hash

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

# Take the lock (KEYS[1]) for token ARGV[1], or confirm we hold it (its expiry ARGV[2] ms set again); an erase
# waiting for the conversation (KEYS[2]) goes first: only its own token takes the lock then.
_ACQUIRE = """
local erasing = redis.call('GET', KEYS[2])
if erasing and erasing ~= ARGV[1] then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_FORGET_CHAT = """
if redis.call('HGET', KEYS[1], 'chat_id') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'chat_id', 'agent_id', 'chat_started_at')
return 1
"""


# A drain job's first step: takes the lock (or keeps it: a run again of the holder's job), and reads the
# conversation's hash and inbox head. An erase waiting for the conversation (KEYS[4]) goes first: its token is
# returned as the holder's.
_START_DRAIN = """
local erasing = redis.call('GET', KEYS[4])
if erasing then return {0, erasing} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {0, holder} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[3]) - 1)}
"""
# Done with the texts at the inbox head (ARGV[3...], in order): remove them, and return the next waiting
# ones (at most ARGV[2]), or release the lock when there are none, or when an erase waits for the conversation
# (KEYS[3]: it deletes what is left).
_FINISH_TEXTS = """
for i = 3, #ARGV do
  if redis.call('LINDEX', KEYS[1], 0) == ARGV[i] then redis.call('LPOP', KEYS[1]) end
end
local waiting = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #waiting > 0 and redis.call('EXISTS', KEYS[3]) == 0 then return {0, waiting} end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1} end
redis.call('DEL', KEYS[2])
return {1}
"""
# The loop breaker's verdict on one text, once per message (KEYS[1], its progress hash): a quick text
# (ARGV[1] = '1') lengthens the conversation's run of quick texts and opens the breaker on the K-th
# (ARGV[2]); a slow one ends the run.
_LOOP_VERDICT = """
local earlier = redis.call('HGET', KEYS[1], 'decision:loop_held')
if earlier then return {earlier, 0} end
local verdict, opened = '0', 0
if ARGV[1] == '1' then
  if redis.call('HINCRBY', KEYS[2], 'loop_streak', 1) >= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[2], 'loop_breaker_until', ARGV[3], 'loop_breaker_at', ARGV[4], 'loop_streak', '0')
    verdict, opened = '1', 1
  end
else
  redis.call('HDEL', KEYS[2], 'loop_streak')
end
redis.call('HSET', KEYS[1], 'decision:loop_held', verdict)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {verdict, opened}
"""


# How many waiting texts a drain step reads at once: at most this many make one agent turn.
WAITING_READ = 50


@dataclass(frozen=True)
class DrainStart:
    """What a drain job's first step found: the lock (or its other holder), the conversation, the waiting texts."""

    acquired: bool
    holder: str | None
    conversation: dict[str, str]
    waiting: list[tuple[str, InboundMessage]]


def _waiting(raws) -> list[tuple[str, InboundMessage]]:
    """Inbox entries as (raw JSON, message), oldest first."""
    return [(raw, InboundMessage.from_json(raw)) for raw in map(text, raws or [])]


class Conversations(StateBase):
    """The conversation's hash and lock."""

    SCRIPTS = {"_release_if_idle": _RELEASE_IF_IDLE, "_release": _RELEASE, "_refresh": _REFRESH, "_acquire": _ACQUIRE,
               "_forget_chat": _FORGET_CHAT, "_start_drain": _START_DRAIN, "_finish_texts": _FINISH_TEXTS,
               "_loop_verdict": _LOOP_VERDICT}

    # -- the lock -----------------------------------------------------------------------------------

    def acquire_lock(self, cid: str, token: str, ttl_seconds: float) -> bool:
        """Take the conversation's lock (or confirm we already hold it); never while an erase waits for it (unless
        this is that erase)."""
        return int(self._acquire(keys=[key("lock", cid), key("erasing", cid)],
                                 args=[token, int(ttl_seconds * 1000)])) == 1

    def refresh_lock(self, cid: str, token: str, ttl_seconds: float) -> bool:
        return self._refresh(keys=[key("lock", cid)], args=[token, int(ttl_seconds * 1000)]) == 1

    def release_lock(self, cid: str, token: str) -> None:
        self._release(keys=[key("lock", cid)], args=[token])

    def release_if_idle(self, cid: str, token: str) -> bool:
        """Release the lock if the inbox is empty; False means more messages arrived meanwhile."""
        result = self._release_if_idle(keys=[key("inbox", cid), key("lock", cid)], args=[token])
        return int(result) != 0

    def mark_erasing(self, cid: str, token: str, ttl_seconds: float) -> None:
        """An erase waits for the conversation: no drain starts or takes its next step until ``unmark_erasing``
        (or ``ttl_seconds``)."""
        self.redis.set(key("erasing", cid), token, px=int(ttl_seconds * 1000))

    def unmark_erasing(self, cid: str, token: str) -> None:
        self._release(keys=[key("erasing", cid)], args=[token])

    def lock_holder(self, cid: str) -> str | None:
        return text(self.redis.get(key("lock", cid)))

    # -- a drain job's steps --------------------------------------------------------------------------

    def start_drain(self, cid: str, token: str, ttl_seconds: float) -> DrainStart:
        """Note that a drain job started, take the lock (or keep ours), read the hash and the waiting texts."""
        reply = self._start_drain(keys=[key("conv", cid), key("lock", cid), key("inbox", cid), key("erasing", cid)],
                                  args=[token, int(ttl_seconds * 1000), WAITING_READ])
        if int(reply[0]) == 0:
            return DrainStart(False, text(reply[1]), {}, [])
        flat = [text(item) for item in reply[1]]
        return DrainStart(True, token, dict(zip(flat[::2], flat[1::2], strict=True)),
                          _waiting(reply[2] if len(reply) > 2 else None))

    def finish_texts(self, cid: str, raws: list[str], token: str) -> tuple[bool, list[tuple[str, InboundMessage]]]:
        """Remove the handled texts ``raws`` from the inbox head; return (released, the texts waiting next).

        The lock goes in the same step when nothing is left waiting, or when an erase waits for the conversation.
        """
        reply = self._finish_texts(keys=[key("inbox", cid), key("lock", cid), key("erasing", cid)],
                                   args=[token, WAITING_READ, *raws])
        if int(reply[0]) == 0:
            return False, _waiting(reply[1])
        return True, []  # released (or no longer ours: nothing to release)

    def waiting(self, cid: str) -> list[tuple[str, InboundMessage]]:
        """The texts waiting at the inbox head (at most ``WAITING_READ``), oldest first."""
        return _waiting(self.redis.lrange(key("inbox", cid), 0, WAITING_READ - 1))

    # -- the conversation's hash --------------------------------------------------------------------

    def conversation(self, cid: str) -> dict[str, str]:
        return text_hash(self.redis.hgetall(key("conv", cid)))

    def set_chat(self, cid: str, chat_id: str, agent_id: str) -> None:
        """Store the conversation's new chat."""
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
        """Set fields of the conversation's hash."""
        with self.redis.pipeline() as pipe:
            self.touch_on(pipe, cid, **fields)
            pipe.execute()

    def touch_on(self, pipe: Pipeline, cid: str, **fields: Any) -> None:
        """``touch``'s commands, added to ``pipe`` (another step that writes them with its own)."""
        pipe.hset(key("conv", cid), mapping={k: str(v) for k, v in fields.items()})
        self._keep(key("conv", cid), key("recent", cid), key("chats", cid), pipe=pipe)

    def note_activity(self, cid: str, at: float, idle_check_due_at: float) -> None:
        """The conversation's activity time, and its idle check's new due time (``Counters``), in one step."""
        with self.redis.pipeline() as pipe:
            self.touch_on(pipe, cid, last_activity_at=f"{at:.3f}")
            self.schedule_idle_check(cid, idle_check_due_at, pipe=pipe)
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

    def set_opted_out(self, cid: str, opted_out: bool) -> bool:
        """Mark the person opted out (or back in); True when that changed it."""
        name = key("conv", cid)
        if opted_out:
            with self.redis.pipeline() as pipe:
                pipe.hsetnx(name, "opted_out", "1")
                pipe.hsetnx(name, "opted_out_at", f"{time.time():.3f}")
                self._keep(name, pipe=pipe)
                return bool(pipe.execute()[0])
        return bool(self.redis.hdel(name, "opted_out", "opted_out_at"))

    def is_opted_out(self, cid: str) -> bool:
        """Whether the person opted out (texted STOP, or Twilio refused a send with 21610) and has not opted back in."""
        return self.redis.hget(key("conv", cid), "opted_out") == b"1"

    def opted_out_among(self, cids: list[str]) -> set[str]:
        """The conversations of ``cids`` whose person opted out (``is_opted_out`` for many, in one round trip)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hget(key("conv", cid), "opted_out")
            return {cid for cid, flag in zip(cids, pipe.execute(), strict=True) if flag == b"1"}

    def live_among(self, cids: list[str], idle_timeout_seconds: float) -> set[str]:
        """The conversations of ``cids`` with a chat active within ``idle_timeout_seconds`` (a person talking)."""
        cutoff = time.time() - idle_timeout_seconds
        with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hmget(key("conv", cid), "chat_id", "last_activity_at")
            return {cid for cid, (chat_id, at) in zip(cids, pipe.execute(), strict=True)
                    if chat_id and float(at or 0) > cutoff}

    # -- loop breaker: a conversation that answers faster than a person types -------------------------

    def loop_verdict(self, message_sid: str, cid: str, quick: bool, run_to_open: int, open_until: float
                     ) -> tuple[bool, bool]:
        """Count the text in the run of quick texts (``quick``) or end the run; open the breaker until
        ``open_until`` on the ``run_to_open``-th. Once per message: returns (held, opened now)."""
        verdict, opened = self._loop_verdict(
            keys=[key("msg", message_sid), key("conv", cid)],
            args=["1" if quick else "0", run_to_open, f"{open_until:.3f}", f"{time.time():.3f}",
                  self.progress_ttl_seconds])
        return text(verdict) == "1", int(opened) == 1

    def count_held(self, cid: str) -> None:
        """One more text kept but not forwarded while the breaker is open."""
        self.redis.hincrby(key("conv", cid), "loop_held", 1)

    def close_loop_breaker(self, cid: str) -> None:
        self.redis.hdel(key("conv", cid), "loop_breaker_until", "loop_streak")

    def chats(self, cid: str) -> set[str]:
        """Every UponAI chat id the conversation has had."""
        return {text(c) for c in self.redis.smembers(key("chats", cid))}
