"""The Twilio simulator's outgoing side: signed inbound webhooks and delivery status callbacks.

A mix-in of ``TwilioSimulator``: it uses the simulator's numbers, services, messages and auth token.
Like Twilio, it signs every request with ``X-Twilio-Signature`` over the exact URL it calls, answers
the opt-out keywords itself, and calls the number's Messaging Service request URL instead of the
number's SMS URL when the service overrides it. It only ever calls addresses on this machine.
"""

from __future__ import annotations

import struct
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import requests
from twilio.request_validator import RequestValidator

from sandbox.httpfake import Reply, Request

# Twilio's default lists (Advanced Opt-Out tutorial, 2026), as the simulator's own copy of an outside fact.
OPT_OUT = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
OPT_IN = {"START", "YES", "UNSTOP"}
HELP = {"HELP", "INFO"}
KEYWORD_REPLIES = {
    "STOP": "You have successfully been unsubscribed. You will not receive any more messages from this number. "
            "Reply START to resubscribe.",
    "START": "You have successfully been re-subscribed to messages from this number. Reply HELP for help. "
             "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
    "HELP": "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}
WEBHOOK_TIMEOUT_SECONDS = 15  # Twilio's own limit for an answer
STATUS_STEPS = ("queued", "sent", "delivered")  # the status callbacks of a message that goes through


def tiny_png() -> bytes:
    """A 1x1 PNG: the picture an MMS from the phone page "contains" (the gateway never downloads it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x4c\x8b\xe8\xff"))
            + chunk(b"IEND", b""))


@dataclass
class SimInbound:
    """One message a person sent to a number, and how the webhook answered it."""

    sid: str
    from_: str
    to: str
    body: str
    num_media: int
    created_at: float
    url: str = ""
    webhook_status: int | None = None
    error: str = ""


def is_local_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class WebhookCaller:
    """Calls the gateway the way Twilio does."""

    def __init__(self, *, status_callbacks: bool = False, status_interval_seconds: float = 0.3):
        self.status_callbacks = status_callbacks
        self.status_interval_seconds = status_interval_seconds
        self.inbound: list[SimInbound] = []
        self.keyword_replies: list[dict] = []  # what Twilio itself answered to STOP/START/HELP
        self.callback_log: list[tuple[str, str, int | None]] = []  # (message sid, status, gateway's answer)
        self._http = requests.Session()

    def reset_webhooks(self) -> None:
        self.inbound.clear()
        self.keyword_replies.clear()
        self.callback_log.clear()

    def post_signed(self, url: str, form: dict[str, str]) -> tuple[int | None, str]:
        """POST a form signed like Twilio; returns (status, error)."""
        if not is_local_url(url):
            return None, f"not called: the simulator only calls this machine, not {urlsplit(url).hostname}"
        signature = RequestValidator(self.auth_token).compute_signature(url, form)
        try:
            response = self._http.post(url, data=form, headers={"X-Twilio-Signature": signature},
                                       timeout=WEBHOOK_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            return None, f"webhook unreachable: {type(exc).__name__}"
        error = "" if response.ok else f"webhook answered {response.status_code}: {response.text.strip()[:200]}"
        return response.status_code, error

    def webhook_for(self, phone_number: str) -> tuple[str, str]:
        """(URL Twilio would call for a message to ``phone_number``, Messaging Service sid or "")."""
        number = self.number(phone_number)
        if number is None:
            return "", ""
        service = self.service_of(number.sid)
        if service is not None and not service.use_inbound_webhook_on_number:
            return service.inbound_request_url, service.sid
        return number.sms_url, service.sid if service else ""

    def deliver_inbound(self, from_: str, to: str, body: str = "", media_urls: tuple[str, ...] = ()) -> SimInbound:
        """A person texts ``to``: Twilio handles opt-out keywords and calls the webhook, signed."""
        sid = ("MM" if media_urls else "SM") + uuid.uuid4().hex
        record = SimInbound(sid=sid, from_=from_, to=to, body=body, num_media=len(media_urls), created_at=time.time())
        with self._state:
            self.inbound.append(record)
        url, service_sid = self.webhook_for(to)
        if not url:
            record.error = f"{to} is not a number of this account, or it has no SMS webhook"
            self.changed()
            return record
        form = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": self.account_sid,
                "From": from_, "To": to, "Body": body, "NumMedia": str(len(media_urls)), "NumSegments": "1",
                "SmsStatus": "received", "ApiVersion": "2010-04-01", "FromCountry": "US", "ToCountry": "US"}
        if service_sid:
            form["MessagingServiceSid"] = service_sid
        for index, media_url in enumerate(media_urls):
            form[f"MediaUrl{index}"] = media_url
            form[f"MediaContentType{index}"] = "image/png"
        keyword = self._opt_out_keyword(from_, body)
        if keyword:
            form["OptOutType"] = keyword
        record.url = url
        self.changed()  # kept before the gateway answers: a restart then shows what was sent
        record.webhook_status, record.error = self.post_signed(url, form)
        self.changed()
        return record

    def _opt_out_keyword(self, from_: str, body: str) -> str:
        word = body.strip().upper()
        keyword = "STOP" if word in OPT_OUT else "START" if word in OPT_IN else "HELP" if word in HELP else ""
        if keyword == "STOP":
            self.opted_out.add(from_)
        elif keyword == "START":
            self.opted_out.discard(from_)
        if keyword:
            self.keyword_replies.append({"to": from_, "body": KEYWORD_REPLIES[keyword], "created_at": time.time()})
        return keyword

    def schedule_status_callbacks(self, message) -> None:
        """queued -> sent -> delivered, each a signed callback to the message's StatusCallback URL."""
        if not (self.status_callbacks and message.status_callback):
            return
        threading.Thread(target=self._run_status_callbacks, args=(message,), daemon=True,
                         name=f"status-{message.sid}").start()

    def resume_status_callbacks(self) -> int:
        """Carry on the status callbacks that a stop cut short; returns how many messages get them.

        The web process stops before the simulator does, so the last callbacks of a reply sent just before
        a stop may not have reached the gateway: each message goes on from the first status the gateway
        did not acknowledge, so its delivery ends ``delivered`` on both sides.
        """
        with self._state:
            unfinished = [m for m in self.messages if m.status in STATUS_STEPS and m.status_told != STATUS_STEPS[-1]]
        for message in unfinished:
            self.schedule_status_callbacks(message)
        return len(unfinished)

    def _run_status_callbacks(self, message) -> None:
        told = message.status_told
        for status in STATUS_STEPS[STATUS_STEPS.index(told) + 1:] if told in STATUS_STEPS else STATUS_STEPS:
            time.sleep(self.status_interval_seconds)
            message.status = status
            form = {"MessageSid": message.sid, "SmsSid": message.sid, "MessageStatus": status, "SmsStatus": status,
                    "AccountSid": self.account_sid, "To": message.to, "From": message.from_ or "",
                    "ApiVersion": "2010-04-01"}
            if message.messaging_service_sid:
                form["MessagingServiceSid"] = message.messaging_service_sid
            self.changed()
            answer, _error = self.post_signed(message.status_callback, form)
            self.callback_log.append((message.sid, status, answer))
            if answer is not None and 200 <= answer < 300:
                message.status_told = status
                self.changed()

    # -- the sandbox's own routes (no auth: this machine only) ------------------------------------

    def thread(self, person: str) -> list[dict]:
        """Everything between ``person`` and the account's numbers, oldest first."""
        with self._state:
            items = [{"direction": "in", **_public(asdict(m))} for m in self.inbound if m.from_ == person]
            items += [{"direction": "out", "sid": m.sid, "from": m.from_, "to": m.to, "body": m.body,
                       "status": m.status, "num_segments": m.num_segments, "created_at": m.created_at}
                      for m in self.messages if m.to == person]
            items += [{"direction": "twilio", **r} for r in self.keyword_replies if r["to"] == person]
        return sorted(items, key=lambda item: item["created_at"])

    def route_sandbox(self, request: Request):
        if request.method == "GET" and request.path == "/sandbox/messages":
            return "list", lambda: Reply(200, {"messages": [
                {"sid": m.sid, "to": m.to, "from": m.from_, "body": m.body, "status": m.status}
                for m in list(self.messages)]})
        if request.method == "GET" and request.path == "/sandbox/thread":
            return "thread", lambda: Reply(200, {"messages": self.thread(request.query.get("number", ""))})
        if request.method == "POST" and request.path == "/sandbox/inbound":
            return "inbound", lambda: self._inbound_from_json(request)
        if request.method == "GET" and request.path == "/sandbox/media/sample.png":
            return "media", lambda: Reply(200, tiny_png(), {"Content-Type": "image/png"})
        return "unknown", None

    def _inbound_from_json(self, request: Request) -> Reply:
        data = request.json()
        if not isinstance(data, dict) or not data.get("from") or not data.get("to"):
            return Reply(400, {"message": "send JSON with from, to, body and optionally media_urls"})
        media = tuple(str(u) for u in data.get("media_urls") or ())
        record = self.deliver_inbound(str(data["from"]), str(data["to"]), str(data.get("body", "")), media)
        return Reply(200 if not record.error else 502, _public(asdict(record)))


def _public(record: dict) -> dict:
    return {("from" if key == "from_" else key): value for key, value in record.items()}
