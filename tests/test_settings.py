"""Settings: typed, read from the environment and ``.env``, failing fast with one message, secrets hidden."""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import phonenumbers
import pytest
from markdown_it import MarkdownIt

from config import Settings, SettingsError, load_settings, load_some, read_environment

REQUIRED = ("REDIS_URL", "UPONAI_API_KEY", "UPONAI_AGENT_ID", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")
API_KEY = "uponai-key-Zq81sEcReT"
AUTH_TOKEN = "5ec2e7" + "0" * 22 + "a4b2"
ADMIN_TOKEN = "admin-token-Wm63sEcReT"


def minimal(**overrides: str) -> dict[str, str]:
    env = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "UPONAI_API_KEY": API_KEY,
        "UPONAI_AGENT_ID": "agent_1",
        "UPONAI_WORKSPACE_ID": "7",
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def scrub_environment(monkeypatch) -> None:
    for spec in fields(Settings):
        monkeypatch.delenv(spec.metadata["env"], raising=False)


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(env, dotenv_path=None)
    return caught.value.problems


def test_minimal_settings_get_the_documented_defaults():
    settings = load_settings(minimal(), dotenv_path=None)
    assert isinstance(settings, Settings)
    assert settings.uponai_api_style == "reference"
    assert settings.uponai_workspace_id == 7
    assert settings.uponai_base_url == "https://api.upon-ai.com"
    assert settings.twilio_api_base_url == "https://api.twilio.com"
    assert settings.public_base_url is None
    assert settings.admin_api_token is None
    assert settings.chat_idle_timeout_seconds == 3600
    assert settings.port == 8000
    assert settings.retry_intervals_seconds == (2.0, 10.0, 30.0, 60.0, 120.0)
    assert settings.max_attempts == 6


def test_values_are_typed_and_normalised():
    settings = load_settings(minimal(PORT="9001", UPONAI_API_STYLE=" Guide ", PUBLIC_BASE_URL="https://sms.example.com/",
                                     UPONAI_READ_TIMEOUT_SECONDS="2.5", RETRY_INTERVALS_SECONDS="1, 5,30",
                                     LOG_MESSAGE_BODIES="yes"), dotenv_path=None)
    assert settings.port == 9001
    assert settings.uponai_api_style == "guide"
    assert settings.public_base_url == "https://sms.example.com"  # no trailing slash: signatures use it verbatim
    assert settings.uponai_read_timeout_seconds == 2.5
    assert settings.retry_intervals_seconds == (1.0, 5.0, 30.0)
    assert settings.log_message_bodies is True
    assert load_settings(minimal(LOG_LEVEL=" debug "), dotenv_path=None).log_level == "DEBUG"


def test_every_missing_required_variable_is_named_in_one_error():
    with pytest.raises(SettingsError) as caught:
        load_settings({}, dotenv_path=None)
    message = str(caught.value)
    for name in (*REQUIRED, "UPONAI_WORKSPACE_ID"):
        assert name in message
    assert len(caught.value.problems) == len(REQUIRED) + 1


def test_blank_values_count_as_missing():
    problems = problems_of(minimal(UPONAI_AGENT_ID="   ", TWILIO_ACCOUNT_SID=""))
    assert problems == ["UPONAI_AGENT_ID is required but not set", "TWILIO_ACCOUNT_SID is required but not set"]


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("UPONAI_BASE_URL", "api.upon-ai.com", "http(s) URL"),
    ("TWILIO_API_BASE_URL", "ftp://api.twilio.com", "http(s) URL"),
    ("PUBLIC_BASE_URL", "https://", "http(s) URL"),
    ("REDIS_URL", "localhost:6379", "redis://"),
    ("PORT", "eighty", "whole number"),
    ("PORT", "70000", "between 1 and 65535"),
    ("UPONAI_WORKSPACE_ID", "1.5", "whole number"),
    ("UPONAI_WORKSPACE_ID", "0", "positive"),
    ("CHAT_IDLE_TIMEOUT_SECONDS", "-5", "positive"),
    ("UPONAI_READ_TIMEOUT_SECONDS", "0", "positive number"),
    ("UPONAI_READ_TIMEOUT_SECONDS", "inf", "positive number"),
    ("TWILIO_TIMEOUT_SECONDS", "soon", "number"),
    ("RETRY_INTERVALS_SECONDS", "1,x,3", "comma-separated"),
    ("RETRY_INTERVALS_SECONDS", "1,nan", "comma-separated"),
    ("LOG_MESSAGE_BODIES", "maybe", "true or false"),
    ("LOG_LEVEL", "verbose", "DEBUG, INFO"),
    ("GUNICORN_ACCESS_LOG", "2", "true or false"),
    ("UPONAI_API_STYLE", "openapi", "reference, guide"),
    ("DEFAULT_PHONE_REGION", "USA", "ISO 3166"),
    ("DEFAULT_PHONE_REGION", "XX", "ISO 3166"),
    ("DEFAULT_PHONE_REGION", "001", "ISO 3166"),  # phonenumbers' non-geographic entity, not a region
    ("EVENTS_WEBHOOK_URL", "ops.example.com/events", "http(s) URL"),
    ("EVENTS_INCLUDE_BODIES", "some", "true or false"),
    ("EVENTS_RETRY_INTERVALS_SECONDS", "5,1.5", "whole seconds"),
    ("EVENTS_RETRY_INTERVALS_SECONDS", "5,-1", "whole seconds"),
    ("EVENTS_TIMEOUT_SECONDS", "0", "positive number"),
    ("SMS_MAX_SEGMENTS", "30", "over Twilio's 1600 limit"),  # 30 GSM-7 segments: 4590 characters
    ("SMS_MAX_SEGMENTS", "11", "1683 characters"),
    ("RETRY_AFTER_MAX_SECONDS", "0", "positive number"),
])
def test_an_invalid_value_is_named_with_the_reason(name, value, reason):
    problems = problems_of(minimal(**{name: value}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{name}={value!r} is invalid")
    assert reason in problems[0]


def test_default_phone_region_is_any_region_phonenumbers_supports():
    assert load_settings(minimal(), dotenv_path=None).default_phone_region is None
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        assert load_settings(minimal(DEFAULT_PHONE_REGION=region), dotenv_path=None).default_phone_region == region
    assert load_settings(minimal(DEFAULT_PHONE_REGION=" gb "), dotenv_path=None).default_phone_region == "GB"


def test_every_invalid_and_missing_variable_is_reported_together():
    problems = problems_of(minimal(PORT="x", UPONAI_BASE_URL="nope", UPONAI_API_KEY=None, TWILIO_AUTH_TOKEN=None))
    named = {problem.split("=")[0].split(" ")[0] for problem in problems}
    assert named == {"PORT", "UPONAI_BASE_URL", "UPONAI_API_KEY", "TWILIO_AUTH_TOKEN"}


def test_guide_style_needs_no_workspace():
    settings = load_settings(minimal(UPONAI_API_STYLE="guide", UPONAI_WORKSPACE_ID=None), dotenv_path=None)
    assert settings.uponai_api_style == "guide"
    assert settings.uponai_workspace_id is None


def test_reference_style_needs_a_workspace():
    for env in (minimal(UPONAI_WORKSPACE_ID=None), minimal(UPONAI_API_STYLE="reference", UPONAI_WORKSPACE_ID="")):
        assert problems_of(env) == ["UPONAI_WORKSPACE_ID is required but not set: UPONAI_API_STYLE reference (the "
                                    "default) needs the workspace's integer id (or set UPONAI_API_STYLE=guide)"]


VALID_SID = "AC" + "0123456789abcdef" * 2
VALID_TOKEN = "0123456789abcdef" * 2


@pytest.mark.parametrize(("name", "value", "verdict"), [
    ("TWILIO_ACCOUNT_SID", VALID_SID, None),
    ("TWILIO_ACCOUNT_SID", " AC" + "0123456789ABCDEF" * 2 + " ", None),  # hex in either case, spaces trimmed
    ("TWILIO_ACCOUNT_SID", "foo", "TWILIO_ACCOUNT_SID='foo' is invalid: must be an Account SID: AC followed by "
                                  "32 hex digits (Twilio console)"),
    ("TWILIO_ACCOUNT_SID", VALID_SID[:-1], "is invalid: must be an Account SID"),  # one digit short
    ("TWILIO_ACCOUNT_SID", VALID_SID + "0", "is invalid: must be an Account SID"),  # one digit too many
    ("TWILIO_ACCOUNT_SID", "ac" + VALID_SID[2:], "is invalid: must be an Account SID"),
    ("TWILIO_ACCOUNT_SID", "SK" + VALID_SID[2:], "is invalid: must be an Account SID"),  # an API key's sid
    ("TWILIO_ACCOUNT_SID", "AC" + "g" * 32, "is invalid: must be an Account SID"),
    ("TWILIO_AUTH_TOKEN", VALID_TOKEN, None),
    ("TWILIO_AUTH_TOKEN", VALID_TOKEN[:31], "TWILIO_AUTH_TOKEN=(hidden) is invalid: must be the account's auth "
                                            "token: 32 hex characters (Twilio console, Account Info)"),
    ("TWILIO_AUTH_TOKEN", "short", "TWILIO_AUTH_TOKEN=(hidden) is invalid"),
    ("TWILIO_AUTH_TOKEN", VALID_TOKEN[:31] + "z", "TWILIO_AUTH_TOKEN=(hidden) is invalid"),
    ("TWILIO_AUTH_TOKEN", VALID_SID, "TWILIO_AUTH_TOKEN=(hidden) is invalid"),  # the sid pasted as the token
    ("TWILIO_AUTH_TOKEN_PREVIOUS", VALID_TOKEN, None),
    ("TWILIO_AUTH_TOKEN_PREVIOUS", "old-token", "TWILIO_AUTH_TOKEN_PREVIOUS=(hidden) is invalid: must be the "
                                                "account's auth token: 32 hex characters"),
    ("TWILIO_MESSAGING_SERVICE_SID", "MG" + VALID_TOKEN, None),
    ("TWILIO_MESSAGING_SERVICE_SID", VALID_SID, "TWILIO_MESSAGING_SERVICE_SID='" + VALID_SID + "' is invalid: must "
                                                "be a Messaging Service SID: MG followed by 32 hex digits"),
])
def test_twilio_credentials_and_sids_are_held_to_twilios_formats(name, value, verdict):
    env = minimal(**{name: value})
    if verdict is None:
        settings = load_settings(env, dotenv_path=None)
        assert getattr(settings, name.lower()) == value.strip()
    else:
        problems = problems_of(env)
        assert len(problems) == 1 and verdict in problems[0], problems
        assert not (name.startswith("TWILIO_AUTH") and value in problems[0])  # a secret, even a wrong one


def test_an_unknown_style_is_reported_once_without_a_workspace_complaint():
    problems = problems_of(minimal(UPONAI_API_STYLE="v3", UPONAI_WORKSPACE_ID=None))
    assert problems == ["UPONAI_API_STYLE='v3' is invalid: must be one of reference, guide"]


def test_secrets_never_appear_in_repr():
    settings = load_settings(minimal(ADMIN_API_TOKEN=ADMIN_TOKEN), dotenv_path=None)
    shown = repr(settings) + str(settings)
    for secret in (API_KEY, AUTH_TOKEN, ADMIN_TOKEN):
        assert secret not in shown
    assert "agent_1" in shown  # the rest is still there to read
    assert settings.admin_api_token == ADMIN_TOKEN


def test_a_password_in_the_redis_url_is_masked():
    settings = load_settings(minimal(REDIS_URL="rediss://default:hunter2-Redis@redis.example.com:6380/0"),
                             dotenv_path=None)
    assert "hunter2-Redis" not in repr(settings)
    assert "rediss://default:***@redis.example.com:6380/0" in repr(settings)
    assert settings.redis_url.endswith("hunter2-Redis@redis.example.com:6380/0")
    problems = problems_of(minimal(REDIS_URL="http://:hunter2-Redis@redis.example.com"))
    assert "hunter2-Redis" not in "".join(problems)
    assert problems[0].startswith("REDIS_URL='http://:***@redis.example.com' is invalid")


@pytest.mark.parametrize("name", ["UPONAI_API_KEY", "TWILIO_AUTH_TOKEN", "ADMIN_API_TOKEN"])
def test_an_invalid_secret_is_named_but_never_shown(name):
    bad = "s3cret-with a-space-Xy9"  # would only break later, inside an HTTP header
    with pytest.raises(SettingsError) as caught:
        load_settings(minimal(**{name: bad}), dotenv_path=None)
    message = str(caught.value)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name}=(hidden) is invalid: must be ")
    assert "s3cret" not in message and "Xy9" not in message
    assert "s3cret" not in repr(caught.value)


@pytest.mark.parametrize("short", ["x", "hunter2", "fifteen-chars-1"])
def test_a_short_admin_token_is_refused_at_start_up(short):
    with pytest.raises(SettingsError) as caught:
        load_settings(minimal(ADMIN_API_TOKEN=short), dotenv_path=None)
    [problem] = caught.value.problems
    assert problem.startswith("ADMIN_API_TOKEN=(hidden) is invalid: must be at least 16 characters")
    assert short not in str(caught.value).replace("ADMIN_API_TOKEN", "")
    assert load_settings(minimal(ADMIN_API_TOKEN="sixteen-chars-12"), dotenv_path=None).admin_api_token


def test_dotenv_supplies_what_the_environment_lacks(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    lines = [f"{name}={value}" for name, value in minimal(PORT="9100", UPONAI_AGENT_ID="from_dotenv").items()]
    dotenv.write_text("# local development\n" + "\n".join(lines) + "\n")
    scrub_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)

    settings = load_settings()
    assert settings.uponai_agent_id == "from_dotenv"
    assert settings.port == 9100


def test_the_environment_wins_over_dotenv(tmp_path, monkeypatch):
    dotenv = tmp_path / "custom.env"
    dotenv.write_text("\n".join(f"{k}={v}" for k, v in minimal(PORT="9100", UPONAI_AGENT_ID="from_dotenv").items()))
    scrub_environment(monkeypatch)
    monkeypatch.setenv("UPONAI_AGENT_ID", "from_environment")

    settings = load_settings(dotenv_path=str(dotenv))
    assert settings.uponai_agent_id == "from_environment"
    assert settings.port == 9100


def test_no_dotenv_file_is_fine_and_an_explicit_mapping_ignores_it(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("UPONAI_AGENT_ID=from_dotenv\n")
    scrub_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert load_settings(minimal()).uponai_agent_id == "agent_1"  # a mapping given is the whole truth
    with pytest.raises(SettingsError, match="UPONAI_API_KEY is required"):
        load_settings(dotenv_path=str(tmp_path / "missing.env"))


def test_check_settings_command_exits_2_naming_every_missing_variable(tmp_path):
    command = Path(sys.executable).with_name("sms-gateway")
    result = subprocess.run([str(command), "check-settings"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "UPONAI_API_KEY": API_KEY})
    assert result.returncode == 2, result.stderr
    for name in (*REQUIRED, "UPONAI_WORKSPACE_ID"):
        if name != "UPONAI_API_KEY":
            assert f"{name} is required" in result.stderr
    assert "UPONAI_API_KEY" not in result.stderr
    assert API_KEY not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_check_settings_command_shows_settings_without_secrets(tmp_path):
    command = Path(sys.executable).with_name("sms-gateway")
    env = {"PATH": "/usr/bin:/bin", **minimal(ADMIN_API_TOKEN=ADMIN_TOKEN)}
    result = subprocess.run([str(command), "check-settings"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "settings ok:"
    # One setting per line, NAME = value, every setting of docs/settings.md's table, each once.
    shown = dict(line.strip().split(" = ", 1) for line in lines[1:])
    assert [name.strip() for name in shown] == [spec.metadata["env"] for spec in fields(Settings)]
    shown = {name.strip(): value for name, value in shown.items()}
    assert shown["UPONAI_AGENT_ID"] == "agent_1"
    assert shown["RETRY_INTERVALS_SECONDS"] == "2,10,30,60,120"
    assert shown["LOG_MESSAGE_BODIES"] == "false"
    assert shown["TWILIO_FROM_NUMBER"] == "(not set)"
    for secret_name in ("UPONAI_API_KEY", "TWILIO_AUTH_TOKEN", "ADMIN_API_TOKEN"):
        assert shown[secret_name] == "(set, hidden)"
    assert shown["TWILIO_AUTH_TOKEN_PREVIOUS"] == "(not set)"
    for secret in (API_KEY, AUTH_TOKEN, ADMIN_TOKEN):
        assert secret not in result.stdout + result.stderr


def test_check_settings_masks_the_password_in_redis_url(tmp_path):
    command = Path(sys.executable).with_name("sms-gateway")
    env = {"PATH": "/usr/bin:/bin", **minimal(REDIS_URL="redis://user:hunter2pw@redis.example.com:6380/1")}
    result = subprocess.run([str(command), "check-settings"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "REDIS_URL" in result.stdout and "= redis://user:***@redis.example.com:6380/1\n" in result.stdout
    assert "hunter2pw" not in result.stdout


# -- a few settings only, and the environment for child processes ---------------------------------

def test_load_some_parses_only_the_named_variables_like_load_settings():
    values, problems = load_some(("PORT", "PUBLIC_BASE_URL", "LOG_MESSAGE_BODIES"),
                                 {"PUBLIC_BASE_URL": "https://sms.example.com/", "LOG_MESSAGE_BODIES": "on"})
    assert problems == []  # the required variables of a whole deployment are not asked for
    assert values == {"port": 8000, "public_base_url": "https://sms.example.com", "log_message_bodies": True}

    values, problems = load_some(("TWILIO_AUTH_TOKEN", "TWILIO_TIMEOUT_SECONDS", "UPONAI_AGENT_ROUTES"),
                                 {"TWILIO_TIMEOUT_SECONDS": "soon"})
    assert problems == ["TWILIO_AUTH_TOKEN is required but not set",
                        "TWILIO_TIMEOUT_SECONDS='soon' is invalid: must be a number"]
    assert values["uponai_agent_routes"] == {}
    with pytest.raises(KeyError, match="NOT_A_SETTING"):
        load_some(("PORT", "NOT_A_SETTING"), {})


def test_load_some_and_read_environment_take_dotenv_under_the_environment(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("PORT=9100\nLOG_LEVEL=debug\nSANDBOX_DATA_DIR=/tmp/elsewhere\n")
    scrub_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_LEVEL", "warning")

    values, problems = load_some(("PORT", "LOG_LEVEL"))
    assert (values, problems) == ({"port": 9100, "log_level": "WARNING"}, [])
    environment = read_environment()
    assert environment["SANDBOX_DATA_DIR"] == "/tmp/elsewhere" and environment["LOG_LEVEL"] == "warning"


def settings_table() -> dict[str, str]:
    """docs/settings.md's table, as it renders (markdown-it-py, GFM tables): each variable's default cell."""
    tokens = MarkdownIt("commonmark").enable("table").parse(
        (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text())
    rows, row = [], None
    for token in tokens:
        if token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            rows.append(row)
            row = None
    assert rows and rows[0] == ["variable", "meaning", "default"], rows[:1]
    return {name: default for names, _meaning, default in rows[1:] for name in re.findall(r"`([A-Z0-9_]+)`", names)}


def documented_default(value) -> str:
    """How the table writes a default: numbers without a trailing .0, lists comma-separated, flags in lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(documented_default(item) for item in value)
    return str(value)


def test_every_setting_is_in_the_settings_table_with_its_default():
    """Every setting the code reads has a row in docs/settings.md (linked from the README) that states its
    default: the default itself where there is one (a long text by its start), else what applies instead."""
    table = settings_table()
    missing = [spec.metadata["env"] for spec in fields(Settings) if spec.metadata["env"] not in table]
    assert missing == []
    wrong = []
    for spec in fields(Settings):
        cell = table[spec.metadata["env"]].replace("`", "")
        if spec.metadata["required"]:
            ok = cell.startswith("required")
        elif spec.default in (None, (), MISSING) or spec.default == {}:
            ok = bool(cell.strip())  # unset, none, off: said in words
        elif isinstance(spec.default, str) and len(spec.default) > 30:
            ok = spec.default[:25] in cell.strip('"')  # a long text, quoted by its start
        else:
            ok = re.search(rf"(?<![\w.,]){re.escape(documented_default(spec.default))}(?![\w.,])", cell) is not None
        if not ok:
            wrong.append((spec.metadata["env"], spec.default, cell))
    assert wrong == []


def test_an_events_webhook_needs_a_standard_webhooks_secret():
    assert problems_of(minimal(EVENTS_WEBHOOK_URL="https://ops.example.com/events")) == [
        "EVENTS_WEBHOOK_SECRET is required when EVENTS_WEBHOOK_URL is set (events are signed with it)"]
    short = "whsec_" + base64.b64encode(b"s" * 16).decode()
    for secret, why in (("s" * 40, "does not start with whsec_"), ("whsec_not*base64*at*all", "is not base64"),
                        (short, "holds 16 bytes, not 24 to 64")):
        [problem] = problems_of(minimal(EVENTS_WEBHOOK_URL="https://ops.example.com/events",
                                        EVENTS_WEBHOOK_SECRET=secret))
        assert problem.startswith("EVENTS_WEBHOOK_SECRET=(hidden) is invalid: must be a Standard Webhooks secret, "
                                  "whsec_ followed by 24 to 64 random bytes in base64; this one " + why), problem
        assert secret not in problem
        # The message says how to make one; what it says makes one that is taken.
        recipe = problem.split("Make one with: ", 1)[1]
        made = subprocess.run(shlex.split(recipe), capture_output=True, text=True, timeout=60, check=True).stdout
        assert load_settings(minimal(EVENTS_WEBHOOK_URL="https://ops.example.com/events",
                                     EVENTS_WEBHOOK_SECRET=made.strip()), dotenv_path=None).events_webhook_secret
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode().rstrip("=")  # unpadded, as some services print it
    settings = load_settings(minimal(EVENTS_WEBHOOK_URL="https://ops.example.com/events/",
                                     EVENTS_WEBHOOK_SECRET=secret), dotenv_path=None)
    assert settings.events_webhook_url == "https://ops.example.com/events/"  # kept as given
    assert secret not in repr(settings)
    assert not settings.events_include_bodies and settings.events_retry_intervals_seconds == (5, 30, 120, 600, 1800)
    assert settings.events_worker_threads == 2


def test_help_is_plain_text_listing_every_command(tmp_path):
    command = Path(sys.executable).with_name("sms-gateway")
    result = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "`" not in result.stdout  # no reST quoting shown literally
    for name in ("worker", "run", "check-settings", "configure-twilio", "doctor", "send", "show", "failed"):
        assert f"\n    {name} " in result.stdout, name
    assert ".env" in result.stdout


def test_an_unknown_log_level_option_is_a_usage_error_not_a_traceback(tmp_path):
    command = Path(sys.executable).with_name("sms-gateway")
    result = subprocess.run([str(command), "--log-level", "loud", "worker"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **minimal()})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--log-level" in result.stderr and "LOUD" in result.stderr and "DEBUG" in result.stderr
    assert subprocess.run([str(command), "--log-level", "warning", "check-settings"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **minimal()}).returncode == 0


def test_web_processes_and_threads_are_settings_with_their_defaults():
    settings = load_settings(minimal(), dotenv_path=None)
    assert (settings.web_concurrency, settings.web_threads, settings.admin_max_waiting) == (2, 4, 2)
    settings = load_settings(minimal(WEB_CONCURRENCY="3", WEB_THREADS="16", ADMIN_MAX_WAITING="15"), dotenv_path=None)
    assert (settings.web_concurrency, settings.web_threads, settings.admin_max_waiting) == (3, 16, 15)


@pytest.mark.parametrize(("overrides", "shown"), [
    ({"ADMIN_MAX_WAITING": "4"}, "ADMIN_MAX_WAITING=4 is invalid: it must be less than WEB_THREADS=4"),
    ({"ADMIN_MAX_WAITING": "9"}, "ADMIN_MAX_WAITING=9 is invalid: it must be less than WEB_THREADS=4"),
    ({"WEB_THREADS": "2"}, "ADMIN_MAX_WAITING=2 is invalid: it must be less than WEB_THREADS=2"),
    ({"WEB_THREADS": "1", "ADMIN_MAX_WAITING": "5"}, "ADMIN_MAX_WAITING=5 is invalid: it must be less than "
                                                     "WEB_THREADS=1"),
])
def test_admin_requests_may_not_wait_on_every_web_thread(overrides, shown):
    (problem,) = problems_of(minimal(**overrides))
    assert problem.startswith(shown) and "Twilio's webhooks" in problem


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("WEB_THREADS", "0", "must be a positive whole number"), ("WEB_THREADS", "four", "must be a whole number"),
    ("WEB_CONCURRENCY", "0", "must be a positive whole number"), ("WEB_CONCURRENCY", "-2", "must be a positive"),
])
def test_web_processes_and_threads_must_be_positive(name, value, reason):
    (problem,) = problems_of(minimal(**{name: value}))
    assert problem.startswith(f"{name}='{value}' is invalid: {reason}")


# Numbers and phonenumbers' verdicts on them (asserted below, so the data cannot go stale): +15005550006 and
# +15005550007 are Twilio's magic test numbers (Twilio docs, "Test credentials"); +12015550123 and +447400123456
# are phonenumbers' own example numbers for US and GB (example_number_for_type); +15551234567 (the 555-1234
# range) and +1500555000 (one digit short) are numbers it calls invalid.
VALID_NUMBERS = ("+15005550006", "+15005550007", "+12015550123", "+447400123456")
INVALID_NUMBERS = ("+15551234567", "+1500555000")


def test_the_numbers_used_here_get_the_verdicts_phonenumbers_gives():
    assert all(phonenumbers.is_valid_number(phonenumbers.parse(number)) for number in VALID_NUMBERS)
    assert not any(phonenumbers.is_valid_number(phonenumbers.parse(number)) for number in INVALID_NUMBERS)
    assert phonenumbers.format_number(phonenumbers.example_number_for_type("US", phonenumbers.PhoneNumberType.MOBILE),
                                      phonenumbers.PhoneNumberFormat.E164) == "+12015550123"


def test_valid_gateway_numbers_are_taken():
    settings = load_settings(minimal(TWILIO_FROM_NUMBER="+15005550006",
                                     GATEWAY_NUMBERS="+12015550123, whatsapp:+447400123456, messenger:1234567",
                                     UPONAI_AGENT_ROUTES="+15005550007=agent_sales,whatsapp:+15005550006=agent_wa"),
                             dotenv_path=None)
    assert settings.own_numbers() == ("+15005550006", "+15005550007", "whatsapp:+15005550006", "+12015550123",
                                      "whatsapp:+447400123456", "messenger:1234567")


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("TWILIO_FROM_NUMBER", "+15551234567",
     "TWILIO_FROM_NUMBER='+*********67' is invalid: is not a valid phone number (checked with the phonenumbers"),
    ("TWILIO_FROM_NUMBER", "+1500555000",
     "TWILIO_FROM_NUMBER='+********00' is invalid: is not a valid phone number"),
    ("TWILIO_FROM_NUMBER", "15005550006",
     "TWILIO_FROM_NUMBER='********06' is invalid: must be in E.164 form, + and country code"),
    ("TWILIO_FROM_NUMBER", "+1 500-555-0006",
     "TWILIO_FROM_NUMBER='+************06' is invalid: must be in E.164 form, + and country code and digits only"),
    ("TWILIO_FROM_NUMBER", "+999123", "TWILIO_FROM_NUMBER='+****23' is invalid: is not a phone number"),
    ("GATEWAY_NUMBERS", "+15005550007,+15551234567",
     "GATEWAY_NUMBERS='+*********07,+*********67' is invalid: +*********67 is not a valid phone number"),
    ("GATEWAY_NUMBERS", "whatsapp:+1500555000",
     "GATEWAY_NUMBERS='whatsapp:+********00' is invalid: whatsapp:+********00 is not a valid phone number"),
    ("UPONAI_AGENT_ROUTES", "+15005550007=agent_sales,+15551234567=agent_support",
     "UPONAI_AGENT_ROUTES='+*********07=agent_sales,+*********67=agent_support' is invalid: +*********67 is not a "
     "valid phone number"),
    ("UPONAI_AGENT_ROUTES", "15005550007=agent_sales",
     "UPONAI_AGENT_ROUTES='********07=agent_sales' is invalid: ********07 must be in E.164 form"),
])
def test_a_number_phonenumbers_calls_invalid_stops_start_up_named_and_masked(name, value, problem):
    (found,) = problems_of(minimal(**{name: value}))
    assert found.startswith(problem), found
    for number in re.findall(r"[0-9]{6,}", value.replace(" ", "").replace("-", "")):
        assert number[:-2] not in found  # masked as the logs mask it: the last two digits only


def test_every_bad_number_is_reported_together():
    problems = problems_of(minimal(TWILIO_FROM_NUMBER="+15551234567", GATEWAY_NUMBERS="+1500555000",
                                   UPONAI_AGENT_ROUTES="+15551234567=agent_sales", WEB_THREADS="0"))
    assert [problem.split("=")[0] for problem in problems] == ["TWILIO_FROM_NUMBER", "WEB_THREADS",
                                                              "UPONAI_AGENT_ROUTES", "GATEWAY_NUMBERS"]
