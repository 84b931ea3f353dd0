"""Bursts: the texts a person sends in a row are answered as one agent turn (issue 12, part 1)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from config import load_settings
from core.model import conversation_id
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, turn_lines, wait_for, wait_idle
from workers import flow
from workers.jobs import build_services

PERSON = "+14155550177"
CID = conversation_id(GATEWAY_NUMBER, PERSON)
TOKEN = "burst-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def services_for(env, redis, **overrides):
    return build_services(load_settings({**env, **{k: str(v) for k, v in overrides.items()}}, dotenv_path=None), redis)


def test_three_texts_in_a_row_make_one_turn_with_the_default_window(start_workers, redis, text_in, uponai, twilio):
    start_workers(1, INBOUND_QUIET_SECONDS="2")  # the default window (the tests' default is 0)
    for i, text in enumerate(["hi", "I need to move my booking", "to Friday"]):
        if i:
            time.sleep(0.3)  # the person's typing pace, not synchronisation
        text_in(text, from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the reply")
    wait_idle(redis)
    assert [text for _, text in uponai.completion_log] == ["hi\nI need to move my booking\nto Friday"]
    assert twilio.sent_to(PERSON) == ["You said: hi\nI need to move my booking\nto Friday"]


def test_the_cap_starts_the_turn_although_the_person_keeps_typing(start_workers, redis, text_in, uponai, twilio):
    """A quiet window longer than the test's timeouts: only the cap after the oldest text can start the turn."""
    start_workers(1, INBOUND_QUIET_SECONDS="120", INBOUND_MAX_WAIT_SECONDS="1")
    text_in("one", from_=PERSON)
    text_in("two", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the reply at the cap")
    wait_idle(redis)
    assert turn_lines(uponai) == ["one", "two"] and len(uponai.completion_log) == 1


def test_texts_sent_while_the_agent_answers_make_exactly_one_more_turn(start_workers, redis, text_in, uponai,
                                                                       twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    start_workers(2, INBOUND_QUIET_SECONDS="2")
    text_in("first", from_=PERSON)
    wait_for(lambda: uponai.calls("complete"), timeout=30, message="the first turn to be in flight")
    for text in ("second", "third", "fourth"):
        text_in(text, from_=PERSON)
    release.set()
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, timeout=30, message="both replies")
    wait_idle(redis)
    assert [text for _, text in uponai.completion_log] == ["first", "second\nthird\nfourth"]
    assert twilio.sent_to(PERSON) == ["re: first", "re: second\nthird\nfourth"]


def not_forwarded_for_opt_out() -> float:
    from core.metrics import metrics

    return next((s.value for m in metrics().not_forwarded.collect() for s in m.samples
                 if s.name.endswith("_total") and s.labels.get("reason") == "opted_out"), 0.0)


def test_stop_inside_a_burst_stops_what_follows(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis)
    before = not_forwarded_for_opt_out()
    for text in ("hello", "are you there", "STOP", "one more", "and another"):
        text_in(text, from_=PERSON)
    assert flow.drain_conversation(services, CID, "job") == 5
    # The texts before the STOP waited with it: they are not forwarded, and nothing is sent for them (a reply
    # would reach the person after their STOP); nothing after it either.
    assert uponai.completion_log == [] and uponai.calls("create_chat") == []
    assert twilio.sent_to(PERSON) == []
    assert services.store.conversation(CID)["opted_out"] == "1"
    assert not_forwarded_for_opt_out() - before == 2
    assert services.store.inbox_length(CID) == 0
    text_in("START", from_=PERSON)
    text_in("back again", from_=PERSON)
    assert flow.drain_conversation(services, CID, "job-2") == 2
    assert [text for _, text in uponai.completion_log] == ["back again"]
    assert twilio.sent_to(PERSON) == ["You said: back again"]


def test_a_stop_at_the_end_of_a_typed_burst_stops_it_all_within_the_quiet_window(start_workers, redis, text_in,
                                                                                 uponai, twilio):
    # A window well above the typing pace: a machine that stalls for a second between two texts still sees one
    # burst (with the default 2 s the margin is 1.7 s).
    start_workers(1, INBOUND_QUIET_SECONDS="6")
    for i, text in enumerate(["hi", "I need to move my booking", "stop"]):
        if i:
            time.sleep(0.3)  # the person's typing pace, not synchronisation
        text_in(text, from_=PERSON)
    wait_for(lambda: redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1", timeout=30, message="the opt-out")
    wait_idle(redis)
    assert uponai.completion_log == [] and twilio.messages == []


def test_texts_after_a_keyword_that_only_changes_state_still_wait_for_a_stop_behind(env, redis, text_in, uponai,
                                                                                   twilio):
    """HELP at the head is handled at its place (Twilio answers it); the text after it, with a STOP behind, is
    not forwarded; the reset word before a STOP sends no confirmation."""
    services = services_for(env, redis)
    for text in ("HELP", "what are your hours", "RESET", "STOP"):
        text_in(text, from_=PERSON)
    assert flow.drain_conversation(services, CID, "job") == 4
    assert uponai.completion_log == [] and twilio.messages == []
    assert services.store.conversation(CID)["opted_out"] == "1"


def test_a_stop_sent_while_the_agent_answers_withholds_the_reply(start_workers, redis, text_in, uponai, twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    start_workers(2)
    first = text_in("what time do you open", from_=PERSON)["MessageSid"]
    wait_for(lambda: uponai.calls("complete"), timeout=30, message="the turn to be in flight")
    text_in("STOP", from_=PERSON)
    release.set()
    wait_for(lambda: redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1", timeout=30, message="the opt-out")
    wait_idle(redis)
    assert [text for _, text in uponai.completion_log] == ["what time do you open"]
    assert twilio.messages == []  # the reply to the text before the STOP was withheld
    assert redis.hget(f"smsgw:msg:{first}", "part:reply:0") == b"withheld:opted_out"


def test_a_retried_turn_sends_nothing_once_a_stop_waits_behind_it(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis, AMBIGUOUS_RETRY_DELAY_SECONDS="0.1", RETRY_INTERVALS_SECONDS="0")
    text_in("part one", from_=PERSON)
    text_in("part two", from_=PERSON)
    uponai.inject("complete", Fault(drop_after_apply=True))  # posted and answered at UponAI, the answer lost
    with pytest.raises(flow.RetryLater):
        flow.drain_conversation(services, CID, "job")
    text_in("STOP", from_=PERSON)
    wait_for(lambda: float(services.store.conversation(CID).get("retry_at") or 0) < time.time(), timeout=5,
             message="the retry to be due")
    assert flow.drain_conversation(services, CID, "job") == 3
    assert [text for _, text in uponai.completion_log] == ["part one\npart two"]  # neither read back nor posted
    assert len(uponai.calls("complete")) == 1 and uponai.calls("get_chat") == []
    assert twilio.messages == []
    assert services.store.conversation(CID)["opted_out"] == "1"


def test_a_reply_refused_as_opted_out_sends_no_further_part(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis)
    uponai.responder = lambda chat, text: ["first part", "second part"]
    twilio.inject("send", Fault(status=400, body={"code": 21610, "message": "Attempt to send to unsubscribed "
                                                                           "recipient", "status": 400}))
    first = text_in("hello", from_=PERSON)["MessageSid"]
    assert flow.drain_conversation(services, CID, "job") == 1
    assert json.loads(redis.hget(f"smsgw:msg:{first}", "reply")) == ["first part", "second part"]
    assert len(twilio.calls("send")) == 1 and twilio.messages == []  # the second part was not tried
    assert services.store.conversation(CID)["opted_out"] == "1"


def test_keywords_and_notices_act_per_text_at_their_place(env, redis, text_in, uponai, twilio):
    services = services_for(env, redis)
    text_in("a picture of the damage:", from_=PERSON, NumMedia="1", MediaContentType0="image/jpeg",
            MediaUrl0="https://api.twilio.com/media/1")
    text_in("what do you think", from_=PERSON)
    text_in("RESET", from_=PERSON)
    text_in("new topic", from_=PERSON)
    assert flow.drain_conversation(services, CID, "job") == 4
    settings = services.settings
    assert [text for _, text in uponai.completion_log] == ["a picture of the damage:\nwhat do you think",
                                                           "new topic"]
    assert twilio.sent_to(PERSON) == [settings.mms_notice_text, "You said: a picture of the damage:\nwhat do you think",
                                      settings.reset_confirmation_text, "You said: new topic"]
    assert len(uponai.texts_by_chat()) == 2  # the reset word ended the first chat


def test_a_turn_fixed_before_a_failure_is_resumed_whole_never_split(env, redis, text_in, uponai, twilio):
    """The turn's texts and words are fixed before it is posted: a retry with more texts waiting re-sends the
    same turn (read back from the chat), and the newer text makes a turn of its own."""
    services = services_for(env, redis, AMBIGUOUS_RETRY_DELAY_SECONDS="0.1", RETRY_INTERVALS_SECONDS="0")
    text_in("part one", from_=PERSON)
    text_in("part two", from_=PERSON)
    uponai.inject("complete", Fault(drop_after_apply=True))  # applied at UponAI, the answer lost
    with pytest.raises(flow.RetryLater):
        flow.drain_conversation(services, CID, "job")
    text_in("part three", from_=PERSON)
    wait_for(lambda: float(services.store.conversation(CID).get("retry_at") or 0) < time.time(), timeout=5,
             message="the retry to be due")
    assert flow.drain_conversation(services, CID, "job") == 3
    assert [text for _, text in uponai.completion_log] == ["part one\npart two", "part three"]
    assert twilio.sent_to(PERSON) == ["You said: part one\npart two", "You said: part three"]


def test_a_worker_killed_mid_burst_neither_splits_nor_doubles_it(start_worker_processes, redis, text_in, uponai,
                                                                  twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    for text in ("one", "two", "three"):
        text_in(text, from_=PERSON)
    pool = start_worker_processes(1)
    wait_for(lambda: uponai.calls("complete"), timeout=30, message="the burst's turn to be in flight")
    pool.crash(pool.processes[0])
    release.set()  # UponAI finishes the turn nobody is waiting for any more
    text_in("four", from_=PERSON)  # waits for the next turn: never joins the one in flight

    pool.spawn()
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, timeout=90, message="both turns answered after the restart")
    # Not wait_idle: the killed worker's job stays "started" until RQ notices the worker is gone.
    wait_for(lambda: not redis.exists(f"smsgw:inbox:{CID}", f"smsgw:lock:{CID}"), message="the conversation done")
    assert [text for _, text in uponai.completion_log] == ["one\ntwo\nthree", "four"]
    assert twilio.sent_to(PERSON) == ["re: one\ntwo\nthree", "re: four"]


def test_the_conversation_view_shows_which_texts_made_each_turn(env, redis, text_in, uponai, twilio):
    # No worker runs here: the view's chat read gives up quickly (its worker_timeout is not what is tested).
    client = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "0.2"}).test_client()
    services = services_for(env, redis)
    first = [text_in(text, from_=PERSON)["MessageSid"] for text in ("a", "b")]
    flow.drain_conversation(services, CID, "job")
    second = text_in("c", from_=PERSON)["MessageSid"]
    flow.drain_conversation(services, CID, "job-2")
    view = client.get(f"/admin/conversations/{PERSON}", headers=AUTH).get_json()
    assert [turn["texts"] for turn in view["turns"]] == [[second], first]  # newest first
    assert all(turn["at"] for turn in view["turns"])
    # The record the retry path resumes from: the texts and the exact words, on the first text's progress.
    record = redis.hgetall(f"smsgw:msg:{first[0]}")
    assert json.loads(record[b"turn_sids"]) == first and record[b"turn_text"] == b"a\nb"


def test_texts_per_turn_are_counted(env, redis, text_in, uponai, twilio):
    from core.metrics import metrics

    def observed() -> tuple[float, float]:
        samples = {s.name: s.value for m in metrics().turn_texts.collect() for s in m.samples
                   if s.name.endswith(("_count", "_sum"))}
        return samples["smsgw_turn_texts_count"], samples["smsgw_turn_texts_sum"]

    services = services_for(env, redis)
    count, total = observed()
    for text in ("x", "y", "z"):
        text_in(text, from_=PERSON)
    flow.drain_conversation(services, CID, "job")
    assert observed() == (count + 1, total + 3)


def test_the_window_settings_are_checked(env):
    from config import SettingsError, load_settings

    settings = load_settings({k: v for k, v in env.items() if k != "INBOUND_QUIET_SECONDS"}, dotenv_path=None)
    assert (settings.inbound_quiet_seconds, settings.inbound_max_wait_seconds) == (2.0, 10.0)
    for name in ("INBOUND_QUIET_SECONDS", "INBOUND_MAX_WAIT_SECONDS"):
        for bad in ("-1", "soon", "nan"):
            with pytest.raises(SettingsError, match=name):
                load_settings({**env, name: bad}, dotenv_path=None)
