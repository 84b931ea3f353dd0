"""One operator-event delivery against receivers that would cost a worker: one that never answers, one that drips
its answer a byte every quarter second, one whose 200 carries a 600 MB body (issue 22, item 8). Prints how long
each attempt took, what became of it, how much of the answer went out of the receiver, and how much the process
grew. Runs in this process against ``sandbox.raw_receiver`` on 127.0.0.1, in about ten seconds:

    .venv/bin/python bench/events_receivers.py [--timeout-seconds 2]
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

from config import load_settings
from sandbox.raw_receiver import RawReceiver
from workers.events import EventNotDelivered, post_event

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LW9mLXRoZS1ldmVudHMtcmVjZWl2ZXI="
HUGE_BODY_BYTES = 600 * 2**20


def rss_mib() -> tuple[float, float]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def attempt(behaviour: str, timeout_seconds: float) -> str:
    receiver = RawReceiver(behaviour, huge_body_bytes=HUGE_BODY_BYTES)
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "UPONAI_API_KEY": "k", "UPONAI_AGENT_ID": "a",
           "UPONAI_WORKSPACE_ID": "1", "TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "7e57" * 8,
           "EVENTS_WEBHOOK_URL": receiver.url, "EVENTS_WEBHOOK_SECRET": SECRET,
           "EVENTS_TIMEOUT_SECONDS": str(timeout_seconds)}
    settings = load_settings(env, dotenv_path=None)
    event = {"id": f"evt_{uuid.uuid4().hex[:24]}", "type": "handoff.requested", "created_at": "",
             "conversation": {"id": "c", "number": "+14155550100"}, "data": {}}
    _, peak_before = rss_mib()
    started = time.monotonic()
    try:
        outcome = f"HTTP {post_event(settings, event)}"
    except EventNotDelivered as exc:
        outcome = f"not delivered ({exc}): retried later"
    took = time.monotonic() - started
    _, peak_after = rss_mib()
    deadline = time.monotonic() + 10
    while not receiver.closed() and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = sum(c.sent_bytes for c in receiver.connections)
    receiver.stop()
    return (f"{behaviour:5}  attempt {took:6.2f} s  {outcome}; receiver sent {sent / 2**20:8.2f} MiB of its answer; "
            f"peak RSS grew {peak_after - peak_before:6.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout-seconds", type=float, default=2.0, help="EVENTS_TIMEOUT_SECONDS (default 2)")
    args = parser.parse_args()
    print(f"EVENTS_TIMEOUT_SECONDS={args.timeout_seconds:g}; huge body {HUGE_BODY_BYTES / 2**20:.0f} MiB; "
          f"RSS at start {rss_mib()[0]:.0f} MiB")
    for behaviour in ("hang", "drip", "huge"):
        print(attempt(behaviour, args.timeout_seconds))


if __name__ == "__main__":
    main()
