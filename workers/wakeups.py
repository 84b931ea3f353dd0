"""Turning the web's wake-ups into drain jobs, in every worker process.

The webhook accepts a text in one round trip: when the conversation has no drain waiting, the accept
script pushes the conversation id on the wake list (``core.state.inbound``). A thread in each worker
process waits on that list and queues one RQ drain job per wake-up through RQ's public API, every
wake-up taken in one round trip in one transaction (a backlog is taken 64 at a time). Redis hands each
wake-up to one worker.

A wake-up taken by a process that dies (or meets a Redis failure) before its job is queued is put back
when Redis still answers; otherwise the conversation's ``drain_pending`` claim grows stale with its texts
waiting, and the recovery sweep (``workers.jobs.recover_stalled``) queues the drain.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from redis.exceptions import RedisError

from core.state.inbound import WAKE_KEY

log = logging.getLogger(__name__)

BATCH = 64  # wake-ups taken (and drain jobs queued) per round trip
WAIT_SECONDS = 1.0  # how long one wait for a wake-up blocks: a stop is seen within about this long
RETRY_SECONDS = 1.0  # after a Redis failure (the worker's main loop says that Redis is away)


def queue_woken(services, block_seconds: float = 0) -> int:
    """Take the waiting wake-ups (waiting up to ``block_seconds`` for the first) and queue their drain jobs."""
    cids = services.store.take_wakeups(BATCH, block_seconds)
    if not cids:
        return 0
    try:
        services.jobs.enqueue_woken_drains(cids)
    except RedisError:
        with contextlib.suppress(RedisError):  # a queued one may be queued twice: an extra drain finds nothing
            services.store.redis.lpush(WAKE_KEY, *reversed(cids))
        raise
    return len(cids)


class Waker:
    """The thread that queues drain jobs for wake-ups until ``stop()``."""

    def __init__(self, services_factory, name: str = "wakeups"):
        self._services_factory = services_factory
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Waker:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop waiting for wake-ups; returns once the wake-ups taken so far are queued (about a second at most)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(WAIT_SECONDS + 5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                queue_woken(self._services_factory(), WAIT_SECONDS)
            except RedisError:
                self._stopping.wait(RETRY_SECONDS)
            except Exception:  # never let the thread die: wake-ups would wait for the recovery sweep
                log.exception("queueing drain jobs for wake-ups failed")
                self._stopping.wait(RETRY_SECONDS)
