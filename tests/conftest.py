"""Shared fixtures: a real Redis of the tests' own, local fake UponAI and Twilio servers, real RQ
workers (in-process threads, or processes where a test needs signals or crashes), and a signed-webhook helper."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.scheduler import RQScheduler
from twilio.request_validator import RequestValidator

from config import Settings, load_settings
from core.queues import EVENTS_QUEUE_NAME, QUEUE_NAME, WORKER_QUEUE_NAMES
from core.state import ConversationStore
from gateway import create_app
from sandbox.launcher import redis_server_binary
from sandbox.twilio_sim import TwilioSimulator
from sandbox.uponai_sim import UponAISimulator
from workers import jobs
from workers.worker import THREAD_WORKER_TTL_SECONDS, ThreadWorker, start_events_worker, work_until_stopped

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "7e57" * 8  # well-formed, like a real one: 32 hex characters
UPONAI_KEY = "test-uponai-key"
GATEWAY_NUMBER = "+15005550006"


def wait_for(condition, timeout: float = 20.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# A retry or an idle check due this soon is work still to come; an idle check an hour away is not.
SCHEDULED_SOON_SECONDS = 10.0


def turn_lines(uponai) -> list[str]:
    """Every text the agent received, in order: the lines of each turn (a burst is one turn, a text a line)."""
    return [line for _, turn in uponai.completion_log for line in turn.split("\n")]


def pending_work(redis: Redis) -> list[str]:
    """What the gateway still has to do, read from Redis: [] when nothing more can reach UponAI or Twilio.

    RQ's queues (and the intermediate list a job passes through), jobs started, jobs scheduled to run
    within SCHEDULED_SOON_SECONDS (retries), idle checks due that soon,
    conversation locks held and inboxes holding a text.
    """
    from rq.registry import StartedJobRegistry

    from core.state import ConversationStore

    work = []
    due_by = int(time.time() + SCHEDULED_SOON_SECONDS)
    for queue in Queue.all(connection=redis):
        waiting = queue.count + len(queue.intermediate_queue.get_job_ids())
        started = StartedJobRegistry(queue.name, connection=redis).get_job_count(cleanup=False)
        due = len(queue.scheduled_job_registry.get_jobs_to_schedule(due_by))
        work += [f"{n} job(s) {what} on {queue.name}" for n, what in
                 ((waiting, "queued"), (started, "started"), (due, "scheduled soon")) if n]
    idle_checks = redis.zcount(ConversationStore.key("idle-due"), "-inf", due_by)
    work += [f"{idle_checks} idle check(s) due soon"] if idle_checks else []
    locks = list(redis.scan_iter(match=ConversationStore.key("lock", "*")))
    inboxes = [key for key in redis.scan_iter(match=ConversationStore.key("inbox", "*")) if redis.llen(key)]
    work += [f"{len(locks)} conversation lock(s) held"] if locks else []
    work += [f"{len(inboxes)} inbox(es) holding texts"] if inboxes else []
    return work


def wait_idle(redis: Redis, timeout: float = 30.0, settle_seconds: float = 0.2) -> None:
    """Wait until the gateway has nothing left to do (``pending_work``), so that counts taken next are final.

    For exactly-once assertions: a late duplicate is sent before this returns, and the count then fails.
    Idle must be seen throughout ``settle_seconds``: a worker pops a job (BLPOP on two queues) a moment
    before RQ records it as started, and in that moment Redis shows no trace of it.
    """
    deadline = time.monotonic() + timeout
    idle_since = None
    while True:
        work = pending_work(redis)
        now = time.monotonic()
        if work:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= settle_seconds:
            return
        if work and now > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for the gateway to be idle: {work}")
        time.sleep(0.02)


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a process started in its own session; SIGKILL its whole group if it has not left by ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def new_store(redis: Redis) -> ConversationStore:
    """The conversation state over ``redis``, with the retention and dedupe periods that Settings default to."""
    return ConversationStore.from_settings(redis, Settings())


def phone_settings(env: dict[str, str]) -> Settings:
    """The settings the sandbox's phone page gets: the gateway's, with a 600 s idle timeout to show."""
    return load_settings({**env, "CHAT_IDLE_TIMEOUT_SECONDS": "600"}, dotenv_path=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


class RedisServer:
    """A redis-server process of the tests' own, with append-only persistence, that can be restarted."""

    def __init__(self, directory: Path):
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis(port=self.port, socket_connect_timeout=0.2)
        wait_for(lambda: _pings(client), timeout=10, message="redis-server to start")
        client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server):
    client = Redis.from_url(redis_server.url)
    client.flushdb()  # the tests' own Redis: every test starts from nothing (no workers run between tests)
    yield client
    client.close()


@pytest.fixture
def queue(redis) -> Queue:
    """The gateway's RQ queue, empty before and after the test."""
    queue = Queue("sms", connection=redis)
    queue.empty()
    yield queue
    queue.empty()


def waiting_drains(queue: Queue) -> list[str]:
    """The conversations of the drain jobs waiting in the queue, oldest first."""
    return [job.args[0] for job in queue.get_jobs() if job.func_name == "workers.jobs.drain"]


