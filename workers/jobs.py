"""RQ jobs: thin wrappers that wire collaborators and call the plain flow.

Collaborators are built once per worker process, on the first job (or by ``install_services`` when
the worker starts), never at import time.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta

from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.job import JobStatus
from rq.results import Result
from rq.timeouts import JobTimeoutException

from core.queues import (
    CLOSE_IDLE_JOB,
    DRAIN_JOB,
    QUEUE_NAME,
    drain_budget_seconds,
    drain_job_options,
    enqueue_drain,
    failure_ttl_seconds,
    job_timeout_seconds,
)
from core.state import ConversationStore
from workers import chats, flow, metering
from workers.errors import TransientError
from workers.job_timeouts import WatchdogDeathPenalty
from workers.services import Services

# A retry that the flow asks for is counted per message, not per job, so the job's own cap is only
# a backstop against a loop.
JOB_RETRY_BACKSTOP = 1000
STALL_AFTER_SECONDS = 20
QUEUED_JOB_STALE_SECONDS = 60  # a drain job queued this long and not started is taken as lost (a re-queue is harmless)

log = logging.getLogger(__name__)
_services: Services | None = None


class RQJobPort:
    """The flow's view of the job queue."""

    def __init__(self, queue: Queue, settings):
        self.queue = queue
        self.settings = settings

    def enqueue_drain(self, cid: str) -> None:
        enqueue_drain(self.queue, cid, self.settings)

    def enqueue_woken_drains(self, cids: list[str]) -> None:
        """One drain job per wake-up (each conversation once), in one transaction; their claims
        (``drain_pending``) were set by the accept script that pushed them."""
        with self.queue.connection.pipeline(transaction=True) as pipe:
            for cid in dict.fromkeys(cids):
                enqueue_drain(self.queue, cid, self.settings, pipeline=pipe, mark_pending=False)
            pipe.execute()

    def retry_drain(self, cid: str, job_id: str, delay_seconds: float) -> None:
        """Run a drain that asked to be retried again as the drain job ``job_id`` (its token), after the delay."""
        options = {**drain_job_options(cid, self.settings), "job_id": job_id}
        if delay_seconds <= 0:
            self.queue.enqueue_call(DRAIN_JOB, **options)
            log.info("Job %s: queued to run again (conversation=%s)", job_id, cid)
        else:  # RQ's scheduler counts whole seconds: as a drain job's own Retry would
            delay = timedelta(seconds=math.ceil(delay_seconds))
            self.queue.enqueue_in(delay, DRAIN_JOB, **options)
            log.info("Job %s: scheduled to run again at %s (conversation=%s)", job_id,
                     (datetime.now(UTC) + delay).isoformat(timespec="seconds"), cid)

    def record_failed_drain(self, cid: str, job_id: str, failure: Exception, started_at: datetime) -> None:
        """Put a failed drain job ``job_id`` in RQ's failed-job registry, as RQ records one that raised
        ``failure``: the messages it gave up (``failure.sids``) are replayed when an operator requeues it."""
        options = drain_job_options(cid, self.settings)
        ttl = options["failure_ttl"]
        job = self.queue.create_job(DRAIN_JOB, **options, job_id=job_id,
                                    meta={"failed_sids": failure.sids, "conversation_id": cid})
        job.enqueued_at, job.ended_at = started_at, datetime.now(UTC)
        reason = "".join(traceback.format_exception(failure))
        with self.queue.connection.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            job.save(pipeline=pipe)  # with its meta (the registry's save leaves the meta out)
            self.queue.failed_job_registry.add(job, ttl=ttl, exc_string=reason, pipeline=pipe)
            Result.create_failure(job, ttl, exc_string=reason, pipeline=pipe)
            pipe.execute()

    def enqueue_idle_checks(self, cids: list[str], now: float) -> None:
        """A ``close_idle`` job for each conversation whose idle check is due, with its lease, in one transaction."""
        options = dict(timeout=int(2 * self.settings.uponai_read_timeout_seconds + 60), result_ttl=0,
                       failure_ttl=failure_ttl_seconds(self.settings))
        with self.queue.connection.pipeline(transaction=True) as pipe:
            for cid in cids:
                self.queue.enqueue_call(CLOSE_IDLE_JOB, args=(cid,), description=f"idle check {cid}", **options,
                                        pipeline=pipe)
            ConversationStore.lease_idle_checks(pipe, cids, now)
            pipe.execute()


def build_services(settings, redis: Redis | None = None) -> Services:
    """Real collaborators for ``settings``."""
    from core.redis import connect_redis
    from workers.twilio_client import TwilioSender
    from workers.uponai import UponAIClient

    redis = redis or connect_redis(settings)
    return Services(
        store=ConversationStore(redis, dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
                                retention_seconds=settings.data_retention_seconds),
        agent=metering.MeteredClient(UponAIClient.from_settings(settings), "uponai"),
        sender=metering.MeteredClient(TwilioSender.from_settings(settings), "twilio"),
        settings=settings,
        jobs=RQJobPort(Queue(QUEUE_NAME, connection=redis), settings),
    )


def install_services(services: Services) -> None:
    global _services
    _services = services


def current_services() -> Services:
    global _services
    if _services is None:
        from config import load_settings

        _services = build_services(load_settings())
    return _services


def _retry(delay_seconds: float) -> Retry:
    return Retry(max=JOB_RETRY_BACKSTOP, interval=[max(0, math.ceil(delay_seconds))])


