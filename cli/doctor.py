"""``sms-gateway doctor``: one pass/fail line per part of a deployment, and what to do about each failure.

Checks, in order: settings, Redis, workers (a warning only), the UponAI key (a list call with limit 1),
Twilio credentials, whether the number's webhook points at this gateway (Messaging Services included),
and a signed self-test of the webhook: a status callback for a sid the gateway never sent, which it
acknowledges and ignores, and the same request unsigned, which it must refuse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

from cli.twilio_number import connect_admin, service_warning, webhook_urls
from config import Settings, SettingsError, load_settings
from gateway.twilio_fields import DOCTOR_SELF_TEST_SID
from workers.errors import GatewayError, PermanentError

# The gateway acknowledges a signed status callback for this sid and leaves it out of its records and metrics.
SELF_TEST_SID = DOCTOR_SELF_TEST_SID
SELF_TEST_TIMEOUT_SECONDS = 10  # per self-test request: under the 15 s Twilio gives a webhook


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, WARN or SKIP
    detail: str
    fix: str = ""


class Skip(Exception):
    """A check that cannot run because an earlier one failed."""


REDIS_FIXES = {  # what to do about each cause that workers.startup.redis_failure names
    "connection refused": "start Redis, or fix the port in REDIS_URL",
    "host name not resolved": "fix the host in REDIS_URL (this machine's DNS does not know it)",
    "timed out": "check that this host can reach Redis (firewall, security group, VPN), and the host in REDIS_URL",
    "authentication failed": "fix the user or password in REDIS_URL",
    "no sentinel names a master that is up": "start the sentinels and the master, or fix REDIS_SENTINELS and "
                                             "REDIS_SENTINEL_MASTER (the name the sentinels monitor)",
}


MIN_REDIS_VERSION = (6, 2)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> (7, 0, 15); an unreadable version counts as new enough (managed Redis may hide it)."""
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return (99,)


def check_redis(settings: Settings) -> Check:
    from redis.exceptions import RedisError

    from core.redis import connect_redis
    from workers.startup import redis_address, redis_failure

    client = connect_redis(settings, for_web=True)
    try:
        version = client.info("server").get("redis_version", "?")
        try:
            aof = client.config_get("appendonly").get("appendonly", "?")
        except RedisError:  # managed Redis often forbids CONFIG
            aof = "unknown"
    except RedisError as exc:
        cause = redis_failure(exc)
        return Check("redis", "FAIL", f"Redis at {redis_address(client)} not reachable: {cause}",
                     REDIS_FIXES.get(cause.split(" (")[0],
                                     "start Redis, or fix REDIS_URL (host, port, password, rediss:// for TLS)"))
    finally:
        client.close()
    detail = f"Redis {version} answers; append-only persistence: {aof}"
    if version_tuple(version) < MIN_REDIS_VERSION:
        return Check("redis", "FAIL", detail, "use Redis 6.2 or newer: the accept script needs SMISMEMBER and "
                                              "SET ... KEEPTTL")
    if aof == "no":
        return Check("redis", "WARN", detail, "turn on appendonly (AOF) so queued messages survive a restart")
    return Check("redis", "PASS", detail)


def check_workers(settings: Settings) -> Check:
    from redis.exceptions import RedisError
    from rq import Queue

    from core.queues import QUEUE_NAME, live_workers, queue_depth
    from core.redis import connect_redis

    client = connect_redis(settings, for_web=True)
    try:
        count = len(live_workers(client))
        depth = queue_depth(Queue(QUEUE_NAME, connection=client))
    except RedisError:
        raise Skip("Redis is not reachable") from None
    finally:
        client.close()
    if count == 0:
        return Check("workers", "WARN", f"no worker is running; {depth} jobs waiting",
                     "start `sms-gateway worker` (the Procfile's worker process)")
    return Check("workers", "PASS", f"{count} worker(s) alive, {depth} jobs waiting")


def check_uponai(settings: Settings) -> Check:
    from workers.uponai import UponAIClient

    client = UponAIClient.from_settings(settings)
    where = f"{settings.uponai_base_url}, {settings.uponai_api_style} style"
    try:
        client.list_chats(limit=1)
    except PermanentError as exc:
        fix = "check UPONAI_API_KEY" if exc.status in (401, 403) else \
            "check UPONAI_API_STYLE, UPONAI_WORKSPACE_ID and UPONAI_BASE_URL"
        return Check("uponai", "FAIL", f"key refused at {where}: {exc.status} {exc.message}", fix)
    except GatewayError as exc:
        return Check("uponai", "FAIL", f"not reachable at {where}: {exc.message}",
                     "check UPONAI_BASE_URL and this host's outbound network; retry later if UponAI is down")
    return Check("uponai", "PASS", f"key accepted by {where} (list chats, limit 1)")


def check_twilio(settings: Settings, admin) -> Check:
    sid = settings.twilio_account_sid
    try:
        status = admin.account_status()
    except GatewayError as exc:
        fix = "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (Twilio console, Account Info)" \
            if exc.status in (401, 403, 404) else "check TWILIO_API_BASE_URL and this host's outbound network"
        return Check("twilio", "FAIL", f"credentials of {sid[:6]}... refused or Twilio unreachable: {exc.message}", fix)
    if status != "active":
        return Check("twilio", "FAIL", f"account {sid[:6]}... is {status}", "reactivate the account at Twilio")
    return Check("twilio", "PASS", f"credentials accepted; account {sid[:6]}... is active")


