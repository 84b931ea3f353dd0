"""The settings a running sandbox leaves for the console: ``sms-gateway doctor``, ``show``, ``send``... find them.

``sms-gateway run`` makes up the settings it was not given (an embedded Redis's URL, the simulators' URLs and
credentials, an admin token) and writes every setting it runs with to ``sandbox/sandbox.env`` in its data
directory, owner-only, and its process id to ``sandbox/running.json`` while it runs. A console command run on
the same machine then takes that file's settings under its own environment and ``.env``: a setting given
there wins, and only what it lacks comes from the sandbox. It does so only while that sandbox runs, so a file
left by an earlier run never mixes into a deployment's settings.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from sandbox.sim_state import write_atomically

ROOT = Path(__file__).resolve().parents[1]


def data_directory(env: Mapping[str, str]) -> Path:
    """Where the sandbox keeps its files: ``SANDBOX_DATA_DIR``, else ``var/`` in the project."""
    return Path(env.get("SANDBOX_DATA_DIR") or ROOT / "var").resolve()


def settings_file(data_dir: Path) -> Path:
    return data_dir / "sandbox" / "sandbox.env"


def write_settings_file(env: Mapping[str, str], path: Path) -> None:
    """Write the settings the gateway runs with (stand-ins included), owner-only, as shell assignments."""
    from dataclasses import fields

    from config import Settings

    names = [f.metadata["env"] for f in fields(Settings)] + ["PROMETHEUS_MULTIPROC_DIR"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}={shlex.quote(env[name])}\n" for name in names if env.get(name)))
    path.chmod(0o600)


def read_settings_file(path: Path) -> dict[str, str]:
    """The assignments ``write_settings_file`` wrote (shell-quoted values), by name."""
    values = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and "=" in words[0]:
            name, _, value = words[0].partition("=")
            values[name] = value
    return values


def mark_running(data_dir: Path, pid: int, events_url: str | None = None) -> Path:
    """Note that the sandbox of ``data_dir`` runs as process ``pid`` (and where its events receiver is, if it has
    one); the caller removes the file as it stops."""
    path = data_dir / "sandbox" / "running.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"pid": pid, "events_url": events_url}) + "\n")
    return path


def running_sandbox(env: Mapping[str, str]) -> dict | None:
    """What the sandbox running with ``env``'s data directory noted (``pid``, ``events_url``); None if none runs."""
    try:
        noted = json.loads((data_directory(env) / "sandbox" / "running.json").read_text())
        pid = noted["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or not is_alive(pid):
        return None
    return noted


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def running_sandbox_settings(env: Mapping[str, str]) -> tuple[Path, dict[str, str]] | None:
    """(settings file, its settings) of the sandbox running with ``env``'s data directory; None if none runs."""
    if running_sandbox(env) is None:
        return None
    path = settings_file(data_directory(env))
    try:
        return path, read_settings_file(path)
    except (OSError, ValueError):
        return None
