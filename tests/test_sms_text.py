"""SMS-native replies: markdown to plain text, GSM-7 characters, segment counts and splitting (known answers)."""

from __future__ import annotations

import pytest

from workers.sms_text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_SMS_CHARS,
    SegmentInfo,
    is_gsm7,
    markdown_to_sms,
    replies_to_parts,
    segment_info,
    shape_reply,
    split_for_sms,
    to_gsm7,
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


# -- the plain splitting the flow used before shaping ------------------------------------------------

def test_replies_to_parts_and_split_for_sms_still_split_by_characters():
    assert replies_to_parts(["one two", "", "three"]) == ["one two", "three"]
    assert split_for_sms("alpha beta gamma delta", 11) == ["alpha beta", "gamma delta"]
    assert split_for_sms("First one. Second one.", 15) == ["First one.", "Second one."]
    long_text = " ".join(["word"] * 500)
    parts = replies_to_parts([long_text])
    assert [len(p) for p in parts] == [1599, 899]
    assert " ".join(parts) == long_text
    assert split_for_sms("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
