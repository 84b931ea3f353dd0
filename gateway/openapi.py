"""The OpenAPI 3.1 description of the admin API, served at ``GET /admin/openapi.json`` (no token needed).

Generated, not written: each route is an ``Operation`` naming the pydantic models of its path, query,
headers, body and answers, and ``openapi_document`` walks a list of them. The request models are the ones
the views validate with (gateway.admin_validation), so a constraint in the document is the check the
route runs. More routes (another module's, with their own models) join by passing their Operations:
``admin_openapi(extra=MORE_OPERATIONS)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from gateway import admin_validation as check

REF_TEMPLATE = "#/components/schemas/{model}"


class DocumentSchema(GenerateJsonSchema):
    """pydantic's JSON Schema without what means nothing to a reader: titles made from field names, null
    defaults (absent and null are the same to the API)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def default_schema(self, schema):
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) is None:
            del json_schema["default"]
        return json_schema


# -- answers --------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["to: has no country code: write the number in international format with + and "
                                   "country code, e.g. +14155550123, or set DEFAULT_PHONE_REGION"])


class Error(BaseModel):
    """Every failure: a stable code and a message naming each offending field."""

    error: ErrorDetail


class OutboundStarted(BaseModel):
    status: Literal["sent"]
    job_id: str
    conversation_id: str
    chat_id: str
    agent_id: str | None = None
    to: str
    from_: str = Field(alias="from")
    message_sids: list[str]
    opening_generated: bool | None = None


class Running(BaseModel):
    status: Literal["running", "queued"]
    job_id: str
    job_url: str
    conversation_id: str | None = None


class SentMessage(BaseModel):
    sid: str | None = None
    status: str | None = None
    error_code: str | None = None
    sent_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    status_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    part: str | None = None
    segments: int | None = None
    encoding: str | None = None


class ChatMessage(BaseModel):
    role: str | None = None
    content: str | None = None


class Chat(BaseModel):
    chat_id: str
    agent_id: str | None = None
    status: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    metadata: dict[str, Any] | None = None
    messages: list[ChatMessage] | None = None


class Handoff(BaseModel):
    active: bool = Field(description="True while an operator has the conversation: the agent does not answer.")
    since: str | None = Field(json_schema_extra={"format": "date-time"})
    by: str | None


class AwayEntry(BaseModel):
    who: Literal["person", "operator"]
    text: str
    at: str | None = Field(json_schema_extra={"format": "date-time"})
    ref: str | None = Field(None, description="The text's MessageSid, or the operator message's operation id.")
    heard_by_agent: bool = Field(description="A turn has carried it to the agent (the preface after the resume); "
                                             "the entry is kept either way.")


class Turn(BaseModel):
    texts: list[str] | None = Field(None, description="MessageSids of the turn's texts, in order")
    at: str | None = Field(None, json_schema_extra={"format": "date-time"})


class ChatError(BaseModel):
    code: str | None = None
    message: str | None = None


_TIME = {"format": "date-time"}


class Conversation(BaseModel):
    conversation_id: str
    person: str
    gateway: str
    messaging_service_sid: str | None = None
    chat_id: str | None = None
    agent_id: str | None = None
    opted_out: bool
    chat_started_at: str | None = Field(None, json_schema_extra=_TIME)
    last_activity_at: str | None = Field(None, json_schema_extra=_TIME)
    last_inbound_at: str | None = Field(None, json_schema_extra=_TIME)
    last_outbound_at: str | None = Field(None, json_schema_extra=_TIME)
    opted_out_at: str | None = Field(None, json_schema_extra=_TIME)
    last_empty_turn_at: str | None = Field(None, json_schema_extra=_TIME)
    empty_turns: int | None = None
    waiting_messages: int | None = None
    busy: bool | None = None
    recent_messages: list[SentMessage]
    handoff: Handoff | None = None
    away_log: list[AwayEntry] | None = Field(None, description=(
        "What the person and the operator said while the agent was away (kept DATA_RETENTION_DAYS, also once the "
        "agent has heard it), oldest first."))
    turns: list[Turn] | None = Field(None, description="The latest agent turns, newest first: which texts made each.")
    chat: Chat | None
    chat_error: ChatError | None = Field(None, description="Why the chat could not be read.")


