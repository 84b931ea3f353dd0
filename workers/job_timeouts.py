"""Job timeouts for jobs run on threads: one watchdog thread per process, not a timer thread per job.

RQ's ``TimerDeathPenalty`` starts a ``threading.Timer`` (a new thread) for every job and raises the
timeout in the job's thread with ``PyThreadState_SetAsyncExc``. A worker process runs hundreds of jobs
a minute on its job threads: ``WatchdogDeathPenalty`` does the same with a single thread that sleeps
until the earliest deadline, so a job costs a heap push and a pop instead of a thread start.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import threading
import time

from rq.timeouts import BaseDeathPenalty, JobTimeoutException


@functools.lru_cache(maxsize=64)
def _timeout_exception(base: type[BaseException], seconds: float) -> type[BaseException]:
    """A subclass of ``base`` whose message names the timeout (an async exception is raised as a class)."""

    def init(self, *args):
        base.__init__(self, f"Task exceeded maximum timeout value ({seconds} seconds)")

    return type(base.__name__, (base,), {"__init__": init, "__module__": base.__module__})


class Watchdog:
    """Raises an exception in a thread once its deadline passes, unless cancelled first."""

    def __init__(self):
        self._deadlines: list[tuple[float, int, int, type[BaseException]]] = []  # (at, seq, thread id, exc)
        self._live: set[int] = set()  # seqs not cancelled
        self._changed = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, thread_id: int, exception: type[BaseException]) -> int:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="job-timeouts", daemon=True)
                self._thread.start()
            seq = next(self._seq)
            self._live.add(seq)
            heapq.heappush(self._deadlines, (time.monotonic() + seconds, seq, thread_id, exception))
            if self._deadlines[0][1] == seq:
                self._changed.notify()  # the earliest deadline moved closer
            return seq

    def disarm(self, seq: int) -> None:
        with self._changed:
            self._live.discard(seq)  # its heap entry is dropped when it comes up

    def _watch(self) -> None:
        with self._changed:
            while True:
                while self._deadlines and self._deadlines[0][1] not in self._live:
                    heapq.heappop(self._deadlines)
                if not self._deadlines:
                    self._changed.wait()
                    continue
                at, seq, thread_id, exception = self._deadlines[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
                self._live.discard(seq)
                _raise_in_thread(thread_id, exception)


def _raise_in_thread(thread_id: int, exception: type[BaseException]) -> None:
    """What RQ's TimerDeathPenalty does when its timer fires."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception))
    if done > 1:  # more than one thread state changed: undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


_watchdog = Watchdog()


class WatchdogDeathPenalty(BaseDeathPenalty):
    """RQ's job timeout for a job running in any thread, on the process's one watchdog thread."""

    def __init__(self, timeout, exception=JobTimeoutException, **kwargs):
        super().__init__(timeout, exception, **kwargs)
        self.seconds = timeout
        self.exception_class = _timeout_exception(exception, timeout) if timeout and timeout > 0 else exception
        self.thread_id = threading.get_ident()
        self.armed: int | None = None

    def setup_death_penalty(self):
        if self.seconds and self.seconds > 0:
            self.armed = _watchdog.arm(self.seconds, self.thread_id, self.exception_class)

    def cancel_death_penalty(self):
        if self.armed is not None:
            _watchdog.disarm(self.armed)
            self.armed = None
