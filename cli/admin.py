"""Operator commands (``sms-gateway send|show|end|forget|handoff|say|resume|chats|failed|requeue|job``) that call
the admin API.

They talk to a running gateway over HTTP (``--url``, default PUBLIC_BASE_URL, else
``http://127.0.0.1:$PORT``) with the bearer token from ADMIN_API_TOKEN (the environment or ``.env``, else the
running sandbox's, see ``cli.environment``), print a readable summary, or the API's JSON with ``--json``,
and exit 1 with the API's error message on failure (2 when the command itself is misconfigured).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

import requests

from cli.environment import console_environment
from config import load_some

CONNECT_TIMEOUT_SECONDS = 5.0
NUMBER_HELP = ("the person's number with + and country code, e.g. '+1 415 555 0100' (national numbers only "
               "when the gateway sets DEFAULT_PHONE_REGION)")


class CommandError(Exception):
    """The command could not run (bad setup); exit code 2."""


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    values, problems = load_some(("PUBLIC_BASE_URL", "PORT"), console_environment())
    if problems:
        raise CommandError("; ".join(problems))
    return values["public_base_url"] or f"http://127.0.0.1:{values['port']}"


def _admin_token() -> str | None:
    # Taken as written: the gateway judges it (a wrong one is its 401, which the operator should see).
    return console_environment().get("ADMIN_API_TOKEN", "").strip() or None


def call_admin_api(args: argparse.Namespace, method: str, path: str, *, body: Any = None, params: dict | None = None,
                   headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any]:
    """Call the admin API (``--url``, ``--timeout``); returns (HTTP status, the JSON answer). ``data``: a raw body
    (give its Content-Type in ``headers``) instead of ``body`` as JSON. Raises CommandError."""
    return _call(args, method, path, body=body, params=params, headers=headers, data=data)


def _call(args: argparse.Namespace, method: str, path: str, *, body: Any = None, params: dict | None = None,
          headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any]:
    token = _admin_token()
    if not token:
        raise CommandError("ADMIN_API_TOKEN is not set (the environment or .env), and no sandbox runs here "
                           "(`make run` starts one)")
    base_url = _base_url(args)
    try:
        response = requests.request(method, base_url + path, json=body, data=data, params=params,
                                    headers={"Authorization": f"Bearer {token}", **(headers or {})},
                                    timeout=(CONNECT_TIMEOUT_SECONDS, args.timeout))
    except requests.RequestException as exc:
        raise CommandError(f"cannot reach the gateway at {base_url}: {type(exc).__name__}") from exc
    try:
        data = response.json()
    except ValueError:
        data = {"error": {"code": "not_json", "message": f"HTTP {response.status_code}: "
                                                         f"{response.text.strip()[:200] or 'empty answer'}"}}
    return response.status_code, data


def _number_path(number: str) -> str:
    # Passed as typed: the gateway reads it (core.phone_numbers), so the console and the API agree.
    return quote(number, safe="")


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CommandError(f"{option} takes NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


# -- readable output ------------------------------------------------------------------------------


def _rows(pairs: list[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"  {name.ljust(width)}  {'-' if value in (None, '') else value}" for name, value in pairs)


def _print_running(data: dict[str, Any]) -> None:
    if data.get("status") == "queued":  # every place to wait for a worker was taken (ADMIN_MAX_WAITING)
        print(f"Queued without waiting (the gateway is busy); it runs when a worker takes it: job {data['job_id']}")
    else:
        print(f"Still running when the gateway stopped waiting: job {data['job_id']}")
    print(f"  check it with: sms-gateway job {data['job_id']}")


def _show_sent(data: dict[str, Any]) -> None:
    if data.get("status") in ("running", "queued"):
        return _print_running(data)
    print(f"Sent to {data['to']} from {data['from']}")
    print(_rows([("conversation", data["conversation_id"]), ("chat", data["chat_id"]), ("agent", data.get("agent_id")),
                 ("messages", ", ".join(data.get("message_sids") or [])),
                 ("opening", "written by the agent" if data.get("opening_generated") else "as given")]))
    return None


def _show_conversation(data: dict[str, Any]) -> None:
    print(f"Conversation {data['conversation_id']}: {data['person']} with {data['gateway']}")
    print(_rows([("chat", data.get("chat_id")), ("agent", data.get("agent_id")),
                 ("opted out", "yes" if data.get("opted_out") else "no"),
                 ("chat started", data.get("chat_started_at")), ("last activity", data.get("last_activity_at")),
                 ("last inbound", data.get("last_inbound_at")), ("last outbound", data.get("last_outbound_at")),
                 ("waiting", data.get("waiting_messages")), ("busy", "yes" if data.get("busy") else "no"),
                 ("empty agent turns", data.get("empty_turns")), ("last empty turn", data.get("last_empty_turn_at"))]))
    handoff = data.get("handoff") or {}
    if handoff.get("active"):
        print(f"Handed off to an operator since {handoff.get('since') or '-'} (by {handoff.get('by') or '-'}): "
              "the agent does not answer; give it back with: sms-gateway resume NUMBER")
    _print_away_log(data.get("away_log") or [])
    recent = data.get("recent_messages") or []
    if recent:
        print("Recent messages sent (newest first):")
        for row in recent:
            error = f" error {row['error_code']}" if row.get("error_code") else ""
            print(f"  {row['sid']}  {row.get('status') or '-'}{error}  {row.get('sent_at') or '-'}  "
                  f"{row.get('part') or ''}")
    chat = data.get("chat")
    if chat:
        print(f"Chat {chat['chat_id']} ({chat.get('status') or 'unknown status'}):")
        for message in chat.get("messages") or []:
            print(f"  {message['role']}: {message['content']}")
    if data.get("chat_error"):
        print(f"Chat not available: {data['chat_error'].get('message')}")


def _print_away_log(entries: list[dict[str, Any]]) -> None:
    if entries:
        print("Said while the agent was away (oldest first):")
        for entry in entries:
            heard = "  (heard by the agent)" if entry.get("heard_by_agent") else ""
            print(f"  {entry.get('at') or '-'}  {entry.get('who')}: {entry.get('text')}{heard}")


def _show_handoff(data: dict[str, Any]) -> None:
    handoff = data.get("handoff") or {}
    cid = data["conversation_id"]
    if handoff.get("active"):
        already = "" if data.get("changed") else " (it already was)"
        print(f"Conversation {cid} is handed off to an operator{already}: the agent does not answer it")
        print("  answer with: sms-gateway say NUMBER \"text\"; give it back with: sms-gateway resume NUMBER")
        if data.get("turn_running"):
            print("  an agent turn was already running: its reply may still go out")
    else:
        already = "" if data.get("changed") else " (it already did)"
        print(f"The agent answers conversation {cid} again{already}")
    _print_away_log(data.get("away_log") or [])


def _show_said(data: dict[str, Any]) -> None:
    if data.get("status") in ("running", "queued"):
        return _print_running(data)
    state = "handed off" if data.get("handoff") else "the agent is answering it"
    print(f"Sent to {data['to']} from {data['from']}: {data['message_sid']} (conversation {data['conversation_id']}, "
          f"{state})")
    return None


def _show_ended(data: dict[str, Any]) -> None:
    if data.get("status") in ("running", "queued"):
        return _print_running(data)
    if data.get("ended_chat_id"):
        print(f"Ended chat {data['ended_chat_id']} of conversation {data['conversation_id']}")
    else:
        print(f"Conversation {data['conversation_id']} had no ongoing chat")
    return None


def _show_erased(data: dict[str, Any]) -> None:
    if data.get("status") in ("running", "queued"):
        return _print_running(data)
    chat = f", ended chat {data['ended_chat_id']}" if data.get("ended_chat_id") else ""
    print(f"Erased conversation {data['conversation_id']}: {data['keys_deleted']} record(s), "
          f"{data['jobs_deleted']} job(s){chat}")
    return None


def _show_chats(data: dict[str, Any]) -> None:
    chats = data.get("chats") or []
    if not chats:
        print("No chats")
    for chat in chats:
        print(f"{chat['chat_id']}  {chat.get('status') or '-'}  {chat.get('agent_id') or '-'}  "
              f"{chat.get('started_at') or '-'}")
    if data.get("pagination_key"):
        print(f"More: sms-gateway chats --pagination-key {data['pagination_key']}")


_MESSAGES_STATE = {"given_up": "messages given up (the person got the failure notice): requeue to answer them",
                   "waiting": "messages still waiting: a worker answers them, nothing to do",
                   "answered": "messages answered after all: nothing to do"}


def _show_failed(data: dict[str, Any]) -> None:
    jobs = data.get("jobs") or []
    needed = sum(1 for job in jobs if job.get("needs_operator", True))
    print(f"{data.get('total', len(jobs))} failed job(s); listed here and needing an operator: {needed}")
    for job in jobs:
        print(f"{job['job_id']}  {job['queue']}  conversation {job.get('conversation_id') or '-'}  "
              f"{job.get('failed_at') or '-'}\n    {job['reason']}")
        if job.get("messages") in _MESSAGES_STATE:
            print(f"    {_MESSAGES_STATE[job['messages']]}")
    if needed:
        print("Run one again with: sms-gateway requeue JOB_ID")


def _show_requeued(data: dict[str, Any]) -> None:
    print(f"Requeued job {data['job_id']} on queue {data['queue']}")


def _show_job(data: dict[str, Any]) -> None:
    print(f"Job {data['job_id']}: {data['status']}")
    if "ok" in data:
        print(json.dumps(data["ok"], indent=2))
    if "error" in data:
        print(f"  error {data['error'].get('code')}: {data['error'].get('message')}")


# -- commands -------------------------------------------------------------------------------------


def _send(args):
    body: dict[str, Any] = {"to": args.to}
    if args.message is not None:
        body["message"] = args.message
    if args.sender:
        body["from"] = args.sender
    if args.agent_id:
        body["agent_id"] = args.agent_id
    if args.var:
        body["dynamic_variables"] = _pairs(args.var, "--var")
    if args.meta:
        body["metadata"] = _pairs(args.meta, "--meta")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    return _call(args, "POST", "/admin/sms", body=body, headers=headers), _show_sent


def _show(args):
    params = {"from": args.sender} if args.sender else None
    return _call(args, "GET", f"/admin/conversations/{_number_path(args.number)}", params=params), _show_conversation


def _end(args):
    params = {"from": args.sender} if args.sender else None
    return _call(args, "POST", f"/admin/conversations/{_number_path(args.number)}/end", params=params), _show_ended


def _forget(args):
    params = {"from": args.sender} if args.sender else None
    return _call(args, "DELETE", f"/admin/conversations/{_number_path(args.number)}", params=params), _show_erased


def _handoff(args):
    params = {"from": args.sender} if args.sender else None
    return _call(args, "POST", f"/admin/conversations/{_number_path(args.number)}/handoff", params=params), \
        _show_handoff


def _resume(args):
    params = {"from": args.sender} if args.sender else None
    return _call(args, "POST", f"/admin/conversations/{_number_path(args.number)}/resume", params=params), \
        _show_handoff


def _say(args):
    params = {"from": args.sender} if args.sender else None
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    return _call(args, "POST", f"/admin/conversations/{_number_path(args.number)}/messages", params=params,
                 body={"message": args.message}, headers=headers), _show_said


def _chats(args):
    params = {name: value for name, value in (("limit", args.limit), ("sort_order", args.sort_order),
                                              ("pagination_key", args.pagination_key)) if value is not None}
    return _call(args, "GET", "/admin/chats", params=params), _show_chats


def _failed(args):
    return _call(args, "GET", "/admin/failed", params={"limit": args.limit}), _show_failed


def _requeue(args):
    return _call(args, "POST", f"/admin/failed/{quote(args.job_id, safe='')}/requeue"), _show_requeued


def _job(args):
    return _call(args, "GET", f"/admin/jobs/{quote(args.job_id, safe='')}"), _show_job


def _runner(command):
    def run(args: argparse.Namespace) -> int:
        try:
            (status, data), show = command(args)
        except CommandError as exc:
            print(f"sms-gateway {args.command}: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
        if status >= 400 or not isinstance(data, dict):
            error = data.get("error", {}) if isinstance(data, dict) else {}
            print(f"sms-gateway {args.command}: {error.get('message', 'failed')} "
                  f"({error.get('code', 'error')}, HTTP {status})", file=sys.stderr)
            return 1
        if not args.json:
            show(data)
        return 0

    return run


def common_options(timeout_seconds: float, each: bool = False) -> argparse.ArgumentParser:
    """The options every admin-API command takes: --url, --json, --timeout (``timeout_seconds`` by default)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the gateway's origin (default: PUBLIC_BASE_URL, else http://127.0.0.1:$PORT)")
    common.add_argument("--json", action="store_true", help="print the admin API's JSON answer")
    common.add_argument("--timeout", type=float, default=timeout_seconds,
                        help=f"seconds to wait for {'each' if each else 'the'} answer (default {timeout_seconds:g})")
    return common


