"""Reading the numbers people type, held to the phonenumbers library's own verdicts (issue 9, point 2).

Source of the facts: the ``phonenumbers`` package (the Python port of Google's libphonenumber, whose metadata
is built from the ITU's and national regulators' numbering plans), read here through its public API only:
``parse``, ``is_valid_number``, ``is_valid_number_for_region``, ``region_code_for_number``, ``example_number``,
``example_number_for_type``, ``format_number``, ``format_out_of_country_calling_number`` and
``SUPPORTED_REGIONS``. The data are computed from the installed version's metadata, not copied, so an
upgrade that changes a country's plan changes the data with it; the examples the issue names (201 -> Egypt,
321 -> Belgium, 353 -> Ireland) are asserted so that a computation gone wrong cannot pass as an empty list.

The same verdict is then asked of the three surfaces that take a number from a person: the admin API
(Flask test client), the console commands (``cli.main.main`` against the served admin API) and the
sandbox phone page's backend.
"""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import phonenumbers
import pytest
from rq import Queue
from werkzeug.serving import make_server

from cli.main import main as console
from config import load_settings
from core.model import conversation_id
from core.phone_numbers import MAX_NUMBER_CHARS, NumberError, read_number
from core.queues import ADMIN_QUEUE_NAME
from gateway import create_app
from sandbox.phone import create_phone_app
from tests.conftest import GATEWAY_NUMBER, free_port

TOKEN = "phone-numbers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
E164 = phonenumbers.PhoneNumberFormat.E164
NO_COUNTRY = "has no country code: write the number in international format with + and country code"
IDD = "starts with an international dialling prefix: write + in its place"
CHARACTERS = "may hold only the digits 0-9, a leading +, spaces, dashes, dots and brackets"
# Seven-digit local numbers (exchange 2-9, then digits) tried after each US area code: enough to find, for
# every area code that collides with a country code, one number that is valid in that other country.
US_LOCAL_SAMPLES = [f"{n}{d}{d}{e}{e}{e}{e}" for n in "23456789" for d in "0369" for e in "048"]


def e164(text: str, region: str | None = None) -> str:
    return phonenumbers.format_number(phonenumbers.parse(text, region), E164)


def verdict(text: object, region: str | None) -> tuple[str, str]:
    """("ok", E.164) or ("refused", the reason) from the gateway's one rule."""
    try:
        return "ok", read_number(text, region)
    except NumberError as exc:
        return "refused", str(exc)


def is_valid_abroad(text: str) -> str | None:
    """The region phonenumbers gives ``+text``, when that is a valid number outside the US."""
    try:
        number = phonenumbers.parse("+" + text, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    return region if phonenumbers.is_valid_number(number) and region != "US" else None


def colliding_us_numbers() -> dict[str, tuple[str, str]]:
    """Area code -> (a valid US number written nationally, the other country it is valid in with + in front)."""
    found = {}
    for area in range(200, 1000):
        for local in US_LOCAL_SAMPLES:
            national = f"{area}{local}"
            if not phonenumbers.is_valid_number_for_region(phonenumbers.parse("+1" + national, None), "US"):
                break  # not a US area code (the exchange digits do not matter for that)
            region = is_valid_abroad(national)
            if region:
                found[str(area)] = (national, region)
                break
    return found


COLLIDING = colliding_us_numbers()


def test_about_eighty_us_area_codes_collide_with_country_codes():
    assert COLLIDING["201"][1] == "EG" and COLLIDING["321"][1] == "BE" and COLLIDING["353"][1] == "IE"
    assert len(COLLIDING) >= 60, f"only {len(COLLIDING)} with phonenumbers {phonenumbers.__version__}"


def test_a_us_number_written_nationally_is_refused_without_a_region_and_read_in_the_us_with_one(env, redis):
    plain = create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client()
    in_us = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "DEFAULT_PHONE_REGION": "US"}).test_client()
    for area, (national, abroad) in COLLIDING.items():
        status, why = verdict(national, None)
        assert status == "refused" and why.startswith(NO_COUNTRY), (area, abroad)
        assert verdict(national, "US") == ("ok", "+1" + national), area
        answer = plain.post("/admin/sms", json={"to": national, "message": "hi"}, headers=AUTH)
        assert answer.status_code == 400 and answer.get_json()["error"]["message"].startswith(f"to: {NO_COUNTRY}")
        seed_conversation(redis, "+1" + national)
        shown = in_us.get(f"/admin/conversations/{national}", headers=AUTH)
        assert shown.status_code == 200 and shown.get_json()["person"] == "+1" + national, area
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0


