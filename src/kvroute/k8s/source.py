"""The Kubernetes endpoint source the EPP's composition root runs (``kvroute.app.EndpointSource``).

It owns the API client, the :class:`~kvroute.k8s.controller.PoolController` and, with
``--ha-enable-leader-election``, the :class:`~kvroute.k8s.leader.LeaderElector`, and exposes the
signals the gRPC health service reads, with upstream's semantics (``cmd/epp/runner/health.go``):

* without leader election every service name is SERVING once the pool has synced;
* with it, ``liveness`` is always SERVING, and ``readiness``, ``""`` and
  ``envoy.service.ext_proc.v3.ExternalProcessor`` need synced **and** leader (active-passive).

Every replica watches and keeps its datastore warm whether or not it leads, so a failover only
has to wait for the lease, never for a relist. Only the leader writes InferenceModel status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from pydantic import ValidationError

from kvroute.api import RESOURCE_KINDS, Resource
from kvroute.config.resources import ResourceSet
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError
from kvroute.k8s.controller import PoolController, PoolResources
from kvroute.k8s.endpoints import PoolSpec, PoolSpecError, parse_endpoint_selector
from kvroute.k8s.leader import LeaderElector
from kvroute.k8s.resources import GROUP_V1, PoolRef, lease_name

log = logging.getLogger(__name__)

LIVENESS = "liveness"

# ObjectMeta keys kvroute's API models know; the server adds others (managedFields etc.).
_META_KEYS = (
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
)


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """client-go's defaults; tests shorten them."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def default_identity() -> str:
    """``POD_NAME`` (downward API) when set, else ``hostname_uuid`` as client-go does."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4()}"


def _default_client() -> AsyncClient:
    # In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config.
    return AsyncClient(field_manager="kvroute-epp")


def client_factory_from_env() -> Callable[[], AsyncClient]:
    """Resolve the cluster configuration now, so a missing one fails at startup with a
    :class:`ConfigError` (exit 2) instead of inside a background task."""
    try:
        config = KubeConfig.from_env()
    except LightkubeConfigError as exc:
        raise ConfigError(
            f"no Kubernetes configuration ({exc}): run in a pod with a service account, "
            "or set KUBECONFIG; without Kubernetes, name servers with --endpoint URL"
        ) from None
    return lambda: AsyncClient(config=config, field_manager="kvroute-epp")


def to_resource_set(resources: PoolResources) -> ResourceSet:
    """Validate the watched objects with kvroute's API models; invalid ones are skipped."""
    objects: list[Resource] = []
    for obj in (*resources.models, *resources.objectives, *resources.rewrites):
        model = RESOURCE_KINDS.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
        if model is None:
            continue
        meta = obj.get("metadata") or {}
        doc = {**obj, "metadata": {k: meta[k] for k in _META_KEYS if k in meta}}
        try:
            objects.append(model.model_validate(doc, by_alias=True, by_name=False))  # type: ignore[arg-type]
        except ValidationError as exc:
            log.warning(
                "ignoring invalid %s %s/%s: %s",
                obj.get("kind"),
                meta.get("namespace"),
                meta.get("name"),
                exc.errors()[0]["msg"] if exc.errors() else exc,
            )
    return ResourceSet.from_objects(objects)


