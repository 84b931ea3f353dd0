"""RQ jobs: thin wrappers that wire collaborators and call the plain flow.

Collaborators are built once per worker process, on the first job (or by ``install_services`` when
the worker starts), never at import time.
"""

from __future__ import annotations

import logging
import math
import time
import uuid

from redis import Redis
from rq import Queue, Retry, get_current_job

from core.queues import CLOSE_IDLE_JOB, QUEUE_NAME, drain_budget_seconds, enqueue_drain, failure_ttl_seconds
from core.state import ConversationStore
from workers import chats, flow, metering
from workers.errors import TransientError
from workers.services import Services

# A retry that the flow asks for is counted per message, not per job, so the job's own cap is only
# a backstop against a loop.
JOB_RETRY_BACKSTOP = 1000

log = logging.getLogger(__name__)
_services: Services | None = None


class RQJobPort:
    """The flow's view of the job queue."""

    def __init__(self, queue: Queue, settings):
        self.queue = queue
        self.settings = settings

    def enqueue_drain(self, cid: str) -> None:
        enqueue_drain(self.queue, cid, self.settings)

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
    token = job.id if job else uuid.uuid4().hex  # the job's token: each run holds the lock under one of its own
    try:
        flow.drain_conversation(services, conversation_id, token,
                                budget_seconds=drain_budget_seconds(services.settings))
    except flow.RetryLater as exc:
        return _retry(exc.delay_seconds)
    except flow.MessagesFailed as exc:
        if job is not None:
            job.meta["failed_sids"] = exc.sids
            job.meta["conversation_id"] = conversation_id
            job.save_meta()
            # Given up on purpose (the person had an apology, the texts are kept for a replay): into the
            # failed-job registry now, not retried as a crashed or abandoned drain is (core.queues).
            job.retries_left = 0
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
        return _retry(flow.backoff_seconds(1, services.settings.retry_intervals_seconds, exc.retry_after_seconds,
                                           services.settings.retry_after_max_seconds))
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
