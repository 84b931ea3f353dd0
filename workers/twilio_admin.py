"""Twilio account administration for the operator commands: credentials, a number's webhooks, Messaging Services.

It drives the twilio ``Client`` built by ``workers.twilio_client`` (the only importer of the twilio
library, so ``TWILIO_API_BASE_URL`` and the timeouts apply here too) and translates errors with the
same ``translate``: TwilioPermanentError (401 bad credentials, 404...) or TwilioTransientError.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.twilio_client import LIBRARY_ERRORS, build_client, translate


@dataclass(frozen=True)
class NumberConfig:
    """A phone number's messaging configuration at Twilio."""

    sid: str
    phone_number: str
    sms_url: str
    sms_method: str
    status_callback: str


@dataclass(frozen=True)
class ServiceConfig:
    """A Messaging Service that holds a number, and where it sends that number's inbound messages."""

    sid: str
    friendly_name: str
    inbound_request_url: str
    use_inbound_webhook_on_number: bool

    @property
    def overrides_number_webhook(self) -> bool:
        return not self.use_inbound_webhook_on_number


def _number(item) -> NumberConfig:
    return NumberConfig(sid=item.sid, phone_number=item.phone_number, sms_url=item.sms_url or "",
                        sms_method=(item.sms_method or "POST").upper(), status_callback=item.status_callback or "")


class TwilioAdmin:
    """Reads and changes the account's number configuration through Twilio's REST API."""

    def __init__(self, client):
        self.client = client

    @classmethod
    def connect(cls, *, account_sid: str, auth_token: str, api_base_url: str, timeout_seconds: float,
                connect_timeout_seconds: float):
        return cls(build_client(account_sid=account_sid, auth_token=auth_token, api_base_url=api_base_url,
                                timeout_seconds=timeout_seconds, connect_timeout_seconds=connect_timeout_seconds))

    def account_status(self) -> str:
        """The account's status (``active``...); raises TwilioPermanentError (401) for bad credentials."""
        try:
            return self.client.api.v2010.accounts(self.client.account_sid).fetch().status or "unknown"
        except LIBRARY_ERRORS as exc:
            raise translate(exc, "Twilio account fetch") from exc

    def find_number(self, phone_number: str) -> NumberConfig | None:
        """The account's number ``phone_number`` (E.164), or None when the account has no such number."""
        try:
            found = self.client.incoming_phone_numbers.list(phone_number=phone_number, limit=5)
        except LIBRARY_ERRORS as exc:
            raise translate(exc, "Twilio number lookup") from exc
        return next((_number(item) for item in found if item.phone_number == phone_number), None)

    def update_number(self, sid: str, *, sms_url: str, sms_method: str, status_callback: str) -> NumberConfig:
        """Point the number's SMS webhook and status callback at new URLs; returns the new configuration."""
        try:
            item = self.client.incoming_phone_numbers(sid).update(
                sms_url=sms_url, sms_method=sms_method, status_callback=status_callback,
                status_callback_method="POST")
        except LIBRARY_ERRORS as exc:
            raise translate(exc, "Twilio number update") from exc
        return _number(item)

    def services_of(self, number_sid: str) -> list[ServiceConfig]:
        """The Messaging Services that hold the number (normally none or one)."""
        try:
            services = self.client.messaging.v1.services.list(limit=1000)
            holding = [s for s in services
                       if any(n.sid == number_sid for n in self.client.messaging.v1.services(s.sid)
                              .phone_numbers.list(limit=1000))]
        except LIBRARY_ERRORS as exc:
            raise translate(exc, "Twilio Messaging Services lookup") from exc
        return [ServiceConfig(sid=s.sid, friendly_name=s.friendly_name or "", inbound_request_url=s.inbound_request_url
                              or "", use_inbound_webhook_on_number=bool(s.use_inbound_webhook_on_number))
                for s in holding]
