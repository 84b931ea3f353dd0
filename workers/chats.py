"""The conversation's UponAI chat: creating it, running a turn exactly once, ending it (also when idle)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.metrics import metrics
from core.model import InboundMessage
from workers.bursts import Turn
from workers.errors import ChatNotFoundError, UponAIPermanentError
from workers.locking import LOCK_TTL_SECONDS, holding
from workers.services import Services
from workers.uponai import UNKNOWN_ROLE, Chat, ChatMessage, UponAIClient

log = logging.getLogger(__name__)

# An idle check that finds the conversation busy (a turn is running) looks again this much later: nobody
# waits on it, and a busy conversation is not idle anyway.
IDLE_CHECK_BUSY_RETRY_SECONDS = 5.0


def _chat_for(services: Services, message: InboundMessage, conversation: dict[str, str] | None
              ) -> tuple[str, str | None]:
    """The conversation's chat id, and the agent id when the chat was created now (not stored yet: the caller
    stores it, ``set_chat`` or in the step that fixes the turn)."""
    cid = message.conversation_id
    chat_id = (conversation if conversation is not None else services.store.conversation(cid)).get("chat_id")
    if chat_id:
        return chat_id, None
    agent_id = services.settings.agent_for(message.to)
    chat = services.agent.create_chat(agent_id=agent_id, metadata={"channel": "sms", "conversation_id": cid})
    log.info("conversation=%s chat=%s created agent=%s", cid, chat.chat_id, agent_id)
    return chat.chat_id, agent_id


def run_turn(services: Services, turn: Turn, conversation: dict[str, str] | None = None) -> list[ChatMessage]:
    """One agent turn for the turn's texts; never posts them twice to one chat.

    ``conversation``: the conversation's hash as the caller read it under the lock (saves a read).
    """
    replies = _turn(services, turn, conversation)
    if not any(m.content.strip() for m in replies):
        # Well-formed but silent (no agent text, or only tool calls): the person gets nothing, so say so.
        services.store.note_empty_turn(turn.first.conversation_id)
        metrics().uponai_empty_turns.inc()
        log.warning("message=%s conversation=%s the agent's turn had no text; nothing to send",
                    turn.first.sid, turn.first.conversation_id)
    return replies


def _turn(services: Services, turn: Turn, conversation: dict[str, str] | None) -> list[ChatMessage]:
    fixing = _TurnFixer(services, turn)
    chat_id, fixing.new_chat_agent = _chat_for(services, turn.first, conversation)
    answer = complete_once(services, turn.first.sid, chat_id, turn.content, turn.progress.turn_chat_id,
                           fix=fixing.fix)
    if answer is not None:
        return answer
    # The chat is gone, or ended (the agent's auto-close, or elsewhere) without our turn: answer in a new one.
    old_chat_id = chat_id
    log.info("message=%s chat=%s has ended; starting a new chat", turn.first.sid, old_chat_id)
    services.store.forget_chat(turn.first.conversation_id, old_chat_id)
    chat_id, fixing.new_chat_agent = _chat_for(services, turn.first, None)
    return services.agent.complete(chat_id, fixing.fix(chat_id))


class _TurnFixer:
    """Fixes the turn (its texts and words) in the step that marks it started in a chat; returns the words.

    A chat created for the turn (``new_chat_agent`` set) becomes the conversation's chat in that same step.
    """

    def __init__(self, services: Services, turn: Turn):
        self.services, self.turn = services, turn
        self.new_chat_agent: str | None = None

    def fix(self, chat_id: str) -> str:
        turn = self.turn
        fresh, content = self.services.store.fix_turn(turn.first.conversation_id, turn.sids, turn.content, chat_id,
                                                      new_chat_agent=self.new_chat_agent)
        self.new_chat_agent = None
        if fresh:
            metrics().turn_texts.observe(len(turn.messages))
        return content


def complete_once(services: Services, turn_id: str, chat_id: str, text: str,
                  earlier_turn_chat_id: str | None, *, fix: Callable[[str], str] | None = None
                  ) -> list[ChatMessage] | None:
    """The agent's answer to ``text`` in the chat; ``text`` is posted at most once per ``turn_id`` and chat.

    When an earlier attempt of the turn posted ``text`` to this chat (``earlier_turn_chat_id``), it may
    have been applied, so the answer is read back from the chat instead of asked for again. Returns None
    when the chat is gone or has ended without the turn: it was not applied there, and cannot be.
    ``fix(chat_id)``: marks the turn started in the chat (fixing what it posts) and returns the words to
    post; without it the turn is only marked started.
    """
    agent = services.agent
    if earlier_turn_chat_id == chat_id:
        try:
            chat = agent.get_chat(chat_id)
        except ChatNotFoundError:
            return None
        found = turn_in_chat(chat, text)
        if found is not None:
            log.info("message=%s chat=%s turn found in chat, not posted again", turn_id, chat_id)
            return found
        if chat.is_ended:
            return None
    if fix is not None:
        text = fix(chat_id)
    else:
        services.store.mark_turn_started(turn_id, chat_id)
    try:
        return agent.complete(chat_id, text)
    except UponAIPermanentError as exc:
        if not _chat_is_gone(agent, chat_id, exc):
            raise
    return None


def _chat_is_gone(agent: UponAIClient, chat_id: str, exc: UponAIPermanentError) -> bool:
    """Whether a refused completion means the chat is over (UponAI answers 400 or 422 for it)."""
    if exc.status not in (400, 422):
        return False
    try:
        return agent.get_chat(chat_id).is_ended
    except ChatNotFoundError:
        return True


def turn_in_chat(chat: Chat, text: str) -> list[ChatMessage] | None:
    """The agent messages answering ``text`` if it is the chat's last user message, else None.

    When the chat's items carry no roles (the reference style may list the person's message without
    one, and its transcript has no ``User:`` lines), the person's turn is found by its text instead.
    """
    messages = list(chat.messages)
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if users:
        last = users[-1]
        if messages[last].content.strip() != text:
            return None
    else:
        last = max((i for i, m in enumerate(messages) if m.role == UNKNOWN_ROLE and m.content.strip() == text),
                   default=None)
        if last is None:
            return None
    return [ChatMessage(role="agent", content=m.content) for m in messages[last + 1:]
            if m.role in ("agent", UNKNOWN_ROLE)]


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
        return IDLE_CHECK_BUSY_RETRY_SECONDS
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