def add_commands(sub) -> None:
    """Register the admin subcommands on the ``sms-gateway`` parser."""
    common = common_options(timeout_seconds=120.0)

    send = sub.add_parser("send", parents=[common], help="start an outbound conversation (POST /admin/sms)")
    send.add_argument("to", help=NUMBER_HELP)
    send.add_argument("-m", "--message", help="the text to send (default: the agent writes the opening)")
    send.add_argument("--from", dest="sender", help="sending number or Messaging Service sid (default: configured)")
    send.add_argument("--agent-id", help="the agent of the new chat (default: the number's agent)")
    send.add_argument("--var", action="append", metavar="NAME=VALUE", help="a dynamic variable for the chat")
    send.add_argument("--meta", action="append", metavar="NAME=VALUE", help="metadata for the chat")
    send.add_argument("--idempotency-key", help="re-running with the same key starts one conversation, not two")
    send.set_defaults(func=_runner(_send))

    for name, command, summary in (("show", _show, "show a conversation and its chat"),
                                   ("end", _end, "end a conversation's chat now"),
                                   ("forget", _forget, "erase a person: end the chat, delete their number and "
                                                       "words (DELETE /admin/conversations/NUMBER)"),
                                   ("handoff", _handoff, "take a conversation over: the agent stops answering it"),
                                   ("resume", _resume, "give a conversation back to the agent")):
        parser = sub.add_parser(name, parents=[common], help=summary)
        parser.add_argument("number", help=NUMBER_HELP)
        parser.add_argument("--from", dest="sender", help="the gateway number or Messaging Service sid "
                                                          "(default: the configured sender)")
        parser.set_defaults(func=_runner(command))

    say = sub.add_parser("say", parents=[common], help="send an SMS as the business into an ongoing conversation "
                                                       "(POST /admin/conversations/NUMBER/messages)")
    say.add_argument("number", help=NUMBER_HELP)
    say.add_argument("message", help="the text, sent as written")
    say.add_argument("--from", dest="sender", help="the gateway number or Messaging Service sid "
                                                   "(default: the configured sender)")
    say.add_argument("--idempotency-key", help="re-running with the same key sends one SMS, not two")
    say.set_defaults(func=_runner(_say))

    chats = sub.add_parser("chats", parents=[common], help="list UponAI chats")
    chats.add_argument("--limit", type=int, help="chats per page (1-1000)")
    chats.add_argument("--sort-order", choices=("ascending", "descending"))
    chats.add_argument("--pagination-key", help="the key printed by the previous page")
    chats.set_defaults(func=_runner(_chats))

    failed = sub.add_parser("failed", parents=[common], help="list failed jobs with their reasons")
    failed.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    failed.set_defaults(func=_runner(_failed))

    requeue = sub.add_parser("requeue", parents=[common], help="run a failed job again")
    requeue.add_argument("job_id")
    requeue.set_defaults(func=_runner(_requeue))

    job = sub.add_parser("job", parents=[common], help="show what became of an admin job")
    job.add_argument("job_id")
    job.set_defaults(func=_runner(_job))
