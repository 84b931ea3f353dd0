"""What was done for each inbound message: its progress and decisions, the SMS sent, their statuses, dead letters.

Keys (under ``smsgw:``)::

    msg:{MessageSid}         hash: progress of one inbound message: reply (JSON parts), turn_chat_id, attempts,
                             decision:{name}, part:{part} (a Twilio sid, sending:<ts>, uncertain:<ts>, failed:<code>,
                             withheld:opted_out);
                             for the first text of an agent turn also its record: turn_sids (JSON: every text
                             of the turn, in order), turn_text (exactly what is posted), turn_at
    turns:{cid}              list (newest first, capped) of the conversation's latest turns: JSON {sids, at}
    sent:{twilio sid}        hash: one outbound SMS (conversation_id, inbound_sid, ...) and its delivery status
    recent:{cid}             list of the conversation's latest outbound SMS sids
    dead:{MessageSid}        an inbound message that was given up, kept for a replay
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from redis.client import Pipeline

from core.model import InboundMessage
from core.state.conversations import WAITING_READ
from core.state.counters import IDLE_DUE_KEY
from core.state.keys import StateBase, away_key, key, text, text_hash

RECENT_SENT_KEPT = 20
TURNS_KEPT = 20  # turns listed in the conversation view

# Fix an agent turn before it is posted (KEYS[1]: the progress hash of its first text; KEYS[2]: the
# conversation's turns log; KEYS[3]: its away log; KEYS[4]: its hash): which texts, and the exact text, unless an
# earlier attempt fixed them already (then those stand). What was said while the agent was away and it has not
# heard yet (away log entries, JSON {seq, who, text, ...}, whose seq is above the hash's away_heard) becomes a
# marked preface of the text, and away_heard moves to the newest of them in the same step: the entries stay in
# the log (the conversation view shows them), a retry re-sends the fixed text, and an entry added after this
# step waits for the next turn. Marks the turn started in chat ARGV[1]; when that chat was just created (ARGV[12]:
# its agent id, else ''), it becomes the conversation's chat in the same step (KEYS[5]: the conversation's chats
# set, see ``Conversations.set_chat``; ARGV[6] is also the conversation keys' retention). Returns {fresh, text}.
_FIX_TURN = """
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[4], 'chat_id', ARGV[1], 'agent_id', ARGV[12], 'chat_started_at', ARGV[4])
  redis.call('SADD', KEYS[5], ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  redis.call('EXPIRE', KEYS[5], ARGV[6])
end
local stored = redis.call('HGET', KEYS[1], 'turn_text')
local fresh = 0
if not stored then
  local function decoded(raw)
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' then return entry end
    return {}
  end
  local heard = tonumber(redis.call('HGET', KEYS[4], 'away_heard')) or -1
  local preface, count = '', 0
  local last = redis.call('LINDEX', KEYS[3], -1)
  if last and (tonumber(decoded(last)['seq']) or 0) > heard then
    local lines, newest = {ARGV[8]}, heard
    for _, raw in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
      local entry = decoded(raw)
      local seq = tonumber(entry['seq']) or 0
      if seq > heard and type(entry['text']) == 'string' then
        local label = ARGV[10]
        if entry['who'] == 'operator' then label = ARGV[11] end
        table.insert(lines, label .. entry['text'])
        count = count + 1
        if seq > newest then newest = seq end
      end
    end
    if count > 0 then
      table.insert(lines, ARGV[9])
      preface = table.concat(lines, '\\n') .. '\\n'
      redis.call('HSET', KEYS[4], 'away_heard', newest)
    end
  end
  stored = preface .. ARGV[3]
  redis.call('HSET', KEYS[1], 'turn_text', stored, 'turn_sids', ARGV[2], 'turn_at', ARGV[4], 'turn_away', count)
  redis.call('LPUSH', KEYS[2], cjson.encode({sids = cjson.decode(ARGV[2]), at = tonumber(ARGV[4]),
                                             away = count}))
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  fresh = 1
end
redis.call('HSET', KEYS[1], 'turn_chat_id', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {fresh, stored}
"""

# Every MessageStatus Twilio documents for a message (Message resource, "Message Status values"): accepted,
# scheduled, canceled, queued, sending, sent, failed, delivered, undelivered, receiving, received, read and
# partially_delivered (some parts of a multi-part message delivered; final, like delivered). An unknown one ranks
# as "sending": it never moves a final status back.
STATUS_RANK = {"accepted": 0, "scheduled": 0, "queued": 0, "sending": 1, "sent": 2, "receiving": 2, "received": 2,
               "delivered": 3, "partially_delivered": 3, "undelivered": 3, "failed": 3, "canceled": 3, "read": 4}

# Record an agent turn's reply (KEYS[1]: the progress hash of its first text), claim its part ARGV[2] with
# ARGV[3] unless claimed, and read the conversation's opt-out and handoff flags (KEYS[2]: its hash) and the texts
# now waiting (KEYS[3]: its inbox, the first ARGV[5]). Returns {claimed (1/0), opted_out or nil, handoff or nil,
# waiting}.
_RECORD_TURN_REPLY = """
redis.call('HSET', KEYS[1], 'reply', ARGV[1])
local claimed = redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local flags = redis.call('HMGET', KEYS[2], 'opted_out', 'handoff')
return {claimed, flags[1], flags[2], redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[5]) - 1)}
"""

# Claim part ARGV[1] of a message (KEYS[1]: its progress hash) with ARGV[2] (expiry ARGV[3]): unless claimed
# already, or at once when ARGV[4] is '1' (sending again a part that was not found at Twilio). With KEYS[2] (the
# conversation's hash: the part is the agent's reply) the claim first reads whether the person opted out or an
# operator took over: the part is then settled as withheld instead (a reply is never sent after either, whenever
# the agent wrote it). Returns 1 when claimed, else 0.
_CLAIM_PART = """
if #KEYS == 2 then
  local flags = redis.call('HMGET', KEYS[2], 'opted_out', 'handoff')
  local reason = false
  if flags[1] == '1' then reason = 'opted_out' elseif flags[2] == '1' then reason = 'handoff' end
  if reason and (ARGV[4] == '1' or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0) then
    redis.call('HSET', KEYS[1], ARGV[1], 'withheld:' .. reason)
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    return 0
  end
