"""Build one replica's sync from the EPP's settings (the app runs :meth:`SyncTransport.run`)."""

from __future__ import annotations

from collections.abc import Iterable

from kvroute.datastore.store import Datastore
from kvroute.plugins.lifecycle import ReplicatedState
from kvroute.replicasync.core import ReplicaSync
from kvroute.replicasync.membership import LeaseMembership
from kvroute.replicasync.transport import CurveKeys, SyncTransport
from kvroute.replicasync.wire import Codec
from kvroute.settings import EppSettings


def build_sync(
    settings: EppSettings, datastore: Datastore, states: Iterable[ReplicatedState]
) -> SyncTransport | None:
    """The sync transport ``settings`` ask for (``--sync-port``), or None when sync is off."""
    if settings.sync_port is None or settings.sync_key_file is None:
        return None
    keys = CurveKeys.load(settings.sync_key_file, settings.sync_authorized_keys)
    timeout = settings.sync_peer_timeout_s
    core = ReplicaSync(
        settings.replica_id,
        datastore,
        states,
        codec=Codec(keys.hmac_key),
        peer_timeout_s=timeout,
        heartbeat_s=timeout / 4,  # four missed heartbeats age a peer out
    )
    host = settings.bind_host if settings.bind_host not in ("", "::") else "0.0.0.0"
    return SyncTransport(
        core,
        keys,
        bind=f"tcp://{host}:{settings.sync_port}",
        peers=settings.sync_peers,
        interval_s=settings.sync_interval_s,
    )


def build_membership(settings: EppSettings, transport: SyncTransport) -> LeaseMembership | None:
    """Lease membership (``--sync-lease-group``) feeding ``transport``'s peers, or None."""
    if not settings.sync_lease_group:
        return None
    from kvroute.k8s.source import client_factory_from_env

    static = list(settings.sync_peers)

    def on_peers(peers: list[str]) -> None:
        transport.set_peers([*static, *peers])

    return LeaseMembership(
        client_factory_from_env()(),
        namespace=settings.pool_namespace,
        group=settings.sync_lease_group,
        replica_id=settings.replica_id,
        endpoint=f"{settings.sync_advertise}:{transport.port}",
        on_peers=on_peers,
    )
