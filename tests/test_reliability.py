"""Faults, crashes and restarts: every accepted message answered exactly once, in order."""

from __future__ import annotations

import signal
import threading

from rq import Queue
from rq.job import Job

from core.model import conversation_id
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, turn_lines, wait_for, wait_idle

PERSON = "+14155550142"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def agent_texts(uponai) -> list[str]:
    return [text for _, text in uponai.completion_log]


def test_twilio_read_timeout_after_sending_does_not_double_the_reply(workers, redis, text_in, uponai, twilio):
    twilio.inject("send", Fault(delay_seconds=3))  # applied, but after the client's 2 s timeout
    text_in("slow twilio", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    wait_for(lambda: len(twilio.calls("list_messages")) >= 1, message="the sender to look the part up")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: slow twilio"]


def test_twilio_connection_dropped_after_applying_does_not_double(workers, redis, text_in, uponai, twilio):
    twilio.inject("send", Fault(drop_after_apply=True))
    text_in("dropped", from_=PERSON)
    wait_for(lambda: twilio.calls("list_messages"), message="the lookup after the dropped send")
    text_in("next", from_=PERSON)
    wait_for(lambda: "You said: next" in twilio.sent_to(PERSON), message="the next reply")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: dropped", "You said: next"]


def test_twilio_connection_dropped_before_applying_is_sent_once(workers, redis, text_in, uponai, twilio):
    twilio.inject("send", Fault(drop=True))
    text_in("lost on the way", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply after the lookup found nothing")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: lost on the way"]


def test_uponai_read_timeout_reads_the_turn_back_instead_of_posting_again(workers, redis, text_in, uponai,
                                                                         twilio):
    uponai.inject("complete", Fault(delay_seconds=2.5))  # applied after the client's 2 s read timeout
    text_in("slow agent", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    wait_idle(redis)
    assert agent_texts(uponai) == ["slow agent"]
    assert twilio.sent_to(PERSON) == ["You said: slow agent"]


def test_opted_out_recipient_is_recorded_and_not_retried(workers, redis, text_in, uponai, twilio):
    twilio.opted_out.add(PERSON)
    text_in("hi", from_=PERSON)
    wait_for(lambda: redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1", message="21610 to mark the opt-out")
    wait_idle(redis)
    assert len(twilio.calls("send")) == 1
    assert twilio.sent_to(PERSON) == []


def test_final_failure_apologises_once_keeps_the_job_and_a_requeue_answers_once(start_workers, redis, text_in,
                                                                                 uponai, twilio):
    start_workers(2, RETRY_INTERVALS_SECONDS="0.2,0.2")
    uponai.inject("complete", *[Fault(status=503)] * 3)
    text_in("doomed", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the apology")
    assert len(twilio.sent_to(PERSON)) == 1 and "sorry" in twilio.sent_to(PERSON)[0].lower()

    failed = Queue("sms", connection=redis).failed_job_registry
    wait_for(lambda: failed.count == 1, message="the failed job")
    job = Job.fetch(failed.get_job_ids()[0], connection=redis)
    assert job.meta["conversation_id"] == CID
    assert "gave up after 3 attempts" in job.latest_result().exc_string

    failed.requeue(job.id)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the answer after the requeue")
    assert twilio.sent_to(PERSON)[1] == "You said: doomed"
    text_in("after", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 3, message="the next reply")
    wait_idle(redis)
    assert len(twilio.sent_to(PERSON)) == 3 and twilio.sent_to(PERSON)[2] == "You said: after"
    assert agent_texts(uponai) == ["doomed", "after"]


def test_status_callbacks_move_forward_only_and_21610_opts_out(workers, redis, client, text_in, twilio):
    text_in("status please", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    sid = twilio.messages[0].sid
    wait_for(lambda: redis.exists(f"smsgw:sent:{sid}"), message="the worker to record the sent message")

    def callback(status, error=""):
        form = {"MessageSid": sid, "MessageStatus": status, "To": PERSON, "From": GATEWAY_NUMBER,
                "AccountSid": twilio.account_sid, "ErrorCode": error}
        return post_signed(client, "/twilio/status", form)

    assert callback("sent").status_code == 200
    # Every status Twilio documents has its place: partially_delivered (a multi-part message, some parts
    # delivered) is final, as delivered is; a late "sent" or "sending" moves neither back.
    assert callback("partially_delivered").status_code == 200
    assert callback("sending").status_code == 200
    assert redis.hget(f"smsgw:sent:{sid}", "status") == b"partially_delivered"
    assert callback("delivered").status_code == 200
    assert callback("sent").status_code == 200  # late and out of order: ignored
    assert redis.hget(f"smsgw:sent:{sid}", "status") == b"delivered"
    assert callback("undelivered", "21610").status_code == 200
    assert redis.hget(f"smsgw:sent:{sid}", "error_code") == b"21610"
    assert redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1"


def test_sigkill_mid_turn_is_answered_exactly_once_after_restart(start_worker_processes, redis, text_in, uponai,
                                                                 twilio):
    release = threading.Event()

    def agent(chat, text):
        release.wait(30)
        return [f"re: {text}"]

    uponai.responder = agent
    pool = start_worker_processes(1)
    text_in("survive a crash", from_=PERSON)
    wait_for(lambda: uponai.calls("complete"), message="the turn to start")
    pool.crash(pool.processes[0])
    release.set()  # UponAI finishes the turn nobody is waiting for any more

    pool.spawn()
    wait_for(lambda: twilio.sent_to(PERSON), timeout=90, message="the reply after a worker runs again")
    assert twilio.sent_to(PERSON) == ["re: survive a crash"]
    assert agent_texts(uponai) == ["survive a crash"]


def test_sigterm_lets_the_current_job_finish(start_worker_processes, redis, text_in, uponai, twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    pool = start_worker_processes(1)
    text_in("deploy now", from_=PERSON)
    wait_for(lambda: uponai.calls("complete"), message="the turn to start")
    pool.processes[0].send_signal(signal.SIGTERM)
    release.set()
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply of the job in progress")
    assert pool.processes[0].wait(20) == 0
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["re: deploy now"]


def test_redis_restart_web_answers_503_then_recovers_and_loses_nothing(start_workers, redis_server, redis, client,
                                                                      uponai, twilio):
    restarted = threading.Event()
    # The turn in flight waits out the outage: with the job's Redis gone mid-write, only RQ's retry of an
    # abandoned job (tests/test_admin_failed.py) would answer, and this test is about what waits in Redis.
    uponai.responder = lambda chat, text: (restarted.wait(20), [f"You said: {text}"])[1]
    start_workers(2, UPONAI_READ_TIMEOUT_SECONDS="30")  # the held turn is not given up while Redis is away
    accepted = [inbound_form(f"before {i}", from_=PERSON) for i in range(3)]
    for form in accepted:
        assert post_signed(client, "/twilio/sms", form).status_code == 200
    wait_for(lambda: uponai.calls("complete"), message="the first turn to be in flight")  # not mid-write to Redis
    redis_server.stop()
    try:
        during = inbound_form("during", from_=PERSON)
        response = post_signed(client, "/twilio/sms", during)
        assert response.status_code == 503
        assert "Traceback" not in response.get_data(as_text=True)
    finally:
        redis_server.start()
        restarted.set()
    assert post_signed(client, "/twilio/sms", during).status_code == 200  # Twilio's retry
    assert post_signed(client, "/twilio/sms", inbound_form("after", from_=PERSON)).status_code == 200

    # Texts waiting together are one turn: every text in exactly one answered turn, in order.
    expected = [f"before {i}" for i in range(3)] + ["during", "after"]
    wait_for(lambda: turn_lines(uponai) == expected, timeout=90, message="every accepted message forwarded")
    wait_for(lambda: len(twilio.sent_to(PERSON)) >= len(uponai.completion_log), message="every turn answered")
    wait_idle(redis)
    assert turn_lines(uponai) == expected
    assert twilio.sent_to(PERSON) == [f"You said: {text}" for _, text in uponai.completion_log]
