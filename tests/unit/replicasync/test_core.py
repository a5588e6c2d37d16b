"""The sans-IO replica-sync core: merge, age-out, dedupe, clock skew, drops (no sockets)."""

from __future__ import annotations

import msgpack
import pytest

from kvroute.datastore.store import Datastore
from kvroute.replicasync.core import ReplicaSync
from kvroute.replicasync.wire import Codec, DropReason, Message
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer

KEY = b"k" * 32


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def store() -> Datastore:
    ds = Datastore()
    for name in ("a", "b"):
        ds.upsert_endpoint(name, "10.0.0.1", 8000 if name == "a" else 8001)
    return ds


def pair(skew: float = 0.0) -> tuple[ReplicaSync, Datastore, ReplicaSync, Datastore, Clock]:
    ca, cb = Clock(), Clock(skew)
    da, db = store(), store()
    a = ReplicaSync("r-a", da, codec=Codec(KEY), clock=ca)
    b = ReplicaSync("r-b", db, codec=Codec(KEY), clock=cb)
    return a, da, b, db, ca


def exchange(src: ReplicaSync, dst: ReplicaSync) -> bool:
    data = src.flush()
    return data is not None and dst.merge(data)


def test_deltas_reach_the_peer_and_feed_the_signals_scorers_read() -> None:
    a, da, b, db, _ = pair()
    exchange(a, b)  # first message is a full snapshot (empty)
    da.on_request_sent("a", 100, model="lora-1")
    da.on_request_sent("a", 50)
    db.on_request_sent("a", 7)  # b's own request
    assert exchange(a, b)
    load = db.load_of("a")
    assert load is not None
    assert (load.inflight, load.inflight_tokens) == (3, 157)
    assert load.inflight_models == {"lora-1": 1}
    assert load.remote_inflight == 2
    assert load.sent_since_scrape == 3
    # b finishing its own request leaves the peer's part alone
    db.on_request_finished("a", 7)
    db.on_request_finished("a", 7)  # a second finish has nothing local left to uncount
    assert (load.inflight, load.inflight_tokens) == (2, 150)
    da.on_request_finished("a", 100, model="lora-1")
    assert exchange(a, b)
    assert (load.inflight, load.inflight_tokens, load.inflight_models) == (1, 50, {})


def test_a_silent_peer_ages_out_on_the_receivers_clock() -> None:
    a, da, b, db, _ = pair(skew=5000.0)
    da.on_request_sent("b", 10)
    exchange(a, b)
    load = db.load_of("b")
    assert load is not None
    assert load.inflight == 1
    assert b.stats.last_expired_silence_s is None
    assert b.expire(5000.0 + 0.4) == []  # within the timeout (0.5 s) on b's own clock
    assert b.expire(5000.0 + 10.0) == ["r-a"]
    # what the metric reports: how long the peer's counts outlived its last message
    assert b.stats.last_expired_silence_s == pytest.approx(10.0)
    assert load.inflight == 0
    assert load.remote_inflight == 0
    assert b.peers() == {}


def test_clock_skew_between_replicas_changes_nothing() -> None:
    """The sender's clock is off by hours: counters are deltas and merge stamps are local."""
    results = []
    for skew in (0.0, -7200.0):
        a, da, b, db, ca = pair()
        ca.t = skew
        exchange(a, b)
        for _ in range(3):
            da.on_request_sent("a", 5)
        ca.t += 0.01
        exchange(a, b)
        load = db.load_of("a")
        assert load is not None
        results.append((load.inflight, load.inflight_tokens, tuple(b.peers().values())))
    assert results[0] == results[1] == (3, 15, (0.0,))


def test_duplicates_are_dropped_and_a_full_snapshot_repairs_a_lost_delta() -> None:
    a, da, b, db, ca = pair()
    exchange(a, b)
    da.on_request_sent("a", 1)
    first = a.flush()
    assert first is not None
    assert b.merge(first)
    assert not b.merge(first)  # replayed
    assert b.stats.dropped == {DropReason.DUPLICATE: 1}
    da.on_request_sent("a", 1)
    lost = a.flush()  # never delivered
    assert lost is not None
    da.on_request_sent("a", 1)
    assert exchange(a, b)
    load = db.load_of("a")
    assert load is not None
    assert load.inflight == 2
    assert b.stats.gaps == 1
    ca.t += 1.5  # next flush is a full snapshot of a's own counts
    assert exchange(a, b)
    assert load.inflight == 3