def test_every_regions_example_numbers_are_read_as_phonenumbers_reads_them():
    wrong = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            expected = ("ok", phonenumbers.format_number(example, E164))
            international = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
            checks = [(international, None, expected), (international, "US", expected),
                      (expected[1], None, expected), (national, region, expected)]
            if not national.startswith("+"):
                checks.append((national, None, ("refused", "")))
            for text, default_region, want in checks:
                got = verdict(text, default_region)
                if got[0] != want[0] or (want[0] == "ok" and got != want):
                    wrong.append((region, text, default_region, got))
    assert wrong == []


def test_an_international_dialling_prefix_is_refused_in_every_region():
    """What 00 or 011 means depends on where it is dialled, so the gateway asks for + instead."""
    uk, us = phonenumbers.parse("+442079460958"), phonenumbers.parse("+14155550199")
    misread = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        other = us if phonenumbers.country_code_for_region(region) == 44 else uk  # another country code
        # "~" in phonenumbers' dialling strings means "wait for the dial tone" (e.g. Russia's 8~10): not typed.
        dialled = phonenumbers.format_out_of_country_calling_number(other, region).replace("~", "")
        got = verdict(dialled, region)
        if dialled.startswith("+"):
            ok = got == ("ok", phonenumbers.format_number(other, E164))
        else:
            parsed = phonenumbers.parse(dialled, region, keep_raw_input=True)
            assert parsed.country_code_source == phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD, dialled
            ok = got[0] == "refused" and got[1].startswith(IDD)
        if not ok:
            misread.append((region, dialled, got))
    assert misread == []


@pytest.mark.parametrize(("text", "region", "reason"), [
    ("00 44 20 7946 0958", None, IDD),
    ("0044 20 7946 0958", "GB", IDD),
    ("00 44 20 7946 0958", "DE", IDD),
    ("011 44 20 7946 0958", "US", IDD),
    ("00 44 20 7946 0958", "SG", IDD),  # phonenumbers reads 004 as Singapore's prefix: 42... would be Czechia
    ("00 44 20 7946 0958", "US", "is not a valid phone number in US"),  # 00 is no prefix in the US
])
def test_zero_zero_is_never_read_as_another_country(text, region, reason):
    status, why = verdict(text, region)
    assert status == "refused" and why.startswith(reason)


@pytest.mark.parametrize(("text", "region"), [
    ("+1 (415) 555-0199", None), ("+1.415.555.0199", None), ("+1-415-555-0199", None), ("  +14155550199 ", None),
    ("+44 (0)20 7946 0958", None), ("+33 1 42 68 53 00", None), ("+49 30 901820", None), ("+81 3-3224-5000", None),
    ("(415) 555-0199", "US"), ("415.555.0199", "US"), ("1 415 555 0199", "US"), ("+44 20 7946 0958", "US"),
    ("020 7946 0958", "GB"), ("030 901820", "DE"), ("01 42 68 53 00", "FR"),
])
def test_human_formatting_is_normalised_as_phonenumbers_reads_it(text, region):
    assert phonenumbers.is_valid_number(phonenumbers.parse(text, region))
    assert verdict(text, region) == ("ok", e164(text, region))


