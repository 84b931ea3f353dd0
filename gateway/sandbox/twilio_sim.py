"""A local stand-in for Twilio's REST API (sending messages), with fault injection.

It checks HTTP Basic auth against its account sid and auth token, validates like Twilio does for
the errors the gateway cares about (21617 body too long, 21610 opted out, 21211 invalid To), and
records every accepted message. Faults are injected on the operation ``send``.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.sandbox.httpfake import FakeServer, Reply, Request

_E164 = re.compile(r"^(\w+:)?\+[1-9]\d{6,14}$")


@dataclass
class SimMessage:
    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    created_at: float
    status: str = "queued"


class TwilioSimulator(FakeServer):
    """Fake Twilio Messages API."""

    def __init__(self, *, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-twilio-token", **kwargs):
        super().__init__(**kwargs)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[SimMessage] = []
        self.opted_out: set[str] = set()
        self._state = threading.Lock()

    def reset(self) -> None:
        with self._state:
            self.messages.clear()
            self.opted_out.clear()
            self.requests.clear()
        self.latency_seconds = 0.0
        self.clear_faults()

    def sent_to(self, number: str) -> list[str]:
        with self._state:
            return [m.body for m in self.messages if m.to == number]

    def error_body(self, status: int) -> Any:
        code = 20429 if status == 429 else 20500
        return {"code": code, "message": f"injected {status}", "more_info": "", "status": status}

    def route(self, request: Request):
        if request.method == "GET" and request.path == "/sandbox/messages":
            return "list", lambda: Reply(200, {"messages": [
                {"sid": m.sid, "to": m.to, "from": m.from_, "body": m.body, "status": m.status}
                for m in list(self.messages)]})
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return "auth", lambda: Reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
        match = re.fullmatch(r"/2010-04-01/Accounts/([^/]+)/Messages\.json", request.path)
        if match and request.method == "POST":
            if match[1] != self.account_sid:
                return "auth", lambda: Reply(404, {"code": 20404, "message": "not found", "status": 404})
            return "send", lambda: self._send(request)
        if match and request.method == "GET":
            return "list_messages", lambda: self._list(request)
        return "unknown", None

    def _list(self, request: Request) -> Reply:
        """Messages.json listing, newest first, filtered by To and From like Twilio's."""
        to, sender = request.query.get("To"), request.query.get("From")
        with self._state:
            found = [m for m in reversed(self.messages)
                     if (not to or m.to == to) and (not sender or m.from_ == sender)]
        items = [{"sid": m.sid, "account_sid": self.account_sid, "to": m.to, "from": m.from_, "body": m.body,
                  "status": m.status, "messaging_service_sid": m.messaging_service_sid, "num_segments": "1",
                  "direction": "outbound-api"} for m in found]
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        return Reply(200, {"messages": items, "start": 0, "end": max(len(items) - 1, 0), "page": 0,
                           "page_size": 50, "first_page_uri": uri, "next_page_uri": None,
                           "previous_page_uri": None, "uri": uri})

    def _send(self, request: Request) -> Reply:
        form = request.form()
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From") or None, form.get("MessagingServiceSid") or None
        if not to or not _E164.match(to):
            return Reply(400, {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number.",
                               "status": 400})
        if not (sender or service):
            return Reply(400, {"code": 21603, "message": "A 'From' or 'MessagingServiceSid' is required",
                               "status": 400})
        if not body:
            return Reply(400, {"code": 21602, "message": "Message body is required.", "status": 400})
        if len(body) > 1600:
            return Reply(400, {"code": 21617, "message": "The concatenated message body exceeds the 1600 "
                                                         "character limit.", "status": 400})
        if to in self.opted_out:
            return Reply(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient",
                               "status": 400})
        message = SimMessage(sid="SM" + uuid.uuid4().hex, to=to, from_=sender, messaging_service_sid=service,
                             body=body, status_callback=form.get("StatusCallback") or None, created_at=time.time())
        with self._state:
            self.messages.append(message)
        segments = 1 if len(body) <= 160 else -(-len(body) // 153)
        return Reply(201, {
            "sid": message.sid, "account_sid": self.account_sid, "to": to, "from": sender,
            "messaging_service_sid": service, "body": body, "status": "queued", "num_segments": str(segments),
            "num_media": "0", "direction": "outbound-api", "api_version": "2010-04-01", "price": None,
            "error_code": None, "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message.sid}.json",
        })
