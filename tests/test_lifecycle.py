"""Conversations over time: idle close, chats ended by UponAI, keywords, reset, routing, notices, rate limits."""

from __future__ import annotations

import pytest
from rq import Queue

from core.model import conversation_id
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, wait_for, wait_idle

PERSON = "+14155550123"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def conv(redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis.hgetall(f"smsgw:conv:{CID}").items()}


def agent_texts(uponai) -> list[str]:
    return [text for _, text in uponai.completion_log]


def test_idle_conversation_is_ended_once_and_the_next_text_starts_a_new_chat(start_workers, redis, text_in,
                                                                               uponai, twilio):
    start_workers(2, CHAT_IDLE_TIMEOUT_SECONDS=2)
    text_in("first", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="first reply")
    first_chat = conv(redis)["chat_id"]

    wait_for(lambda: "chat_id" not in conv(redis), timeout=30, message="the idle chat to be closed")
    wait_for(lambda: redis.zscore("smsgw:idle-due", CID) is None, timeout=30, message="no idle check left due")
    assert Queue("sms", connection=redis).scheduled_job_registry.count == 0
    assert [r.path for r in uponai.calls("end_chat")] == [f"/api/chats/{first_chat}/end"]
    assert uponai.chats[first_chat].status == "ended"

    text_in("second", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="second reply")
    second_chat = conv(redis)["chat_id"]
    assert second_chat != first_chat
    assert uponai.texts_by_chat() == {first_chat: ["first"], second_chat: ["second"]}


def test_message_arriving_while_the_conversation_is_closed_is_answered(start_workers, redis, text_in, uponai,
                                                                       twilio):
    start_workers(2, CHAT_IDLE_TIMEOUT_SECONDS=1)
    text_in("before", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="first reply")
    uponai.inject("end_chat", Fault(delay_seconds=1.5))  # a slow close (read timeout is 2 s)
    wait_for(lambda: uponai.calls("end_chat"), timeout=30, message="the close to start")
    text_in("during the close", from_=PERSON)

    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, timeout=30, message="the reply to the message sent meanwhile")
    assert twilio.sent_to(PERSON)[1] == "You said: during the close"
    assert agent_texts(uponai) == ["before", "during the close"]
    assert len(uponai.calls("end_chat")) == 1


