"""The sandbox's own receiver of operator events, so a person sees what their system will get.

``sms-gateway run`` without an ``EVENTS_WEBHOOK_URL`` of the person's points it here (``POST /events`` on
127.0.0.1), with a ``whsec_`` secret of its own kept in the data directory (``sandbox/events-secret``). Each
delivery is checked as a receiver would check it (Standard Webhooks: the ``webhook-id``, ``webhook-timestamp``
and ``webhook-signature`` headers, an HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed with the secret's
base64 part), here with hmac and base64 alone, the way the specification describes it. A delivery that fails the
check is refused (401, saying why) and not kept; the last ``KEPT_EVENTS`` verified ones are, in memory.

What it kept is read by the phone page (its panel, in the same process) and by ``sms-gateway events``
(``GET /events?after=N&wait=S``: the events after sequence number N, waiting up to S seconds for one).

Raised: ``DeliveryRefused`` (the delivery is not signed with the secret, or too old or too new to be taken).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from config.settings import WEBHOOK_SECRET_PREFIX, webhook_secret_key

KEPT_EVENTS = 200
# As the specification's libraries do: a delivery signed more than five minutes away from now is refused
# (a replay of an old one, or a clock far off).
TIMESTAMP_TOLERANCE_SECONDS = 5 * 60
LONGEST_WAIT_SECONDS = 25  # one GET /events waits at most this long for an event before answering
MAX_DELIVERY_BYTES = 256 * 1024
SECRET_FILE = Path("sandbox") / "events-secret"


class DeliveryRefused(Exception):
    """The delivery does not pass the Standard Webhooks check; the message says which part fails."""


def sandbox_events_secret(data_dir: Path) -> str:
    """The sandbox's events signing secret (``whsec_`` + 32 random bytes in base64), owner-only, kept across runs."""
    path = data_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> dict[str, Any]:
    """The event a delivery carries, once its signature and timestamp check out; DeliveryRefused otherwise."""
    message_id, stamp, signatures = (headers.get(name) for name in
                                     ("webhook-id", "webhook-timestamp", "webhook-signature"))
    missing = [name for name, value in (("webhook-id", message_id), ("webhook-timestamp", stamp),
                                        ("webhook-signature", signatures)) if not value]
    if missing:
        raise DeliveryRefused(f"missing header{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise DeliveryRefused("webhook-timestamp is not a whole number of seconds") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > TIMESTAMP_TOLERANCE_SECONDS:
        raise DeliveryRefused(f"webhook-timestamp is {abs(now - timestamp):.0f}s away from now "
                              f"(more than {TIMESTAMP_TOLERANCE_SECONDS}s: a replay, or a clock that is off)")
    expected = hmac.new(webhook_secret_key(secret), f"{message_id}.{timestamp}.".encode() + body,
                        hashlib.sha256).digest()
    # The header may hold several space-separated signatures (a secret being rotated): one match is enough.
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            break
    else:
        raise DeliveryRefused("webhook-signature does not match (not signed with this EVENTS_WEBHOOK_SECRET, "
                              "or the body or its id or timestamp were changed)")
    try:
        event = json.loads(body)
    except ValueError:
        raise DeliveryRefused("the body is not JSON") from None
    if not isinstance(event, dict):
        raise DeliveryRefused("the body is not a JSON object")
    return event


class EventInbox:
    """The last KEPT_EVENTS verified events, each once (a retry carries the same ``webhook-id``), numbered."""

    def __init__(self, secret: str, kept: int = KEPT_EVENTS):
        self.secret = secret
        self.events: deque[dict[str, Any]] = deque(maxlen=kept)
        self.last = 0
        self.arrived = threading.Condition()

    def take(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Verify a delivery and keep its event (once per ``webhook-id``); DeliveryRefused if it fails the check."""
        event = verify_delivery(self.secret, headers, body)
        message_id = headers["webhook-id"]
        with self.arrived:
            for kept in self.events:
                if kept["webhook_id"] == message_id:
                    return kept  # a retry of one already received: shown once, as a receiver deduplicates
            self.last += 1
            kept = {"seq": self.last, "received_at": time.time(), "webhook_id": message_id, "verified": True,
                    "event": event}
            self.events.append(kept)
            self.arrived.notify_all()
        return kept

    def after(self, seq: int, wait_seconds: float = 0) -> tuple[list[dict[str, Any]], int]:
        """(the events numbered after ``seq``, oldest first; the last number given), waiting up to ``wait_seconds``
        for one to come. A ``seq`` past the last number (a reader of an earlier run) is answered at once."""
        deadline = time.monotonic() + wait_seconds
        with self.arrived:
            while self.last == seq and (left := deadline - time.monotonic()) > 0:
                self.arrived.wait(left)
            return [kept for kept in self.events if kept["seq"] > seq], self.last

    def of_number(self, number: str) -> list[dict[str, Any]]:
        """The events about ``number`` (E.164), newest first."""
        with self.arrived:
            return [kept for kept in reversed(self.events)
                    if (kept["event"].get("conversation") or {}).get("number") == number]


def create_receiver_app(inbox: EventInbox) -> Flask:
    """``POST /events``: the webhook (204 when verified, 401 saying why not); ``GET /events``: what it kept."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_DELIVERY_BYTES

    @app.post("/events")
    def receive():
        try:
            inbox.take(request.headers, request.get_data())
        except DeliveryRefused as exc:
            return jsonify({"error": f"refused: {exc}"}), 401
        return "", 204

    @app.get("/events")
    def kept():
        try:
            seq = int(request.args.get("after", "0"))
            wait = float(request.args.get("wait", "0"))
        except ValueError:
            return jsonify({"error": "after must be a whole number and wait a number of seconds"}), 400
        events, last = inbox.after(seq, min(max(wait, 0.0), LONGEST_WAIT_SECONDS))
        return jsonify({"events": events, "last": last})

    return app


class EventsReceiverServer:
    """Serves the receiver on 127.0.0.1 in a thread of the launcher (threaded: a long GET never holds up a POST)."""

    def __init__(self, inbox: EventInbox, port: int):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.inbox = inbox
        self.server = make_server("127.0.0.1", port, create_receiver_app(inbox), threaded=True)
        self.server.daemon_threads = True  # a GET waiting for an event does not keep the launcher from stopping
        self.thread = threading.Thread(target=self.server.serve_forever, name="events-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}events"

    def start(self) -> EventsReceiverServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
