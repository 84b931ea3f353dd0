"""TwilioSender against the local Twilio simulator, through the real twilio client: what is sent, and errors."""

from __future__ import annotations

import email.utils
import time

import pytest
from prometheus_client import REGISTRY

from sandbox.httpfake import Fault
from sandbox.twilio_sim import MALFORMED_SEND_ANSWERS
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, GATEWAY_NUMBER, free_port, wait_for
from workers.errors import TwilioMalformedAnswerError, TwilioPermanentError, TwilioTransientError
from workers.metering import MeteredClient
from workers.twilio_client import SentMessage, TwilioSender, build_client

PERSON = "+14155550100"
SERVICE_SID = "MG" + "2" * 32
CALLBACK = "https://sms.example.com/twilio/status"


def make_sender(base_url: str, *, auth_token: str = AUTH_TOKEN, timeout_seconds: float = 5.0) -> TwilioSender:
    return TwilioSender(build_client(account_sid=ACCOUNT_SID, auth_token=auth_token, api_base_url=base_url,
                                     timeout_seconds=timeout_seconds, connect_timeout_seconds=5.0))


@pytest.fixture
def sender(twilio) -> TwilioSender:
    return make_sender(twilio.url)


def test_sends_from_a_number_with_a_status_callback(sender, twilio):
    sent = sender.send(to=PERSON, body="Hello there", from_=GATEWAY_NUMBER, status_callback=CALLBACK)

    assert isinstance(sent, SentMessage)
    assert sent.sid.startswith("SM") and sent.status == "queued" and sent.num_segments == 1
    (message,) = twilio.messages
    assert (message.sid, message.to, message.from_, message.body) == (sent.sid, PERSON, GATEWAY_NUMBER, "Hello there")
    assert message.messaging_service_sid is None
    assert message.status_callback == CALLBACK
    (_, request), = [(op, r) for op, r in twilio.requests if op == "send"]
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.form() == {"To": PERSON, "Body": "Hello there", "From": GATEWAY_NUMBER, "StatusCallback": CALLBACK}


def test_sends_through_a_messaging_service_from_the_given_number(sender, twilio):
    # Twilio's facts: with MessagingServiceSid and From, the message comes from that number of the pool.
    twilio.add_service("pool", phone_numbers=("+15005550001", GATEWAY_NUMBER))
    service_sid = next(iter(twilio.services))
    sent = sender.send(to=PERSON, body="Via the service", from_=GATEWAY_NUMBER, messaging_service_sid=service_sid)

    (message,) = twilio.messages
    assert (message.messaging_service_sid, message.from_) == (service_sid, GATEWAY_NUMBER)
    assert message.status_callback is None
    assert sent.status == "accepted"  # Twilio's initial status of a message created with a Messaging Service
    (_, request), = [(op, r) for op, r in twilio.requests if op == "send"]
    assert request.form() == {"To": PERSON, "Body": "Via the service", "From": GATEWAY_NUMBER,
                              "MessagingServiceSid": service_sid}


def test_through_a_messaging_service_alone_twilio_picks_the_number(sender, twilio):
    twilio.add_service("pool", phone_numbers=("+15005550001", GATEWAY_NUMBER))
    service_sid = next(iter(twilio.services))
    sender.send(to=PERSON, body="Picked by the service", messaging_service_sid=service_sid)

    (message,) = twilio.messages
    assert message.from_ == "+15005550001"  # the simulator's pick: the first number of the pool
    (_, request), = [(op, r) for op, r in twilio.requests if op == "send"]
    assert request.form() == {"To": PERSON, "Body": "Picked by the service", "MessagingServiceSid": service_sid}


def test_segments_reported_by_twilio_are_kept(sender):
    assert sender.send(to=PERSON, body="x" * 400, from_=GATEWAY_NUMBER).num_segments == 3


def test_no_sender_is_permanent_and_sends_nothing(sender, twilio):
    with pytest.raises(TwilioPermanentError, match="no sender"):
        sender.send(to=PERSON, body="nobody sends this")
    assert twilio.requests == []


