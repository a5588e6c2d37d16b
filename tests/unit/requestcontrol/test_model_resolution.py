"""Model resolution: rewrites, weighted splits, criticality/priority and unknown-model policy.

Resources come from real YAML through the real loader; randomness from a seeded
``random.Random``. Includes the model-rewrite behaviour of upstream's hermetic test
("rewrite request model": the body's model is rewritten for the server and the response's
model is rewritten back for the client).
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from kvroute.config.resources import ResourceSet, load_resources_text
from kvroute.errors import ModelNotFoundError
from kvroute.protocol.openai import parse_request, rewrite_request_body
from kvroute.protocol.response_rewrite import ModelNameRewriter
from kvroute.requestcontrol.model_resolution import (
    MODEL_REWRITE_HEADER,
    OBJECTIVE_HEADER,
    ModelResolver,
    UnknownModelPolicy,
    WeightedChoice,
)
from kvroute.scheduling.request import Criticality

ALPHA = "inference.networking.x-k8s.io/v1alpha2"


def _rewrite(name: str, rules: str, created: str | None = None) -> str:
    ts = f", creationTimestamp: {created}" if created else ""
    return (
        f"apiVersion: {ALPHA}\nkind: InferenceModelRewrite\nmetadata: {{name: {name}{ts}}}\n"
        f"spec:\n  poolRef: {{name: pool}}\n  rules:\n{rules}"
    )


def _model(name: str, model_name: str, criticality: str | None, targets: str = "") -> str:
    crit = f"  criticality: {criticality}\n" if criticality else ""
    return (
        f"apiVersion: {ALPHA}\nkind: InferenceModel\nmetadata: {{name: {name}}}\nspec:\n"
        f"  modelName: {model_name}\n{crit}{targets}  poolRef: {{name: pool}}\n"
    )


def _objective(name: str, priority: int | None) -> str:
    prio = f"  priority: {priority}\n" if priority is not None else ""
    return (
        f"apiVersion: {ALPHA}\nkind: InferenceObjective\nmetadata: {{name: {name}}}\nspec:\n"
        f"{prio}  poolRef: {{name: pool}}\n"
    )


RESOURCES = "---\n".join(
    [
        _model("food-review", "food-review", "Critical", "  targetModels: [{name: fr-1}]\n"),
        _model("plain", "plain-model", None),
        _model("shed", "shed-model", "Sheddable"),
        _rewrite(
            "canary",
            "  - matches: [{model: {value: small-lora}}, {model: {value: alias}}]\n"
            "    targets: [{modelRewrite: small-lora-v1}]\n"
            "  - targets: [{modelRewrite: fallback-model}]\n",
        ),
        _objective("premium", 10),
        _objective("batch", -3),
        _objective("unset", None),
    ]
)


@pytest.fixture
def resolver() -> ModelResolver:
    return ModelResolver(load_resources_text(RESOURCES), random.Random(7))


CASES = [
    # (id, model, headers, target, criticality, priority, objective, rewrite, inference_model)
    ("InferenceModel target", "food-review", {}, "fr-1", "Critical", 1, None, None, "food-review"),
    (
        "InferenceModel unset criticality",
        "plain-model",
        {},
        "fallback-model",
        "Standard",
        0,
        None,
        "canary",
        "plain",
    ),
    (
        "InferenceModel sheddable",
        "shed-model",
        {},
        "fallback-model",
        "Sheddable",
        -1,
        None,
        "canary",
        "shed",
    ),
    ("exact rewrite", "small-lora", {}, "small-lora-v1", "Standard", 0, None, "canary", None),
    ("second match of a rule", "alias", {}, "small-lora-v1", "Standard", 0, None, "canary", None),
    (
        "generic rewrite catches the rest",
        "other",
        {},
        "fallback-model",
        "Standard",
        0,
        None,
        "canary",
        None,
    ),
    (
        "header overrides rewrite",
        "small-lora",
        {MODEL_REWRITE_HEADER: "pinned"},
        "pinned",
        "Standard",
        0,
        None,
        "canary",
        None,
    ),
    (
        "header overrides InferenceModel",
        "food-review",
        {MODEL_REWRITE_HEADER: "pinned"},
        "pinned",
        "Critical",
        1,
        None,
        None,
        "food-review",
    ),
    (
        "empty header is ignored",
        "small-lora",
        {MODEL_REWRITE_HEADER: ""},
        "small-lora-v1",
        "Standard",
        0,
        None,
        "canary",
        None,
    ),
    (
        "objective priority",
        "small-lora",
        {OBJECTIVE_HEADER: "premium"},
        "small-lora-v1",
        "Critical",
        10,
        "premium",
        "canary",
        None,
    ),
    (
        "negative objective is sheddable",
        "food-review",
        {OBJECTIVE_HEADER: "batch"},
        "fr-1",
        "Sheddable",
        -3,
        "batch",
        None,
        "food-review",
    ),
    (
        "objective beats model criticality",
        "shed-model",
        {OBJECTIVE_HEADER: "premium"},
        "fallback-model",
        "Critical",
        10,
        "premium",
        "canary",
        "shed",
    ),
    (
        "unset objective priority is 0",
        "food-review",
        {OBJECTIVE_HEADER: "unset"},
        "fr-1",
        "Standard",
        0,
        "unset",
        None,
        "food-review",
    ),
    (
        "unknown objective is ignored",
        "food-review",
        {OBJECTIVE_HEADER: "nope"},
        "fr-1",
        "Critical",
        1,
        None,
        None,
        "food-review",
    ),
]


@pytest.mark.parametrize(
    ("model", "headers", "target", "crit", "priority", "objective", "rewrite", "im"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_resolve(
    resolver: ModelResolver,
    model: str,
    headers: dict[str, str],
    target: str,
    crit: str,
    priority: int,
    objective: str | None,
    rewrite: str | None,
    im: str | None,
) -> None:
    r = resolver.resolve(model, headers)
    assert r.incoming_model == model
    assert (r.target_model, r.criticality, r.priority) == (target, Criticality(crit), priority)
    assert (r.objective_name, r.rewrite_name, r.inference_model_name) == (objective, rewrite, im)
    assert r.rewritten == (target != model)


UNKNOWN = [
    ("passthrough", UnknownModelPolicy.PASSTHROUGH, {}, Criticality.STANDARD, 0),
    ("sheddable like upstream v0.5.1", "sheddable", {}, Criticality.SHEDDABLE, -1),
    (
        "sheddable but objective wins",
        "sheddable",
        {OBJECTIVE_HEADER: "premium"},
        Criticality.CRITICAL,
        10,
    ),
    ("header makes it known", "reject", {MODEL_REWRITE_HEADER: "x"}, Criticality.STANDARD, 0),
]


@pytest.mark.parametrize(
    ("policy", "headers", "crit", "priority"), [u[1:] for u in UNKNOWN], ids=[u[0] for u in UNKNOWN]
)
def test_unknown_model_policies(
    policy: str, headers: dict[str, str], crit: Criticality, priority: int
) -> None:
    resources = load_resources_text(_objective("premium", 10))
    r = ModelResolver(resources, random.Random(1), unknown_model=policy).resolve("m", headers)
    assert (r.criticality, r.priority) == (crit, priority)
    assert r.target_model == headers.get(MODEL_REWRITE_HEADER, "m")


def test_unknown_model_rejected_with_404() -> None:
    resolver = ModelResolver(ResourceSet(), unknown_model="reject")
    with pytest.raises(ModelNotFoundError) as exc:
        resolver.resolve("mystery", {})
    assert exc.value.http_status == 404
    assert "mystery" in exc.value.message


def test_reject_policy_accepts_models_a_rewrite_knows() -> None:
    resources = load_resources_text(
        _rewrite("r", "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: t}]\n")
    )
    assert ModelResolver(resources, unknown_model="reject").resolve("m", {}).target_model == "t"


def test_default_criticality_is_configurable() -> None:
    resolver = ModelResolver(ResourceSet(), default_criticality=Criticality.CRITICAL)
    r = resolver.resolve("m", {})
    assert (r.criticality, r.priority, r.target_model) == (Criticality.CRITICAL, 1, "m")


PRECEDENCE = [
    (
        "exact beats generic even when the generic object is older",
        [
            _rewrite(
                "old-generic", "  - targets: [{modelRewrite: generic}]\n", "2020-01-01T00:00:00Z"
            ),
            _rewrite(
                "new-exact",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: exact}]\n",
                "2025-01-01T00:00:00Z",
            ),
        ],
        "exact",
        "new-exact",
    ),
    (
        "oldest object wins among exact matches",
        [
            _rewrite(
                "newer",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: newer}]\n",
                "2025-06-01T00:00:00Z",
            ),
            _rewrite(
                "older",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: older}]\n",
                "2025-01-01T00:00:00Z",
            ),
        ],
        "older",
        "older",
    ),
    (
        "oldest object wins among generic rules",
        [
            _rewrite("newer", "  - targets: [{modelRewrite: newer}]\n", "2025-06-01T00:00:00Z"),
            _rewrite("older", "  - targets: [{modelRewrite: older}]\n", "2025-01-01T00:00:00Z"),
        ],
        "older",
        "older",
    ),
    (
        "dated objects count as older than undated ones",
        [
            _rewrite(
                "undated",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: undated}]\n",
            ),
            _rewrite(
                "dated",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: dated}]\n",
                "2025-01-01T00:00:00Z",
            ),
        ],
        "dated",
        "dated",
    ),
    (
        "undated objects keep load order",
        [
            _rewrite(
                "first",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: first}]\n",
            ),
            _rewrite(
                "second",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: second}]\n",
            ),
        ],
        "first",
        "first",
    ),
    (
        "first rule in list order wins within an object",
        [
            _rewrite(
                "one",
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: rule-1}]\n"
                "  - matches: [{model: {value: m}}]\n    targets: [{modelRewrite: rule-2}]\n",
            )
        ],
        "rule-1",
        "one",
    ),
]


@pytest.mark.parametrize(
    ("docs", "target", "rewrite"), [p[1:] for p in PRECEDENCE], ids=[p[0] for p in PRECEDENCE]
)
def test_rewrite_precedence(docs: list[str], target: str, rewrite: str) -> None:
    r = ModelResolver(load_resources_text("---\n".join(docs))).resolve("m", {})
    assert (r.target_model, r.rewrite_name) == (target, rewrite)


def test_inference_model_clash_oldest_wins() -> None:
    """In a cluster two InferenceModels may claim one modelName; upstream: oldest wins."""
    loaded = load_resources_text(
        _model("newer", "m", "Sheddable").replace(
            "{name: newer}", "{name: newer, creationTimestamp: 2025-02-01T00:00:00Z}"
        )
        + "---\n"
        + _model("older", "m2", "Critical").replace(
            "{name: older}", "{name: older, creationTimestamp: 2025-01-01T00:00:00Z}"
        )
    )
    clash = loaded.models[1].model_copy(
        update={"spec": loaded.models[1].spec.model_copy(update={"model_name": "m"})}
    )
    resources = ResourceSet.from_objects([loaded.models[0], clash])
    r = ModelResolver(resources).resolve("m", {})
    assert (r.inference_model_name, r.criticality) == ("older", Criticality.CRITICAL)


DRAWS = [
    ("90/10", [90, 10], [0.9, 0.1]),
    ("1/2/7", [1, 2, 7], [0.1, 0.2, 0.7]),
    ("unweighted is uniform", [None, None, None, None], [0.25] * 4),
    ("large weights", [1_000_000, 1], [1_000_000 / 1_000_001, 1 / 1_000_001]),
]


@pytest.mark.parametrize(("weights", "expected"), [d[1:] for d in DRAWS], ids=[d[0] for d in DRAWS])
def test_weighted_choice_distribution(weights: list[int | None], expected: list[float]) -> None:
    names = [f"t{i}" for i in range(len(weights))]
    choice = WeightedChoice(names, weights)
    rng = random.Random(42)
    n = 20_000
    counts = Counter(choice.pick(rng) for _ in range(n))
    assert set(counts) <= set(names)
    for name, p in zip(names, expected, strict=True):
        # 5 binomial standard deviations (plus a small floor): a seeded draw stays inside.
        tolerance = 5 * (p * (1 - p) / n) ** 0.5 + 1e-4
        assert abs(counts[name] / n - p) <= tolerance, (name, counts)


def test_rewrite_split_through_the_resolver() -> None:
    resources = load_resources_text(
        _rewrite(
            "canary",
            "  - matches: [{model: {value: chat}}]\n"
            "    targets: [{modelRewrite: v1, weight: 90}, {modelRewrite: v2, weight: 10}]\n",
        )
    )
    resolver = ModelResolver(resources, random.Random(3))
    counts = Counter(resolver.resolve("chat", {}).target_model for _ in range(10_000))
    assert set(counts) == {"v1", "v2"}
    assert abs(counts["v2"] / 10_000 - 0.1) < 0.015


def test_single_target_needs_no_randomness() -> None:
    class NoRandom(random.Random):
        def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
            raise AssertionError("a single target must not draw")

    choice = WeightedChoice(["only"], [5])
    assert choice.pick(NoRandom()) == "only"
    with pytest.raises(ValueError, match="at least one"):
        WeightedChoice([], [])


def test_hermetic_rewrite_request_model() -> None:
    """Upstream hermetic case "rewrite request model", end to end through the sans-IO parts."""
    resources = load_resources_text(
        _rewrite(
            "alias",
            "  - matches: [{model: {value: my-model}}]\n"
            "    targets: [{modelRewrite: my-model-v2}]\n",
        )
    )
    body = json.dumps({"model": "my-model", "prompt": "hello", "max_tokens": 5}).encode()
    parsed = parse_request(body, "/v1/completions")
    resolved = ModelResolver(resources).resolve(parsed.model, {})
    upstream_body = json.loads(rewrite_request_body(parsed, resolved.target_model))
    assert upstream_body == {"model": "my-model-v2", "prompt": "hello", "max_tokens": 5}

    server_response = json.dumps(
        {"id": "c1", "object": "text_completion", "model": "my-model-v2", "choices": []}
    ).encode()
    rewriter = ModelNameRewriter(resolved.target_model, resolved.incoming_model)
    client_sees = rewriter.feed(server_response, end=True)
    assert json.loads(client_sees)["model"] == "my-model"


def test_hermetic_do_not_shed_requests_by_default() -> None:
    """Upstream hermetic case: with no objective and no InferenceModel, nothing is sheddable."""
    r = ModelResolver(ResourceSet()).resolve("any-model", {"x-request-id": "1"})
    assert (r.target_model, r.priority, r.criticality) == ("any-model", 0, Criticality.STANDARD)
    assert r.priority >= 0  # InferenceRequest.sheddable is priority < 0
