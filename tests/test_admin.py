"""The admin API: auth, input checks, outbound starts, conversations, chats, failed jobs, against real workers."""

from __future__ import annotations

import threading

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from core.model import conversation_id
from core.queues import ADMIN_QUEUE_NAME
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, post_signed, wait_for, wait_idle

TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550100"
OTHER = "+14155550199"
SECOND_NUMBER = "+12025550143"
SERVICE_SID = "MG" + "a" * 32
OPENING = "[The business is starting this SMS conversation; the person has not written yet. " \
          "Write your first message to them.]"


@pytest.fixture
def admin_env(env):
    return {**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"}


@pytest.fixture
def admin(admin_env, redis):
    return create_app(admin_env).test_client()


@pytest.fixture
def worker(start_workers, redis):
    return start_workers(1)


def conv_key(person: str = PERSON, gateway_number: str = GATEWAY_NUMBER) -> str:
    return f"smsgw:conv:{conversation_id(gateway_number, person)}"


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]


def send_text(client, body: str, *, from_: str = PERSON):
    from tests.conftest import inbound_form

    response = post_signed(client, "/twilio/sms", inbound_form(body, from_=from_))
    assert response.status_code == 200


# -- off without a token, 401 without the right one -----------------------------------------------

ROUTES = [
    ("POST", "/admin/sms", {"to": PERSON, "message": "hi"}),
    ("GET", f"/admin/conversations/{PERSON}", None),
    ("POST", f"/admin/conversations/{PERSON}/end", None),
    ("POST", f"/admin/conversations/{PERSON}/handoff", None),
    ("POST", f"/admin/conversations/{PERSON}/resume", None),
    ("POST", f"/admin/conversations/{PERSON}/messages", {"message": "hi"}),
    ("GET", "/admin/chats", None),
    ("GET", "/admin/failed", None),
    ("POST", "/admin/failed/abc123/requeue", None),
    ("GET", "/admin/jobs/abc123", None),
]


