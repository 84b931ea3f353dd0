"""Personal data is not kept forever: every key holding a number or words expires, and an operator can erase a person.

Found by reading every Redis key the way a person's data could hide in it: each value by its type, and
each value also zlib-inflated and base64-decoded (RQ compresses a job's arguments and base64-encodes its
results), searched for the number in E.164 and digits-only form and for the words of the texts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import zlib

import pytest
from redis import Redis

from core.model import conversation_id
from gateway import create_app
from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, wait_for

TOKEN = "retention-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550123"
WORDS = "zebra quartz lantern"  # the person's text; the echo agent repeats it in its reply
OPENING = "Your parcel marmalade-7 has shipped"
RETENTION_SECONDS = 6
# DATA_RETENTION_DAYS takes fractions (an operator may write 0.5); a test needs seconds, not days.
SHORT = {"DATA_RETENTION_DAYS": repr(RETENTION_SECONDS / 86400), "CHAT_IDLE_TIMEOUT_SECONDS": "1"}
CID = conversation_id(GATEWAY_NUMBER, PERSON)


def needles(person: str = PERSON) -> list[bytes]:
    return [person.encode(), person.lstrip("+").encode(), *(w.encode() for w in WORDS.split()),
            b"marmalade-7"]


def _values(redis: Redis, key: bytes) -> list[bytes]:
    kind = redis.type(key).decode()
    if kind == "string":
        return [redis.get(key) or b""]
    if kind == "hash":
        return [b for pair in redis.hgetall(key).items() for b in pair]
    if kind == "list":
        return redis.lrange(key, 0, -1)
    if kind == "set":
        return list(redis.smembers(key))
    if kind == "zset":
        return [member for member, _ in redis.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [b for _, fields in redis.xrange(key) for pair in fields.items() for b in pair]
    return []  # gone meanwhile


def _readings(blob: bytes) -> list[bytes]:
    readings = [blob]
    for candidate in (blob, _b64(blob)):
        if candidate:
            readings.append(candidate)
            with contextlib.suppress(zlib.error):
                readings.append(zlib.decompress(candidate))
    return readings


def _b64(blob: bytes) -> bytes | None:
    if not re.fullmatch(rb"[A-Za-z0-9+/=\s]{8,}", blob):
        return None
    try:
        return base64.b64decode(blob)
    except (binascii.Error, ValueError):
        return None


def personal_data(redis: Redis, person: str = PERSON) -> list[tuple[str, str]]:
    """Every (key, what) where the person's number or words are found, in key names and values."""
    found = []
    for key in redis.scan_iter(match="*", count=1000):
        blobs = [key, *_values(redis, key)]
        for needle in needles(person):
            if any(needle in reading for blob in blobs for reading in _readings(blob)):
                found.append((key.decode(), needle.decode()))
    return found


def keys_without_ttl(redis: Redis, pattern: str = "smsgw:*") -> list[str]:
    return [key.decode() for key in redis.scan_iter(match=pattern, count=1000) if redis.ttl(key) == -1]


def text(client, body: str, person: str = PERSON, **extra: str) -> None:
    assert post_signed(client, "/twilio/sms", inbound_form(body, from_=person, **extra)).status_code == 200


@pytest.fixture
def admin_env(env):
    return {**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"}


def _have_a_conversation(client, uponai, twilio):
    """An outbound start (RQ job args, idempotency record), texts and replies, a notice, a look at the chat."""
    started = client.post("/admin/sms", json={"to": PERSON, "message": OPENING}, headers={**AUTH,
                          "Idempotency-Key": "order-7"})
    assert started.status_code == 202, started.get_json()
    text(client, WORDS)
    text(client, "", NumMedia="1", MediaContentType0="image/jpeg")  # the MMS notice marker
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 3, message="opening, reply and MMS notice")
    shown = client.get(f"/admin/conversations/{PERSON}", headers=AUTH)  # the chat's words in an admin result
    assert shown.status_code == 200 and WORDS in str(shown.get_json()["chat"])
    return shown.get_json()["chat_id"]


