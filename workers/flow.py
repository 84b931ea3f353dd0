"""The business flow of the worker, free of RQ and Flask.

``drain_conversation`` is run by one job at a time per conversation (a Redis lock) and handles the
conversation's inbox head first, so the agent sees messages in arrival order. For each message it
ensures an UponAI chat, runs one agent turn, and sends the reply parts, recording progress in Redis
so that a job that runs again resumes instead of repeating: a turn whose completion may have been
applied is read back from the chat instead of being posted twice, and each SMS part is claimed
before it is sent, so it goes out at most once.

Transient failures release the lock and raise ``RetryLater``; a message that keeps failing past
its attempts, or fails permanently, is given up (the person gets a short apology), the rest of the
inbox is still answered, and ``MessagesFailed`` is raised at the end so the job lands in the
failed-job registry with the reason.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from workers.errors import (
    ChatNotFoundError,
    PermanentError,
    TransientError,
    TwilioPermanentError,
    UponAIPermanentError,
)
from workers.redaction import mask_number
from workers.sms_text import replies_to_parts
from workers.store import ConversationStore, InboundMessage
from workers.uponai import Chat, ChatMessage, UponAIClient

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 30.0


class RetryLater(Exception):
    """The conversation should be drained again after ``delay_seconds``."""

    def __init__(self, delay_seconds: float, cause: TransientError):
        super().__init__(f"retry in {delay_seconds:.1f}s: {cause}")
        self.delay_seconds = delay_seconds
        self.cause = cause


class MessagesFailed(Exception):
    """Some messages of the conversation were given up; the job should be recorded as failed."""


@dataclass
class Services:
    """The collaborators the flow needs; tests pass real clients pointed at local fakes."""

    store: ConversationStore
    agent: UponAIClient
    sender: object  # TwilioSender or anything with the same send()
    settings: object  # config.Settings

    def agent_for(self, gateway_number: str) -> str:
        return self.settings.uponai_agent_id


def backoff_seconds(attempt: int, intervals: tuple[float, ...], retry_after: float | None = None) -> float:
    """Delay before attempt ``attempt + 1``: the configured interval with +-20% jitter, or Retry-After."""
    base = intervals[min(attempt - 1, len(intervals) - 1)] if intervals else 1.0
    delay = base * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def drain_conversation(services: Services, cid: str, token: str, *, budget_seconds: float | None = None) -> int:
    """Handle the conversation's inbox in order until it is empty; return how many were handled.

    Returns 0 at once when another job holds the conversation (it will handle our message too).
    Raises RetryLater on a transient failure and MessagesFailed when a message had to be given up.
    """
    store = services.store
    if not store.acquire_lock(cid, token, LOCK_TTL_SECONDS):
        return 0
    failures: list[str] = []
    handled = 0
    started = time.monotonic()
    keeper = _LockKeeper(store, cid, token)
    keeper.start()
    try:
        while True:
            head = store.peek(cid)
            if head is None:
                if store.release_if_idle(cid, token):
                    break
                continue
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                raise RetryLater(0.0, TransientError("drain budget used up; continuing in a new job"))
            raw, message = head
            try:
                handle_message(services, message)
            except TransientError as exc:
                attempts = store.count_attempt(message.sid)
                if attempts < services.settings.max_attempts:
                    log.warning("message=%s conversation=%s attempt=%d transient failure: %s",
                                message.sid, cid, attempts, exc)
                    delay = backoff_seconds(attempts, services.settings.retry_intervals_seconds,
                                            exc.retry_after_seconds)
                    raise RetryLater(delay, exc) from exc
                failures.append(f"{message.sid}: gave up after {attempts} attempts: {exc}")
                give_up(services, message, exc)
            except PermanentError as exc:
                failures.append(f"{message.sid}: {exc}")
                give_up(services, message, exc)
            store.pop(cid, raw)
            handled += 1
    finally:
        keeper.stop()
        store.release_lock(cid, token)
    if failures:
        raise MessagesFailed("; ".join(failures))
    return handled


def handle_message(services: Services, message: InboundMessage) -> None:
    """Answer one inbound message, resuming whatever an earlier attempt already did."""
    store = services.store
    cid = message.conversation_id
    progress = store.progress(message.sid)
    if message.num_media > 0:
        send_part(services, message, "notice", services.settings.mms_notice_text)
    text = message.body.strip()
    if text:
        parts = progress.reply_parts
        if parts is None:
            agent_messages = run_turn(services, message, progress.turn_chat_id)
            parts = replies_to_parts([m.content for m in agent_messages])
            store.record_reply(message.sid, parts)
        for index, part in enumerate(parts):
            send_part(services, message, f"reply:{index}", part)
        log.info("message=%s conversation=%s answered parts=%d", message.sid, cid, len(parts))
    store.touch(cid, last_activity_at=f"{time.time():.3f}")


def ensure_chat(services: Services, message: InboundMessage) -> str:
    """The conversation's chat id, creating the chat when there is none."""
    store = services.store
    cid = message.conversation_id
    chat_id = store.conversation(cid).get("chat_id")
    if chat_id:
        return chat_id
    agent_id = services.agent_for(message.to)
    chat = services.agent.create_chat(agent_id=agent_id, metadata={"channel": "sms", "conversation_id": cid})
    store.set_chat(cid, chat.chat_id, agent_id)
    log.info("conversation=%s chat=%s created", cid, chat.chat_id)
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


def send_part(services: Services, message: InboundMessage, part: str, body: str) -> None:
    """Send one SMS of the answer to ``message`` unless it was sent (or attempted) before."""
    store = services.store
    if not store.claim_part(message.sid, part):
        return
    settings = services.settings
    callback = f"{settings.public_base_url}/twilio/status" if settings.public_base_url else None
    try:
        sent = services.sender.send(
            to=message.from_, body=body, from_=message.to,
            messaging_service_sid=message.messaging_service_sid or None, status_callback=callback)
    except TransientError as exc:
        if exc.maybe_applied:
            # It may have gone out: sending it again could double it, so it stays claimed.
            store.settle_part(message.sid, part, "uncertain")
        else:
            store.release_part(message.sid, part)
        raise
    except TwilioPermanentError as exc:
        store.settle_part(message.sid, part, f"failed:{exc.code}")
        log.warning("message=%s part=%s to=%s refused by Twilio: code=%s", message.sid, part,
                    mask_number(message.from_), exc.code)
        return
    store.settle_part(message.sid, part, sent.sid)
    store.record_sent(message.conversation_id, sent.sid, status=sent.status, segments=sent.num_segments,
                      inbound_sid=message.sid, part=part)


def give_up(services: Services, message: InboundMessage, exc: Exception) -> None:
    """Tell the person their message could not be answered (once) and log why."""
    log.error("message=%s conversation=%s given up: %s", message.sid, message.conversation_id, exc)
    try:
        send_part(services, message, "apology", services.settings.failure_notice_text)
    except TransientError as send_exc:
        log.error("message=%s apology not sent: %s", message.sid, send_exc)


class _LockKeeper:
    """Keeps the conversation lock alive while a long agent turn runs."""

    def __init__(self, store: ConversationStore, cid: str, token: str):
        self.store, self.cid, self.token = store, cid, token
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-{cid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(LOCK_TTL_SECONDS / 3):
            try:
                if not self.store.refresh_lock(self.cid, self.token, LOCK_TTL_SECONDS):
                    log.warning("conversation=%s lock lost", self.cid)
                    return
            except Exception as exc:  # Redis blip: the next beat tries again
                log.warning("conversation=%s lock refresh failed: %s", self.cid, type(exc).__name__)