def test_a_reply_slower_than_the_timeout_is_transient_and_may_have_gone(twilio):
    sender = make_sender(twilio.url, timeout_seconds=0.3)
    twilio.inject("send", Fault(delay_seconds=1.5))
    with pytest.raises(TwilioTransientError, match="read timeout") as caught:
        sender.send(to=PERSON, body="slow", from_=GATEWAY_NUMBER)
    assert caught.value.maybe_applied is True
    # It did go out: the simulator accepted it after the client stopped waiting.
    wait_for(lambda: twilio.sent_to(PERSON), timeout=10, message="the slow message to be accepted")
    assert twilio.sent_to(PERSON) == ["slow"]


@pytest.mark.parametrize(("status", "code"), [(429, 20429), (500, 20500), (502, 20500), (503, 20500)])
def test_rate_limit_and_server_errors_are_transient(sender, twilio, status, code):
    twilio.inject("send", Fault(status=status))
    with pytest.raises(TwilioTransientError) as caught:
        sender.send(to=PERSON, body="retry me", from_=GATEWAY_NUMBER)
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.maybe_applied is False
    assert twilio.messages == []


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_of_a_rate_limit_or_unavailable_answer_is_carried_in_seconds_or_as_an_http_date(
        sender, twilio, status):
    """Twilio's 429 (error 20429, "Too Many Requests") may say when to come back: Retry-After, seconds or an HTTP
    date (RFC 9110, section 10.2.3)."""
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    twilio.inject("send", Fault(status=status, retry_after="5"), Fault(status=status, retry_after=later),
                  Fault(status=status))
    for expected in ((5.0, 5.0), (100.0, 120.0), None):
        with pytest.raises(TwilioTransientError) as caught:
            sender.send(to=PERSON, body="retry me", from_=GATEWAY_NUMBER)
        seconds = caught.value.retry_after_seconds
        assert seconds is None if expected is None else expected[0] <= seconds <= expected[1]
    assert twilio.messages == []


def test_a_server_error_with_a_non_json_body_is_transient(sender, twilio):
    twilio.inject("send", Fault(status=502, body="<html>Bad Gateway</html>"))
    with pytest.raises(TwilioTransientError) as caught:
        sender.send(to=PERSON, body="x", from_=GATEWAY_NUMBER)
    assert caught.value.status == 502


def test_opted_out_recipient_is_permanent_21610(sender, twilio):
    twilio.opted_out.add(PERSON)
    with pytest.raises(TwilioPermanentError) as caught:
        sender.send(to=PERSON, body="hi", from_=GATEWAY_NUMBER)
    assert (caught.value.status, caught.value.code) == (400, 21610)
    assert "unsubscribed" in str(caught.value)


def test_invalid_number_is_permanent_21211(sender, twilio):
    with pytest.raises(TwilioPermanentError) as caught:
        sender.send(to="not-a-number", body="hi", from_=GATEWAY_NUMBER)
    assert caught.value.code == 21211
    assert "not a valid phone number" in str(caught.value)
    assert twilio.messages == []


def test_body_over_1600_characters_is_permanent_21617(sender, twilio):
    with pytest.raises(TwilioPermanentError) as caught:
        sender.send(to=PERSON, body="x" * 1601, from_=GATEWAY_NUMBER)
    assert caught.value.code == 21617
    assert twilio.messages == []


def test_bad_credentials_are_permanent(twilio):
    sender = make_sender(twilio.url, auth_token="wrong-token")
    with pytest.raises(TwilioPermanentError) as caught:
        sender.send(to=PERSON, body="hi", from_=GATEWAY_NUMBER)
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert "wrong-token" not in str(caught.value)
    assert twilio.messages == []


def test_connection_refused_is_transient_and_certainly_not_sent():
    sender = make_sender(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TwilioTransientError, match="connection failed") as caught:
        sender.send(to=PERSON, body="hi", from_=GATEWAY_NUMBER)
    assert caught.value.maybe_applied is False


def test_dropped_connection_is_transient_and_may_have_gone(sender, twilio):
    twilio.inject("send", Fault(drop_after_apply=True))
    with pytest.raises(TwilioTransientError) as caught:
        sender.send(to=PERSON, body="maybe", from_=GATEWAY_NUMBER)
    assert caught.value.maybe_applied is True
    assert twilio.sent_to(PERSON) == ["maybe"]


