"""Operator actions that need UponAI or Twilio, run by workers on the high-priority ``sms-admin`` queue.

The web process never calls UponAI or Twilio: the admin API enqueues one of the ``*_job`` functions
below and waits for its result. Each job wires the worker's collaborators and calls a plain
operation that takes ``workers.services.Services``. A job returns ``{"ok": {...}}`` or, for a failure the
operator should see (opted out, UponAI or Twilio refused or unreachable, conversation busy),
``{"error": {"status", "code", "message"}}``; anything else raises and lands in RQ's failed registry.

An outbound start holds the conversation's lock, like a drain, so it never interleaves with a turn,
and records its progress under its operation id (the chat it created, the opening line, each SMS
part claimed before it is sent), so running it again (an operator's retry with the same
Idempotency-Key, a requeue) resumes it and sends nothing twice. Its records (``outbound:{op_id}``) are
kept by ``core.state.operations``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from rq import get_current_job

from core.model import InboundMessage, conversation_id
from core.queues import LOCK_WAIT_SECONDS
from core.redaction import mask_number
from core.state import ConversationStore
from workers import erasure, flow, sms_text
from workers.chats import complete_once, end_chat
from workers.delivery import send_part
from workers.errors import (
    GatewayError,
    TransientError,
    TwilioPermanentError,
    TwilioTransientError,
    UponAIPermanentError,
    UponAITransientError,
)
from workers.locking import acquire_waiting, holding
from workers.metering import timed_admin_job
from workers.services import Services

log = logging.getLogger(__name__)

ADMIN_TOKEN_PREFIX = "admin:"  # a drain that meets this lock holder retries shortly (see workers.locking)
LOCK_POLL_SECONDS = 0.1
OPENING_VARIABLE = "opening_message"
OPENING_PART = "opening"


class AdminError(Exception):
    """A failure to report to the operator as an HTTP status with a code and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message}


def admin_error_from(exc: GatewayError) -> AdminError:
    """How an UponAI or Twilio failure is reported to the operator."""
    if isinstance(exc, UponAITransientError):
        return AdminError(503, "uponai_unavailable", f"UponAI is unavailable, try again: {exc}")
    if isinstance(exc, UponAIPermanentError):
        return AdminError(502, "uponai_rejected", f"UponAI refused the request: {exc}")
    if isinstance(exc, TwilioTransientError):
        return AdminError(503, "twilio_unavailable", f"Twilio is unavailable, try again: {exc}")
    if isinstance(exc, TwilioPermanentError):
        return AdminError(502, "twilio_rejected", f"Twilio refused the message: {exc}")
    return AdminError(502, "upstream_failed", str(exc))


# -- the conversation lock ------------------------------------------------------------------------


@contextmanager
def conversation_lock(services: Services, cid: str, token: str, wait_seconds: float = LOCK_WAIT_SECONDS):
    """Hold the conversation's lock (waiting while a turn runs); hand waiting messages on after.

    Raises AdminError (409 conversation_busy) if the lock stays taken for ``wait_seconds``.
    """
    if not acquire_waiting(services.store, cid, token, wait_seconds, LOCK_POLL_SECONDS):
        raise AdminError(409, "conversation_busy",
                         f"the conversation stayed busy with an agent turn for {wait_seconds:.0f} s; try again")
    with holding(services.store, services.jobs, cid, token):
        yield


# -- outbound -------------------------------------------------------------------------------------


