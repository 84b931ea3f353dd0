"""The worker's Redis round trips per answered message: at most 20 (issue 11; about 50 before)."""

from __future__ import annotations

import signal

from redis import Connection, ConnectionPool, Redis

from config import load_settings
from core.queues import QUEUE_NAME
from workers import jobs
from workers.worker import GatewayWorker

PEOPLE = [f"+1415555{index:04d}" for index in range(10)]
MAX_ROUND_TRIPS_PER_MESSAGE = 20


class CountingConnection(Connection):
    """A redis-py connection counting round trips: each command or pipeline it sends is one."""

    sent = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


def burst(connection: Redis) -> int:
    """Run the gateway's RQ worker in this process until the queue is empty; return its round trips.

    On the drain queue alone: in burst mode RQ polls each queue with its own LPOP, where a running worker
    waits on all of them with one blocking pop.
    """
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    before = CountingConnection.sent
    try:
        GatewayWorker([QUEUE_NAME], connection=connection, log_job_description=False).work(
            burst=True, logging_level="WARNING")
    finally:
        signal.signal(signal.SIGTERM, handlers[0])  # RQ's work() installs its own; the test process keeps its own
        signal.signal(signal.SIGINT, handlers[1])
    return CountingConnection.sent - before


def test_a_one_part_reply_in_an_existing_chat_costs_the_worker_at_most_20_redis_round_trips(
        redis_server, redis, env, text_in, uponai, twilio):
    counting = Redis(connection_pool=ConnectionPool.from_url(redis_server.url, connection_class=CountingConnection))
    jobs.install_services(jobs.build_services(load_settings(env, dotenv_path=None), counting))
    try:
        for person in PEOPLE:
            text_in("hello", from_=person)
        burst(counting)
        assert [len(twilio.sent_to(person)) for person in PEOPLE] == [1] * len(PEOPLE)  # each has a chat now

        idle = burst(counting)  # what a worker run costs with nothing to do (start, registries, stop)
        for person in PEOPLE:
            text_in("and again", from_=person)
        trips = burst(counting) - idle
        assert [len(twilio.sent_to(person)) for person in PEOPLE] == [2] * len(PEOPLE)
        assert trips / len(PEOPLE) <= MAX_ROUND_TRIPS_PER_MESSAGE, f"{trips / len(PEOPLE):.1f} round trips a message"
    finally:
        jobs.install_services(None)
        counting.close()