class KubernetesEndpointSource:
    """``EndpointSource`` backed by Kubernetes: pool mode or standalone mode, optional HA.

    Args:
        pool: pool mode (``--pool-name``...); exclusive with ``standalone``.
        standalone: standalone mode (``--endpoint-selector``/``--endpoint-target-ports``).
        namespace: pods' namespace in standalone mode.
        leader_election: ``--ha-enable-leader-election``.
        on_resources: receives the pool's models/objectives/rewrites as a
            :class:`~kvroute.config.resources.ResourceSet` whenever they change.
        client_factory: builds the lightkube client (tests point it at a fake API server).
    """

    def __init__(
        self,
        *,
        pool: PoolRef | None = None,
        standalone: PoolSpec | None = None,
        namespace: str = "default",
        leader_election: bool = False,
        identity: str | None = None,
        on_resources: Callable[[ResourceSet], None] | None = None,
        client_factory: Callable[[], AsyncClient] = _default_client,
        lease: LeaseTimings = LeaseTimings(),
        controller_options: Mapping[str, Any] | None = None,
    ) -> None:
        if leader_election and pool is None:
            raise ConfigError(
                "--ha-enable-leader-election needs --pool-name (the Lease is named after the pool)"
            )
        self.pool = pool
        self.standalone = standalone
        self.namespace = pool.namespace if pool is not None else namespace
        self.leader_election = leader_election
        self.identity = identity or default_identity()
        self.on_resources = on_resources
        self._client_factory = client_factory
        self._lease = lease
        self._controller_options = dict(controller_options or {})
        self.controller: PoolController | None = None
        self.elector: LeaderElector | None = None

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> KubernetesEndpointSource:
        """From ``kvroute.settings.EppSettings`` (``--pool-*``, ``--endpoint-*``, ``--ha-*``).

        Without a ``client_factory`` keyword the cluster configuration is resolved here (in-cluster
        service account, then ``$KUBECONFIG``/``~/.kube/config``)."""
        leader = bool(getattr(settings, "ha_enable_leader_election", False))
        if "client_factory" not in kwargs:
            kwargs["client_factory"] = client_factory_from_env()
        if settings.pool_name:
            group = getattr(settings, "pool_group", GROUP_V1) or GROUP_V1
            try:
                pool = PoolRef(settings.pool_name, settings.pool_namespace, group)
            except ValueError as exc:
                raise ConfigError(f"--pool-group: {exc}") from exc
            return cls(pool=pool, leader_election=leader, **kwargs)
        try:
            spec = PoolSpec(
                selector=parse_endpoint_selector(settings.endpoint_selector),
                target_ports=tuple(settings.endpoint_target_ports),
            )
        except PoolSpecError as exc:
            raise ConfigError(f"--endpoint-selector/--endpoint-target-ports: {exc}") from exc
        return cls(
            standalone=spec, namespace=settings.pool_namespace, leader_election=leader, **kwargs
        )

    # -- health signals ----------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True when this replica may serve (always, without leader election)."""
        if not self.leader_election:
            return True
        return self.elector is not None and self.elector.is_leader

    @property
    def synced(self) -> bool:
        """Readiness: the pool and its pods are listed, and (HA) this replica leads."""
        ctl = self.controller
        return ctl is not None and ctl.synced.is_set() and self.is_leader

    def serving(self, service: str) -> bool:
        """Upstream's per-service health answer (``liveness`` is exempt from leadership)."""
        if self.leader_election and service == LIVENESS:
            return True
        return self.synced

    # -- lifecycle ---------------------------------------------------------------------------
    def _resources_changed(self, resources: PoolResources) -> None:
        if self.on_resources is not None:
            self.on_resources(to_resource_set(resources))

    async def run(self, datastore: Datastore) -> None:
        client = self._client_factory()
        try:
            if self.leader_election:
                assert self.pool is not None
                self.elector = LeaderElector(
                    client,
                    name=lease_name(self.pool),
                    namespace=self.pool.namespace,
                    identity=self.identity,
                    lease_duration=self._lease.lease_duration,
                    renew_deadline=self._lease.renew_deadline,
                    retry_period=self._lease.retry_period,
                    on_change=self._leadership_changed,
                )
            elector = self.elector
            self.controller = PoolController(
                client,
                datastore,
                pool=self.pool,
                standalone=self.standalone,
                namespace=self.namespace,
                on_resources=self._resources_changed if self.pool is not None else None,
                may_write_status=(lambda: self.is_leader) if self.pool is not None else None,
                **self._controller_options,
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.controller.run(), name="k8s-controller")
                if elector is not None:
                    tg.create_task(elector.run(), name="k8s-leader-election")
        finally:
            await client.close()

    def _leadership_changed(self, leading: bool) -> None:
        if leading and self.controller is not None:
            self.controller.mark_status_dirty()  # a new leader re-checks model status at once
