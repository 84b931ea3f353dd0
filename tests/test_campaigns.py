"""Campaigns through the admin API, against real workers, the fake Twilio and the fake UponAI."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue

from config import Settings
from core.model import conversation_id
from core.queues import CAMPAIGN_QUEUE_NAME
from gateway import create_app
from tests.conftest import GATEWAY_NUMBER, new_store, wait_for, wait_idle

TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def numbers(count: int, start: int = 100) -> list[str]:
    return [f"+1415555{start + index:04d}" for index in range(count)]


@pytest.fixture
def admin_env(env):
    return {**env, "ADMIN_API_TOKEN": TOKEN}


@pytest.fixture
def admin(admin_env, redis):
    return create_app(admin_env).test_client()


def post_campaign(admin, body, **headers):
    return admin.post("/admin/campaigns", json=body, headers={**AUTH, **headers})


def campaign(admin, campaign_id: str) -> dict:
    response = admin.get(f"/admin/campaigns/{campaign_id}", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def texted(twilio) -> Counter:
    """How many SMS each number got at the fake Twilio."""
    return Counter(message.to for message in twilio.messages)


def campaign_keys(redis) -> list[bytes]:
    return list(redis.scan_iter(match="smsgw:campaign*"))


# -- bad input: a 400 naming each problem, nothing queued ----------------------------------------


def test_each_problem_is_named_and_nothing_is_queued(admin, redis):
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = post_campaign(admin, {"numbers": ["not a number", "12"], "message": "  ", "send_at": yesterday})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    fields = {problem["field"] for problem in error["problems"]}
    assert fields == {"numbers", "message", "send_at"}, error
    assert "no valid phone number" in error["message"] and "in the past" in error["message"]
    assert "blank" in error["message"]
    assert Queue(CAMPAIGN_QUEUE_NAME, connection=redis).count == 0
    assert Queue(CAMPAIGN_QUEUE_NAME, connection=redis).scheduled_job_registry.count == 0
    assert campaign_keys(redis) == []


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"numbers": []}, "numbers", "at least 1"),
    ({"numbers": numbers(10_001, start=0)}, "numbers", "at most 10000"),
    ({"numbers": ["+14155550100"], "send_at": "2030-01-31T09:00:00"}, "send_at", "no offset"),
    ({"numbers": ["+14155550100"], "send_at": "next tuesday"}, "send_at", "ISO 8601"),
    ({"numbers": ["+14155550100"], "message": ""}, "message", "blank"),
    ({"numbers": ["+14155550100"], "message": "x" * 1601}, "message", "1600"),
    ({"numbers": ["+14155550100"], "colour": "red"}, "colour", "unknown field"),
    ({"numbers": "+14155550100"}, "numbers", "list"),
    ({"numbers": ["+14155550100"], "include_in_conversation": "yes"}, "include_in_conversation", "boolean"),
    ({"numbers": ["+14155550100"], "variables": {"+14155550199": {"name": "Ann"}}}, "variables.+14155550199",
     "not one of numbers"),
    ({"numbers": ["+14155550100"], "variables": {"+14155550100": {"opening_message": "x"}}}, "variables",
     "opening_message"),
])
def test_bad_requests(admin, redis, body, field, words):
    response = post_campaign(admin, body)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert field in {problem["field"] for problem in error["problems"]}, error
    assert words in error["message"], error
    assert campaign_keys(redis) == []


def test_a_body_that_is_not_json_or_csv_is_415(admin):
    response = admin.post("/admin/campaigns", data="numbers", headers={**AUTH, "Content-Type": "text/plain"})
    assert response.status_code == 415


def test_the_token_is_required(admin):
    assert admin.post("/admin/campaigns", json={"numbers": ["+14155550100"]}).status_code == 401


# -- a campaign: skips with reasons, every accepted number texted once -----------------------------


def test_campaign_texts_each_accepted_number_once_and_skips_with_reasons(admin, redis, workers, twilio, uponai):
    store = new_store(redis)
    opted, talking = "+14155550301", "+14155550302"
    store.set_opted_out(conversation_id(GATEWAY_NUMBER, opted), True)
    store.set_chat(conversation_id(GATEWAY_NUMBER, talking), "chat_live", "agent_test")
    store.touch(conversation_id(GATEWAY_NUMBER, talking), last_activity_at=f"{time.time():.3f}")
    good = numbers(5)
    body = {"numbers": [*good, "bogus", good[0], "+1 (415) 555-0101", opted, talking], "message": "Your visit is due",
            "variables": {good[1]: {"name": "Ann"}}}
    response = post_campaign(admin, body)
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer["accepted"] == 5 and answer["status"] == "sending"
    assert answer["skipped"] == [{"number": "bogus", "reason": "invalid_number"},
                                 {"number": good[0], "reason": "duplicate"},
                                 {"number": good[1], "reason": "duplicate"},
                                 {"number": opted, "reason": "opted_out"},
                                 {"number": talking, "reason": "in_conversation"}]
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    wait_idle(redis)
    assert texted(twilio) == Counter(good)
    assert {m.body for m in twilio.messages} == {"Your visit is due"}
    view = campaign(admin, answer["campaign_id"])
    assert view["counts"]["sent"] == 5 and view["counts"]["queued"] == 0 and view["counts"]["skipped"] == 5
    # Each first SMS started a conversation as POST /admin/sms does: a chat with the opening and the variables.
    chats = [chat for chat in uponai.chats.values() if chat.metadata.get("campaign_id") == answer["campaign_id"]]
    assert len(chats) == 5
    assert all(chat.dynamic_variables["opening_message"] == "Your visit is due" for chat in chats)
    assert [c.dynamic_variables.get("name") for c in chats if c.metadata["conversation_id"]
            == conversation_id(GATEWAY_NUMBER, good[1])] == ["Ann"]
    assert store.conversation(conversation_id(GATEWAY_NUMBER, good[2]))["chat_id"]


def test_the_agent_writes_each_opening_when_there_is_no_message(admin, redis, workers, twilio, uponai):
    answer = post_campaign(admin, {"numbers": numbers(2)}).get_json()
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    assert texted(twilio) == Counter(numbers(2))
    assert len(uponai.completion_log) == 2  # one opening prompt per recipient


def test_in_conversation_numbers_are_texted_when_the_request_says_so(admin, redis, workers, twilio):
    store = new_store(redis)
    talking = "+14155550302"
    store.set_chat(conversation_id(GATEWAY_NUMBER, talking), "chat_live", "agent_test")
    store.touch(conversation_id(GATEWAY_NUMBER, talking), last_activity_at=f"{time.time():.3f}")
    answer = post_campaign(admin, {"numbers": [talking], "message": "hi", "include_in_conversation": True}).get_json()
    assert answer["skipped"] == []
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    assert texted(twilio) == Counter([talking])


def test_a_number_that_opts_out_before_its_turn_is_never_texted(admin, redis, twilio, start_workers):
    listed = numbers(3)
    answer = post_campaign(admin, {"numbers": listed, "message": "hi"}).get_json()
    new_store(redis).set_opted_out(conversation_id(GATEWAY_NUMBER, listed[2]), True)  # before any worker
    start_workers(1)
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    assert texted(twilio) == Counter(listed[:2])
    assert campaign(admin, answer["campaign_id"])["counts"]["skipped"] == 1


def test_the_same_idempotency_key_makes_one_campaign(admin, redis, workers, twilio):
    body = {"numbers": numbers(3), "message": "hi"}
    first = post_campaign(admin, body, **{"Idempotency-Key": "list-7"})
    second = post_campaign(admin, body, **{"Idempotency-Key": "list-7"})
    assert first.status_code == second.status_code == 202
    assert first.get_json()["campaign_id"] == second.get_json()["campaign_id"]
    other = post_campaign(admin, {**body, "message": "other"}, **{"Idempotency-Key": "list-7"})
    assert other.status_code == 422
    wait_for(lambda: campaign(admin, first.get_json()["campaign_id"])["status"] == "done", message="the campaign")
    wait_idle(redis)
    assert texted(twilio) == Counter(numbers(3))
    assert len(admin.get("/admin/campaigns", headers=AUTH).get_json()["campaigns"]) == 1


def test_cancel_stops_what_has_not_been_sent(admin, redis, start_workers, twilio):
    start_workers(1, CAMPAIGN_SEND_RATE="4", CAMPAIGN_BATCH_SIZE="5")
    answer = post_campaign(admin, {"numbers": numbers(40), "message": "hi"}).get_json()
    wait_for(lambda: len(twilio.messages) >= 2, message="the first sends")
    response = admin.post(f"/admin/campaigns/{answer['campaign_id']}/cancel", headers=AUTH)
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    at_cancel = len(twilio.messages)
    wait_idle(redis)
    time.sleep(0.5)  # not a synchronisation: sends that were still to go would have shown at 4/s by now
    assert len(twilio.messages) <= at_cancel + 2  # a send in flight per running batch job may still finish
    assert len(twilio.messages) < 40
    view = campaign(admin, answer["campaign_id"])
    assert view["status"] == "cancelled" and view["counts"]["queued"] == 40 - view["counts"]["sent"]
    again = admin.post(f"/admin/campaigns/{answer['campaign_id']}/cancel", headers=AUTH)
    assert again.status_code == 200


def test_unknown_campaigns_are_404(admin):
    assert admin.get("/admin/campaigns/" + "0" * 32, headers=AUTH).status_code == 404
    assert admin.get("/admin/campaigns/../etc", headers=AUTH).status_code == 404
    assert admin.post("/admin/campaigns/" + "0" * 32 + "/cancel", headers=AUTH).status_code == 404


def test_a_finished_campaign_cannot_be_cancelled(admin, redis, workers, twilio):
    answer = post_campaign(admin, {"numbers": numbers(1), "message": "hi"}).get_json()
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    response = admin.post(f"/admin/campaigns/{answer['campaign_id']}/cancel", headers=AUTH)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "campaign_finished"


def test_batch_jobs_carry_ids_not_numbers(admin, redis):
    answer = post_campaign(admin, {"numbers": numbers(250), "message": "hi"}).get_json()
    jobs = Queue(CAMPAIGN_QUEUE_NAME, connection=redis).get_jobs()
    assert [job.args for job in jobs] == [(answer["campaign_id"], 0, 0), (answer["campaign_id"], 1, 0)]


# -- later sends and pacing -------------------------------------------------------------------------


def send_times(twilio, listed: list[str]) -> list[float]:
    return sorted(message.created_at for message in twilio.messages if message.to in listed)


def test_send_at_waits_in_rqs_scheduler(admin, redis, workers, twilio):
    at = datetime.now(UTC) + timedelta(seconds=2)
    answer = post_campaign(admin, {"numbers": numbers(3), "message": "hi", "send_at": at.isoformat()}).get_json()
    assert answer["status"] == "scheduled"
    queue = Queue(CAMPAIGN_QUEUE_NAME, connection=redis)
    assert queue.scheduled_job_registry.get_job_ids() == [f"campaign-{answer['campaign_id']}-0-0"]
    assert campaign(admin, answer["campaign_id"])["status"] == "scheduled"
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    assert texted(twilio) == Counter(numbers(3))
    assert min(send_times(twilio, numbers(3))) >= at.timestamp() - 0.01
    assert campaign(admin, answer["campaign_id"])["send_at"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_sends_are_paced_per_sender_across_worker_processes(admin, redis, start_worker_processes, twilio):
    rate, count = 5.0, 16
    start_worker_processes(2, CAMPAIGN_SEND_RATE=str(rate), CAMPAIGN_BATCH_SIZE="4", CAMPAIGN_PARALLEL_BATCHES="4")
    first = post_campaign(admin, {"numbers": numbers(count // 2), "message": "hi"}).get_json()
    second = post_campaign(admin, {"numbers": numbers(count // 2, start=500), "message": "hello"}).get_json()
    for answer in (first, second):
        wait_for(lambda a=answer: campaign(admin, a["campaign_id"])["status"] == "done", timeout=30,
                 message="the campaigns to finish")
    times = send_times(twilio, [*numbers(count // 2), *numbers(count // 2, start=500)])
    assert len(times) == count
    # Two campaigns from one sender, four batch jobs each, on two processes: one rate between them. Send times
    # vary by the HTTP call's own time (a busy machine can hold one up for long), so the spacing is checked over the
    # whole run, with a second to spare: unpaced, the sixteen go out in a fraction of the three seconds.
    assert times[-1] - times[0] >= (count - 1) / rate - 1.0, times


def test_a_slow_rate_reschedules_instead_of_sleeping(admin, redis, workers, twilio):
    answer = post_campaign(admin, {"numbers": numbers(3), "message": "hi"}).get_json()
    redis.set("smsgw:pace:" + GATEWAY_NUMBER, str(int(time.time() * 1000) + 2500))  # the sender's next slot: 2.5 s
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", timeout=30,
             message="the campaign to finish")
    runs = Queue(CAMPAIGN_QUEUE_NAME, connection=redis).finished_job_registry.get_job_ids()
    assert any(job_id.endswith("-0-1") for job_id in runs), runs  # a later run of batch 0, from RQ's scheduler
    assert texted(twilio) == Counter(numbers(3))


def test_replies_go_out_while_a_campaign_is_sending(admin, redis, start_workers, twilio, text_in):
    start_workers(1, CAMPAIGN_SEND_RATE="2", WORKER_THREADS="4")
    answer = post_campaign(admin, {"numbers": numbers(12), "message": "hi"}).get_json()
    wait_for(lambda: twilio.messages, message="the campaign to start")
    text_in("are you open today?", from_="+14155550999")
    wait_for(lambda: twilio.sent_to("+14155550999"), message="the reply")
    assert campaign(admin, answer["campaign_id"])["status"] == "sending"  # the reply did not wait for the campaign


# -- what Twilio's webhooks tell a campaign ---------------------------------------------------------


def test_status_callbacks_and_replies_feed_the_counts(admin, redis, workers, twilio, uponai):
    from tests.conftest import inbound_form, post_signed

    listed = numbers(3)
    answer = post_campaign(admin, {"numbers": listed, "message": "hi"}).get_json()
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", message="the campaign to finish")
    sid_of = {message.to: message.sid for message in twilio.messages}

    def callback(number: str, status: str, error: str = ""):
        # The fields of Twilio's status callback (twilio-facts.md, "Status callback"), signed as Twilio signs them.
        form = {"MessageSid": sid_of[number], "MessageStatus": status, "To": number, "From": GATEWAY_NUMBER,
                "AccountSid": twilio.account_sid, "ErrorCode": error}
        assert post_signed(admin, "/twilio/status", form).status_code == 200

    for status in ("sent", "delivered", "delivered"):  # Twilio calling back twice counts once
        callback(listed[0], status)
    callback(listed[1], "undelivered", "30003")
    callback(listed[1], "delivered")  # after a final status: not counted again
    callback(listed[2], "sent")
    for body in ("yes please", "and tomorrow?"):  # the person answers twice: one reply
        assert post_signed(admin, "/twilio/sms", inbound_form(body, from_=listed[0])).status_code == 200
    assert post_signed(admin, "/twilio/sms", inbound_form("hello", from_="+14155550999")).status_code == 200
    wait_idle(redis)  # the person's answers go to the agent, in the chat the campaign's SMS started (and count)
    counts = campaign(admin, answer["campaign_id"])["counts"]
    assert counts == {"queued": 0, "sent": 3, "delivered": 1, "failed": 1, "skipped": 0, "replied": 1}
    chat_id = redis.hget(f"smsgw:conv:{conversation_id(GATEWAY_NUMBER, listed[0])}", "chat_id").decode()
    assert uponai.chats[chat_id].metadata["campaign_id"] == answer["campaign_id"]
    assert any(chat == chat_id and "yes please" in text for chat, text in uponai.completion_log)


# -- the console --------------------------------------------------------------------------------------


def test_console_sends_a_csv_with_a_progress_bar_and_shows_status(env, redis, start_workers, twilio, uponai,
                                                                  tmp_path):
    import subprocess
    import sys
    import threading

    from werkzeug.serving import make_server

    from tests.conftest import ROOT, free_port

    app = create_app({**env, "ADMIN_API_TOKEN": TOKEN})
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start_workers(1, CAMPAIGN_SEND_RATE="20")
    listed = numbers(4)
    (tmp_path / "numbers.csv").write_text("number,name\n" + "".join(f"{n},P{i}\n" for i, n in enumerate(listed))
                                          + "bogus,X\n")

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cli", "campaign", *args, "--url", f"http://127.0.0.1:{server.server_port}"]
        return subprocess.run(command, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                            "ADMIN_API_TOKEN": TOKEN}, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)

    try:
        sent = cli("send", "numbers.csv", "--message", "See you Monday")
        assert sent.returncode == 0, sent.stderr
        assert "4 accepted, 1 skipped" in sent.stdout and "skipped bogus: invalid_number" in sent.stdout
        assert "[" + "#" * 30 + "] 4/4 done: 4 sent" in sent.stdout, sent.stdout
        assert texted(twilio) == Counter(listed)
        names = sorted(chat.dynamic_variables.get("name") for chat in uponai.chats.values())
        assert names == ["P0", "P1", "P2", "P3"]  # the CSV's other columns: each number's dynamic variables
        campaign_id = sent.stdout.split()[1].rstrip(":")
        shown = cli("status", campaign_id)
        assert shown.returncode == 0 and f"Campaign {campaign_id}: done" in shown.stdout
        missing = cli("status", "0" * 32)
        assert missing.returncode == 1 and "campaign_not_found" in missing.stderr
        (tmp_path / "bad.csv").write_text("nothing,here\nat,all\n")
        bad = cli("send", "bad.csv", "--message", "x", "--at", "2020-01-01T00:00:00")
        assert bad.returncode == 1 and "numbers:" in bad.stderr and "send_at:" in bad.stderr, bad.stderr
    finally:
        server.shutdown()


def test_csv_upload_without_a_header(admin, redis):
    body = "\n".join(numbers(3)) + "\n+14155550100\n"
    response = admin.post("/admin/campaigns?message=hi", data=body, headers={**AUTH, "Content-Type": "text/csv"})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == 3 and response.get_json()["skipped"] == [
        {"number": "+14155550100", "reason": "duplicate"}]
    wrong = admin.post("/admin/campaigns?colour=red", data=body, headers={**AUTH, "Content-Type": "text/csv"})
    assert wrong.status_code == 400 and "colour" in wrong.get_json()["error"]["message"]
    garbage = admin.post("/admin/campaigns", data=b"\xff\xfe\x00", headers={**AUTH, "Content-Type": "text/csv"})
    assert garbage.status_code == 400 and garbage.get_json()["error"]["code"] == "invalid_csv"


def test_the_pace_script_hands_out_slots_one_interval_apart(redis):
    from core.state.pacing import Pacing

    pacing = Pacing.from_settings(redis, Settings())
    waits = [pacing.reserve("+15005550006", 10, horizon_seconds=0.35) for _ in range(5)]
    assert [slot.reserved for slot in waits] == [True, True, True, True, False]
    assert [round(slot.wait_seconds, 1) for slot in waits[:4]] == [0.0, 0.1, 0.2, 0.3]
    assert 0 < waits[4].wait_seconds <= 0.1  # ask again then: the next slot is within the horizon
    two_segments = Pacing.from_settings(redis, Settings()).reserve("+15005550007", 10, horizon_seconds=1, cost=2)
    again = Pacing.from_settings(redis, Settings()).reserve("+15005550007", 10, horizon_seconds=1)
    assert again.wait_seconds >= 0.19  # it took two slots
    assert two_segments.reserved
    # Slots missed while the senders were behind are made up only as far back as catch_up_seconds allows.
    redis.set("smsgw:pace:+15005550008", str(int(time.time() * 1000) - 60_000))  # a minute behind
    made_up = [pacing.reserve("+15005550008", 10, horizon_seconds=0, catch_up_seconds=0.5) for _ in range(8)]
    assert sum(slot.reserved for slot in made_up) in (5, 6)  # half a second's worth at once, not a minute's


def test_erasing_a_person_takes_their_number_out_of_campaigns(admin, redis, start_workers, twilio):
    start_workers(1, CAMPAIGN_SEND_RATE="1", CAMPAIGN_BATCH_SIZE="2", CAMPAIGN_PARALLEL_BATCHES="1")
    listed = numbers(4)
    answer = post_campaign(admin, {"numbers": [*listed, listed[0]], "message": "hi",
                                   "variables": {listed[0]: {"name": "Ann"}}}).get_json()
    wait_for(lambda: twilio.sent_to(listed[0]), message="the first number texted")
    response = admin.delete(f"/admin/conversations/{listed[0]}", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    held = [key for key in redis.scan_iter(match="smsgw:*")
            if redis.type(key) in (b"list", b"hash", b"set", b"string") and listed[0].encode() in dump(redis, key)]
    assert held == []
    assert listed[0].encode() not in redis.hget(f"smsgw:campaign:{answer['campaign_id']}", "answer")  # its skips
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", timeout=30, message="the campaign")
    assert texted(twilio) == Counter(listed)


def dump(redis, key) -> bytes:
    kind = redis.type(key)
    if kind == b"list":
        return b" ".join(redis.lrange(key, 0, -1))
    if kind == b"hash":
        return b" ".join(k + b"=" + v for k, v in redis.hgetall(key).items())
    if kind == b"set":
        return b" ".join(redis.smembers(key))
    return redis.get(key) or b""


def test_a_list_of_only_opted_out_numbers_is_a_finished_campaign_with_nothing_queued(admin, redis):
    store = new_store(redis)
    listed = numbers(2)
    for number in listed:
        store.set_opted_out(conversation_id(GATEWAY_NUMBER, number), True)
    response = post_campaign(admin, {"numbers": listed, "message": "hi"})
    assert response.status_code == 202
    answer = response.get_json()
    assert answer["accepted"] == 0 and answer["status"] == "done"
    assert [row["reason"] for row in answer["skipped"]] == ["opted_out", "opted_out"]
    assert Queue(CAMPAIGN_QUEUE_NAME, connection=redis).count == 0
    assert campaign(admin, answer["campaign_id"])["counts"]["skipped"] == 2


def test_replies_take_their_slots_of_a_campaigns_pace(admin, redis, start_workers, twilio, text_in):
    rate, count = 4.0, 8
    start_workers(1, CAMPAIGN_SEND_RATE=str(rate), CAMPAIGN_PARALLEL_BATCHES="1")
    listed = numbers(count)
    answer = post_campaign(admin, {"numbers": listed, "message": "hi"}).get_json()
    wait_for(lambda: twilio.messages, message="the campaign to start")
    talkers = numbers(count, start=700)
    for number in talkers:  # people talking to the agent meanwhile, on the campaign's sender
        text_in("are you open?", from_=number)
    wait_for(lambda: campaign(admin, answer["campaign_id"])["status"] == "done", timeout=30, message="the campaign")
    wait_idle(redis)
    assert all(twilio.sent_to(number) for number in talkers)
    times = send_times(twilio, [*listed, *talkers])
    # The replies went out at once, and the campaign made room for them: the sender's sixteen SMS together kept to
    # the rate (unshared, the campaign's eight would end (8 - 1) / 4 s after the first, replies or not).
    assert times[-1] - times[0] >= (2 * count - 1) / rate - 1.0, times


def test_concurrent_retries_with_one_key_make_one_campaign(admin_env, redis):
    import threading

    app = create_app(admin_env)
    answers, barrier = [], threading.Barrier(8)

    def post() -> None:
        client = app.test_client()
        barrier.wait()
        answers.append(post_campaign(client, {"numbers": numbers(300), "message": "hi"},
                                     **{"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [response.status_code for response in answers] == [202] * 8, [r.get_json() for r in answers]
    assert len({response.get_json()["campaign_id"] for response in answers}) == 1
    assert redis.zcard("smsgw:campaigns") == 1
    assert Queue(CAMPAIGN_QUEUE_NAME, connection=redis).count == 2  # the one campaign's first two batch jobs


def test_cancelling_a_scheduled_campaign_drops_its_jobs_from_rqs_scheduler(admin, redis, twilio):
    at = datetime.now(UTC) + timedelta(hours=1)
    answer = post_campaign(admin, {"numbers": numbers(250), "message": "hi", "send_at": at.isoformat()}).get_json()
    registry = Queue(CAMPAIGN_QUEUE_NAME, connection=redis).scheduled_job_registry
    assert registry.count == 2
    response = admin.post(f"/admin/campaigns/{answer['campaign_id']}/cancel", headers=AUTH)
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    assert registry.count == 0
    assert not list(redis.scan_iter(match=f"rq:job:campaign-{answer['campaign_id']}-*"))
