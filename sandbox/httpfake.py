"""A small threaded HTTP server for local fakes, with fault injection.

Faults are queued per operation name (``inject``) or drawn at random (``set_random_faults``):
an HTTP status with an error body, a delay before answering, a dropped connection either before
or after the operation takes effect, or (``apply_first``) the operation applied and then answered
with the fault's status and body instead of its own, such as a 200 whose body is not what the API
documents.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox.sim_state import StateFile

HOLD_MAX_SECONDS = 60.0  # a held call (``Fault.hold``) goes on by itself after this, should a test forget it


@dataclass
class Fault:
    """What to do instead of (or around) a normal answer."""

    status: int | None = None  # answer this status with an error body, without applying
    delay_seconds: float = 0.0  # wait this long first (longer than the client's timeout = read timeout)
    drop: bool = False  # close the connection without an answer, without applying
    drop_after_apply: bool = False  # apply the operation, then close without an answer
    retry_after: str | None = None
    body: Any = None  # the answer's body (bytes or str as written, anything else as JSON); None: an error body
    apply_first: bool = False  # with ``status``: apply the operation, then answer ``status`` and ``body``
    hold: threading.Event | None = None  # wait until it is set (at most HOLD_MAX_SECONDS) before going on


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when it arrived (epoch seconds)

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True).items()}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Dropped(Exception):
    pass


class FakeServer:
    """Base of the fakes: subclasses implement ``route(request) -> (operation name, handler)``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.RLock()
        self._faults: dict[str, list[Fault]] = {}
        self._random: tuple[float, list[Fault], random.Random, set[str] | None] | None = None
        self.latency_seconds = 0.0
        self.requests: list[tuple[str, Request]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_request(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_request

            def log_message(self, format, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.state_file: StateFile | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.state_file is not None:
            self.state_file.close()

    # -- state kept across restarts (the sandbox's simulators; the tests' fakes keep none) -----------

    def keep_state_in(self, path: Path) -> FakeServer:
        """Take up the state saved in ``path`` (if any) and save it there after each change."""
        self.state_file = StateFile(path, self.snapshot)
        saved = self.state_file.load()
        if saved is not None:
            self.restore(saved)
        self.state_file.start()
        return self

    def changed(self) -> None:
        """The state changed: save it soon (when it is kept)."""
        if self.state_file is not None:
            self.state_file.changed()

    def snapshot(self) -> Any:
        """The state to keep, as JSON-ready data."""
        raise NotImplementedError

    def restore(self, saved: Any) -> None:
        """Take up a state that ``snapshot`` returned."""
        raise NotImplementedError

    # -- fault injection --------------------------------------------------------------------------

    def inject(self, operation: str, *faults: Fault) -> None:
        """Queue faults for the next calls of ``operation``, one per call."""
        with self._lock:
            self._faults.setdefault(operation, []).extend(faults)

    def set_random_faults(self, rate: float, faults: list[Fault], *, seed: int = 0,
                          operations: set[str] | None = None) -> None:
        """Replace a fraction ``rate`` of calls with one of ``faults`` at random."""
        with self._lock:
            self._random = (rate, faults, random.Random(seed), operations) if rate > 0 else None

    def calls(self, operation: str) -> list[Request]:
        """The requests received for ``operation`` so far, in order."""
        with self._lock:
            return [r for op, r in self.requests if op == operation]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._random = None

    def _next_fault(self, operation: str) -> Fault | None:
        with self._lock:
            queued = self._faults.get(operation)
            if queued:
                return queued.pop(0)
            if self._random:
                rate, faults, rng, operations = self._random
                if (operations is None or operation in operations) and rng.random() < rate:
                    return rng.choice(faults)
        return None

    # -- serving ----------------------------------------------------------------------------------

    def route(self, request: Request):
        raise NotImplementedError

    def error_body(self, status: int) -> Any:
        return {"status": "error", "message": f"injected {status}"}

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        request = Request(
            method=handler.command, path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=handler.rfile.read(length) if length else b"",
        )
        operation, action = self.route(request)
        with self._lock:
            self.requests.append((operation, request))
        fault = self._next_fault(operation) if action is not None else None
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        if fault and fault.delay_seconds:
            time.sleep(fault.delay_seconds)
        if fault and fault.hold is not None:
            fault.hold.wait(HOLD_MAX_SECONDS)
        try:
            if action is None:
                reply = Reply(404, {"status": "error", "message": f"no route for {request.method} {request.path}"})
            elif fault and fault.drop:
                raise _Dropped
            elif fault and fault.status and fault.apply_first:
                action()
                reply = Reply(fault.status, fault.body)
            elif fault and fault.status:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                reply = Reply(fault.status, fault.body if fault.body is not None else self.error_body(fault.status),
                              headers)
            else:
                reply = action()
                if fault and fault.drop_after_apply:
                    raise _Dropped
        except _Dropped:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)
            return
        finally:
            if action is not None and request.method != "GET":
                self.changed()
        self._write(handler, reply)

    @staticmethod
    def _write(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.body is None:
            payload = b""
        elif isinstance(reply.body, bytes | str):
            payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
        else:
            payload = json.dumps(reply.body).encode()
        try:
            handler.send_response(reply.status)
            content_type = reply.headers.pop("Content-Type", "application/json")
            if payload:
                handler.send_header("Content-Type", content_type)
            for key, value in reply.headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass
