"""A simulator's state kept in a JSON file, so that the sandbox's chats and messages survive a restart.

Redis keeps the gateway's side of a conversation (the chat id, what was sent); without this the
simulators would forget theirs: the phone page would come back empty and the next text would find its
chat gone. The file is loaded once at start and written whole (temporary file, then ``os.replace``) a
moment after each change, and once more when the simulator stops.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.2  # changes that come together (a reply and its status callbacks) make one write


class StateFile:
    """Writes ``snapshot()`` to ``path`` shortly after ``changed()``, from a thread of its own."""

    def __init__(self, path: Path, snapshot: Callable[[], Any], debounce_seconds: float = DEBOUNCE_SECONDS):
        self.path = path
        self.snapshot = snapshot
        self.debounce_seconds = debounce_seconds
        self._changed = threading.Event()
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self.write_until_closed, name=f"state-{path.stem}", daemon=True)

    def load(self) -> Any | None:
        """What was saved, or None when there is nothing (first start) or the file cannot be read."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the saved state in %s: %s", self.path, exc)
            return None

    def start(self) -> StateFile:
        self.thread.start()
        return self

    def changed(self) -> None:
        self._changed.set()

    def close(self) -> None:
        """Stop the writer and write what there is now."""
        self._closing.set()
        self._changed.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.write()

    def write(self) -> None:
        write_atomically(self.path, json.dumps(self.snapshot(), separators=(",", ":")))

    def write_until_closed(self) -> None:
        """The writer thread's loop: one write per burst of changes, until ``close()``."""
        while True:
            self._changed.wait()
            if self._closing.is_set():
                return
            self._closing.wait(self.debounce_seconds)
            self._changed.clear()  # (this may clear close()'s wake-up too: the next line looks at the closing)
            if self._closing.is_set():
                return  # close() writes the last state itself
            try:
                self.write()
            except (OSError, TypeError, ValueError) as exc:
                log.warning("could not save the state to %s: %s", self.path, exc)


def write_atomically(path: Path, text: str) -> None:
    """Write a whole file or nothing (a reader never sees half of it, a crash leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
