"""Checking ``X-Twilio-Signature`` on Twilio's requests."""

from __future__ import annotations

import hmac
from urllib.parse import urlparse

from flask import Request
from twilio.request_validator import RequestValidator


class RotatingValidator:
    """Accepts a signature made with the current auth token or, during a rotation, the previous one."""

    def __init__(self, token: str, previous_token: str | None = None):
        self.validators = [RequestValidator(t) for t in (token, previous_token) if t]

    def validate(self, url: str, params, signature: str) -> bool:
        # twilio's validate() computes the signature over the URL with and without its port, every time. One
        # of the two is the URL as given (``geturl()``), the one Twilio signs: try it alone first (the common
        # case, half the hashing), and let validate() decide everything else.
        as_given, expected = urlparse(url).geturl(), signature.encode("utf-8", "replace")
        return (any(hmac.compare_digest(v.compute_signature(as_given, params).encode(), expected)
                    for v in self.validators)
                or any(v.validate(url, params, signature) for v in self.validators))


def validator_for(settings) -> RotatingValidator:
    """The validator for the configured token(s): ``TWILIO_AUTH_TOKEN`` and ``TWILIO_AUTH_TOKEN_PREVIOUS``."""
    return RotatingValidator(settings.twilio_auth_token, settings.twilio_auth_token_previous)


def signed_url(request: Request, public_base_url: str | None) -> str:
    """The URL Twilio signed: the public origin (when configured) + path + raw query string."""
    base = public_base_url or request.host_url.rstrip("/")
    url = base + request.script_root + request.path
    # Twilio signs the URL's text; a raw (unescaped) non-ASCII byte in it is UTF-8, as the validator encodes it.
    query = request.query_string.decode("utf-8", "replace")
    return f"{url}?{query}" if query else url


def is_signed_by_twilio(request: Request, validator, public_base_url: str | None, form=None) -> bool:
    """Whether the request carries a valid signature over its URL and form fields (``form``: the request's
    form as the caller parsed it; Werkzeug's ``request.form`` when None)."""
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature:
        return False
    return validator.validate(signed_url(request, public_base_url), request.form if form is None else form,
                              signature)
