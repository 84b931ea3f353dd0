"""Running admin operations on a worker: enqueue on the admin queue, wait for the answer until a deadline.

The web never calls UponAI or Twilio itself. It enqueues a job of ``workers.admin_ops`` (named by its path:
``core.queues``) on the ``sms-admin`` queue (workers take it before any drain job) and blocks on the
job's result stream (``Job.latest_result(timeout=...)``) on a connection of its own, whose socket
timeout outlasts the wait. At the deadline a job no worker has taken is taken back off the queue (so it never runs
later, unseen); one that is running is left to finish and can be looked up by its id.

Idempotency keys of ``POST /admin/sms`` and ``POST /admin/conversations/<number>/messages`` live in Redis:
``smsgw:idem:{sha256(key)}`` holds the request's fingerprint, its operation id and the latest job id, for
ADMIN_IDEMPOTENCY_TTL_SECONDS. The record and its job are written in one transaction, so concurrent requests
with one key share one job; a key's later job (after one that ended without a result) keeps its operation
id, so the worker resumes what the earlier one began.

At most ADMIN_MAX_WAITING requests per web process wait at once (each holds a web thread, which
Twilio's webhooks need); past that, a change is queued and answered at once with its job id.

An admin job's arguments and answer can hold a number or words (an outbound start's request, a chat's
messages), so results and failures are kept no longer than DATA_RETENTION_DAYS, nor the keys.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from core.queues import ADMIN_QUEUE_NAME, enqueue_admin_job, kept_seconds, operator_message_job, outbound_start_job
from core.redis import connect_redis
from core.state import ConversationStore

CLAIM_ATTEMPTS = 5  # each failed claim means another request claimed the key meanwhile
PENDING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED)


@dataclass(frozen=True)
class Outcome:
    """How an admin job ended from the caller's point of view."""

    # "done", "running" (still working at the deadline), "not_started" (no worker took it, it was taken back),
    # or "queued" (no place was free to wait: queued, not waited for)
    state: str
    job_id: str
    value: dict[str, Any] | None = None  # the job's answer: {"ok": ...} or {"error": {...}}


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class IdempotencyBusy(Exception):
    """The Idempotency-Key's record kept changing under concurrent requests; the caller may retry."""


class AdminBusy(Exception):
    """Every place to wait for a worker in this process is taken (ADMIN_MAX_WAITING)."""


