"""Erasure leaves nothing and comes first (issue 22, items 3 to 5).

- Events waiting to be posted (queued, or scheduled for a retry while the receiver fails) are jobs that quote the
  number and the words: an erase deletes them, with every other job that names the person. An event created before
  the erase is never posted afterwards, even if its job escaped (it is dropped when its delivery comes round).
- An erase takes precedence over a person who keeps texting: it waits for the turn already running, no new turn
  starts, and the texts that were waiting are dropped unanswered.
- A conversation on another channel (``whatsapp:+1...``) can be viewed, handed off, messaged and erased; a bare
  number erases the person on every channel.

Each test reads every Redis key and value for the number in each form and for the words
(``tests.test_retention.personal_data``: strings, hashes, lists, sets, streams, RQ's compressed job data).
"""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from core.events import build_event, erased_before, event_job_id
from core.model import conversation_id
from core.queues import CAMPAIGN_QUEUE_NAME, EVENTS_QUEUE_NAME
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, wait_for, wait_idle
from tests.test_events import EventsReceiver, events_env
from tests.test_retention import WORDS, personal_data

TOKEN = "erasure-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550123"  # test_retention's person: its needles look for this number and WORDS
CID = conversation_id(GATEWAY_NUMBER, PERSON)


@pytest.fixture
def receiver():
    server = EventsReceiver().start()
    yield server
    server.stop()


def text(client, body: str, person: str = PERSON, to: str = GATEWAY_NUMBER) -> str:
    form = inbound_form(body, from_=person, to=to)
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    return form["MessageSid"]


def event_jobs(redis) -> list:
    return [job for queue in Queue.all(connection=redis) for job in
            [*queue.get_jobs(), *[queue.fetch_job(i) for i in queue.scheduled_job_registry.get_job_ids()]]
            if job is not None and job.func_name.endswith("deliver_event")]


def test_erase_deletes_waiting_events_and_none_is_posted_after(start_workers, receiver, redis, redis_server,
                                                               uponai_server, twilio_server, uponai, twilio):
    env = {**events_env(redis_server, uponai_server, twilio_server, receiver, HANDOFF_KEYWORD="HUMAN",
                        EVENTS_INCLUDE_BODIES="true", ADMIN_API_TOKEN=TOKEN, ADMIN_WAIT_SECONDS="15"),
           "EVENTS_RETRY_INTERVALS_SECONDS": "60,60"}
    overrides = {k: v for k, v in env.items() if k.startswith(("EVENTS_", "HANDOFF_", "ADMIN_"))}
    receiver.inject("event", *[Fault(status=500)] * 50)  # the receiver is down: events wait for their retries
    start_workers(1, **overrides)
    client = create_app(env).test_client()
    text(client, "human")
    wait_for(lambda: twilio.sent_to(PERSON), message="the handoff confirmation")
    text(client, WORDS)
    wait_for(lambda: len(event_jobs(redis)) >= 2 and len(receiver.calls("event")) >= 2,
             message="two events waiting for a retry")
    assert personal_data(redis)  # the words are in the events' jobs

    response = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["jobs_deleted"] >= 2
    assert event_jobs(redis) == []
    assert personal_data(redis) == []


def test_an_event_created_before_the_erase_is_never_posted(start_workers, receiver, redis, redis_server,
                                                           uponai_server, twilio_server, uponai, twilio):
    """An event's job that escaped the erase (queued a moment after it looked) is dropped at delivery."""
    from config import load_settings

    env = events_env(redis_server, uponai_server, twilio_server, receiver, ADMIN_API_TOKEN=TOKEN)
    settings = load_settings(env, dotenv_path=None)
    client = create_app(env).test_client()
    start_workers(1, **{k: v for k, v in env.items() if k.startswith(("EVENTS_", "ADMIN_"))})
    text(client, WORDS)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    late = build_event(settings, "handoff.requested", event_id="handoff.requested:SMlate", conversation_id=CID,
                       number=PERSON)
    time.sleep(0.01)  # (the event's creation time, in milliseconds, is before the erase's)
    assert client.delete(f"/admin/conversations/{PERSON}", headers=AUTH).status_code == 200
    assert erased_before(redis, late)
    job = Queue(EVENTS_QUEUE_NAME, connection=redis).enqueue_call(
        "workers.events.deliver_event", args=(late, "handoff.requested:SMlate"),
        job_id=event_job_id("handoff.requested:SMlate"), meta={"conversation_id": CID})

    wait_for(lambda: job.get_status(refresh=True) == "finished", message="the late event's job to end")
    assert receiver.calls("event") == []


