"""Typed, frozen settings read once from the environment (and an optional ``.env`` file).

``load_settings(environ)`` parses every variable, collects every problem, and raises one
``SettingsError`` naming all of them, so a misconfigured process stops at start-up with a
message an operator can act on. Secrets are kept out of ``repr``.

This module is the only reader of the environment: a command that needs a few settings only (the
operator tools, ``gunicorn.conf.py``) takes them with ``load_some``, parsed the same way, and
``read_environment`` is the merged mapping (environment over ``.env``) for whoever starts processes.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import phonenumbers

API_STYLES = ("reference", "guide")


class SettingsError(ValueError):
    """One or more environment variables are missing or invalid."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))

    def report(self, program: str) -> str:
        """The block a process prints before it exits: who stopped, every problem, and where to fix them.

        Every entry point (gunicorn's config file, ``sms-gateway worker`` and the other commands) prints
        this and nothing else, so an operator sees one message, not a traceback around it.
        """
        count = len(self.problems)
        lines = [f"{program}: cannot start: {count} setting{'s' if count != 1 else ''} to fix:",
                 *(f"  - {problem}" for problem in self.problems),
                 "Set them in the environment or in a .env file in the working directory "
                 "(docs/settings.md lists them all, with their defaults)."]
        return "\n".join(lines)


def _text(value: str) -> str:
    return value.strip()


def _secret(value: str) -> str:
    value = value.strip()
    # It goes into HTTP headers (Bearer, Basic auth): a pasted space, newline or non-ASCII character
    # would only fail later, on the first call.
    if not all("!" <= ch <= "~" for ch in value):
        raise ValueError("must be printable ASCII without spaces")
    return value


MIN_ADMIN_TOKEN_CHARS = 16


def _long_secret(value: str, what: str = "token") -> str:
    value = _secret(value)
    if len(value) < MIN_ADMIN_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters; use a long random {what}, e.g. "
                         "the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return value


def _admin_token(value: str) -> str:
    # A short token can be guessed by anyone who can reach /admin; refuse it before the API is served.
    return _long_secret(value, "token")


HEX_32 = re.compile(r"[0-9a-fA-F]{32}")


def _sid(prefix: str, what: str) -> Callable[[str], str]:
    """A parser for a Twilio sid: ``prefix`` and 32 hex digits, as Twilio issues them."""

    def parse(value: str) -> str:
        value = value.strip()
        if not (value.startswith(prefix) and HEX_32.fullmatch(value[2:])):
            raise ValueError(f"must be {what}: {prefix} followed by 32 hex digits (Twilio console)")
        return value

    return parse


def _twilio_auth_token(value: str) -> str:
    value = value.strip()
    # Twilio's auth tokens are 32 hex characters: anything else (a truncated paste, the account sid, an API
    # key secret) would only fail on the first send, and make every webhook signature look forged.
    if not HEX_32.fullmatch(value):
        raise ValueError("must be the account's auth token: 32 hex characters (Twilio console, Account Info)")
    return value


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://sms.example.com")
    return value


def _webhook_url(value: str) -> str:
    value = value.strip()  # kept as given: a receiver may route on a trailing slash
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://ops.example.com/sms-events")
    return value


# Standard Webhooks (www.standardwebhooks.com): a secret is "whsec_" and its key in base64, 24 to 64 bytes.
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_KEY_BYTES = (24, 64)
WEBHOOK_SECRET_RECIPE = ("python3 -c 'import base64, secrets; "
                         "print(\"whsec_\" + base64.b64encode(secrets.token_bytes(32)).decode())'")


def webhook_secret_key(secret: str) -> bytes:
    """The signing key of a Standard Webhooks secret (``whsec_`` + base64); ValueError when it is not one."""
    encoded = secret.strip()
    if not encoded.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError("does not start with whsec_")
    encoded = encoded[len(WEBHOOK_SECRET_PREFIX):]
    try:  # unpadded base64 is taken, as the standardwebhooks libraries take it
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64 after whsec_") from None
    low, high = WEBHOOK_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"holds {len(key)} bytes, not {low} to {high}")
    return key


