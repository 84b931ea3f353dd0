"""What a request that got no HTTP answer means, read from requests' exception, and how long a server asks us to
wait (its Retry-After), for both outside clients."""

from __future__ import annotations

import datetime
import email.utils
import math
import time

import requests
from urllib3.exceptions import NewConnectionError


def describe_failure(exc: requests.RequestException) -> tuple[str, bool]:
    """``(reason, maybe_applied)`` for a request that failed before an answer came back.

    ``maybe_applied`` is false only when the request cannot have reached the server (a connect timeout,
    a refused connection, a DNS failure): otherwise it may have taken effect, so re-sending it could do it twice.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout", False
    if isinstance(exc, requests.ReadTimeout):
        return "read timeout", True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return "connection failed", not isinstance(reason, NewConnectionError)
    return type(exc).__name__, True


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf" or "nan" would make a retry that never comes
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates come back naive: they are UTC, not local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())
