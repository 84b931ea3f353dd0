"""SMS-native replies: markdown to plain text, GSM-7 characters, segment counts and splitting (known answers)."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import wait_for
from workers.sms_text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_SMS_CHARS,
    SegmentInfo,
    graphemes,
    is_gsm7,
    markdown_to_sms,
    segment_info,
    shape_reply,
    sms_segments,
    to_gsm7,
    utf16_units,
)

EMOJI = "\U0001F600"  # outside the BMP: two UTF-16 code units


# -- segment_info ------------------------------------------------------------------------------------

def test_gsm7_alphabet_is_the_standard_one():
    assert len(GSM7_BASIC) == 127  # 128 code points less the escape to the extension table
    assert len(set(GSM7_BASIC)) == 127
    assert len(GSM7_EXTENSION) == 10
    assert is_gsm7("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà^{}\\[~]|€")
    for outside in ("`", "ç", "á", "’", "—", "…", "\u00a0", "\t", EMOJI, "Ж"):
        assert not is_gsm7(outside), outside


@pytest.mark.parametrize(("body", "expected"), [
    ("", SegmentInfo("GSM-7", 0, 0)),
    ("Hello", SegmentInfo("GSM-7", 1, 5)),
    ("a" * 160, SegmentInfo("GSM-7", 1, 160)),
    ("a" * 161, SegmentInfo("GSM-7", 2, 161)),
    ("a" * 306, SegmentInfo("GSM-7", 2, 306)),
    ("a" * 307, SegmentInfo("GSM-7", 3, 307)),
    ("a" * 160 + EMOJI, SegmentInfo("UCS-2", 3, 162)),
    ("a" * 159 + EMOJI, SegmentInfo("UCS-2", 3, 161)),  # one of the 160 replaced by an emoji
    (EMOJI * 35, SegmentInfo("UCS-2", 1, 70)),
    (EMOJI * 36, SegmentInfo("UCS-2", 2, 72)),
    ("a" * 69 + "’", SegmentInfo("UCS-2", 1, 70)),  # one curly apostrophe: 70 a segment, not 160
    ("a" * 70 + "’", SegmentInfo("UCS-2", 2, 71)),
    ("a" * 134, SegmentInfo("GSM-7", 1, 134)),
    ("Ж" * 134, SegmentInfo("UCS-2", 2, 134)),
    ("Ж" * 135, SegmentInfo("UCS-2", 3, 135)),
    ("{" * 80, SegmentInfo("GSM-7", 1, 160)),  # extension characters count twice
    ("{" * 81, SegmentInfo("GSM-7", 2, 162)),
    ("€\f^{}|[~]\\", SegmentInfo("GSM-7", 1, 20)),
    ("Привет", SegmentInfo("UCS-2", 1, 6)),
])
def test_segment_info_known_answers(body, expected):
    assert segment_info(body) == expected


def test_an_escape_pair_or_surrogate_pair_is_never_split_across_segments():
    # 306 septets would be exactly two parts of 153, but the pair cannot straddle the boundary.
    assert segment_info("a" * 152 + "€" + "a" * 152) == SegmentInfo("GSM-7", 3, 306)
    assert segment_info("あ" * 66 + EMOJI + "あ" * 66) == SegmentInfo("UCS-2", 3, 134)
    assert segment_info("a" * 151 + "€" + "a" * 153) == SegmentInfo("GSM-7", 2, 306)


def test_segment_info_reads_as_a_tuple_and_by_name():
    encoding, segments, units = segment_info("hi")
    assert (encoding, segments, units) == ("GSM-7", 1, 2)
    assert segment_info("hi").encoding == "GSM-7"


# -- to_gsm7 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("“Hello,” she said — it’s ‘fine’…", "\"Hello,\" she said - it's 'fine'..."),
    ("9–5, Mon‒Fri, 3 − 1 ‐ x ‑ y ―", "9-5, Mon-Fri, 3 - 1 - x - y -"),
    ("a\u00a0b\u2009c\u202fd\u2003e\u3000f\tg", "a b c d e f g"),
    ("zero\u200bwidth\u2060join\ufeff and soft\u00adhyphen", "zerowidthjoin and softhyphen"),
    ("• one\n◦ two\n‣ three · four", "- one\n- two\n- three - four"),
    ("«quoted» ‹single› ″inch″ 5′", "\"quoted\" 'single' \"inch\" 5'"),
    ("Brand™ © ® ½ ¼ ¾ 2×3", "BrandTM (C) (R) 1/2 1/4 3/4 2x3"),
    ("a → b ← c ⇒ d ≤ e ≥ f ≠ g", "a -> b <- c => d <= e >= f != g"),
    ("line\r\nbreak\u2028sep", "line\nbreak\nsep"),
    ("\ufb01ne `code`", "fine 'code'"),
    ("Cafe\u0301", "Café"),  # a decomposed accent is composed into the GSM-7 letter
])
def test_to_gsm7_known_answers(text, expected):
    assert to_gsm7(text) == expected
    assert is_gsm7(expected)


def test_to_gsm7_keeps_characters_without_an_equivalent():
    text = f"Café {EMOJI} Привет 你好 ñ á ç"
    assert to_gsm7(text) == text
    assert segment_info(to_gsm7(text)).encoding == "UCS-2"


def test_one_stray_typographic_character_no_longer_costs_a_segment():
    text = "It’s ready. " + "x" * 140
    assert segment_info(text) == SegmentInfo("UCS-2", 3, 152)
    assert segment_info(to_gsm7(text)) == SegmentInfo("GSM-7", 1, 152)


# -- markdown_to_sms ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("markdown", "expected"), [
    ("Hi! How are you? It's 5 p.m. - see you.", "Hi! How are you? It's 5 p.m. - see you."),
    ("**bold** and __strong__", "bold and strong"),
    ("*it* and _em_ and ***both*** and ___all___", "it and em and both and all"),
    ("~~old~~ new", "old new"),
    ("# Title\n## Sub ##\n###### Small", "Title\nSub\nSmall"),
    ("#hashtag stays", "#hashtag stays"),
    ("- a\n* b\n+ c\n  - nested\n• d", "- a\n- b\n- c\n  - nested\n- d"),
    ("1. one\n2) two\n10. ten", "1. one\n2. two\n10. ten"),
    ("- **Name:** Ada", "- Name: Ada"),
    ("[Book now](https://ex.com/book)", "Book now (https://ex.com/book)"),
    ("[**Book**](https://ex.com/a_b \"Title\")", "Book (https://ex.com/a_b)"),
    ("[https://ex.com](https://ex.com)", "https://ex.com"),
    ("[ex.com](https://ex.com/)", "https://ex.com/"),
    ("[mail us](mailto:help@ex.com), [call](tel:+15550100)", "mail us (help@ex.com), call (+15550100)"),
    ("![logo](https://ex.com/l.png)", "logo (https://ex.com/l.png)"),
    ("<https://ex.com/x> or <help@ex.com>", "https://ex.com/x or help@ex.com"),
    ("Run `pip install x` now", "Run pip install x now"),
    ("Use ``a `tick` b``", "Use a `tick` b"),
    ("```python\nprint('**hi**')\n  x = 1\n```\nafter", "print('**hi**')\n  x = 1\nafter"),
    ("> quoted *text*\n>> deeper", "quoted text\ndeeper"),
    ("above\n\n---\n\nbelow\n***\n===", "above\n\nbelow"),
    ("snake_case_name, 2*3*4, a * b, a_b", "snake_case_name, 2*3*4, a * b, a_b"),
    ("see https://x.com/_private_/page_2.", "see https://x.com/_private_/page_2."),
    ("\\*not italic\\* and \\_no\\_", "*not italic* and _no_"),
    ("a\n\n\n\nb  \n", "a\n\nb"),
    ("[see the FAQ][faq]", "see the FAQ"),
])
def test_markdown_to_sms_known_answers(markdown, expected):
    assert markdown_to_sms(markdown) == expected


def test_markdown_to_sms_on_a_whole_agent_answer():
    answer = (
        "## Opening hours\n\n"
        "We're open **Mon–Fri**, *9–5*.\n\n"
        "1. Book at [our site](https://ex.com/book)\n"
        "2. Bring your `ID`\n\n"
        "- Parking: free\n"
        "- Wi-Fi: __yes__\n"
    )
    assert markdown_to_sms(answer) == (
        "Opening hours\n\n"
        "We're open Mon–Fri, 9–5.\n\n"
        "1. Book at our site (https://ex.com/book)\n"
        "2. Bring your ID\n\n"
        "- Parking: free\n"
        "- Wi-Fi: yes"
    )


# -- shape_reply -------------------------------------------------------------------------------------

def test_blank_messages_give_nothing():
    assert shape_reply(["", "   ", "\n\n", "---", "```\n```"], max_segments=3, transliterate=True) == []


def test_each_message_is_plain_and_gsm7_in_order():
    messages = ["**Hi** — welcome…", "Second: “quoted”"]
    assert shape_reply(messages, max_segments=None, transliterate=True) == ["Hi - welcome...", 'Second: "quoted"']
    assert shape_reply(messages, max_segments=None, transliterate=False) == ["Hi — welcome…", "Second: “quoted”"]


def test_parts_fit_the_segment_cap_and_break_between_sentences():
    sentences = [f"This is sentence number {i:02d} of ten." for i in range(1, 11)]  # 34 characters each
    text = " ".join(sentences)
    parts = shape_reply([text], max_segments=1, transliterate=True)
    # 160 GSM-7 characters: four sentences and three spaces are 139; a fifth would make 174.
    assert parts == [" ".join(sentences[0:4]), " ".join(sentences[4:8]), " ".join(sentences[8:10])]
    assert all(segment_info(p).segments == 1 for p in parts)
    assert shape_reply([text], max_segments=3, transliterate=True) == [text]  # 349 characters: 3 segments


def test_a_part_is_measured_in_its_own_encoding():
    text = EMOJI + " word" * 30
    parts = shape_reply([text], max_segments=1, transliterate=True)
    # The emoji's part is UCS-2 (70 units: the emoji and 13 words); the rest is GSM-7 and may hold 160.
    assert parts == [EMOJI + " word" * 13, "word" + " word" * 16]
    assert [segment_info(p) for p in parts] == [SegmentInfo("UCS-2", 1, 67), SegmentInfo("GSM-7", 1, 84)]


def test_extension_characters_count_twice_when_splitting():
    tokens = ["{x}"] * 50  # 5 septets each
    parts = shape_reply([" ".join(tokens)], max_segments=1, transliterate=True)
    assert parts == [" ".join(tokens[:26]), " ".join(tokens[26:])]  # 26*5 + 25 = 155 septets
    assert segment_info(parts[0]) == SegmentInfo("GSM-7", 1, 155)


def test_transliteration_keeps_a_reply_in_fewer_parts():
    text = "It’s “here” — " + "word " * 28  # 154 characters
    assert shape_reply([text], max_segments=1, transliterate=True) == [to_gsm7(text).strip()]
    plain = shape_reply([text], max_segments=1, transliterate=False)
    # Without it the first part is UCS-2 (70 units at most); the rest has no such character and is GSM-7.
    assert plain == ["It’s “here” — " + " ".join(["word"] * 11), " ".join(["word"] * 17)]
    assert [segment_info(p) for p in plain] == [SegmentInfo("UCS-2", 1, 68), SegmentInfo("GSM-7", 1, 84)]


def test_never_over_1600_characters_and_never_mid_word():
    words = [f"w{i % 97:02d}{'x' * (i % 7)}" for i in range(600)]
    text = " ".join(words)
    parts = shape_reply([text], max_segments=None, transliterate=True)
    assert len(parts) > 1
    assert all(len(p) <= MAX_SMS_CHARS for p in parts)
    assert " ".join(parts) == text  # every cut was at a space
    capped = shape_reply([text], max_segments=2, transliterate=True)
    assert all(segment_info(p).segments <= 2 for p in capped)
    assert " ".join(capped) == text
    assert all(len(p) > 250 for p in capped[:-1])  # parts are filled, not cut short


def test_a_single_word_longer_than_a_part_is_cut_because_it_must_be():
    assert shape_reply(["x" * 200], max_segments=1, transliterate=True) == ["x" * 160, "x" * 40]


def test_markdown_lines_are_natural_places_to_cut():
    items = [f"* Item {i}: **something** to remember" for i in range(1, 9)]  # 31 characters a line, plain
    parts = shape_reply(["\n".join(items)], max_segments=1, transliterate=True)
    plain = [f"- Item {i}: something to remember" for i in range(1, 9)]
    assert parts == ["\n".join(plain[0:5]), "\n".join(plain[5:8])]  # 5 * 31 + 4 newlines = 159


def test_max_segments_must_be_positive():
    with pytest.raises(ValueError):
        shape_reply(["hi"], max_segments=0, transliterate=True)


# -- without a segment cap: Twilio's 1600 characters --------------------------------------------------

def test_without_a_segment_cap_replies_are_cut_at_1600_characters_between_words():
    assert shape_reply(["one two", "", "three"], max_segments=None, transliterate=True) == ["one two", "three"]
    long_text = " ".join(["word"] * 500)
    parts = shape_reply([long_text], max_segments=None, transliterate=False)
    assert [len(p) for p in parts] == [1599, 899]
    assert " ".join(parts) == long_text
    assert shape_reply(["x" * 3500], max_segments=None, transliterate=True) == ["x" * 1600, "x" * 1600, "x" * 300]


# -- Twilio's segment calculator: its published test vectors ------------------------------------------

# Copied as data from TwilioDevEd/message-segment-calculator (npm sms-segments-calculator): the repository
# paths and commits are in the file. Each case asserts what the calculator's own Jest test asserts.
VECTORS = json.loads((Path(__file__).parent / "data" / "twilio_segment_vectors.json").read_text(encoding="utf-8"))


def _units(text: str, encoding: str) -> int:
    if encoding == "GSM-7":
        return sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    return len(text.encode("utf-16-le")) // 2


def _calculator_view(body: str, name: str, expected):
    """What the calculator's property ``name`` would be for ``body``, from the gateway's own functions."""
    info = segment_info(body)
    bits = 7 if info.encoding == "GSM-7" else 16
    if name == "encoding":
        return info.encoding
    if name == "segments":
        return info.segments
    if name == "messageSize":  # bits, without the User Data Header
        return info.units * bits
    if name == "totalSize":  # bits, with a 6-octet User Data Header in each part of a long message
        return info.units * bits + (48 * info.segments if info.segments > 1 else 0)
    if name == "characters":
        return info.units if info.encoding == "GSM-7" else len(graphemes(body))
    if name == "unicodeScalars":
        return len(body)
    if name == "lastSegment":
        return sms_segments(body)[-1]
    if name == "nonGsmCharacters":
        return [g for g in graphemes(body) if not is_gsm7(g)]
    if name == "firstSegmentUsed":
        return _units(sms_segments(body)[0], info.encoding)
    if name == "segmentIndexOfCharacter":
        owner = [index for index, text in enumerate(sms_segments(body)) for _ in graphemes(text)]
        return {position: owner[int(position)] for position in expected}
    raise AssertionError(f"no mapping for the calculator's {name}")


def test_the_gsm7_alphabet_is_the_calculators():
    table = VECTORS["gsm7_table"]
    assert {chr(int(code, 16)) for code in table["one_septet"]} == set(GSM7_BASIC)
    assert {chr(int(code, 16)) for code in table["two_septets"]} == set(GSM7_EXTENSION)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: f"{case['file']}: {case['test']}")
def test_twilio_segment_calculator_vectors(case):
    body = case["body"]
    actual = {name: _calculator_view(body, name, value) for name, value in case["expect"].items()}
    assert actual == case["expect"]
    assert "".join(sms_segments(body)) == body


# -- our own cases at every boundary (hand-computed the calculator's way) -------------------------------

FLAG_US, FLAG_FR = "\U0001F1FA\U0001F1F8", "\U0001F1EB\U0001F1F7"  # two regional indicators each: 4 units
FAMILY = "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466"  # ZWJ sequence: 11 units
THUMB_DARK = "\U0001F44D\U0001F3FD"  # emoji + skin-tone modifier: 4 units
KEYCAP_ONE = "1\ufe0f\u20e3"  # digit + VS16 + combining keycap: 3 units
THAI = "\u0e01\u0e48"  # ko kai + mai ek (a tone mark): 2 units
ZH = "Ж"  # one UCS-2 unit, never GSM-7


def _describe(value) -> str | None:
    """A short test id: runs of one character as ``char*count``, non-ASCII as code points."""
    if not isinstance(value, str):
        return "parts" if isinstance(value, list) else None
    runs: list[list] = []
    for cluster in graphemes(value):
        if runs and runs[-1][0] == cluster:
            runs[-1][1] += 1
        else:
            runs.append([cluster, 1])
    name = lambda c: c if c.isascii() else "+".join(f"U{ord(ch):X}" for ch in c)  # noqa: E731
    return " ".join(f"{name(c)}*{n}" if n > 1 else name(c) for c, n in runs)


@pytest.mark.parametrize(("body", "segments"), [
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("a" * 1530, 10), ("a" * 1531, 11),  # 153 * k
    ("a" * 158 + "€", 1), ("a" * 159 + "€", 2),  # an escape pair at the end of a single segment
    (ZH * 70, 1), (ZH * 71, 2), (ZH * 134, 2), (ZH * 135, 3), (ZH * 670, 10), (ZH * 671, 11),  # 67 * k
    (EMOJI * 35, 1), (ZH * 69 + EMOJI, 2),
    (FLAG_US * 17, 1), (FLAG_US * 18, 2),  # 68 units fit one segment, 72 do not
    (FLAG_US * 32, 2), (FLAG_US * 33, 3),  # 16 whole flags (64 units) a part: a 17th would straddle
    (FLAG_US * 160, 10), (FLAG_US * 165, 11),  # 330 units: 10 segments if flags could be cut, 11 as Twilio counts
    (FAMILY * 6, 1), (FAMILY * 7, 2), (FAMILY * 12, 2), (FAMILY * 13, 3),  # 6 families (66 units) a part
], ids=_describe)
def test_segment_counts_at_every_boundary(body, segments):
    assert segment_info(body).segments == segments
    assert len(sms_segments(body)) == segments
    assert "".join(sms_segments(body)) == body


@pytest.mark.parametrize(("body", "expected"), [
    ("a" * 152 + "€" + "a" * 10, ["a" * 152, "€" + "a" * 10]),  # escape pair at 153/154: moves whole
    ("a" * 159 + "€", ["a" * 153, "a" * 6 + "€"]),
    (ZH * 66 + EMOJI + ZH * 10, [ZH * 66, EMOJI + ZH * 10]),  # surrogate pair at 67/68
    (ZH * 65 + FLAG_US + ZH * 10, [ZH * 65, FLAG_US + ZH * 10]),  # a flag is not cut into two letters
    (ZH * 60 + FAMILY + ZH * 10, [ZH * 60, FAMILY + ZH * 10]),
    (ZH * 65 + THUMB_DARK + ZH * 10, [ZH * 65, THUMB_DARK + ZH * 10]),
    (ZH * 65 + KEYCAP_ONE + ZH * 10, [ZH * 65, KEYCAP_ONE + ZH * 10]),
    (ZH * 66 + THAI + ZH * 10, [ZH * 66, THAI + ZH * 10]),
], ids=_describe)
def test_a_character_straddling_a_segment_boundary_starts_the_next_segment(body, expected):
    assert sms_segments(body) == expected


def test_a_cluster_longer_than_a_segment_is_split_by_code_point_because_it_must_be():
    zalgo = "e" + "\u0301" * 100  # one grapheme of 101 units
    assert graphemes(zalgo) == [zalgo]
    assert sms_segments(zalgo) == [zalgo[:67], zalgo[67:]]


# -- splitting replies between characters people see as one ------------------------------------------

def _assert_whole_clusters(text: str, parts: list[str], max_segments: int | None) -> None:
    visible = [g for g in graphemes(text) if not g.isspace()]
    assert [g for part in parts for g in graphemes(part) if not g.isspace()] == visible
    boundaries, offset = set(), 0
    for cluster in graphemes(text):
        offset += len(cluster)
        boundaries.add(offset)
    position = 0
    for part in parts:
        start = text.index(part, position)
        assert start == 0 or start in boundaries, (part, start)
        assert start + len(part) in boundaries, (part, start + len(part))
        position = start + len(part)
        assert unicodedata.category(part[0]) not in ("Mn", "Mc", "Me"), part
        assert not part.endswith("\u200d"), part
        if max_segments is not None:
            assert segment_info(part).segments <= max_segments, part
        assert len(part) <= MAX_SMS_CHARS


def test_sms_max_segments_holds_by_twilios_count_for_a_reply_of_flags():
    text = FLAG_US * 165  # 10 segments if a flag could be cut in two, 11 as Twilio counts
    parts = shape_reply([text], max_segments=10, transliterate=True)
    assert parts == [FLAG_US * 160, FLAG_US * 5]
    assert [segment_info(p).segments for p in parts] == [10, 1]


def test_flags_are_never_cut_in_half_at_a_part_boundary():
    text = (FLAG_FR + FLAG_US + "\U0001F1E9\U0001F1EA" + "\U0001F1EE\U0001F1F9") * 20  # 80 flags, no spaces
    parts = shape_reply([text], max_segments=1, transliterate=True)
    assert parts[0] == text[:34]  # 17 flags: 68 units, and half an 18th would have fit the 70
    assert "".join(parts) == text
    assert [g for p in parts for g in graphemes(p)] == graphemes(text)  # every flag keeps its country
    _assert_whole_clusters(text, parts, 1)


@pytest.mark.parametrize("cluster", [FLAG_US, FAMILY, THUMB_DARK, KEYCAP_ONE, THAI, "e\u0301", "\u0928\u094d\u0926"],
                         ids=_describe)
@pytest.mark.parametrize("max_segments", [1, 2, 10])
def test_every_part_holds_whole_clusters(cluster, max_segments):
    text = cluster * 400
    parts = shape_reply([text], max_segments=max_segments, transliterate=False)
    assert len(parts) > 1
    assert all(part == cluster * (len(part) // len(cluster)) for part in parts)
    assert "".join(parts) == text
    assert all(segment_info(part).segments <= max_segments for part in parts)


def test_mixed_text_is_cut_only_between_clusters_and_each_part_fits():
    pieces = [FLAG_US, FLAG_FR, FAMILY, THUMB_DARK, KEYCAP_ONE, THAI, "e\u0301", EMOJI, "a", "Ж", "€", "{", " "]
    rng = random.Random(9)  # fixed: the same text on every run
    for _ in range(30):
        text = "x" + "".join(rng.choice(pieces) for _ in range(rng.randint(50, 900))) + "x"
        for max_segments in (1, 3, 10):
            parts = shape_reply([text], max_segments=max_segments, transliterate=False)
            _assert_whole_clusters(text, parts, max_segments)


def test_the_character_limit_keeps_clusters_whole_too():
    # 802 flags of 2 regional indicators each, every one outside the BMP: 4 UTF-16 code units a flag, and the
    # 1600 limit (counted in code units, as Twilio counts it) falls between flags.
    flags = (FLAG_US + FLAG_FR) * 401
    uncapped = {"max_segments": None, "transliterate": False}
    assert [utf16_units(part) for part in shape_reply([flags], **uncapped)] == [1600, 1600, 8]
    odd = "x" + flags  # now 1600 would cut a flag in two: the part ends a flag sooner
    assert [utf16_units(part) for part in shape_reply([odd], **uncapped)] == [1597, 1600, 12]


@pytest.mark.parametrize("end", ["。", "！", "？", "｡", "．"], ids=_describe)
def test_chinese_and_japanese_sentence_ends_are_places_to_cut(end):
    sentences = [f"这是第{i}个句子天气很好{end}" for i in range(1, 10)]  # 13 units each, no spaces
    parts = shape_reply(["".join(sentences)], max_segments=1, transliterate=False)
    assert parts == ["".join(sentences[0:5]), "".join(sentences[5:9])]  # 5 * 13 = 65 of 70 units


def test_a_closing_quote_stays_with_its_sentence():
    sentences = ["彼は「はい、分かりました。」と言いました。" * 2] * 4  # 21 characters, ends 。 each
    text = "".join(sentences)
    parts = shape_reply([text], max_segments=1, transliterate=False)
    assert all(part.endswith(("。", "」")) for part in parts[:-1])
    assert not any(part.startswith("」") for part in parts)
    assert "".join(parts) == text


def test_a_reply_reaches_twilio_in_parts_of_at_most_sms_max_segments_by_twilios_count(workers, text_in, twilio):
    person = "+14155550177"
    text_in(FLAG_US * 160, from_=person)  # the sandbox agent echoes it: "You said: " and 160 flags
    wait_for(lambda: "".join(twilio.sent_to(person)).count(FLAG_US) == 160, message="the whole reply")
    sent = twilio.sent_to(person)
    # As one body it would be 10 segments if a flag could straddle a boundary, 11 as Twilio's calculator counts;
    # the flags are one "word", so the cut is at the last space, and 160 whole flags are exactly 10 segments.
    assert sent == ["You said:", FLAG_US * 160]
    assert [segment_info(body).segments for body in sent] == [1, 10]  # SMS_MAX_SEGMENTS' default is 10


def test_ascii_text_is_cut_into_graphemes_as_the_unicode_rules_cut_it():
    """ASCII takes a shortcut (one character, one cluster; CR LF two, as Twilio's calculator counts them)."""
    import regex

    from workers.sms_text import graphemes

    text = "".join(map(chr, range(128))) + "a\r\nb\r\r\n\n\r" + "\r\n" * 3

    def by_the_rules(value: str) -> list[str]:
        clusters: list[str] = []
        for cluster in regex.findall(r"\X", value):
            clusters.extend(cluster) if cluster == "\r\n" else clusters.append(cluster)
        return clusters

    assert graphemes(text) == by_the_rules(text)
    mixed = "café\r\n👍🏽"
    assert graphemes(mixed) == by_the_rules(mixed) == ["c", "a", "f", "é", "\r", "\n", "👍🏽"]


# -- Twilio's 1600 limit, counted in UTF-16 code units (issue 21, item 4) ------------------------------------
# Twilio's error 21617 ("The concatenated message body exceeds the 1600 character limit"): its error page says
# non-GSM characters such as emoji count as more than one character. 1,000 emoji are 2,000 UTF-16 code units.


@pytest.mark.parametrize("max_segments", [None, 10])
def test_a_reply_of_a_thousand_emoji_goes_out_in_parts_of_at_most_1600_utf16_units(max_segments):
    parts = shape_reply([EMOJI * 1000], max_segments=max_segments, transliterate=True)
    assert len(parts) >= 2 and "".join(parts) == EMOJI * 1000
    assert all(utf16_units(part) <= MAX_SMS_CHARS for part in parts)
    assert utf16_units(EMOJI * 1000) == 2000 and utf16_units("a" * 1600) == 1600


def test_a_part_is_as_long_as_1600_utf16_units_allow():
    parts = shape_reply(["x" + EMOJI * 900], max_segments=None, transliterate=False)
    assert [utf16_units(part) for part in parts] == [1599, 202]  # "x" and 799 emoji, then 101 emoji
