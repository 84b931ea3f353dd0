"""gunicorn's settings file for the web process (gunicorn reads ./gunicorn.conf.py by itself).

The Procfile's command line sets the worker class and timeouts; this file takes the address, processes and
threads from the settings (PORT, WEB_CONCURRENCY, WEB_THREADS), and sets up what every web process shares:
JSON-lines logs, and a multiprocess directory for the Prometheus metrics so that ``/metrics`` sums all
gunicorn processes (and the workers, when they share the directory). gunicorn's command line still wins
(``--bind``, ``--workers``, ``--threads``), as it does over any settings file.

It also checks every setting once, in gunicorn's master before it binds or forks: a missing or invalid
one stops gunicorn with one block naming every problem. Left to the app factory, each gunicorn process
would log a traceback (as a JSON line) before the message, restart, and fail again.
"""

import os
import sys
import tempfile

from config import SettingsError, load_settings, metrics_directory

try:
    _settings = load_settings()
except SettingsError as _error:
    sys.exit(_error.report("sms-gateway web (gunicorn)"))  # printed to stderr, exit status 1: no traceback

bind = [f"0.0.0.0:{_settings.port}"]
workers = _settings.web_concurrency
threads = _settings.web_threads

# prometheus-client reads it from the environment of the processes: it must be there before they import it.
_metrics_dir = metrics_directory() or tempfile.mkdtemp(prefix="smsgw-metrics-")
os.makedirs(_metrics_dir, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

# gunicorn would take X-Forwarded-Proto from 127.0.0.1 (its default), even with TRUSTED_PROXY_HOPS=0. The
# app alone decides which forwarded headers to believe (ProxyFix, TRUSTED_PROXY_HOPS deep; see gateway.app),
# so gunicorn believes none, from any address (this also overrides a FORWARDED_ALLOW_IPS variable).
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}

# gunicorn 27's control socket (gunicornc) listens at one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl): two gateways on one host would fight over it, and nothing here uses it. Off.
control_socket_disable = True

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "gateway.observability.JsonLogFormatter",
                            "log_bodies": _settings.log_message_bodies}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings.log_level, "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # The app logs one line per webhook with its ids; gunicorn's access line would double it (and the
        # CPU spent on logging). GUNICORN_ACCESS_LOG=1 turns it back on.
        "gunicorn.access": {"level": "INFO" if _settings.gunicorn_access_log else "WARNING",
                            "handlers": ["stderr"], "propagate": False},
        "twilio.http_client": {"level": "WARNING"},
    },
}


def child_exit(server, worker):
    """Let prometheus-client drop the live gauges of a gunicorn process that exited."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
