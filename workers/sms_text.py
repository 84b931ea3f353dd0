"""Shaping the agent's text for SMS: plain text from markdown, GSM-7 characters, segments and splitting.

An SMS is sent in GSM-7 (160 characters in one segment, 153 per segment of a longer message; the
extension characters ``^{}\\[~]|€`` and form feed take two) unless one character is outside GSM-7,
which switches the whole message to UCS-2 (70 / 67 UTF-16 code units; an emoji takes two).
Segments are counted as Twilio's segment calculator counts them (TwilioDevEd/message-segment-calculator):
a character people see as one (a grapheme cluster: a flag, an emoji with a skin tone, a ZWJ family, a
keycap, a letter with its combining marks) is never split across segments, so one that would straddle a
segment boundary starts the next segment. Replies are split into parts only between such characters.
``shape_reply`` turns the agent's messages of one turn into the SMS bodies to send, in order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import NamedTuple

import regex

# Twilio refuses a longer Body (error 21617: "The concatenated message body exceeds the 1600 character limit"),
# counting as Java and JavaScript do, in UTF-16 code units: its error page says non-GSM characters such as emoji
# count as more than one character. Counted so here too: an emoji is two.
MAX_SMS_CHARS = 1600


def utf16_units(text: str) -> int:
    """How long ``text`` is as Twilio counts its 1600 limit: UTF-16 code units (a character beyond the BMP is 2)."""
    return len(text.encode("utf-16-le")) // 2

GSM7_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
              "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = "\f^{}\\[~]|€"  # sent as an escape plus a character: two septets each
_GSM7 = frozenset(GSM7_BASIC + GSM7_EXTENSION)

_GRAPHEME = regex.compile(r"\X")  # an extended grapheme cluster (Unicode UAX #29), as the `regex` module knows it
# A sentence ends at . ! ? … followed by space, at Chinese/Japanese 。！？ (and the halfwidth/fullwidth
# stops ｡ ．, written with no space after them), or at a line break; closing quotes and brackets stay with it.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+"
                           r"|(?<=[。！？｡．])[」』）】〕〉》\"'’”)\]]*+\s*+(?![。！？｡．])"
                           r"|\n\s*\n|\n")


class SegmentInfo(NamedTuple):
    """How an SMS body travels: its encoding, segment count and length in that encoding's units."""

    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


# -- GSM-7 -------------------------------------------------------------------------------------------

_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000\t"
_INVISIBLE = "\u00ad\u200b\u2060\ufeff"  # soft hyphen, zero-width space, word joiner, BOM
_EQUIVALENTS = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2039\u203a\u02bc\u00b4`", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043", "-"),
    **dict.fromkeys("\u2022\u2023\u25e6\u2219\u00b7\u25aa\u25cf", "-"),  # bullets and middle dots
    **dict.fromkeys(_SPACES, " "),
    **dict.fromkeys(_INVISIBLE, ""),
    **dict.fromkeys("\u2028\u2029", "\n"),
    "\u2026": "...", "\u2044": "/", "\u2215": "/", "\u00d7": "x", "\u02c6": "^", "\u02dc": "~", "\u00a6": "|",
    "\u2122": "TM", "\u00a9": "(C)", "\u00ae": "(R)", "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4",
    "\u2190": "<-", "\u2192": "->", "\u2194": "<->", "\u21d2": "=>", "\u2264": "<=", "\u2265": ">=",
    "\u2260": "!=", "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl",
}
_GSM7_TABLE = str.maketrans(_EQUIVALENTS)


def to_gsm7(text: str) -> str:
    """Replace typographic characters (curly quotes, dashes, ellipsis, odd spaces, bullets...) with GSM-7 ones.

    Characters with no GSM-7 equivalent (emoji, other scripts, most accented letters) are kept.
    """
    # NFC first: a decomposed "é" (e + combining accent) is the GSM-7 "é" once composed.
    return unicodedata.normalize("NFC", text).replace("\r\n", "\n").translate(_GSM7_TABLE)


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` can be sent in GSM-7 (basic or extension table)."""
    return all(ch in _GSM7 for ch in text)


def graphemes(text: str) -> list[str]:
    """The characters people see as one (extended grapheme clusters), CR LF as two as Twilio's calculator has it."""
    if text.isascii():  # every ASCII character is a cluster of its own, but CR LF (two here anyway)
        return list(text)
    clusters: list[str] = []
    for cluster in _GRAPHEME.findall(text):
        if cluster == "\r\n":
            clusters.extend(cluster)
        else:
            clusters.append(cluster)
    return clusters


