"""UponAIClient against the local UponAI simulator: both API styles, the normalised model, error translation."""

from __future__ import annotations

import email.utils
import time

import pytest

from sandbox.httpfake import Fault
from sandbox.uponai_sim import MALFORMED_SHAPES
from tests.conftest import UPONAI_KEY, free_port, wait_for
from workers.errors import ChatNotFoundError, MalformedAnswerError, UponAIPermanentError, UponAITransientError
from workers.uponai import Chat, ChatMessage, UponAIClient, parse_chat, parse_messages, parse_retry_after

WORKSPACE = 7  # the simulator's, from conftest


def make_client(base_url: str, style: str, *, api_key: str = UPONAI_KEY, read_timeout: float = 5.0) -> UponAIClient:
    return UponAIClient(base_url=base_url, api_key=api_key, agent_id="agent_default", style=style,
                        workspace_id=WORKSPACE if style == "reference" else None,
                        connect_timeout_seconds=1.0, read_timeout_seconds=read_timeout)


@pytest.fixture(params=["reference", "guide"])
def style(request) -> str:
    return request.param


@pytest.fixture
def agent(uponai, style) -> UponAIClient:
    return make_client(uponai.url, style)


# -- the five operations, both styles ----------------------------------------------------------------

def test_create_chat(agent, uponai, style):
    chat = agent.create_chat(agent_id="agent_sales", metadata={"channel": "sms"},
                             dynamic_variables={"first_message": "hi"})

    assert isinstance(chat, Chat)
    assert chat.agent_id == "agent_sales"
    assert chat.status == "ongoing" and not chat.is_ended
    assert chat.metadata == {"channel": "sms"}
    assert chat.messages == ()
    assert chat.started_at and chat.started_at.endswith("Z")
    sim_chat = uponai.chats[chat.chat_id]
    assert sim_chat.dynamic_variables == {"first_message": "hi"}
    (request,) = uponai.calls("create_chat")
    assert request.headers["authorization"] == f"Bearer {UPONAI_KEY}"
    if style == "reference":
        assert (request.method, request.path) == ("POST", "/api/chats")
        assert request.json()["workspaceId"] == WORKSPACE
        assert "uponai_dynamic_variables" in request.json()
    else:
        assert (request.method, request.path) == ("POST", "/create-chat")
        assert "workspaceId" not in request.json()
        assert "retell_llm_dynamic_variables" in request.json()


def test_create_chat_uses_the_default_agent(agent, uponai):
    chat = agent.create_chat()
    assert chat.agent_id == "agent_default"
    assert uponai.chats[chat.chat_id].agent_id == "agent_default"


def test_complete_returns_the_agents_messages_in_order(agent, uponai):
    uponai.responder = lambda chat, text: [f"first about {text}", "second"]
    chat = agent.create_chat()

    replies = agent.complete(chat.chat_id, "opening hours?")

    assert replies == [ChatMessage("agent", "first about opening hours?"), ChatMessage("agent", "second")]
    assert uponai.texts_by_chat() == {chat.chat_id: ["opening hours?"]}


def test_get_chat_reads_the_conversation_back(agent):
    chat = agent.create_chat(metadata={"k": "v"})
    agent.complete(chat.chat_id, "one")
    agent.complete(chat.chat_id, "two")

    read = agent.get_chat(chat.chat_id)

    assert read.chat_id == chat.chat_id
    assert read.status == "ongoing"
    assert read.metadata == {"k": "v"}
    assert [(m.role, m.content) for m in read.messages] == [
        ("user", "one"), ("agent", "You said: one"), ("user", "two"), ("agent", "You said: two")]


def test_end_chat(agent, uponai):
    chat = agent.create_chat()

    assert agent.end_chat(chat.chat_id) is None

    assert uponai.chats[chat.chat_id].status == "ended"
    ended = agent.get_chat(chat.chat_id)
    assert ended.is_ended
    assert ended.ended_at is not None


def test_list_chats_with_sort_order_and_pagination(agent):
    created = [agent.create_chat().chat_id for _ in range(5)]

    pages, key = [], None
    while True:
        page = agent.list_chats(limit=2, sort_order="ascending", pagination_key=key)
        pages.append([c.chat_id for c in page.chats])
        if not page.has_more:
            assert page.pagination_key is None
            break
        key = page.pagination_key
        assert key
    assert pages == [created[0:2], created[2:4], created[4:5]]

    newest_first = agent.list_chats(limit=3, sort_order="descending")
    assert [c.chat_id for c in newest_first.chats] == created[::-1][:3]
    assert newest_first.has_more
    rest = agent.list_chats(limit=3, sort_order="descending", pagination_key=newest_first.pagination_key)
    assert [c.chat_id for c in rest.chats] == created[::-1][3:]
    assert not rest.has_more
    assert all(isinstance(c, Chat) and c.status == "ongoing" for c in rest.chats)