def start_outbound(services: Services, op_id: str, request: dict[str, Any],
                   still_wanted: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Start (or resume) an outbound conversation: end the ongoing chat, create one, send the opening.

    ``request`` is validated by the web: ``to``, ``gateway`` (the number or Messaging Service the
    conversation is keyed on), ``messaging_service_sid``, ``message``, ``agent_id``,
    ``dynamic_variables``, ``metadata``. Raises AdminError and GatewayError.
    """
    store = services.store
    to, gateway_number = request["to"], request["gateway"]
    cid = conversation_id(gateway_number, to)
    _check_metadata(request.get("metadata"))
    _check_text(request.get("message"))
    if (done := store.operation_result(op_id)) is not None:
        return done
    # A token of this run's own: two runs of one operation (concurrent retries) take turns, and the
    # second finds the first one's result instead of working beside it.
    with conversation_lock(services, cid, f"{ADMIN_TOKEN_PREFIX}{op_id}:{uuid.uuid4().hex}"):
        if (done := store.operation_result(op_id)) is not None:
            return done
        if store.conversation(cid).get("opted_out") == "1":
            raise AdminError(409, "opted_out", "the number has opted out (STOP); it must text START first")
        if still_wanted is not None and not still_wanted():
            # (a campaign's recipient erased while this waited for the conversation: nothing goes to them)
            raise AdminError(410, "recipient_gone", "the recipient is no longer on the list; nothing was sent")
        op = store.operation(op_id)
        chat_id, agent_id = op.get("chat_id"), op.get("agent_id")
        if not chat_id:
            chat_id, agent_id = _new_chat(services, op_id, cid, request)
        message = InboundMessage(sid=op_id, from_=to, to=gateway_number,
                                 messaging_service_sid=request.get("messaging_service_sid") or "")
        parts = _opening_parts(services, op_id, chat_id, request.get("message"))
        for index, part in enumerate(parts):
            send_part(services, message, f"{OPENING_PART}:{index}", part)
        outcomes = store.progress(op_id).parts
        sids = [outcomes.get(f"{OPENING_PART}:{index}", "") for index in range(len(parts))]
        _check_sent(store, cid, sids)
        flow.note_activity(services, cid)
        result = {"conversation_id": cid, "chat_id": chat_id, "agent_id": agent_id, "to": to, "from": gateway_number,
                  "message_sids": sids, "opening_generated": not request.get("message")}
        store.record_operation(op_id, result=json.dumps(result))
    log.info("outbound op=%s conversation=%s to=%s chat=%s parts=%d", op_id, cid, mask_number(to), chat_id,
             len(parts))
    return result


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    """Refuse metadata UponAI cannot be sent (the web checks it too) before the person's chat is ended."""
    try:
        json.dumps(metadata or {}, allow_nan=False)
    except (ValueError, TypeError):
        raise AdminError(400, "invalid_request", "metadata: must be plain JSON (no NaN or Infinity)") from None


def _check_text(text: str | None) -> None:
    """Refuse a text no SMS can carry (the web refuses it too) before the person's chat is ended."""
    if text is not None and not sms_text.is_valid_unicode(text):
        raise AdminError(400, "invalid_request", "message: not valid Unicode (a lone surrogate); nothing was sent")


def _new_chat(services: Services, op_id: str, cid: str, request: dict[str, Any]) -> tuple[str, str]:
    store = services.store
    end_chat(services, cid, store.conversation(cid).get("chat_id"))
    agent_id = request.get("agent_id") or services.settings.agent_for(request["gateway"])
    variables = dict(request.get("dynamic_variables") or {})
    if request.get("message"):
        variables[OPENING_VARIABLE] = request["message"]
    metadata = {**(request.get("metadata") or {}), "channel": "sms", "conversation_id": cid, "direction": "outbound"}
    chat = services.agent.create_chat(agent_id=agent_id, metadata=metadata, dynamic_variables=variables or None)
    store.record_operation(op_id, chat_id=chat.chat_id, agent_id=agent_id)
    store.set_chat(cid, chat.chat_id, agent_id)
    fields = {"gateway": request["gateway"], "person": request["to"]}
    if request.get("messaging_service_sid"):
        fields["messaging_service_sid"] = request["messaging_service_sid"]
    store.touch(cid, **fields)
    log.info("outbound op=%s conversation=%s chat=%s created agent=%s", op_id, cid, chat.chat_id, agent_id)
    return chat.chat_id, agent_id


def _opening_parts(services: Services, op_id: str, chat_id: str, message: str | None) -> list[str]:
    """The SMS parts of the opening: the operator's message as written, or the agent's first line."""
    if message:
        return [message]
    store, settings = services.store, services.settings
    progress = store.progress(op_id)
    if progress.reply_parts is not None:
        return progress.reply_parts
    agent_messages = complete_once(services, op_id, chat_id, settings.outbound_opening_prompt, progress.turn_chat_id)
    if agent_messages is None:
        raise AdminError(502, "uponai_rejected", f"UponAI refused the request: chat {chat_id} is gone or has ended "
                                                 "before the agent wrote the opening; start again (without "
                                                 "this Idempotency-Key)")
    parts = sms_text.shape_reply([m.content for m in agent_messages], max_segments=settings.sms_max_segments,
                                 transliterate=settings.sms_transliterate)
    if not parts:
        raise AdminError(502, "no_opening", "the agent answered the opening prompt with no text; nothing was sent")
    store.record_reply(op_id, parts)
    return parts


def _check_sent(store: ConversationStore, cid: str, sids: list[str]) -> None:
    refused = [sid for sid in sids if sid.startswith("failed:")]
    if not refused:
        return
    code = refused[0].partition(":")[2]
    if store.conversation(cid).get("opted_out") == "1":
        raise AdminError(409, "opted_out", f"Twilio refused the message: the number has opted out (code {code})")
    raise AdminError(502, "twilio_rejected", f"Twilio refused the message (code {code})")


# -- an operator's message into the conversation -------------------------------------------------

OPERATOR_PART = "operator"


def operator_message(services: Services, op_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Send the operator's SMS into the ongoing conversation once, and put it in the away log for the agent.

    Holds the conversation's lock, so it goes out between the agent's replies, never inside a turn's parts.
    The SMS is the part ``operator`` of the operation's progress record (``msg:{op_id}``): claimed before
    it is sent, and after a crash or an ambiguous failure looked up at Twilio before it is sent again, so a
    retry with the same Idempotency-Key (the same ``op_id``) never doubles it. The chat is left as it is:
    the agent hears of the message on its next turn (the away log). ``request``: ``to``, ``gateway``,
    ``messaging_service_sid``, ``message``. Raises AdminError (409 opted_out) and GatewayError.
    """
    store = services.store
    to, gateway_number, text = request["to"], request["gateway"], request["message"]
    cid = conversation_id(gateway_number, to)
    _check_text(text)
    if (done := store.operation_result(op_id)) is not None:
        return done
    with conversation_lock(services, cid, f"{ADMIN_TOKEN_PREFIX}{op_id}:{uuid.uuid4().hex}"):
        if (done := store.operation_result(op_id)) is not None:
            return done
        part_state = store.progress(op_id).parts.get(OPERATOR_PART, "")
        if store.conversation(cid).get("opted_out") == "1" and not part_state.startswith(("SM", "MM")):
            raise AdminError(409, "opted_out", "the number has opted out (STOP); nothing was sent")
        message = InboundMessage(sid=op_id, from_=to, to=gateway_number,
                                 messaging_service_sid=request.get("messaging_service_sid") or "")
        send_part(services, message, OPERATOR_PART, text)
        sid = store.progress(op_id).parts.get(OPERATOR_PART, "")
        _check_sent(store, cid, [sid])
        store.add_away(cid, "operator", text, ref=op_id)  # once per operation, whatever the retries
        flow.note_activity(services, cid)
        result = {"conversation_id": cid, "to": to, "from": gateway_number, "message_sid": sid,
                  "handoff": store.in_handoff(cid)}
        store.record_operation(op_id, result=json.dumps(result))
    log.info("operator message op=%s conversation=%s to=%s sid=%s", op_id, cid, mask_number(to), sid)
    return result


# -- other operations -----------------------------------------------------------------------------


def end_conversation(services: Services, cid: str, token: str) -> dict[str, Any]:
    """End the conversation's ongoing chat now; the person's next text starts a new one."""
    with conversation_lock(services, cid, ADMIN_TOKEN_PREFIX + token):
        chat_id = services.store.conversation(cid).get("chat_id")
        end_chat(services, cid, chat_id)
        services.store.close_loop_breaker(cid)  # an operator who ends the conversation lets it talk again
    log.info("conversation=%s ended by an operator chat=%s", cid, chat_id or "-")
    return {"conversation_id": cid, "ended_chat_id": chat_id}


def erase_conversation(services: Services, cid: str, token: str, person: str | None = None,
                       gateway: str | None = None) -> dict[str, Any]:
    """Erase a person on request: end the chat at UponAI, delete every key and job holding their number or words
    (see ``workers.erasure``): conversation ``cid``, and with ``person`` (a bare number) every conversation with them
    on any channel (``gateway``: with that gateway number only).

    Raises AdminError 409 when a conversation stays busy, 404 when nothing of it is stored (a repeated erase).
    """
    try:
        erased = erasure.erase_person(services, cid, ADMIN_TOKEN_PREFIX + token, person=person, gateway=gateway,
                                      wait_seconds=LOCK_WAIT_SECONDS)
    except erasure.EraseBusy as exc:
        raise AdminError(409, "conversation_busy", f"{exc}; try again") from None
    if not (erased["keys_deleted"] or erased["jobs_deleted"] or erased["ended_chat_ids"]):
        raise AdminError(404, "conversation_not_found", "Nothing of this conversation is stored.")
    # Conversation ids only: the number is what is being erased.
    log.info("conversation=%s erased on request: conversations=%d keys=%d jobs=%d chats=%d", cid,
             len(erased["conversation_ids"]), erased["keys_deleted"], erased["jobs_deleted"],
             len(erased["ended_chat_ids"]))
    chats = erased["ended_chat_ids"]
    return {"conversation_id": cid, "ended_chat_id": chats[0] if chats else None, **erased}


def get_chat(services: Services, chat_id: str) -> dict[str, Any]:
    """The UponAI chat, with its messages."""
    return services.agent.get_chat(chat_id).to_dict()


def list_chats(services: Services, limit: int | None, sort_order: str | None,
               pagination_key: str | None) -> dict[str, Any]:
    """One page of UponAI's chat listing (messages left out)."""
    page = services.agent.list_chats(limit=limit, sort_order=sort_order, pagination_key=pagination_key)
    chats = []
    for chat in page.chats:
        row = chat.to_dict()
        row.pop("messages", None)
        chats.append(row)
    return {"chats": chats, "pagination_key": page.pagination_key, "has_more": page.has_more}


# -- RQ jobs --------------------------------------------------------------------------------------


def _run(operation, *args) -> dict[str, Any]:
    from workers import jobs

    try:
        return {"ok": operation(jobs.current_services(), *args)}
    except AdminError as exc:
        return {"error": exc.as_dict()}
    except (TransientError, UponAIPermanentError, TwilioPermanentError) as exc:
        # Reported to the operator, who is waiting for this answer and can retry; not hidden.
        log.warning("admin %s failed: %s", operation.__name__, type(exc).__name__)
        return {"error": admin_error_from(exc).as_dict()}


@timed_admin_job
def start_outbound_job(op_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Job: start an outbound conversation (see ``start_outbound``)."""
    return _run(start_outbound, op_id, request)


@timed_admin_job
def operator_message_job(op_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Job: send an operator's SMS into the conversation (see ``operator_message``)."""
    return _run(operator_message, op_id, request)


@timed_admin_job
def end_conversation_job(cid: str, token: str) -> dict[str, Any]:
    """Job: end the conversation's chat."""
    return _run(end_conversation, cid, token)


@timed_admin_job
def erase_conversation_job(cid: str, token: str, person: str | None = None,
                           gateway: str | None = None) -> dict[str, Any]:
    """Job: erase a person's conversations (see ``erase_conversation``).

    The job's own record would keep the person's number (its arguments, kept with its result): it is written
    without it before anything else is done.
    """
    job = get_current_job()
    if person is not None and job is not None:
        job.args = (cid, token, None, gateway)
        job.save(include_meta=False, include_result=False)
    return _run(erase_conversation, cid, token, person, gateway)


@timed_admin_job
def get_chat_job(chat_id: str) -> dict[str, Any]:
    """Job: read an UponAI chat."""
    return _run(get_chat, chat_id)


@timed_admin_job
def list_chats_job(limit: int | None, sort_order: str | None, pagination_key: str | None) -> dict[str, Any]:
    """Job: list UponAI chats."""
    return _run(list_chats, limit, sort_order, pagination_key)
