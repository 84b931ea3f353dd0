"""The worker process's scheduler child: moves due scheduled jobs (retries, a burst's quiet window) to their
queues, queues the idle checks that are due (``tick``), and rides out a Redis outage without a traceback.

RQ's ``work(with_scheduler=True)`` forks a child that runs ``RQScheduler.work()``, which dies with a traceback
(some 45 lines) at the first Redis error; the worker then forks another one. This child runs the same steps
through RQScheduler's public methods (acquire_locks, heartbeat, enqueue_scheduled_jobs, release_locks) in a
loop of its own that waits for Redis instead. As with RQ's: one scheduler holds a queue's lock at a time (the
other processes' children try again every ``LOCK_RETRY_SECONDS``), it releases its locks when it is stopped
(SIGTERM, SIGINT) and ``startup.exit_children_with_this_process`` sends it SIGTERM when its worker dies, so a
killed worker's lock is taken over within seconds, not when the lock expires.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError
from rq.scheduler import RQScheduler

from workers.startup import redis_address, redis_failure

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 1  # RQ's default: a due job waits at most this long (and its lock lives this + 60 s)
LOCK_RETRY_SECONDS = 5  # a scheduler without the lock asks again this often (RQ's worker: every 15 s)
STOP_SECONDS = 10  # how long the worker waits for its scheduler to release its locks and exit


def start(connection: Redis, queue_names: list[str], logging_level: str,
          tick: Callable[[], object] | None = None) -> multiprocessing.Process:
    """Fork the scheduler child (a fork, as RQ does: the job functions and settings come along). ``tick`` runs
    in each step after the due jobs are moved, in the scheduler holding the locks."""
    process = multiprocessing.get_context("fork").Process(
        target=run, args=(connection, queue_names, logging_level, tick), name="Scheduler", daemon=False)
    process.start()
    return process


def stop(process: multiprocessing.Process) -> None:
    """Ask the child to release its locks and exit; kill it if it does not within ``STOP_SECONDS``."""
    if process.is_alive():
        process.terminate()  # SIGTERM: the child's loop stops and releases its locks
        process.join(STOP_SECONDS)
    if process.is_alive():
        process.kill()
        process.join()


def run(connection: Redis, queue_names: list[str], logging_level: str,
        tick: Callable[[], object] | None = None) -> None:
    """The child's loop, until SIGTERM or SIGINT."""
    stop_event = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_event.set())
    scheduler = RQScheduler(queue_names, connection=connection, interval=INTERVAL_SECONDS,
                            logging_level=logging_level)  # a connection pool of its own (none crosses the fork)
    Loop(scheduler, queue_names, redis_address(connection), tick).run(stop_event)


class Loop:
    """RQScheduler.work()'s steps, one ``step()`` per interval, that wait out a Redis error instead of dying."""

    def __init__(self, scheduler: RQScheduler, queue_names: list[str], address: str,
                 tick: Callable[[], object] | None = None):
        self.scheduler = scheduler
        self.tick = tick
        self.queue_names = queue_names
        self.address = address
        self.registered = False
        self.asked_for_locks_at: float | None = None
        self.outage = False

    def run(self, stop_event: threading.Event) -> None:
        log.info("scheduler for %s started", ", ".join(self.queue_names))
        while not stop_event.is_set():
            try:
                self.step()
            except RedisError as exc:
                self._redis_failed(exc)
            except Exception:  # a bug, not an outage: say it all, and keep moving due jobs (nobody restarts this)
                log.exception("scheduler step failed")
            stop_event.wait(INTERVAL_SECONDS)
        self.finish()

    def step(self) -> None:
        scheduler = self.scheduler
        now = time.monotonic()
        if scheduler.acquired_locks != set(self.queue_names) and (
                self.asked_for_locks_at is None or now - self.asked_for_locks_at >= LOCK_RETRY_SECONDS):
            self.asked_for_locks_at = now
            scheduler.acquire_locks()
        if not scheduler.acquired_locks:
            return  # another process's scheduler holds the locks (a lock may be held by each of two)
        if not self.registered:
            scheduler.register_birth()  # (again after an outage: a restarted Redis may have lost the record)
            self.registered = True
        scheduler.heartbeat()  # keeps (or re-takes) the locks; drops those another scheduler took over
        scheduler.enqueue_scheduled_jobs()
        if self.tick is not None:
            self.tick()
        if self.outage:
            self.outage = False
            log.info("scheduler: Redis at %s answers again", self.address)

    def _redis_failed(self, exc: RedisError) -> None:
        # The worker's own loop says that Redis is not reachable (one line per retry interval): this says it once.
        if not self.outage:
            self.outage = True
            log.warning("scheduler paused: Redis at %s failed (%s); it goes on once Redis answers", self.address,
                        redis_failure(exc))
        self.registered = False
        self.asked_for_locks_at = None

    def finish(self) -> None:
        """Release the locks (another process's scheduler takes over at once) and remove the record."""
        try:
            if self.scheduler.acquired_locks:
                self.scheduler.release_locks()
            if self.registered:
                self.scheduler.register_death()
        except RedisError as exc:
            log.warning("scheduler stopped without releasing its locks: Redis at %s failed (%s)", self.address,
                        redis_failure(exc))