def test_list_chats_passes_the_style_s_parameter_names(agent, uponai, style):
    agent.list_chats(limit=10, sort_order="ascending", pagination_key="chat_x")
    (request,) = uponai.calls("list_chats")
    if style == "reference":
        assert (request.method, request.path) == ("GET", "/api/chats")
        assert request.query == {"workspaceId": "7", "limit": "10", "sortOrder": "ascending",
                                 "paginationKey": "chat_x"}
    else:
        assert (request.method, request.path) == ("POST", "/v3/list-chats")
        assert request.json() == {"limit": 10, "sort_order": "ascending", "pagination_key": "chat_x"}


def test_both_styles_give_the_same_normalised_chat(uponai):
    shapes = []
    for style_name in ("reference", "guide"):
        client = make_client(uponai.url, style_name)
        chat = client.create_chat(metadata={"m": 1})
        client.complete(chat.chat_id, "hello")
        client.end_chat(chat.chat_id)
        read = client.get_chat(chat.chat_id)
        shapes.append({**read.to_dict(), "chat_id": None, "started_at": len(read.started_at),
                       "ended_at": len(read.ended_at)})
    assert shapes[0] == shapes[1]
    assert shapes[0]["messages"] == [{"role": "user", "content": "hello"},
                                     {"role": "agent", "content": "You said: hello"}]


def test_chat_ids_are_escaped_in_paths(agent, uponai):
    with pytest.raises(ChatNotFoundError):
        agent.get_chat("../evil/chat?x=1")
    (request,) = uponai.calls("get_chat")
    assert request.path.endswith("..%2Fevil%2Fchat%3Fx%3D1")


# -- lenient parsing ---------------------------------------------------------------------------------

MIXED_ITEMS = [
    {"role": "agent", "content": "Hi", "message_id": "m1", "created_timestamp": 1},
    {"role": "tool_call_invocation", "tool_call_id": "t1", "name": "lookup", "arguments": "{}"},
    {"role": "tool_call_result", "tool_call_id": "t1", "content": "{\"ok\": true}"},
    {"role": "node_transition", "former_node_id": "a", "new_node_id": "b"},
    {"role": "state_transition", "former_state_name": "a", "new_state_name": "b"},
    {"role": "injected", "content": "system note"},
    {"role": "user", "content": "hello"},
    {"role": "Assistant", "content": "alias"},
    {"content": "reference style item", "name": "agent", "tool_calls": []},
    {"content": "", "name": "agent", "tool_calls": [{"id": "t2", "name": "book"}]},
    {"content": "calling a tool", "tool_calls": [{"id": "t3"}]},
    {"role": "agent", "content": "   "},
    {"role": "agent", "content": None},
    "not an item", None, 42,
    {"role": "agent", "content": "last", "future_field": {"nested": [1, 2]}},
]


def test_parse_messages_keeps_text_and_ignores_what_it_does_not_know():
    assert parse_messages(MIXED_ITEMS) == [
        ChatMessage("agent", "Hi"),
        ChatMessage("tool_call_result", "{\"ok\": true}"),
        ChatMessage("injected", "system note"),
        ChatMessage("user", "hello"),
        ChatMessage("agent", "alias"),
        ChatMessage("agent", "reference style item"),
        ChatMessage("unknown", "calling a tool"),  # a call that names no function: text, speaker unknown
        ChatMessage("agent", "last"),
    ]
    assert parse_messages(None) == [] and parse_messages({"role": "agent"}) == [] and parse_messages("x") == []


def test_complete_keeps_only_agent_messages_of_a_mixed_turn(agent, uponai):
    chat = agent.create_chat()
    items = [i for i in MIXED_ITEMS if isinstance(i, dict) and i != {"role": "agent", "content": None}]
    uponai.inject("complete", Fault(status=201, body={"messages": items, "extra": True}))
    assert [m.content for m in agent.complete(chat.chat_id, "x")] == [
        "Hi", "alias", "reference style item", "calling a tool", "last"]


def test_complete_with_a_well_formed_turn_without_text_gives_no_messages(agent, uponai):
    chat = agent.create_chat()
    for body in ({"messages": []}, {"messages": [{"role": "agent", "content": "  "}]},
                 {"messages": [{"role": "node_transition", "new_node_id": "n"}]},
                 {"messages": [{"content": None, "tool_calls": [{"function": {"name": "book", "arguments": "{}"}}]}]}):
        uponai.inject("complete", Fault(status=201, body=body))
        assert agent.complete(chat.chat_id, "x") == []


