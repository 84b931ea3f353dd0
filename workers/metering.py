"""Wrappers that feed the metrics from the worker side: outside systems' calls and RQ jobs."""

from __future__ import annotations

import functools
import time
from typing import Any

from core.metrics import error_code, metrics
from workers.errors import GatewayError
from workers.sms_text import segment_info


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
            info = segment_info(kwargs.get("body", ""))
            m.count_sent(info.encoding, getattr(result, "num_segments", None) or info.segments)
        return result


def timed_job(func):
    """Decorate a conversation job (drain, close_idle): its queue wait and run time, by outcome.

    Outcomes: ``ok``, ``retry`` (it returned an RQ Retry), ``failed`` (it raised).
    """
    return _timed(func, "conversation", func.__name__, lambda result: "ok" if result is None else "retry")


def timed_admin_job(func):
    """Decorate an admin job (``workers.admin_ops``): as ``timed_job``, labelled ``kind="admin"``.

    Outcomes: ``ok``, ``error`` (answered the operator with an error: a 4xx of the admin API, UponAI or
    Twilio refusing), ``failed`` (it raised).
    """
    return _timed(func, "admin", func.__name__.removesuffix("_job"),
                  lambda result: "error" if isinstance(result, dict) and "error" in result else "ok")


def _timed(func, kind: str, name: str, outcome_of):
    @functools.wraps(func)
    def run(*args, **kwargs):
        from rq import get_current_job

        m = metrics()
        job = get_current_job()
        if job is not None and job.enqueued_at is not None:
            wait = time.time() - job.enqueued_at.timestamp()
            m.queue_wait_seconds.labels(kind=kind, job=name).observe(max(0.0, wait))
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = func(*args, **kwargs)
            outcome = outcome_of(result)
            return result
        finally:
            m.job_seconds.labels(kind=kind, job=name, outcome=outcome).observe(time.perf_counter() - started)

    return run
