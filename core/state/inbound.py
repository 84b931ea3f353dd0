"""Inbound texts: deduplication, signatures, the gateway's numbers, the inbox, wake-ups and active conversations.

Keys (under ``smsgw:``)::

    seen:{MessageSid}        dedupe marker: "queued" once the text is in its inbox with a path to its answer
                             ("skipped": a sender no reply can reach)
    signature:{hash}         the MessageSid a webhook signature was first accepted with (re-cut replays)
    numbers                  set of the gateway's own numbers: every To of a signed inbound text (expires at
                             most DEDUPE_TTL_SECONDS after the last inbound text; see ``keys``)
    inbox:{cid}              list of inbound messages (JSON), oldest first; the head stays until done
    wake                     list of conversation ids that need a drain, oldest first: a worker takes each and
                             drains the conversation (``workers.wakeups``)
    active                   set of conversation ids whose inbox may hold messages (for crash recovery)

Accepting a text is one round trip: the accept script (every key declared) decides new / duplicate / replay
/ skipped. A new text joins the inbox. If a drain of the conversation is already waiting (``drain_pending``
on the conversation hash, see ``core.state.conversations``; set when a wake-up is claimed, cleared when a
drain job starts), the text joins it. Otherwise the text claims the wake-up: ``drain_pending`` is set and the
conversation id is pushed on ``wake``, in the same script. Either way the text is marked "queued" there too,
so a repeat of its ``MessageSid`` (concurrent or later) is a duplicate and never queued twice.

The web never builds an RQ job: a worker with a free job thread takes the wake-up and drains the
conversation (``workers.wakeups``; it queues an RQ drain job through RQ's public API when the thread is
the one its RQ loop holds). A wake-up taken by a worker that dies before its drain starts leaves
``drain_pending`` to grow stale with the text waiting: the workers' recovery sweep queues a drain for it
(``workers.jobs.recover_stalled``). So nothing is acknowledged without a path to its answer.
"""

from __future__ import annotations

import hashlib
import time

from core.model import InboundMessage
from core.state.keys import EXPIRY_REFRESH_SLACK, StateBase, bare_address, key, text

WAKE_KEY = key("wake")

# KEYS: seen, inbox, conv, active, signature, numbers, wake.
# ARGV: message JSON, dedupe ttl, gateway, person, received_at, messaging service sid, cid, sid,
#       bare To, bare From, skip ('1': a sender the web found unanswerable), retention seconds, now,
#       expiry refresh slack (fraction of a period).
# Returns {outcome, woke}: outcome 1 new, 0 duplicate, 3 replay (the signature belongs to another sid),
# 4 skipped; woke 1 when the text claimed the conversation's wake-up (pushed on the wake list).
#
# An expiry is written only when the key's remaining time has fallen more than the slack below its full
# period (``keep``): reads instead of writes on almost every webhook, and a key still goes at most its
# period after the last webhook (and at least period * (1 - slack) after it).
_ACCEPT = """
local function keep(name, seconds)
  local ms = math.floor(tonumber(seconds) * 1000)
  if redis.call('PTTL', name) < ms - math.floor(ms * tonumber(ARGV[14])) then
    redis.call('PEXPIRE', name, ms)
  end
end
local seen = redis.call('MGET', KEYS[5], KEYS[1])
local signed, state = seen[1], seen[2]
if signed and signed ~= ARGV[8] then return {3, 0} end
if state then return {0, 0} end
if not signed then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[2]) end
local members = redis.call('SMISMEMBER', KEYS[6], ARGV[9], ARGV[10])
if members[1] == 0 then redis.call('SADD', KEYS[6], ARGV[9]) end
keep(KEYS[6], ARGV[2])
if ARGV[11] == '1' or members[2] == 1 or ARGV[9] == ARGV[10] then
  redis.call('SET', KEYS[1], 'skipped', 'EX', ARGV[2])
  return {4, 0}
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[7])
redis.call('HSET', KEYS[3], 'gateway', ARGV[3], 'person', ARGV[4], 'last_inbound_at', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'messaging_service_sid', ARGV[6]) end
keep(KEYS[2], ARGV[12])
keep(KEYS[3], ARGV[12])
redis.call('SET', KEYS[1], 'queued', 'EX', ARGV[2])
-- A drain that is waiting and has not started yet will take this text too: no second one. Otherwise this
-- text claims the wake-up (drain_pending set, in the same command that looks) and pushes it.
if redis.call('HSETNX', KEYS[3], 'drain_pending', ARGV[13]) == 0 then return {1, 0} end
redis.call('RPUSH', KEYS[7], ARGV[7])
return {1, 1}
"""

