"""Campaigns in Redis: the campaign, its numbers in order, each recipient's outcome, its counts, its Idempotency-Key.

Keys (under ``smsgw:``)::

    campaign:{id}            hash: status (scheduled, sending, done, cancelled), created_at, send_at, gateway,
                             messaging_service_sid, message, agent_id, include_in_conversation, accepted, batches,
                             batch_size, answer (JSON: the 202 answer, for a retried request) and the counts
                             queued, sent, delivered, failed, skipped, replied
    campaign-numbers:{id}    list: the accepted numbers, in the request's order (batch i is one LRANGE)
    campaign-vars:{id}       hash: number -> JSON of its dynamic variables (only numbers that have some)
    campaign-outcome:{id}    hash: number -> sent, delivered, failed, skipped:<reason> or cancelled (absent: queued)
    campaign-replied:{id}    set: the numbers that have answered
    campaign-chained:{id}    set: the batches whose successor batch job is queued (each is queued once)
    campaign-reply:{cid}     "{campaign id} {number}": the campaign whose SMS started the conversation (replies)
    campaigns                sorted set: campaign ids by creation time (the list view)
    campaign-idem:{sha256}   JSON: fingerprint and campaign id of the request first sent with an Idempotency-Key

Counts move only with an outcome, in one script each: a recipient leaves ``queued`` once, whatever the retries.
``sent`` counts the SMS Twilio accepted; ``delivered`` and ``failed`` (after sending) come from Twilio's status
callbacks; ``failed`` also counts the messages Twilio refused outright. Every key holding a number expires
DATA_RETENTION_DAYS after the campaign's send time (outcomes: after the latest).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.client import Pipeline
from redis.exceptions import WatchError

from core.state.keys import StateBase, key, text, text_hash

MAX_NUMBERS = 10_000  # numbers in one campaign request (the admin API's contract); a longer list is several campaigns
COUNTS = ("queued", "sent", "delivered", "failed", "skipped", "replied")
ACTIVE = ("scheduled", "sending")
CHAIN_ATTEMPTS = 20
ERASED = "erased:"  # what stands in an erased number's place (its position follows)

# Settle a queued recipient ARGV[1] (KEYS[2]: outcomes) as ARGV[2] (KEYS[1]: the campaign), counting it under
# ARGV[3]; the campaign is done when nothing is left queued. Returns 1 if it was queued (counted now), else 0.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[5])
local queued = redis.call('HINCRBY', KEYS[1], 'queued', -1)
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
local status = redis.call('HGET', KEYS[1], 'status')
if queued <= 0 and (status == 'sending' or status == 'scheduled') then
  redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[4])
end
return 1
"""

# A sent recipient's final delivery status (ARGV[2]: delivered or failed), counted once.
_DELIVERY = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= 'sent' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return 1
"""

# A texted recipient (KEYS[2]: outcomes) answered: counted once (KEYS[3]: the replied set).
_REPLIED = """
local outcome = redis.call('HGET', KEYS[2], ARGV[1])
if outcome ~= 'sent' and outcome ~= 'delivered' and outcome ~= 'failed' then return 0 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'replied', 1)
return 1
"""

# Erase number ARGV[1] from one campaign (KEYS[1]: its hash, KEYS[2]: numbers, KEYS[3]: outcomes, KEYS[4]: variables,
# KEYS[5]: replied): its place in the list keeps a placeholder (ARGV[2] .. its position: the other numbers' places, and
# so their operation ids, stay), a number still queued is counted skipped, and the stored answer's skipped list
# loses it. Returns 1 if the campaign held it.
_FORGET = """
local pos = redis.call('LPOS', KEYS[2], ARGV[1])
local answer = redis.call('HGET', KEYS[1], 'answer')
local held = 0
if answer then
  local decoded = cjson.decode(answer)
  for _, row in ipairs(decoded['skipped'] or {}) do
    if row['number'] == ARGV[1] then row['number'] = ARGV[2] held = 1 end
  end
  if held == 1 then redis.call('HSET', KEYS[1], 'answer', cjson.encode(decoded)) end
end
if not pos then return held end
local placeholder = ARGV[2] .. pos
redis.call('LSET', KEYS[2], pos, placeholder)
local outcome = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
if outcome then
  redis.call('HSET', KEYS[3], placeholder, outcome)
else
  redis.call('HSET', KEYS[3], placeholder, 'skipped:erased')
  local queued = redis.call('HINCRBY', KEYS[1], 'queued', -1)
  redis.call('HINCRBY', KEYS[1], 'skipped', 1)
  local status = redis.call('HGET', KEYS[1], 'status')
  if queued <= 0 and (status == 'sending' or status == 'scheduled') then
    redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[3])
  end
end
return 1
"""

_START_SENDING = """
if redis.call('HGET', KEYS[1], 'status') == 'scheduled' then redis.call('HSET', KEYS[1], 'status', 'sending') end
return redis.call('HGET', KEYS[1], 'status')
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'scheduled' or status == 'sending' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_at', ARGV[1])
  return 'cancelled'
