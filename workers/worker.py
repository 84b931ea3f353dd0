"""The gateway's RQ worker: RQ's in-process worker, several to a process, plus crash recovery.

An agent turn mostly waits on UponAI, so one process runs ``WORKER_THREADS`` RQ workers: one in the
main thread (signals, the scheduler) and the rest in threads (timeouts by timer instead of SIGALRM).
SIGTERM/SIGINT stop them all; each finishes its current job first.

A worker is alive while its heartbeat is recent (``core.queues.live_workers``): RQ keeps a killed worker's
registry entry for minutes, so readiness and the ``smsgw_workers`` gauge look at the heartbeat, which
each worker renews at least every ``WORKER_TTL_SECONDS - 15`` s while it waits for a job and every
``JOB_MONITORING_INTERVAL_SECONDS`` while it runs one.
"""

from __future__ import annotations

import logging
import threading
import time

from redis.exceptions import RedisError
from rq.exceptions import StopRequested
from rq.timeouts import TimerDeathPenalty
from rq.utils import now as rq_now
from rq.worker import SimpleWorker, WorkerStatus

from core.queues import WORKER_TTL_SECONDS
from workers import jobs
from workers.startup import exit_children_with_this_process, redis_address, redis_failure, wait_for_redis

log = logging.getLogger(__name__)

# RQ's defaults (maintenance every 600 s, worker TTL 420 s) leave a killed worker's messages waiting
# for ten minutes; these (and core.queues.WORKER_TTL_SECONDS) bring recovery well under a minute and a half.
MAINTENANCE_INTERVAL_SECONDS = 15
THREAD_WORKER_TTL_SECONDS = 17  # RQ waits for a job up to TTL - 15 s: an idle thread sees a stop within 2 s
JOB_MONITORING_INTERVAL_SECONDS = 5
HEARTBEAT_COALESCE_SECONDS = 1.0  # far below every heartbeat TTL (WORKER_TTL_SECONDS + 60 and more)


class GatewayWorker(SimpleWorker):
    """Runs jobs in its own process (no fork per job) and re-queues conversations left behind by crashes."""

    stop_event: threading.Event | None = None  # shared by the workers of one process

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()
        try:
            services = jobs.current_services()
            # One sweep at a time across all workers: the others' would find the same conversations.
            if not services.store.claim_sweep(self.name, MAINTENANCE_INTERVAL_SECONDS - 1):
                return
            recovered = jobs.recover_stalled(services)
        except RedisError as exc:
            log.warning("recovery sweep skipped: %s", type(exc).__name__)
            return
        if recovered:
            log.warning("recovery: queued %d conversation(s) left without a worker", recovered)

    def execute_job(self, job, queue):
        # A SimpleWorker runs the job in its own thread and sends no heartbeat until it ends (a turn can
        # take minutes): a companion thread keeps it, so a live worker never looks like a dead one.
        finished = threading.Event()
        beats = threading.Thread(target=self._beat_until, args=(finished, self.get_heartbeat_ttl(job)),
                                 name=f"{self.name}-heartbeat", daemon=True)
        beats.start()
        try:
            return super().execute_job(job, queue)
        finally:
            finished.set()
            beats.join()

    def _beat_until(self, finished: threading.Event, ttl_seconds: int) -> None:
        while not finished.wait(JOB_MONITORING_INTERVAL_SECONDS):
            try:
                # GatewayWorker's heartbeat, not ThreadWorker's: its stop check belongs to the worker's own loop.
                GatewayWorker.heartbeat(self, ttl_seconds)
            except RedisError as exc:
                log.warning("worker heartbeat during a job failed: %s", type(exc).__name__)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        # RQ beats before and after each dequeue and after each job, three commands each time: send them as
        # one pipeline, and skip a plain beat when one went out under a second ago (its TTL still stands).
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        if timeout is None and self.last_heartbeat is not None and \
                (rq_now() - self.last_heartbeat).total_seconds() < HEARTBEAT_COALESCE_SECONDS:
            return None
        with self.connection.pipeline() as beat:
            super().heartbeat(timeout, pipeline=beat)
            beat.execute()
        return None

    def set_state(self, state: str, pipeline=None):
        # RQ writes "idle" after each job and again before the next dequeue: the second write changes nothing.
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline=pipeline)

    def request_stop(self, signum, frame):
        if self.stop_event is not None:
            self.stop_event.set()  # the thread workers of this process stop too
        super().request_stop(signum, frame)


