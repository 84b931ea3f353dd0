"""Where the webhook's CPU goes, per accepted text: cProfile of the inbound view in this process (issue 20).

    .venv/bin/python bench/webhook_profile.py [--requests 3000] [--top 25]

Starts its own redis-server on 127.0.0.1 (the sandbox's binary), builds the app with the tests' settings and sends
signed webhooks through Flask's test client, each text in a conversation of its own: first without the profiler
(CPU per request), then under cProfile, and prints the functions by their own and cumulative time. The test
client's own cost (building the WSGI request) is in the figures, as it is in every run; compare runs, not totals.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the project importable, and bench/profile.py not taken for the
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # standard library's profile (cProfile imports it)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from redis import Redis  # noqa: E402

from gateway import create_app  # noqa: E402
from sandbox.launcher import redis_server_binary  # noqa: E402
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, GATEWAY_NUMBER, free_port, inbound_form, sign  # noqa: E402

URL = "https://sms.example.com/twilio/sms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", data], stdout=subprocess.DEVNULL)
        try:
            client = Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            run(port, args.requests, args.top)
        finally:
            server.terminate()
            server.wait(10)
    return 0


def run(port: int, count: int, top: int) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "UPONAI_API_KEY": "bench-key", "UPONAI_AGENT_ID": "agent",
           "UPONAI_WORKSPACE_ID": "7", "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_FROM_NUMBER": GATEWAY_NUMBER, "PUBLIC_BASE_URL": "https://sms.example.com"}
    web = create_app(env).test_client()
    forms = [inbound_form(f"hello {i}", from_=f"+1415{i:07d}") for i in range(2 * count + 200)]
    signed = [(form, {"X-Twilio-Signature": sign(URL, form)}) for form in forms]
    for form, headers in signed[:200]:  # warm up: scripts loaded, connections made
        web.post("/twilio/sms", data=form, headers=headers)
    started = time.process_time()
    for form, headers in signed[200:200 + count]:
        assert web.post("/twilio/sms", data=form, headers=headers).status_code == 200
    plain = (time.process_time() - started) * 1000 / count
    profile = cProfile.Profile()
    profile.enable()
    for form, headers in signed[200 + count:]:
        web.post("/twilio/sms", data=form, headers=headers)
    profile.disable()
    print(f"CPU per accepted text, without the profiler: {plain:.3f} ms ({count} requests)\n")
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        print(f"-- by {order} time (under the profiler) --")
        print(out.getvalue().split("\n\n", 1)[-1])


if __name__ == "__main__":
    raise SystemExit(main())
