"""The OpenAPI 3 description of the admin API, served at ``GET /admin/openapi.json`` (no token needed)."""

from __future__ import annotations

from typing import Any

from gateway.admin_validation import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_PAGINATION_KEY_CHARS,
    MAX_VARIABLES,
    SORT_ORDERS,
)

_NUMBER_TEXT = ("The person's number with + and country code; spaces, dashes, dots and brackets are dropped. "
                "A number without + is read in DEFAULT_PHONE_REGION, and refused when that is not set.")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_MEANINGS = {
    400: "Invalid input; the message names the field.",
    401: "Missing or wrong bearer token (the message says which).",
    404: "Not found.",
    405: "Method not allowed.",
    409: "The number has opted out, or the conversation stayed busy.",
    413: "The body is too large.",
    415: "The body is not JSON.",
    422: "The Idempotency-Key was used with a different body.",
    500: "An admin job failed unexpectedly (see GET /admin/failed).",
    502: "UponAI or Twilio refused the request.",
    503: "Redis, UponAI or Twilio is unavailable, or ADMIN_MAX_WAITING requests already wait (admin_busy); "
         "try again.",
    504: "No worker took the job in time; nothing was done.",
}

_COMMON = (400, 401, 404, 405, 503)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "example": "invalid_request"},
                           "message": {"type": "string", "example": "to: has no country code: write the number in "
                                                                     "international format with + and country code, "
                                                                     "e.g. +14155550123, or set DEFAULT_PHONE_REGION"}},
        }},
    },
    "OutboundRequest": {
        "type": "object",
        "required": ["to"],
        "additionalProperties": False,
        "properties": {
            "to": {"type": "string", "description": _NUMBER_TEXT, "example": "+1 (415) 555-0100"},
            "message": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS,
                        "description": "Sent as written, and given to the new chat as the dynamic variable "
                                       "`opening_message`. Leave it out to have the agent write the opening."},
            "agent_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$",
                         "description": "Default: the agent routed to the sending number, else UPONAI_AGENT_ID."},
            "from": {"type": "string", "description": "Sending number (read like to) or Messaging Service sid (MG...). "
                                                      "Default: TWILIO_FROM_NUMBER, else "
                                                      "TWILIO_MESSAGING_SERVICE_SID."},
            "dynamic_variables": {"type": "object", "maxProperties": MAX_VARIABLES,
                                  "additionalProperties": {"type": "string"},
                                  "description": "Handed to the new chat (`opening_message` is reserved)."},
            "metadata": {"type": "object", "description": "Stored on the new chat (at most 4 KB as JSON); the "
                                                          "gateway adds channel, conversation_id, direction."},
        },
    },
    "OutboundStarted": {
        "type": "object",
        "required": ["status", "job_id", "conversation_id", "chat_id", "to", "from", "message_sids"],
        "properties": {
            "status": {"type": "string", "enum": ["sent"]},
            "job_id": {"type": "string"},
            "conversation_id": {"type": "string"},
            "chat_id": {"type": "string"},
            "agent_id": _nullable("string"),
            "to": {"type": "string"},
            "from": {"type": "string"},
            "message_sids": {"type": "array", "items": {"type": "string"}},
            "opening_generated": {"type": "boolean"},
        },
    },
    "Running": {
        "type": "object",
        "required": ["status", "job_id", "job_url"],
        "properties": {"status": {"type": "string", "enum": ["running", "queued"]}, "job_id": {"type": "string"},
                       "job_url": {"type": "string"}, "conversation_id": {"type": "string"}},
    },
    "SentMessage": {
        "type": "object",
        "properties": {
            "sid": {"type": "string"}, "status": _nullable("string"), "error_code": _nullable("string"),
            "sent_at": _nullable("string", format="date-time"), "status_at": _nullable("string", format="date-time"),
            "part": _nullable("string"), "segments": _nullable("integer"), "encoding": _nullable("string"),
        },
    },
    "ChatMessage": {
        "type": "object",
        "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
    },
    "Chat": {
        "type": "object",
        "required": ["chat_id"],
        "properties": {
            "chat_id": {"type": "string"}, "agent_id": _nullable("string"), "status": _nullable("string"),
            "started_at": _nullable("string"), "ended_at": _nullable("string"), "metadata": {"type": "object"},
            "messages": {"type": "array", "items": _ref("ChatMessage")},
        },
    },
    "Conversation": {
        "type": "object",
        "required": ["conversation_id", "person", "gateway", "opted_out", "recent_messages", "chat"],
        "properties": {
            "conversation_id": {"type": "string"},
            "person": {"type": "string"},
            "gateway": {"type": "string"},
            "messaging_service_sid": _nullable("string"),
            "chat_id": _nullable("string"),
            "agent_id": _nullable("string"),
            "opted_out": {"type": "boolean"},
            "chat_started_at": _nullable("string", format="date-time"),
            "last_activity_at": _nullable("string", format="date-time"),
            "last_inbound_at": _nullable("string", format="date-time"),
            "last_outbound_at": _nullable("string", format="date-time"),
            "opted_out_at": _nullable("string", format="date-time"),
            "last_empty_turn_at": _nullable("string", format="date-time"),
            "empty_turns": {"type": "integer"},
            "waiting_messages": {"type": "integer"},
            "busy": {"type": "boolean"},
            "recent_messages": {"type": "array", "items": _ref("SentMessage")},
            "handoff": _ref("Handoff"),
            "away_log": {"type": "array", "items": _ref("AwayEntry"),
                         "description": "What the person and the operator said while the agent was away (kept "
                                        "DATA_RETENTION_DAYS, also once the agent has heard it), oldest first."},
            "turns": {"type": "array", "description": "The latest agent turns, newest first: which texts made each.",
                      "items": {"type": "object", "properties": {
                          "texts": {"type": "array", "items": {"type": "string"},
                                    "description": "MessageSids of the turn's texts, in order"},
                          "at": _nullable("string", format="date-time")}}},
            "chat": {"allOf": [_ref("Chat")], "nullable": True},
            "chat_error": {"type": "object", "properties": {"code": {"type": "string"},
                                                            "message": {"type": "string"}}},
        },
    },
    "Handoff": {
        "type": "object",
        "required": ["active", "since", "by"],
        "properties": {"active": {"type": "boolean", "description": "True while an operator has the conversation: "
                                                                     "the agent does not answer."},
                       "since": _nullable("string", format="date-time"), "by": _nullable("string")},
    },
    "AwayEntry": {
        "type": "object",
        "required": ["who", "text", "at", "heard_by_agent"],
        "properties": {"who": {"type": "string", "enum": ["person", "operator"]}, "text": {"type": "string"},
                       "at": _nullable("string", format="date-time"),
                       "ref": _nullable("string", description="The text's MessageSid, or the operator message's "
                                                               "operation id."),
                       "heard_by_agent": {"type": "boolean",
                                          "description": "A turn has carried it to the agent (the preface after the "
                                                         "resume); the entry is kept either way."}},
    },
    "HandoffState": {
        "type": "object",
        "required": ["conversation_id", "changed", "handoff", "turn_running", "away_log"],
        "properties": {
            "conversation_id": {"type": "string"},
            "changed": {"type": "boolean", "description": "False when the conversation was in that state already."},
            "handoff": _ref("Handoff"),
            "turn_running": {"type": "boolean", "description": "An agent turn was running at that moment: its reply "
                                                               "may still go out."},
            "away_log": {"type": "array", "items": _ref("AwayEntry")},
        },
    },
    "OperatorMessage": {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {"message": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS,
                                   "description": "Sent as written from the conversation's gateway number.",
                                   "example": "Hi, this is Anna from the front desk."}},
    },
    "OperatorMessageSent": {
        "type": "object",
        "required": ["status", "job_id", "conversation_id", "to", "from", "message_sid", "handoff"],
        "properties": {
            "status": {"type": "string", "enum": ["sent"]}, "job_id": {"type": "string"},
            "conversation_id": {"type": "string"}, "to": {"type": "string"}, "from": {"type": "string"},
            "message_sid": {"type": "string", "description": "Twilio's sid of the SMS."},
            "handoff": {"type": "boolean", "description": "Whether the conversation was handed off."},
        },
    },
    "ConversationEnded": {
        "type": "object",
        "required": ["status", "conversation_id", "ended_chat_id"],
        "properties": {"status": {"type": "string", "enum": ["ended"]}, "conversation_id": {"type": "string"},
                       "ended_chat_id": _nullable("string")},
    },
    "ConversationErased": {
        "type": "object",
        "required": ["status", "conversation_id", "ended_chat_id", "keys_deleted", "jobs_deleted"],
        "properties": {"status": {"type": "string", "enum": ["erased"]}, "conversation_id": {"type": "string"},
                       "ended_chat_id": _nullable("string"), "keys_deleted": {"type": "integer"},
                       "jobs_deleted": {"type": "integer"}},
    },
    "ChatPage": {
        "type": "object",
        "required": ["chats", "pagination_key", "has_more"],
        "properties": {"chats": {"type": "array", "items": _ref("Chat")},
                       "pagination_key": _nullable("string"), "has_more": {"type": "boolean"}},
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {"job_id": {"type": "string"}, "status": {"type": "string"},
                       "description": _nullable("string"), "ok": {"type": "object"},
                       "error": {"type": "object"}},
    },
    "FailedJob": {
        "type": "object",
        "required": ["job_id", "queue", "reason"],
        "properties": {
            "job_id": {"type": "string"}, "queue": {"type": "string"}, "function": _nullable("string"),
            "description": _nullable("string"), "conversation_id": _nullable("string"), "reason": {"type": "string"},
            "enqueued_at": _nullable("string", format="date-time"),
            "failed_at": _nullable("string", format="date-time"),
            "messages": _nullable("string", enum=["given_up", "waiting", "answered", None],
                                  description="What became of the messages of a drain job: given up (the failure "
                                              "notice was sent; a requeue answers them), still waiting for a "
                                              "worker, or answered after all. Null for other jobs."),
            "needs_operator": {"type": "boolean",
                               "description": "False when nothing is left to do (messages waiting or answered)."},
        },
    },
    "FailedJobs": {
        "type": "object",
        "required": ["jobs", "total"],
        "properties": {"jobs": {"type": "array", "items": _ref("FailedJob")}, "total": {"type": "integer"}},
    },
    "Requeued": {
        "type": "object",
        "required": ["status", "job_id", "queue"],
        "properties": {"status": {"type": "string", "enum": ["queued"]}, "job_id": {"type": "string"},
                       "queue": {"type": "string"}, "queue_depth": {"type": "integer"}},
    },
}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {**ok, **{str(status): {"$ref": f"#/components/responses/E{status}"}
                     for status in sorted({*_COMMON, *errors})}}


