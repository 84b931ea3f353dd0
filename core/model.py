"""The inbound message as the web accepts it and the workers answer it, and the conversation it belongs to."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property


def conversation_id(gateway_number: str, person_number: str) -> str:
    """Opaque, stable id of the conversation between a gateway number and a person."""
    digest = hashlib.sha256(f"{gateway_number}|{person_number}".encode()).hexdigest()
    return digest[:24]


@dataclass(frozen=True)
class InboundMessage:
    """One inbound SMS/MMS as the webhook accepted it."""

    sid: str
    from_: str
    to: str
    body: str = ""
    account_sid: str = ""
    messaging_service_sid: str = ""
    num_media: int = 0
    media_types: tuple[str, ...] = ()
    opt_out_type: str = ""
    received_at: float = field(default_factory=time.time)
    # What accepting the text did to the person's opt-out (set by the webhook's accept step, see
    # ``core.state.inbound``): "out" (a STOP: opted out from then on), "in" (a START from an opted-out person:
    # opted in), "answer" (an opt-in word from a person who was not opted out: an ordinary text), "while_out" (any
    # other text, sent while opted out); "" for any other text.
    opt: str = ""

    @cached_property  # a hash: computed once per message (frozen: cached_property writes __dict__ directly)
    def conversation_id(self) -> str:
        return conversation_id(self.to, self.from_)

    def to_json(self) -> str:
        # Field by field rather than dataclasses.asdict (a deep copy): this runs on every inbound webhook.
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["media_types"] = list(self.media_types)
        if not self.opt:
            del fields["opt"]  # the accept step adds it when it has something to say (``core.state.inbound``)
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> InboundMessage:
        data = json.loads(raw)
        data["media_types"] = tuple(data.get("media_types") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
