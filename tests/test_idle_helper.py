"""The tests' idle detection (conftest.wait_idle) sees every kind of work still to come, and nothing else."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq import Queue

from core.queues import ADMIN_QUEUE_NAME, QUEUE_NAME
from core.state import ConversationStore
from tests.conftest import new_store, pending_work, wait_idle


def test_nothing_to_do_is_idle_even_with_an_idle_check_an_hour_away(redis):
    new_store(redis).schedule_idle_check("c1", time.time() + 3600)
    Queue(QUEUE_NAME, connection=redis).enqueue_in(timedelta(hours=1), "workers.jobs.drain", "c2")
    assert pending_work(redis) == []
    wait_idle(redis, timeout=2)


@pytest.mark.parametrize("work", ["queued", "admin queued", "retry due soon", "idle check due soon", "lock", "inbox"])
def test_each_kind_of_work_keeps_the_gateway_busy(redis, work):
    sms, admin = Queue(QUEUE_NAME, connection=redis), Queue(ADMIN_QUEUE_NAME, connection=redis)
    if work == "queued":
        sms.enqueue("workers.jobs.drain", "c1")
    elif work == "admin queued":
        admin.enqueue("workers.admin_ops.start_outbound_job", "op-1", {})
    elif work == "retry due soon":
        sms.enqueue_in(timedelta(seconds=2), "workers.jobs.drain", "c1")
    elif work == "idle check due soon":
        new_store(redis).schedule_idle_check("c1", time.time() + 2)
    elif work == "lock":
        redis.set(ConversationStore.key("lock", "c1"), "drain:job-1")
    else:
        redis.rpush(ConversationStore.key("inbox", "c1"), "{}")
    assert pending_work(redis)
    with pytest.raises(AssertionError, match="to be idle"):
        wait_idle(redis, timeout=0.3)
