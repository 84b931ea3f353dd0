"""Operator events: what an operator should hear of without polling, posted to ``EVENTS_WEBHOOK_URL``.

``emit_event`` is called by the web (a delivery status callback) and by the workers (a text kept during a
handoff, a STOP, a give-up); it only queues an RQ job by its dotted path (``EVENT_JOB``) on the events queue
(``core.queues.EVENTS_QUEUE_NAME``), which each worker process serves with threads of its own
(``EVENTS_WORKER_THREADS``, apart from those that answer people); ``workers.events`` runs it: it signs the
event (Standard Webhooks) and posts it, retried with backoff. So this module, and the web with it, never
imports an HTTP client or the worker side.

An event job is in one of the events queue's places: the queue itself, its started registry (being posted),
its scheduled registry (waiting for a retry), its failed registry (every retry spent), its finished registry
(posted, for ``EVENT_RESULT_TTL_SECONDS``). Its meta names the conversation (``conversation_id``).

Each event is emitted at most once per ``event_id`` (the caller's name for what happened, e.g.
``"handoff.message_received:SM..."``): a marker ``event:{sha256(event_id)}`` says it was queued ("queued")
and then posted ("sent"). Emitting on a plain Redis client checks and sets the marker and queues the job
in one transaction; emitting inside the caller's pipeline (its MULTI) cannot read first, so it queues the
job under a job id made from the event id, and the job itself does nothing for an event already sent.

The event carries the person's full number (the receiver is the operator's own system, which needs it to
act: answer with ``POST /admin/conversations/<number>/messages``); a message body only with
``EVENTS_INCLUDE_BODIES``.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue, Retry

from core.queues import ADMIN_FAILURE_TTL_SECONDS, EVENTS_QUEUE_NAME, kept_seconds
from core.state.keys import key

EVENT_JOB = "workers.events.deliver_event"
EVENT_KINDS = ("handoff.requested", "handoff.message_received", "handoff.started", "handoff.ended",
               "delivery.failed", "conversation.opted_out")
QUEUED, SENT = "queued", "sent"
EVENT_RESULT_TTL_SECONDS = 3600  # a posted event's job: nothing to look at later (the marker remembers it)


def event_digest(event_id: str) -> str:
    return hashlib.sha256(event_id.encode()).hexdigest()


def event_marker_key(event_id: str) -> str:
    """``event:{sha256}``: "queued" once the event's job is queued, "sent" once the receiver took it."""
    return key("event", event_digest(event_id))


def event_job_id(event_id: str) -> str:
    return f"event-{event_digest(event_id)[:32]}"


def erase_mark_seconds(settings) -> int:
    """How long an erase's mark (``erased:{cid}``) stays: past the last retry of any event queued before it."""
    return int(sum(settings.events_retry_intervals_seconds) + 3600)


def erased_before(redis: Redis, event: dict[str, Any]) -> bool:
    """Whether the event's conversation was erased after the event was created (it is then never posted)."""
    mark = redis.get(key("erased", event["conversation"]["id"]))
    if mark is None:
        return False
    created = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00")).timestamp()
    return created <= float(mark)


def event_job_timeout_seconds(settings) -> int:
    """RQ's timeout of an event job: the delivery's deadline (EVENTS_TIMEOUT_SECONDS, the whole request) and
    its few Redis steps. Also how long a run's claim to post an event lives (``workers.events``)."""
    return math.ceil(settings.events_timeout_seconds) + 30


def build_event(settings, kind: str, *, event_id: str, conversation_id: str, number: str, text: str | None = None,
                **fields: Any) -> dict[str, Any]:
    """The JSON the receiver gets: id, type, created_at, conversation {id, number}, data (``text`` if allowed)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event type {kind!r}; one of {', '.join(EVENT_KINDS)}")
    data = {name: value for name, value in fields.items() if value is not None}
    if text is not None and settings.events_include_bodies:
        data["text"] = text
    return {"id": f"evt_{event_digest(event_id)[:24]}", "type": kind,
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "conversation": {"id": conversation_id, "number": number}, "data": data}


def emit_event(redis_or_pipeline: Redis | Pipeline, settings, kind: str, *, event_id: str, conversation_id: str,
               number: str, text: str | None = None, **fields: Any) -> None:
    """Queue the event for the operator's webhook, once per ``event_id``; nothing when no webhook is set.

    With a pipeline, call it after the pipeline's ``multi()`` (or before anything else is queued on it):
    RQ puts the pipeline into MULTI to queue the job, and the event goes out only if the pipeline executes.
    """
    if not settings.events_webhook_url:
        return
    event = build_event(settings, kind, event_id=event_id, conversation_id=conversation_id, number=number,
                        text=text, **fields)
    marker = event_marker_key(event_id)
    marker_ttl = max(settings.dedupe_ttl_seconds, kept_seconds(settings, ADMIN_FAILURE_TTL_SECONDS))
    if isinstance(redis_or_pipeline, Pipeline):
        queue = Queue(EVENTS_QUEUE_NAME, connection=Redis(connection_pool=redis_or_pipeline.connection_pool))
        _enqueue(queue, settings, event, event_id, redis_or_pipeline)
        redis_or_pipeline.set(marker, QUEUED, nx=True, ex=marker_ttl)
        return
    queue = Queue(EVENTS_QUEUE_NAME, connection=redis_or_pipeline)
    with redis_or_pipeline.pipeline() as pipe:
        try:
            pipe.watch(marker)
            if pipe.exists(marker):
                return  # emitted before
            pipe.multi()
            pipe.set(marker, QUEUED, ex=marker_ttl)
            _enqueue(queue, settings, event, event_id, pipe)
            pipe.execute()
        except WatchError:
            return  # a concurrent emitter of the same event queued it


def _enqueue(queue: Queue, settings, event: dict[str, Any], event_id: str, pipe: Pipeline) -> None:
    intervals = list(settings.events_retry_intervals_seconds)
    queue.enqueue_call(EVENT_JOB, args=(event, event_id), job_id=event_job_id(event_id),
                       description=f"event {event['type']} of conversation {event['conversation']['id']}",
                       timeout=event_job_timeout_seconds(settings),
                       result_ttl=EVENT_RESULT_TTL_SECONDS,
                       failure_ttl=kept_seconds(settings, ADMIN_FAILURE_TTL_SECONDS),
                       # The conversation's id: an erase deletes its finished and failed jobs (they quote the number).
                       meta={"conversation_id": event["conversation"]["id"]},
                       retry=Retry(max=len(intervals), interval=intervals), pipeline=pipe)


FAILED_DELIVERY_STATUSES = ("failed", "undelivered")


def emit_delivery_failed(store, settings, cid: str, *, event_id: str, status: str, error_code: str | None,
                         message_sid: str | None = None, number: str | None = None) -> None:
    """``delivery.failed`` for one of the gateway's SMS: Twilio reported it failed or undelivered (its status
    callback, ``message_sid``), or refused to send it at all (no sid)."""
    if not settings.events_webhook_url:
        return
    number = store.conversation(cid).get("person") or number or ""
    emit_event(store.redis, settings, "delivery.failed", event_id=event_id, conversation_id=cid, number=number,
               message_sid=message_sid, status=status, error_code=error_code or None)
