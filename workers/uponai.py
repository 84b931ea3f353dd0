"""UponAI chat API client: the only module that talks to UponAI.

UponAI documents its chat API in two styles that disagree on paths and field names (see
``uponai-api.md``): ``reference`` (``/api/chats...``, camelCase, scoped by ``workspaceId``) and
``guide`` (``/create-chat...``, snake_case). ``UponAIClient`` speaks either, chosen by a setting,
and returns one normalised model (``Chat``, ``ChatMessage``, ``ChatPage``). Responses are parsed
leniently: unknown fields and message roles are ignored.

Errors are translated once into ``workers.errors``: connection errors, timeouts, 408, 409, 429 and 5xx
become ``UponAITransientError`` (with Retry-After and whether the call may have been applied), as the
vendor SDKs retry them; other 4xx become ``UponAIPermanentError`` (``ChatNotFoundError`` for an unknown
chat id), keeping the server's message. A 2xx whose body is not the documented JSON (empty, ``{}``,
``null``, HTML, ``messages`` not a list, an agent item without ``content``) is a ``MalformedAnswerError``:
a failed call, never an empty answer.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from workers.errors import ChatNotFoundError, MalformedAnswerError, UponAIPermanentError, UponAITransientError

AGENT_ROLES = frozenset({"agent", "assistant"})
UNKNOWN_ROLE = "unknown"  # a chat object's item with no role and no speaker name: the person's or the agent's
ENDED_STATUSES = frozenset({"ended", "error"})


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat, reduced to who said it and what."""

    role: str
    content: str

    @property
    def is_agent(self) -> bool:
        return self.role == "agent"


@dataclass(frozen=True)
class Chat:
    """An UponAI chat in either API style's shape, normalised."""

    chat_id: str
    agent_id: str | None = None
    status: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    ended_at: str | None = None

    @property
    def is_ended(self) -> bool:
        return (self.status or "").lower() in ENDED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "agent_id": self.agent_id,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "metadata": self.metadata,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
        }


@dataclass(frozen=True)
class ChatPage:
    """One page of a chat listing; pass ``pagination_key`` back for the next page."""

    chats: tuple[Chat, ...]
    pagination_key: str | None
    has_more: bool


