"""The sandbox's own events receiver: without an EVENTS_WEBHOOK_URL of the person's, ``sms-gateway run`` receives
the operator events itself, verifies each as a receiver would (Standard Webhooks), and shows them on the phone page
and with ``sms-gateway events``; a delivery that is not signed with its secret is refused and never shown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
import requests
from standardwebhooks import Webhook

from sandbox.events_receiver import DeliveryRefused, EventInbox, create_receiver_app, verify_delivery
from tests.conftest import wait_for
from tests.test_events import VECTOR
from tests.test_sandbox import (  # noqa: F401 (browser and chromium_paths: fixtures used by name)
    Sandbox,
    browser,
    chromium_paths,
    save_screenshot,
    texts,
    use_number,
    wait_for_text,
)
from tests.test_sandbox import text as text_from_page

PERSON = "+14155550163"
HANDOFF_WORD = "HUMAN"
SECRET = "whsec_" + "c2FuZGJveC1ldmVudHMtdGVzdC1zZWNyZXQtMDAwMQ=="


def vector_headers(**changed: str) -> dict[str, str]:
    headers = {"webhook-id": VECTOR["msg_id"], "webhook-timestamp": str(VECTOR["timestamp"]),
               "webhook-signature": VECTOR["signature"]}
    return {**headers, **changed}


def test_the_receiver_verifies_the_specifications_test_vector_and_refuses_any_change():
    body = VECTOR["payload"].encode()
    at = VECTOR["timestamp"]
    assert verify_delivery(VECTOR["secret"], vector_headers(), body, now=at) == {"test": 2432232314}
    # Several signatures (a secret being rotated): the one that matches is enough.
    rotated = vector_headers(**{"webhook-signature": "v1,bm90LXRoaXMtb25l " + VECTOR["signature"]})
    assert verify_delivery(VECTOR["secret"], rotated, body, now=at)
    refusals = {
        "body": (vector_headers(), body.replace(b"2432232314", b"2432232315"), at),
        "id": (vector_headers(**{"webhook-id": "msg_other"}), body, at),
        "timestamp": (vector_headers(**{"webhook-timestamp": str(at + 1)}), body, at),
        "stale": (vector_headers(), body, at + 301),
        "version": (vector_headers(**{"webhook-signature": "v2," + VECTOR["signature"][3:]}), body, at),
        "missing": ({"webhook-id": VECTOR["msg_id"]}, body, at),
    }
    for what, (headers, sent, now) in refusals.items():
        with pytest.raises(DeliveryRefused):
            verify_delivery(VECTOR["secret"], headers, sent, now=now)
            pytest.fail(f"a delivery with a changed {what} was taken")


def test_a_delivery_signed_by_the_specifications_library_is_kept_once_and_a_forged_one_is_refused():
    inbox = EventInbox(SECRET)
    client = create_receiver_app(inbox).test_client()
    event = {"id": "evt_1", "type": "conversation.opted_out", "created_at": "2026-01-01T00:00:00.000Z",
             "conversation": {"id": "c1", "number": PERSON}, "data": {}}
    body = json.dumps(event)
    signed = Webhook(SECRET).sign("evt_1", datetime.now(UTC), body)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": signed}
    assert client.post("/events", data=body, headers=headers).status_code == 204
    assert client.post("/events", data=body, headers=headers).status_code == 204  # a retry: kept once
    forged = Webhook("whsec_" + "b3RoZXItc2VjcmV0LW9mLWFuLWF0dGFja2VyLTAw").sign("evt_2", datetime.now(UTC), body)
    refused = client.post("/events", data=body, headers={**headers, "webhook-id": "evt_2",
                                                          "webhook-signature": forged})
    assert refused.status_code == 401 and "webhook-signature does not match" in refused.get_json()["error"]
    assert [kept["event"]["id"] for kept in inbox.of_number(PERSON)] == ["evt_1"]
    listed = client.get("/events", query_string={"after": 0}).get_json()
    assert [kept["webhook_id"] for kept in listed["events"]] == ["evt_1"] and listed["last"] == 1
    assert client.get("/events", query_string={"after": "x"}).status_code == 400


class Console:
    """``sms-gateway events`` in a child process, as a person runs it in a second terminal."""

    def __init__(self, sandbox: Sandbox, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "events", *args], cwd=sandbox.cwd,
                                        env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        self.reader.join(timeout=10)
        said = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, said


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, chromium_paths):  # noqa: F811 (chromium_paths first: skip before starting it)
    started = Sandbox(tmp_path_factory.mktemp("sandbox-events"), HANDOFF_KEYWORD=HANDOFF_WORD)
    yield started
    assert started.stop() == 0


def test_a_handoff_request_shows_verified_on_the_page_and_in_the_console_and_a_forgery_nowhere(
        sandbox, browser):  # noqa: F811 (the fixture imported above, driving this module's sandbox)
    from selenium.webdriver.common.by import By

    banner = sandbox.text
    assert "events:    operator events, signature verified, show on the phone page and with: " in banner, banner
    assert "sms-gateway events" in banner
    settings = (sandbox.data_dir / "sandbox" / "sandbox.env").read_text()
    receiver = json.loads((sandbox.data_dir / "sandbox" / "running.json").read_text())["events_url"]
    assert f"EVENTS_WEBHOOK_URL={receiver}\n" in settings and receiver.startswith("http://127.0.0.1:")
    secret = (sandbox.data_dir / "sandbox" / "events-secret").read_text().strip()
    assert secret.startswith("whsec_") and (sandbox.data_dir / "sandbox" / "events-secret").stat().st_mode & 0o077 == 0

    console = Console(sandbox, "--number", PERSON)
    browser.get(sandbox.phone_url)
    wait_for(lambda: browser.find_element(By.ID, "gateway-number").text.startswith("+"), message="the page's config")
    use_number(browser, PERSON)
    text_from_page(browser, HANDOFF_WORD)
    wait_for_text(browser, "#events .event", "handoff.requested", timeout=60)
    shown = texts(browser, "#events .event")
    assert len(shown) == 1 and "signature verified" in shown[0], shown
    wait_for(lambda: any("handoff.requested" in line for line in console.lines), timeout=30,
             message="the event in sms-gateway events' output")

    # A delivery not signed with the sandbox's secret: refused, and shown neither on the page nor in the console.
    def delivery(event_id: str) -> str:
        return json.dumps({"id": event_id, "type": "delivery.failed", "created_at": "2026-01-01T00:00:00.000Z",
                           "conversation": {"id": "c", "number": PERSON}, "data": {"status": "failed"}})

    body = delivery("evt_forged")
    forged = Webhook("whsec_" + "b3RoZXItc2VjcmV0LW9mLWFuLWF0dGFja2VyLTAw").sign("evt_forged", datetime.now(UTC), body)
    answer = requests.post(receiver, data=body, timeout=10, headers={
        "Content-Type": "application/json", "webhook-id": "evt_forged", "webhook-timestamp": str(int(time.time())),
        "webhook-signature": forged})
    assert answer.status_code == 401 and "does not match" in answer.json()["error"], answer.text
    # A delivery signed with the sandbox's secret is taken: the refusal was the signature's, nothing else.
    body = delivery("evt_genuine")
    signed = requests.post(receiver, data=body, timeout=10, headers={
        "Content-Type": "application/json", "webhook-id": "evt_genuine", "webhook-timestamp": str(int(time.time())),
        "webhook-signature": Webhook(secret).sign("evt_genuine", datetime.now(UTC), body)})
    assert signed.status_code == 204
    wait_for_text(browser, "#events .event", "evt_genuine")
    wait_for(lambda: sum("delivery.failed" in line for line in console.lines) == 1, timeout=30,
             message="the genuine delivery in the console")
    shown = texts(browser, "#events .event .kind")
    assert shown == ["delivery.failed", "handoff.requested"], shown  # newest first; the forged one never
    assert not any("evt_forged" in shown for shown in texts(browser, "#events .event"))
    browser.execute_script("document.getElementById('events-section').scrollIntoView()")
    assert browser.save_screenshot("/tmp/sbevents-panel.png")
    save_screenshot(browser, "sandbox-events-panel")
    code, said = console.stop()
    assert code == 0, said
    printed = "".join(console.lines)
    assert printed.count("(signature verified)") == 2 and "NOT verified" not in printed, printed
    assert f"handoff.requested  {PERSON}" in printed and "evt_genuine" in printed, printed
    assert "evt_forged" not in printed, printed


def test_an_events_webhook_of_the_persons_own_is_left_alone(tmp_path):
    own = "http://127.0.0.1:9/my-receiver"
    sandbox = Sandbox(tmp_path, EVENTS_WEBHOOK_URL=own, EVENTS_WEBHOOK_SECRET=SECRET)
    try:
        assert "events:    posted to your EVENTS_WEBHOOK_URL (not shown here)" in sandbox.text, sandbox.text
        assert f"EVENTS_WEBHOOK_URL={own}\n" in (tmp_path / "sandbox" / "sandbox.env").read_text()
        assert not (tmp_path / "sandbox" / "events-secret").exists()
        assert sandbox.api("/api/config")["events"] == {"shown": False,
                                                         "reason": "events go to your EVENTS_WEBHOOK_URL"}
        console = subprocess.run([sys.executable, "-m", "cli", "events"], cwd=sandbox.cwd, env=sandbox.env,
                                 capture_output=True, text=True, timeout=60)
        assert console.returncode == 2 and "posts events to your EVENTS_WEBHOOK_URL" in console.stderr, console
    finally:
        assert sandbox.stop() == 0
    console = subprocess.run([sys.executable, "-m", "cli", "events"], cwd=sandbox.cwd, env=sandbox.env,
                             capture_output=True, text=True, timeout=60)
    assert console.returncode == 2 and "no sandbox runs here" in console.stderr, console


def test_the_console_follows_new_events_and_says_so_when_the_sandbox_stops(tmp_path):
    """``--new`` skips what came before; a request waiting for an event does not hold up Ctrl-C; the console then
    ends with 1 and says why instead of a traceback."""
    sandbox = Sandbox(tmp_path)
    receiver = json.loads((tmp_path / "sandbox" / "running.json").read_text())["events_url"]
    secret = (tmp_path / "sandbox" / "events-secret").read_text().strip()

    def post(event_id: str) -> int:
        body = json.dumps({"id": event_id, "type": "conversation.opted_out", "created_at": "2026-01-01T00:00:00Z",
                           "conversation": {"id": "c", "number": PERSON}, "data": {}})
        return requests.post(receiver, data=body, timeout=10, headers={
            "webhook-id": event_id, "webhook-timestamp": str(int(time.time())),
            "webhook-signature": Webhook(secret).sign(event_id, datetime.now(UTC), body)}).status_code

    try:
        assert post("evt_before") == 204
        console = Console(sandbox, "--new", "--json")
        wait_for(lambda: console.process.stderr.readline().startswith("sms-gateway events: following"),
                 timeout=30, message="the console to start following")
        assert post("evt_after") == 204
        wait_for(lambda: console.lines, timeout=30, message="the new event in the console")
        assert [json.loads(line)["webhook_id"] for line in console.lines] == ["evt_after"]
    finally:
        assert sandbox.stop(timeout=20) == 0
    assert console.process.wait(timeout=60) == 1
    said = console.process.stderr.read()
    console.process.stdout.close()
    console.process.stderr.close()
    assert "stopped answering" in said and "Traceback" not in said, said
