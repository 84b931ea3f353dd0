"""The gateway's RQ worker: one RQ worker per process that runs up to ``WORKER_THREADS`` jobs at once.

Every text is an RQ job (``core.state.inbound``). An agent turn mostly waits on UponAI (seconds), so a process
waits on many turns at once: one RQ worker (one registration, one heartbeat, one Redis connection pool) takes a
job from the queue whenever one of its job threads (``workers.turn_threads``) is free, and hands it to that
thread, where it runs through RQ's own ``perform_job`` (registries, results, retries, failed-job registry, as
with any RQ worker). RQ 3.0 has no threaded worker (``SimpleWorker`` runs one job at a time, ``WorkerPool``
forks processes), so this one extends ``SimpleWorker`` through ``BaseWorker``'s public methods; ``rq`` is pinned
to the minor version these overrides are tested against (``tests/test_rq_contract.py``). Overridden, and why:

- ``dequeue_job_and_maintain_ttl``: take a job only once a job thread is free (heartbeating while all are busy).
- ``execute_job``: RQ's execution record first (``prepare_execution``), then ``perform_job`` on a job thread.
- ``get_heartbeat_ttl``: a job's execution lives ``ABANDONED_AFTER_SECONDS`` past its last heartbeat (RQ: 60 s),
  so that a killed worker's jobs are found abandoned, and retried, within a minute.
- ``get_state``/``set_state``: busy while any job is in flight; only a change of state is written.
- ``heartbeat``: coalesced (RQ beats several times per job), one pipeline, a missed beat is no crash.
- ``check_for_suspension``: RQ's, with Redis away said by the wait for a job rather than a traceback.
- ``run_maintenance_tasks``, ``handle_exception``: a Redis outage is one line, not a traceback that ends the loop.
- ``request_stop``/``request_force_stop``/``teardown``: warm shutdown lets the jobs in flight finish (heartbeating),
  a second signal stops at once (RQ's cold shutdown).
- ``unsubscribe``: RQ's steps in another order, so that a stop never waits up to a minute for RQ's command
  listener (see the method).
- ``ThreadWorker.work``: RQ's loop through the same public steps, without installing signal handlers (a worker
  in a thread of the tests; ``BaseWorker.work`` always installs them, which only the main thread may).

While jobs run, one thread per process renews the heartbeat of every execution in flight
(``Execution.heartbeat``) every ``JOB_MONITORING_INTERVAL_SECONDS``. A killed process's jobs are recovered as
any dead worker's: RQ's StartedJobRegistry cleanup (every worker's maintenance) finds their executions
expired and retries them (``core.queues.drain_job_options``); the run again resumes the turn once the dead
run's conversation lock has expired (``workers.flow.drain_conversation``).
The RQ worker runs in the main thread (signals), the scheduler in a child process (``workers.scheduler``).

Operator events (``core.events``) have a queue of their own (``EVENTS_QUEUE_NAME``), served in each process by a
second RQ worker (a ``ThreadWorker`` in a thread, stopped with the main one) with ``EVENTS_WORKER_THREADS`` job
threads: at most that many deliveries run at once, and never on a thread that answers people, however long an
events receiver takes.

A worker is alive while its heartbeat is recent (``core.queues.live_workers``): RQ keeps a killed worker's
registry entry for minutes, so readiness and the ``smsgw_workers`` gauge look at the heartbeat, which
the worker renews at least every ``WORKER_TTL_SECONDS - 15`` s while it waits for a job and every
``JOB_MONITORING_INTERVAL_SECONDS`` while all its threads are busy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import StopRequested
from rq.utils import now as rq_now
from rq.worker import SimpleWorker, WorkerStatus

from core.queues import EVENTS_QUEUE_NAME, WORKER_TTL_SECONDS
from workers import jobs, scheduler
from workers.job_timeouts import WatchdogDeathPenalty
from workers.startup import exit_children_with_this_process, redis_address, redis_failure, wait_for_redis
from workers.turn_threads import TurnThreads

log = logging.getLogger(__name__)

# RQ's defaults (maintenance every 600 s, worker TTL 420 s) leave a killed worker's messages waiting
# for ten minutes; these (and core.queues.WORKER_TTL_SECONDS) bring recovery well under a minute and a half.
MAINTENANCE_INTERVAL_SECONDS = 15
THREAD_WORKER_TTL_SECONDS = 17  # RQ waits for a job up to TTL - 15 s: an idle thread sees a stop within 2 s
JOB_MONITORING_INTERVAL_SECONDS = 5
ABANDONED_AFTER_SECONDS = 20  # a job execution with no heartbeat for this long (past the interval) is abandoned
HEARTBEAT_COALESCE_SECONDS = 1.0  # far below every heartbeat TTL (WORKER_TTL_SECONDS + 60 and more)
# RQ's INFO lines for every job (taken, completed, "Job OK"): three log lines a message, each a JSON write.
# The flow logs each message answered; failures still come from RQ at WARNING and above.
PER_JOB_LOG_TEMPLATES = frozenset({"Worker %s: %s: %s", "Worker %s: %s: %s (%s)",
                                   "Successfully completed job %s in %ss on worker %s"})
# Beyond one per job thread: each RQ worker's loop and command listener (the main one and the events one), the
# scheduler.
REDIS_CONNECTIONS_HEADROOM = 8


def redis_connections_needed(job_threads: int, events_threads: int = 0) -> int:
    """How many Redis connections a worker process with ``job_threads`` job threads (and ``events_threads`` for
    operator events) may hold at once."""
    return job_threads + events_threads + REDIS_CONNECTIONS_HEADROOM


class GatewayWorker(SimpleWorker):
    """Runs up to ``concurrency`` jobs at once on threads of its own process, and re-queues conversations
    left behind by crashes."""

    # Jobs run in job threads, where SIGALRM cannot reach: a watchdog raises the job's timeout in its thread.
    death_penalty_class = WatchdogDeathPenalty
    log_result_lifespan = False  # one log line less per job ("result is kept for 60 seconds")
    stop_event: threading.Event | None = None  # set when the process is asked to stop

    def __init__(self, *args, concurrency: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency
        self.turns = TurnThreads(concurrency, name=f"job-{self.name[:8]}")
        self.stopping = False
        self.forced = False
        self._reported = threading.local()  # the job a job thread last said Redis stopped
        self._between_jobs = False  # the loop waits for a free thread or a job: a stop may interrupt it
        self._burst = False  # see work()
        self._beats = ExecutionBeats(self)

    # -- taking jobs ------------------------------------------------------------------------------

    def work(self, *args, **kwargs):
        self._burst = bool(kwargs.get("burst"))
        try:
            return super().work(*args, **kwargs)
        finally:
            self._beats.stop()

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Take a job only once a thread is free to run it (heartbeating while all are busy)."""
        self._between_jobs = True
        try:
            while not self.turns.take_slot(JOB_MONITORING_INTERVAL_SECONDS):
                self._check_stop()
                self.heartbeat()
            try:
                self._check_stop()
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                if result is None and self._burst and self._queue_due_idle_checks():  # a burst's last look
                    result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except BaseException:
                self.turns.give_back_slot()
                raise
            if result is None:
                self.turns.give_back_slot()
            return result
        finally:
            self._between_jobs = False

    @staticmethod
    def _queue_due_idle_checks() -> int:
        """Queue the idle checks that are due (a burst has no scheduler child of ours)."""
        try:
            return jobs.queue_due_idle_checks(jobs.current_services())
        except RedisError:  # Redis away: the wait for a job says so
            return 0

    def _check_stop(self) -> None:
        if self.stopping or (self.stop_event is not None and self.stop_event.is_set()):
            raise StopRequested()

    def execute_job(self, job, queue):
        """Hand the job to the slot's thread: RQ's execution record (and the worker's busy state) first."""
        try:
            execution = self.prepare_execution(job)
        except BaseException:
            self.turns.give_back_slot()
            raise
        self._beats.add(job, execution)
        self.turns.run(lambda: self._perform(job, queue, execution))

    def _perform(self, job, queue, execution) -> None:
        try:
            self.perform_job(job, queue, execution)
        except (RedisConnectionError, RedisTimeoutError) as exc:  # RQ could record neither the end nor a failure
            self._stopped_by_redis(job, exc)
        finally:
            self._beats.remove(execution)
            self._idle_if_last()

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        # RQ's: the next beat's interval (at most the time left before the job's timeout) + 60 s. Beats come
        # every JOB_MONITORING_INTERVAL_SECONDS (ExecutionBeats), so a shorter margin finds a killed worker's
        # jobs sooner (a stall of ABANDONED_AFTER_SECONDS is taken as a dead process, as the conversation
        # lock's TTL is).
        remaining = job.timeout - working_time if job.timeout and job.timeout > 0 else self.job_monitoring_interval
        return int(max(1, min(remaining, self.job_monitoring_interval))) + ABANDONED_AFTER_SECONDS

    def _idle_if_last(self) -> None:
        # (A suspended worker stays shown as suspended while its last jobs finish.)
        if self.turns.running <= 1 and super().get_state() not in (WorkerStatus.IDLE, WorkerStatus.SUSPENDED):
            try:  # the last job in flight (this one counts until it returns)
                super().set_state(WorkerStatus.IDLE)
            except RedisError as exc:
                log.warning("worker state update failed: %s", type(exc).__name__)

    def handle_exception(self, job, *exc_info):
        # RQ logs a job's exception with its traceback. A Redis outage fails every job in flight at once (often
        # after its work was done: RQ cannot record the result); that is one line each, naming where and why.
        # (RQ's handler stack is skipped with it: the gateway pushes no handler.)
        exc = exc_info[1] if len(exc_info) > 1 else None
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            self._stopped_by_redis(job, exc)
            return
        super().handle_exception(job, *exc_info)

    def _stopped_by_redis(self, job, exc: BaseException) -> None:
        """One line per job (RQ may fail to record its failure after failing to record its end)."""
        if getattr(self._reported, "job_id", None) == job.id:
            return
        self._reported.job_id = job.id  # per job thread
        log.error("job %s ended unrecorded: Redis at %s not reachable: %s", job.id, redis_address(self.connection),
                  redis_failure(exc))

    def get_state(self) -> str:
        # Busy while any job is in flight or just taken from the queue (RQ's warm shutdown then lets them
        # finish instead of quitting at once).
        if self.turns.running or (self.turns.busy and not self._between_jobs):
            return WorkerStatus.BUSY
        return super().get_state()

    def set_state(self, state: str, pipeline=None):
        # RQ writes "idle" after each job and again before the next dequeue: only a change goes to Redis,
        # and "idle" only once no job is in flight.
        if state == WorkerStatus.IDLE and self.turns.running:
            return
        if pipeline is None and state == super().get_state():
            return
        super().set_state(state, pipeline=pipeline)

    # -- heartbeat, maintenance --------------------------------------------------------------------

    def check_for_suspension(self, burst: bool):
        # RQ's check, before every job (`rq suspend` stops the next job from being taken). Redis away: the wait
        # for a job that follows says so (and waits); RQ's loop would quit with a traceback.
        with contextlib.suppress(RedisError):
            super().check_for_suspension(burst)

    def run_maintenance_tasks(self):
        # RQ's: clean the registries (a killed worker's started jobs are retried or failed there).
        try:
            super().run_maintenance_tasks()
        except RedisError as exc:  # RQ's loop would quit with a traceback; the wait for a job then says it once
            log.warning("worker maintenance skipped: %s", type(exc).__name__)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        # RQ beats before and after each dequeue, as each job starts and after it, three commands each time:
        # skip a beat when one went out under a second ago (its TTL, at least WORKER_TTL_SECONDS + 60, still
        # stands: this loop beats at least every WORKER_TTL_SECONDS - 15 s), and send a beat as one pipeline.
        # RQ's longer TTL for a job's duration is for a forking worker whose loop waits on its child; this
        # loop keeps beating while jobs run.
        if self.last_heartbeat is not None and \
                (rq_now() - self.last_heartbeat).total_seconds() < HEARTBEAT_COALESCE_SECONDS:
            return None
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        with self.connection.pipeline() as beat:
            super().heartbeat(timeout, pipeline=beat)
            # Redis away: RQ's loop would quit with a traceback (a beat while every thread is busy, or between
            # jobs). A missed beat is renewed by the next; the wait for a job says that Redis is away.
            with contextlib.suppress(RedisError):
                beat.execute()
        return None

    # -- stopping ----------------------------------------------------------------------------------

    def unsubscribe(self):
        # RQ 3.0 leaves the channel, then stops its listener thread and waits for it. Once it has left, the
        # listener, no longer subscribed, waits up to its sleep_time (60 s) in redis-py's get_message for a
        # subscription that never comes, and redis-py 8's PubSubWorkerThread.stop() waits for it: a worker
        # asked to stop hung for up to a minute, one stop in a few. Here the listener is told to stop first; the
        # unsubscribe reply then wakes it and it leaves (its loop closes the pubsub); the wait for it is bounded.
        if self.pubsub_thread is None:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        self.pubsub_thread.stop(timeout=0)
        with contextlib.suppress(RedisError):
            self.pubsub.unsubscribe()
        self.pubsub_thread.join(timeout=1)
        with contextlib.suppress(RedisError):
            self.pubsub.close()

    def request_stop(self, signum, frame):
        self.stopping = True
        if self.stop_event is not None:
            self.stop_event.set()
        super().request_stop(signum, frame)  # RQ: quits now when idle, else after the current loop step
        if self._between_jobs:
            raise StopRequested()  # waiting for a job or a thread: take no further job

    def request_force_stop(self, signum, frame):
        self.forced = True
        super().request_force_stop(signum, frame)
        self.forced = False  # RQ ignored it (a repeat of the first signal within a second)

    def teardown(self):
        """Let the jobs in flight finish (heartbeating meanwhile), then register the worker's death."""
        try:
            while not self.forced and not self.turns.wait_until_idle(JOB_MONITORING_INTERVAL_SECONDS):
                try:
                    self.heartbeat()
                except RedisError as exc:
                    log.warning("worker heartbeat while stopping failed: %s", type(exc).__name__)
        finally:
            super().teardown()


