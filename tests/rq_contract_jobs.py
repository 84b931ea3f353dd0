"""Plain job functions for tests/test_rq_contract.py (imported by the worker processes by their dotted path)."""

from __future__ import annotations

import time

from rq import get_current_job


def double(value: int) -> int:
    return 2 * value


def boom() -> None:
    raise ValueError("boom: a job that fails")


def fail_first_run() -> str:
    """Fails on its first run, succeeds on the next (a job enqueued with a Retry)."""
    job = get_current_job()
    runs = job.connection.incr(f"test:runs:{job.id}")
    if runs == 1:
        raise RuntimeError("first run fails")
    return f"run {runs}"


def sleep_for(seconds: float) -> float:
    """Counts its runs; waits in short steps (a job timeout is raised in the job's thread between two of them,
    as it is in a turn's Python code between two reads of an HTTP answer)."""
    job = get_current_job()
    job.connection.incr(f"test:runs:{job.id}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return seconds


def boom_with(words: str) -> None:
    """Fails; its argument stands for a person's words (what an event job carries)."""
    raise ValueError("boom: a job that fails")