end
local claimed = 1
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  claimed = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return claimed
"""

# Record one outbound SMS ARGV[5] (KEYS[1]: its hash, fields ARGV[10..]; KEYS[2]: the conversation's recent list,
# kept to ARGV[4]; KEYS[3]: the conversation's hash, last_outbound_at ARGV[1]); settle the inbound text's part
# ARGV[6] as sent (KEYS[4]: its progress hash; '': none); and, when ARGV[7] is not '', note the activity at
# ARGV[7] with the conversation ARGV[9]'s idle check due at ARGV[8] (KEYS[6]: the idle checks; KEYS[5]: its chats
# set, kept with the conversation). ARGV[2]: the per-message records' expiry, ARGV[3]: the conversation's.
_RECORD_SENT = """
local fields = {}
for index = 10, #ARGV do fields[#fields + 1] = ARGV[index] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[5])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
redis.call('HSET', KEYS[3], 'last_outbound_at', ARGV[1])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], 'last_activity_at', ARGV[7])
  redis.call('ZADD', KEYS[6], ARGV[8], ARGV[9])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
"""

_RECORD_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local current = redis.call('HGET', KEYS[1], 'status_rank')
if (not current) or tonumber(current) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'status_rank', ARGV[2], 'status_at', ARGV[3])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error_code', ARGV[4]) end
end
return redis.call('HGET', KEYS[1], 'conversation_id')
"""


WITHHELD_PREFIX = "withheld:"
WITHHELD = "withheld:opted_out"  # a reply part never sent: the person opted out before it went
WITHHELD_HANDOFF = "withheld:handoff"  # a reply part never sent: an operator took the conversation over first


class RecordedReply(NamedTuple):
    """What ``record_turn_reply`` found in the step that recorded the reply."""

    claimed_at: float | None  # the claim's time when the part was claimed now, else None
    opted_out: bool  # the conversation's opt-out flag
    handoff: bool  # the conversation's handoff flag (an operator has taken over)
    waiting: list[tuple[str, InboundMessage]]  # the texts in the inbox (the turn's own first), oldest first


class AwayPreface(NamedTuple):
    """How the away log is marked in front of the next turn's text (one entry a line)."""

    header: str
    footer: str
    person: str  # before each thing the person said
    operator: str  # before each thing the business's operator said


DEFAULT_AWAY_PREFACE = AwayPreface(
    header="[While you were away, a person from the business took part in this conversation:]",
    footer="[End of that part. The customer's new message follows:]",
    person="Customer: ", operator="Business: ")


@dataclass(frozen=True)
class Progress:
    """What has been done for one inbound message so far."""

    reply_parts: list[str] | None
    turn_chat_id: str | None
    attempts: int
    parts: dict[str, str]
    decisions: dict[str, bool] = field(default_factory=dict)  # yes/no taken for the message, by name
    turn_sids: tuple[str, ...] | None = None  # the texts of the turn this message starts, once it is fixed
    turn_text: str | None = None  # exactly what that turn posts (or posted) to the agent