_NUMBER = {"name": "number", "in": "path", "required": True, "description": _NUMBER_TEXT,
           "schema": {"type": "string", "example": "+14155550100"}}
_FROM = {"name": "from", "in": "query", "required": False,
         "description": "The gateway number or Messaging Service sid of the conversation (default: the "
                        "configured sender). Write + as %2B.", "schema": {"type": "string"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}

_PATHS: dict[str, Any] = {
    "/admin/sms": {"post": {
        "summary": "Start an outbound conversation",
        "description": "Ends the number's ongoing chat, creates a new one and sends `message` (or an opening "
                       "line written by the agent). Waits up to ADMIN_WAIT_SECONDS for the worker.",
        "operationId": "startOutbound",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "description": "A retried request with the same key starts one conversation, not two.",
                        "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                                   "pattern": "^[\\x21-\\x7e]+$"}}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("OutboundRequest"),
            "example": {"to": "+14155550100", "message": "Your order has shipped."}}}},
        "responses": _responses({"202": {"description": "Started (`status: sent`), still running at the "
                                                        "deadline (`status: running`), or queued without waiting "
                                                        "(`status: queued`); poll `job_url`.",
                                         "content": {"application/json": {"schema": {"oneOf": [
                                             _ref("OutboundStarted"), _ref("Running")]}}}}},
                                409, 413, 415, 422, 500, 502, 504),
    }},
    "/admin/conversations/{number}": {"get": {
        "summary": "Show a conversation: local state, recent deliveries and the UponAI chat",
        "operationId": "showConversation",
        "parameters": [_NUMBER, _FROM],
        "responses": _responses({"200": _json(_ref("Conversation"), "The conversation. `chat_error` tells why "
                                                                    "the chat could not be read.")}),
    }, "delete": {
        "summary": "Erase a person: end the chat at UponAI, delete every record holding the number or words",
        "description": "Takes the conversation's lock (a running turn finishes first). An opt-out (STOP) is kept "
                       "under the conversation id, without the number. 404 when nothing is stored (a repeat).",
        "operationId": "eraseConversation",
        "parameters": [_NUMBER, _FROM],
        "responses": _responses({"200": _json(_ref("ConversationErased"), "Erased."),
                                 "202": _json(_ref("Running"), "Still running at the deadline, or queued "
                                                               "without waiting.")},
                                409, 500, 502, 504),
    }},
    "/admin/conversations/{number}/end": {"post": {
        "summary": "End the conversation's chat now",
        "operationId": "endConversation",
        "parameters": [_NUMBER, _FROM],
        "responses": _responses({"200": _json(_ref("ConversationEnded"), "Ended (ended_chat_id is null when "
                                                                         "there was no chat)."),
                                 "202": _json(_ref("Running"), "Still running at the deadline, or queued "
                                                               "without waiting.")},
                                409, 500, 502, 504),
    }},
    "/admin/conversations/{number}/handoff": {"post": {
        "summary": "Take the conversation over: the agent stops answering it",
        "description": "The person's texts are kept in the away log (not forwarded); keywords still work. "
                       "Idempotent: a conversation already handed off answers `changed: false`. A turn already "
                       "running (`turn_running`) may still send its reply.",
        "operationId": "handoffConversation",
        "parameters": [_NUMBER, _FROM],
        "responses": _responses({"200": _json(_ref("HandoffState"), "Handed off.")}),
    }},
    "/admin/conversations/{number}/resume": {"post": {
        "summary": "Give the conversation back to the agent",
        "description": "What was said meanwhile (the away log) reaches the agent with its next turn. Idempotent.",
        "operationId": "resumeConversation",
        "parameters": [_NUMBER, _FROM],
        "responses": _responses({"200": _json(_ref("HandoffState"), "The agent answers again.")}),
    }},
    "/admin/conversations/{number}/messages": {"post": {
        "summary": "Send an operator's SMS into the ongoing conversation",
        "description": "From the conversation's gateway number, handed off or not; the chat goes on (unlike "
                       "POST /admin/sms). Sent between the agent's replies (it takes the conversation's lock) "
                       "and put in the away log, so the agent hears of it on its next turn. 409 `opted_out`: the "
                       "person sent STOP, nothing was sent.",
        "operationId": "sendOperatorMessage",
        "parameters": [_NUMBER, _FROM,
                       {"name": "Idempotency-Key", "in": "header", "required": False,
                        "description": "Retried requests with the same key send one SMS.",
                        "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                                   "pattern": "^[\\x21-\\x7e]+$"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OperatorMessage")}}},
        "responses": _responses({"202": {"description": "Sent (`status: sent`), still running at the deadline "
                                                        "(`status: running`), or queued without waiting "
                                                        "(`status: queued`); poll `job_url`.",
                                         "content": {"application/json": {"schema": {"oneOf": [
                                             _ref("OperatorMessageSent"), _ref("Running")]}}}}},
                                409, 413, 415, 422, 500, 502, 504),
    }},
    "/admin/chats": {"get": {
        "summary": "List UponAI chats (passed through to UponAI's list chats)",
        "operationId": "listChats",
        "parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "sort_order", "in": "query", "schema": {"type": "string", "enum": list(SORT_ORDERS)}},
            {"name": "pagination_key", "in": "query",
             "schema": {"type": "string", "maxLength": MAX_PAGINATION_KEY_CHARS}},
        ],
        "responses": _responses({"200": _json(_ref("ChatPage"), "One page; pass pagination_key back for the "
                                                                "next.")}, 500, 502, 504),
    }},
    "/admin/jobs/{job_id}": {"get": {
        "summary": "What became of an admin job (after a 202 `running`)",
        "operationId": "showJob",
        "parameters": [_JOB_ID],
        "responses": _responses({"200": _json(_ref("Job"), "The job's status and, once done, `ok` or `error`.")}),
    }},
    "/admin/failed": {"get": {
        "summary": "Failed jobs of the gateway's queues, newest first",
        "operationId": "listFailed",
        "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                   "maximum": 500}}],
        "responses": _responses({"200": _json(_ref("FailedJobs"), "Failed jobs with reason and conversation.")}),
    }},
    "/admin/failed/{job_id}/requeue": {"post": {
        "summary": "Run a failed job again (its messages are still answered at most once)",
        "operationId": "requeueFailed",
        "parameters": [_JOB_ID],
        "responses": _responses({"200": _json(_ref("Requeued"), "Back on its queue.")}),
    }},
    "/admin/openapi.json": {"get": {
        "summary": "This description", "operationId": "openapi", "security": [],
        "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {
            "schema": {"type": "object"}}}}},
    }},
}


def admin_openapi() -> dict[str, Any]:
    """The OpenAPI 3.0 document of the admin API."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "SMS gateway admin API", "version": "1",
                 "description": "Operator API of the SMS gateway. Every failure answers "
                                "{\"error\": {\"code\", \"message\"}}."},
        "security": [{"bearer": []}],
        "paths": _PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "ADMIN_API_TOKEN"}},
            "schemas": _SCHEMAS,
            "responses": {f"E{status}": _json(_ref("Error"), meaning) for status, meaning in _ERROR_MEANINGS.items()},
        },
    }
