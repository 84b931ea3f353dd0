"""Operator events reach a local receiver: signed in the Standard Webhooks format (checked here with that
specification's own ``standardwebhooks`` library, as a receiver would), once each, retried after a 5xx, never after
another 4xx, with no message body unless allowed; a receiver that never answers, drips its answer or sends a huge
one costs no reply and no memory (issue 22, item 8)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from rq.registry import FailedJobRegistry
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from config import load_settings
from core.events import emit_event, event_marker_key
from core.model import conversation_id
from core.queues import EVENTS_QUEUE_NAME
from gateway import create_app
from sandbox.httpfake import FakeServer, Fault, Reply
from sandbox.raw_receiver import RawReceiver
from tests.conftest import GATEWAY_NUMBER, new_sid, new_store, post_signed, settings_env, wait_for, wait_idle
from workers.events import sign, signed_headers

PERSON = "+14155550166"
OTHER_PERSON = "+14155550177"
CID = conversation_id(GATEWAY_NUMBER, PERSON)
SECRET = "whsec_" + "c2VjcmV0LW9mLXRoZS1yZWNlaXZlci10ZXN0cy0wMDE="  # 32 bytes: "secret-of-the-receiver-tests-001"
OTHER_SECRET = "whsec_" + "YW5vdGhlci1zZWNyZXQtb2YtdGhlLXRlc3RzLTAwMDI="

# The Standard Webhooks specification's published test vector, from its reference repository
# (github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py, test_sign_function;
# the same values are in the other libraries' tests).
VECTOR = {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
          "timestamp": 1614265330, "payload": '{"test": 2432232314}',
          "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}


class EventsReceiver(FakeServer):
    """The operator's own receiver: takes every POST to /events with a 204."""

    def route(self, request):
        if request.method == "POST" and request.path == "/events":
            return "event", lambda: Reply(204)
        return "other", None


