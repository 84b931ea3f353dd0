"""What a worker process does before and around its RQ workers: wait for Redis, and tie its children to it.

A worker that starts while Redis is away says so in one line (where Redis is, why it is not reachable)
and tries again with a growing pause, instead of dying with a traceback; one that can never reach it as
configured (a host name that does not exist, a wrong password) says so in one line and exits non-zero.
The scheduler runs in a child process (``workers.scheduler``); ``exit_children_with_this_process`` makes
every child forked from here end when this process dies, even by SIGKILL, so that a dead worker's
scheduler does not keep the scheduler lock. With ``METRICS_PORT`` set, ``serve_metrics`` serves the process's
own metrics (for hosts that run workers without a web process).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from prometheus_client import start_http_server
from redis import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError
from rq.exceptions import StopRequested

from core import redis as core_redis

log = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = (1, 2, 4, 8, 15)  # pauses between attempts to reach Redis; the last one repeats
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal a process gets when its parent dies
PARENT_POLL_SECONDS = 1.0  # elsewhere, a child checks this often whether its parent is still there

_hooks_registered = False
_forking_pid = 0  # set just before each fork: in the child, the pid of the process that forked it


def redis_address(connection: Redis) -> str:
    """Where the client looks for Redis: ``host:port``, a socket path, or the sentinels' master."""
    return core_redis.redis_address(connection)


