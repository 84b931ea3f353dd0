"""The two styles UponAI documents its chat API in: each operation's request and the parser of its answer.

``reference`` (the API reference): ``/api/chats...``, camelCase options, every call scoped by ``workspaceId``.
``guide`` (the guides, Retell's shape): ``/create-chat...``, snake_case, the chat id in the body or the path.
The answers' chat objects are read by one lenient parser (``parsing.py``) that knows both shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from workers.uponai.parsing import parse_chat, parse_chat_page, parse_completion


@dataclass(frozen=True)
class Request:
    """One call as a style spells it, and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None


class ReferenceStyle:
    """``/api/chats...``: the chat id in the path, ``workspaceId`` in every body or query."""

    def __init__(self, workspace_id: int | None):
        if workspace_id is None:
            raise ValueError("the reference style needs a workspace id")
        self.workspace_id = workspace_id

    def create_chat(self, agent_id: str, metadata: dict[str, Any] | None,
                    dynamic_variables: dict[str, str] | None) -> Request:
        body = {**_chat_body(agent_id, metadata), "workspaceId": self.workspace_id}
        if dynamic_variables:
            body["uponai_dynamic_variables"] = dynamic_variables
        return Request("POST", "/api/chats", parse_chat, json=body)

    def complete(self, chat_id: str, content: str) -> Request:
        return Request("POST", f"/api/chats/{_path_id(chat_id)}/completions", parse_completion,
                       json={"workspaceId": self.workspace_id, "content": content})

    def get_chat(self, chat_id: str) -> Request:
        return Request("GET", f"/api/chats/{_path_id(chat_id)}", parse_chat, params={"workspaceId": self.workspace_id})

    def list_chats(self, limit: int | None, sort_order: str | None, pagination_key: str | None) -> Request:
        options = _given(limit=limit, sortOrder=sort_order, paginationKey=pagination_key)
        return Request("GET", "/api/chats", partial(parse_chat_page, chats_key="data"),
                       params={"workspaceId": self.workspace_id, **options})

    def end_chat(self, chat_id: str) -> Request:
        return Request("POST", f"/api/chats/{_path_id(chat_id)}/end", _ignore, json={"workspaceId": self.workspace_id})


class GuideStyle:
    """``/create-chat``, ``/get-chat/{id}``...: one path per operation, snake_case, no workspace."""

    def __init__(self, workspace_id: int | None = None):
        pass  # the guide style has no workspaces; the setting is ignored

    def create_chat(self, agent_id: str, metadata: dict[str, Any] | None,
                    dynamic_variables: dict[str, str] | None) -> Request:
        body = _chat_body(agent_id, metadata)
        if dynamic_variables:
            body["retell_llm_dynamic_variables"] = dynamic_variables
        return Request("POST", "/create-chat", parse_chat, json=body)

    def complete(self, chat_id: str, content: str) -> Request:
        return Request("POST", "/create-chat-completion", parse_completion,
                       json={"chat_id": chat_id, "content": content})

    def get_chat(self, chat_id: str) -> Request:
        return Request("GET", f"/get-chat/{_path_id(chat_id)}", parse_chat)

    def list_chats(self, limit: int | None, sort_order: str | None, pagination_key: str | None) -> Request:
        options = _given(limit=limit, sort_order=sort_order, pagination_key=pagination_key)
        return Request("POST", "/v3/list-chats", partial(parse_chat_page, chats_key="items"), json=options)

    def end_chat(self, chat_id: str) -> Request:
        return Request("PATCH", f"/end-chat/{_path_id(chat_id)}", _ignore)


STYLES = {"reference": ReferenceStyle, "guide": GuideStyle}


def _chat_body(agent_id: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"agent_id": agent_id}
    if metadata:
        body["metadata"] = metadata
    return body


def _given(**options: Any) -> dict[str, Any]:
    """The options that were given (an empty string counts as not given)."""
    return {name: value for name, value in options.items() if value is not None and value != ""}


def _path_id(chat_id: str) -> str:
    return quote(str(chat_id), safe="")


def _ignore(data: Any) -> None:
    """Ending a chat answers 204 or the ended chat: nothing in it is needed."""
    return None