def test_erase_comes_before_a_person_who_keeps_texting(start_workers, redis, env, uponai, twilio):
    start_workers(2)
    client = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "40"}).test_client()
    writing = threading.Event()
    uponai.inject("complete", Fault(hold=writing))
    text(client, "first")
    wait_for(lambda: uponai.calls("complete"), message="the first turn to be running")
    waiting = [text(client, f"more {n}") for n in range(3)]  # they wait behind the running turn
    answer = {}
    erase = threading.Thread(target=lambda: answer.update(
        response=client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)))
    erase.start()
    wait_for(lambda: redis.exists(f"smsgw:erasing:{CID}"), message="the erase to wait for the conversation")
    keep_texting = [text(client, f"still here {n}") for n in range(2)]  # and the person goes on
    writing.set()
    erase.join(timeout=60)

    assert answer["response"].status_code == 200, answer["response"].get_json()
    wait_idle(redis)
    assert [t for _, t in uponai.completion_log] == ["first"]  # no turn started after the erase was asked
    assert twilio.sent_to(PERSON) == ["You said: first"]  # the running turn ended; the rest were dropped
    assert waiting and keep_texting and personal_data(redis) == []

    text(client, "hello again")  # after the erase: a new conversation, answered
    wait_for(lambda: twilio.sent_to(PERSON)[-1:] == ["You said: hello again"], message="the new conversation")


def test_a_whatsapp_conversation_is_reachable_and_a_bare_number_erases_every_channel(start_workers, redis, env,
                                                                                      uponai, twilio):
    start_workers(1)
    client = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"}).test_client()
    whatsapp = f"whatsapp:{PERSON}"
    text(client, WORDS, person=whatsapp, to=f"whatsapp:{GATEWAY_NUMBER}")
    text(client, "and by SMS", person=PERSON)
    wait_for(lambda: twilio.sent_to(whatsapp) and twilio.sent_to(PERSON), message="both answers")

    shown = client.get(f"/admin/conversations/{whatsapp}", headers=AUTH)
    assert shown.status_code == 200, shown.get_json()
    view = shown.get_json()
    assert view["person"] == whatsapp and view["gateway"] == f"whatsapp:{GATEWAY_NUMBER}"
    assert view["conversation_id"] == conversation_id(f"whatsapp:{GATEWAY_NUMBER}", whatsapp)
    assert client.post(f"/admin/conversations/{whatsapp}/handoff", headers=AUTH).get_json()["changed"] is True
    said = client.post(f"/admin/conversations/{whatsapp}/messages", json={"message": "An operator here"},
                       headers=AUTH)
    assert said.status_code == 202, said.get_json()
    assert twilio.sent_to(whatsapp)[-1] == "An operator here"
    assert client.get(f"/admin/conversations/{PERSON}", headers=AUTH).get_json()["handoff"]["active"] is False

    erased = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert erased.status_code == 200, erased.get_json()
    assert set(erased.get_json()["conversation_ids"]) == {CID, view["conversation_id"]}
    assert personal_data(redis) == []
    assert client.get(f"/admin/conversations/{whatsapp}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("number", ["whatsapp:", "whatsapp:abc", "whatsapp:+1415", "Whatsapp:+14155550123"])
def test_a_bad_channel_address_is_400(env, redis, number):
    client = create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client()
    response = client.get(f"/admin/conversations/{number}", headers=AUTH)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_a_campaign_waiting_for_the_conversation_sends_nothing_once_the_person_is_erased(start_workers, redis, env,
                                                                                        uponai, twilio):
    """A campaign's send that waits for the person's conversation (a turn holds it) while an erase is asked: the
    erase goes first, and the campaign, finding the person gone from its list, sends nothing."""
    start_workers(2, CAMPAIGN_SEND_RATE="50")
    client = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "40"}).test_client()
    writing = threading.Event()
    uponai.inject("complete", Fault(hold=writing))
    text(client, "first")
    wait_for(lambda: uponai.calls("complete"), message="the turn to be running")
    started = client.post("/admin/campaigns", headers=AUTH, json={
        "numbers": [PERSON], "message": "Spring offer", "include_in_conversation": True})
    assert started.status_code == 202 and started.get_json()["accepted"] == 1, started.get_json()
    batches = StartedJobRegistry(CAMPAIGN_QUEUE_NAME, connection=redis)
    wait_for(lambda: batches.get_job_count(), message="the campaign's batch to wait for the conversation")
    answer = {}
    erase = threading.Thread(target=lambda: answer.update(
        response=client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)))
    erase.start()
    wait_for(lambda: redis.exists(f"smsgw:erasing:{CID}"), message="the erase to wait for the conversation")
    writing.set()
    erase.join(timeout=60)

    assert answer["response"].status_code == 200, answer["response"].get_json()
    wait_idle(redis)
    assert "Spring offer" not in twilio.sent_to(PERSON)
    assert personal_data(redis) == []
