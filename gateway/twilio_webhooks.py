"""Twilio's webhooks: inbound messages and delivery status callbacks."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

from flask import Blueprint, Request, Response, request
from redis.exceptions import RedisError
from werkzeug.datastructures import MultiDict

from core.events import FAILED_DELIVERY_STATUSES, emit_delivery_failed, emit_event
from core.metrics import metrics
from core.model import InboundMessage
from core.queues import enqueue_drain
from core.redaction import mask_number
from core.state import NotReplicated
from gateway import twilio_fields as fields
from gateway.campaigns import note_campaign_status
from gateway.context import web_context
from gateway.responses import plain_text
from gateway.signatures import is_signed_by_twilio

log = logging.getLogger(__name__)
bp = Blueprint("twilio", __name__, url_prefix="/twilio")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_BODY_CHARS = 4096
MAX_MEDIA = 100
FORM_TYPE = "application/x-www-form-urlencoded"


class InvalidInbound(ValueError):
    """The webhook's form is not a usable inbound message."""


MAX_FIELDS = 1000


def read_form(req: Request) -> tuple[MultiDict, str | None]:
    """The form Twilio sent, parsed once, and why it is not a form Twilio could have sent (or None).

    Werkzeug's form parser quietly keeps undecodable escapes (or drops the whole form): the body is parsed
    here instead, strictly (its raw bytes and every escape must be UTF-8). A body that fails is still given
    as Werkzeug reads it, so that its signature is checked (403) before its form (400).
    """
    if req.mimetype != FORM_TYPE:
        return req.form, f"Content-Type must be {FORM_TYPE}"
    try:
        pairs = parse_qsl(req.get_data(cache=True).decode("utf-8"), keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        return req.form, "the form is not valid UTF-8"
    except ValueError:
        return MultiDict(), f"the form has more than {MAX_FIELDS} fields"
    return MultiDict(pairs), None


IDENTIFYING_FIELDS = ("MessageSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body", "NumMedia",
                      "OptOutType")


def parse_inbound(form: MultiDict) -> InboundMessage:
    """Build an InboundMessage from Twilio's form fields. Raises InvalidInbound saying what is wrong.

    Every field that identifies a message is held to the format Twilio sends (see ``twilio_fields``): a
    signed form re-cut so that a value swallows its neighbour's name is refused, not taken as a new message.
    """
    problems = [f"{name} is missing" for name in ("MessageSid", "From", "To") if not form.get(name, "").strip()]
    if problems:
        raise InvalidInbound("; ".join(problems))
    # Twilio never repeats a field; a repeated one is how a re-cut form would choose which value we read.
    problems = [f"{name} appears more than once" for name in IDENTIFYING_FIELDS if len(form.getlist(name)) > 1]
    sid = form["MessageSid"]
    if not fields.MESSAGE_SID.fullmatch(sid):
        problems.append("MessageSid is not a Twilio message sid (SM or MM and 32 hex digits)")
    for name, pattern, shape in (("AccountSid", fields.ACCOUNT_SID, "AC"),
                                 ("MessagingServiceSid", fields.SERVICE_SID, "MG")):
        if name in form and not pattern.fullmatch(form[name]):
            problems.append(f"{name} is not a Twilio sid ({shape} and 32 hex digits)")
    for name in ("From", "To"):
        if problem := fields.address_problem(form[name]):
            problems.append(f"{name} {problem}")
    body = form.get("Body", "")
    if not body.strip():
        location, problem = location_text(form)
        problems += [problem] if problem else []
        body = location or body
    if len(body) > MAX_BODY_CHARS:
        problems.append(f"Body is longer than {MAX_BODY_CHARS} characters")
    num_media = form.get("NumMedia", "") or "0"
    if not fields.NUM_MEDIA.fullmatch(num_media):
        problems.append("NumMedia is not a number")
    elif int(num_media) > MAX_MEDIA:
        problems.append(f"NumMedia must be between 0 and {MAX_MEDIA}")
    if problems:
        raise InvalidInbound("; ".join(problems))
    media_types = tuple(form.get(f"MediaContentType{i}", "")[:100] for i in range(min(int(num_media), 10)))
    return InboundMessage(
        sid=sid,
        from_=form["From"],
        to=form["To"],
        body=body,
        account_sid=form.get("AccountSid", ""),
        messaging_service_sid=form.get("MessagingServiceSid", ""),
        num_media=int(num_media),
        media_types=media_types,
        opt_out_type=form.get("OptOutType", "")[:16].upper(),
        received_at=time.time(),
    )


def location_text(form: MultiDict) -> tuple[str | None, str | None]:
    """A shared location (WhatsApp sends one with an empty Body and ``Latitude``, ``Longitude``, and maybe ``Address``
    and ``Label``) as the text the agent reads; (None, None) when there is none, (None, problem) when it is bad."""
    latitude, longitude = form.get("Latitude", "").strip(), form.get("Longitude", "").strip()
    if not (latitude or longitude):
        return None, None
    try:
        lat, lon = float(latitude), float(longitude)
    except ValueError:
        return None, "Latitude and Longitude must be numbers"
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):  # (also refuses nan and inf)
        return None, "Latitude must be between -90 and 90 and Longitude between -180 and 180"
    place = ", ".join(part for part in (form.get("Label", "").strip()[:200], form.get("Address", "").strip()[:500])
                      if part)
    return f"Shared location: {place + ' ' if place else ''}({lat:.6f}, {lon:.6f})", None


def _twiml() -> Response:
    return Response(EMPTY_TWIML, status=200, content_type="text/xml; charset=utf-8")


