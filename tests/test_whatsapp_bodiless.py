"""WhatsApp messages without a body are never met with silence (issue 21, item 6).

Twilio's WhatsApp location messages arrive with an empty ``Body`` and the location in ``Latitude``, ``Longitude``,
``Address`` and ``Label`` (Twilio docs, "WhatsApp: Location messages": "Latitude", "Longitude", "Address" and
"Label" parameters of the incoming message webhook). The agent reads it as text; any other message with neither
text nor media gets the text-only notice.
"""

from __future__ import annotations

import pytest

from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, wait_for, wait_idle

PERSON = "whatsapp:+14155550133"
LOCATION = {"Latitude": "37.7879277", "Longitude": "-122.3937508", "Address": "101 Spear Street, San Francisco, CA",
            "Label": "Twilio Inc"}


def test_a_shared_location_reaches_the_agent_as_text(workers, client, redis, uponai, twilio):
    form = inbound_form("", from_=PERSON, to=f"whatsapp:{GATEWAY_NUMBER}", **LOCATION)
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the answer to the location")
    wait_idle(redis)
    expected = "Shared location: Twilio Inc, 101 Spear Street, San Francisco, CA (37.787928, -122.393751)"
    assert [turn for _, turn in uponai.completion_log] == [expected]
    assert twilio.sent_to(PERSON) == [f"You said: {expected}"]


def test_a_message_with_neither_text_nor_media_gets_the_text_only_notice(workers, client, redis, uponai, twilio):
    form = inbound_form("", from_=PERSON, to=f"whatsapp:{GATEWAY_NUMBER}")  # a sticker or reaction, say
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the notice")
    wait_idle(redis)
    assert uponai.completion_log == []
    assert len(twilio.sent_to(PERSON)) == 1 and "as text" in twilio.sent_to(PERSON)[0]


@pytest.mark.parametrize("overrides", [{"Latitude": "north"}, {"Latitude": "91"}, {"Longitude": "nan"},
                                       {"Longitude": ""}])
def test_a_malformed_location_is_400(client, redis, queue, overrides):
    form = inbound_form("", from_=PERSON, to=f"whatsapp:{GATEWAY_NUMBER}", **{**LOCATION, **overrides})
    response = post_signed(client, "/twilio/sms", form)
    assert response.status_code == 400 and "Latitude" in response.get_data(as_text=True)
    assert queue.count == 0
