"""Key names, retention and the shared base of the Redis state modules (every key lives under ``smsgw:``).

Retention: every key that holds a number or words expires. The conversation's own keys (conv, inbox,
recent, chats, away, away-refs, turns) get DATA_RETENTION_DAYS again on each write, so they go that long
after the last activity; per-message records (msg, sent, dead, outbound) expire at most that long after they
were written. An inbound text (the hot path) writes an expiry only once the key's remaining time has fallen
more than EXPIRY_REFRESH_SLACK of the period below the full period: its keys still go at most the period after
the last activity, and at least (1 - EXPIRY_REFRESH_SLACK) of it after.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import Enum

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

PREFIX = "smsgw"
PROGRESS_TTL_SECONDS = 14 * 24 * 3600
# Fraction of a key's period its remaining time may fall before an inbound text writes the expiry again
# (30 days: refreshed at most every 7.2 hours per key, so the key may go up to 7.2 hours before the period).
EXPIRY_REFRESH_SLACK = 0.01



class Holds(Enum):
    """What a kind of key holds of a person, and so how an erase finds it (``core.state.erase``)."""

    CONVERSATION = "the conversation's own key, {kind}:{cid}: deleted"
    CONVERSATION_PARTS = "keys of the conversation, {kind}:{cid}:*: deleted"
    CONVERSATION_LAST = "keys ending in the conversation, {kind}:*:{cid}: deleted"
    CONVERSATION_IDS = "a sorted set of conversation ids: the conversation's id is removed"
    RECORDS = "records of messages or operations: each is read to tell whose it is"
    NUMBER_LISTS = "lists of many people's numbers (campaigns): the person's number is taken out of each"
    NOTHING = "no number and no words (ids, hashes, tokens, the gateway's own numbers): kept"


# Every kind of key under ``smsgw:``, with what it holds (tests/test_layout.py checks that the code uses no other).
# An erase derives what to delete from this table; a new kind of key must say here what it holds.
KEY_KINDS: dict[str, Holds] = {
    "conv": Holds.CONVERSATION,  # hash of the conversation (core.state.conversations); an opt-out is kept
    "inbox": Holds.CONVERSATION,  # texts waiting (core.state.inbound)
    "recent": Holds.CONVERSATION,  # latest sent sids (core.state.deliveries)
    "chats": Holds.CONVERSATION,  # the UponAI chat ids it has had
    "away": Holds.CONVERSATION,  # the away log: words (core.state.handoff)
    "away-refs": Holds.CONVERSATION,
    "turns": Holds.CONVERSATION,  # latest turns' sids
    "rate": Holds.CONVERSATION_PARTS,  # rate-limit windows (core.state.counters)
    "notice": Holds.CONVERSATION_LAST,  # notice markers, notice:{kind}:{cid}
    "idle-due": Holds.CONVERSATION_IDS,  # idle checks due (core.state.counters)
    "msg": Holds.RECORDS,  # a message's progress: its reply's words (core.state.deliveries)
    "sent": Holds.RECORDS,  # one outbound SMS
    "dead": Holds.RECORDS,  # a given-up message, kept for a replay
    "outbound": Holds.RECORDS,  # an outbound start (core.state.operations)
    "idem": Holds.RECORDS,  # an Idempotency-Key's record (gateway.admin_jobs)
    "campaign-numbers": Holds.NUMBER_LISTS,  # a campaign's recipients (core.state.campaigns)
    "campaign-outcome": Holds.NUMBER_LISTS,  # each recipient's outcome
    "campaign-vars": Holds.NUMBER_LISTS,  # each recipient's dynamic variables
    "campaign-replied": Holds.NUMBER_LISTS,  # the recipients who answered
    "campaign-reply": Holds.CONVERSATION,  # which campaign started the conversation
    "campaign": Holds.NOTHING,  # a campaign's counts, message and status
    "campaigns": Holds.NOTHING,  # campaign ids by creation time
    "campaign-idem": Holds.NOTHING,  # an Idempotency-Key's campaign id
    "campaign-chained": Holds.NOTHING,  # the batches already chained
    "pace": Holds.NOTHING,  # a sender's campaign pace (core.state.pacing): the gateway's own number
    "lock": Holds.NOTHING,  # a job's token
    "erasing": Holds.NOTHING,  # an erase's token
    "erased": Holds.NOTHING,  # when the conversation was erased
    "seen": Holds.NOTHING,  # dedupe marker of a MessageSid
    "signature": Holds.NOTHING,  # a webhook signature's hash -> MessageSid
    "numbers": Holds.NOTHING,  # the gateway's own numbers
    "event": Holds.NOTHING,  # an event's queued/sent marker
    "event-sending": Holds.NOTHING,  # an event's posting claim
}

CHANNEL_ADDRESS = re.compile(r"([a-z][a-z0-9-]*):(.+)")  # whatsapp:+1..., messenger:1234..., rcs:...


def key(*parts: str) -> str:
    """``key("conv", cid)`` -> ``smsgw:conv:{cid}``."""
    return ":".join((PREFIX, *parts))


def away_key(cid: str) -> str:
    """The conversation's away log: a list of JSON entries, oldest first (see ``core.state.handoff``)."""
    return key("away", cid)