# What phonenumbers itself makes of hostile input (None: it refuses it too), and why the gateway refuses it.
HOSTILE = [
    ("+1-800-FLOWERS", "+18003569377", CHARACTERS),  # letters read from a keypad
    ("+1 415 555 0199 x12", "+14155550199", CHARACTERS),  # an extension, which SMS cannot reach
    ("+1 415 555 0199 ext. 12", "+14155550199", CHARACTERS),
    ("+1 415 555 0199;ext=12", "+14155550199", CHARACTERS),
    ("+1 415 555 0199#12", "+14155550199", CHARACTERS),
    ("+١٤١٥٥٥٥٠١٩٩", "+14155550199", CHARACTERS),  # Arabic-Indic digits
    ("+１４１５５５５０１９９", "+14155550199", CHARACTERS),  # full-width digits
    ("+१४१५५५५०१९९", "+14155550199", CHARACTERS),  # Devanagari digits
    ("++14155550199", "+14155550199", CHARACTERS),
    ("tel:+1-415-555-0199", "+14155550199", CHARACTERS),
    ("+14155550199\n", "+14155550199", CHARACTERS),
    ("+1415\x005550199", None, CHARACTERS),
    ("+1\t415 555 0199", None, CHARACTERS),
    ("+1\u00a0415\u00a0555\u00a00199", "+14155550199", CHARACTERS),  # no-break spaces
    ("+1 415 555 0199\u200b", "+14155550199", CHARACTERS),  # zero-width space
    ("\u202e+14155550199", "+14155550199", CHARACTERS),  # right-to-left override
    ("1+4155550199", None, CHARACTERS),
    ("+", None, "has no digits"),
    ("+ ( ) - .", None, "has no digits"),
    ("", None, "is empty"),
    ("   ", None, "is empty"),
    ("+1" + "5" * 5000, None, f"is too long (at most {MAX_NUMBER_CHARS} characters)"),
    ("+1 415 555 0199 0199 0199 0199 01", None, f"is too long (at most {MAX_NUMBER_CHARS} characters)"),
    ("+1" + "5" * 20, None, "is too long to be a phone number"),
    ("+999 123 456 789", None, "has no known country code after the +"),
    ("+1 (415)", None, "is not a valid phone number"),
    ("+1 415 555 019", None, "is not a valid phone number"),
    ("+1 415 555 0199 / 0200", None, CHARACTERS),
]


def phonenumbers_reading(text: str) -> str | None:
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(number, E164) if phonenumbers.is_valid_number(number) else None


@pytest.mark.parametrize(("text", "phonenumbers_reads", "reason"), HOSTILE)
@pytest.mark.parametrize("region", [None, "US"])
def test_hostile_input_is_refused_with_the_reason(text, phonenumbers_reads, reason, region):
    assert phonenumbers_reading(text) == phonenumbers_reads  # the library's verdict: why refusing matters
    status, why = verdict(text, region)
    assert status == "refused" and why.startswith(reason), why


@pytest.mark.parametrize("value", [14155550199, 1.5, None, True, ["+14155550199"], {"number": "+14155550199"}])
def test_a_number_that_is_not_text_is_refused(env, redis, value):
    assert verdict(value, None) == ("refused", "must be a phone number written as text, e.g. +14155550123")
    answer = create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client().post(
        "/admin/sms", json={"to": value, "message": "hi"}, headers=AUTH)
    # (a null "to" is no number at all: the admin API says it is required)
    expected = "to: is required" if value is None else "to: must be a phone"
    assert answer.status_code == 400 and answer.get_json()["error"]["message"].startswith(expected)


# -- one verdict on every surface ------------------------------------------------------------------

SURFACE_INPUTS = [
    "+14155550199", "+1 (415) 555-0199", "+1.415.555.0199", " +44 (0)20 7946 0958 ", "2015551234", "(321) 555-1234",
    "415-555-0199", "1 415 555 0199", "020 7946 0958", "00 44 20 7946 0958", "011 44 20 7946 0958", "",
    "+", "+1-800-FLOWERS", "+1 415 555 0199 x12", "+١٤١٥٥٥٥٠١٩٩", "+14155550199\n", "+1 415\t555 0199",
    "+1" + "5" * 200, "+999 123 456 789", "+1 (415)", "../sms", "+1415%2F..",
]


def seed_conversation(redis, person: str) -> None:
    redis.hset(f"smsgw:conv:{conversation_id(GATEWAY_NUMBER, person)}",
               mapping={"gateway": GATEWAY_NUMBER, "person": person})


