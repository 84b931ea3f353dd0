"""The sending rate of each sender, shared by every worker through Redis (GCRA, the generic cell rate algorithm).

Keys (under ``smsgw:``)::

    pace:{sender}            the sender's theoretical arrival time: when its next message may go (ms, Redis's clock)

A send asks for a slot: the script moves the sender's time on by one interval per message (``cost`` intervals for
a message of several segments) and answers how long to wait for the slot it reserved. It reserves only a slot
within ``horizon_ms`` of now; further away it reserves nothing and answers how long until one is that near, so a
caller never holds a worker thread for long (it hands its work back to RQ's scheduler instead). The clock is
Redis's (``TIME``), one for every worker host.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.state.keys import StateBase, key

# Take the next slots of the sender KEYS[1] (interval ARGV[1] ms times cost ARGV[2]) whenever they are: a send that
# went out without waiting (a reply). Only a sender that is being paced (its key exists: a campaign) is moved.
_TAKE = """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1]) * tonumber(ARGV[2])
if tat < now then tat = now end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000)
return 1
"""

# Reserve the next slot of the sender KEYS[1] (interval ARGV[1] ms times cost ARGV[3]) if it is within ARGV[2] ms
# of now. Slots left unused (the senders fell behind) are kept up to ARGV[4] ms back, so a short stall is made up.
# Returns {1, wait ms} when reserved, {0, ms until a slot is that near} when not.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1]) * tonumber(ARGV[3])
local horizon = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now - tonumber(ARGV[4]) then tat = now - tonumber(ARGV[4]) end
local wait = math.max(0, tat - now)
if wait > horizon then return {0, wait - horizon} end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(wait + interval) + 1000 + tonumber(ARGV[4]))
return {1, wait}
"""


@dataclass(frozen=True)
class Slot:
    """The answer to a request for a slot: reserved (wait ``wait_seconds``, then send) or not (ask again then)."""

    reserved: bool
    wait_seconds: float


def pace_key(sender: str) -> str:
    return key("pace", sender)


class Pacing(StateBase):
    """Slots of each sender's sending rate."""

    SCRIPTS = {"_reserve": _RESERVE, "_take": _TAKE}

    def reserve(self, sender: str, rate_per_second: float, *, horizon_seconds: float, cost: int = 1,
                catch_up_seconds: float = 0.0) -> Slot:
        """Reserve the sender's next slot at ``rate_per_second`` messages a second, if it is within the horizon.

        ``catch_up_seconds``: slots missed this recently (the senders were behind) may still be used, so a short
        stall is made up; over any period the sender gets at most its rate's slots plus that many seconds' worth.
        """
        interval_ms = 1000.0 / rate_per_second
        reserved, wait_ms = self._reserve(keys=[pace_key(sender)],
                                          args=[f"{interval_ms:.3f}", int(horizon_seconds * 1000), max(1, cost),
                                                int(catch_up_seconds * 1000)])
        return Slot(int(reserved) == 1, int(wait_ms) / 1000)

    def take(self, sender: str, rate_per_second: float, *, cost: int = 1) -> None:
        """Count a send that went out without a slot (a reply) against a sender that is being paced."""
        self._take(keys=[pace_key(sender)], args=[f"{1000.0 / rate_per_second:.3f}", max(1, cost)])
