"""Prometheus metrics shared by the web and worker processes, and the wrappers that feed them.

Metrics are made once per process, never at import: each process builds them before it serves
(``create_app``, the worker's start), and ``metrics()`` builds them under a lock if not (two threads
racing to make them would register every metric twice: prometheus-client's DuplicateTimeseries). With
``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the process starts, prometheus-client
writes every process's values to files in that directory, so one ``/metrics`` scrape of any gunicorn
process sums the web processes and the workers that share the directory (one host). Workers on other
hosts keep their own directory; see the README's "Observability".
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram

from workers.errors import GatewayError

FAST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class GatewayMetrics:
    """Every metric the gateway exports (names start with ``smsgw_``)."""

    def __init__(self, registry=None):
        kwargs: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.webhook_seconds = Histogram(
            "smsgw_webhook_seconds", "Time to answer a Twilio webhook", ["route", "status"],
            buckets=FAST_BUCKETS, **kwargs)
        self.messages_in = Counter(
            "smsgw_messages_in", "Inbound messages accepted and queued", ["kind"], **kwargs)
        self.duplicates_dropped = Counter(
            "smsgw_duplicates_dropped", "Inbound webhooks dropped as repeats of a MessageSid", **kwargs)
        self.not_forwarded = Counter(
            "smsgw_inbound_not_forwarded", "Signed inbound webhooks not forwarded to the agent, by reason "
            "(alphanumeric, short_code, own_number, replayed_signature)", ["reason"], **kwargs)
        self.loop_breaker_trips = Counter(
            "smsgw_loop_breaker_trips", "Conversations stopped because they answered faster than a person types",
            **kwargs)
        self.loop_held = Counter(
            "smsgw_loop_held_messages", "Inbound texts kept but not forwarded while a loop breaker is open", **kwargs)
        self.status_callbacks = Counter(
            "smsgw_status_callbacks", "Delivery status callbacks received", ["status"], **kwargs)
        self.messages_out = Counter(
            "smsgw_messages_out", "SMS accepted by Twilio for sending", **kwargs)
        self.segments_sent = Counter(
            "smsgw_segments_sent", "SMS segments accepted by Twilio, by encoding", ["encoding"], **kwargs)
        self.queue_wait_seconds = Histogram(
            "smsgw_queue_wait_seconds", "Time a job waited in the queue before a worker started it", ["job"],
            buckets=WAIT_BUCKETS, **kwargs)
        self.job_seconds = Histogram(
            "smsgw_job_seconds", "Time a worker spent on one job", ["job", "outcome"],
            buckets=SLOW_BUCKETS, **kwargs)
        self.uponai_seconds = Histogram(
            "smsgw_uponai_seconds", "Latency of UponAI API calls", ["operation"], buckets=SLOW_BUCKETS, **kwargs)
        self.uponai_errors = Counter(
            "smsgw_uponai_errors", "Failed UponAI API calls by HTTP status or failure kind", ["operation", "code"],
            **kwargs)
        self.uponai_empty_turns = Counter(
            "smsgw_uponai_empty_turns", "Agent turns that were well-formed but held no text to send", **kwargs)
        self.twilio_seconds = Histogram(
            "smsgw_twilio_seconds", "Latency of Twilio API calls", ["operation"], buckets=SLOW_BUCKETS, **kwargs)
        self.twilio_errors = Counter(
            "smsgw_twilio_errors", "Failed Twilio API calls by Twilio error code, HTTP status or failure kind",
            ["operation", "code"], **kwargs)

    def count_inbound(self, outcome: str, num_media: int = 0) -> None:
        """Count one inbound webhook by what the store made of it ("new", "duplicate", "unqueued")."""
        if outcome == "duplicate":
            self.duplicates_dropped.inc()
        else:
            self.messages_in.labels(kind="mms" if num_media else "sms").inc()

    def count_not_forwarded(self, reason: str) -> None:
        self.not_forwarded.labels(reason=reason).inc()

    def count_sent(self, body: str, num_segments: int | None) -> None:
        """Count one SMS Twilio accepted, and its segments by encoding."""
        from workers.sms_text import segment_info

        info = segment_info(body)
        self.messages_out.inc()
        self.segments_sent.labels(encoding=info.encoding).inc(num_segments or info.segments)


_metrics: GatewayMetrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> GatewayMetrics:
    """This process's metrics, made on first use (once, whatever the number of threads asking)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = GatewayMetrics()
    return _metrics


def error_code(exc: BaseException) -> str:
    """A low-cardinality label for a failed call: its kind (``malformed``), Twilio's error code, the HTTP status..."""
    code = getattr(exc, "kind", None) or getattr(exc, "code", None) or getattr(exc, "status", None)
    if code:
        return str(code)
    text = str(exc).lower()
    if "timeout" in text:
        return "timeout"
    if "connection" in text:
        return "connection"
    return "other"


class MeteredClient:
    """Wraps an outside system's client (UponAI or Twilio): times every public call, counts failures by code."""

    def __init__(self, inner: Any, system: str):
        self._inner = inner
        self._system = system

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return functools.partial(self._timed_call, name, attr)

    def _timed_call(self, operation: str, call, *args, **kwargs):
        m = metrics()
        seconds = m.uponai_seconds if self._system == "uponai" else m.twilio_seconds
        errors = m.uponai_errors if self._system == "uponai" else m.twilio_errors
        started = time.perf_counter()
        try:
            result = call(*args, **kwargs)
        except GatewayError as exc:
            errors.labels(operation=operation, code=error_code(exc)).inc()
            raise
        finally:
            seconds.labels(operation=operation).observe(time.perf_counter() - started)
        if self._system == "twilio" and operation == "send":
            m.count_sent(kwargs.get("body", ""), getattr(result, "num_segments", None))
        return result


def timed_job(func):
    """Decorate an RQ job function: observe its queue wait and run time, by outcome."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        from rq import get_current_job

        m = metrics()
        job = get_current_job()
        if job is not None and job.enqueued_at is not None:
            wait = time.time() - job.enqueued_at.timestamp()
            m.queue_wait_seconds.labels(job=func.__name__).observe(max(0.0, wait))
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = func(*args, **kwargs)
            outcome = "ok" if result is None else "retry"
            return result
        finally:
            m.job_seconds.labels(job=func.__name__, outcome=outcome).observe(time.perf_counter() - started)

    return run