def away_refs_key(cid: str) -> str:
    """The refs already in the conversation's away log (a set: one entry per ref)."""
    return key("away-refs", cid)


def bare_address(address: str) -> str:
    """``whatsapp:+1415...`` -> ``+1415...``: one number on any channel."""
    match = CHANNEL_ADDRESS.fullmatch(address)
    return match[2] if match else address


def text(value: bytes | str | None) -> str | None:
    """A Redis reply as str (None stays None)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def text_hash(raw: dict) -> dict[str, str]:
    """An HGETALL reply as str -> str."""
    return {text(k): text(v) for k, v in raw.items()}


class LuaScript:
    """A Lua script of the state modules, called as redis-py's ``Script`` is (``keys``, ``args``, ``client``).

    Called on the connection itself, it sends EVALSHA through ``execute_command`` (the public entry every
    redis-py command goes through), and loads the script when Redis does not have it: redis-py's ``Script``
    first checks, in every call, whether the client is a pipeline (a slow ``typing.Protocol`` check on
    Python 3.11) and goes through ``evalsha``'s argument-deprecation wrapper, about 20 us a call on the
    message path. On a pipeline (``client=``) redis-py's ``Script`` is used as it is.
    """

    def __init__(self, redis: Redis, source: str):
        self.redis = redis
        self.script = redis.register_script(source)

    def __call__(self, keys=(), args=(), client=None):
        if client is not None:
            return self.script(keys=keys, args=args, client=client)
        try:
            return self.redis.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.script(keys=keys, args=args)  # loads it, then runs it


class StateBase:
    """The connection, the retention periods and the Lua scripts every state module shares.

    A module lists its scripts in ``SCRIPTS`` (attribute name -> Lua source); they are registered once here.
    """

    SCRIPTS: dict[str, str] = {}
    key = staticmethod(key)

    def __init__(self, redis: Redis, *, dedupe_ttl_seconds: int, retention_seconds: int):
        self.redis = redis
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self.retention_seconds = retention_seconds
        self.progress_ttl_seconds = min(PROGRESS_TTL_SECONDS, retention_seconds)
        for cls in type(self).__mro__:
            for name, source in vars(cls).get("SCRIPTS", {}).items():
                setattr(self, name, LuaScript(redis, source))

    @classmethod
    def from_settings(cls, redis: Redis, settings):
        """The state over ``redis`` with the periods of ``settings`` (DEDUPE_TTL_SECONDS, DATA_RETENTION_DAYS)."""
        return cls(redis, dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
                   retention_seconds=settings.data_retention_seconds)

    def _keep(self, *keys: str, pipe: Pipeline | None = None) -> None:
        """Give the conversation's keys the full retention period again (counted from this activity)."""
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        for name in keys:
            target.expire(name, self.retention_seconds)
        if pipe is None:
            target.execute()

    def _scan(self, kind: str) -> Iterator[str]:
        for found in self.redis.scan_iter(match=key(kind, "*"), count=1000):
            yield text(found)
