"""The conversation store under concurrency: a text accepted mid-write never makes a write fail."""

from __future__ import annotations

from redis import ConnectionPool, Redis
from redis.client import Pipeline

from core.model import InboundMessage, conversation_id
from core.store import ConversationStore
from tests.conftest import GATEWAY_NUMBER, new_sid

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


def test_forgetting_a_chat_while_a_text_arrives_does_not_fail(redis, redis_server):
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
