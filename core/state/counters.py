"""Counters and markers that pace a conversation: the rate limit, notices sent, idle checks.

Keys (under ``smsgw:``)::

    rate:{cid}:{window}      messages forwarded to the agent in the current rate-limit window
    notice:{kind}:{cid}      marker: a notice of this kind was sent recently (MMS, rate limit)
    idle-due                 sorted set: each conversation with a chat -> when its idle check is due (epoch s)

Per-message attempts are counted with the message's progress (``core.state.deliveries``); the rate
verdict on a message is remembered there too (``decision:within_rate`` of ``msg:{MessageSid}``).
"""

from __future__ import annotations

import time

from redis.client import Pipeline

from core.state.keys import StateBase, key, text

IDLE_DUE_KEY = key("idle-due")
# An idle check handed to a job is due again this much later, in case the job is lost (a killed worker): the job
# itself sets the next time (or removes the entry) when it runs.
IDLE_CHECK_LEASE_SECONDS = 300

# Count a message forwarded to the agent in the rate window and remember the verdict, once per message.
_FORWARD_WITHIN_RATE = """
local earlier = redis.call('HGET', KEYS[1], 'decision:within_rate')
if earlier then return earlier end
local count = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local verdict = '0'
if count <= tonumber(ARGV[1]) then verdict = '1' end
redis.call('HSET', KEYS[1], 'decision:within_rate', verdict)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return verdict
"""


class Counters(StateBase):
    """Rate windows, notice markers, the idle checks' times."""

    SCRIPTS = {"_forward_within_rate": _FORWARD_WITHIN_RATE}

    def forward_within_rate(self, message_sid: str, cid: str, limit: int, window_seconds: int) -> bool:
        """Count the message as forwarded in this rate window and whether it is within ``limit``, once per message."""
        window = int(time.time() // window_seconds)
        verdict = self._forward_within_rate(keys=[key("msg", message_sid), key("rate", cid, str(window))],
                                            args=[limit, window_seconds + 60, self.progress_ttl_seconds])
        return text(verdict) == "1"

    def claim_notice(self, kind: str, cid: str, interval_seconds: int) -> bool:
        """True at most once per ``interval_seconds`` for this kind of notice and conversation."""
        if interval_seconds <= 0:
            return True
        return bool(self.redis.set(key("notice", kind, cid), "1", nx=True, ex=interval_seconds))

    def schedule_idle_check(self, cid: str, due_at: float, *, pipe: Pipeline | None = None) -> None:
        """The conversation's idle check is due at ``due_at`` (replacing any earlier time); on ``pipe``: in the
        caller's step. The workers' scheduler hands it to a ``close_idle`` job then (``due_idle_checks``)."""
        (pipe if pipe is not None else self.redis).zadd(IDLE_DUE_KEY, {cid: due_at})

    def clear_idle_check(self, cid: str) -> None:
        """No idle check for the conversation (its chat is closed, or it has none)."""
        self.redis.zrem(IDLE_DUE_KEY, cid)

    def due_idle_checks(self, now: float, count: int) -> list[str]:
        """Up to ``count`` conversations whose idle check is due by ``now``, most overdue first."""
        return [text(cid) for cid in self.redis.zrangebyscore(IDLE_DUE_KEY, "-inf", now, start=0, num=count)]

    @staticmethod
    def lease_idle_checks(pipe: Pipeline, cids: list[str], now: float) -> None:
        """On ``pipe`` (with their jobs queued): the checks are due again after the lease, should a job be lost."""
        pipe.zadd(IDLE_DUE_KEY, dict.fromkeys(cids, now + IDLE_CHECK_LEASE_SECONDS), xx=True)