def _progress(data: dict[str, str]) -> Progress:
    reply = data.get("reply")
    sids = data.get("turn_sids")
    return Progress(
        reply_parts=json.loads(reply) if reply is not None else None,
        turn_chat_id=data.get("turn_chat_id"),
        attempts=int(data.get("attempts", 0)),
        parts={k[5:]: v for k, v in data.items() if k.startswith("part:")},
        decisions={k[9:]: v == "1" for k, v in data.items() if k.startswith("decision:")},
        turn_sids=tuple(json.loads(sids)) if sids is not None else None,
        turn_text=data.get("turn_text"),
    )


class Deliveries(StateBase):
    """Per-message progress, the sent log and dead letters."""

    SCRIPTS = {"_record_status": _RECORD_STATUS, "_fix_turn": _FIX_TURN, "_record_turn_reply": _RECORD_TURN_REPLY,
               "_record_sent": _RECORD_SENT, "_claim_part": _CLAIM_PART}

    # -- progress of one inbound message ----------------------------------------------------------

    def progress(self, message_sid: str) -> Progress:
        return _progress(text_hash(self.redis.hgetall(key("msg", message_sid))))

    def progresses(self, message_sids: list[str]) -> list[Progress]:
        """The progress of several messages, read in one round trip."""
        if not message_sids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for sid in message_sids:
                pipe.hgetall(key("msg", sid))
            return [_progress(text_hash(raw)) for raw in pipe.execute()]

    def _set_progress(self, message_sid: str, mapping: dict[str, str], pipe: Pipeline | None = None) -> None:
        name = key("msg", message_sid)
        target = pipe if pipe is not None else self.redis.pipeline()
        target.hset(name, mapping=mapping)
        target.expire(name, self.progress_ttl_seconds)
        if pipe is None:
            target.execute()

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

    def fix_turn(self, cid: str, sids: list[str], content: str, chat_id: str, *, new_chat_agent: str | None = None,
                 away_preface: AwayPreface = DEFAULT_AWAY_PREFACE) -> tuple[bool, str]:
        """Fix the agent turn of ``sids`` (its first text keys it) as ``content`` and mark it started in ``chat_id``.

        One step, before the turn is posted: a retry finds the same texts and the same words (to read the
        turn back by), never a second turn. What the person and an operator said while the agent was away and it
        has not heard yet (the away log) goes in front of ``content`` as ``away_preface`` marks it, and is marked
        heard in the same step (it stays in the log, for the conversation view).
        An already fixed turn stays as it was. ``new_chat_agent``: ``chat_id`` was just created for this agent; it
        becomes the conversation's chat in the same step (what ``set_chat`` does, one round trip less).
        Returns (fixed now, its text).
        """
        fresh, stored = self._fix_turn(
            keys=[key("msg", sids[0]), key("turns", cid), away_key(cid), key("conv", cid), key("chats", cid)],
            args=[chat_id, json.dumps(sids), content, f"{time.time():.3f}", self.progress_ttl_seconds,
                  self.retention_seconds, TURNS_KEPT, *away_preface, new_chat_agent or ""])
        return int(fresh) == 1, text(stored)

    def recent_turns(self, cid: str) -> list[dict[str, Any]]:
        """The conversation's latest agent turns, newest first: {"sids": [...], "at": epoch seconds}."""
        return [json.loads(raw) for raw in self.redis.lrange(key("turns", cid), 0, -1)]

    def record_reply(self, message_sid: str, parts: list[str]) -> None:
        """Record the reply's parts (to send each once, whatever the retries)."""
        self._set_progress(message_sid, {"reply": json.dumps(parts, ensure_ascii=False)})

    def record_turn_reply(self, message_sid: str, cid: str, parts: list[str], *, claim: str,
                          claimed_at: float) -> RecordedReply:
        """Record an agent turn's reply, claim its part ``claim`` (see ``claim_part``) and read whether the person
        opted out or an operator took over meanwhile (the conversation's flags, and the texts now waiting), all in
        one step.

        A STOP that arrived while the agent answered waits in the inbox behind the turn's texts: the caller
        withholds the reply (``withhold_parts``) instead of sending it after the person's STOP.
        """
        claimed, opted_out, handoff, waiting = self._record_turn_reply(
            keys=[key("msg", message_sid), key("conv", cid), key("inbox", cid)],
            args=[json.dumps(parts, ensure_ascii=False), f"part:{claim}", f"sending:{claimed_at:.3f}",
                  self.progress_ttl_seconds, WAITING_READ])
        return RecordedReply(claimed_at=claimed_at if claimed else None, opted_out=text(opted_out) == "1",
                             handoff=text(handoff) == "1",
                             waiting=[(raw, InboundMessage.from_json(raw)) for raw in map(text, waiting)])

    def withhold_parts(self, message_sid: str, parts: list[str], reason: str = WITHHELD) -> None:
        """Settle the parts as never to be sent (``reason``: ``WITHHELD`` when the person opted out before they
        went, ``WITHHELD_HANDOFF`` when an operator took over)."""
        self._set_progress(message_sid, {f"part:{part}": reason for part in parts})

    def count_attempt(self, message_sid: str) -> int:
        name = key("msg", message_sid)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(name, "attempts", 1)
            pipe.expire(name, self.progress_ttl_seconds)
            return int(pipe.execute()[0])

    def claim_part(self, message_sid: str, part: str, claimed_at: float | None = None, *,
                   reply_of: str | None = None, again: bool = False) -> bool:
        """Claim the right to send one part (``sending:<claimed_at>``); False if it was sent (or attempted) already.

        ``reply_of``: the part is the agent's reply in that conversation: it is withheld instead (False, the part
        settled ``withheld:opted_out`` or ``withheld:handoff``) when the person has opted out or an operator has
        taken over. ``again``: claim it even though an earlier attempt did (it was not found at Twilio).
        """
        keys = [key("msg", message_sid)] + ([key("conv", reply_of)] if reply_of else [])
        stamp = f"sending:{time.time() if claimed_at is None else claimed_at:.3f}"
        return int(self._claim_part(keys=keys, args=[f"part:{part}", stamp, self.progress_ttl_seconds,
                                                     "1" if again else "0"])) == 1

    def release_part(self, message_sid: str, part: str) -> None:
        """Give a claim back after a failure that certainly sent nothing."""
        self.redis.hdel(key("msg", message_sid), f"part:{part}")

    def settle_part(self, message_sid: str, part: str, outcome: str) -> None:
        """Record a claimed part's state: a Twilio sid, ``sending:<ts>``, ``uncertain:<ts>``, ``failed:<code>``
        (or ``withheld:opted_out``, see ``withhold_parts``)."""
        self._set_progress(message_sid, {f"part:{part}": outcome})

    # -- outbound messages ------------------------------------------------------------------------

    def record_sent(self, cid: str, twilio_sid: str, *, settles: tuple[str, str] | None = None,
                    activity: Callable[[], tuple[float, float]] | None = None, **fields: Any) -> None:
        """Record one outbound SMS, in one step: ``settles`` = (message sid, part) also settles that part, and
        ``activity`` (called for it) gives the conversation's activity time and its idle check's due time."""
        mapping = {"conversation_id": cid, "sent_at": f"{time.time():.3f}",
                   **{k: str(v) for k, v in fields.items() if v is not None}}
        mapping["status_rank"] = str(STATUS_RANK.get(mapping.get("status", "queued"), 0))
        active_at, idle_due_at = activity() if activity is not None else ("", "")
        self._record_sent(
            keys=[key("sent", twilio_sid), key("recent", cid), key("conv", cid),
                  key("msg", settles[0] if settles else twilio_sid), key("chats", cid), IDLE_DUE_KEY],
            args=[f"{time.time():.3f}", self.progress_ttl_seconds, self.retention_seconds, RECENT_SENT_KEPT,
                  twilio_sid, f"part:{settles[1]}" if settles else "", active_at and f"{active_at:.3f}",
                  idle_due_at, cid, *(item for pair in mapping.items() for item in pair)])

    def record_status(self, twilio_sid: str, status: str, error_code: str = "") -> tuple[str | None, bool]:
        """Record a delivery status callback; returns (the conversation id, or None for a sid we never sent;
        whether it opted the person out just now).

        Statuses only move forward (a late ``sent`` does not overwrite ``delivered``); error 21610 (the
        person replied STOP) marks the conversation opted out.
        """
        rank = STATUS_RANK.get(status.lower(), 1)
        result = self._record_status(keys=[key("sent", twilio_sid)],
                                     args=[status, rank, f"{time.time():.3f}", error_code])
        cid = text(result)
        opted_out = bool(cid) and error_code == "21610" and self.set_opted_out(cid, True)
        return cid, opted_out

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
                pipe.hdel(key("msg", sid), "attempts")
                pipe.delete(key("dead", sid))
                pipe.execute()
            cids.append(cid)
        return cids
