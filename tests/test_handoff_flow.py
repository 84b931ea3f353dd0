"""A human takes over, seen from the worker (issue 12, part 2): texts kept from the agent during a handoff, what
was said meanwhile reaching the agent with the next turn after the resume, the keywords, the handoff word, events."""

from __future__ import annotations

import time

import pytest

from config import load_settings
from core.model import conversation_id
from core.state.deliveries import DEFAULT_AWAY_PREFACE
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, wait_for, wait_idle
from tests.test_events import SECRET, EventsReceiver, events_env_overrides, verify
from workers import flow
from workers.jobs import build_services

PERSON = "+14155550188"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def services_for(env, redis, **overrides):
    return build_services(load_settings({**env, **{k: str(v) for k, v in overrides.items()}}, dotenv_path=None), redis)


def preface(*lines: str) -> str:
    return "\n".join([DEFAULT_AWAY_PREFACE.header, *lines, DEFAULT_AWAY_PREFACE.footer]) + "\n"


@pytest.fixture
def receiver():
    server = EventsReceiver().start()
    yield server
    server.stop()


def test_texts_during_a_handoff_are_kept_from_the_agent_and_unanswered(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis)
    store = services.store
    text_in("hi", from_=PERSON)
    assert flow.drain_conversation(services, CID, "job") == 1  # a chat with the agent exists
    assert store.start_handoff(CID, by="admin-api")

    sids = [text_in(text, from_=PERSON)["MessageSid"] for text in ("I want a human", "my ref is K7")]
    assert flow.drain_conversation(services, CID, "job-2") == 2
    assert [text for _, text in uponai.completion_log] == ["hi"]  # nothing more reached the agent
    assert twilio.sent_to(PERSON) == ["You said: hi"]  # and nothing was answered
    assert [(e["who"], e["text"], e["ref"]) for e in store.away_log(CID)] == [
        ("person", "I want a human", sids[0]), ("person", "my ref is K7", sids[1])]
    assert store.inbox_length(CID) == 0


def test_after_the_resume_the_next_turn_brings_what_was_said_as_a_marked_preface(env, redis, text_in, uponai,
                                                                                 twilio):
    services = services_for(env, redis)
    store = services.store
    store.start_handoff(CID, by="admin-api")
    text_in("can I move my booking to Friday?", from_=PERSON)
    flow.drain_conversation(services, CID, "job")
    store.add_away(CID, "operator", "Done: Friday 10:00.", ref="op-1")  # what the operator-message job writes
    assert store.end_handoff(CID)

    text_in("thanks! and the address?", from_=PERSON)
    flow.drain_conversation(services, CID, "job-2")
    expected = preface("Customer: can I move my booking to Friday?", "Business: Done: Friday 10:00.") \
        + "thanks! and the address?"
    assert [text for _, text in uponai.completion_log] == [expected]
    assert len(twilio.sent_to(PERSON)) == 1
    # Heard by the agent (marked in the step that fixed the turn), and still kept for the conversation view.
    assert [(e["text"], e["heard_by_agent"]) for e in store.away_log(CID)] == [
        ("can I move my booking to Friday?", True), ("Done: Friday 10:00.", True)]

    text_in("see you", from_=PERSON)
    flow.drain_conversation(services, CID, "job-3")
    assert [text for _, text in uponai.completion_log][-1] == "see you"  # once only
    assert [e["heard_by_agent"] for e in store.away_log(CID)] == [True, True]


