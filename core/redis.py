"""Connecting to Redis, the same way in the web, the workers, the RQ scheduler and the command line.

Every Redis client of the gateway comes from ``connect_redis``. With ``REDIS_SENTINELS`` set it is a client of
redis-py's ``Sentinel(...).master_for(REDIS_SENTINEL_MASTER)``: each new connection asks the sentinels where
the master is, so after a failover the next command (after one that failed on the old master) goes to the
promoted replica, with no restart. While no master is known (the old one is down and not yet replaced) a
command fails with ``MasterNotFoundError``, a ``ConnectionError`` like any other, so the web answers 503 and
the workers wait, as they do while a plain Redis restarts.

RQ's scheduler rebuilds its client in its own process from the client's pool settings
(``rq.connections.parse_connection``): a sentinel-managed connection class and the pool's sentinel link
are among them, so the scheduler follows the master too.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_TIMEOUT_SECONDS = 0.5  # per sentinel asked; a dead one must not hold a webhook for long


class RedisSettings(Protocol):
    """The settings ``connect_redis`` reads (``config.Settings`` has them)."""

    redis_url: str
    redis_sentinels: tuple[tuple[str, int], ...]
    redis_sentinel_master: str | None
    redis_sentinel_password: str | None
    redis_tls_verify: bool


def connect_redis(settings: RedisSettings | str, *, for_web: bool = False,
                  socket_timeout: float | None = None, max_connections: int | None = None) -> Redis:
    """A Redis client with explicit timeouts, through the sentinels when the settings name them.

    ``settings`` may be a bare URL (the sandbox's phone page knows only that). The web gives up after one
    quick reconnect, so it can answer 503 within a second or two while Redis is away; workers ride out a
    short restart with a few backed-off reconnects. ``socket_timeout`` overrides the read timeout, for a
    client that blocks on purpose (waiting for an admin job's result). A worker running many jobs at once
    needs a pool of ``max_connections`` (redis-py's default allows 100).
    """
    if for_web:
        # One quick reconnect for a connection that went stale (Redis restarted), no retry of a timeout.
        options: dict[str, Any] = dict(socket_connect_timeout=1, socket_timeout=1,
                                       retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    else:
        options = dict(socket_connect_timeout=2, socket_timeout=30, health_check_interval=30,
                       retry=Retry(ExponentialBackoff(cap=2, base=0.1), 5))
    if socket_timeout is not None:
        options["socket_timeout"] = socket_timeout
    if max_connections is not None:
        options["max_connections"] = max_connections
    if not isinstance(settings, str) and not settings.redis_tls_verify and settings.redis_url.startswith("rediss:"):
        # A TLS Redis whose certificate no CA signed (Heroku Redis's): encrypted, but the server is not verified.
        options["ssl_cert_reqs"] = "none"
    if isinstance(settings, str) or not settings.redis_sentinels:
        return Redis.from_url(settings if isinstance(settings, str) else settings.redis_url, **options)
    return _sentinel_master(settings, options)


def _sentinel_master(settings: RedisSettings, options: dict[str, Any]) -> Redis:
    """A client of the master the sentinels name; REDIS_URL gives its password, user name, database and TLS."""
    url = urlsplit(settings.redis_url)
    tls = url.scheme == "rediss"
    data = {**options, "db": _database(url.path), "username": unquote(url.username) if url.username else None,
            "password": unquote(url.password) if url.password else None}
    if tls:
        data["ssl"] = True  # SentinelConnectionPool picks its TLS connection class from this
    # No retry per sentinel (redis-py's default backs off for seconds): the next sentinel is asked instead.
    sentinel = Sentinel(settings.redis_sentinels, sentinel_kwargs={
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS, "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0), "password": settings.redis_sentinel_password, "ssl": tls})
    return sentinel.master_for(settings.redis_sentinel_master, **data)


def _database(path: str) -> int:
    name = path.strip("/")
    return int(name) if name.isdigit() else 0


def redis_address(client: Redis) -> str:
    """Where the client looks for Redis: ``host:port``, a socket path, or the sentinels' master name."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        sentinels = ",".join(f"{host}:{port}" for host, port in _sentinel_addresses(pool))
        return f"master {pool.service_name!r} of sentinels {sentinels}"
    kwargs = pool.connection_kwargs
    return str(kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}")


def _sentinel_addresses(pool: SentinelConnectionPool) -> list[tuple[str, int]]:
    return [(node.connection_pool.connection_kwargs.get("host"), node.connection_pool.connection_kwargs.get("port"))
            for node in pool.sentinel_manager.sentinels]
