"""``sms-gateway``: the operator's command line (worker process and tools)."""

from __future__ import annotations

import argparse
import logging
import sys

from config import SettingsError, load_settings

# Plain text: argparse prints it as written (the module docstring's reST quotes would show as backticks).
DESCRIPTION = "The SMS gateway's command line: the worker process, the whole gateway on one machine, " \
              "and the operator's tools (settings, Twilio set-up, checks, admin operations)."
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EPILOG = "Settings come from the environment or a .env file in the working directory (and, for the " \
         "tools, from the sandbox that sms-gateway run runs here). " \
         "Run 'sms-gateway COMMAND --help' for a command's options."


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # twilio-python logs every request's headers at INFO: noise, and a risk for personal data.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)


def run_worker(args: argparse.Namespace) -> int:
    """Run an RQ worker (with the scheduler) on the gateway's queue."""
    from core import metrics
    from core.queues import WORKER_QUEUE_NAMES
    from core.redis import connect_redis
    from gateway.observability import configure_logging
    from workers import jobs, worker
    from workers.startup import MetricsPortUnusable, RedisOutageLines, RedisUnusable, redis_address, serve_metrics

    settings = load_settings()
    # A long-running process logs JSON lines (see gateway/observability.py), bodies only if the settings say so.
    configure_logging(args.log_level, log_bodies=settings.log_message_bodies)
    logging.getLogger("rq.job").addFilter(jobs.RetryCountFilter())  # RQ's "999 remaining" is not a true count
    metrics.metrics()  # built before any job runs (the worker's threads would race to build them)
    try:
        serve_metrics(settings.metrics_port)  # before Redis is waited for: a scrape sees the process is up
    except MetricsPortUnusable:  # already said in one log line
        return 1
    redis = connect_redis(settings, max_connections=worker.redis_connections_needed(settings.worker_threads,
                                                                                   settings.events_worker_threads))
    # One line per outage, not one per RQ worker thread per retry.
    logging.getLogger("rq.worker").addFilter(RedisOutageLines(redis_address(redis)))
    jobs.install_services(jobs.build_services(settings, redis))
    try:
        worker.run(redis, list(WORKER_QUEUE_NAMES), threads=settings.worker_threads,
                   events_threads=settings.events_worker_threads, burst=args.burst, max_jobs=args.max_jobs,
                   logging_level=args.log_level)
    except KeyboardInterrupt:  # Ctrl-C before RQ's own handler is in place (e.g. while waiting for Redis)
        return 130
    except RedisUnusable:  # already said in one log line (where Redis is, and why it cannot be used)
        return 1
    return 0


def run_all(args: argparse.Namespace) -> int:
    """Run web, worker and whatever stand-ins the settings call for, until Ctrl-C."""
    from sandbox.launcher import run

    return run(host=args.host)


def check_settings(args: argparse.Namespace) -> int:
    """Print every setting on its own line (``NAME = value``), secrets hidden."""
    from cli.environment import console_environment

    shown = load_settings(console_environment(), dotenv_path=None).shown()
    width = max(len(name) for name, _value in shown)
    print("settings ok:")
    for name, value in shown:
        print(f"  {name:<{width}} = {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sms-gateway", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"logging level: {', '.join(LOG_LEVELS)} (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker (with the scheduler) on the gateway's queue")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    worker.set_defaults(func=run_worker)

    run = sub.add_parser("run", help="run the whole gateway on this machine (stand-ins for missing settings)")
    run.add_argument("--host", default="127.0.0.1",
                     help="the address the web listens on (default 127.0.0.1, this machine only; 0.0.0.0: every "
                          "interface, e.g. for a phone on your network or a tunnel)")
    run.set_defaults(func=run_all)

    check = sub.add_parser("check-settings", help="load the settings and show them (secrets hidden)")
    check.set_defaults(func=check_settings)

    from cli import configure

    configure.add_commands(sub)

    from cli import admin

    admin.add_commands(sub)

    from cli import campaigns

    campaigns.add_commands(sub)

    from cli import events

    events.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":  # the worker sets up its logs once its settings are loaded
        _configure_logging(args.log_level)
    try:
        return args.func(args)
    except SettingsError as exc:  # one block naming every problem, no traceback
        print(exc.report(f"sms-gateway {args.command}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
