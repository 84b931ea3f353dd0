"""A local UponAI chat API that speaks both documented styles, with a scripted agent.

``reference`` paths live under ``/api/chats``; ``guide`` paths are ``/create-chat`` and friends. Both
share one set of chats. The agent answers through ``responder(chat, text) -> list of replies``; the
default echoes the text. Faults can be injected per operation: ``create_chat``, ``complete``,
``get_chat``, ``list_chats``, ``end_chat``; ``answer_malformed`` makes the next calls of an operation
answer success with a body that is not the documented JSON (``MALFORMED_SHAPES``), applied or not.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.httpfake import FakeServer, Reply, Request


def _malformed(name: str, status: int) -> Reply:
    """A success answer whose body is not the documented JSON (as a broken proxy or release might send)."""
    bodies: dict[str, Any] = {
        "empty": None,  # no body at all
        "empty_object": {},
        "json_null": "null",
        "messages_not_a_list": {"messages": {"content": "hi", "name": "agent"}},
        "items_without_content": {"messages": [{"name": "agent", "tool_calls": []}]},
        "items_not_objects": {"messages": ["hi"]},
    }
    if name == "html":
        return Reply(status, "<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"})
    return Reply(status, bodies[name])


MALFORMED_SHAPES = ("empty", "empty_object", "json_null", "messages_not_a_list", "items_without_content",
                    "items_not_objects", "html")


def _reference_item(chat: SimChat, message: dict[str, Any]) -> dict[str, Any]:
    """A message as the reference style documents it: ``{content, name, tool_calls}``, no role."""
    if message["role"] == "agent":  # the reference's own example: "tool_calls": [{}]
        return {"content": message["content"], "name": chat.agent_id, "tool_calls": [{}]}
    return {"content": message["content"]}


def echo_agent(chat: SimChat, text: str) -> list[str]:
    """The sandbox's scripted agent: echoes a text; greets when given an instruction in brackets."""
    if text.startswith("[") and text.endswith("]"):  # e.g. the gateway asking for an opening line
        return ["Hi! This is the sandbox agent. How can I help you today?"]
    return [f"You said: {text}"]


@dataclass
class SimChat:
    chat_id: str
    agent_id: str
    metadata: dict[str, Any]
    dynamic_variables: dict[str, str]
    created_ms: int
    status: str = "ongoing"
    ended_ms: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def add(self, role: str, content: str) -> dict[str, Any]:
        item = {"role": role, "content": content, "message_id": uuid.uuid4().hex,
                "created_timestamp": int(time.time() * 1000)}
        self.messages.append(item)
        return item

    def user_texts(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]


