"""A human takes over: handoff and resume change the conversation's state (idempotently), and an operator's
message reaches the person once, under concurrent retries and a worker crash, without touching the chat."""

from __future__ import annotations

import threading
import time

import pytest
from rq.registry import StartedJobRegistry

from core.model import conversation_id
from core.queues import ADMIN_QUEUE_NAME
from core.state.deliveries import DEFAULT_AWAY_PREFACE
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, inbound_form, new_store, post_signed, wait_for, wait_idle

TOKEN = "admin-handoff-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550142"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


@pytest.fixture
def admin_env(env):
    return {**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"}


@pytest.fixture
def app(admin_env, redis):
    return create_app(admin_env)


@pytest.fixture
def admin(app):
    return app.test_client()


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]


def text_and_answer(admin, twilio, body: str = "hi") -> None:
    """The person texts and the agent answers: the conversation exists, with a chat."""
    before = len(twilio.sent_to(PERSON))
    assert post_signed(admin, "/twilio/sms", inbound_form(body, from_=PERSON)).status_code == 200
    wait_for(lambda: len(twilio.sent_to(PERSON)) > before, message="the agent's answer")


def say(admin, text: str, key: str | None = None, number: str = PERSON):
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return admin.post(f"/admin/conversations/{number}/messages", json={"message": text}, headers=headers)


def test_an_operator_takes_over_answers_and_gives_back(start_workers, admin, redis, uponai, twilio):
    start_workers(1)
    text_and_answer(admin, twilio, "can I move my booking?")
    chat_id = admin.get(f"/admin/conversations/{PERSON}", headers=AUTH).get_json()["chat_id"]

    taken = admin.post(f"/admin/conversations/{PERSON}/handoff", headers=AUTH)
    assert taken.status_code == 200, taken.get_json()
    assert taken.get_json()["changed"] is True and taken.get_json()["handoff"]["active"] is True
    assert taken.get_json()["handoff"]["by"] == "admin-api" and taken.get_json()["handoff"]["since"]
    again = admin.post(f"/admin/conversations/{PERSON}/handoff", headers=AUTH)
    assert again.status_code == 200 and again.get_json()["changed"] is False
    assert again.get_json()["handoff"] == taken.get_json()["handoff"]

    sent = say(admin, "Hi, this is Anna from the front desk. Friday at 10 works.", key="anna-1")
    assert sent.status_code == 202, sent.get_json()
    body = sent.get_json()
    assert body["status"] == "sent" and body["handoff"] is True and body["conversation_id"] == CID
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: can I move my booking?",
                                      "Hi, this is Anna from the front desk. Friday at 10 works."]
    assert body["message_sid"] == twilio.messages[-1].sid and twilio.messages[-1].from_ == GATEWAY_NUMBER

    view = admin.get(f"/admin/conversations/{PERSON}", headers=AUTH).get_json()
    assert view["handoff"]["active"] is True and view["chat_id"] == chat_id  # the chat goes on
    [entry] = view["away_log"]
    assert entry["who"] == "operator" and entry["text"].startswith("Hi, this is Anna") and entry["at"]
    assert view["recent_messages"][0]["sid"] == body["message_sid"]

    given = admin.post(f"/admin/conversations/{PERSON}/resume", headers=AUTH)
    assert given.status_code == 200 and given.get_json()["changed"] is True
    assert given.get_json()["handoff"] == {"active": False, "since": None, "by": None}
    assert admin.post(f"/admin/conversations/{PERSON}/resume", headers=AUTH).get_json()["changed"] is False
    assert redis.hget(f"smsgw:conv:{CID}", "chat_id").decode() == chat_id
    assert len(uponai.calls("create_chat")) == 1 and uponai.chats[chat_id].status == "ongoing"


def test_an_operator_message_needs_no_handoff_and_never_resets_the_chat(start_workers, admin, redis, uponai,
                                                                        twilio):
    start_workers(1)
    text_and_answer(admin, twilio)
    chat_id = redis.hget(f"smsgw:conv:{CID}", "chat_id").decode()

    sent = say(admin, "A note from the team: we open at 9 tomorrow.")
    assert sent.status_code == 202 and sent.get_json()["handoff"] is False
    text_and_answer(admin, twilio, "thanks")

    wait_idle(redis)
    # The agent hears of the operator's message with the next turn (the away log as a marked preface).
    heard = "\n".join([DEFAULT_AWAY_PREFACE.header, "Business: A note from the team: we open at 9 tomorrow.",
                       DEFAULT_AWAY_PREFACE.footer, "thanks"])
    assert [text for _, text in uponai.completion_log] == ["hi", heard]
    assert twilio.sent_to(PERSON) == ["You said: hi", "A note from the team: we open at 9 tomorrow.",
                                      f"You said: {heard}"]
    assert len(uponai.calls("create_chat")) == 1 and redis.hget(f"smsgw:conv:{CID}", "chat_id").decode() == chat_id


