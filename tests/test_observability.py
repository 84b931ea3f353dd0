"""Metrics and logs: /metrics counts move when messages flow (one process and gunicorn with several), and
logs are JSON lines with no full phone number and no message body."""

from __future__ import annotations

import io
import json
import logging
import runpy
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import JsonLogFormatter, configure_logging, mask_numbers
from sandbox.httpfake import Fault
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, ROOT, free_port, inbound_form, post_signed, sign, wait_for

PERSON = "+14155550163"
SECRET_BODY = "my card number is purple elephant"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(page: dict, name: str, **labels) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


# -- logs -----------------------------------------------------------------------------------------

def log_line(formatter: JsonLogFormatter, message: str, *args, exc_info=None, **extra) -> dict:
    record = logging.LogRecord("workers.flow", logging.INFO, __file__, 1, message, args, exc_info)
    for key, item in extra.items():
        setattr(record, key, item)
    line = formatter.format(record)
    assert "\n" not in line
    return json.loads(line)


def test_log_lines_are_json_with_ids_and_masked_numbers():
    entry = log_line(JsonLogFormatter(log_bodies=False),
                     "message=%s conversation=%s chat=%s to=%s", "SM123", "abc", "chat_1", "+14155550100")

    assert set(entry) >= {"ts", "level", "logger", "message"}
    assert entry["level"] == "info" and entry["logger"] == "workers.flow" and entry["ts"].endswith("Z")
    assert entry["message_sid"] == "SM123" and entry["conversation_id"] == "abc" and entry["chat_id"] == "chat_1"
    assert "+14155550100" not in entry["message"] and entry["message"].endswith("00")


@pytest.mark.parametrize("log_bodies", [False, True])
def test_a_failed_jobs_arguments_never_reach_a_log(log_bodies):
    """RQ logs a failed job with ``extra={"func", "arguments", "kwargs", "queue", "job_id"}``: an event job's arguments
    hold a person's words (issue 22, item 7). They are left out even with LOG_MESSAGE_BODIES on."""
    event = {"type": "handoff.message_received", "text": SECRET_BODY}
    entry = log_line(JsonLogFormatter(log_bodies=log_bodies), "Worker w: job j: exception raised while executing (%s)",
                     "workers.events.deliver", func="workers.events.deliver", arguments=(event, "evt-1"),
                     kwargs={"text": SECRET_BODY}, queue="sms-events", job_id="j")
    assert "arguments" not in entry and "kwargs" not in entry and SECRET_BODY not in json.dumps(entry)
    assert entry["func"] == "workers.events.deliver" and entry["queue"] == "sms-events"


def test_numbers_are_masked_everywhere_and_bodies_only_when_asked():
    text = "GET /admin/conversations/%2B14155550100 whatsapp:+447700900123 took 1500 ms, sid SM1234567890"
    masked = mask_numbers(text)
    assert "14155550100" not in masked and "447700900123" not in masked
    assert "1500 ms" in masked and "SM1234567890" in masked

    quiet = log_line(JsonLogFormatter(log_bodies=False), "turn done", body=SECRET_BODY, number="+14155550100")
    assert "body" not in quiet and "14155550100" not in json.dumps(quiet)
    loud = log_line(JsonLogFormatter(log_bodies=True), "turn done", body=SECRET_BODY)
    assert loud["body"] == SECRET_BODY

    try:
        raise ValueError("bad number +14155550100")
    except ValueError:
        failed = log_line(JsonLogFormatter(log_bodies=False), "failed", exc_info=sys.exc_info())
    assert "ValueError" in failed["exc"] and "14155550100" not in failed["exc"]


def test_the_formatter_takes_body_logging_from_its_caller_not_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOG_MESSAGE_BODIES", "true")  # only Settings reads it; the entry point hands it in
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("LOG_MESSAGE_BODIES=true\n")
    assert "body" not in log_line(JsonLogFormatter(log_bodies=False), "turn done", body=SECRET_BODY)


