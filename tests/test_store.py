"""The conversation store under concurrency and failures: a text accepted mid-write never makes a write fail,
one drain job per wake-up, none queued twice, none lost between accepting a text and queueing its job."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import pytest
from redis import ConnectionPool, Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue

from config import load_settings
from core.model import InboundMessage, conversation_id
from core.queues import QUEUE_NAME, enqueue_drain
from core.state import ConversationStore
from tests.conftest import GATEWAY_NUMBER, inbound_form, new_sid, post_signed, wait_for
from workers.jobs import RQJobPort, recover_stalled

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


def test_forgetting_a_chat_while_a_text_arrives_does_not_fail(env, redis, redis_server, queue):
    webhook_side = ConversationStore(redis)
    settings = load_settings(env, dotenv_path=None)
    arrived: list[str] = []

    def text_arrives():
        message = InboundMessage(sid=new_sid(), from_=PERSON, to=GATEWAY_NUMBER, body="are you there?")
        arrived.append(webhook_side.accept(
            message, enqueue=lambda pipe: enqueue_drain(queue, CID, settings, pipeline=pipe)))

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


# -- accepting a text: one drain job per wake-up, none twice, none lost between the two round trips -----------


class QueueThatFailsOnce(Queue):
    """The gateway's real RQ queue, except that its first enqueue meets a Redis failure (after the accept step)."""

    failures = 1

    def enqueue_call(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("Redis went away between accepting the text and queueing its job")
        return super().enqueue_call(*args, **kwargs)


def _queued_drains(queue: Queue) -> list[str]:
    return [job.args[0] for job in queue.get_jobs()]


def test_a_retry_after_redis_failed_between_accepting_and_queueing_queues_it_once(app, client, redis, queue):
    gw = app.extensions["sms_gateway"]
    app.extensions["sms_gateway"] = replace(gw, queue=QueueThatFailsOnce(QUEUE_NAME, connection=redis))
    form = inbound_form("are you there?", from_=PERSON)

    assert post_signed(client, "/twilio/sms", form).status_code == 503  # Twilio retries a 503
    assert redis.get(f"smsgw:seen:{form['MessageSid']}").startswith(b"pending") and queue.count == 0
    assert post_signed(client, "/twilio/sms", form).status_code == 200  # the retry queues its job...
    assert post_signed(client, "/twilio/sms", form).status_code == 200  # ...and a later repeat queues nothing

    assert _queued_drains(queue) == [CID]
    assert [m.sid for m in gw.store.inbox(CID)] == [form["MessageSid"]]
    assert redis.get(f"smsgw:seen:{form['MessageSid']}") == b"queued"


def test_concurrent_deliveries_of_one_webhook_queue_one_job(env, redis, queue):
    store = ConversationStore(redis)
    settings = load_settings(env, dotenv_path=None)
    message = InboundMessage(sid=new_sid(), from_=PERSON, to=GATEWAY_NUMBER, body="hello")
    second_accepted = threading.Event()

    def enqueue_slowly(pipe):  # the first delivery holds its claim (accepted, not queued) while the second runs
        second_accepted.wait(10)
        enqueue_drain(queue, CID, settings, pipeline=pipe)

    outcomes: list[str] = []
    first = threading.Thread(target=lambda: outcomes.append(store.accept(message, enqueue=enqueue_slowly)))
    first.start()
    wait_for(lambda: (redis.get(f"smsgw:seen:{message.sid}") or b"").startswith(b"pending"),
             message="the first delivery's accept")
    outcomes.append(store.accept(message, enqueue=lambda pipe: enqueue_drain(queue, CID, settings, pipeline=pipe)))
    second_accepted.set()
    first.join(10)

    assert sorted(outcomes) == ["duplicate", "new"]
    assert _queued_drains(queue) == [CID] and store.inbox_length(CID) == 1


def test_texts_arriving_at_once_in_a_quiet_conversation_wake_it_with_one_job(env, redis, queue):
    store = ConversationStore(redis)
    settings = load_settings(env, dotenv_path=None)
    start = threading.Barrier(6)

    def deliver(index: int) -> str:
        message = InboundMessage(sid=new_sid(), from_=PERSON, to=GATEWAY_NUMBER, body=f"text {index}")
        start.wait(10)
        return store.accept(message, enqueue=lambda pipe: enqueue_drain(queue, CID, settings, pipeline=pipe))

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(deliver, range(6)))

    assert outcomes == ["new"] * 6
    assert _queued_drains(queue) == [CID] and store.inbox_length(CID) == 6


def test_a_burst_of_texts_while_the_drain_job_waits_joins_it(app, client, redis, queue):
    store = app.extensions["sms_gateway"].store
    for index in range(5):
        assert post_signed(client, "/twilio/sms", inbound_form(f"text {index}", from_=PERSON)).status_code == 200
    assert _queued_drains(queue) == [CID] and store.inbox_length(CID) == 5

    store.clear_drain_pending(CID)  # the job started: the next text needs a job of its own
    assert post_signed(client, "/twilio/sms", inbound_form("one more", from_=PERSON)).status_code == 200
    assert _queued_drains(queue) == [CID, CID]


def test_a_text_whose_web_died_before_queueing_is_recovered_by_the_sweep(env, redis, queue):
    store = ConversationStore(redis)
    settings = load_settings(env, dotenv_path=None)
    message = InboundMessage(sid=new_sid(), from_=PERSON, to=GATEWAY_NUMBER, body="hello")

    def web_dies(pipe):
        raise RedisConnectionError("the web was killed here")

    with pytest.raises(RedisConnectionError):
        store.accept(message, enqueue=web_dies)
    services = SimpleNamespace(store=store, jobs=RQJobPort(queue, settings))
    assert recover_stalled(services) == 0 and queue.count == 0  # too fresh to tell from a job on its way
    # Twilio did not retry; a minute later the claim of a waiting job is stale.
    long_ago = f"{time.time() - 3600:.3f}"
    store.touch(CID, last_inbound_at=long_ago, drain_pending=long_ago)

    assert recover_stalled(services) == 1
    assert _queued_drains(queue) == [CID] and store.inbox_length(CID) == 1
