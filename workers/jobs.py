"""RQ jobs: thin wrappers that wire collaborators and call the plain flow.

Collaborators are built once per worker process, on the first job (or by ``install_services`` when
the worker starts), never at import time.
"""

from __future__ import annotations

import math
import uuid

from redis import Redis
from rq import Queue, Retry, get_current_job

from workers import flow

QUEUE_NAME = "sms"
# A retry that the flow asks for is counted per message, not per job, so the job's own cap is only
# a backstop against a loop.
JOB_RETRY_BACKSTOP = 1000

_services: flow.Services | None = None


def build_services(settings, redis: Redis | None = None) -> flow.Services:
    """Real collaborators for ``settings``."""
    from workers.store import ConversationStore, connect_redis
    from workers.twilio_client import TwilioSender
    from workers.uponai import UponAIClient

    redis = redis or connect_redis(settings.redis_url)
    return flow.Services(
        store=ConversationStore(redis, dedupe_ttl_seconds=settings.dedupe_ttl_seconds),
        agent=UponAIClient.from_settings(settings),
        sender=TwilioSender.from_settings(settings),
        settings=settings,
    )


def install_services(services: flow.Services) -> None:
    global _services
    _services = services


def current_services() -> flow.Services:
    global _services
    if _services is None:
        from config import load_settings

        _services = build_services(load_settings())
    return _services


def job_timeout_seconds(settings) -> int:
    return int(drain_budget_seconds(settings) + 4 * settings.uponai_read_timeout_seconds + 120)


def drain_budget_seconds(settings) -> float:
    return 2 * settings.uponai_read_timeout_seconds + 60


def drain(conversation_id: str):
    """Job: answer the conversation's waiting messages in order."""
    services = current_services()
    job = get_current_job()
    token = job.id if job else uuid.uuid4().hex
    try:
        flow.drain_conversation(services, conversation_id, token,
                                budget_seconds=drain_budget_seconds(services.settings))
    except flow.RetryLater as exc:
        return Retry(max=JOB_RETRY_BACKSTOP, interval=[max(0, math.ceil(exc.delay_seconds))])
    return None


def enqueue_drain(queue: Queue, conversation_id: str, settings, *, pipeline=None):
    """Queue a drain job for the conversation (cheap to repeat: extra jobs find nothing to do)."""
    return queue.enqueue_call(
        "workers.jobs.drain",
        args=(conversation_id,),
        description=f"drain conversation {conversation_id}",
        timeout=job_timeout_seconds(settings),
        result_ttl=0,
        failure_ttl=30 * 24 * 3600,
        pipeline=pipeline,
    )
