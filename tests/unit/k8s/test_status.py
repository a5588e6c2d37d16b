"""InferenceModel ``Accepted``/``ModelNameInUse`` (pure): oldest claimant wins, stable writes."""

from __future__ import annotations

import datetime as dt

import pytest

from kvroute.k8s.status import (
    ModelClaim,
    claim_from_object,
    status_updates,
    winners,
)
from tests.k8s_apiserver.objects import inference_model

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def claim(name: str, model: str, created: str, **kw: object) -> ModelClaim:
    return ModelClaim(
        name=name,
        namespace="default",
        model_name=model,
        created=created,
        generation=1,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("claims", "owner"),
    [
        ([claim("a", "m", "2026-01-01T00:00:00Z"), claim("b", "m", "2026-01-02T00:00:00Z")], "a"),
        ([claim("b", "m", "2026-01-02T00:00:00Z"), claim("a", "m", "2026-01-01T00:00:00Z")], "a"),
        ([claim("z", "m", "2026-01-01T00:00:00Z"), claim("y", "m", "2026-01-01T00:00:00Z")], "y"),
    ],
    ids=["oldest-first", "oldest-second", "tie-broken-by-name"],
)
def test_oldest_claim_wins(claims: list[ModelClaim], owner: str) -> None:
    assert winners(claims)["m"].name == owner


def test_updates_have_upstream_condition_shape() -> None:
    claims = [
        claim("a", "m", "2026-01-01T00:00:00Z"),
        claim("b", "m", "2026-01-02T00:00:00Z"),
    ]
    updates = status_updates(claims, NOW)
    (accepted,) = updates[("default", "a")]
    (in_use,) = updates[("default", "b")]
    assert accepted == {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-03-01T12:00:00Z",
    }
    assert (in_use["status"], in_use["reason"]) == ("False", "ModelNameInUse")
    assert "default/a" in in_use["message"]


def test_no_update_when_already_correct_and_transition_time_kept() -> None:
    first = status_updates([claim("a", "m", "2026-01-01T00:00:00Z")], NOW)[("default", "a")]
    settled = claim("a", "m", "2026-01-01T00:00:00Z", conditions=tuple(first))
    later = NOW + dt.timedelta(hours=1)
    assert status_updates([settled], later) == {}
    # A generation bump rewrites observedGeneration but keeps the transition time (same status).
    bumped = ModelClaim("a", "default", "m", "2026-01-01T00:00:00Z", 2, tuple(first))
    (cond,) = status_updates([bumped], later)[("default", "a")]
    assert cond["observedGeneration"] == 2
    assert cond["lastTransitionTime"] == "2026-03-01T12:00:00Z"


def test_other_condition_types_are_kept() -> None:
    other = {"type": "Ready", "status": "True", "reason": "Ok"}
    c = claim("a", "m", "2026-01-01T00:00:00Z", conditions=(other,))
    conds = status_updates([c], NOW)[("default", "a")]
    assert [x["type"] for x in conds] == ["Ready", "Accepted"]


def test_claim_from_object_reads_wire_shape() -> None:
    obj = inference_model("a", "llama", created="2026-01-01T00:00:00Z")
    obj["metadata"].update(generation=3, resourceVersion="42")
    c = claim_from_object(obj)
    assert (c.name, c.model_name, c.created, c.generation, c.resource_version) == (
        "a",
        "llama",
        "2026-01-01T00:00:00Z",
        3,
        "42",
    )
