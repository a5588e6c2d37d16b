"""The EPP's Kubernetes controller: pool → pods → datastore endpoints, and the pool's models.

Two modes, as upstream:

* **pool mode** (``--pool-name``/``--pool-namespace``/``--pool-group``): watch the one
  InferencePool (either API group) for its selector and target ports; watch the pods that selector
  matches; watch the InferenceModels/Objectives/Rewrites in the namespace whose ``poolRef`` names
  the pool, hand them to ``on_resources`` and write each InferenceModel's ``Accepted`` condition.
  Objectives and rewrites are watched under ``llm-d.ai`` (llm-d-router v0.10) and the legacy
  ``inference.networking.x-k8s.io``; once ``llm-d.ai`` is served only its objects are used;
* **standalone mode** (``--endpoint-selector``/``--endpoint-target-ports``): no CRDs; a fixed
  :class:`~kvroute.k8s.endpoints.PoolSpec`, pods only.

A change of selector restarts the pod watch with the new label selector (a full resync); a change of
target ports only recomputes endpoints from the cached pods. Endpoints are reconciled by diffing the
desired set (:func:`~kvroute.k8s.endpoints.desired_endpoints`) against what was last applied, so
relists after a 410 or a reconnect converge without duplicates or losses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lightkube import AsyncClient
from lightkube.types import PatchType

from kvroute.backoff import Backoff
from kvroute.k8s import status as model_status
from kvroute.k8s.endpoints import (
    EndpointSpec,
    PodInfo,
    PoolSpec,
    PoolSpecError,
    desired_endpoints,
    diff,
    pod_info_from_object,
    pool_spec_from_object,
)
from kvroute.k8s.reflector import Reflector
from kvroute.k8s.resources import (
    POOL_KINDS,
    InferenceModel,
    InferenceModelRewrite,
    InferenceModelRewriteLlmD,
    InferenceObjective,
    InferenceObjectiveLlmD,
    Pod,
    PoolRef,
    as_dict,
)

log = logging.getLogger(__name__)


class EndpointSink(Protocol):
    """Where endpoints go: :class:`kvroute.datastore.store.Datastore` satisfies it."""

    def upsert_endpoint(
        self,
        name: str,
        address: str,
        port: int,
        labels: Mapping[str, str] | None = None,
        *,
        node_address: str = "",
    ) -> object: ...

    def remove_endpoint(self, name: str) -> object: ...


_LLM_D = "@llm-d.ai"  # reflector-key suffix of the llm-d.ai objective/rewrite watches


@dataclass(frozen=True, slots=True)
class PoolResources:
    """The InferenceModels, InferenceObjectives and InferenceModelRewrites that reference the pool,
    as plain dicts (the wire shape), sorted by namespace/name."""

    models: tuple[dict[str, Any], ...] = ()
    objectives: tuple[dict[str, Any], ...] = ()
    rewrites: tuple[dict[str, Any], ...] = ()


def references_pool(obj: Mapping[str, Any], pool: PoolRef) -> bool:
    """True when ``spec.poolRef`` names ``pool`` (same namespace; kind InferencePool if given)."""
    ref = (obj.get("spec") or {}).get("poolRef") or {}
    kind = ref.get("kind") or "InferencePool"
    return bool(ref.get("name") == pool.name and kind == "InferencePool")


def _condition_fingerprint(conditions: list[Mapping[str, Any]]) -> tuple[Any, ...]:
    """Conditions minus ``lastTransitionTime`` (which is clock-dependent), hashable."""
    keys = ("type", "status", "reason", "message", "observedGeneration")
    return tuple(tuple(c.get(k) for k in keys) for c in conditions)


class PoolController:
    """Runs the watches; see the module docstring.

    Args:
        client: a lightkube ``AsyncClient``.
        sink: receives ``upsert_endpoint``/``remove_endpoint`` calls.
        pool: pool mode: the InferencePool to serve. Exactly one of ``pool``/``standalone``.
        standalone: standalone mode: the fixed selector and ports.
        namespace: the namespace of pods (pool mode uses ``pool.namespace``).
        on_resources: called with the pool's models/objectives/rewrites whenever they change.
        may_write_status: returns whether this replica may write status (the HA leader only);
            ``None`` disables status writes.
    """

    def __init__(
        self,
        client: AsyncClient,
        sink: EndpointSink,
        *,
        pool: PoolRef | None = None,
        standalone: PoolSpec | None = None,
        namespace: str = "default",
        on_resources: Callable[[PoolResources], None] | None = None,
        may_write_status: Callable[[], bool] | None = None,
        backoff: Backoff | None = None,
        watch_timeout: int = 300,
        status_resync: float = 10.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        if (pool is None) == (standalone is None):
            raise ValueError("give exactly one of pool= (pool mode) or standalone= (standalone)")
        self._client = client
        self._sink = sink
        self.pool = pool
        self.namespace = pool.namespace if pool is not None else namespace
        self._on_resources = on_resources
        self._may_write_status = may_write_status
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout
        self._status_resync = status_resync
        self._clock = clock
        self.spec: PoolSpec | None = standalone
        self._pods: dict[str, PodInfo] = {}
        self._pod_memo: dict[str, tuple[str, PodInfo]] = {}
        self._applied: dict[str, EndpointSpec] = {}  # endpoint name -> what the sink holds
        self._by_pod: dict[str, dict[str, EndpointSpec]] = {}  # pod key -> its endpoints
        self._selector_changed = asyncio.Event()
        self._pod_generation = 0
        self._status_dirty = asyncio.Event()
        self._resources: dict[str, tuple[dict[str, Any], ...]] = {}
        self._warned_legacy: set[str] = set()
        self._pods_synced = asyncio.Event()
        self.synced = asyncio.Event()  # pool (or standalone spec) known and its pods listed
        self.pod_reflector: Reflector | None = None
        self.pool_reflector: Reflector | None = None
        self.resource_reflectors: dict[str, Reflector] = {}
        self.status_writes = 0
        self._last_status_write: dict[tuple[str, str], tuple[str, tuple[Any, ...]]] = {}

    # -- public ------------------------------------------------------------------------------
    @property
    def endpoints(self) -> Mapping[str, EndpointSpec]:
        """What was last applied to the sink."""
        return dict(self._applied)

    def mark_status_dirty(self) -> None:
        """Re-evaluate model status now (call when this replica becomes leader)."""
        self._status_dirty.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.pool is not None:
                self.pool_reflector = Reflector(
                    self._client,
                    POOL_KINDS[self.pool.group],
                    namespace=self.namespace,
                    fields={"metadata.name": self.pool.name},
                    on_change=self._on_pool,
                    backoff=self._backoff,
                    watch_timeout=self._watch_timeout,
                )
                tg.create_task(self.pool_reflector.run(), name="k8s-pool")
                for key, kind in (
                    ("models", InferenceModel),
                    ("objectives", InferenceObjective),
                    ("rewrites", InferenceModelRewrite),
                    (f"objectives{_LLM_D}", InferenceObjectiveLlmD),
                    (f"rewrites{_LLM_D}", InferenceModelRewriteLlmD),
                ):
                    reflector = Reflector(
                        self._client,
                        kind,
                        namespace=self.namespace,
                        on_change=self._resource_handler(key),
                        backoff=self._backoff,
                        watch_timeout=self._watch_timeout,
                    )
                    self.resource_reflectors[key] = reflector
                    tg.create_task(reflector.run(), name=f"k8s-{key}")
                if self._may_write_status is not None:
                    tg.create_task(self._status_loop(), name="k8s-model-status")
            tg.create_task(self._pods_loop(), name="k8s-pods")

    # -- pool --------------------------------------------------------------------------------
    def _on_pool(self, cache: Mapping[str, Any]) -> None:
        assert self.pool is not None
        obj = cache.get(f"{self.namespace}/{self.pool.name}")
        new: PoolSpec | None = None
        if obj is not None:
            try:
                new = pool_spec_from_object(as_dict(obj))
            except (PoolSpecError, KeyError, TypeError, ValueError) as exc:
                log.error(
                    "InferencePool %s is invalid (%s); keeping the last good spec",
                    self.pool.name,
                    exc,
                )
                new = self.spec
        self._set_spec(new)

    def _set_spec(self, new: PoolSpec | None) -> None:
        old = self.spec
        if new == old:
            self._update_synced()
            return
        self.spec = new
        old_sel = None if old is None else dict(old.selector)
        new_sel = None if new is None else dict(new.selector)
        if old_sel != new_sel:
            log.info("pool selector changed %s -> %s; resyncing pods", old_sel, new_sel)
            self._pod_generation += 1  # the old watch's late events are ignored from now on
            self._pods_synced.clear()
            self._selector_changed.set()
        self._reconcile()
        self._update_synced()

    # -- pods --------------------------------------------------------------------------------
    async def _pods_loop(self) -> None:
        while True:
            self._selector_changed.clear()
            self._pod_generation += 1  # retire the previous watch's callbacks
            spec = self.spec
            if spec is None:
                self._pods.clear()
                self._pod_memo.clear()
                self._reconcile()
                await self._selector_changed.wait()
                continue
            self._pod_generation += 1
            generation = self._pod_generation

            def on_change(cache: Mapping[str, Any], generation: int = generation) -> None:
                # A superseded watch (old selector) may still deliver until it is cancelled.
                if generation == self._pod_generation:
                    self._on_pods(cache)

            reflector = Reflector(
                self._client,
                Pod,
                namespace=self.namespace,
                labels=dict(spec.selector),
                on_change=on_change,
                backoff=self._backoff,
                watch_timeout=self._watch_timeout,
            )
            self.pod_reflector = reflector
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(reflector.run(), name="k8s-pod-reflector")
                await self._selector_changed.wait()
                task.cancel()

    def _on_pods(self, cache: Mapping[str, Any]) -> None:
        """Every event hands over the whole cache; only pods whose resourceVersion moved (or that
        appeared/disappeared) are re-read and re-reconciled, so one pod event costs O(1) endpoint
        work plus an O(pods) scan of cheap dict lookups, not O(pods x ports)."""
        changed: list[str] = []
        for key, obj in cache.items():
            rv = obj.metadata.resourceVersion or ""
            hit = self._pod_memo.get(key)
            if hit is not None and rv and hit[0] == rv:
                continue
            info = pod_info_from_object(obj)
            self._pod_memo[key] = (rv, info)
            self._pods[key] = info
            changed.append(key)
        for key in [k for k in self._pods if k not in cache]:
            del self._pods[key]
            self._pod_memo.pop(key, None)
            changed.append(key)
        self._pods_synced.set()
        self._reconcile(changed)
        self._update_synced()

    def _reconcile(self, pod_keys: list[str] | None = None) -> None:
        """Bring the sink to the desired endpoints of ``pod_keys`` (all pods when None)."""
        keys = list(self._by_pod.keys() | self._pods.keys()) if pod_keys is None else pod_keys
        upserts = removals = 0
        for key in keys:
            info = self._pods.get(key)
            desired = desired_endpoints(self.spec, [info] if info is not None else [])
            change = diff(self._by_pod.get(key, {}), desired)
            for name in change.removals:
                self._sink.remove_endpoint(name)
                del self._applied[name]
            for ep in change.upserts:
                self._sink.upsert_endpoint(
                    ep.name, ep.address, ep.port, ep.labels, node_address=ep.node_address
                )
                self._applied[ep.name] = ep
            if desired:
                self._by_pod[key] = desired
            else:
                self._by_pod.pop(key, None)
            upserts += len(change.upserts)
            removals += len(change.removals)
        if upserts or removals:
            log.info("endpoints: +%d -%d (now %d)", upserts, removals, len(self._applied))

    def _update_synced(self) -> None:
        # As upstream's PoolHasSynced: ready once the pool is known and its pods were listed; a
        # pool that does not exist keeps the EPP unready. It stays set afterwards (a later pool
        # deletion empties the endpoint set instead).
        if self.spec is not None and self._pods_synced.is_set():
            self.synced.set()

    # -- models, objectives, rewrites --------------------------------------------------------
    def _resource_handler(self, key: str) -> Callable[[Mapping[str, Any]], None]:
        def handle(cache: Mapping[str, Any]) -> None:
            assert self.pool is not None
            objs = tuple(as_dict(cache[k]) for k in sorted(cache))
            self._resources[key] = tuple(o for o in objs if references_pool(o, self.pool))
            if key == "models":
                self._status_dirty.set()
            if self._on_resources is not None:
                self._on_resources(self._pool_resources())

        return handle

    def _pool_resources(self) -> PoolResources:
        """Objectives and rewrites from ``llm-d.ai`` once that group is served (its reflector
        listed; with both installed only it is used, as llm-d-router), else the legacy group's,
        with a deprecation warning the first time legacy objects are in use."""
        chosen: dict[str, tuple[dict[str, Any], ...]] = {
            "models": self._resources.get("models", ())
        }
        for key in ("objectives", "rewrites"):
            current = self._resources.get(f"{key}{_LLM_D}")
            if current is not None:
                chosen[key] = current
                continue
            legacy = self._resources.get(key, ())
            if legacy and key not in self._warned_legacy:
                self._warned_legacy.add(key)
                log.warning(
                    "DEPRECATION: using %s from the legacy group inference.networking.x-k8s.io;"
                    " install the llm-d.ai CRDs and move the objects there",
                    key,
                )
            chosen[key] = legacy
        return PoolResources(**chosen)

    async def _status_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._status_resync):
                    await self._status_dirty.wait()
            self._status_dirty.clear()
            try:
                await self.write_model_status()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervisor loop: retry at the next wake-up
                log.warning("writing InferenceModel status failed: %s: %s", type(exc).__name__, exc)

    async def write_model_status(self) -> int:
        """Write ``Accepted`` conditions that differ from the desired ones; returns writes made."""
        if self._may_write_status is None or not self._may_write_status():
            return 0
        claims = [model_status.claim_from_object(o) for o in self._resources.get("models", ())]
        updates = model_status.status_updates(claims, self._clock())
        versions = {(c.namespace, c.name): c.resource_version for c in claims}
        written = 0
        for key, conditions in updates.items():
            # Our own previous write may not have come back through the watch yet; writing the
            # same conditions again for the same object version would only add churn.
            fingerprint = (versions[key], _condition_fingerprint(conditions))
            if self._last_status_write.get(key) == fingerprint:
                continue
            ns, name = key
            await self._client.patch(
                InferenceModel.Status,
                name,
                {"status": {"conditions": conditions}},
                namespace=ns,
                patch_type=PatchType.MERGE,
            )
            self._last_status_write[key] = fingerprint
            self.status_writes += 1
            written += 1
        return written