def _signing_secret(value: str) -> str:
    # Anyone who knows it can forge events to the operator's receiver: refuse one that can be guessed, and one in
    # another format (the receiver's Standard Webhooks library would refuse every event).
    value = _secret(value).strip()
    try:
        webhook_secret_key(value)
    except ValueError as exc:
        raise ValueError(f"must be a Standard Webhooks secret, whsec_ followed by {WEBHOOK_KEY_BYTES[0]} to "
                         f"{WEBHOOK_KEY_BYTES[1]} random bytes in base64; this one {exc}. Make one with: "
                         f"{WEBHOOK_SECRET_RECIPE}") from None
    return value


def _redis_url(value: str) -> str:
    value = value.strip()
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


def _host_ports(value: str) -> tuple[tuple[str, int], ...]:
    addresses = []
    for item in value.split(","):
        if not item.strip():
            continue
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be a comma-separated list of host:port, e.g. 10.0.0.1:26379,10.0.0.2:26379")
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def _style(value: str) -> str:
    value = value.strip().lower()
    if value not in API_STYLES:
        raise ValueError(f"must be one of {', '.join(API_STYLES)}")
    return value


def _whole_number(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("must be a whole number") from None


def _positive_int(value: str) -> int:
    number = _whole_number(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


# The most segments one part may take: a part of more could pass Twilio's 1600 limit (11 GSM-7 segments of a
# multi-part message hold 11 x 153 = 1683 characters; UCS-2 segments hold 67 each, so 10 of either fit).
MAX_SMS_SEGMENTS = 10


def _sms_segments(value: str) -> int:
    number = _positive_int(value)
    if number > MAX_SMS_SEGMENTS:
        raise ValueError(f"must be at most {MAX_SMS_SEGMENTS}: {number} GSM-7 segments hold up to {number * 153} "
                         "characters, over Twilio's 1600 limit for one message (error 21617)")
    return number


def _port(value: str) -> int:
    number = _whole_number(value)
    if not 0 < number < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return number


def _non_negative_int(value: str) -> int:
    number = _whole_number(value)
    if number < 0:
        raise ValueError("must be zero or a positive whole number")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError("must be a positive number")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError("must be zero or a positive number")
    return number


def _seconds_list(value: str) -> tuple[float, ...]:
    try:
        items = tuple(float(item) for item in value.split(",") if item.strip())
    except ValueError:
        items = (-1.0,)
    if any(not (item >= 0 and math.isfinite(item)) for item in items):
        raise ValueError("must be a comma-separated list of non-negative seconds, e.g. 1,5,30")
    return items


def _whole_seconds_list(value: str) -> tuple[int, ...]:
    try:
        items = tuple(int(item) for item in value.split(",") if item.strip())
    except ValueError:
        items = (-1,)
    if not items or any(item < 0 for item in items):
        raise ValueError("must be a comma-separated list of whole seconds (zero or more), e.g. 5,30,120")
    return items


# Channels whose addresses are phone numbers (``whatsapp:+1415...``); others (``messenger:<page id>``) are not checked.
NUMBER_CHANNELS = ("whatsapp",)
E164_EXAMPLE = "+14155550123"


def mask_number(number: str | None) -> str:
    """Show only a phone number's last two digits: ``+14155550123`` -> ``+*********23`` (logs, problems)."""
    if not number:
        return "-"
    prefix, _, address = number.rpartition(":")  # channel addresses such as whatsapp:+1...
    shown = address[-2:] if len(address) > 4 else ""
    masked = ("+" if address.startswith("+") else "") + "*" * max(len(address) - len(shown) - 1, 3) + shown
    return f"{prefix}:{masked}" if prefix else masked


def _number_problem(address: str) -> str | None:
    """What is wrong with the gateway number ``address`` (E.164, or a phone channel's ``whatsapp:+...``), or None.

    Checked with the phonenumbers library: a number it calls invalid would never match a text's ``To``.
    """
    channel, _, number = address.rpartition(":")
    if channel and channel not in NUMBER_CHANNELS:
        return None
    if not number.startswith("+"):
        return f"must be in E.164 form, + and country code, e.g. {E164_EXAMPLE}"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return f"is not a phone number: write it in E.164 form, + and country code, e.g. {E164_EXAMPLE}"
    if not phonenumbers.is_valid_number(parsed):
        return "is not a valid phone number (checked with the phonenumbers library)"
    if phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) != number:
        return f"must be in E.164 form, + and country code and digits only, e.g. {E164_EXAMPLE}"
    return None


def _check_number(address: str) -> str:
    """``address``, or ValueError naming it (masked): for a number in a list."""
    problem = _number_problem(address)
    if problem:
        raise ValueError(f"{mask_number(address)} {problem}")
    return address


def _number(value: str) -> str:
    problem = _number_problem(value.strip())
    if problem:
        raise ValueError(problem)
    return value.strip()


def _agent_routes(value: str) -> dict[str, str]:
    routes = {}
    for item in value.replace(";", ",").split(","):
        if not item.strip():
            continue
        number, sep, agent = item.partition("=")
        if not sep or not number.strip() or not agent.strip():
            raise ValueError("must look like +15005550006=agent_a,+15005550007=agent_b")
        routes[_check_number(number.strip())] = agent.strip()
    return routes


def _numbers(value: str) -> tuple[str, ...]:
    numbers = tuple(item.strip() for item in value.replace(";", ",").split(",") if item.strip())
    if any(any(ch.isspace() for ch in number) for number in numbers):
        raise ValueError("must be a comma-separated list such as +15005550006,+15005550007")
    return tuple(_check_number(number) for number in numbers)


def _keyword(value: str) -> str:
    word = value.strip().upper()
    if not word or any(ch.isspace() for ch in word):
        raise ValueError("must be a single word")
    return word


def _phone_region(value: str) -> str:
    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("must be a two-letter ISO 3166 region code that the phonenumbers library knows, e.g. US, GB")
    return region


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _mask_list(value: str) -> str:
    return ",".join(mask_number(item.strip()) for item in value.replace(";", ",").split(","))


def _mask_routes(value: str) -> str:
    return ",".join(f"{mask_number(number.strip())}{sep}{agent}"
                    for number, sep, agent in (item.partition("=") for item in value.replace(";", ",").split(",")))


def _setting(env: str, parse: Callable[[str], Any] = _text, default: Any = None, *,
             required: bool = False, secret: bool = False, shown: Callable[[str], str] | None = None):
    """A field read from ``env`` with ``parse``; ``shown`` masks the raw value in a problem (a phone number)."""
    metadata = {"env": env, "parse": parse, "required": required, "shown": shown}
    if isinstance(default, dict):  # dataclasses refuse a shared mutable default: give each instance a copy
        return field(default_factory=lambda: dict(default), repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Everything the web and worker processes need, parsed and checked."""

    redis_url: str = _setting("REDIS_URL", _redis_url, required=True)
    redis_sentinels: tuple[tuple[str, int], ...] = _setting("REDIS_SENTINELS", _host_ports, ())
    redis_sentinel_master: str | None = _setting("REDIS_SENTINEL_MASTER")
    redis_sentinel_password: str | None = _setting("REDIS_SENTINEL_PASSWORD", _secret, secret=True)
    redis_tls_verify: bool = _setting("REDIS_TLS_VERIFY", _flag, True)
    redis_wait_replicas: int = _setting("REDIS_WAIT_REPLICAS", _non_negative_int, 0)
    redis_wait_timeout_seconds: float = _setting("REDIS_WAIT_TIMEOUT_SECONDS", _positive_float, 1.0)
    uponai_api_key: str = _setting("UPONAI_API_KEY", _secret, required=True, secret=True)
    uponai_agent_id: str = _setting("UPONAI_AGENT_ID", required=True)
    uponai_api_style: str = _setting("UPONAI_API_STYLE", _style, "reference")
    uponai_base_url: str = _setting("UPONAI_BASE_URL", _url, "https://api.upon-ai.com")
    uponai_workspace_id: int | None = _setting("UPONAI_WORKSPACE_ID", _positive_int)
    uponai_connect_timeout_seconds: float = _setting("UPONAI_CONNECT_TIMEOUT_SECONDS", _positive_float, 5.0)
    uponai_read_timeout_seconds: float = _setting("UPONAI_READ_TIMEOUT_SECONDS", _positive_float, 300.0)
    twilio_account_sid: str = _setting("TWILIO_ACCOUNT_SID", _sid("AC", "an Account SID"), required=True)
    twilio_auth_token: str = _setting("TWILIO_AUTH_TOKEN", _twilio_auth_token, required=True, secret=True)
    twilio_auth_token_previous: str | None = _setting("TWILIO_AUTH_TOKEN_PREVIOUS", _twilio_auth_token, secret=True)
    twilio_from_number: str | None = _setting("TWILIO_FROM_NUMBER", _number, shown=mask_number)
    twilio_messaging_service_sid: str | None = _setting(
        "TWILIO_MESSAGING_SERVICE_SID", _sid("MG", "a Messaging Service SID"))
    twilio_api_base_url: str = _setting("TWILIO_API_BASE_URL", _url, "https://api.twilio.com")
    twilio_timeout_seconds: float = _setting("TWILIO_TIMEOUT_SECONDS", _positive_float, 15.0)
    twilio_connect_timeout_seconds: float = _setting("TWILIO_CONNECT_TIMEOUT_SECONDS", _positive_float, 5.0)
    public_base_url: str | None = _setting("PUBLIC_BASE_URL", _url)
    trusted_proxy_hops: int = _setting("TRUSTED_PROXY_HOPS", _non_negative_int, 0)
    admin_api_token: str | None = _setting("ADMIN_API_TOKEN", _admin_token, secret=True)
    chat_idle_timeout_seconds: int = _setting("CHAT_IDLE_TIMEOUT_SECONDS", _positive_int, 3600)
    port: int = _setting("PORT", _port, 8000)
    web_concurrency: int = _setting("WEB_CONCURRENCY", _positive_int, 2)
    web_threads: int = _setting("WEB_THREADS", _positive_int, 4)
    default_phone_region: str | None = _setting("DEFAULT_PHONE_REGION", _phone_region)
    retry_intervals_seconds: tuple[float, ...] = _setting(
        "RETRY_INTERVALS_SECONDS", _seconds_list, (2.0, 10.0, 30.0, 60.0, 120.0))
    dedupe_ttl_seconds: int = _setting("DEDUPE_TTL_SECONDS", _positive_int, 7 * 24 * 3600)
    mms_notice_text: str = _setting(
        "MMS_NOTICE_TEXT", _text,
        "Sorry, pictures and other media can't be read here. Please send your message as text.")
    failure_notice_text: str = _setting(
        "FAILURE_NOTICE_TEXT", _text,
        "Sorry, something went wrong on our side and your message could not be answered. "
        "Please try again later.")
    log_message_bodies: bool = _setting("LOG_MESSAGE_BODIES", _flag, False)
    log_level: str = _setting("LOG_LEVEL", _log_level, "INFO")  # the web's (gunicorn.conf.py); workers: --log-level
    gunicorn_access_log: bool = _setting("GUNICORN_ACCESS_LOG", _flag, False)
    uponai_agent_routes: dict[str, str] = _setting("UPONAI_AGENT_ROUTES", _agent_routes, {}, shown=_mask_routes)
    reset_keyword: str = _setting("RESET_KEYWORD", _keyword, "RESET")
    handoff_keyword: str | None = _setting("HANDOFF_KEYWORD", _keyword)
    handoff_confirmation_text: str = _setting(
        "HANDOFF_CONFIRMATION_TEXT", _text, "Thanks. A person from our team will answer you here as soon as they can.")
    reset_confirmation_text: str = _setting(
        "RESET_CONFIRMATION_TEXT", _text, "Your conversation has been reset. Your next message starts a new one.")
    mms_notice_interval_seconds: int = _setting("MMS_NOTICE_INTERVAL_SECONDS", _non_negative_int, 3600)
    rate_limit_messages: int = _setting("RATE_LIMIT_MESSAGES", _non_negative_int, 30)
    rate_limit_window_seconds: int = _setting("RATE_LIMIT_WINDOW_SECONDS", _positive_int, 3600)
    rate_limit_notice_text: str = _setting(
        "RATE_LIMIT_NOTICE_TEXT", _text,
        "You're sending messages faster than we can answer. Please wait a while before writing again.")
    sms_max_segments: int = _setting("SMS_MAX_SEGMENTS", _sms_segments, 10)
    sms_transliterate: bool = _setting("SMS_TRANSLITERATE", _flag, True)
    ambiguous_retry_delay_seconds: float = _setting("AMBIGUOUS_RETRY_DELAY_SECONDS", _positive_float, 15.0)
    retry_after_max_seconds: float = _setting("RETRY_AFTER_MAX_SECONDS", _positive_float, 600.0)
    worker_threads: int = _setting("WORKER_THREADS", _positive_int, 64)
    # A worker serves its own /metrics on this port (all addresses) when set; unset, it listens on no port.
    metrics_port: int | None = _setting("METRICS_PORT", _port)
    admin_wait_seconds: float = _setting("ADMIN_WAIT_SECONDS", _positive_float, 20.0)
    admin_max_waiting: int = _setting("ADMIN_MAX_WAITING", _non_negative_int, 2)
    admin_idempotency_ttl_seconds: int = _setting("ADMIN_IDEMPOTENCY_TTL_SECONDS", _positive_int, 24 * 3600)
    data_retention_days: float = _setting("DATA_RETENTION_DAYS", _positive_float, 30.0)
    gateway_numbers: tuple[str, ...] = _setting("GATEWAY_NUMBERS", _numbers, (), shown=_mask_list)
    loop_breaker_replies: int = _setting("LOOP_BREAKER_REPLIES", _non_negative_int, 5)
    loop_breaker_seconds: float = _setting("LOOP_BREAKER_SECONDS", _positive_float, 5.0)
    loop_breaker_cooldown_seconds: int = _setting("LOOP_BREAKER_COOLDOWN_SECONDS", _positive_int, 3600)
    inbound_quiet_seconds: float = _setting("INBOUND_QUIET_SECONDS", _non_negative_float, 2.0)
    inbound_max_wait_seconds: float = _setting("INBOUND_MAX_WAIT_SECONDS", _non_negative_float, 10.0)
    outbound_opening_prompt: str = _setting(
        "OUTBOUND_OPENING_PROMPT", _text,
        "[The business is starting this SMS conversation; the person has not written yet. "
        "Write your first message to them.]")
    events_webhook_url: str | None = _setting("EVENTS_WEBHOOK_URL", _webhook_url)
    events_webhook_secret: str | None = _setting("EVENTS_WEBHOOK_SECRET", _signing_secret, secret=True)
    events_include_bodies: bool = _setting("EVENTS_INCLUDE_BODIES", _flag, False)
    events_retry_intervals_seconds: tuple[int, ...] = _setting(
        "EVENTS_RETRY_INTERVALS_SECONDS", _whole_seconds_list, (5, 30, 120, 600, 1800))
    events_timeout_seconds: float = _setting("EVENTS_TIMEOUT_SECONDS", _positive_float, 10.0)
    events_worker_threads: int = _setting("EVENTS_WORKER_THREADS", _positive_int, 2)
    campaign_send_rate: float = _setting("CAMPAIGN_SEND_RATE", _positive_float, 1.0)
    campaign_batch_size: int = _setting("CAMPAIGN_BATCH_SIZE", _positive_int, 100)
    campaign_parallel_batches: int = _setting("CAMPAIGN_PARALLEL_BATCHES", _positive_int, 2)

    def agent_for(self, gateway_number: str) -> str:
        """The agent that answers texts to ``gateway_number``."""
        return self.uponai_agent_routes.get(gateway_number, self.uponai_agent_id)

    def own_numbers(self) -> tuple[str, ...]:
        """The gateway's numbers known from settings: ``TWILIO_FROM_NUMBER``, the routed ones, ``GATEWAY_NUMBERS``."""
        return (*filter(None, [self.twilio_from_number]), *self.uponai_agent_routes, *self.gateway_numbers)

    def __repr__(self) -> str:
        # Secrets are left out; a password inside a URL (REDIS_URL often has one) is masked.
        shown = (f"{spec.name}={_hide_password(getattr(self, spec.name))!r}" for spec in fields(self) if spec.repr)
        return f"Settings({', '.join(shown)})"

    def shown(self) -> list[tuple[str, str]]:
        """Every setting as (variable, value as an operator would write it), secrets and URL passwords masked."""
        return [(spec.metadata["env"], _shown_value(getattr(self, spec.name), secret=not spec.repr))
                for spec in fields(self)]

    @property
    def max_attempts(self) -> int:
        """How many times one inbound message is tried before it is given up."""
        return len(self.retry_intervals_seconds) + 1

    @property
    def data_retention_seconds(self) -> int:
        """How long a person's number and words are kept after the conversation's last activity."""
        return max(1, math.ceil(self.data_retention_days * 24 * 3600))


def read_environment(dotenv_path: str | None = ".env") -> dict[str, str]:
    """The process environment over the variables of ``dotenv_path`` (if that file exists)."""
    return {**_read_dotenv(dotenv_path), **os.environ}


def metrics_directory() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` as prometheus-client sees it: from the process environment only, not ``.env``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def load_settings(environ: Mapping[str, str] | None = None, *, dotenv_path: str | None = ".env") -> Settings:
    """Build Settings from ``environ`` (default: the process environment plus ``.env``).

    Raises SettingsError naming every missing or invalid variable.
    """
    if environ is None:
        environ = read_environment(dotenv_path)
    values, problems = _parse(environ, fields(Settings))
    # An invalid style or workspace id is reported above already; only a missing workspace id is added here.
    style = values.get("uponai_api_style") if environ.get("UPONAI_API_STYLE", "").strip() else "reference"
    if style == "reference" and not environ.get("UPONAI_WORKSPACE_ID", "").strip():
        problems.append("UPONAI_WORKSPACE_ID is required but not set: UPONAI_API_STYLE reference (the default) "
                        "needs the workspace's integer id (or set UPONAI_API_STYLE=guide)")
    if not problems:
        problems += _cross_checks(Settings(**values))
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def load_some(names: Iterable[str], environ: Mapping[str, str] | None = None, *,
              dotenv_path: str | None = ".env") -> tuple[dict[str, Any], list[str]]:
    """Parse only the named variables, as ``load_settings`` does: (values by field name, defaults included; problems).

    For commands that need a few settings, not a whole deployment's; ``environ`` defaults as in ``load_settings``.
    """
    if environ is None:
        environ = read_environment(dotenv_path)
    wanted = set(names)
    unknown = wanted - {spec.metadata["env"] for spec in fields(Settings)}
    if unknown:
        raise KeyError(f"not settings: {', '.join(sorted(unknown))}")
    specs = [spec for spec in fields(Settings) if spec.metadata["env"] in wanted]
    values, problems = _parse(environ, specs)
    for spec in specs:
        if spec.name not in values:
            values[spec.name] = spec.default_factory() if callable(spec.default_factory) else spec.default
    return values, problems


def _parse(environ: Mapping[str, str], specs: Iterable[Field]) -> tuple[dict[str, Any], list[str]]:
    """The values of the variables that are set, by field name, and a problem for each missing or invalid one."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in specs:
        name = spec.metadata["env"]
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            if spec.metadata["required"]:
                problems.append(f"{name} is required but not set")
            continue
        try:
            values[spec.name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            mask = spec.metadata["shown"] or _hide_password
            shown = "(hidden)" if not spec.repr else repr(mask(raw))
            problems.append(f"{name}={shown} is invalid: {exc}")
    return values, problems


def _cross_checks(settings: Settings) -> list[str]:
    """Problems with how settings combine."""
    problems = []
    if settings.redis_sentinels and not settings.redis_sentinel_master:
        problems.append("REDIS_SENTINEL_MASTER is required when REDIS_SENTINELS is set "
                        "(the name the sentinels monitor the master by, e.g. mymaster)")
    if (settings.redis_sentinel_master or settings.redis_sentinel_password) and not settings.redis_sentinels:
        problems.append("REDIS_SENTINELS is required when REDIS_SENTINEL_MASTER or REDIS_SENTINEL_PASSWORD is set "
                        "(the sentinels' host:port list)")
    if settings.redis_sentinels and urlsplit(settings.redis_url).scheme == "unix":
        problems.append("REDIS_URL must be redis:// or rediss:// when REDIS_SENTINELS is set: the sentinels "
                        "name the master's host and port, REDIS_URL gives its password, database and TLS")
    if settings.data_retention_seconds <= settings.chat_idle_timeout_seconds:
        # The conversation record (and the chat id in it) would expire before the idle close ends the chat.
        problems.append(f"DATA_RETENTION_DAYS={settings.data_retention_days:g} is invalid: it must be longer than "
                        f"CHAT_IDLE_TIMEOUT_SECONDS={settings.chat_idle_timeout_seconds}")
    if settings.handoff_keyword and settings.handoff_keyword == settings.reset_keyword:
        problems.append(f"HANDOFF_KEYWORD={settings.handoff_keyword} is invalid: it must differ from RESET_KEYWORD")
    if settings.admin_max_waiting >= settings.web_threads:
        # Each waiting admin request holds a web thread: at the cap, none would be left for Twilio's webhooks.
        problems.append(f"ADMIN_MAX_WAITING={settings.admin_max_waiting} is invalid: it must be less than "
                        f"WEB_THREADS={settings.web_threads}, so each web process keeps threads for Twilio's "
                        "webhooks while admin requests wait (lower ADMIN_MAX_WAITING or raise WEB_THREADS)")
    if settings.events_webhook_url and not settings.events_webhook_secret:
        # An unsigned event could be forged by anyone who finds the receiver's address.
        problems.append("EVENTS_WEBHOOK_SECRET is required when EVENTS_WEBHOOK_URL is set (events are signed with it)")
    return problems


def _shown_value(value: Any, *, secret: bool) -> str:
    """A setting's value written back the way its variable is written (a list comma-separated), or masked."""
    if value is None or value == () or value == {}:
        return "(not set)"
    if secret:
        return "(set, hidden)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(_hide_password(value))


def _hide_password(value: Any) -> Any:
    """``value`` with the password of a URL such as ``redis://:secret@host`` replaced by ``***``."""
    if not isinstance(value, str) or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        if parts.password is None:
            return value
    except ValueError:
        return value.rpartition("@")[2]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _read_dotenv(path: str | None) -> dict[str, str]:
    if not path or not os.path.exists(path):
        return {}
    from dotenv import dotenv_values

    return {key: value for key, value in dotenv_values(path).items() if value is not None}
