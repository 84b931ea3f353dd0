"""``sms-gateway campaign send|status|list|cancel``: campaigns from the console, through the admin API.

``campaign send numbers.csv`` uploads the file as it is (``POST /admin/campaigns`` with ``Content-Type: text/csv``:
one number a row, the first column or one named ``number`` or ``phone``; with a header row, the other columns are
each number's dynamic variables), prints what was accepted and skipped, then a progress bar until the campaign is
done (Ctrl-C stops watching, not the campaign). Exit 1 with the API's message on failure, 2 on a bad command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cli.admin import CommandError, call_admin_api, common_options

POLL_SECONDS = 1.0
BAR_WIDTH = 30
FINISHED = ("done", "cancelled")
SKIPPED_SHOWN = 10


def _failed(args: argparse.Namespace, status: int, data: Any) -> int:
    error = data.get("error", {}) if isinstance(data, dict) else {}
    print(f"sms-gateway campaign {args.campaign_command}: {error.get('message', 'failed')} "
          f"({error.get('code', 'error')}, HTTP {status})", file=sys.stderr)
    return 1


def progress_line(view: dict[str, Any]) -> str:
    """One line: a bar of the numbers settled so far, and the counts."""
    counts, accepted = view["counts"], view["accepted"] or 0
    done = accepted - counts["queued"]
    filled = BAR_WIDTH if not accepted else round(BAR_WIDTH * done / accepted)
    shown = ", ".join(f"{counts[name]} {name}" for name in ("sent", "delivered", "failed", "skipped", "replied"))
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{accepted} {view['status']}: {shown}"


def _watch(args: argparse.Namespace, campaign_id: str) -> int:
    """Print the campaign's progress until it is done or cancelled (a bar redrawn in place on a terminal)."""
    on_terminal = sys.stdout.isatty()
    last = None
    try:
        while True:
            status, view = call_admin_api(args, "GET", f"/admin/campaigns/{campaign_id}")
            if status != 200:
                return _failed(args, status, view)
            line = progress_line(view)
            if line != last:
                print(("\r" + line) if on_terminal else line, end="" if on_terminal else "\n", flush=True)
                last = line
            if view["status"] in FINISHED:
                if on_terminal:
                    print()
                return 0
            time.sleep(POLL_SECONDS)  # the operator's refresh rate
    except KeyboardInterrupt:
        print(f"\nStopped watching; the campaign goes on. Follow it with: sms-gateway campaign status {campaign_id}")
        return 130


def _send(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    params = {name: value for name, value in (("message", args.message), ("send_at", args.at),
                                              ("from", args.sender), ("agent_id", args.agent_id)) if value}
    if args.include_in_conversation:
        params["include_in_conversation"] = "true"
    headers = {"Content-Type": "text/csv; charset=utf-8"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    status, answer = call_admin_api(args, "POST", "/admin/campaigns", params=params, headers=headers, data=data)
    if status != 202:
        return _failed(args, status, answer)
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    skipped = answer["skipped"]
    print(f"Campaign {answer['campaign_id']}: {answer['accepted']} accepted, {len(skipped)} skipped, "
          f"{answer['status']}")
    for row in skipped[:SKIPPED_SHOWN]:
        print(f"  skipped {row['number']}: {row['reason']}")
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more (--json lists them all)")
    if args.no_wait or answer["status"] == "scheduled":
        print(f"Follow it with: sms-gateway campaign status {answer['campaign_id']}")
        return 0
    return _watch(args, answer["campaign_id"])


def _show(view: dict[str, Any]) -> None:
    print(f"Campaign {view['campaign_id']}: {view['status']}, from {view['from']}")
    print(f"  {progress_line(view)}")
    for name in ("created_at", "send_at", "finished_at", "cancelled_at"):
        if view.get(name):
            print(f"  {name.replace('_', ' ')}: {view[name]}")


def _status(args: argparse.Namespace) -> int:
    return _campaign_answer(args, "GET", f"/admin/campaigns/{args.campaign_id}")


def _cancel(args: argparse.Namespace) -> int:
    return _campaign_answer(args, "POST", f"/admin/campaigns/{args.campaign_id}/cancel")


def _campaign_answer(args: argparse.Namespace, method: str, path: str) -> int:
    """Call a route that answers one campaign, and show it."""
    status, view = call_admin_api(args, method, path)
    if status != 200:
        return _failed(args, status, view)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        _show(view)
    return 0


def _list(args: argparse.Namespace) -> int:
    status, data = call_admin_api(args, "GET", "/admin/campaigns", params={"limit": args.limit})
    if status != 200:
        return _failed(args, status, data)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for view in data["campaigns"]:
        print(f"{view['campaign_id']}  {view['created_at']}  {progress_line(view)}")
    return 0


def _run(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CommandError as exc:
            print(f"sms-gateway campaign {args.campaign_command}: {exc}", file=sys.stderr)
            return 2

    return run


def add_commands(sub) -> None:
    """Register ``campaign`` and its subcommands on the ``sms-gateway`` parser."""
    common = common_options(timeout_seconds=60.0, each=True)

    campaign = sub.add_parser("campaign", help="text a list of people (campaigns: send, status, list, cancel)")
    commands = campaign.add_subparsers(dest="campaign_command", required=True)

    send = commands.add_parser("send", parents=[common], help="start a campaign from a CSV file of numbers, and "
                                                              "show its progress")
    send.add_argument("file", help="CSV: one number a row (first column, or a column named number or phone); with "
                                   "a header row, the other columns are each number's dynamic variables")
    send.add_argument("-m", "--message", help="the first SMS (default: the agent writes each opening)")
    send.add_argument("--at", help="when to send: ISO 8601 with offset, e.g. 2030-01-31T09:00:00+01:00 "
                                   "(default: now)")
    send.add_argument("--from", dest="sender", help="sending number or Messaging Service sid (default: configured)")
    send.add_argument("--agent-id", help="the agent of the new chats (default: the number's agent)")
    send.add_argument("--include-in-conversation", action="store_true",
                      help="text people who are in a live conversation too (skipped by default)")
    send.add_argument("--idempotency-key", help="re-running with the same key starts one campaign, not two")
    send.add_argument("--no-wait", action="store_true", help="print the campaign's id and return")
    send.set_defaults(func=_run(_send))

    status = commands.add_parser("status", parents=[common], help="show a campaign's status and counts")
    status.add_argument("campaign_id")
    status.set_defaults(func=_run(_status))

    cancel = commands.add_parser("cancel", parents=[common], help="stop what a campaign has not sent yet")
    cancel.add_argument("campaign_id")
    cancel.set_defaults(func=_run(_cancel))

    listing = commands.add_parser("list", parents=[common], help="the latest campaigns")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (1-100, default 20)")
    listing.set_defaults(func=_run(_list))
