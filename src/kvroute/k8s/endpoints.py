"""Pods to endpoints: the pure part of pod discovery (no I/O, no client objects).

GIE's rules (``pod_reconciler.go``, ``datastore.go``), restated:

* a pod counts only when it is Ready (condition ``Ready=True``), has no ``deletionTimestamp``, has
  an IP, and its labels still match the pool selector (the selector can change under a running
  watch; matching here too means stale pods drop out at once);
* each pool target port ``targetPorts[i]`` is a separate endpoint named ``<pod>-rank-<i>`` at
  ``podIP:port`` (data-parallel ranks);
* the annotation ``inference.networking.k8s.io/active-ports: "8000,8001"`` narrows which target
  ports are active on that pod; ranks keep their index in ``targetPorts`` so names stay stable.

The controller keeps the last applied set and applies :func:`diff` against the newly computed one,
so a full relist after a watch failure converges without losing or duplicating endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kvroute.framework.endpoint import rank_endpoint_name

ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
MAX_TARGET_PORTS = 8


class PoolSpecError(ValueError):
    """A selector or port list that cannot define a pool (bad flag or bad object)."""


def _frozen(m: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What selects the pool's endpoints: ``matchLabels`` and the target ports, in order."""

    selector: Mapping[str, str]
    target_ports: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.selector:
            raise PoolSpecError("the pool selector must have at least one label")
        if not 1 <= len(self.target_ports) <= MAX_TARGET_PORTS:
            raise PoolSpecError(f"a pool needs 1..{MAX_TARGET_PORTS} target ports")
        if len(set(self.target_ports)) != len(self.target_ports):
            raise PoolSpecError(f"target ports must be unique: {list(self.target_ports)}")
        for p in self.target_ports:
            if not 1 <= p <= 65535:
                raise PoolSpecError(f"target port out of range: {p}")
        object.__setattr__(self, "selector", _frozen(self.selector))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PoolSpec):
            return NotImplemented
        return (
            dict(self.selector) == dict(other.selector) and self.target_ports == other.target_ports
        )

    def __hash__(self) -> int:
        return hash((frozenset(self.selector.items()), self.target_ports))

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The fields of a Pod that discovery reads."""

    name: str
    namespace: str
    ip: str | None
    ready: bool
    deleting: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    host_ip: str = ""  # status.hostIP: the node's address


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint as the datastore receives it."""

    name: str
    address: str
    port: int
    labels: Mapping[str, str]
    node_address: str = ""

    def same_as(self, other: EndpointSpec) -> bool:
        return (self.address, self.port, self.node_address, dict(self.labels)) == (
            other.address,
            other.port,
            other.node_address,
            dict(other.labels),
        )


@dataclass(frozen=True, slots=True)
class EndpointDiff:
    upserts: tuple[EndpointSpec, ...]
    removals: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.removals


def parse_endpoint_selector(text: str) -> dict[str, str]:
    """Parse ``--endpoint-selector 'k=v,k2=v2'`` (equality terms only, as upstream)."""
    out: dict[str, str] = {}
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or value.startswith("="):
            raise PoolSpecError(f"selector term must be key=value: {term!r}")
        out[key] = value
    if not out:
        raise PoolSpecError("the endpoint selector is empty")
    return out


def parse_ports(text: str) -> tuple[int, ...]:
    """Parse a comma-separated port list (``--endpoint-target-ports``, the annotation)."""
    ports: list[int] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        try:
            ports.append(int(term))
        except ValueError:
            raise PoolSpecError(f"not a port number: {term!r}") from None
    return tuple(ports)


def pool_spec_from_object(obj: Mapping[str, Any]) -> PoolSpec:
    """Read a pool spec from an InferencePool of either API group.

    ``inference.networking.k8s.io/v1``: ``spec.selector.matchLabels`` and ``spec.targetPorts``.
    ``inference.networking.x-k8s.io/v1alpha2``: ``spec.selector`` (a plain map) and
    ``spec.targetPortNumber``.
    """
    spec = obj.get("spec") or {}
    api_version = str(obj.get("apiVersion", ""))
    if api_version.endswith("/v1alpha2"):
        selector = spec.get("selector") or {}
        port = spec.get("targetPortNumber")
        ports: tuple[int, ...] = (int(port),) if port is not None else ()
    else:
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        ports = tuple(int(p["number"]) for p in spec.get("targetPorts") or ())
    return PoolSpec(selector={str(k): str(v) for k, v in selector.items()}, target_ports=ports)


def pod_info_from_object(pod: Any) -> PodInfo:
    """Read a lightkube ``Pod`` model (attribute access) into :class:`PodInfo`."""
    meta = pod.metadata
    status = pod.status
    ready = False
    ip: str | None = None
    host_ip = ""
    if status is not None:
        ip = status.podIP or None
        host_ip = status.hostIP or ""
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())
    return PodInfo(
        name=meta.name,
        namespace=meta.namespace or "",
        ip=ip,
        ready=ready,
        deleting=meta.deletionTimestamp is not None,
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        host_ip=host_ip,
    )


def active_ports(pod: PodInfo, target_ports: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(rank, port)`` pairs that are active on ``pod``.

    Without the annotation every target port is active. An unparsable annotation is ignored (all
    ports stay active) rather than silently emptying the pod.
    """
    ranks = list(enumerate(target_ports))
    raw = pod.annotations.get(ACTIVE_PORTS_ANNOTATION)
    if raw is None:
        return ranks
    try:
        allowed = set(parse_ports(raw))
    except PoolSpecError:
        return ranks
    return [(i, p) for i, p in ranks if p in allowed]


def endpoint_name(pod_name: str, rank: int) -> str:
    return rank_endpoint_name(pod_name, rank)


def desired_endpoints(spec: PoolSpec | None, pods: Iterable[PodInfo]) -> dict[str, EndpointSpec]:
    """The endpoint set the datastore should hold for ``spec`` and the known pods."""
    if spec is None:
        return {}
    out: dict[str, EndpointSpec] = {}
    for pod in pods:
        if not (pod.ready and not pod.deleting and pod.ip and spec.selects(pod.labels)):
            continue
        labels = _frozen(pod.labels)
        for rank, port in active_ports(pod, spec.target_ports):
            name = endpoint_name(pod.name, rank)
            out[name] = EndpointSpec(
                name=name, address=pod.ip, port=port, labels=labels, node_address=pod.host_ip
            )
    return out


def diff(current: Mapping[str, EndpointSpec], desired: Mapping[str, EndpointSpec]) -> EndpointDiff:
    """What to upsert and remove to turn ``current`` into ``desired`` (stable, sorted order)."""
    upserts = tuple(
        desired[n]
        for n in sorted(desired)
        if n not in current or not current[n].same_as(desired[n])
    )
    removals = tuple(sorted(n for n in current if n not in desired))
    return EndpointDiff(upserts=upserts, removals=removals)
