"""The admin API (JSON under ``/admin``) for operators and their tools.

Registered only while ADMIN_API_TOKEN is set, so every ``/admin`` path answers 404 when it is not.
Each route but ``GET /admin/openapi.json`` needs ``Authorization: Bearer $ADMIN_API_TOKEN`` (compared
in constant time; 401 otherwise). Every failure answers ``{"error": {"code": ..., "message": ...}}``.
Local state is read from Redis here; whatever needs UponAI or Twilio runs as a worker job
(``gateway.admin_jobs``).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from werkzeug.routing import PathConverter

from core.events import emit_event
from core.model import conversation_id
from core.queues import (
    ADMIN_QUEUE_NAME,
    CAMPAIGN_QUEUE_NAME,
    CLOSE_IDLE_JOB,
    DRAIN_JOB,
    EVENTS_QUEUE_NAME,
    QUEUE_NAME,
    enqueue_drain,
)
from core.redaction import mask_number
from core.state.keys import CHANNEL_ADDRESS, bare_address
from gateway import admin_validation as check
from gateway.admin_jobs import (
    AdminBusy,
    AdminJobs,
    IdempotencyBusy,
    IdempotencyConflict,
    Outcome,
    failure_reason,
    since_epoch,
)
from gateway.context import web_context
from gateway.failed_jobs import messages_view
from gateway.openapi import admin_openapi
from gateway.responses import error_response

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")

GATEWAY_QUEUES = (QUEUE_NAME, ADMIN_QUEUE_NAME, EVENTS_QUEUE_NAME, CAMPAIGN_QUEUE_NAME)
PER_CONVERSATION_JOBS = (DRAIN_JOB, CLOSE_IDLE_JOB)
TIME_FIELDS = ("chat_started_at", "last_activity_at", "last_inbound_at", "last_outbound_at", "opted_out_at",
               "last_empty_turn_at")


class AnyTextConverter(PathConverter):
    """Like ``path``, but also matches control characters, so odd input reaches the check (400, not 404)."""

    regex = r"[\s\S]+?"
    part_isolating = False


class AdminProblem(Exception):
    """Answer the request with this status and error."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def init_app(app: Flask, extra_operations: tuple = ()) -> None:
    """Turn the admin API on when ADMIN_API_TOKEN is set (``extra_operations``: more routes' descriptions, for
    the OpenAPI document: gateway.openapi.Operation)."""
    web = app.extensions["sms_gateway"]
    if not web.settings.admin_api_token:
        return
    app.extensions["sms_gateway_admin"] = AdminJobs(web.settings, web.redis, web.store)
    # Generated from the models (tens of ms): once per app, not per request of a route anyone may call.
    app.extensions["sms_gateway_admin_openapi"] = admin_openapi(extra=extra_operations)
    app.url_map.converters["anytext"] = AnyTextConverter
    app.register_blueprint(bp)


def _jobs() -> AdminJobs:
    from flask import current_app

    return current_app.extensions["sms_gateway_admin"]


def _once(start):
    """Run ``start`` (an idempotent job start) and turn a key reused or raced into the operator's 4xx."""
    try:
        return start()
    except IdempotencyConflict:
        raise AdminProblem(422, "idempotency_key_reused",
                           "This Idempotency-Key was used with a different request.") from None
    except IdempotencyBusy:
        raise AdminProblem(409, "idempotency_key_busy",
                           "Requests with this Idempotency-Key kept racing; retry with the same key.") from None


@bp.errorhandler(AdminProblem)
def _problem(exc: AdminProblem):
    return error_response(exc.status, exc.code, exc.message, exc.headers)


@bp.errorhandler(check.InvalidInput)
def _invalid(exc: check.InvalidInput):
    return error_response(400, "invalid_request", str(exc))


@bp.errorhandler(AdminBusy)
def _busy(exc: AdminBusy):
    places = web_context().settings.admin_max_waiting
    return error_response(503, "admin_busy", f"{places} admin request(s) are already waiting for a worker in this web "
                                     "process (ADMIN_MAX_WAITING); try again shortly.", {"Retry-After": "1"})