class ThreadWorker(GatewayWorker):
    """A GatewayWorker in a non-main thread: stops when ``stop_event`` is set, leaves signals alone."""

    def work(self, burst: bool = False, logging_level: str | None = None, max_jobs: int | None = None,
             with_scheduler: bool = False, **kwargs) -> bool:
        """RQ's work loop (rq 3.0 ``BaseWorker.work``), step for step through its public methods, less the signal
        handlers it installs (``signal.signal`` raises outside the main thread; the main thread sets
        ``stop_event``) and the scheduler (the tests move due jobs in a thread of their own)."""
        self._burst = burst
        self.bootstrap(logging_level)
        completed = 0
        try:
            while True:
                try:
                    self.check_for_suspension(burst)
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                    self._check_stop()
                    result = self.dequeue_job_and_maintain_ttl(None if burst else self.dequeue_timeout)
                    if result is None:
                        break
                    job, queue = result
                    self.execute_job(job, queue)
                    self.heartbeat()
                    completed += 1
                    if max_jobs is not None and completed >= max_jobs:
                        break
                except StopRequested:
                    break
        finally:
            try:
                self.teardown()
            finally:
                self._beats.stop()
        return bool(completed)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        # RQ beats between waits for a job: a safe point to leave, when the loop is not handing a job over.
        if pipeline is None and self._between_jobs:
            self._check_stop()
        return super().heartbeat(timeout, pipeline=pipeline)


