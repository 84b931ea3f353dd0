"""Redis that cannot be reached, seen by real processes: one line naming host:port and the cause, no traceback.

``sms-gateway worker`` and ``sms-gateway doctor`` run as subprocesses, pointed at a closed local port, at a host
name that never resolves (the ``.invalid`` top-level domain is reserved for that: no query leaves the machine
with an answer), and at a Redis of the test's own that wants a password the URL does not have. A worker waits
for a Redis that is down (tests/test_worker.py checks it starts once it answers) but stops, non-zero, when
waiting cannot help: a name that does not exist, a wrong password; and a one-off worker (``--burst``) never waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.scheduler import RQScheduler

from gateway import create_app
from sandbox.httpfake import Fault
from sandbox.launcher import redis_server_binary
from tests.conftest import ROOT, RedisServer, free_port, inbound_form, post_signed, settings_env, stop_process, wait_for

UNRESOLVABLE = "redis-host.invalid"
PERSON = "+14155550142"


def command_env(redis_server, uponai_server, twilio_server, redis_url: str) -> dict[str, str]:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1",
            **settings_env(redis_server, uponai_server, twilio_server, REDIS_URL=redis_url)}


def run_worker(env: dict[str, str], tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """``sms-gateway worker`` until it exits by itself (killed after 60 s: a worker that waits forever fails)."""
    process = subprocess.Popen([str(Path(sys.executable).with_name("sms-gateway")), "worker", *options], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"the worker kept waiting instead of stopping:\n{stdout}{stderr}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def skip_unless_the_resolver_says_no_such_name() -> None:
    """The worker stops on "no such name" (EAI_NONAME); a resolver that cannot answer at all (EAI_AGAIN) is retried."""
    try:
        socket.getaddrinfo(UNRESOLVABLE, 6379)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            return
        pytest.skip(f"this machine's resolver cannot answer for {UNRESOLVABLE} ({exc.strerror}): the worker would "
                    "rightly keep retrying; run where DNS lookups work (any configured resolver)")
    pytest.skip(f"this machine's resolver resolves {UNRESOLVABLE}, a reserved name that never should")


@pytest.fixture
def password_redis(tmp_path):
    """A redis-server of this test's own that wants a password."""
    port = free_port()
    process = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--requirepass", "the-right-password", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Redis(port=port, password="the-right-password", socket_connect_timeout=0.2)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except Exception:
            return False

    try:
        wait_for(answers, timeout=10, message="the password-protected redis-server to start")
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(("where", "cause"), [
    ("unresolvable", "host name not resolved"),
    ("wrong password", "authentication failed (the user or password in REDIS_URL)"),
])
def test_a_worker_that_can_never_reach_redis_says_why_in_one_line_and_exits_non_zero(
        where, cause, redis_server, uponai_server, twilio_server, tmp_path, request):
    if where == "unresolvable":
        skip_unless_the_resolver_says_no_such_name()
        address, url = f"{UNRESOLVABLE}:6379", f"redis://{UNRESOLVABLE}:6379/0"
    else:
        port = request.getfixturevalue("password_redis")
        address, url = f"127.0.0.1:{port}", f"redis://:not-the-password@127.0.0.1:{port}/0"

    result = run_worker(command_env(redis_server, uponai_server, twilio_server, url), tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"Redis at {address} not usable: {cause}" in lines[0], output
    assert "not-the-password" not in output


def test_a_one_off_worker_does_not_wait_for_redis(redis_server, uponai_server, twilio_server, tmp_path):
    port = free_port()  # nothing listens there
    env = command_env(redis_server, uponai_server, twilio_server, f"redis://127.0.0.1:{port}/0")
    result = run_worker(env, tmp_path, "--burst")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"Redis at 127.0.0.1:{port} not reachable: connection refused; a one-off (--burst, --max-jobs) worker " \
        "does not wait" in lines[0], output


@pytest.mark.parametrize(("where", "cause", "fix"), [
    ("closed port", "connection refused", "start Redis, or fix the port in REDIS_URL"),
    ("unresolvable", "host name not resolved", "fix the host in REDIS_URL"),
])
def test_doctor_names_where_redis_is_and_why_it_is_not_reachable(where, cause, fix, redis_server, uponai_server,
                                                                 twilio_server, uponai, twilio, tmp_path):
    host, port = ("127.0.0.1", free_port()) if where == "closed port" else (UNRESOLVABLE, 6379)
    env = command_env(redis_server, uponai_server, twilio_server, f"redis://{host}:{port}/0")
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{free_port()}"  # the self-test stays on this machine (and fails)
    result = subprocess.run([str(Path(sys.executable).with_name("sms-gateway")), "doctor"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    redis_lines = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["redis"]]
    assert len(redis_lines) == 1, output
    assert redis_lines[0].split()[0] == "FAIL"
    assert redis_lines[0].endswith(f"Redis at {host}:{port} not reachable: {cause}") or \
        f"Redis at {host}:{port} not reachable: {cause} (" in redis_lines[0], output
    following = result.stdout.splitlines()[result.stdout.splitlines().index(redis_lines[0]) + 1]
    assert following.strip().startswith(f"-> {fix}"), output


def test_a_redis_outage_is_one_line_not_one_per_worker_thread_and_retry(redis_server, uponai_server, twilio_server,
                                                                       uponai, twilio, tmp_path):
    """A worker process with four job threads and its scheduler child, through a Redis stop and restart.

    The process says that Redis is away once per interval (not once per thread per retry), with no traceback
    (RQ's own scheduler child died with one), and afterwards answers a text whose first attempt fails: its
    retry is a scheduled job that only a scheduler that came through the outage puts back on the queue.
    """
    server = RedisServer(tmp_path)
    server.start()
    env = {**command_env(redis_server, uponai_server, twilio_server, server.url), "WORKER_THREADS": "4"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen([str(Path(sys.executable).with_name("sms-gateway")), "worker"], env=env,
                                  cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    direct = Redis(port=server.port, socket_connect_timeout=0.5)
    try:
        wait_for(lambda: Worker.count(connection=direct) == 2, timeout=45,  # its sms and sms-events workers
                 message="the RQ workers to register")
        wait_for(lambda: direct.get(RQScheduler.get_locking_key("sms")) is not None, timeout=30,
                 message="the scheduler to take its lock")
        server.stop()
        wait_for(lambda: "not reachable" in log_path.read_text() and "scheduler paused" in log_path.read_text(),
                 timeout=30, message="the worker and its scheduler to see the outage")
        server.start()

        # Only a scheduler moves a scheduled job to its queue (nothing else would queue this one).
        scheduled = Queue("sms", connection=direct).enqueue_in(timedelta(seconds=1), "builtins.len", "four")
        wait_for(lambda: scheduled.get_status(refresh=True) == "finished", timeout=30,
                 message="the scheduler to enqueue a scheduled job after the outage")
        uponai.inject("complete", Fault(status=500))  # the first attempt fails: the answer comes from the retry
        response = post_signed(create_app(env).test_client(), "/twilio/sms", inbound_form("back?", from_=PERSON))
        assert response.status_code == 200, response.get_data(as_text=True)
        wait_for(lambda: twilio.sent_to(PERSON), timeout=60, message="the answer after a scheduled retry")
        assert twilio.sent_to(PERSON) == ["You said: back?"]
        assert len(uponai.calls("complete")) == 2
    finally:
        direct.close()
        stop_process(worker)
        server.stop()

    output = log_path.read_text()
    assert "Traceback" not in output, output
    # Four job threads, RQ's worker and its listener could each say it on every retry; the process says it once
    # per interval, and the scheduler once per outage.
    assert "could not connect to Redis instance" not in output, output
    outage_lines = [line for line in output.splitlines() if "not reachable" in line]
    assert 1 <= len(outage_lines) <= 3, output
    assert f"Redis at 127.0.0.1:{server.port} not reachable: connection refused" in outage_lines[0], output
    assert len([line for line in output.splitlines() if "scheduler paused" in line]) == 1, output


def test_jobs_in_flight_when_redis_goes_away_end_in_one_line_each_and_the_worker_carries_on(
        redis_server, uponai_server, twilio_server, tmp_path):
    """Every job thread busy when Redis stops: RQ's loop (heartbeats while it waits for a free thread) and the jobs
    (RQ cannot record them) meet the outage; each job says so in one line, nothing prints a traceback, and the
    worker takes jobs again once Redis is back."""
    server = RedisServer(tmp_path)
    server.start()
    env = {**command_env(redis_server, uponai_server, twilio_server, server.url), "WORKER_THREADS": "2"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen([str(Path(sys.executable).with_name("sms-gateway")), "worker"], env=env,
                                  cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    direct = Redis(port=server.port, socket_connect_timeout=0.5)
    try:
        wait_for(lambda: Worker.count(connection=direct) == 2, timeout=45,  # its sms and sms-events workers
                 message="the RQ workers to register")
        busy = [Queue("sms", connection=direct).enqueue("time.sleep", 3) for _ in range(2)]
        wait_for(lambda: all(job.get_status(refresh=True) == "started" for job in busy), timeout=30,
                 message="both job threads to be busy")
        server.stop()
        stopped = f"ended unrecorded: Redis at 127.0.0.1:{server.port} not reachable: connection refused"
        wait_for(lambda: log_path.read_text().count(stopped) == 2, timeout=30,
                 message="both jobs to end while Redis is away")
        server.start()
        after = Queue("sms", connection=direct).enqueue("builtins.len", "four")
        wait_for(lambda: after.get_status(refresh=True) == "finished", timeout=60,
                 message="the worker to run a job again")
        assert worker.poll() is None
    finally:
        direct.close()
        stop_process(worker)
        server.stop()

    output = log_path.read_text()
    assert "Traceback" not in output, output
    assert "could not connect to Redis instance" not in output, output
    assert output.count(stopped) == 2, output
