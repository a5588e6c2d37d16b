"""InferencePool in its two API versions, and the one normalised view the EPP works with.

* ``inference.networking.k8s.io/v1`` (GA): ``selector.matchLabels``, ``targetPorts`` (1-8
  distinct ports, each port of a pod is its own endpoint, which is how data-parallel ranks are
  modelled), ``appProtocol`` and ``endpointPickerRef``.
* ``inference.networking.x-k8s.io/v1alpha2`` (legacy, upstream v0.5.1): a plain ``selector``
  map, one ``targetPortNumber`` and ``extensionRef``.

The rest of kvroute never looks at either: it reads :class:`PoolView`, built by
:meth:`InferencePoolV1.view` / :meth:`InferencePoolV1Alpha2.view`.

``endpointPickerRef`` / ``extensionRef`` are optional here. Upstream v1.5.0 requires
``endpointPickerRef``; upstream HEAD (PR #2898) made it optional, and a standalone kvroute needs
no reference to itself. Without one, the failure mode is the API default, ``FailClose``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from kvroute.api.meta import (
    Condition,
    Group,
    Kind,
    KubeModel,
    LabelKey,
    LabelValue,
    Namespace,
    ObjectMeta,
    ObjectName,
    PortNumber,
)

__all__ = [
    "V1ALPHA2_API_VERSION",
    "V1_API_VERSION",
    "EndpointPickerRef",
    "Extension",
    "FailureMode",
    "InferencePoolV1",
    "InferencePoolV1Alpha2",
    "PoolView",
]

V1_API_VERSION = "inference.networking.k8s.io/v1"
V1ALPHA2_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"

FailureMode = Literal["FailOpen", "FailClose"]
AppProtocol = Literal["http", "kubernetes.io/h2c"]
# Gateway API's GatewayController: ``<domain>/<path>``.
ControllerName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/"
        r"[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$",
    ),
]
MatchLabels = Annotated[dict[LabelKey, LabelValue], Field(min_length=1, max_length=64)]


# --- v1 -------------------------------------------------------------------------------------


class LabelSelector(KubeModel):
    match_labels: MatchLabels


class Port(KubeModel):
    number: PortNumber


class EndpointPickerRef(KubeModel):
    """Where the gateway finds the EPP. ``port`` is required when ``kind`` is ``Service``."""

    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    port: Port | None = None
    failure_mode: FailureMode = "FailClose"

    @model_validator(mode="after")
    def _service_needs_port(self) -> Self:
        if self.kind == "Service" and self.port is None:
            raise ValueError("port is required when kind is Service")
        return self


class InferencePoolSpecV1(KubeModel):
    selector: LabelSelector
    target_ports: list[Port] = Field(min_length=1, max_length=8)
    app_protocol: AppProtocol = "http"
    endpoint_picker_ref: EndpointPickerRef | None = None

    @field_validator("target_ports")
    @classmethod
    def _unique_ports(cls, ports: list[Port]) -> list[Port]:
        seen: set[int] = set()
        for port in ports:
            if port.number in seen:
                raise ValueError(f"port {port.number} is listed more than once")
            seen.add(port.number)
        return ports


class ParentGatewayReference(KubeModel):
    """GIE v1's ``ParentReference``: the fields and defaults of upstream's CRD, no more."""

    group: Group = "gateway.networking.k8s.io"
    kind: Kind = "Gateway"
    name: ObjectName
    namespace: Namespace | None = None


class ParentStatus(KubeModel):
    parent_ref: ParentGatewayReference
    controller_name: ControllerName | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=8)


class InferencePoolStatusV1(KubeModel):
    parents: list[ParentStatus] = Field(default_factory=list, max_length=32)


class InferencePoolV1(KubeModel):
    api_version: Literal["inference.networking.k8s.io/v1"]
    kind: Literal["InferencePool"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferencePoolSpecV1
    status: InferencePoolStatusV1 | None = None

    def view(self) -> PoolView:
        ref = self.spec.endpoint_picker_ref
        return PoolView(
            name=self.metadata.name,
            namespace=self.metadata.namespace,
            api_version=self.api_version,
            selector=MappingProxyType(dict(self.spec.selector.match_labels)),
            target_ports=tuple(p.number for p in self.spec.target_ports),
            app_protocol=self.spec.app_protocol,
            failure_mode=ref.failure_mode if ref else "FailClose",
            epp_service=ref.name if ref else None,
            epp_port=ref.port.number if ref and ref.port else None,
        )


# --- v1alpha2 (legacy) ----------------------------------------------------------------------


class Extension(KubeModel):
    """v1alpha2 ``extensionRef``: ``portNumber`` is optional (upstream: "SHOULD infer 9002")."""

    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    port_number: PortNumber | None = None
    failure_mode: FailureMode = "FailClose"


class InferencePoolSpecV1Alpha2(KubeModel):
    selector: MatchLabels
    target_port_number: PortNumber
    extension_ref: Extension | None = None


class PoolStatusV1Alpha2(KubeModel):
    parent_ref: ParentGatewayReference
    conditions: list[Condition] = Field(default_factory=list, max_length=8)


class InferencePoolStatusV1Alpha2(KubeModel):
    # Upstream's JSON key is singular ("parent") in v1alpha2.
    parent: list[PoolStatusV1Alpha2] = Field(default_factory=list, max_length=32)


class InferencePoolV1Alpha2(KubeModel):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferencePool"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferencePoolSpecV1Alpha2
    status: InferencePoolStatusV1Alpha2 | None = None

    def view(self) -> PoolView:
        ref = self.spec.extension_ref
        port = ref.port_number if ref else None
        if ref is not None and port is None and ref.kind == "Service":
            port = 9002  # the spec's "SHOULD infer 9002" for a Service reference
        return PoolView(
            name=self.metadata.name,
            namespace=self.metadata.namespace,
            api_version=self.api_version,
            selector=MappingProxyType(dict(self.spec.selector)),
            target_ports=(self.spec.target_port_number,),
            app_protocol="http",
            failure_mode=ref.failure_mode if ref else "FailClose",
            epp_service=ref.name if ref else None,
            epp_port=port,
        )


# --- normalised view ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolView:
    """One InferencePool, whatever its API version: what the datastore and k8s watcher use.

    ``target_ports`` has one entry per port; each ``podIP:port`` is a distinct endpoint.
    """

    name: str
    namespace: str = "default"
    api_version: str = V1_API_VERSION
    selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    target_ports: tuple[int, ...] = ()
    app_protocol: str = "http"
    failure_mode: FailureMode = "FailClose"
    epp_service: str | None = None
    epp_port: int | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every selector label is present on ``labels`` with the same value."""
        return all(labels.get(k) == v for k, v in self.selector.items())
