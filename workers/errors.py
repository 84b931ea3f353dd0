"""The project's own exceptions, named by failure class.

The UponAI client and the Twilio sender translate their library's errors into these, once::

    GatewayError
    ├── TransientError              retry later (connection errors, timeouts, 408, 409, 429, 5xx)
    │   ├── UponAITransientError
    │   │   └── MalformedAnswerError  a 2xx whose body is not the documented JSON
    │   └── TwilioTransientError
    │       └── TwilioMalformedAnswerError  a 2xx to a send that is not a message (it may have gone)
    └── PermanentError              do not retry (4xx other than 429)
        ├── UponAIPermanentError
        │   ├── ChatNotFoundError   the chat id is unknown (422) or not usable any more
        │   └── UponAICredentialsError  401, 403: the API key is refused
        ├── TwilioPermanentError
        │   └── TwilioCredentialsError  401 (20003), 20005: the account's credentials are refused
        └── UnsendableTextError     the text is not valid Unicode (found here, before anything reached Twilio)

A refused credential (``CredentialsError``) is the operator's to fix, not the message's fault: the message is
kept for a replay with no apology, and its drain job fails into the failed-job registry for a requeue.

``TransientError.retry_after_seconds`` carries a server's Retry-After; ``maybe_applied`` is true when
the request may have taken effect before it failed (a read timeout, a connection dropped after the
request was sent), so re-sending it blindly could do it twice.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class TransientError(GatewayError):
    """A failure that may go away: the operation should be retried later."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None,
                 retry_after_seconds: float | None = None, maybe_applied: bool = False):
        super().__init__(message, status=status, code=code)
        self.retry_after_seconds = retry_after_seconds
        self.maybe_applied = maybe_applied


class PermanentError(GatewayError):
    """A failure that retrying will not fix."""


class UponAITransientError(TransientError):
    """UponAI was unreachable, slow, rate limiting, failing (408, 409, 5xx) or answered nonsense."""


class MalformedAnswerError(UponAITransientError):
    """UponAI answered 2xx with a body that is not the documented JSON (empty, ``{}``, HTML, wrong types)."""

    kind = "malformed"  # the metrics label for it (its HTTP status says success)


class UponAIPermanentError(PermanentError):
    """UponAI refused the request (400, 401, 402, 403, 404, 422...)."""


class ChatNotFoundError(UponAIPermanentError):
    """UponAI does not know the chat id (it answers 422 for unknown ids)."""


class CredentialsError(PermanentError):
    """An outside service refused the gateway's credentials: nothing works until an operator fixes them."""

    service = ""


class UponAICredentialsError(UponAIPermanentError, CredentialsError):
    """UponAI refused the API key (401) or the key may not use the agent or workspace (403)."""

    service = "uponai"


class TwilioTransientError(TransientError):
    """Twilio was unreachable, slow, rate limiting (20429) or failing (5xx)."""


class TwilioMalformedAnswerError(TwilioTransientError):
    """Twilio answered a send with 2xx but no readable message (no JSON, no ``sid``): it may have gone."""

    kind = "malformed"  # the metrics label for it (its HTTP status says success)


class TwilioPermanentError(PermanentError):
    """Twilio refused the message (e.g. 21610 opted out, 21211 invalid number)."""


class UnsendableTextError(PermanentError):
    """A text that cannot be sent as it is (not valid Unicode: a lone surrogate); a local fault, never Twilio's."""


class TwilioCredentialsError(TwilioPermanentError, CredentialsError):
    """Twilio refused the account's credentials: 401 with error 20003 (the auth token rotated or wrong) or 20005
    (the account is not active, e.g. suspended)."""

    service = "twilio"

    CODES = frozenset({20003, 20005})
