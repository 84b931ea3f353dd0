"""End to end: signed webhook -> Redis -> real RQ workers -> fake UponAI -> fake Twilio."""

from __future__ import annotations

import signal
import threading

from core.model import conversation_id
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, wait_for, wait_idle

PERSON = "+14155550100"
OTHER = "+14155550199"


def test_first_message_creates_chat_and_is_answered(workers, text_in, uponai, twilio, redis):
    text_in("Hi there", from_=PERSON)

    wait_for(lambda: twilio.sent_to(PERSON), message="the reply SMS")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: Hi there"]
    sent = twilio.messages[0]
    assert sent.from_ == GATEWAY_NUMBER
    assert sent.status_callback == "https://sms.example.com/twilio/status"
    assert len(uponai.calls("create_chat")) == 1
    chat_id = redis.hget(f"smsgw:conv:{conversation_id(GATEWAY_NUMBER, PERSON)}", "chat_id").decode()
    assert uponai.texts_by_chat() == {chat_id: ["Hi there"]}


def test_second_message_reuses_the_chat(workers, redis, text_in, uponai, twilio):
    text_in("one", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 1, message="first reply")
    text_in("two", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="second reply")
    wait_idle(redis)

    assert len(uponai.calls("create_chat")) == 1
    assert list(uponai.texts_by_chat().values()) == [["one", "two"]]
    assert twilio.sent_to(PERSON) == ["You said: one", "You said: two"]


def test_guide_style_end_to_end(start_workers, redis, text_in, uponai, twilio):
    start_workers(1, UPONAI_API_STYLE="guide")
    text_in("guide one", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")
    text_in("guide two", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="second reply")
    wait_idle(redis)

    paths = [r.path for op, r in uponai.requests]
    assert paths == ["/create-chat", "/create-chat-completion", "/create-chat-completion"]
    assert twilio.sent_to(PERSON) == ["You said: guide one", "You said: guide two"]


def test_duplicate_message_sid_is_answered_once(workers, redis, client, uponai, twilio):
    form = inbound_form("only once", from_=PERSON)
    for _ in range(3):
        response = post_signed(client, "/twilio/sms", form)
        assert response.status_code == 200
        assert response.content_type.startswith("text/xml")
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")
    # A later, different message is answered after it: nothing else is queued for the duplicate.
    post_signed(client, "/twilio/sms", inbound_form("next", from_=PERSON))
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="second reply")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: only once", "You said: next"]
    assert [text for _, text in uponai.completion_log] == ["only once", "next"]


def test_burst_keeps_order_while_another_number_runs_in_parallel(workers, redis, text_in, uponai, twilio):
    """Texts sent while the person's turn runs make one more turn, in order; another number is not held up."""
    release = threading.Event()
    other_answered = threading.Event()

    def agent(chat, text):
        if text.startswith("burst") and not release.is_set():
            release.wait(20)  # hold the first conversation's turn until the other is answered
        if text == "parallel":
            other_answered.set()
        return [f"re: {text}"]

    uponai.responder = agent
    text_in("burst 1", from_=PERSON)
    wait_for(lambda: uponai.calls("complete"), message="the first turn to be in flight")
    for i in range(2, 6):
        text_in(f"burst {i}", from_=PERSON)
    text_in("parallel", from_=OTHER)

    wait_for(lambda: twilio.sent_to(OTHER), message="the other number's reply while the first is busy")
    assert other_answered.is_set()
    assert twilio.sent_to(PERSON) == []
    release.set()
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="both replies")
    wait_idle(redis)

    person_chat = next(cid for cid, texts in uponai.texts_by_chat().items() if texts and texts[0].startswith("burst"))
    later = "\n".join(f"burst {i}" for i in range(2, 6))
    assert uponai.texts_by_chat()[person_chat] == ["burst 1", later]
    assert twilio.sent_to(PERSON) == ["re: burst 1", f"re: {later}"]


def test_mms_without_text_gets_only_the_notice(workers, redis, text_in, uponai, twilio):
    text_in("", from_=PERSON, NumMedia="1", MediaUrl0="https://api.twilio.com/media/ME1",
            MediaContentType0="image/jpeg")
    wait_for(lambda: twilio.sent_to(PERSON), message="the notice")
    text_in("after", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the next reply")
    wait_idle(redis)

    notice, reply = twilio.sent_to(PERSON)
    assert "text" in notice.lower()
    assert reply == "You said: after"
    assert [text for _, text in uponai.completion_log] == ["after"]
    assert all("media" not in r.path.lower() for _, r in twilio.requests)  # media never fetched


def test_mms_with_text_gets_notice_and_answer(workers, redis, text_in, uponai, twilio):
    text_in("what is this?", from_=PERSON, NumMedia="2", MediaUrl0="https://x/ME1", MediaContentType0="image/png",
            MediaUrl1="https://x/ME2", MediaContentType1="video/mp4")
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="notice and answer")
    wait_idle(redis)
    notice, reply = twilio.sent_to(PERSON)
    assert "text" in notice.lower()
    assert reply == "You said: what is this?"


