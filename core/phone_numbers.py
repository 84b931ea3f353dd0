"""Reading a phone number a person typed: the one rule of the admin API, the console and the phone page.

A number is international only when it says so, with ``+`` and a country code; spaces, dashes, dots and
brackets are allowed and dropped. Without ``+`` it is a national number of DEFAULT_PHONE_REGION's country
(its trunk prefix and country code without ``+`` are understood), and refused when no region is set:
``2015551234`` is a US number, and putting a ``+`` in front of it texts Egypt. An international dialling
prefix (00, 011...) is refused, not read: what it means depends on where it is dialled (00 44... is the UK
from Germany but not from the US, and 004 is a prefix of its own in Singapore), so ``+`` must replace it.
Letters, extensions, non-ASCII digits and control characters are refused rather than guessed at,
although phonenumbers would read some of them (``1-800-FLOWERS``, ``x12``, Arabic-Indic digits).
"""

from __future__ import annotations

import re

import phonenumbers

from config.settings import E164_EXAMPLE as EXAMPLE  # one example number, in settings' problems and here

MAX_NUMBER_CHARS = 32
NO_COUNTRY = (f"write the number in international format with + and country code, e.g. {EXAMPLE}, "
              "or set DEFAULT_PHONE_REGION")
IDD_HINT = "write + in its place, e.g. +44 20 7946 0958 for 00 44 20 7946 0958"
_NATIONAL = (phonenumbers.CountryCodeSource.FROM_DEFAULT_COUNTRY,
             phonenumbers.CountryCodeSource.FROM_NUMBER_WITHOUT_PLUS_SIGN)  # the region's own country code
# [0-9] and not \d: \d also matches other scripts' digits, which phonenumbers would quietly read as 0-9.
_TYPED = re.compile(r"\+?[0-9 ().-]*")
_DIGIT = re.compile(r"[0-9]")


class NumberError(ValueError):
    """The text is not a number the gateway will text; the message says why (without the number)."""


def read_number(text: object, default_region: str | None = None) -> str:
    """The E.164 form of ``text``; national numbers are read in ``default_region`` or refused.

    Raises NumberError.
    """
    if not isinstance(text, str):
        raise NumberError(f"must be a phone number written as text, e.g. {EXAMPLE}")
    typed = text.strip(" ")
    if not typed:
        raise NumberError(f"is empty: write a phone number with + and country code, e.g. {EXAMPLE}")
    if len(typed) > MAX_NUMBER_CHARS:
        raise NumberError(f"is too long (at most {MAX_NUMBER_CHARS} characters)")
    if not _TYPED.fullmatch(typed):
        raise NumberError("may hold only the digits 0-9, a leading +, spaces, dashes, dots and brackets "
                          "(no letters, extensions or other characters)")
    if not _DIGIT.search(typed):
        raise NumberError(f"has no digits: write a phone number with + and country code, e.g. {EXAMPLE}")
    international = typed.startswith("+")
    if not international and default_region is None:
        if typed.startswith("00"):
            raise NumberError(f"starts with an international dialling prefix: {IDD_HINT}")
        raise NumberError(f"has no country code: {NO_COUNTRY}")
    region = None if international else default_region
    try:
        number = phonenumbers.parse(typed, region, keep_raw_input=True)
    except phonenumbers.NumberParseException as exc:
        raise NumberError(_parse_problem(exc.error_type, region)) from None
    if not international and number.country_code_source not in _NATIONAL:
        raise NumberError(f"starts with an international dialling prefix: {IDD_HINT}")
    if number.extension or not phonenumbers.is_valid_number(number):
        where = f" in {region}; write a number of another country with + and its country code" if region else ""
        raise NumberError(f"is not a valid phone number{where} (checked with the phonenumbers library)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse_problem(error_type: int, region: str | None) -> str:
    if error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
        return "has no known country code after the +" if region is None else NO_COUNTRY
    if error_type == phonenumbers.NumberParseException.TOO_LONG:
        return "is too long to be a phone number"
    if error_type in (phonenumbers.NumberParseException.TOO_SHORT_NSN,
                      phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD):
        return "is too short to be a phone number"
    return "is not a phone number"