def test_the_conversation_view_keeps_what_was_said_marked_heard_after_the_resume(env, redis, text_in, uponai,
                                                                                 twilio):
    from gateway import create_app

    token = "handoff-view-token-0123456789"
    client = create_app({**env, "ADMIN_API_TOKEN": token, "ADMIN_WAIT_SECONDS": "0.2"}).test_client()
    auth = {"Authorization": f"Bearer {token}"}
    services = services_for(env, redis)
    store = services.store
    text_in("hello", from_=PERSON)
    flow.drain_conversation(services, CID, "job")
    assert client.post(f"/admin/conversations/{PERSON}/handoff", headers=auth).status_code == 200
    kept = text_in("my ref is K7", from_=PERSON)["MessageSid"]
    flow.drain_conversation(services, CID, "job-2")
    store.add_away(CID, "operator", "Found it: K7 ships today.", ref="op-7")
    view = client.get(f"/admin/conversations/{PERSON}", headers=auth).get_json()
    assert [(e["who"], e["text"], e["heard_by_agent"]) for e in view["away_log"]] == [
        ("person", "my ref is K7", False), ("operator", "Found it: K7 ships today.", False)]
    assert client.post(f"/admin/conversations/{PERSON}/resume", headers=auth).status_code == 200

    text_in("great, thanks", from_=PERSON)
    flow.drain_conversation(services, CID, "job-3")
    text_in("one more question", from_=PERSON)
    flow.drain_conversation(services, CID, "job-4")

    assert [text for _, text in uponai.completion_log] == [
        "hello", preface("Customer: my ref is K7", "Business: Found it: K7 ships today.") + "great, thanks",
        "one more question"]  # the following turn does not repeat them
    view = client.get(f"/admin/conversations/{PERSON}", headers=auth).get_json()
    assert [(e["who"], e["text"], e["ref"], e["heard_by_agent"]) for e in view["away_log"]] == [
        ("person", "my ref is K7", kept, True), ("operator", "Found it: K7 ships today.", "op-7", True)]
    assert all(e["at"] for e in view["away_log"])

    # A second handoff: its entries are new and unheard, the earlier ones stay heard, and only the new ones
    # reach the agent.
    store.start_handoff(CID, by="admin-api")
    text_in("it did not arrive", from_=PERSON)
    flow.drain_conversation(services, CID, "job-5")
    store.end_handoff(CID)
    view = client.get(f"/admin/conversations/{PERSON}", headers=auth).get_json()
    assert [e["heard_by_agent"] for e in view["away_log"]] == [True, True, False]
    text_in("any news?", from_=PERSON)
    flow.drain_conversation(services, CID, "job-6")
    assert [text for _, text in uponai.completion_log][-1] == preface("Customer: it did not arrive") + "any news?"
    assert [e["heard_by_agent"] for e in store.away_log(CID)] == [True, True, True]


def test_a_retried_turn_resends_the_same_preface_and_a_later_entry_waits_for_the_next_turn(env, redis, text_in,
                                                                                           uponai, twilio):
    services = services_for(env, redis, AMBIGUOUS_RETRY_DELAY_SECONDS="0.1", RETRY_INTERVALS_SECONDS="0")
    store = services.store
    store.add_away(CID, "operator", "We called you back.", ref="op-1")
    text_in("ok, thanks", from_=PERSON)
    uponai.inject("complete", Fault(drop_after_apply=True))  # applied at UponAI, the answer lost
    with pytest.raises(flow.RetryLater):
        flow.drain_conversation(services, CID, "job")
    store.add_away(CID, "operator", "One more thing.", ref="op-2")  # an operator message between the attempts
    wait_for(lambda: float(store.conversation(CID).get("retry_at") or 0) < time.time(), timeout=5,
             message="the retry to be due")
    flow.drain_conversation(services, CID, "job")

    first = preface("Business: We called you back.") + "ok, thanks"
    assert [text for _, text in uponai.completion_log] == [first]  # read back, not posted again
    assert twilio.sent_to(PERSON) == [f"You said: {first}"]
    # The entry added between the attempts is not heard yet: it waits for the next turn.
    assert [(e["text"], e["heard_by_agent"]) for e in store.away_log(CID)] == [
        ("We called you back.", True), ("One more thing.", False)]
    text_in("bye", from_=PERSON)
    flow.drain_conversation(services, CID, "job-2")
    assert [text for _, text in uponai.completion_log][-1] == preface("Business: One more thing.") + "bye"
    assert [e["heard_by_agent"] for e in store.away_log(CID)] == [True, True]


def test_a_keyword_after_the_resume_keeps_the_away_log_for_the_next_real_turn(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis)
    store = services.store
    store.start_handoff(CID, by="admin-api")
    text_in("where is my parcel", from_=PERSON)
    flow.drain_conversation(services, CID, "job")
    store.end_handoff(CID)
    text_in("HELP", from_=PERSON)
    flow.drain_conversation(services, CID, "job-2")
    assert uponai.completion_log == [] and [e["heard_by_agent"] for e in store.away_log(CID)] == [False]
    text_in("hello again", from_=PERSON)
    flow.drain_conversation(services, CID, "job-3")
    assert [text for _, text in uponai.completion_log] == [preface("Customer: where is my parcel") + "hello again"]


def test_stop_during_a_handoff_opts_out(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis)
    store = services.store
    store.start_handoff(CID, by="admin-api")
    text_in("STOP", from_=PERSON)
    text_in("are you there", from_=PERSON)
    flow.drain_conversation(services, CID, "job")
    assert store.conversation(CID)["opted_out"] == "1"
    assert store.away_log(CID) == []  # neither the STOP nor what follows it is kept for the operator
    assert uponai.completion_log == [] and twilio.sent_to(PERSON) == []


