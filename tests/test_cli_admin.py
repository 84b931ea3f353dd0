"""The operator commands (``sms-gateway send|show|end|forget|handoff|say|resume|chats|failed|requeue``) against a
served gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry
from werkzeug.serving import make_server

from core.model import conversation_id
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, ROOT, free_port, inbound_form, post_signed, wait_for
from tests.test_retention import WORDS, personal_data

TOKEN = "cli-admin-token-0123"
PERSON = "+14155550100"


@pytest.fixture
def served(env, redis):
    """The gateway app served over HTTP by werkzeug in a thread; yields its URL."""
    app = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"})
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def cli(served, tmp_path):
    url, _ = served

    def run(*args: str, token: str | None = TOKEN, url: str | None = url) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "SANDBOX_DATA_DIR": str(tmp_path)}
        if token is not None:
            env["ADMIN_API_TOKEN"] = token
        command = [sys.executable, "-m", "cli", *args] + (["--url", url] if url else [])
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    return run


def text_in(app, body: str, from_: str = PERSON) -> None:
    assert post_signed(app.test_client(), "/twilio/sms", inbound_form(body, from_=from_)).status_code == 200


def test_send_with_a_message_prints_the_conversation(start_workers, cli, uponai, twilio):
    start_workers(1)
    result = cli("send", PERSON, "--message", "Your table is ready", "--var", "name=Ada")

    assert result.returncode == 0, result.stderr
    assert f"Sent to {PERSON} from {GATEWAY_NUMBER}" in result.stdout
    assert conversation_id(GATEWAY_NUMBER, PERSON) in result.stdout
    assert twilio.sent_to(PERSON) == ["Your table is ready"]
    variables = uponai.calls("create_chat")[0].json()["uponai_dynamic_variables"]
    assert variables == {"name": "Ada", "opening_message": "Your table is ready"}


def test_send_while_the_gateway_is_busy_prints_the_queued_job(served, cli, twilio, redis):
    _, app = served
    jobs = app.extensions["sms_gateway_admin"]
    with jobs.waiting_place() as first, jobs.waiting_place() as second:  # ADMIN_MAX_WAITING (2) taken
        assert first and second
        result = cli("send", PERSON, "--message", "Later")

    assert result.returncode == 0, result.stderr
    assert "Queued without waiting" in result.stdout
    [job_id] = Queue("sms-admin", connection=redis).job_ids
    assert f"sms-gateway job {job_id}" in result.stdout and twilio.messages == []


def test_send_without_a_message_as_json(start_workers, cli, uponai, twilio):
    start_workers(1)
    uponai.responder = lambda chat, text: ["Hello! Anything we can do for you?"]

    result = cli("send", PERSON, "--json", "--idempotency-key", "k-1")

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "sent" and data["opening_generated"] is True
    assert twilio.sent_to(PERSON) == ["Hello! Anything we can do for you?"]
    again = cli("send", PERSON, "--json", "--idempotency-key", "k-1")
    assert json.loads(again.stdout)["chat_id"] == data["chat_id"]
    assert len(twilio.messages) == 1


def test_show_and_end_a_conversation(start_workers, served, cli, uponai, twilio):
    start_workers(1)
    _, app = served
    text_in(app, "hello there")
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")

    shown = cli("show", PERSON)
    assert shown.returncode == 0, shown.stderr
    assert f"{PERSON} with {GATEWAY_NUMBER}" in shown.stdout
    assert "user: hello there" in shown.stdout and "agent: You said: hello there" in shown.stdout
    assert twilio.messages[0].sid in shown.stdout
    chat_id = json.loads(cli("show", PERSON, "--json").stdout)["chat_id"]

    ended = cli("end", PERSON)
    assert ended.returncode == 0, ended.stderr
    assert f"Ended chat {chat_id}" in ended.stdout
    assert uponai.chats[chat_id].status == "ended"
    assert "had no ongoing chat" in cli("end", PERSON).stdout


def test_chats_page_by_page(start_workers, served, cli, twilio):
    start_workers(1)
    _, app = served
    for number in (PERSON, "+14155550101"):
        text_in(app, "hi", from_=number)
    wait_for(lambda: len(twilio.messages) == 2, message="two replies")

    first = cli("chats", "--limit", "1", "--sort-order", "ascending")
    assert first.returncode == 0, first.stderr
    key = first.stdout.split("--pagination-key ")[1].strip()
    second = cli("chats", "--limit", "1", "--sort-order", "ascending", "--pagination-key", key)
    assert second.returncode == 0 and "--pagination-key" not in second.stdout
    assert first.stdout.split()[0] != second.stdout.split()[0]


def test_failed_and_requeue(start_workers, served, cli, uponai, twilio, redis):
    start_workers(1)
    _, app = served
    uponai.inject("complete", *[Fault(status=500)] * 4)
    text_in(app, "answer me")
    wait_for(lambda: FailedJobRegistry("sms", connection=redis).get_job_ids(), message="a failed job")

    listed = cli("failed")
    assert listed.returncode == 0, listed.stderr
    job_id = FailedJobRegistry("sms", connection=redis).get_job_ids()[0]
    assert job_id in listed.stdout and conversation_id(GATEWAY_NUMBER, PERSON) in listed.stdout
    assert "MessagesFailed" in listed.stdout
    assert "needing an operator: 1" in listed.stdout and "requeue to answer them" in listed.stdout

    requeued = cli("requeue", job_id)
    assert requeued.returncode == 0, requeued.stderr
    assert f"Requeued job {job_id} on queue sms" in requeued.stdout
    wait_for(lambda: "You said: answer me" in twilio.sent_to(PERSON), message="the answer after the requeue")
    again = cli("requeue", job_id)
    assert again.returncode == 1 and "failed_job_not_found" in again.stderr


def test_errors_exit_non_zero_with_the_message(cli, twilio):
    invalid = cli("send", "+1415", "--message", "hi")
    assert invalid.returncode == 1
    assert "to: is not a valid phone number" in invalid.stderr and "HTTP 400" in invalid.stderr

    as_json = cli("send", "+1415", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["code"] == "invalid_request"

    wrong = cli("chats", token="not-the-token")
    assert wrong.returncode == 1 and "unauthorized" in wrong.stderr

    missing = cli("chats", token=None)
    assert missing.returncode == 2 and "ADMIN_API_TOKEN is not set" in missing.stderr

    unreachable = cli("chats", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot reach the gateway" in unreachable.stderr

    bad_var = cli("send", PERSON, "--var", "novalue")
    assert bad_var.returncode == 2 and "--var takes NAME=VALUE" in bad_var.stderr
    assert twilio.messages == []


def test_forget_erases_the_person(start_workers, served, cli, uponai, twilio, redis):
    start_workers(1)
    _, app = served
    text_in(app, WORDS)
    wait_for(lambda: twilio.sent_to(PERSON), message="reply")
    chat_id = json.loads(cli("show", PERSON, "--json").stdout)["chat_id"]

    forgotten = cli("forget", PERSON)

    assert forgotten.returncode == 0, forgotten.stderr
    cid = conversation_id(GATEWAY_NUMBER, PERSON)
    assert f"Erased conversation {cid}" in forgotten.stdout and f"ended chat {chat_id}" in forgotten.stdout
    assert uponai.chats[chat_id].status == "ended"
    assert personal_data(redis, PERSON) == []
    again = cli("forget", PERSON)
    assert again.returncode == 1 and "conversation_not_found" in again.stderr


def test_handoff_say_and_resume_from_the_console(start_workers, served, cli, uponai, twilio, redis):
    _, app = served
    start_workers(1)
    text_in(app, "where is my parcel?")
    wait_for(lambda: twilio.sent_to(PERSON), message="the agent's answer")

    taken = cli("handoff", PERSON)
    assert taken.returncode == 0, taken.stderr
    assert "is handed off to an operator" in taken.stdout and "sms-gateway say" in taken.stdout
    assert "it already was" in cli("handoff", PERSON).stdout

    said = cli("say", PERSON, "It left our warehouse today.", "--idempotency-key", "parcel-1")
    assert said.returncode == 0, said.stderr
    assert f"Sent to {PERSON} from {GATEWAY_NUMBER}" in said.stdout and "handed off" in said.stdout
    assert cli("say", PERSON, "It left our warehouse today.", "--idempotency-key", "parcel-1").returncode == 0
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the operator's message")

    shown = cli("show", PERSON)
    assert "Handed off to an operator since" in shown.stdout
    assert "operator: It left our warehouse today.\n" in shown.stdout  # not heard by the agent yet

    given = cli("resume", PERSON)
    assert given.returncode == 0 and "The agent answers conversation" in given.stdout
    assert twilio.sent_to(PERSON) == ["You said: where is my parcel?", "It left our warehouse today."]

    text_in(app, "thanks!")  # the next turn carries the operator's message to the agent; it stays in the log
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 3, message="the agent's next answer")
    assert "operator: It left our warehouse today.  (heard by the agent)" in cli("show", PERSON).stdout


def test_say_to_an_unknown_conversation_exits_1_with_the_reason(served, cli, twilio):
    result = cli("say", "+14155550111", "hello")
    assert result.returncode == 1
    assert "No conversation between these numbers is known. (conversation_not_found, HTTP 404)" in result.stderr
    assert twilio.messages == []
