"""Sending the gateway's SMS: each part exactly once, whatever happened to earlier attempts.

A part is claimed (``sending:<claim time>``) before its first send. A send that may have gone out (a
read timeout, a dropped connection, a 2xx without a message) leaves it ``uncertain:<claim time>``; the
next attempt first looks for it at Twilio, matching what identifies this part: the person, the body,
the sender, a creation time no earlier than this part's claim, and none of the conversation's messages
already accounted for (so an identical earlier reply is never taken for it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.events import emit_delivery_failed, emit_event
from core.metrics import metrics
from core.model import InboundMessage
from core.redaction import mask_number
from core.state.campaigns import recipient_of
from core.state.deliveries import WITHHELD_PREFIX
from core.state.pacing import Pacing
from workers import sms_text
from workers.errors import CredentialsError, TransientError, TwilioPermanentError, UnsendableTextError
from workers.services import Services

log = logging.getLogger(__name__)

OPTED_OUT_CODE = 21610
# Twilio's date_created drops the fraction of a second (up to 1 s early), and our clock may run ahead of
# Twilio's: a message sent just after the claim can look created before it. 5 s covers the 1 s truncation
# plus 4 s of drift, far more than NTP-synced hosts show; a wider window costs little, since messages already
# recorded for the conversation are excluded by sid, and only an identical message sent within it but never
# recorded (a crash between send and record) could still be taken for this part.
CLAIM_CLOCK_MARGIN_SECONDS = 5.0


def sender_number(message: InboundMessage) -> str | None:
    """The number the reply goes out from: the one the person texted; None for a conversation keyed on a service."""
    if message.messaging_service_sid and message.to == message.messaging_service_sid:
        return None  # an outbound start through a Messaging Service alone: Twilio picks the number
    return message.to


def send_part(services: Services, message: InboundMessage, part: str, body: str, *,
              claimed_at: float | None = None, activity: Callable[[], tuple[float, float]] | None = None) -> bool:
    """Send one SMS of the answer to ``message`` exactly once, whatever happened to earlier attempts.

    ``claimed_at``: the caller claimed the part at that time (in the step that recorded the reply).
    Returns False when the part is not sent because the person opted out (Twilio refused it with 21610, now
    or in an earlier attempt) or, for the agent's reply (``reply:<n>``), because it was withheld: the person opted
    out or an operator took over before it went. The caller sends no more parts.
    ``activity``: the conversation's activity to note in the step that records the part as sent (called only if
    it is recorded now; see ``ConversationStore.record_sent``).
    """
    store = services.store
    sender = services.sender
    from_, service = sender_number(message), message.messaging_service_sid or None
    reply_of = message.conversation_id if part.startswith("reply:") else None
    claimed = claimed_at is not None
    if not claimed:
        claimed_at = time.time()
        claimed = store.claim_part(message.sid, part, claimed_at, reply_of=reply_of)
    if not claimed:
        state = store.progress(message.sid).parts.get(part, "")
        if not state.startswith(("sending", "uncertain")):
            # sent (a Twilio sid), refused for good, or withheld
            return not (state == f"failed:{OPTED_OUT_CODE}" or state.startswith(WITHHELD_PREFIX))
        # An earlier attempt may have sent it (a crash or timeout mid-send): ask Twilio before sending again.
        claimed_at = float(state.partition(":")[2] or 0)
        found = sender.find_sent(to=message.from_, body=body, from_=from_, messaging_service_sid=service,
                                 since=claimed_at - CLAIM_CLOCK_MARGIN_SECONDS, exclude=_known_sids(services, message))
        if found:
            _record(services, message, part, body, found, status=None, activity=activity)  # settles the part too
            log.info("message=%s part=%s found at Twilio, not sent again", message.sid, part)
            return True
        # Not found: send again, keeping the first claim's time, so a later look-up still covers that attempt
        # (unless, for a reply, the person opted out or an operator took over meanwhile).
        if not store.claim_part(message.sid, part, claimed_at, reply_of=reply_of, again=True):
            log.info("message=%s part=%s withheld: opted out or handed off since the last attempt", message.sid,
                     part)
            return False
    settings = services.settings
    callback = f"{settings.public_base_url}/twilio/status" if settings.public_base_url else None
    try:
        sent = sender.send(to=message.from_, body=body, from_=from_, messaging_service_sid=service,
                           status_callback=callback)
    except TransientError as exc:
        if exc.maybe_applied:
            store.settle_part(message.sid, part, f"uncertain:{claimed_at:.3f}")
        else:
            store.release_part(message.sid, part)
        raise
    except (CredentialsError, UnsendableTextError):
        store.release_part(message.sid, part)  # refused before anything was sent: a replay sends it
        raise
    except TwilioPermanentError as exc:
        store.settle_part(message.sid, part, f"failed:{exc.code}")
        log.warning("message=%s part=%s to=%s refused by Twilio: code=%s", message.sid, part,
                    mask_number(message.from_), exc.code)
        if exc.code == OPTED_OUT_CODE:
            if not store.set_opted_out(message.conversation_id, True):
                return False  # known already (the STOP was accepted, and said so): no second event
            emit_event(store.redis, services.settings, "conversation.opted_out",
                       event_id=f"conversation.opted_out:{message.sid}:{part}", conversation_id=message.conversation_id,
                       number=message.from_, error_code=str(exc.code))
            return False
        # refused outright: no status callback will come for it (an opt-out is not a failure to report)
        emit_delivery_failed(store, services.settings, message.conversation_id, status="refused",
                             event_id=f"delivery.failed:{message.sid}:{part}", error_code=str(exc.code),
                             number=message.from_)
        return True
    _record(services, message, part, body, sent.sid, status=sent.status, activity=activity)  # settles the part too
    _share_pace(services, message, body)
    return True


def _share_pace(services: Services, message: InboundMessage, body: str) -> None:
    """A reply takes its slots of the sender's campaign pace (never waiting for them): a campaign on the same sender
    then sends that much later, so Twilio's queue for the sender never grows with replies behind campaign SMS.
    A campaign's own openings reserved their slots before they were sent (``workers.campaigns``)."""
    if recipient_of(message.sid) is not None:
        return
    pacing = Pacing.from_settings(services.store.redis, services.settings)
    pacing.take(message.to, services.settings.campaign_send_rate, cost=sms_text.segment_info(body).segments)