class HandoffState(BaseModel):
    conversation_id: str
    changed: bool = Field(description="False when the conversation was in that state already.")
    handoff: Handoff
    turn_running: bool = Field(description="An agent turn was running at that moment: its reply may still go out.")
    away_log: list[AwayEntry]


class OperatorMessageSent(BaseModel):
    status: Literal["sent"]
    job_id: str
    conversation_id: str
    to: str
    from_: str = Field(alias="from")
    message_sid: str = Field(description="Twilio's sid of the SMS.")
    handoff: bool = Field(description="Whether the conversation was handed off.")


class ConversationEnded(BaseModel):
    status: Literal["ended"]
    conversation_id: str
    ended_chat_id: str | None


class ConversationErased(BaseModel):
    status: Literal["erased"]
    conversation_id: str
    conversation_ids: list[str] = Field(description="Every conversation erased (a bare number: on every channel).")
    ended_chat_id: str | None
    ended_chat_ids: list[str]
    keys_deleted: int
    jobs_deleted: int


class ChatPage(BaseModel):
    chats: list[Chat]
    pagination_key: str | None
    has_more: bool


class Job(BaseModel):
    job_id: str
    status: str
    description: str | None = None
    ok: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class FailedJob(BaseModel):
    job_id: str
    queue: str
    function: str | None = None
    description: str | None = None
    conversation_id: str | None = None
    reason: str
    enqueued_at: str | None = Field(None, json_schema_extra=_TIME)
    failed_at: str | None = Field(None, json_schema_extra=_TIME)
    messages: Literal["given_up", "waiting", "answered"] | None = Field(None, description=(
        "What became of the messages of a drain job: given up (the failure notice was sent; a requeue answers "
        "them), still waiting for a worker, or answered after all. Null for other jobs."))
    needs_operator: bool | None = Field(None, description="False when nothing is left to do (messages waiting or "
                                                          "answered).")


class FailedJobs(BaseModel):
    jobs: list[FailedJob]
    total: int


class Requeued(BaseModel):
    status: Literal["queued"]
    job_id: str
    queue: str
    queue_depth: int | None = None


# -- routes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A success answer: its description and body (one of ``models``; none: any JSON object)."""

    description: str
    models: tuple[type[BaseModel], ...] = ()


@dataclass(frozen=True)
class Operation:
    """One method on one path, with the models of what it takes and answers."""

    method: str
    path: str  # OpenAPI's form: /admin/conversations/{number}
    operation_id: str
    summary: str
    answers: Mapping[int, Answer]
    description: str | None = None
    path_params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_example: Mapping[str, Any] | None = None
    errors: tuple[int, ...] = ()  # beyond COMMON_ERRORS
    public: bool = False  # served without the token
    extra: Mapping[str, Any] = field(default_factory=dict)


ERROR_MEANINGS = {
    400: "Invalid input; the message names each field that is wrong.",
    401: "Missing or wrong bearer token (the message says which).",
    404: "Not found.",
    405: "Method not allowed.",
    409: "The number has opted out, the conversation stayed busy, or the campaign is finished.",
    413: "The body is too large.",
    415: "The body is not JSON (or, for a campaign, CSV).",
    422: "The Idempotency-Key was used with a different body.",
    500: "An admin job failed unexpectedly (see GET /admin/failed).",
    502: "UponAI or Twilio refused the request.",
    503: "Redis, UponAI or Twilio is unavailable, or ADMIN_MAX_WAITING requests already wait (admin_busy); "
         "try again.",
    504: "No worker took the job in time; nothing was done.",
}
COMMON_ERRORS = (400, 401, 404, 405, 503)
STARTS = (409, 413, 415, 422, 500, 502, 504)  # what a job that starts something can answer
WAITS = (409, 500, 502, 504)
_STILL_RUNNING = Answer("Still running at the deadline, or queued without waiting.", (Running,))
_CONVERSATION = {"path_params": check.ConversationPath, "query": check.ConversationQuery}

