"""The ZeroMQ shell on loopback: real PUB/SUB sockets with CurveZMQ keys from files.

Two replicas holding the pool key converge; a third with another key is never merged and its
failed handshakes are counted; peers join and leave without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import zmq.auth
from prometheus_client import CollectorRegistry

from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError
from kvroute.replicasync.core import ReplicaSync
from kvroute.replicasync.metrics import SyncCollector
from kvroute.replicasync.transport import CurveKeys, SyncTransport
from kvroute.replicasync.wire import Codec, DropReason

pytestmark = pytest.mark.timeout(30)


def _keys(tmp: Path, name: str) -> CurveKeys:
    tmp.mkdir(parents=True, exist_ok=True)
    _, secret_file = zmq.auth.create_certificates(tmp, name)
    return CurveKeys.load(Path(secret_file))


def _store() -> Datastore:
    ds = Datastore()
    ds.upsert_endpoint("a", "10.0.0.1", 8000)
    return ds


@contextlib.asynccontextmanager
async def _replica(rid: str, keys: CurveKeys) -> AsyncIterator[tuple[SyncTransport, Datastore]]:
    ds = _store()
    core = ReplicaSync(rid, ds, codec=Codec(keys.hmac_key), heartbeat_s=0.05)
    t = SyncTransport(core, keys, bind="tcp://127.0.0.1:0", interval_s=0.005)
    task = asyncio.create_task(t.run())
    try:
        yield t, ds
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(cond: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_two_replicas_with_the_pool_key_converge_and_a_stranger_is_rejected(
    tmp_path: Path,
) -> None:
    pool = _keys(tmp_path, "pool")
    other = _keys(tmp_path / "x", "stranger")
    async with (
        _replica("r1", pool) as (t1, d1),
        _replica("r2", pool) as (t2, d2),
        _replica("evil", other) as (t3, d3),
    ):
        t1.set_peers([t2.endpoint, t3.endpoint])
        t2.set_peers([t1.endpoint])
        t3.set_peers([t1.endpoint, t2.endpoint])
        d2.on_request_sent("a", 10)
        d2.on_request_sent("a", 10)
        d3.on_request_sent("a", 999)  # the stranger's counts must never reach r1
        load = d1.load_of("a")
        assert load is not None
        await _until(lambda: load.inflight == 2)
        assert load.remote_tokens == 20
        await _until(lambda: t1.core.stats.dropped.get(DropReason.UNAUTHENTICATED, 0) > 0)
        assert set(t1.core.peers()) == {"r2"}
        assert t3.core.peers() == {}  # nothing from the pool reaches the stranger either
        d2.on_request_finished("a", 10)
        await _until(lambda: load.inflight == 1)
        registry = CollectorRegistry()
        registry.register(SyncCollector(t1.core))
        assert registry.get_sample_value("kvroute_replica_sync_peers_connected") == 1
        dropped = registry.get_sample_value(
            "kvroute_replica_sync_messages_dropped_total", {"reason": "unauthenticated"}
        )
        assert dropped is not None
        assert dropped > 0
        age = registry.get_sample_value("kvroute_replica_sync_last_merge_age_seconds")
        assert age is not None
        assert 0 <= age < 1


async def test_peers_join_and_leave_without_restart(tmp_path: Path) -> None:
    pool = _keys(tmp_path, "pool")
    async with _replica("r1", pool) as (t1, d1), _replica("r2", pool) as (t2, d2):
        d2.on_request_sent("a", 5)
        load = d1.load_of("a")
        assert load is not None
        await asyncio.sleep(0.2)
        assert load.inflight == 0  # not peered yet
        t1.set_peers([t2.endpoint])  # join
        await _until(lambda: load.inflight == 1)
        t1.set_peers([])  # leave: r2 goes silent and ages out (0.5 s)
        assert t1.peer_endpoints == frozenset()
        await _until(lambda: "r2" not in t1.core.peers(), within=3.0)
        assert load.inflight == 0


def test_a_key_file_without_a_secret_is_rejected(tmp_path: Path) -> None:
    public_file, _ = zmq.auth.create_certificates(tmp_path, "pool")
    with pytest.raises(ConfigError, match="--sync-key-file"):
        CurveKeys.load(Path(public_file))
