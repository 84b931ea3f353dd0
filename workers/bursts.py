"""Bursts: the texts a person sends in a row are answered as one agent turn.

People split one thought over several texts ("hi" / "I need to move my booking" / "to Friday"). The texts
waiting in the conversation's inbox when a turn starts become one completion: their bodies in arrival
order, one per line. A quiet window lets the person finish typing: the turn starts once no text has
arrived for ``INBOUND_QUIET_SECONDS``, but never later than ``INBOUND_MAX_WAIT_SECONDS`` after the oldest
waiting text. A text arriving while the agent answers waits in the inbox for the next turn.

A turn is the longest run of waiting texts, from the inbox head, that go to the agent: a keyword (STOP,
START, HELP, the reset word), a text held by the loop breaker or over the rate limit ends the run and is
handled alone, at its place in order; a STOP waiting behind the run means the run is not forwarded at all
(``workers.flow``: a reply would reach the person after their STOP). Before the turn is posted, its texts
and its exact words are fixed in Redis (``ConversationStore.fix_turn``, keyed by the first text's sid): a
retry resumes that turn, reading it back from the chat by those words, and never splits or doubles it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.model import InboundMessage
from core.state import Progress

# A wait shorter than this is slept out in the drain job; a longer one hands the conversation to a drain job
# scheduled for the end of the window (RQ's scheduler works in whole seconds, so it could not do better).
SHORT_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Turn:
    """The texts of one agent turn, in order, with what is known of its first text's progress."""

    messages: tuple[InboundMessage, ...]
    progress: Progress  # the first text's: the turn record, the reply, the part claims

    @property
    def first(self) -> InboundMessage:
        return self.messages[0]

    @property
    def sids(self) -> list[str]:
        return [message.sid for message in self.messages]

    @property
    def content(self) -> str:
        """The words the turn posts: the fixed ones once fixed, else the bodies in order, one per line."""
        if self.progress.turn_text is not None:
            return self.progress.turn_text
        return joined_bodies(self.messages)


def joined_bodies(messages: tuple[InboundMessage, ...] | list[InboundMessage]) -> str:
    """The texts' bodies in arrival order, one per line (media-only texts add no line)."""
    return "\n".join(body for body in (message.body.strip() for message in messages) if body)


def turn_due_at(settings, waiting: list[InboundMessage]) -> float:
    """When a turn of the ``waiting`` texts may start (epoch seconds; 0 with the quiet window off).

    Once no text has arrived for the quiet window, but never later than the cap after the oldest.
    """
    quiet = settings.inbound_quiet_seconds
    if quiet <= 0 or not waiting:
        return 0.0
    oldest = min(message.received_at for message in waiting)
    newest = max(message.received_at for message in waiting)
    return min(newest + quiet, oldest + settings.inbound_max_wait_seconds)


Waiting = list[tuple[str, InboundMessage]]  # inbox entries at the head: (raw JSON, message), oldest first


def fixed_messages(waiting: Waiting, sids: tuple[str, ...]) -> Waiting:
    """The waiting texts (at the inbox head, in order) that belong to a turn fixed with ``sids``."""
    members = set(sids)
    taken = []
    for raw, message in waiting:
        if message.sid not in members:
            break
        taken.append((raw, message))
    return taken
