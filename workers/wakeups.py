"""Answering the web's wake-ups, in every worker process.

The webhook accepts a text in one round trip: when the conversation has no drain waiting, the accept
script pushes the conversation id on the wake list (``core.state.inbound``). A thread in each worker
process takes from that list as many wake-ups as it has job threads running nothing (Redis hands each
wake-up to one worker; while all its threads are busy it takes none, and they wait for another process
or a free thread). Each is drained at once on a free job thread (``workers.jobs.drain_woken``: no RQ
job, so none of RQ's per-job round trips and records); one whose thread is reserved by the RQ loop
waiting for a job (always so with one job thread) is queued as an RQ drain job, which that loop takes.

A wake-up taken by a process that dies (or meets a Redis failure) before it is drained or queued is put
back when Redis still answers; otherwise the conversation's ``drain_pending`` claim grows stale with its
texts waiting, and the recovery sweep (``workers.jobs.recover_stalled``) queues the drain.
"""

from __future__ import annotations

import contextlib
import functools
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
    if cids:
        queue_drains(services, cids)
    return len(cids)


def queue_drains(services, cids: list[str]) -> None:
    """Queue a drain job for each of the wake-ups ``cids`` (taken off the list): put back if Redis fails."""
    try:
        services.jobs.enqueue_woken_drains(cids)
    except RedisError:
        with contextlib.suppress(RedisError):  # a queued one may be queued twice: an extra drain finds nothing
            services.store.redis.lpush(WAKE_KEY, *reversed(cids))
        raise


class Waker:
    """The thread that answers wake-ups until ``stop()``: each is drained on a free job thread of ``turns``,
    or queued as an RQ drain job when none is free."""

    def __init__(self, services_factory, turns, drain, name: str = "wakeups"):
        self._services_factory = services_factory
        self._turns = turns
        self._drain = drain  # drain(cid), run on a job thread
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Waker:
        self._thread.start()
        return self

    def stop_taking(self) -> None:
        """Take no further wake-up (the wait in progress ends within about a second)."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop taking wake-ups; returns once those taken are handed over (about a second at most)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(WAIT_SECONDS + 5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Only as many wake-ups as threads that run nothing: when every thread is busy they are left to
            # the other processes (or to this one, once a thread is free).
            idle = self._turns.wait_for_idle_threads(WAIT_SECONDS)
            if not idle or self._stopping.is_set():
                continue
            try:
                services = self._services_factory()
                cids = services.store.take_wakeups(min(idle, BATCH), WAIT_SECONDS)
                # A thread may be reserved by the RQ loop waiting for a job: that one is queued for it.
                queued = []
                for cid in cids:
                    if self._turns.take_slot(0):  # a job thread is free: drain it there now
                        self._turns.run(functools.partial(self._drain, cid))
                    else:
                        queued.append(cid)
                if queued:
                    queue_drains(services, queued)
            except RedisError:
                self._stopping.wait(RETRY_SECONDS)
            except Exception:  # never let the thread die: wake-ups would wait for the recovery sweep
                log.exception("answering wake-ups failed")
                self._stopping.wait(RETRY_SECONDS)