class ThreadWorker(GatewayWorker):
    """A GatewayWorker in a non-main thread: job timeouts by timer, stops when the process is asked to."""

    death_penalty_class = TimerDeathPenalty

    # No public extension point exists (rq 3.0; pyproject pins rq>=3.0,<4): BaseWorker.work() always calls
    # this hook, whose signal.signal() raises ValueError outside the main thread, and rq has no option to skip
    # it. Signals belong to the main thread, which sets stop_event. Relied on, and checked by
    # tests/test_worker.py::test_a_thread_worker_runs_jobs_and_leaves_the_process_signal_handlers_alone.
    def _install_signal_handlers(self):
        pass

    def heartbeat(self, *args, **kwargs):
        # RQ calls this between waits for a job and after each job: a safe point to leave.
        if self.stop_event is not None and self.stop_event.is_set() and self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()
        return super().heartbeat(*args, **kwargs)


def _work_until_stopped(worker_class: type[GatewayWorker], connection, queue_names: list[str],
                        stop_event: threading.Event, *, with_scheduler: bool, burst: bool, max_jobs: int | None,
                        logging_level: str, ttl: int) -> None:
    """Run one RQ worker until a stop is requested, starting a fresh one once Redis is back after an outage."""
    announce = worker_class is GatewayWorker  # one line per outage from the main worker, not one per thread
    while wait_for_redis(connection, stop_event, announce=announce):
        try:
            worker = worker_class(queue_names, connection=connection, log_job_description=False,
                                  maintenance_interval=MAINTENANCE_INTERVAL_SECONDS, worker_ttl=ttl,
                                  job_monitoring_interval=JOB_MONITORING_INTERVAL_SECONDS)
            worker.stop_event = stop_event
            worker.work(with_scheduler=with_scheduler, burst=burst, max_jobs=max_jobs, logging_level=logging_level)
        except StopRequested:
            return  # asked to stop while it was starting
        except RedisError as exc:
            if announce:
                log.error("worker stopped by a Redis error at %s (%s); starting again once it answers",
                          redis_address(connection), redis_failure(exc))
        # request_stop (signals, RQ's shutdown command) sets stop_event: no need to ask RQ whether it was asked.
        if burst or max_jobs is not None or stop_event.is_set():
            return
        log.warning("worker loop ended without a stop request; starting again in 1 s")
        time.sleep(1)


def run(connection, queue_names: list[str], *, threads: int = 1, burst: bool = False, max_jobs: int | None = None,
        logging_level: str = "INFO") -> None:
    """Work until SIGTERM/SIGINT (each worker finishes its current job first)."""
    stop_event = threading.Event()
    exit_children_with_this_process()  # RQ's scheduler child must not outlive this process and keep its lock
    if not wait_for_redis(connection, stop_event, at_start=True, one_off=burst or max_jobs is not None):
        return
    if burst or max_jobs is not None:
        threads = 1
    siblings = [
        threading.Thread(target=_work_until_stopped, name=f"rq-worker-{index}", args=(
            ThreadWorker, connection, queue_names, stop_event),
            kwargs={"with_scheduler": False, "burst": False, "max_jobs": None, "logging_level": logging_level,
                    "ttl": THREAD_WORKER_TTL_SECONDS})
        for index in range(1, threads)
    ]
    for thread in siblings:
        thread.start()
    try:
        _work_until_stopped(GatewayWorker, connection, queue_names, stop_event, with_scheduler=True, burst=burst,
                            max_jobs=max_jobs, logging_level=logging_level, ttl=WORKER_TTL_SECONDS)
    finally:
        stop_event.set()
        for thread in siblings:
            thread.join()
