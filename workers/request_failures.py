"""What a request that got no HTTP answer means, read from requests' exception (for both outside clients)."""

from __future__ import annotations

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
