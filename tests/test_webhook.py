"""The web process alone (no workers): input validation, the TwiML answer, dedupe, Redis outages, health, status."""

from __future__ import annotations

import json
import logging
import time

import pytest
from redis import Redis
from rq import Queue, Worker
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from core.model import conversation_id
from gateway import create_app
from tests.conftest import (
    AUTH_TOKEN,
    RedisServer,
    WorkerPool,
    free_port,
    inbound_form,
    new_sid,
    new_store,
    post_signed,
    settings_env,
    sign,
    wait_for,
    waiting_drains,
)

PUBLIC = "https://sms.example.com"
PERSON = "+14155550100"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def inbox(redis, form: dict[str, str]) -> list[bytes]:
    return redis.lrange(f"smsgw:inbox:{conversation_id(form['To'], form['From'])}", 0, -1)


def assert_nothing_stored_or_queued(redis, queue: Queue) -> None:
    assert list(redis.scan_iter("smsgw:*")) == []
    assert len(waiting_drains(queue)) == 0


def post_raw(client, path: str, body: bytes, content_type: str, signed_form: dict[str, str]):
    """Post ``body`` as is, signed over the fields the app will parse from it."""
    return client.post(path, data=body, content_type=content_type,
                       headers={"X-Twilio-Signature": sign(PUBLIC + path, signed_form)})


# -- the answer ----------------------------------------------------------------------------------------

def test_accepted_message_is_answered_with_empty_twiml_and_queued(client, redis, queue):
    form = inbound_form("hello", from_=PERSON)
    response = post_signed(client, "/twilio/sms", form)

    assert response.status_code == 200
    assert response.content_type == "text/xml; charset=utf-8"
    assert response.get_data(as_text=True) == TWIML
    assert len(inbox(redis, form)) == 1
    assert len(waiting_drains(queue)) == 1


def test_duplicate_message_sid_is_acknowledged_and_stored_once(client, redis, queue):
    form = inbound_form("only once", from_=PERSON)
    for _ in range(3):
        response = post_signed(client, "/twilio/sms", form)
        assert response.status_code == 200
        assert response.get_data(as_text=True) == TWIML
    assert len(inbox(redis, form)) == 1
    assert len(waiting_drains(queue)) == 1


@pytest.mark.parametrize("address", ["+14155550100", "whatsapp:+14155550100", "messenger:1234567890123456"])
def test_phone_numbers_and_channel_addresses_are_accepted(client, redis, queue, address):
    form = inbound_form("hi", from_=address)
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    assert len(inbox(redis, form)) == 1 and len(waiting_drains(queue)) == 1


def test_message_service_and_mms_sids_in_their_real_shapes_are_accepted(client, redis, queue):
    # Twilio's own shapes: MM for a message with media, MG for a Messaging Service, hex in either case.
    form = inbound_form("look", sid="MM" + "A0b1" * 8, MessagingServiceSid="MG" + "9f" * 16, NumMedia="1",
                        MediaUrl0="https://api.twilio.com/x.png", MediaContentType0="image/png")
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    assert json.loads(inbox(redis, form)[0])["messaging_service_sid"] == "MG" + "9f" * 16


def test_a_repeated_identifying_field_is_400(client, redis, queue):
    # Twilio never repeats a field; the validator signs repeated values sorted, so the order we would read is free.
    form = inbound_form("hi")
    data = [*form.items(), ("From", "+14155550199")]
    signed = MultiDict(data)
    response = client.post("/twilio/sms", data=signed, headers={
        "X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/twilio/sms", signed)})
    assert response.status_code == 400
    assert "From appears more than once" in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


def test_unknown_fields_are_ignored(client, redis, queue):
    form = inbound_form("hi", FromCity="SAN FRANCISCO", ToCountry="US", SomeFieldTwilioAddsLater="x")
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    assert len(inbox(redis, form)) == 1


# -- bad input: 400 with a message, nothing stored ------------------------------------------------------

@pytest.mark.parametrize(("missing", "expected"), [
    (("MessageSid",), "MessageSid is missing"),
    (("From",), "From is missing"),
    (("To",), "To is missing"),
    (("MessageSid", "From", "To"), "MessageSid is missing; From is missing; To is missing"),
])
def test_missing_required_field_is_400(client, redis, queue, missing, expected):
    form = {k: v for k, v in inbound_form("hi").items() if k not in missing}
    response = post_signed(client, "/twilio/sms", form)
    assert response.status_code == 400
    assert response.content_type.startswith("text/plain")
    assert response.get_data(as_text=True) == f"Bad inbound message: {expected}.\n"
    assert_nothing_stored_or_queued(redis, queue)