@bp.errorhandler(RedisError)
def _redis_down(exc: RedisError):
    route = request.url_rule.rule if request.url_rule is not None else "-"  # the path may hold a number
    log.error("admin %s %s: Redis unavailable (%s)", request.method, route, type(exc).__name__)
    return error_response(503, "redis_unavailable", "Redis is unreachable; try again shortly.")


@bp.before_request
def _require_token():
    if request.endpoint == "admin.openapi":
        return None
    expected = web_context().settings.admin_api_token.encode()
    header = request.headers.get("Authorization", "")
    scheme, _, provided = header.partition(" ")
    if scheme.lower() == "bearer" and provided.strip():
        if hmac.compare_digest(provided.strip().encode(), expected):
            return None
        # RFC 6750: a token was sent and is not this one (nothing about it is echoed back).
        return error_response(401, "unauthorized", "The bearer token is not this gateway's ADMIN_API_TOKEN: "
                                                   "send the token the web process was started with.",
                              {"WWW-Authenticate": 'Bearer realm="sms-gateway admin", error="invalid_token"'})
    if not header.strip():
        said = "No Authorization header was sent"
    elif scheme.lower() == "bearer":
        said = "The Authorization header has no token"
    else:
        said = "The Authorization header is not a bearer token"
    return error_response(401, "unauthorized", f"{said}: send Authorization: Bearer <ADMIN_API_TOKEN>.",
                          {"WWW-Authenticate": 'Bearer realm="sms-gateway admin"'})


def _json_body() -> Any:
    if not request.is_json:
        raise AdminProblem(415, "unsupported_media_type", "Send a JSON object with Content-Type: application/json.")
    try:
        return check.json_body(request.get_data(cache=False))
    except check.InvalidJson as exc:
        raise AdminProblem(400, "invalid_json", f"The body is not valid JSON: {exc}") from None


def _unfinished(outcome, **context):
    """The answer for a job that did not end well (no worker took it, still running, or failed), else None."""
    if outcome.state == "not_started":
        return _worker_timeout()
    if outcome.state in ("running", "queued"):
        return _running(outcome, **context)
    if "error" in outcome.value:
        return _job_error(outcome.value)
    return None


def _worker_timeout():
    seconds = web_context().settings.admin_wait_seconds
    return error_response(504, "worker_timeout", f"No worker took the job within {seconds:g} s, so nothing was done; "
                                         f"is a worker running on the {ADMIN_QUEUE_NAME} queue?")


def _running(outcome: Outcome, **extra: Any):
    """202 for a job still running at the deadline, or queued without waiting (every place to wait was taken)."""
    return jsonify({"status": outcome.state, "job_id": outcome.job_id, "job_url": f"/admin/jobs/{outcome.job_id}",
                    **extra}), 202


def _job_error(value: dict[str, Any]):
    error = value["error"]
    return error_response(int(error.get("status", 502)), error.get("code", "job_failed"), error.get("message", ""))


# -- outbound -------------------------------------------------------------------------------------


@bp.post("/sms")
def start_sms():
    body = _json_body()
    web = web_context()
    outbound = check.outbound_request(body, web.settings)
    key = check.idempotency_key(request.headers, check.OutboundHeaders)
    cid = conversation_id(outbound["gateway"], outbound["to"])

    def may_start() -> None:
        if web.store.conversation(cid).get("opted_out") == "1":
            raise AdminProblem(409, "opted_out", "The number has opted out (STOP); it must text START first.")

    outcome = _once(lambda: _jobs().start_outbound(outbound, cid, idempotency_key=key,
                                                   fingerprint=check.fingerprint(body), may_start=may_start))
    log.info("admin outbound to=%s conversation=%s %s job=%s", mask_number(outbound["to"]), cid, outcome.state,
             outcome.job_id)
    unfinished = _unfinished(outcome, conversation_id=cid)
    if unfinished is not None:
        return unfinished
    return jsonify({"status": "sent", "job_id": outcome.job_id, **outcome.value["ok"]}), 202


# -- conversations --------------------------------------------------------------------------------