# -- (a) retention --------------------------------------------------------------------------------


def test_every_key_with_a_number_or_words_expires_after_the_last_activity(start_workers, admin_env, redis, uponai,
                                                                          twilio):
    start_workers(1, **SHORT)
    client = create_app({**admin_env, **SHORT}).test_client()
    chat_id = _have_a_conversation(client, uponai, twilio)
    assert personal_data(redis), "the scan must see the data while the conversation is live"

    wait_for(lambda: uponai.chats[chat_id].status == "ended", message="the idle close")
    # Nothing is kept without an expiry: every gateway key, and every key holding the person's data.
    assert keys_without_ttl(redis) == []
    holding = {key for key, _ in personal_data(redis)}
    assert all(0 < redis.ttl(key) <= RETENTION_SECONDS for key in holding), {k: redis.ttl(k) for k in holding}

    wait_for(lambda: not personal_data(redis), timeout=RETENTION_SECONDS + 15, message="the data to expire")
    assert not redis.exists(f"smsgw:conv:{CID}", f"smsgw:recent:{CID}")


def test_retention_counts_from_the_last_activity(start_workers, env, redis, uponai, twilio):
    start_workers(1, **SHORT)
    client = create_app({**env, **SHORT}).test_client()
    text(client, WORDS)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 1, message="the reply")
    first_ttl = redis.ttl(f"smsgw:conv:{CID}")
    assert 0 < first_ttl <= RETENTION_SECONDS
    wait_for(lambda: redis.ttl(f"smsgw:conv:{CID}") < first_ttl, message="time to pass")
    before = redis.pttl(f"smsgw:conv:{CID}")
    text(client, "again")
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the second reply")
    assert redis.pttl(f"smsgw:conv:{CID}") > before  # counted again from the new activity
    assert redis.ttl(f"smsgw:recent:{CID}") > 0


@pytest.mark.parametrize("days", ["0", "-1", "nan", "soon"])
def test_retention_setting_is_checked(env, days):
    from config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="DATA_RETENTION_DAYS"):
        load_settings({**env, "DATA_RETENTION_DAYS": days})


def test_retention_must_outlast_the_idle_close(env):
    from config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="longer than CHAT_IDLE_TIMEOUT_SECONDS"):
        load_settings({**env, "DATA_RETENTION_DAYS": "0.01", "CHAT_IDLE_TIMEOUT_SECONDS": "3600"})
    assert load_settings(env).data_retention_seconds == 30 * 86400


# -- (b) erase on request -------------------------------------------------------------------------


def erase_lines(pool) -> list[str]:
    return [line for line in pool.output().splitlines() if "erased on request" in line]


def test_delete_erases_the_person_and_ends_the_chat(start_worker_processes, admin_env, redis, uponai, twilio):
    pool = start_worker_processes(1)
    client = create_app(admin_env).test_client()
    other = "+14155550177"
    text(client, "hello from someone else", person=other)
    chat_id = _have_a_conversation(client, uponai, twilio)
    wait_for(lambda: twilio.sent_to(other), message="the other person's reply")
    assert personal_data(redis)

    response = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "erased" and body["conversation_id"] == CID and body["ended_chat_id"] == chat_id
    assert body["keys_deleted"] > 0 and body["jobs_deleted"] > 0
    assert uponai.chats[chat_id].status == "ended"
    assert personal_data(redis) == []
    assert personal_data(redis, other) != [] and redis.exists(f"smsgw:conv:{conversation_id(GATEWAY_NUMBER, other)}")
    [line] = wait_for(lambda: erase_lines(pool), message="the erase log line")
    assert CID in line and PERSON not in line and PERSON.lstrip("+") not in line and PERSON[-4:] not in line

    # The person can write again: a new conversation, answered as usual.
    text(client, "hi again")
    wait_for(lambda: twilio.sent_to(PERSON)[-1:] == ["You said: hi again"], message="the new reply")