def _known_sids(services: Services, message: InboundMessage) -> set[str]:
    """Twilio sids already accounted for: the conversation's recent SMS and this message's sent parts."""
    recent = {row["sid"] for row in services.store.recent_sent(message.conversation_id)}
    parts = services.store.progress(message.sid).parts.values()
    return recent | {state for state in parts if state.startswith(("SM", "MM"))}


def _record(services: Services, message: InboundMessage, part: str, body: str, sid: str, status: str | None,
            activity: Callable[[], tuple[float, float]] | None = None) -> None:
    """Settle the part as sent (its Twilio sid) and record the SMS, in one atomic step (with the ``activity``)."""
    shape = sms_text.segment_info(body)
    services.store.record_sent(message.conversation_id, sid, settles=(message.sid, part), status=status,
                               activity=activity, segments=shape.segments, encoding=shape.encoding,
                               inbound_sid=message.sid, part=part)


def give_up(services: Services, message: InboundMessage, exc: Exception) -> None:
    """Keep the message for a replay, tell the person it could not be answered (once), and log why.

    A refused credential is the operator's to fix: the message waits for the replay with no apology (through
    Twilio it could not go anyway), and the ERROR line says what to do.
    """
    services.store.keep_dead_letter(message)
    if isinstance(exc, CredentialsError):
        metrics().credentials_refused.labels(service=exc.service).inc()
        log.error("message=%s conversation=%s not answered: %s refused the gateway's credentials (%s); fix them, "
                  "then requeue the failed job (POST /admin/failed/<job id>/requeue) to answer it", message.sid,
                  message.conversation_id, "Twilio" if exc.service == "twilio" else "UponAI", exc)
        return
    log.error("message=%s conversation=%s given up: %s", message.sid, message.conversation_id, exc)
    try:
        send_part(services, message, "apology", services.settings.failure_notice_text)
    except TransientError as send_exc:
        log.error("message=%s apology not sent: %s", message.sid, send_exc)
