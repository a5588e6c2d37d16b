"""CRDs: the committed YAML equals what the models generate, the schemas are structural, and
kvroute's example and upstream resources round-trip through them (validate, prune, load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kvroute.api import RESOURCE_KINDS
from kvroute.k8s import crdgen
from tests.k8s_apiserver.openapi import validate

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "deploy" / "crds"
EXAMPLES = sorted(
    [
        *(ROOT / "examples" / "resources").glob("*.yaml"),
        *(ROOT / "tests" / "testdata" / "resources" / "upstream").glob("*.yaml"),
    ]
)


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in CRD_DIR.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        for v in doc["spec"]["versions"]:
            api_version = f"{doc['spec']['group']}/{v['name']}"
            out[(api_version, doc["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def test_committed_crds_match_the_models(tmp_path: Path) -> None:
    """If this fails, run ``python -m kvroute.k8s.crdgen`` and commit deploy/crds."""
    for path, text in crdgen.generate(CRD_DIR).items():
        assert path.exists(), f"missing {path}"
        assert path.read_text() == text, f"{path.name} is stale"
    assert crdgen.main(["--check", "--out", str(CRD_DIR)]) == 0
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1  # nothing there: stale


def test_every_resource_kind_has_a_crd() -> None:
    assert set(crd_schemas()) == set(RESOURCE_KINDS)


def _nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for k, v in (schema.get("properties") or {}).items():
        out += _nodes(v, f"{path}.{k}")
    for k in ("items", "additionalProperties"):
        if isinstance(schema.get(k), dict):
            out += _nodes(schema[k], f"{path}[{k}]")
    return out


@pytest.mark.parametrize("key", sorted(crd_schemas()), ids=lambda k: f"{k[0]}-{k[1]}")
def test_schemas_are_structural(key: tuple[str, str]) -> None:
    """Every node has a type; no refs, unions or JSON-Schema-only keywords remain."""
    for path, node in _nodes(crd_schemas()[key]):
        assert "type" in node, f"{path} has no type"
        forbidden = {
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "const",
            "title",
            "patternProperties",
            "propertyNames",
        }
        assert not forbidden & set(node), f"{path}: {forbidden & set(node)}"
        assert not ("properties" in node and "additionalProperties" in node), path


def test_field_rules_are_present() -> None:
    s = crd_schemas()
    pool = s[("inference.networking.k8s.io/v1", "InferencePool")]["properties"]["spec"]
    rules = [r["rule"] for r in pool["properties"]["targetPorts"]["x-kubernetes-validations"]]
    assert rules == ["self.all(p1, self.exists_one(p2, p1.number==p2.number))"]
    assert pool["properties"]["targetPorts"]["maxItems"] == 8
    model = s[("inference.networking.x-k8s.io/v1alpha2", "InferenceModel")]["properties"]["spec"]
    assert model["properties"]["modelName"]["x-kubernetes-validations"][0]["rule"] == (
        "self == oldSelf"
    )
    assert "weight" in model["properties"]["targetModels"]["x-kubernetes-validations"][0]["rule"]
    assert model["properties"]["modelName"]["maxLength"] == 256


def test_cel_path_that_vanished_fails_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = {("InferencePool", "v1"): {"spec.noSuchField": [("true", "x")]}}
    monkeypatch.setattr(crdgen, "CEL_RULES", rules)
    with pytest.raises(crdgen.CrdGenError):
        crdgen.openapi_schema(crdgen.CRDS[0])


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in EXAMPLES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{i}", doc))
    return out


@pytest.mark.parametrize(("where", "doc"), _docs(), ids=[w for w, _ in _docs()])
def test_examples_round_trip_through_the_crds(where: str, doc: dict[str, Any]) -> None:
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    stored, errors, pruned = validate(yaml.safe_load(yaml.safe_dump(doc)), schema)
    assert errors == []
    assert pruned == []  # nothing the models accept is unknown to the CRD
    model = RESOURCE_KINDS[(doc["apiVersion"], doc["kind"])]
    assert model.model_validate(stored, by_alias=True, by_name=False) == model.model_validate(
        doc, by_alias=True, by_name=False
    )


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (
            lambda d: d["spec"].update(targetPorts=[{"number": p} for p in range(1, 10)]),
            "more than 8",
        ),
        (lambda d: d["spec"].update(targetPorts=[{"number": 0}]), "below 1"),
        (lambda d: d["spec"].update(appProtocol="grpc"), "not in"),
        (lambda d: d["spec"]["selector"].update(matchLabels={}), "fewer than 1"),
        (lambda d: d["spec"].pop("selector"), "required"),
    ],
    ids=["nine-ports", "port-zero", "bad-app-protocol", "empty-selector", "no-selector"],
)
def test_schema_rejects_invalid_pools(mutate: Any, fragment: str) -> None:
    doc = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}]},
    }
    mutate(doc)
    _, errors, _ = validate(doc, crd_schemas()[("inference.networking.k8s.io/v1", "InferencePool")])
    assert any(fragment in e for e in errors), errors