def _conversation_id(number: str) -> tuple[str, str, str]:
    """The conversation a path's ``<number>`` names (with the ``from`` query's gateway number): a number
    (``+14155550100``: SMS) or a channel address (``whatsapp:+14155550100``: that channel, with the gateway's
    number on the same channel)."""
    channel = CHANNEL_ADDRESS.fullmatch(number)
    person, gateway_number = check.conversation(channel[2] if channel else number, request.args,
                                                web_context().settings)
    if channel:
        person = f"{channel[1]}:{person}"
        if gateway_number.startswith("+"):  # (a Messaging Service picks the channel's sender itself)
            gateway_number = f"{channel[1]}:{gateway_number}"
    return conversation_id(gateway_number, person), person, gateway_number


@bp.get("/conversations/<anytext:number>")
def show_conversation(number: str):
    cid, person, gateway_number = _conversation_id(number)
    store = web_context().store
    state = store.conversation(cid)
    recent = store.recent_sent(cid)
    if not state and not recent:
        raise AdminProblem(404, "conversation_not_found", "No conversation between these numbers is known.")
    view: dict[str, Any] = {
        "conversation_id": cid,
        "person": state.get("person", person),
        "gateway": state.get("gateway", gateway_number),
        "messaging_service_sid": state.get("messaging_service_sid"),
        "chat_id": state.get("chat_id"),
        "agent_id": state.get("agent_id"),
        "opted_out": state.get("opted_out") == "1",
        **{name: since_epoch(state.get(name)) for name in TIME_FIELDS},
        "empty_turns": int(state.get("empty_turns") or 0),  # agent turns with no text: nothing was sent
        "waiting_messages": store.inbox_length(cid),
        "busy": store.lock_holder(cid) is not None,
        "loop_breaker": _loop_breaker_view(state),
        "handoff": _handoff_view(state),
        "away_log": [_away_view(entry) for entry in store.away_log(cid)],
        "recent_messages": [_sent_view(row) for row in recent],
        # Which texts (MessageSids, in order) each of the latest agent turns answered, newest first.
        "turns": [{"texts": turn.get("sids", []), "at": since_epoch(turn.get("at"))}
                  for turn in store.recent_turns(cid)],
        "chat": None,
    }
    if view["chat_id"]:
        try:
            outcome = _jobs().run("workers.admin_ops.get_chat_job", (view["chat_id"],),
                                  description=f"admin: get chat of conversation {cid}", conversation_id=cid)
        except AdminBusy:
            outcome = None
        if outcome is None:
            view["chat_error"] = {"code": "admin_busy", "message": "Too many admin requests are waiting for a "
                                                                   "worker; the chat was not read."}
        elif outcome.state != "done":
            view["chat_error"] = {"code": "worker_timeout", "message": "No worker answered in time with the chat."}
        elif "error" in outcome.value:
            error = outcome.value["error"]
            view["chat_error"] = {"code": error.get("code", "job_failed"), "message": error.get("message", "")}
        else:
            view["chat"] = outcome.value["ok"]
    return jsonify(view)


def _loop_breaker_view(state: dict[str, str]) -> dict[str, Any] | None:
    """The loop breaker's state: None until it first opens."""
    if not state.get("loop_breaker_at"):
        return None
    until = float(state.get("loop_breaker_until") or 0)
    return {"open": time.time() < until, "opened_at": since_epoch(state["loop_breaker_at"]),
            "until": since_epoch(until) if until else None, "held_messages": int(state.get("loop_held") or 0)}


def _sent_view(row: dict[str, str]) -> dict[str, Any]:
    segments = row.get("segments")
    return {
        "sid": row.get("sid"),
        "status": row.get("status"),
        "error_code": row.get("error_code"),
        "sent_at": since_epoch(row.get("sent_at")),
        "status_at": since_epoch(row.get("status_at")),
        "part": row.get("part"),
        "segments": int(segments) if segments and segments.isdigit() else None,
        "encoding": row.get("encoding"),
    }


# -- a human takes over ---------------------------------------------------------------------------

HANDED_BY = "admin-api"


def _known_conversation(cid: str) -> dict[str, str]:
    state = web_context().store.conversation(cid)
    if not state:
        raise AdminProblem(404, "conversation_not_found", "No conversation between these numbers is known.")
    return state


