"""Campaigns in the admin API: text a list of people, now or at a time, and follow its progress.

``POST /admin/campaigns`` checks the request (a pydantic model: every problem named in one 400), reads each number,
skips those that cannot be texted (with the reason), and stores the campaign, its numbers and its first batch jobs
in one Redis transaction (``core.state.campaigns``): all of it or nothing, whenever the web process dies. The jobs
(``workers.campaigns``) go on the ``sms-campaigns`` queue now, or into RQ's scheduler for ``send_at``. The web
never calls UponAI or Twilio.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from flask import jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from rq import Queue

from core.model import conversation_id
from core.phone_numbers import NumberError, read_number
from core.queues import (
    CAMPAIGN_QUEUE_NAME,
    campaign_batch_job,
    campaign_job_prefix,
    kept_seconds,
    queue_campaign_batch,
)
from core.state.campaigns import COUNTS, MAX_NUMBERS, CampaignStore
from gateway import admin_validation as check
from gateway.admin import AdminProblem, bp
from gateway.admin_jobs import since_epoch
from gateway.context import web_context
from gateway.openapi import Answer, Operation

log = logging.getLogger(__name__)

MAX_CAMPAIGN_BYTES = 16 * 1024 * 1024  # 10,000 numbers with a few variables each fit many times over
MAX_LISTED = 100  # campaigns in one page of GET /admin/campaigns
MAX_OFFSET = 10_000  # campaigns skipped at most (the newest are the ones looked at)
_CAMPAIGN_ID = re.compile(r"^[0-9a-f]{32}$")
CSV_NUMBER_COLUMNS = ("number", "phone", "phone_number", "to")
CSV_FIELDS = ("message", "send_at", "from", "agent_id", "include_in_conversation")


def _problem(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


Variables = dict[Annotated[str, Field(min_length=1, max_length=check.MAX_VARIABLE_NAME_CHARS)],
                 Annotated[str, Field(max_length=check.MAX_VARIABLE_VALUE_CHARS)]]


class CampaignRequest(BaseModel):
    """The body of ``POST /admin/campaigns``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    numbers: list[Any] = Field(min_length=1, max_length=MAX_NUMBERS, examples=[["+14155550100"]], description=(
        f"the people to text (1 to {MAX_NUMBERS}), read like POST /admin/sms's to; one that cannot be read, a "
        "repeat, an opted-out number or one in a live conversation is skipped with its reason"))
    message: str | None = Field(default=None, description=(
        "the first SMS, as written; leave it out to have the agent write each opening"))
    send_at: str | None = Field(default=None, description="ISO 8601 time with its offset; leave it out to send now")
    from_: check.Sender | None = Field(default=None, alias="from", description=(
        "sending number or Messaging Service sid (MG...); default TWILIO_FROM_NUMBER"))
    agent_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    variables: dict[str, Variables] | None = Field(default=None, description=(
        "per-number dynamic variables handed to each new chat: {number: {name: value}}"))
    include_in_conversation: StrictBool = Field(default=False, description=(
        "text numbers that are in a live conversation too (their chat is ended and a new one started)"))

    @field_validator("message")
    @classmethod
    def _message_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise _problem("blank", "must not be blank (leave it out to let the agent write each opening)")
        units = len(value.encode("utf-16-le", "surrogatepass")) // 2
        if units > check.MAX_MESSAGE_CHARS:
            raise _problem("too_long", f"must be at most {check.MAX_MESSAGE_CHARS} characters as Twilio counts "
                                       f"them (UTF-16 code units: an emoji counts 2); it has {units}")
        return value

    @field_validator("send_at")
    @classmethod
    def _send_time(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise _problem("not_a_time", "must be an ISO 8601 time with its offset, e.g. "
                                         "2030-01-31T09:00:00+01:00") from None
        if at.tzinfo is None:
            raise _problem("no_offset", "has no offset: add one (Z or +01:00), so the time is not guessed")
        if at < datetime.now(UTC):
            raise _problem("in_the_past", "is in the past; leave it out to send now")
        return at.astimezone(UTC).isoformat()

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]] | None:
        for number, names in (value or {}).items():
            if len(names) > check.MAX_VARIABLES:
                raise _problem("too_many", f"{number[:40]}: at most {check.MAX_VARIABLES} variables per number")
            if check.RESERVED_VARIABLE in names:
                raise _problem("reserved", f"{number[:40]}.{check.RESERVED_VARIABLE}: is set by the gateway "
                                           "from message")
        return value

    @field_validator("numbers")
    @classmethod
    def _some_number(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        region = (info.context or {}).get("region")
        for number in value:
            try:
                read_number(number, region)
                return value
            except NumberError:
                continue
        raise _problem("no_valid_number", f"holds no valid phone number (all {len(value)} cannot be read); write "
                                          "numbers with + and country code, e.g. +14155550123")


def problems_of(exc: ValidationError) -> list[dict[str, str]]:
    """Each problem of a request as {field, message}, in the admin API's words."""
    found = []
    for error in exc.errors(include_url=False):
        place = [str(part) for part in error["loc"]]
        if error["type"] == "extra_forbidden":
            message = "unknown field; the fields are " + ", ".join(
                info.alias or name for name, info in CampaignRequest.model_fields.items())
        elif error["type"] == "missing":
            message = "is required"
        else:
            message = error["msg"]
        if place[:1] == ["numbers"] and len(place) == 1 and error["type"] == "too_long":
            message = f"has {len(error['input'])} numbers; at most {MAX_NUMBERS} per campaign"
        found.append({"field": ".".join(place) or "body", "message": message})
    return found


def _invalid(problems: list[dict[str, str]]):
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    response = jsonify({"error": {"code": "invalid_request", "message": message, "problems": problems}})
    response.status_code = 400
    return response


def _campaigns() -> CampaignStore:
    web = web_context()
    return CampaignStore.from_settings(web.redis, web.settings)


# -- what Twilio's webhooks tell a campaign --------------------------------------------------------


def note_campaign_status(twilio_sid: str, status: str) -> None:
    """A status callback: a campaign's opening SMS delivered, or failed after it was sent, is counted (once)."""
    _campaigns().note_sms_status(twilio_sid, status)


# -- reading the request --------------------------------------------------------------------------


def _request_body() -> Any:
    """The request as a mapping: a JSON object, or a CSV upload (numbers and variables) with fields in the query."""
    request.max_content_length = MAX_CAMPAIGN_BYTES
    kind = request.mimetype
    if kind in ("text/csv", "application/csv"):
        return _csv_body(request.get_data(cache=False))
    if not request.is_json:
        raise AdminProblem(415, "unsupported_media_type", "Send a JSON object (application/json) or a CSV file "
                                                          "(text/csv).")
    try:
        return check.json_body(request.get_data(cache=False))
    except check.InvalidJson as exc:
        raise AdminProblem(400, "invalid_json", f"The body is not valid JSON: {exc}") from None


def _csv_body(data: bytes) -> dict[str, Any]:
    """A CSV upload: one number a row (the first column, or a column named number or phone); with a header row,
    the other columns are the number's dynamic variables. The other fields come as query parameters."""
    try:
        rows = [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AdminProblem(400, "invalid_csv", f"The body is not a UTF-8 CSV file: {str(exc)[:200]}") from None
    body: dict[str, Any] = {}
    unknown = sorted(name for name in request.args if name not in CSV_FIELDS)
    if unknown:
        raise AdminProblem(400, "invalid_request", f"{', '.join(unknown)[:200]}: unknown query parameter; with a "
                                                   f"CSV body they are {', '.join(CSV_FIELDS)}")
    for name in CSV_FIELDS:
        if name in request.args:
            value = request.args[name]
            body[name] = value.lower() in ("1", "true", "yes") if name == "include_in_conversation" else value
    header = rows[0] if rows and not any(ch.isdigit() for ch in rows[0][0]) else None
    column = 0
    if header is not None:
        names = [cell.strip().lower() for cell in header]
        column = next((names.index(name) for name in CSV_NUMBER_COLUMNS if name in names), 0)
        rows = rows[1:]
    body["numbers"] = [row[column] if column < len(row) else "" for row in rows]
    if header is not None and len(header) > 1:
        body["variables"] = {row[column]: {header[i].strip(): cell for i, cell in enumerate(row)
                                           if i != column and i < len(header) and header[i].strip()}
                             for row in rows if column < len(row)}
    return body


# -- routes ---------------------------------------------------------------------------------------


@bp.post("/campaigns")
def create_campaign():
    body = _request_body()
    web = web_context()
    settings = web.settings
    region = settings.default_phone_region
    try:
        asked = CampaignRequest.model_validate(body, context={"region": region, "settings": settings})
    except ValidationError as exc:
        return _invalid(problems_of(exc))
    key = check.idempotency_key(request.headers, check.OutboundHeaders)
    gateway_number, service = check.sender_of(asked.from_, settings)
    campaigns = _campaigns()
    fingerprint = check.fingerprint(body)
    idem_name = campaigns.idempotency_key(key) if key is not None else None
    if idem_name is not None and (earlier := _earlier(campaigns, idem_name, fingerprint)) is not None:
        return earlier

    accepted, skipped = _recipients(asked, gateway_number, region, settings)
    variables, problems = _variables_of(asked, accepted, region)
    if problems:
        return _invalid(problems)
    send_at = datetime.fromisoformat(asked.send_at) if asked.send_at else None
    campaign_id = uuid.uuid4().hex
    now = time.time()
    batches = math.ceil(len(accepted) / settings.campaign_batch_size)
    parallel = min(settings.campaign_parallel_batches, batches)
    status = "done" if not accepted else "scheduled" if send_at is not None else "sending"
    answer = {"campaign_id": campaign_id, "status": status, "accepted": len(accepted), "skipped": skipped}
    fields = {"status": status, "created_at": f"{now:.3f}", "send_at": f"{send_at.timestamp():.3f}" if send_at else "",
              "gateway": gateway_number, "messaging_service_sid": service or "", "message": asked.message or "",
              "agent_id": asked.agent_id or "",
              "include_in_conversation": "1" if asked.include_in_conversation else "0",
              "accepted": str(len(accepted)), "batches": str(batches), "batch_size": str(settings.campaign_batch_size),
              "parallel": str(parallel), "skipped": str(len(skipped)), "answer": _json(answer)}
    if not accepted:
        fields["finished_at"] = f"{now:.3f}"
    delay = max(0.0, send_at.timestamp() - now) if send_at else 0.0
    ttl_seconds = int(settings.data_retention_seconds + delay)
    queue = Queue(CAMPAIGN_QUEUE_NAME, connection=web.redis)
    jobs = [campaign_batch_job(queue, settings, campaign_id, batch) for batch in range(parallel)]

    def enqueue(pipe) -> None:
        for job in jobs:
            queue_campaign_batch(queue, job, at=send_at, pipeline=pipe)

    idempotency = ((idem_name, {"fingerprint": fingerprint, "campaign_id": campaign_id},
                    kept_seconds(settings, settings.admin_idempotency_ttl_seconds)) if idem_name else None)
    if not campaigns.create(campaign_id, fields, accepted, variables, ttl_seconds=ttl_seconds,
                            idempotency=idempotency, enqueue=enqueue):
        # Another request with this key stored its campaign meanwhile: that one is the campaign.
        earlier = _earlier(campaigns, idem_name, fingerprint)
        if earlier is None:
            raise AdminProblem(409, "idempotency_key_busy", "Requests with this Idempotency-Key raced; retry with "
                                                            "the same key.")
        return earlier
    log.info("admin campaign=%s %s accepted=%d skipped=%d batches=%d", campaign_id, status, len(accepted),
             len(skipped), batches)
    return jsonify(answer), 202


def _earlier(campaigns: CampaignStore, idem_name: str, fingerprint: str):
    """The answer to an earlier request with this Idempotency-Key, or None if there was none."""
    record = campaigns.idempotency_record(idem_name)
    if record is None:
        return None
    if record.get("fingerprint") != fingerprint:
        raise AdminProblem(422, "idempotency_key_reused", "This Idempotency-Key was used with a different request.")
    stored = campaigns.campaign(record["campaign_id"])
    if not stored.get("answer"):
        raise AdminProblem(404, "campaign_not_found", "The campaign of this Idempotency-Key is no longer kept.")
    return jsonify(json.loads(stored["answer"])), 202


def _recipients(asked: CampaignRequest, gateway_number: str, region: str | None,
                settings) -> tuple[list[str], list[dict[str, str]]]:
    """The numbers to text, in order, and those skipped with their reason."""
    accepted: list[str] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for raw in asked.numbers:
        try:
            number = read_number(raw, region)
        except NumberError:
            skipped.append({"number": str(raw)[:64], "reason": "invalid_number"})
            continue
        if number in seen:
            skipped.append({"number": number, "reason": "duplicate"})
            continue
        seen.add(number)
        accepted.append(number)
    store = web_context().store
    cids = [conversation_id(gateway_number, number) for number in accepted]
    opted_out = store.opted_out_among(cids)
    live = set() if asked.include_in_conversation else store.live_among(cids, settings.chat_idle_timeout_seconds)
    kept = []
    for number, cid in zip(accepted, cids, strict=True):
        if cid in opted_out:
            skipped.append({"number": number, "reason": "opted_out"})
        elif cid in live:
            skipped.append({"number": number, "reason": "in_conversation"})
        else:
            kept.append(number)
    return kept, skipped


def _variables_of(asked: CampaignRequest, accepted: list[str], region: str | None
                  ) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The variables of the accepted numbers (number -> JSON), and a problem for each key that is no listed number."""
    found: dict[str, str] = {}
    problems = []
    listed = set(accepted)
    as_written = {raw for raw in asked.numbers if isinstance(raw, str)}
    known = {read_number_or_none(raw, region) for raw in asked.numbers}
    for raw, names in (asked.variables or {}).items():
        number = read_number_or_none(raw, region)
        if number is None:
            if raw not in as_written:  # the variables of a listed number that is skipped as invalid are left out
                problems.append({"field": f"variables.{raw[:40]}", "message": "is not one of numbers"})
        elif number not in known:
            problems.append({"field": f"variables.{raw[:40]}", "message": "is not one of numbers"})
        elif number in listed and names:
            found[number] = _json(names)
    return found, problems


def read_number_or_none(raw: Any, region: str | None) -> str | None:
    try:
        return read_number(raw, region)
    except NumberError:
        return None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def campaign_view(campaign_id: str, stored: dict[str, str]) -> dict[str, Any]:
    """The campaign as the admin API shows it: status, counts and times (no numbers, no message text)."""
    return {
        "campaign_id": campaign_id,
        "status": stored.get("status"),
        "from": stored.get("gateway"),
        "accepted": int(stored.get("accepted") or 0),
        "counts": {name: max(0, int(stored.get(name) or 0)) for name in COUNTS},
        "opening_generated": not stored.get("message"),
        "created_at": since_epoch(stored.get("created_at")),
        "send_at": since_epoch(stored.get("send_at")) or since_epoch(stored.get("created_at")),
        "finished_at": since_epoch(stored.get("finished_at")),
        "cancelled_at": since_epoch(stored.get("cancelled_at")),
    }


def _campaign_id(value: str) -> str:
    if not _CAMPAIGN_ID.fullmatch(value):
        raise AdminProblem(404, "campaign_not_found", "No campaign with this id is known (ids are 32 hex digits).")
    return value


@bp.get("/campaigns/<campaign_id>")
def show_campaign(campaign_id: str):
    stored = _campaigns().campaign(_campaign_id(campaign_id))
    if not stored:
        raise AdminProblem(404, "campaign_not_found", "No campaign with this id is known.")
    return jsonify(campaign_view(campaign_id, stored))


@bp.get("/campaigns")
def list_campaigns():
    query = check.checked(CampaignsQuery, check.present(request.args, CampaignsQuery))
    limit, offset = query.limit, query.offset
    campaigns = _campaigns()
    views, gone = [], []
    for campaign_id in campaigns.campaign_ids(offset, limit):
        stored = campaigns.campaign(campaign_id)
        if stored:
            views.append(campaign_view(campaign_id, stored))
        else:
            gone.append(campaign_id)
    campaigns.forget_expired(gone)
    return jsonify({"campaigns": views})


@bp.post("/campaigns/<campaign_id>/cancel")
def cancel_campaign(campaign_id: str):
    campaigns = _campaigns()
    status = campaigns.cancel(_campaign_id(campaign_id))
    if status is None:
        raise AdminProblem(404, "campaign_not_found", "No campaign with this id is known.")
    if status != "cancelled":
        raise AdminProblem(409, "campaign_finished", f"The campaign is {status}; nothing is left to stop.")
    dropped = _drop_scheduled_jobs(campaign_id)
    log.info("admin campaign=%s cancelled (scheduled jobs dropped: %d)", campaign_id, dropped)
    return jsonify(campaign_view(campaign_id, campaigns.campaign(campaign_id)))


def _drop_scheduled_jobs(campaign_id: str) -> int:
    """Take the campaign's batch jobs waiting in RQ's scheduler away (they would only find it cancelled), so that
    rq info and rq-dashboard stop showing them; returns how many."""
    queue = Queue(CAMPAIGN_QUEUE_NAME, connection=web_context().redis)
    registry = queue.scheduled_job_registry
    dropped = 0
    for job_id in registry.get_job_ids():
        if job_id.startswith(campaign_job_prefix(campaign_id)):
            registry.remove(job_id, delete_job=True)
            dropped += 1
    return dropped


# -- the routes' description (joins the admin API's OpenAPI document: gateway.app) ---------------------------


class CampaignPath(check.Parameters):
    campaign_id: str = Field(description="The campaign's id (32 hex digits); any other is a 404.",
                             examples=["9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d"])


class CampaignsQuery(check.Parameters):
    limit: check.whole_number(1, MAX_LISTED) = Field(20, description="Campaigns in the page.")
    offset: check.whole_number(0, MAX_OFFSET) = Field(0, description="Campaigns to skip, newest first.")


class Skipped(BaseModel):
    number: str
    reason: Literal["invalid_number", "duplicate", "opted_out", "in_conversation"]


class CampaignAccepted(BaseModel):
    campaign_id: str
    status: Literal["scheduled", "sending", "done"]
    accepted: int
    skipped: list[Skipped]


class CampaignCounts(BaseModel):
    queued: int = Field(description="not texted yet (after a cancel: never will be)")
    sent: int = Field(description="accepted by Twilio")
    delivered: int = Field(description="from status callbacks")
    failed: int = Field(description="from status callbacks, and refusals")
    skipped: int = Field(description="at the request or at sending time")
    replied: int = Field(description="texted back")


class Campaign(BaseModel):
    campaign_id: str
    status: Literal["scheduled", "sending", "done", "cancelled"]
    from_: str | None = Field(None, alias="from")
    accepted: int
    counts: CampaignCounts
    opening_generated: bool
    created_at: str | None = None
    send_at: str | None = None
    finished_at: str | None = None
    cancelled_at: str | None = None


class CampaignList(BaseModel):
    campaigns: list[Campaign]


if set(CampaignCounts.model_fields) != set(COUNTS):
    raise RuntimeError("CampaignCounts must name every count of core.state.campaigns.COUNTS")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/admin/campaigns", "startCampaign", "Text a list of people, now or at a time (a campaign)",
        description="Each accepted number's first SMS starts its conversation as POST /admin/sms does, at "
                    "CAMPAIGN_SEND_RATE per sender. A CSV file (text/csv) may be sent instead of JSON: a number a "
                    "row, with a header row the other columns are each number's variables, and the other fields "
                    "as query parameters.",
        headers=check.OutboundHeaders, body=CampaignRequest,
        body_example={"numbers": ["+14155550100", "+14155550101"], "message": "Your visit is tomorrow."},
        answers={202: Answer("Accepted: queued, or scheduled.", (CampaignAccepted,))}, errors=(409, 413, 415, 422)),
    Operation(
        "get", "/admin/campaigns", "listCampaigns", "The latest campaigns, newest first", query=CampaignsQuery,
        answers={200: Answer("Campaigns with their counts.", (CampaignList,))}),
    Operation(
        "get", "/admin/campaigns/{campaign_id}", "showCampaign", "A campaign's status and counts",
        path_params=CampaignPath, answers={200: Answer("The campaign.", (Campaign,))}),
    Operation(
        "post", "/admin/campaigns/{campaign_id}/cancel", "cancelCampaign", "Stop what a campaign has not sent yet",
        description="A send already in flight may still go out. 409 `campaign_finished` once it is done.",
        path_params=CampaignPath, answers={200: Answer("Cancelled.", (Campaign,))}, errors=(409,)),
)
