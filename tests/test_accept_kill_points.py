"""A web process killed while it accepts a text loses nothing and doubles nothing (issue 20).

The text and its RQ drain job are written in one Redis transaction (MULTI ... EXEC). A web process killed
at any point has either sent the EXEC or not: a TCP proxy between the web and the tests' Redis cuts the
web's connection at those two points (its EXEC never reaches Redis; Redis runs it but the answer never
reaches the web), for the request's first try and the Redis client's reconnect alike, so the webhook
answers 503 as a killed process answers nothing. Twilio then sends the text again (its retry, or its
fallback URL): it is answered once, in order with the next text.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from core.model import conversation_id
from gateway import create_app
from tests.conftest import GATEWAY_NUMBER, inbound_form, post_signed, wait_for, wait_idle, waiting_drains

PERSON = "+14155550177"
CID = conversation_id(GATEWAY_NUMBER, PERSON)
EXEC = b"*1\r\n$4\r\nEXEC\r\n"


class CuttingProxy:
    """Relays 127.0.0.1:port to Redis; cuts the next ``cuts`` client connections that send the accept's transaction
    (a script and EXEC, in one write): "before" (the EXEC is not relayed) or "after" (Redis runs it; its answer is
    not relayed)."""

    def __init__(self, target_port: int, point: str, cuts: int):
        self.target_port, self.point, self.cuts = target_port, point, cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._client_to_redis, args=(client, upstream), daemon=True).start()

    def _take_cut(self) -> bool:
        with self.lock:
            if self.cuts <= 0:
                return False
            self.cuts -= 1
            return True

    def _client_to_redis(self, client: socket.socket, upstream: socket.socket) -> None:
        relay = threading.Thread(target=self._redis_to_client, args=(upstream, client), daemon=True)
        relay.start()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if EXEC in data and b"EVALSHA" in data and self._take_cut():  # the accept's transaction
                    if self.point == "after":
                        self._cut_after(client, upstream, data)
                    self._close(client, upstream)
                    return
                upstream.sendall(data)
        self._close(client, upstream)

    def _cut_after(self, client: socket.socket, upstream: socket.socket, data: bytes) -> None:
        client.shutdown(socket.SHUT_RDWR)  # the web sees its connection end: no answer reaches it
        upstream.sendall(data)  # ...while Redis gets the whole transaction and runs it
        with contextlib.suppress(OSError):
            upstream.settimeout(5)
            received = b""
            while True:  # until the EXEC's answer (an array, after the +QUEUED of each command) is in
                chunk = upstream.recv(65536)
                received += chunk
                if not chunk or b"*" in received.rpartition(b"+QUEUED\r\n")[2]:
                    return

    def _redis_to_client(self, upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.listener.close()
        self._close(*self.sockets)


@pytest.fixture
def proxy(redis_server):
    proxies: list[CuttingProxy] = []

    def start(point: str, cuts: int = 2) -> CuttingProxy:
        proxies.append(CuttingProxy(redis_server.port, point, cuts))
        return proxies[-1]

    yield start
    for one in proxies:
        one.close()


@pytest.mark.parametrize("point", ["before", "after"])
def test_a_web_process_cut_off_around_its_transaction_loses_and_doubles_nothing(point, proxy, env, redis, queue,
                                                                                 start_workers, uponai, twilio):
    cut = proxy(point, cuts=0)
    web = create_app({**env, "REDIS_URL": f"redis://127.0.0.1:{cut.port}/0"}).test_client()
    # A first text from someone else loads the accept script (a transaction without it is taken back and sent
    # again, which would use up the cuts).
    assert post_signed(web, "/twilio/sms", inbound_form("warm-up", from_="+14155550176")).status_code == 200
    cut.cuts = 2
    first = inbound_form("first", from_=PERSON)

    assert post_signed(web, "/twilio/sms", first).status_code == 503  # the request and its reconnect, both cut
    inbox = redis.lrange(f"smsgw:inbox:{CID}", 0, -1)
    if point == "before":  # nothing of it was written: no text, no job, no dedupe marker
        assert inbox == [] and CID not in waiting_drains(queue)
        assert not redis.exists(f"smsgw:seen:{first['MessageSid']}")
    else:  # the first try's transaction ran whole: the text with its job (the reconnect sent it again: same job)
        assert len(inbox) == 1 and CID in waiting_drains(queue)

    # Twilio sends it again (no 200 came), then the person texts on; the proxy relays from now on.
    assert post_signed(web, "/twilio/sms", first).status_code == 200
    assert post_signed(web, "/twilio/sms", inbound_form("second", from_=PERSON)).status_code == 200
    assert len(redis.lrange(f"smsgw:inbox:{CID}", 0, -1)) == 2

    start_workers(1)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2 or (len(twilio.sent_to(PERSON)) == 1
                                                          and "second" in twilio.sent_to(PERSON)[0]),
             message="the texts to be answered")
    wait_idle(redis)
    lines = [line for _, turn in uponai.completion_log for line in turn.split("\n") if line != "warm-up"]
    assert lines == ["first", "second"], (uponai.completion_log, twilio.sent_to(PERSON))  # each once, in order
    assert len(twilio.sent_to(PERSON)) == len(uponai.completion_log) - 1
