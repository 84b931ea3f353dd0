"""The shared handoff contract: the handoff flag, the away log (in order, once per ref, expiring with the
conversation's data, erased on request) and ``emit_event`` (nothing without a webhook, once per event id)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from rq import Queue

from config import Settings, load_settings
from core.events import EVENT_JOB, emit_event, event_job_id, event_marker_key
from core.model import conversation_id
from core.queues import EVENTS_QUEUE_NAME
from core.state import ConversationStore, away_key, away_refs_key, key
from tests.conftest import GATEWAY_NUMBER, settings_env

PERSON = "+14155550177"
CID = conversation_id(GATEWAY_NUMBER, PERSON)
RETENTION = 3 * 24 * 3600
RECEIVER = "http://127.0.0.1:9/events"
SECRET = "whsec_" + "ZXZlbnRzLXNlY3JldC1vZi10aGUtc3RvcmUtdGVzdHM="  # Standard Webhooks: 32 bytes


@pytest.fixture
def store(redis):
    return ConversationStore(redis, dedupe_ttl_seconds=Settings().dedupe_ttl_seconds, retention_seconds=RETENTION)


def test_a_handoff_starts_and_ends_once(store, redis):
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)

    assert store.start_handoff(CID, "admin-api") is True
    assert store.start_handoff(CID, "someone-else") is False  # already on: the first taker stays
    state = store.conversation(CID)
    assert state["handoff"] == "1" and state["handoff_by"] == "admin-api" and float(state["handoff_at"]) > 0
    assert store.in_handoff(CID)

    assert store.end_handoff(CID) is True
    assert store.end_handoff(CID) is False
    state = store.conversation(CID)
    assert not {"handoff", "handoff_at", "handoff_by"} & set(state) and state["person"] == PERSON
    assert not store.in_handoff(CID)


def test_the_away_log_keeps_order_and_each_ref_once(store, redis):
    assert store.add_away(CID, "person", "hi, can I move my booking?", ref="SM1") is True
    assert store.add_away(CID, "operator", "Sure, to which day?", ref="idem-1") is True
    assert store.add_away(CID, "person", "hi, can I move my booking?", ref="SM1") is False  # a retry
    assert store.add_away(CID, "person", "Friday", ref="SM2") is True

    log = store.away_log(CID)
    assert [(e["who"], e["text"], e["ref"]) for e in log] == [
        ("person", "hi, can I move my booking?", "SM1"), ("operator", "Sure, to which day?", "idem-1"),
        ("person", "Friday", "SM2")]
    assert all(float(e["at"]) > 0 for e in log)
    # The burst helper's turn reads the raw key: a list of JSON entries, oldest first.
    assert [json.loads(raw)["ref"] for raw in redis.lrange(away_key(CID), 0, -1)] == ["SM1", "idem-1", "SM2"]


def test_an_entry_consumed_from_the_list_is_not_added_again_by_a_retry(store, redis):
    store.add_away(CID, "operator", "We have you down for Friday.", ref="idem-9")
    redis.delete(away_key(CID))  # the log is gone (it expired, or was trimmed): the refs set still holds the ref

    assert store.add_away(CID, "operator", "We have you down for Friday.", ref="idem-9") is False
    assert store.away_log(CID) == []


def test_concurrent_adds_of_one_ref_make_one_entry(store):
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda _: store.add_away(CID, "operator", "hello", ref="same"), range(16)))
    assert added.count(True) == 1 and len(store.away_log(CID)) == 1


def test_the_away_log_expires_with_the_conversation_data(store, redis):
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    store.add_away(CID, "person", "words", ref="SM1")
    for name in (away_key(CID), away_refs_key(CID), key("conv", CID)):
        assert 0 < redis.ttl(name) <= RETENTION


def test_bad_entries_are_refused(store):
    with pytest.raises(ValueError, match="who must be one of person, operator"):
        store.add_away(CID, "agent", "text", ref="r")
    with pytest.raises(ValueError, match="needs a ref"):
        store.add_away(CID, "person", "text", ref="")
    assert store.away_log(CID) == []


def test_erase_removes_the_away_log(store, redis):
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    store.start_handoff(CID, "admin-api")
    store.add_away(CID, "person", "my address is 1 Main St", ref="SM1")

    store.erase(CID)

    assert not redis.exists(away_key(CID), away_refs_key(CID), key("conv", CID))


# -- emit_event ----------------------------------------------------------------------------------------


def settings_for(redis_server, uponai_server, twilio_server, **overrides):
    return load_settings(settings_env(redis_server, uponai_server, twilio_server, **overrides), dotenv_path=None)


@pytest.fixture
def events_settings(redis_server, uponai_server, twilio_server):
    return settings_for(redis_server, uponai_server, twilio_server, EVENTS_WEBHOOK_URL=RECEIVER,
                        EVENTS_WEBHOOK_SECRET=SECRET)


def queued_events(redis) -> list:
    return [job for job in Queue(EVENTS_QUEUE_NAME, connection=redis).jobs if job.func_name == EVENT_JOB]


def test_no_webhook_no_event(redis, env):
    settings = load_settings(env, dotenv_path=None)
    emit_event(redis, settings, "handoff.requested", event_id="handoff.requested:SM1", conversation_id=CID,
               number=PERSON, text="HUMAN")
    assert queued_events(redis) == [] and not redis.exists(event_marker_key("handoff.requested:SM1"))


def test_an_event_is_queued_once_per_event_id_without_its_body(redis, events_settings):
    for _ in range(3):
        emit_event(redis, events_settings, "handoff.message_received", event_id="received:SM1",
                   conversation_id=CID, number=PERSON, text="my card number is 4242", message_sid="SM1")

    [job] = queued_events(redis)
    event, event_id = job.args
    assert job.id == event_job_id("received:SM1") and event_id == "received:SM1"
    assert event["type"] == "handoff.message_received" and event["id"].startswith("evt_")
    assert event["conversation"] == {"id": CID, "number": PERSON}
    assert event["data"] == {"message_sid": "SM1"}  # no text: EVENTS_INCLUDE_BODIES is off
    assert PERSON not in job.description and job.meta == {"conversation_id": CID}  # an erase finds its jobs
    assert job.retries_left == len(events_settings.events_retry_intervals_seconds)


def test_the_body_is_included_only_when_allowed(redis, redis_server, uponai_server, twilio_server):
    settings = settings_for(redis_server, uponai_server, twilio_server, EVENTS_WEBHOOK_URL=RECEIVER,
                            EVENTS_WEBHOOK_SECRET=SECRET, EVENTS_INCLUDE_BODIES="true")
    emit_event(redis, settings, "handoff.requested", event_id="requested:SM2", conversation_id=CID, number=PERSON,
               text="HUMAN please")
    [job] = queued_events(redis)
    assert job.args[0]["data"] == {"text": "HUMAN please"}


def test_an_event_emitted_in_the_callers_transaction_goes_out_with_it(redis, events_settings):
    with redis.pipeline() as pipe:
        pipe.multi()
        pipe.hset(key("conv", CID), "opted_out", "1")
        emit_event(pipe, events_settings, "conversation.opted_out", event_id="opted_out:SM3", conversation_id=CID,
                   number=PERSON)
        assert queued_events(redis) == []  # nothing before the transaction runs
        pipe.execute()

    [job] = queued_events(redis)
    assert job.args[0]["type"] == "conversation.opted_out"
    assert redis.get(event_marker_key("opted_out:SM3")) == b"queued"
    emit_event(redis, events_settings, "conversation.opted_out", event_id="opted_out:SM3", conversation_id=CID,
               number=PERSON)
    assert len(queued_events(redis)) == 1  # emitted already


def test_an_unknown_event_type_is_a_programming_error(redis, events_settings):
    with pytest.raises(ValueError, match="unknown event type"):
        emit_event(redis, events_settings, "handoff.maybe", event_id="x", conversation_id=CID, number=PERSON)


def test_entries_stay_once_heard_and_the_cap_drops_only_heard_ones(store, redis):
    """Entries are numbered; the turn that hears them moves a cursor (they stay); past ``AWAY_KEPT`` the oldest
    heard entries go, never an unheard one, and the cursor stays right."""
    from core.state.handoff import AWAY_KEPT

    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    for index in range(AWAY_KEPT - 50):
        store.add_away(CID, "person", f"text {index}", ref=f"SM{index}")
    fresh, content = store.fix_turn(CID, ["SMturn1"], "hello", "chat-1")
    assert fresh and content.count("\nCustomer: text ") == AWAY_KEPT - 50
    assert all(e["heard_by_agent"] for e in store.away_log(CID))

    for index in range(AWAY_KEPT - 50, AWAY_KEPT + 300):  # 350 more, none heard
        store.add_away(CID, "person", f"text {index}", ref=f"SM{index}")
    log = store.away_log(CID)
    # Every heard entry went to make room; the 350 unheard ones all stay, over the cap.
    assert [e["seq"] for e in log] == list(range(AWAY_KEPT - 50 + 1, AWAY_KEPT + 300 + 1))
    assert not any(e["heard_by_agent"] for e in log)

    fresh, content = store.fix_turn(CID, ["SMturn2"], "again", "chat-1")
    lines = content.splitlines()
    assert lines[1] == f"Customer: text {AWAY_KEPT - 50}" and lines[-3] == f"Customer: text {AWAY_KEPT + 299}"
    assert len(lines) == 350 + 3 and lines[-1] == "again"
    assert all(e["heard_by_agent"] for e in store.away_log(CID))

    store.add_away(CID, "operator", "one more", ref="op-1")  # over the cap: heard ones go, oldest first
    log = store.away_log(CID)
    assert len(log) == AWAY_KEPT and log[-1]["seq"] == AWAY_KEPT + 301 and not log[-1]["heard_by_agent"]
    assert store.fix_turn(CID, ["SMturn3"], "last", "chat-1")[1].splitlines()[1:-1] == [
        "Business: one more", "[End of that part. The customer's new message follows:]"]


def test_a_log_gone_before_the_conversation_numbers_on_from_the_cursor(store, redis):
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    store.add_away(CID, "person", "first", ref="SM1")
    store.fix_turn(CID, ["SMturn1"], "hello", "chat-1")
    redis.delete(away_key(CID))  # the log expired (its last entry was long ago); the conversation's hash lives on
    store.add_away(CID, "person", "second", ref="SM2")
    [entry] = store.away_log(CID)
    assert entry["seq"] == 2 and entry["heard_by_agent"] is False
    assert "Customer: second" in store.fix_turn(CID, ["SMturn2"], "hi", "chat-1")[1]
