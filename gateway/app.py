"""Application factory: the app is a function of its settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, request
from rq import Queue
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Settings, load_settings
from core.metrics import metrics
from core.queues import QUEUE_NAME
from core.redis import connect_redis
from core.state import ConversationStore
from gateway import admin, health, observability, twilio_webhooks
from gateway import campaigns as campaign_routes  # (its routes join the admin blueprint on import)
from gateway.context import WebContext
from gateway.responses import error_response
from gateway.signatures import validator_for

MAX_REQUEST_BYTES = 64 * 1024  # Twilio's largest webhook (1600 chars, 10 media URLs) is far smaller

log = logging.getLogger(__name__)


def create_app(test_config: Settings | Mapping[str, str] | None = None) -> Flask:
    """Build the web app from ``test_config`` (Settings or a mapping of variables) or the environment."""
    if isinstance(test_config, Settings):
        settings = test_config
    elif test_config is not None:
        settings = load_settings(test_config, dotenv_path=None)
    else:
        settings = load_settings()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    # A webhook that waits for replicas (REDIS_WAIT_REPLICAS) reads WAIT's answer after up to that long.
    wait_seconds = settings.redis_wait_timeout_seconds if settings.redis_wait_replicas else 0
    redis = connect_redis(settings, for_web=True, socket_timeout=(1 + wait_seconds) if wait_seconds else None)
    app.extensions["sms_gateway"] = WebContext(
        settings=settings,
        redis=redis,
        store=ConversationStore(redis, dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
                                retention_seconds=settings.data_retention_seconds),
        queue=Queue(QUEUE_NAME, connection=redis),
        validator=validator_for(settings),
    )

    app.register_blueprint(twilio_webhooks.bp)
    app.register_blueprint(health.bp)
    admin.init_app(app, extra_operations=campaign_routes.OPERATIONS)
    observability.init_app(app)
    if settings.trusted_proxy_hops:
        # Behind that many proxies, trust their X-Forwarded-* headers for the client, scheme and host.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
    _register_error_handlers(app)
    metrics()  # built before the first request: gunicorn's threads would race to build them
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "The gateway hit an unexpected error; it has been logged.")
