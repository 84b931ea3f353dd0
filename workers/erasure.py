"""Erasing a person on request (``DELETE /admin/conversations/<number>``): every key and every job that holds their
number or words, on every channel, with nothing sent about them afterwards.

An erase takes precedence over the person's texts. It first marks each conversation as being erased
(``erasing:{cid}``): from then on no drain starts a turn there, and a running one lets the conversation go after
its current step (``core.state.conversations``). It then takes the lock, which is free after at most that one step
(the texts still waiting are deleted unanswered). Then:

- It ends the chat at UponAI. If UponAI cannot end it, nothing is deleted, and the operator retries.
- It deletes the conversation's keys (``core.state.erase``).
- It deletes every RQ job that names the person, in every queue and registry: queued, scheduled, deferred,
  failed, finished and canceled. That covers admin jobs (an outbound start quotes the number, a chat read its
  words), operator events (their number and words) and drain jobs that ended (a failure may quote words; one still
  to run holds the conversation's id only, and may be a new text's). A job that is running when the erase looks waits
  for it to end (at most ``ERASE_WAIT_FOR_STARTED_SECONDS``), then is deleted too.
- It leaves a mark (``erased:{cid}``, the time of the erase, with no number in it). An event created before that
  time is then dropped when its delivery comes round, never posted (``core.events.erased_before``).

A bare number (``+1415...``) names the person on every channel and every gateway number, unless ``from`` names
one. ``whatsapp:+1415...`` names that channel alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus

from core.events import erase_mark_seconds
from core.queues import QUEUE_NAME
from core.state.keys import bare_address
from workers.chats import end_chat
from workers.locking import LOCK_TTL_SECONDS, acquire_waiting, holding
from workers.services import Services

log = logging.getLogger(__name__)

ERASE_JOB = "workers.admin_ops.erase_conversation_job"
# A running job that names the person (an event being posted) is waited for this long, then deleted.
ERASE_WAIT_FOR_STARTED_SECONDS = 60.0
JOB_FETCH_BATCH = 500
PENDING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED, JobStatus.CREATED)


class EraseBusy(Exception):
    """The conversation stayed locked longer than the wait (one step of a turn that would not end)."""


def erase_person(services: Services, cid: str, token: str, *, person: str | None = None,
                 gateway: str | None = None, wait_seconds: float) -> dict[str, Any]:
    """Erase conversation ``cid`` and, given ``person`` (a bare number), every conversation with them on any channel
    (with ``gateway`` only, when given); returns what was deleted. Raises EraseBusy."""
    store = services.store
    cids = [cid] + [c for c in (store.conversations_of(person, gateway) if person else []) if c != cid]
    ended, keys = [], 0
    for one in cids:
        chat_id, deleted = _erase_conversation(services, one, token, wait_seconds)
        keys += deleted
        if chat_id:
            ended.append(chat_id)
    numbers = {bare_address(person)} if person else set()
    jobs = erase_jobs(services, set(cids), numbers)
    return {"conversation_ids": cids, "ended_chat_ids": ended, "keys_deleted": keys, "jobs_deleted": jobs}


def _erase_conversation(services: Services, cid: str, token: str, wait_seconds: float) -> tuple[str | None, int]:
    store = services.store
    store.mark_erasing(cid, token, wait_seconds + LOCK_TTL_SECONDS)
    try:
        if not acquire_waiting(store, cid, token, wait_seconds, 0.1):
            raise EraseBusy(f"the conversation stayed busy for {wait_seconds:.0f} s")
        with holding(store, services.jobs, cid, token):
            chat_id = store.conversation(cid).get("chat_id")
            end_chat(services, cid, chat_id)
            deleted = store.erase(cid)
            store.mark_erased(cid, time.time(), erase_mark_seconds(services.settings))
    finally:
        store.unmark_erasing(cid, token)
    return chat_id, deleted


def erase_jobs(services: Services, cids: set[str], numbers: set[str]) -> int:
    """Delete every RQ job that names one of the conversations or numbers; returns how many.

    A job names them by its ``conversation_id`` meta (admin jobs, events), by its first argument (drain jobs), or
    by the number anywhere in its arguments. A running job is waited for, then deleted.
    """
    redis = services.store.redis
    current = get_current_job()
    deleted = 0
    deadline = time.monotonic() + ERASE_WAIT_FOR_STARTED_SECONDS
    while True:
        running = 0
        for job in _all_jobs(redis):
            if (current is not None and job.id == current.id) or not _names(job, cids, numbers):
                continue
            if job.get_status(refresh=False) == JobStatus.STARTED:
                running += 1
                continue
            job.delete()
            deleted += 1
        if not running or time.monotonic() > deadline:
            if running:
                log.warning("erase: %d running job(s) naming the person did not end in %.0f s; left", running,
                            ERASE_WAIT_FOR_STARTED_SECONDS)
            return deleted
        time.sleep(0.2)  # a running delivery ends within its deadline; polling is cheap


def _all_jobs(redis):
    """Every job RQ holds, whatever its queue or registry (one SCAN of ``rq:job:*``)."""
    prefix = Job.redis_job_namespace_prefix
    batch: list[str] = []
    for raw in redis.scan_iter(match=prefix + "*", count=1000):
        name = raw.decode() if isinstance(raw, bytes) else raw
        job_id = name[len(prefix):]
        if ":" in job_id:
            continue  # a job's dependents or dependencies set
        batch.append(job_id)
        if len(batch) >= JOB_FETCH_BATCH:
            yield from _fetch(redis, batch)
            batch = []
    yield from _fetch(redis, batch)


def _fetch(redis, job_ids: list[str]):
    for job in Job.fetch_many(job_ids, connection=redis):
        if job is not None:
            yield job


def _names(job: Job, cids: set[str], numbers: set[str]) -> bool:
    try:
        if job.func_name == ERASE_JOB:
            return False  # an earlier erase: it holds the conversation id only
        args, kwargs = job.args, job.kwargs
    except DeserializationError:  # not a job of this code's (its data cannot be read back): judged by its meta
        return job.meta.get("conversation_id") in cids
    if job.meta.get("conversation_id") in cids:
        return True
    if job.origin == QUEUE_NAME and tuple(args[:1]) and args[0] in cids:
        # A drain job holds the conversation's id only; one still to run may be a new text's (it finds nothing
        # of the erased ones): only an ended one goes, whose error may quote words.
        return job.get_status(refresh=False) not in PENDING
    quoted = repr((args, kwargs))
    return any(number in quoted for number in numbers)