@pytest.fixture
def receiver():
    server = EventsReceiver().start()
    yield server
    server.stop()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check: the standardwebhooks library, as docs/events.md tells a receiver to use it."""
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def test_the_gateway_signs_the_specifications_test_vector():
    payload = VECTOR["payload"].encode()
    assert sign(VECTOR["secret"], VECTOR["msg_id"], VECTOR["timestamp"], payload) == VECTOR["signature"]
    headers = signed_headers(VECTOR["secret"], VECTOR["msg_id"], payload, timestamp=VECTOR["timestamp"])
    assert headers["webhook-signature"] == VECTOR["signature"]
    # The library agrees, at the vector's own time.
    signed_at = datetime.fromtimestamp(VECTOR["timestamp"], tz=UTC)
    assert Webhook(VECTOR["secret"]).sign(VECTOR["msg_id"], signed_at, VECTOR["payload"]) == VECTOR["signature"]


def events_env(redis_server, uponai_server, twilio_server, receiver, **overrides):
    return settings_env(redis_server, uponai_server, twilio_server, EVENTS_WEBHOOK_URL=f"{receiver.url}/events",
                        EVENTS_WEBHOOK_SECRET=SECRET, EVENTS_RETRY_INTERVALS_SECONDS="1,1", **overrides)


@pytest.fixture
def events_settings(redis_server, uponai_server, twilio_server, receiver):
    return load_settings(events_env(redis_server, uponai_server, twilio_server, receiver), dotenv_path=None)


def emit_received(redis, settings, sid: str, text: str = "my booking ref is K7") -> None:
    emit_event(redis, settings, "handoff.message_received", event_id=f"handoff.message_received:{sid}",
               conversation_id=CID, number=PERSON, text=text, message_sid=sid)


def test_an_event_reaches_the_receiver_signed_and_once(start_workers, receiver, redis, events_settings):
    start_workers(1, **events_env_overrides(events_settings))
    sid = new_sid()
    for _ in range(3):  # a retried turn emits it again
        emit_received(redis, events_settings, sid)
    wait_for(lambda: receiver.calls("event"), message="the event at the receiver")
    wait_idle(redis)

    [request] = receiver.calls("event")
    assert Webhook(SECRET).verify(request.body, request.headers) == request.json()
    event = request.json()
    # The event id is signed: it is the webhook-id.
    assert event["type"] == "handoff.message_received" and request.headers["webhook-id"] == event["id"]
    assert not any(name.startswith("x-gateway") for name in request.headers)  # the old scheme is gone
    assert request.headers["content-type"] == "application/json"
    assert event["conversation"] == {"id": CID, "number": PERSON}
    assert event["data"] == {"message_sid": sid}  # EVENTS_INCLUDE_BODIES is off: no words
    assert b"K7" not in request.body
    assert redis.get(event_marker_key(f"handoff.message_received:{sid}")) == b"sent"

    # A signature is bound to its body, its id, its time and its secret.
    assert not verify(SECRET, request.headers, request.body.replace(PERSON.encode(), b"+14155550000"))
    assert not verify(SECRET, {**request.headers, "webhook-id": "evt_another"}, request.body)
    assert not verify(OTHER_SECRET, request.headers, request.body)
    stale = {**request.headers, "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 3600)}
    assert not verify(SECRET, stale, request.body)


def events_env_overrides(settings) -> dict[str, str]:
    return {"EVENTS_WEBHOOK_URL": settings.events_webhook_url, "EVENTS_WEBHOOK_SECRET": SECRET,
            "EVENTS_RETRY_INTERVALS_SECONDS": "1,1"}


def test_an_event_is_retried_after_a_5xx_and_a_dropped_connection(start_workers, receiver, redis, events_settings):
    receiver.inject("event", Fault(status=500), Fault(drop=True))
    start_workers(1, **events_env_overrides(events_settings))
    sid = new_sid()
    emit_received(redis, events_settings, sid)

    wait_for(lambda: len(receiver.calls("event")) == 3, timeout=30, message="two retries")
    wait_idle(redis)
    calls = receiver.calls("event")
    assert len(calls) == 3 and len({c.headers["webhook-id"] for c in calls}) == 1
    assert all(verify(SECRET, c.headers, c.body) for c in calls)
    assert redis.get(event_marker_key(f"handoff.message_received:{sid}")) == b"sent"


def test_a_refusing_receiver_is_not_asked_again(start_workers, receiver, redis, events_settings):
    receiver.inject("event", Fault(status=400))
    start_workers(1, **events_env_overrides(events_settings))
    sid = new_sid()
    emit_received(redis, events_settings, sid)

    wait_for(lambda: receiver.calls("event"), message="the event at the receiver")
    wait_idle(redis)
    assert len(receiver.calls("event")) == 1
    assert redis.get(event_marker_key(f"handoff.message_received:{sid}")) == b"queued"  # not taken, not retried


def test_the_body_goes_out_only_when_allowed(start_workers, receiver, redis, redis_server, uponai_server,
                                             twilio_server):
    env = events_env(redis_server, uponai_server, twilio_server, receiver, EVENTS_INCLUDE_BODIES="true")
    settings = load_settings(env, dotenv_path=None)
    start_workers(1, **events_env_overrides(settings), EVENTS_INCLUDE_BODIES="true")
    emit_received(redis, settings, new_sid(), text="Friday at 10 please")

    [request] = wait_for(lambda: receiver.calls("event"), message="the event at the receiver")
    assert request.json()["data"]["text"] == "Friday at 10 please" and verify(SECRET, request.headers, request.body)


def test_a_failed_delivery_reported_by_twilio_is_an_event_once(start_workers, receiver, redis, redis_server,
                                                                uponai_server, twilio_server):
    env = events_env(redis_server, uponai_server, twilio_server, receiver)
    start_workers(1, **events_env_overrides(load_settings(env, dotenv_path=None)))
    client = create_app(env).test_client()
    store = new_store(redis)
    store.touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    sid = new_sid()
    store.record_sent(CID, sid, status="queued")
    form = {"MessageSid": sid, "AccountSid": "AC" + "1" * 32, "To": PERSON, "From": GATEWAY_NUMBER,
            "ApiVersion": "2010-04-01"}

    for status in ("sent", "undelivered", "undelivered"):  # Twilio may call back twice
        extra = {"ErrorCode": "30003"} if status == "undelivered" else {}
        assert post_signed(client, "/twilio/status", {**form, "MessageStatus": status, **extra}).status_code == 200
    wait_for(lambda: receiver.calls("event"), message="the event at the receiver")
    wait_idle(redis)

    [request] = receiver.calls("event")
    event = request.json()
    assert event["type"] == "delivery.failed" and verify(SECRET, request.headers, request.body)
    assert event["conversation"] == {"id": CID, "number": PERSON}
    assert event["data"] == {"message_sid": sid, "status": "undelivered", "error_code": "30003"}


def test_without_a_webhook_a_failed_delivery_queues_nothing(client, redis):
    store = new_store(redis)
    sid = new_sid()
    store.record_sent(CID, sid, status="queued")
    form = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "30008", "AccountSid": "AC" + "1" * 32,
            "To": PERSON, "From": GATEWAY_NUMBER, "ApiVersion": "2010-04-01"}
    assert post_signed(client, "/twilio/status", form).status_code == 200
    assert not redis.keys("smsgw:event:*") and json.loads(json.dumps(store.recent_sent(CID)))[0]["status"] == "failed"


def test_a_send_twilio_refuses_is_an_event(start_workers, receiver, redis, events_settings, text_in, twilio, uponai):
    start_workers(1, **events_env_overrides(events_settings))
    twilio.inject("send", Fault(status=400, body={"code": 21211, "message": "The 'To' number is not valid.",
                                                  "status": 400}))
    form = text_in("hello", from_=PERSON)

    [request] = wait_for(lambda: receiver.calls("event"), message="the event at the receiver")
    wait_idle(redis)
    assert len(receiver.calls("event")) == 1 and twilio.sent_to(PERSON) == []
    event = request.json()
    assert event["type"] == "delivery.failed" and event["conversation"] == {"id": CID, "number": PERSON}
    assert event["data"] == {"status": "refused", "error_code": "21211"}
    assert list(new_store(redis).progress(form["MessageSid"]).parts.values()) == ["failed:21211"]


def test_an_operators_handoff_and_resume_are_events_once_each(start_workers, receiver, redis, redis_server,
                                                              uponai_server, twilio_server):
    env = {**events_env(redis_server, uponai_server, twilio_server, receiver), "ADMIN_API_TOKEN": "t" * 16}
    start_workers(1, **events_env_overrides(load_settings(env, dotenv_path=None)))
    admin = create_app(env).test_client()
    new_store(redis).touch(CID, gateway=GATEWAY_NUMBER, person=PERSON)
    auth = {"Authorization": "Bearer " + "t" * 16}

    for action in ("handoff", "handoff", "resume", "resume"):  # the repeats change nothing
        assert admin.post(f"/admin/conversations/{PERSON}/{action}", headers=auth).status_code == 200
    wait_for(lambda: len(receiver.calls("event")) == 2, message="two events")
    wait_idle(redis)

    events = [call.json() for call in receiver.calls("event")]
    assert sorted(event["type"] for event in events) == ["handoff.ended", "handoff.started"]
    assert all(event["conversation"]["number"] == PERSON and event["data"] == {"by": "admin-api"} for event in events)


def test_an_event_queued_twice_from_transactions_is_posted_once(start_workers, receiver, redis, events_settings):
    start_workers(2, **events_env_overrides(events_settings))  # two workers: the two runs could overlap
    receiver.latency_seconds = 0.3
    sid = new_sid()
    for _ in range(2):  # a transaction cannot read the marker first: the job is queued each time
        with redis.pipeline() as pipe:
            pipe.multi()
            emit_event(pipe, events_settings, "conversation.opted_out", event_id=f"opted_out:{sid}",
                       conversation_id=CID, number=PERSON)
            pipe.execute()

    wait_for(lambda: receiver.calls("event"), message="the event at the receiver")
    wait_idle(redis)
    assert len(receiver.calls("event")) == 1
    assert redis.get(event_marker_key(f"opted_out:{sid}")) == b"sent"


def test_a_21610_status_callback_opts_the_person_out_and_tells_the_receiver_once(
        start_workers, receiver, redis, events_settings, redis_server, uponai_server, twilio_server, text_in, twilio):
    """Twilio's error 21610 ("Attempt to send to unsubscribed recipient") on a status callback: the person replied
    STOP where the gateway never saw it (another number of the service, say). Issue 21, item 5."""
    start_workers(1, **events_env_overrides(events_settings))
    client = create_app(events_env(redis_server, uponai_server, twilio_server, receiver)).test_client()
    form = {"MessageSid": new_sid(), "AccountSid": twilio.account_sid, "From": PERSON, "To": GATEWAY_NUMBER,
            "Body": "hello", "NumMedia": "0"}
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    sid = twilio.messages[0].sid
    wait_for(lambda: redis.exists(f"smsgw:sent:{sid}"), message="the reply's record")
    callback = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "21610", "To": PERSON,
                "From": GATEWAY_NUMBER, "AccountSid": twilio.account_sid}
    for _ in range(2):  # Twilio may call back again
        assert post_signed(client, "/twilio/status", callback).status_code == 200

    assert redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1"
    wait_for(lambda: [r for r in receiver.calls("event") if r.json()["type"] == "conversation.opted_out"],
             message="the opt-out event")
    wait_idle(redis)
    opted_out = [r.json() for r in receiver.calls("event") if r.json()["type"] == "conversation.opted_out"]
    assert len(opted_out) == 1 and opted_out[0]["conversation"] == {"id": CID, "number": PERSON}


# -- receivers that cost a worker's time or memory (issue 22, item 8) ----------------------------------------


@pytest.fixture
def raw_receiver():
    receivers: list[RawReceiver] = []

    def start(behaviour: str) -> RawReceiver:
        receivers.append(RawReceiver(behaviour))
        return receivers[-1]

    yield start
    for receiver in receivers:
        receiver.stop()


def raw_env(receiver: RawReceiver, **overrides) -> dict[str, str]:
    return {"EVENTS_WEBHOOK_URL": receiver.url, "EVENTS_WEBHOOK_SECRET": SECRET, **overrides}


def test_a_receiver_that_never_answers_costs_no_reply(start_workers, raw_receiver, redis, text_in, twilio,
                                                      redis_server, uponai_server, twilio_server):
    """Six events to a receiver that never answers, four job threads: a person's text is answered meanwhile."""
    receiver = raw_receiver("hang")
    overrides = raw_env(receiver, WORKER_THREADS="4", EVENTS_TIMEOUT_SECONDS="20", EVENTS_RETRY_INTERVALS_SECONDS="1")
    settings = load_settings(settings_env(redis_server, uponai_server, twilio_server, **overrides), dotenv_path=None)
    start_workers(1, **overrides)
    for _ in range(6):
        emit_received(redis, settings, new_sid())
    wait_for(lambda: len(receiver.connections) >= 2, message="deliveries waiting on the receiver")

    text_in("hello", from_=OTHER_PERSON)
    # Answered in well under the time a delivery may wait on the receiver (the reply takes milliseconds).
    wait_for(lambda: twilio.sent_to(OTHER_PERSON), timeout=settings.events_timeout_seconds / 2,
             message="the reply while the receiver hangs")
    assert not receiver.closed()  # the deliveries were still waiting all along
    assert len(receiver.connections) == settings.events_worker_threads  # no more at once; the others wait
    receiver.stop()


