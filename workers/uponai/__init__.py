"""UponAI chat API client: the only package that talks to UponAI.

UponAI documents its chat API in two styles that disagree on paths and field names (see ``uponai-api.md``):
``reference`` (``/api/chats...``, camelCase, scoped by ``workspaceId``) and ``guide`` (``/create-chat...``,
snake_case). ``UponAIClient`` (``client.py``: transport, timeouts, error translation) speaks either through
one small adapter per style (``styles.py``: each operation's path, method, payload keys and answer parser),
chosen by ``UPONAI_API_STYLE``, and returns one normalised model (``models.py``: ``Chat``, ``ChatMessage``,
``ChatPage``), read leniently from either style's shape (``parsing.py``).
"""

from workers.request_failures import parse_retry_after
from workers.uponai.client import UponAIClient
from workers.uponai.models import UNKNOWN_ROLE, Chat, ChatMessage, ChatPage
from workers.uponai.parsing import parse_chat, parse_chat_page, parse_completion, parse_messages

__all__ = ["UNKNOWN_ROLE", "Chat", "ChatMessage", "ChatPage", "UponAIClient", "parse_chat", "parse_chat_page",
           "parse_completion", "parse_messages", "parse_retry_after"]
