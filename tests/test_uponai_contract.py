"""Contract tests from outside facts: UponAI's and Retell's documented payloads, verbatim, and Retell's own SDK.

The payloads below are copied as data from the vendors' public API references (the source is named
above each). The fake UponAI serves them unchanged and ``UponAIClient`` must read each one; the
simulator the other tests trust is checked the other way round: Retell's official Python SDK
(``retell-sdk``, an outside client of the "guide" style) talks to it and its own types must accept
every answer.
"""

from __future__ import annotations

import pytest
from retell import Retell
from retell.types import ChatCreateChatCompletionResponse, ChatListResponse, ChatResponse

from sandbox.httpfake import Fault
from tests.conftest import UPONAI_KEY
from workers.chats import turn_in_chat
from workers.errors import ChatNotFoundError, UponAIPermanentError, UponAITransientError
from workers.uponai import Chat, ChatMessage, UponAIClient, parse_chat

WORKSPACE = 7  # the simulator's, from conftest

# -- UponAI's reference style: documentation.uponai.com/api-reference/chats/* ("UponAI Platform API",
#    OpenAPI version 2026-04-20), the request and response examples of each page, verbatim.

# POST /api/chats, request example (create-chat)
UPONAI_CREATE_REQUEST = {
    "workspaceId": 42,
    "agent_id": "chat_agent_01hzk4q6dr3n0d4qzpw9z6gth6",
    "metadata": {
        "source": "website",
        "page": "/pricing"
    },
    "uponai_dynamic_variables": {
        "customer_tier": "enterprise"
    }
}
# The chat object: the 201 of create-chat, the 200 of get-chat and update-chat (the same example on each page)
UPONAI_CHAT = {
    "chatId": "<string>",
    "agentId": "<string>",
    "version": 123,
    "status": "<string>",
    "type": "web_chat",
    "metadata": {},
    "customAttributes": {},
    "startedAt": "2023-11-07T05:31:56Z",
    "endedAt": "2023-11-07T05:31:56Z",
    "transcript": "<string>",
    "messages": [
        {
            "content": "<string>",
            "name": "<string>",
            "tool_calls": [
                {}
            ]
        }
    ],
    "chatCost": {},
    "chatAnalysis": {},
    "collectedDynamicVariables": {},
    "uponai_dynamic_variables": {},
    "overrideDynamicVariables": {}
}
# POST /api/chats/{chatId}/completions, request and 201 examples (create-chat-completion)
UPONAI_COMPLETION_REQUEST = {
    "workspaceId": 42,
    "content": "Can you send me pricing for the enterprise plan?"
}
UPONAI_COMPLETION = {
    "messages": [
        {
            "content": "<string>",
            "name": "<string>",
            "tool_calls": [
                {}
            ]
        }
    ]
}
# GET /api/chats, 200 example (list-chats)
UPONAI_LIST = {
    "data": [
        {
            "chatId": "<string>",
            "agentId": "<string>",
            "version": 123,
            "status": "<string>",
            "type": "web_chat",
            "metadata": {},
            "customAttributes": {},
            "startedAt": "2023-11-07T05:31:56Z",
            "endedAt": "2023-11-07T05:31:56Z",
            "transcript": "<string>",
            "messages": [
                {
                    "content": "<string>",
                    "name": "<string>",
                    "tool_calls": [
                        {}
                    ]
                }
            ],
            "chatCost": {},
            "chatAnalysis": {},
            "collectedDynamicVariables": {},
            "uponai_dynamic_variables": {},
            "overrideDynamicVariables": {}
        }
    ],
    "pagination_key": "<string>"
}
# POST /api/chats/{chatId}/end, request example; the answer is "204 Chat ended." with no body (end-chat)
UPONAI_END_REQUEST = {
    "workspaceId": 123
}

# -- Retell's chat API (the "guide" style): docs.retellai.com/api-references/*, response examples verbatim.

