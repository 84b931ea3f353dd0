"""Inbound texts: deduplication, signatures, the gateway's numbers, and the inbox of each conversation.

Keys (under ``smsgw:``)::

    seen:{MessageSid}        dedupe marker: "queued:{job id}" once the text is in its inbox with its drain job
                             queued ("skipped": a sender no reply can reach)
    signature:{hash}         the MessageSid a webhook signature was first accepted with (re-cut replays)
    numbers                  set of the gateway's own numbers: every To of a signed inbound text (expires at
                             most DEDUPE_TTL_SECONDS after the last inbound text; see ``keys``)
    inbox:{cid}              list of inbound messages (JSON), oldest first; the head stays until done

Accepting a text is one round trip, one Redis transaction (MULTI/EXEC): the accept script (every key
declared) decides new / duplicate / replay / skipped and stores a new text in its inbox, and the text's RQ
drain job is queued beside it through RQ's public API (``Queue.enqueue_call(..., pipeline=)``, see
``core.queues.enqueue_drain``). Both happen or neither does: a web process killed at any point leaves either
nothing (Twilio was not answered 200 and sends the text again or to its fallback URL) or the text with its
job. When the script finds the text is not new (a repeat of its ``MessageSid``, a replay, a sender no reply
can reach), the job queued with it is taken back off the queue in a second round trip (``Queue.remove``, then
``Job.delete``) unless a worker took it first; a web process killed before that, or a worker quicker than it,
leaves an extra drain job, which finds nothing to do.

Each text is one RQ job, so ``rq info``, rq-dashboard, rq-exporter and the autoscalers that read the queue see
every text waiting. Order does not come from the jobs: a drain job answers its conversation's inbox head
first, and one drain job at a time holds the conversation (``core.state.conversations``), so the jobs of a
burst make one turn and the extra ones find nothing left.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

from redis.client import Pipeline
from redis.exceptions import NoScriptError, ResponseError
from rq import Queue

from core.keywords import opt_word
from core.model import InboundMessage
from core.state.keys import EXPIRY_REFRESH_SLACK, StateBase, bare_address, key, text

# KEYS: seen, inbox, conv, signature, numbers.
# ARGV: message JSON, dedupe ttl, gateway, person, received_at, messaging service sid, cid, sid,
#       bare To, bare From, skip ('1': a sender the web found unanswerable), retention seconds,
#       expiry refresh slack (fraction of a period), the id of the drain job queued in the same transaction.
# ARGV[15]: what the text may do to the person's opt-out ('out': a STOP; 'maybe-in': an opt-in word, a START
# only from a person who is opted out (even when Twilio's OptOutType says START); '': nothing). The opt-out
# takes effect here, when the text is accepted: an operator's message or a reply not sent yet is refused from
# then on, whenever a drain reaches the STOP. The verdict goes into the stored text (its JSON's "opt", see
# ``InboundMessage.opt``), so the drain judges each text by the opt-out as it was when the text came.
# Returns the outcome: 1 new, 0 duplicate, 3 replay (the signature belongs to another sid), 4 skipped.
# The same transaction sent again (the Redis client's reconnect after the answer to the first was lost) is
# "new" again, with nothing written twice: its marker names its own job.
#
# An expiry is written only when the key's remaining time has fallen more than the slack below its full
# period (``keep``): reads instead of writes on almost every webhook, and a key still goes at most its
# period after the last webhook (and at least period * (1 - slack) after it).
_ACCEPT = """
local function keep(name, seconds)
  local ms = math.floor(tonumber(seconds) * 1000)
  if redis.call('PTTL', name) < ms - math.floor(ms * tonumber(ARGV[13])) then
    redis.call('PEXPIRE', name, ms)
  end
end
local seen = redis.call('MGET', KEYS[4], KEYS[1])
local signed, state = seen[1], seen[2]
if signed and signed ~= ARGV[8] then return 3 end
if state then
  if state == 'queued:' .. ARGV[14] then return 1 end
  return 0
end
if not signed then redis.call('SET', KEYS[4], ARGV[8], 'EX', ARGV[2]) end
local members = redis.call('SMISMEMBER', KEYS[5], ARGV[9], ARGV[10])
if members[1] == 0 then redis.call('SADD', KEYS[5], ARGV[9]) end
keep(KEYS[5], ARGV[2])
if ARGV[11] == '1' or members[2] == 1 or ARGV[9] == ARGV[10] then
  redis.call('SET', KEYS[1], 'skipped', 'EX', ARGV[2])
  return 4
end
local raw, opt = ARGV[1], ''
local opted_out = redis.call('HGET', KEYS[3], 'opted_out') == '1'
if ARGV[15] == 'out' then
  opt = 'out'
  if not opted_out then redis.call('HSET', KEYS[3], 'opted_out', '1', 'opted_out_at', ARGV[5]) end
elseif ARGV[15] == 'maybe-in' and opted_out then
  opt = 'in'
  redis.call('HDEL', KEYS[3], 'opted_out', 'opted_out_at')
elseif ARGV[15] == 'maybe-in' then
  opt = 'answer'
elseif opted_out then
  opt = 'while_out'
