"""The process's metrics: built once, whatever the number of threads asking at once."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, wait_for

# A fresh interpreter (a fresh default registry), many threads asking for the metrics at the same
# moment, and a tiny thread switch interval so that they interleave inside the first build.
RACE = """
import sys, threading
sys.setswitchinterval(1e-6)
from core.metrics import metrics
threads_count = 16
barrier = threading.Barrier(threads_count)
built, errors = [], []
def ask():
    barrier.wait()
    try:
        built.append(id(metrics()))
    except Exception as exc:
        errors.append(type(exc).__name__ + ": " + str(exc))
threads = [threading.Thread(target=ask) for _ in range(threads_count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("errors", len(errors), errors[:3])
print("objects", len(set(built)))
"""


def test_first_use_of_metrics_from_many_threads_builds_them_once():
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "errors 0 []" in done.stdout, done.stdout
        assert "objects 1" in done.stdout, done.stdout


# -- admin jobs are timed like conversation jobs, told apart by kind -----------------------------

ADMIN_TOKEN = "metrics-test-admin-token"


def job_count(kind: str, job: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("smsgw_job_seconds_count", {"kind": kind, "job": job, "outcome": outcome}) or 0.0


def test_admin_jobs_are_in_job_seconds_with_kind_admin(env, redis, start_workers, uponai, twilio):
    from gateway import create_app
    from sandbox.httpfake import Fault

    admin = create_app({**env, "ADMIN_API_TOKEN": ADMIN_TOKEN, "ADMIN_WAIT_SECONDS": "15"}).test_client()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    start_workers(1)
    before = {key: job_count(*key) for key in [("admin", "start_outbound", "ok"), ("admin", "list_chats", "error"),
                                               ("conversation", "drain", "ok")]}

    started = admin.post("/admin/sms", json={"to": "+14155550142", "message": "hello"}, headers=auth)
    assert started.status_code == 202 and started.get_json()["chat_id"], started.get_json()
    uponai.inject("list_chats", Fault(status=503))
    assert admin.get("/admin/chats", headers=auth).status_code == 503  # answered with an error: outcome "error"

    # The worker observes a job once it has returned, just after the answer is stored.
    wait_for(lambda: job_count("admin", "list_chats", "error") == before[("admin", "list_chats", "error")] + 1,
             message="the failed listing to be timed")
    assert job_count("admin", "start_outbound", "ok") == before[("admin", "start_outbound", "ok")] + 1
    assert job_count("conversation", "drain", "ok") == before[("conversation", "drain", "ok")]  # not a drain
