"""The worker flow driven in process (no RQ worker): real Redis, real clients, the local simulators."""

from __future__ import annotations

import pytest

from config import load_settings
from core.model import conversation_id
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER
from workers import flow
from workers.jobs import build_services

PERSON = "+14155550142"


CID = conversation_id(GATEWAY_NUMBER, PERSON)


@pytest.fixture
def backing_off(env, redis, text_in, uponai):
    """Services whose conversation is backing off: its first text failed (UponAI 500), a retry is due in ~5 s."""
    services = build_services(load_settings({**env, "RETRY_INTERVALS_SECONDS": "5"}, dotenv_path=None), redis)
    uponai.inject("complete", Fault(status=500))
    text_in("first", from_=PERSON)
    with pytest.raises(flow.RetryLater):
        flow.drain_conversation(services, CID, "retry-job")
    assert float(services.store.conversation(CID)["retry_at"]) > 0
    return services


def test_a_text_after_an_early_finished_retry_is_answered(backing_off, text_in, uponai, twilio):
    """RQ's scheduler may start a scheduled retry early (whole seconds); once it has drained the conversation,
    the backoff is over: a text arriving before the old ``retry_at`` must not be turned away unanswered."""
    services, cid = backing_off, CID

    # The scheduled retry runs (seconds before retry_at, as if the scheduler were early) and answers "first".
    assert flow.drain_conversation(services, cid, "retry-job") == 1
    assert "retry_at" not in services.store.conversation(cid)

    # A later text's own drain job answers it at once.
    text_in("second", from_=PERSON)
    assert flow.drain_conversation(services, cid, "next-job") == 1
    assert [text for _, text in uponai.completion_log] == ["first", "second"]
    assert len(twilio.sent_to(PERSON)) == 2


def test_other_drain_jobs_wait_out_the_backoff(backing_off, uponai, twilio):
    services, cid = backing_off, CID
    # Another job (a new text's) must not skip the backoff: it leaves the conversation to the retry.
    assert flow.drain_conversation(services, cid, "other-job") == 0
    assert [text for _, text in uponai.completion_log] == []
    assert twilio.sent_to(PERSON) == []
