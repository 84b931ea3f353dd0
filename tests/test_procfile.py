"""The Procfile's ``web`` and ``worker`` commands, run as a platform would, answer a signed inbound SMS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import GATEWAY_NUMBER, ROOT, free_port, inbound_form, new_sid, settings_env, sign, wait_for

PERSON = "+14155550123"
PUBLIC = "https://sms.example.com"


def procfile_commands() -> dict[str, str]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not line.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


class Process:
    """One Procfile command run with bash in its own process group, its output kept in a file."""

    def __init__(self, name: str, command: str, env: dict[str, str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(["bash", "-c", command], env=env, cwd=ROOT, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


@pytest.fixture
def procfile(redis_server, uponai_server, twilio_server, redis, uponai, twilio, tmp_path):
    """Start ``web`` and ``worker`` with only the settings in their environment; stop them afterwards."""
    port = free_port()
    env = {
        **settings_env(redis_server, uponai_server, twilio_server),
        "PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
    }
    processes: list[Process] = []
    try:
        for name in ("web", "worker"):
            processes.append(Process(name, procfile_commands()[name], env, tmp_path))

        def ready() -> bool:
            for process in processes:
                if process.popen.poll() is not None:
                    raise AssertionError(f"{process.name} exited with {process.popen.returncode}\n"
                                         + "\n".join(p.output() for p in processes))
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout=60, interval=0.2, message="web to answer /readyz with a worker registered")
        yield f"http://127.0.0.1:{port}", processes
    finally:
        for process in processes:
            process.stop()


def post_signed(base_url: str, path: str, form: dict[str, str]) -> requests.Response:
    return requests.post(base_url + path, data=form, headers={"X-Twilio-Signature": sign(PUBLIC + path, form)},
                         timeout=10)


def test_procfile_declares_web_and_worker():
    commands = procfile_commands()
    assert commands["web"].startswith("gunicorn ")
    assert '"gateway:create_app()"' in commands["web"]
    # Address, processes and threads come from the settings (gunicorn.conf.py), not from defaults on this line.
    assert "${" not in commands["web"] and "--bind" not in commands["web"]
    assert commands["worker"] == "sms-gateway worker"


def test_web_and_worker_from_the_procfile_answer_a_signed_sms(procfile, twilio, uponai, redis):
    base_url, processes = procfile
    form = inbound_form("Hello from a phone", from_=PERSON, sid=new_sid())

    response = post_signed(base_url, "/twilio/sms", form)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/xml")
    assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'

    def replied() -> list[str]:
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} died\n{process.output()}")
        return twilio.sent_to(PERSON)

    assert wait_for(replied, timeout=30, message="the reply at the fake Twilio") == ["You said: Hello from a phone"]
    (sent,) = twilio.messages
    assert sent.from_ == GATEWAY_NUMBER
    assert sent.status_callback == f"{PUBLIC}/twilio/status"
    assert [text for _, text in uponai.completion_log] == ["Hello from a phone"]

    # Twilio then reports delivery to the status callback; the web process records it.
    wait_for(lambda: redis.exists(f"smsgw:sent:{sent.sid}"), timeout=10, message="the sent message to be recorded")
    status = {"MessageSid": sent.sid, "MessageStatus": "delivered", "AccountSid": twilio.account_sid,
              "To": PERSON, "From": GATEWAY_NUMBER}
    assert post_signed(base_url, "/twilio/status", status).status_code == 200
    assert redis.hget(f"smsgw:sent:{sent.sid}", "status") == b"delivered"

    unsigned = requests.post(base_url + "/twilio/sms", data=inbound_form("forged", from_=PERSON), timeout=10)
    assert unsigned.status_code == 403
