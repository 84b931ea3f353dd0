"""Checking the admin API's input: every problem is an InvalidInput naming the field."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from core.phone_numbers import NumberError, read_number

MAX_MESSAGE_CHARS = 1600  # Twilio's limit for one message body, in UTF-16 code units (an emoji is 2; error 21617)
MAX_VARIABLES = 50
MAX_VARIABLE_NAME_CHARS = 100
MAX_VARIABLE_VALUE_CHARS = 2000
MAX_METADATA_BYTES = 4096
MAX_PAGINATION_KEY_CHARS = 512
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; a real request needs a handful
RESERVED_VARIABLE = "opening_message"
OUTBOUND_FIELDS = ("to", "message", "agent_id", "from", "dynamic_variables", "metadata")
SORT_ORDERS = ("ascending", "descending")

_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_AGENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_WHOLE = re.compile(r"^[0-9]{1,9}$")


class InvalidJson(ValueError):
    """The body is not JSON the admin API accepts; the message says why."""


class InvalidInput(ValueError):
    """A request field is missing or invalid."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
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


def phone_number(value: Any, field: str, default_region: str | None) -> str:
    """The number in E.164 form, read by the one rule of core.phone_numbers (national only with a region)."""
    try:
        return read_number(value, default_region)
    except NumberError as exc:
        raise InvalidInput(field, str(exc)) from None


def sender(value: Any, field: str, default_region: str | None) -> tuple[str, str | None]:
    """``(gateway number, messaging service sid or None)`` for a number or a Messaging Service sid."""
    if isinstance(value, str) and _SERVICE_SID.fullmatch(value.strip()):
        return value.strip(), value.strip()
    return phone_number(value, field, default_region), None


def default_sender(settings) -> tuple[str, str | None]:
    """The configured sender: TWILIO_FROM_NUMBER (through the Messaging Service if one is set too)."""
    if settings.twilio_from_number:
        return settings.twilio_from_number, settings.twilio_messaging_service_sid
    if settings.twilio_messaging_service_sid:
        return settings.twilio_messaging_service_sid, settings.twilio_messaging_service_sid
    raise InvalidInput("from", "is required: neither TWILIO_FROM_NUMBER nor TWILIO_MESSAGING_SERVICE_SID is set")


def gateway_number_from(value: str | None, settings) -> str:
    """The gateway number (or Messaging Service sid) of a conversation from a ``from`` query value, else the
    configured sender."""
    if value is None or value == "":
        return default_sender(settings)[0]
    if value[:1] == " " and value[1:2].isdigit():  # an unencoded + in a query string arrives as a space
        value = "+" + value[1:]
    return sender(value, "from", settings.default_phone_region)[0]


def outbound_request(body: Any, settings) -> dict[str, Any]:
    """The checked, normalised body of ``POST /admin/sms``."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    unknown = sorted(str(name) for name in body if name not in OUTBOUND_FIELDS)
    if unknown:
        raise InvalidInput(", ".join(unknown)[:200], f"unknown field; the fields are {', '.join(OUTBOUND_FIELDS)}")
    if "to" not in body:
        raise InvalidInput("to", "is required")
    region = settings.default_phone_region
    to = phone_number(body["to"], "to", region)
    gateway_number, service = (sender(body["from"], "from", region) if body.get("from") is not None
                               else default_sender(settings))
    return {
        "to": to,
        "gateway": gateway_number,  # the name queued jobs and the conversation record use: kept as stored
        "messaging_service_sid": service,
        "message": _message(body.get("message")),
        "agent_id": _agent_id(body.get("agent_id")),
        "dynamic_variables": _variables(body.get("dynamic_variables")),
        "metadata": _metadata(body.get("metadata")),
    }


OPERATOR_MESSAGE_FIELDS = ("message",)


def operator_message(body: Any) -> str:
    """The text of ``POST /admin/conversations/<number>/messages``: the operator's own words, sent as written."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    unknown = sorted(str(name) for name in body if name not in OPERATOR_MESSAGE_FIELDS)
    if unknown:
        raise InvalidInput(", ".join(unknown)[:200], "unknown field; the only field is message")
    if body.get("message") is None:
        raise InvalidInput("message", "is required")
    if not isinstance(body["message"], str):
        raise InvalidInput("message", "must be a string")
    if not body["message"].strip():
        raise InvalidInput("message", "must not be blank")
    _check_length(body["message"])
    return body["message"]


def _message(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("message", "must be a string")
    if not value.strip():
        raise InvalidInput("message", "must not be blank (leave it out to let the agent write the opening)")
    _check_length(value)
    return value


def _check_length(message: str) -> None:
    units = len(message.encode("utf-16-le", "surrogatepass")) // 2
    if units > MAX_MESSAGE_CHARS:
        raise InvalidInput("message", f"must be at most {MAX_MESSAGE_CHARS} characters as Twilio counts them "
                                      f"(UTF-16 code units: an emoji counts 2); it has {units}")


def _agent_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _AGENT_ID.fullmatch(value):
        raise InvalidInput("agent_id", "must be 1-128 letters, digits or _ . : -")
    return value


def _variables(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("dynamic_variables", "must be an object of strings")
    if len(value) > MAX_VARIABLES:
        raise InvalidInput("dynamic_variables", f"must have at most {MAX_VARIABLES} entries")
    for name, text in value.items():
        if not name or len(name) > MAX_VARIABLE_NAME_CHARS:
            raise InvalidInput("dynamic_variables", f"names must be 1-{MAX_VARIABLE_NAME_CHARS} characters")
        if name == RESERVED_VARIABLE:
            raise InvalidInput(f"dynamic_variables.{RESERVED_VARIABLE}", "is set by the gateway from message")
        if not isinstance(text, str) or len(text) > MAX_VARIABLE_VALUE_CHARS:
            raise InvalidInput(f"dynamic_variables.{name[:40]}",
                               f"must be a string of at most {MAX_VARIABLE_VALUE_CHARS} characters")
    return dict(value)


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("metadata", "must be an object")
    try:
        # UponAI gets it as JSON: what strict JSON cannot carry (NaN, Infinity) is refused here, before the
        # worker ends the person's chat to start the new one.
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError):
        raise InvalidInput("metadata", "must be plain JSON (no NaN or Infinity)") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidInput("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return dict(value)


def idempotency_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_CHARS or not _PRINTABLE.fullmatch(value):
        raise InvalidInput("Idempotency-Key", f"must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters "
                                              "without spaces")
    return value


def fingerprint(body: Any) -> str:
    """A stable digest of a JSON body, to tell a retried request from a different one."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def bounded_int(value: str | None, field: str, *, low: int, high: int, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    if not _WHOLE.fullmatch(value) or not low <= int(value) <= high:
        raise InvalidInput(field, f"must be a whole number from {low} to {high}")
    return int(value)


def sort_order(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in SORT_ORDERS:
        raise InvalidInput("sort_order", "must be ascending or descending")
    return value


def pagination_key(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_PAGINATION_KEY_CHARS or not _PRINTABLE.fullmatch(value):
        raise InvalidInput("pagination_key", f"must be at most {MAX_PAGINATION_KEY_CHARS} printable characters")
    return value


def job_id(value: str) -> str:
    if not _JOB_ID.fullmatch(value):
        raise InvalidInput("job_id", "must be 1-64 letters, digits, _ or -")
    return value
