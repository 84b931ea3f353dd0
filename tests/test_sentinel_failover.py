"""Redis Sentinel for real: a master, a replica and three sentinels of the test's own, the web (gunicorn, the
Procfile's command) and two ``sms-gateway worker`` processes configured with ``REDIS_SENTINELS``. The master is
SIGKILLed; the sentinels promote the replica; the webhook answers 503 while no master is known and 200 again
after the switch, with no process restarted, and every text acknowledged is answered exactly once."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import pytest
import requests
from redis import Redis
from redis.exceptions import RedisError
from redis.sentinel import Sentinel

from sandbox.httpfake import Fault
from sandbox.launcher import redis_server_binary
from tests.conftest import WorkerPool, free_port, inbound_form, settings_env, sign, wait_for, wait_idle
from tests.test_web_process import web

MASTER_NAME = "smsgw-test"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
PEOPLE = ("+14155550181", "+14155550182", "+14155550183")
WEBHOOK_URL = "https://sms.example.com/twilio/sms"


def _answers(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except RedisError:
        return False


class SentinelCluster:
    """A master, a replica of it and three sentinels watching them, on free ports of 127.0.0.1."""

    def __init__(self, directory: Path):
        self.binary = redis_server_binary()
        self.directory = directory
        self.processes: dict[str, subprocess.Popen] = {}
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        workdir = self.directory / name
        workdir.mkdir()
        process = subprocess.Popen([self.binary, *args, "--dir", str(workdir), "--logfile", str(workdir / "log")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.directory / name / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        # The master starts a replica's first sync at once (Redis 7 waits 5 s for more replicas by default).
        self._start("master", "--port", str(self.master_port), *common, "--repl-diskless-sync-delay", "0")
        self._start("replica", "--port", str(self.replica_port), *common,
                    "--replicaof", "127.0.0.1", str(self.master_port))
        replica = Redis(port=self.replica_port, socket_connect_timeout=0.2)
        wait_for(lambda: _answers(replica) and replica.info("replication").get("master_link_status") == "up",
                 timeout=15, message="the replica to sync with the master")
        for index, port in enumerate(self.sentinel_ports):
            self._start_sentinel(index, port)
        # Failover needs every sentinel to know the replica and the two other sentinels (hello messages, every 2 s).
        for port in self.sentinel_ports:
            sentinel = Redis(port=port, socket_connect_timeout=0.2, decode_responses=True)
            wait_for(lambda sentinel=sentinel: _knows_all(sentinel), timeout=20, interval=0.1,
                     message=f"sentinel :{port} to see the replica and the other sentinels")

    def _start_sentinel(self, index: int, port: int) -> None:
        name = f"sentinel-{index}"
        config = self.directory / f"{name}.conf"  # a sentinel rewrites its config file: one each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        process = self._start(name, str(config), "--sentinel")
        client = Redis(port=port, socket_connect_timeout=0.2)
        wait_for(lambda: process.poll() is not None or _answers(client), timeout=10,
                 message=f"sentinel :{port} to start")
        if process.poll() is not None:
            pytest.skip(f"{self.binary} does not run as a sentinel ({self.log(name).strip()[-200:]!r}); install a "
                        "Redis with Sentinel support (e.g. the redis-server or redis-sentinel package)")

    def master_address(self) -> tuple[str, int] | None:
        """The master as the sentinels report it (None while it is down and not yet replaced)."""
        with contextlib.suppress(RedisError):
            return Sentinel([("127.0.0.1", port) for port in self.sentinel_ports],
                            socket_timeout=0.5).discover_master(MASTER_NAME)
        return None

    def kill_master(self) -> None:
        process = self.processes["master"]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def _knows_all(sentinel: Redis) -> bool:
    try:
        state = sentinel.sentinel_master(MASTER_NAME)
    except RedisError:
        return False
    return state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2


@pytest.fixture
def cluster(tmp_path):
    cluster = SentinelCluster(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def answered_lines(replies: list[str]) -> list[str]:
    """The texts the agent answered, in order: the simulator's reply is "You said: " and the turn's texts."""
    return [line for reply in replies for line in reply.removeprefix("You said: ").split("\n")]


def post_text(url: str, form: dict[str, str]) -> int:
    """Post a signed inbound webhook as Twilio would; its status code."""
    return requests.post(url + "/twilio/sms", data=form, timeout=15,
                         headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)}).status_code


def test_a_sentinel_failover_loses_no_acknowledged_text_and_answers_each_once(
        cluster, redis_server, uponai_server, twilio_server, uponai, twilio, tmp_path):
    overrides = {"REDIS_URL": "redis://smsgw-master/0",  # host and port come from the sentinels, not from here
                 "REDIS_SENTINELS": cluster.sentinels, "REDIS_SENTINEL_MASTER": MASTER_NAME,
                 "RATE_LIMIT_MESSAGES": "0"}  # the switch takes dozens of texts from one person
    redis = Sentinel([("127.0.0.1", port) for port in cluster.sentinel_ports],
                     sentinel_kwargs={"socket_timeout": 0.5}).master_for(MASTER_NAME, socket_timeout=2)
    (tmp_path / "workers").mkdir()
    (tmp_path / "web").mkdir()
    workers = WorkerPool(settings_env(redis_server, uponai_server, twilio_server, **overrides), 2,
                         tmp_path / "workers")
    acknowledged: list[tuple[str, str]] = []  # (person, text)
    turned_away: list[dict[str, str]] = []
    try:
        workers.wait_ready(redis)
        with web(redis_server, uponai_server, twilio_server, tmp_path / "web", WEB_CONCURRENCY="2", **overrides) \
                as (url, web_log):
            # Before: texts flow through the master the sentinels name.
            for index in range(6):
                person = PEOPLE[index % len(PEOPLE)]
                form = inbound_form(f"before {index}", from_=person)
                assert post_text(url, form) == 200
                acknowledged.append((person, form["Body"]))
            wait_idle(redis)
            # Every acknowledged write is on the replica before the kill (one acknowledged by the master alone is
            # what a failover can lose: docs/deploy.md says so, and REDIS_WAIT_REPLICAS bounds it).
            with redis.pipeline(transaction=False) as sync:
                sync.set("test:replicated", "1")
                sync.wait(1, 5000)
                assert sync.execute()[1] == 1

            cluster.kill_master()
            during = iter(range(1000))

            def switched() -> bool:
                """Post a new text as the switch goes on: refused (503) until a promoted master takes it."""
                person = PEOPLE[0]
                form = inbound_form(f"during {next(during)}", from_=person)
                status = post_text(url, form)
                assert status in (200, 503), status
                if status == 503:
                    turned_away.append(form)
                    return False
                acknowledged.append((person, form["Body"]))
                return bool(turned_away)  # a 200 before any 503 was still the old master's pool: keep going

            wait_for(switched, timeout=30, interval=0.1, message="the webhook to answer 200 again after 503s")
            assert cluster.master_address() == ("127.0.0.1", cluster.replica_port)
            # Twilio retries a refused webhook (or its fallback URL does): the same MessageSid, now accepted.
            for form in turned_away:
                assert post_text(url, form) == 200
                acknowledged.append((form["From"], form["Body"]))
            # After: new texts, one of them retried through the RQ scheduler (UponAI fails it once).
            uponai.inject("complete", Fault(status=503))
            for index in range(6):
                person = PEOPLE[index % len(PEOPLE)]
                form = inbound_form(f"after {index}", from_=person)
                assert post_text(url, form) == 200
                acknowledged.append((person, form["Body"]))

            # Texts waiting together are one agent turn (its texts one per line): count texts, not replies.
            wanted = {person: [body for p, body in acknowledged if p == person] for person in PEOPLE}
            wait_for(lambda: all(len(answered_lines(twilio.sent_to(p))) >= len(wanted[p]) for p in PEOPLE),
                     timeout=45, interval=0.1, message="every acknowledged text to be answered")
            wait_idle(redis)
            assert "Traceback" not in web_log.read_text(errors="replace")

        for person in PEOPLE:  # each acknowledged text in exactly one answered turn, in order, nothing else
            assert answered_lines(twilio.sent_to(person)) == wanted[person]
        assert len(turned_away) >= 1
    finally:
        workers.stop()
        redis.close()