def test_a_worker_process_posts_events_on_threads_of_their_own(start_worker_processes, raw_receiver, redis, text_in,
                                                               twilio, redis_server, uponai_server, twilio_server):
    """The same through ``sms-gateway worker``: its events worker (on the events queue, beside the main one) holds
    at most EVENTS_WORKER_THREADS deliveries to a receiver that never answers; the person is answered meanwhile."""
    from rq import Worker

    receiver = raw_receiver("hang")
    start_worker_processes(1, **raw_env(receiver, WORKER_THREADS="4", EVENTS_WORKER_THREADS="1",
                                        EVENTS_TIMEOUT_SECONDS="30", EVENTS_RETRY_INTERVALS_SECONDS="1"))
    settings = load_settings(settings_env(redis_server, uponai_server, twilio_server, **raw_env(receiver)),
                             dotenv_path=None)
    for _ in range(6):
        emit_received(redis, settings, new_sid())
    wait_for(lambda: receiver.connections, message="a delivery waiting on the receiver")

    text_in("hello", from_=OTHER_PERSON)
    wait_for(lambda: twilio.sent_to(OTHER_PERSON), timeout=15, message="the reply while the receiver hangs")
    assert len(receiver.connections) == 1 and not receiver.closed()
    assert sorted(tuple(w.queue_names()) for w in Worker.all(connection=redis)) == [
        ("sms-admin", "sms", "sms-campaigns"), (EVENTS_QUEUE_NAME,)]  # as rq info shows them
    receiver.stop()


