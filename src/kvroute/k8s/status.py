"""InferenceModel ``Accepted`` condition: who owns a ``modelName`` (pure; the controller writes it).

Upstream rule (``api/v1alpha2/inferencemodel_types.go``): ``modelName`` is unique per pool and
the oldest claimant wins. So among the InferenceModels that reference this pool, grouped by
``spec.modelName``, the one with the oldest ``creationTimestamp`` (name breaks ties, so replicas
agree) gets ``Accepted=True/Accepted``; every other gets ``Accepted=False/ModelNameInUse``.

Conditions have the ``metav1.Condition`` shape: ``type``, ``status``, ``reason``, ``message``,
``observedGeneration``, ``lastTransitionTime``. ``lastTransitionTime`` changes only when
``status`` changes, and :func:`needs_update` ignores it, so rewriting never loops.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONDITION_ACCEPTED = "Accepted"
REASON_ACCEPTED = "Accepted"
REASON_MODEL_NAME_IN_USE = "ModelNameInUse"
REASON_PENDING = "Pending"


@dataclass(frozen=True, slots=True)
class ModelClaim:
    """The fields of an InferenceModel that the ownership rule reads."""

    name: str
    namespace: str
    model_name: str
    created: str  # RFC 3339, as the API server writes it; compared as text after normalising
    generation: int
    conditions: tuple[Mapping[str, Any], ...] = ()
    resource_version: str = ""


def _meta_str(meta: Any, key: str) -> str:
    value = meta.get(key) if isinstance(meta, Mapping) else getattr(meta, key, None)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "" if value is None else str(value)


def claim_from_object(obj: Mapping[str, Any]) -> ModelClaim:
    """Read an InferenceModel (dict or lightkube generic resource) into a :class:`ModelClaim`."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    gen = _meta_str(meta, "generation")
    return ModelClaim(
        name=_meta_str(meta, "name"),
        namespace=_meta_str(meta, "namespace"),
        model_name=str(spec.get("modelName", "")),
        created=_meta_str(meta, "creationTimestamp"),
        generation=int(gen) if gen else 0,
        conditions=tuple(status.get("conditions") or ()),
        resource_version=_meta_str(meta, "resourceVersion"),
    )


def winners(claims: Iterable[ModelClaim]) -> dict[str, ModelClaim]:
    """``modelName`` → the claim that owns it (oldest ``creationTimestamp``, then name)."""
    out: dict[str, ModelClaim] = {}
    for c in sorted(claims, key=lambda c: (c.created, c.namespace, c.name)):
        out.setdefault(c.model_name, c)
    return out


def accepted_condition(claim: ModelClaim, owner: ModelClaim, now: dt.datetime) -> dict[str, Any]:
    """The ``Accepted`` condition ``claim`` should carry, given the owner of its model name."""
    if owner.name == claim.name and owner.namespace == claim.namespace:
        status, reason, message = "True", REASON_ACCEPTED, ""
    else:
        status, reason = "False", REASON_MODEL_NAME_IN_USE
        message = (
            f"modelName {claim.model_name!r} is already in use by InferenceModel "
            f"{owner.namespace}/{owner.name}, which is older"
        )
    previous = next((c for c in claim.conditions if c.get("type") == CONDITION_ACCEPTED), None)
    if (
        previous is not None
        and previous.get("status") == status
        and previous.get("lastTransitionTime")
    ):
        transition = str(previous["lastTransitionTime"])
    else:
        transition = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": CONDITION_ACCEPTED,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": claim.generation,
        "lastTransitionTime": transition,
    }


def needs_update(claim: ModelClaim, desired: Mapping[str, Any]) -> bool:
    current = next((c for c in claim.conditions if c.get("type") == CONDITION_ACCEPTED), None)
    if current is None:
        return True
    keys = ("status", "reason", "message", "observedGeneration")
    return any(current.get(k) != desired.get(k) for k in keys)


def merged_conditions(claim: ModelClaim, desired: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Replace the ``Accepted`` entry, keep other condition types (listMapKey=type)."""
    others = [c for c in claim.conditions if c.get("type") != CONDITION_ACCEPTED]
    return [*others, dict(desired)]


def status_updates(
    claims: Sequence[ModelClaim], now: dt.datetime
) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """``(namespace, name)`` → the full new ``status.conditions`` for models that need a write."""
    owners = winners(claims)
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in claims:
        desired = accepted_condition(c, owners[c.model_name], now)
        if needs_update(c, desired):
            out[(c.namespace, c.name)] = merged_conditions(c, desired)
    return out
