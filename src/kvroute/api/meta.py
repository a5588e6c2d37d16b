"""Shared building blocks of the Kubernetes-shaped API types (the ``metav1`` of kvroute).

Every resource model derives from :class:`KubeModel`: unknown fields are rejected (as a strict
Kubernetes decoder would), values are not coerced (``"8000"`` is not a port, ``yes`` is not a
label value), and Python attribute names are snake_case while the YAML/JSON keys are the
camelCase aliases. The field constraints live in the models (``Field(ge=..., max_length=...)``)
so the same classes can later emit the CRD OpenAPI schemas.

Loading code must validate with ``model_validate(doc, by_alias=True, by_name=False)`` so that a
snake_case key in YAML is reported as an unknown field; Python code may construct models with
the snake_case names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

__all__ = [
    "PATTERN_DESCRIPTIONS",
    "Condition",
    "ConditionedStatus",
    "DnsSubdomainName",
    "Group",
    "Int32",
    "Kind",
    "KubeModel",
    "LabelKey",
    "LabelValue",
    "Labels",
    "Namespace",
    "ObjectMeta",
    "ObjectName",
    "OwnerReference",
    "PortNumber",
    "Timestamp",
    "range_message",
]


class KubeModel(BaseModel):
    """Base of every API model: camelCase keys, no unknown fields, no type coercion."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


def range_message(lo: int, hi: int) -> Any:
    """Turn pydantic's one-sided bound errors into one ``must be LO..HI`` message."""

    def wrap(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            kinds = {e["type"] for e in exc.errors()}
            if kinds & {"greater_than_equal", "less_than_equal"}:
                raise PydanticCustomError(
                    "int_range", "must be {lo}..{hi}", {"lo": lo, "hi": hi}
                ) from None
            raise

    return WrapValidator(wrap)


PortNumber = Annotated[
    int, Field(ge=1, le=65535, json_schema_extra={"format": "int32"}), range_message(1, 65535)
]

# Kubernetes label syntax (apimachinery validation.IsQualifiedName / IsValidLabelValue).
_LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)
_LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

_OPTIONAL_DNS_SUBDOMAIN_PATTERN = r"^$|" + _DNS_SUBDOMAIN_PATTERN
_KIND_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
_DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# What each pattern means, for error messages (kvroute.config.yaml_errors).
PATTERN_DESCRIPTIONS: dict[str, str] = {
    _LABEL_KEY_PATTERN: "is not a valid label key ([prefix/]name: name up to 63 characters "
    "of A-Z a-z 0-9 - _ . starting and ending alphanumeric; prefix a DNS subdomain)",
    _LABEL_VALUE_PATTERN: "is not a valid label value (up to 63 characters of A-Z a-z 0-9 - _ . "
    "starting and ending alphanumeric, or empty)",
    _DNS_SUBDOMAIN_PATTERN: "is not a valid object name (lowercase DNS subdomain: a-z 0-9 - .)",
    _OPTIONAL_DNS_SUBDOMAIN_PATTERN: "is not a valid object name or API group "
    "(lowercase DNS subdomain: a-z 0-9 - ., or empty)",
    _KIND_PATTERN: "is not a valid kind (a letter, then letters, digits and -)",
    _DNS_LABEL_PATTERN: "is not a valid namespace (lowercase DNS label: a-z 0-9 -)",
}

LabelKey = Annotated[str, Field(min_length=1, max_length=253, pattern=_LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(min_length=0, max_length=63, pattern=_LABEL_VALUE_PATTERN)]
Labels = dict[LabelKey, LabelValue]
ObjectName = Annotated[str, Field(min_length=1, max_length=253)]
DnsSubdomainName = Annotated[
    str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN_PATTERN)
]
Group = Annotated[str, Field(min_length=0, max_length=253, pattern=_OPTIONAL_DNS_SUBDOMAIN_PATTERN)]
Kind = Annotated[str, Field(min_length=1, max_length=63, pattern=_KIND_PATTERN)]
Namespace = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL_PATTERN)]
# Go's int32 (priorities, weights): the range is enforced and the CRD says ``format: int32``.
Int32 = Annotated[
    int,
    Field(ge=-(2**31), le=2**31 - 1, json_schema_extra={"format": "int32"}),
    range_message(-(2**31), 2**31 - 1),
]
# Timestamps arrive as YAML timestamps (datetime) or as RFC 3339 strings (JSON, kubectl).
Timestamp = Annotated[datetime, Field(strict=False)]


class OwnerReference(KubeModel):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(KubeModel):
    """The ObjectMeta fields ``kubectl get -o yaml`` prints.

    ``name`` may be omitted because some upstream documentation fragments omit ``metadata``
    entirely (the v1alpha2 InferencePool example); such an object is named ``""`` and two
    unnamed objects of one kind collide as duplicates.
    """

    name: Annotated[str, Field(max_length=253, pattern=_OPTIONAL_DNS_SUBDOMAIN_PATTERN)] = ""
    generate_name: str | None = None
    namespace: DnsSubdomainName = "default"
    labels: Labels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[OwnerReference] = Field(default_factory=list)
    # Server-side-apply bookkeeping: opaque to us, accepted so `kubectl get -o yaml` loads.
    managed_fields: list[dict[str, Any]] = Field(default_factory=list)
    self_link: str | None = None


class Condition(KubeModel):
    """``metav1.Condition`` as written by controllers into ``status``.

    ``status`` is optional here (required in metav1) because an upstream documentation example
    omits it, and ``reason``/``type`` carry only metav1's length limits, not its patterns (the
    same examples write ``reason: Accepted|Pending``); kvroute never acts on status, it only
    accepts it.
    """

    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"] | None = None
    reason: Annotated[str, Field(max_length=1024)] | None = None
    message: Annotated[str, Field(max_length=32768)] | None = None
    last_transition_time: Timestamp | None = None
    observed_generation: (
        Annotated[int, Field(ge=0, json_schema_extra={"format": "int64"})] | None
    ) = None


class ConditionedStatus(KubeModel):
    """Status of the alpha resources: just conditions (at most 8)."""

    conditions: list[Condition] = Field(default_factory=list, max_length=8)
