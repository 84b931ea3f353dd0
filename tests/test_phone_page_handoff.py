"""The phone page's operator side: take the conversation over, answer as the business, give it back, through the
served gateway's admin API (with the sandbox's token), real workers and the Twilio simulator."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from gateway import create_app
from sandbox.phone import create_phone_app
from tests.conftest import GATEWAY_NUMBER, free_port, phone_settings, wait_for

PERSON = "+14155550178"
TOKEN = "phone-page-admin-token"


@pytest.fixture
def served(env, redis, twilio):
    """The gateway with its admin API on a real local port; the simulator's number points there."""
    port = free_port()
    env = {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "ADMIN_API_TOKEN": TOKEN,
           "ADMIN_WAIT_SECONDS": "15"}
    server = make_server("127.0.0.1", port, create_app(env), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    twilio.add_number(GATEWAY_NUMBER, sms_url=f"{env['PUBLIC_BASE_URL']}/twilio/sms")
    yield env
    server.shutdown()
    thread.join(timeout=5)


def phone_for(served, twilio, token: str | None):
    return create_phone_app(twilio=twilio, gateway_url=served["PUBLIC_BASE_URL"], gateway_number=GATEWAY_NUMBER,
                            admin_token=token, settings=phone_settings(served)).test_client()


def state_of(phone) -> dict:
    return phone.get("/api/conversation", query_string={"number": PERSON}).get_json()


def test_the_page_takes_over_answers_as_the_business_and_gives_back(served, start_workers, twilio, uponai):
    start_workers(1, PUBLIC_BASE_URL=served["PUBLIC_BASE_URL"], ADMIN_API_TOKEN=TOKEN, ADMIN_WAIT_SECONDS="15")
    phone = phone_for(served, twilio, TOKEN)
    with phone.get("/") as page:
        assert b'id="handoff"' in page.data and b'id="operator-message"' in page.data
    assert phone.post("/api/send", json={"from": PERSON, "body": "is the shop open?"}).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the agent's answer")

    taken = phone.post("/api/handoff", json={"number": PERSON, "on": True})
    assert taken.status_code == 200 and taken.get_json()["answer"]["handoff"]["active"] is True
    assert state_of(phone)["handoff"] is True

    said = phone.post("/api/operator", json={"number": PERSON, "message": "Yes, until 6pm today.", "key": "k1"})
    again = phone.post("/api/operator", json={"number": PERSON, "message": "Yes, until 6pm today.", "key": "k1"})
    assert said.status_code == 200 and said.get_json()["answer"]["status"] == "sent"
    assert again.get_json()["answer"]["message_sid"] == said.get_json()["answer"]["message_sid"]
    assert twilio.sent_to(PERSON) == ["You said: is the shop open?", "Yes, until 6pm today."]
    assert [(e["who"], e["text"]) for e in state_of(phone)["away_log"]] == [("operator", "Yes, until 6pm today.")]

    assert state_of(phone)["away_log"][0]["heard_by_agent"] is False

    given = phone.post("/api/handoff", json={"number": PERSON, "on": False})
    assert given.status_code == 200 and state_of(phone)["handoff"] is False
    assert phone.post("/api/send", json={"from": PERSON, "body": "thanks"}).status_code == 200
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 3, message="the agent's next answer")
    # The agent heard it with that turn; the page still shows it.
    assert [(e["who"], e["heard_by_agent"]) for e in state_of(phone)["away_log"]] == [("operator", True)]


def test_without_the_admin_api_the_operator_side_says_why(served, twilio):
    phone = phone_for(served, twilio, None)
    refused = phone.post("/api/handoff", json={"number": PERSON, "on": True})
    assert refused.status_code == 409 and "ADMIN_API_TOKEN" in refused.get_json()["error"]
    blank = phone_for(served, twilio, TOKEN).post("/api/operator", json={"number": PERSON, "message": " "})
    assert blank.status_code == 400 and "Type" in blank.get_json()["error"]
    unknown = phone_for(served, twilio, TOKEN).post("/api/operator", json={"number": PERSON, "message": "hi"})
    assert unknown.status_code == 404  # the admin API's refusal, passed through with its message
    assert unknown.get_json()["answer"]["error"]["code"] == "conversation_not_found"
    assert unknown.get_json()["error"] == unknown.get_json()["answer"]["error"]["message"]
    assert twilio.messages == []
