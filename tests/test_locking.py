"""The conversation lock kept alive while a turn runs: by one refresh thread for every lock a process holds."""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.state import ConversationStore
from tests.conftest import free_port, new_store
from workers.locking import LockKeeper

TTL = 1.5  # seconds: a lock nobody refreshes is gone after this (refreshed every TTL / 3)


def holder(redis, cid: str) -> str | None:
    value = redis.get(ConversationStore.key("lock", cid))
    return value.decode() if value is not None else None


def watch_held(redis, tokens: dict[str, str], seconds: float) -> None:
    """Check, throughout ``seconds`` (several TTLs), that every lock in ``tokens`` stays with its holder."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for cid, token in tokens.items():
            assert holder(redis, cid) == token, f"lock of {cid} lost while held"
        time.sleep(0.02)


def test_a_held_lock_outlives_its_ttl_and_is_released_on_the_way_out(redis):
    store = new_store(redis)
    assert store.acquire_lock("c1", "drain:a", TTL)
    with LockKeeper(store, "c1", "drain:a", ttl_seconds=TTL):
        watch_held(redis, {"c1": "drain:a"}, 2.5 * TTL)
    assert holder(redis, "c1") is None


def test_many_locks_are_kept_by_one_thread(redis):
    store = new_store(redis)
    tokens = {f"c{n}": f"drain:{n}" for n in range(40)}
    for cid, token in tokens.items():
        assert store.acquire_lock(cid, token, TTL)
    threads_before = threading.active_count()
    keepers = [LockKeeper(store, cid, token, ttl_seconds=TTL) for cid, token in tokens.items()]
    for keeper in keepers:
        keeper.__enter__()
    try:
        assert threading.active_count() <= threads_before + 1  # the refresher (if not started before)
        watch_held(redis, tokens, 2.5 * TTL)
    finally:
        for keeper in keepers:
            keeper.__exit__(None, None, None)
    assert [cid for cid in tokens if holder(redis, cid)] == []


def test_a_lock_taken_over_is_not_refreshed_or_released_by_its_old_holder(redis):
    """A holder that stalled past the TTL lost the lock: its keeper must neither extend nor free the new one."""
    store = new_store(redis)
    assert store.acquire_lock("c1", "drain:old", TTL)
    with LockKeeper(store, "c1", "drain:old", ttl_seconds=TTL):
        redis.set(ConversationStore.key("lock", "c1"), "drain:new", px=int(10 * TTL * 1000))
        deadline = time.monotonic() + TTL  # past the old holder's refreshes (every TTL / 3)
        while time.monotonic() < deadline:
            assert holder(redis, "c1") == "drain:new"
            # a refresh by the old holder would cut it to TTL
            assert redis.pttl(ConversationStore.key("lock", "c1")) > 8 * TTL * 1000
            time.sleep(0.02)
    assert holder(redis, "c1") == "drain:new"


def test_a_keeper_released_early_is_not_released_again(redis):
    store = new_store(redis)
    assert store.acquire_lock("c1", "drain:a", TTL)
    with LockKeeper(store, "c1", "drain:a", ttl_seconds=TTL) as keeper:
        keeper.release()
        assert holder(redis, "c1") is None
        assert store.acquire_lock("c1", "drain:b", 10 * TTL)  # the next holder
        watch_held(redis, {"c1": "drain:b"}, TTL / 2)
    assert holder(redis, "c1") == "drain:b"


def test_a_failed_refresh_is_logged_and_the_refresher_goes_on(redis, caplog):
    """A refresh that raises (Redis away) costs a WARNING: the one refresh thread keeps the other locks alive."""
    store = new_store(redis)
    away = new_store(Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2,
                                   retry=Retry(NoBackoff(), 0)))
    assert store.acquire_lock("c1", "drain:a", TTL)
    with (caplog.at_level(logging.WARNING, logger="workers.locking"),
          LockKeeper(away, "c2", "drain:b", ttl_seconds=TTL) as failing,
          LockKeeper(store, "c1", "drain:a", ttl_seconds=TTL)):
        watch_held(redis, {"c1": "drain:a"}, 2.5 * TTL)
        failing.released = True  # nothing to let go on a Redis that is not there
    assert "conversation=c2 lock refresh failed: ConnectionError" in caplog.text
    assert holder(redis, "c1") is None
