"""Connecting to Redis, the same way in the web and the workers."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry


def connect_redis(url: str, *, for_web: bool = False) -> Redis:
    """A Redis client with explicit timeouts.

    The web gives up after one quick reconnect, so it can answer 503 within a second or two while
    Redis is away; workers ride out a short restart with a few backed-off reconnects.
    """
    if for_web:
        # One quick reconnect for a connection that went stale (Redis restarted), no retry of a timeout.
        return Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1,
                              retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=30,
                          retry=Retry(ExponentialBackoff(cap=2, base=0.1), 5))