def _handoff_view(state: dict[str, str]) -> dict[str, Any]:
    active = state.get("handoff") == "1"
    return {"active": active, "since": since_epoch(state.get("handoff_at")) if active else None,
            "by": state.get("handoff_by") if active else None}


def _away_view(entry: dict[str, Any]) -> dict[str, Any]:
    return {"who": entry.get("who"), "text": entry.get("text"), "at": since_epoch(entry.get("at")),
            "ref": entry.get("ref"), "heard_by_agent": bool(entry.get("heard_by_agent"))}


def _handoff_answer(cid: str, changed: bool):
    store = web_context().store
    state = store.conversation(cid)
    return jsonify({"conversation_id": cid, "changed": changed, "handoff": _handoff_view(state),
                    # A turn already running when the agent was stopped may still send its reply.
                    "turn_running": store.lock_holder(cid) is not None,
                    "away_log": [_away_view(entry) for entry in store.away_log(cid)]})


def _handoff_event(kind: str, cid: str, person: str, state: dict[str, str], at: str) -> None:
    web = web_context()
    emit_event(web.redis, web.settings, kind, event_id=f"{kind}:{cid}:{at}", conversation_id=cid,
               number=state.get("person", person), by=HANDED_BY)


@bp.post("/conversations/<anytext:number>/handoff")
def start_handoff(number: str):
    cid, person, _ = _conversation_id(number)
    state = _known_conversation(cid)
    store = web_context().store
    changed = store.start_handoff(cid, HANDED_BY)
    if changed:
        _handoff_event("handoff.started", cid, person, state, store.conversation(cid).get("handoff_at", ""))
        log.info("conversation=%s handed off to an operator", cid)
    return _handoff_answer(cid, changed)


@bp.post("/conversations/<anytext:number>/resume")
def resume_agent(number: str):
    cid, person, _ = _conversation_id(number)
    state = _known_conversation(cid)
    web = web_context()
    changed = web.store.end_handoff(cid)
    if changed:
        _handoff_event("handoff.ended", cid, person, state, state.get("handoff_at", ""))
        log.info("conversation=%s given back to the agent", cid)
    if web.store.inbox_length(cid):  # texts waiting: the agent answers them now, with what it missed
        enqueue_drain(web.queue, cid, web.settings)
    return _handoff_answer(cid, changed)


@bp.post("/conversations/<anytext:number>/messages")
def operator_message(number: str):
    body = _json_body()
    cid, person, gateway_number = _conversation_id(number)
    text = check.operator_message(body)
    key = check.idempotency_key(request.headers, check.OperatorMessageHeaders)
    state = _known_conversation(cid)
    web = web_context()
    message = {"to": state.get("person", person), "gateway": state.get("gateway", gateway_number),
               "messaging_service_sid": state.get("messaging_service_sid") or None, "message": text}

    def may_start() -> None:
        if web.store.conversation(cid).get("opted_out") == "1":
            raise AdminProblem(409, "opted_out", "The number has opted out (STOP); nothing was sent. It must text "
                                                 "START first.")

    # The conversation is part of the fingerprint: one key sends one message into one conversation.
    outcome = _once(lambda: _jobs().send_message(message, cid, idempotency_key=key, may_start=may_start,
                                                 fingerprint=check.fingerprint({"conversation_id": cid,
                                                                                "message": text})))
    log.info("admin operator message to=%s conversation=%s %s job=%s", mask_number(message["to"]), cid,
             outcome.state, outcome.job_id)
    unfinished = _unfinished(outcome, conversation_id=cid)
    if unfinished is not None:
        return unfinished
    return jsonify({"status": "sent", "job_id": outcome.job_id, **outcome.value["ok"]}), 202


@bp.post("/conversations/<anytext:number>/end")
def end_conversation(number: str):
    cid, _, _ = _conversation_id(number)
    if not web_context().store.conversation(cid):
        raise AdminProblem(404, "conversation_not_found", "No conversation between these numbers is known.")
    outcome = _jobs().run("workers.admin_ops.end_conversation_job", (cid, uuid.uuid4().hex),
                          description=f"admin: end conversation {cid}", conversation_id=cid, queue_when_busy=True)
    unfinished = _unfinished(outcome, conversation_id=cid)
    if unfinished is not None:
        return unfinished
    return jsonify({"status": "ended", **outcome.value["ok"]})


