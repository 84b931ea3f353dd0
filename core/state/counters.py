"""Counters and markers that pace a conversation: the rate limit, notices sent, idle checks, the recovery sweep.

Keys (under ``smsgw:``)::

    rate:{cid}:{window}      messages forwarded to the agent in the current rate-limit window
    notice:{kind}:{cid}      marker: a notice of this kind was sent recently (MMS, rate limit)
    sweep-lock               the worker running the recovery sweep now (one at a time; expires)
    conv:{cid} idle_check_due_at   field of the conversation's hash: an idle check is scheduled for then

Per-message attempts are counted with the message's progress (``core.state.deliveries``).
"""

from __future__ import annotations

import time

from core.state.keys import StateBase, key, text

IDLE_CHECK_OVERDUE_SECONDS = 300  # a scheduled idle check this late is taken as lost


class Counters(StateBase):
    """Rate windows, notice markers and idle-check markers."""

    def count_forwarded(self, cid: str, window_seconds: int) -> int:
        """Count one more message forwarded to the agent in this rate-limit window."""
        window = int(time.time() // window_seconds)
        name = key("rate", cid, str(window))
        with self.redis.pipeline() as pipe:
            pipe.incr(name)
            pipe.expire(name, window_seconds + 60)
            return int(pipe.execute()[0])

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
