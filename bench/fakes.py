"""Lean asyncio fakes of UponAI (reference style) and Twilio's Messages API for the benchmark.

One process serves both on two ports. Latency is injected only on the UponAI completion call
(``completion_latency_seconds``), never on chat creation or on Twilio, so the gateway's own overhead
is end-to-end latency minus exactly that. The fake Twilio records each message with the time it
arrived (``time.monotonic()``, one clock for every process on the machine) and the benchmark token
of the inbound text it answers. Control endpoints under ``/bench/`` set the latency and read the records.

Run: ``python -m bench.fakes --uponai-port P --twilio-port Q --api-key K --account-sid AC.. --auth-token T``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import re
import resource
import time

from aiohttp import web

TOKEN = re.compile(r"#(\w+)")


class State:
    """Everything the fakes share: chats, sent messages, injected latency, request counters."""

    def __init__(self, args: argparse.Namespace):
        self.api_key = args.api_key
        self.workspace_id = args.workspace_id
        self.account_sid = args.account_sid
        self.basic = "Basic " + base64.b64encode(f"{args.account_sid}:{args.auth_token}".encode()).decode()
        self.completion_latency_seconds = 0.0
        self.chats: dict[str, list[dict]] = {}
        self.sent: list[tuple[str, float, str]] = []  # (token, arrived monotonic, to)
        self.requests = 0
        self.completions_in_flight = 0  # completions waiting out the injected latency right now
        self.peak_completions_in_flight = 0  # since the last /bench/config
        self._ids = itertools.count(1)

    def new_chat_id(self) -> str:
        return f"chat_{next(self._ids):08d}"

    def new_message_sid(self) -> str:
        return f"SM{next(self._ids):032d}"


def uponai_app(state: State) -> web.Application:
    def authorised(request: web.Request) -> bool:
        state.requests += 1
        return request.headers.get("Authorization") == f"Bearer {state.api_key}"

    async def create_chat(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"status": "error", "message": "Invalid API key"}, status=401)
        body = await request.json()
        chat_id = state.new_chat_id()
        state.chats[chat_id] = []
        return web.json_response({"chatId": chat_id, "agentId": body.get("agent_id"), "status": "ongoing",
                                  "messages": []}, status=201)

    async def complete(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"status": "error", "message": "Invalid API key"}, status=401)
        chat = state.chats.get(request.match_info["chat_id"])
        if chat is None:
            return web.json_response({"status": "error", "message": "chat not found"}, status=422)
        content = (await request.json()).get("content", "")
        if state.completion_latency_seconds:
            state.completions_in_flight += 1
            state.peak_completions_in_flight = max(state.peak_completions_in_flight, state.completions_in_flight)
            try:
                await asyncio.sleep(state.completion_latency_seconds)
            finally:
                state.completions_in_flight -= 1
        reply = f"You said: {content}"
        chat.extend(({"role": "user", "content": content}, {"role": "agent", "content": reply}))
        return web.json_response({"messages": [{"content": reply, "name": "agent", "tool_calls": []}]}, status=201)

    async def get_chat(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"status": "error", "message": "Invalid API key"}, status=401)
        chat_id = request.match_info["chat_id"]
        if chat_id not in state.chats:
            return web.json_response({"status": "error", "message": "chat not found"}, status=422)
        return web.json_response({"chatId": chat_id, "status": "ongoing", "messages": state.chats[chat_id]})

    async def configure(request: web.Request) -> web.Response:
        body = await request.json()
        state.completion_latency_seconds = float(body.get("completion_latency_seconds", 0.0))
        state.peak_completions_in_flight = state.completions_in_flight
        return web.json_response({"completion_latency_seconds": state.completion_latency_seconds})

    app = web.Application()
    app.router.add_post("/api/chats", create_chat)
    app.router.add_post("/api/chats/{chat_id}/completions", complete)
    app.router.add_get("/api/chats/{chat_id}", get_chat)
    app.router.add_post("/bench/config", configure)
    return app


def twilio_app(state: State) -> web.Application:
    async def send(request: web.Request) -> web.Response:
        state.requests += 1
        if request.headers.get("Authorization") != state.basic:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        form = await request.post()
        to, body = form.get("To", ""), form.get("Body", "")
        if not to or not body or not (form.get("From") or form.get("MessagingServiceSid")):
            return web.json_response({"code": 21211, "message": "To, Body and a sender are required",
                                      "status": 400}, status=400)
        arrived = time.monotonic()
        # A burst's texts are answered in one turn: its reply quotes every token of the turn.
        state.sent.extend((token, arrived, to) for token in TOKEN.findall(body) or [""])
        sid = state.new_message_sid()
        return web.json_response({
            "sid": sid, "account_sid": state.account_sid, "to": to, "from": form.get("From"), "body": body,
            "status": "queued", "num_segments": "1", "num_media": "0", "direction": "outbound-api",
            "api_version": "2010-04-01", "error_code": None, "error_message": None,
            "uri": f"/2010-04-01/Accounts/{state.account_sid}/Messages/{sid}.json"}, status=201)

    async def sent(request: web.Request) -> web.Response:
        start = int(request.query.get("from", "0"))
        return web.json_response({"sent": state.sent[start:], "next": len(state.sent)})

    async def stats(request: web.Request) -> web.Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response({"requests": state.requests, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                                  "completions_in_flight": state.completions_in_flight,
                                  "peak_completions_in_flight": state.peak_completions_in_flight})

    app = web.Application()
    app.router.add_post(r"/2010-04-01/Accounts/{account}/Messages.json", send)
    app.router.add_get("/bench/sent", sent)
    app.router.add_get("/bench/stats", stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    state = State(args)
    runners = []
    for app, port in ((uponai_app(state), args.uponai_port), (twilio_app(state), args.twilio_port)):
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    print("fakes ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uponai-port", type=int, required=True)
    parser.add_argument("--twilio-port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--workspace-id", type=int, default=1)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
