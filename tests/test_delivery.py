"""Sending replies with real workers: the sender of replies, malformed answers from Twilio, identical replies."""

from __future__ import annotations

import time

import pytest
from rq import Queue
from rq.job import Job

from core.model import conversation_id
from sandbox.httpfake import Fault
from sandbox.twilio_sim import MALFORMED_SEND_ANSWERS, SimMessage
from tests.conftest import GATEWAY_NUMBER, wait_for, wait_idle

PERSON = "+14155550177"
OTHER_POOL_NUMBER = "+15005550001"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def settle(redis, twilio, count: int, message: str) -> list[str]:
    """Wait for ``count`` SMS to the person, then for the gateway to go idle; what the person got."""
    wait_for(lambda: len(twilio.sent_to(PERSON)) >= count, message=message)
    wait_idle(redis)
    return twilio.sent_to(PERSON)


# -- the sender of replies (issue 9.6) ----------------------------------------------------------------


def test_a_reply_to_a_messaging_service_inbound_comes_from_the_number_texted(workers, redis, text_in, twilio):
    # The person texted the pool's second number; with the service sid alone Twilio would pick the first.
    service = twilio.add_service("pool", phone_numbers=(OTHER_POOL_NUMBER, GATEWAY_NUMBER))
    text_in("which number?", from_=PERSON, to=GATEWAY_NUMBER, MessagingServiceSid=service.sid)

    assert settle(redis, twilio, 1, "the reply") == ["You said: which number?"]
    (sms,) = twilio.messages
    assert (sms.from_, sms.messaging_service_sid) == (GATEWAY_NUMBER, service.sid)
    (request,) = twilio.calls("send")
    assert (request.form()["From"], request.form()["MessagingServiceSid"]) == (GATEWAY_NUMBER, service.sid)


def test_an_uncertain_send_through_a_service_is_found_by_its_number_not_sent_twice(workers, redis, text_in, twilio):
    service = twilio.add_service("pool", phone_numbers=(OTHER_POOL_NUMBER, GATEWAY_NUMBER))
    twilio.inject("send", Fault(drop_after_apply=True))
    text_in("through the pool", from_=PERSON, to=GATEWAY_NUMBER, MessagingServiceSid=service.sid)

    wait_for(lambda: twilio.calls("list_messages"), message="the look-up after the dropped send")
    assert settle(redis, twilio, 1, "the reply") == ["You said: through the pool"]
    assert twilio.calls("list_messages")[0].query.get("From") == GATEWAY_NUMBER


# -- malformed 200s from Twilio (issue 10.3) ------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MALFORMED_SEND_ANSWERS))
@pytest.mark.parametrize("applied", [True, False], ids=["sent", "not-sent"])
def test_a_malformed_200_to_a_send_ends_in_exactly_one_reply(workers, redis, text_in, twilio, kind, applied):
    twilio.inject_malformed_send(kind, applied=applied)
    form = text_in("answer me", from_=PERSON)

    wait_for(lambda: twilio.calls("list_messages"), message="the look-up before sending again")
    assert settle(redis, twilio, 1, "the reply") == ["You said: answer me"]
    assert len(twilio.calls("send")) == (1 if applied else 2)
    assert redis.hget(f"smsgw:msg:{form['MessageSid']}", "attempts") == b"1"  # counted as a failed attempt
    (sid,) = [m.sid for m in twilio.messages]
    assert redis.hget(f"smsgw:msg:{form['MessageSid']}", "part:reply:0").decode() == sid
    assert redis.exists(f"smsgw:sent:{sid}")  # recorded, so the conversation view and status callbacks know it


def test_malformed_200s_until_retries_are_used_up_end_in_one_apology(start_workers, redis, text_in, twilio):
    start_workers(1, RETRY_INTERVALS_SECONDS="0.2,0.2")  # three attempts
    twilio.inject_malformed_send("html", applied=False, times=3)
    form = text_in("doomed by a proxy", from_=PERSON)

    got = settle(redis, twilio, 1, "the apology")
    assert len(got) == 1 and "sorry" in got[0].lower()
    assert redis.hget(f"smsgw:msg:{form['MessageSid']}", "attempts") == b"3"
    failed = Queue("sms", connection=redis).failed_job_registry
    wait_for(lambda: failed.count == 1, message="the failed job")
    job = Job.fetch(failed.get_job_ids()[0], connection=redis)
    assert "gave up after 3 attempts" in job.latest_result().exc_string
    assert "2xx answer that is not the resource" in job.latest_result().exc_string


# -- identical replies (issue 10.4) ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault(drop=True), Fault(drop_after_apply=True), Fault(delay_seconds=3)],
                         ids=["dropped-before-twilio", "dropped-after-sending", "read-timeout-after-sending"])
def test_two_identical_replies_in_a_row_are_both_delivered_once(workers, redis, text_in, uponai, twilio, fault):
    uponai.responder = lambda chat, text: ["OK"]
    text_in("first", from_=PERSON)
    assert settle(redis, twilio, 1, "the first OK") == ["OK"]

    twilio.inject("send", fault)
    text_in("second", from_=PERSON)
    wait_for(lambda: twilio.calls("list_messages"), message="the look-up before sending the second OK again")
    assert settle(redis, twilio, 2, "the second OK") == ["OK", "OK"]
    assert len({m.sid for m in twilio.messages}) == 2


def test_an_identical_text_sent_before_this_part_was_claimed_is_not_taken_for_it(workers, redis, text_in, uponai,
                                                                                   twilio):
    # Someone (an operator in Twilio's console) sent the same words from the same number half a minute ago;
    # the gateway never recorded that sid, so only the claim time tells the two apart.
    twilio.messages.append(SimMessage(sid="SM" + "e" * 32, to=PERSON, from_=GATEWAY_NUMBER, messaging_service_sid=None,
                                      body="OK", status_callback=None, created_at=time.time() - 30))
    uponai.responder = lambda chat, text: ["OK"]
    twilio.inject("send", Fault(drop=True))
    text_in("are you there?", from_=PERSON)

    wait_for(lambda: twilio.calls("list_messages"), message="the look-up before sending again")
    assert settle(redis, twilio, 2, "the reply") == ["OK", "OK"]
