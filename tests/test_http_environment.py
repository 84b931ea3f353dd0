"""The worker's HTTP sessions read the environment's proxy settings once, with requests' own rules."""

from __future__ import annotations

import requests

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, UPONAI_KEY
from workers.http_environment import pin_environment
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
    twilio_client = build_client(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, api_base_url=twilio.url)
    assert twilio_client.http_client.session.trust_env is False
    agent = UponAIClient(base_url=uponai.url, api_key=UPONAI_KEY, agent_id="agent_default", style="reference",
                         workspace_id=7)
    chat = agent.create_chat(agent_id="agent_default", metadata={})
    assert agent.get_chat(chat.chat_id).chat_id == chat.chat_id  # through the pinned session, to the fake
