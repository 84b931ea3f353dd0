"""Twilio REST client: the only module that calls Twilio's REST API.

``TwilioSender`` sends SMS with an explicit timeout (twilio-python has none by default) and reaches
``TWILIO_API_BASE_URL``, so a local stand-in can replace Twilio. Errors are translated once into
``workers.errors``: 429 (20429) and 5xx, connection errors and timeouts become
``TwilioTransientError``; other 4xx become ``TwilioPermanentError`` with Twilio's error code. A read
timeout or a connection dropped mid-request is marked ``maybe_applied``: the message may have gone.
So is a 2xx whose body is not a message with a sid (``TwilioMalformedAnswerError``): Twilio said yes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import requests
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from workers.errors import (
    TwilioCredentialsError,
    TwilioMalformedAnswerError,
    TwilioPermanentError,
    TwilioTransientError,
    UnsendableTextError,
)
from workers.http_environment import pin_environment, send
from workers.request_failures import describe_failure, parse_retry_after
from workers.sms_text import is_valid_unicode

TWILIO_ORIGIN = "https://api.twilio.com"  # where twilio-python sends requests: left as is when configured so
FIND_SENT_LOOKBACK = 50  # newest messages to a number searched for a part that may have gone out
# twilio-python reads a 2xx answer with ``json.loads`` and builds the resource with ``payload.get(...)``, so an
# answer that is not a JSON object (HTML, ``null``, a number) escapes as one of these rather than a TwilioException.
UNREADABLE_ANSWER_ERRORS = (ValueError, AttributeError, TypeError)
# What twilio-python calls can raise: its own errors, requests' under it, and an unreadable answer.
LIBRARY_ERRORS = (TwilioException, requests.RequestException, *UNREADABLE_ANSWER_ERRORS)
MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")  # Twilio's OpenAPI pattern for a Message sid
JSON_TYPES = ("application/json", "application/scim+json")  # the bodies twilio's client sends as JSON
_TWILIO_ORIGIN = re.compile(r"^https://[a-z0-9.-]+\.twilio\.com(?=/|$)")


@dataclass(frozen=True)
class SentMessage:
    """What Twilio said about a message it accepted."""

    sid: str
    status: str | None
    num_segments: int | None


class _RedirectingHttpClient(TwilioHttpClient):
    """Twilio's HTTP client (its pooled session), sending every ``*.twilio.com`` request to another origin."""

    def __init__(self, origin: str, timeout: tuple[float, float]):
        super().__init__(timeout=timeout[1])
        self.timeout = timeout  # a (connect, read) pair goes straight to requests
        self.origin = origin.rstrip("/")
        if self.session is not None:  # twilio's pooled session: the environment read once, not per request
            pin_environment(self.session, self.origin)

    def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        """Twilio's request, as ``TwilioHttpClient.request`` makes it (its headers, form or JSON body, Basic auth,
        timeout), sent with ``http_environment.send`` (no Session merging; no redirect followed, as twilio's
        own client asks), answered as twilio's ``Response``. Nothing is logged: twilio's client logs the
        request's URL and query (a phone number) at INFO."""
        if self.origin != TWILIO_ORIGIN:
            url = _TWILIO_ORIGIN.sub(self.origin, url)
        body = {"json": data} if (headers or {}).get("Content-Type") in JSON_TYPES else {"data": data}
        response = send(self.session, method.upper(), url, timeout=self.timeout if timeout is None else timeout,
                        headers=headers, params=params, auth=auth, **body)
        # Kept as twilio's own client keeps it (``last_response``): its errors carry no headers, and a 429's
        # Retry-After is read from here (each thread has its own client, see TwilioSender).
        self.last_response = Response(int(response.status_code), response.text, response.headers)
        return self.last_response


def build_client(*, account_sid: str, auth_token: str, api_base_url: str, timeout_seconds: float,
                 connect_timeout_seconds: float) -> Client:
    """A twilio ``Client`` that talks to ``api_base_url``, with explicit timeouts: ``timeout_seconds`` to read,
    ``connect_timeout_seconds`` (at most the read timeout) to connect."""
    connect = min(connect_timeout_seconds, timeout_seconds)
    http_client = _RedirectingHttpClient(api_base_url, timeout=(connect, timeout_seconds))
    return Client(account_sid, auth_token, http_client=http_client)


