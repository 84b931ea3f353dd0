"""The admin API's requests, declared once: every problem is an InvalidInput naming each field that is wrong.

Each request (a JSON body, a path, a query string, a header) is a pydantic v2 model. pydantic because one
declaration yields both views: the model validates the request, and its JSON Schema (draft 2020-12, the
dialect of OpenAPI 3.1) goes into ``GET /admin/openapi.json`` (gateway.openapi), so the document cannot
say one thing while the checks do another. pydantic's own error wording names no field and no rule we
promised, so each field carries its wording (``Says``), and ``invalid_input`` turns a ValidationError
into the one 400 message the API has always given: ``"<field>: <problem>"``, each problem once.

What JSON Schema cannot say is checked here too, in validators given the settings through pydantic's
validation context: phone numbers (core.phone_numbers, with DEFAULT_PHONE_REGION), Twilio's count of a
message in UTF-16 code units, the reserved variable name, metadata's size as JSON. What concerns the
bytes before there is a value (strict JSON, depth, repeated names, lone surrogates) stays in
``json_body``: a 400 ``invalid_json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from core.phone_numbers import NumberError, read_number

MAX_MESSAGE_CHARS = 1600  # Twilio's limit for one message body, in UTF-16 code units (an emoji is 2; error 21617)
MAX_VARIABLES = 50
MAX_VARIABLE_NAME_CHARS = 100
MAX_VARIABLE_VALUE_CHARS = 2000
MAX_METADATA_BYTES = 4096
MAX_PAGINATION_KEY_CHARS = 512
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_PROBLEMS_SHOWN = 10  # a body of 1,000 wrong variables gets a 400 of ten lines' worth, not a thousand
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; a real request needs a handful
RESERVED_VARIABLE = "opening_message"

# Patterns as JSON Schema writes them (ECMA 262: ``$`` is the end of the text, as in pydantic's Rust regex).
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PRINTABLE_PATTERN = r"^[\x21-\x7e]+$"  # printable ASCII, no spaces
NOT_BLANK_PATTERN = r"\S"
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_WHOLE = re.compile(r"^[0-9]{1,9}$")


class InvalidJson(ValueError):
    """The body is not JSON the admin API accepts; the message says why."""


class InvalidInput(ValueError):
    """Request fields are missing or invalid: ``problems`` holds ``(field, problem)`` pairs, the message all of
    them (``"to: is required; agent_id: must be ..."``)."""

    def __init__(self, field: str, problem: str, *more: tuple[str, str]):
        self.problems = ((field, problem), *more)
        shown = "; ".join(f"{name}: {text}" for name, text in self.problems[:MAX_PROBLEMS_SHOWN])
        hidden = len(self.problems) - MAX_PROBLEMS_SHOWN
        super().__init__(shown + (f"; and {hidden} more" if hidden > 0 else ""))
        self.field = field


def json_body(data: bytes) -> Any:
    """The parsed body: strict JSON (no NaN or Infinity, no number too large for a float), nested at most
    MAX_JSON_DEPTH deep. Raises InvalidJson."""
    try:
        body = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_without_repeated_names)
    except RecursionError:
        raise InvalidJson(f"it is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and the refusals above
        raise InvalidJson(str(exc)[:200]) from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise InvalidJson(f"it is nested more than {MAX_JSON_DEPTH} levels deep")
    if surrogate := _lone_surrogate(body):
        # JSON's \ud800 escapes can spell half of a UTF-16 pair alone: no character, and no SMS or agent text can
        # carry it (encoding it fails far from here, in the worker).
        raise InvalidJson(f"it holds text that is not valid Unicode (a lone surrogate \\u{ord(surrogate):04x})")
    return body


def _without_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refused when a name appears twice ({"to": A, "to": B}: which one was meant is not ours to guess;
    RFC 8259 section 4 leaves it to the receiver, and "last one wins" sends to a number nobody checked)."""
    body: dict[str, Any] = {}
    for name, value in pairs:
        if name in body:
            raise ValueError(f'the name "{name[:40]}" appears more than once in one object')
        body[name] = value
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is too large")
    return number


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in any string (or object name) of ``value``, else None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if found := _SURROGATE.search(item):
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _depth(value: Any) -> int:
    """How deeply arrays and objects are nested in ``value`` (without recursion: the input is untrusted)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


# -- how problems are worded ----------------------------------------------------------------------


class Says:
    """How a field's problems read: ``otherwise``, unless ``when`` has a wording for the pydantic error type, or
    for ``"[key]"``/``"[value]"`` (an object's names or values). A field that is absent or null "is required";
    a validator's own PydanticCustomError keeps its message, and may name the field in its ``field`` context."""

    def __init__(self, otherwise: str, when: Mapping[str, str] | None = None):
        self.otherwise, self.when = otherwise, dict(when or {})

    def problem(self, error: Mapping[str, Any]) -> str:
        kind, loc = error["type"], error["loc"]
        if len(loc) == 1 and (kind == "missing" or error.get("input", "") is None):
            return "is required"
        if kind in self.when:
            return self.when[kind]
        if kind in OWN_ERRORS:
            return error["msg"]
        part = "[key]" if loc[-1] == "[key]" else "[value]" if len(loc) > 1 else None
        return self.when.get(part, self.otherwise) if part else self.otherwise


OWN_ERRORS = frozenset({"phone_number", "blank", "too_long_for_twilio", "reserved", "too_large", "not_plain_json"})
_ANYWAY = Says("is invalid")


def own_error(kind: str, message: str, field: str | None = None) -> PydanticCustomError:
    """A problem in our words; ``field`` names it when the location would not (a reserved object name)."""
    # PydanticCustomError fills {name} placeholders from its context: braces in the message are escaped.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"), {"field": field} if field else {})


def says(model: type[BaseModel], name: str) -> Says:
    """The wording of the field named ``name`` (its alias) in ``model``: its ``Says``, also inside ``X | None``."""
    for field_name, info in model.model_fields.items():
        if name in (field_name, info.alias):
            found = [item for item in info.metadata if isinstance(item, Says)]
            for member in typing.get_args(info.annotation):
                found += [item for item in getattr(member, "__metadata__", ()) if isinstance(item, Says)]
            return found[0] if found else _ANYWAY
    return _ANYWAY


def invalid_input(exc: ValidationError, model: type[BaseModel]) -> InvalidInput:
    """One InvalidInput for every problem pydantic found, in the API's words (unknown names listed together)."""
    problems: list[tuple[str, str]] = []
    unknown: list[str] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if error["type"] == "extra_forbidden":
            unknown.append(str(loc[0])[:40])
        elif not loc:
            problems.append(("body", "must be a JSON object"))
        else:
            named = (error.get("ctx") or {}).get("field")
            field = named or (f"{loc[0]}.{str(loc[1])[:40]}" if len(loc) == 2 else str(loc[0]))
            problem = (field, says(model, str(loc[0])).problem(error))
            if problem not in problems:
                problems.append(problem)
    if unknown:
        known = ", ".join(info.alias or name for name, info in model.model_fields.items())
        problems.insert(0, (", ".join(sorted(unknown))[:200], f"unknown field; the fields are {known}"))
    return InvalidInput(*problems[0], *problems[1:])


Model = TypeVar("Model", bound=BaseModel)


def checked(model: type[Model], data: Any, settings=None) -> Model:
    """``data`` validated as ``model`` (settings reach the validators that need them). Raises InvalidInput."""
    try:
        return model.model_validate(data, context={"settings": settings})
    except ValidationError as exc:
        raise invalid_input(exc, model) from None


def present(values: Mapping[str, str], model: type[BaseModel]) -> dict[str, str]:
    """The values of a query string or headers that ``model`` declares, an empty one counting as absent."""
    names = [info.alias or name for name, info in model.model_fields.items()]
    return {name: values[name] for name in names if values.get(name) not in (None, "")}


# -- field types ----------------------------------------------------------------------------------


def _region(info: ValidationInfo) -> str | None:
    return info.context["settings"].default_phone_region


def _read_phone_number(value: Any, info: ValidationInfo) -> str:
    try:
        return read_number(value, _region(info))
    except NumberError as exc:
        raise own_error("phone_number", str(exc)) from None


def _read_sender(value: Any, info: ValidationInfo) -> str:
    if isinstance(value, str) and value[:1] == " " and value[1:2].isdigit():
        value = "+" + value[1:]  # an unencoded + in a query string arrives as a space
    if isinstance(value, str) and _SERVICE_SID.fullmatch(value.strip()):
        return value.strip()
    return _read_phone_number(value, info)


def _fits_twilio(value: Any, handler):
    """Blank text and text over Twilio's count are refused in our words, before the schema's own checks."""
    if isinstance(value, str):
        if not value.strip():
            raise own_error("blank", "must not be blank")
        units = len(value.encode("utf-16-le", "surrogatepass")) // 2
        if units > MAX_MESSAGE_CHARS:
            raise own_error("too_long_for_twilio", f"must be at most {MAX_MESSAGE_CHARS} characters as Twilio counts "
                                                   f"them (UTF-16 code units: an emoji counts 2); it has {units}")
    return handler(value)


def _not_reserved(value: Any, handler):
    if value == RESERVED_VARIABLE:
        raise own_error("reserved", "is set by the gateway from message", field=f"dynamic_variables.{value}")
    return handler(value)


def _plain_json(value: Any, handler):
    value = handler(value)
    try:
        # UponAI gets it as JSON: what strict JSON cannot carry (NaN, Infinity) is refused here, before the
        # worker ends the person's chat to start the new one.
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError):
        raise own_error("not_plain_json", "must be plain JSON (no NaN or Infinity)") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise own_error("too_large", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


def _whole(value: Any) -> Any:
    if isinstance(value, str):
        if not _WHOLE.fullmatch(value):
            raise own_error("not_whole", "is not a whole number")  # worded by the field's Says, with the bounds
        return int(value)
    return value


def whole_number(low: int, high: int) -> Any:
    """A whole number from ``low`` to ``high`` written in a query string, worded with its bounds."""
    # The bounds next to int (then the text is read): so they reach the JSON Schema as minimum and maximum.
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_whole),
                     Says(f"must be a whole number from {low} to {high}")]


