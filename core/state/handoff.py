"""A human takes over: the conversation's handoff flag and the away log of what was said while the agent was away.

Keys (under ``smsgw:``)::

    conv:{cid}               fields handoff ("1" while an operator has the conversation), handoff_at, handoff_by
    away:{cid}               list of JSON entries {"who": "person"|"operator", "text", "at", "ref"}, oldest first:
                             what the person and the operator said while the agent was away (``keys.away_key``)
    away-refs:{cid}          set of the refs already in the away log (``keys.away_refs_key``): an entry is added
                             once per ref (a message sid, an Idempotency-Key), whatever retries happen

The away log holds words: like the conversation's other keys it gets DATA_RETENTION_DAYS again on each write,
and ``erase`` deletes it. The agent's turn reads it (and may trim the list once the agent has heard it: the
refs set stays, so a retried entry is not added again).
"""

from __future__ import annotations

import json
import time

from core.state.keys import StateBase, away_key, away_refs_key, key, text

AWAY_WHO = ("person", "operator")

# KEYS: conv. ARGV: by, now. Returns 1 if the handoff started now, 0 if it was on already.
_START_HANDOFF = """
if redis.call('HGET', KEYS[1], 'handoff') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'handoff', '1', 'handoff_at', ARGV[2], 'handoff_by', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: away, away-refs, conv. ARGV: ref, entry JSON, retention seconds. Returns 1 if added, 0 if the ref was there.
_ADD_AWAY = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
return 1
"""


class Handoff(StateBase):
    """Whether an operator has the conversation, and the log of what was said meanwhile."""

    SCRIPTS = {"_start_handoff": _START_HANDOFF, "_add_away": _ADD_AWAY}

    def start_handoff(self, cid: str, by: str) -> bool:
        """An operator (``by``, e.g. "admin-api") takes the conversation; False if it was handed off already."""
        started = self._start_handoff(keys=[key("conv", cid)],
                                      args=[by, f"{time.time():.3f}", self.retention_seconds])
        return int(started) == 1

    def end_handoff(self, cid: str) -> bool:
        """The agent answers again; False if the conversation was not handed off."""
        removed = self.redis.hdel(key("conv", cid), "handoff", "handoff_at", "handoff_by")
        return int(removed) > 0

    def in_handoff(self, cid: str) -> bool:
        return text(self.redis.hget(key("conv", cid), "handoff")) == "1"

    def add_away(self, cid: str, who: str, text: str, ref: str) -> bool:
        """Append what ``who`` said while the agent was away; once per ``ref`` (False if it is there already)."""
        if who not in AWAY_WHO:
            raise ValueError(f"who must be one of {', '.join(AWAY_WHO)}, not {who!r}")
        if not ref:
            raise ValueError("an away entry needs a ref (a message sid, an Idempotency-Key)")
        entry = json.dumps({"who": who, "text": text, "at": f"{time.time():.3f}", "ref": ref}, ensure_ascii=False)
        added = self._add_away(keys=[away_key(cid), away_refs_key(cid), key("conv", cid)],
                               args=[ref, entry, self.retention_seconds])
        return int(added) == 1

    def away_log(self, cid: str) -> list[dict]:
        """The away log, oldest first."""
        return [json.loads(raw) for raw in self.redis.lrange(away_key(cid), 0, -1)]
