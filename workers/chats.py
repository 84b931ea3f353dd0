"""The conversation's UponAI chat: creating it, running a turn exactly once, ending it (also when idle)."""

from __future__ import annotations

import logging
import time

from workers.errors import ChatNotFoundError, UponAIPermanentError
from workers.locking import LOCK_TTL_SECONDS, holding
from workers.services import Services
from workers.store import InboundMessage
from workers.uponai import Chat, ChatMessage, UponAIClient

log = logging.getLogger(__name__)

BUSY_RETRY_SECONDS = 5.0  # an idle check that meets a running turn looks again this much later


def ensure_chat(services: Services, message: InboundMessage) -> str:
    """The conversation's chat id, creating the chat when there is none."""
    store = services.store
    cid = message.conversation_id
    chat_id = store.conversation(cid).get("chat_id")
    if chat_id:
        return chat_id
    agent_id = services.settings.agent_for(message.to)
    chat = services.agent.create_chat(agent_id=agent_id, metadata={"channel": "sms", "conversation_id": cid})
    store.set_chat(cid, chat.chat_id, agent_id)
    log.info("conversation=%s chat=%s created agent=%s", cid, chat.chat_id, agent_id)
    return chat.chat_id


def run_turn(services: Services, message: InboundMessage, earlier_turn_chat_id: str | None) -> list[ChatMessage]:
    """One agent turn for the message's text; never posts the same text twice to one chat."""
    agent = services.agent
    text = message.body.strip()
    chat_id = ensure_chat(services, message)
    if earlier_turn_chat_id == chat_id:
        # An earlier attempt posted this text and then failed: it may have been applied.
        found = turn_in_chat(agent.get_chat(chat_id), text)
        if found is not None:
            log.info("message=%s chat=%s turn found in chat, not posted again", message.sid, chat_id)
            return found
    services.store.mark_turn_started(message.sid, chat_id)
    try:
        return agent.complete(chat_id, text)
    except UponAIPermanentError as exc:
        if not _chat_is_gone(agent, chat_id, exc):
            raise
    # The chat ended (the agent's auto-close, or elsewhere): answer in a new one, once.
    log.info("message=%s chat=%s has ended; starting a new chat", message.sid, chat_id)
    services.store.forget_chat(message.conversation_id, chat_id)
    chat_id = ensure_chat(services, message)
    services.store.mark_turn_started(message.sid, chat_id)
    return agent.complete(chat_id, text)


def _chat_is_gone(agent: UponAIClient, chat_id: str, exc: UponAIPermanentError) -> bool:
    """Whether a refused completion means the chat is over (UponAI answers 400 or 422 for it)."""
    if exc.status not in (400, 422):
        return False
    try:
        return agent.get_chat(chat_id).is_ended
    except ChatNotFoundError:
        return True


def turn_in_chat(chat: Chat, text: str) -> list[ChatMessage] | None:
    """The agent messages answering ``text`` if it is the chat's last user message, else None."""
    messages = list(chat.messages)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None or messages[last_user].content.strip() != text:
        return None
    return [m for m in messages[last_user + 1:] if m.is_agent]


def end_chat(services: Services, cid: str, chat_id: str | None) -> None:
    """End the conversation's chat at UponAI (if any) and forget it; the next text starts a new one."""
    if not chat_id:
        return
    try:
        services.agent.end_chat(chat_id)
    except UponAIPermanentError as exc:  # already ended or unknown: the goal is reached
        log.info("conversation=%s chat=%s end refused (%s); forgetting it", cid, chat_id, exc.status)
    services.store.forget_chat(cid, chat_id)
    log.info("conversation=%s chat=%s ended", cid, chat_id)


def close_if_idle(services: Services, cid: str, token: str) -> float | None:
    """End the conversation's chat if it has been idle long enough.

    Returns None when done, or the seconds after which to check again (still active, or busy).
    Raises TransientError if UponAI could not be reached.
    """
    store = services.store
    if not store.acquire_lock(cid, token, LOCK_TTL_SECONDS):
        return BUSY_RETRY_SECONDS
    with holding(store, services.jobs, cid, token):
        conversation = store.conversation(cid)
        chat_id = conversation.get("chat_id")
        if not chat_id:
            store.clear_idle_check(cid)
            return None
        last = float(conversation.get("last_activity_at") or conversation.get("chat_started_at") or 0)
        remaining = last + services.settings.chat_idle_timeout_seconds - time.time()
        if remaining > 0:
            return remaining
        end_chat(services, cid, chat_id)
        store.clear_idle_check(cid)
        log.info("conversation=%s chat=%s closed after being idle", cid, chat_id)
        return None
