"""Posting operator events to ``EVENTS_WEBHOOK_URL``: signed, retried with backoff, once per event.

The request is a JSON POST (see ``core.events.build_event``) with these headers::

    X-Gateway-Event-Id:   the event's id (the same on every retry: a receiver deduplicates on it)
    X-Gateway-Timestamp:  Unix seconds when this attempt was signed
    X-Gateway-Signature:  v1=<hex HMAC-SHA256 of f"{timestamp}.{body}" keyed with EVENTS_WEBHOOK_SECRET>

Signing the timestamp with the body lets the receiver refuse a replayed request (Stripe's and Slack's
scheme). A 2xx is success; a timeout, a dropped connection, a 5xx or a 429 is retried by RQ after
``EVENTS_RETRY_INTERVALS_SECONDS``; any other answer (a 4xx: the receiver refuses the event) is final
and only logged, since repeating the same request would be refused the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import requests

from core.events import SENT, erased_before, event_digest, event_marker_key
from core.state.keys import key
from workers import jobs

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
USER_AGENT = "sms-gateway-events/1"


class EventNotDelivered(Exception):
    """The receiver could not take the event now (timeout, 5xx, 429): RQ retries the job."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Gateway-Signature`` value for ``body`` signed at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


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
    if not redis.set(sending, "1", nx=True, ex=int(2 * settings.events_timeout_seconds + 30)):
        raise EventNotDelivered("another run of this event is posting it")
    try:
        status = _post(settings, event)
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


def _post(settings, event: dict[str, Any]) -> int:
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Gateway-Event-Id": event["id"], "X-Gateway-Event-Type": event["type"],
               "X-Gateway-Timestamp": timestamp,
               "X-Gateway-Signature": sign(settings.events_webhook_secret, timestamp, body)}
    try:
        response = requests.post(settings.events_webhook_url, data=body, headers=headers, allow_redirects=False,
                                 timeout=(min(5.0, settings.events_timeout_seconds), settings.events_timeout_seconds))
    except requests.RequestException as exc:  # timeouts, refused or dropped connections
        raise EventNotDelivered(f"the events receiver did not answer: {type(exc).__name__}") from None
    response.close()
    return response.status_code