def segment_info(body: str) -> SegmentInfo:
    """The encoding, segment count and units of ``body`` as an SMS (0 segments for an empty body)."""
    encoding, atoms = _atoms(body)
    return SegmentInfo(encoding, len(_pack(encoding, atoms)), sum(cost for _, cost in atoms))


def sms_segments(body: str) -> list[str]:
    """The text each segment of ``body`` carries, in order, as Twilio's calculator cuts it."""
    encoding, atoms = _atoms(body)
    return ["".join(text for text, _ in segment) for segment in _pack(encoding, atoms)]


_SINGLE_AND_PER_PART = {"GSM-7": (160, 153), "UCS-2": (70, 67)}  # units: one-segment message / part of a long one


def _atoms(body: str) -> tuple[str, list[tuple[str, int]]]:
    """The encoding of ``body`` and its indivisible pieces with their cost in that encoding's units."""
    if is_gsm7(body):
        return "GSM-7", [(ch, 2 if ch in GSM7_EXTENSION else 1) for ch in graphemes(body)]
    per_part = _SINGLE_AND_PER_PART["UCS-2"][1]
    atoms: list[tuple[str, int]] = []
    for cluster in graphemes(body):
        cost = len(cluster.encode("utf-16-le")) // 2  # a character outside the BMP is a surrogate pair: two
        if cost <= per_part:
            atoms.append((cluster, cost))
        else:  # longer than a whole segment (a pile of combining marks): phones must split it, by code point
            atoms.extend((ch, 2 if ord(ch) > 0xFFFF else 1) for ch in cluster)
    return "UCS-2", atoms