@pytest.mark.parametrize(("method", "path", "body"), [*ROUTES, ("GET", "/admin/openapi.json", None)])
def test_admin_api_answers_404_while_the_token_is_unset(client, method, path, body):
    response = client.open(path, method=method, json=body, headers=AUTH)
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
def test_every_route_needs_the_token(admin, redis, twilio, uponai, method, path, body, header):
    headers = {"Authorization": header} if header else {}
    response = admin.open(path, method=method, json=body, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0
    assert twilio.messages == [] and uponai.requests == []


def test_a_missing_and_a_wrong_token_are_told_apart(admin):
    """A person with no header learns to send one; a person with the wrong token learns it is the wrong one."""
    missing = admin.get("/admin/chats")
    assert "No Authorization header was sent" in error_of(missing)["message"]
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="sms-gateway admin"'
    basic = admin.get("/admin/chats", headers={"Authorization": f"Basic {TOKEN}"})
    assert "not a bearer token" in error_of(basic)["message"]
    wrong = admin.get("/admin/chats", headers={"Authorization": "Bearer guessed-token-123"})
    said = error_of(wrong)["message"]
    assert "not this gateway's ADMIN_API_TOKEN" in said
    assert "guessed-token-123" not in wrong.get_data(as_text=True) and TOKEN not in wrong.get_data(as_text=True)
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert len({error_of(r)["message"] for r in (missing, basic, wrong)}) == 3


def test_openapi_is_served_without_the_token(admin):
    response = admin.get("/admin/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/admin/sms", "/admin/conversations/{number}", "/admin/conversations/{number}/end", "/admin/chats",
            "/admin/failed", "/admin/failed/{job_id}/requeue", "/admin/jobs/{job_id}",
            "/admin/conversations/{number}/handoff", "/admin/conversations/{number}/resume",
            "/admin/conversations/{number}/messages"} <= set(spec["paths"])


def test_unknown_admin_paths_and_methods_answer_in_the_error_shape(admin):
    assert error_of(admin.get("/admin/nothing-here", headers=AUTH))["code"] == "not_found"
    response = admin.delete("/admin/sms", headers=AUTH)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


# -- outbound -------------------------------------------------------------------------------------


def test_outbound_with_a_message_sends_it_and_hands_it_to_the_new_chat(worker, admin, client, uponai, twilio, redis):
    response = admin.post("/admin/sms", json={"to": PERSON, "message": "Your order has shipped."}, headers=AUTH)

    assert response.status_code == 202, response.get_json()
    data = response.get_json()
    assert data["status"] == "sent"
    assert data["conversation_id"] == conversation_id(GATEWAY_NUMBER, PERSON)
    assert data["to"] == PERSON and data["from"] == GATEWAY_NUMBER
    assert data["opening_generated"] is False
    [sms] = twilio.messages
    assert (sms.to, sms.from_, sms.body) == (PERSON, GATEWAY_NUMBER, "Your order has shipped.")
    assert data["message_sids"] == [sms.sid]
    [create] = uponai.calls("create_chat")
    sent = create.json()
    assert sent["agent_id"] == "agent_test"
    assert sent["uponai_dynamic_variables"] == {"opening_message": "Your order has shipped."}
    assert sent["metadata"]["direction"] == "outbound"
    assert uponai.completion_log == []  # the operator's text is not sent to the agent as a user turn
    assert redis.hget(conv_key(), "chat_id").decode() == data["chat_id"]

    # The person's answer continues in the same chat.
    send_text(client, "Thanks!")
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the reply to the answer")
    assert uponai.texts_by_chat() == {data["chat_id"]: ["Thanks!"]}


def test_outbound_without_a_message_sends_the_agents_opening(worker, admin, uponai, twilio):
    uponai.responder = lambda chat, text: ["Hi, this is Acme. How can we help?"] if text == OPENING else ["?"]

    response = admin.post("/admin/sms", json={"to": PERSON}, headers=AUTH)

    assert response.status_code == 202, response.get_json()
    data = response.get_json()
    assert data["opening_generated"] is True
    assert twilio.sent_to(PERSON) == ["Hi, this is Acme. How can we help?"]
    assert uponai.completion_log == [(data["chat_id"], OPENING)]
    assert "uponai_dynamic_variables" not in uponai.calls("create_chat")[0].json()


def test_outbound_ends_the_ongoing_chat_first(worker, admin, client, uponai, twilio, redis):
    send_text(client, "hello")
    wait_for(lambda: twilio.sent_to(PERSON), message="the first reply")
    old_chat = redis.hget(conv_key(), "chat_id").decode()

    response = admin.post("/admin/sms", json={"to": PERSON, "message": "A new topic"}, headers=AUTH)

    assert response.status_code == 202, response.get_json()
    new_chat = response.get_json()["chat_id"]
    assert new_chat != old_chat
    assert uponai.chats[old_chat].status == "ended"
    assert [r.path for r in uponai.calls("end_chat")] == [f"/api/chats/{old_chat}/end"]
    assert redis.hget(conv_key(), "chat_id").decode() == new_chat


def test_outbound_passes_agent_variables_and_metadata(worker, admin, uponai, twilio):
    body = {"to": PERSON, "message": "Hello", "agent_id": "agent_sales", "dynamic_variables": {"name": "Ada"},
            "metadata": {"campaign": "spring"}}
    response = admin.post("/admin/sms", json=body, headers=AUTH)

    assert response.status_code == 202, response.get_json()
    sent = uponai.calls("create_chat")[0].json()
    assert sent["agent_id"] == "agent_sales"
    assert sent["uponai_dynamic_variables"] == {"name": "Ada", "opening_message": "Hello"}
    assert sent["metadata"]["campaign"] == "spring"
    assert response.get_json()["agent_id"] == "agent_sales"


def test_outbound_from_another_number_or_a_messaging_service(worker, admin, twilio, redis):
    response = admin.post("/admin/sms", json={"to": PERSON, "message": "one", "from": SECOND_NUMBER}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["conversation_id"] == conversation_id(SECOND_NUMBER, PERSON)

    response = admin.post("/admin/sms", json={"to": OTHER, "message": "two", "from": SERVICE_SID}, headers=AUTH)
    assert response.status_code == 202, response.get_json()

    first, second = twilio.messages
    assert (first.from_, first.messaging_service_sid, first.body) == (SECOND_NUMBER, None, "one")
    assert (second.from_, second.messaging_service_sid, second.body) == (None, SERVICE_SID, "two")
    assert redis.hget(conv_key(OTHER, SERVICE_SID), "messaging_service_sid").decode() == SERVICE_SID


def test_outbound_through_the_configured_messaging_service(start_workers, redis, admin_env, twilio):
    env = {**admin_env, "TWILIO_FROM_NUMBER": "", "TWILIO_MESSAGING_SERVICE_SID": SERVICE_SID}
    start_workers(1, TWILIO_FROM_NUMBER="", TWILIO_MESSAGING_SERVICE_SID=SERVICE_SID)
    response = create_app(env).test_client().post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 202, response.get_json()
    [sms] = twilio.messages
    assert (sms.from_, sms.messaging_service_sid) == (None, SERVICE_SID)
    assert "From" not in twilio.calls("send")[0].form()  # the service alone: Twilio picks the number


def test_outbound_from_the_configured_number_goes_through_the_configured_service(start_workers, redis, admin_env,
                                                                                 twilio):
    env = {**admin_env, "TWILIO_MESSAGING_SERVICE_SID": SERVICE_SID}
    start_workers(1, TWILIO_MESSAGING_SERVICE_SID=SERVICE_SID)
    response = create_app(env).test_client().post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["conversation_id"] == conversation_id(GATEWAY_NUMBER, PERSON)
    form = twilio.calls("send")[0].form()
    assert (form["From"], form["MessagingServiceSid"]) == (GATEWAY_NUMBER, SERVICE_SID)


def test_outbound_without_any_sender_configured_is_400(admin_env, redis, twilio):
    env = {**admin_env, "TWILIO_FROM_NUMBER": ""}
    response = create_app(env).test_client().post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 400
    assert error_of(response)["message"].startswith("from: is required")
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"message": "hi"}, "to"),
    ({"to": "+1415"}, "to"),
    ({"to": "hello"}, "to"),
    ({"to": 14155550100}, "to"),
    ({"to": "+999123456789"}, "to"),
    ({"to": "+1" + "5" * 40}, "to"),
    ({"to": PERSON, "message": ""}, "message"),
    ({"to": PERSON, "message": "   "}, "message"),
    ({"to": PERSON, "message": 5}, "message"),
    ({"to": PERSON, "message": "x" * 1601}, "message"),
    ({"to": PERSON, "from": "+1"}, "from"),
    ({"to": PERSON, "from": "MG123"}, "from"),
    ({"to": PERSON, "agent_id": "../../etc"}, "agent_id"),
    ({"to": PERSON, "agent_id": ""}, "agent_id"),
    ({"to": PERSON, "dynamic_variables": ["a"]}, "dynamic_variables"),
    ({"to": PERSON, "dynamic_variables": {"a": 1}}, "dynamic_variables.a"),
    ({"to": PERSON, "dynamic_variables": {"opening_message": "x"}}, "dynamic_variables.opening_message"),
    ({"to": PERSON, "metadata": "x"}, "metadata"),
    ({"to": PERSON, "metadata": {"big": "x" * 5000}}, "metadata"),
    ({"to": PERSON, "colour": "blue"}, "colour"),
    (["to", PERSON], "body"),
    ("just text", "body"),
])
def test_invalid_outbound_input_is_400_naming_the_field(admin, redis, twilio, uponai, body, field):
    response = admin.post("/admin/sms", json=body, headers=AUTH)

    assert response.status_code == 400, response.get_json()
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:"), error
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0
    assert twilio.messages == [] and uponai.requests == []