def test_erase_waits_for_a_running_turn_and_leaves_nothing(start_workers, admin_env, redis, uponai, twilio):
    from sandbox.httpfake import Fault

    start_workers(2)
    client = create_app(admin_env).test_client()
    uponai.inject("complete", Fault(delay_seconds=1.0))  # under the read timeout: the turn succeeds, slowly
    text(client, WORDS)
    wait_for(lambda: uponai.calls("complete"), message="the turn to be running")

    response = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert response.status_code == 200, response.get_json()
    assert twilio.sent_to(PERSON) == [f"You said: {WORDS}"]  # the turn finished (and answered) first
    assert personal_data(redis) == []


def test_erase_removes_a_given_up_message_and_its_failed_job(start_workers, admin_env, redis, uponai, twilio):
    from rq.registry import FailedJobRegistry

    from sandbox.httpfake import Fault

    start_workers(1)
    client = create_app(admin_env).test_client()
    uponai.inject("complete", *[Fault(status=500)] * 4)  # every attempt: the message is given up
    text(client, WORDS)
    failed = FailedJobRegistry("sms", connection=redis)
    wait_for(lambda: failed.get_job_ids(), message="the drain job to fail")
    assert redis.keys("smsgw:dead:*")

    response = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["jobs_deleted"] == 1
    assert failed.get_job_ids() == [] and redis.keys("smsgw:dead:*") == []
    assert personal_data(redis) == []


def test_erase_keeps_an_opt_out_without_the_number(start_workers, admin_env, redis, uponai, twilio):
    start_workers(1)
    client = create_app(admin_env).test_client()
    text(client, WORDS)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    text(client, "STOP")
    wait_for(lambda: redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1", message="the opt-out")

    assert client.delete(f"/admin/conversations/{PERSON}", headers=AUTH).status_code == 200

    assert personal_data(redis) == []
    assert set(redis.hgetall(f"smsgw:conv:{CID}")) == {b"opted_out", b"opted_out_at"}
    assert redis.ttl(f"smsgw:conv:{CID}") > 0
    refused = client.post("/admin/sms", json={"to": PERSON, "message": "hello?"}, headers=AUTH)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "opted_out"
    assert len(twilio.sent_to(PERSON)) == 1
    again = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)
    assert again.status_code == 404  # only the opt-out is left, and it stays
    assert redis.hget(f"smsgw:conv:{CID}", "opted_out") == b"1"


# -- (d) bad input, repeats -----------------------------------------------------------------------


@pytest.mark.parametrize("number", ["abc", "+1415", "%2B1%20(415)%20555-01x", "+99912345678"])
def test_erase_of_an_invalid_number_is_400(admin_env, redis, number):
    client = create_app(admin_env).test_client()
    response = client.delete(f"/admin/conversations/{number}", headers=AUTH)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_erase_of_an_unknown_number_is_404_and_a_second_erase_too(start_workers, admin_env, redis, uponai, twilio):
    start_workers(1)
    client = create_app(admin_env).test_client()
    unknown = client.delete("/admin/conversations/+14155550188", headers=AUTH)
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "conversation_not_found"

    text(client, WORDS)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    # Digits without + are refused (no DEFAULT_PHONE_REGION): they could be another country's person.
    assert client.delete(f"/admin/conversations/{PERSON[1:]}", headers=AUTH).status_code == 400
    assert client.delete(f"/admin/conversations/%2B{PERSON[1:]}", headers=AUTH).status_code == 200
    second = client.delete(f"/admin/conversations/{PERSON}", headers=AUTH)
    assert second.status_code == 404 and second.get_json()["error"]["code"] == "conversation_not_found"
    assert personal_data(redis) == []
    assert len(uponai.calls("end_chat")) == 1


def test_erase_needs_the_token(admin_env, redis):
    client = create_app(admin_env).test_client()
    assert client.delete(f"/admin/conversations/{PERSON}").status_code == 401
