"""gunicorn's settings file for the web process (gunicorn reads ./gunicorn.conf.py by itself).

The Procfile's command line sets binding, processes, threads and timeouts; this file sets up what
every web process shares: JSON-lines logs, and a multiprocess directory for the Prometheus metrics
so that ``/metrics`` sums all gunicorn processes (and the workers, when they share the directory).
"""

import os
import tempfile

# Must be in the environment before the app (and prometheus-client) is imported in the processes.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="smsgw-metrics-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# gunicorn would take X-Forwarded-Proto from 127.0.0.1 (its default), even with TRUSTED_PROXY_HOPS=0. The
# app alone decides which forwarded headers to believe (ProxyFix, TRUSTED_PROXY_HOPS deep; see gateway.app),
# so gunicorn believes none, from any address (this also overrides a FORWARDED_ALLOW_IPS variable).
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "gateway.observability.JsonLogFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO"), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # The app logs one line per webhook with its ids; gunicorn's access line would double it (and the
        # CPU spent on logging). GUNICORN_ACCESS_LOG=1 turns it back on.
        "gunicorn.access": {"level": "INFO" if os.environ.get("GUNICORN_ACCESS_LOG") == "1" else "WARNING",
                            "handlers": ["stderr"], "propagate": False},
        "twilio.http_client": {"level": "WARNING"},
    },
}


def child_exit(server, worker):
    """Let prometheus-client drop the live gauges of a gunicorn process that exited."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
