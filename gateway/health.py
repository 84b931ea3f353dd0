"""Health checks for load balancers."""

from __future__ import annotations

from flask import Blueprint, jsonify
from redis.exceptions import RedisError

from core.queues import live_workers, queue_depth
from gateway.context import web_context

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    web = web_context()
    try:
        web.redis.ping()
        depth = queue_depth(web.queue)
        workers = len(live_workers(web.redis))
    except RedisError as exc:
        return jsonify({"status": "unavailable", "redis": f"unreachable ({type(exc).__name__})"}), 503
    ready = workers > 0
    body = {"status": "ok" if ready else "degraded", "redis": "ok", "workers": workers, "queue_depth": depth}
    return jsonify(body), 200 if ready else 503
