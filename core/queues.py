"""The gateway's RQ queues, seen from both sides: their names, the jobs enqueued, the depth, the live workers.

Job functions are named by their dotted path (RQ imports them in the worker), so this module, and the
web with it, never imports the worker side.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry, Worker
from rq.job import Job

QUEUE_NAME = "sms"
ADMIN_QUEUE_NAME = "sms-admin"  # workers take it before any drain job
# Operator events (core.events): served by an RQ worker of their own in each worker process, with
# EVENTS_WORKER_THREADS job threads, so that a slow events receiver never takes a thread that answers people.
EVENTS_QUEUE_NAME = "sms-events"
CAMPAIGN_QUEUE_NAME = "sms-campaigns"  # workers take it last: a campaign never delays a reply
WORKER_QUEUE_NAMES = (ADMIN_QUEUE_NAME, QUEUE_NAME, CAMPAIGN_QUEUE_NAME)  # what a worker listens to, in order

DRAIN_JOB = "workers.jobs.drain"
CLOSE_IDLE_JOB = "workers.jobs.close_idle"
START_OUTBOUND_JOB = "workers.admin_ops.start_outbound_job"
OPERATOR_MESSAGE_JOB = "workers.admin_ops.operator_message_job"
CAMPAIGN_BATCH_JOB = "workers.campaigns.send_batch_job"

# How long a failed job stays in RQ's failed-job registry (never past DATA_RETENTION_DAYS: see kept_seconds).
# A failed drain or idle check holds a person's texts nobody has answered: an operator may notice it late
# and replay it (requeue), so it stays as long as the data may. A failed admin job was answered to the
# operator who asked at the time (the API's error, or GET /admin/jobs/<id>): a week to look at it is enough.
DRAIN_FAILURE_TTL_SECONDS = 30 * 24 * 3600
# A finished drain job is left to expire rather than deleted: RQ's delete (result_ttl=0) reads the job's
# execution records back one by one (about six Redis round trips per job); expiry costs none.
DRAIN_RESULT_TTL_SECONDS = 60
# A drain job abandoned by a killed worker (or raising unexpectedly) runs again after these waits, then fails.
# The first is at once: back on the queue, for any worker (a wait needs a scheduler, and a killed worker's
# scheduler lock outlives it by a minute).
DRAIN_RETRY_INTERVALS_SECONDS = (0, 5, 30)
ADMIN_FAILURE_TTL_SECONDS = 7 * 24 * 3600
ADMIN_RESULT_TTL_SECONDS = 24 * 3600
LOCK_WAIT_SECONDS = 30.0  # how long an admin job waits for the conversation's lock

# A worker whose heartbeat is older than this is taken as gone (RQ's default, 420 s, is for slower recovery).
WORKER_TTL_SECONDS = 35


# -- drain jobs -----------------------------------------------------------------------------------


def drain_budget_seconds(settings) -> float:
    return 2 * settings.uponai_read_timeout_seconds + 60


def job_timeout_seconds(settings) -> int:
    return int(drain_budget_seconds(settings) + 4 * settings.uponai_read_timeout_seconds + 120)


def kept_seconds(settings, seconds: int) -> int:
    """``seconds``, or less when data retention is shorter: a job's record may quote a number or words."""
    return min(seconds, settings.data_retention_seconds)


def failure_ttl_seconds(settings) -> int:
    """How long a failed drain or idle check is kept."""
    return kept_seconds(settings, DRAIN_FAILURE_TTL_SECONDS)


def drain_job_options(conversation_id: str, settings) -> dict[str, Any]:
    """What every drain job of the conversation is made with.

    ``retry``: a drain job that RQ finds abandoned (its worker killed mid-turn: RQ's StartedJobRegistry cleanup)
    or that raises unexpectedly (a job timeout, a bug) runs again after these intervals, as RQ retries any
    job; the run again resumes the turn (under a lock token of its own: see ``workers.flow.drain_conversation``).
    A drain that gives messages up is
    not retried (``workers.jobs.drain``): it fails into the failed-job registry, for an operator to replay.
    """
    return dict(args=(conversation_id,), description=f"drain conversation {conversation_id}",
                timeout=job_timeout_seconds(settings), result_ttl=DRAIN_RESULT_TTL_SECONDS,
                failure_ttl=failure_ttl_seconds(settings),
                retry=Retry(max=len(DRAIN_RETRY_INTERVALS_SECONDS), interval=list(DRAIN_RETRY_INTERVALS_SECONDS)))


def enqueue_drain(queue: Queue, conversation_id: str, settings, *, pipeline: Pipeline | None = None,
                  job_id: str | None = None) -> Job:
    """Queue a drain job for the conversation (on ``pipeline`` when given: the caller executes it).

    Cheap to repeat: a drain job that finds the conversation held by another drain, or nothing waiting, ends.
    """
    return queue.enqueue_call(DRAIN_JOB, **drain_job_options(conversation_id, settings), pipeline=pipeline,
                              job_id=job_id)


def queue_depth(queue: Queue) -> int:
    """Jobs waiting in ``queue``: RQ's own count (what ``rq info`` shows)."""
    return queue.count


