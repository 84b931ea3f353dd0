"""The web process as deployed (the Procfile's ``web`` line, ./gunicorn.conf.py): webhooks keep capacity while
admin requests wait, forwarded headers are not believed by default, and access lines mask numbers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests
from rq import Queue

from core.queues import ADMIN_QUEUE_NAME
from tests.conftest import ROOT, free_port, inbound_form, settings_env, sign, wait_for
from tests.test_procfile import procfile_commands

TOKEN = "web-process-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550177"


@contextlib.contextmanager
def web(redis_server, uponai_server, twilio_server, log_dir: Path, **overrides: str):
    """Run the Procfile's web command with only the settings in its environment; kill it afterwards."""
    port = free_port()
    env = {**settings_env(redis_server, uponai_server, twilio_server, ADMIN_API_TOKEN=TOKEN, **overrides),
           "PORT": str(port), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    env = {name: value for name, value in env.items() if value != ""}  # "" leaves a setting out
    log = log_dir / "web.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["bash", "-c", procfile_commands()["web"]], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError("the web process exited:\n" + log.read_text(errors="replace"))
        try:
            return requests.get(url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, timeout=60, interval=0.2, message="the web process to answer")
        yield url, log
    finally:
        # Killed, not stopped: a graceful stop would wait for the admin requests still waiting.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_a_signed_webhook_is_answered_while_admin_requests_wait_for_a_missing_worker(
        redis_server, uponai_server, twilio_server, redis, twilio, tmp_path):
    # One process with 4 threads; no worker at all, and admin requests that would wait 60 s each for one.
    with web(redis_server, uponai_server, twilio_server, tmp_path, WEB_CONCURRENCY="1", WEB_THREADS="4",
             ADMIN_WAIT_SECONDS="60") as (url, _):
        answers: dict[int, requests.Response | Exception] = {}

        def admin_call(index: int) -> None:
            try:
                answers[index] = requests.post(url + "/admin/sms", json={"to": PERSON, "message": f"hi {index}"},
                                               headers=AUTH, timeout=90)
            except requests.RequestException as exc:
                answers[index] = exc

        callers = [threading.Thread(target=admin_call, args=(index,), daemon=True) for index in range(8)]
        for caller in callers:
            caller.start()
        # Every thread of the process has taken an admin request (without the bound, all four now wait).
        wait_for(lambda: Queue(ADMIN_QUEUE_NAME, connection=redis).count >= 4, message="admin jobs queued")

        form = inbound_form("are you there?", from_=PERSON)
        webhook = requests.post(url + "/twilio/sms", data=form, timeout=45,
                                headers={"X-Twilio-Signature": sign("https://sms.example.com/twilio/sms", form)})
        still_waiting = [caller for caller in callers if caller.is_alive()]

        assert webhook.status_code == 200, webhook.text
        assert redis.llen(f"smsgw:inbox:{_cid(PERSON)}") == 1  # accepted for the worker to come
        # It did not wait for an admin request to end: the ones holding a place to wait are still waiting.
        assert len(still_waiting) >= 1
        wait_for(lambda: len(answers) >= 6, message="the admin requests past the bound to be answered")
        queued = [a for a in answers.values() if isinstance(a, requests.Response) and a.status_code == 202]
        assert len(queued) >= 6 and {a.json()["status"] for a in queued} == {"queued"}
        assert twilio.messages == []


def _cid(person: str) -> str:
    from core.model import conversation_id
    from tests.conftest import GATEWAY_NUMBER

    return conversation_id(GATEWAY_NUMBER, person)


def test_x_forwarded_proto_is_not_believed_without_trusted_proxy_hops(redis_server, uponai_server, twilio_server,
                                                                      redis, tmp_path):
    # No PUBLIC_BASE_URL: the signed URL is the one the request reached, scheme included.
    with web(redis_server, uponai_server, twilio_server, tmp_path, PUBLIC_BASE_URL="") as (url, _):
        form = inbound_form("hello", from_=PERSON)
        forged = {"X-Forwarded-Proto": "https"}

        signed_as_reached = requests.post(url + "/twilio/sms", data=form, timeout=10,
                                          headers={**forged, "X-Twilio-Signature": sign(url + "/twilio/sms", form)})
        https_url = url.replace("http://", "https://") + "/twilio/sms"
        signed_as_forwarded = requests.post(url + "/twilio/sms", data=inbound_form("hi", from_=PERSON), timeout=10,
                                            headers={**forged, "X-Twilio-Signature": sign(https_url, form)})

        assert signed_as_reached.status_code == 200, signed_as_reached.text
        assert signed_as_forwarded.status_code == 403


def test_access_lines_mask_numbers_written_without_a_plus(redis_server, uponai_server, twilio_server, redis,
                                                          tmp_path):
    with web(redis_server, uponai_server, twilio_server, tmp_path, GUNICORN_ACCESS_LOG="1") as (url, log):
        # Written without + the numbers are refused (no country code, 400); with it, unknown (404). Either way
        # the access line must not show them.
        paths = {"/admin/conversations/14155550177?from=12025550143": 400,
                 "/admin/conversations/1%20(415)%20555-0177/end?from=1%20202%20555%200143": 400,
                 "/admin/conversations/%2B14155550177?from=+12025550143": 404}
        for path, status in paths.items():
            assert requests.request("POST" if path.split("?")[0].endswith("/end") else "GET", url + path,
                                    headers=AUTH, timeout=10).status_code == status

        text = wait_for(lambda: (lambda t: t if t.count('"GET /admin/') + t.count('"POST /admin/') >= 3 else "")(
            log.read_text(errors="replace")), message="the access lines")
        for digits in ("4155550177", "(415)%20555-0177", "2025550143", "202%20555%200143"):
            assert digits not in text, text
        assert text.count("*****77") >= 3 and text.count("*****43") >= 3


def test_two_gateways_on_one_host_open_no_control_socket(redis_server, uponai_server, twilio_server, redis, tmp_path):
    """gunicorn 27 listens on a control socket at one path per user by default; the gateway turns it off."""
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    for folder in (home, tmp_path / "a", tmp_path / "b", runtime):
        folder.mkdir()
    shared = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    with web(redis_server, uponai_server, twilio_server, tmp_path / "a", **shared) as (first, first_log), \
            web(redis_server, uponai_server, twilio_server, tmp_path / "b", **shared) as (second, second_log):
        assert requests.get(first + "/healthz", timeout=5).ok and requests.get(second + "/healthz", timeout=5).ok
        logs = first_log.read_text(errors="replace") + second_log.read_text(errors="replace")
    assert "Control socket" not in logs
    assert not [path for path in (*home.rglob("*"), *runtime.rglob("*")) if path.name.endswith(".ctl")]
