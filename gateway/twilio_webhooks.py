"""Twilio's webhooks: inbound messages and delivery status callbacks."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl

from flask import Blueprint, Request, Response, request
from redis.exceptions import RedisError
from werkzeug.datastructures import MultiDict

from gateway.context import gateway
from gateway.signatures import is_signed_by_twilio
from workers.jobs import enqueue_drain
from workers.metrics import metrics
from workers.redaction import mask_number
from workers.store import InboundMessage

log = logging.getLogger(__name__)
bp = Blueprint("twilio", __name__, url_prefix="/twilio")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_BODY_CHARS = 4096
MAX_ADDRESS_CHARS = 64
MAX_MEDIA = 100
_SID = re.compile(r"^[A-Za-z0-9]{2,64}$")
FORM_TYPE = "application/x-www-form-urlencoded"


class InvalidInbound(ValueError):
    """The webhook's form is not a usable inbound message."""


def form_problem(req: Request) -> str | None:
    """Why the body is not a form Twilio could have sent, or None. Call it before ``req.form`` is read."""
    if req.mimetype != FORM_TYPE:
        return f"Content-Type must be {FORM_TYPE}"
    # Werkzeug quietly keeps undecodable escapes (or drops the whole form): check the raw bytes.
    # get_data caches them, so the form is still parsed from them afterwards.
    try:
        parse_qsl(req.get_data(cache=True).decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return "the form is not valid UTF-8"
    return None


def parse_inbound(form: MultiDict) -> InboundMessage:
    """Build an InboundMessage from Twilio's form fields. Raises InvalidInbound saying what is wrong."""
    problems = [f"{name} is missing" for name in ("MessageSid", "From", "To") if not form.get(name, "").strip()]
    if problems:
        raise InvalidInbound("; ".join(problems))
    sid = form["MessageSid"].strip()
    if not _SID.match(sid):
        raise InvalidInbound("MessageSid is not a Twilio message sid")
    for name in ("From", "To"):
        if len(form[name]) > MAX_ADDRESS_CHARS:
            raise InvalidInbound(f"{name} is longer than {MAX_ADDRESS_CHARS} characters")
    body = form.get("Body", "")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidInbound(f"Body is longer than {MAX_BODY_CHARS} characters")
    try:
        num_media = int(form.get("NumMedia", "0") or 0)
    except ValueError:
        raise InvalidInbound("NumMedia is not a number") from None
    if not 0 <= num_media <= MAX_MEDIA:
        raise InvalidInbound(f"NumMedia must be between 0 and {MAX_MEDIA}")
    media_types = tuple(form.get(f"MediaContentType{i}", "")[:100] for i in range(min(num_media, 10)))
    return InboundMessage(
        sid=sid,
        from_=form["From"].strip(),
        to=form["To"].strip(),
        body=body,
        account_sid=form.get("AccountSid", "")[:64],
        messaging_service_sid=form.get("MessagingServiceSid", "")[:64],
        num_media=num_media,
        media_types=media_types,
        opt_out_type=form.get("OptOutType", "")[:16].upper(),
        received_at=time.time(),
    )


def _twiml() -> Response:
    return Response(EMPTY_TWIML, status=200, content_type="text/xml; charset=utf-8")


def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")


@bp.post("/sms")
def inbound_sms():
    gw = gateway()
    problem = form_problem(request)
    if not is_signed_by_twilio(request, gw.validator, gw.settings.public_base_url):
        log.warning("inbound rejected: invalid or missing X-Twilio-Signature")
        return _plain(403, "Invalid or missing X-Twilio-Signature.")
    try:
        if problem:
            raise InvalidInbound(problem)
        message = parse_inbound(request.form)
    except InvalidInbound as exc:
        return _plain(400, f"Bad inbound message: {exc}.")
    try:
        outcome = gw.store.accept(message, then=lambda pipe: enqueue_drain(
            gw.queue, message.conversation_id, gw.settings, pipeline=pipe))
    except RedisError as exc:
        log.error("inbound message=%s not accepted: Redis unavailable (%s)", message.sid, type(exc).__name__)
        return _plain(503, "Temporarily unable to accept messages; please retry.")
    metrics().count_inbound(outcome, message.num_media)
    log.info("inbound message=%s from=%s conversation=%s %s media=%d", message.sid, mask_number(message.from_),
             message.conversation_id, outcome, message.num_media)
    return _twiml()


@bp.post("/status")
def status_callback():
    gw = gateway()
    problem = form_problem(request)
    if not is_signed_by_twilio(request, gw.validator, gw.settings.public_base_url):
        return _plain(403, "Invalid or missing X-Twilio-Signature.")
    if problem:
        return _plain(400, f"Bad status callback: {problem}.")
    sid = request.form.get("MessageSid", "").strip()
    status = request.form.get("MessageStatus", "").strip()[:32]
    if not sid or not status:
        return _plain(400, "Bad status callback: MessageSid and MessageStatus are required.")
    try:
        cid = gw.store.record_status(sid, status, request.form.get("ErrorCode", "").strip()[:16])
    except RedisError:
        return _plain(503, "Temporarily unable to record status; please retry.")
    log.info("status message=%s status=%s conversation=%s", sid, status, cid or "unknown")
    return _plain(200, "ok")