def test_blank_required_field_is_400(client, redis, queue):
    response = post_signed(client, "/twilio/sms", inbound_form("hi", from_="   "))
    assert response.status_code == 400
    assert "From is missing" in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"NumMedia": "two"}, "NumMedia is not a number"),
    ({"NumMedia": "-1"}, "NumMedia is not a number"),
    ({"NumMedia": "1_0"}, "NumMedia is not a number"),  # int() would read 10
    ({"NumMedia": "0NumSegments1"}, "NumMedia is not a number"),
    ({"NumMedia": "101"}, "NumMedia must be between 0 and 100"),
    ({"MessageSid": "SM not/a/sid"}, "MessageSid is not a Twilio message sid"),
    # A value that swallowed the next field's name (signs like the original form): refused, never a new message.
    ({"MessageSid": "SM" + "0f" * 16 + "NumMedia0"}, "MessageSid is not a Twilio message sid"),
    ({"MessageSid": "SM" + "0f" * 15}, "MessageSid is not a Twilio message sid"),  # 30 hex digits: too short
    ({"MessageSid": "SM" + "0f" * 16 + "\n"}, "MessageSid is not a Twilio message sid"),
    ({"MessageSid": "CA" + "0f" * 16}, "MessageSid is not a Twilio message sid"),
    ({"AccountSid": "AC" + "1" * 32 + "ApiVersion2010-04-01"}, "AccountSid is not a Twilio sid"),
    ({"AccountSid": ""}, "AccountSid is not a Twilio sid"),
    ({"MessagingServiceSid": "MG" + "2" * 32 + "NumMedia0"}, "MessagingServiceSid is not a Twilio sid"),
    ({"From": "+14155550100MessageSidSM" + "0f" * 16}, "From is not an E.164 number"),
    ({"To": "+15005550006ToCityBERKELEY"}, "To is not an E.164 number"),
    ({"From": "whatsapp:+1415555010O"}, "From is not an E.164 number"),
    ({"From": "+1" + "5" * 70}, "From is longer than 64 characters"),
    # Digits of other scripts match \d: Twilio sends E.164 in ASCII digits only (issue 21, item 7).
    ({"From": "+" + "14155550100".translate(FULLWIDTH)}, "From is not an E.164 number"),
    ({"From": "+" + "14155550100".translate(ARABIC_INDIC)}, "From is not an E.164 number"),
    ({"To": "whatsapp:+" + "14155550006".translate(FULLWIDTH)}, "To is not an E.164 number"),
    ({"NumMedia": "\u0661"}, "NumMedia is not a number"),
    ({"Body": "x" * 4097}, "Body is longer than 4096 characters"),
])
def test_invalid_field_is_400(client, redis, queue, overrides, expected):
    response = post_signed(client, "/twilio/sms", {**inbound_form("hi"), **overrides})
    assert response.status_code == 400
    assert expected in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"MessageSid": "SM1", "From": "+14155550100", "To": "+15005550006"}'),
    ("text/plain", b"MessageSid=SM1&From=%2B14155550100&To=%2B15005550006"),
    ("application/xml", b"<Message/>"),
    ("", b"MessageSid=SM1&From=%2B14155550100&To=%2B15005550006"),
])
def test_a_body_that_is_not_a_form_is_400(client, redis, queue, content_type, body):
    response = post_raw(client, "/twilio/sms", body, content_type, {})
    assert response.status_code == 400
    assert response.get_data(as_text=True) == (
        "Bad inbound message: Content-Type must be application/x-www-form-urlencoded.\n")
    assert_nothing_stored_or_queued(redis, queue)


def test_multipart_form_is_400(client, redis, queue):
    form = inbound_form("hi")
    response = client.post("/twilio/sms", data=form, content_type="multipart/form-data",
                           headers={"X-Twilio-Signature": sign(PUBLIC + "/twilio/sms", form)})
    assert response.status_code == 400
    assert "Content-Type must be application/x-www-form-urlencoded" in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


def test_invalid_utf8_is_400(client, redis, queue):
    form = inbound_form("placeholder")
    encoded = "&".join(f"{k}={v.replace('+', '%2B')}" for k, v in form.items() if k != "Body")
    # An escape that is not UTF-8: Werkzeug would keep it as the literal text "%FF".
    response = post_raw(client, "/twilio/sms", (encoded + "&Body=caf%FF").encode(),
                        "application/x-www-form-urlencoded", {**form, "Body": "caf%FF"})
    assert response.status_code == 400
    assert response.get_data(as_text=True) == "Bad inbound message: the form is not valid UTF-8.\n"
    # A raw byte that is not UTF-8: Werkzeug would drop the whole form.
    response = post_raw(client, "/twilio/sms", (encoded + "&Body=caf").encode() + b"\xff",
                        "application/x-www-form-urlencoded", {})
    assert response.status_code == 400
    assert "not valid UTF-8" in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


def test_utf8_text_is_fine(client, redis, queue):
    form = inbound_form("Café 😀 Привет")
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    assert "Café 😀 Привет" in inbox(redis, form)[0].decode()