# POST /create-chat, 201 example (create-chat)
RETELL_CREATE = {
    "chat_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
    "agent_id": "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD",
    "retell_llm_dynamic_variables": {
        "customer_name": "John Doe"
    },
    "chat_status": "ongoing",
    "start_timestamp": 1703302407333,
    "end_timestamp": 1703302428855,
    "transcript": "Agent: hi how are you doing?\nUser: Doing pretty well. How are you?\nAgent: That's great to hear! I'm doing well too, thanks! What's up?\nUser: I don't have anything in particular.\nAgent: Got it, just checking in!\nUser: Alright. See you.\nAgent: have a nice day\n",  # noqa: E501
    "message_with_tool_calls": [
        {
            "message_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "role": "agent",
            "content": "hi how are you doing?",
            "created_timestamp": 1703302428855
        }
    ],
    "metadata": {},
    "chat_cost": {
        "product_costs": [
            {
                "product": "elevenlabs_tts",
                "unitPrice": 1,
                "cost": 60
            }
        ],
        "combined_cost": 70
    },
    "chat_analysis": {
        "chat_summary": "The agent messages user to ask question about his purchase inquiry. The agent asked several questions regarding his preference and asked if user would like to book an appointment. The user happily agreed and scheduled an appointment next Monday 10am.",  # noqa: E501
        "user_sentiment": "Positive",
        "chat_successful": True,
        "custom_analysis_data": {}
    }
}
# GET /get-chat/{chat_id}, 200 example (get-chat)
RETELL_GET = {
    "chat_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
    "agent_id": "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD",
    "retell_llm_dynamic_variables": {
        "customer_name": "John Doe"
    },
    "collected_dynamic_variables": {
        "last_node_name": "Test node"
    },
    "chat_status": "ongoing",
    "start_timestamp": 1703302407333,
    "end_timestamp": 1703302428855,
    "transcript": "Agent: hi how are you doing?\nUser: Doing pretty well. How are you?\nAgent: That's great to hear! I'm doing well too, thanks! What's up?\nUser: I don't have anything in particular.\nAgent: Got it, just checking in!\nUser: Alright. See you.\nAgent: have a nice day\n",  # noqa: E501
    "message_with_tool_calls": [
        {
            "message_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "role": "agent",
            "content": "hi how are you doing?",
            "created_timestamp": 1703302428855
        }
    ],
    "metadata": {},
    "chat_cost": {
        "product_costs": [
            {
                "product": "elevenlabs_tts",
                "unit_price": 1,
                "cost": 60
            }
        ],
        "combined_cost": 70
    },
    "chat_analysis": {
        "chat_summary": "The agent messages user to ask question about his purchase inquiry. The agent asked several questions regarding his preference and asked if user would like to book an appointment. The user happily agreed and scheduled an appointment next Monday 10am.",  # noqa: E501
        "user_sentiment": "Positive",
        "chat_successful": True,
        "custom_analysis_data": {}
    }
}
# POST /create-chat-completion, 201 example (create-chat-completion)
RETELL_COMPLETION = {
    "messages": [
        {
            "message_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "role": "agent",
            "content": "hi how are you doing?",
            "created_timestamp": 1703302428855
        }
    ]
}
# POST /v3/list-chats, 200 example (list-chats). Our stored copy of the page ends inside the item's
# chat_analysis, so the item is copied verbatim up to its chat_cost and closed there.
RETELL_LIST_V3 = {
    "pagination_key": "<string>",
    "has_more": True,
    "items": [
        {
            "chat_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "agent_id": "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD",
            "chat_status": "ongoing",
            "version": 1,
            "retell_llm_dynamic_variables": {
                "customer_name": "John Doe"
            },
            "collected_dynamic_variables": {
                "last_node_name": "Test node"
            },
            "chat_type": "api_chat",
            "custom_attributes": {},
            "start_timestamp": 1703302407333,
            "end_timestamp": 1703302428855,
            "transcript": "Agent: hi how are you doing?\nUser: Doing pretty well. How are you?\nAgent: That's great to hear! I'm doing well too, thanks! What's up?\nUser: I don't have anything in particular.\nAgent: Got it, just checking in!\nUser: Alright. See you.\nAgent: have a nice day\n",  # noqa: E501
            "message_with_tool_calls": [
                {
                    "message_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
                    "role": "agent",
                    "content": "hi how are you doing?",
                    "created_timestamp": 1703302428855
                }
            ],
            "metadata": {},
            "chat_cost": {
                "product_costs": [
                    {
                        "product": "elevenlabs_tts",
                        "cost": 60,
                        "unit_price": 1,
                        "is_transfer_leg_cost": True
                    }
                ],
                "combined_cost": 70
            },
        }
    ]
}
# Retell's error bodies: components.responses of its OpenAPI spec ("Retell SDK" 3.0.0), example messages verbatim.
RETELL_ERRORS = {
    400: {"status": "error", "message": "Invalid request format, please check API reference."},
    401: {"status": "error", "message": "API key is missing or invalid."},
    402: {"status": "error", "message": "Trial has ended, please add payment method."},
    422: {"status": "error", "message": "Cannot find requested asset under given api key."},
    429: {"status": "error", "message": "Account rate limited, please throttle your requests."},
    500: {"status": "error", "message": "An unexpected server error occurred."},
}

