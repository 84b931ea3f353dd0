"""Sending the gateway's SMS: each part exactly once, whatever happened to earlier attempts."""

from __future__ import annotations

import logging
import time

from workers import sms_text
from workers.errors import TransientError, TwilioPermanentError
from workers.redaction import mask_number
from workers.services import Services
from workers.store import InboundMessage

log = logging.getLogger(__name__)

OPTED_OUT_CODE = 21610


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
