"""Erasing a person on request: every key that holds their number or words, across all state modules."""

from __future__ import annotations

import json

from core.model import InboundMessage
from core.state.counters import IDLE_DUE_KEY
from core.state.keys import StateBase, bare_address, key, text, text_hash


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

        Per-message records are not keyed by conversation, so they are found by one SCAN of the gateway's
        keys: sent SMS by their conversation id, given-up messages by their numbers, progress records by
        their message sid or the chat they were answered in, outbound starts and their Idempotency-Key
        records by their operation id. An opt-out is kept (without the number): see the README.
        The caller holds the conversation's lock.
        """
        state = self.conversation(cid)
        chats = self.chats(cid)
        sids = {message.sid for message in self.inbox(cid)}
        for turn in self.recent_turns(cid):
            sids.update(turn.get("sids") or [])
        doomed = {key(kind, cid) for kind in ("conv", "inbox", "recent", "chats", "away", "away-refs", "turns")}
        doomed.update(text(k) for k in self.redis.scan_iter(match=key("rate", cid, "*"), count=1000))
        doomed.update(text(k) for k in self.redis.scan_iter(match=key("notice", "*", cid), count=1000))
        sent = set()
        for name in self._scan("sent"):
            found = self.redis.hmget(name, "conversation_id", "inbound_sid")
            if text(found[0]) == cid:
                doomed.add(name)
                sent.add(name.rpartition(":")[2])
                if found[1]:
                    sids.add(text(found[1]))
        for name in self._scan("dead"):
            raw = self.redis.get(name)
            if raw is not None and InboundMessage.from_json(raw).conversation_id == cid:
                doomed.add(name)
                sids.add(name.rpartition(":")[2])
        ops = set()
        for name in self._scan("outbound"):
            op_id = name.rpartition(":")[2]
            result = json.loads(self.redis.hget(name, "result") or "{}")
            if op_id in sids or result.get("conversation_id") == cid or text(self.redis.hget(name, "chat_id")) in chats:
                doomed.add(name)
                ops.add(op_id)
        sids |= ops
        for name in self._scan("msg"):
            record = text_hash(self.redis.hgetall(name))
            if (name.rpartition(":")[2] in sids or record.get("turn_chat_id") in chats
                    or any(k.startswith("part:") and v in sent for k, v in record.items())):
                doomed.add(name)
        for name in self._scan("idem"):
            if json.loads(self.redis.get(name) or "{}").get("op_id") in ops:
                doomed.add(name)
        with self.redis.pipeline() as pipe:
            for name in doomed:
                pipe.delete(name)
            pipe.zrem(IDLE_DUE_KEY, cid)
            if state.get("opted_out") == "1":
                # Carriers require STOP to be honoured: keep only that fact, under the opaque id.
                pipe.hset(key("conv", cid), mapping={"opted_out": "1", "opted_out_at": state.get("opted_out_at", "")})
                self._keep(key("conv", cid), pipe=pipe)
            removed = sum(pipe.execute()[:len(doomed)])
        if state.get("opted_out") == "1" and set(state) <= {"opted_out", "opted_out_at"}:
            removed -= 1  # only the opt-out was there, and it is kept
        return removed
