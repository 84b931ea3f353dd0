"""Opt-out, opt-in and help keywords against Twilio's own published lists (and the reset word)."""

from __future__ import annotations

import pytest

from core import keywords
from core.keywords import keyword_of, twilio_keyword
from core.model import InboundMessage, conversation_id
from tests.conftest import GATEWAY_NUMBER

# Outside facts, copied from Twilio's documentation (not from workers/keywords.py):
# https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out — "By default, Twilio handles standard
# English-language reply messages—STOP, UNSUBSCRIBE, END, QUIT, STOPALL, REVOKE, OPTOUT, and CANCEL—for long
# code numbers in accordance with industry standards."
TWILIO_OPT_OUT = ["STOP", "UNSUBSCRIBE", "END", "QUIT", "STOPALL", "REVOKE", "OPTOUT", "CANCEL"]
# https://help.twilio.com/hc/en-us/articles/223134027-Twilio-support-for-opt-out-keywords-SMS-STOP-filtering-
# — "Recipients can ... resume receiving messages with the START, YES, or UNSTOP commands"; HELP and INFO
# return Twilio's help message. "Only single-word messages will trigger the block. So, for example, replying
# STOP will stop the customer ..., but replying "STOP PLEASE" or "PLEASE CANCEL" will not."
TWILIO_OPT_IN = ["START", "YES", "UNSTOP"]
TWILIO_HELP = ["HELP", "INFO"]
TWILIO_NOT_KEYWORDS = ["STOP PLEASE", "PLEASE CANCEL"]

EVERY_WORD = ([(w, "STOP") for w in TWILIO_OPT_OUT] + [(w, "START") for w in TWILIO_OPT_IN]
              + [(w, "HELP") for w in TWILIO_HELP])

PERSON = "+14155550123"
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def message(body: str, opt_out_type: str = "") -> InboundMessage:
    return InboundMessage(sid="SM" + "0" * 32, from_=PERSON, to=GATEWAY_NUMBER, body=body,
                          opt_out_type=opt_out_type)


def test_the_lists_are_twilios_default_lists():
    assert set(TWILIO_OPT_OUT) == keywords.STOP_WORDS
    assert set(TWILIO_OPT_IN) == keywords.START_WORDS
    assert set(TWILIO_HELP) == keywords.HELP_WORDS


@pytest.mark.parametrize(("word", "kind"), EVERY_WORD)
def test_every_twilio_word_in_any_case_and_with_surrounding_whitespace(word, kind):
    for body in (word, word.lower(), word.title(), word[0].lower() + word[1:], f"  {word.lower()} ",
                 f"\n{word}\t", f"\u00a0{word.title()}\r\n"):
        assert twilio_keyword(body) == kind, repr(body)
        assert keyword_of(message(body), "RESET") == kind, repr(body)


@pytest.mark.parametrize("body", [
    *TWILIO_NOT_KEYWORDS, "stop please", "Please stop by tomorrow", "STOP ALL", "OPT OUT", "OPT-OUT", "UN STOP",
    "STOPP", "STO", "YESS", "HELPME", "",
    # Twilio documents single words only, nothing about punctuation: not keywords here (see workers/keywords.py).
    "Stop.", "STOP!", "yes!", "help?", "'stop'",
    "ſtop", "quıt",  # non-ASCII letters that Python's upper() turns into S and I
    "ＳＴＯＰ",  # fullwidth letters
])
def test_anything_else_is_not_a_keyword(body):
    assert twilio_keyword(body) is None
    assert keyword_of(message(body), "RESET") is None


def test_opt_out_type_from_twilio_wins_over_the_text():
    assert keyword_of(message("arrêt", opt_out_type="STOP"), "RESET") == "STOP"
    assert keyword_of(message("stop", opt_out_type="START"), "RESET") == "START"
    assert keyword_of(message("hello", opt_out_type="HELP"), "RESET") == "HELP"
    assert keyword_of(message("hello", opt_out_type="SOMETHING"), "RESET") is None


def test_the_reset_word_is_matched_as_before():
    assert keyword_of(message("reset"), "RESET") == "RESET"
    assert keyword_of(message("  Reset\n"), "RESET") == "RESET"
    assert keyword_of(message("please reset"), "RESET") is None
    assert keyword_of(message("réinitialiser"), "RÉINITIALISER") == "RESET"  # a configured word need not be ASCII
    assert keyword_of(message("stop"), "STOP") == "STOP"  # Twilio's meaning wins over a clashing reset word
