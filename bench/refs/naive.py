"""Reference (b): the naive design most bots use, calling UponAI inside the webhook and answering TwiML.

It checks the signature like the gateway, keeps each conversation's chat id in process memory,
calls the (fake) UponAI completion inline, and answers with the reply as a TwiML ``<Message>``.
Configured from the same environment variables as the gateway.
"""

import os
import threading
from xml.sax.saxutils import escape

import requests
from flask import Flask, Response, request
from twilio.request_validator import RequestValidator

app = Flask(__name__)
_validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
_public_url = os.environ["PUBLIC_BASE_URL"].rstrip("/") + "/twilio/sms"
_base = os.environ["UPONAI_BASE_URL"].rstrip("/")
_workspace = int(os.environ.get("UPONAI_WORKSPACE_ID", "1"))
_agent = os.environ["UPONAI_AGENT_ID"]
_headers = {"Authorization": f"Bearer {os.environ['UPONAI_API_KEY']}"}
_chats: dict[tuple[str, str], str] = {}
_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers.update(_headers)
    return _local.session


@app.post("/twilio/sms")
def inbound_sms():
    if not _validator.validate(_public_url, request.form, request.headers.get("X-Twilio-Signature", "")):
        return Response("Invalid signature.\n", status=403, content_type="text/plain")
    key = (request.form["To"], request.form["From"])
    session = _session()
    chat_id = _chats.get(key)
    if chat_id is None:
        created = session.post(f"{_base}/api/chats", json={"workspaceId": _workspace, "agent_id": _agent},
                               timeout=(5, 300))
        created.raise_for_status()
        chat_id = _chats.setdefault(key, created.json()["chatId"])
    answer = session.post(f"{_base}/api/chats/{chat_id}/completions",
                          json={"workspaceId": _workspace, "content": request.form.get("Body", "")}, timeout=(5, 300))
    answer.raise_for_status()
    replies = "".join(f"<Message>{escape(m['content'])}</Message>" for m in answer.json()["messages"])
    return Response(f'<?xml version="1.0" encoding="UTF-8"?><Response>{replies}</Response>', status=200,
                    content_type="text/xml; charset=utf-8")