def test_a_body_over_the_size_limit_is_413(client, redis, queue):
    form = inbound_form("hi", Padding="x" * 70_000)
    response = post_signed(client, "/twilio/sms", form)
    assert response.status_code == 413
    assert response.content_type.startswith("text/plain")
    assert "Traceback" not in response.get_data(as_text=True)
    assert_nothing_stored_or_queued(redis, queue)


# -- Redis unreachable: 503 quickly, no traceback ---------------------------------------------------------

def assert_unavailable(response) -> None:
    assert response.status_code == 503
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert text == "Temporarily unable to accept messages; please retry.\n"


def test_redis_on_a_closed_port_gives_503(env, caplog):
    client = create_app({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).test_client()
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        response = post_signed(client, "/twilio/sms", inbound_form("hi"))
    elapsed = time.monotonic() - started
    assert_unavailable(response)
    assert elapsed < 5  # bounded, not a hang: Twilio gives the webhook 15 s in all
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_redis_stopped_and_restarted(env, tmp_path, caplog):
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = create_app({**env, "REDIS_URL": server.url}).test_client()
        before = inbound_form("before", from_=PERSON)
        assert post_signed(client, "/twilio/sms", before).status_code == 200

        server.stop()
        during = inbound_form("during", from_=PERSON)
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            response = post_signed(client, "/twilio/sms", during)
        assert_unavailable(response)
        assert time.monotonic() - started < 5
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert client.get("/readyz").get_json()["status"] == "unavailable"

        server.start()  # same port, same append-only file
        after = inbound_form("after", from_=PERSON)
        assert post_signed(client, "/twilio/sms", after).status_code == 200
        assert post_signed(client, "/twilio/sms", during).status_code == 200  # Twilio's retry gets in now

        with Redis.from_url(server.url) as direct:
            bodies = [json.loads(item)["body"] for item in inbox(direct, before)]
        assert bodies == ["before", "after", "during"]  # nothing of the refused attempt was kept
    finally:
        server.stop()


# -- health ----------------------------------------------------------------------------------------------

def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.fixture
def private_db(redis_server):
    """A database of the tests' Redis that no earlier test's worker registered in (readiness counts workers)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    client = Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


def test_readyz_without_workers_is_503(env, private_db):
    url, _ = private_db
    client = create_app({**env, "REDIS_URL": url}).test_client()
    assert post_signed(client, "/twilio/sms", inbound_form("waiting")).status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "degraded", "redis": "ok", "workers": 0, "queue_depth": 1}


def test_readyz_with_a_worker_is_200(env, private_db, redis_server, uponai_server, twilio_server, tmp_path):
    url, db = private_db
    client = create_app({**env, "REDIS_URL": url}).test_client()
    pool = WorkerPool(settings_env(redis_server, uponai_server, twilio_server, REDIS_URL=url), 1, tmp_path)
    try:
        pool.wait_ready(db)
        # Listening (idle) means its signal handlers are in place, so SIGTERM below is a clean goodbye.
        wait_for(lambda: [w.get_state() for w in Worker.all(connection=db)] == ["idle", "idle"],  # sms, sms-events
                 message="an idle worker")
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok", "redis": "ok", "workers": 1, "queue_depth": 0}
    finally:
        pool.stop()
    assert client.get("/readyz").status_code == 503  # the worker said goodbye when it stopped


# -- status callbacks -------------------------------------------------------------------------------------

def status_form(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "1" * 32, "To": PERSON,
            "From": "+15005550006", "ApiVersion": "2010-04-01", **extra}


def test_status_callback_for_a_known_message_is_recorded(client, redis):
    sid = new_sid()
    cid = conversation_id("+15005550006", PERSON)
    new_store(redis).record_sent(cid, sid, status="queued")

    for status in ("sent", "delivered"):
        response = post_signed(client, "/twilio/status", status_form(sid, status))
        assert response.status_code == 200
    assert redis.hget(f"smsgw:sent:{sid}", "status") == b"delivered"

    post_signed(client, "/twilio/status", status_form(sid, "undelivered", ErrorCode="30003"))
    assert redis.hget(f"smsgw:sent:{sid}", "error_code") == b"30003"


def test_status_callback_for_an_unknown_message_is_200_and_stores_nothing(client, redis):
    sid = new_sid()
    response = post_signed(client, "/twilio/status", status_form(sid, "delivered"))
    assert response.status_code == 200
    assert list(redis.scan_iter("smsgw:*")) == []


def test_status_callback_without_sid_or_status_is_400(client, redis):
    form = status_form(new_sid(), "")
    response = post_signed(client, "/twilio/status", form)
    assert response.status_code == 400
    assert "MessageSid and MessageStatus are required" in response.get_data(as_text=True)
    response = post_raw(client, "/twilio/status", b'{"MessageSid": "SM1"}', "application/json", {})
    assert response.status_code == 400
    assert "Content-Type" in response.get_data(as_text=True)
    assert list(redis.scan_iter("smsgw:*")) == []
