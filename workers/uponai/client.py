"""UponAI's transport: one client for both styles, its timeouts, and its errors translated once.

Every failure becomes one of ``workers.errors``::

    UponAITransientError          retried: connection errors, timeouts, 408, 409, 429, 5xx
    └── MalformedAnswerError      a 2xx whose body is not the documented JSON: a failed call, never an empty answer
    UponAIPermanentError          not retried: any other 4xx, with the server's message
    └── ChatNotFoundError         a 422 to a call about one chat: UponAI does not know the chat id

Transient errors carry the server's Retry-After, and ``maybe_applied`` when the call may have taken effect
(a read timeout, a connection dropped after sending, 409, 5xx, a malformed 2xx), as the vendor SDKs retry them.
"""

from __future__ import annotations

import threading
from typing import Any

import requests

from workers.errors import (
    ChatNotFoundError,
    MalformedAnswerError,
    UponAICredentialsError,
    UponAIPermanentError,
    UponAITransientError,
)
from workers.http_environment import pin_environment, send
from workers.request_failures import describe_failure, parse_retry_after
from workers.uponai.models import Chat, ChatMessage, ChatPage
from workers.uponai.styles import STYLES, Request


class UponAIClient:
    """Calls the UponAI chat API in the configured style, with explicit timeouts; safe to share between threads."""

    def __init__(self, *, base_url: str, api_key: str, agent_id: str, style: str, workspace_id: int | None,
                 connect_timeout_seconds: float, read_timeout_seconds: float):
        if style not in STYLES:
            raise ValueError(f"unknown UponAI API style {style!r}")
        self._style = STYLES[style](workspace_id)
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self.timeout = (connect_timeout_seconds, read_timeout_seconds)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._local = threading.local()  # requests does not promise a Session is thread-safe: one per thread

    @classmethod
    def from_settings(cls, settings) -> UponAIClient:
        return cls(base_url=settings.uponai_base_url, api_key=settings.uponai_api_key,
                   agent_id=settings.uponai_agent_id, style=settings.uponai_api_style,
                   workspace_id=settings.uponai_workspace_id,
                   connect_timeout_seconds=settings.uponai_connect_timeout_seconds,
                   read_timeout_seconds=settings.uponai_read_timeout_seconds)

    # -- operations -------------------------------------------------------------------------------

    def create_chat(self, *, agent_id: str | None = None, metadata: dict[str, Any] | None = None,
                    dynamic_variables: dict[str, str] | None = None) -> Chat:
        """Create a chat with the agent (the default agent unless ``agent_id`` is given)."""
        return self._send(self._style.create_chat(agent_id or self.agent_id, metadata, dynamic_variables))

    def complete(self, chat_id: str, content: str) -> list[ChatMessage]:
        """Send the user's text to the chat; return the agent's messages of that turn, in order."""
        return self._send(self._style.complete(chat_id, content), chat_id=chat_id)

    def get_chat(self, chat_id: str) -> Chat:
        """Read a chat back, with its messages so far."""
        return self._send(self._style.get_chat(chat_id), chat_id=chat_id)

    def list_chats(self, *, limit: int | None = None, sort_order: str | None = None,
                   pagination_key: str | None = None) -> ChatPage:
        """List chats, newest first unless ``sort_order`` is ``ascending``."""
        return self._send(self._style.list_chats(limit, sort_order, pagination_key))

    def end_chat(self, chat_id: str) -> None:
        """End the chat; the agent stops answering in it."""
        self._send(self._style.end_chat(chat_id), chat_id=chat_id)

    # -- transport --------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = pin_environment(requests.Session(), self.base_url)
        return session

    def _send(self, request: Request, *, chat_id: str | None = None) -> Any:
        """Make the call and parse its answer; ``chat_id`` names the chat a 422 says is unknown."""
        what = f"UponAI {request.method} {request.path}"
        try:
            response = send(self._session(), request.method, self.base_url + request.path, headers=self._headers,
                            json=request.json, params=request.params, timeout=self.timeout)
        except requests.RequestException as exc:
            reason, maybe_applied = describe_failure(exc)
            raise UponAITransientError(f"{what}: {reason}", maybe_applied=maybe_applied) from exc
        status = response.status_code
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return request.parse(None)  # right for end chat; every other operation refuses it as malformed
            try:
                data = response.json()
            except ValueError as exc:
                raise MalformedAnswerError(f"{what}: answered {status} with a body that is not JSON",
                                           status=status, maybe_applied=True) from exc
            return request.parse(data)
        message = f"{what}: {status} {_error_message(response)}"
        if status in (408, 429):  # the request was not taken in (408: the server gave up waiting for it)
            raise UponAITransientError(message, status=status,
                                       retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")))
        if status == 409 or status >= 500:  # 409: clashed with a request still running, perhaps our own
            raise UponAITransientError(message, status=status, maybe_applied=True,
                                       retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")))
        if status == 422 and chat_id is not None:
            raise ChatNotFoundError(message, status=status)
        if status in (401, 403):
            raise UponAICredentialsError(message, status=status)
        raise UponAIPermanentError(message, status=status)


def _error_message(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip().replace("\n", " ")
        return text[:200] or "(empty body)"
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            if isinstance(data.get(key), str):
                return data[key][:500]
    return str(data)[:200]