@pytest.fixture(scope="session")
def uponai_server():
    server = UponAISimulator(api_key=UPONAI_KEY, workspace_id=7).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def twilio_server():
    server = TwilioSimulator(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def uponai(uponai_server):
    uponai_server.reset()
    yield uponai_server
    uponai_server.reset()


@pytest.fixture
def twilio(twilio_server):
    twilio_server.reset()
    yield twilio_server
    twilio_server.reset()


def settings_env(redis_server, uponai_server, twilio_server, **overrides) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_server.url,
        "UPONAI_API_KEY": UPONAI_KEY,
        "UPONAI_AGENT_ID": "agent_test",
        "UPONAI_API_STYLE": "reference",
        "UPONAI_WORKSPACE_ID": "7",
        "UPONAI_BASE_URL": uponai_server.url,
        "UPONAI_CONNECT_TIMEOUT_SECONDS": "1",
        "UPONAI_READ_TIMEOUT_SECONDS": "2",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_BASE_URL": twilio_server.url,
        "TWILIO_TIMEOUT_SECONDS": "2",
        "TWILIO_FROM_NUMBER": GATEWAY_NUMBER,
        "PUBLIC_BASE_URL": "https://sms.example.com",
        "RETRY_INTERVALS_SECONDS": "0.2,0.4,0.8",
        "AMBIGUOUS_RETRY_DELAY_SECONDS": "1.5",
        "INBOUND_QUIET_SECONDS": "0",  # a text is answered at once (texts already waiting are still one turn)
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def env(redis_server, uponai_server, twilio_server):
    return settings_env(redis_server, uponai_server, twilio_server)


@pytest.fixture
def app(env, redis):
    return create_app(env)


@pytest.fixture
def client(app):
    return app.test_client()


class WorkerPool:
    """Real ``sms-gateway worker`` processes, configured only through environment variables."""

    def __init__(self, env: dict[str, str], count: int, workdir: Path):
        self.env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
        self.workdir = workdir
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        for _ in range(count):
            self.spawn()

    def spawn(self) -> subprocess.Popen:
        log_path = self.workdir / f"worker-{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log_file:
            # A session of its own, so that the worker and its scheduler child can be killed together.
            process = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env,
                                       cwd=self.workdir, stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def wait_ready(self, redis: Redis) -> None:
        from rq import Worker

        def registered() -> bool:
            if len(self.alive()) < len(self.processes):
                raise AssertionError(f"a worker exited at start-up:\n{self.output()}")
            # Each process registers two RQ workers: one on the sms queues, one on the events queue.
            return all(Worker.count(connection=redis, queue=Queue(name, connection=redis)) >= len(self.processes)
                       for name in (QUEUE_NAME, EVENTS_QUEUE_NAME))

        wait_for(registered, timeout=30, message="workers to register")

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p.poll() is None]

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def crash(self, process: subprocess.Popen) -> None:
        """SIGKILL a worker and its scheduler child at once, as when its machine dies."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.alive():
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind (its scheduler)


@pytest.fixture
def start_worker_processes(redis_server, uponai_server, twilio_server, tmp_path):
    """Start real ``sms-gateway worker`` processes with the test settings (plus overrides); stopped after the test.

    For what needs a process of its own: signals, crashes (SIGKILL), restarts, its log output, multiprocess metrics.
    """
    pools: list[WorkerPool] = []

    def start(count: int = 2, **overrides) -> WorkerPool:
        pool = WorkerPool(settings_env(redis_server, uponai_server, twilio_server, **overrides), count, tmp_path)
        pools.append(pool)
        pool.wait_ready(Redis.from_url(redis_server.url))
        return pool

    yield start
    for pool in pools:
        pool.stop()


class InProcessWorker(ThreadWorker):
    """The gateway's thread worker, run in the test process; an idle one sees a stop within a fifth of a second."""

    @property
    def dequeue_timeout(self) -> float:
        # RQ blocks on the queue this long between heartbeats, where ThreadWorker checks for a stop (Redis
        # takes fractional BLPOP timeouts): the tests' teardown need not wait the production 2 s.
        return IN_PROCESS_DEQUEUE_TIMEOUT_SECONDS

    def subscribe(self):
        # RQ's command channel (shutdown, kill-horse) answers a shutdown with SIGINT to its own process, here the
        # test runner, and its listener can hold a stop for a second; the gateway sends no RQ commands.
        pass


IN_PROCESS_DEQUEUE_TIMEOUT_SECONDS = 0.2
RQ_LOGGERS = ("rq.worker", "rq.scheduler")
SCHEDULER_POLL_SECONDS = 0.1  # how often due scheduled jobs (retries, idle checks) are moved to their queue


