"""A local stand-in for Twilio's REST API and its webhooks, with fault injection.

REST (HTTP Basic auth with the account sid and auth token, Twilio's error bodies and codes):
Messages (send: 21617 body too long, 21610 opted out, 21211 invalid To; list), the Account,
IncomingPhoneNumbers (list, fetch, update SmsUrl/SmsMethod/StatusCallback) and Messaging Services
(``/v1/Services``, their phone numbers). Faults are injected on the operation ``send``;
``MALFORMED_SEND_ANSWERS`` are 200s that accept the message but answer a body twilio-python cannot
read as one (``inject_malformed_send`` queues them). Like Twilio, a send through a Messaging Service
with a ``From`` goes out from that number; with the service alone the service picks a number of its
pool (the first here) and the answer has ``from: null`` and status ``accepted``. Listed messages carry
``date_created`` at Twilio's one-second resolution.

Webhooks, as Twilio makes them: ``deliver_inbound`` posts a signed inbound message to the number's
SMS URL (or its Messaging Service's request URL when the service overrides the number), and with
``status_callbacks=True`` each accepted message gets signed status callbacks (queued, sent,
delivered) at the StatusCallback URL it was sent with. Webhooks only go to this machine.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from sandbox.httpfake import FakeServer, Fault, Reply, Request
from sandbox.twilio_webhook_sim import SimInbound, WebhookCaller

_E164 = re.compile(r"^(\w+:)?\+[1-9]\d{6,14}$")
_ACCOUNT = r"/2010-04-01/Accounts/([^/.]+)"

# 200 answers to a send that Twilio (or a proxy in front of it) could give after accepting the message,
# none of which is a message resource: bytes and str go out as written, anything else as JSON.
MALFORMED_SEND_ANSWERS: dict[str, object] = {
    "empty": b"",
    "html": "<html><body><h1>200 OK</h1></body></html>",
    "empty_object": {},
    "no_sid": {"status": "queued", "body": "", "num_segments": "1", "error_code": None},
    "null": "null",
}


def _rfc2822(epoch_seconds: float) -> str:
    """A time as Twilio writes ``date_created``: RFC 2822, whole seconds (the fraction is dropped)."""
    return format_datetime(datetime.fromtimestamp(int(epoch_seconds), UTC))


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
    num_segments: int = 1
    status_told: str | None = None  # the last status the gateway acknowledged (2xx) in a status callback


@dataclass
class SimNumber:
    """An incoming phone number of the account and its messaging configuration."""

    sid: str
    phone_number: str
    sms_url: str = ""
    sms_method: str = "POST"
    status_callback: str = ""
    status_callback_method: str = "POST"

    def to_json(self, account_sid: str) -> dict[str, Any]:
        return {"sid": self.sid, "account_sid": account_sid, "phone_number": self.phone_number,
                "friendly_name": self.phone_number, "sms_url": self.sms_url or None,
                "sms_method": self.sms_method, "sms_fallback_url": None, "sms_fallback_method": "POST",
                "status_callback": self.status_callback or None,
                "status_callback_method": self.status_callback_method, "voice_url": None,
                "capabilities": {"sms": True, "mms": True, "voice": True}, "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers/{self.sid}.json"}


@dataclass
class SimService:
    """A Messaging Service: with ``use_inbound_webhook_on_number`` off, its request URL gets inbound."""

    sid: str
    friendly_name: str
    inbound_request_url: str = ""
    inbound_method: str = "POST"
    use_inbound_webhook_on_number: bool = False
    status_callback: str = ""
    number_sids: list[str] = field(default_factory=list)

    def to_json(self, account_sid: str) -> dict[str, Any]:
        return {"sid": self.sid, "account_sid": account_sid, "friendly_name": self.friendly_name,
                "inbound_request_url": self.inbound_request_url or None, "inbound_method": self.inbound_method,
                "fallback_url": None, "status_callback": self.status_callback or None,
                "use_inbound_webhook_on_number": self.use_inbound_webhook_on_number,
                "url": f"https://messaging.twilio.com/v1/Services/{self.sid}"}


def _page(key: str, items: list[dict], uri: str, *, v1: bool = False) -> dict[str, Any]:
    if v1:
        return {key: items, "meta": {"page": 0, "page_size": 50, "first_page_url": uri, "previous_page_url": None,
                                     "url": uri, "next_page_url": None, "key": key}}
    return {key: items, "start": 0, "end": max(len(items) - 1, 0), "page": 0, "page_size": 50,
            "first_page_uri": uri, "next_page_uri": None, "previous_page_uri": None, "uri": uri}


def _not_found(what: str) -> Reply:
    return Reply(404, {"code": 20404, "message": f"The requested resource {what} was not found",
                       "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404})


class TwilioSimulator(FakeServer, WebhookCaller):
    """Fake Twilio: REST API for messages, numbers and Messaging Services, plus signed webhooks."""

    def __init__(self, *, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-twilio-token",
                 status_callbacks: bool = False, status_interval_seconds: float = 0.3, **kwargs):
        FakeServer.__init__(self, **kwargs)
        WebhookCaller.__init__(self, status_callbacks=status_callbacks,
                               status_interval_seconds=status_interval_seconds)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[SimMessage] = []
        self.opted_out: set[str] = set()
        self.numbers: dict[str, SimNumber] = {}
        self.services: dict[str, SimService] = {}
        self._state = threading.Lock()

    def reset(self) -> None:
        with self._state:
            self.messages.clear()
            self.opted_out.clear()
            self.requests.clear()
            self.numbers.clear()
            self.services.clear()
        self.reset_webhooks()
        self.latency_seconds = 0.0
        self.clear_faults()

    def snapshot(self) -> dict[str, Any]:
        with self._state:
            return {"messages": [asdict(m) for m in self.messages], "inbound": [asdict(m) for m in self.inbound],
                    "keyword_replies": list(self.keyword_replies), "opted_out": sorted(self.opted_out),
                    "numbers": [asdict(n) for n in self.numbers.values()],
                    "services": [asdict(s) for s in self.services.values()]}

    def restore(self, saved: dict[str, Any]) -> None:
        with self._state:
            self.messages = [SimMessage(**m) for m in saved.get("messages", [])]
            self.inbound = [SimInbound(**m) for m in saved.get("inbound", [])]
            self.keyword_replies = list(saved.get("keyword_replies", []))
            self.opted_out = set(saved.get("opted_out", []))
            self.numbers = {n["sid"]: SimNumber(**n) for n in saved.get("numbers", [])}
            self.services = {s["sid"]: SimService(**s) for s in saved.get("services", [])}

    # -- set-up and helpers for tests and the phone page ------------------------------------------

    def add_number(self, phone_number: str, **config: str) -> SimNumber:
        number = SimNumber(sid="PN" + uuid.uuid4().hex, phone_number=phone_number, **config)
        with self._state:
            self.numbers[number.sid] = number
        self.changed()
        return number

    def point_number(self, phone_number: str, **config: str) -> SimNumber:
        """Set a number's webhooks (``sms_url``, ``status_callback``...), adding the number if it is new."""
        number = self.number(phone_number)
        if number is None:
            return self.add_number(phone_number, **config)
        with self._state:
            for name, value in config.items():
                setattr(number, name, value)
        self.changed()
        return number

    def number(self, phone_number: str) -> SimNumber | None:
        return next((n for n in list(self.numbers.values()) if n.phone_number == phone_number), None)

    def add_service(self, friendly_name: str, *, phone_numbers: tuple[str, ...] = (), **config) -> SimService:
        sids = [n.sid for n in (self.number(p) or self.add_number(p) for p in phone_numbers)]
        service = SimService(sid="MG" + uuid.uuid4().hex, friendly_name=friendly_name, number_sids=sids, **config)
        with self._state:
            self.services[service.sid] = service
        self.changed()
        return service

    def service_of(self, number_sid: str) -> SimService | None:
        return next((s for s in list(self.services.values()) if number_sid in s.number_sids), None)

    def sent_to(self, number: str) -> list[str]:
        with self._state:
            return [m.body for m in self.messages if m.to == number]

    def inject_malformed_send(self, kind: str, *, applied: bool = True, times: int = 1) -> None:
        """Answer the next ``times`` sends with the malformed 200 ``kind``, having sent the message or not."""
        self.inject("send", *[Fault(status=200, body=MALFORMED_SEND_ANSWERS[kind], apply_first=applied)] * times)

    def error_body(self, status: int) -> Any:
        code = 20429 if status == 429 else 20500
        return {"code": code, "message": f"injected {status}", "more_info": "", "status": status}

    # -- routing ----------------------------------------------------------------------------------

    def route(self, request: Request):
        if request.path.startswith("/sandbox/"):
            return self.route_sandbox(request)
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return "auth", lambda: Reply(401, {"code": 20003, "message": "Authenticate", "status": 401,
                                               "more_info": "https://www.twilio.com/docs/errors/20003"})
        m, p = request.method, request.path
        if match := re.fullmatch(_ACCOUNT + r"(\.json|/.*)?", p):
            if match[1] != self.account_sid:
                return "auth", lambda: _not_found(p)
            return self._route_account(m, match[2] or "", request)
        if m == "GET" and p == "/v1/Services":
            return "list_services", lambda: Reply(200, _page(
                "services", [s.to_json(self.account_sid) for s in list(self.services.values())], p, v1=True))
        if match := re.fullmatch(r"/v1/Services/(MG\w+)(/PhoneNumbers)?", p):
            service = self.services.get(match[1])
            if service is None:
                return "service", lambda: _not_found(p)
            if match[2] and m == "GET":
                return "service_numbers", lambda: Reply(200, _page("phone_numbers", [
                    {**self.numbers[sid].to_json(self.account_sid), "service_sid": service.sid}
                    for sid in service.number_sids if sid in self.numbers], p, v1=True))
            if m == "GET":
                return "service", lambda: Reply(200, service.to_json(self.account_sid))
            if m == "POST":
                return "update_service", lambda: self._update_service(service, request)
        return "unknown", None

    def _route_account(self, method: str, rest: str, request: Request):
        if rest in ("", ".json") and method == "GET":
            return "account", lambda: Reply(200, {"sid": self.account_sid, "friendly_name": "Sandbox account",
                                                  "status": "active", "type": "Full"})
        if rest == "/Messages.json" and method == "POST":
            return "send", lambda: self._send(request)
        if rest == "/Messages.json" and method == "GET":
            return "list_messages", lambda: self._list(request)
        if rest == "/IncomingPhoneNumbers.json" and method == "GET":
            wanted = request.query.get("PhoneNumber")
            items = [n.to_json(self.account_sid) for n in list(self.numbers.values())
                     if not wanted or n.phone_number == wanted]
            return "list_numbers", lambda: Reply(200, _page("incoming_phone_numbers", items, request.path))
        if match := re.fullmatch(r"/IncomingPhoneNumbers/(PN\w+)\.json", rest):
            number = self.numbers.get(match[1])
            if number is None:
                return "number", lambda: _not_found(request.path)
            if method == "GET":
                return "number", lambda: Reply(200, number.to_json(self.account_sid))
            if method == "POST":
                return "update_number", lambda: self._update_number(number, request)
        return "unknown", None

    # -- operations -------------------------------------------------------------------------------

    def _update_number(self, number: SimNumber, request: Request) -> Reply:
        form = request.form()
        for name, attr in (("SmsUrl", "sms_url"), ("SmsMethod", "sms_method"),
                           ("StatusCallback", "status_callback"), ("StatusCallbackMethod", "status_callback_method")):
            if name in form:
                setattr(number, attr, form[name])
        return Reply(200, number.to_json(self.account_sid))

    def _update_service(self, service: SimService, request: Request) -> Reply:
        form = request.form()
        if "InboundRequestUrl" in form:
            service.inbound_request_url = form["InboundRequestUrl"]
        if "UseInboundWebhookOnNumber" in form:
            service.use_inbound_webhook_on_number = form["UseInboundWebhookOnNumber"].lower() == "true"
        if "StatusCallback" in form:
            service.status_callback = form["StatusCallback"]
        return Reply(200, service.to_json(self.account_sid))

    def _list(self, request: Request) -> Reply:
        """Messages.json listing, newest first, filtered by To and From like Twilio's."""
        to, sender = request.query.get("To"), request.query.get("From")
        with self._state:
            found = [m for m in reversed(self.messages)
                     if (not to or m.to == to) and (not sender or m.from_ == sender)]
        items = [{"sid": m.sid, "account_sid": self.account_sid, "to": m.to, "from": m.from_, "body": m.body,
                  "status": m.status, "messaging_service_sid": m.messaging_service_sid,
                  "num_segments": str(m.num_segments), "direction": "outbound-api",
                  "date_created": _rfc2822(m.created_at), "date_updated": _rfc2822(m.created_at)} for m in found]
        return Reply(200, _page("messages", items, request.path))

    def _pool_number(self, service_sid: str | None) -> str | None:
        """The number a Messaging Service picks when it is given no ``From``: here, the first of its pool."""
        service = self.services.get(service_sid or "")
        if service is None:
            return None
        return next((self.numbers[sid].phone_number for sid in service.number_sids if sid in self.numbers), None)

    def _send(self, request: Request) -> Reply:
        from workers.sms_text import segment_info

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
        if len(body.encode("utf-16-le")) // 2 > 1600:  # counted in UTF-16 code units, as Twilio does (21617)
            return Reply(400, {"code": 21617, "message": "The concatenated message body exceeds the 1600 "
                                                         "character limit.", "status": 400})
        if to in self.opted_out:
            return Reply(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient",
                               "status": 400})
        status = "accepted" if service else "queued"  # Twilio's initial status with and without a service
        message = SimMessage(sid="SM" + uuid.uuid4().hex, to=to, from_=sender or self._pool_number(service),
                             messaging_service_sid=service, body=body, status=status,
                             status_callback=form.get("StatusCallback") or None, created_at=time.time(),
                             num_segments=segment_info(body).segments)
        with self._state:
            self.messages.append(message)
        self.schedule_status_callbacks(message)
        return Reply(201, {
            "sid": message.sid, "account_sid": self.account_sid, "to": to, "from": sender,
            "messaging_service_sid": service, "body": body, "status": status,
            "date_created": _rfc2822(message.created_at), "date_updated": _rfc2822(message.created_at),
            "num_segments": str(message.num_segments), "num_media": "0", "direction": "outbound-api",
            "api_version": "2010-04-01", "price": None, "error_code": None, "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message.sid}.json",
        })
