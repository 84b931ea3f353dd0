"""Erasing a person on request: every key that holds their number or words, across all state modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from core.model import InboundMessage
from core.state.campaigns import CampaignStore
from core.state.keys import KEY_KINDS, Holds, StateBase, bare_address, key, text, text_hash


class Erasure(StateBase):
    """``erase``: the one operation that reads every kind of key."""

    def conversations_of(self, person: str, gateway: str | None = None) -> list[str]:
        """Every conversation with ``person`` (a bare number) on any channel, with ``gateway`` (bare) only if given."""
        found = []
        for name in self._scan("conv"):
            who, via = (text(v) for v in self.redis.hmget(name, "person", "gateway"))
            if who and bare_address(who) == person and (gateway is None or bare_address(via or "") == gateway):
                found.append(name.rpartition(":")[2])
        return found

    def mark_erased(self, cid: str, erased_at: float, ttl_seconds: int) -> None:
        """Note when the conversation was erased (no number in it): events created before are never posted."""
        self.redis.set(key("erased", cid), f"{erased_at:.3f}", ex=ttl_seconds)

    def erase(self, cid: str) -> int:
        """Delete every key of the conversation that holds the person's number or words; returns how many.

        What to delete comes from ``KEY_KINDS`` (``core.state.keys``), the one table of the kinds of key: the
        conversation's own keys by name, its parts and markers by pattern, its id out of the sets of ids, and the
        records of messages and operations (not keyed by conversation) by reading each, in ``RECORD_READERS``'
        order: sent SMS by their conversation id, given-up messages by their numbers, outbound starts by their
        operation id or chat, progress records by their message sid, chat or sent parts, Idempotency-Key records by
        their operation id. An opt-out is kept (without the number): see docs/operations.md. The caller holds the
        conversation's lock.
        """
        state = self.conversation(cid)
        found = Found(cid=cid, chats=self.chats(cid), sids={message.sid for message in self.inbox(cid)})
        for turn in self.recent_turns(cid):
            found.sids.update(turn.get("sids") or [])
        doomed: set[str] = set()
        members: list[str] = []
        for kind, holds in KEY_KINDS.items():
            if holds is Holds.CONVERSATION:
                doomed.add(key(kind, cid))
            elif holds is Holds.CONVERSATION_PARTS:
                doomed.update(text(k) for k in self.redis.scan_iter(match=key(kind, cid, "*"), count=1000))
            elif holds is Holds.CONVERSATION_LAST:
                doomed.update(text(k) for k in self.redis.scan_iter(match=key(kind, "*", cid), count=1000))
            elif holds is Holds.CONVERSATION_IDS:
                members.append(key(kind))
        for kind, reader in RECORD_READERS.items():
            for name in self._scan(kind):
                if reader(self, name, found):
                    doomed.add(name)
        if state.get("person"):  # the lists that hold many people's numbers: this one is taken out of each
            CampaignStore(self.redis, dedupe_ttl_seconds=self.dedupe_ttl_seconds,
                          retention_seconds=self.retention_seconds).forget_number(bare_address(state["person"]), cid)
        with self.redis.pipeline() as pipe:
            for name in doomed:
                pipe.delete(name)
            for name in members:
                pipe.zrem(name, cid)
            if state.get("opted_out") == "1":
                # Carriers require STOP to be honoured: keep only that fact, under the opaque id.
                pipe.hset(key("conv", cid), mapping={"opted_out": "1", "opted_out_at": state.get("opted_out_at", "")})
                self._keep(key("conv", cid), pipe=pipe)
            removed = sum(pipe.execute()[:len(doomed)])
        if state.get("opted_out") == "1" and set(state) <= {"opted_out", "opted_out_at"}:
            removed -= 1  # only the opt-out was there, and it is kept
        return removed

    # -- records: is this one the conversation's? (each may add what the next readers look for) ---------------

    def _sent_is_ours(self, name: str, found: Found) -> bool:
        conversation, inbound_sid = (text(v) for v in self.redis.hmget(name, "conversation_id", "inbound_sid"))
        if conversation != found.cid:
            return False
        found.sent.add(name.rpartition(":")[2])
        if inbound_sid:
            found.sids.add(inbound_sid)
        return True

    def _dead_is_ours(self, name: str, found: Found) -> bool:
        raw = self.redis.get(name)
        if raw is None or InboundMessage.from_json(raw).conversation_id != found.cid:
            return False
        found.sids.add(name.rpartition(":")[2])
        return True

    def _outbound_is_ours(self, name: str, found: Found) -> bool:
        op_id = name.rpartition(":")[2]
        result = json.loads(self.redis.hget(name, "result") or "{}")
        if not (op_id in found.sids or result.get("conversation_id") == found.cid
                or text(self.redis.hget(name, "chat_id")) in found.chats):
            return False
        found.ops.add(op_id)
        found.sids.add(op_id)
        return True

    def _msg_is_ours(self, name: str, found: Found) -> bool:
        record = text_hash(self.redis.hgetall(name))
        return (name.rpartition(":")[2] in found.sids or record.get("turn_chat_id") in found.chats
                or any(k.startswith("part:") and v in found.sent for k, v in record.items()))

    def _idem_is_ours(self, name: str, found: Found) -> bool:
        return json.loads(self.redis.get(name) or "{}").get("op_id") in found.ops


@dataclass
class Found:
    """What an erase has found of the conversation so far (the records' readers add to it)."""

    cid: str
    chats: set[str]
    sids: set[str]  # message sids (and operation ids) of the conversation
    sent: set[str] = field(default_factory=set)  # Twilio sids of its SMS
    ops: set[str] = field(default_factory=set)  # its outbound starts' operation ids


# The readers of the record kinds, in the order they run (each may need what an earlier one found).
RECORD_READERS: dict[str, Callable[[Erasure, str, Found], bool]] = {
    "sent": Erasure._sent_is_ours, "dead": Erasure._dead_is_ours, "outbound": Erasure._outbound_is_ours,
    "msg": Erasure._msg_is_ours, "idem": Erasure._idem_is_ours,
}
if set(RECORD_READERS) != {kind for kind, holds in KEY_KINDS.items() if holds is Holds.RECORDS}:
    raise RuntimeError("every kind of record in KEY_KINDS needs a reader in RECORD_READERS (and no other)")
