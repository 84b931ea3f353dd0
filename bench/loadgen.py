"""Open-loop load generator: pre-signed webhook requests sent on a fixed clock over raw asyncio sockets.

Each request is scheduled at ``start + i / rate`` whatever happened to the ones before (open loop), and
its latency is measured from that scheduled time, so a stalled server cannot hide queueing delay
(no coordinated omission). Requests are built and signed (twilio's RequestValidator) before the clock
starts; keep-alive connections are reused from a LIFO pool and a new one is opened whenever none is free.
The generator's own CPU per request and its lag behind the schedule are recorded to show it is not the
bottleneck.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

IDLE_CONNECTION_SECONDS = 2.0  # below gunicorn's --keep-alive 5, so the server never closes one under us


@dataclass
class Inbound:
    """One webhook: its form fields and the token its reply will carry."""

    token: str
    form: dict[str, str]


@dataclass
class Outcome:
    """What happened to one request; times are ``time.monotonic()``."""

    token: str
    scheduled: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0
    body: bytes = b""
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def lag(self) -> float:
        return self.sent - self.scheduled


@dataclass
class StepResult:
    """The outcomes of one fixed-rate step plus the generator's own cost."""

    rate: float
    outcomes: list[Outcome]
    wall_seconds: float
    generator_cpu_seconds: float
    connections_opened: int
    extra: dict = field(default_factory=dict)


def inbound_form(token: str, person: str, gateway_number: str, account_sid: str) -> dict[str, str]:
    sid = "SM" + hashlib.md5(token.encode()).hexdigest()  # a real sid's shape: SM and 32 hex digits
    form = {"MessageSid": sid, "AccountSid": account_sid, "From": person, "To": gateway_number,
            "Body": f"benchmark text #{token}", "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received",
            "ApiVersion": "2010-04-01"}
    form["SmsMessageSid"] = form["SmsSid"] = sid
    return form


def build_request(host: str, port: int, path: str, public_url: str, form: dict[str, str],
                  validator: RequestValidator) -> bytes:
    """The raw HTTP/1.1 request Twilio would send, signed over ``public_url``."""
    body = urlencode(form).encode()
    signature = validator.compute_signature(public_url, form)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: TwilioProxy/1.1\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {signature}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


class _Pool:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < IDLE_CONNECTION_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def give_back(self, reader, writer) -> None:
        self.idle.append((reader, writer, time.monotonic()))

    def close(self) -> None:
        for _reader, writer, _since in self.idle:
            writer.close()
        self.idle.clear()


async def _exchange(pool: _Pool, payload: bytes, outcome: Outcome, timeout: float) -> None:
    writer = None
    outcome.sent = time.monotonic()
    try:
        reader, writer = await pool.take()
        writer.write(payload)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        outcome.status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        outcome.body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        outcome.done = time.monotonic()
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            pool.give_back(reader, writer)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        outcome.done = time.monotonic()
        outcome.error = type(exc).__name__
        if writer is not None:
            writer.close()


async def run_step(host: str, port: int, payloads: list[tuple[str, bytes]], rate: float, *,
                   timeout: float = 30.0) -> StepResult:
    """Send ``payloads`` at ``rate`` per second on a fixed clock; wait for every answer (or its timeout)."""
    pool = _Pool(host, port)
    outcomes = [Outcome(token=token, scheduled=0.0) for token, _ in payloads]
    tasks = []
    cpu_before = time.process_time()
    start = time.monotonic() + 0.05
    for index, (_, payload) in enumerate(payloads):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        outcomes[index].scheduled = due
        tasks.append(asyncio.create_task(_exchange(pool, payload, outcomes[index], timeout)))
    await asyncio.gather(*tasks)
    wall = time.monotonic() - start
    cpu = time.process_time() - cpu_before
    pool.close()
    return StepResult(rate=rate, outcomes=outcomes, wall_seconds=wall, generator_cpu_seconds=cpu,
                      connections_opened=pool.opened)


async def run_closed(host: str, port: int, payloads: list[tuple[str, bytes]], concurrency: int,
                     duration_seconds: float, *, timeout: float = 30.0) -> StepResult:
    """Closed loop: ``concurrency`` clients send back to back until ``duration_seconds`` or the payloads run out."""
    pool = _Pool(host, port)
    outcomes: list[Outcome] = []
    feed = iter(payloads)
    cpu_before = time.process_time()
    start = time.monotonic()
    stop_at = start + duration_seconds

    async def client() -> None:
        for token, payload in feed:
            if time.monotonic() >= stop_at:
                return
            outcome = Outcome(token=token, scheduled=time.monotonic())
            outcomes.append(outcome)
            await _exchange(pool, payload, outcome, timeout)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.monotonic() - start
    cpu = time.process_time() - cpu_before
    pool.close()
    return StepResult(rate=0.0, outcomes=outcomes, wall_seconds=wall, generator_cpu_seconds=cpu,
                      connections_opened=pool.opened)