end
if opt ~= '' then raw = string.sub(raw, 1, -2) .. ',"opt":"' .. opt .. '"}' end
redis.call('RPUSH', KEYS[2], raw)
redis.call('HSET', KEYS[3], 'gateway', ARGV[3], 'person', ARGV[4], 'last_inbound_at', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'messaging_service_sid', ARGV[6]) end
keep(KEYS[2], ARGV[12])
keep(KEYS[3], ARGV[12])
redis.call('SET', KEYS[1], 'queued:' .. ARGV[14], 'EX', ARGV[2])
return 1
"""

OUTCOMES = {1: "new", 0: "duplicate", 3: "replay", 4: "skipped"}


class NotReplicated(Exception):
    """A text was accepted by the master, but fewer replicas than asked confirmed it in time (Redis ``WAIT``)."""

    def __init__(self, outcome: str, replicas: int):
        super().__init__(f"{outcome} text on {replicas} replica(s) only")
        self.outcome = outcome
        self.replicas = replicas


class Inbound(StateBase):
    """Accepting inbound texts once, each with its drain job, and the inbox a drain job works through."""

    SCRIPTS = {"_accept_script": _ACCEPT}

    def accept(self, message: InboundMessage, queue_job: Callable[[Pipeline, str], object], *, signature: str = "",
               skip: bool = False, replicas: int, replica_timeout_seconds: float) -> str:
        """Record an inbound message once; returns "new", "duplicate", "replay" or "skipped".

        ``queue_job(pipe, job_id)`` queues the text's drain job on ``pipe`` and returns it (an RQ ``Job``): it runs in
        the same transaction as the accept script, so a new text is in its inbox with its job queued when this
        returns. "replay": ``signature`` was first accepted with another message. "skipped": a sender no reply
        can reach (``skip``, or one of the gateway's own numbers), recorded as seen and never queued.

        With ``replicas``, the transaction's writes must reach that many replicas (Redis ``WAIT``) within
        ``replica_timeout_seconds``, else ``NotReplicated`` is raised (the text is answered unless the master
        is lost before it replicates; its job replicates with it).
        """
        cid = message.conversation_id
        signed = hashlib.sha256(signature.encode()).hexdigest()[:32] if signature else f"sid-{message.sid}"
        keys = [key("seen", message.sid), key("inbox", cid), key("conv", cid), key("signature", signed),
                key("numbers")]
        word = opt_word(message)
        opt_mode = {"STOP": "out", "START": "maybe-in"}.get(word, "")
        for attempt in (1, 2):
            job_id = uuid.uuid4().hex
            args = [message.to_json(), self.dedupe_ttl_seconds, message.to, message.from_,
                    f"{message.received_at:.3f}", message.messaging_service_sid, cid, message.sid,
                    bare_address(message.to), bare_address(message.from_), "1" if skip else "0",
                    self.retention_seconds, EXPIRY_REFRESH_SLACK, job_id, opt_mode]
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.multi()  # explicitly: RQ's enqueue on a pipeline starts one unless the caller has
                pipe.execute_command("EVALSHA", self._accept_script.script.sha, len(keys), *keys, *args)
                job = queue_job(pipe, job_id)
                reply = pipe.execute(raise_on_error=False)[0]
            if isinstance(reply, Exception):
                self._take_back(job)  # queued without its text
                if attempt == 1 and isinstance(reply, NoScriptError):  # Redis restarted (or flushed its scripts)
                    self.redis.script_load(_ACCEPT)
                    continue
                raise reply if isinstance(reply, ResponseError) else ResponseError(str(reply))
            break
        outcome = OUTCOMES[int(reply)]
        if outcome != "new":
            self._take_back(job)  # nothing new to answer
        if replicas and outcome in ("new", "duplicate"):  # the texts that are to be answered
            acknowledged = self._wait_for_replicas(key("seen", message.sid), replicas, replica_timeout_seconds)
            if acknowledged < replicas:
                raise NotReplicated(outcome, acknowledged)
        return outcome

    def _take_back(self, job) -> None:
        """Take a job queued for nothing back off its queue, unless a worker has taken it already (it then runs,
        finds nothing of its own, and keeps its retries should it meet a text that came meanwhile)."""
        if Queue(job.origin, connection=self.redis).remove(job.id):
            job.delete(remove_from_queue=False)

    def _wait_for_replicas(self, seen_key: str, replicas: int, timeout_seconds: float) -> int:
        """How many replicas hold the text (waiting up to ``timeout_seconds``).

        WAIT counts the writes of its own connection, and a WAIT inside MULTI does not wait: a write made on
        one connection after the transaction (the dedupe marker's expiry set again) is acknowledged by a
        replica only once the replica has everything written before it, the transaction included.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.pexpire(seen_key, self.dedupe_ttl_seconds * 1000)
            pipe.wait(replicas, max(1, round(timeout_seconds * 1000)))
            return int(pipe.execute()[1])

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

    def inbox_length(self, cid: str) -> int:
        return int(self.redis.llen(key("inbox", cid)))

    def inbox(self, cid: str) -> list[InboundMessage]:
        """Every waiting message of the conversation, oldest first."""
        return [InboundMessage.from_json(raw) for raw in self.redis.lrange(key("inbox", cid), 0, -1)]
