"""``sms-gateway events``: print the operator events the running sandbox's receiver verified, as they arrive.

``sms-gateway run`` without an EVENTS_WEBHOOK_URL of the person's receives the events itself
(``sandbox.events_receiver``) and notes where in ``sandbox/running.json``; this command reads that receiver's
``GET /events`` (long polls) until Ctrl-C. Exit 2 when no sandbox runs here or it posts events elsewhere,
1 when the sandbox stops meanwhile.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

import requests

from config import read_environment
from core.phone_numbers import NumberError, read_number

WAIT_SECONDS = 20  # each request waits this long for an event (the receiver answers at most after 25 s)


class CommandError(Exception):
    """The command cannot run here; exit code 2."""


def receiver_url() -> str:
    """The running sandbox's events receiver; CommandError when there is none to read."""
    from sandbox.running import running_sandbox

    noted = running_sandbox(read_environment())
    if noted is None:
        raise CommandError("no sandbox runs here (`make run` starts one; SANDBOX_DATA_DIR names another's data "
                           "directory); this command shows the events the sandbox's own receiver gets")
    if not noted.get("events_url"):
        raise CommandError("the sandbox running here posts events to your EVENTS_WEBHOOK_URL, not to a receiver of "
                           "its own: they show at your receiver")
    return str(noted["events_url"])


def event_lines(kept: dict[str, Any]) -> str:
    """One event as printed: time, type, number, id and the check it passed, then its data."""
    event = kept["event"]
    created = str(event.get("created_at", ""))
    try:
        shown_time = datetime.fromisoformat(created.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        shown_time = created or "?"
    number = (event.get("conversation") or {}).get("number", "")
    check = "signature verified" if kept.get("verified") else "NOT verified"
    data = json.dumps(event.get("data", {}), ensure_ascii=False, sort_keys=True)
    return f"{shown_time}  {event.get('type')}  {number}  {event.get('id')}  ({check})\n          {data}"


def follow(args: argparse.Namespace) -> int:
    try:
        number = read_number(args.number) if args.number else None
    except NumberError as exc:
        print(f"sms-gateway events: the number {exc}", file=sys.stderr)
        return 2
    try:
        url = receiver_url()
    except CommandError as exc:
        print(f"sms-gateway events: {exc}", file=sys.stderr)
        return 2
    http = requests.Session()
    try:
        # --new: from the last event received so far, asked before saying the command follows (a person who sees
        # that line and then texts sees what their text causes).
        seen = received(http, url, 0, 0)["last"] if args.new else 0
        print(f"sms-gateway events: following the sandbox's receiver ({url}): verified events as they arrive; "
              "Ctrl-C stops", file=sys.stderr, flush=True)
        while True:
            body = received(http, url, seen, WAIT_SECONDS)
            if body["last"] < seen:  # the sandbox restarted: it numbers its events from 1 again
                seen = 0
                continue
            for kept in body["events"]:
                if number is None or (kept["event"].get("conversation") or {}).get("number") == number:
                    print(json.dumps(kept, ensure_ascii=False) if args.json else event_lines(kept), flush=True)
            seen = body["last"]
    except CommandError as exc:
        print(f"sms-gateway events: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def received(http: requests.Session, url: str, after: int, wait_seconds: float) -> dict[str, Any]:
    """The receiver's answer to ``GET /events``: the events after number ``after`` and the last number; raises
    CommandError when it does not answer (the sandbox stopped)."""
    try:
        answer = http.get(url, params={"after": after, "wait": wait_seconds}, timeout=wait_seconds + 10)
        answer.raise_for_status()
        body = answer.json()
        return {"events": list(body["events"]), "last": int(body["last"])}
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"the sandbox's receiver stopped answering ({type(exc).__name__}); is the sandbox still "
                           "running?") from None


def add_commands(sub) -> None:
    """Register ``events`` on the ``sms-gateway`` parser."""
    events = sub.add_parser("events", help="print the operator events the running sandbox receives, verified, "
                                           "as they arrive (until Ctrl-C)")
    events.add_argument("--number", help="only the events about this number (+ and country code)")
    events.add_argument("--new", action="store_true", help="only events from now on (default: also the last "
                                                           "ones received)")
    events.add_argument("--json", action="store_true", help="print each as one line of JSON")
    events.set_defaults(func=follow)