ADMIN_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/admin/sms", "startOutbound", "Start an outbound conversation",
        description="Ends the number's ongoing chat, creates a new one and sends `message` (or an opening line "
                    "written by the agent). Waits up to ADMIN_WAIT_SECONDS for the worker.",
        headers=check.OutboundHeaders, body=check.OutboundRequest,
        body_example={"to": "+14155550100", "message": "Your order has shipped."},
        answers={202: Answer("Started (`status: sent`), still running at the deadline (`status: running`), or "
                             "queued without waiting (`status: queued`); poll `job_url`.",
                             (OutboundStarted, Running))},
        errors=STARTS),
    Operation(
        "get", "/admin/conversations/{number}", "showConversation",
        "Show a conversation: local state, recent deliveries and the UponAI chat", **_CONVERSATION,
        answers={200: Answer("The conversation. `chat_error` tells why the chat could not be read.",
                             (Conversation,))}),
    Operation(
        "delete", "/admin/conversations/{number}", "eraseConversation",
        "Erase a person: end the chat at UponAI, delete every record holding the number or words",
        description="A bare number erases the person on every channel (and gateway number, unless `from` names "
                    "one); `whatsapp:+1...` that conversation alone. No new turn starts once it is asked; the "
                    "running one ends its step, waiting texts are dropped. Every RQ job naming the person goes, "
                    "and no event about them is posted after. An opt-out (STOP) is kept under the conversation "
                    "id, without the number. 404 when nothing is stored (a repeat).",
        **_CONVERSATION, answers={200: Answer("Erased.", (ConversationErased,)), 202: _STILL_RUNNING}, errors=WAITS),
    Operation(
        "post", "/admin/conversations/{number}/end", "endConversation", "End the conversation's chat now",
        **_CONVERSATION,
        answers={200: Answer("Ended (ended_chat_id is null when there was no chat).", (ConversationEnded,)),
                 202: _STILL_RUNNING},
        errors=WAITS),
    Operation(
        "post", "/admin/conversations/{number}/handoff", "handoffConversation",
        "Take the conversation over: the agent stops answering it",
        description="The person's texts are kept in the away log (not forwarded); keywords still work. "
                    "Idempotent: a conversation already handed off answers `changed: false`. A turn already "
                    "running (`turn_running`) may still send its reply.",
        **_CONVERSATION, answers={200: Answer("Handed off.", (HandoffState,))}),
    Operation(
        "post", "/admin/conversations/{number}/resume", "resumeConversation", "Give the conversation back to the agent",
        description="What was said meanwhile (the away log) reaches the agent with its next turn. Idempotent.",
        **_CONVERSATION, answers={200: Answer("The agent answers again.", (HandoffState,))}),
    Operation(
        "post", "/admin/conversations/{number}/messages", "sendOperatorMessage",
        "Send an operator's SMS into the ongoing conversation",
        description="From the conversation's gateway number, handed off or not; the chat goes on (unlike "
                    "POST /admin/sms). Sent between the agent's replies (it takes the conversation's lock) "
                    "and put in the away log, so the agent hears of it on its next turn. 409 `opted_out`: the "
                    "person sent STOP, nothing was sent.",
        **_CONVERSATION, headers=check.OperatorMessageHeaders, body=check.OperatorMessage,
        answers={202: Answer("Sent (`status: sent`), still running at the deadline (`status: running`), or queued "
                             "without waiting (`status: queued`); poll `job_url`.", (OperatorMessageSent, Running))},
        errors=STARTS),
    Operation(
        "get", "/admin/chats", "listChats", "List UponAI chats (passed through to UponAI's list chats)",
        query=check.ChatsQuery, answers={200: Answer("One page; pass pagination_key back for the next.", (ChatPage,))},
        errors=(500, 502, 504)),
    Operation(
        "get", "/admin/jobs/{job_id}", "showJob", "What became of an admin job (after a 202 `running`)",
        path_params=check.JobPath,
        answers={200: Answer("The job's status and, once done, `ok` or `error`.", (Job,))}),
    Operation(
        "get", "/admin/failed", "listFailed", "Failed jobs of the gateway's queues, newest first",
        query=check.FailedQuery, answers={200: Answer("Failed jobs with reason and conversation.", (FailedJobs,))}),
    Operation(
        "post", "/admin/failed/{job_id}/requeue", "requeueFailed",
        "Run a failed job again (its messages are still answered at most once)",
        path_params=check.JobPath, answers={200: Answer("Back on its queue.", (Requeued,))}),
    Operation(
        "get", "/admin/openapi.json", "openapi", "This description", public=True,
        answers={200: Answer("OpenAPI 3.1 document")}),
)


