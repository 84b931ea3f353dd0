"""The sandbox phone page's backend: messages go through the Twilio simulator's signed webhook to a served
gateway, real workers answer, and the simulator's signed status callbacks reach the gateway."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from gateway import create_app
from sandbox.phone import create_phone_app
from tests.conftest import GATEWAY_NUMBER, free_port, phone_settings, wait_for

PERSON = "+14155550177"
TOKEN = "phone-page-admin-token"


@pytest.fixture
def served(env, redis, twilio):
    """The gateway on a real local port (PUBLIC_BASE_URL points at it); the simulator's number points there."""
    port = free_port()
    env = {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "ADMIN_API_TOKEN": TOKEN}
    server = make_server("127.0.0.1", port, create_app(env), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    twilio.add_number(GATEWAY_NUMBER, sms_url=f"{env['PUBLIC_BASE_URL']}/twilio/sms")
    twilio.status_callbacks, twilio.status_interval_seconds = True, 0.05
    yield env
    twilio.status_callbacks = False
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def phone(served, twilio):
    app = create_phone_app(twilio=twilio, gateway_url=served["PUBLIC_BASE_URL"], gateway_number=GATEWAY_NUMBER,
                           admin_token=None, settings=phone_settings(served))
    return app.test_client()


@pytest.fixture
def answering(served, start_workers):
    return start_workers(1, PUBLIC_BASE_URL=served["PUBLIC_BASE_URL"])


def thread_of(phone, number=PERSON) -> list[dict]:
    return phone.get("/api/thread", query_string={"number": number}).get_json()["messages"]


def state_of(phone, number=PERSON) -> dict:
    return phone.get("/api/conversation", query_string={"number": number}).get_json()


def test_page_and_config_are_served(phone):
    with phone.get("/") as page:
        assert page.status_code == 200 and b'id="body"' in page.data and b"/static/phone.js" in page.data
        assert b'rel="icon" href="/static/favicon.svg"' in page.data
    for path in ("/static/favicon.svg", "/favicon.ico"):  # the latter for browsers that ask for it anyway
        with phone.get(path) as icon:
            assert icon.status_code == 200 and icon.mimetype == "image/svg+xml" and b"<svg" in icon.data
    with phone.get("/static/phone.js") as script:
        assert script.status_code == 200 and b"/api/send" in script.data
    config = phone.get("/api/config").get_json()
    assert config["gateway_number"] == GATEWAY_NUMBER
    assert config["outbound"] == {"available": False, "reason": "ADMIN_API_TOKEN is not set"}


def test_a_text_is_answered_and_delivery_status_reaches_the_gateway(phone, answering, twilio, uponai):
    sent = phone.post("/api/send", json={"from": PERSON, "body": "What are your hours?"})
    assert sent.status_code == 200 and sent.get_json()["webhook_status"] == 200

    def delivered_reply():
        out = [m for m in thread_of(phone) if m["direction"] == "out"]
        return out if out and out[0]["status"] == "delivered" else None

    reply = wait_for(delivered_reply, message="the reply, delivered")[0]
    assert reply["body"] == "You said: What are your hours?" and reply["from"] == GATEWAY_NUMBER
    assert [m["direction"] for m in thread_of(phone)] == ["in", "out"]
    # The gateway recorded the status from the simulator's signed callbacks.
    state = wait_for(lambda: (s := state_of(phone))["recent"] and s["recent"][0]["status"] == "delivered" and s,
                     message="status recorded by the gateway")
    assert state["chat_id"] == next(iter(uponai.chats)) and state["opted_out"] is False
    assert 0 < state["idle_ends_chat_in_seconds"] <= 600
    # The simulator logs a callback once the gateway's answer is back, a moment after the gateway recorded it.
    wait_for(lambda: [status for sid, status, answer in twilio.callback_log
                      if sid == reply["sid"] and answer == 200] == ["queued", "sent", "delivered"],
             message="the simulator to log all three callbacks answered 200")


def test_a_picture_gets_the_mms_notice(phone, answering, served):
    assert phone.post("/api/send", json={"from": PERSON, "body": "", "mms": True}).status_code == 200
    out = wait_for(lambda: [m for m in thread_of(phone) if m["direction"] == "out"], message="the MMS notice")
    assert "pictures" in out[0]["body"]
    assert thread_of(phone)[0]["num_media"] == 1


def test_stop_is_answered_by_twilio_and_opts_out(phone, answering, twilio):
    phone.post("/api/send", json={"from": PERSON, "body": "hello"})
    wait_for(lambda: twilio.sent_to(PERSON), message="first reply")
    phone.post("/api/send", json={"from": PERSON, "body": "STOP"})

    wait_for(lambda: state_of(phone)["opted_out"], message="opt-out recorded")
    kinds = [m["direction"] for m in thread_of(phone)]
    assert kinds[-1] == "twilio" and "unsubscribed" in thread_of(phone)[-1]["body"]
    assert twilio.sent_to(PERSON) == ["You said: hello"]  # the gateway itself does not answer STOP


def test_bad_input_and_unavailable_outbound_say_why(phone):
    refused_number = phone.post("/api/send", json={"from": "12345", "body": "hi"})
    assert refused_number.status_code == 400 and "international format" in refused_number.get_json()["error"]
    assert phone.post("/api/send", json={"from": PERSON, "body": "  "}).status_code == 400
    refused = phone.post("/api/outbound", json={"to": PERSON, "message": "hi"})
    assert refused.status_code == 409 and "ADMIN_API_TOKEN" in refused.get_json()["error"]


def test_a_number_that_is_not_pointed_at_the_gateway_shows_the_error(phone, twilio):
    twilio.number(GATEWAY_NUMBER).sms_url = ""
    answer = phone.post("/api/send", json={"from": PERSON, "body": "anyone?"})
    assert answer.status_code == 502 and "no SMS webhook" in answer.get_json()["error"]
    assert thread_of(phone)[0]["error"]


def test_the_admin_apis_refusal_keeps_its_status_and_message(served, answering, twilio):
    phone = create_phone_app(twilio=twilio, gateway_url=served["PUBLIC_BASE_URL"], gateway_number=GATEWAY_NUMBER,
                             admin_token=TOKEN, settings=phone_settings(served)).test_client()
    phone.post("/api/send", json={"from": PERSON, "body": "STOP"})
    wait_for(lambda: state_of(phone)["opted_out"], message="opt-out recorded")

    refused = phone.post("/api/outbound", json={"to": PERSON, "message": "Your order is ready"})
    assert refused.status_code == 409, refused.get_json()  # the admin API's 409, not a 502 of the page's own
    assert "opted out" in refused.get_json()["error"]
    assert refused.get_json()["answer"]["error"]["code"] == "opted_out"
    assert twilio.sent_to(PERSON) == []


def test_a_rate_limit_notice_shows_in_the_thread_like_any_text(phone, served, start_workers, twilio):
    start_workers(1, PUBLIC_BASE_URL=served["PUBLIC_BASE_URL"], RATE_LIMIT_MESSAGES="1")
    assert phone.post("/api/send", json={"from": PERSON, "body": "first"}).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the answer to the first text")
    assert phone.post("/api/send", json={"from": PERSON, "body": "second"}).status_code == 200

    out = wait_for(lambda: (out := [m["body"] for m in thread_of(phone) if m["direction"] == "out"])[1:] and out,
                   message="the rate-limit notice")
    assert out[0] == "You said: first" and "faster than we can answer" in out[1]
