"""Counters and markers that pace a conversation: the rate limit, notices sent, idle checks, the recovery sweep.

Keys (under ``smsgw:``)::

    rate:{cid}:{window}      messages forwarded to the agent in the current rate-limit window
    notice:{kind}:{cid}      marker: a notice of this kind was sent recently (MMS, rate limit)
    sweep-lock               the worker running the recovery sweep now (one at a time; expires)
    conv:{cid} idle_check_due_at   field of the conversation's hash: an idle check is scheduled for then

Per-message attempts are counted with the message's progress (``core.state.deliveries``); the rate
verdict on a message is remembered there too (``decision:within_rate`` of ``msg:{MessageSid}``).
"""

from __future__ import annotations

import time

from core.state.keys import StateBase, key, text

IDLE_CHECK_OVERDUE_SECONDS = 300  # a scheduled idle check this late is taken as lost

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
    """Rate windows, notice markers and idle-check markers."""

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

    def claim_idle_check(self, cid: str, due_at: float) -> bool:
        """Note that an idle check is scheduled; False if one is scheduled already (and not long overdue)."""
        name = key("conv", cid)
        current = text(self.redis.hget(name, "idle_check_due_at"))
        if current is not None and float(current) > time.time() - IDLE_CHECK_OVERDUE_SECONDS:
            return False
        self.redis.hset(name, "idle_check_due_at", f"{due_at:.3f}")
        return True

    def clear_idle_check(self, cid: str) -> None:
        self.redis.hdel(key("conv", cid), "idle_check_due_at")

    def claim_sweep(self, worker_name: str, seconds: int) -> bool:
        """True for one worker per ``seconds``: the one that runs the recovery sweep now."""
        return bool(self.redis.set(key("sweep-lock"), worker_name, nx=True, ex=seconds))