end
return status
"""


def operation_id(campaign_id: str, position: int) -> str:
    """The outbound start (``workers.admin_ops``) of the recipient at ``position``: one per campaign and number."""
    return f"campaign-{campaign_id}-{position}"


def recipient_of(op_id: str) -> tuple[str, int] | None:
    """(campaign id, position) of an operation id made by ``operation_id``, else None."""
    prefix, _, rest = op_id.partition("-")
    campaign_id, _, position = rest.rpartition("-")
    if prefix != "campaign" or not campaign_id or not position.isdigit():
        return None
    return campaign_id, int(position)


# Twilio's final statuses of a sent message, as a campaign counts them.
DELIVERED_STATUSES = ("delivered", "read", "partially_delivered")
FAILED_STATUSES = ("failed", "undelivered")


def campaign_key(campaign_id: str) -> str:
    return key("campaign", campaign_id)


REPLY_DUE = "campaign_reply_due"  # a field of the conversation's hash: its next text is a reply to count


def reply_key(cid: str) -> str:
    """Which campaign started the conversation ``cid`` (its replies count for that campaign)."""
    return key("campaign-reply", cid)


class CampaignStore(StateBase):
    """Campaign state; built over the same connection as the conversation store."""

    SCRIPTS = {"_forget": _FORGET, "_settle": _SETTLE, "_delivery": _DELIVERY, "_replied": _REPLIED,
               "_start_sending": _START_SENDING, "_cancel": _CANCEL}

    # -- creation -----------------------------------------------------------------------------------

    @staticmethod
    def idempotency_key(idempotency_key: str) -> str:
        return key("campaign-idem", hashlib.sha256(idempotency_key.encode()).hexdigest())

    def idempotency_record(self, name: str) -> dict[str, Any] | None:
        raw = self.redis.get(name)
        return json.loads(raw) if raw is not None else None

    def create(self, campaign_id: str, fields: dict[str, str], numbers: list[str], variables: dict[str, str],
               *, ttl_seconds: int, idempotency: tuple[str, dict[str, Any], int] | None,
               enqueue: Callable[[Pipeline], object]) -> bool:
        """Store the campaign, its numbers and its first jobs (``enqueue(pipeline)``) in one transaction.

        With ``idempotency`` (the key's name, its record, how long it is kept) the transaction also writes the
        record, and fails (False, nothing written) if another request wrote it meanwhile.
        """
        with self.redis.pipeline() as pipe:
            try:
                if idempotency is not None:
                    pipe.watch(idempotency[0])
                    if pipe.exists(idempotency[0]):
                        return False
                pipe.multi()
                if idempotency is not None:
                    pipe.set(idempotency[0], json.dumps(idempotency[1]), ex=idempotency[2])
                name = campaign_key(campaign_id)
                pipe.hset(name, mapping={**{count: 0 for count in COUNTS}, "queued": len(numbers), **fields})
                for start in range(0, len(numbers), 1000):
                    pipe.rpush(key("campaign-numbers", campaign_id), *numbers[start:start + 1000])
                if variables:
                    pipe.hset(key("campaign-vars", campaign_id), mapping=variables)
                pipe.zadd(key("campaigns"), {campaign_id: float(fields["created_at"])})
                for part in ("campaign", "campaign-numbers", "campaign-vars"):
                    pipe.expire(key(part, campaign_id), ttl_seconds)
                enqueue(pipe)
                pipe.execute()
                return True
            except WatchError:
                return False

    # -- reading ------------------------------------------------------------------------------------

    def campaign(self, campaign_id: str) -> dict[str, str]:
        return text_hash(self.redis.hgetall(campaign_key(campaign_id)))

    def status(self, campaign_id: str) -> str | None:
        return text(self.redis.hget(campaign_key(campaign_id), "status"))

    def campaign_ids(self, offset: int, limit: int) -> list[str]:
        """Campaign ids, newest first (ids of expired campaigns are dropped from the index as they are met)."""
        return [text(found) for found in self.redis.zrevrange(key("campaigns"), offset, offset + limit - 1)]

    def forget_expired(self, campaign_ids: Iterable[str]) -> None:
        if ids := list(campaign_ids):
            self.redis.zrem(key("campaigns"), *ids)

    def numbers(self, campaign_id: str, start: int, stop: int) -> list[str]:
        """The accepted numbers from position ``start`` to ``stop`` (inclusive)."""
        return [text(found) for found in self.redis.lrange(key("campaign-numbers", campaign_id), start, stop)]

    def is_listed(self, campaign_id: str, position: int, number: str) -> bool:
        """Whether ``number`` is still at ``position`` of the campaign's list (an erase takes it out)."""
        return text(self.redis.lindex(key("campaign-numbers", campaign_id), position)) == number

    def variables(self, campaign_id: str, number: str) -> dict[str, str]:
        raw = self.redis.hget(key("campaign-vars", campaign_id), number)
        return json.loads(raw) if raw is not None else {}

    def outcomes(self, campaign_id: str, numbers: list[str]) -> list[str | None]:
        """Each number's outcome (None: still queued)."""
        if not numbers:
            return []
        return [text(found) for found in self.redis.hmget(key("campaign-outcome", campaign_id), numbers)]

    # -- changes ------------------------------------------------------------------------------------

    def start_sending(self, campaign_id: str) -> str | None:
        """A batch job started: ``scheduled`` becomes ``sending``. Returns the status (None: the campaign is gone)."""
        return text(self._start_sending(keys=[campaign_key(campaign_id)]))

    def settle(self, campaign_id: str, number: str, outcome: str) -> bool:
        """Record a queued recipient's outcome (``sent``, ``failed``, ``skipped:<reason>``); False if it had one."""
        count = "skipped" if outcome.startswith("skipped") else outcome
        return self._settle(keys=[campaign_key(campaign_id), key("campaign-outcome", campaign_id)],
                            args=[number, outcome, count, f"{time.time():.3f}", self.retention_seconds]) == 1

    def note_delivery(self, campaign_id: str, number: str, final: str) -> bool:
        """A sent recipient's delivery status became final (``delivered`` or ``failed``); counted once."""
        return self._delivery(keys=[campaign_key(campaign_id), key("campaign-outcome", campaign_id)],
                              args=[number, final]) == 1

    def note_reply(self, campaign_id: str, number: str) -> bool:
        """A texted recipient answered; counted once."""
        return self._replied(keys=[campaign_key(campaign_id), key("campaign-outcome", campaign_id),
                                   key("campaign-replied", campaign_id)], args=[number, self.retention_seconds]) == 1

    def note_sms_status(self, twilio_sid: str, status: str) -> bool:
        """Count a final delivery status of a campaign's opening SMS (its record ``sent:{sid}`` names the outbound
        start that sent it, see ``core.state.deliveries``); False for any other SMS or status."""
        status = status.lower()
        final = "delivered" if status in DELIVERED_STATUSES else "failed" if status in FAILED_STATUSES else None
        if final is None:
            return False
        recipient = recipient_of(text(self.redis.hget(key("sent", twilio_sid), "inbound_sid")) or "")
        if recipient is None:
            return False
        campaign_id, position = recipient
        number = self.numbers(campaign_id, position, position)
        return bool(number) and self.note_delivery(campaign_id, number[0], final)

    def note_reply_in(self, cid: str) -> bool:
        """The person of conversation ``cid`` texted: a reply to the campaign that started it, counted once."""
        found = self.campaign_of(cid)
        self.redis.hdel(key("conv", cid), REPLY_DUE)  # the drains of later texts need not look again
        return found is not None and self.note_reply(*found)

    def cancel(self, campaign_id: str) -> str | None:
        """Stop the campaign's sending; returns its status after (None: no such campaign)."""
        return text(self._cancel(keys=[campaign_key(campaign_id)], args=[f"{time.time():.3f}"]))

    def link_conversation(self, cid: str, campaign_id: str, number: str, ttl_seconds: int) -> None:
        """Remember that the campaign started the conversation ``cid``, so the person's answers count as replies."""
        with self.redis.pipeline() as pipe:
            pipe.set(reply_key(cid), f"{campaign_id} {number}", ex=ttl_seconds)
            # Read by the conversation's next drain (in the hash it reads anyway): nothing on the webhook's path.
            pipe.hset(key("conv", cid), REPLY_DUE, "1")
            pipe.execute()

    def campaign_of(self, cid: str) -> tuple[str, str] | None:
        """(campaign id, number) of the campaign that started the conversation, or None."""
        found = text(self.redis.get(reply_key(cid)))
        if not found:
            return None
        campaign_id, _, number = found.partition(" ")
        return campaign_id, number

    def forget_number(self, number: str, cid: str) -> int:
        """Erase a person's number from every kept campaign (``workers.admin_ops.erase_conversation``); returns how
        many held it. A number not texted yet never will be (counted skipped)."""
        self.redis.delete(reply_key(cid))
        held = 0
        for found in self.redis.zrange(key("campaigns"), 0, -1):
            campaign_id = text(found)
            held += int(self._forget(keys=[campaign_key(campaign_id), key("campaign-numbers", campaign_id),
                                           key("campaign-outcome", campaign_id), key("campaign-vars", campaign_id),
                                           key("campaign-replied", campaign_id)],
                                     args=[number, ERASED, f"{time.time():.3f}"]))
        return held

    def chain_once(self, campaign_id: str, batch: int, enqueue: Callable[[Pipeline], object]) -> bool:
        """Queue the successor of ``batch`` (``enqueue(pipeline)``) unless it was queued before; True if now."""
        name = key("campaign-chained", campaign_id)
        for _ in range(CHAIN_ATTEMPTS):  # another batch of the campaign chaining meanwhile changes the set
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(name)
                    if pipe.sismember(name, batch):
                        return False
                    pipe.multi()
                    pipe.sadd(name, batch)
                    pipe.expire(name, self.retention_seconds)
                    enqueue(pipe)
                    pipe.execute()
                    return True
                except WatchError:
                    continue
        raise WatchError(f"campaign {campaign_id}: the successor of batch {batch} could not be queued")
