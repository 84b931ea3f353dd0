"""The conversation lock: one job at a time works on a conversation (a drain, an idle close, an admin operation)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from core.state import ConversationStore
from workers.services import JobPort

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 20.0
DRAIN_TOKEN_PREFIX = "drain:"  # a drain that meets any other holder retries shortly instead of leaving


class LockKeeper:
    """Keeps a held conversation lock alive while a long agent turn runs; releases it on the way out."""

    def __init__(self, store: ConversationStore, cid: str, token: str):
        self.store, self.cid, self.token = store, cid, token
        self.released = False  # set once the holder let the lock go itself (release_if_idle, release)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-{cid}", daemon=True)

    def __enter__(self) -> LockKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        if not self.released:
            self.store.release_lock(self.cid, self.token)

    def release(self) -> None:
        """Let the lock go now (it is not released again on the way out)."""
        self.store.release_lock(self.cid, self.token)
        self.released = True

    def _run(self) -> None:
        while not self._stopped.wait(LOCK_TTL_SECONDS / 3):
            try:
                if not self.store.refresh_lock(self.cid, self.token, LOCK_TTL_SECONDS):
                    return  # released, or lost after a stall: nothing to keep
            except Exception as exc:  # a Redis blip: the next beat tries again
                log.warning("conversation=%s lock refresh failed: %s", self.cid, type(exc).__name__)


@contextmanager
def holding(store: ConversationStore, jobs: JobPort, cid: str, token: str) -> Iterator[None]:
    """Keep the (already acquired) lock for a non-drain operation; afterwards hand waiting texts to a drain.

    A text that arrived meanwhile had its drain job step aside (it retries), but one more drain makes sure.
    """
    try:
        with LockKeeper(store, cid, token):
            yield
    finally:
        if store.inbox_length(cid):
            jobs.enqueue_drain(cid)


def acquire_waiting(store: ConversationStore, cid: str, token: str, wait_seconds: float,
                    poll_seconds: float = 0.05) -> bool:
    """Take the lock, waiting up to ``wait_seconds`` for a running turn to finish."""
    deadline = time.monotonic() + wait_seconds
    while not store.acquire_lock(cid, token, LOCK_TTL_SECONDS):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_seconds)  # a turn takes seconds; polling the lock is cheap
    return True
