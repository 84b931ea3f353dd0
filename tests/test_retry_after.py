"""Retry-After is honoured end to end (issue 21, item 3): a send answered 429 with ``Retry-After: 3`` is tried
again no sooner than 3 s later, though RETRY_INTERVALS_SECONDS would retry after 0.2 s; RETRY_AFTER_MAX_SECONDS
caps a longer one. Twilio documents 20429 (429 Too Many Requests) and Retry-After on it; UponAI's 429 is the same.
"""

from __future__ import annotations

import pytest

from sandbox.httpfake import Fault
from tests.conftest import wait_for, wait_idle

PERSON = "+14155550155"


@pytest.mark.parametrize("side", ["twilio", "uponai"])
def test_a_429_with_retry_after_waits_that_long_before_the_next_attempt(start_workers, text_in, redis, uponai, twilio,
                                                                        side):
    start_workers(1)
    fake, operation = (twilio, "send") if side == "twilio" else (uponai, "complete")
    fake.inject(operation, Fault(status=429, retry_after="3"))
    text_in("are you open?", from_=PERSON)

    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the answer after the rate limit")
    wait_idle(redis)
    first, second = fake.calls(operation)[:2]
    assert second.at - first.at >= 3.0  # not the 0.2 s of RETRY_INTERVALS_SECONDS
    assert twilio.sent_to(PERSON) == ["You said: are you open?"]


def test_a_retry_after_longer_than_the_cap_waits_the_cap(start_workers, text_in, redis, twilio):
    start_workers(1, RETRY_AFTER_MAX_SECONDS="2")
    twilio.inject("send", Fault(status=429, retry_after="3600"))
    text_in("still open?", from_=PERSON)

    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the answer after the capped wait")
    first, second = twilio.calls("send")[:2]
    assert 2.0 <= second.at - first.at < 30  # (RQ's scheduler would run a 0.2 s retry after 1 s)
