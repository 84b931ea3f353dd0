"""Opt-out and other keywords: what a text that is a single control word means."""

from __future__ import annotations

from workers.store import InboundMessage

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


def keyword_of(message: InboundMessage, reset_word: str) -> str | None:
    """``STOP``, ``START``, ``HELP`` or ``RESET`` when the message is that keyword, else None."""
    if message.opt_out_type in ("STOP", "START", "HELP"):
        return message.opt_out_type
    word = message.body.strip().upper()
    if word in STOP_WORDS:
        return "STOP"
    if word in START_WORDS:
        return "START"
    if word in HELP_WORDS:
        return "HELP"
    if word == reset_word:
        return "RESET"
    return None