class ExecutionBeats:
    """Renews the heartbeat of every job execution in flight in the worker process, every
    ``JOB_MONITORING_INTERVAL_SECONDS``, in one pipeline (RQ's forking worker does it for its one horse in
    ``maintain_heartbeats``). Its thread starts with the first job and ends with ``stop()``."""

    def __init__(self, worker: GatewayWorker):
        self._worker = worker
        self._running: dict[str, tuple] = {}  # execution id -> (job, execution)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job, execution) -> None:
        with self._lock:
            self._running[execution.id] = (job, execution)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"beats-{self._worker.name[:8]}", daemon=True)
                self._thread.start()

    def remove(self, execution) -> None:
        with self._lock:
            self._running.pop(execution.id, None)

    def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def beat(self) -> int:
        """Renew every execution in flight now; returns how many."""
        with self._lock:
            running = list(self._running.values())
        if not running:
            return 0
        worker = self._worker
        with worker.connection.pipeline(transaction=False) as pipe:
            for job, execution in running:
                working = (rq_now() - job.started_at).total_seconds() if job.started_at else 0.0
                execution.heartbeat(job.started_job_registry, worker.get_heartbeat_ttl(job, working), pipe)
            pipe.execute()
        return len(running)

    def _run(self) -> None:
        while not self._stopping.wait(JOB_MONITORING_INTERVAL_SECONDS):
            try:
                self.beat()
            except RedisError as exc:  # the next beat tries again; the worker's loop says that Redis is away
                log.warning("job heartbeats skipped: %s", type(exc).__name__)
            except Exception:  # never let the thread die: the jobs in flight would be taken as abandoned
                log.exception("job heartbeats failed")


