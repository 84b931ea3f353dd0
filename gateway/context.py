"""What the views share (settings and the Redis-backed collaborators), and their access to it."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis
from rq import Queue

from config import Settings
from core.state import ConversationStore
from gateway.signatures import RotatingValidator


@dataclass(frozen=True)
class WebContext:
    """What the web app's views share: settings and the Redis-backed collaborators, built by ``create_app``."""

    settings: Settings
    redis: Redis
    store: ConversationStore
    queue: Queue
    validator: RotatingValidator


def web_context() -> WebContext:
    """The current app's ``WebContext``."""
    return current_app.extensions["sms_gateway"]