def test_a_restarted_peer_replaces_its_old_incarnation() -> None:
    a, da, b, db, ca = pair()
    da.on_request_sent("a", 1)
    exchange(a, b)
    fresh = ReplicaSync("r-a", store(), codec=Codec(KEY), clock=ca)  # same id, new epoch
    assert exchange(fresh, b)
    load = db.load_of("a")
    assert load is not None
    assert load.inflight == 0
    assert len(b.peers()) == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * 40, DropReason.UNAUTHENTICATED),
        (b"x" * (600 * 1024), DropReason.OVERSIZE),
    ],
)
def test_garbage_is_dropped_and_counted(data: bytes, reason: DropReason) -> None:
    _, _, b, _, _ = pair()
    assert not b.merge(data)
    assert b.stats.dropped == {reason: 1}


def _signed(body: dict[str, object]) -> bytes:
    import hashlib
    import hmac

    raw = msgpack.packb(body)
    return hmac.digest(KEY, raw, hashlib.sha256) + raw


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"v": 2, "r": "x", "e": 1, "s": 1, "k": "d"}, DropReason.VERSION),
        ({"v": 1, "r": "x", "e": 1, "s": -1, "k": "d"}, DropReason.MALFORMED),
        ({"v": 1, "r": "x", "e": 1, "s": 1, "k": "d", "l": {"a": [1, 2]}}, DropReason.MALFORMED),
        (
            {"v": 1, "r": "x", "e": 1, "s": 1, "k": "d", "l": {"a": [-5, 0, 0, {}]}},
            DropReason.MALFORMED,
        ),
        ({"v": 1, "r": "r-b", "e": 1, "s": 1, "k": "d"}, DropReason.OWN),
    ],
)
def test_malformed_messages_are_never_applied(body: dict[str, object], reason: DropReason) -> None:
    _, _, b, db, _ = pair()
    assert not b.merge(_signed(body))
    assert b.stats.dropped == {reason: 1}
    assert all(e.load.inflight == 0 for e in db.endpoints())
    assert b.peers() == {}


def test_a_valid_message_from_a_stranger_without_the_pool_key_is_dropped() -> None:
    _, _, b, db, _ = pair()
    forged = Codec(b"stranger-key" * 3).encode(
        Message("evil", 1, 1, False, {"a": (100, 0, 10_000, {})})
    )
    assert not b.merge(forged)
    assert b.stats.dropped == {DropReason.UNAUTHENTICATED: 1}
    load = db.load_of("a")
    assert load is not None
    assert load.inflight == 0


def _scorer_pair() -> tuple[PrefixCacheScorer, PrefixCacheScorer, ReplicaSync, ReplicaSync]:
    sa, sb = PrefixCacheScorer("p"), PrefixCacheScorer("p")
    for s in (sa, sb):
        s._observe(0.0, store().endpoints())  # both have seen servers a and b
    a = ReplicaSync("r-a", store(), [sa], codec=Codec(KEY), clock=Clock())
    b = ReplicaSync("r-b", store(), [sb], codec=Codec(KEY), clock=Clock())
    return sa, sb, a, b


def test_prefix_inserts_are_replicated_once_and_not_republished() -> None:
    sa, sb, a, b = _scorer_pair()
    sa.index.add("a", [1, 2, 3])
    sa._outbox = [["a", [1, 2, 3]]]  # what pre_request records
    assert exchange(a, b)
    assert sb.index.match_longest_prefix([1, 2, 3, 4]) == {"a": 3}
    assert sb.drain_replicated() == []  # merged entries are not echoed back


def test_a_malformed_prefix_entry_rejects_the_message_and_applies_nothing() -> None:
    sa, sb, a, b = _scorer_pair()
    sa._outbox = [["a", [1, 2]], ["b", ["not-a-hash"]]]
    assert not exchange(a, b)
    assert b.stats.dropped == {DropReason.REJECTED: 1}
    assert len(sb.index) == 0
    assert b.peers() == {}


def test_entries_for_servers_not_yet_seen_are_kept_until_pruned() -> None:
    sa, sb, a, b = _scorer_pair()
    sa._outbox = [["new", [9, 8]]]
    assert exchange(a, b)
    assert sb.index.match_longest_prefix([9, 8]) == {"new": 2}
    sb._observe(1000.0, store().endpoints())  # "new" never showed up in a cycle: pruned
    assert len(sb.index) == 0


def test_an_idle_replica_sends_heartbeats_only() -> None:
    clock = Clock()
    s = ReplicaSync("r", store(), clock=clock)
    assert s.flush() is not None  # first full
    assert s.flush() is None
    clock.t = 0.25
    assert s.flush() is not None  # heartbeat