# -- the document ---------------------------------------------------------------------------------


def _models(operations: Iterable[Operation]) -> list[type[BaseModel]]:
    found: dict[type[BaseModel], None] = {Error: None}
    for operation in operations:
        for model in (operation.body, *(m for answer in operation.answers.values() for m in answer.models)):
            if model is not None:
                found[model] = None
    return list(found)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` as a parameter: absent is the API's null, and a query string has no null."""
    options = schema.get("anyOf", [])
    if len(options) == 2 and {"type": "null"} in options:
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return {**next(option for option in options if option != {"type": "null"}), **rest}
    return schema


def parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a path, query or header model, one per field."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=DocumentSchema)
    required = set(schema.get("required", ()))
    found = []
    for name, property_schema in schema["properties"].items():
        property_schema = _without_null(dict(property_schema))
        description = property_schema.pop("description", None)
        parameter = {"name": name, "in": where, "required": where == "path" or name in required,
                     "schema": property_schema}
        if description:
            parameter["description"] = description
        found.append(parameter)
    return found


def _content(schemas: list[dict[str, Any]], example: Mapping[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schemas[0] if len(schemas) == 1 else {"oneOf": schemas}}
    if example is not None:
        media["example"] = dict(example)
    return {"application/json": media}


def _operation(operation: Operation, refs: Mapping[type[BaseModel], dict[str, str]]) -> dict[str, Any]:
    spec: dict[str, Any] = {"summary": operation.summary, "operationId": operation.operation_id}
    if operation.description:
        spec["description"] = operation.description
    found = [parameter for model, where in ((operation.path_params, "path"), (operation.query, "query"),
                                            (operation.headers, "header")) if model is not None
             for parameter in parameters(model, where)]
    if found:
        spec["parameters"] = found
    if operation.body is not None:
        spec["requestBody"] = {"required": True, "content": _content([refs[operation.body]], operation.body_example)}
    responses: dict[str, Any] = {}
    for status, answer in sorted(operation.answers.items()):
        schemas = [refs[model] for model in answer.models] or [{"type": "object"}]
        responses[str(status)] = {"description": answer.description, "content": _content(schemas)}
    if operation.public:
        spec["security"] = []
    else:
        for status in sorted({*COMMON_ERRORS, *operation.errors}):
            responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    spec["responses"] = responses
    return {**spec, **operation.extra}


def openapi_document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``, their models under components/schemas."""
    operations = tuple(operations)
    keys, definitions = models_json_schema([(model, "validation") for model in _models(operations)],
                                           ref_template=REF_TEMPLATE, schema_generator=DocumentSchema)
    refs = {model: ref for (model, _), ref in keys.items()}
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "SMS gateway admin API", "version": "1",
                 "description": "Operator API of the SMS gateway. Every failure answers "
                                "{\"error\": {\"code\", \"message\"}}."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_API_TOKEN"}},
            "schemas": definitions.get("$defs", {}),
            "responses": {f"E{status}": {"description": meaning, "content": _content([refs[Error]])}
                          for status, meaning in ERROR_MEANINGS.items()},
        },
    }


def admin_openapi(extra: Iterable[Operation] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API, with ``extra`` operations declared elsewhere."""
    return openapi_document((*ADMIN_OPERATIONS, *extra))