class UponAISimulator(FakeServer):
    """Fake UponAI: chats in memory, both API styles, an API key, fault injection."""

    def __init__(self, *, api_key: str = "test-uponai-key", workspace_id: int = 1,
                 responder: Callable[[SimChat, str], list[str]] = echo_agent, **kwargs):
        super().__init__(**kwargs)
        self.api_key = api_key
        self.workspace_id = workspace_id
        self.responder = responder
        self.chats: dict[str, SimChat] = {}
        self.completion_log: list[tuple[str, str]] = []  # (chat_id, text) in the order applied
        self._next_id = 1
        self._state = threading.Lock()
        self._malformed: dict[str, list[tuple[str, bool]]] = {}

    def reset(self) -> None:
        with self._state:
            self.chats.clear()
            self.completion_log.clear()
            self.requests.clear()
        self.responder = echo_agent
        self.latency_seconds = 0.0
        self.clear_faults()
        with self._state:
            self._malformed.clear()

    def answer_malformed(self, operation: str, *shapes: str, applied: bool = True) -> None:
        """Answer the next calls of ``operation`` with these ``MALFORMED_SHAPES``, one per call.

        With ``applied`` the operation takes effect first (a completion is in the chat), as when the
        service worked and only its answer was mangled on the way back.
        """
        unknown = set(shapes) - set(MALFORMED_SHAPES)
        if unknown:
            raise ValueError(f"unknown malformed shapes {sorted(unknown)}")
        with self._state:
            self._malformed.setdefault(operation, []).extend((shape, applied) for shape in shapes)

    def snapshot(self) -> dict[str, Any]:
        with self._state:
            return {"next_id": self._next_id, "chats": [asdict(chat) for chat in self.chats.values()]}

    def restore(self, saved: dict[str, Any]) -> None:
        chats = [SimChat(**chat) for chat in saved.get("chats", [])]
        with self._state:
            self.chats = {chat.chat_id: chat for chat in chats}
            self._next_id = max(int(saved.get("next_id", 1)), len(chats) + 1)

    # -- helpers for tests ------------------------------------------------------------------------

    def texts_by_chat(self) -> dict[str, list[str]]:
        with self._state:
            return {cid: chat.user_texts() for cid, chat in self.chats.items()}

    def end(self, chat_id: str) -> None:
        with self._state:
            self.chats[chat_id].status = "ended"
            self.chats[chat_id].ended_ms = int(time.time() * 1000)
        self.changed()

    # -- routing ----------------------------------------------------------------------------------

    def route(self, request: Request):
        operation, action = self._route(request)
        with self._state:
            queued = self._malformed.get(operation) if action is not None else None
            shape, applied = queued.pop(0) if queued else (None, False)
        if shape is None:
            return operation, action

        def malformed() -> Reply:
            if applied:
                action()
            return _malformed(shape, 201 if operation in ("create_chat", "complete") else 200)

        return operation, malformed

    def _route(self, request: Request):
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return "auth", lambda: Reply(401, {"status": "error", "message": "Invalid API key"})
        m, p = request.method, request.path
        if m == "POST" and p == "/api/chats":
            return "create_chat", lambda: self._create(request, "reference")
        if m == "POST" and p == "/create-chat":
            return "create_chat", lambda: self._create(request, "guide")
        if match := re.fullmatch(r"/api/chats/([^/]+)/completions", p):
            return "complete", lambda: self._complete(match[1], request, "reference")
        if m == "POST" and p == "/create-chat-completion":
            body = request.json() or {}
            return "complete", lambda: self._complete(str(body.get("chat_id", "")), request, "guide")
        if m == "GET" and (match := re.fullmatch(r"/api/chats/([^/]+)", p)):
            return "get_chat", lambda: self._get(match[1], request, "reference")
        if m == "GET" and (match := re.fullmatch(r"/get-chat/([^/]+)", p)):
            return "get_chat", lambda: self._get(match[1], request, "guide")
        if m == "GET" and p == "/api/chats":
            return "list_chats", lambda: self._list(request, "reference")
        if m == "POST" and p == "/v3/list-chats":
            return "list_chats", lambda: self._list(request, "guide")
        if m == "POST" and (match := re.fullmatch(r"/api/chats/([^/]+)/end", p)):
            return "end_chat", lambda: self._end(match[1], request, "reference")
        if m == "PATCH" and (match := re.fullmatch(r"/end-chat/([^/]+)", p)):
            return "end_chat", lambda: self._end(match[1], request, "guide")
        return "unknown", None

    # -- operations -------------------------------------------------------------------------------

    def _workspace_error(self, request: Request, style: str) -> Reply | None:
        if style != "reference":
            return None
        raw = request.query.get("workspaceId") if request.method == "GET" else (request.json() or {}).get("workspaceId")
        if str(raw) != str(self.workspace_id):
            return Reply(400, {"status": "error", "message": "workspaceId is required and must match"})
        return None

    def _create(self, request: Request, style: str) -> Reply:
        if error := self._workspace_error(request, style):
            return error
        body = request.json() or {}
        if not body.get("agent_id"):
            return Reply(400, {"status": "error", "message": "agent_id is required"})
        if str(body["agent_id"]).startswith("unknown"):
            return Reply(422, {"status": "error", "message": "agent not found"})
        dyn_key = "uponai_dynamic_variables" if style == "reference" else "retell_llm_dynamic_variables"
        with self._state:
            number, self._next_id = self._next_id, self._next_id + 1
            chat = SimChat(chat_id=f"chat_{number:06d}_{uuid.uuid4().hex[:8]}", agent_id=body["agent_id"],
                           metadata=body.get("metadata") or {}, dynamic_variables=body.get(dyn_key) or {},
                           created_ms=int(time.time() * 1000))
            self.chats[chat.chat_id] = chat
        return Reply(201, self._render(chat, style))

    def _complete(self, chat_id: str, request: Request, style: str) -> Reply:
        if error := self._workspace_error(request, style):
            return error
        content = (request.json() or {}).get("content")
        if not isinstance(content, str):
            return Reply(400, {"status": "error", "message": "content is required"})
        with self._state:
            chat = self.chats.get(chat_id)
            if chat is None:
                return Reply(422, {"status": "error", "message": "chat not found"})
            if chat.status != "ongoing":
                return Reply(422, {"status": "error", "message": "chat has ended"})
            chat.add("user", content)
            self.completion_log.append((chat_id, content))
        replies = self.responder(chat, content)
        with self._state:
            items = [chat.add("agent", text) for text in replies]
        if style == "reference":
            items = [_reference_item(chat, i) for i in items]
        return Reply(201, {"messages": items})

    def _get(self, chat_id: str, request: Request, style: str) -> Reply:
        if error := self._workspace_error(request, style):
            return error
        chat = self.chats.get(chat_id)
        if chat is None:
            return Reply(422, {"status": "error", "message": "chat not found"})
        return Reply(200, self._render(chat, style))

    def _list(self, request: Request, style: str) -> Reply:
        if error := self._workspace_error(request, style):
            return error
        params = request.query if style == "reference" else (request.json() or {})
        order = params.get("sortOrder" if style == "reference" else "sort_order") or "descending"
        limit = int(params.get("limit") or (1000 if style == "reference" else 50))
        key = params.get("paginationKey" if style == "reference" else "pagination_key")
        with self._state:
            chats = sorted(self.chats.values(), key=lambda c: c.chat_id, reverse=order == "descending")
        skip = params.get("skip") if style == "guide" else None
        if key and skip is not None:
            return Reply(400, {"status": "error", "message": "pagination_key and skip cannot be used together"})
        if key:
            ids = [c.chat_id for c in chats]
            chats = chats[ids.index(key) + 1:] if key in ids else []
        elif skip is not None:
            chats = chats[int(skip):]
        page, rest = chats[:limit], chats[limit:]
        next_key = page[-1].chat_id if rest and page else None
        rendered = [self._render(c, style) for c in page]
        if style == "reference":
            return Reply(200, {"data": rendered, "pagination_key": next_key})
        for item in rendered:
            item.pop("transcript", None)
            item.pop("message_with_tool_calls", None)
        return Reply(200, {"items": rendered, "pagination_key": next_key, "has_more": bool(rest)})

    def _end(self, chat_id: str, request: Request, style: str) -> Reply:
        if error := self._workspace_error(request, style):
            return error
        with self._state:
            chat = self.chats.get(chat_id)
            if chat is None:
                return Reply(422, {"status": "error", "message": "chat not found"})
            if chat.status == "ongoing":
                chat.status = "ended"
                chat.ended_ms = int(time.time() * 1000)
        return Reply(204)

    @staticmethod
    def _render(chat: SimChat, style: str) -> dict[str, Any]:
        transcript = "\n".join(f"{'Agent' if m['role'] == 'agent' else 'User'}: {m['content']}" for m in chat.messages)
        if style == "reference":
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(chat.created_ms / 1000))
            return {"chatId": chat.chat_id, "agentId": chat.agent_id, "version": 1, "status": chat.status,
                    "type": "api_chat", "metadata": chat.metadata, "startedAt": iso,
                    "endedAt": None if chat.ended_ms is None else
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(chat.ended_ms / 1000)),
                    "transcript": transcript, "messages": [_reference_item(chat, m) for m in chat.messages],
                    "someFutureField": {"ignored": True}}
        return {"chat_id": chat.chat_id, "agent_id": chat.agent_id, "chat_status": chat.status,
                "chat_type": "api_chat", "start_timestamp": chat.created_ms, "end_timestamp": chat.ended_ms,
                "transcript": transcript, "message_with_tool_calls": [dict(m) for m in chat.messages],
                "metadata": chat.metadata, "retell_llm_dynamic_variables": chat.dynamic_variables,
                "unknown_new_field": 1}