class AdminJobs:
    """Enqueues admin jobs and waits for them."""

    def __init__(self, settings, redis: Redis, store: ConversationStore):
        self.settings = settings
        self.redis = redis
        self.store = store
        self.queue = Queue(ADMIN_QUEUE_NAME, connection=redis)
        self._places = threading.Semaphore(settings.admin_max_waiting)
        # Blocking reads need a socket timeout longer than the wait (the web's usual one is 2 s).
        self.waiting = connect_redis(settings, for_web=True, socket_timeout=settings.admin_wait_seconds + 5)

    def enqueue(self, func: str, args: tuple, *, description: str, job_id: str | None = None,
                conversation_id: str | None = None) -> Job:
        return enqueue_admin_job(self.queue, self.settings, func, args, description=description, job_id=job_id,
                                 conversation_id=conversation_id)

    @contextmanager
    def waiting_place(self) -> Iterator[bool]:
        """Hold one of this process's ADMIN_MAX_WAITING places to wait for a worker, if one is free (True).

        Waiting holds a web thread; the bound keeps threads free for Twilio's webhooks.
        """
        taken = self._places.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                self._places.release()

    def run(self, func: str, args: tuple, *, description: str, conversation_id: str | None = None,
            queue_when_busy: bool = False) -> Outcome:
        """Enqueue an admin job and wait for it until ADMIN_WAIT_SECONDS.

        With no place free to wait, the job is queued unwaited (``queued``) if ``queue_when_busy``,
        else nothing is queued and AdminBusy is raised.
        """
        with self.waiting_place() as may_wait:
            if not may_wait and not queue_when_busy:
                raise AdminBusy
            job = self.enqueue(func, args, description=description, conversation_id=conversation_id)
            return self.wait(job.id) if may_wait else Outcome("queued", job.id)

    def wait(self, job_id: str) -> Outcome:
        """Wait for the job's answer; at the deadline, take a job no worker has started off the queue."""
        try:
            job = Job.fetch(job_id, connection=self.waiting)
        except NoSuchJobError:
            return Outcome("not_started", job_id)
        result = job.latest_result(timeout=max(1, math.ceil(self.settings.admin_wait_seconds)))
        if result is not None:
            return Outcome("done", job_id, answer_of(result))
        if _status(job) == JobStatus.QUEUED and self.queue.remove(job_id):
            job.delete(remove_from_queue=False)
            return Outcome("not_started", job_id)
        result = job.latest_result()  # it may have finished just now
        if result is not None:
            return Outcome("done", job_id, answer_of(result))
        if _status(job) is None:  # another request waiting for it took it off the queue
            return Outcome("not_started", job_id)
        return Outcome("running", job_id)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """What became of an admin job, or None if it is unknown (or not an admin job)."""
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return None
        if job.origin != ADMIN_QUEUE_NAME:
            return None
        result = job.latest_result()
        view: dict[str, Any] = {"job_id": job_id, "status": job.get_status().value,
                                "description": job.description}
        if result is not None:
            view.update(answer_of(result))
        return view

    # -- idempotent outbound starts ---------------------------------------------------------------

    def _key(self, idempotency_key: str) -> str:
        return self.store.idempotency_key(idempotency_key)

    def start_outbound(self, request: dict[str, Any], cid: str, *, idempotency_key: str | None,
                       fingerprint: str, may_start) -> Outcome:
        """Start an outbound conversation once per Idempotency-Key, then wait for it (if a place to wait is free).

        ``may_start()`` is asked before anything new is queued (it raises to refuse). Raises
        IdempotencyConflict when the key was used with another body.
        """
        return self._once(lambda op_id, job_id: outbound_start_job(self.queue, self.settings, op_id, job_id,
                                                                   request, cid),
                          idempotency_key=idempotency_key, fingerprint=fingerprint, may_start=may_start)

    def send_message(self, request: dict[str, Any], cid: str, *, idempotency_key: str | None,
                     fingerprint: str, may_start) -> Outcome:
        """Send an operator's SMS into the conversation once per Idempotency-Key, then wait for it (as above)."""
        return self._once(lambda op_id, job_id: operator_message_job(self.queue, self.settings, op_id, job_id,
                                                                     request, cid),
                          idempotency_key=idempotency_key, fingerprint=fingerprint, may_start=may_start)

    def _once(self, make_job: Callable[[str, str], Job], *, idempotency_key: str | None, fingerprint: str,
              may_start) -> Outcome:
        """Queue the operation's job (``make_job(op_id, job_id)``) once per Idempotency-Key, then wait for it."""
        with self.waiting_place() as may_wait:
            if idempotency_key is None:
                may_start()
                job_id = uuid.uuid4().hex
                self.queue.enqueue_job(make_job(job_id, job_id))
            else:
                claimed = self._claim(self._key(idempotency_key), make_job, fingerprint, may_start)
                if isinstance(claimed, Outcome):
                    return claimed
                job_id = claimed
            return self.wait(job_id) if may_wait else Outcome("queued", job_id)

    def _claim(self, key: str, make_job: Callable[[str, str], Job], fingerprint: str, may_start) -> Outcome | str:
        """The id of the one job that carries out this key's request (queued now if there is none), or its result.

        The key's record and its job are written in one transaction that fails if the record changed
        meanwhile: of concurrent requests, one queues the job and the others find it and wait for it.
        """
        for _ in range(CLAIM_ATTEMPTS):
            raw = self.store.idempotency_record(key)
            if raw is None:
                op_id = uuid.uuid4().hex
                record = {"fingerprint": fingerprint, "op_id": op_id, "job_id": op_id}
            else:
                earlier = json.loads(raw)
                if earlier.get("fingerprint") != fingerprint:
                    raise IdempotencyConflict
                if (done := self._done(earlier)) is not None:
                    return done
                if self._pending(earlier["job_id"]):
                    return earlier["job_id"]
                if (done := self._done(earlier)) is not None:  # it finished just now
                    return done
                # The earlier attempt ended without a result (an error, or no worker took it): resume it.
                record = {**earlier, "job_id": uuid.uuid4().hex}
            may_start()
            if self._swap(key, raw, record, make_job(record["op_id"], record["job_id"])):
                return record["job_id"]
        raise IdempotencyBusy

    def _done(self, record: dict[str, Any]) -> Outcome | None:
        done = self.store.operation_result(record["op_id"])
        return Outcome("done", record["job_id"], {"ok": done}) if done is not None else None

    def _pending(self, job_id: str) -> bool:
        return _status(Job(job_id, connection=self.redis)) in PENDING

    def _swap(self, key: str, expected: bytes | None, record: dict[str, Any], job: Job) -> bool:
        """Write the key's record and queue its job together, if the record is still ``expected``."""
        ttl_seconds = kept_seconds(self.settings, self.settings.admin_idempotency_ttl_seconds)
        return self.store.swap_idempotency_record(key, expected, record, ttl_seconds,
                                                  lambda pipe: self.queue.enqueue_job(job, pipeline=pipe))


def _status(job: Job) -> JobStatus | None:
    """The job's status, or None once it is gone (deleted, or expired)."""
    try:
        return job.get_status()
    except InvalidJobOperation:
        return None


def answer_of(result: Result) -> dict[str, Any]:
    """A job's answer from its RQ result: its return value, or an error for a job that raised."""
    if result.type == Result.Type.SUCCESSFUL and isinstance(result.return_value, dict):
        return result.return_value
    return {"error": {"status": 500, "code": "job_failed", "message": failure_reason(result.exc_string)}}


def failure_reason(exc_string: str | None) -> str:
    """The last line of a job's traceback (the exception and its message), or a generic reason."""
    lines = [line.strip() for line in (exc_string or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "the job failed without an exception (e.g. gave up after its retries)"


def since_epoch(value: str | float | None) -> str | None:
    """An epoch-seconds value as ISO-8601 UTC, or None."""
    if value in (None, ""):
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value)))
    except (TypeError, ValueError, OverflowError):
        return None

