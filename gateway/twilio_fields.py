"""The real formats of the fields Twilio sends, and which senders the gateway can answer.

Twilio's signature joins names and values with no separator, so a signed form can be re-cut: text moves
between a value and the next field's name without changing the signature. Every field that identifies or
dedupes a message is therefore held to its real format (never stricter, or real messages would be refused),
which leaves it no room to absorb a neighbour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.state import CHANNEL_ADDRESS

MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")  # Twilio's OpenAPI pattern for a Message sid
ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
# [0-9], not \d: \d also matches other scripts' digits (fullwidth, Arabic-Indic), which Twilio never sends.
NUM_MEDIA = re.compile(r"[0-9]{1,3}")
ERROR_CODE = re.compile(r"[0-9]{0,6}")
MESSAGE_STATUS = re.compile(r"[a-z_]{1,32}")  # queued, sent, partially_delivered...: lower case, so no name fits
E164 = re.compile(r"\+[0-9]{1,15}")
SHORT_CODE = re.compile(r"[0-9]{3,8}")
MAX_ADDRESS_CHARS = 64
# `sms-gateway doctor`'s self-test sends a signed status callback for this sid: well-formed (SM + 32 hex digits),
# never issued by Twilio. The webhook checks its signature like any other, then acknowledges it without recording
# or counting it: a check is not traffic.
DOCTOR_SELF_TEST_SID = "SM" + "d0c70" + "0" * 27


def split_channel(address: str) -> tuple[str, str]:
    """(channel, bare address): ``whatsapp:+1415...`` -> ("whatsapp", "+1415..."); a plain number has no channel."""
    match = CHANNEL_ADDRESS.fullmatch(address)
    return (match[1], match[2]) if match else ("", address)


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a From/To Twilio sends, or None.

    A number is E.164 (``+`` and digits, so it cannot run into the next field's name); short codes, channel
    ids and alphanumeric sender ids are printable text without spaces at the ends.
    """
    if len(address) > MAX_ADDRESS_CHARS:
        return f"is longer than {MAX_ADDRESS_CHARS} characters"
    _, bare = split_channel(address)
    if bare.startswith("+"):
        return None if E164.fullmatch(bare) else "is not an E.164 number (+ and up to 15 digits)"
    if not bare.isprintable() or bare != bare.strip():
        return "is not a phone number, short code or sender id"
    return None


def own_numbers(numbers: Iterable[str]) -> frozenset[str]:
    """The bare addresses of the gateway's own numbers."""
    return frozenset(split_channel(number.strip())[1] for number in numbers if number.strip())


def unanswerable(sender: str, own: frozenset[str]) -> str | None:
    """Why no reply can reach ``sender`` (``own_number``, ``short_code``, ``alphanumeric``), or None."""
    channel, bare = split_channel(sender)
    if bare in own:
        return "own_number"
    if channel or bare.startswith("+"):
        return None  # a phone number, or a channel's user id (WhatsApp, Messenger...): both can be answered
    if SHORT_CODE.fullmatch(bare):
        return "short_code"
    if any(ch.isalpha() for ch in bare):
        return "alphanumeric"
    return None