@bp.post("/sms")
def inbound_sms():
    web = web_context()
    form, problem = read_form(request)
    if not is_signed_by_twilio(request, web.validator, web.settings.public_base_url, form):
        log.warning("inbound rejected: invalid or missing X-Twilio-Signature")
        return plain_text(403, "Invalid or missing X-Twilio-Signature.")
    try:
        if problem:
            raise InvalidInbound(problem)
        message = parse_inbound(form)
    except InvalidInbound as exc:
        return plain_text(400, f"Bad inbound message: {exc}.")
    unanswerable = fields.unanswerable(message.from_, fields.own_numbers(web.settings.own_numbers()))
    try:
        def queue_job(pipe, job_id):  # the text's drain job, in the transaction that stores the text
            return enqueue_drain(web.queue, message.conversation_id, web.settings, pipeline=pipe, job_id=job_id)

        outcome = web.store.accept(message, queue_job, signature=request.headers.get("X-Twilio-Signature", ""),
                                   skip=unanswerable is not None, replicas=web.settings.redis_wait_replicas,
                                   replica_timeout_seconds=web.settings.redis_wait_timeout_seconds)
    except NotReplicated as exc:
        # Stored with its drain job on the master, so it is answered unless a failover loses it: Twilio is told it
        # was not (its fallback URL, if any, runs), as REDIS_WAIT_REPLICAS asks.
        log.warning("inbound message=%s %s but confirmed by %d of REDIS_WAIT_REPLICAS=%d replica(s) in time: "
                    "answering 503", message.sid, exc.outcome, exc.replicas, web.settings.redis_wait_replicas)
        return plain_text(503, "Temporarily unable to confirm the message is stored safely; please retry.")
    except RedisError as exc:
        log.error("inbound message=%s not accepted: Redis unavailable (%s)", message.sid, type(exc).__name__)
        return plain_text(503, "Temporarily unable to accept messages; please retry.")
    if outcome == "replay":
        metrics().count_not_forwarded("replayed_signature")
        log.warning("inbound message=%s refused: its signature was first accepted with another message "
                    "(a re-cut replay of a signed webhook)", message.sid)
        return plain_text(400, "Bad inbound message: this signature belongs to another message.")
    if outcome == "skipped":
        reason = unanswerable or "own_number"
        metrics().count_not_forwarded(reason)
        log.info("inbound message=%s from=%s conversation=%s not forwarded: no reply can reach the sender (%s)",
                 message.sid, mask_number(message.from_), message.conversation_id, reason)
        return _twiml()
    metrics().count_inbound(outcome, message.num_media)
    log.info("inbound message=%s from=%s conversation=%s %s media=%d", message.sid, mask_number(message.from_),
             message.conversation_id, outcome, message.num_media)
    return _twiml()


@bp.post("/status")
def status_callback():
    web = web_context()
    form, problem = read_form(request)
    if not is_signed_by_twilio(request, web.validator, web.settings.public_base_url, form):
        return plain_text(403, "Invalid or missing X-Twilio-Signature.")
    if problem:
        return plain_text(400, f"Bad status callback: {problem}.")
    sid = form.get("MessageSid", "")
    status = form.get("MessageStatus", "")
    error_code = form.get("ErrorCode", "")
    if not sid.strip() or not status.strip():
        return plain_text(400, "Bad status callback: MessageSid and MessageStatus are required.")
    # Held to Twilio's formats like the inbound webhook, so a re-cut callback cannot move a status or error code.
    if not fields.MESSAGE_SID.fullmatch(sid) or len(form.getlist("MessageSid")) > 1:
        return plain_text(400, "Bad status callback: MessageSid is not a Twilio message sid "
                               "(SM or MM and 32 hex digits).")
    if not fields.MESSAGE_STATUS.fullmatch(status) or len(form.getlist("MessageStatus")) > 1:
        return plain_text(400, "Bad status callback: MessageStatus is not a Twilio message status.")
    if not fields.ERROR_CODE.fullmatch(error_code) or len(form.getlist("ErrorCode")) > 1:
        return plain_text(400, "Bad status callback: ErrorCode is not a Twilio error code.")
    if "AccountSid" in form and not fields.ACCOUNT_SID.fullmatch(form["AccountSid"]):
        return plain_text(400, "Bad status callback: AccountSid is not a Twilio sid (AC and 32 hex digits).")
    if sid == fields.DOCTOR_SELF_TEST_SID:  # signed, so it is doctor's check, not traffic: nothing recorded or counted
        log.info("status message=%s doctor's self-test acknowledged", sid)
        return plain_text(200, "ok")
    try:
        cid, opted_out = web.store.record_status(sid, status, error_code)
        if opted_out:  # 21610: Twilio says the person opted out (a STOP we may never have seen)
            emit_event(web.store.redis, web.settings, "conversation.opted_out",
                       event_id=f"conversation.opted_out:{sid}", conversation_id=cid,
                       number=web.store.conversation(cid).get("person") or form.get("To"), message_sid=sid)
            log.info("status message=%s conversation=%s opted out (error 21610)", sid, cid)
        if cid:
            note_campaign_status(sid, status)
        if cid and status.lower() in FAILED_DELIVERY_STATUSES:  # once per sid, however often Twilio calls back
            emit_delivery_failed(web.store, web.settings, cid, event_id=f"delivery.failed:{sid}", status=status.lower(),
                                 error_code=error_code, message_sid=sid, number=form.get("To"))
    except RedisError:
        return plain_text(503, "Temporarily unable to record status; please retry.")
    metrics().status_callbacks.labels(status=status[:32]).inc()  # MessageStatus's format: at most 32 characters
    log.info("status message=%s status=%s conversation=%s", sid, status, cid or "unknown")
    return plain_text(200, "ok")
