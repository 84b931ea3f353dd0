"""Posting operator events to ``EVENTS_WEBHOOK_URL``: signed (Standard Webhooks), retried with backoff, once per event.

The request is a JSON POST (see ``core.events.build_event``) signed as the Standard Webhooks specification
(www.standardwebhooks.com) says, so a receiver verifies it with that specification's ``standardwebhooks`` library
in its own language (``Webhook(secret).verify(body, headers)``)::

    webhook-id:         the event's id (the same on every retry: a receiver deduplicates on it)
    webhook-timestamp:  Unix seconds when this attempt was signed
    webhook-signature:  v1,<base64 HMAC-SHA256 of f"{id}.{timestamp}.{body}">

keyed with the base64-decoded part of ``EVENTS_WEBHOOK_SECRET`` (``whsec_...``). Signing the id and the
timestamp with the body lets the receiver refuse a replayed or re-labelled request.

Each attempt has one deadline, ``EVENTS_TIMEOUT_SECONDS``, for the whole request: connecting, sending, and
every read of the answer (a receiver that drips its answer a byte at a time is given up at the deadline, as one
that never answers is). Of the answer only the status counts: at most ``ANSWER_READ_BYTES`` of its body are
read, and the connection is closed. httpx runs the request under ``asyncio.timeout``, which cancels it wherever
it waits (requests' and httpx's own timeouts are per read, so a slow drip never ends them).

A 2xx is success; a missed deadline, a dropped connection, a 5xx or a 429 is retried by RQ after
``EVENTS_RETRY_INTERVALS_SECONDS``; any other answer (a 4xx: the receiver refuses the event) is final
and only logged, since repeating the same request would be refused the same way.

Raised by the job: ``EventNotDelivered`` (the receiver could not take the event now: retried).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx

from config.settings import webhook_secret_key
from core.events import SENT, erased_before, event_digest, event_job_timeout_seconds, event_marker_key
from core.state.keys import key
from workers import jobs

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
USER_AGENT = "sms-gateway-events/2"
# Of the receiver's answer only the status counts; a short body is read (so that its server sees a whole
# exchange), a long one is cut off here, never held in memory.
ANSWER_READ_BYTES = 1024


class EventNotDelivered(Exception):
    """The receiver could not take the event now (deadline missed, 5xx, 429): RQ retries the job."""


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for ``body`` sent as ``message_id`` at ``timestamp`` (Standard Webhooks)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a delivery of ``body``: content type, and the Standard Webhooks id, timestamp, signature."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
            "webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body)}


def deliver_event(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    """The RQ job: post ``event`` unless it was posted already; raise to be retried when the receiver is away."""
    services = jobs.current_services()
    settings, redis = services.settings, services.store.redis
    if not settings.events_webhook_url or not settings.events_webhook_secret:
        return {"delivered": False, "reason": "EVENTS_WEBHOOK_URL is not set"}
    marker = event_marker_key(event_id)
    if redis.get(marker) == SENT.encode():
        return {"delivered": True, "duplicate": True}
    if erased_before(redis, event):  # the person was erased after the event was made: nothing about them goes out
        return {"delivered": False, "reason": "conversation erased"}
    # Two runs of one event (queued twice from a pipeline) must not post it at once: the second tries again
    # later, and then finds it sent (or, if the first died mid-post, posts it once its claim has expired).
    sending = key("event-sending", event_digest(event_id))
    if not redis.set(sending, "1", nx=True, ex=event_job_timeout_seconds(settings)):
        raise EventNotDelivered("another run of this event is posting it")
    try:
        status = post_event(settings, event)
        if 200 <= status < 300:
            with redis.pipeline() as pipe:
                pipe.set(marker, SENT, xx=True, keepttl=True)
                pipe.set(marker, SENT, nx=True, ex=settings.dedupe_ttl_seconds)  # its marker expired meanwhile
                pipe.execute()
            log.info("event %s (%s) posted: HTTP %d", event["id"], event["type"], status)
            return {"delivered": True, "status": status}
        if status == 429 or status >= 500:
            raise EventNotDelivered(f"the events receiver answered {status}")
        log.warning("events receiver refused event %s (%s): HTTP %d; not retried", event["id"], event["type"], status)
        return {"delivered": False, "status": status}
    finally:
        redis.delete(sending)


def post_event(settings, event: dict[str, Any]) -> int:
    """The receiver's status for ``event``, within EVENTS_TIMEOUT_SECONDS in all; EventNotDelivered when none came."""
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    headers = signed_headers(settings.events_webhook_secret, event["id"], body)
    deadline = settings.events_timeout_seconds
    try:
        return asyncio.run(_exchange(settings.events_webhook_url, body, headers, deadline))
    except TimeoutError:
        raise EventNotDelivered(f"the events receiver did not answer within EVENTS_TIMEOUT_SECONDS={deadline:g}") \
            from None
    except httpx.HTTPError as exc:  # refused or dropped connections, a malformed answer
        raise EventNotDelivered(f"the events receiver did not answer: {type(exc).__name__}") from None


async def _exchange(url: str, body: bytes, headers: dict[str, str], deadline_seconds: float) -> int:
    """POST ``body``, take the answer's status, read at most ANSWER_READ_BYTES of its body, close: all within
    ``deadline_seconds`` (TimeoutError when the status has not come by then)."""
    status = None
    try:
        async with asyncio.timeout(deadline_seconds):
            async with httpx.AsyncClient(timeout=deadline_seconds, follow_redirects=False) as client, \
                    client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                await _read_some(response, ANSWER_READ_BYTES)
    except (TimeoutError, httpx.HTTPError):
        if status is None:
            raise
        # The answer's status came: the receiver's verdict stands, however its body ends.
    return status


async def _read_some(response: httpx.Response, limit: int) -> None:
    """Read the answer's body until it ends or ``limit`` bytes have come (the rest is never read)."""
    received = 0
    chunks = response.aiter_raw()
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            received += len(chunk)
            if received >= limit:
                return