class RetryCountFilter(logging.Filter):
    """Takes the count out of RQ's "Job ...: scheduled for retry at ..., 999 remaining" lines.

    That count is ``JOB_RETRY_BACKSTOP`` minus the job's runs, not what is left of anything an operator cares
    about: the flow counts attempts per message and logs them (``attempt=2 of 6``). The time stays. A line
    RQ words differently passes unchanged.
    """

    REWORDED = {
        "Job %s: scheduled for retry at %s, %s remaining": ("Job %s: scheduled to run again at %s", 2),
        "Job %s: enqueued for retry, %s remaining": ("Job %s: queued to run again", 1),
    }

    def filter(self, record: logging.LogRecord) -> bool:
        reworded = self.REWORDED.get(record.msg) if isinstance(record.msg, str) else None
        if reworded is not None and isinstance(record.args, tuple):
            record.msg, kept = reworded
            record.args = record.args[:kept]
        return True


@metering.timed_job
def drain(conversation_id: str):
    """Job: answer the conversation's waiting messages in order."""
    services = current_services()
    job = get_current_job()
    if job is not None and job.meta.get("failed_sids"):
        # A failed drain job requeued by an operator: put the messages it gave up back in line.
        services.store.restore_dead_letters(job.meta.pop("failed_sids"))
        job.save_meta()
    token = job.id if job else uuid.uuid4().hex
    try:  # the drain's first step notes that a drain job has started (drain_pending), with the lock
        flow.drain_conversation(services, conversation_id, token,
                                budget_seconds=drain_budget_seconds(services.settings))
    except flow.RetryLater as exc:
        return _retry(exc.delay_seconds)
    except flow.MessagesFailed as exc:
        if job is not None:
            job.meta["failed_sids"] = exc.sids
            job.meta["conversation_id"] = conversation_id
            job.save_meta()
        raise
    return None


@metering.timed_job
def close_idle(conversation_id: str):
    """Job: end the conversation's chat if it has been idle for CHAT_IDLE_TIMEOUT_SECONDS."""
    services = current_services()
    job = get_current_job()
    token = f"idle:{job.id if job else uuid.uuid4().hex}"
    try:
        again_in = chats.close_if_idle(services, conversation_id, token)
    except TransientError as exc:
        return _retry(flow.backoff_seconds(1, services.settings.retry_intervals_seconds, exc.retry_after_seconds))
    if again_in is not None:
        services.store.schedule_idle_check(conversation_id, time.time() + again_in)
    return None


IDLE_CHECKS_PER_STEP = 500


def queue_due_idle_checks(services: Services) -> int:
    """Queue a ``close_idle`` job for every conversation whose idle check is due; return how many.

    Run by the scheduler every second (``workers.scheduler``), as RQ moves its scheduled jobs: an idle check
    is an entry in a sorted set written with the activity (no job per conversation until it is due).
    """
    queued = 0
    while True:
        now = time.time()
        cids = services.store.due_idle_checks(now, IDLE_CHECKS_PER_STEP)
        if cids:
            services.jobs.enqueue_idle_checks(cids, now)
            queued += len(cids)
        if len(cids) < IDLE_CHECKS_PER_STEP:
            return queued


@metering.timed_drain_from_wakeup
def drain_woken(conversation_id: str) -> str:
    """A drain straight from a wake-up, on a job thread of the worker process, with no RQ job of its own.

    The common path of a message (``workers.wakeups``): what RQ does for a drain job (taking it, the job's
    records, its result), about ten Redis round trips, is skipped. What needs RQ gets an RQ job with this
    drain's id, so that it carries on exactly as the drain job would have: a retry (a transient failure,
    the end of a quiet window) is a drain job scheduled under this id (its lock token, ``retry_token``),
    and a message given up puts a failed drain job in RQ's failed-job registry, replayable by an operator.
    Returns the outcome: ``ok``, ``retry`` or ``failed``.
    """
    services = current_services()
    job_id = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    try:
        with WatchdogDeathPenalty(job_timeout_seconds(services.settings), JobTimeoutException, job_id=job_id):
            flow.drain_conversation(services, conversation_id, job_id,
                                    budget_seconds=drain_budget_seconds(services.settings))
    except flow.RetryLater as exc:
        services.jobs.retry_drain(conversation_id, job_id, exc.delay_seconds)
        return "retry"
    except flow.MessagesFailed as exc:
        services.jobs.record_failed_drain(conversation_id, job_id, exc, started_at)
        return "failed"
    return "ok"


def recover_stalled(services: Services) -> int:
    """Queue a drain for every conversation with waiting messages and no job working on or waiting for it.

    Run by the workers' maintenance: it answers what a killed worker left behind. A conversation is
    left alone while it is locked, while a drain job of it waits in the queue (``drain_pending``, set
    when one is queued, cleared when one starts), and while a retry is scheduled.
    """
    store = services.store
    now = time.time()
    recovered = 0
    cids = store.active_conversations()
    for cid, (holder, conversation) in zip(cids, store.sweep_view(cids), strict=True):
        if holder is not None:
            continue
        moments = {name: float(conversation.get(name) or 0)
                   for name in ("last_inbound_at", "retry_at", "drain_pending")}
        if now - moments["last_inbound_at"] < STALL_AFTER_SECONDS or now < moments["retry_at"] + STALL_AFTER_SECONDS:
            continue
        if moments["drain_pending"] and now - moments["drain_pending"] < QUEUED_JOB_STALE_SECONDS:
            continue  # its drain job is still waiting in the queue
        if store.inbox_length(cid) == 0:
            store.forget_active(cid)
            continue
        services.jobs.enqueue_drain(cid)
        recovered += 1
    return recovered
