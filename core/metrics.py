"""Prometheus metrics shared by the web and worker processes (the worker's wrappers are in workers.metering).

Metrics are made once per process, never at import: each process builds them before it serves
(``create_app``, the worker's start), and ``metrics()`` builds them under a lock if not (two threads
racing to make them would register every metric twice: prometheus-client's DuplicateTimeseries). With
``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the process starts, prometheus-client
writes every process's values to files in that directory, so one ``/metrics`` scrape of any gunicorn
process sums the web processes and the workers that share the directory (one host). A worker on a host
without a web process serves its own on ``METRICS_PORT`` (``workers.startup.serve_metrics``); see
docs/observability.md.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter, Histogram

FAST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TURN_TEXT_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50)
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
            "smsgw_inbound_not_forwarded", "Signed inbound texts not forwarded to the agent, by reason "
            "(alphanumeric, short_code, own_number, replayed_signature; opted_out: a STOP waited behind it)",
            ["reason"], **kwargs)
        self.replies_withheld = Counter(
            "smsgw_replies_withheld", "Agent replies not sent because the person opted out or an operator took over "
            "before they went",
            **kwargs)
        self.loop_breaker_trips = Counter(
            "smsgw_loop_breaker_trips", "Conversations stopped because they answered faster than a person types",
            **kwargs)
        self.loop_held = Counter(
            "smsgw_loop_held_messages", "Inbound texts kept but not forwarded while a loop breaker is open", **kwargs)
        self.turn_texts = Histogram(
            "smsgw_turn_texts", "Inbound texts answered together in one agent turn (a burst is one turn)",
            buckets=TURN_TEXT_BUCKETS, **kwargs)
        self.status_callbacks = Counter(
            "smsgw_status_callbacks", "Delivery status callbacks received", ["status"], **kwargs)
        self.messages_out = Counter(
            "smsgw_messages_out", "SMS accepted by Twilio for sending", **kwargs)
        self.segments_sent = Counter(
            "smsgw_segments_sent", "SMS segments accepted by Twilio, by encoding", ["encoding"], **kwargs)
        # kind: "conversation" (drain, close_idle: the sms queue) or "admin" (the operator's, the sms-admin queue).
        self.queue_wait_seconds = Histogram(
            "smsgw_queue_wait_seconds", "Time a job waited in the queue before a worker started it", ["kind", "job"],
            buckets=WAIT_BUCKETS, **kwargs)
        self.job_seconds = Histogram(
            "smsgw_job_seconds", "Time a worker spent on one job", ["kind", "job", "outcome"],
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
        self.credentials_refused = Counter(
            "smsgw_credentials_refused", "Messages left for a requeue because Twilio or UponAI refused the "
            "gateway's credentials (Twilio 401/20003, UponAI 401/403)", ["service"], **kwargs)
        self.twilio_errors = Counter(
            "smsgw_twilio_errors", "Failed Twilio API calls by Twilio error code, HTTP status or failure kind",
            ["operation", "code"], **kwargs)

    def count_inbound(self, outcome: str, num_media: int = 0) -> None:
        """Count one inbound webhook by what the store made of it ("new" or "duplicate")."""
        if outcome == "duplicate":
            self.duplicates_dropped.inc()
        else:
            self.messages_in.labels(kind="mms" if num_media else "sms").inc()

    def count_not_forwarded(self, reason: str) -> None:
        self.not_forwarded.labels(reason=reason).inc()

    def count_sent(self, encoding: str, segments: int) -> None:
        """Count one SMS Twilio accepted, and its segments by encoding."""
        self.messages_out.inc()
        self.segments_sent.labels(encoding=encoding).inc(segments)


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
