"""Reading UponAI's answers, of either style, into the model; leniently, but never into an empty answer.

Unknown fields and message roles are ignored. An answer that is not the documented JSON raises
``MalformedAnswerError`` (it may have been applied: UponAI said 2xx).
"""

from __future__ import annotations

import time
from typing import Any

from workers.errors import MalformedAnswerError
from workers.uponai.models import AGENT_ROLES, UNKNOWN_ROLE, Chat, ChatMessage, ChatPage


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


def parse_chat_page(data: Any, chats_key: str) -> ChatPage:
    """Build a ChatPage from a listing that holds its chats under ``chats_key`` (or is a bare array)."""
    items = data.get(chats_key) if isinstance(data, dict) else None
    if isinstance(data, list):  # tolerate a bare array (the old GET /list-chat answered one)
        items, data = data, {}
    if not isinstance(items, list):
        raise MalformedAnswerError("UponAI chat listing has no list of chats")
    chats = tuple(parse_chat(item) for item in items if isinstance(item, dict))
    key = data.get("pagination_key") or data.get("paginationKey") or None
    has_more = bool(data.get("has_more", key is not None))
    return ChatPage(chats=chats, pagination_key=key, has_more=has_more)


def _time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):  # guide style: epoch milliseconds
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value / 1000))
    return str(value)
