"""The conversation store under concurrency and failures: a text accepted mid-write never makes a write fail,
each new text is stored with its RQ job in one transaction, and a repeat leaves neither."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from rq import Queue

from core.model import InboundMessage, conversation_id
from core.queues import DRAIN_RETRY_INTERVALS_SECONDS, QUEUE_NAME, enqueue_drain, queue_depth
from core.state import ConversationStore
from tests.conftest import GATEWAY_NUMBER, new_sid, new_store, waiting_drains

PERSON = "+14155550188"
CID = conversation_id(GATEWAY_NUMBER, PERSON)
SETTINGS = SimpleNamespace(uponai_read_timeout_seconds=2, data_retention_seconds=30 * 86400)


def test_forgetting_a_chat_while_texts_arrive_does_not_fail(redis, queue):
    """The webhook writes the conversation's hash while a worker forgets its chat: neither fails nor loses a
    text (a WATCH/MULTI forget raised WatchError here). Eight texts race the forget; the next chat is left alone."""
    store = new_store(redis)
    store.set_chat(CID, "chat_1", "agent_test")
    start = threading.Barrier(9)

    def deliver(index: int) -> str:
        start.wait(10)
        return _accept(store, f"are you there? {index}")

    with ThreadPoolExecutor(8) as pool:
        arriving = [pool.submit(deliver, index) for index in range(8)]
        start.wait(10)
        forgot = store.forget_chat(CID, "chat_1")
        outcomes = [future.result() for future in arriving]

    assert forgot is True and outcomes == ["new"] * 8 and store.inbox_length(CID) == 8
    state = store.conversation(CID)
    assert "chat_id" not in state and "agent_id" not in state
    store.set_chat(CID, "chat_2", "agent_test")
    assert store.forget_chat(CID, "chat_1") is False  # a newer chat is left alone
    assert store.conversation(CID)["chat_id"] == "chat_2"


# -- accepting a text: the text and its RQ drain job in one transaction, a repeat leaves no job --------------


def _accept(store: ConversationStore, body: str = "hello", sid: str | None = None, *, person: str = PERSON) -> str:
    queue = Queue(QUEUE_NAME, connection=store.redis)
    message = InboundMessage(sid=sid or new_sid(), from_=person, to=GATEWAY_NUMBER, body=body)
    return store.accept(message, lambda pipe, job_id: enqueue_drain(queue, message.conversation_id, SETTINGS,
                                                                    pipeline=pipe, job_id=job_id),
                        replicas=0, replica_timeout_seconds=1.0)


def test_concurrent_deliveries_of_one_webhook_leave_one_text_and_one_job(redis, queue):
    store = new_store(redis)
    sid = new_sid()
    start = threading.Barrier(12)

    def deliver(_: int) -> str:
        start.wait(10)
        return _accept(store, "hello", sid)

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(deliver, range(12)))

    assert sorted(outcomes) == ["duplicate"] * 11 + ["new"]
    assert waiting_drains(queue) == [CID] and store.inbox_length(CID) == 1
    assert redis.get(f"smsgw:seen:{sid}") == b"queued:" + queue.job_ids[0].encode()
    assert len(list(redis.scan_iter("rq:job:*"))) == 1  # the repeats' jobs were taken back, records and all


def test_each_text_is_an_rq_job_visible_to_rq_with_its_enqueue_time(redis, queue):
    store = new_store(redis)
    start = threading.Barrier(6)

    def deliver(index: int) -> str:
        start.wait(10)
        return _accept(store, f"text {index}")

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(deliver, range(6)))

    assert outcomes == ["new"] * 6
    assert waiting_drains(queue) == [CID] * 6 and store.inbox_length(CID) == 6
    assert queue_depth(queue) == queue.count == 6  # what rq info, rq-exporter and the autoscalers read
    assert all(job.enqueued_at is not None and job.retries_left == len(DRAIN_RETRY_INTERVALS_SECONDS)
               for job in queue.get_jobs())


def test_skipped_and_replayed_texts_leave_no_job(redis, queue):
    store = new_store(redis)
    assert _accept(store, "from ourselves", person=GATEWAY_NUMBER) == "skipped"
    assert queue.count == 0 and not list(redis.scan_iter("rq:job:*"))


def test_scripts_are_loaded_again_when_redis_lost_them(redis, queue):
    """A restarted Redis (or SCRIPT FLUSH) no longer has the scripts: the next call loads them and goes on, and
    the job queued in the transaction whose script was missing is taken back."""
    store = new_store(redis)
    assert _accept(store, "before") == "new"
    redis.script_flush()
    assert _accept(store, "after") == "new"
    assert store.inbox_length(CID) == 2 and waiting_drains(queue) == [CID, CID]
    assert len(list(redis.scan_iter("rq:job:*"))) == 2
