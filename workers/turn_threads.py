"""The threads a worker process runs its jobs on: up to ``size`` at once, each job on a thread of its own.

An agent turn mostly waits on UponAI, so a process waits on many turns at once, one thread each. The
threads start as they are first needed and then wait for the next job (no thread start per job); they
are daemon threads: a forced stop (a second Ctrl-C) does not wait for a turn that hangs. ``slot()``
lets the worker take a job from the queue only when a thread is free to run it, so a job never
waits inside the process while another process could run it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class TurnThreads:
    """A fixed number of slots, and the threads that run what is handed to them."""

    def __init__(self, size: int, name: str = "turn"):
        if size < 1:
            raise ValueError("at least one thread")
        self.size = size
        self.name = name
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._busy = 0  # slots taken: reserved for a job, or running one
        self._running = 0  # work handed to a thread and not finished
        self._threads: list[threading.Thread] = []
        self._idle_threads = 0

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def running(self) -> int:
        return self._running

    def take_slot(self, timeout: float) -> bool:
        """Reserve a thread for the next job; False if none came free within ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._busy < self.size, timeout):
                return False
            self._busy += 1
            return True

    def wait_for_idle_threads(self, timeout: float) -> int:
        """How many threads run nothing (a slot reserved for a job still to come counts as free), waiting up to
        ``timeout`` seconds for one; 0 if none came free."""
        with self._changed:
            self._changed.wait_for(lambda: self._running < self.size, timeout)
            return self.size - self._running

    def give_back_slot(self) -> None:
        """Release a slot reserved by ``take_slot`` that got no work (no job came)."""
        with self._changed:
            self._busy -= 1
            self._changed.notify_all()

    def run(self, work: Callable[[], None]) -> None:
        """Run ``work`` on a free thread, in the slot taken before; the slot is released when it returns."""
        with self._changed:
            if self._idle_threads == 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._serve, name=f"{self.name}-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                self._idle_threads += 1
                thread.start()
            self._idle_threads -= 1
            self._running += 1
        self._work.put(work)

    def wait_until_idle(self, timeout: float) -> bool:
        """Whether no work handed to a thread is still running, waiting up to ``timeout`` seconds.

        A slot taken for a job still to come does not count: it is its taker's, who waits here only once it takes
        no more jobs. A stop signal's handler raises in the taker's thread at any bytecode (RQ's warm shutdown
        does), and may leave a slot counted that nobody will give back: waiting for it would never end.
        """
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            try:
                work()
            except BaseException:  # a job's errors are RQ's to record; this thread must go on serving
                log.exception("a job thread's work raised")
            finally:
                with self._changed:
                    self._busy -= 1
                    self._running -= 1
                    self._idle_threads += 1
                    self._changed.notify_all()