# The reference's own completion example, verbatim (documentation.uponai.com/api-reference/chats/
# create-chat-completion, "UponAI Platform API" 2026-04-20): no role, and "tool_calls": [{}].
UPONAI_COMPLETION_EXAMPLE = {"messages": [{"content": "<string>", "name": "<string>", "tool_calls": [{}]}]}


def test_the_references_own_completion_example_is_agent_text(agent, uponai):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=201, body=UPONAI_COMPLETION_EXAMPLE))
    assert agent.complete(chat.chat_id, "x") == [ChatMessage("agent", "<string>")]


@pytest.mark.parametrize("body", [b"", {}, [], "null", "\"text\"", {"messages": None}, {"messages": "hi"},
                                  {"messages": {"content": "hi"}}, {"messages": ["hi"]},
                                  {"messages": [{"role": "agent"}]}, {"messages": [{"name": "agent"}]},
                                  {"messages": [{"content": 42, "tool_calls": [{}]}]},
                                  "<html><body>502 Bad Gateway</body></html>"])
def test_a_malformed_completion_answer_is_a_failed_call_that_may_have_been_applied(agent, uponai, body):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=201, body=body))
    with pytest.raises(MalformedAnswerError) as caught:
        agent.complete(chat.chat_id, "x")
    assert isinstance(caught.value, UponAITransientError)
    assert caught.value.maybe_applied is True


@pytest.mark.parametrize("shape", MALFORMED_SHAPES)
def test_the_simulator_answers_each_malformed_shape_on_demand(agent, uponai, shape):
    chat = agent.create_chat()
    uponai.answer_malformed("complete", shape)
    with pytest.raises(MalformedAnswerError):
        agent.complete(chat.chat_id, "applied anyway")
    assert uponai.completion_log == [(chat.chat_id, "applied anyway")]  # applied, only the answer was broken
    uponai.answer_malformed("complete", shape, applied=False)
    with pytest.raises(MalformedAnswerError):
        agent.complete(chat.chat_id, "not applied")
    assert len(uponai.completion_log) == 1
    assert agent.complete(chat.chat_id, "fine") == [ChatMessage("agent", "You said: fine")]


@pytest.mark.parametrize("operation", ["create_chat", "get_chat", "list_chats"])
@pytest.mark.parametrize("shape", ["empty", "json_null", "html", "empty_object"])
def test_malformed_answers_to_the_other_operations_are_failed_calls(agent, uponai, operation, shape):
    chat = agent.create_chat()
    uponai.answer_malformed(operation, shape)
    call = {"create_chat": agent.create_chat, "get_chat": lambda: agent.get_chat(chat.chat_id),
            "list_chats": agent.list_chats}[operation]
    with pytest.raises(MalformedAnswerError):
        call()


def test_parse_chat_of_each_style_and_of_a_transcript_only_chat():
    reference = parse_chat({"chatId": "c1", "agentId": "a1", "status": "ended", "startedAt": "2026-01-02T03:04:05Z",
                            "endedAt": "2026-01-02T04:00:00Z", "metadata": {"x": 1}, "chatCost": {"total": 3},
                            "messages": [{"role": "user", "content": "q"}, {"content": "a", "name": "agent"}],
                            "brandNewField": [1, 2, 3]})
    assert reference == Chat(chat_id="c1", agent_id="a1", status="ended",
                             messages=(ChatMessage("user", "q"), ChatMessage("agent", "a")), metadata={"x": 1},
                             started_at="2026-01-02T03:04:05Z", ended_at="2026-01-02T04:00:00Z")
    assert reference.is_ended

    guide = parse_chat({"chat_id": "c2", "agent_id": "a2", "chat_status": "ongoing", "chat_type": "sms_chat",
                        "start_timestamp": 1767323045000, "end_timestamp": None, "metadata": None,
                        "message_with_tool_calls": [{"role": "user", "content": "q"},
                                                    {"role": "node_transition", "new_node_id": "n"},
                                                    {"role": "agent", "content": "a"}],
                        "chat_analysis": {"summary": "s"}})
    assert guide == Chat(chat_id="c2", agent_id="a2", status="ongoing",
                         messages=(ChatMessage("user", "q"), ChatMessage("agent", "a")), metadata={},
                         started_at="2026-01-02T03:04:05Z", ended_at=None)

    transcript_only = parse_chat({"chat_id": "c3", "chat_status": "error",
                                  "transcript": "User: hi\nAgent: hello\nHours: 9-5\nUser: thanks"})
    # A line without a known speaker continues the message before it (the agent's text may hold colons).
    assert transcript_only.messages == (ChatMessage("user", "hi"), ChatMessage("agent", "hello\nHours: 9-5"),
                                        ChatMessage("user", "thanks"))
    assert transcript_only.is_ended