@pytest.fixture(params=[None, "US"], ids=["no-region", "region-US"])
def surfaces(request, env, redis, twilio, monkeypatch, tmp_path, capsys):
    """(region, admin API test client, console runner, phone page test client), all on one gateway."""
    region = request.param
    app = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "2",
                      **({"DEFAULT_PHONE_REGION": region} if region else {})})
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = console([*args, "--url", url])
        out, err = capsys.readouterr()
        return code, out, err

    phone_settings = load_settings({**env, "CHAT_IDLE_TIMEOUT_SECONDS": "600",
                                    **({"DEFAULT_PHONE_REGION": region} if region else {})}, dotenv_path=None)
    phone = create_phone_app(twilio=twilio, gateway_url=url, gateway_number=GATEWAY_NUMBER, admin_token=TOKEN,
                             settings=phone_settings).test_client()
    yield region, app.test_client(), run, phone
    server.shutdown()
    thread.join(timeout=5)


@pytest.mark.parametrize("text", SURFACE_INPUTS)
def test_the_api_the_console_and_the_phone_page_give_the_same_verdict(surfaces, redis, twilio, uponai, text):
    region, api, run, phone = surfaces
    status, value = verdict(text, region)
    path = f"/admin/conversations/{quote(text, safe='')}"
    if status == "ok":
        seed_conversation(redis, value)
        shown = api.get(path, headers=AUTH)
        assert shown.status_code == 200 and shown.get_json()["person"] == value
        code, out, err = run("show", text, "--json")
        assert code == 0 and json.loads(out)["person"] == value, err
        state = phone.get("/api/conversation", query_string={"number": text})
        assert state.status_code == 200 and state.get_json()["conversation_id"] == conversation_id(GATEWAY_NUMBER,
                                                                                                   value)
    else:
        answer = api.post("/admin/sms", json={"to": text, "message": "hi"}, headers=AUTH)
        assert (answer.status_code, answer.get_json()["error"]["message"]) == (400, f"to: {value}")
        code, _, err = run("send", text, "--message", "hi")
        assert code == 1 and f"to: {value} (invalid_request, HTTP 400)" in err
        if text:  # an empty path segment is another route
            for method, route in (("GET", path), ("POST", f"{path}/end"), ("DELETE", path)):
                shown = api.open(route, method=method, headers=AUTH)
                assert (shown.status_code, shown.get_json()["error"]["message"]) == (400, f"number: {value}")
            for command in ("show", "end", "forget"):
                code, _, err = run(command, text)
                assert code == 1 and f"number: {value} (invalid_request, HTTP 400)" in err, command
        for answer in (phone.post("/api/send", json={"from": text, "body": "hi"}),
                       phone.post("/api/outbound", json={"to": text, "message": "hi"}),
                       phone.get("/api/conversation", query_string={"number": text}),
                       phone.get("/api/thread", query_string={"number": text})):
            assert (answer.status_code, answer.get_json()["error"]) == (400, f"Your number {value}.")
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0
    assert twilio.messages == [] and uponai.requests == []


# -- end to end ------------------------------------------------------------------------------------


def test_an_operator_texting_a_national_number_reaches_the_us_only_when_the_region_says_so(
        start_workers, env, redis, twilio):
    start_workers(1)
    plain = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"}).test_client()
    refused = plain.post("/admin/sms", json={"to": "2015551234", "message": "Your order has shipped."}, headers=AUTH)
    assert refused.status_code == 400 and refused.get_json()["error"]["message"].startswith(f"to: {NO_COUNTRY}")
    assert twilio.messages == []

    in_us = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15", "DEFAULT_PHONE_REGION": "US"})
    sent = in_us.test_client().post("/admin/sms", json={"to": "(201) 555-1234", "message": "Your order has shipped."},
                                    headers=AUTH)
    assert sent.status_code == 202, sent.get_json()
    assert sent.get_json()["to"] == "+12015551234"
    assert [(sms.to, sms.body) for sms in twilio.messages] == [("+12015551234", "Your order has shipped.")]


def test_a_plus_that_a_query_string_turned_into_a_space_is_put_back_only_there(env, redis):
    api = create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client()
    seed_conversation(redis, "+14155550199")
    shown = api.get(f"/admin/conversations/%2B14155550199?from=+{GATEWAY_NUMBER[1:]}", headers=AUTH)
    assert shown.status_code == 200 and shown.get_json()["gateway"] == GATEWAY_NUMBER
    # In a JSON body a leading space is just a space: no country code, refused.
    answer = api.post("/admin/sms", json={"to": " 2015551234", "message": "hi"}, headers=AUTH)
    assert answer.status_code == 400 and NO_COUNTRY in answer.get_json()["error"]["message"]