def test_long_reply_is_split_in_order(workers, text_in, uponai, twilio):
    sentences = [f"Sentence number {i} is here to make the answer long enough." for i in range(80)]
    long_reply = " ".join(sentences)
    uponai.responder = lambda chat, text: [long_reply, "And a second message."]
    text_in("tell me everything", from_=PERSON)

    wait_for(lambda: twilio.sent_to(PERSON) and twilio.sent_to(PERSON)[-1] == "And a second message.",
             message="all parts")
    parts = twilio.sent_to(PERSON)[:-1]
    assert len(parts) >= 3
    assert all(len(p) <= 1600 for p in parts)
    assert all(p.endswith(".") for p in parts)  # cut at sentence ends, never mid-word
    assert " ".join(parts) == long_reply


def test_empty_agent_turn_sends_nothing(workers, text_in, uponai, twilio, redis):
    uponai.responder = lambda chat, text: [] if text == "silent" else [f"re: {text}"]
    text_in("silent", from_=PERSON)
    wait_for(lambda: uponai.completion_log, message="the silent turn")
    wait_idle(redis)
    text_in("loud", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="reply to the second message")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["re: loud"]


def test_permanent_uponai_error_does_not_block_the_conversation(workers, text_in, uponai, twilio, redis):
    uponai.inject("complete", Fault(status=400, body={"status": "error", "message": "content rejected"}))
    text_in("bad one", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the apology")
    text_in("good one", from_=PERSON)

    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="apology and answer")
    apology, answer = twilio.sent_to(PERSON)
    assert "sorry" in apology.lower()
    assert answer == "You said: good one"
    from rq import Queue

    failed = Queue("sms", connection=redis).failed_job_registry
    wait_for(lambda: failed.count >= 1, message="the failed job to be recorded")
    text_in("still works", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 3, message="answer after the failure")
    wait_idle(redis)
    assert twilio.sent_to(PERSON)[2] == "You said: still works"


def test_transient_uponai_errors_are_retried(workers, redis, text_in, uponai, twilio):
    uponai.inject("complete", Fault(status=503), Fault(status=429, retry_after="0"))
    text_in("retry me", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply after retries")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: retry me"]
    assert [text for _, text in uponai.completion_log] == ["retry me"]


def test_completion_applied_then_dropped_is_not_posted_twice(workers, redis, text_in, uponai, twilio):
    uponai.inject("complete", Fault(drop_after_apply=True))
    text_in("exactly once", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    wait_idle(redis)
    assert [text for _, text in uponai.completion_log] == ["exactly once"]
    assert twilio.sent_to(PERSON) == ["You said: exactly once"]
    assert len(uponai.calls("get_chat")) >= 1


def test_twilio_rate_limit_is_retried_without_doubling(workers, redis, text_in, uponai, twilio):
    twilio.inject("send", Fault(status=429), Fault(status=500))
    text_in("send me", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: send me"]
    assert len(uponai.completion_log) == 1


def test_one_worker_process_runs_several_turns_at_once_with_threads(start_worker_processes, text_in, uponai, twilio):
    pool = start_worker_processes(1, WORKER_THREADS=3)
    release = threading.Event()

    def agent(chat, text):
        if text == "slow":
            release.wait(20)  # held until the other conversation has been answered by the same process
        return [f"re: {text}"]

    uponai.responder = agent
    text_in("slow", from_=PERSON)
    wait_for(lambda: uponai.calls("complete"), message="the slow turn to start")
    text_in("quick", from_=OTHER)
    wait_for(lambda: twilio.sent_to(OTHER), message="the other conversation answered meanwhile")
    assert twilio.sent_to(PERSON) == []
    release.set()
    wait_for(lambda: twilio.sent_to(PERSON), message="the slow reply")

    pool.processes[0].send_signal(signal.SIGTERM)  # every thread stops, the process exits cleanly
    assert pool.processes[0].wait(20) == 0
