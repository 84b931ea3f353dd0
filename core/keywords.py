"""Opt-out and other keywords: what a text that is a single control word means.

The three lists are Twilio's defaults on long codes (Twilio answers them itself and, for opt-out, blocks
later sends with error 21610), copied from Twilio's documentation:

- opt-out: "By default, Twilio handles standard English-language reply messages—STOP, UNSUBSCRIBE, END,
  QUIT, STOPALL, REVOKE, OPTOUT, and CANCEL" —
  https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
- opt-in (START, YES, UNSTOP) and help (HELP, INFO): Twilio support for opt-out keywords (SMS STOP filtering),
  https://help.twilio.com/hc/en-us/articles/223134027-Twilio-support-for-opt-out-keywords-SMS-STOP-filtering-

Matching follows what Twilio documents: "Only single-word messages will trigger the block ... replying
'STOP PLEASE' or 'PLEASE CANCEL' will not", in any (ASCII) case; surrounding whitespace is ignored. Twilio
documents nothing about punctuation, so "Stop." is not a keyword here: if Twilio did block it, the reply
fails with 21610 and that marks the number opted out (the failure corrects itself; a guess that opted a
person out when Twilio had not would leave them unanswered with nothing to correct it).
A Messaging Service with Advanced Opt-Out can change the lists; it then says which list matched in
``OptOutType``, which wins over these lists.
"""

from __future__ import annotations

from core.model import InboundMessage

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


def twilio_keyword(body: str) -> str | None:
    """``STOP``, ``START`` or ``HELP`` when ``body`` is one of Twilio's default keywords, else None."""
    word = body.strip()
    if not word.isascii():  # "ſtop".upper() is "STOP" in Python, not a keyword to Twilio
        return None
    word = word.upper()
    if word in STOP_WORDS:
        return "STOP"
    if word in START_WORDS:
        return "START"
    if word in HELP_WORDS:
        return "HELP"
    return None


def opt_word(message: InboundMessage) -> str | None:
    """``STOP`` or ``START`` when the text opts the person out or (if they are opted out) back in, else None.

    Twilio's ``OptOutType`` wins: a Messaging Service with Advanced Opt-Out says which of its lists matched.
    """
    if message.opt_out_type in ("STOP", "START", "HELP"):
        return message.opt_out_type if message.opt_out_type != "HELP" else None
    keyword = twilio_keyword(message.body)
    return keyword if keyword in ("STOP", "START") else None


def keyword_of(message: InboundMessage, reset_word: str, handoff_word: str | None = None) -> str | None:
    """``STOP``, ``START``, ``HELP``, ``RESET`` or ``HANDOFF`` when the message is that keyword, else None.

    The reset and handoff words (settings, upper case) match the whole text in any case, like Twilio's.
    """
    if message.opt_out_type in ("STOP", "START", "HELP"):
        return message.opt_out_type
    if keyword := twilio_keyword(message.body):
        return keyword
    word = message.body.strip().upper()
    if word == reset_word:
        return "RESET"
    if handoff_word and word == handoff_word:
        return "HANDOFF"
    return None
