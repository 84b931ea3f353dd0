"""The business flow of the worker, free of RQ and Flask.

``drain_conversation`` is run by one job at a time per conversation (a Redis lock) and handles the
conversation's inbox head first, so the agent sees messages in arrival order. The texts waiting together
(a burst, see ``workers.bursts``) make one agent turn, once the person has stopped typing; keywords
(STOP/START/HELP families, the reset word), texts held by the loop breaker or over the rate limit are
handled alone, at their place in order. A STOP means nothing after it is forwarded or sent: the texts
waiting in front of it are not forwarded either, and a reply the agent was writing when it came is withheld.
For a turn it ensures an UponAI chat, fixes and posts the turn, and sends the reply parts, recording
progress in Redis so that a job that runs again resumes instead of repeating:

- a turn whose completion may have been applied is read back from the chat, not posted twice;
- each SMS part is claimed before it is sent; a part whose send may or may not have gone out (a
  crash, a read timeout) is looked up at Twilio before it is sent again, so it goes out once.

Transient failures release the lock and raise ``RetryLater``; a message that keeps failing past its
attempts, or fails permanently, is given up (the person gets a short apology, the message is kept
for a replay), the rest of the inbox is still answered, and ``MessagesFailed`` is raised at the end
so the job lands in the failed-job registry with the reason.

The pieces live beside it: ``workers.chats`` (the UponAI chat, turns, idle close), ``workers.delivery``
(sending parts), ``core.keywords``, ``workers.locking`` (the conversation lock).
"""

from __future__ import annotations

import logging
import random
import time
import uuid

from core.events import emit_event
from core.keywords import keyword_of
from core.metrics import metrics
from core.model import InboundMessage
from core.state import ConversationStore, Progress
from core.state.campaigns import REPLY_DUE, CampaignStore
from core.state.deliveries import WITHHELD_HANDOFF
from workers import bursts, sms_text
from workers.chats import end_chat, run_turn
from workers.delivery import give_up, send_part
from workers.errors import PermanentError, TransientError
from workers.locking import DRAIN_TOKEN_PREFIX, LOCK_TTL_SECONDS, LockKeeper
from workers.services import Services

log = logging.getLogger(__name__)

# A drain that finds an admin operation or an idle close holding the conversation tries again this soon:
# they are short, and the person is waiting for an answer.
DRAIN_BUSY_RETRY_SECONDS = 1.0
EARLY_RETRY_GRACE_SECONDS = 2.0  # how early RQ's scheduler (whole seconds) may start a scheduled retry


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


def backoff_seconds(attempt: int, intervals: tuple[float, ...], retry_after: float | None,
                    retry_after_max: float) -> float:
    """Delay before attempt ``attempt + 1``: the configured interval with +-20% jitter, or the server's Retry-After
    when longer (at most ``retry_after_max``, RETRY_AFTER_MAX_SECONDS: a server asking for a day's pause must not
    hold a conversation that long). The jitter never shortens a Retry-After."""
    base = intervals[min(attempt - 1, len(intervals) - 1)] if intervals else 1.0
    delay = base * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_max))
    return delay


# -- draining a conversation ----------------------------------------------------------------------


