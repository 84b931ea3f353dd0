"""Redis settings beyond one server: the Sentinel settings and their checks, a webhook that answers 503 (not 500)
while the sentinels name no master, and REDIS_WAIT_REPLICAS: a text is acknowledged only once a replica holds it.

The failover itself, with real sentinels and processes, is tests/test_sentinel_failover.py."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from config import load_settings
from core.redis import connect_redis, redis_address
from core.state import ConversationStore
from gateway import create_app
from sandbox.launcher import redis_server_binary
from tests.conftest import WorkerPool, free_port, inbound_form, post_signed, wait_for, wait_idle
from tests.test_settings import minimal, problems_of

PERSON = "+14155550191"


def test_sentinel_settings_are_parsed():
    settings = load_settings(minimal(REDIS_URL="redis://:data-secret@mymaster/2",
                                     REDIS_SENTINELS=" 10.0.0.1:26379, sentinel-b.internal:26380 ,",
                                     REDIS_SENTINEL_MASTER="mymaster", REDIS_SENTINEL_PASSWORD="sentinel-secret"),
                             dotenv_path=None)
    assert settings.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b.internal", 26380))
    assert settings.redis_sentinel_master == "mymaster"
    assert "sentinel-secret" not in repr(settings) and "data-secret" not in repr(settings)
    assert settings.redis_wait_replicas == 0


@pytest.mark.parametrize("overrides, problem", [
    ({"REDIS_SENTINELS": "10.0.0.1"}, "REDIS_SENTINELS='10.0.0.1' is invalid: must be a comma-separated list of "
                                      "host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:0"}, "REDIS_SENTINELS='10.0.0.1:0' is invalid"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER is required when REDIS_SENTINELS is set"),
    ({"REDIS_SENTINEL_MASTER": "mymaster"}, "REDIS_SENTINELS is required when REDIS_SENTINEL_MASTER"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "mymaster", "REDIS_URL": "unix:///tmp/r.sock"},
     "REDIS_URL must be redis:// or rediss:// when REDIS_SENTINELS is set"),
    ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS='-1' is invalid"),
    ({"REDIS_WAIT_TIMEOUT_SECONDS": "0"}, "REDIS_WAIT_TIMEOUT_SECONDS='0' is invalid"),
])
def test_a_wrong_sentinel_or_wait_setting_is_named(overrides, problem):
    problems = problems_of(minimal(**overrides))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_the_webhook_answers_503_while_the_sentinels_name_no_master(env, redis):
    # Sentinels that do not answer: no master can be found, which must read as "Redis unavailable".
    nowhere = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    settings_env = {**env, "REDIS_SENTINELS": nowhere, "REDIS_SENTINEL_MASTER": "mymaster"}
    client = create_app(settings_env).test_client()

    response = post_signed(client, "/twilio/sms", inbound_form("anyone there?", from_=PERSON))

    assert response.status_code == 503, response.get_data(as_text=True)
    assert "retry" in response.get_data(as_text=True)
    assert client.get("/readyz").status_code == 503
    direct = connect_redis(load_settings(settings_env, dotenv_path=None), for_web=True)
    assert redis_address(direct) == f"master 'mymaster' of sentinels {nowhere}"
    with pytest.raises(RedisConnectionError):
        direct.ping()
    assert redis.dbsize() == 0  # nothing went to the REDIS_URL server instead


class ReplicatedRedis:
    """A master and one replica of it, redis-server processes of the test's own."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.master_port, self.replica_port = free_port(), free_port()
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        # The master starts a replica's first sync at once (Redis 7 waits 5 s for more replicas by default).
        for name, port, extra in (("master", self.master_port, ("--repl-diskless-sync-delay", "0")),
                                  ("replica", self.replica_port, ("--replicaof", "127.0.0.1", str(self.master_port)))):
            workdir = self.directory / name
            workdir.mkdir(parents=True)
            self.processes.append(subprocess.Popen(
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                 "no", "--dir", str(workdir), "--logfile", str(workdir / "log"), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.replica = Redis(port=self.replica_port, socket_connect_timeout=0.2)
        wait_for(self.replica_in_sync, timeout=15, message="the replica to sync with the master")

    def replica_in_sync(self) -> bool:
        with contextlib.suppress(Exception):
            return self.replica.info("replication").get("master_link_status") == "up"
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.master_port}/0"

    def pause_replica(self) -> None:
        self.processes[1].send_signal(signal.SIGSTOP)

    def resume_replica(self) -> None:
        self.processes[1].send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(timeout=10)
        self.replica.close()


@pytest.fixture
def replicated(tmp_path):
    servers = ReplicatedRedis(tmp_path / "redis")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def test_with_redis_wait_replicas_a_text_is_acknowledged_only_once_a_replica_holds_it(
        replicated, env, uponai, twilio, tmp_path):
    settings_env = {**env, "REDIS_URL": replicated.url, "REDIS_WAIT_REPLICAS": "1",
                    "REDIS_WAIT_TIMEOUT_SECONDS": "0.5"}
    master = Redis.from_url(replicated.url)
    (tmp_path / "workers").mkdir()
    workers = WorkerPool(settings_env, 1, tmp_path / "workers")
    try:
        workers.wait_ready(master)
        client = create_app(settings_env).test_client()

        # The replica cannot confirm (stopped): the master holds and queues the text, Twilio is told 503.
        replicated.pause_replica()
        unconfirmed = post_signed(client, "/twilio/sms", inbound_form("unconfirmed", from_=PERSON))
        assert unconfirmed.status_code == 503, unconfirmed.get_data(as_text=True)
        assert "retry" in unconfirmed.get_data(as_text=True)
        wait_for(lambda: twilio.sent_to(PERSON) == ["You said: unconfirmed"], timeout=20,
                 message="the unconfirmed text to be answered all the same")

        # The replica back: a text is acknowledged, and the replica holds it when the 200 arrives.
        replicated.resume_replica()
        wait_for(replicated.replica_in_sync, timeout=15, message="the replica to catch up")
        # A generous wait this time: it ends as soon as the replica confirms, however busy the machine is.
        patient = create_app({**settings_env, "REDIS_WAIT_TIMEOUT_SECONDS": "10"}).test_client()
        form = inbound_form("confirmed", from_=PERSON)
        confirmed = post_signed(patient, "/twilio/sms", form)
        on_replica = replicated.replica.get(ConversationStore.key("seen", form["MessageSid"]))
        assert confirmed.status_code == 200, confirmed.get_data(as_text=True)
        assert on_replica is not None  # its dedupe marker, written by the same step as the inbox entry

        wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, timeout=20, message="the confirmed text's answer")
        wait_idle(master)
        assert twilio.sent_to(PERSON) == ["You said: unconfirmed", "You said: confirmed"]
    finally:
        workers.stop()
        master.close()
