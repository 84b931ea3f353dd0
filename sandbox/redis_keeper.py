"""Runs the sandbox's embedded Redis so that it stops last even when ``sms-gateway run`` is killed.

The launcher stops its parts in order: web and workers, then Redis. If the launcher itself is killed
(SIGKILL, a crash), the kernel sends SIGTERM to all of them at once (their parent-death signal), and
Redis would vanish under workers still finishing their jobs. So the keeper, between the launcher and
redis-server, stops Redis at once only on SIGUSR1 (the launcher's orderly stop, once the rest is
down); on SIGTERM (or SIGINT, SIGHUP) it first waits until Redis has no other client left (the web and
the workers are gone), at most ``ORPHAN_GRACE_SECONDS``.

Usage: ``python -m sandbox.redis_keeper PORT redis-server [ARGS...]``
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from workers.startup import parent_death_signal

STOP_AT_ONCE = signal.SIGUSR1
ORPHAN_GRACE_SECONDS = 30  # longer than a worker takes to finish its job and stop (the launcher waits 25 s)


def main(argv: list[str]) -> int:
    port, command = int(argv[0]), argv[1:]
    stop, at_once = threading.Event(), threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(STOP_AT_ONCE, lambda *_: (at_once.set(), stop.set()))
    follow, keeper = parent_death_signal(), os.getpid()
    server = subprocess.Popen(command, preexec_fn=lambda: follow(keeper))
    while not stop.wait(0.2):
        if server.poll() is not None:
            return server.returncode
    if not at_once.is_set():
        wait_until_no_other_client(port)
    server.terminate()
    return server.wait()


def wait_until_no_other_client(port: int) -> None:
    client = Redis(host="127.0.0.1", port=port, socket_timeout=2)
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    try:
        while time.monotonic() < deadline and len(client.client_list()) > 1:
            time.sleep(0.1)
    except RedisError:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