TRANSCRIPT = [("agent", "hi how are you doing?"), ("user", "Doing pretty well. How are you?"),
              ("agent", "That's great to hear! I'm doing well too, thanks! What's up?"),
              ("user", "I don't have anything in particular."), ("agent", "Got it, just checking in!"),
              ("user", "Alright. See you."), ("agent", "have a nice day")]


def make_client(uponai, style: str) -> UponAIClient:
    return UponAIClient(base_url=uponai.url, api_key=UPONAI_KEY, agent_id="agent_default", style=style,
                        workspace_id=WORKSPACE if style == "reference" else None,
                        connect_timeout_seconds=1.0, read_timeout_seconds=5.0)


@pytest.fixture
def reference(uponai) -> UponAIClient:
    return make_client(uponai, "reference")


@pytest.fixture
def guide(uponai) -> UponAIClient:
    return make_client(uponai, "guide")


# -- the reference style's examples --------------------------------------------------------------

def test_reference_create_chat_example(reference, uponai):
    uponai.inject("create_chat", Fault(status=201, body=UPONAI_CHAT))
    chat = reference.create_chat(metadata={"source": "website"}, dynamic_variables={"customer_tier": "enterprise"})
    assert chat == Chat(chat_id="<string>", agent_id="<string>", status="<string>",
                        messages=(ChatMessage("unknown", "<string>"),), metadata={},
                        started_at="2023-11-07T05:31:56Z", ended_at="2023-11-07T05:31:56Z")
    (request,) = uponai.calls("create_chat")
    assert (request.method, request.path) == ("POST", "/api/chats")
    assert set(request.json()) == set(UPONAI_CREATE_REQUEST)  # the documented field names, no others
    assert isinstance(request.json()["workspaceId"], int)


def test_reference_completion_example_is_the_agents_text(reference, uponai):
    uponai.inject("complete", Fault(status=201, body=UPONAI_COMPLETION))
    assert reference.complete("chat_1", "hi") == [ChatMessage("agent", "<string>")]
    (request,) = uponai.calls("complete")
    assert (request.method, request.path) == ("POST", "/api/chats/chat_1/completions")
    assert set(request.json()) == set(UPONAI_COMPLETION_REQUEST)


def test_reference_get_chat_example(reference, uponai):
    uponai.inject("get_chat", Fault(status=200, body=UPONAI_CHAT))
    chat = reference.get_chat("chat_1")
    assert chat.chat_id == "<string>" and chat.messages == (ChatMessage("unknown", "<string>"),)
    assert not chat.is_ended  # a status it does not know is not "ended"
    (request,) = uponai.calls("get_chat")
    assert request.query == {"workspaceId": str(WORKSPACE)}


def test_reference_list_chats_example(reference, uponai):
    uponai.inject("list_chats", Fault(status=200, body=UPONAI_LIST))
    page = reference.list_chats()
    assert [c.chat_id for c in page.chats] == ["<string>"]
    assert page.pagination_key == "<string>" and page.has_more


def test_reference_end_chat_answers_204_without_a_body(reference, uponai):
    chat = reference.create_chat()
    assert reference.end_chat(chat.chat_id) is None
    request = uponai.calls("end_chat")[0]
    assert (request.method, request.path) == ("POST", f"/api/chats/{chat.chat_id}/end")
    assert set(request.json()) == set(UPONAI_END_REQUEST)


# -- Retell's examples (the guide style) -------------------------------------------------------------

def test_guide_create_chat_example(guide, uponai):
    uponai.inject("create_chat", Fault(status=201, body=RETELL_CREATE))
    chat = guide.create_chat()
    assert chat.chat_id == "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6"
    assert chat.agent_id == "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD" and chat.status == "ongoing"
    assert chat.messages == (ChatMessage("agent", "hi how are you doing?"),)
    assert chat.started_at == "2023-12-23T03:33:27Z"


def test_guide_completion_example(guide, uponai):
    uponai.inject("complete", Fault(status=201, body=RETELL_COMPLETION))
    assert guide.complete("chat_1", "hi how are you doing?") == [ChatMessage("agent", "hi how are you doing?")]


def test_guide_get_chat_example_and_its_transcript(guide, uponai):
    uponai.inject("get_chat", Fault(status=200, body=RETELL_GET))
    chat = guide.get_chat("Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6")
    assert chat.messages == (ChatMessage("agent", "hi how are you doing?"),)
    transcript_only = parse_chat({k: v for k, v in RETELL_GET.items() if k != "message_with_tool_calls"})
    assert [(m.role, m.content) for m in transcript_only.messages] == TRANSCRIPT