def gunicorn_conf(monkeypatch, tmp_path, **variables: str) -> dict:
    """What ./gunicorn.conf.py defines when gunicorn reads it with ``variables`` in the environment."""
    for name in ("LOG_LEVEL", "GUNICORN_ACCESS_LOG", "LOG_MESSAGE_BODIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # restored after the test
    # It checks every setting (a web process needs them all), then takes the log settings.
    required = {"REDIS_URL": "redis://127.0.0.1:6379/0", "UPONAI_API_KEY": "key", "UPONAI_AGENT_ID": "agent",
                "UPONAI_WORKSPACE_ID": "1", "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    for name, item in {**required, **variables}.items():
        monkeypatch.setenv(name, item)
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_conf_takes_log_settings_through_config(monkeypatch, tmp_path):
    conf = gunicorn_conf(monkeypatch, tmp_path, LOG_MESSAGE_BODIES="yes", LOG_LEVEL="debug", GUNICORN_ACCESS_LOG="1")
    logging_config = conf["logconfig_dict"]
    assert logging_config["formatters"]["json"]["log_bodies"] is True
    assert logging_config["root"]["level"] == "DEBUG"
    assert logging_config["loggers"]["gunicorn.access"]["level"] == "INFO"
    assert (tmp_path / "metrics").is_dir()

    quiet = gunicorn_conf(monkeypatch, tmp_path)["logconfig_dict"]
    assert quiet["formatters"]["json"]["log_bodies"] is False and quiet["root"]["level"] == "INFO"
    assert quiet["loggers"]["gunicorn.access"]["level"] == "WARNING"

    with pytest.raises(SystemExit) as stopped:
        gunicorn_conf(monkeypatch, tmp_path, LOG_LEVEL="loud")
    assert "LOG_LEVEL='loud' is invalid" in str(stopped.value.code)


def test_configure_logging_sends_every_logger_through_the_json_formatter():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", log_bodies=False, stream=stream)
        logging.getLogger("rq.worker").info("job=%s done for %s", "j1", "+14155550100")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    entry = json.loads(stream.getvalue().strip())
    assert entry["job_id"] == "j1" and "14155550100" not in entry["message"]


# -- metrics in one process -----------------------------------------------------------------------

def test_metrics_count_webhooks_duplicates_and_status_callbacks(client):
    before = samples(client.get("/metrics").get_data(as_text=True))
    form = inbound_form("hello", from_=PERSON)
    for _ in range(2):
        assert post_signed(client, "/twilio/sms", form).status_code == 200
    post_signed(client, "/twilio/sms", inbound_form("", from_=PERSON, NumMedia="1", MediaUrl0="https://x/y.png"))
    post_signed(client, "/twilio/status", {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"})
    client.post("/twilio/sms", data=inbound_form("forged"))  # unsigned: 403

    page = client.get("/metrics")
    assert page.status_code == 200 and page.content_type.startswith("text/plain")
    after = samples(page.get_data(as_text=True))

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("smsgw_messages_in_total", kind="sms") == 1
    assert moved("smsgw_messages_in_total", kind="mms") == 1
    assert moved("smsgw_duplicates_dropped_total") == 1
    assert moved("smsgw_status_callbacks_total", status="delivered") == 1
    assert moved("smsgw_webhook_seconds_count", route="/twilio/sms", status="200") == 3
    assert moved("smsgw_webhook_seconds_count", route="/twilio/sms", status="403") == 1
    # One person's two texts wait for one drain job (the second joins the job still in the queue).
    assert value(after, "smsgw_queue_depth") >= 1 and value(after, "smsgw_redis_up") == 1


# -- gunicorn with several processes and a worker sharing the metrics directory --------------------

@pytest.fixture
def gunicorn_web(env, redis, tmp_path):
    """The web process as deployed: gunicorn (2 processes, ./gunicorn.conf.py) with a multiprocess metrics dir."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    log_path = tmp_path / "web.log"
    process_env = {"PATH": str(ROOT / ".venv" / "bin") + ":/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                   "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "gateway:create_app()", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--threads", "2", "--worker-class", "gthread"],
            cwd=ROOT, env=process_env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        if process.poll() is not None:
            raise AssertionError("gunicorn exited:\n" + log_path.read_text())
        try:
            return requests.get(url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(up, timeout=30, message="gunicorn to answer")
    yield url, metrics_dir, log_path
    process.terminate()
    process.wait(timeout=30)


def post_to(url: str, path: str, form: dict) -> requests.Response:
    signature = sign("https://sms.example.com" + path, form)
    return requests.post(url + path, data=form, headers={"X-Twilio-Signature": signature}, timeout=5)


def test_first_webhooks_of_a_fresh_gunicorn_all_succeed_under_concurrency(gunicorn_web, redis):
    """Issue 10.9: the first requests of each web process used to race to build its metrics (500s)."""
    url, _metrics_dir, web_log = gunicorn_web
    forms = [inbound_form(f"first {i}", from_=f"+1415555{i:04d}") for i in range(12)]
    start = threading.Barrier(len(forms))

    def post(form):
        start.wait(10)
        return post_to(url, "/twilio/sms", form).status_code

    with ThreadPoolExecutor(len(forms)) as pool:
        statuses = list(pool.map(post, forms))
    assert statuses == [200] * len(forms), web_log.read_text()
    assert "DuplicateTimeseries" not in web_log.read_text()


def test_metrics_sum_gunicorn_processes_and_workers_and_logs_stay_clean(gunicorn_web, start_worker_processes, uponai,
                                                                        twilio):
    url, metrics_dir, web_log = gunicorn_web
    pool = start_worker_processes(1, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    uponai.inject("complete", Fault(status=500))
    twilio.inject("send", Fault(status=429))

    first = inbound_form(SECRET_BODY, from_=PERSON)
    assert post_to(url, "/twilio/sms", first).status_code == 200
    assert post_to(url, "/twilio/sms", first).status_code == 200  # Twilio's retry: a duplicate
    picture = inbound_form("", from_=PERSON, NumMedia="1", MediaUrl0="https://api.twilio.com/media/1",
                           MediaContentType0="image/jpeg")
    assert post_to(url, "/twilio/sms", picture).status_code == 200
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, timeout=30, message="reply and MMS notice")

    def scrape() -> dict:
        return samples(requests.get(url + "/metrics", timeout=5).text)

    # The worker counts a send once Twilio has answered it, and a job once it has returned.
    wait_for(lambda: value(scrape(), "smsgw_messages_out_total") == 2
             and value(scrape(), "smsgw_job_seconds_count", kind="conversation", job="drain", outcome="ok") >= 1,
             timeout=20, message="the worker's metrics")
    # Both gunicorn processes report the same sums (the worker's values included), whichever answers.
    pages = [scrape() for _ in range(6)]
    page = pages[-1]
    assert all(value(p, "smsgw_messages_in_total", kind="sms") == 1 for p in pages)
    assert value(page, "smsgw_messages_in_total", kind="mms") == 1
    assert value(page, "smsgw_duplicates_dropped_total") == 1
    assert value(page, "smsgw_webhook_seconds_count", route="/twilio/sms", status="200") == 3
    assert value(page, "smsgw_messages_out_total") == 2
    assert value(page, "smsgw_segments_sent_total", encoding="GSM-7") == 2
    assert value(page, "smsgw_uponai_errors_total", operation="complete", code="500") == 1
    assert value(page, "smsgw_twilio_errors_total", operation="send", code="20429") == 1
    assert value(page, "smsgw_uponai_seconds_count", operation="complete") == 2
    assert value(page, "smsgw_twilio_seconds_count", operation="send") == 3
    assert value(page, "smsgw_queue_wait_seconds_count", kind="conversation", job="drain") >= 2
    assert value(page, "smsgw_job_seconds_count", kind="conversation", job="drain", outcome="retry") >= 1
    assert value(page, "smsgw_job_seconds_count", kind="conversation", job="drain", outcome="ok") >= 1
    assert value(page, "smsgw_workers") == 1

    pool.stop()
    lines = [line for path in (web_log, *pool.logs) for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) > 5
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "message"} <= set(entry), line
    everything = "\n".join(lines)
    assert "4155550163" not in everything
    assert SECRET_BODY not in everything and "purple elephant" not in everything
    assert any(json.loads(line).get("message_sid") == first["MessageSid"] for line in lines)
