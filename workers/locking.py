"""The conversation lock: one job at a time works on a conversation (a drain, an idle close, an admin operation)."""

from __future__ import annotations

import logging
import math
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
    """Keeps a held conversation lock alive while a long agent turn runs; releases it on the way out.

    The refreshes are made by the process's one ``_Refresher`` thread (a turn costs no thread start).
    """

    def __init__(self, store: ConversationStore, cid: str, token: str, ttl_seconds: float = LOCK_TTL_SECONDS):
        self.store, self.cid, self.token, self.ttl_seconds = store, cid, token, ttl_seconds
        self.released = False  # set once the holder let the lock go itself (release_if_idle, release)

    def __enter__(self) -> LockKeeper:
        _refresher.keep(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _refresher.drop(self)
        if not self.released:
            self.store.release_lock(self.cid, self.token)

    def release(self) -> None:
        """Let the lock go now (it is not released again on the way out)."""
        self.store.release_lock(self.cid, self.token)
        self.released = True

    def refresh(self) -> bool:
        """Refresh the lock once; False when there is nothing more to keep (released, or lost after a stall)."""
        try:
            return self.store.refresh_lock(self.cid, self.token, self.ttl_seconds)
        except Exception as exc:  # a Redis blip: the next beat tries again
            log.warning("conversation=%s lock refresh failed: %s", self.cid, type(exc).__name__)
            return True


class _Refresher:
    """Refreshes every kept lock a third of its TTL after it was taken or last refreshed, on one thread.

    The thread sleeps until the earliest refresh is due and is woken only when a lock is kept that is due
    before that (with one TTL for all, only the first lock kept). A refresh that races the lock's release
    finds another token (or none) and changes nothing.
    """

    def __init__(self):
        self._due: dict[LockKeeper, float] = {}  # keeper -> monotonic time of its next refresh
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at = math.inf  # when the thread wakes next by itself

    def keep(self, keeper: LockKeeper) -> None:
        with self._changed:
            if self._thread is None or not self._thread.is_alive():  # (a forked child has no thread)
                self._thread = threading.Thread(target=self._run, name="lock-refresh", daemon=True)
                self._thread.start()
            at = self._due[keeper] = time.monotonic() + keeper.ttl_seconds / 3
            if at < self._wakes_at:
                self._wakes_at = at
                self._changed.notify()

    def drop(self, keeper: LockKeeper) -> None:
        with self._changed:
            self._due.pop(keeper, None)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [keeper for keeper, at in self._due.items() if at <= now]
                if not due:
                    self._wakes_at = min(self._due.values(), default=math.inf)
                    self._changed.wait(None if self._wakes_at == math.inf else self._wakes_at - now)
                    continue
            for keeper in due:
                kept = keeper.refresh()
                with self._changed:
                    if keeper not in self._due:
                        continue  # dropped meanwhile
                    if kept:
                        self._due[keeper] = time.monotonic() + keeper.ttl_seconds / 3
                    else:
                        del self._due[keeper]


_refresher = _Refresher()


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
