"""Shaping the agent's text for SMS: splitting long replies at natural boundaries."""

from __future__ import annotations

import re

MAX_SMS_CHARS = 1600  # Twilio refuses a longer Body (error 21617)

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n\s*\n|\n")


def split_for_sms(text: str, limit: int = MAX_SMS_CHARS) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters, in order.

    Breaks at paragraph or sentence ends when it can, else at a space, and never inside a word
    unless a single word is longer than ``limit``. Blank text gives no parts.
    """
    text = text.strip()
    parts: list[str] = []
    while text:
        if len(text) <= limit:
            parts.append(text)
            break
        cut = _best_cut(text, limit)
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [part for part in parts if part]


def _best_cut(text: str, limit: int) -> int:
    window = text[: limit + 1]
    sentence_cuts = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() <= limit]
    # Prefer a sentence end, unless it would leave a part much shorter than it could be.
    if sentence_cuts and sentence_cuts[-1] >= limit // 2:
        return sentence_cuts[-1]
    space = window.rfind(" ", 0, limit + 1)
    if space > 0:
        return space + 1
    newline = window.rfind("\n", 0, limit + 1)
    if newline > 0:
        return newline + 1
    return limit  # one word longer than a whole SMS: nothing else to do


def replies_to_parts(messages: list[str], limit: int = MAX_SMS_CHARS) -> list[str]:
    """Turn the agent's messages of one turn into the SMS bodies to send, in order."""
    parts: list[str] = []
    for message in messages:
        parts.extend(split_for_sms(message, limit))
    return parts


# Interim versions; the full SMS shaping (markdown, GSM-7, segment caps) replaces these.
class SegmentInfo(tuple):
    """(encoding, segments) of one SMS body."""

    encoding = property(lambda self: self[0])
    segments = property(lambda self: self[1])


def segment_info(body: str) -> SegmentInfo:
    """Rough encoding and segment count of ``body``."""
    gsm = all(ord(ch) < 128 for ch in body)
    single, multi = (160, 153) if gsm else (70, 67)
    count = 1 if len(body) <= single else -(-len(body) // multi)
    return SegmentInfo(("GSM-7" if gsm else "UCS-2", count))


def shape_reply(messages: list[str], *, max_segments: int | None = None, transliterate: bool = True) -> list[str]:
    """The SMS bodies for the agent's messages of one turn, in order."""
    return replies_to_parts(messages)
