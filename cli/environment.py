"""The settings the console commands (``doctor``, ``show``, ``send``...) read: the environment and ``.env``, over
those of the sandbox running here, if one runs (``sandbox.running``), so that the README's examples work as
written after ``make run``, with no settings to copy. A setting given in the environment or ``.env`` wins."""

from __future__ import annotations

import sys
from pathlib import Path

from config import read_environment

_said: set[Path] = set()  # the note is printed once per process


def console_environment() -> dict[str, str]:
    """The environment and ``.env``, over the running sandbox's settings (a note on stderr says so)."""
    from sandbox.running import running_sandbox_settings

    environ = read_environment()
    found = running_sandbox_settings(environ)
    if found is None:
        return environ
    path, values = found
    if path not in _said:
        _said.add(path)
        print(f"sms-gateway: using the settings of the sandbox running here ({_shown(path)}), "
              "under those of the environment and .env", file=sys.stderr)
    return {**values, **environ}


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
