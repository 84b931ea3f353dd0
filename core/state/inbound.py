"""Inbound texts: deduplication, signatures, the gateway's numbers, the inbox and the set of active conversations.

Keys (under ``smsgw:``)::

    seen:{MessageSid}        dedupe marker: "pending:{time}" while its drain job is being queued, then "queued"
                             ("skipped": a sender no reply can reach)
    signature:{hash}         the MessageSid a webhook signature was first accepted with (re-cut replays)
    numbers                  set of the gateway's own numbers: every To of a signed inbound text (expires at
                             most DEDUPE_TTL_SECONDS after the last inbound text; see ``keys``)
    inbox:{cid}              list of inbound messages (JSON), oldest first; the head stays until done
    active                   set of conversation ids whose inbox may hold messages (for crash recovery)

Accepting a text takes one round trip, plus one more when the conversation needs a drain job:

1. The accept script (every key declared) decides new / duplicate / replay / skipped. A new text joins the
   inbox; if a drain job of the conversation is already waiting (``drain_pending`` on the conversation hash,
   see ``core.state.conversations``), the text joins it and is marked "queued" at once. Otherwise the script
   claims the wake-up (sets ``drain_pending``, so texts arriving meanwhile join it too) and marks the text
   "pending" with the time of the claim.
2. One MULTI transaction queues the drain job through RQ's public API (``Queue.enqueue_call(...,
   pipeline=pipe)``) and marks the text "queued". Of concurrent identical webhooks one holds the claim; the
   others find it fresh (younger than ``PENDING_CLAIM_SECONDS``) and report a duplicate.

If the web dies (or Redis fails) between the two, the text is in the inbox and still "pending": Twilio's
retry of that sid, once the claim is stale (a failed queueing gives its claim up at once when Redis still
answers), queues the job instead of being dropped as a duplicate, and the workers' recovery sweep
queues a drain for a conversation whose ``drain_pending`` claim grew stale with messages waiting
(``workers.jobs.recover_stalled``). So nothing is acknowledged without a path to its answer, and no repeat
is queued twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable

from redis.client import Pipeline
from redis.exceptions import RedisError

from core.model import InboundMessage
from core.state.keys import EXPIRY_REFRESH_SLACK, StateBase, bare_address, key, text

# KEYS: seen, inbox, conv, active, signature, numbers.
# ARGV: message JSON, dedupe ttl, gateway, person, received_at, messaging service sid, cid, sid,
#       bare To, bare From, skip ('1': a sender the web found unanswerable), retention seconds, now,
#       seconds a "pending" claim is left to its holder, expiry refresh slack (fraction of a period).
# Returns {outcome, needs_job}: outcome 1 new, 0 duplicate, 3 replay (the signature belongs to another
# sid), 4 skipped; needs_job 1 when the caller must queue a drain job (the text is "pending").
#
# An expiry is written only when the key's remaining time has fallen more than the slack below its full
# period (``keep``): reads instead of writes on almost every webhook, and a key still goes at most its
# period after the last webhook (and at least period * (1 - slack) after it).
_ACCEPT = """
local function keep(name, seconds)
  local ms = math.floor(tonumber(seconds) * 1000)
  if redis.call('PTTL', name) < ms - math.floor(ms * tonumber(ARGV[15])) then
    redis.call('PEXPIRE', name, ms)
  end
end
local seen = redis.call('MGET', KEYS[5], KEYS[1])
local signed, state = seen[1], seen[2]
if signed and signed ~= ARGV[8] then return {3, 0} end
if state == 'queued' or state == 'skipped' then return {0, 0} end
if not signed then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[2]) end
if state and string.sub(state, 1, 7) == 'pending' then
  -- Another delivery of this webhook is queueing its job right now: a duplicate.
  if tonumber(ARGV[13]) - (tonumber(string.sub(state, 9)) or 0) < tonumber(ARGV[14]) then return {0, 0} end
  -- Accepted before, but its job was never confirmed queued (the web died, or Redis failed): queue it now.
  redis.call('SET', KEYS[1], 'pending:' .. ARGV[13], 'KEEPTTL')
  return {1, 1}
end
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
-- A drain job that is queued and has not started yet will take this text too: no second job. Otherwise
-- this text claims the wake-up (drain_pending set, in the same command that looks).
if redis.call('HSETNX', KEYS[3], 'drain_pending', ARGV[13]) == 0 then
  redis.call('SET', KEYS[1], 'queued', 'EX', ARGV[2])
  return {1, 0}