def drain_conversation(services: Services, cid: str, token: str, *, budget_seconds: float | None = None) -> int:
    """Answer the conversation's waiting texts in order until none is left; return how many were handled.

    ``token`` names the drain job (its RQ job id): each run of the job holds the lock under a token of its
    own (``drain:{job}:{run}``), so that two runs of one job (a job id pushed twice on the queue, or a run
    taken for abandoned while it still runs) never both hold the conversation; the job's scheduled retry is
    recognised by the job's token (``retry_token``).

    Returns 0 at once when another drain job holds the conversation (it will handle our message too).
    Raises RetryLater on a transient failure (or while a non-drain operation or another run of this job holds
    the conversation, or to start the next turn when the person has stopped typing) and MessagesFailed when
    a message had to be given up.
    """
    store = services.store
    job_token = token if token.startswith(DRAIN_TOKEN_PREFIX) else DRAIN_TOKEN_PREFIX + token
    token = f"{job_token}:{uuid.uuid4().hex[:12]}"
    # One round trip: the lock, the conversation, the waiting texts.
    start = store.start_drain(cid, token, LOCK_TTL_SECONDS)
    if not start.acquired:
        if start.holder and not start.holder.startswith(DRAIN_TOKEN_PREFIX):
            raise RetryLater(DRAIN_BUSY_RETRY_SECONDS, TransientError("conversation busy with another operation"))
        if start.holder and start.holder.startswith(job_token + ":"):
            # Another run of this very job holds it (alive, or dead with its lock about to expire): this run
            # may be the one that answers, so it comes back rather than leaving.
            raise RetryLater(DRAIN_BUSY_RETRY_SECONDS, TransientError("another run of this drain job holds it"))
        return 0
    pause = start.conversation
    if pause.get(REPLY_DUE) and start.waiting:  # a campaign started the conversation: the person answered it
        CampaignStore.from_settings(store.redis, services.settings).note_reply_in(cid)
    retry_at = float(pause.get("retry_at") or 0)
    if pause.get("retry_token") == job_token:
        # The scheduled retry itself (after a failure, or at the end of a quiet window). RQ's scheduler
        # counts whole seconds, so it can start up to a second early: wait out the rest (the pause before
        # reading back an uncertain call must hold), then end the backoff, or drain jobs of texts arriving
        # before ``retry_at`` would be turned away with no one left to answer them.
        early = retry_at - time.time()
        if 0 < early <= EARLY_RETRY_GRACE_SECONDS:
            time.sleep(early)
        store.clear_retry(cid)
    elif time.time() < retry_at:
        # The conversation is backing off after a failure, or waiting for the person to finish typing: only
        # the job scheduled for then goes on (it answers this job's text too), or the backoff (and the wait
        # before reading back an uncertain call) would be skipped.
        store.release_lock(cid, token)
        return 0
    failed_sids: list[str] = []
    reasons: list[str] = []
    handled = 0
    started = time.monotonic()
    conversation: dict[str, str] | None = pause  # read under the lock: good for the first step
    with LockKeeper(store, cid, token) as keeper:
        waiting = start.waiting
        while True:
            if not waiting:
                if store.release_if_idle(cid, token):
                    keeper.released = True
                    break
                waiting = store.waiting(cid)
                continue
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                keeper.release()
                raise RetryLater(0.0, TransientError("drain budget used up; continuing in a new job"))
            if conversation is None:
                conversation = store.conversation(cid)
            head = waiting[0][1]
            try:
                taken = _next_step(services, waiting, conversation)
            except _NotYet as wait:
                if wait.seconds <= bursts.SHORT_WAIT_SECONDS:
                    time.sleep(wait.seconds)  # shorter than the scheduler could wait: look again after it
                    # (an operator may have taken over; an erase may be waiting: the lock then goes)
                    (keeper.released, waiting), conversation = store.finish_texts(cid, [], token), None
                    if keeper.released:
                        break
                    continue
                # The person may still be typing: a drain job scheduled for the end of the window takes over
                # (noted before the lock is let go, so another job's drain leaves the texts to it).
                store.touch(cid, retry_at=f"{wait.due_at:.3f}", retry_token=job_token)
                keeper.release()
                raise RetryLater(wait.seconds, TransientError("waiting for the person to finish typing")) from None
            except TransientError as exc:
                attempts = store.count_attempt(head.sid)
                if attempts < services.settings.max_attempts:
                    delay = backoff_seconds(attempts, services.settings.retry_intervals_seconds,
                                            exc.retry_after_seconds, services.settings.retry_after_max_seconds)
                    if exc.maybe_applied:
                        # The request may still be running at UponAI or Twilio: read it back only once it
                        # has had time to land, or we would miss it and do it twice.
                        delay = max(delay, services.settings.ambiguous_retry_delay_seconds)
                    # The true count: attempts are counted per message (RQ's own retry line counts job runs).
                    log.warning("message=%s conversation=%s attempt=%d of %d transient failure: %s; next attempt "
                                "in %.1f s", head.sid, cid, attempts, services.settings.max_attempts, exc, delay)
                    # Noted before the lock is let go, so no other drain job slips in ahead of the retry.
                    store.touch(cid, retry_at=f"{time.time() + delay:.3f}", retry_token=job_token)
                    keeper.release()
                    raise RetryLater(delay, exc) from exc
                taken = _taken_by(store, waiting)
                reasons.append(f"{head.sid}: gave up after {attempts} attempts: {exc}")
                failed_sids.extend(_give_up(services, taken, exc))
            except PermanentError as exc:
                taken = _taken_by(store, waiting)
                reasons.append(f"{head.sid}: {exc}")
                failed_sids.extend(_give_up(services, taken, exc))
            # The texts go in one step (the lock with the last of them).
            keeper.released, waiting = store.finish_texts(cid, [raw for raw, _ in taken], token)
            conversation = None  # this step changed it (chat, last reply): the next one reads it again
            handled += len(taken)
            if keeper.released:
                break
    if failed_sids:
        raise MessagesFailed(failed_sids, reasons)
    return handled


