"""Replica sync wired into the EPP: two real EppApps, real gRPC ext_proc streams, real ZeroMQ.

A request routed by one replica shows up in the other's in-flight ledger and prefix index, the
``/metrics`` page reports the peer, and the settings refuse an unauthenticated sync.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
import zmq.auth
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvroute.app import EppApp
from kvroute.config.epp_config import default_config_text
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError
from kvroute.plugins.registry import default_registry
from kvroute.replicasync.service import build_sync
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.settings import EppSettings
from tests.unit.extproc.test_stream import req_body, req_headers

pytestmark = pytest.mark.timeout(30)

# Long enough for many prefix blocks (64 characters each by default).
COMPLETION = json.dumps({"model": "food-review", "prompt": "You are a helpful bot. " * 40}).encode()


def _settings(key: Path, rid: str) -> EppSettings:
    """Nothing listens on the endpoints, so their metrics stay stale and flow control would
    hold every request as saturated; these tests are about sync, so it is off."""
    return EppSettings(
        config_text=default_config_text(default_registry()) + "flowControl: {enabled: false}\n",
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=(("127.0.0.1", 1), ("127.0.0.1", 2)),
        secure_serving=False,
        sync_port=0,
        sync_key_file=key,
        replica_id=rid,
    )


async def _until(cond: Callable[[], bool], within: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + within
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def _prefix(app: EppApp) -> PrefixCacheScorer:
    assert app.sync is not None
    (scorer,) = [s for s in app.sync.core._states.values() if isinstance(s, PrefixCacheScorer)]
    return scorer


async def test_a_request_routed_by_one_replica_reaches_the_others_view(tmp_path: Path) -> None:
    _, key = zmq.auth.create_certificates(tmp_path, "pool")
    async with (
        EppApp(_settings(Path(key), "epp-0")) as a,
        EppApp(_settings(Path(key), "epp-1")) as b,
    ):
        assert a.sync is not None
        assert b.sync is not None
        a.sync.set_peers([b.sync.endpoint])
        b.sync.set_peers([a.sync.endpoint])
        await _until(lambda: set(b.sync.core.peers()) == {"epp-0"})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.ports.grpc}") as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process()
            await call.write(req_headers())
            await call.write(req_body(COMPLETION))
            assert (await call.read()).WhichOneof("response") == "request_headers"
            assert (await call.read()).WhichOneof("response") == "request_body"
            # routed by a and still running: b counts it as a peer's request
            await _until(lambda: sum(e.load.remote_inflight for e in b.datastore.endpoints()) == 1)
            assert sum(e.load.inflight for e in b.datastore.endpoints()) == 1
            held = sum(_prefix(b).blocks_held(e.name) for e in b.datastore.endpoints())
            assert held > 0  # a's prefix insert is in b's index
            call.cancel()
        await _until(lambda: sum(e.load.inflight for e in b.datastore.endpoints()) == 0)
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{b.ports.metrics}/metrics")).text
        assert "kvroute_replica_sync_peers_connected 1.0" in text
        assert 'kvroute_replica_sync_messages_dropped_total{reason="unauthenticated"} 0.0' in text
        assert "kvroute_replica_sync_last_expired_peer_silence_seconds -1.0" in text


def test_sync_without_a_key_or_with_peers_but_no_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="--sync-key-file"):
        EppSettings(sync_port=9100)
    with pytest.raises(ConfigError, match="--sync-port"):
        EppSettings(sync_peers=("tcp://127.0.0.1:9100",))
    with pytest.raises(ConfigError, match="--sync-advertise"):
        EppSettings(
            sync_port=9100, sync_key_file=Path("k"), sync_lease_group="g", sync_advertise=""
        )
    with pytest.raises(ConfigError, match="--sync-interval"):
        EppSettings(sync_interval_s=0.0)
    with pytest.raises(ConfigError, match="--sync-peer-timeout"):
        EppSettings(sync_peer_timeout_s=0.01)  # under 4 publish intervals (5 ms)
    with pytest.raises(ConfigError, match="--sync-peer-timeout"):
        EppSettings(sync_peer_timeout_s=120.0)


async def test_the_peer_timeout_flag_reaches_the_core(tmp_path: Path) -> None:
    _, secret = zmq.auth.create_certificates(tmp_path, "pool")
    settings = EppSettings(sync_port=0, sync_key_file=Path(secret), sync_peer_timeout_s=0.3)
    transport = build_sync(settings, Datastore(), ())
    assert transport is not None
    try:
        assert transport.core._timeout == 0.3
        assert transport.core._heartbeat == pytest.approx(0.075)
    finally:
        transport.close()