def test_every_problem_of_a_request_is_named_in_one_400(admin, redis, twilio, uponai):
    body = {"to": "hello", "agent_id": "../x", "dynamic_variables": {"a": "x" * 2001}, "colour": "blue"}

    response = admin.post("/admin/sms", json=body, headers=AUTH)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"] == (
        "colour: unknown field; the fields are to, message, agent_id, from, dynamic_variables, metadata; "
        "to: may hold only the digits 0-9, a leading +, spaces, dashes, dots and brackets (no letters, extensions "
        "or other characters); agent_id: must be 1-128 letters, digits or _ . : -; "
        "dynamic_variables.a: must be a string of at most 2000 characters")
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0 and twilio.messages == [] and uponai.requests == []

    many = admin.post("/admin/sms", json={"to": PERSON, "dynamic_variables": {f"k{i}": i for i in range(40)}},
                      headers=AUTH)
    message = error_of(many)["message"]  # ten problems named, the rest counted: the answer stays short
    assert message.count("dynamic_variables.k") == 10 and message.endswith("; and 30 more")


def test_outbound_body_must_be_json(admin, redis):
    response = admin.post("/admin/sms", data="to=+14155550100", headers=AUTH,
                          content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    response = admin.post("/admin/sms", data="{not json", headers=AUTH, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    response = admin.post("/admin/sms", json={"to": PERSON}, headers={**AUTH, "Idempotency-Key": "has space"})
    assert response.status_code == 400
    assert error_of(response)["message"].startswith("Idempotency-Key:")


@pytest.mark.parametrize(("raw", "why"), [
    ("[" * 20_000, "nested"), ("[" * 500 + "]" * 500, "nested"),
    ('{"to": "+14155550100", "metadata": {"a": ' + "[" * 40 + "]" * 40 + "}}", "nested"),
    # A name given twice: "last one wins" would send to a number nobody checked (issue 21, item 7).
    ('{"to": "+14155550100", "to": "+14155550199", "message": "hi"}', "appears more than once"),
    ('{"to": "+14155550100", "metadata": {"a": 1, "a": 2}}', "appears more than once"),
    # Half a UTF-16 pair alone is no character: it reached the worker, which ended the person's chat and then
    # failed to encode the SMS, for ever (issue 22, item 6).
    ('{"to": "+14155550100", "message": "hi \\ud800 there"}', "not valid Unicode (a lone surrogate \\ud800)"),
    ('{"to": "+14155550100", "metadata": {"\\udfff": "x"}}', "not valid Unicode (a lone surrogate \\udfff)"),
])
def test_malformed_json_is_400_saying_why_not_500(admin, redis, uponai, twilio, raw, why):
    response = admin.post("/admin/sms", data=raw, headers=AUTH, content_type="application/json")

    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    error = error_of(response)
    assert error["code"] == "invalid_json" and why in error["message"]
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0 and uponai.requests == [] and twilio.messages == []


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_metadata_with_nan_or_infinity_is_refused_before_the_chat_is_ended(worker, admin, client, uponai, twilio,
                                                                           redis, value):
    send_text(client, "hello")
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply that opens the chat")
    wait_idle(redis)
    [chat] = uponai.chats.values()
    raw = '{"to": "' + PERSON + '", "message": "New topic", "metadata": {"score": ' + value + '}}'

    response = admin.post("/admin/sms", data=raw, headers=AUTH, content_type="application/json")

    assert response.status_code == 400, response.get_json()
    assert error_of(response)["code"] == "invalid_json" and value.lstrip("-") in error_of(response)["message"]
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0
    assert chat.status == "ongoing" and uponai.calls("end_chat") == [] and len(uponai.calls("create_chat")) == 1
    assert twilio.sent_to(PERSON) == ["You said: hello"]


def test_outbound_numbers_are_normalised_to_e164(worker, admin, twilio):
    response = admin.post("/admin/sms", json={"to": "+1 (415) 555-0100", "message": "hi"}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    assert twilio.messages[0].to == PERSON


def test_opted_out_number_is_409_and_nothing_is_sent(worker, admin, redis, uponai, twilio):
    redis.hset(conv_key(), mapping={"gateway": GATEWAY_NUMBER, "person": PERSON, "opted_out": "1"})

    response = admin.post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 409
    assert error_of(response)["code"] == "opted_out"
    assert twilio.messages == [] and uponai.calls("create_chat") == []


def test_a_number_that_texted_stop_is_409(worker, admin, client, redis, twilio):
    send_text(client, "stop")
    wait_for(lambda: redis.hget(conv_key(), "opted_out") == b"1", message="the opt-out to be recorded")

    response = admin.post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 409
    assert error_of(response)["code"] == "opted_out"
    assert twilio.messages == []
    assert admin.get(f"/admin/conversations/{PERSON}", headers=AUTH).get_json()["opted_out"] is True


def test_twilio_opt_out_refusal_is_409(worker, admin, twilio, redis):
    twilio.opted_out.add(PERSON)

    response = admin.post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 409, response.get_json()
    assert "21610" in error_of(response)["message"]
    assert redis.hget(conv_key(), "opted_out") == b"1"


def test_unknown_agent_is_reported_as_uponai_refusal(worker, admin, twilio):
    response = admin.post("/admin/sms", json={"to": PERSON, "message": "hi", "agent_id": "unknown_agent"},
                          headers=AUTH)
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "uponai_rejected" and "agent not found" in error["message"]
    assert twilio.messages == []


# -- idempotency ----------------------------------------------------------------------------------


def test_retried_request_with_the_same_key_starts_one_conversation(worker, admin, redis, uponai, twilio):
    body = {"to": PERSON, "message": "Only once"}
    headers = {**AUTH, "Idempotency-Key": "order-42"}

    first = admin.post("/admin/sms", json=body, headers=headers)
    second = admin.post("/admin/sms", json=body, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.get_json()["chat_id"] == second.get_json()["chat_id"]
    assert first.get_json()["message_sids"] == second.get_json()["message_sids"]
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["Only once"]
    assert len(uponai.calls("create_chat")) == 1

    changed = admin.post("/admin/sms", json={**body, "message": "Something else"}, headers=headers)
    assert changed.status_code == 422
    assert error_of(changed)["code"] == "idempotency_key_reused"
    assert twilio.sent_to(PERSON) == ["Only once"]


def test_a_key_whose_attempt_failed_resumes_without_doubling(worker, admin, uponai, twilio):
    twilio.inject("send", Fault(status=503))
    headers = {**AUTH, "Idempotency-Key": "retry-me"}
    body = {"to": PERSON, "message": "Eventually"}

    first = admin.post("/admin/sms", json=body, headers=headers)
    assert first.status_code == 503
    assert error_of(first)["code"] == "twilio_unavailable"

    second = admin.post("/admin/sms", json=body, headers=headers)
    assert second.status_code == 202, second.get_json()
    assert twilio.sent_to(PERSON) == ["Eventually"]
    assert len(uponai.calls("create_chat")) == 1  # the chat of the first attempt is reused


def test_an_opening_whose_answer_was_lost_is_read_back_on_retry_not_asked_twice(worker, admin, uponai, twilio):
    uponai.responder = lambda chat, text: ["Hi, this is Acme."] if text == OPENING else ["?"]
    uponai.answer_malformed("complete", "html")  # the agent wrote its opening; only the answer was mangled
    headers = {**AUTH, "Idempotency-Key": "opening-lost"}

    first = admin.post("/admin/sms", json={"to": PERSON}, headers=headers)
    assert first.status_code == 503 and error_of(first)["code"] == "uponai_unavailable"
    second = admin.post("/admin/sms", json={"to": PERSON}, headers=headers)

    assert second.status_code == 202, second.get_json()
    assert twilio.sent_to(PERSON) == ["Hi, this is Acme."]
    assert uponai.completion_log == [(second.get_json()["chat_id"], OPENING)]  # asked once, read back after


def test_an_opening_whose_chat_ended_without_it_is_refused_not_sent(worker, admin, uponai, twilio):
    uponai.answer_malformed("complete", "html", applied=False)  # the prompt never reached the agent
    headers = {**AUTH, "Idempotency-Key": "opening-ended"}
    first = admin.post("/admin/sms", json={"to": PERSON}, headers=headers)
    assert first.status_code == 503
    [chat_id] = uponai.chats
    uponai.end(chat_id)

    second = admin.post("/admin/sms", json={"to": PERSON}, headers=headers)

    assert second.status_code == 502 and error_of(second)["code"] == "uponai_rejected"
    assert twilio.sent_to(PERSON) == []


# -- no worker, slow worker -----------------------------------------------------------------------


def test_no_worker_answers_504_and_leaves_nothing_to_run_later(admin_env, redis, twilio, start_workers):
    admin = create_app({**admin_env, "ADMIN_WAIT_SECONDS": "1"}).test_client()

    response = admin.post("/admin/sms", json={"to": PERSON, "message": "hi"}, headers=AUTH)

    assert response.status_code == 504
    error = error_of(response)
    assert error["code"] == "worker_timeout" and ADMIN_QUEUE_NAME in error["message"]
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0
    start_workers(1)
    response = admin.get("/admin/chats", headers=AUTH)  # a later job runs; the abandoned one does not
    assert response.status_code == 200
    assert twilio.messages == []


def test_slow_job_answers_202_running_then_the_job_shows_the_result(start_workers, admin_env, redis, uponai,
                                                                     twilio):
    start_workers(1, UPONAI_READ_TIMEOUT_SECONDS="10")
    admin = create_app({**admin_env, "ADMIN_WAIT_SECONDS": "1"}).test_client()
    release = threading.Event()
    uponai.responder = lambda chat, text: [release.wait(20) and "Hello from the agent"]

    response = admin.post("/admin/sms", json={"to": PERSON}, headers=AUTH)

    assert response.status_code == 202
    data = response.get_json()
    assert data["status"] == "running"
    release.set()
    job = wait_for(lambda: (admin.get(data["job_url"], headers=AUTH).get_json() or {}).get("ok"),
                   message="the job's result")
    assert job["message_sids"] and twilio.sent_to(PERSON) == ["Hello from the agent"]
    assert error_of(admin.get("/admin/jobs/not-a-job", headers=AUTH))["code"] == "job_not_found"
    assert admin.get("/admin/jobs/bad%20id", headers=AUTH).status_code == 400


def test_a_text_arriving_during_an_outbound_start_is_answered_after_it(worker, admin, client, uponai, twilio):
    started = threading.Event()
    release = threading.Event()

    def agent(chat, text):
        if text == OPENING:
            started.set()
            release.wait(20)
            return ["Opening line"]
        return [f"re: {text}"]

    uponai.responder = agent
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(r=admin.post("/admin/sms", json={"to": PERSON},
                                                                       headers=AUTH)))
    thread.start()
    assert started.wait(20)
    send_text(client, "are you there?")
    release.set()
    thread.join()

    assert answer["r"].status_code == 202
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the reply to the text")
    assert twilio.sent_to(PERSON) == ["Opening line", "re: are you there?"]
    chat_id = answer["r"].get_json()["chat_id"]
    assert uponai.texts_by_chat() == {chat_id: [OPENING, "are you there?"]}


# -- conversations --------------------------------------------------------------------------------


def test_show_conversation_has_local_state_deliveries_and_the_chat(worker, admin, client, uponai, twilio):
    send_text(client, "hello")
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")
    sid = twilio.messages[0].sid
    # The worker records the sent message just after Twilio accepted it: a callback before that is ignored.
    wait_for(lambda: client.application.extensions["sms_gateway"].redis.exists(f"smsgw:sent:{sid}"),
             message="the sent message to be recorded")
    post_signed(client, "/twilio/status", {"MessageSid": sid, "MessageStatus": "delivered", "To": PERSON,
                                           "From": GATEWAY_NUMBER, "AccountSid": "AC" + "1" * 32})

    response = admin.get(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert data["person"] == PERSON and data["gateway"] == GATEWAY_NUMBER and data["opted_out"] is False
    assert data["last_inbound_at"].endswith("Z") and data["last_outbound_at"]
    [sent] = data["recent_messages"]
    assert (sent["sid"], sent["status"]) == (sid, "delivered")
    assert data["chat"]["chat_id"] == data["chat_id"]
    assert [m["content"] for m in data["chat"]["messages"]] == ["hello", "You said: hello"]
    assert "chat_error" not in data


def test_show_conversation_still_answers_when_the_chat_cannot_be_read(worker, admin, client, uponai, twilio):
    send_text(client, "hello")
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")
    uponai.inject("get_chat", Fault(status=500))

    response = admin.get(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert response.status_code == 200
    data = response.get_json()
    assert data["chat"] is None and data["chat_id"]
    assert data["chat_error"]["code"] == "uponai_unavailable"


def test_show_conversation_of_another_gateway_number_and_unknown_numbers(worker, admin, redis):
    redis.hset(conv_key(PERSON, SECOND_NUMBER), mapping={"gateway": SECOND_NUMBER, "person": PERSON})

    assert admin.get(f"/admin/conversations/{PERSON}", headers=AUTH).status_code == 404
    response = admin.get(f"/admin/conversations/{PERSON}?from=%2B12025550143", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["gateway"] == SECOND_NUMBER
    assert error_of(admin.get(f"/admin/conversations/{OTHER}", headers=AUTH))["code"] == "conversation_not_found"
    assert admin.get(f"/admin/conversations/{PERSON}?from=nope", headers=AUTH).status_code == 400


@pytest.mark.parametrize("number", ["..%2F..%2Fsms", "../sms", "%2E%2E%2Fadmin", "%2B1415%2F..%2Fx", "abc",
                                    "+1" + "9" * 5000, "%00", "+14155550100%0A", "+1415555010O",
                                    "%2B14155550100/extra"])
def test_path_tricks_in_the_number_are_400(admin, redis, number):
    for method, path in (("GET", f"/admin/conversations/{number}"),
                         ("POST", f"/admin/conversations/{number}/end")):
        response = admin.open(path, method=method, headers=AUTH)
        assert response.status_code == 400, (method, path, response.status_code)
        assert error_of(response)["message"].startswith("number:")
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0


def test_end_conversation_ends_the_chat_and_the_next_text_starts_a_new_one(worker, admin, client, uponai, twilio,
                                                                          redis):
    send_text(client, "first")
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")
    chat_id = redis.hget(conv_key(), "chat_id").decode()

    response = admin.post(f"/admin/conversations/{PERSON}/end", headers=AUTH)

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ended", "conversation_id": conversation_id(GATEWAY_NUMBER, PERSON),
                                   "ended_chat_id": chat_id}
    assert uponai.chats[chat_id].status == "ended"
    assert redis.hget(conv_key(), "chat_id") is None
    again = admin.post(f"/admin/conversations/{PERSON}/end", headers=AUTH)
    assert again.status_code == 200 and again.get_json()["ended_chat_id"] is None

    send_text(client, "second")
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="second reply")
    assert len(uponai.calls("create_chat")) == 2
    assert error_of(admin.post(f"/admin/conversations/{OTHER}/end", headers=AUTH))["code"] == \
        "conversation_not_found"


# -- chats ----------------------------------------------------------------------------------------


def test_chats_are_listed_page_by_page(worker, admin, client, uponai, twilio):
    for i in range(3):
        send_text(client, "hi", from_=f"+1415555010{i}")
    wait_for(lambda: len(twilio.messages) == 3, message="three replies")

    first = admin.get("/admin/chats?limit=2&sort_order=ascending", headers=AUTH)
    assert first.status_code == 200, first.get_json()
    page = first.get_json()
    assert len(page["chats"]) == 2 and page["has_more"] is True and page["pagination_key"]
    second = admin.get(f"/admin/chats?limit=2&sort_order=ascending&pagination_key={page['pagination_key']}",
                       headers=AUTH)
    rest = second.get_json()
    assert len(rest["chats"]) == 1 and rest["pagination_key"] is None
    ids = [c["chat_id"] for c in page["chats"] + rest["chats"]]
    assert ids == sorted(uponai.chats)
    query = uponai.calls("list_chats")[0].query
    assert (query["limit"], query["sortOrder"]) == ("2", "ascending")


@pytest.mark.parametrize(("query", "field"), [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"),
                                              ("limit=-1", "limit"), ("sort_order=up", "sort_order"),
                                              ("pagination_key=a%20b", "pagination_key")])
def test_invalid_chat_listing_parameters_are_400(admin, redis, query, field):
    response = admin.get(f"/admin/chats?{query}", headers=AUTH)
    assert response.status_code == 400
    assert error_of(response)["message"].startswith(f"{field}:")


def test_uponai_failure_while_listing_chats_is_reported(worker, admin, uponai):
    uponai.inject("list_chats", Fault(status=503))
    response = admin.get("/admin/chats", headers=AUTH)
    assert response.status_code == 503
    assert error_of(response)["code"] == "uponai_unavailable"


# -- failed jobs ----------------------------------------------------------------------------------


def failed_ids(redis) -> list[str]:
    return FailedJobRegistry("sms", connection=redis).get_job_ids()


def test_failed_job_is_listed_with_reason_and_requeued_answers_once(worker, admin, client, uponai, twilio, redis):
    uponai.inject("complete", *[Fault(status=500)] * 4)  # every attempt (RETRY_INTERVALS_SECONDS has 3 waits)
    send_text(client, "please answer")
    wait_for(lambda: failed_ids(redis), message="the drain job to fail")
    assert twilio.sent_to(PERSON) == [_failure_notice()]

    listing = admin.get("/admin/failed", headers=AUTH)
    assert listing.status_code == 200
    [job] = listing.get_json()["jobs"]
    assert job["conversation_id"] == conversation_id(GATEWAY_NUMBER, PERSON)
    assert job["queue"] == "sms" and job["function"] == "workers.jobs.drain"
    assert "500" in job["reason"] and "MessagesFailed" in job["reason"]

    response = admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "queued"

    wait_for(lambda: len(twilio.sent_to(PERSON)) >= 2, message="the answer after the requeue")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == [_failure_notice(), "You said: please answer"]
    assert failed_ids(redis) == []
    again = admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH)
    assert again.status_code == 404 and error_of(again)["code"] == "failed_job_not_found"
    assert [text for _, text in uponai.completion_log] == ["please answer"]


def test_requeued_job_does_not_send_parts_that_went_out_before(worker, admin, client, uponai, twilio, redis):
    uponai.responder = lambda chat, text: ["part one", "part two"]
    twilio.inject("send", Fault(), *[Fault(status=503)] * 4)  # part one goes; part two fails every attempt
    send_text(client, "two parts please")
    wait_for(lambda: failed_ids(redis), message="the drain job to fail")
    assert twilio.sent_to(PERSON) == ["part one", _failure_notice()]

    [job] = admin.get("/admin/failed", headers=AUTH).get_json()["jobs"]
    assert admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH).status_code == 200

    wait_for(lambda: len(twilio.sent_to(PERSON)) >= 3, message="the missing part")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["part one", _failure_notice(), "part two"]
    assert len(uponai.completion_log) == 1


def test_requeue_checks_the_job_id(admin, redis):
    assert admin.post("/admin/failed/..%2F..%2Fx/requeue", headers=AUTH).status_code in (400, 404)
    response = admin.post("/admin/failed/bad.id/requeue", headers=AUTH)
    assert response.status_code == 400 and error_of(response)["message"].startswith("job_id:")
    response = admin.post("/admin/failed/abcdef/requeue", headers=AUTH)
    assert response.status_code == 404
    assert admin.get("/admin/failed?limit=0", headers=AUTH).status_code == 400


def _failure_notice() -> str:
    from config.settings import Settings

    return Settings.__dataclass_fields__["failure_notice_text"].default