class _NotYet(Exception):
    """The next turn should wait: the person may still be typing."""

    def __init__(self, due_at: float):
        super().__init__(f"turn due at {due_at:.3f}")
        self.due_at = due_at
        self.seconds = max(0.0, due_at - time.time())


def _next_step(services: Services, waiting: list[tuple[str, InboundMessage]], conversation: dict[str, str]
               ) -> list[tuple[str, InboundMessage]]:
    """Handle the next step of the waiting texts: one agent turn, or one text handled alone; return its texts.

    Raises _NotYet when a new turn would start before the quiet window is over.
    """
    store, settings = services.store, services.settings
    raw, head = waiting[0]
    progress = store.progress(head.sid)  # also holds the decisions an earlier attempt took, and its turn
    if progress.turn_sids is not None:
        # An earlier attempt fixed this turn (and may have posted it): resume exactly that one, unless the
        # person opted out behind it meanwhile (then nothing more is sent for it).
        taken = bursts.fixed_messages(waiting, progress.turn_sids) or [(raw, head)]
        turn = bursts.Turn(tuple(m for _, m in taken), progress)
        if _opt_out_among(settings, waiting[len(taken):]):
            _withhold_for_opt_out(turn)
            return taken
        answer_turn(services, turn, conversation)
        return taken
    stop = _opt_out_ahead(settings, waiting, conversation)
    if stop:
        # A STOP waits behind: what comes before it is neither forwarded nor answered (no need to wait for
        # the person to finish typing either); the STOP is the next step.
        _not_forwarded_for_opt_out([m for _, m in waiting[:stop]])
        return waiting[:stop]
    if not _may_join_turn(settings, head, conversation):
        handle_message(services, head, conversation, progress)
        return [(raw, head)]
    due_at = bursts.turn_due_at(settings, [m for _, m in waiting])
    if due_at > time.time():
        raise _NotYet(due_at)
    run = _gather_turn(services, waiting, conversation, progress)
    if not run:
        handle_message(services, head, conversation, progress)  # held, or over the rate limit: alone
        return [(raw, head)]
    answer_turn(services, bursts.Turn(tuple(m for _, m in run), progress), conversation)
    return run


def _taken_by(store: ConversationStore, waiting: list[tuple[str, InboundMessage]]) -> list[tuple[str, InboundMessage]]:
    """The texts the failed step was working on: the fixed turn at the head, else the head alone."""
    raw, head = waiting[0]
    sids = store.progress(head.sid).turn_sids
    return (bursts.fixed_messages(waiting, sids) if sids else None) or [(raw, head)]


def _give_up(services: Services, taken: list[tuple[str, InboundMessage]], exc: Exception) -> list[str]:
    """Give the step's texts up: all kept for a replay, one apology (for the first); returns their sids."""
    first = taken[0][1]
    for _, message in taken[1:]:
        services.store.keep_dead_letter(message)
    give_up(services, first, exc)
    return [message.sid for _, message in taken]


def _keyword(settings, message: InboundMessage, conversation: dict[str, str] | None = None) -> str | None:
    """The text's keyword. An opt-in word (START, YES, UNSTOP) is one only from a person who was opted out when
    the webhook accepted it (``InboundMessage.opt``; for a text stored before the webhook said so, ``conversation``
    now): Twilio re-subscribes an opted-out number with it, and from anyone else "Yes" is an answer, for the agent
    like any text."""
    keyword = keyword_of(message, settings.reset_keyword, settings.handoff_keyword)
    if keyword == "START" and message.opt != "in" and (
            message.opt or (conversation is not None and conversation.get("opted_out") != "1")):
        return None
    return keyword