class UponAIClient:
    """Calls the UponAI chat API in the configured style, with explicit timeouts."""

    def __init__(self, *, base_url: str, api_key: str, agent_id: str, style: str = "reference",
                 workspace_id: int | None = None, connect_timeout_seconds: float = 5.0,
                 read_timeout_seconds: float = 300.0, session: requests.Session | None = None):
        if style not in ("reference", "guide"):
            raise ValueError(f"unknown UponAI API style {style!r}")
        if style == "reference" and workspace_id is None:
            raise ValueError("the reference style needs a workspace id")
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self.style = style
        self.workspace_id = workspace_id
        self.timeout = (connect_timeout_seconds, read_timeout_seconds)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._given_session = session
        if session is not None:
            session.headers.update(self._headers)
        self._local = threading.local()  # requests does not promise a Session is thread-safe: one per thread

    @property
    def session(self) -> requests.Session:
        if self._given_session is not None:
            return self._given_session
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self._headers)
        return session

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
        body: dict[str, Any] = {"agent_id": agent_id or self.agent_id}
        if metadata:
            body["metadata"] = metadata
        if self.style == "reference":
            body["workspaceId"] = self.workspace_id
            if dynamic_variables:
                body["uponai_dynamic_variables"] = dynamic_variables
            data = self._call("POST", "/api/chats", json=body)
        else:
            if dynamic_variables:
                body["retell_llm_dynamic_variables"] = dynamic_variables
            data = self._call("POST", "/create-chat", json=body)
        return parse_chat(data)

    def complete(self, chat_id: str, content: str) -> list[ChatMessage]:
        """Send the user's text to the chat; return the agent's messages of that turn, in order."""
        if self.style == "reference":
            data = self._call("POST", f"/api/chats/{_path_id(chat_id)}/completions",
                              json={"workspaceId": self.workspace_id, "content": content}, chat_id=chat_id)
        else:
            data = self._call("POST", "/create-chat-completion",
                              json={"chat_id": chat_id, "content": content}, chat_id=chat_id)
        return parse_completion(data)

    def get_chat(self, chat_id: str) -> Chat:
        """Read a chat back, with its messages so far."""
        if self.style == "reference":
            data = self._call("GET", f"/api/chats/{_path_id(chat_id)}",
                              params={"workspaceId": self.workspace_id}, chat_id=chat_id)
        else:
            data = self._call("GET", f"/get-chat/{_path_id(chat_id)}", chat_id=chat_id)
        return parse_chat(data)

    def list_chats(self, *, limit: int | None = None, sort_order: str | None = None,
                   pagination_key: str | None = None) -> ChatPage:
        """List chats, newest first unless ``sort_order`` is ``ascending``."""
        names = ("limit", "sortOrder", "paginationKey") if self.style == "reference" else (
            "limit", "sort_order", "pagination_key")
        options = {name: value for name, value in zip(names, (limit, sort_order, pagination_key), strict=True)
                   if value is not None and value != ""}
        if self.style == "reference":
            data = self._call("GET", "/api/chats", params={"workspaceId": self.workspace_id, **options})
            items = data.get("data") if isinstance(data, dict) else None
        else:
            data = self._call("POST", "/v3/list-chats", json=options)
            items = data.get("items") if isinstance(data, dict) else None
        if isinstance(data, list):  # tolerate a bare array (the old GET /list-chat answered one)
            items, data = data, {}
        if not isinstance(items, list):
            raise MalformedAnswerError("UponAI chat listing has no list of chats")
        chats = tuple(parse_chat(item) for item in (items or []) if isinstance(item, dict))
        key = data.get("pagination_key") or data.get("paginationKey") or None
        has_more = bool(data.get("has_more", key is not None))
        return ChatPage(chats=chats, pagination_key=key, has_more=has_more)

    def end_chat(self, chat_id: str) -> None:
        """End the chat; the agent stops answering in it."""
        if self.style == "reference":
            self._call("POST", f"/api/chats/{_path_id(chat_id)}/end",
                       json={"workspaceId": self.workspace_id}, chat_id=chat_id)
        else:
            self._call("PATCH", f"/end-chat/{_path_id(chat_id)}", chat_id=chat_id)

    # -- transport --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
              chat_id: str | None = None) -> Any:
        what = f"UponAI {method} {path}"
        try:
            response = self.session.request(method, self.base_url + path, json=json, params=params,
                                            timeout=self.timeout)
        except requests.ConnectTimeout as exc:
            raise UponAITransientError(f"{what}: connect timeout") from exc
        except requests.ReadTimeout as exc:
            raise UponAITransientError(f"{what}: read timeout", maybe_applied=True) from exc
        except requests.ConnectionError as exc:
            raise UponAITransientError(f"{what}: connection failed",
                                       maybe_applied=not _never_connected(exc)) from exc
        except requests.RequestException as exc:
            raise UponAITransientError(f"{what}: {type(exc).__name__}", maybe_applied=True) from exc
        status = response.status_code
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return None  # right for end chat; every other operation refuses it as malformed
            try:
                return response.json()
            except ValueError as exc:
                raise MalformedAnswerError(f"{what}: answered {status} with a body that is not JSON",
                                           status=status, maybe_applied=True) from exc
        message = f"{what}: {status} {_error_message(response)}"
        if status in (408, 429):  # the request was not taken in (408: the server gave up waiting for it)
            raise UponAITransientError(message, status=status,
                                       retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")))
        if status == 409 or status >= 500:  # 409: clashed with a request still running, perhaps our own
            raise UponAITransientError(message, status=status, maybe_applied=True,
                                       retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")))
        if status == 422 and chat_id is not None:
            raise ChatNotFoundError(message, status=status)
        raise UponAIPermanentError(message, status=status)


def _path_id(chat_id: str) -> str:
    return requests.utils.quote(str(chat_id), safe="")


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the request cannot have reached the server (refused, DNS failure)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


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


def _names_a_function(item: dict[str, Any]) -> bool:
    """Whether the item calls a tool: a ``tool_calls`` entry that names a function (``[{}]`` does not)."""
    calls = item.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else call.get("name")
        if isinstance(name, str) and name.strip():
            return True
    return False


def _role(item: dict[str, Any], roleless: str) -> str:
    """Who said the item; ``roleless`` for an item with neither a role nor a speaker name."""
    role = item.get("role")
    if role is None:
        # The reference style documents items as {content, name, tool_calls}, its own example holding
        # ``"tool_calls": [{}]``: only a call that names a function makes the item a tool call.
        if _names_a_function(item):
            return "tool_call_invocation"
        name = str(item.get("name") or "").lower()
        if name in AGENT_ROLES or name == "user":
            return "agent" if name in AGENT_ROLES else "user"
        return roleless
    role = str(role).lower()
    return "agent" if role in AGENT_ROLES else role


def parse_messages(items: Any, *, roleless: str = UNKNOWN_ROLE) -> list[ChatMessage]:
    """Normalise a list of message items of either style, leniently; items without text are dropped."""
    messages = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if not isinstance(content, str) or not content.strip():
            continue
        messages.append(ChatMessage(role=_role(item, roleless), content=content))
    return messages


def parse_completion(data: Any) -> list[ChatMessage]:
    """The agent's text messages of one completion answer, in order (empty when the turn had no text).

    Raises MalformedAnswerError when the answer is not the documented ``{"messages": [...]}``: it may
    have been applied (UponAI answered 2xx), so a retry reads the chat back before posting again.
    """
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise MalformedAnswerError("UponAI completion answer has no list of messages", maybe_applied=True)
    replies = []
    for item in data["messages"]:
        if not isinstance(item, dict):
            raise MalformedAnswerError("UponAI completion answer holds a message that is not an object",
                                       maybe_applied=True)
        # A completion holds only the agent's new messages, so an item with no role is the agent's.
        if _role(item, "agent") != "agent":
            continue
        content = item.get("content")
        if not isinstance(content, str):
            if _names_a_function(item):  # an agent item that only calls a tool
                continue
            raise MalformedAnswerError("UponAI completion answer holds an agent message without text content",
                                       maybe_applied=True)
        if content.strip():
            replies.append(ChatMessage(role="agent", content=content))
    return replies


def _parse_transcript(transcript: Any) -> list[ChatMessage]:
    if isinstance(transcript, list):
        return parse_messages(transcript)
    if not isinstance(transcript, str):
        return []
    messages: list[ChatMessage] = []
    for line in transcript.splitlines():
        speaker, sep, text = line.partition(":")
        role = speaker.strip().lower()
        if sep and role in ("agent", "user", "assistant"):
            messages.append(ChatMessage(role="agent" if role in AGENT_ROLES else "user", content=text.strip()))
        elif messages and line.strip():
            last = messages[-1]
            messages[-1] = ChatMessage(role=last.role, content=last.content + "\n" + line)
    return messages


def parse_chat(data: Any) -> Chat:
    """Build a Chat from a chat object of either style."""
    if not isinstance(data, dict):
        raise MalformedAnswerError("UponAI answered with something that is not a chat object", maybe_applied=True)
    chat_id = data.get("chat_id") or data.get("chatId") or data.get("id")
    if not chat_id:
        raise MalformedAnswerError("UponAI chat object has no chat id", maybe_applied=True)
    messages: list[ChatMessage] = []
    for key in ("message_with_tool_calls", "messages"):
        if isinstance(data.get(key), list):
            messages = parse_messages(data[key])
            break
    else:
        messages = _parse_transcript(data.get("transcript"))
    if any(m.role == UNKNOWN_ROLE for m in messages):
        # Items without a role (the reference style's): the transcript's "User:"/"Agent:" lines say who spoke.
        spoken = _parse_transcript(data.get("transcript"))
        if any(m.role == "user" for m in spoken):
            messages = spoken
    metadata = data.get("metadata")
    return Chat(
        chat_id=str(chat_id),
        agent_id=data.get("agent_id") or data.get("agentId"),
        status=data.get("chat_status") or data.get("status"),
        messages=tuple(messages),
        metadata=metadata if isinstance(metadata, dict) else {},
        started_at=_time(data.get("start_timestamp", data.get("startedAt"))),
        ended_at=_time(data.get("end_timestamp", data.get("endedAt"))),
    )


def _time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):  # guide style: epoch milliseconds
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value / 1000))
    return str(value)