def test_chat_ended_by_uponai_is_replaced_and_the_message_answered_once(workers, redis, text_in, uponai, twilio):
    text_in("hello", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="first reply")
    old_chat = conv(redis)["chat_id"]
    uponai.end(old_chat)  # the agent's auto-close

    text_in("are you there?", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the reply in a new chat")
    wait_idle(redis)
    new_chat = conv(redis)["chat_id"]
    assert new_chat != old_chat
    assert uponai.texts_by_chat() == {old_chat: ["hello"], new_chat: ["are you there?"]}
    assert twilio.sent_to(PERSON) == ["You said: hello", "You said: are you there?"]


# REVOKE and OPTOUT joined Twilio's default opt-out list (Advanced Opt-Out tutorial, 2026; see tests/test_keywords.py).
@pytest.mark.parametrize(("opt_out", "opt_in"), [("  Stop ", "unstop"), ("REVOKE", "Start"), ("optout", "yes")])
def test_stop_opts_out_ends_the_chat_and_start_opts_back_in(opt_out, opt_in, workers, redis, text_in, uponai, twilio):
    text_in("hi", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="first reply")
    chat = conv(redis)["chat_id"]

    text_in(opt_out, from_=PERSON)
    wait_for(lambda: conv(redis).get("opted_out") == "1", message="the opt-out to be recorded")
    wait_for(lambda: uponai.chats[chat].status == "ended", message="the chat to be ended")
    text_in("anyone?", from_=PERSON)  # opted out: not forwarded, not answered
    text_in(opt_in, from_=PERSON)
    wait_for(lambda: "opted_out" not in conv(redis), message="the opt-in to be recorded")
    text_in("back again", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the reply after opting back in")
    wait_idle(redis)

    assert agent_texts(uponai) == ["hi", "back again"]
    assert twilio.sent_to(PERSON) == ["You said: hi", "You said: back again"]


def test_every_stop_start_and_help_word_is_kept_from_the_agent(workers, redis, text_in, uponai, twilio):
    # Each opt-in word comes while the person is opted out (only then is it one: see the test below).
    words = ["STOPALL", "START", "unsubscribe", "yes", "Cancel", "UNSTOP", "END", "quit", "help", "Info", "start"]
    for word in words:
        text_in(word, from_=PERSON)
    text_in("Please stop by tomorrow", from_=PERSON, OptOutType="")  # not a keyword: a sentence
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply to the sentence")
    wait_idle(redis)
    assert agent_texts(uponai) == ["Please stop by tomorrow"]
    assert twilio.sent_to(PERSON) == ["You said: Please stop by tomorrow"]


@pytest.mark.parametrize("answer", ["Yes", "YES", "start", "Unstop"])
def test_an_opt_in_word_from_a_person_who_is_not_opted_out_is_an_answer_for_the_agent(answer, workers, redis,
                                                                                      text_in, uponai, twilio):
    """Twilio's opt-in words (START, YES, UNSTOP) re-subscribe an opted-out number; from anyone else they are
    ordinary texts (issue 21, item 1): the agent asked "Shall I book Friday?" and the person said yes."""
    text_in("Can I book for Friday?", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the first reply")
    text_in(answer, from_=PERSON, OptOutType="START" if answer == "YES" else "")  # as Advanced Opt-Out marks it
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the answer to the yes")
    wait_idle(redis)

    assert agent_texts(uponai) == ["Can I book for Friday?", answer]
    assert twilio.sent_to(PERSON)[1] == f"You said: {answer}"
    assert "opted_out" not in conv(redis)


def test_a_yes_inside_a_burst_is_part_of_the_turn(start_workers, redis, text_in, uponai, twilio):
    start_workers(1, INBOUND_QUIET_SECONDS="1")
    for text in ("sure", "yes", "friday works"):
        text_in(text, from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the one reply to the burst")
    wait_idle(redis)
    assert [turn for _, turn in uponai.completion_log] == ["sure\nyes\nfriday works"]


def test_opt_out_type_from_twilio_counts_as_a_keyword(workers, redis, text_in, uponai, twilio):
    text_in("arrêt", from_=PERSON, OptOutType="STOP")  # a keyword the account configured in another language
    wait_for(lambda: conv(redis).get("opted_out") == "1", message="the opt-out")
    wait_idle(redis)
    assert agent_texts(uponai) == []


def test_reset_word_ends_the_chat_confirms_and_starts_fresh(workers, redis, text_in, uponai, twilio):
    text_in("remember 42", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="first reply")
    old_chat = conv(redis)["chat_id"]
    text_in("reset", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the reset confirmation")
    assert "reset" in twilio.sent_to(PERSON)[1].lower()
    assert uponai.chats[old_chat].status == "ended"
    text_in("new topic", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) >= 3, message="the reply in a fresh chat")
    wait_idle(redis)
    assert twilio.sent_to(PERSON)[::2] == ["You said: remember 42", "You said: new topic"]
    assert len(twilio.sent_to(PERSON)) == 3
    assert conv(redis)["chat_id"] != old_chat
    assert agent_texts(uponai) == ["remember 42", "new topic"]


def test_each_gateway_number_answers_with_its_own_agent(start_workers, redis, text_in, uponai, twilio):
    start_workers(1, UPONAI_AGENT_ROUTES="+15005550007=agent_sales, +15005550008=agent_support")
    text_in("to sales", from_=PERSON, to="+15005550007")
    text_in("to default", from_=PERSON, to=GATEWAY_NUMBER)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="both replies")
    wait_idle(redis)
    agents = {chat.user_texts()[0]: chat.agent_id for chat in uponai.chats.values()}
    assert agents == {"to sales": "agent_sales", "to default": "agent_test"}
    senders = {m.body: m.from_ for m in twilio.messages}
    assert senders == {"You said: to sales": "+15005550007", "You said: to default": GATEWAY_NUMBER}


def test_mms_notice_is_sent_at_most_once_per_period(workers, redis, text_in, uponai, twilio):
    media = {"NumMedia": "1", "MediaUrl0": "https://example.invalid/ME1", "MediaContentType0": "image/jpeg"}
    text_in("", from_=PERSON, **media)
    text_in("look", from_=PERSON, **media)
    wait_for(lambda: "You said: look" in twilio.sent_to(PERSON), message="the reply to the text")
    wait_idle(redis)
    notices = [b for b in twilio.sent_to(PERSON) if not b.startswith("You said")]
    assert len(notices) == 1


def test_rate_limit_keeps_excess_messages_from_the_agent_with_one_notice(start_workers, redis, text_in, uponai,
                                                                        twilio):
    """The limit counts texts, not turns: of five texts waiting together, the first two make one turn."""
    start_workers(1, RATE_LIMIT_MESSAGES=2)
    for i in range(5):
        text_in(f"spam {i}", from_=PERSON)
    text_in("from someone else", from_="+14155550999")
    wait_for(lambda: twilio.sent_to("+14155550999"), message="the other person's reply")
    wait_for(lambda: len(twilio.sent_to(PERSON)) >= 2, message="one reply and one notice")
    wait_idle(redis)
    assert len(twilio.sent_to(PERSON)) == 2
    chats = sorted(uponai.texts_by_chat().values())
    assert chats == [["from someone else"], ["spam 0\nspam 1"]]
    replies = twilio.sent_to(PERSON)
    assert replies[0].startswith("You said: spam 0")
    assert "faster" in replies[1]