PhoneNumber = Annotated[str, BeforeValidator(_read_phone_number)]
Sender = Annotated[str, BeforeValidator(_read_sender)]
SmsText = Annotated[str, Field(max_length=MAX_MESSAGE_CHARS, pattern=NOT_BLANK_PATTERN),
                    WrapValidator(_fits_twilio)]
VariableName = Annotated[str, Field(min_length=1, max_length=MAX_VARIABLE_NAME_CHARS,
                                    json_schema_extra={"not": {"const": RESERVED_VARIABLE}}),
                         WrapValidator(_not_reserved)]
VariableValue = Annotated[str, Field(max_length=MAX_VARIABLE_VALUE_CHARS)]
IdempotencyKey = Annotated[str, Field(max_length=MAX_IDEMPOTENCY_KEY_CHARS, pattern=PRINTABLE_PATTERN),
                           Says(f"must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters without spaces")]

ChatLimit = whole_number(1, 1000)
FailedLimit = whole_number(1, 500)
IDEMPOTENCY_KEY = "Idempotency-Key"
NUMBER_TEXT = ("The person's number with + and country code; spaces, dashes, dots and brackets are dropped. "
               "A number without + is read in DEFAULT_PHONE_REGION, and refused when that is not set. In a "
               "conversation's path, a channel address (whatsapp:+14155550100) names that channel's conversation.")


