"""What ``configure-twilio`` and ``doctor`` both need: the gateway's webhook URLs and Twilio's view of a number."""

from __future__ import annotations

from typing import Any


def webhook_urls(public_base_url: str) -> tuple[str, str]:
    """(SMS webhook URL, status callback URL) of the gateway at ``public_base_url``."""
    base = public_base_url.rstrip("/")
    return f"{base}/twilio/sms", f"{base}/twilio/status"


def service_warning(service, sms_url: str) -> str | None:
    """What to tell the operator when a Messaging Service decides where the number's messages go."""
    if not service.overrides_number_webhook:
        return None
    where = service.inbound_request_url or "no request URL at all"
    if service.inbound_request_url == sms_url:
        return None
    return (f"Messaging Service {service.sid} ({service.friendly_name or 'unnamed'}) holds this number and sends "
            f"its inbound messages to {where}, not to the number's webhook, so the gateway will not hear them. "
            f"In the Twilio console set the service's integration to \"Defer to sender's webhook\", or its "
            f"Request URL to {sms_url} (POST).")


def connect_admin(values: dict[str, Any]):
    from workers.twilio_admin import TwilioAdmin

    return TwilioAdmin.connect(account_sid=values["twilio_account_sid"], auth_token=values["twilio_auth_token"],
                               api_base_url=values["twilio_api_base_url"],
                               timeout_seconds=values["twilio_timeout_seconds"],
                               connect_timeout_seconds=values["twilio_connect_timeout_seconds"])
