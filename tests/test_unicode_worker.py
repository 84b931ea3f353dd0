"""Text that is not valid Unicode, seen from the worker (issue 22, item 6, the worker's side).

The admin API refuses a lone surrogate with a 400 (tests/test_admin.py). Behind it: an agent's answer that carries
one (an upstream 200 with garbage: JSON's "\\ud800" escape decodes to a lone surrogate) still reaches the person,
the surrogate shown as U+FFFD; an admin job that holds one (queued by an older web) is refused before it ends the
person's chat; and the sender calls it a local fault, never a bad answer from Twilio.
"""

from __future__ import annotations

import uuid

import pytest

from config import load_settings
from core.model import conversation_id
from tests.conftest import GATEWAY_NUMBER
from workers import admin_ops, flow, sms_text
from workers.errors import TwilioTransientError, UnsendableTextError
from workers.jobs import build_services
from workers.twilio_client import TwilioSender

PERSON = "+14155550177"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


@pytest.fixture
def services(env, redis):
    return build_services(load_settings(env, dotenv_path=None), redis)


@pytest.mark.parametrize(("text", "clean"), [
    ("caf\ud800e", "caf\ufffde"),
    ("\udfff", "\ufffd"),
    ("pair \ud83d\ude00 joined", "pair \U0001F600 joined"),  # a pair kept as two code points is one character
    ("plain", "plain"),
])
def test_valid_unicode_replaces_lone_surrogates_only(text, clean):
    assert sms_text.valid_unicode(text) == clean
    assert sms_text.is_valid_unicode(clean)


def test_an_agent_answer_with_a_lone_surrogate_reaches_the_person(services, text_in, uponai, twilio):
    uponai.responder = lambda chat, text: ["Our caf\ud800e opens at 9."]
    text_in("when do you open?", from_=PERSON)

    assert flow.drain_conversation(services, CID, "job") == 1
    assert twilio.sent_to(PERSON) == ["Our caf\ufffde opens at 9."]  # once, with the replacement character


def test_the_sender_calls_it_a_local_fault_and_sends_nothing(services, twilio):
    sender = TwilioSender.from_settings(services.settings)
    with pytest.raises(UnsendableTextError) as caught:
        sender.send(to=PERSON, body="hi \ud800 there", from_=GATEWAY_NUMBER)
    assert not isinstance(caught.value, TwilioTransientError) and "Unicode" in str(caught.value)
    assert twilio.requests == []


@pytest.mark.parametrize("operation", ["start_outbound", "operator_message"])
def test_an_admin_job_with_a_lone_surrogate_ends_no_chat_and_sends_nothing(services, text_in, uponai, twilio,
                                                                           operation):
    text_in("hi", from_=PERSON)
    flow.drain_conversation(services, CID, "job")  # a live chat with the agent
    chat_id = services.store.conversation(CID)["chat_id"]
    sent_before = list(twilio.sent_to(PERSON))
    request = {"to": PERSON, "gateway": GATEWAY_NUMBER, "messaging_service_sid": None, "message": "hi \ud800 there"}

    with pytest.raises(admin_ops.AdminError) as refused:
        getattr(admin_ops, operation)(services, uuid.uuid4().hex, request)

    assert (refused.value.status, refused.value.code) == (400, "invalid_request")
    assert "Unicode" in refused.value.message
    assert services.store.conversation(CID)["chat_id"] == chat_id  # the chat goes on
    assert [op for op, _ in uponai.requests].count("end_chat") == 0
    assert twilio.sent_to(PERSON) == sent_before
