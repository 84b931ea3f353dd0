"""The business flow of the worker, free of RQ and Flask.

``drain_conversation`` is run by one job at a time per conversation (a Redis lock) and handles the
conversation's inbox head first, so the agent sees messages in arrival order. For each message it
applies keywords (STOP/START/HELP families, the reset word), ensures an UponAI chat, runs one agent
turn, and sends the reply parts, recording progress in Redis so that a job that runs again resumes
instead of repeating:

- a turn whose completion may have been applied is read back from the chat, not posted twice;
- each SMS part is claimed before it is sent; a part whose send may or may not have gone out (a
  crash, a read timeout) is looked up at Twilio before it is sent again, so it goes out once.

Transient failures release the lock and raise ``RetryLater``; a message that keeps failing past its
attempts, or fails permanently, is given up (the person gets a short apology, the message is kept
for a replay), the rest of the inbox is still answered, and ``MessagesFailed`` is raised at the end
so the job lands in the failed-job registry with the reason.

``close_if_idle`` ends the UponAI chat of a conversation idle for ``CHAT_IDLE_TIMEOUT_SECONDS``; it
holds the same lock, so it never interleaves with a turn.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from workers import sms_text
from workers.errors import (
    ChatNotFoundError,
    PermanentError,
    TransientError,
    TwilioPermanentError,
    UponAIPermanentError,
)
from workers.redaction import mask_number
from workers.store import ConversationStore, InboundMessage
from workers.uponai import Chat, ChatMessage, UponAIClient

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 20.0
DRAIN_TOKEN_PREFIX = "drain:"
BUSY_RETRY_SECONDS = 1.0
MAX_RETRY_AFTER_SECONDS = 600.0  # a server asking for a day's pause must not hold a conversation that long
OPTED_OUT_CODE = 21610

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


class RetryLater(Exception):
    """The job should run again after ``delay_seconds``."""

    def __init__(self, delay_seconds: float, cause: Exception):
        super().__init__(f"retry in {delay_seconds:.1f}s: {cause}")
        self.delay_seconds = delay_seconds
        self.cause = cause


class MessagesFailed(Exception):
    """Some messages were given up; the job should be recorded as failed (``sids`` can be replayed)."""

    def __init__(self, sids: list[str], reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.sids = sids


class JobPort(Protocol):
    """What the flow asks of the job queue."""

    def enqueue_drain(self, cid: str) -> None: ...

    def schedule_idle_check(self, cid: str, delay_seconds: float) -> None: ...


@dataclass
class Services:
    """The collaborators the flow needs; tests pass real clients pointed at local fakes."""

    store: ConversationStore
    agent: UponAIClient
    sender: object  # TwilioSender
    settings: object  # config.Settings
    jobs: JobPort | None = None


def backoff_seconds(attempt: int, intervals: tuple[float, ...], retry_after: float | None = None) -> float:
    """Delay before attempt ``attempt + 1``: the configured interval with +-20% jitter, or Retry-After."""
    base = intervals[min(attempt - 1, len(intervals) - 1)] if intervals else 1.0
    delay = base * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def keyword_of(message: InboundMessage, reset_word: str) -> str | None:
    """``STOP``, ``START``, ``HELP`` or ``RESET`` when the message is that keyword, else None."""
    if message.opt_out_type in ("STOP", "START", "HELP"):
        return message.opt_out_type
    word = message.body.strip().upper()
    if word in STOP_WORDS:
        return "STOP"
    if word in START_WORDS:
        return "START"
    if word in HELP_WORDS:
        return "HELP"
    if word == reset_word:
        return "RESET"
    return None


# -- draining a conversation ----------------------------------------------------------------------


def drain_conversation(services: Services, cid: str, token: str, *, budget_seconds: float | None = None) -> int:
    """Handle the conversation's inbox in order until it is empty; return how many were handled.

    Returns 0 at once when another drain job holds the conversation (it will handle our message too).
    Raises RetryLater on a transient failure (or while a non-drain operation holds the conversation)
    and MessagesFailed when a message had to be given up.
    """
    store = services.store
    token = token if token.startswith(DRAIN_TOKEN_PREFIX) else DRAIN_TOKEN_PREFIX + token
    if not store.acquire_lock(cid, token, LOCK_TTL_SECONDS):
        holder = store.lock_holder(cid)
        if holder and not holder.startswith(DRAIN_TOKEN_PREFIX):
            raise RetryLater(BUSY_RETRY_SECONDS, TransientError("conversation busy with another operation"))
        return 0
    failed_sids: list[str] = []
    reasons: list[str] = []
    handled = 0
    started = time.monotonic()
    with _LockKeeper(store, cid, token):
        while True:
            head = store.peek(cid)
            if head is None:
                if store.release_if_idle(cid, token):
                    break
                continue
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                store.release_lock(cid, token)
                raise RetryLater(0.0, TransientError("drain budget used up; continuing in a new job"))
            raw, message = head
            try:
                handle_message(services, message)
            except TransientError as exc:
                attempts = store.count_attempt(message.sid)
                if attempts < services.settings.max_attempts:
                    log.warning("message=%s conversation=%s attempt=%d transient failure: %s",
                                message.sid, cid, attempts, exc)
                    store.release_lock(cid, token)
                    delay = backoff_seconds(attempts, services.settings.retry_intervals_seconds,
                                            exc.retry_after_seconds)
                    if exc.maybe_applied:
                        # The request may still be running at UponAI or Twilio: read it back only once it
                        # has had time to land, or we would miss it and do it twice.
                        delay = max(delay, services.settings.ambiguous_retry_delay_seconds)
                    raise RetryLater(delay, exc) from exc
                reasons.append(f"{message.sid}: gave up after {attempts} attempts: {exc}")
                give_up(services, message, exc)
                failed_sids.append(message.sid)
            except PermanentError as exc:
                reasons.append(f"{message.sid}: {exc}")
                give_up(services, message, exc)
                failed_sids.append(message.sid)
            store.pop(cid, raw)
            handled += 1
    if failed_sids:
        raise MessagesFailed(failed_sids, reasons)
    return handled


def handle_message(services: Services, message: InboundMessage) -> None:
    """Answer one inbound message, resuming whatever an earlier attempt already did."""
    store, settings = services.store, services.settings
    cid = message.conversation_id
    conversation = store.conversation(cid)
    keyword = keyword_of(message, settings.reset_keyword)
    if keyword == "STOP":
        # Twilio itself answers and blocks further sends; we stop talking and close the chat.
        store.set_opted_out(cid, True)
        end_chat(services, cid, conversation.get("chat_id"))
        log.info("message=%s conversation=%s opted out", message.sid, cid)
        return
    if keyword == "START":
        store.set_opted_out(cid, False)
        log.info("message=%s conversation=%s opted in", message.sid, cid)
        return
    if keyword == "HELP":
        return  # Twilio answers HELP on long codes and toll-free numbers
    if conversation.get("opted_out") == "1":
        log.info("message=%s conversation=%s ignored: opted out", message.sid, cid)
        return
    if keyword == "RESET":
        end_chat(services, cid, conversation.get("chat_id"))
        send_part(services, message, "reset", settings.reset_confirmation_text)
        return
    progress = store.progress(message.sid)
    if message.num_media > 0 and _decide(store, message.sid, "mms_notice", lambda: store.claim_notice(
            "mms", cid, settings.mms_notice_interval_seconds)):
        send_part(services, message, "notice", settings.mms_notice_text)
    text = message.body.strip()
    if text:
        if progress.reply_parts is None and not _decide(store, message.sid, "within_rate", lambda: _within_rate(
                services, cid)):
            if _decide(store, message.sid, "rate_notice", lambda: store.claim_notice(
                    "rate", cid, settings.rate_limit_window_seconds)):
                send_part(services, message, "rate", settings.rate_limit_notice_text)
            log.warning("message=%s conversation=%s not forwarded: rate limit", message.sid, cid)
            return
        parts = progress.reply_parts
        if parts is None:
            agent_messages = run_turn(services, message, progress.turn_chat_id)
            parts = sms_text.shape_reply([m.content for m in agent_messages], max_segments=settings.sms_max_segments,
                                         transliterate=settings.sms_transliterate)
            store.record_reply(message.sid, parts)
        for index, part in enumerate(parts):
            send_part(services, message, f"reply:{index}", part)
        log.info("message=%s conversation=%s answered parts=%d", message.sid, cid, len(parts))
    now = time.time()
    store.touch(cid, last_activity_at=f"{now:.3f}")
    timeout = settings.chat_idle_timeout_seconds
    if services.jobs is not None and store.claim_idle_check(cid, now + timeout):
        services.jobs.schedule_idle_check(cid, timeout)


def _decide(store: ConversationStore, sid: str, name: str, decide) -> bool:
    """A yes/no taken once per message and remembered, so a retried job decides the same way."""
    earlier = store.decision(sid, name)
    if earlier is not None:
        return earlier
    return store.record_decision(sid, name, bool(decide()))


def _within_rate(services: Services, cid: str) -> bool:
    limit = services.settings.rate_limit_messages
    if limit <= 0:
        return True
    return services.store.count_forwarded(cid, services.settings.rate_limit_window_seconds) <= limit


# -- the agent ------------------------------------------------------------------------------------


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
        return BUSY_RETRY_SECONDS * 5
    try:
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
    finally:
        store.release_lock(cid, token)
        # A message that arrived while we held the lock had its drain job retry; make sure of it.
        if services.jobs is not None and store.inbox_length(cid):
            services.jobs.enqueue_drain(cid)


# -- sending --------------------------------------------------------------------------------------


def send_part(services: Services, message: InboundMessage, part: str, body: str) -> None:
    """Send one SMS of the answer to ``message`` exactly once, whatever happened to earlier attempts."""
    store = services.store
    sender = services.sender
    if not store.claim_part(message.sid, part):
        state = store.progress(message.sid).parts.get(part, "")
        if not state.startswith(("sending", "uncertain")):
            return  # sent (a Twilio sid) or refused for good
        # An earlier attempt may have sent it (a crash or timeout mid-send): ask Twilio before sending again.
        since = float(state.partition(":")[2] or 0) - 60
        found = sender.find_sent(to=message.from_, body=body, from_=message.to, since=since)
        if found:
            store.settle_part(message.sid, part, found)
            log.info("message=%s part=%s found at Twilio, not sent again", message.sid, part)
            return
        store.settle_part(message.sid, part, f"sending:{time.time():.3f}")
    settings = services.settings
    callback = f"{settings.public_base_url}/twilio/status" if settings.public_base_url else None
    try:
        sent = sender.send(to=message.from_, body=body, from_=message.to,
                           messaging_service_sid=message.messaging_service_sid or None, status_callback=callback)
    except TransientError as exc:
        if exc.maybe_applied:
            store.settle_part(message.sid, part, f"uncertain:{time.time():.3f}")
        else:
            store.release_part(message.sid, part)
        raise
    except TwilioPermanentError as exc:
        store.settle_part(message.sid, part, f"failed:{exc.code}")
        log.warning("message=%s part=%s to=%s refused by Twilio: code=%s", message.sid, part,
                    mask_number(message.from_), exc.code)
        if exc.code == OPTED_OUT_CODE:
            store.set_opted_out(message.conversation_id, True)
        return
    store.settle_part(message.sid, part, sent.sid)
    shape = sms_text.segment_info(body)
    store.record_sent(message.conversation_id, sent.sid, status=sent.status, segments=shape.segments,
                      encoding=shape.encoding, inbound_sid=message.sid, part=part)


def give_up(services: Services, message: InboundMessage, exc: Exception) -> None:
    """Keep the message for a replay, tell the person it could not be answered (once), and log why."""
    log.error("message=%s conversation=%s given up: %s", message.sid, message.conversation_id, exc)
    services.store.keep_dead_letter(message)
    try:
        send_part(services, message, "apology", services.settings.failure_notice_text)
    except TransientError as send_exc:
        log.error("message=%s apology not sent: %s", message.sid, send_exc)


class _LockKeeper:
    """Keeps the conversation lock alive while a long agent turn runs; releases it on the way out."""

    def __init__(self, store: ConversationStore, cid: str, token: str):
        self.store, self.cid, self.token = store, cid, token
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-{cid}", daemon=True)

    def __enter__(self) -> _LockKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self.store.release_lock(self.cid, self.token)

    def _run(self) -> None:
        while not self._stopped.wait(LOCK_TTL_SECONDS / 3):
            try:
                if not self.store.refresh_lock(self.cid, self.token, LOCK_TTL_SECONDS):
                    return  # released, or lost after a stall: nothing to keep
            except Exception as exc:  # a Redis blip: the next beat tries again
                log.warning("conversation=%s lock refresh failed: %s", self.cid, type(exc).__name__)
