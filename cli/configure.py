"""Operator commands: ``configure-twilio`` (point a number at the gateway) and ``doctor`` (check a deployment).

Both read the same environment (and ``.env``) as the gateway's processes. ``configure-twilio`` needs
only the Twilio settings and ``PUBLIC_BASE_URL``; Twilio is reached through ``workers.twilio_admin``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TextIO

from cli.environment import console_environment
from cli.twilio_number import connect_admin, service_warning, webhook_urls
from config import load_some
from workers.errors import GatewayError

TWILIO_VARIABLES = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_BASE_URL", "TWILIO_TIMEOUT_SECONDS",
                    "TWILIO_CONNECT_TIMEOUT_SECONDS", "TWILIO_FROM_NUMBER", "PUBLIC_BASE_URL")


def _shown(method: str, url: str) -> str:
    return f"{method} {url}" if url else "(not set)"


def configure_twilio(environ: Mapping[str, str], *, number: str | None = None, public_base_url: str | None = None,
                     dry_run: bool = False, out: TextIO | None = None) -> int:
    """Point the number's SMS webhook and status callback at the gateway; 0 when done, else 1 (2: settings)."""
    out = out or sys.stdout
    values, problems = load_some(TWILIO_VARIABLES, environ)
    base = public_base_url or values.get("public_base_url")
    number = number or values.get("twilio_from_number")
    if not base:
        problems.append("PUBLIC_BASE_URL is not set (or pass --public-base-url): it is where Twilio will call")
    if not number:
        problems.append("no number: set TWILIO_FROM_NUMBER or pass --number +1...")
    if problems:
        print("configure-twilio: cannot start:\n  - " + "\n  - ".join(problems), file=out)
        return 2
    sms_url, status_url = webhook_urls(base)
    try:
        admin = connect_admin(values)
        current = admin.find_number(number)
        if current is None:
            print(f"configure-twilio: the Twilio account has no number {number}; check --number or "
                  "TWILIO_FROM_NUMBER (E.164, e.g. +15551234567)", file=out)
            return 1
        services = admin.services_of(current.sid)
    except GatewayError as exc:
        print(f"configure-twilio: Twilio refused: {exc}\n  - check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
              file=out)
        return 1
    print(f"Twilio number {current.phone_number} ({current.sid})", file=out)
    print(f"  SMS webhook:      {_shown(current.sms_method, current.sms_url)}", file=out)
    print(f"                 -> {_shown('POST', sms_url)}", file=out)
    print(f"  status callback:  {current.status_callback or '(not set)'}", file=out)
    print(f"                 -> {status_url}", file=out)
    unchanged = (current.sms_url, current.sms_method, current.status_callback) == (sms_url, "POST", status_url)
    if unchanged:
        print("Already pointing at this gateway: nothing to change.", file=out)
    elif dry_run:
        print("Dry run: nothing was changed at Twilio.", file=out)
    else:
        try:
            updated = admin.update_number(current.sid, sms_url=sms_url, sms_method="POST",
                                          status_callback=status_url)
        except GatewayError as exc:
            print(f"configure-twilio: Twilio refused the update: {exc}", file=out)
            return 1
        print(f"Updated at Twilio: SMS webhook {_shown(updated.sms_method, updated.sms_url)}, status callback "
              f"{updated.status_callback}.", file=out)
    for service in services:
        warning = service_warning(service, sms_url)
        if warning:
            print(f"WARNING: {warning}", file=out)
    return 0


def _run_configure_twilio(args: argparse.Namespace) -> int:
    return configure_twilio(console_environment(), number=args.number, public_base_url=args.public_base_url,
                            dry_run=args.dry_run)


def _run_doctor(args: argparse.Namespace) -> int:
    from cli.doctor import run_doctor

    return run_doctor(console_environment(), number=args.number)


def add_commands(sub) -> None:
    """Register ``configure-twilio`` and ``doctor`` on the ``sms-gateway`` command line."""
    configure = sub.add_parser(
        "configure-twilio", help="point the Twilio number's SMS webhook and status callback at PUBLIC_BASE_URL")
    configure.add_argument("--number", help="the number to configure, E.164 (default: TWILIO_FROM_NUMBER)")
    configure.add_argument("--public-base-url", help="the gateway's public origin (default: PUBLIC_BASE_URL)")
    configure.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    configure.set_defaults(func=_run_configure_twilio)

    doctor = sub.add_parser("doctor", help="check settings, Redis, UponAI, Twilio and the webhook; exit 1 on failure")
    doctor.add_argument("--number", help="the number whose webhook to check (default: TWILIO_FROM_NUMBER)")
    doctor.set_defaults(func=_run_doctor)
