"""The collaborators the worker flow needs, and what it asks of the job queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.state import ConversationStore
from workers.uponai import UponAIClient


class JobPort(Protocol):
    """What the flow asks of the job queue."""

    def enqueue_drain(self, cid: str) -> None: ...

    def enqueue_idle_checks(self, cids: list[str], now: float) -> None: ...


@dataclass
class Services:
    """The collaborators the flow needs; tests pass real clients pointed at local fakes."""

    store: ConversationStore
    agent: UponAIClient
    sender: object  # TwilioSender
    settings: object  # config.Settings
    jobs: JobPort