def test_guide_list_chats_example(guide, uponai):
    uponai.inject("list_chats", Fault(status=200, body=RETELL_LIST_V3))
    page = guide.list_chats(limit=50)
    assert [c.chat_id for c in page.chats] == ["Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6"]
    assert page.pagination_key == "<string>" and page.has_more is True


@pytest.mark.parametrize("style", ["reference", "guide"])
def test_documented_error_bodies(uponai, style):
    client = make_client(uponai, style)
    for status, body in RETELL_ERRORS.items():
        uponai.inject("complete", Fault(status=status, body=body))
        expected = {422: ChatNotFoundError, 429: UponAITransientError, 500: UponAITransientError}.get(
            status, UponAIPermanentError)
        with pytest.raises(expected) as caught:
            client.complete("chat_1", "x")
        assert caught.value.status == status and body["message"] in str(caught.value)


# -- the read-back before a re-post, on chats whose items carry no role ------------------------------

def test_read_back_finds_the_turn_in_a_chat_without_roles_by_its_text():
    roleless = parse_chat({**UPONAI_CHAT, "transcript": None, "messages": [
        {"content": "first"}, {"content": "You said: first", "name": "<string>", "tool_calls": [{}]},
        {"content": "second"}, {"content": "You said: second", "name": "<string>", "tool_calls": [{}]}]})
    assert turn_in_chat(roleless, "second") == [ChatMessage("agent", "You said: second")]
    assert turn_in_chat(roleless, "third") is None


def test_read_back_uses_the_transcripts_user_lines_when_items_carry_no_role():
    chat = parse_chat({**UPONAI_CHAT, "transcript": "User: first\nAgent: You said: first\nUser: second",
                       "messages": [{"content": "first"}, {"content": "You said: first", "tool_calls": [{}]},
                                    {"content": "second"}]})
    assert turn_in_chat(chat, "second") == []  # applied, not yet answered: not posted again
    assert turn_in_chat(chat, "first") is None  # not the last thing the person said


def test_read_back_of_the_documented_examples():
    assert turn_in_chat(parse_chat(RETELL_GET), "Alright. See you.") is None  # the agent item list has no user
    transcript_only = parse_chat({k: v for k, v in RETELL_GET.items() if k != "message_with_tool_calls"})
    assert turn_in_chat(transcript_only, "Alright. See you.") == [ChatMessage("agent", "have a nice day")]


# -- Retell's own SDK against the simulator ---------------------------------------------------------

def test_retells_sdk_accepts_every_answer_of_the_simulator(uponai):
    client = Retell(api_key=UPONAI_KEY, base_url=uponai.url, max_retries=0)

    created = client.chat.with_raw_response.create(agent_id="agent_sdk", metadata={"channel": "sms"},
                                                   retell_llm_dynamic_variables={"name": "Ann"})
    assert created.status_code == 201
    chat = ChatResponse.model_validate(created.json())  # the SDK's own type, validated strictly
    assert chat.chat_status == "ongoing" and chat.agent_id == "agent_sdk"
    assert chat.retell_llm_dynamic_variables == {"name": "Ann"}

    answered = client.chat.with_raw_response.create_chat_completion(chat_id=chat.chat_id, content="hello")
    assert answered.status_code == 201
    turn = ChatCreateChatCompletionResponse.model_validate(answered.json())
    assert [(m.role, m.content) for m in turn.messages] == [("agent", "You said: hello")]

    read = ChatResponse.model_validate(client.chat.with_raw_response.retrieve(chat.chat_id).json())
    assert [(m.role, m.content) for m in read.message_with_tool_calls] == [
        ("user", "hello"), ("agent", "You said: hello")]
    assert read.transcript == "User: hello\nAgent: You said: hello"

    second = client.chat.create(agent_id="agent_sdk")
    listed = ChatListResponse.model_validate(
        client.chat.with_raw_response.list(limit=1, sort_order="ascending").json())
    assert [c.chat_id for c in listed.items] == [chat.chat_id] and listed.has_more
    rest = client.chat.list(limit=1, sort_order="ascending", pagination_key=listed.pagination_key)
    assert [c.chat_id for c in rest.items] == [second.chat_id] and not rest.has_more
    skipped = client.chat.list(skip=1, sort_order="ascending")
    assert [c.chat_id for c in skipped.items] == [second.chat_id]

    ended = client.chat.with_raw_response.end(chat.chat_id)
    assert ended.status_code == 204 and ended.parse() is None
    after = ChatResponse.model_validate(client.chat.with_raw_response.retrieve(chat.chat_id).json())
    assert after.chat_status == "ended" and after.end_timestamp

    from retell import UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError):
        client.chat.retrieve("chat_that_does_not_exist")
