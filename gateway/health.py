"""Health checks for load balancers."""

from __future__ import annotations

from flask import Blueprint, jsonify
from redis.exceptions import RedisError

from core.queues import live_workers
from gateway.context import gateway

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    gw = gateway()
    try:
        gw.redis.ping()
        depth = gw.queue.count
        workers = len(live_workers(gw.redis))
    except RedisError as exc:
        return jsonify({"status": "unavailable", "redis": f"unreachable ({type(exc).__name__})"}), 503
    ready = workers > 0
    body = {"status": "ok" if ready else "degraded", "redis": "ok", "workers": workers, "queue_depth": depth}
    return jsonify(body), 200 if ready else 503