def test_the_handoff_word_hands_over_and_confirms_once(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis, HANDOFF_KEYWORD="human", AMBIGUOUS_RETRY_DELAY_SECONDS="0.1",
                            RETRY_INTERVALS_SECONDS="0")
    store = services.store
    text_in("Human", from_=PERSON)
    twilio.inject("send", Fault(drop_after_apply=True))  # the confirmation went out, the answer was lost
    with pytest.raises(flow.RetryLater):
        flow.drain_conversation(services, CID, "job")
    wait_for(lambda: float(store.conversation(CID).get("retry_at") or 0) < time.time(), timeout=5,
             message="the retry to be due")
    flow.drain_conversation(services, CID, "job")
    conversation = store.conversation(CID)
    assert (conversation["handoff"], conversation["handoff_by"]) == ("1", "person")
    assert twilio.sent_to(PERSON) == [services.settings.handoff_confirmation_text]  # once
    assert uponai.completion_log == []

    text_in("HUMAN", from_=PERSON)  # asked again while handed over: kept for the operator, not confirmed again
    flow.drain_conversation(services, CID, "job-2")
    assert twilio.sent_to(PERSON) == [services.settings.handoff_confirmation_text]
    assert [e["text"] for e in store.away_log(CID)] == ["HUMAN"]


def test_the_handoff_word_is_off_by_default_and_checked(env, redis, text_in, uponai):
    from config import SettingsError

    services = services_for(env, redis)
    assert services.settings.handoff_keyword is None
    text_in("human", from_=PERSON)
    flow.drain_conversation(services, CID, "job")
    assert [text for _, text in uponai.completion_log] == ["human"]
    with pytest.raises(SettingsError, match="HANDOFF_KEYWORD"):
        load_settings({**env, "HANDOFF_KEYWORD": "reset"}, dotenv_path=None)
    with pytest.raises(SettingsError, match="HANDOFF_KEYWORD"):
        load_settings({**env, "HANDOFF_KEYWORD": "a person"}, dotenv_path=None)


def test_the_operator_hears_of_it_through_events_once_each(start_workers, receiver, redis, redis_server,
                                                           uponai_server, twilio_server, text_in, uponai, twilio):
    from tests.test_events import events_env

    settings = load_settings(events_env(redis_server, uponai_server, twilio_server, receiver), dotenv_path=None)
    start_workers(1, HANDOFF_KEYWORD="HUMAN", **events_env_overrides(settings))
    asked = text_in("human", from_=PERSON)["MessageSid"]
    wait_for(lambda: twilio.sent_to(PERSON), message="the confirmation")
    kept = text_in("my booking ref is K7", from_=PERSON)["MessageSid"]
    stop = text_in("STOP", from_=PERSON)["MessageSid"]
    wait_for(lambda: len(receiver.calls("event")) >= 3, timeout=30, message="three events")
    wait_idle(redis)

    calls = receiver.calls("event")
    assert all(verify(SECRET, c.headers, c.body) for c in calls)
    events = sorted((c.json() for c in calls), key=lambda e: e["type"])
    assert [(e["type"], e["data"].get("message_sid")) for e in events] == [
        ("conversation.opted_out", stop), ("handoff.message_received", kept), ("handoff.requested", asked)]
    assert all(e["conversation"] == {"id": CID, "number": PERSON} and "text" not in e["data"] for e in events)
    assert uponai.completion_log == []


def test_a_send_refused_as_opted_out_is_an_opted_out_event(start_workers, receiver, redis, redis_server,
                                                           uponai_server, twilio_server, text_in, twilio):
    from tests.test_events import events_env

    settings = load_settings(events_env(redis_server, uponai_server, twilio_server, receiver), dotenv_path=None)
    start_workers(1, **events_env_overrides(settings))
    twilio.inject("send", Fault(status=400, body={"code": 21610, "message": "Attempt to send to unsubscribed "
                                                                           "recipient", "status": 400}))
    text_in("hello", from_=PERSON)
    [call] = wait_for(lambda: receiver.calls("event"), timeout=30, message="the event")
    wait_idle(redis)
    assert len(receiver.calls("event")) == 1
    event = call.json()
    assert event["type"] == "conversation.opted_out" and event["data"] == {"error_code": "21610"}
    assert redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1"