def _from_opted_out(message: InboundMessage, conversation: dict[str, str]) -> bool:
    """Whether the text is not to be forwarded for an opt-out: it came while the person was opted out (as the
    webhook found when it accepted it), or the person is opted out now (a STOP behind it, or Twilio's 21610)."""
    return message.opt == "while_out" or conversation.get("opted_out") == "1"


def _is_opt_out(settings, message: InboundMessage) -> bool:
    return _keyword(settings, message) == "STOP"


def _opt_out_among(settings, waiting: list[tuple[str, InboundMessage]]) -> bool:
    """Whether one of the ``waiting`` texts opts the person out (STOP and its family)."""
    return any(_is_opt_out(settings, message) for _, message in waiting)


def _opt_out_ahead(settings, waiting: list[tuple[str, InboundMessage]], conversation: dict[str, str]) -> int:
    """Where the first waiting opt-out is when the head would be forwarded or answered, else 0.

    A STOP inside a burst means nothing after it is forwarded or sent, and a reply to the texts before it
    would reach the person after their STOP: so the texts before it go unanswered. Only texts that would be
    forwarded or answered are concerned: while opted out nothing is anyway (a START goes first, at its
    place); during a handoff texts are kept for the operator, unanswered; START and HELP only change state
    (or nothing), and the STOP follows.
    """
    if waiting[0][1].opt == "while_out":
        return 0
    keyword = _keyword(settings, waiting[0][1], conversation)
    if keyword in ("STOP", "START", "HELP"):
        return 0
    if keyword != "RESET" and conversation.get("handoff") == "1":
        return 0  # kept for the operator, nothing sent (the handoff word again too)
    return next((index for index, (_, message) in enumerate(waiting) if _is_opt_out(settings, message)), 0)


def _not_forwarded_for_opt_out(messages: list[InboundMessage]) -> None:
    """The texts before a waiting STOP: consumed in order, neither forwarded nor answered, counted and logged."""
    for message in messages:
        metrics().count_not_forwarded("opted_out")
        log.info("message=%s conversation=%s not forwarded: the person opted out right after it", message.sid,
                 message.conversation_id)


def _withhold_for_opt_out(turn: bursts.Turn) -> None:
    """A fixed turn whose person opted out before its reply went out: what is not sent yet is not sent.

    (A retry that finds the whole reply sent already, by an attempt that ended before its texts were
    removed, has nothing to withhold.)
    """
    progress = turn.progress
    parts = progress.reply_parts
    if parts is not None and all(progress.parts.get(f"reply:{index}", "").startswith(("SM", "MM"))
                                 for index in range(len(parts))):
        return
    metrics().replies_withheld.inc()
    log.info("message=%s conversation=%s reply not sent: the person opted out while the agent answered",
             turn.first.sid, turn.first.conversation_id)


def _may_join_turn(settings, message: InboundMessage, conversation: dict[str, str]) -> bool:
    """Whether the text may start or join an agent turn: no keyword, and the agent answers the conversation."""
    if _keyword(settings, message, conversation) is not None:
        return False
    return not _from_opted_out(message, conversation) and conversation.get("handoff") != "1"


def _gather_turn(services: Services, waiting: list[tuple[str, InboundMessage]], conversation: dict[str, str],
                 head_progress: Progress) -> list[tuple[str, InboundMessage]]:
    """The texts of the next turn: the longest run from the head that may go to the agent.

    Each text is judged on its own, in order, and the verdicts are remembered per text (a retry judges the
    same): the rate limit counts every text forwarded; the loop breaker judges a burst by its first text (a
    bot answers each of our replies once; a person's burst after one reply is no loop), and holds every text
    while it is open. The first text that is held or over the limit ends the run (it is then handled alone).
    """
    settings = services.settings
    candidates = []
    for raw, message in waiting:
        if not _may_join_turn(settings, message, conversation):
            break
        candidates.append((raw, message))
    progresses = [head_progress, *services.store.progresses([m.sid for _, m in candidates[1:]])]
    run = []
    for index, ((raw, message), progress) in enumerate(zip(candidates, progresses, strict=True)):
        if index and progress.turn_sids is not None:
            break  # the first text of another fixed turn (a replayed one): it goes alone, later
        if index == 0:
            held = _is_held(services, message, conversation, progress)
        else:
            held = time.time() < float(conversation.get("loop_breaker_until") or 0)
        if held:
            break
        if message.body.strip() and not _within_rate(services, message, progress):
            break
        run.append((raw, message))
    return run