def test_parse_chat_takes_speakers_from_the_transcript_when_items_have_no_role():
    chat = parse_chat({"chatId": "c1", "status": "ongoing", "transcript": "User: hi\nAgent: hello",
                       "messages": [{"content": "hi"}, {"content": "hello", "name": "Sales bot", "tool_calls": [{}]}]})
    assert chat.messages == (ChatMessage("user", "hi"), ChatMessage("agent", "hello"))
    no_transcript = parse_chat({"chatId": "c1", "messages": [{"content": "hi"}, {"content": "hello"}]})
    assert no_transcript.messages == (ChatMessage("unknown", "hi"), ChatMessage("unknown", "hello"))


def test_parse_chat_without_an_id_is_a_transient_error():
    for data in ({"status": "ongoing"}, [], "chat", None):
        with pytest.raises(UponAITransientError):
            parse_chat(data)


# -- error translation -------------------------------------------------------------------------------

def test_bad_api_key_is_permanent_with_the_server_message(uponai, style):
    client = make_client(uponai.url, style, api_key="wrong-key")
    with pytest.raises(UponAIPermanentError) as caught:
        client.create_chat()
    assert caught.value.status == 401
    assert "Invalid API key" in str(caught.value)
    assert not isinstance(caught.value, ChatNotFoundError)
    with pytest.raises(UponAIPermanentError) as caught:
        client.complete("chat_1", "x")
    assert caught.value.status == 401 and not isinstance(caught.value, ChatNotFoundError)


@pytest.mark.parametrize(("status", "message"), [(402, "Insufficient balance"), (400, "content is too long"),
                                                 (403, "forbidden for this workspace")])
def test_client_errors_are_permanent_and_keep_the_message(agent, uponai, status, message):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=status, body={"status": "error", "message": message}))
    with pytest.raises(UponAIPermanentError) as caught:
        agent.complete(chat.chat_id, "x")
    assert caught.value.status == status
    assert message in str(caught.value)
    assert not isinstance(caught.value, ChatNotFoundError)
    assert uponai.completion_log == []


def test_a_redirect_is_a_permanent_error_and_the_turn_is_not_sent_again(agent, uponai):
    """A 3xx is not followed (a POST turned into a GET elsewhere): the call fails, naming the status."""
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=302))
    with pytest.raises(UponAIPermanentError) as caught:
        agent.complete(chat.chat_id, "x")
    assert caught.value.status == 302 and "302" in str(caught.value)
    assert len(uponai.calls("complete")) == 1 and uponai.completion_log == []


def test_unknown_chat_is_chat_not_found_on_every_chat_operation(agent, uponai):
    for call in (lambda: agent.complete("chat_missing", "x"), lambda: agent.get_chat("chat_missing"),
                 lambda: agent.end_chat("chat_missing")):
        with pytest.raises(ChatNotFoundError) as caught:
            call()
        assert caught.value.status == 422
        assert "chat not found" in str(caught.value)


def test_ended_chat_refuses_a_completion_as_chat_not_found(agent, uponai):
    chat = agent.create_chat()
    agent.end_chat(chat.chat_id)
    with pytest.raises(ChatNotFoundError, match="chat has ended"):
        agent.complete(chat.chat_id, "x")


def test_unknown_agent_is_permanent_but_not_chat_not_found(agent):
    with pytest.raises(UponAIPermanentError) as caught:
        agent.create_chat(agent_id="unknown_agent")
    assert caught.value.status == 422
    assert "agent not found" in str(caught.value)
    assert not isinstance(caught.value, ChatNotFoundError)


def test_rate_limit_is_transient_with_retry_after_seconds(agent, uponai):
    uponai.inject("create_chat", Fault(status=429, retry_after="7"))
    with pytest.raises(UponAITransientError) as caught:
        agent.create_chat()
    assert caught.value.status == 429
    assert caught.value.retry_after_seconds == 7.0
    assert caught.value.maybe_applied is False
    assert uponai.chats == {}


def test_rate_limit_is_transient_with_retry_after_as_an_http_date(agent, uponai):
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    uponai.inject("list_chats", Fault(status=429, retry_after=later))
    with pytest.raises(UponAITransientError) as caught:
        agent.list_chats()
    assert 100 < caught.value.retry_after_seconds <= 120


