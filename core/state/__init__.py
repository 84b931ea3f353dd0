"""Conversation state in Redis, split by idea; every Redis read and write of it goes through ``ConversationStore``.

- ``core.state.inbound``: dedupe, signatures, the gateway's numbers, accepting a text with its job, the inbox.
- ``core.state.conversations``: the conversation's hash, its chats, opt-out, the loop breaker, the lock.
- ``core.state.deliveries``: per-message progress and decisions, the sent log and statuses, dead letters.
- ``core.state.counters``: rate windows, notice markers, idle-check markers.
- ``core.state.operations``: outbound starts and their Idempotency-Key records.
- ``core.state.handoff``: an operator's takeover and the away log of what was said meanwhile.
- ``core.state.erase``: erasing a person on request (``workers.admin_ops.erase_conversation``).
- ``core.state.keys``: key names, retention, the shared base. Each module's docstring lists its keys.
"""

from __future__ import annotations

from core.state.conversations import Conversations
from core.state.counters import Counters
from core.state.deliveries import STATUS_RANK, Deliveries, Progress
from core.state.erase import Erasure
from core.state.handoff import Handoff
from core.state.inbound import Inbound, NotReplicated
from core.state.keys import CHANNEL_ADDRESS, PREFIX, away_key, away_refs_key, bare_address, key
from core.state.operations import Operations

__all__ = ["CHANNEL_ADDRESS", "PREFIX", "STATUS_RANK", "ConversationStore", "NotReplicated", "Progress", "away_key",
           "away_refs_key", "bare_address", "key"]


class ConversationStore(Inbound, Conversations, Deliveries, Counters, Operations, Handoff, Erasure):
    """One object over every state module, sharing one connection and its retention settings."""
