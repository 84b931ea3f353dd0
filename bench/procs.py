"""The processes of one benchmark run: Redis, the fakes, gunicorn from the Procfile, and workers."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from sandbox.launcher import procfile_commands, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_APP = "gateway:create_app()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def base_env(settings: dict[str, str]) -> dict[str, str]:
    """A clean environment: the venv's bin first on PATH, the project importable, and the settings."""
    passed = {name: os.environ[name] for name in ("WORKER_THREADS", "WEB_CONCURRENCY", "WEB_THREADS")
              if name in os.environ}  # tuning knobs a run may set from the shell
    return {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8", **passed, **settings}


def start_redis(directory: Path, port: int) -> subprocess.Popen:
    """redis-server with the defaults a managed Redis has: append-only file, fsync every second."""
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process, "redis-server")
    return process


def start_fakes(uponai_port: int, twilio_port: int, settings: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.fakes", "--uponai-port", str(uponai_port),
               "--twilio-port", str(twilio_port), "--api-key", settings["UPONAI_API_KEY"],
               "--workspace-id", settings["UPONAI_WORKSPACE_ID"], "--account-sid", settings["TWILIO_ACCOUNT_SID"],
               "--auth-token", settings["TWILIO_AUTH_TOKEN"]]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=base_env({}), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(uponai_port, process, "fakes")
    wait_for_port(twilio_port, process, "fakes")
    return process


def web_command(app_spec: str = GATEWAY_APP) -> str:
    """The Procfile's ``web`` line, serving ``app_spec`` instead of the gateway for a reference."""
    line = procfile_commands(ROOT / "Procfile")["web"]
    for quoted in (f'"{GATEWAY_APP}"', f"'{GATEWAY_APP}'", GATEWAY_APP):
        if quoted in line:
            return line.replace(quoted, shlex.quote(app_spec), 1)
    raise RuntimeError(f"the Procfile's web line does not serve {GATEWAY_APP}: {line}")


def start_web(app_spec: str, port: int, settings: dict[str, str], log: Path,
              wrapper: tuple[str, ...] = ()) -> subprocess.Popen:
    """Run the Procfile's web line with bash, as a platform would, with PORT set (under ``wrapper``, a profiler)."""
    env = base_env({**settings, "PORT": str(port)})
    # gunicorn.conf.py would make a metrics directory in /tmp otherwise, left behind after the run.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(log.parent / f"metrics-{port}"))
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([*wrapper, "bash", "-c", f"exec {web_command(app_spec)}"], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, process, f"gunicorn ({app_spec})")
    return process


def start_workers(count: int, settings: dict[str, str], log_dir: Path,
                  wrapper: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """``count`` copies of the Procfile's ``worker`` line (under ``wrapper``, a profiler)."""
    line = procfile_commands(ROOT / "Procfile")["worker"]
    processes = []
    for index in range(count):
        with open(log_dir / f"worker-{index}.log", "ab") as out:
            processes.append(subprocess.Popen([*wrapper, "bash", "-c", f"exec {line}"], env=base_env(settings),
                                              cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    return processes


def gunicorn_workers(master: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(master.pid).children()
    except psutil.NoSuchProcess:
        return []


def rss_mb(pids: list[int]) -> list[float]:
    sizes = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(psutil.Process(pid).memory_info().rss / 2**20)
    return sizes


def cpu_seconds(pids: list[int], *, children: bool = False) -> float:
    """CPU seconds (user + system) of ``pids`` so far; with ``children``, of their child processes too (a
    worker's scheduler child), as they are now."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)] if children else [process]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
    return total


def stop(processes: list[subprocess.Popen], timeout: float = 20.0) -> None:
    """SIGTERM, then wait; SIGKILL what is still there after ``timeout``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
