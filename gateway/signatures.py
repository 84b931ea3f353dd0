"""Checking ``X-Twilio-Signature`` on Twilio's requests."""

from __future__ import annotations

from flask import Request
from twilio.request_validator import RequestValidator


def signed_url(request: Request, public_base_url: str | None) -> str:
    """The URL Twilio signed: the public origin (when configured) + path + raw query string."""
    base = public_base_url or request.host_url.rstrip("/")
    url = base + request.script_root + request.path
    query = request.query_string.decode("latin-1")
    return f"{url}?{query}" if query else url


def is_signed_by_twilio(request: Request, validator: RequestValidator, public_base_url: str | None) -> bool:
    """Whether the request carries a valid signature over its URL and form fields."""
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature:
        return False
    return validator.validate(signed_url(request, public_base_url), request.form, signature)
