"""X-Twilio-Signature: Twilio's published vector, the URL we rebuild, and the webhook refusing what is not signed."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from flask import Flask, request
from rq import Queue
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from gateway import create_app
from gateway.signatures import is_signed_by_twilio, signed_url
from tests.conftest import AUTH_TOKEN, inbound_form, post_signed, sign, waiting_drains

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
    assert len(waiting_drains(queue)) == 0


def test_signed_inbound_is_accepted(client, redis, queue):
    response = post_signed(client, "/twilio/sms", inbound_form("hi"))
    assert response.status_code == 200
    assert len(waiting_drains(queue)) == 1  # the control case: the same request, signed, does get through


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
    assert len(waiting_drains(queue)) == 1


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
    assert len(waiting_drains(queue)) == 1


NEW_TOKEN = "9e30" * 8


def test_previous_auth_token_is_accepted_during_a_rotation(env, redis, queue):
    rotating = {**env, "TWILIO_AUTH_TOKEN": NEW_TOKEN, "TWILIO_AUTH_TOKEN_PREVIOUS": AUTH_TOKEN}
    client = create_app(rotating).test_client()
    assert post_signed(client, "/twilio/sms", inbound_form("old", from_="+14155550101"),
                       token=AUTH_TOKEN).status_code == 200
    assert post_signed(client, "/twilio/sms", inbound_form("new", from_="+14155550102"),
                       token=NEW_TOKEN).status_code == 200
    assert post_signed(client, "/twilio/sms", inbound_form("bad", from_="+14155550103"),
                       token="other-token").status_code == 403
    assert len(waiting_drains(queue)) == 2  # one drain job for each of the two accepted conversations


# -- a signed form re-cut: text moved between a value and the next name signs the same ----------------------

def signed_text(fields: list[tuple[str, str]]) -> str:
    return "".join(name + value for name, value in fields)


READ_FIELDS = ("MessageSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body", "NumMedia", "OptOutType",
               *(f"MediaContentType{i}" for i in range(10)))  # what the webhook reads; the rest it ignores


def recuts(form: dict[str, str], url: str) -> list[list[tuple[str, str]]]:
    """Every re-arrangement of ``form`` in one region that keeps its signature, the original left out.

    The signed text is the sorted names and values joined with no separator. Cutting it again: any one
    cut moved anywhere between its neighbours (a value's suffix into the next name, a name's prefix into
    the previous value), any run of whole fields merged into a value, a merge with one cut moved, and any
    two neighbouring cuts moved at once. A cut keeps the signature when the fields stay in the validator's
    order (names sorted, a repeated name's values sorted and distinct). Variants that differ only in fields
    the webhook ignores are answered alike: one of each is kept, checked with twilio's own validator.
    """
    original = sorted(form.items())
    tokens = [part for pair in original for part in pair]
    text = "".join(tokens)
    cuts, position = [], 0
    for token in tokens[:-1]:
        position += len(token)
        cuts.append(position)
    found: dict[tuple, list[tuple[str, str]]] = {}
    for first in range(len(cuts)):
        for last in range(first, len(cuts)):
            low = cuts[first - 1] if first else 0
            high = cuts[last + 1] if last + 1 < len(cuts) else len(text)
            removed = last - first + 1
            if removed % 2:
                replacements = [(p,) for p in range(low, high + 1)]
            else:
                replacements = [()]
                if removed == 2:
                    replacements += [(p, q) for p in range(low, high + 1) for q in range(p, high + 1)]
            for new in replacements:
                bounds = [0, *cuts[:first], *new, *cuts[last + 1:], len(text)]
                parts = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
                fields = list(zip(parts[0::2], parts[1::2], strict=True))
                if fields == original or not _in_signing_order(fields):
                    continue
                found.setdefault(tuple(pair for pair in fields if pair[0] in READ_FIELDS), fields)
    validator, signature = RequestValidator(AUTH_TOKEN), sign(url, form)
    assert all(validator.validate(url, MultiDict(fields), signature) for fields in found.values())
    return list(found.values())


def _in_signing_order(fields: list[tuple[str, str]]) -> bool:
    return bool(fields[0][0]) and all(
        name and (name, value) > (prev_name, prev_value) if name == prev_name else name > prev_name
        for (prev_name, prev_value), (name, value) in zip(fields, fields[1:], strict=False))


def post_fields(client, fields: list[tuple[str, str]], signature: str):
    body = urlencode(fields)
    return client.post("/twilio/sms", data=body, content_type="application/x-www-form-urlencoded",
                        headers={"X-Twilio-Signature": signature})


def queued_messages(redis) -> list[dict]:
    return [json.loads(raw) for key in redis.scan_iter("smsgw:inbox:*") for raw in redis.lrange(key, 0, -1)]


REAL_LOOKING = {  # the fields and shapes of a real inbound SMS (Twilio's webhook-request docs), our numbers
    "ToCountry": "US", "ToState": "CA", "SmsMessageSid": "SMb711289e438f577f230f5837e9c74a08", "NumMedia": "0",
    "ToCity": "BERKELEY", "FromZip": "94110", "SmsSid": "SMb711289e438f577f230f5837e9c74a08", "FromState": "CA",
    "SmsStatus": "received", "FromCity": "SAN FRANCISCO", "Body": "Hello THERE, is the shop open?",
    "FromCountry": "US", "To": "+15005550006", "MessagingServiceSid": "MG790b6bd09f119b54ffb7f03b8841b1c9",
    "ToZip": "94704", "NumSegments": "1", "MessageSid": "SMb711289e438f577f230f5837e9c74a08",
    "AccountSid": "AC" + "1" * 32, "From": "+14155550100", "ApiVersion": "2010-04-01",
}
MMS_OPT_OUT = {  # a picture with an opt-out word: MM sid, media fields, OptOutType
    "MessageSid": "MM" + "4e" * 16, "SmsMessageSid": "MM" + "4e" * 16, "SmsSid": "MM" + "4e" * 16,
    "AccountSid": "AC" + "1" * 32, "From": "+447700900123", "To": "+15005550006", "Body": "STOP",
    "NumMedia": "1", "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME1",
    "MediaContentType0": "image/jpeg", "OptOutType": "STOP", "NumSegments": "1", "SmsStatus": "received",
    "ApiVersion": "2010-04-01",
}


@pytest.mark.parametrize("form", [REAL_LOOKING, MMS_OPT_OUT], ids=["sms", "mms-opt-out"])
@pytest.mark.parametrize("original_first", [True, False], ids=["original-first", "recuts-first"])
def test_no_recut_of_a_signed_webhook_is_queued_as_another_message(client, redis, queue, form, original_first):
    url = "https://sms.example.com/twilio/sms"
    signature = sign(url, form)
    variants = recuts(form, url)
    assert len(variants) > 50  # the generator does find re-cuts that Twilio's validator accepts
    if original_first:
        assert post_signed(client, "/twilio/sms", form).status_code == 200
    for fields in variants:
        response = post_fields(client, fields, signature)
        assert response.status_code in (200, 400), (fields, response.get_data(as_text=True))
    if not original_first:
        assert post_signed(client, "/twilio/sms", form).status_code == 200

    messages = queued_messages(redis)
    assert len(messages) == 1, [m["sid"] for m in messages]
    assert len(waiting_drains(queue)) == 1
    assert len(list(redis.scan_iter("smsgw:seen:*"))) == 1
    # The one message queued is the real one, whichever arrived first.
    kept = messages[0]
    assert (kept["sid"], kept["from_"], kept["to"], kept["body"], kept["num_media"], kept["opt_out_type"]) == (
        form["MessageSid"], form["From"], form["To"], form["Body"], int(form["NumMedia"]), form.get("OptOutType", ""))
    assert kept["messaging_service_sid"] == form.get("MessagingServiceSid", "")


def test_a_body_written_to_look_like_fields_cannot_be_replayed_as_a_message_to_someone_else(client, redis, queue):
    # A person writes a text that spells out fields: re-cut, the captured webhook reads as a new message
    # (its own sid, formats all valid) from a victim's number. Formats alone cannot see it; the signature can.
    fake_sid, victim = "SM" + "ab" * 16, "+14155550199"
    body = f"hiFrom{victim}MessageSid{fake_sid}NumMedia0To+15005550006ToZip"
    form = inbound_form(body, from_="+14155550100")
    url = "https://sms.example.com/twilio/sms"
    assert post_signed(client, "/twilio/sms", form).status_code == 200

    rest = signed_text(sorted(form.items()))
    rest = rest[rest.index("From+14155550100"):]
    forged = [("AccountSid", form["AccountSid"]), ("ApiVersion", form["ApiVersion"]), ("Body", "hi"),
              ("From", victim), ("MessageSid", fake_sid), ("NumMedia", "0"), ("To", "+15005550006"), ("ToZip", rest)]
    assert signed_text(forged) == signed_text(sorted(form.items()))
    signature = sign(url, form)
    assert RequestValidator(AUTH_TOKEN).validate(url, MultiDict(forged), signature)

    response = post_fields(client, forged, signature)
    assert response.status_code == 400
    assert "signature belongs to another message" in response.get_data(as_text=True)
    assert [m["sid"] for m in queued_messages(redis)] == [form["MessageSid"]]
    assert len(waiting_drains(queue)) == 1


def test_twilio_retrying_the_same_webhook_is_still_a_duplicate_not_a_replay(client, redis, queue):
    form = inbound_form("again")
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    response = post_signed(client, "/twilio/sms", form)
    assert response.status_code == 200 and len(queued_messages(redis)) == 1


# -- status callbacks are held to Twilio's formats too -------------------------------------------------------

@pytest.mark.parametrize(("overrides", "expected"), [
    ({"MessageSid": "SM" + "a" * 32 + "MessageStatusdelivered"}, "MessageSid is not a Twilio message sid"),
    ({"MessageSid": "SMunknown"}, "MessageSid is not a Twilio message sid"),
    ({"MessageStatus": "sentSmsSid"}, "MessageStatus is not a Twilio message status"),
    ({"ErrorCode": "30003From+14155550100"}, "ErrorCode is not a Twilio error code"),
    ({"AccountSid": "AC" + "1" * 32 + "ErrorCode"}, "AccountSid is not a Twilio sid"),
])
def test_status_callback_fields_out_of_shape_are_400(client, redis, overrides, expected):
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "AccountSid": "AC" + "1" * 32,
            "ErrorCode": "", **overrides}
    response = post_signed(client, "/twilio/status", form)
    assert response.status_code == 400
    assert expected in response.get_data(as_text=True)
    assert list(redis.scan_iter("smsgw:*")) == []
