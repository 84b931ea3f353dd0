"""X-Twilio-Signature: Twilio's published vector, the URL we rebuild, and the webhook refusing what is not signed."""

from __future__ import annotations

import pytest
from flask import Flask, request
from rq import Queue
from twilio.request_validator import RequestValidator

from gateway import create_app
from gateway.signatures import is_signed_by_twilio, signed_url
from tests.conftest import AUTH_TOKEN, inbound_form, post_signed, sign

# Published in Twilio's security documentation (see twilio-facts.md).
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
                 "From": "+14158675309", "To": "+18005551212"}
VECTOR_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_published_vector_with_request_validator():
    validator = RequestValidator(VECTOR_TOKEN)
    assert validator.compute_signature(VECTOR_URL, VECTOR_PARAMS) == VECTOR_SIGNATURE
    assert validator.validate(VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)
    assert not validator.validate(VECTOR_URL, {**VECTOR_PARAMS, "Digits": "1235"}, VECTOR_SIGNATURE)
    assert not RequestValidator("54321").validate(VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)


@pytest.fixture
def bare_app() -> Flask:
    return Flask(__name__)


def test_signed_url_rebuilds_the_published_vector_from_the_public_base_url(bare_app):
    # The app sees an internal address (behind a TLS-terminating proxy); Twilio signed the public URL.
    with bare_app.test_request_context("/myapp.php?foo=1&bar=2", method="POST", data=VECTOR_PARAMS,
                                       base_url="http://10.0.0.5:8000",
                                       headers={"X-Twilio-Signature": VECTOR_SIGNATURE}):
        assert signed_url(request, "https://mycompany.com") == VECTOR_URL
        assert is_signed_by_twilio(request, RequestValidator(VECTOR_TOKEN), "https://mycompany.com")
        assert not is_signed_by_twilio(request, RequestValidator(VECTOR_TOKEN), None)  # the internal URL
        assert signed_url(request, None) == "http://10.0.0.5:8000/myapp.php?foo=1&bar=2"


def test_signed_url_keeps_the_raw_query_string(bare_app):
    with bare_app.test_request_context("/twilio/sms?b=2&a=%2Fx+y&a=1", method="POST"):
        assert signed_url(request, "https://sms.example.com") == "https://sms.example.com/twilio/sms?b=2&a=%2Fx+y&a=1"
    with bare_app.test_request_context("/twilio/sms", method="POST"):
        assert signed_url(request, "https://sms.example.com") == "https://sms.example.com/twilio/sms"


def test_request_without_a_signature_header_is_not_signed(bare_app):
    with bare_app.test_request_context("/myapp.php?foo=1&bar=2", method="POST", data=VECTOR_PARAMS,
                                       base_url="https://mycompany.com"):
        assert not is_signed_by_twilio(request, RequestValidator(VECTOR_TOKEN), None)


# -- the webhook refuses unsigned requests, storing and queueing nothing --------------------------------

def assert_nothing_stored_or_queued(redis, queue: Queue) -> None:
    assert list(redis.scan_iter("smsgw:*")) == []
    assert queue.count == 0


def test_signed_inbound_is_accepted(client, redis, queue):
    response = post_signed(client, "/twilio/sms", inbound_form("hi"))
    assert response.status_code == 200
    assert queue.count == 1  # the control case: the same request, signed, does get through


def test_missing_signature_is_403(client, redis, queue):
    response = client.post("/twilio/sms", data=inbound_form("hi"))
    assert response.status_code == 403
    assert "X-Twilio-Signature" in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


@pytest.mark.parametrize("signature", ["", "not-a-signature", VECTOR_SIGNATURE])
def test_wrong_signature_is_403(client, redis, queue, signature):
    response = client.post("/twilio/sms", data=inbound_form("hi"), headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)


def test_signature_made_with_another_token_is_403(client, redis, queue):
    response = post_signed(client, "/twilio/sms", inbound_form("hi"), token="another-accounts-token")
    assert response.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)


def test_signature_over_other_fields_is_403(client, redis, queue):
    form = inbound_form("hi")
    signature = sign("https://sms.example.com/twilio/sms", {**form, "Body": "something else"})
    response = client.post("/twilio/sms", data=form, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)


@pytest.mark.parametrize("signed_for", [
    "https://evil.example.com/twilio/sms",  # another host
    "http://sms.example.com/twilio/sms",  # another scheme
    "https://sms.example.com/twilio/status",  # another path
    "https://sms.example.com/twilio/sms?x=1",  # a query string that was not sent
])
def test_signature_for_another_url_is_403(client, redis, queue, signed_for):
    form = inbound_form("hi")
    response = client.post("/twilio/sms", data=form, headers={"X-Twilio-Signature": sign(signed_for, form)})
    assert response.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)


def test_query_string_is_part_of_what_is_signed(client, redis, queue):
    form = inbound_form("hi")
    unsigned_query = client.post("/twilio/sms?source=sms&v=2", data=form,
                                 headers={"X-Twilio-Signature": sign("https://sms.example.com/twilio/sms", form)})
    assert unsigned_query.status_code == 403
    reordered = client.post("/twilio/sms?v=2&source=sms", data=form, headers={
        "X-Twilio-Signature": sign("https://sms.example.com/twilio/sms?source=sms&v=2", form)})
    assert reordered.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)

    signed = post_signed(client, "/twilio/sms", form, query="source=sms&v=2")
    assert signed.status_code == 200
    assert queue.count == 1


def test_status_callback_needs_a_signature_too(client, redis, queue):
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "AccountSid": "AC" + "1" * 32}
    assert client.post("/twilio/status", data=form).status_code == 403
    forged = client.post("/twilio/status", data=form, headers={"X-Twilio-Signature": sign(
        "https://sms.example.com/twilio/sms", form)})
    assert forged.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)


def test_without_public_base_url_the_request_url_is_signed(env, redis, queue):
    env = {k: v for k, v in env.items() if k != "PUBLIC_BASE_URL"}
    client = create_app(env).test_client()
    form = inbound_form("hi")

    public = post_signed(client, "/twilio/sms", form, base="https://sms.example.com")
    assert public.status_code == 403
    assert_nothing_stored_or_queued(redis, queue)
    # The test client calls http://localhost/...: that is the URL to sign when no public URL is configured.
    assert post_signed(client, "/twilio/sms", form, base="http://localhost").status_code == 200
    assert queue.count == 1


def test_previous_auth_token_is_accepted_during_a_rotation(env, redis, queue):
    rotating = {**env, "TWILIO_AUTH_TOKEN": "new-token", "TWILIO_AUTH_TOKEN_PREVIOUS": AUTH_TOKEN}
    client = create_app(rotating).test_client()
    assert post_signed(client, "/twilio/sms", inbound_form("old", from_="+14155550101"),
                       token=AUTH_TOKEN).status_code == 200
    assert post_signed(client, "/twilio/sms", inbound_form("new", from_="+14155550102"),
                       token="new-token").status_code == 200
    assert post_signed(client, "/twilio/sms", inbound_form("bad", from_="+14155550103"),
                       token="other-token").status_code == 403
    assert queue.count == 2  # one drain job for each of the two accepted conversations