def _is_held(services: Services, message: InboundMessage, conversation: dict[str, str], progress: Progress) -> bool:
    """The loop breaker's verdict on the text (taken once, remembered)."""
    settings = services.settings
    held = progress.decisions.get("loop_held")
    if held is None and settings.loop_breaker_replies > 0 and not _plainly_not_held(settings, message, conversation):
        held = _loop_held(services, message, conversation)
    return bool(held)


def answer_turn(services: Services, turn: bursts.Turn, conversation: dict[str, str]) -> None:
    """Answer one agent turn (its texts already judged), resuming whatever an earlier attempt already did."""
    store, settings = services.store, services.settings
    first = turn.first
    cid = first.conversation_id
    if conversation.get("opted_out") == "1":
        # Only a fixed turn gets here after an opt-out (a 21610 status callback): nothing more is sent.
        log.info("message=%s conversation=%s turn not answered: opted out", first.sid, cid)
        return
    if conversation.get("handoff") == "1" and turn.progress.reply_parts is None:
        # Only a fixed turn gets here during a handoff (an operator took over while it waited for a retry): the
        # operator has its texts now, and the agent is not asked. (A reply already written is withheld below.)
        for message in turn.messages:
            _keep_for_operator(services, message)
        log.info("message=%s conversation=%s turn not answered: handed off before its retry", first.sid, cid)
        return
    for message in turn.messages:
        # Media is never read; a message with neither text nor media (a WhatsApp sticker, a reaction) gets the
        # same notice rather than silence.
        if message.num_media > 0 or not message.body.strip():
            progress = turn.progress if message is first else store.progress(message.sid)
            if _decide(store, progress, message.sid, "mms_notice", lambda: store.claim_notice(
                    "mms", cid, settings.mms_notice_interval_seconds)):
                send_part(services, message, "notice", settings.mms_notice_text)
    if turn.content:
        parts = turn.progress.reply_parts
        first_claimed_at = None
        if parts is None:
            agent_messages = run_turn(services, turn, conversation)
            parts = sms_text.shape_reply([m.content for m in agent_messages], max_segments=settings.sms_max_segments,
                                         transliterate=settings.sms_transliterate)
            first_claimed_at = None
            if parts:
                # The first part is claimed in the step that records the reply (one round trip less), which also
                # reads whether the person opted out while the agent answered (a STOP waiting behind the turn).
                recorded = store.record_turn_reply(first.sid, cid, parts, claim="reply:0", claimed_at=time.time())
                if recorded.opted_out or _opt_out_among(
                        settings, [(raw, m) for raw, m in recorded.waiting if m.sid not in set(turn.sids)]):
                    store.withhold_parts(first.sid, [f"reply:{index}" for index in range(len(parts))])
                    _withhold_for_opt_out(turn)
                    return
                if recorded.handoff:  # an operator took over while the agent wrote it
                    store.withhold_parts(first.sid, [f"reply:{index}" for index in range(len(parts))],
                                         WITHHELD_HANDOFF)
                    metrics().replies_withheld.inc()
                    log.info("message=%s conversation=%s reply not sent: handed off while the agent answered",
                             first.sid, cid)
                    return
                first_claimed_at = recorded.claimed_at
        # The activity is noted in the step that records the last part as sent (one round trip less).
        noted: list[bool] = []
        activity = _activity_note(services, noted)
        for index, part in enumerate(parts):
            if not send_part(services, first, f"reply:{index}", part,
                             claimed_at=first_claimed_at if index == 0 else None,
                             activity=activity if index == len(parts) - 1 else None):
                # Twilio refused it (21610), or the person opted out or an operator took over since: the rest
                # is not sent either.
                log.info("message=%s conversation=%s rest of the reply not sent: opted out or handed off",
                         first.sid, cid)
                break
        log.info("message=%s conversation=%s answered texts=%d parts=%d", first.sid, cid, len(turn.messages),
                 len(parts))
        if noted:
            return
    note_activity(services, cid)


