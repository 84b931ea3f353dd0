"""The process's metrics: built once, whatever the number of threads asking at once."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

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
