"""The conversation store under concurrency and failures: a text accepted mid-write never makes a write fail,
one wake-up per quiet conversation, none queued twice, none lost between taking a wake-up and queueing its job."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from redis import ConnectionPool, Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue

from config import load_settings
from core.model import InboundMessage, conversation_id
from core.queues import enqueue_drain, queue_depth
from core.state import ConversationStore
from tests.conftest import GATEWAY_NUMBER, inbound_form, new_sid, post_signed, wait_for, waiting_drains
from workers.jobs import RQJobPort, recover_stalled
from workers.wakeups import BATCH, queue_woken

PERSON = "+14155550188"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


class _TextArrivesBeforeEachTransaction(Pipeline):
    """A pipeline that lets a text be accepted (from another connection) just before its MULTI."""

    arrive = staticmethod(lambda: None)

    def multi(self):
        self.arrive()
        return super().multi()


class RedisWithArrivingTexts(Redis):
    """A real Redis client whose transactions each meet an inbound text in the window WATCH..EXEC."""

    def __init__(self, url: str, arrive):
        super().__init__(connection_pool=ConnectionPool.from_url(url))
        self.arrive = arrive

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = _TextArrivesBeforeEachTransaction(self.connection_pool, self.response_callbacks, transaction,
                                                 shard_hint)
        pipe.arrive = self.arrive
        return pipe


def test_forgetting_a_chat_while_a_text_arrives_does_not_fail(redis, redis_server, queue):
    webhook_side = ConversationStore(redis)
    arrived: list[str] = []

    def text_arrives():
        message = InboundMessage(sid=new_sid(), from_=PERSON, to=GATEWAY_NUMBER, body="are you there?")
        arrived.append(webhook_side.accept(message))

    client = RedisWithArrivingTexts(redis_server.url, text_arrives)
    try:
        check_forget_chat(ConversationStore(client), arrived)
    finally:
        client.connection_pool.disconnect()


def check_forget_chat(worker_side: ConversationStore, arrived: list[str]) -> None:
    worker_side.set_chat(CID, "chat_1", "agent_test")

    assert worker_side.forget_chat(CID, "chat_1") is True  # used to raise WatchError
    state = worker_side.conversation(CID)
    assert "chat_id" not in state and "agent_id" not in state
    assert worker_side.inbox_length(CID) == len(arrived) and all(outcome == "new" for outcome in arrived)

    worker_side.set_chat(CID, "chat_2", "agent_test")
    assert worker_side.forget_chat(CID, "chat_1") is False  # a newer chat is left alone
    assert worker_side.conversation(CID)["chat_id"] == "chat_2"


def test_forgetting_a_chat_while_the_other_worker_starts_the_next_drain_job_does_not_fail(redis, redis_server):
    """The race behind test_reset_word_ends_the_chat_confirms_and_starts_fresh failing one full run in two.

    A worker still draining takes "reset" from the inbox and forgets the chat, while the other worker
    starts the drain job queued for that text and clears ``drain_pending`` in the same hash. With
    WATCH/MULTI the forget failed (WatchError), the job failed with "reset" still at the inbox head and
    no job queued for it, and nothing answered it before the recovery sweep, 20 s or more later.
    """
    conv = ConversationStore.key("conv", CID)
    other_worker = ConversationStore(redis)

    def next_drain_job_starts():
        other_worker.clear_drain_pending(CID)

    client = RedisWithArrivingTexts(redis_server.url, next_drain_job_starts)
    try:
        worker_side = ConversationStore(client)
        worker_side.set_chat(CID, "chat_1", "agent_test")
        redis.hset(conv, "drain_pending", "1")  # the job queued for "reset", not started yet

        assert worker_side.forget_chat(CID, "chat_1") is True
    finally:
        client.connection_pool.disconnect()
    assert not redis.hexists(conv, "chat_id")


# -- accepting a text: one wake-up per quiet conversation, none queued twice, none lost on the way to a job ------


def _accept(store: ConversationStore, body: str = "hello", sid: str | None = None) -> str:
    return store.accept(InboundMessage(sid=sid or new_sid(), from_=PERSON, to=GATEWAY_NUMBER, body=body))


def _services(env, store: ConversationStore, queue: Queue) -> SimpleNamespace:
    return SimpleNamespace(store=store, jobs=RQJobPort(queue, load_settings(env, dotenv_path=None)))


def test_concurrent_deliveries_of_one_webhook_wake_the_conversation_once(redis, queue):
    store = ConversationStore(redis)
    sid = new_sid()
    start = threading.Barrier(12)

    def deliver(_: int) -> str:
        start.wait(10)
        return _accept(store, "hello", sid)

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(deliver, range(12)))

    assert sorted(outcomes) == ["duplicate"] * 11 + ["new"]
    assert waiting_drains(queue) == [CID] and store.inbox_length(CID) == 1
    assert redis.get(f"smsgw:seen:{sid}") == b"queued"


def test_texts_arriving_at_once_in_a_quiet_conversation_wake_it_once(redis, queue):
    store = ConversationStore(redis)
    start = threading.Barrier(6)

    def deliver(index: int) -> str:
        start.wait(10)
        return _accept(store, f"text {index}")

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(deliver, range(6)))

    assert outcomes == ["new"] * 6
    assert waiting_drains(queue) == [CID] and store.inbox_length(CID) == 6


def test_a_burst_of_texts_while_the_drain_waits_joins_it(app, client, redis, queue):
    store = app.extensions["sms_gateway"].store
    for index in range(5):
        assert post_signed(client, "/twilio/sms", inbound_form(f"text {index}", from_=PERSON)).status_code == 200
    assert waiting_drains(queue) == [CID] and store.inbox_length(CID) == 5

    store.clear_drain_pending(CID)  # the drain job started: the next text needs a drain of its own
    assert post_signed(client, "/twilio/sms", inbound_form("one more", from_=PERSON)).status_code == 200
    assert waiting_drains(queue) == [CID, CID]


def test_a_worker_turns_each_wakeup_into_one_drain_job(env, redis, queue):
    store = ConversationStore(redis)
    people = [f"+1415555{index:04d}" for index in range(70)]  # more than one batch
    for person in people:
        store.accept(InboundMessage(sid=new_sid(), from_=person, to=GATEWAY_NUMBER, body="hi"))
    services = _services(env, store, queue)

    assert queue_woken(services) == BATCH and queue_woken(services, block_seconds=0.1) == len(people) - BATCH
    assert queue_woken(services) == 0
    expected = [conversation_id(GATEWAY_NUMBER, person) for person in people]
    assert waiting_drains(queue) == expected  # in arrival order, one job each
    assert [job.func_name for job in queue.get_jobs()] == ["workers.jobs.drain"] * len(people)


def test_waiting_for_a_wakeup_returns_as_one_arrives(env, redis, queue):
    store = ConversationStore(redis)
    services = _services(env, store, queue)
    taken: list[int] = []
    waiter = threading.Thread(target=lambda: taken.append(queue_woken(services, block_seconds=10)))
    waiter.start()
    wait_for(lambda: any(c.get("cmd") == "blpop" for c in redis.client_list()), message="the wait for a wake-up")
    _accept(store)
    waiter.join(10)

    assert taken == [1] and waiting_drains(queue) == [CID]


class _JobsThatFailOnce(RQJobPort):
    def enqueue_woken_drains(self, cids):
        raise RedisConnectionError("Redis went away between taking the wake-ups and queueing their jobs")


def test_wakeups_taken_when_redis_fails_are_put_back_in_order(env, redis, queue):
    store = ConversationStore(redis)
    people = ["+14155550101", "+14155550102", "+14155550103"]
    for person in people:
        store.accept(InboundMessage(sid=new_sid(), from_=person, to=GATEWAY_NUMBER, body="hi"))
    failing = SimpleNamespace(store=store, jobs=_JobsThatFailOnce(queue, load_settings(env, dotenv_path=None)))

    with pytest.raises(RedisConnectionError):
        queue_woken(failing)
    assert waiting_drains(queue) == [conversation_id(GATEWAY_NUMBER, p) for p in people]
    assert queue_woken(_services(env, store, queue)) == 3 and queue.count == 3


def test_a_wakeup_taken_by_a_worker_that_died_is_recovered_by_the_sweep(env, redis, queue):
    store = ConversationStore(redis)
    _accept(store)
    assert store.take_wakeups(BATCH) == [CID]  # ...and the worker is killed before it queues the job
    services = _services(env, store, queue)
    assert recover_stalled(services) == 0 and waiting_drains(queue) == []  # too fresh to tell from one on its way
    # A minute later the claim of a waiting drain is stale.
    long_ago = f"{time.time() - 3600:.3f}"
    store.touch(CID, last_inbound_at=long_ago, drain_pending=long_ago)

    assert recover_stalled(services) == 1
    assert waiting_drains(queue) == [CID] and store.inbox_length(CID) == 1


def test_the_queue_depth_counts_wakeups_not_yet_made_jobs(env, redis, queue):
    store = ConversationStore(redis)
    _accept(store)
    enqueue_drain(queue, "other", load_settings(env, dotenv_path=None))
    assert queue_depth(queue) == 2 and queue.count == 1


def test_scripts_are_loaded_again_when_redis_lost_them(redis, queue):
    """A restarted Redis (or SCRIPT FLUSH) no longer has the scripts: the next call loads them and goes on."""
    store = ConversationStore(redis)
    assert _accept(store, "before") == "new"
    redis.script_flush()
    assert _accept(store, "after") == "new"
    assert store.inbox_length(CID) == 2 and waiting_drains(queue) == [CID]
