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

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

PREFIX = "smsgw"
PROGRESS_TTL_SECONDS = 14 * 24 * 3600
# Fraction of a key's period its remaining time may fall before an inbound text writes the expiry again
# (30 days: refreshed at most every 7.2 hours per key, so the key may go up to 7.2 hours before the period).
EXPIRY_REFRESH_SLACK = 0.01

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
