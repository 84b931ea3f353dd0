"""Keeping personal data out of logs."""

from __future__ import annotations

# Defined with the settings (the lowest layer), which mask the numbers in their own problems the same way.
from config.settings import mask_number

__all__ = ["mask_number"]
