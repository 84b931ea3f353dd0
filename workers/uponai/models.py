"""The one model of chats that both API styles are read into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AGENT_ROLES = frozenset({"agent", "assistant"})
UNKNOWN_ROLE = "unknown"  # a chat object's item with no role and no speaker name: the person's or the agent's
ENDED_STATUSES = frozenset({"ended", "error"})


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat, reduced to who said it and what."""

    role: str
    content: str


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
