"""The sandbox's phone page: text the agent from a number of your choice, in a browser.

A small web app of its own, served by ``sms-gateway run`` when the Twilio simulator stands in for
Twilio. What the page sends goes to the simulator, which signs it and calls the gateway's real
webhook, so it takes the production path (queue, worker, UponAI, Twilio REST). Replies are read back
from the simulator with their delivery status; the conversation's state (chat id, opt-out, idle
timer, delivery status as the gateway recorded it) comes from Redis. An outbound conversation is
started through the admin API (``POST /admin/sms``) with the sandbox's admin token, and so are the
operator's actions: taking the conversation over, answering as the business, giving it back
(``POST /admin/conversations/<number>/handoff|messages|resume``). The operator events the sandbox's own receiver
verified (``sandbox.events_receiver``) show in a panel, those of the number shown, newest first.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from urllib.parse import quote

import requests
from flask import Flask, jsonify, request, send_from_directory
from werkzeug.serving import make_server

from config import Settings
from core.model import conversation_id
from core.phone_numbers import NumberError, read_number
from core.redis import connect_redis
from core.state import ConversationStore
from sandbox.events_receiver import EventInbox
from sandbox.twilio_sim import TwilioSimulator

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_PERSON = "+14155550123"


def create_phone_app(*, twilio: TwilioSimulator, gateway_url: str, gateway_number: str, admin_token: str | None,
                     settings: Settings, events: EventInbox | None = None) -> Flask:
    """The phone page and its JSON API; numbers are read as the admin API reads them (DEFAULT_PHONE_REGION).

    ``events``: the sandbox's events receiver, whose verified events the page shows (None: events go elsewhere,
    to the person's own EVENTS_WEBHOOK_URL, or nowhere)."""
    app = Flask(__name__, static_folder=None)
    store = ConversationStore.from_settings(connect_redis(settings.redis_url, for_web=True), settings)
    idle_timeout_seconds = settings.chat_idle_timeout_seconds
    default_phone_region = settings.default_phone_region
    http = requests.Session()
    outbound_probe: dict[str, object] = {}
    events_status = {"shown": events is not None, "reason": "" if events is not None else
                     "events go to your EVENTS_WEBHOOK_URL" if settings.events_webhook_url else
                     "EVENTS_WEBHOOK_URL is not set"}

    def outbound_status() -> dict[str, object]:
        """Whether the admin API's POST /admin/sms is there (asked once, by sending it an empty body)."""
        if not outbound_probe:
            if not admin_token:
                outbound_probe.update(available=False, reason="ADMIN_API_TOKEN is not set")
                return outbound_probe
            try:
                answer = http.post(f"{gateway_url}/admin/sms", json={}, timeout=10,
                                   headers={"Authorization": f"Bearer {admin_token}"})
            except requests.RequestException:
                return {"available": False, "reason": "the gateway is not answering yet"}
            if answer.status_code == 404:
                outbound_probe.update(available=False, reason="this gateway has no admin API (POST /admin/sms)")
            elif answer.status_code == 401:
                outbound_probe.update(available=False, reason="the admin API refused the sandbox's token")
            else:
                outbound_probe.update(available=True, reason="")
        return outbound_probe

    @app.errorhandler(NumberError)
    def bad_number(exc: NumberError):
        return jsonify({"error": f"Your number {exc}."}), 400

    def person_of(value: object) -> str:
        return read_number(value, default_phone_region)

    @app.get("/")
    def page():
        return send_from_directory(STATIC, "phone.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(STATIC, name)

    @app.get("/favicon.ico")
    def favicon():  # asked for by browsers that do not read the page's <link rel="icon">
        return send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml")

    @app.get("/api/config")
    def config():
        return jsonify({"gateway_number": gateway_number, "default_person": DEFAULT_PERSON,
                        "idle_timeout_seconds": idle_timeout_seconds, "outbound": outbound_status(),
                        "events": events_status})

    @app.post("/api/send")
    def send():
        data = request.get_json(silent=True) or {}
        person, body = person_of(data.get("from", "")), str(data.get("body", ""))
        if not body.strip() and not data.get("mms"):
            return jsonify({"error": "Type a message (or attach a picture)."}), 400
        media = (f"{twilio.url}/sandbox/media/sample.png",) if data.get("mms") else ()
        record = twilio.deliver_inbound(person, gateway_number, body, media)
        return jsonify({"sid": record.sid, "from": person, "webhook_status": record.webhook_status,
                        "error": record.error}), \
            200 if not record.error else 502

    @app.get("/api/thread")
    def thread():
        return jsonify({"messages": twilio.thread(person_of(request.args.get("number", "")))})

    @app.get("/api/conversation")
    def conversation():
        cid = conversation_id(gateway_number, person_of(request.args.get("number", "")))
        state = store.conversation(cid)
        last = float(state.get("last_activity_at") or state.get("last_inbound_at") or 0)
        idle_in = max(0, int(last + idle_timeout_seconds - time.time())) if state.get("chat_id") and last else None
        return jsonify({
            "conversation_id": cid, "chat_id": state.get("chat_id"), "opted_out": state.get("opted_out") == "1",
            "idle_ends_chat_in_seconds": idle_in, "waiting_messages": store.inbox_length(cid),
            "recent": [{"sid": row["sid"], "status": row.get("status"), "part": row.get("part")}
                       for row in store.recent_sent(cid)],
            "handoff": state.get("handoff") == "1",
            "away_log": [{"who": entry.get("who"), "text": entry.get("text"), "at": float(entry.get("at") or 0),
                          "heard_by_agent": bool(entry.get("heard_by_agent"))} for entry in store.away_log(cid)],
        })

    @app.get("/api/events")
    def events_of_number():
        number = person_of(request.args.get("number", ""))
        return jsonify({**events_status, "events": events.of_number(number) if events is not None else []})

    def admin_call(path: str, payload: dict | None = None, headers: dict[str, str] | None = None):
        """POST to the gateway's admin API with the sandbox's token; the page gets its answer (or why not)."""
        status = outbound_status()
        if not status.get("available"):
            return jsonify({"error": f"Operator actions are not available: {status.get('reason')}."}), 409
        try:
            answer = http.post(f"{gateway_url}{path}", json=payload, timeout=60,
                               headers={"Authorization": f"Bearer {admin_token}", **(headers or {})})
        except requests.RequestException as exc:
            return jsonify({"error": f"The gateway did not answer: {type(exc).__name__}."}), 502
        return relayed(answer)

    @app.post("/api/handoff")
    def handoff():
        data = request.get_json(silent=True) or {}
        number = quote(person_of(data.get("number", "")), safe="")
        action = "handoff" if data.get("on") else "resume"
        return admin_call(f"/admin/conversations/{number}/{action}")

    @app.post("/api/operator")
    def operator_message():
        data = request.get_json(silent=True) or {}
        number = quote(person_of(data.get("number", "")), safe="")
        message = str(data.get("message", ""))
        if not message.strip():
            return jsonify({"error": "Type the business's answer."}), 400
        key = str(data.get("key") or "")  # one per click on the page: a repeated submit sends one SMS
        return admin_call(f"/admin/conversations/{number}/messages", {"message": message},
                          {"Idempotency-Key": key} if key else None)

    @app.post("/api/outbound")
    def outbound():
        data = request.get_json(silent=True) or {}
        payload = {"to": person_of(data.get("to", ""))}
        status = outbound_status()
        if not status.get("available"):
            return jsonify({"error": f"Outbound is not available: {status.get('reason')}."}), 409
        if str(data.get("message", "")).strip():
            payload["message"] = str(data["message"])
        try:
            answer = http.post(f"{gateway_url}/admin/sms", json=payload, timeout=60,
                               headers={"Authorization": f"Bearer {admin_token}"})
        except requests.RequestException as exc:
            return jsonify({"error": f"The gateway did not answer: {type(exc).__name__}."}), 502
        return relayed(answer)

    return app


def relayed(answer: requests.Response):
    """The page's answer for the admin API's: a refusal (4xx) keeps its status and message, a failure is 502."""
    try:
        body = answer.json()
    except ValueError:
        body = {"error": {"message": answer.text[:200]}}
    if answer.ok:
        return jsonify({"status": answer.status_code, "answer": body}), 200
    if 400 <= answer.status_code < 500:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        return jsonify({"status": answer.status_code, "answer": body,
                        "error": str(message or f"The gateway refused it ({answer.status_code}).")}), answer.status_code
    return jsonify({"status": answer.status_code, "answer": body}), 502


class PhoneServer:
    """Serves the phone page on 127.0.0.1 in a thread of the launcher."""

    def __init__(self, app: Flask, port: int):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the page polls; its request lines hold numbers
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="phone-page", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/"

    def start(self) -> PhoneServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