class Request(BaseModel):
    """A JSON body: nothing but the declared fields, each of its declared type (no "5" for 5)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Parameters(BaseModel):
    """Path, query or header values: names not declared are ignored, as web tools add their own."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


# -- bodies ---------------------------------------------------------------------------------------


class OutboundRequest(Request):
    """The body of `POST /admin/sms`."""

    to: Annotated[PhoneNumber, Field(description=NUMBER_TEXT, examples=["+1 (415) 555-0100"])]
    message: Annotated[SmsText, Says("must be a string", {
        "blank": "must not be blank (leave it out to let the agent write the opening)"})] | None = Field(
        None, description="Sent as written, and given to the new chat as the dynamic variable `opening_message`. "
                          f"Leave it out to have the agent write the opening. At most {MAX_MESSAGE_CHARS} "
                          "characters as Twilio counts them (UTF-16 code units: an emoji counts 2).")
    agent_id: Annotated[str, Field(pattern=AGENT_ID_PATTERN),
                        Says("must be 1-128 letters, digits or _ . : -")] | None = Field(
        None, description="Default: the agent routed to the sending number, else UPONAI_AGENT_ID.")
    from_: Sender | None = Field(None, alias="from", description=(
        "Sending number (read like to) or Messaging Service sid (MG...). Default: TWILIO_FROM_NUMBER, else "
        "TWILIO_MESSAGING_SERVICE_SID."))
    dynamic_variables: Annotated[dict[VariableName, VariableValue], Field(max_length=MAX_VARIABLES), Says(
        "must be an object of strings", {
            "too_long": f"must have at most {MAX_VARIABLES} entries",
            "[key]": f"names must be 1-{MAX_VARIABLE_NAME_CHARS} characters",
            "[value]": f"must be a string of at most {MAX_VARIABLE_VALUE_CHARS} characters"})] | None = Field(
        None, description=f"Handed to the new chat (`{RESERVED_VARIABLE}` is reserved).")
    metadata: Annotated[dict[str, Any], WrapValidator(_plain_json), Says("must be an object")] | None = Field(
        None, description=f"Stored on the new chat (at most {MAX_METADATA_BYTES} bytes as JSON); the gateway adds "
                          "channel, conversation_id, direction.")


