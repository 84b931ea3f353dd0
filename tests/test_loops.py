"""Senders no reply can reach, the gateway's own numbers, and loops with another bot: no agent turn is spent on them."""

from __future__ import annotations

import json
import logging

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from core.model import conversation_id
from gateway import create_app
from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, wait_for, waiting_drains

PERSON = "+14155550100"
SECOND_NUMBER = "+15005550007"  # another number of the account, pointed at the gateway
TOKEN = "loop-test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def inbox_total(redis) -> int:
    return sum(redis.llen(key) for key in redis.scan_iter("smsgw:inbox:*"))


def not_forwarded(client, reason: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(f'smsgw_inbound_not_forwarded_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- senders no reply can reach: acknowledged, never queued -------------------------------------------------

@pytest.mark.parametrize(("sender", "reason"), [
    ("MyBank", "alphanumeric"),  # an alphanumeric sender id: no number to answer
    ("Info 24", "alphanumeric"),
    ("12345", "short_code"),  # short codes (3 to 8 digits, no +) do not take replies from a long code
    ("898287", "short_code"),
    (GATEWAY_NUMBER, "own_number"),  # TWILIO_FROM_NUMBER texting the gateway's other number
])
def test_a_sender_no_reply_can_reach_costs_no_agent_turn(client, redis, queue, sender, reason, caplog):
    before = not_forwarded(client, reason)
    for body in ("Your code is 123456", "STOP"):  # keywords too: there is nothing to stop sending
        form = inbound_form(body, from_=sender, to=SECOND_NUMBER)
        with caplog.at_level(logging.INFO, logger="gateway.twilio_webhooks"):
            response = post_signed(client, "/twilio/sms", form)
        assert response.status_code == 200 and response.get_data(as_text=True) == TWIML
    assert inbox_total(redis) == 0 and waiting_drains(queue) == []
    assert not redis.exists(f"smsgw:conv:{conversation_id(SECOND_NUMBER, sender)}")
    assert not_forwarded(client, reason) - before == 2
    lines = [r.getMessage() for r in caplog.records if "not forwarded" in r.getMessage()]
    assert len(lines) == 2 and all(reason in line for line in lines)
    if sender.startswith("+"):
        assert not any(sender[1:] in line for line in lines)  # the number is masked


def test_numbers_from_settings_and_numbers_texted_before_are_the_gateways_own(env, redis, queue):
    client = create_app({**env, "GATEWAY_NUMBERS": "+15005550008, whatsapp:+15005550009",
                         "UPONAI_AGENT_ROUTES": "+15005550010=agent_sales"}).test_client()
    # A person texts SECOND_NUMBER: it is now known as one of the gateway's numbers (a signed To).
    assert post_signed(client, "/twilio/sms", inbound_form("hi", from_=PERSON, to=SECOND_NUMBER)).status_code == 200
    assert inbox_total(redis) == 1
    for sender in (SECOND_NUMBER, "+15005550008", "+15005550009", "whatsapp:+15005550008", "+15005550010"):
        assert post_signed(client, "/twilio/sms", inbound_form("ping", from_=sender)).status_code == 200
    assert inbox_total(redis) == 1 and len(waiting_drains(queue)) == 1  # only the person's text
    assert set(redis.smembers("smsgw:numbers")) == {SECOND_NUMBER.encode(), GATEWAY_NUMBER.encode()}


def test_phone_numbers_and_channel_users_are_still_answered(client, redis, queue):
    for sender in ("+14155550100", "+447700900123", "whatsapp:+14155550101", "messenger:24069158952693"):
        assert post_signed(client, "/twilio/sms", inbound_form("hello", from_=sender)).status_code == 200
    assert inbox_total(redis) == 4


# -- loops ------------------------------------------------------------------------------------------------

class Carrier:
    """Delivers the SMS the fake Twilio accepted for some numbers back to the gateway as signed inbound texts.

    A message is delivered once the gateway has recorded it as sent (a real carrier cannot be faster than
    Twilio accepting the message); ``answer(body)`` is what the number's owner texts back at once.
    """

    def __init__(self, client, redis, twilio, answers: dict):
        self.client, self.redis, self.twilio, self.answers = client, redis, twilio, answers
        self.delivered: set[str] = set()

    def pump(self) -> int:
        moved = 0
        for message in list(self.twilio.messages):
            answer = self.answers.get(message.to)
            if answer is None or message.sid in self.delivered:
                continue
            if not self.redis.exists(f"smsgw:sent:{message.sid}"):
                continue
            self.delivered.add(message.sid)
            form = inbound_form(answer(message.body), from_=message.to, to=message.from_)
            assert post_signed(self.client, "/twilio/sms", form).status_code == 200
            moved += 1
        return moved

    def pending(self) -> int:
        return sum(1 for m in list(self.twilio.messages) if m.to in self.answers and m.sid not in self.delivered)


def run_until_idle(carrier: Carrier, redis, queue: Queue) -> None:
    """Pump the carrier until nothing moves: no job queued or running, no inbox entry, nothing to deliver."""
    started = StartedJobRegistry(queue=queue)

    def idle() -> bool:
        carrier.pump()
        return (waiting_drains(queue) == [] and started.count == 0 and inbox_total(redis) == 0
                and carrier.pending() == 0 and not any(redis.scan_iter("smsgw:lock:*")))

    wait_for(idle, timeout=60, message="the conversation to go quiet")
    wait_for(lambda: idle() and idle(), timeout=10, message="the conversation to stay quiet")


@pytest.fixture
def loop_client(env, redis):
    return create_app({**env, "ADMIN_API_TOKEN": TOKEN, "LOOP_BREAKER_REPLIES": "3"}).test_client()


def test_two_gateway_numbers_texting_each_other_cost_no_agent_turn(start_workers, loop_client, redis, queue,
                                                                  uponai, twilio):
    start_workers(1)
    gateways = {GATEWAY_NUMBER: lambda body: body, SECOND_NUMBER: lambda body: body}
    carrier = Carrier(loop_client, redis, twilio, gateways)
    # A person texts the second number once (so it is known), then that number texts the first one.
    for form in (inbound_form("hi", from_=PERSON, to=SECOND_NUMBER),
                 inbound_form("hello from the second line", from_=SECOND_NUMBER)):
        assert post_signed(loop_client, "/twilio/sms", form).status_code == 200
    run_until_idle(carrier, redis, queue)

    assert [text for _, text in uponai.completion_log] == ["hi"]  # the person's turn only
    assert twilio.sent_to(PERSON) == ["You said: hi"]
    assert twilio.sent_to(GATEWAY_NUMBER) == [] and twilio.sent_to(SECOND_NUMBER) == []


def test_a_bot_answering_every_reply_at_once_trips_the_loop_breaker(start_worker_processes, loop_client, redis, queue,
                                                                   uponai, twilio):
    bot = "+14155550142"
    pool = start_worker_processes(1, LOOP_BREAKER_REPLIES="3", LOOP_BREAKER_SECONDS="30")
    turns = iter(range(1, 1000))
    carrier = Carrier(loop_client, redis, twilio, {bot: lambda body: f"bot answer {next(turns)}"})
    assert post_signed(loop_client, "/twilio/sms", inbound_form("bot says hello", from_=bot)).status_code == 200
    run_until_idle(carrier, redis, queue)

    # The first text and the next two quick ones reach the agent; the third quick one opens the breaker.
    assert [text for _, text in uponai.completion_log] == ["bot says hello", "bot answer 1", "bot answer 2"]
    assert len(twilio.sent_to(bot)) == 3
    cid = conversation_id(GATEWAY_NUMBER, bot)
    view = loop_client.get(f"/admin/conversations/{bot}", headers=AUTH).get_json()
    assert view["conversation_id"] == cid
    assert view["loop_breaker"]["open"] is True and view["loop_breaker"]["held_messages"] == 1
    assert view["loop_breaker"]["opened_at"] and view["loop_breaker"]["until"]
    entries = [json.loads(line) for line in pool.output().splitlines() if line.startswith("{")]
    warnings = [entry for entry in entries if "loop breaker open for" in entry["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning" and warnings[0]["conversation_id"] == cid
    assert bot[1:] not in json.dumps(warnings[0])

    # More texts while it is open are kept, not forwarded, and nothing goes back to the bot.
    for i in range(3):
        assert post_signed(loop_client, "/twilio/sms", inbound_form(f"bot again {i}", from_=bot)).status_code == 200
    run_until_idle(carrier, redis, queue)
    assert len(uponai.completion_log) == 3 and len(twilio.sent_to(bot)) == 3
    view = loop_client.get(f"/admin/conversations/{bot}", headers=AUTH).get_json()
    assert view["loop_breaker"]["held_messages"] == 4


def test_a_person_who_writes_before_our_reply_arrives_does_not_trip_it(start_workers, loop_client, redis, queue,
                                                                      uponai, twilio):
    carrier = Carrier(loop_client, redis, twilio, {})
    for i in range(5):  # a burst typed before any answer came back
        assert post_signed(loop_client, "/twilio/sms", inbound_form(f"part {i}", from_=PERSON)).status_code == 200
    start_workers(1, LOOP_BREAKER_REPLIES="2", LOOP_BREAKER_SECONDS="30")
    run_until_idle(carrier, redis, queue)
    # The burst is one turn: one reply, and nothing quick to count.
    assert twilio.sent_to(PERSON) == ["You said: " + "\n".join(f"part {i}" for i in range(5))]
    view = loop_client.get(f"/admin/conversations/{PERSON}", headers=AUTH).get_json()
    assert view["loop_breaker"] is None


def test_gateway_numbers_setting_is_checked(env):
    from config import SettingsError, load_settings

    assert load_settings({**env, "GATEWAY_NUMBERS": "+15005550008; +15005550009"}, dotenv_path=None
                         ).gateway_numbers == ("+15005550008", "+15005550009")
    with pytest.raises(SettingsError, match="GATEWAY_NUMBERS"):
        load_settings({**env, "GATEWAY_NUMBERS": "+1 500 555 0008"}, dotenv_path=None)
    assert load_settings(env, dotenv_path=None).loop_breaker_replies == 5
