"""``configure-twilio`` and ``doctor`` against the Twilio simulator, the UponAI simulator and a served gateway."""

from __future__ import annotations

import io
import re
import threading

import pytest
import requests
from werkzeug.serving import make_server

from cli.configure import configure_twilio
from cli.doctor import SELF_TEST_SID, run_doctor
from cli.main import main
from gateway import create_app
from tests.conftest import GATEWAY_NUMBER, free_port, sign

OLD_URL = "https://old.example.com/sms"


@pytest.fixture
def number(twilio):
    return twilio.add_number(GATEWAY_NUMBER, sms_url=OLD_URL, sms_method="GET")


@pytest.fixture
def served(env, redis):
    """The gateway's web app on a real local port, with PUBLIC_BASE_URL pointing at it."""
    port = free_port()
    env = {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    server = make_server("127.0.0.1", port, create_app(env), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield env
    server.shutdown()
    thread.join(timeout=5)


def run(func, *args, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    code = func(*args, out=out, **kwargs)
    return code, out.getvalue()


# -- configure-twilio -----------------------------------------------------------------------------

def test_configure_twilio_points_the_number_at_the_gateway(env, number):
    code, output = run(configure_twilio, env)

    assert code == 0, output
    assert (number.sms_url, number.sms_method) == ("https://sms.example.com/twilio/sms", "POST")
    assert number.status_callback == "https://sms.example.com/twilio/status"
    assert f"GET {OLD_URL}" in output
    assert "-> POST https://sms.example.com/twilio/sms" in output
    assert "-> https://sms.example.com/twilio/status" in output
    assert "Updated at Twilio" in output
    assert "WARNING" not in output

    again, output = run(configure_twilio, env)
    assert again == 0 and "nothing to change" in output


def test_configure_twilio_dry_run_changes_nothing(env, number, twilio):
    code, output = run(configure_twilio, env, dry_run=True)

    assert code == 0
    assert (number.sms_url, number.sms_method) == (OLD_URL, "GET")
    assert "Dry run" in output
    assert [op for op, _ in twilio.requests if op == "update_number"] == []


def test_configure_twilio_other_number_and_url_options(env, twilio):
    other = twilio.add_number("+15005550099")
    code, output = run(configure_twilio, env, number="+15005550099", public_base_url="https://gw.example.org")

    assert code == 0, output
    assert other.sms_url == "https://gw.example.org/twilio/sms"


def test_configure_twilio_warns_when_a_messaging_service_overrides_the_number(env, number, twilio):
    service = twilio.add_service("Support line", phone_numbers=(GATEWAY_NUMBER,),
                                 inbound_request_url="https://elsewhere.example.com/in")
    code, output = run(configure_twilio, env)

    assert code == 0
    assert number.sms_url == "https://sms.example.com/twilio/sms"
    assert "WARNING" in output and service.sid in output and "https://elsewhere.example.com/in" in output
    assert "Defer to sender's webhook" in output

    service.use_inbound_webhook_on_number = True
    _, output = run(configure_twilio, env)
    assert "WARNING" not in output


def test_configure_twilio_with_bad_credentials_says_what_to_check(env, number):
    code, output = run(configure_twilio, {**env, "TWILIO_AUTH_TOKEN": "0" * 32})

    assert code == 1
    assert "401" in output and "TWILIO_AUTH_TOKEN" in output
    assert number.sms_url == OLD_URL
    assert "wrong-token" not in output


def test_configure_twilio_unknown_number_and_missing_settings(env, twilio):
    code, output = run(configure_twilio, env, number="+15005550042")
    assert code == 1 and "no number +15005550042" in output

    missing = {k: v for k, v in env.items() if k not in ("PUBLIC_BASE_URL", "TWILIO_AUTH_TOKEN")}
    code, output = run(configure_twilio, missing)
    assert code == 2
    assert "PUBLIC_BASE_URL" in output and "TWILIO_AUTH_TOKEN is required" in output


def test_configure_twilio_from_the_command_line(env, number, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # no .env here
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    assert main(["configure-twilio", "--dry-run"]) == 0
    assert "Dry run" in capsys.readouterr().out
    assert main(["configure-twilio"]) == 0
    assert number.sms_url == "https://sms.example.com/twilio/sms"


# -- doctor ---------------------------------------------------------------------------------------

def lines_by_check(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition("  ")
        if status.strip() in ("PASS", "FAIL", "WARN", "SKIP"):
            name = rest.strip().split("  ")[0]
            found[name] = status.strip()
    return found


def test_doctor_passes_on_a_working_deployment(served, twilio, uponai, redis):
    twilio.add_number(GATEWAY_NUMBER, sms_url=served["PUBLIC_BASE_URL"] + "/twilio/sms", sms_method="POST")
    code, output = run(run_doctor, served)

    assert code == 0, output
    checks = lines_by_check(output)
    assert checks == {"settings": "PASS", "redis": "PASS", "workers": "WARN", "uponai": "PASS", "twilio": "PASS",
                      "number webhook": "PASS", "webhook self-test": "PASS"}, output
    assert "sms-gateway worker" in output  # what to do about the warning
    assert [r.query.get("limit") for r in uponai.calls("list_chats")] == ["1"]
    # The self-test was acknowledged and left nothing behind.
    assert not list(redis.scan_iter(f"*{SELF_TEST_SID}*"))


def delivered_callbacks(served) -> float:
    """smsgw_status_callbacks_total{status="delivered"} as the gateway's /metrics shows it (0 before the first)."""
    text = requests.get(served["PUBLIC_BASE_URL"] + "/metrics", timeout=10).text
    found = re.search(r'^smsgw_status_callbacks_total\{status="delivered"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_doctor_is_not_counted_as_traffic(served, twilio, uponai):
    """Doctor's signed self-test is acknowledged, but the delivery metrics count only Twilio's callbacks."""
    twilio.add_number(GATEWAY_NUMBER, sms_url=served["PUBLIC_BASE_URL"] + "/twilio/sms", sms_method="POST")
    before = delivered_callbacks(served)
    for _ in range(2):
        code, output = run(run_doctor, served)
        assert code == 0 and "PASS  webhook self-test" in output, output
    assert delivered_callbacks(served) == before

    # A callback of another message still counts (the metric is read the same way).
    url = served["PUBLIC_BASE_URL"] + "/twilio/status"
    form = {"MessageSid": "SM" + "ab" * 16, "MessageStatus": "delivered"}
    answer = requests.post(url, data=form, headers={"X-Twilio-Signature": sign(url, form)}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert delivered_callbacks(served) == before + 1


def test_doctor_fails_when_the_webhook_points_elsewhere(served, twilio):
    twilio.add_number(GATEWAY_NUMBER, sms_url="https://old.example.com/sms", sms_method="POST")
    code, output = run(run_doctor, served)

    assert code == 1
    assert lines_by_check(output)["number webhook"] == "FAIL"
    assert "https://old.example.com/sms" in output and "sms-gateway configure-twilio" in output


def test_doctor_fails_when_a_messaging_service_overrides_the_webhook(served, twilio):
    twilio.add_number(GATEWAY_NUMBER, sms_url=served["PUBLIC_BASE_URL"] + "/twilio/sms", sms_method="POST")
    twilio.add_service("Marketing", phone_numbers=(GATEWAY_NUMBER,), inbound_request_url="https://x.example.com/")
    code, output = run(run_doctor, served)

    assert code == 1
    assert lines_by_check(output)["number webhook"] == "FAIL"
    assert "Marketing" in output


def test_doctor_fails_on_bad_twilio_credentials(served, twilio):
    twilio.add_number(GATEWAY_NUMBER, sms_url=served["PUBLIC_BASE_URL"] + "/twilio/sms", sms_method="POST")
    code, output = run(run_doctor, {**served, "TWILIO_AUTH_TOKEN": "f" * 32})

    assert code == 1
    checks = lines_by_check(output)
    assert checks["twilio"] == "FAIL" and checks["number webhook"] == "SKIP"
    # The served gateway has the right token: a request signed with this one is refused.
    assert checks["webhook self-test"] == "FAIL"
    assert "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN" in output and "same TWILIO_AUTH_TOKEN" in output
    assert "f" * 32 not in output


def test_doctor_fails_on_a_bad_uponai_key_and_unreachable_redis(served, twilio):
    env = {**served, "UPONAI_API_KEY": "wrong-key", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    code, output = run(run_doctor, env)

    assert code == 1
    checks = lines_by_check(output)
    assert checks["uponai"] == "FAIL" and checks["redis"] == "FAIL" and checks["workers"] == "SKIP"
    assert "check UPONAI_API_KEY" in output and "REDIS_URL" in output


def test_doctor_fails_when_the_gateway_is_not_reachable(env, twilio):
    env = {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    twilio.add_number(GATEWAY_NUMBER, sms_url=env["PUBLIC_BASE_URL"] + "/twilio/sms", sms_method="POST")
    code, output = run(run_doctor, env)

    assert code == 1
    assert lines_by_check(output)["webhook self-test"] == "FAIL"
    assert "start the web process" in output


def test_doctor_reports_every_missing_setting(env):
    code, output = run(run_doctor, {k: v for k, v in env.items() if k not in ("UPONAI_API_KEY", "REDIS_URL")})

    assert code == 1
    assert "UPONAI_API_KEY is required" in output and "REDIS_URL is required" in output
    assert set(lines_by_check(output).values()) == {"FAIL", "SKIP"}


@pytest.mark.parametrize("version, old", [("6.0.20", True), ("5.0.14", True), ("6.2.0", False), ("7.0.15", False),
                                          ("10.1", False), ("?", False)])
def test_doctor_names_a_redis_too_old_for_the_accept_script(version, old):
    from cli.doctor import MIN_REDIS_VERSION, version_tuple

    assert (version_tuple(version) < MIN_REDIS_VERSION) is old
