"""The resource loader: upstream examples load unchanged, errors are precise and complete."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvroute.api import InferencePoolV1, InferencePoolV1Alpha2
from kvroute.config.resources import (
    ResourceLoadError,
    ResourceSet,
    load_resources,
    load_resources_text,
)
from kvroute.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
UPSTREAM = ROOT / "tests" / "testdata" / "resources" / "upstream"
EXAMPLES = ROOT / "examples" / "resources"

POOL = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
"""
MODEL = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: %(name)s}
spec:
  modelName: %(model)s
  targetModels:
  - {name: food-review-1, weight: 90}
  - {name: food-review-2, weight: %(weight)s}
  poolRef: {name: pool}
"""


def _model(name: str = "food-review", model: str = "food-review", weight: int = 10) -> str:
    return MODEL % {"name": name, "model": model, "weight": weight}


def _load_error(text: str, source: str = "pool.yaml") -> ResourceLoadError:
    with pytest.raises(ResourceLoadError) as exc:
        load_resources_text(text, source)
    return exc.value


@pytest.mark.parametrize(
    "name",
    [
        "inferencepool-v1.yaml",
        "inferencepool-v1alpha2.yaml",
        "inferencemodel-v1alpha2.yaml",
        "inferenceobjective-v1alpha2.yaml",
        "inferencemodelrewrite-v1alpha2.yaml",
    ],
)
def test_upstream_examples_load_unchanged(name: str) -> None:
    resources = load_resources([UPSTREAM / name])
    assert len(resources) == 1


def test_upstream_examples_together_in_one_multi_document_file() -> None:
    # The pool-less v1alpha2 InferencePool example has no name; the others reference
    # pools by name, so cross-references are only checked when the pool exists.
    texts = [
        (UPSTREAM / n).read_text()
        for n in (
            "inferencepool-v1.yaml",
            "inferenceobjective-v1alpha2.yaml",
            "inferencemodelrewrite-v1alpha2.yaml",
        )
    ]
    resources = load_resources_text("---\n".join(texts), "all.yaml")
    assert [type(p) for p in resources.pools] == [InferencePoolV1]
    assert resources.objectives[0].spec.priority == 10
    rule = resources.rewrites[0].spec.rules[0]
    assert [(t.model_rewrite, t.weight) for t in rule.targets] == [
        ("small-segment-lora-v1", 90),
        ("small-segment-lora-v2", 10),
    ]
    view = resources.pool()
    assert (view.name, view.target_ports, view.epp_port) == ("vllm-qwen3-32b", (8000,), 9002)


@pytest.mark.parametrize(
    ("name", "pools", "models", "objectives", "rewrites"),
    [("pool.yaml", 1, 0, 2, 1), ("legacy-v1alpha2.yaml", 1, 2, 0, 0)],
)
def test_examples_load(name: str, pools: int, models: int, objectives: int, rewrites: int) -> None:
    r = load_resources([EXAMPLES / name])
    assert (len(r.pools), len(r.models), len(r.objectives), len(r.rewrites)) == (
        pools,
        models,
        objectives,
        rewrites,
    )


def test_error_message_shape_matches_the_issue() -> None:
    err = _load_error(POOL + "---\n" + _model(weight=0))
    assert err.errors == (
        "pool.yaml: document 2 (InferenceModel food-review): "
        "spec.targetModels[1].weight: must be 1..1000000",
    )
    assert isinstance(err, ConfigError)
    assert err.http_status == 500


def test_all_errors_of_all_documents_are_reported_together() -> None:
    text = "\n---\n".join(
        [
            POOL.replace("8000", "0"),
            _model(weight=0),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}",
            "- just a list",
            _model(name="other").replace("modelName", "modelNam"),
        ]
    )
    err = _load_error(text)
    assert err.errors == (
        "pool.yaml: document 1 (InferencePool pool): spec.targetPorts[0].number: must be 1..65535",
        "pool.yaml: document 2 (InferenceModel food-review): "
        "spec.targetModels[1].weight: must be 1..1000000",
        "pool.yaml: document 3 (Service s): unknown kind 'Service' (apiVersion 'v1'); "
        "supported kinds: InferenceModel, InferenceModelRewrite, InferenceObjective, "
        "InferencePool",
        "pool.yaml: document 4: expected a Kubernetes object (a mapping), got a list",
        "pool.yaml: document 5 (InferenceModel other): spec.modelName: required field missing",
        "pool.yaml: document 5 (InferenceModel other): spec.modelNam: unknown field",
    )
    assert err.message == "\n".join(err.errors)


CASES = [
    (
        "unknown apiVersion for a known kind",
        POOL.replace("k8s.io/v1", "k8s.io/v2"),
        "pool.yaml: document 1 (InferencePool pool): unknown apiVersion "
        "'inference.networking.k8s.io/v2' for kind InferencePool; expected "
        "'inference.networking.k8s.io/v1' or 'inference.networking.x-k8s.io/v1alpha2'",
    ),
    (
        "v1 group for an alpha kind (a documented upstream doc mistake)",
        _model().replace("x-k8s.io/v1alpha2", "k8s.io/v1alpha2"),
        "pool.yaml: document 1 (InferenceModel food-review): unknown apiVersion "
        "'inference.networking.k8s.io/v1alpha2' for kind InferenceModel; expected "
        "'inference.networking.x-k8s.io/v1alpha2'",
    ),
    (
        "missing kind",
        "apiVersion: v1\nmetadata: {name: x}\n",
        "pool.yaml: document 1: apiVersion and kind are required strings",
    ),
    (
        "duplicate object",
        POOL + "---\n" + POOL,
        "pool.yaml: document 2 (InferencePool pool): metadata.name: duplicate InferencePool "
        "default/pool (first defined in pool.yaml document 1)",
    ),
    (
        "duplicate across API versions",
        POOL + "---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\n"
        "metadata: {name: pool}\nspec: {selector: {app: x}, targetPortNumber: 1}\n",
        "pool.yaml: document 2 (InferencePool pool): metadata.name: duplicate InferencePool "
        "default/pool (first defined in pool.yaml document 1)",
    ),
    (
        "duplicate modelName in one pool",
        POOL + "---\n" + _model() + "---\n" + _model(name="food-review-b"),
        "pool.yaml: document 3 (InferenceModel food-review-b): spec.modelName: 'food-review' "
        "is already used by InferenceModel food-review (pool.yaml document 2) in pool pool",
    ),
    (
        "poolRef to a pool that is not loaded",
        POOL + "---\n" + _model().replace("poolRef: {name: pool}", "poolRef: {name: pol}"),
        "pool.yaml: document 2 (InferenceModel food-review): spec.poolRef.name: "
        "no InferencePool default/pol in the loaded resources",
    ),
    (
        "YAML syntax error names the line",
        POOL + "---\nkind: [InferenceModel\n",
        "pool.yaml: line 9, column 1: YAML error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)",
    ),
    (
        "repeated key is an error, not last-wins",
        POOL.replace("metadata: {name: pool}", "metadata: {name: pool, name: other}"),
        "pool.yaml: line 3, column 24: YAML error: found duplicate key 'name' "
        "(while constructing a mapping)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_errors(text: str, expected: str) -> None:
    assert expected in _load_error(text).errors


def test_invalid_config_never_half_loads(tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    bad = tmp_path / "b.yaml"
    good.write_text(POOL)
    bad.write_text(_model(weight=-1))
    with pytest.raises(ResourceLoadError) as exc:
        load_resources([good, bad])
    assert exc.value.errors == (
        f"{bad}: document 1 (InferenceModel food-review): "
        "spec.targetModels[1].weight: must be 1..1000000",
    )


def test_directory_loads_sorted_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "10-pool.yaml").write_text(POOL)
    (tmp_path / "20-model.yml").write_text(_model())
    (tmp_path / "notes.txt").write_text("not yaml: [")
    resources = load_resources([tmp_path])
    assert (len(resources.pools), len(resources.models)) == (1, 1)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ResourceLoadError) as exc:
        load_resources([tmp_path / "nope.yaml"])
    assert exc.value.errors[0].startswith(f"{tmp_path / 'nope.yaml'}: cannot read file:")


def test_empty_documents_are_skipped_but_counted() -> None:
    err = _load_error("---\n---\n" + _model(weight=0))
    assert err.errors[0].startswith("pool.yaml: document 2 (InferenceModel food-review):")
    assert len(load_resources_text("---\n" + POOL + "---\n")) == 1


def test_timestamps_are_parsed() -> None:
    text = POOL.replace("{name: pool}", "{name: pool, creationTimestamp: 2025-07-01T10:00:00Z}")
    pool = load_resources_text(text).pools[0]
    assert pool.metadata.creation_timestamp == datetime(2025, 7, 1, 10, tzinfo=UTC)


def test_for_pool_and_pool_selection() -> None:
    other = POOL.replace("{name: pool}", "{name: other}")
    text = POOL + "---\n" + other + "---\n" + _model()
    resources = load_resources_text(text)
    with pytest.raises(ConfigError, match="expected exactly one InferencePool, found 2"):
        resources.pool()
    assert resources.pool("other").name == "other"
    with pytest.raises(ConfigError, match="no InferencePool default/missing"):
        resources.pool("missing")
    mine = resources.for_pool("pool")
    assert (len(mine.pools), len(mine.models)) == (1, 1)
    theirs = resources.for_pool("other")
    assert (len(theirs.pools), len(theirs.models)) == (1, 0)


def test_from_objects_groups_by_kind_without_rejecting_conflicts() -> None:
    loaded = load_resources_text(POOL + "---\n" + _model())
    legacy = load_resources([UPSTREAM / "inferencepool-v1alpha2.yaml"]).pools[0]
    assert isinstance(legacy, InferencePoolV1Alpha2)
    # Two models with the same modelName: a cluster can hold this; age decides later.
    combined = ResourceSet.from_objects([*loaded.pools, legacy, *loaded.models, *loaded.models])
    assert (len(combined.pools), len(combined.models)) == (2, 2)


def test_map_keys_in_paths_are_quoted() -> None:
    err = _load_error(POOL.replace("{app: vllm}", '{"bad key": vllm, "app.io/name": "-x"}'))
    assert err.errors[0].startswith(
        "pool.yaml: document 1 (InferencePool pool): "
        "spec.selector.matchLabels[\"bad key\"]: key: 'bad key' is not a valid label key"
    )
    assert err.errors[1].startswith(
        "pool.yaml: document 1 (InferencePool pool): "
        "spec.selector.matchLabels[\"app.io/name\"]: '-x' is not a valid label value"
    )


def test_yaml_booleans_are_not_strings() -> None:
    """YAML 1.1 reads `yes` as true; Kubernetes rejects it as a label value, and so do we."""
    err = _load_error(POOL.replace("{app: vllm}", "{app: yes}"))
    assert err.errors == (
        "pool.yaml: document 1 (InferencePool pool): "
        "spec.selector.matchLabels.app: expected a string, got a boolean",
    )


def test_anchors_and_merge_keys() -> None:
    """A merged key may be overridden explicitly; that is not a duplicate."""
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
        "metadata: {name: a}\nspec: &spec {priority: 1, poolRef: {name: pool}}\n"
        "---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
        "metadata: {name: b}\nspec:\n  <<: {priority: 1, poolRef: {name: pool}}\n  priority: 5\n"
    )
    resources = load_resources_text(text)
    assert [o.spec.priority for o in resources.objectives] == [1, 5]


def test_paths_may_be_strings() -> None:
    assert len(load_resources([str(UPSTREAM / "inferencepool-v1.yaml")])) == 1