def _pack(encoding: str, atoms: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Atoms into segments: all in one if they fit, else each segment filled with whole atoms in order."""
    single, per_part = _SINGLE_AND_PER_PART[encoding]
    if sum(cost for _, cost in atoms) <= single:
        return [atoms] if atoms else []
    segments: list[list[tuple[str, int]]] = [[]]
    used = 0
    for atom in atoms:
        if used + atom[1] > per_part:  # it would straddle the boundary: it starts the next segment
            segments.append([])
            used = 0
        segments[-1].append(atom)
        used += atom[1]
    return segments


# -- markdown ----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"^\s{0,3}(?:(?:[-*_]\s*){3,}|={3,})\s*$")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_QUOTE = re.compile(r"^\s{0,3}(?:>\s?)+")
_BULLET = re.compile(r"^(\s*)[-*+•]\s+(.*)$")
_NUMBERED = re.compile(r"^(\s*)(\d{1,9})[.)]\s+(.*)$")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>~|])")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(].*?[\"')])?\s*\)")
_AUTOLINK = re.compile(r"<((?:https?://|mailto:)[^>\s]+|[^@<>\s]+@[^@<>\s]+\.[^@<>\s]+)>")
_BARE_URL = re.compile(r"\bhttps?://[^\s<>]*[^\s<>.,;:!?)'\"]")
_REFERENCE_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_EMPHASIS = (
    re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*"),
    re.compile(r"(?<!\w)___(?=\S)(.+?)(?<=\S)___(?!\w)"),
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"),
    re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"),
    re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"),  # not 2*3*4
    re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"),  # not snake_case_names
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"),
)
_HOLD = "\x00{}\x00"  # stands in for text that must come out verbatim (code, escaped characters)
_HELD = re.compile(r"\x00(\d+)\x00")


def markdown_to_sms(text: str) -> str:
    """Plain SMS text from markdown: bullets as "- ", links as "text (url)", code verbatim, the rest unmarked."""
    lines: list[str] = []
    in_fence = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        lines.append(line.rstrip() if in_fence else _plain_line(line))
    plain = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", plain).strip()


def _plain_line(line: str) -> str:
    if _RULE.match(line):
        return ""
    if header := _HEADER.match(line):
        return _plain_inline(header[1])
    line = _QUOTE.sub("", line)
    if bullet := _BULLET.match(line):
        return ("  " if bullet[1] else "") + "- " + _plain_inline(bullet[2])
    if numbered := _NUMBERED.match(line):
        return ("  " if numbered[1] else "") + f"{numbered[2]}. " + _plain_inline(numbered[3])
    return _plain_inline(line.strip())


def _plain_inline(text: str) -> str:
    held: list[str] = []

    def hold(value: str) -> str:
        held.append(value)
        return _HOLD.format(len(held) - 1)

    text = _ESCAPE.sub(lambda m: hold(m[1]), text)
    text = _CODE_SPAN.sub(lambda m: hold(m[2].strip()), text)
    text = _IMAGE_OR_LINK.sub(lambda m: hold(_link(m[1], m[2])), text)
    text = _AUTOLINK.sub(lambda m: hold(_link("", m[1])), text)
    text = _BARE_URL.sub(lambda m: hold(m[0]), text)  # an underscore in a URL is not emphasis
    text = _REFERENCE_LINK.sub(r"\1", text)
    for pattern in _EMPHASIS:
        text = pattern.sub(r"\1", text)
    # Held text may itself hold text (a link's words with an escape): restore until none is left.
    while _HELD.search(text):
        text = _HELD.sub(lambda m: held[int(m[1])], text)
    return text


def _link(label: str, url: str) -> str:
    address = url.removeprefix("mailto:").removeprefix("tel:")
    label = label.strip()
    for pattern in _EMPHASIS:
        label = pattern.sub(r"\1", label)
    if not label or label in (url, address) or label == re.sub(r"^https?://", "", address).rstrip("/"):
        return address
    return f"{label} ({address})" if address else label


# -- splitting ---------------------------------------------------------------------------------------

def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8: no lone surrogate (JSON's "\\ud800" escape decodes to one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (and a surrogate pair left as two code points joined)."""
    if is_valid_unicode(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def shape_reply(messages: list[str], *, max_segments: int | None, transliterate: bool) -> list[str]:
    """The SMS bodies for the agent's messages of one turn, in order.

    Each message becomes plain text (and GSM-7 characters when ``transliterate``), then is split at
    sentence or word boundaries, and only between characters people see as one, into parts of at most
    ``max_segments`` segments each as Twilio counts them (in the part's own encoding; no cap when None)
    and never over 1600 UTF-16 code units (Twilio's limit). Blank messages give nothing.
    """
    if max_segments is not None and max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    parts: list[str] = []
    for message in messages:
        text = markdown_to_sms(valid_unicode(message))  # an upstream 200 may carry what no SMS can
        if transliterate:
            text = to_gsm7(text)
        parts.extend(_split(text, MAX_SMS_CHARS, _segment_cap(max_segments)))
    return parts


def _segment_cap(max_segments: int | None) -> Callable[[str], bool]:
    if max_segments is None:
        return lambda part: utf16_units(part) <= MAX_SMS_CHARS
    return lambda part: utf16_units(part) <= MAX_SMS_CHARS and segment_info(part).segments <= max_segments


def _split(text: str, max_chars: int, fits: Callable[[str], bool]) -> list[str]:
    """Parts of ``text`` of at most ``max_chars`` characters for which ``fits`` holds, cut at natural breaks."""
    text = _strip(text)
    parts: list[str] = []
    while text:
        if len(text) <= max_chars and fits(text):
            parts.append(text)
            break
        cuts = _cuts(text)
        cut = _best_cut(text, _longest_fitting_prefix(text, cuts, max_chars, fits), cuts)
        parts.append(_strip(text[:cut]))
        text = _strip(text[cut:])
    return [part for part in parts if part]


def _cuts(text: str) -> list[int]:
    """The offsets where ``text`` may be cut without splitting a character people see as one, ascending."""
    offsets, offset = [], 0
    for piece, _ in _atoms(text)[1]:
        offset += len(piece)
        offsets.append(offset)
    return offsets


def _strip(text: str) -> str:
    """``text`` without leading and trailing whitespace, leaving a mark combined with a space in place."""
    clusters = graphemes(text)
    start, end = 0, len(clusters)
    while start < end and clusters[start].isspace():
        start += 1
    while end > start and clusters[end - 1].isspace():
        end -= 1
    return "".join(clusters[start:end])


def _longest_fitting_prefix(text: str, cuts: list[int], max_chars: int, fits: Callable[[str], bool]) -> int:
    # A longer prefix never takes fewer segments, so the cuts that fit form a range from the first.
    low, high = 0, len(cuts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if cuts[middle] <= max_chars and fits(text[: cuts[middle]]):
            low = middle
        else:
            high = middle - 1
    return cuts[low] if cuts[low] <= max_chars else max_chars  # one character longer than a part: cut it


def _best_cut(text: str, limit: int, cuts: list[int]) -> int:
    allowed = set(cuts)
    window = text[: limit + 1]
    sentence_cuts = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() <= limit and m.end() in allowed]
    # Prefer a sentence end, unless it would leave a part much shorter than it could be.
    if sentence_cuts and sentence_cuts[-1] >= limit // 2:
        return sentence_cuts[-1]
    for separator in (" ", "\n"):
        position = window.rfind(separator, 0, limit + 1)  # a space just after the limit ends the part too
        while position > 0 and position + 1 not in allowed:
            position = window.rfind(separator, 0, position)
        if position > 0:
            return position + 1
    return limit  # one word longer than a whole SMS: cut between characters