class OperatorMessage(Request):
    """The body of `POST /admin/conversations/{number}/messages`."""

    message: Annotated[SmsText, Says("must be a string"), Field(
        description="Sent as written from the conversation's gateway number.",
        examples=["Hi, this is Anna from the front desk."])]


# -- paths, query strings, headers ----------------------------------------------------------------


class ConversationPath(Parameters):
    number: Annotated[PhoneNumber, Field(description=NUMBER_TEXT, examples=["+14155550100"])]


class ConversationQuery(Parameters):
    from_: Sender | None = Field(None, alias="from", description=(
        "The gateway number or Messaging Service sid of the conversation (default: the configured sender). "
        "Write + as %2B."))


class JobPath(Parameters):
    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN, examples=["abc123"]),
                      Says("must be 1-64 letters, digits, _ or -")]


class ChatsQuery(Parameters):
    limit: ChatLimit | None = None
    sort_order: Annotated[Literal["ascending", "descending"], Says("must be ascending or descending")] | None = None
    pagination_key: Annotated[str, Field(max_length=MAX_PAGINATION_KEY_CHARS, pattern=PRINTABLE_PATTERN), Says(
        f"must be at most {MAX_PAGINATION_KEY_CHARS} printable characters")] | None = None


class FailedQuery(Parameters):
    limit: FailedLimit = 50


class OutboundHeaders(Parameters):
    idempotency_key: IdempotencyKey | None = Field(None, alias=IDEMPOTENCY_KEY, description=(
        "A retried request with the same key starts one conversation, not two."))


class OperatorMessageHeaders(Parameters):
    idempotency_key: IdempotencyKey | None = Field(None, alias=IDEMPOTENCY_KEY, description=(
        "Retried requests with the same key send one SMS."))


# -- what the views use ---------------------------------------------------------------------------


def default_sender(settings) -> tuple[str, str | None]:
    """The configured sender: TWILIO_FROM_NUMBER (through the Messaging Service if one is set too)."""
    if settings.twilio_from_number:
        return settings.twilio_from_number, settings.twilio_messaging_service_sid
    if settings.twilio_messaging_service_sid:
        return settings.twilio_messaging_service_sid, settings.twilio_messaging_service_sid
    raise InvalidInput("from", "is required: neither TWILIO_FROM_NUMBER nor TWILIO_MESSAGING_SERVICE_SID is set")


def sender_of(from_: str | None, settings) -> tuple[str, str | None]:
    """``(gateway number, messaging service sid or None)`` of a checked ``from`` (a ``Sender``), else the configured
    sender."""
    if from_ is None:
        return default_sender(settings)
    return from_, from_ if _SERVICE_SID.fullmatch(from_) else None


def outbound_request(body: Any, settings) -> dict[str, Any]:
    """The checked, normalised body of ``POST /admin/sms``."""
    request = checked(OutboundRequest, body, settings)
    gateway_number, service = sender_of(request.from_, settings)
    return {
        "to": request.to,
        "gateway": gateway_number,  # the name queued jobs and the conversation record use: kept as stored
        "messaging_service_sid": service,
        "message": request.message,
        "agent_id": request.agent_id,
        "dynamic_variables": dict(request.dynamic_variables or {}),
        "metadata": dict(request.metadata or {}),
    }


def operator_message(body: Any) -> str:
    """The text of ``POST /admin/conversations/<number>/messages``: the operator's own words, sent as written."""
    return checked(OperatorMessage, body).message


def conversation(number: str, query: Mapping[str, str], settings) -> tuple[str, str]:
    """``(person, gateway number or Messaging Service sid)`` of a conversation's path and ``from`` query."""
    person = checked(ConversationPath, {"number": number}, settings).number
    gateway_number = checked(ConversationQuery, present(query, ConversationQuery), settings).from_
    return person, gateway_number if gateway_number is not None else default_sender(settings)[0]


def idempotency_key(headers: Mapping[str, str], model: type[OutboundHeaders | OperatorMessageHeaders]) -> str | None:
    """The request's Idempotency-Key, if it sent one (an empty one is refused, not ignored)."""
    sent = headers.get(IDEMPOTENCY_KEY)
    return checked(model, {} if sent is None else {IDEMPOTENCY_KEY: sent}).idempotency_key


def job_id(value: str) -> str:
    return checked(JobPath, {"job_id": value}).job_id


def fingerprint(body: Any) -> str:
    """A stable digest of a JSON body, to tell a retried request from a different one."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
