"""A human takes over: the conversation's handoff flag and the away log of what was said while the agent was away.

Keys (under ``smsgw:``)::

    conv:{cid}               fields handoff ("1" while an operator has the conversation), handoff_at, handoff_by
    away:{cid}               list of JSON entries {"seq", "who": "person"|"operator", "text", "at", "ref"}, oldest
                             first: what the person and the operator said while the agent was away
                             (``keys.away_key``); ``seq`` numbers them 1, 2, 3... in the conversation
    away-refs:{cid}          set of the refs already in the away log (``keys.away_refs_key``): an entry is added
                             once per ref (a message sid, an Idempotency-Key), whatever retries happen
    conv:{cid}               field away_heard: the ``seq`` of the newest entry the agent has heard (a turn's preface)

The away log holds words: like the conversation's other keys it gets DATA_RETENTION_DAYS again on each write,
and ``erase`` deletes it. The agent's turn reads the entries it has not heard (``seq`` above ``away_heard``) and
moves ``away_heard`` in the step that fixes the turn (``Deliveries.fix_turn``); the entries stay, so the
conversation view shows them, marked heard or not. Numbering the entries, rather than counting them, keeps that
cursor right when old entries go: the list keeps at most ``AWAY_KEPT`` entries, dropping only heard ones, oldest
first (an unheard entry is never dropped). The refs set stays, so a retried entry is not added again.
"""

from __future__ import annotations

import json
import time

from core.state.keys import StateBase, away_key, away_refs_key, key, text

AWAY_WHO = ("person", "operator")
AWAY_KEPT = 200  # entries kept in the away log; only ones the agent has heard are dropped to stay under it

# KEYS: conv. ARGV: by, now. Returns 1 if the handoff started now, 0 if it was on already.
_START_HANDOFF = """
if redis.call('HGET', KEYS[1], 'handoff') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'handoff', '1', 'handoff_at', ARGV[2], 'handoff_by', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: away, away-refs, conv. ARGV: ref, entry JSON, retention seconds, entries kept. Numbers the entry (one
# past the newest entry, or past the agent's cursor when the log has gone) and drops heard entries beyond the
# cap, oldest first. Returns 1 if added, 0 if the ref was there. (An entry without a seq, from before the
# numbering, counts as 0: unheard until the first turn after it.)
_ADD_AWAY = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local function seq_of(raw)
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' then return tonumber(entry['seq']) or 0 end
  return 0
end
local heard = tonumber(redis.call('HGET', KEYS[3], 'away_heard')) or -1
local seq = math.max(heard, 0)
local last = redis.call('LINDEX', KEYS[1], -1)
if last then seq = math.max(seq, seq_of(last)) end
seq = seq + 1
local entry = cjson.decode(ARGV[2])
entry['seq'] = seq
redis.call('RPUSH', KEYS[1], cjson.encode(entry))
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[4]) do
  if seq_of(redis.call('LINDEX', KEYS[1], 0)) > heard then break end
  redis.call('LPOP', KEYS[1])
end
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
                               args=[ref, entry, self.retention_seconds, AWAY_KEPT])
        return int(added) == 1

    def away_log(self, cid: str) -> list[dict]:
        """The away log, oldest first; each entry with ``heard_by_agent`` (a turn has carried it to the agent)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(away_key(cid), 0, -1)
            pipe.hget(key("conv", cid), "away_heard")
            raws, heard = pipe.execute()
        cursor = int(text(heard)) if heard is not None else -1
        entries = [json.loads(raw) for raw in raws]
        return [{**entry, "heard_by_agent": int(entry.get("seq") or 0) <= cursor} for entry in entries]