def test_concurrent_retries_with_one_key_send_once(start_workers, admin_env, admin, redis, uponai, twilio):
    start_workers(2)  # two workers, so that two jobs of one key could run side by side
    text_and_answer(admin, twilio)
    app = create_app({**admin_env, "ADMIN_MAX_WAITING": "12", "WEB_THREADS": "13"})
    barrier = threading.Barrier(12)
    answers: list = [None] * 12

    def post(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        answers[index] = say(client, "Your table is booked.", key="booking-confirm")

    threads = [threading.Thread(target=post, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    bodies = [answer.get_json() for answer in answers]
    assert [answer.status_code for answer in answers] == [202] * 12, bodies
    assert len({body["job_id"] for body in bodies}) == 1 and len({body["message_sid"] for body in bodies}) == 1
    # A later retry (the client never saw an answer) gets the same result, and sends nothing.
    late = say(admin, "Your table is booked.", key="booking-confirm")
    assert late.status_code == 202 and late.get_json()["message_sid"] == bodies[0]["message_sid"]
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: hi", "Your table is booked."]
    assert [e["text"] for e in new_store(redis).away_log(CID)] == ["Your table is booked."]


def test_a_worker_killed_mid_send_is_resumed_by_a_retry_without_a_second_sms(start_worker_processes, admin, redis,
                                                                            uponai, twilio):
    store = new_store(redis)
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON, chat_id="chat_kept")
    pool = start_worker_processes(1)
    twilio.inject("send", Fault(delay_seconds=1.5))  # Twilio takes it after the worker is gone (client timeout: 2 s)
    answer: list = []
    first = threading.Thread(target=lambda: answer.append(say(admin, "We found your keys.", key="keys")))
    first.start()
    wait_for(lambda: twilio.calls("send"), message="the send to start")
    pool.crash(pool.processes[0])
    wait_for(lambda: twilio.sent_to(PERSON) == ["We found your keys."], message="Twilio to take the message")
    first.join()
    assert answer[0].status_code == 202 and answer[0].get_json()["status"] == "running"
    # What a worker's maintenance does once the dead job's execution has expired: the job is abandoned.
    StartedJobRegistry(ADMIN_QUEUE_NAME, connection=redis).cleanup(timestamp=time.time() + 3600)

    pool.spawn()
    retried = say(admin, "We found your keys.", key="keys")

    assert retried.status_code == 202, retried.get_json()
    assert retried.get_json()["message_sid"] == twilio.messages[0].sid  # found at Twilio, not sent again
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["We found your keys."] and len(twilio.calls("send")) == 1
    assert [e["text"] for e in store.away_log(CID)] == ["We found your keys."]
    assert store.conversation(CID)["chat_id"] == "chat_kept"


def test_an_opted_out_person_gets_nothing(start_workers, admin, redis, twilio):
    start_workers(1)
    store = new_store(redis)
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    store.set_opted_out(CID, True)

    response = say(admin, "Are you still there?", key="opted")

    assert response.status_code == 409 and error_of(response)["code"] == "opted_out"
    assert "START" in error_of(response)["message"]
    wait_idle(redis)
    assert twilio.messages == [] and store.away_log(CID) == []


def test_twilio_refusing_an_opted_out_number_is_409(start_workers, admin, redis, twilio):
    start_workers(1)
    new_store(redis).touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    twilio.opted_out.add(PERSON)

    response = say(admin, "Hello?")

    assert response.status_code == 409 and error_of(response)["code"] == "opted_out"
    assert "21610" in error_of(response)["message"]
    assert redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1"
    assert new_store(redis).away_log(CID) == []


@pytest.mark.parametrize("action", ["handoff", "resume", "messages"])
def test_an_unknown_conversation_is_404(admin, redis, twilio, action):
    response = admin.post(f"/admin/conversations/+14155550999/{action}", json={"message": "hi"}, headers=AUTH)
    assert response.status_code == 404 and error_of(response)["code"] == "conversation_not_found"
    assert twilio.messages == [] and not redis.keys("smsgw:conv:*")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "message: is required"),
    ({"message": None}, "message: is required"),
    ({"message": 5}, "message: must be a string"),
    ({"message": "   "}, "message: must not be blank"),
    ({"message": "x" * 1601}, "message: must be at most 1600 characters as Twilio counts them"),
    ({"message": "\U0001F600" * 801}, "message: must be at most 1600 characters as Twilio counts them (UTF-16 code "
                                      "units: an emoji counts 2); it has 1602"),
    ({"message": "hi", "to": PERSON}, "to: unknown field"),
    (["hi"], "body: must be a JSON object"),
])
def test_a_bad_message_request_is_400_and_sends_nothing(admin, redis, twilio, body, field):
    new_store(redis).touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    response = admin.post(f"/admin/conversations/{PERSON}/messages", json=body, headers=AUTH)
    assert response.status_code == 400 and error_of(response)["message"].startswith(field), response.get_json()
    assert twilio.messages == []


def test_bad_numbers_keys_and_bodies_are_refused_clearly(admin, redis, twilio):
    new_store(redis).touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    for action in ("handoff", "resume", "messages"):
        response = admin.post(f"/admin/conversations/not-a-number/{action}", json={"message": "hi"}, headers=AUTH)
        assert response.status_code == 400 and error_of(response)["message"].startswith("number:")
    not_json = admin.post(f"/admin/conversations/{PERSON}/messages", data="hi", headers=AUTH)
    assert not_json.status_code == 415
    broken = admin.post(f"/admin/conversations/{PERSON}/messages", data="{", headers=AUTH,
                        content_type="application/json")
    assert broken.status_code == 400 and error_of(broken)["code"] == "invalid_json"
    bad_key = say(admin, "hi", key="has space")
    assert bad_key.status_code == 400 and error_of(bad_key)["message"].startswith("Idempotency-Key:")
    assert twilio.messages == []


def test_one_key_is_one_message(start_workers, admin, redis, twilio):
    start_workers(1)
    new_store(redis).touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    assert say(admin, "First", key="k-1").status_code == 202

    reused = say(admin, "Second", key="k-1")
    assert reused.status_code == 422 and error_of(reused)["code"] == "idempotency_key_reused"
    # Nor may an outbound start reuse it.
    start = admin.post("/admin/sms", json={"to": PERSON, "message": "First"},
                       headers={**AUTH, "Idempotency-Key": "k-1"})
    assert start.status_code == 422
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["First"]
