"""An operator-events receiver written at the socket level, doing what an HTTP framework would not: never answer,
drip its answer a byte at a time, or send a body of hundreds of megabytes. For the tests and the benchmark of
``workers.events`` (issue 22, item 8); it listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Connection:
    """One connection to a ``RawReceiver``, as its server saw it."""

    opened_at: float  # time.monotonic()
    closed_at: float | None = None  # when the gateway closed it (the receiver never closes first)
    sent_bytes: int = 0  # of the answer


class RawReceiver:
    """An events receiver written at the socket level, doing what an HTTP framework would not: ``hang`` (read the
    request, never answer), ``drip`` (answer one byte every ``DRIP_SECONDS``, forever) or ``huge`` (a 200 whose body
    is ``HUGE_BODY_BYTES`` long). It records each connection and sees when the gateway closes it."""

    DRIP_SECONDS = 0.25
    HUGE_BODY_BYTES = 256 * 2**20
    GIVE_UP_SECONDS = 120.0  # a connection the gateway never closes ends here (the test has failed by then)

    def __init__(self, behaviour: str, *, huge_body_bytes: int | None = None):
        self.behaviour = behaviour
        self.huge_body_bytes = huge_body_bytes or self.HUGE_BODY_BYTES
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.connections: list[Connection] = []
        self.sockets: list[socket.socket] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.accept, name=f"raw-receiver-{behaviour}", daemon=True)]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/events"

    def closed(self) -> list[Connection]:
        return [c for c in self.connections if c.closed_at is not None]

    def stop(self) -> None:
        """Stop accepting and close every connection (a delivery still waiting on one ends at once)."""
        self.stopping.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(10)
        self.listener.close()

    def accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            connection = Connection(opened_at=time.monotonic())
            self.connections.append(connection)
            self.sockets.append(sock)
            thread = threading.Thread(target=self.serve, args=(sock, connection), daemon=True)
            self.threads.append(thread)
            thread.start()

    def serve(self, sock: socket.socket, connection: Connection) -> None:
        with sock:
            try:
                self.read_request(sock)
                if self.behaviour == "hang":
                    self.wait_for_close(sock, self.GIVE_UP_SECONDS)
                elif self.behaviour == "drip":
                    self.drip(sock, connection)
                else:
                    self.send_huge(sock, connection)
                connection.closed_at = time.monotonic() if not self.stopping.is_set() else None
            except OSError:  # the gateway closed (reset) the connection
                connection.closed_at = time.monotonic()

    @staticmethod
    def read_request(sock: socket.socket) -> bytes:
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the request was read")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        while len(body) < length:
            body += sock.recv(65536)
        return data

    def wait_for_close(self, sock: socket.socket, seconds: float) -> bool:
        """Whether the gateway closed the connection within ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], min(0.05, max(0.0, deadline - time.monotonic())))
            if readable and not sock.recv(1024):
                return True
        return False

    def drip(self, sock: socket.socket, connection: Connection) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Drip: " + b"a" * 10_000
        deadline = time.monotonic() + self.GIVE_UP_SECONDS
        for byte in answer:
            if time.monotonic() > deadline:
                return
            sock.sendall(bytes([byte]))
            connection.sent_bytes += 1
            if self.wait_for_close(sock, self.DRIP_SECONDS):
                return

    def send_huge(self, sock: socket.socket, connection: Connection) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {self.huge_body_bytes}\r\n\r\n"
        sock.sendall(head.encode())
        chunk = b"x" * 65536
        while connection.sent_bytes < self.huge_body_bytes and not self.stopping.is_set():
            sock.sendall(chunk)
            connection.sent_bytes += len(chunk)
        self.wait_for_close(sock, 10)