def translate(exc: Exception, what: str, retry_after: str | None = None) -> TwilioTransientError | TwilioPermanentError:
    """Map an exception raised by twilio-python (or requests under it) to the project's own; ``retry_after``: the
    answer's Retry-After header (seconds or an HTTP date), honoured on a 429 or 5xx."""
    if isinstance(exc, UNREADABLE_ANSWER_ERRORS):
        # Twilio (or something in between) said 2xx: whatever was asked may have been done.
        return TwilioMalformedAnswerError(f"{what}: 2xx answer that is not the resource ({type(exc).__name__})",
                                          maybe_applied=True)
    if isinstance(exc, requests.RequestException):
        reason, maybe_applied = describe_failure(exc)
        return TwilioTransientError(f"{what}: {reason}", maybe_applied=maybe_applied)
    status = getattr(exc, "status", None)
    if status is None and len(exc.args) > 1 and hasattr(exc.args[1], "status_code"):
        status = exc.args[1].status_code  # list calls raise TwilioException(message, response)
    code = getattr(exc, "code", None)
    detail = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", None) or ""
    message = f"{what}: {status} (code {code}) {detail}".strip()
    if status == 429 or code == 20429 or (isinstance(status, int) and status >= 500):
        return TwilioTransientError(message, status=status, code=code,
                                    retry_after_seconds=parse_retry_after(retry_after))
    if status == 401 or code in TwilioCredentialsError.CODES:
        return TwilioCredentialsError(message, status=status, code=code)
    return TwilioPermanentError(message, status=status, code=code)


class TwilioSender:
    """Sends SMS through Twilio's REST API; safe to share between threads.

    twilio-python's HTTP client keeps the last response on itself and returns it from there, so two
    threads sharing one client can each read the other's answer: every thread gets its own client.
    """

    def __init__(self, client: Client | None = None, *, client_factory: Callable[[], Client] | None = None):
        if (client is None) == (client_factory is None):
            raise ValueError("give a client or a client factory")
        self._factory = client_factory or (lambda: client)
        self._local = threading.local()

    @property
    def client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._factory()
        return client

    @classmethod
    def from_settings(cls, settings) -> TwilioSender:
        return cls(client_factory=partial(
            build_client, account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
            api_base_url=settings.twilio_api_base_url, timeout_seconds=settings.twilio_timeout_seconds,
            connect_timeout_seconds=settings.twilio_connect_timeout_seconds))

    def send(self, *, to: str, body: str, from_: str | None = None, messaging_service_sid: str | None = None,
             status_callback: str | None = None) -> SentMessage:
        """Send one SMS from ``from_``, through ``messaging_service_sid``, or both (that number, with the service).

        With the service alone Twilio picks the sender from the service's pool. Raises TwilioTransientError
        (retry; check ``maybe_applied``; TwilioMalformedAnswerError for a 2xx without a message) or
        TwilioPermanentError.
        """
        if not (from_ or messaging_service_sid):
            raise TwilioPermanentError("no sender: set a From number or a Messaging Service")
        if not is_valid_unicode(body):
            # requests would fail to encode it, which twilio-python reports like an unreadable answer from Twilio.
            raise UnsendableTextError("the text is not valid Unicode (a lone surrogate); nothing was sent")
        params: dict = {"to": to, "body": body}
        if messaging_service_sid:
            params["messaging_service_sid"] = messaging_service_sid
        if from_:
            params["from_"] = from_
        if status_callback:
            params["status_callback"] = status_callback
        try:
            message = self.client.messages.create(**params)
        except LIBRARY_ERRORS as exc:
            raise translate(exc, "Twilio send", self._retry_after()) from exc
        if not isinstance(message.sid, str) or not MESSAGE_SID.match(message.sid):
            raise TwilioMalformedAnswerError("Twilio send: 2xx answer without a message sid", maybe_applied=True)
        segments = message.num_segments
        return SentMessage(sid=message.sid, status=message.status if isinstance(message.status, str) else None,
                           num_segments=int(segments) if str(segments).isdigit() else None)

    def find_sent(self, *, to: str, body: str, from_: str | None = None, messaging_service_sid: str | None = None,
                  since: float = 0.0, exclude: Collection[str] = ()) -> str | None:
        """The sid of a message with this body from this sender to ``to``, created since ``since`` (epoch s).

        Used before re-sending a part whose first send may have gone out. The sender is the number
        ``from_`` (listed by it at Twilio) or, without one, the Messaging Service that picked the number.
        Sids in ``exclude`` (messages already accounted for, such as an identical earlier reply) never
        match. DateSent stays empty until the carrier takes a message, so the creation time is compared
        here. Raises TwilioTransientError.
        """
        filters = {"to": to, "from_": from_} if from_ else {"to": to}
        try:
            for message in self.client.messages.list(**filters, limit=FIND_SENT_LOOKBACK):
                if not self._is_match(message, body, from_, messaging_service_sid, since) or message.sid in exclude:
                    continue
                return message.sid
        except LIBRARY_ERRORS as exc:
            error = translate(exc, "Twilio list", self._retry_after())
            raise (error if isinstance(error, TwilioTransientError) else TwilioTransientError(str(error))) from exc
        return None

    def _retry_after(self) -> str | None:
        """The Retry-After header of this thread's last answer from Twilio, if any."""
        response = getattr(self.client.http_client, "last_response", None)
        return (getattr(response, "headers", None) or {}).get("Retry-After")

    @staticmethod
    def _is_match(message, body: str, from_: str | None, messaging_service_sid: str | None, since: float) -> bool:
        if message.body != body:
            return False
        if from_ and message.from_ != from_:
            return False
        if not from_ and messaging_service_sid and message.messaging_service_sid != messaging_service_sid:
            return False
        created = message.date_created
        return not isinstance(created, datetime) or created.timestamp() >= since
