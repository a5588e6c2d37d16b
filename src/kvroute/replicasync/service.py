"""Build one replica's sync from the EPP's settings (the app runs :meth:`SyncTransport.run`)."""

from __future__ import annotations

from collections.abc import Iterable

from kvroute.datastore.store import Datastore
from kvroute.plugins.lifecycle import ReplicatedState
from kvroute.replicasync.core import ReplicaSync
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
    core = ReplicaSync(settings.replica_id, datastore, states, codec=Codec(keys.hmac_key))
    host = settings.bind_host if settings.bind_host not in ("", "::") else "0.0.0.0"
    return SyncTransport(
        core,
        keys,
        bind=f"tcp://{host}:{settings.sync_port}",
        peers=settings.sync_peers,
        interval_s=settings.sync_interval_s,
    )