@pytest.mark.parametrize("kind", sorted(MALFORMED_SEND_ANSWERS))
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_200_that_is_not_a_message_is_transient_and_may_have_gone(sender, twilio, kind, applied):
    twilio.inject_malformed_send(kind, applied=applied)
    with pytest.raises(TwilioMalformedAnswerError) as caught:
        sender.send(to=PERSON, body="malformed", from_=GATEWAY_NUMBER)
    assert isinstance(caught.value, TwilioTransientError)
    assert caught.value.maybe_applied is True  # Twilio said 2xx: the message may well have gone
    assert caught.value.kind == "malformed"
    assert twilio.sent_to(PERSON) == (["malformed"] if applied else [])


def test_a_malformed_200_is_counted_as_its_own_kind_of_twilio_error(sender, twilio):
    def count() -> float:
        labels = {"operation": "send", "code": "malformed"}
        return REGISTRY.get_sample_value("smsgw_twilio_errors_total", labels) or 0.0

    before = count()
    twilio.inject_malformed_send("null", applied=False)
    with pytest.raises(TwilioMalformedAnswerError):
        MeteredClient(sender, "twilio").send(to=PERSON, body="counted", from_=GATEWAY_NUMBER)
    assert count() == before + 1


def test_a_sid_that_is_not_a_message_sid_is_malformed(sender, twilio):
    twilio.inject("send", Fault(status=200, body={"sid": "SM-not-a-sid", "status": "queued"}, apply_first=True))
    with pytest.raises(TwilioMalformedAnswerError, match="without a message sid"):
        sender.send(to=PERSON, body="odd sid", from_=GATEWAY_NUMBER)


def test_find_sent_finds_a_message_that_went_out(sender, twilio):
    sent = sender.send(to=PERSON, body="part one", from_=GATEWAY_NUMBER)
    sender.send(to=PERSON, body="part two", from_=GATEWAY_NUMBER)
    assert sender.find_sent(to=PERSON, body="part one", from_=GATEWAY_NUMBER) == sent.sid
    assert sender.find_sent(to=PERSON, body="never sent", from_=GATEWAY_NUMBER) is None
    assert sender.find_sent(to="+14155550199", body="part one") is None


def test_find_sent_matches_the_sender_the_time_and_skips_known_sids(sender, twilio):
    started = time.time()
    first = sender.send(to=PERSON, body="OK", from_=GATEWAY_NUMBER)
    assert sender.find_sent(to=PERSON, body="OK", from_="+15005550001") is None  # another gateway number
    assert sender.find_sent(to=PERSON, body="OK", from_=GATEWAY_NUMBER, exclude={first.sid}) is None
    assert sender.find_sent(to=PERSON, body="OK", from_=GATEWAY_NUMBER, since=started + 5) is None
    # date_created has whole seconds: a message created in this second is found from the second's start.
    assert sender.find_sent(to=PERSON, body="OK", from_=GATEWAY_NUMBER, since=int(started)) == first.sid
    second = sender.send(to=PERSON, body="OK", from_=GATEWAY_NUMBER)
    assert sender.find_sent(to=PERSON, body="OK", from_=GATEWAY_NUMBER, exclude={first.sid}) == second.sid


def test_find_sent_through_a_service_alone_matches_the_service(sender, twilio):
    twilio.add_service("pool", phone_numbers=(GATEWAY_NUMBER,))
    service_sid = next(iter(twilio.services))
    sent = sender.send(to=PERSON, body="hello", messaging_service_sid=service_sid)
    sender.send(to=PERSON, body="hello", from_="+15005550001")  # the same text from outside the service
    assert sender.find_sent(to=PERSON, body="hello", messaging_service_sid=service_sid) == sent.sid
    assert sender.find_sent(to=PERSON, body="hello", messaging_service_sid=SERVICE_SID) is None


@pytest.mark.parametrize("body", ["<html>ok</html>", "null"])
def test_an_unreadable_list_is_transient(sender, twilio, body):
    twilio.inject("list_messages", Fault(status=200, body=body, apply_first=True))
    with pytest.raises(TwilioMalformedAnswerError):  # transient: the look-up is tried again later
        sender.find_sent(to=PERSON, body="x", from_=GATEWAY_NUMBER)