def check_number(settings: Settings, admin, number: str | None) -> Check:
    if not settings.public_base_url:
        return Check("number webhook", "FAIL", "PUBLIC_BASE_URL is not set, so Twilio cannot be pointed here",
                     "set PUBLIC_BASE_URL to the gateway's public https origin")
    if not number:
        return Check("number webhook", "FAIL", "no number to check",
                     "set TWILIO_FROM_NUMBER or pass --number +1...")
    sms_url, _status_url = webhook_urls(settings.public_base_url)
    try:
        found = admin.find_number(number)
        services = admin.services_of(found.sid) if found else []
    except GatewayError as exc:
        return Check("number webhook", "FAIL", f"could not read {number} at Twilio: {exc.message}",
                     "fix the Twilio credentials first")
    if found is None:
        return Check("number webhook", "FAIL", f"the account has no number {number}",
                     "check TWILIO_FROM_NUMBER / --number (E.164)")
    for service in services:
        warning = service_warning(service, sms_url)
        if warning:
            return Check("number webhook", "FAIL", warning, "or run `sms-gateway configure-twilio` for the number")
    if (found.sms_url, found.sms_method) != (sms_url, "POST"):
        now = f"{found.sms_method} {found.sms_url}" if found.sms_url else "nowhere"
        return Check("number webhook", "FAIL", f"{number} sends inbound SMS to {now}, not POST {sms_url}",
                     "run `sms-gateway configure-twilio`")
    return Check("number webhook", "PASS", f"{number} sends inbound SMS to POST {sms_url}")


def check_self_test(settings: Settings) -> Check:
    import requests
    from twilio.request_validator import RequestValidator

    if not settings.public_base_url:
        return Check("webhook self-test", "FAIL", "PUBLIC_BASE_URL is not set", "set PUBLIC_BASE_URL")
    url = f"{settings.public_base_url}/twilio/status"
    form = {"MessageSid": SELF_TEST_SID, "MessageStatus": "delivered", "AccountSid": settings.twilio_account_sid}
    signature = RequestValidator(settings.twilio_auth_token).compute_signature(url, form)
    try:
        signed = requests.post(url, data=form, headers={"X-Twilio-Signature": signature},
                               timeout=SELF_TEST_TIMEOUT_SECONDS)
        unsigned = requests.post(url, data=form, headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
                                 timeout=SELF_TEST_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        return Check("webhook self-test", "FAIL", f"{url} not reachable ({type(exc).__name__})",
                     "start the web process, and check that PUBLIC_BASE_URL reaches it (DNS, TLS, proxy)")
    if signed.status_code == 403:
        return Check("webhook self-test", "FAIL", f"{url} refused a request signed with this TWILIO_AUTH_TOKEN",
                     "give the web process the same TWILIO_AUTH_TOKEN; behind a proxy, set PUBLIC_BASE_URL to the "
                     "exact public origin (or TRUSTED_PROXY_HOPS)")
    if signed.status_code != 200:
        return Check("webhook self-test", "FAIL", f"{url} answered {signed.status_code} to a signed request",
                     "see the web process's log")
    if unsigned.status_code != 403:
        return Check("webhook self-test", "FAIL", f"{url} accepted a request with a bad signature "
                     f"({unsigned.status_code})", "make sure nothing in front of the gateway answers for it")
    return Check("webhook self-test", "PASS", f"{url} accepted a signed request and refused a forged one")


def run_checks(environ: Mapping[str, str], *, number: str | None = None) -> list[Check]:
    """Run every check against the deployment that ``environ`` describes."""
    try:
        settings = load_settings(environ, dotenv_path=None)
    except SettingsError as exc:
        checks = [Check("settings", "FAIL", "; ".join(exc.problems), "set them in the environment or in .env")]
        return checks + [Check(name, "SKIP", "needs valid settings") for name in
                         ("redis", "workers", "uponai", "twilio", "number webhook", "webhook self-test")]
    checks = [Check("settings", "PASS", "every required variable is set and valid")]
    admin = connect_admin({f.name: getattr(settings, f.name) for f in settings.__dataclass_fields__.values()})
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("redis", lambda: check_redis(settings)),
        ("workers", lambda: check_workers(settings)),
        ("uponai", lambda: check_uponai(settings)),
        ("twilio", lambda: check_twilio(settings, admin)),
        ("number webhook", lambda: check_number(settings, admin, number or settings.twilio_from_number)),
        ("webhook self-test", lambda: check_self_test(settings)),
    ]
    for name, step in steps:
        if name == "number webhook" and checks[-1].status == "FAIL":
            checks.append(Check(name, "SKIP", "needs working Twilio credentials"))
            continue
        try:
            checks.append(step())
        except Skip as exc:
            checks.append(Check(name, "SKIP", str(exc)))
    return checks


def run_doctor(environ: Mapping[str, str], *, number: str | None = None, out: TextIO | None = None) -> int:
    """Print one line per check; 0 when nothing failed, else 1."""
    out = out or sys.stdout
    checks = run_checks(environ, number=number)
    width = max(len(c.name) for c in checks)
    for check in checks:
        print(f"{check.status:<4}  {check.name:<{width}}  {check.detail}", file=out)
        if check.fix and check.status != "PASS":
            print(f"      {'':<{width}}  -> {check.fix}", file=out)
    failed = [c.name for c in checks if c.status in ("FAIL", "SKIP")]
    if failed:
        print(f"doctor found problems with: {', '.join(failed)}. Fix them and run `sms-gateway doctor` again.",
              file=out)
        return 1
    print("doctor: everything checked is working.", file=out)
    return 0
