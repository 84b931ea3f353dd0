"""The simulators' state file: a close that meets a pending write stops the writer and saves the last state.

The race behind ``test_ctrl_c_stops_everything_in_order_and_a_restart_keeps_ports_and_data`` failing one run
in three: a ``close()`` during the writer's debounce had its wake-up cleared by the writer, which then waited
for a change that never came; ``sms-gateway run`` hung on Ctrl-C until the launcher's 15 s kill.
"""

from __future__ import annotations

import json
import linecache
import sys
import time

from sandbox.sim_state import StateFile
from tests.conftest import wait_for


def _in_debounce(writer: StateFile) -> bool:
    """Whether the writer thread waits out its debounce now (its ``write_until_closed`` frame is at that line)."""
    frame = sys._current_frames().get(writer.thread.ident)
    while frame is not None:
        if frame.f_code is StateFile.write_until_closed.__code__:
            return "debounce_seconds" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return False


def test_a_close_during_the_writers_debounce_stops_it_and_saves_the_last_state(tmp_path):
    state = {"value": 0}
    writer = StateFile(tmp_path / "state.json", lambda: dict(state), debounce_seconds=30).start()
    state["value"] = 1
    writer.changed()
    wait_for(lambda: _in_debounce(writer), message="the writer to wait out its debounce")
    state["value"] = 2
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5, "close() waited for the writer's join timeout"
    assert not writer.thread.is_alive()
    assert json.loads((tmp_path / "state.json").read_text()) == {"value": 2}