def test_parse_retry_after():
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    in_a_minute = email.utils.formatdate(time.time() + 60)  # "-0000": UTC, not local time
    assert 50 < parse_retry_after(in_a_minute.replace("+0000", "-0000")) <= 60


@pytest.mark.parametrize(("status", "maybe_applied"), [(408, False), (409, True)])
def test_408_and_409_are_transient_as_the_vendor_sdks_retry_them(agent, uponai, status, maybe_applied):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=status, retry_after="2"))
    with pytest.raises(UponAITransientError) as caught:
        agent.complete(chat.chat_id, "x")
    assert caught.value.status == status
    assert caught.value.retry_after_seconds == 2.0
    assert caught.value.maybe_applied is maybe_applied  # 409 may clash with our own earlier call still running


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(agent, uponai, status):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=status, retry_after="3" if status == 503 else None))
    with pytest.raises(UponAITransientError) as caught:
        agent.complete(chat.chat_id, "x")
    assert caught.value.status == status
    assert f"injected {status}" in str(caught.value)
    assert caught.value.retry_after_seconds == (3.0 if status == 503 else None)


def test_read_timeout_is_transient_and_may_have_been_applied(uponai, style):
    client = make_client(uponai.url, style, read_timeout=0.3)
    chat = client.create_chat()
    uponai.inject("complete", Fault(delay_seconds=1.5))
    with pytest.raises(UponAITransientError, match="read timeout") as caught:
        client.complete(chat.chat_id, "slow")
    assert caught.value.maybe_applied is True
    # It was: the server finished the turn after the client gave up.
    wait_for(lambda: uponai.completion_log, timeout=10, message="the slow completion to be applied")
    assert uponai.completion_log == [(chat.chat_id, "slow")]


def test_connection_refused_is_transient_and_certainly_not_applied(style):
    client = make_client(f"http://127.0.0.1:{free_port()}", style)
    with pytest.raises(UponAITransientError, match="connection failed") as caught:
        client.complete("chat_1", "x")
    assert caught.value.maybe_applied is False
    assert caught.value.status is None


def test_dropped_connection_is_transient_and_may_have_been_applied(agent, uponai):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(drop=True), Fault(drop_after_apply=True))
    for _ in range(2):
        with pytest.raises(UponAITransientError) as caught:
            agent.complete(chat.chat_id, "dropped")
        assert caught.value.maybe_applied is True
    assert uponai.completion_log == [(chat.chat_id, "dropped")]  # only the second one was applied


def test_non_json_bodies(agent, uponai):
    chat = agent.create_chat()
    uponai.inject("complete", Fault(status=502, body="<html><body>Bad Gateway</body></html>"))
    with pytest.raises(UponAITransientError, match="Bad Gateway") as caught:
        agent.complete(chat.chat_id, "x")
    assert caught.value.status == 502

    uponai.inject("complete", Fault(status=400, body="plain text refusal"))
    with pytest.raises(UponAIPermanentError, match="plain text refusal"):
        agent.complete(chat.chat_id, "x")

    uponai.inject("complete", Fault(status=500, body=b""))
    with pytest.raises(UponAITransientError, match="empty body"):
        agent.complete(chat.chat_id, "x")

    uponai.inject("get_chat", Fault(status=200, body="<html>maintenance</html>"))
    with pytest.raises(UponAITransientError, match="not JSON") as caught:
        agent.get_chat(chat.chat_id)
    assert caught.value.maybe_applied is True

    uponai.inject("create_chat", Fault(status=201, body=["not", "a", "chat"]))
    with pytest.raises(UponAITransientError, match="not a chat object"):
        agent.create_chat()


def test_error_body_without_a_message_field(agent, uponai):
    uponai.inject("create_chat", Fault(status=400, body={"detail": "agent_id must be a string"}))
    with pytest.raises(UponAIPermanentError, match="agent_id must be a string"):
        agent.create_chat()
    uponai.inject("create_chat", Fault(status=400, body={"errors": [{"field": "agent_id"}]}))
    with pytest.raises(UponAIPermanentError, match="agent_id"):
        agent.create_chat()


def test_the_client_refuses_an_impossible_configuration():
    with pytest.raises(ValueError):
        UponAIClient(base_url="http://127.0.0.1:1", api_key="k", agent_id="a", style="openapi", workspace_id=1,
                     connect_timeout_seconds=1.0, read_timeout_seconds=5.0)
    with pytest.raises(ValueError):
        UponAIClient(base_url="http://127.0.0.1:1", api_key="k", agent_id="a", style="reference", workspace_id=None,
                     connect_timeout_seconds=1.0, read_timeout_seconds=5.0)