@bp.delete("/conversations/<anytext:number>")
def erase_conversation(number: str):
    cid, person, gateway_number = _conversation_id(number)
    # A bare number is the person on every channel (and gateway number, unless ``from`` names one).
    everywhere = (person, bare_address(gateway_number) if request.args.get("from") else None) \
        if person == bare_address(person) else (None, None)
    outcome = _jobs().run("workers.admin_ops.erase_conversation_job", (cid, uuid.uuid4().hex, *everywhere),
                          description=f"admin: erase conversation {cid}", conversation_id=cid,
                          queue_when_busy=True)
    unfinished = _unfinished(outcome, conversation_id=cid)
    if unfinished is not None:
        return unfinished
    return jsonify({"status": "erased", **outcome.value["ok"]})


# -- UponAI chats ---------------------------------------------------------------------------------


@bp.get("/chats")
def list_chats():
    query = check.checked(check.ChatsQuery, check.present(request.args, check.ChatsQuery))
    outcome = _jobs().run("workers.admin_ops.list_chats_job", (query.limit, query.sort_order, query.pagination_key),
                          description="admin: list chats")
    if outcome.state != "done":
        if outcome.state == "running":
            return error_response(504, "worker_timeout", "The worker did not finish listing chats in time; try again.")
        return _worker_timeout()
    if "error" in outcome.value:
        return _job_error(outcome.value)
    return jsonify(outcome.value["ok"])


# -- jobs -----------------------------------------------------------------------------------------


@bp.get("/jobs/<job_id>")
def show_job(job_id: str):
    view = _jobs().status(check.job_id(job_id))
    if view is None:
        raise AdminProblem(404, "job_not_found", "No admin job with this id is known (results are kept a day).")
    return jsonify(view)


@bp.get("/failed")
def list_failed():
    limit = check.checked(check.FailedQuery, check.present(request.args, check.FailedQuery)).limit
    redis = web_context().redis
    rows: list[dict[str, Any]] = []
    total = 0
    for name in GATEWAY_QUEUES:
        registry = FailedJobRegistry(name, connection=redis)
        total += registry.count
        for job_id in registry.get_job_ids(0, limit - 1, desc=True):
            row = _failed_view(job_id, name, redis)
            if row is not None:
                rows.append(row)
    rows.sort(key=lambda row: row["failed_at"] or "", reverse=True)
    return jsonify({"jobs": rows[:limit], "total": total})


def _failed_view(job_id: str, queue_name: str, redis) -> dict[str, Any] | None:
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return None
    result = job.latest_result()
    func = job.func_name
    cid = job.meta.get("conversation_id")
    if cid is None and func in PER_CONVERSATION_JOBS and job.args:
        cid = job.args[0]
    return {
        "job_id": job.id,
        "queue": queue_name,
        "function": func,
        "description": job.description,
        "conversation_id": cid,
        "reason": failure_reason(result.exc_string if result is not None else None),
        "enqueued_at": job.enqueued_at.strftime("%Y-%m-%dT%H:%M:%SZ") if job.enqueued_at else None,
        "failed_at": job.ended_at.strftime("%Y-%m-%dT%H:%M:%SZ") if job.ended_at else None,
        **messages_view(web_context().store, job),
    }


@bp.post("/failed/<job_id>/requeue")
def requeue_failed(job_id: str):
    check.job_id(job_id)
    redis = web_context().redis
    for name in GATEWAY_QUEUES:
        registry = FailedJobRegistry(name, connection=redis)
        if job_id in registry:
            try:
                registry.requeue(job_id)
            except (InvalidJobOperation, NoSuchJobError):
                break  # requeued by someone else meanwhile, or expired
            log.info("admin requeued failed job=%s queue=%s", job_id, name)
            return jsonify({"status": "queued", "job_id": job_id, "queue": name,
                            "queue_depth": Queue(name, connection=redis).count})
    raise AdminProblem(404, "failed_job_not_found", "No failed job with this id is in the gateway's queues.")


# -- description ----------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi():
    from flask import current_app

    return jsonify(current_app.extensions["sms_gateway_admin_openapi"])
