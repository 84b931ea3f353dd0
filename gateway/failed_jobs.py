"""What became of the messages of a failed job, so that operators chase only what still needs them.

A drain job can fail and its messages still be answered: a killed worker's job is retried by RQ
(``core.queues.drain_job_options``) and fails only when every retry was abandoned too, and a later text's
job drains whatever waits before it. Messages given up (answered with the failure notice, kept as dead
letters for a replay) need an operator, and so do messages still waiting with no job left to answer them
(a requeue answers them); messages a later job answered do not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rq.job import Job

from core.queues import DRAIN_JOB
from core.state import ConversationStore

GIVEN_UP = "given_up"  # the person got the failure notice; a requeue answers them
WAITING = "waiting"  # still in the conversation's inbox: a requeue (or the next text's job) answers them
ANSWERED = "answered"  # nothing from before the failure is waiting: answered by a later job


def messages_view(store: ConversationStore, job: Job) -> dict[str, Any]:
    """``messages`` (GIVEN_UP, WAITING, ANSWERED, or None for a job that answers none) and ``needs_operator``."""
    state = _messages_state(store, job)
    if state is None:
        needed = True  # not a drain job (an idle check, an admin operation): the reason says what failed
    elif state == GIVEN_UP:  # a replay needs the dead letters (they expire, or were erased)
        needed = any(store.has_dead_letter(sid) for sid in job.meta["failed_sids"])
    else:
        needed = state == WAITING
    return {"messages": state, "needs_operator": needed}


def _messages_state(store: ConversationStore, job: Job) -> str | None:
    if job.func_name != DRAIN_JOB:
        return None
    if job.meta.get("failed_sids"):
        return GIVEN_UP
    cid = job.meta.get("conversation_id") or (job.args[0] if job.args else None)
    if cid is None:
        return None
    head = store.peek(cid)  # the oldest waiting message
    failed_at = (job.ended_at or datetime.now(UTC)).timestamp()
    return WAITING if head is not None and head[1].received_at <= failed_at else ANSWERED
