"""Fault injection with real processes: gunicorn web, several RQ workers, flaky fakes, a crash and a Redis restart.

100 conversations x 5 messages go through the Procfile's web process while the fake UponAI and Twilio answer a
share of calls with 500s, 429s, read timeouts, dropped connections and malformed 2xx answers (each before and
after applying the call), one
worker is SIGKILLed and Redis is restarted. The workers run with the default quiet window, so a person's texts
that wait together are one agent turn: every inbound message must belong to exactly one answered turn (one
completion, one reply), in order within its conversation.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import pytest
import requests

from sandbox.httpfake import Fault
from sandbox.twilio_sim import MALFORMED_SEND_ANSWERS
from tests.conftest import GATEWAY_NUMBER, WorkerPool, free_port, inbound_form, settings_env, sign, wait_for
from tests.test_procfile import Process, procfile_commands

CONVERSATIONS = 100
MESSAGES_EACH = 5
PUBLIC = "https://sms.example.com"
QUIET_WINDOW_SECONDS = 2  # INBOUND_QUIET_SECONDS's default, which the suite runs with
PAUSE_AFTER_ROUNDS = (0, 2)  # so that a conversation's five texts make two or three turns (or more, under faults)

# Malformed successes, as a proxy or a bug upstream would answer them: a 2xx whose body is not the documented
# JSON, with the call applied (the turn is in the chat, the SMS went out) or not.
UPONAI_MALFORMED = [b"", {}, "null", {"messages": "not a list"}, {"messages": [{"name": "agent"}]},
                    "<html><body>200 OK</body></html>"]
UPONAI_FAULTS = [Fault(status=500), Fault(status=503), Fault(status=429, retry_after="1"),
                 Fault(delay_seconds=2.5), Fault(drop=True), Fault(drop_after_apply=True),
                 *[Fault(status=201, body=body, apply_first=applied) for body in UPONAI_MALFORMED[::2]
                   for applied in (True, False)],
                 *[Fault(status=200, body=body, apply_first=True) for body in UPONAI_MALFORMED[1::2]]]
TWILIO_FAULTS = [Fault(status=500), Fault(status=429), Fault(delay_seconds=2.5), Fault(drop=True),
                 Fault(drop_after_apply=True),
                 *[Fault(status=200, body=body, apply_first=applied) for body in MALFORMED_SEND_ANSWERS.values()
                   for applied in (True, False)]]


def person(i: int) -> str:
    return f"+1415555{i:04d}"


@pytest.fixture
def web(redis_server, uponai_server, twilio_server, redis, tmp_path):
    port = free_port()
    env = {**suite_env(redis_server, uponai_server, twilio_server), "PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    process = Process("web", procfile_commands()["web"], env, tmp_path)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60, interval=0.2,
                 message="gunicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def suite_env(redis_server, uponai_server, twilio_server) -> dict[str, str]:
    env = settings_env(redis_server, uponai_server, twilio_server, RETRY_INTERVALS_SECONDS="0.3,0.6,1,1,1,1,1,1,1",
                       AMBIGUOUS_RETRY_DELAY_SECONDS="1.5", RATE_LIMIT_MESSAGES="0",
                       LOOP_BREAKER_REPLIES="0")  # its people text faster than a person types
    # WORKER_THREADS: the production default, as every test's
    env.pop("INBOUND_QUIET_SECONDS")  # the default quiet window, as deployed (the tests' default is none)
    return env


def lines_of(turns: list[str], prefix: str = "") -> list[str]:
    """The texts in turns, in order (a turn holds its texts one per line), without ``prefix``."""
    return [line for turn in turns for line in turn.removeprefix(prefix).split("\n")]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def deliver(session: requests.Session, base: str, form: dict[str, str]) -> int:
    """POST like Twilio: retry until the gateway acknowledges (it answers 503 while Redis is away)."""
    signature = sign(PUBLIC + "/twilio/sms", form)
    attempts = 0
    deadline = time.monotonic() + 60
    while True:
        attempts += 1
        try:
            response = session.post(base + "/twilio/sms", data=form, headers={"X-Twilio-Signature": signature},
                                    timeout=15)
            if response.status_code == 200:
                return attempts
            assert response.status_code == 503, response.text
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the gateway never acknowledged a message"
        time.sleep(0.1)  # Twilio's retry interval, not synchronisation


def test_every_message_answered_exactly_once_in_order_under_faults(web, redis_server, uponai_server,
                                                                   twilio_server, uponai, twilio, tmp_path):
    uponai.responder = lambda chat, text: [f"re: {text}"]
    uponai.set_random_faults(0.15, UPONAI_FAULTS, seed=1, operations={"create_chat", "complete", "get_chat"})
    twilio.set_random_faults(0.10, TWILIO_FAULTS, seed=2, operations={"send"})
    pool = WorkerPool(suite_env(redis_server, uponai_server, twilio_server), 2, tmp_path)
    started = time.monotonic()
    session = requests.Session()
    retried_posts = 0
    try:
        sent = 0
        for j in range(MESSAGES_EACH):
            for i in range(CONVERSATIONS):
                form = inbound_form(f"c{i} m{j}", from_=person(i))
                retried_posts += deliver(session, web, form) - 1
                if i % 10 == 0:
                    deliver(session, web, form)  # Twilio delivering the same message twice
                sent += 1
                if sent == 150:
                    pool.crash(pool.processes[0])  # a worker dies mid-run...
                    pool.spawn()  # ...and the platform starts another
                if sent == 300:
                    redis_server.stop()
                    probe = inbound_form("while redis is down", from_=person(0))
                    response = session.post(web + "/twilio/sms", data=probe,
                                            headers={"X-Twilio-Signature": sign(PUBLIC + "/twilio/sms", probe)})
                    assert response.status_code == 503
                    redis_server.start()
            if j in PAUSE_AFTER_ROUNDS:
                # The people stop typing for longer than the quiet window: their turns start (and are in flight
                # when the worker dies and Redis restarts); the next rounds' texts join them or make new turns.
                time.sleep(QUIET_WINDOW_SECONDS + 0.5)  # the people's pace, not synchronisation

        expected = {person(i): [f"c{i} m{j}" for j in range(MESSAGES_EACH)] for i in range(CONVERSATIONS)}

        def all_answered() -> bool:
            return all(len(lines_of(twilio.sent_to(number), "re: ")) >= MESSAGES_EACH for number in expected)

        wait_for(all_answered, timeout=240, interval=0.5, message="every message to be answered")
        elapsed = time.monotonic() - started
    finally:
        pool.stop()
        uponai.clear_faults()
        twilio.clear_faults()

    # The agent's turns per person (a turn's texts all come from one person: "c{i} m{j}" lines).
    turns = collections.defaultdict(list)
    for _, text in uponai.completion_log:
        turns[person(int(text.split(" ", 1)[0][1:]))].append(text)
    bodies = collections.Counter(m.body for m in twilio.messages)
    duplicates = {body: n for body, n in bodies.items() if n > 1}
    # Every text in exactly one turn, in order: at the agent, and in the replies (one reply per turn).
    agent_wrong = [number for number, texts in expected.items() if lines_of(turns[number]) != texts]
    replies_wrong = [number for number in expected
                     if twilio.sent_to(number) != [f"re: {turn}" for turn in turns[number]]]
    sizes = collections.Counter(len(turn.split("\n")) for texts in turns.values() for turn in texts)
    print(f"\nfault suite: sent={CONVERSATIONS * MESSAGES_EACH} turns={sum(len(t) for t in turns.values())} "
          f"texts_per_turn={dict(sorted(sizes.items()))} replies={len(bodies)} duplicates={len(duplicates)} "
          f"agent_wrong={len(agent_wrong)} replies_wrong={len(replies_wrong)} webhook_retries={retried_posts} "
          f"uponai_calls={len(uponai.requests)} twilio_calls={len(twilio.requests)} elapsed={elapsed:.1f}s")
    assert not duplicates, duplicates
    assert not agent_wrong, {number: turns[number] for number in agent_wrong[:5]}
    assert not replies_wrong, {number: (twilio.sent_to(number), turns[number]) for number in replies_wrong[:5]}
    assert set(twilio.sent_to(GATEWAY_NUMBER)) == set()  # nothing sent to the gateway itself