def handle_message(services: Services, message: InboundMessage, conversation: dict[str, str] | None = None,
                   progress: Progress | None = None) -> None:
    """Handle one text on its own (a keyword, or one held, over the rate limit or ignored); a text that may go
    to the agent is answered as a turn of its own.

    ``conversation``, ``progress``: as the caller read them under the lock (read here otherwise).
    """
    store, settings = services.store, services.settings
    cid = message.conversation_id
    if conversation is None:
        conversation = store.conversation(cid)
    keyword = _keyword(settings, message, conversation)
    if keyword == "STOP":
        # Twilio itself answers and blocks further sends; we stop talking and close the chat. (The webhook marked
        # the person opted out when it accepted the text, unless Twilio said so first.)
        if message.opt != "out":
            store.set_opted_out(cid, True)
        end_chat(services, cid, conversation.get("chat_id"))
        emit_event(store.redis, settings, "conversation.opted_out", event_id=f"conversation.opted_out:{message.sid}",
                   conversation_id=cid, number=message.from_, message_sid=message.sid)
        log.info("message=%s conversation=%s opted out", message.sid, cid)
        return
    if keyword == "START":
        if message.opt != "in":  # (the webhook opted them back in when it accepted the text)
            store.set_opted_out(cid, False)
        log.info("message=%s conversation=%s opted in", message.sid, cid)
        return
    if keyword == "HELP":
        return  # Twilio answers HELP on long codes and toll-free numbers
    if message.opt == "while_out" or (_from_opted_out(message, conversation) and conversation.get("handoff") != "1"):
        # (During a handoff, what the person said before their STOP is still kept for the operator.)
        log.info("message=%s conversation=%s ignored: opted out", message.sid, cid)
        return
    if progress is None:
        progress = store.progress(message.sid)
    if keyword == "HANDOFF" and _decide(store, progress, message.sid, "handoff_requested",
                                        lambda: conversation.get("handoff") != "1"):
        _hand_over(services, message)
        return
    if keyword == "HANDOFF" or (conversation.get("handoff") == "1" and keyword != "RESET"):
        _keep_for_operator(services, message)  # the reset word still acts during a handoff
        return
    if _is_held(services, message, conversation, progress):
        # Kept in the conversation's count, not forwarded and not answered: nothing goes back into the loop.
        store.count_held(cid)
        metrics().loop_held.inc()
        log.info("message=%s conversation=%s not forwarded: loop breaker open", message.sid, cid)
        return
    if keyword == "RESET":
        end_chat(services, cid, conversation.get("chat_id"))
        send_part(services, message, "reset", settings.reset_confirmation_text)
        return
    if message.body.strip() and progress.reply_parts is None and not _within_rate(services, message, progress):
        if message.num_media > 0 and _decide(store, progress, message.sid, "mms_notice", lambda: store.claim_notice(
                "mms", cid, settings.mms_notice_interval_seconds)):
            send_part(services, message, "notice", settings.mms_notice_text)
        if _decide(store, progress, message.sid, "rate_notice", lambda: store.claim_notice(
                "rate", cid, settings.rate_limit_window_seconds)):
            send_part(services, message, "rate", settings.rate_limit_notice_text)
        log.warning("message=%s conversation=%s not forwarded: rate limit", message.sid, cid)
        note_activity(services, cid)
        return
    answer_turn(services, bursts.Turn((message,), progress), conversation)


def _hand_over(services: Services, message: InboundMessage) -> None:
    """The person asked for a human (``HANDOFF_KEYWORD``): hand the conversation over, tell them once, and the operator.

    Decided once per text (``handoff_requested``) before anything is done, so a retry repeats the same steps,
    each of them once: the handoff (already on: nothing), the event (by its id), the confirmation (a claimed part).
    """
    store, settings = services.store, services.settings
    cid = message.conversation_id
    store.start_handoff(cid, by="person")
    emit_event(store.redis, settings, "handoff.requested", event_id=f"handoff.requested:{message.sid}",
               conversation_id=cid, number=message.from_, text=message.body.strip(), message_sid=message.sid,
               by="person")
    send_part(services, message, "handoff", settings.handoff_confirmation_text)
    log.info("message=%s conversation=%s handed over: the person asked for a human", message.sid, cid)


