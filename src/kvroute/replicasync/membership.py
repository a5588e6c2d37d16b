"""Kubernetes membership for replica sync: one ``coordination.k8s.io/v1`` Lease per replica.

Each replica keeps a Lease ``kvroute-sync-<replica id>`` labelled ``kvroute.io/sync-group:
<group>`` whose ``holderIdentity`` is its advertised sync endpoint (``tcp://POD_IP:PORT``),
renewed every ``renew_s``; it watches the group's Leases (list-then-watch, the k8s package's
:class:`~kvroute.k8s.reflector.Reflector`) and hands the live holders to ``on_peers``
(:meth:`SyncTransport.set_peers`) whenever the set changes: replicas join and leave without a
restart and no leader is involved. A Lease is live while it changed within its
``leaseDurationSeconds`` *as seen by this replica's clock* (the renew time written by another
replica is never compared with ours); a stopping replica deletes its Lease.

Tested against the repository's fake API server (``tests/k8s_apiserver``) with the real
lightkube client; RBAC: ``leases`` get, list, watch, create, update, delete in the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kvroute.k8s.reflector import Reflector

log = logging.getLogger(__name__)

GROUP_LABEL = "kvroute.io/sync-group"


class LeaseMembership:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        group: str,
        replica_id: str,
        endpoint: str,
        on_peers: Callable[[list[str]], None],
        renew_s: float = 2.0,
        duration_s: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.namespace, self.group, self.endpoint = namespace, group, endpoint
        self.name = f"kvroute-sync-{replica_id}"
        self._on_peers = on_peers
        self._renew_s, self._duration = renew_s, duration_s
        self._clock = clock
        self._seen: dict[str, tuple[str, float]] = {}  # lease key -> (renewTime, seen at)
        self._cache: Mapping[str, Any] = {}
        self.peers: list[str] = []
        self._reflector = Reflector(
            client, Lease, namespace=namespace, on_change=self._changed, labels={GROUP_LABEL: group}
        )

    def _changed(self, cache: Mapping[str, Any]) -> None:
        self._cache = cache
        self._recompute()

    def _recompute(self) -> None:
        now = self._clock()
        live = []
        for key, lease in self._cache.items():
            spec = lease.spec or LeaseSpec()
            stamp = str(spec.renewTime)
            prev = self._seen.get(key)
            if prev is None or prev[0] != stamp:
                self._seen[key] = prev = (stamp, now)
            holder = spec.holderIdentity or ""
            ttl = float(spec.leaseDurationSeconds or self._duration)
            if holder and holder != self.endpoint and now - prev[1] <= ttl:
                live.append(holder)
        for key in [k for k in self._seen if k not in self._cache]:
            del self._seen[key]
        live.sort()
        if live != self.peers:
            self.peers = live
            self._on_peers(list(live))

    async def renew(self) -> None:
        spec = LeaseSpec(
            holderIdentity=self.endpoint,
            leaseDurationSeconds=self._duration,
            renewTime=dt.datetime.now(dt.UTC),
        )
        try:
            lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            meta = ObjectMeta(
                name=self.name, namespace=self.namespace, labels={GROUP_LABEL: self.group}
            )
            await self._client.create(Lease(metadata=meta, spec=spec))
            return
        lease.spec = spec
        await self._client.replace(lease)

    async def run(self) -> None:
        watch = asyncio.create_task(self._reflector.run())
        try:
            while True:
                try:
                    await self.renew()
                except ApiError as exc:
                    log.warning("replica sync lease %s: %s", self.name, exc)
                self._recompute()  # ages out peers that stopped renewing
                await asyncio.sleep(self._renew_s)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._client.delete(Lease, self.name, namespace=self.namespace)
                )
