"""Idle checks: a time per conversation in one sorted set, handed to a ``close_idle`` job when it is due.

The activity of a conversation moves its time (no RQ job per conversation until then); the scheduler queues
the due ones with a lease, so that a job lost with its worker is queued again; any number of jobs for one
conversation end its chat once.
"""

from __future__ import annotations

import time

import pytest

from core.model import conversation_id
from core.queues import CLOSE_IDLE_JOB
from core.state.counters import IDLE_CHECK_LEASE_SECONDS, IDLE_DUE_KEY
from tests.conftest import GATEWAY_NUMBER, new_store, wait_for, wait_idle
from workers import jobs

PERSON = "+14155550142"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def conv(redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis.hgetall(f"smsgw:conv:{CID}").items()}


@pytest.fixture
def services(env, redis):
    from config import load_settings

    return jobs.build_services(load_settings(env, dotenv_path=None), redis)


def test_each_reply_moves_the_idle_check_with_no_job_per_conversation(start_workers, redis, text_in, twilio, queue):
    start_workers(1, CHAT_IDLE_TIMEOUT_SECONDS=3600)
    dues = []
    for count, words in enumerate(["hello", "again"], start=1):
        text_in(words, from_=PERSON)
        wait_for(lambda n=count: len(twilio.sent_to(PERSON)) == n, message=f"reply {count}")
        wait_idle(redis)
        dues.append(redis.zscore(IDLE_DUE_KEY, CID))
        assert dues[-1] == pytest.approx(float(conv(redis)["last_activity_at"]) + 3600, abs=0.01)
    assert dues[1] > dues[0]
    assert redis.zcard(IDLE_DUE_KEY) == 1
    assert queue.scheduled_job_registry.count == 0 and queue.count == 0


def test_a_text_over_the_rate_limit_moves_the_idle_check_too(start_workers, redis, text_in, twilio, uponai):
    """Activity noted on its own (no reply recorded with it): the rate notice, not the agent."""
    start_workers(1, CHAT_IDLE_TIMEOUT_SECONDS=3600, RATE_LIMIT_MESSAGES=1)
    text_in("hello", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 1, message="the reply")
    wait_idle(redis)
    first = redis.zscore(IDLE_DUE_KEY, CID)
    text_in("again", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the rate notice")
    wait_idle(redis)
    assert len(uponai.completion_log) == 1  # the second text did not reach the agent
    assert redis.zscore(IDLE_DUE_KEY, CID) == pytest.approx(float(conv(redis)["last_activity_at"]) + 3600, abs=0.01)
    assert redis.zscore(IDLE_DUE_KEY, CID) > first


def test_a_due_check_is_queued_once_and_again_only_when_its_lease_is_over(services, redis, queue):
    store = services.store
    store.schedule_idle_check("due", time.time() - 1)
    store.schedule_idle_check("later", time.time() + 3600)

    assert jobs.queue_due_idle_checks(services) == 1
    [job] = queue.get_jobs()
    assert (job.func_name, job.args) == (CLOSE_IDLE_JOB, ("due",))
    assert redis.zscore(IDLE_DUE_KEY, "due") == pytest.approx(time.time() + IDLE_CHECK_LEASE_SECONDS, abs=5)
    assert jobs.queue_due_idle_checks(services) == 0  # its job waits: not queued again

    redis.zadd(IDLE_DUE_KEY, {"due": time.time() - 1})  # the lease is over: the job was lost with its worker
    assert jobs.queue_due_idle_checks(services) == 1
    assert [j.args for j in queue.get_jobs()] == [("due",), ("due",)]
    assert redis.zscore(IDLE_DUE_KEY, "later") is not None


def test_a_backlog_of_due_checks_is_queued_in_one_sweep(services, redis, queue):
    count = 2 * jobs.IDLE_CHECKS_PER_STEP + 7
    redis.zadd(IDLE_DUE_KEY, {f"c{n}": time.time() - 60 + n / 1000 for n in range(count)})

    assert jobs.queue_due_idle_checks(services) == count
    assert queue.count == count
    assert [job.args[0] for job in queue.get_jobs(0, 3)] == ["c0", "c1", "c2"]  # most overdue first


def test_checks_queued_many_times_end_the_chat_once(start_workers, redis, text_in, twilio, uponai, services):
    """Two schedulers racing (each holding the lock for a moment) queue the same check: one close, one entry."""
    start_workers(2, CHAT_IDLE_TIMEOUT_SECONDS=1)
    text_in("hello", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    chat_id = wait_for(lambda: conv(redis).get("chat_id"), message="the chat")
    for _ in range(3):
        services.jobs.enqueue_idle_checks([CID], time.time())

    wait_for(lambda: "chat_id" not in conv(redis), timeout=30, message="the idle chat to be closed")
    wait_for(lambda: redis.zscore(IDLE_DUE_KEY, CID) is None, timeout=30, message="no idle check left")
    wait_idle(redis)
    assert [r.path for r in uponai.calls("end_chat")] == [f"/api/chats/{chat_id}/end"]


def test_the_worker_process_scheduler_closes_an_idle_chat(start_worker_processes, redis, text_in, twilio, uponai):
    start_worker_processes(1, CHAT_IDLE_TIMEOUT_SECONDS=1)
    text_in("hello", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")

    wait_for(lambda: uponai.calls("end_chat"), timeout=30, message="the idle close by the scheduler child")
    wait_for(lambda: redis.zscore(IDLE_DUE_KEY, CID) is None, timeout=30, message="no idle check left")
    assert "chat_id" not in conv(redis)


def test_erase_removes_the_idle_check(redis):
    store = new_store(redis)
    store.schedule_idle_check(CID, time.time() + 3600)
    store.schedule_idle_check("someone-else", time.time() + 3600)
    store.erase(CID)
    assert redis.zrange(IDLE_DUE_KEY, 0, -1) == [b"someone-else"]
