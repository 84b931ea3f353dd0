"""Observability of the processes: JSON-lines logs and the web's ``/metrics``.

``configure_logging`` is called by each process's entry point (``sms-gateway`` commands, and
``gunicorn.conf.py`` for the web), never at import. Every log line is one JSON object: ``ts``,
``level``, ``logger``, ``message``, plus the ids found in the message (``message=SM...`` becomes
``message_sid``) and the RQ job id inside a job. Phone numbers are masked wherever they appear, and a
``body`` passed in ``extra`` is dropped unless the process was started with ``LOG_MESSAGE_BODIES`` on
(``Settings.log_message_bodies``, handed in by the entry point: this module reads no environment).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, g, request

from config import metrics_directory
from core.metrics import metrics
from core.redaction import mask_number

_E164 = re.compile(r"(?<![\w+%])(?:\+|%2[Bb])(\d{7,15})(?!\d)")
_ID_FIELDS = {"message": "message_sid", "conversation": "conversation_id", "chat": "chat_id", "job": "job_id"}
_ID_PATTERN = re.compile(r"\b(message|conversation|chat|job)=([A-Za-z0-9_.:-]+)")
_BODY_FIELDS = frozenset({"body", "text", "content"})
# RQ's line for a failed job carries the job's arguments (``extra={"arguments": ..., "kwargs": ...}``): an event job's
# are a person's number and words. No job's arguments reach a log, whatever LOG_MESSAGE_BODIES says.
_NEVER_LOGGED = frozenset({"arguments", "kwargs"})
_RECORD_FIELDS = (frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
                  | _NEVER_LOGGED)
QUIET_LOGGERS = {"twilio.http_client": logging.WARNING, "urllib3": logging.WARNING}


# A number without its "+" as a URL path segment or query value (``/admin/conversations/14155550100``,
# ``?from=(202)%20555-0143``), as gunicorn's access lines and request paths show it.
_URL_NUMBER = re.compile(r"(/|[?&][\w.-]{1,40}=)((?:[0-9().+-]|%20|%28|%29)+)(?=$|[/?&#;\s\"'])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # an API version such as /2010-04-01/ is not a number


def mask_numbers(text: str) -> str:
    """Mask every E.164 phone number (also URL-encoded, ``%2B...``) in free text, and numbers in URLs."""
    return _URL_NUMBER.sub(_mask_url_number, _E164.sub(lambda match: mask_number("+" + match[1]), text))


def _mask_url_number(match: re.Match) -> str:
    digits = re.sub(r"%2[0-9]|\D", "", match[2])
    if not 7 <= len(digits) <= 15 or _DATE.fullmatch(match[2]):
        return match[0]
    return match[1] + mask_number("+" + digits)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with phone numbers masked and bodies left out unless asked for."""

    def __init__(self, *args, log_bodies: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_bodies = log_bodies

    def format(self, record: logging.LogRecord) -> str:
        message = mask_numbers(record.getMessage())
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in _ID_PATTERN.findall(message):
            entry.setdefault(_ID_FIELDS[key], value)
        job_id = _current_job_id()
        if job_id:
            entry.setdefault("job_id", job_id)
        for key, value in vars(record).items():
            if key in _RECORD_FIELDS or key.startswith("_") or key in entry:
                continue
            if key in _BODY_FIELDS and not self.log_bodies:
                continue
            entry[key] = mask_numbers(value) if isinstance(value, str) else _plain(value)
        if record.exc_info:
            entry["exc"] = mask_numbers(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = mask_numbers(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _plain(value: object) -> object:
    if isinstance(value, bool | int | float) or value is None:
        return value
    return mask_numbers(str(value))


def _current_job_id() -> str | None:
    rq = sys.modules.get("rq")  # only inside worker processes; the web never imports the worker side
    if rq is None:
        return None
    try:
        job = rq.get_current_job()
    except Exception:  # outside a job rq may find no connection: no id then
        return None
    return job.id if job is not None else None


def configure_logging(level: str | int, *, log_bodies: bool, stream=None) -> None:
    """Send every log record of this process to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter(log_bodies=log_bodies))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)


# -- metrics on the web side ----------------------------------------------------------------------

bp = Blueprint("observability", __name__)


@bp.get("/metrics")
def metrics_page() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    metrics()  # make sure this process's metrics exist even before its first message
    if metrics_directory():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    live = CollectorRegistry()
    live.register(_QueueCollector())
    return Response(generate_latest(registry) + generate_latest(live), content_type=CONTENT_TYPE_LATEST)


class _QueueCollector:
    """Read at scrape time from Redis: queue depth, failed jobs and live workers."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        from redis.exceptions import RedisError

        from core.queues import live_workers, queue_depth
        from gateway.context import web_context

        web = web_context()
        try:
            depth = queue_depth(web.queue)
            failed = web.queue.failed_job_registry.count
            workers = len(live_workers(web.redis))
            up = 1
        except RedisError:
            depth = failed = workers = 0
            up = 0
        yield GaugeMetricFamily("smsgw_redis_up", "Whether Redis answered this scrape", value=up)
        yield GaugeMetricFamily("smsgw_queue_depth", "Jobs waiting in the sms queue (RQ's count)", value=depth)
        yield GaugeMetricFamily("smsgw_failed_jobs", "Jobs in the failed-job registry", value=failed)
        yield GaugeMetricFamily("smsgw_workers", "Workers whose heartbeat is recent", value=workers)


def _start_timer() -> None:
    g.smsgw_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("smsgw_started", None)
    rule = request.url_rule.rule if request.url_rule is not None else None
    if started is not None and rule is not None and rule.startswith("/twilio/"):
        metrics().webhook_seconds.labels(route=rule, status=str(response.status_code)).observe(
            time.perf_counter() - started)
    return response


def init_app(app: Flask) -> None:
    """Serve ``/metrics`` and time the Twilio webhooks."""
    app.register_blueprint(bp)
    app.before_request(_start_timer)
    app.after_request(_observe)
