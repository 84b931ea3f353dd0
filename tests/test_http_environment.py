"""The worker's HTTP sessions read the environment's proxy settings once, with requests' own rules; ``send``
makes a call as a Session would, without its per-call merging."""

from __future__ import annotations

import http.server
import threading

import pytest
import requests

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, UPONAI_KEY
from workers.http_environment import pin_environment, send
from workers.twilio_client import build_client
from workers.uponai import UponAIClient


def test_a_proxy_from_the_environment_still_applies(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = pin_environment(requests.Session(), "http://uponai.test")
    assert session.proxies.get("http") == "http://proxy.invalid:3128"
    assert session.trust_env is False


def test_no_proxy_for_the_origin_is_respected(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "uponai.test")
    session = pin_environment(requests.Session(), "http://uponai.test")
    assert "http" not in session.proxies


def test_the_clients_sessions_are_pinned_and_still_talk(uponai, twilio):
    twilio_client = build_client(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, api_base_url=twilio.url,
                                 timeout_seconds=5.0, connect_timeout_seconds=5.0)
    assert twilio_client.http_client.session.trust_env is False
    agent = UponAIClient(base_url=uponai.url, api_key=UPONAI_KEY, agent_id="agent_default", style="reference",
                         workspace_id=7, connect_timeout_seconds=1.0, read_timeout_seconds=5.0)
    chat = agent.create_chat(agent_id="agent_default", metadata={})
    assert agent.get_chat(chat.chat_id).chat_id == chat.chat_id  # through the pinned session, to the fake


# -- send: a request prepared without the Session's merging, through the session's pool ----------


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status the path names (``/302``) and records what came in."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection pool is seen reusing one connection
    seen: list[tuple[int, str, dict[str, str], bytes]] = []

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recorder.seen.append((self.client_address[1], self.requestline, dict(self.headers), body))
        last = self.path.rpartition("/")[2]
        status = int(last) if last.isdigit() and int(last) >= 100 else 200
        answer = b'{"ok": true}'
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_send_adds_requests_default_headers_under_the_callers_and_reuses_one_connection(recorder):
    session = pin_environment(requests.Session(), recorder)
    for n in range(3):
        response = send(session, "POST", f"{recorder}/api/{n}", headers={"Accept": "application/json"},
                        json={"n": n}, timeout=(1, 5))
        assert response.status_code == 200 and response.json() == {"ok": True}
    ports = {port for port, *_ in Recorder.seen}
    assert len(ports) == 1  # each answer read to the end and the connection back in the pool
    _, line, headers, body = Recorder.seen[0]
    assert line == "POST /api/0 HTTP/1.1" and body == b'{"n": 0}'
    assert headers["Accept"] == "application/json" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("python-requests/") and "gzip" in headers["Accept-Encoding"]


def test_send_follows_no_redirect(recorder):
    response = send(requests.Session(), "POST", f"{recorder}/api/302", data={"a": "1"}, timeout=(1, 5))
    assert response.status_code == 302
    assert [line for _, line, _, _ in Recorder.seen] == ["POST /api/302 HTTP/1.1"]


def test_send_goes_through_the_proxy_pinned_on_the_session(recorder, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", recorder)  # the recorder plays the proxy: it sees the absolute URL
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = pin_environment(requests.Session(), "http://uponai.test")
    send(session, "GET", "http://uponai.test/api/chats", params={"limit": 2}, timeout=(1, 5))
    assert [line for _, line, _, _ in Recorder.seen] == ["GET http://uponai.test/api/chats?limit=2 HTTP/1.1"]


def test_twilio_requests_keep_twilios_headers_form_and_credentials(recorder):
    client = build_client(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, api_base_url=recorder, timeout_seconds=5.0,
                          connect_timeout_seconds=5.0)
    response = client.http_client.request("POST", "https://api.twilio.com/2010-04-01/x", data={"To": "+1415"},
                                          headers={"User-Agent": "twilio-python/test", "Accept": "application/json",
                                                   "Content-Type": "application/x-www-form-urlencoded"},
                                          auth=(ACCOUNT_SID, AUTH_TOKEN))
    assert response.status_code == 200 and response.text == '{"ok": true}'
    _, line, headers, body = Recorder.seen[0]
    assert line == "POST /2010-04-01/x HTTP/1.1" and body == b"To=%2B1415"
    assert headers["User-Agent"] == "twilio-python/test" and headers["Authorization"].startswith("Basic ")
