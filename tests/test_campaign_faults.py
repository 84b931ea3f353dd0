"""Campaigns are exactly once under faults: a worker SIGKILLed mid-campaign, Redis restarted mid-campaign, the
request retried with its Idempotency-Key. Real ``sms-gateway worker`` processes, the tests' own redis-server (with
append-only persistence), the fake Twilio answering slowly, so that sends are in flight when the fault comes."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gateway import create_app
from tests.conftest import wait_for, wait_idle

TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COUNT = 40
NUMBERS = [f"+1415555{2000 + index:04d}" for index in range(COUNT)]
BODY = {"numbers": NUMBERS, "message": "Your appointment is tomorrow"}
# Longer than a job's own reconnects (core.redis: five, backed off up to 2 s, about 3 s in all): the jobs in flight
# fail, and run again after the restart.
REDIS_DOWN_SECONDS = 6
WORKER_SETTINGS = {"CAMPAIGN_SEND_RATE": "20", "CAMPAIGN_BATCH_SIZE": "5", "CAMPAIGN_PARALLEL_BATCHES": "3"}


@pytest.fixture
def admin(env, redis):
    return create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client()


def start(admin, key: str) -> str:
    response = admin.post("/admin/campaigns", json=BODY, headers={**AUTH, "Idempotency-Key": key})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == COUNT
    return response.get_json()["campaign_id"]


def status(admin, campaign_id: str) -> dict:
    response = admin.get(f"/admin/campaigns/{campaign_id}", headers=AUTH)
    return response.get_json() if response.status_code == 200 else {}


def assert_texted_once(admin, redis, twilio, campaign_id: str) -> None:
    wait_for(lambda: status(admin, campaign_id).get("status") == "done", timeout=120, interval=0.2,
             message="the campaign to finish")
    wait_idle(redis, timeout=60)
    texted = Counter(message.to for message in twilio.messages)
    assert texted == Counter(NUMBERS), {number: n for number, n in texted.items() if n != 1}
    view = status(admin, campaign_id)
    assert view["counts"]["sent"] == COUNT and view["counts"]["queued"] == 0, view


def test_a_worker_killed_mid_campaign_texts_no_one_twice(admin, redis, start_worker_processes, twilio):
    twilio.latency_seconds = 0.3  # a send takes a while: the kill finds some in flight
    pool = start_worker_processes(1, **WORKER_SETTINGS)  # the one worker holds every batch job in flight
    campaign_id = start(admin, "killed-worker")
    wait_for(lambda: len(twilio.messages) >= 8, timeout=30, message="the campaign to be under way")
    pool.crash(pool.processes[0])
    pool.spawn()
    assert start(admin, "killed-worker") == campaign_id  # the operator's retry: the same campaign
    assert_texted_once(admin, redis, twilio, campaign_id)


def test_redis_restarted_mid_campaign_texts_no_one_twice(admin, redis, redis_server, start_worker_processes, twilio):
    twilio.latency_seconds = 0.3
    pool = start_worker_processes(1, **WORKER_SETTINGS)
    campaign_id = start(admin, "redis-restart")
    wait_for(lambda: len(twilio.messages) >= 8, timeout=30, message="the campaign to be under way")
    redis_server.stop()
    # Down long enough that the sends in flight end (at the fake Twilio) with nowhere to record them, and the worker
    # gives Redis up (past redis-py's reconnects) rather than riding out a short blip.
    wait_for(lambda: "not reachable" in pool.output(), timeout=60, message="the worker to find Redis gone")
    time.sleep(REDIS_DOWN_SECONDS)  # the outage's length, not synchronisation
    redis_server.start()
    assert start(admin, "redis-restart") == campaign_id  # retried after the restart: the same campaign
    assert_texted_once(admin, redis, twilio, campaign_id)