def _keep_for_operator(services: Services, message: InboundMessage) -> None:
    """A text during a handoff: kept in the away log (the agent hears it after the resume), not answered."""
    store = services.store
    cid = message.conversation_id
    words = message.body.strip()
    if message.num_media:
        words = f"{words} [{message.num_media} attachment(s)]".strip()
    store.add_away(cid, "person", words, ref=message.sid)  # once per text, whatever the retries
    emit_event(store.redis, services.settings, "handoff.message_received",
               event_id=f"handoff.message_received:{message.sid}", conversation_id=cid, number=message.from_,
               text=words, message_sid=message.sid)
    log.info("message=%s conversation=%s kept for the operator: handed off", message.sid, cid)


def note_activity(services: Services, cid: str) -> None:
    """Note the conversation's activity time; its idle check is due a CHAT_IDLE_TIMEOUT_SECONDS from now."""
    services.store.note_activity(cid, *_activity_note(services)())


def _activity_note(services: Services, noted: list[bool] | None = None):
    """The conversation's activity time now, and when its idle check is then due: ``note_activity`` writes them
    alone, a reply's last part with its record (``noted`` then says so)."""

    def note() -> tuple[float, float]:
        if noted is not None:
            noted.append(True)
        now = time.time()
        return now, now + services.settings.chat_idle_timeout_seconds

    return note


def _decide(store: ConversationStore, progress: Progress, sid: str, name: str, decide) -> bool:
    """A yes/no taken once per message and remembered, so a retried job decides the same way."""
    earlier = progress.decisions.get(name)  # from the message's one progress read
    if earlier is not None:
        return earlier
    return store.record_decision(sid, name, bool(decide()))


def _plainly_not_held(settings, message: InboundMessage, conversation: dict[str, str]) -> bool:
    """A slow text, no run of quick ones to end, the breaker closed: not held, and nothing to write or remember.

    A retry decides the same: only this conversation's drains (in order, under its lock) open the breaker or
    count quick texts, and our own replies to this message make it no quicker.
    """
    if time.time() < float(conversation.get("loop_breaker_until") or 0):
        return False
    since_reply = message.received_at - float(conversation.get("last_outbound_at") or 0)
    quick = 0 <= since_reply <= settings.loop_breaker_seconds
    return not quick and not int(conversation.get("loop_streak") or 0)


def _loop_held(services: Services, message: InboundMessage, conversation: dict[str, str]) -> bool:
    """Whether this text is held by the loop breaker (opening it on the K-th quick text in a row); remembered.

    A text is quick when it arrived within ``LOOP_BREAKER_SECONDS`` after our previous reply in the
    conversation: a person reads and types slower than that; another bot, or our own number through a
    carrier, does not. A text sent before our reply went out does not count (and starts the run over).
    """
    settings, store = services.settings, services.store
    cid = message.conversation_id
    if time.time() < float(conversation.get("loop_breaker_until") or 0):
        return store.record_decision(message.sid, "loop_held", True)
    since_reply = message.received_at - float(conversation.get("last_outbound_at") or 0)
    quick = 0 <= since_reply <= settings.loop_breaker_seconds
    # One step: the run counted (or ended), the breaker opened on the K-th, the verdict remembered.
    held, opened = store.loop_verdict(message.sid, cid, quick, settings.loop_breaker_replies,
                                      time.time() + settings.loop_breaker_cooldown_seconds)
    if not opened:
        return held
    metrics().loop_breaker_trips.inc()
    log.warning("conversation=%s loop breaker open for %d s: %d texts in a row came within %.0f s of our reply",
                cid, settings.loop_breaker_cooldown_seconds, settings.loop_breaker_replies,
                settings.loop_breaker_seconds)
    return True


def _within_rate(services: Services, message: InboundMessage, progress: Progress) -> bool:
    """Whether the message may go to the agent; counted once per message (a retry decides the same way)."""
    earlier = progress.decisions.get("within_rate")
    if earlier is not None:
        return earlier
    limit = services.settings.rate_limit_messages
    if limit <= 0:
        return True
    return services.store.forward_within_rate(message.sid, message.conversation_id, limit,
                                              services.settings.rate_limit_window_seconds)