# -- admin jobs -----------------------------------------------------------------------------------


def admin_job_timeout_seconds(settings) -> int:
    return int(2 * settings.uponai_read_timeout_seconds + 2 * settings.twilio_timeout_seconds
               + LOCK_WAIT_SECONDS + 60)


def enqueue_admin_job(queue: Queue, settings, func: str, args: tuple, *, description: str,
                      job_id: str | None = None, conversation_id: str | None = None) -> Job:
    """Queue the admin job ``func`` (a dotted path in ``workers.admin_ops``) on the admin queue."""
    meta = {"conversation_id": conversation_id} if conversation_id else {}
    return queue.enqueue_call(func, args=args, job_id=job_id or uuid.uuid4().hex, description=description,
                              timeout=admin_job_timeout_seconds(settings),
                              result_ttl=kept_seconds(settings, ADMIN_RESULT_TTL_SECONDS),
                              failure_ttl=kept_seconds(settings, ADMIN_FAILURE_TTL_SECONDS), meta=meta)


def outbound_start_job(queue: Queue, settings, op_id: str, job_id: str, request: dict[str, Any], cid: str) -> Job:
    """The (not yet queued) job that starts an outbound conversation."""
    return _operation_job(queue, settings, START_OUTBOUND_JOB, op_id, job_id, request, cid,
                          f"admin: start outbound conversation {cid}")


def operator_message_job(queue: Queue, settings, op_id: str, job_id: str, request: dict[str, Any], cid: str) -> Job:
    """The (not yet queued) job that sends an operator's SMS into an ongoing conversation."""
    return _operation_job(queue, settings, OPERATOR_MESSAGE_JOB, op_id, job_id, request, cid,
                          f"admin: operator message in conversation {cid}")


def _operation_job(queue: Queue, settings, func: str, op_id: str, job_id: str, request: dict[str, Any], cid: str,
                   description: str) -> Job:
    return queue.create_job(func, args=(op_id, request), job_id=job_id, description=description,
                            timeout=admin_job_timeout_seconds(settings),
                            result_ttl=kept_seconds(settings, ADMIN_RESULT_TTL_SECONDS),
                            failure_ttl=kept_seconds(settings, ADMIN_FAILURE_TTL_SECONDS),
                            meta={"conversation_id": cid})


# -- campaign jobs --------------------------------------------------------------------------------

# A batch job abandoned by a killed worker (or raising: Twilio or UponAI unavailable) runs again after these waits;
# the first at once, as a drain's. Its recipients already texted are not texted again (``workers.campaigns``).
CAMPAIGN_RETRY_INTERVALS_SECONDS = (0, 10, 30, 60, 120, 300)
CAMPAIGN_RESULT_TTL_SECONDS = 3600


def campaign_job_prefix(campaign_id: str) -> str:
    """What the ids of a campaign's batch jobs start with (``campaign-{id}-{batch}-{run}``)."""
    return f"campaign-{campaign_id}-"


def campaign_batch_job(queue: Queue, settings, campaign_id: str, batch: int, *, run: int = 0) -> Job:
    """The (not yet queued) job that texts batch ``batch`` of the campaign (its ``run``-th job, after reschedules).

    Its arguments are ids only: the numbers stay in Redis (``core.state.campaigns``).
    """
    return queue.create_job(CAMPAIGN_BATCH_JOB, args=(campaign_id, batch, run),
                            job_id=f"{campaign_job_prefix(campaign_id)}{batch}-{run}",
                            description=f"campaign {campaign_id} batch {batch}",
                            timeout=admin_job_timeout_seconds(settings) * settings.campaign_batch_size,
                            result_ttl=CAMPAIGN_RESULT_TTL_SECONDS,
                            failure_ttl=kept_seconds(settings, ADMIN_FAILURE_TTL_SECONDS),
                            retry=Retry(max=len(CAMPAIGN_RETRY_INTERVALS_SECONDS),
                                        interval=list(CAMPAIGN_RETRY_INTERVALS_SECONDS)))


def queue_campaign_batch(queue: Queue, job: Job, *, at: datetime | None, pipeline: Pipeline) -> None:
    """Queue a campaign batch job now, or at ``at`` through RQ's scheduler, on ``pipeline`` (the caller executes)."""
    if at is None or at <= datetime.now(UTC):
        queue.enqueue_job(job, pipeline=pipeline)
    else:
        queue.schedule_job(job, at, pipeline=pipeline)


# -- workers --------------------------------------------------------------------------------------


def live_workers(connection: Redis, queue_name: str = QUEUE_NAME) -> list[Worker]:
    """The registered workers on ``queue_name`` whose heartbeat is recent (a killed worker's entry outlives it by
    minutes). One per worker process on the sms queue; the process's events worker is not counted."""
    cutoff = datetime.now(UTC) - timedelta(seconds=WORKER_TTL_SECONDS)
    return [worker for worker in Worker.all(connection=connection)
            if worker.last_heartbeat is not None and worker.last_heartbeat >= cutoff
            and queue_name in worker.queue_names()]