def redis_failure(exc: BaseException) -> str:
    """The cause of a Redis error in a few words: "connection refused", "host name not resolved", "timed out",
    "authentication failed"... (what an operator fixes differs: Redis down, a typo in the host, a firewall, the
    password)."""
    cause: BaseException | None = exc
    if isinstance(exc, MasterNotFoundError):  # its message lists every sentinel client's repr
        return "no sentinel names a master that is up"
    while cause is not None:
        if isinstance(cause, AuthenticationError) or (
                isinstance(cause, ResponseError) and str(cause).startswith(("NOAUTH", "WRONGPASS"))):
            return "authentication failed (the user or password in REDIS_URL)"
        if isinstance(cause, socket.gaierror):
            return f"host name not resolved ({cause.strerror.lower()})" if cause.strerror else "host name not resolved"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError | RedisTimeoutError):
            return "timed out"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def is_permanent(exc: BaseException) -> bool:
    """A failure that waiting does not cure: a host name that does not exist, a wrong password."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, AuthenticationError) or (
                isinstance(cause, ResponseError) and str(cause).startswith(("NOAUTH", "WRONGPASS"))):
            return True
        if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME:
            return True  # the name server says the name does not exist (EAI_AGAIN, a DNS hiccup, is retried)
        cause = cause.__cause__ or cause.__context__
    return False


class MetricsPortUnusable(Exception):
    """``METRICS_PORT`` cannot be listened on (taken, or not allowed): the worker stops with a non-zero status."""


def serve_metrics(port: int | None, address: str = "0.0.0.0") -> None:
    """Serve this process's metrics at ``http://address:port/metrics`` (prometheus-client's own server, on a
    daemon thread) when ``port`` is set; with no port, listen on nothing.

    The values are this process's own, with or without ``PROMETHEUS_MULTIPROC_DIR``: a worker that shares that
    directory with a web process on its host is already summed into that web's ``/metrics``. The scheduler child,
    forked later, closes its copy of the listening socket, so only this process holds the port.
    Raises MetricsPortUnusable (after one log line) when the port cannot be bound.
    """
    if port is None:
        return
    try:
        server, _thread = start_http_server(port, addr=address)
    except OSError as exc:
        log.error("metrics port %d not usable: %s; the worker stops (fix METRICS_PORT)", port,
                  (exc.strerror or str(exc)).lower())
        raise MetricsPortUnusable(str(exc)) from None
    os.register_at_fork(after_in_child=server.server_close)
    log.info("serving this worker's metrics on port %d (/metrics)", port)


class RedisUnusable(Exception):
    """Redis cannot be used with these settings (see ``is_permanent``): the worker stops with a non-zero status."""


def wait_for_redis(connection: Redis, stop_event: threading.Event, *, announce: bool = True,
                   at_start: bool = False, one_off: bool = False) -> bool:
    """Block until Redis answers a PING (True) or a stop is requested (False); one log line per failed try.

    ``at_start`` (a worker starting): a failure that waiting does not cure (a host name that does not resolve,
    a wrong password) is logged once and raises RedisUnusable instead; the supervisor sees the process fail.
    ``one_off`` (``--burst``, ``--max-jobs``: run from a shell or a scheduled task, nobody restarts it): any
    failure does, so the run fails now rather than waits unseen.
    """
    attempt = 0
    try:
        while not stop_event.is_set():
            try:
                connection.ping()
            except RedisError as exc:
                if at_start and is_permanent(exc):
                    log.error("Redis at %s not usable: %s; the worker stops (fix REDIS_URL)",
                              redis_address(connection), redis_failure(exc))
                    raise RedisUnusable(redis_failure(exc)) from None
                if one_off:
                    log.error("Redis at %s not reachable: %s; a one-off (--burst, --max-jobs) worker does not wait",
                              redis_address(connection), redis_failure(exc))
                    raise RedisUnusable(redis_failure(exc)) from None
                pause = REDIS_RETRY_SECONDS[min(attempt, len(REDIS_RETRY_SECONDS) - 1)]
                if announce:
                    log.error("Redis at %s not reachable: %s; retrying in %d s", redis_address(connection),
                              redis_failure(exc), pause)
                attempt += 1
                stop_event.wait(pause)
                continue
            if attempt and announce:
                log.warning("Redis at %s answers again", redis_address(connection))
            return True
    except StopRequested:  # raised by the signal handler of an earlier RQ worker of this process
        pass
    return False


class RedisOutageLines(logging.Filter):
    """One line per ``interval_seconds`` for a Redis outage, instead of RQ's line per worker thread per retry.

    Each of a process's RQ workers (``WORKER_THREADS``), and each one's pubsub listener, logs "Worker ...: could
    not connect to Redis instance: Error 111 connecting to ... retrying in 2 seconds..." on every retry: with 64
    threads, hundreds of lines a minute saying one thing. The first of them is rewritten in the gateway's words
    (where Redis is, and why), the rest are left out until ``interval_seconds`` have passed. Installed on RQ's
    worker logger by the worker process; a line RQ words differently passes unchanged.
    """

    RQ_LINE = "Worker %s: could not connect to Redis instance: %s retrying in %d seconds..."

    def __init__(self, address: str, interval_seconds: float = 15.0):
        super().__init__()
        self.address = address
        self.interval_seconds = interval_seconds
        self._last_shown: float | None = None
        self._left_out = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.RQ_LINE or not isinstance(record.args, tuple) or len(record.args) != 3:
            return True
        now = time.monotonic()
        with self._lock:
            if self._last_shown is not None and now - self._last_shown < self.interval_seconds:
                self._left_out += 1
                return False
            self._last_shown, left_out, self._left_out = now, self._left_out, 0
        cause = redis_failure(record.args[1]) if isinstance(record.args[1], BaseException) else str(record.args[1])
        record.msg = "Redis at %s not reachable: %s; the workers keep trying (%d like lines left out)"
        record.args = (self.address, cause, left_out)
        return True


def exit_children_with_this_process() -> None:
    """Make every child forked from now on (the scheduler) get SIGTERM when its parent dies."""
    global _hooks_registered
    if not _hooks_registered:
        os.register_at_fork(before=_note_forking_process, after_in_child=_follow_parent)
        _hooks_registered = True


def _note_forking_process() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def parent_death_signal() -> Callable[[int], bool]:
    """A function that, called in a child before it runs anything, makes it get SIGTERM when ``parent_pid`` dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``): elsewhere the function returns False.
    libc is looked up here, in the parent, so that the child (e.g. a ``subprocess`` ``preexec_fn`` between
    fork and exec) only makes the one call.
    """
    if not sys.platform.startswith("linux"):
        return lambda parent_pid: False
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def follow(parent_pid: int) -> bool:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)
        return True

    return follow


def _follow_parent() -> None:
    parent_pid = _forking_pid
    if parent_death_signal()(parent_pid):
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
