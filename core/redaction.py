"""Keeping personal data out of logs."""

from __future__ import annotations


def mask_number(number: str | None) -> str:
    """Show only a phone number's last two digits: ``+14155550123`` -> ``+*********23``."""
    if not number:
        return "-"
    prefix, _, address = number.rpartition(":")  # channel addresses such as whatsapp:+1...
    shown = address[-2:] if len(address) > 4 else ""
    masked = ("+" if address.startswith("+") else "") + "*" * max(len(address) - len(shown) - 1, 3) + shown
    return f"{prefix}:{masked}" if prefix else masked