end
redis.call('SET', KEYS[1], 'pending:' .. ARGV[13], 'EX', ARGV[2])
return {1, 1}
"""

_POP_HEAD = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) return 1 end
return 0
"""

OUTCOMES = {1: "new", 0: "duplicate", 3: "replay", 4: "skipped"}
# How long a "pending" text is left to the delivery that claimed it (queueing takes milliseconds); past that, a
# retry of the webhook takes the claim over and queues the job.
PENDING_CLAIM_SECONDS = 5.0


class NotReplicated(Exception):
    """A text was accepted by the master, but fewer replicas than asked confirmed it in time (Redis ``WAIT``)."""

    def __init__(self, outcome: str, replicas: int):
        super().__init__(f"{outcome} text on {replicas} replica(s) only")
        self.outcome = outcome
        self.replicas = replicas


class Inbound(StateBase):
    """Accepting inbound texts once, and the inbox a drain job works through."""

    SCRIPTS = {"_accept_script": _ACCEPT, "_pop_head": _POP_HEAD}

    def accept(self, message: InboundMessage, *, enqueue: Callable[[Pipeline], object], signature: str = "",
               skip: bool = False, replicas: int = 0, replica_timeout_seconds: float = 1.0) -> str:
        """Record an inbound message once; returns "new", "duplicate", "replay" or "skipped".

        "replay": ``signature`` was first accepted with another message. "skipped": a sender no reply can
        reach (``skip``, or one of the gateway's own numbers), recorded as seen and never queued.
        ``enqueue(pipeline)`` queues the conversation's drain job on a MULTI pipeline (RQ's public API with
        ``pipeline=``); it is called only when the conversation needs one. It may raise (Redis failed): the
        text stays "pending" and a retry of the same sid queues it.

        With ``replicas``, the accept script's writes must reach that many replicas (Redis ``WAIT``, sent on
        the script's own connection: WAIT counts the writes of its connection) within
        ``replica_timeout_seconds``, else ``NotReplicated`` is raised once the text is fully accepted (it is
        answered unless the master is lost before it replicates). Those writes alone let the text be answered
        after a failover: a drain job lost with the old master is queued again by the workers' recovery sweep.
        """
        cid = message.conversation_id
        signed = hashlib.sha256(signature.encode()).hexdigest()[:32] if signature else f"sid-{message.sid}"
        seen = key("seen", message.sid)
        keys = [seen, key("inbox", cid), key("conv", cid), key("active"), key("signature", signed), key("numbers")]
        args = [message.to_json(), self.dedupe_ttl_seconds, message.to, message.from_,
                f"{message.received_at:.3f}", message.messaging_service_sid, cid, message.sid,
                bare_address(message.to), bare_address(message.from_), "1" if skip else "0",
                self.retention_seconds, f"{time.time():.3f}", PENDING_CLAIM_SECONDS, EXPIRY_REFRESH_SLACK]
        acknowledged = replicas
        if replicas:
            with self.redis.pipeline(transaction=False) as pipe:  # one connection: the script, then its WAIT
                self._accept_script(keys=keys, args=args, client=pipe)
                pipe.wait(replicas, max(1, round(replica_timeout_seconds * 1000)))
                result, acknowledged = pipe.execute()
        else:
            result = self._accept_script(keys=keys, args=args)
        code, needs_job = (int(v) for v in result)
        outcome = OUTCOMES[code]
        if needs_job:
            self._queue_pending(seen, enqueue)
        if acknowledged < replicas and outcome in ("new", "duplicate"):  # the texts that are to be answered
            raise NotReplicated(outcome, acknowledged)
        return outcome

    def _queue_pending(self, seen: str, enqueue: Callable[[Pipeline], object]) -> None:
        """Queue the drain job of a text this delivery holds the "pending" claim of, and mark it "queued"."""
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                enqueue(pipe)
                pipe.set(seen, "queued", keepttl=True)
                pipe.execute()
        except RedisError:
            # Give the claim up if Redis still answers, so Twilio's retry queues the job at once.
            with contextlib.suppress(RedisError):
                self.redis.set(seen, "pending:0", xx=True, keepttl=True)
            raise

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