class PerJobLines(logging.Filter):
    """Drops RQ's INFO lines about each job (see PER_JOB_LOG_TEMPLATES); keeps everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.msg not in PER_JOB_LOG_TEMPLATES


def work_until_stopped(worker_class: type[GatewayWorker], connection, queue_names: list[str],
                        stop_event: threading.Event, *, with_scheduler: bool, burst: bool, max_jobs: int | None,
                        logging_level: str, ttl: int, concurrency: int = 1) -> None:
    """Run one RQ worker until a stop is requested, starting a fresh one once Redis is back after an outage."""
    announce = worker_class is GatewayWorker  # one line per outage from the main worker, not one per thread
    while wait_for_redis(connection, stop_event, announce=announce):
        try:
            worker = worker_class(queue_names, connection=connection, log_job_description=False,
                                  maintenance_interval=MAINTENANCE_INTERVAL_SECONDS, worker_ttl=ttl,
                                  job_monitoring_interval=JOB_MONITORING_INTERVAL_SECONDS, concurrency=concurrency)
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


def _queue_due_idle_checks() -> int:
    return jobs.queue_due_idle_checks(jobs.current_services())


def run(connection, queue_names: list[str], *, threads: int, events_threads: int = 0, burst: bool = False,
        max_jobs: int | None = None, logging_level: str = "INFO") -> None:
    """Work until SIGTERM/SIGINT, up to ``threads`` jobs of ``queue_names`` at once, and with ``events_threads``,
    up to that many operator events of the events queue besides (the jobs in flight finish first).

    ``connection``'s pool must allow ``redis_connections_needed(threads, events_threads)`` connections.
    """
    stop_event = threading.Event()
    exit_children_with_this_process()  # the scheduler child must not outlive this process and keep its lock
    if not wait_for_redis(connection, stop_event, at_start=True, one_off=burst or max_jobs is not None):
        return
    rq_log = logging.getLogger("rq.worker")
    if not any(isinstance(f, PerJobLines) for f in rq_log.filters):
        rq_log.addFilter(PerJobLines())
    events_queues = [EVENTS_QUEUE_NAME] if events_threads else []
    if burst or max_jobs is not None:
        # RQ's burst and max_jobs count jobs one after the other; RQ's own scheduler (a burst moves the due jobs
        # once, in this process) is enough for a one-off run. The events queue comes last.
        work_until_stopped(GatewayWorker, connection, queue_names + events_queues, stop_event, with_scheduler=True,
                           burst=burst, max_jobs=max_jobs, logging_level=logging_level, ttl=WORKER_TTL_SECONDS,
                           concurrency=1)
        return
    # The scheduler child is ours (workers.scheduler), not RQ's: it waits out a Redis outage instead of dying
    # with a traceback, and lives as long as this process, across the RQ workers started after an outage.
    scheduler_process = scheduler.start(connection, queue_names + events_queues, logging_level,
                                        tick=_queue_due_idle_checks)
    events_worker = start_events_worker(connection, stop_event, events_threads, logging_level) \
        if events_threads else None
    try:
        work_until_stopped(GatewayWorker, connection, queue_names, stop_event, with_scheduler=False, burst=False,
                            max_jobs=None, logging_level=logging_level, ttl=WORKER_TTL_SECONDS, concurrency=threads)
    finally:
        stop_event.set()  # the events worker stops with the main one (its deliveries in flight finish first)
        if events_worker is not None:
            events_worker.join()
        scheduler.stop(scheduler_process)


def start_events_worker(connection, stop_event: threading.Event, threads: int, logging_level: str = "INFO",
                        worker_class: type[ThreadWorker] = ThreadWorker) -> threading.Thread:
    """Start the RQ worker of the events queue in a thread of this process: up to ``threads`` deliveries at once,
    until ``stop_event`` is set (then it lets those in flight finish, each within its deadline)."""
    thread = threading.Thread(target=work_until_stopped, name="events-worker", args=(
        worker_class, connection, [EVENTS_QUEUE_NAME], stop_event), kwargs={
        "with_scheduler": False, "burst": False, "max_jobs": None, "logging_level": logging_level,
        "ttl": THREAD_WORKER_TTL_SECONDS, "concurrency": threads})
    thread.start()
    return thread