_POP_HEAD = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) return 1 end
return 0
"""

OUTCOMES = {1: "new", 0: "duplicate", 3: "replay", 4: "skipped"}


class NotReplicated(Exception):
    """A text was accepted by the master, but fewer replicas than asked confirmed it in time (Redis ``WAIT``)."""

    def __init__(self, outcome: str, replicas: int):
        super().__init__(f"{outcome} text on {replicas} replica(s) only")
        self.outcome = outcome
        self.replicas = replicas


class Inbound(StateBase):
    """Accepting inbound texts once, the wake-ups that become drain jobs, and the inbox a drain job works through."""

    SCRIPTS = {"_accept_script": _ACCEPT, "_pop_head": _POP_HEAD}

    def accept(self, message: InboundMessage, *, signature: str = "", skip: bool = False, replicas: int = 0,
               replica_timeout_seconds: float = 1.0) -> str:
        """Record an inbound message once, in one round trip; returns "new", "duplicate", "replay" or "skipped".

        "replay": ``signature`` was first accepted with another message. "skipped": a sender no reply can
        reach (``skip``, or one of the gateway's own numbers), recorded as seen and never queued. A new text
        is in its inbox with a drain waiting for it (joined, or a wake-up pushed) when this returns.

        With ``replicas``, the accept script's writes must reach that many replicas (Redis ``WAIT``, sent on
        the script's own connection: WAIT counts the writes of its connection) within
        ``replica_timeout_seconds``, else ``NotReplicated`` is raised (the text is answered unless the master
        is lost before it replicates). Those writes alone let the text be answered after a failover: a wake-up
        or drain job lost with the old master is queued again by the workers' recovery sweep.
        """
        cid = message.conversation_id
        signed = hashlib.sha256(signature.encode()).hexdigest()[:32] if signature else f"sid-{message.sid}"
        keys = [key("seen", message.sid), key("inbox", cid), key("conv", cid), key("active"),
                key("signature", signed), key("numbers"), WAKE_KEY]
        args = [message.to_json(), self.dedupe_ttl_seconds, message.to, message.from_,
                f"{message.received_at:.3f}", message.messaging_service_sid, cid, message.sid,
                bare_address(message.to), bare_address(message.from_), "1" if skip else "0",
                self.retention_seconds, f"{time.time():.3f}", EXPIRY_REFRESH_SLACK]
        acknowledged = replicas
        if replicas:
            with self.redis.pipeline(transaction=False) as pipe:  # one connection: the script, then its WAIT
                self._accept_script(keys=keys, args=args, client=pipe)
                pipe.wait(replicas, max(1, round(replica_timeout_seconds * 1000)))
                result, acknowledged = pipe.execute()
        else:
            result = self._accept_script(keys=keys, args=args)
        outcome = OUTCOMES[int(result[0])]
        if acknowledged < replicas and outcome in ("new", "duplicate"):  # the texts that are to be answered
            raise NotReplicated(outcome, acknowledged)
        return outcome

    # -- wake-ups (turned into drain jobs by the workers) ---------------------------------------------

    def take_wakeups(self, count: int, block_seconds: float = 0) -> list[str]:
        """Take up to ``count`` waiting wake-ups (conversation ids), oldest first, waiting up to ``block_seconds``
        for the first (0: not at all). One round trip. The caller must drain each (or queue a drain job)."""
        if block_seconds <= 0:
            return [text(cid) for cid in self.redis.lpop(WAKE_KEY, count) or []]
        with self.redis.pipeline(transaction=False) as pipe:  # the LPOP runs once the BLPOP has returned
            pipe.blpop([WAKE_KEY], timeout=block_seconds)
            if count > 1:
                pipe.lpop(WAKE_KEY, count - 1)
            replies = pipe.execute()
        if not replies[0]:
            return []
        return [text(replies[0][1])] + [text(cid) for cid in (replies[1] if count > 1 else None) or []]

    def gateway_numbers(self) -> list[str]:
        """Every number that has been the To of a signed inbound text (bare, without a channel prefix)."""
        return sorted(text(n) for n in self.redis.smembers(key("numbers")))

    # -- inbox ------------------------------------------------------------------------------------

    def peek(self, cid: str) -> tuple[str, InboundMessage] | None:
        raw = self.redis.lindex(key("inbox", cid), 0)
        if raw is None:
            return None
        raw = text(raw)
        return raw, InboundMessage.from_json(raw)

    def pop(self, cid: str, raw: str) -> bool:
        """Remove the inbox head if it is still ``raw``."""
        return self._pop_head(keys=[key("inbox", cid)], args=[raw]) == 1

    def inbox_length(self, cid: str) -> int:
        return int(self.redis.llen(key("inbox", cid)))

    def inbox(self, cid: str) -> list[InboundMessage]:
        """Every waiting message of the conversation, oldest first."""
        return [InboundMessage.from_json(raw) for raw in self.redis.lrange(key("inbox", cid), 0, -1)]

    # -- active conversations (crash recovery) ------------------------------------------------------

    def active_conversations(self) -> list[str]:
        return sorted(text(c) for c in self.redis.smembers(key("active")))

    def forget_active(self, cid: str) -> None:
        self.redis.srem(key("active"), cid)