class InProcessWorkers:
    """RQ workers of the gateway in threads of the test process, plus a thread that moves due scheduled jobs
    (and queues due idle checks).

    The same job code, worker classes and worker loop as ``sms-gateway worker``, against the tests' Redis and
    the simulators, without a process start per test. ``stop()`` lets each worker finish its job and checks
    that no thread is left behind.
    """

    def __init__(self, env: dict[str, str], count: int):
        from config import load_settings
        from core import metrics

        self.env = env
        # RQ sets its loggers' level (and may add handlers) when a worker starts: put them back at the stop.
        self.rq_loggers = [(logger, logger.level, list(logger.handlers), logger.propagate)
                           for logger in map(logging.getLogger, RQ_LOGGERS)]
        self.settings = load_settings(env, dotenv_path=None)
        metrics.metrics()  # built before any job runs, as the worker command does
        self.redis = Redis.from_url(self.settings.redis_url)
        jobs.install_services(jobs.build_services(self.settings, self.redis))
        self.stop_event = threading.Event()
        queue_names = list(WORKER_QUEUE_NAMES)
        self.scheduler = RQScheduler([*queue_names, EVENTS_QUEUE_NAME], connection=self.redis,
                                     logging_level="WARNING")
        self.threads = [threading.Thread(target=self._move_due_jobs, name="test-rq-scheduler")]
        self.threads += [
            threading.Thread(target=work_until_stopped, name=f"test-rq-worker-{index}", args=(
                InProcessWorker, Redis.from_url(self.settings.redis_url), queue_names, self.stop_event),
                kwargs={"with_scheduler": False, "burst": False, "max_jobs": None, "logging_level": "WARNING",
                        "ttl": THREAD_WORKER_TTL_SECONDS, "concurrency": self.settings.worker_threads})
            for index in range(count)]
        for thread in self.threads:
            thread.start()
        # Each worker process serves operator events with an RQ worker of its own (workers.worker.run).
        self.threads += [start_events_worker(Redis.from_url(self.settings.redis_url), self.stop_event,
                                             self.settings.events_worker_threads, "WARNING",
                                             worker_class=InProcessWorker)
                         for _ in range(count)]

    def _move_due_jobs(self) -> None:
        while not self.stop_event.wait(SCHEDULER_POLL_SECONDS):
            try:
                if not self.scheduler.acquired_locks:
                    self.scheduler.acquire_locks()
                self.scheduler.enqueue_scheduled_jobs()
                jobs.queue_due_idle_checks(jobs.current_services())  # as workers.scheduler's step does
            except RedisError:
                pass  # Redis is away (a test restarts it): try again at the next poll, as RQ's scheduler would
        with contextlib.suppress(RedisError):
            self.scheduler.release_locks()

    def wait_ready(self, redis: Redis, count: int) -> None:
        from rq import Worker

        wait_for(lambda: Worker.count(connection=redis) >= count, message="in-process workers to register")

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)
        left = [thread.name for thread in self.threads if thread.is_alive()]
        jobs.install_services(None)  # the next test's workers build their own from their settings
        for logger, level, handlers, propagate in self.rq_loggers:
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        self.redis.close()
        assert not left, f"worker threads still running after the stop: {left}"


@pytest.fixture
def start_workers(redis_server, uponai_server, twilio_server, redis):
    """Start in-process RQ workers (threads) with the test settings (plus overrides); stopped after the test."""
    pools: list[InProcessWorkers] = []

    def start(count: int = 2, **overrides) -> InProcessWorkers:
        env = settings_env(redis_server, uponai_server, twilio_server, **overrides)
        if pools and pools[0].env != env:
            raise AssertionError("in-process workers share the process's services: one set of settings per test "
                                 "(use start_worker_processes for workers with different settings)")
        pool = InProcessWorkers(env, count)
        pools.append(pool)
        pool.wait_ready(redis, sum(len(p.threads) - 1 for p in pools))
        return pool

    yield start
    for pool in pools:
        pool.stop()


@pytest.fixture
def workers(start_workers, redis):
    return start_workers(2)


def sign(url: str, form: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, form)


def inbound_form(body: str = "hello", *, from_: str = "+14155550100", to: str = GATEWAY_NUMBER,
                 sid: str | None = None, **extra: str) -> dict[str, str]:
    form = {"MessageSid": sid or new_sid(), "AccountSid": ACCOUNT_SID, "From": from_, "To": to, "Body": body,
            "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received", "ApiVersion": "2010-04-01"}
    form["SmsMessageSid"] = form["SmsSid"] = form["MessageSid"]
    form.update(extra)
    return form


def post_signed(client, path: str, form: dict[str, str], *, base: str = "https://sms.example.com",
                token: str = AUTH_TOKEN, query: str = ""):
    url = base + path + (f"?{query}" if query else "")
    return client.post(path + (f"?{query}" if query else ""), data=form,
                       headers={"X-Twilio-Signature": sign(url, form, token)})


@pytest.fixture
def text_in(client):
    """Send a signed inbound SMS through the webhook; returns the form sent."""

    def send(body: str = "hello", **kwargs) -> dict[str, str]:
        form = inbound_form(body, **kwargs)
        response = post_signed(client, "/twilio/sms", form)
        assert response.status_code == 200, response.get_data(as_text=True)
        return form

    return send