@pytest.mark.parametrize("behaviour", ["hang", "drip"])
def test_a_delivery_ends_at_its_deadline_and_is_retried(start_workers, raw_receiver, redis, behaviour,
                                                        redis_server, uponai_server, twilio_server):
    """EVENTS_TIMEOUT_SECONDS bounds the whole request: a receiver that drips its answer a byte at a time (each
    read answered well within the timeout) is given up at the deadline, as one that never answers is."""
    receiver = raw_receiver(behaviour)
    overrides = raw_env(receiver, EVENTS_TIMEOUT_SECONDS="1", EVENTS_RETRY_INTERVALS_SECONDS="1,1")
    settings = load_settings(settings_env(redis_server, uponai_server, twilio_server, **overrides), dotenv_path=None)
    start_workers(1, **overrides)
    sid = new_sid()
    emit_received(redis, settings, sid)

    slack = 2 * settings.events_timeout_seconds + 2  # the deadline counts from before the connection opens
    attempts = 1 + len(settings.events_retry_intervals_seconds)
    waits = sum(settings.events_retry_intervals_seconds)
    wait_for(lambda: len(receiver.closed()) == attempts,
             timeout=attempts * (settings.events_timeout_seconds + slack) + waits + 10,
             message="every attempt given up by the gateway")
    wait_idle(redis)
    assert len(receiver.connections) == attempts  # retried per EVENTS_RETRY_INTERVALS_SECONDS, then no more
    assert all(c.closed_at - c.opened_at <= settings.events_timeout_seconds + slack for c in receiver.connections)
    assert redis.get(event_marker_key(f"handoff.message_received:{sid}")) == b"queued"  # never taken
    assert FailedJobRegistry(EVENTS_QUEUE_NAME, connection=redis).count == 1  # every retry spent


def test_a_huge_answer_is_not_read(start_workers, raw_receiver, redis, redis_server, uponai_server, twilio_server):
    """A 200 whose body is hundreds of megabytes: the gateway takes the status and closes the connection, having
    read (and held) next to nothing of the body."""
    receiver = raw_receiver("huge")
    overrides = raw_env(receiver, EVENTS_TIMEOUT_SECONDS="10")
    settings = load_settings(settings_env(redis_server, uponai_server, twilio_server, **overrides), dotenv_path=None)
    start_workers(1, **overrides)
    sid = new_sid()
    emit_received(redis, settings, sid)

    [connection] = wait_for(receiver.closed, timeout=30, message="the gateway closing the connection")
    wait_idle(redis)
    # What the server got out before the close: the body's first bytes plus what the sockets' buffers hold.
    assert connection.sent_bytes < RawReceiver.HUGE_BODY_BYTES / 8
    assert redis.get(event_marker_key(f"handoff.message_received:{sid}")) == b"sent"  # a 200: taken
